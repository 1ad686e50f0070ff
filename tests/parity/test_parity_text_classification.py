"""text-classification parity: the runtime on ONNX vs transformers.pipeline on the same PyTorch weights.

Tolerance: labels identical, scores within 1e-4 (float32 ONNX vs PyTorch kernels).
"""

from __future__ import annotations


import pytest

from helpers import (assert_parity, export_onnx, families, hub_tokenizer_folder, tiny_classifier, trained_bpe,
                     trained_unigram)
from runtime_under_test import rt

TEXTS = [
    "I love this movie!",
    "This was a terrible waste of time, and the ending made it worse.",
    "hello world, this is a test.",
    "",
    "Ünïcödé façade — naïve café 東京",
    "a " * 40 + "very long repeated sentence that needs padding in a batch",
]
PAIRS = [
    {"text": "A man is playing a guitar.", "text_pair": "Someone plays an instrument."},
    {"text": "The cat sleeps.", "text_pair": "A completely unrelated and much longer second sentence about finance."},
]


@pytest.fixture(scope="module")
def oracle(bert_classifier):
    from transformers import AutoTokenizer, pipeline

    return pipeline("text-classification", model=bert_classifier.model,
                    tokenizer=AutoTokenizer.from_pretrained(bert_classifier.folder), device="cpu")


def test_outputs_are_not_degenerate(runtime):
    scores = [r["score"] for r in runtime(TEXTS)]
    assert len({round(s, 4) for s in scores}) >= 4, scores
    ranked = runtime(TEXTS[:2], top_k=None)
    assert ranked[0] != ranked[1]


def test_single_text(runtime, oracle):
    for text in TEXTS:
        expected = oracle(text)
        assert isinstance(expected, list) and len(expected) == 1
        assert_parity(runtime(text), expected)


def test_batch_keeps_order_across_length_buckets(bert_embedded, oracle):
    runtime = rt.Runtime(bert_embedded, batch_size=2)
    assert_parity(runtime(TEXTS), oracle(TEXTS))


@pytest.mark.parametrize("top_k", [None, 1, 2, 5])
def test_top_k(runtime, oracle, top_k):
    assert_parity(runtime(TEXTS[0], top_k=top_k), oracle(TEXTS[0], top_k=top_k))
    assert_parity(runtime(TEXTS[:3], top_k=top_k), oracle(TEXTS[:3], top_k=top_k))


@pytest.mark.parametrize("function", ["sigmoid", "softmax", "none", "SIGMOID"])
def test_function_to_apply(runtime, oracle, function):
    assert_parity(runtime(TEXTS[:3], function_to_apply=function, top_k=None),
                oracle(TEXTS[:3], function_to_apply=function, top_k=None))


def test_text_pairs(runtime, oracle):
    for pair in PAIRS:
        assert_parity(runtime(pair), oracle(pair))
    assert_parity(runtime(PAIRS), oracle(PAIRS))
    assert_parity(runtime(PAIRS, top_k=None), oracle(PAIRS, top_k=None))
    swapped = {"text": PAIRS[0]["text_pair"], "text_pair": PAIRS[0]["text"]}
    assert runtime(swapped, top_k=None) != runtime(PAIRS[0], top_k=None)


@pytest.mark.parametrize("num_labels, problem_type, expected_function", [
    (1, None, "sigmoid"),
    (2, "multi_label_classification", "sigmoid"),
    (2, "regression", "none"),
])
def test_default_function_from_config(tmp_path, num_labels, problem_type, expected_function):
    from authoring import embed_metadata
    from transformers import AutoTokenizer, pipeline

    model = tiny_classifier(tmp_path / "hf", num_labels=num_labels, problem_type=problem_type, seed=1)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    plain = export_onnx(model, tmp_path / "plain.onnx", names)
    embed_metadata(plain, tmp_path / "hf", tmp_path / "model.onnx", include_vocab=True)
    runtime = rt.Runtime(tmp_path / "model.onnx")
    oracle = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(tmp_path / "hf"))
    assert_parity(runtime(TEXTS), oracle(TEXTS))
    assert_parity(runtime(TEXTS[:2], top_k=None), oracle(TEXTS[:2], top_k=None))
    explicit = runtime(TEXTS[:2], top_k=None, function_to_apply=expected_function)
    assert_parity(runtime(TEXTS[:2], top_k=None), explicit)
    if expected_function == "none":
        assert any(d["score"] < 0 or d["score"] > 1 for r in explicit for d in r)


def test_dynamo_export(bert_classifier, oracle, tmp_path):
    from authoring import embed_metadata

    plain = export_onnx(bert_classifier.model, tmp_path / "dynamo.onnx", bert_classifier.input_names, dynamo=True)
    embed_metadata(plain, bert_classifier.folder, tmp_path / "model.onnx", include_vocab=True)
    assert_parity(rt.Runtime(tmp_path / "model.onnx")(TEXTS, top_k=None), oracle(TEXTS, top_k=None))


