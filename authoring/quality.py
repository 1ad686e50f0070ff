"""The quality card: a quantized, converted or optimized file against the plain float32 export of the same model,
both run through the runtime on the same probe inputs, with the measure that fits the task.

* generation (decoder-only): top-1 agreement of the next-token predictions along a fixed probe text, the ratio of
  the two perplexities on it, and how many greedy continuations changed;
* text-to-text and speech recognition: the word error rate of the changed file's outputs against the plain
  one's, and how many outputs are identical;
* classification of any kind (text, tokens, zero-shot, fill-mask, question answering, images, audio): label
  agreement (the best label, token, answer or entities the same), the largest score difference, and how many
  answers changed in any way (a ranking of close scores included);
* embeddings: the cosine similarity of the two files' vectors (encode(): pooled as sentence-transformers pools them;
  the smallest over the probes).

Probe inputs are synthetic (fixed texts, seeded images and tones): the same for every run, so a card can be
reproduced; on a trained model they say how far quantization moved the answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import onnxmeta_runtime as rt

PROBE_TEXTS = ("I love this movie, it was wonderful!", "The service was slow and the food arrived cold.",
               "Paris is the capital of France.", "My name is Wolfgang and I live in Berlin.", "hello")
# Scored token by token for generation models (logprobs): plain English of a few sentences.
PROBE_PARAGRAPH = (
    "The history of the city begins with a small settlement on the banks of the river. Over the centuries it "
    "grew into a busy port, where merchants traded wool, salt and wine with towns across the sea. In the "
    "nineteenth century the railway arrived, and with it new factories, schools and a university. Today the "
    "old harbour is a quiet place: people walk along the water in the evening, children feed the ducks, and "
    "the market square fills with music on summer weekends."
)
GENERATION_TOKENS = 16
SEQ2SEQ_TASKS = ("text2text-generation", "summarization", "translation")
_TEXT_OUTPUTS = (*SEQ2SEQ_TASKS, "automatic-speech-recognition")
_EMBEDDINGS = ("feature-extraction", "image-feature-extraction")


@dataclass
class Quality:
    """How far a changed file's answers are from the plain export's on the probe inputs."""

    task: str
    probes: int
    changed: int
    """Probe answers that differ other than in their scores (labels, tokens, ranking, text)."""
    max_score_difference: float | None
    """The largest difference of any score; None when the task's answers have none."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The task's own measures: top1_agreement, perplexity_ratio, word_error_rate, cosine_similarity, label_agreement
    (the share of probes whose best label, token, answer or entities are the same)."""

    def as_dict(self) -> dict[str, Any]:
        """What export_config["quality"] records."""
        return {"compared_with": "the float32 export", "task": self.task, "probes": self.probes,
                "answers_changed": self.changed, "max_score_difference": self.max_score_difference, **self.metrics}

    def summary(self) -> str:
        """One line for export's and inspect's output."""
        return card_summary(self.as_dict())


_LABELS = {"top1_agreement": ("top-1 agreement", "{:.1%}"), "perplexity_ratio": ("perplexity ratio", "{:.3f}"),
           "word_error_rate": ("word error rate", "{:.1%}"), "cosine_similarity": ("cosine similarity", "{:.5f}"),
           "label_agreement": ("label agreement", "{:.1%}"), "max_score_difference": ("max score difference", "{:.2e}")}


def card_summary(card: dict[str, Any]) -> str:
    """A recorded card (export_config["quality"]) in one line."""
    parts = [f"{label} {fmt.format(card[key])}" for key, (label, fmt) in _LABELS.items()
             if isinstance(card.get(key), (int, float))]
    parts.append(f"answers changed {card.get('answers_changed')} of {card.get('probes')}")
    return f"vs {card.get('compared_with', 'the float32 export')}: " + ", ".join(parts)


# ------------------------------------------------------------------------------------------------------
# Probe inputs
# ------------------------------------------------------------------------------------------------------

def _token(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def probe_calls(runtime: Any) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """A few calls that exercise the runtime's task: texts, synthetic images, synthetic tones."""
    import numpy as np

    task = runtime.task
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8) for size in (40, 64, 96)]
    if task in ("image-classification", "image-feature-extraction"):
        return [((list(images),), {"top_k": None} if task == "image-classification" else {})]
    if task == "object-detection":
        return [((list(images),), {"threshold": 0.0})]
    if task in ("depth-estimation", "image-to-image", "image-segmentation"):
        return [((list(images),), {})]
    if task == "zero-shot-image-classification":
        return [((list(images),), {"candidate_labels": ["a cat", "a dog", "a car"]})]
    if task == "zero-shot-object-detection":
        return [((list(images),), {"candidate_labels": ["a cat", "a dog", "a car"], "threshold": 0.0})]
    if task in ("audio-classification", "automatic-speech-recognition", "zero-shot-audio-classification"):
        rate = int(runtime.metadata[rt.KEY_FEATURE_EXTRACTOR_CONFIG].get("sampling_rate") or 16000)
        t = np.arange(rate) / rate
        tones = [(0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(rate)).astype(np.float32)
                 for f in (220.0, 440.0, 1000.0)]
        if task == "zero-shot-audio-classification":  # seeded: long clips are cropped at random
            return [((tones,), {"candidate_labels": ["a dog barking", "rain", "music"], "seed": 0})]
        return [((tones,), {"top_k": None} if task == "audio-classification" else {})]
    texts = list(PROBE_TEXTS)
    if task == "fill-mask":
        mask = _token((runtime.tokenizer.config if runtime.tokenizer else {}).get("mask_token")) or "[MASK]"
        return [(([f"The capital of France is {mask}.", f"I {mask} this movie.", f"{mask} is a city."],), {})]
    if task == "question-answering":
        return [((), {"question": ["Where is Paris?", "What was slow?"], "context": " ".join(texts)})]
    if task == "zero-shot-classification":
        return [((texts,), {"candidate_labels": ["food", "cinema", "travel"]})]
    if task == "text-generation" or task in SEQ2SEQ_TASKS:
        return [((texts[:3],), {"do_sample": False, "num_beams": 1, "max_new_tokens": GENERATION_TOKENS})]
    if task == "text-classification":
        return [((texts,), {"top_k": None})]
    if task == "text-to-audio":  # the same noise on both sides
        return [((texts,), {"seed": 0})]
    return [((texts,), {})]


