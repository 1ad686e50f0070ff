"""token-classification parity: the runtime on ONNX vs transformers.pipeline("token-classification") on the
same PyTorch weights, for WordPiece, byte-level BPE and SentencePiece Unigram tokenizers, whose word
boundaries differ: trained in the test, and the real ones (cased NER, RoBERTa, T5) where ../shared is present.

Tolerance: entities, words, indices and character offsets identical; scores within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import (SHARED, assert_parity, export_onnx, families, hub_tokenizer_folder, limited, tiny_model, trained_bpe,
                     trained_unigram, trained_wordpiece)
from runtime_under_test import rt

TEXTS = [
    "My name is Wolfgang and I live in Berlin.",
    "Hugging Face Inc. is a company based in New York City. Its headquarters are in DUMBO, close to the Manhattan Bridge.",
    "Ünïcödé façade — naïve café in Zürich 東京 🤗 unknownish-wordpieces",
    "",
    "   spaces   around  ",
]
LONG = " ".join(f"Sentence {i} mentions Angela Merkel, Microsoft and the Rhine in Düsseldorf." for i in range(16))
STRATEGIES = ["none", "simple", "first", "average", "max"]
CONLL = ["O", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]

BERT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
FAMILIES = families({
    # WordPiece with "##" continuations: words found by token length
    "wordpiece-trained": (trained_wordpiece, "bert", BERT_INPUTS),
    # byte-level BPE, leading-space tokens ("Ġ"); no continuation marker: words found by the space heuristic
    "bpe-trained": (trained_bpe, "roberta", ["input_ids", "attention_mask"]),
    # SentencePiece-style Unigram ("▁" word starts), XLM-RoBERTa's <s> A </s>
    "unigram-trained": (trained_unigram, "xlm-roberta", ["input_ids", "attention_mask"]),
}, {
    "bert-wordpiece": (hub_tokenizer_folder("dslim__bert-base-NER", "BertTokenizer"), "bert", BERT_INPUTS),  # cased
    "roberta-bpe": (hub_tokenizer_folder("roberta-base", "RobertaTokenizer"), "roberta", ["input_ids", "attention_mask"]),
    # T5's Unigram (no <s>) in front of a BERT encoder
    "t5-unigram": (hub_tokenizer_folder("t5-small", "T5Tokenizer"), "bert", ["input_ids", "attention_mask"]),
})
WORDPIECE = "bert-wordpiece" if "bert-wordpiece" in FAMILIES else "wordpiece-trained"


class Pair:
    """A family's runtime and transformers pipeline on the same weights."""

    def __init__(self, family: str, path: Path, runtime: Any, oracle: Any) -> None:
        self.family, self.path, self.runtime, self.oracle = family, path, runtime, oracle