def test_model_without_token_type_ids_input(bert_classifier, oracle, tmp_path):
    """Graph inputs come from the session: a graph without token_type_ids gets none."""
    from authoring import embed_metadata

    names = ["input_ids", "attention_mask"]
    plain = export_onnx(bert_classifier.model, tmp_path / "two_inputs.onnx", names)
    embed_metadata(plain, bert_classifier.folder, tmp_path / "model.onnx", include_vocab=True)
    runtime = rt.Runtime(tmp_path / "model.onnx")
    assert [i.name for i in runtime.session.get_inputs()] == names
    assert_parity(runtime(TEXTS[:3]), oracle(TEXTS[:3]))


@pytest.mark.optimum
def test_optimum_export(bert_classifier, oracle, tmp_path):
    """Optimum's exporter (transformers 4.57, separate venv) on the same weights; metadata from either folder."""
    from authoring import embed_metadata

    from helpers import optimum_export

    exported = optimum_export(bert_classifier.folder, tmp_path / "optimum", "text-classification")
    for source in (bert_classifier.folder, exported):  # the original folder, and the files Optimum re-saved
        out = tmp_path / f"from_{source.name}.onnx"
        embed_metadata(exported / "model.onnx", source, out, include_vocab=True)
        runtime = rt.Runtime(out)
        assert_parity(runtime(TEXTS), oracle(TEXTS))
        assert_parity(runtime(PAIRS, top_k=None), oracle(PAIRS, top_k=None))


FAMILIES = families({
    # byte-level BPE with leading-space tokens; no token_type_ids
    "bpe-trained": (trained_bpe, "roberta", ["input_ids", "attention_mask"]),
    # SentencePiece-style Unigram, XLM-RoBERTa's template
    "unigram-trained": (trained_unigram, "xlm-roberta", ["input_ids", "attention_mask"]),
}, {
    "roberta-bpe": (hub_tokenizer_folder("roberta-base", "RobertaTokenizer"), "roberta", ["input_ids", "attention_mask"]),
    # T5's SentencePiece Unigram in front of a BERT encoder
    "t5-unigram": (hub_tokenizer_folder("t5-small", "T5Tokenizer"), "bert", ["input_ids", "attention_mask"]),
})


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_families(family, tmp_path):
    from authoring import embed_metadata
    from transformers import AutoTokenizer, pipeline

    tokenizer_folder_fn, model_type, inputs = FAMILIES[family]
    model = tiny_classifier(tmp_path / "hf", tokenizer_folder_fn, model_type=model_type, seed=2)
    plain = export_onnx(model, tmp_path / "plain.onnx", inputs)
    embed_metadata(plain, tmp_path / "hf", tmp_path / "model.onnx", include_vocab=True)
    runtime = rt.Runtime(tmp_path / "model.onnx")
    oracle = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(tmp_path / "hf"))
    texts = [t for t in TEXTS if len(t) < 200]
    assert_parity(runtime(texts), oracle(texts))
    assert_parity(runtime(texts, top_k=None), oracle(texts, top_k=None))
    assert_parity(runtime(PAIRS, top_k=None), oracle(PAIRS, top_k=None))
    assert len({round(r["score"], 4) for r in runtime(texts)}) >= 3
    # longer than the model: truncated to its real limit (RoBERTa positions start after padding_idx)
    assert runtime.tokenizer.max_length == 128
    assert runtime("word " * 600)[0]["label"] in {"NEGATIVE", "NEUTRAL", "POSITIVE"}


def test_cross_encoder_pairs_in_batches(tmp_path):
    """A cross-encoder (one logit, sigmoid) scoring many sentence pairs, run in length-sorted buckets."""
    from authoring import embed_metadata
    from transformers import AutoTokenizer, pipeline

    model = tiny_classifier(tmp_path / "hf", num_labels=1, seed=7)
    plain = export_onnx(model, tmp_path / "plain.onnx", ["input_ids", "attention_mask", "token_type_ids"])
    embed_metadata(plain, tmp_path / "hf", tmp_path / "model.onnx", include_vocab=True)
    oracle = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(tmp_path / "hf"))
    query = "How do I bake bread?"
    passages = [t for t in TEXTS if t] + [p["text_pair"] for p in PAIRS] + ["Knead the dough, let it rise, bake at 220 C."]
    pairs = [{"text": query, "text_pair": passage} for passage in passages]
    for batch_size in (1, 3, 32):
        runtime = rt.Runtime(tmp_path / "model.onnx", batch_size=batch_size)
        assert_parity(runtime(pairs), oracle(pairs))
        assert_parity(runtime(pairs, top_k=None), oracle(pairs, top_k=None))
    scores = [r["score"] for r in runtime(pairs)]
    assert all(0 < s < 1 for s in scores) and len({round(s, 4) for s in scores}) == len(pairs)