# ------------------------------------------------------------------------------------------------------
# Comparing answers
# ------------------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """numpy arrays and scalars as lists and numbers."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "getbands"):  # a PIL image (depth, image-to-image): its pixels, compared as the answer
        import numpy as np

        return np.asarray(value).tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _answer(value: Any) -> Any:
    """An output without its scores: what a caller reads as the answer (labels, tokens, ranking, text)."""
    if isinstance(value, dict):
        return {k: _answer(v) for k, v in value.items() if not isinstance(v, float)}
    if isinstance(value, list):
        return [_answer(v) for v in value if not isinstance(v, float)]
    return value


def _by_label(value: list[Any]) -> list[Any]:
    """A ranked list of labelled scores in label order, so that scores are compared label by label."""
    if value and all(isinstance(v, dict) and isinstance(v.get("label"), str) for v in value):
        return sorted(value, key=lambda v: v["label"])
    return value


def _difference(a: Any, b: Any) -> float | None:
    """The largest difference between the floats of two outputs of the same shape; None when they have none."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b)
    if isinstance(a, dict) and isinstance(b, dict):
        found = [_difference(a[k], b[k]) for k in a.keys() & b.keys()]
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        found = [_difference(x, y) for x, y in zip(_by_label(a), _by_label(b))]
    else:
        return None
    numbers = [f for f in found if f is not None]
    return max(numbers) if numbers else None


def _top(value: Any) -> Any:
    """What a classifying answer says first: the best label (text, image, audio classification), the best candidate
    (zero-shot), the best token (fill-mask), the answer (question answering), the entities and their words (token
    classification)."""
    if isinstance(value, dict):
        if isinstance(value.get("labels"), list):
            return value["labels"][:1]
        return value.get("answer", value.get("label", value.get("token_str", _answer(value))))
    if isinstance(value, list) and value and isinstance(value[0], dict):
        if any(k in value[0] for k in ("entity", "entity_group")):
            return [(v.get("entity", v.get("entity_group")), v.get("word")) for v in value]
        return _top(value[0])
    return _answer(value)


def _text(value: Any) -> str:
    """The text of a generating task's answer: generated_text, summary_text, translation_text or ASR's text."""
    while isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, dict):
        return next((str(v) for k, v in value.items() if k.endswith("text") and isinstance(v, str)), "")
    return str(value)


def word_errors(reference: str, hypothesis: str) -> int:
    """The word-level edit distance (substitutions, insertions, deletions) between two texts."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1]