def labels() -> dict[int, str]:
    """The CoNLL labels of the real dslim/bert-base-NER config when ../shared is present."""
    config = SHARED / "dslim__bert-base-NER" / "config.json"
    names = json.loads(config.read_text())["id2label"] if config.exists() else dict(enumerate(CONLL))
    return {int(k): v for k, v in names.items()}


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory) -> Pair:
    import torch
    from authoring import embed_metadata
    from transformers import AutoTokenizer, pipeline

    tokenizer_folder_fn, model_type, inputs = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(f"ner_{request.param}")
    id2label = labels()
    model = tiny_model(root / "hf", "AutoModelForTokenClassification", limited(tokenizer_folder_fn),
                       model_type=model_type, seed=4, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    tokenizer = AutoTokenizer.from_pretrained(root / "hf")
    with torch.no_grad():
        # Centre each label's logits on sample text, then keep five labels (O, PER, LOC) in play, so that
        # random weights still give varied labels and entities of several tokens.
        model.classifier.bias.zero_()
        mean = model(**tokenizer(TEXTS[:3], return_tensors="pt", padding=True)).logits.mean(dim=(0, 1))
        model.classifier.bias.copy_(torch.tensor([0.5, -9, -9, 0, 0, -9, -9, 0, 0]) - mean)
    model.save_pretrained(root / "hf")
    plain = export_onnx(model, root / "plain.onnx", inputs)
    metadata = embed_metadata(plain, root / "hf", root / "model.onnx", include_vocab=True)
    assert metadata[rt.KEY_PIPELINE_TASK] == "token-classification"
    oracle = pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")
    return Pair(request.param, root / "model.onnx", rt.Runtime(root / "model.onnx"), oracle)


def test_outputs_are_not_degenerate(pair):
    tokens = pair.runtime(TEXTS[1], ignore_labels=[])
    assert len({t["entity"] for t in tokens}) >= 3, tokens
    assert len({round(t["score"], 4) for t in tokens}) >= 5, tokens
    entity_tokens = pair.runtime(TEXTS[1])
    grouped = pair.runtime(TEXTS[1], aggregation_strategy="simple")
    assert 0 < len(grouped) < len(entity_tokens), grouped  # some entities span several tokens
    words = pair.runtime(TEXTS[1], aggregation_strategy="first", ignore_labels=[])
    assert len(words) < len(tokens)  # subwords fused into words


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_aggregation_strategies(pair, strategy):
    for text in TEXTS:
        expected = pair.oracle(text, aggregation_strategy=strategy)
        actual = pair.runtime(text, aggregation_strategy=strategy)
        assert_parity(actual, expected)
        for entity in actual:
            assert isinstance(entity["start"], int) and isinstance(entity["end"], int)
            assert 0 <= entity["start"] <= entity["end"] <= len(text), (text, entity)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ignore_labels(pair, strategy):
    text = TEXTS[1]
    for ignore in ([], ["O", "PER"], ["LOC", "I-PER"]):
        assert_parity(pair.runtime(text, aggregation_strategy=strategy, ignore_labels=ignore),
                      pair.oracle(text, aggregation_strategy=strategy, ignore_labels=ignore))
    everything = pair.runtime(text, aggregation_strategy=strategy, ignore_labels=[])
    assert any(e.get("entity", e.get("entity_group")) == "O" for e in everything)


def test_default_is_one_entry_per_token_with_index(pair):
    tokens = pair.runtime(TEXTS[0], ignore_labels=[])
    assert [t["index"] for t in tokens] == list(range(1 if pair.family != "t5-unigram" else 0, len(tokens) + (
        1 if pair.family != "t5-unigram" else 0)))
    assert set(tokens[0]) == {"entity", "score", "index", "word", "start", "end"}


def test_lists_keep_order_across_length_buckets(pair):
    runtime = rt.Runtime(pair.path, batch_size=2)
    for strategy in ("none", "first"):
        assert_parity(runtime(TEXTS, aggregation_strategy=strategy), pair.oracle(TEXTS, aggregation_strategy=strategy))
    assert runtime([]) == []


def test_long_text_is_truncated_or_read_in_stride_windows(pair):
    assert_parity(pair.runtime(LONG, aggregation_strategy="simple"), pair.oracle(LONG, aggregation_strategy="simple"))
    for strategy in ("simple", "first", "max"):
        expected = pair.oracle(LONG, aggregation_strategy=strategy, stride=16)
        actual = pair.runtime(LONG, aggregation_strategy=strategy, stride=16)
        assert_parity(actual, expected)
    first_window = pair.runtime.tokenizer.encode([LONG])[0]  # cut at the model's 128 tokens
    assert max(e["end"] for e in actual) > max(end for _, end in first_window.offsets)  # later windows were read
    with pytest.raises(rt.InvalidInputError, match="needs an aggregation_strategy"):
        pair.runtime(LONG, stride=16)
    with pytest.raises(rt.InvalidInputError, match="must be less than the model's maximum length"):
        pair.runtime(LONG, stride=128, aggregation_strategy="simple")


def test_split_into_words(pair):
    words = ["Angela", "Merkel", "visited", "Düsseldorf", "yesterday"]
    for strategy in ("none", "simple", "average"):
        assert_parity(pair.runtime(words, is_split_into_words=True, aggregation_strategy=strategy, ignore_labels=[]),
                      pair.oracle(words, is_split_into_words=True, aggregation_strategy=strategy, ignore_labels=[]))
    batch = [words, ["New", "York"]]
    assert_parity(pair.runtime(batch, is_split_into_words=True, ignore_labels=[], delimiter="_"),
                  pair.oracle(batch, is_split_into_words=True, ignore_labels=[], delimiter="_"))


def test_bad_options(pair):
    with pytest.raises(rt.InvalidInputError, match="aggregation_strategy must be one of none, simple, first, average, max"):
        pair.runtime("x", aggregation_strategy="longest")
    with pytest.raises(rt.InvalidInputError, match="ignore_labels must be a list"):
        pair.runtime("x", ignore_labels="O")
    with pytest.raises(rt.InvalidInputError, match="takes a string or a list of strings; got int"):
        pair.runtime(3)
    with pytest.raises(rt.InvalidInputError, match="token-classification does not take 'top_k'"):
        pair.runtime("x", top_k=3)


@pytest.mark.optimum
@pytest.mark.parametrize("pair", [WORDPIECE], indirect=True)  # one family for the exporter; tokenizers are covered above
def test_optimum_export(pair, tmp_path):
    """Optimum's exporter on the same weights gives the same entities."""
    from helpers import optimum_embedded

    runtime = rt.Runtime(optimum_embedded(pair.path.parent / "hf", tmp_path, "token-classification"))
    for strategy in STRATEGIES:
        assert_parity(runtime(TEXTS, aggregation_strategy=strategy), pair.oracle(TEXTS, aggregation_strategy=strategy))


def test_runtime_cli(pair, capsys):
    options = '{"aggregation_strategy": "simple", "ignore_labels": []}'
    assert rt._main([str(pair.path), TEXTS[0], "--options", options]) == 0
    assert json.loads(capsys.readouterr().out) == pair.runtime(TEXTS[0], aggregation_strategy="simple", ignore_labels=[])
    assert rt._main([str(pair.path), TEXTS[0], "--options", "[1]"]) == 1
    assert capsys.readouterr().err == "error: --options must be a JSON object, e.g. --options '{\"top_k\": 3}'\n"
    assert rt._main([str(pair.path), TEXTS[0], "--options", '{"top_k": 2}']) == 1
    assert "token-classification does not take 'top_k'" in capsys.readouterr().err
