"""Builders for tiny offline models: Hugging Face folders with random weights, exported to ONNX."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("ONNXMETA_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared(name: str) -> Path:
    """A folder of real Hugging Face files from ../shared/data; skips the test when it is absent."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is absent (real Hugging Face files live in ../shared/data beside the repository)")
    return path


def families(trained: dict[str, Any], real: dict[str, Any]) -> dict[str, Any]:
    """Parity families: those whose tokenizer is trained in the test always, those built from real Hugging Face
    files where ../shared/data is present (tests/parity/test_shared_data.py says which were left out without it)."""
    return {**trained, **(real if SHARED.is_dir() else {})}


def real_files(params: list[Any]) -> list[Any]:
    """Parametrize values that each need a folder of ../shared/data: all of them where it is present, else one
    skipped placeholder that says so."""
    if SHARED.is_dir():
        return params
    return [pytest.param(*[None] * len(params[0]), id="real-files",
                         marks=pytest.mark.skip(reason=f"{SHARED} is absent (real Hugging Face files)"))]


# What the trained tokenizers learn from: the words of every parity test's texts, so that they split into a
# few pieces rather than bytes or [UNK].
CORPUS = [
    "the quick brown fox jumps over the lazy dog", "i love this movie", "this was terrible",
    "hello world, this is a test.", "a wonderful day at the beach", "the food was good but slow",
    "paris is the capital of france, a city on the river.", "it's a test, isn't it? yes! no.",
    "my name is wolfgang and i live in berlin. berlin is the capital of germany.",
    "hugging face inc. is a company based in new york city. its headquarters are in dumbo, close to the manhattan bridge.",
    "sentence mentions angela merkel, microsoft and the rhine in dusseldorf yesterday.",
    "where do i live? what is my name? how many people live in berlin? about 3.7 million inhabitants; its river is the spree.",
    "paragraph: the museum number 17 opened in 1900 near the old harbour of hamburg. when did museum 3 open?",
    "who are you voting for in 2020? the new graphics card renders games at 200 frames per second.",
    "politics, technology, cooking, sports. this example is about politics. this text is about technology.",
    "a man is playing a guitar. someone plays an instrument. the cat sleeps on the mat.",
    "the stock market fell sharply today. a completely unrelated and much longer second sentence about finance.",
    "how do i bake bread? knead the dough, let it rise, bake at 220 c.",
    "der kölner dom wurde 1248 begonnen — 東京 ist weit weg, naïve gäste trinken café crème.",
    "ünïcödé façade — naïve café in zürich and düsseldorf 🤗 unknownish-wordpieces",
]
CORPUS += [s.capitalize() for s in CORPUS] + [s.title() for s in CORPUS] + [s.upper() for s in CORPUS[:3]]


def learn_merges(words: Counter[tuple[str, ...]], count: int, join: Any = str.__add__) -> list[tuple[str, str]]:
    """BPE training on word counts: merge the most frequent adjacent pair of symbols, count times.

    tokenizers' trainers break ties between equally frequent pairs in hash-map order, which changes from one
    process to the next; this one breaks them by the pair itself, so every run learns the same vocabulary
    (tiny random models need the same tokens to give the same, non-degenerate outputs).
    """
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, n in words.items():
            out: list[str] = []
            for symbol in symbols:
                if out and (out[-1], symbol) == best:
                    out[-1] = join(out[-1], symbol)
                else:
                    out.append(symbol)
            merged[tuple(out)] += n
        words = merged
    return merges


def _corpus_words(pre_tokenizer: Any, normalizer: Any = None) -> Counter[str]:
    """How often each word of CORPUS occurs, as the tokenizer's normalizer and pre-tokenizer split it."""
    words: Counter[str] = Counter()
    for line in CORPUS:
        text = normalizer.normalize_str(line) if normalizer is not None else line
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
    return words