def _cosine(a: Any, b: Any) -> float:
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / norm) if norm else float(np.array_equal(x, y))


def _generation_scores(plain: Any, changed: Any) -> dict[str, float]:
    """Top-1 agreement and perplexity ratio along PROBE_PARAGRAPH (its end cut off while the model has fewer
    positions than it has tokens), teacher-forced (logprobs)."""
    import math

    words = PROBE_PARAGRAPH.split()
    while True:
        try:
            a = plain.logprobs(" ".join(words))
            break
        except rt.InvalidInputError:  # too long for the model's positions
            if len(words) <= 4:
                raise
            words = words[: len(words) * 3 // 4]
    b = changed.logprobs(" ".join(words))
    agree = [x == y for x, y in zip(a["top_token_ids"][1:], b["top_token_ids"][1:])]
    mean = [sum(r["token_logprobs"][1:]) / (len(r["token_logprobs"]) - 1) for r in (a, b)]
    return {"top1_agreement": sum(agree) / len(agree), "perplexity_ratio": math.exp(mean[0] - mean[1]),
            "probe_tokens": float(len(agree) + 1)}


def _waveform_scores(plain: Any, changed: Any) -> dict[str, float]:
    """Speech (text-to-audio, the same seed on both sides): the share of probe texts spoken at the same length (the
    durations agree), and the lowest cosine similarity of those waveforms."""
    (args, kwargs), = probe_calls(plain)
    pairs = [(x["audio"], y["audio"]) for x, y in zip(plain(*args, **kwargs), changed(*args, **kwargs))]
    same = [(x, y) for x, y in pairs if x.shape == y.shape]
    scores = {"same_length": len(same) / max(len(pairs), 1)}
    if same:
        scores["cosine_similarity"] = min(_cosine(x, y) for x, y in same)
    return scores


def quality_card(plain: str | os.PathLike[str], changed: str | os.PathLike[str]) -> Quality:
    """Run both files (self-contained, same task) on the task's probe inputs; the card of the changed one."""
    a, b = rt.Runtime(plain), rt.Runtime(changed)
    task = a.task
    probes, worst, differ, errors, words, agree = 0, None, 0, 0, 0, 0
    for args, kwargs in probe_calls(a):
        first, second = _plain(a(*args, **kwargs)), _plain(b(*args, **kwargs))
        for x, y in zip(first, second) if isinstance(first, list) else [(first, second)]:
            probes += 1
            found = _difference(x, y)
            if found is not None:
                worst = found if worst is None else max(worst, found)
            differ += _answer(x) != _answer(y)
            agree += _top(x) == _top(y)
            if task in _TEXT_OUTPUTS:
                errors += word_errors(_text(x), _text(y))
                words += len(_text(x).split())
    metrics: dict[str, float] = {}
    if task == "text-generation":
        metrics.update(_generation_scores(a, b))
    elif task in _TEXT_OUTPUTS:
        metrics["word_error_rate"] = errors / max(words, 1)
    elif task == "text-to-audio":
        metrics.update(_waveform_scores(a, b))
    elif task in _EMBEDDINGS:  # what a user compares: the pooled vectors of encode() (sentence-transformers' own)
        inputs = probe_calls(a)[0][0][0]
        metrics["cosine_similarity"] = min(_cosine(x, y) for x, y in zip(a.encode(inputs), b.encode(inputs)))
    else:
        metrics["label_agreement"] = agree / max(probes, 1)
    return Quality(task, probes, differ, worst, metrics)
