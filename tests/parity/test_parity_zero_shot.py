"""zero-shot-classification parity with transformers.pipeline on an NLI classifier (random weights)."""

from __future__ import annotations

import pytest

from helpers import (assert_parity, bert_tokenizer_folder, export_onnx, families, hub_tokenizer_folder, tiny_classifier,
                     trained_bpe, trained_unigram)
from runtime_under_test import rt

SEQUENCES = ["Who are you voting for in 2020?", "The new graphics card renders games at 200 frames per second."]
LABELS = ["politics", "technology", "cooking", "sports"]

FAMILIES = families({
    "bert-wordpiece": (bert_tokenizer_folder, "bert", ["input_ids", "attention_mask", "token_type_ids"]),
    "bpe-trained": (trained_bpe, "roberta", ["input_ids", "attention_mask"]),
    "unigram-trained": (trained_unigram, "xlm-roberta", ["input_ids", "attention_mask"]),
}, {
    "roberta-bpe": (hub_tokenizer_folder("roberta-base", "RobertaTokenizer"), "roberta", ["input_ids", "attention_mask"]),
    "t5-unigram": (hub_tokenizer_folder("t5-small", "T5Tokenizer"), "bert", ["input_ids", "attention_mask"]),
})


def nli_model(folder, tokenizer_folder_fn=bert_tokenizer_folder, model_type="bert"):
    """A random-weight 3-way NLI classifier with MNLI's label order, upper case as some hub configs have it."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tiny_classifier(folder, tokenizer_folder_fn, model_type=model_type, num_labels=3, seed=4)
    config = AutoConfig.from_pretrained(folder)
    config.id2label = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    model = AutoModelForSequenceClassification.from_pretrained(folder, config=config).eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def nli(request, tmp_path_factory):
    from transformers import AutoTokenizer, pipeline

    from authoring import embed_metadata

    tokenizer_folder_fn, model_type, inputs = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(f"nli_{request.param}")
    model = nli_model(root / "hf", tokenizer_folder_fn, model_type)
    plain = export_onnx(model, root / "plain.onnx", inputs)
    metadata = embed_metadata(plain, root / "hf", root / "model.onnx", include_vocab=True, task="zero-shot-classification")
    oracle = pipeline("zero-shot-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(root / "hf"))
    return rt.Runtime(root / "model.onnx"), oracle, metadata


def test_detected_as_classifier_but_embedded_as_asked(nli):
    _, _, metadata = nli
    assert metadata[rt.KEY_PIPELINE_TASK] == "zero-shot-classification"
    assert metadata[rt.KEY_PIPELINE_CONFIG] == {"detected_task": "text-classification", "task_source": "override"}


@pytest.mark.parametrize("kwargs", [
    {},
    {"multi_label": True},
    {"hypothesis_template": "This text is about {}."},
])
def test_parity(nli, kwargs):
    runtime, oracle, _ = nli
    assert_parity(runtime(SEQUENCES[0], candidate_labels=LABELS, **kwargs), oracle(SEQUENCES[0], candidate_labels=LABELS, **kwargs))
    assert_parity(runtime(SEQUENCES, candidate_labels=LABELS, **kwargs), oracle(SEQUENCES, candidate_labels=LABELS, **kwargs))


def test_label_forms(nli):
    runtime, oracle, _ = nli
    assert_parity(runtime(SEQUENCES[0], "politics, technology ,cooking"), oracle(SEQUENCES[0], "politics, technology ,cooking"))
    assert_parity(runtime(SEQUENCES[1], ["technology"]), oracle(SEQUENCES[1], ["technology"]))  # one label: entail vs contradict
    a, b = runtime(SEQUENCES, candidate_labels=LABELS)
    assert a["scores"] != b["scores"]
    assert sum(a["scores"]) == pytest.approx(1.0, abs=1e-5)


def test_errors(nli):
    runtime, _, _ = nli
    with pytest.raises(rt.InvalidInputError) as info:
        runtime(SEQUENCES[0])
    assert str(info.value) == ("zero-shot-classification needs candidate_labels: a list of strings or a comma-separated "
                               "string, e.g. candidate_labels=['sports', 'politics']")
    with pytest.raises(rt.InvalidInputError, match="hypothesis_template 'About it.' has no {} where the label should go"):
        runtime(SEQUENCES[0], candidate_labels=LABELS, hypothesis_template="About it.")
    with pytest.raises(rt.InvalidInputError, match="^zero-shot-classification takes a string or a list of strings; got int$"):
        runtime([1, 2], candidate_labels=LABELS)
    with pytest.raises(rt.InvalidInputError, match="text-classification takes the inputs as its only positional argument"):
        rt.Runtime(runtime.path, task="text-classification")("x", ["a"])


@pytest.mark.optimum
def test_optimum_export(tmp_path):
    """Optimum's exporter (text-classification head) on the same NLI weights."""
    from transformers import AutoTokenizer, pipeline

    from helpers import optimum_embedded

    model = nli_model(tmp_path / "hf")
    runtime = rt.Runtime(optimum_embedded(tmp_path / "hf", tmp_path, "text-classification", task="zero-shot-classification"))
    oracle = pipeline("zero-shot-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(tmp_path / "hf"))
    for kwargs in ({}, {"multi_label": True}):
        assert_parity(runtime(SEQUENCES, candidate_labels=LABELS, **kwargs), oracle(SEQUENCES, candidate_labels=LABELS, **kwargs))