def trained_wordpiece(folder: Path) -> None:
    """A small uncased WordPiece tokenizer trained here on CORPUS ("##" continuations), built and saved by
    transformers' BertTokenizer."""
    from tokenizers import normalizers, pre_tokenizers
    from transformers import BertTokenizer

    words = _corpus_words(pre_tokenizers.BertPreTokenizer(), normalizers.BertNormalizer(lowercase=True))
    spelled = Counter({(w[0], *(f"##{c}" for c in w[1:])): n for w, n in words.items()})
    merges = learn_merges(spelled, 420, lambda a, b: a + b[2:])
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({s for w in spelled for s in w})]
    vocab += [a + b[2:] for a, b in merges if a + b[2:] not in vocab]
    BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, model_max_length=512).save_pretrained(folder)


def trained_bpe(folder: Path) -> None:
    """A small byte-level BPE tokenizer trained here on CORPUS, built and saved by transformers' RobertaTokenizer:
    "Ġ" word starts, <s> A </s></s> B </s>, a <mask> that takes the space before it (lstrip), as roberta-base has it."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import RobertaTokenizer

    words = _corpus_words(pre_tokenizers.ByteLevel(add_prefix_space=False))
    merges = learn_merges(Counter({tuple(w): n for w, n in words.items()}), 440)
    vocab = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *sorted(pre_tokenizers.ByteLevel.alphabet())]
    vocab += [a + b for a, b in merges if a + b not in vocab]
    RobertaTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges, model_max_length=512,
                     mask_token=AddedToken("<mask>", lstrip=True, special=True)).save_pretrained(folder)


def trained_unigram(folder: Path) -> None:
    """A small SentencePiece-style Unigram tokenizer trained here on CORPUS ("▁" word starts, Metaspace), built and
    saved by transformers' XLMRobertaTokenizer: <s> A </s></s> B </s>, <mask>.

    Its pieces are the characters and the BPE merges of the corpus's words, each scored by the log of how often it
    occurs in them, so that frequent words are one piece and rare ones several.
    """
    import math

    from tokenizers import pre_tokenizers
    from transformers import XLMRobertaTokenizer

    words = _corpus_words(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"))
    merges = learn_merges(Counter({tuple(w): n for w, n in words.items()}), 380)
    pieces = sorted({c for w in words for c in w}) + [a + b for a, b in merges]
    counts = {p: sum(n * w.count(p) for w, n in words.items()) for p in dict.fromkeys(pieces)}
    total = sum(counts.values())
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("<mask>", 0.0)]  # <unk> at id 3
    vocab = specials + [(p, round(math.log(c / total), 6)) for p, c in counts.items()]
    XLMRobertaTokenizer(vocab=vocab, model_max_length=512).save_pretrained(folder)


def bert_tokenizer_folder(folder: Path) -> None:
    """The real bert-base-uncased tokenizer when ../shared is present, else a trained WordPiece one."""
    from transformers import AutoTokenizer

    source = SHARED / "bert-base-uncased"
    if source.exists():
        AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    else:
        trained_wordpiece(folder)


def positional(model: Any, input_names: Sequence[str], outputs: Sequence[str]) -> Any:
    """A torch module class around model for torch.onnx.export: positional tensors in (input_names), the named
    outputs out (one tensor, or a tuple of several)."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            result = self.model(**dict(zip(input_names, tensors)))
            return tuple(getattr(result, name) for name in outputs) if len(outputs) > 1 else getattr(result, outputs[0])

    return Wrapped


def export_onnx(model: Any, path: Path, input_names: Sequence[str], *, dynamo: bool = False,
                output: str | Sequence[str] = "logits") -> Path:
    """torch.onnx.export with dynamic batch and sequence axes; model left in eval mode.

    output names the model output(s) to export: "logits", or several, e.g. ("start_logits", "end_logits").
    """
    import torch

    outputs = [output] if isinstance(output, str) else list(output)
    Wrapped = positional(model, input_names, outputs)
    model.eval()
    dummy = tuple(torch.ones((2, 7), dtype=torch.long) if n != "token_type_ids" else torch.zeros((2, 7), dtype=torch.long)
                  for n in input_names)
    axes = {n: {0: "batch", 1: "sequence"} for n in input_names}
    if dynamo:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", min=2, max=512)
        torch.onnx.export(Wrapped().eval(), dummy, path, input_names=list(input_names), output_names=outputs, dynamo=True,
                          dynamic_shapes=(tuple({0: batch, 1: seq} for _ in input_names),), external_data=False)
    else:
        output_axes = {name: {0: "batch"} for name in outputs}
        torch.onnx.export(Wrapped().eval(), dummy, path, input_names=list(input_names), output_names=outputs,
                          dynamic_axes={**axes, **output_axes}, opset_version=17, dynamo=False)
    model.eval()  # export restores training mode; the oracle must not run dropout
    return path


def tiny_model(folder: Path, auto_class: str, tokenizer_folder_fn: Any = bert_tokenizer_folder, *, model_type: str = "bert",
               seed: int = 0, **config: Any) -> Any:
    """A random-weight model of a transformers auto class in folder (config, weights, tokenizer); returns the model."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_folder_fn(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model_config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128 if model_type == "bert" else 130, initializer_range=0.5,
        pad_token_id=tokenizer.pad_token_id, type_vocab_size=2 if model_type == "bert" else 1, **config,
    )
    auto = getattr(transformers, auto_class)
    model_config.architectures = [type(auto.from_config(model_config)).__name__]
    torch.manual_seed(seed)
    model = auto.from_config(model_config).eval()
    model.save_pretrained(folder)
    return model


def tiny_classifier(folder: Path, tokenizer_folder_fn: Any = bert_tokenizer_folder, *, model_type: str = "bert",
                    num_labels: int = 3, problem_type: str | None = None, seed: int = 0) -> Any:
    """A random-weight *ForSequenceClassification in folder (config, weights, tokenizer); returns the model."""
    labels = {i: name for i, name in enumerate(["NEGATIVE", "NEUTRAL", "POSITIVE", "OTHER"][:num_labels])} if num_labels > 1 \
        else {0: "SCORE"}
    return tiny_model(folder, "AutoModelForSequenceClassification", tokenizer_folder_fn, model_type=model_type, seed=seed,
                      id2label=labels, label2id={v: k for k, v in labels.items()}, problem_type=problem_type)


OPTIMUM_VENV = Path(os.environ.get("ONNXMETA_OPTIMUM_VENV", Path.home() / ".cache" / "onnxmeta" / "venv-optimum"))
# torch pinned: a bare torch pulls a multi-GB CUDA build (README, Install)
OPTIMUM_PINS = ("torch==2.13.0",)


def optimum_requirements() -> list[str]:
    """What the Optimum environment's scripts import: onnxmeta's own dependencies with the [export] extra (Optimum's
    exporter, transformers 4.57) and the runtime's optional imports ([vision], [audio]), read from pyproject.toml."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *extras["export"], *extras["vision"], *extras["audio"], *OPTIMUM_PINS]


def optimum_python() -> Path:
    """Python of a separate environment with Optimum (it pins transformers<4.58), created on first use.

    A venv of its own, not --system-site-packages: that would see the *base* interpreter's packages, not those of a
    venv the tests run from. It gets everything its scripts import (optimum_requirements); a change of those
    requirements rebuilds it.
    """
    import subprocess
    import sys

    python = OPTIMUM_VENV / "bin" / "python"
    stamp = OPTIMUM_VENV / "onnxmeta-requirements.txt"
    wanted = "\n".join(optimum_requirements()) + "\n"
    if python.exists() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(OPTIMUM_VENV)], check=True)
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", *optimum_requirements()], capture_output=True,
                             text=True)
    probe = [str(python), "-c", "import optimum.exporters.onnx, transformers, PIL, soundfile, onnxruntime, tokenizers; "
                                "assert transformers.__version__ < '4.58'"]
    if install.returncode != 0 or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.fail(f"could not create the Optimum environment in {OPTIMUM_VENV}:\n{install.stderr[-2000:]}")
    stamp.write_text(wanted)
    return python


def for_transformers_4(folder: Path) -> Path:
    """A copy of a model folder that transformers 4.57 (the Optimum environment) loads: transformers 5 saves
    extra_special_tokens as a list (T5's <extra_id_N>), which 4.57 reads as a dict of named tokens."""
    import json

    copy = folder.parent / f"{folder.name}-transformers4"
    if copy.exists():
        return copy
    shutil.copytree(folder, copy)
    config_path = copy / "tokenizer_config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        if isinstance(config.get("extra_special_tokens"), list):
            config["additional_special_tokens"] = config.pop("extra_special_tokens")
            config_path.write_text(json.dumps(config))
    return copy


def optimum_export(model_folder: Path, output: Path, task: str) -> Path:
    """Export a local model folder with Optimum's exporter (no hub); returns the output folder.

    Always as a transformers model: a sentence-transformers folder would make Optimum import the system's
    sentence-transformers, which needs transformers 5, from the 4.57 environment.
    """
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(optimum_python()), "-m", "optimum.exporters.onnx", "--model", str(for_transformers_4(model_folder)), "--task", task,
         "--library-name", "transformers", str(output)],
        capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"},
    )
    if result.returncode != 0:
        pytest.fail(f"optimum export failed:\n{result.stderr[-3000:]}")
    return output


def optimum_embedded(model_folder: Path, tmp_path: Path, export_task: str, **embed_options: Any) -> Path:
    """Optimum's export of a model folder with the folder's metadata embedded (vocabulary included)."""
    from authoring import embed_metadata

    exported = optimum_export(model_folder, tmp_path / "optimum", export_task)
    embed_metadata(exported / "model.onnx", model_folder, tmp_path / "model.onnx", include_vocab=True, **embed_options)
    return tmp_path / "model.onnx"


def hub_tokenizer_folder(name: str, tokenizer_class: str) -> Any:
    """A tokenizer_folder_fn that saves a real ../shared tokenizer (tokenizer_class set, as hub configs have it)."""
    import json

    def build(folder: Path) -> None:
        from transformers import AutoTokenizer

        source = shared(name)
        staging = folder.parent / f"{name}-staging"
        shutil.copytree(source, staging, dirs_exist_ok=True)
        config_path = staging / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        config.setdefault("tokenizer_class", tokenizer_class)
        config_path.write_text(json.dumps(config))
        AutoTokenizer.from_pretrained(staging).save_pretrained(folder)

    return build


def limited(tokenizer_folder_fn: Any, max_length: int = 128) -> Any:
    """A tokenizer_folder_fn whose tokenizer says model_max_length=max_length: the tiny models have 128
    positions, and the pipeline cuts long texts (stride windows, QA spans) at the tokenizer's limit."""
    def build(folder: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer_folder_fn(folder)
        AutoTokenizer.from_pretrained(folder, model_max_length=max_length).save_pretrained(folder)

    return build


SCORE_KEYS = ("score", "scores")


def assert_parity(actual: Any, expected: Any, *, tol: float = 1e-4) -> None:
    """Same nesting and keys as the transformers pipeline's output; every value equal except scores,
    which must be floats within tol."""
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (actual, expected)
        for a, e in zip(actual, expected):
            assert_parity(a, e, tol=tol)
        return
    assert isinstance(actual, dict) and set(actual) == set(expected), (actual, expected)
    for key, value in expected.items():
        if key in SCORE_KEYS:
            scores = actual[key] if isinstance(actual[key], list) else [actual[key]]
            assert all(isinstance(s, float) for s in scores), actual
            assert actual[key] == pytest.approx(value, abs=tol), (key, actual, expected)
        else:
            assert actual[key] == value, (key, actual, expected)
