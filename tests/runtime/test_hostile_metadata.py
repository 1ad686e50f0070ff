"""Metadata that reads but lies: wrong JSON types where the runtime reads configuration, graphs that do
not fit the task. Runtime refuses each at construction with the field named, never with a TypeError
from deep inside a task."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_under_test import rt

import make_corpus as corpus


def build(tmp_path, *, graph: bytes | None = None, config=None, tokenizer=None, st=None, task="text-classification") -> Path:
    changes = {rt.KEY_PIPELINE_TASK: task}
    if config is not None:
        changes[rt.KEY_MODEL_CONFIG] = {**corpus.CONFIG, **config}
    if tokenizer is not None:
        changes[rt.KEY_TOKENIZER_CONFIG] = {**corpus.TOKENIZER_CONFIG, **tokenizer}
    if st is not None:
        changes[rt.KEY_SENTENCE_TRANSFORMERS] = st
    path = tmp_path / "model.onnx"
    graph = corpus.graph_model() if graph is None else graph
    path.write_bytes(graph + b"".join(corpus.entry(k, v) for k, v in rt.encode_metadata(corpus.metadata(**changes))))
    return path


_FIX = "; re-embed from a model whose files have the right types"


@pytest.mark.parametrize("change, message", [
    ({"config": {"id2label": ["NEGATIVE", "POSITIVE"]}}, "hf_model_config.id2label must be an object, got an array"),
    ({"config": {"num_labels": True}}, "hf_model_config.num_labels must be an integer, got a boolean"),
    ({"config": {"num_labels": "two"}}, "hf_model_config.num_labels must be an integer, got a string"),
    ({"config": {"pad_token_id": "zero"}}, "hf_model_config.pad_token_id must be an integer, got a string"),
    ({"config": {"model_type": []}}, "hf_model_config.model_type must be a string, got an array"),
    ({"config": {"label2id": {"entailment": "0"}}}, "hf_model_config.label2id['entailment'] must be an integer, got a string"),
    ({"tokenizer": {"model_max_length": [1]}}, "hf_tokenizer_config.model_max_length must be an integer or a number, got an array"),
    ({"tokenizer": {"pad_token_type_id": {"a": 1}}}, "hf_tokenizer_config.pad_token_type_id must be an integer, got an object"),
    ({"tokenizer": {"pad_token": 5}}, "hf_tokenizer_config.pad_token must be a string or an object, got an integer"),
    ({"st": {"prompts": "query: "}}, "hf_sentence_transformers_config.prompts must be an object, got a string"),
    ({"st": {"prompts": {"query": 1}}}, "hf_sentence_transformers_config.prompts['query'] must be a string, got an integer"),
    ({"st": {"modules": ["x"]}}, "hf_sentence_transformers_config.modules[0] must be an object, got a string"),
    ({"st": {"pooling": -1}}, "hf_sentence_transformers_config.pooling must be an object, got an integer"),
    ({"st": {"pooling": {"pooling_mode": 1}}},
     "hf_sentence_transformers_config.pooling.pooling_mode must be a string or an array, got an integer"),
])
def test_wrong_json_types_are_refused_with_the_field_named(tmp_path, change, message):
    path = build(tmp_path, **change)
    assert rt.read_metadata(path)  # the file itself reads: the values are JSON, just not what the runtime needs
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.Runtime(path)
    assert str(info.value) == message + _FIX


def test_bad_truncation_side(tmp_path):
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.Runtime(build(tmp_path, tokenizer={"truncation_side": ""}))
    assert str(info.value) == "hf_tokenizer_config.truncation_side is ''; expected 'left' or 'right'"


@pytest.mark.parametrize("task, changes", [
    ("text-classification", {"config": {"id2label": None, "num_labels": None}}),
    ("feature-extraction", {"st": {"modules": None, "pooling": None, "prompts": None}}),
])
def test_json_null_in_task_configuration_means_not_set(tmp_path, task, changes):
    graph = corpus.token_graph_model() if task == "feature-extraction" else corpus.graph_model()
    runtime = rt.Runtime(build(tmp_path, graph=graph, task=task, **changes))
    if task == "text-classification":
        assert runtime("i love this movie") == [{"label": "LABEL_1", "score": pytest.approx(0.98201376)}]
    else:
        assert runtime.encode("i love this movie").tolist() == pytest.approx([-2 / 6, 2 / 6])  # mean over 6 tokens


def test_json_null_means_not_set(tmp_path):
    path = build(tmp_path, config={"pad_token_id": None, "problem_type": None},
                 tokenizer={"truncation_side": None, "padding_side": None, "pad_token_type_id": None})
    runtime = rt.Runtime(path)
    assert runtime("i love this movie")[0]["label"] == "POSITIVE"
    assert runtime.tokenizer.padding_side == "right" and runtime.tokenizer.pad_token_type_id == 0


@pytest.mark.parametrize("task", ["feature-extraction", "fill-mask", "token-classification"])
def test_token_tasks_need_a_token_axis(tmp_path, task):
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.Runtime(build(tmp_path, task=task))
    assert str(info.value) == (f"{task} reads the output 'logits' as (batch, sequence, features); it has shape "
                               "['batch', 2]; was the graph exported for another task?")


def test_graph_names_that_are_not_utf8(tmp_path):
    graph = corpus.graph_model()
    assert graph.count(b"logits") == 2  # the ReduceSum output and the graph output
    path = build(tmp_path, graph=graph.replace(b"logits", b"logit\xff"))
    with pytest.raises(rt.MetadataReadError, match="^onnxruntime cannot load model.onnx: 'utf-8' codec can't decode"):
        rt.Runtime(path)


def test_graph_without_outputs(tmp_path):
    import onnx

    model = onnx.load_from_string(corpus.graph_model())
    del model.graph.output[:]
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.Runtime(build(tmp_path, graph=model.SerializeToString()))
    assert str(info.value) == "model.onnx has a graph without outputs; re-export the model"


def _tokenizer_json(**changes) -> dict:
    document = {**corpus.TOKENIZER_JSON}
    for key, value in changes.items():
        document[key] = {**document[key], **value}
    return document


@pytest.mark.parametrize("changes, message", [
    # the template names [CLS] and [SEP] but defines neither: tokenizers' Rust code panics (PanicException,
    # a BaseException) on the first encode
    ({"post_processor": {"special_tokens": {}}}, "the embedded tokenizer.json fails to tokenize: no entry found for key"),
    # an unknown word needs an unk_token the vocabulary lacks: a plain Exception, only for some inputs,
    # which the runtime reports like any input the tokenizer refuses
    ({"model": {"unk_token": "[NOPE]"}}, "cannot tokenize the input: WordLevel error: Missing [UNK] token from the vocabulary"),
])
def test_a_tokenizer_that_fails_on_input_is_our_error(tmp_path, changes, message):
    path = tmp_path / "model.onnx"
    meta = corpus.metadata(**{rt.KEY_TOKENIZER_JSON: rt.canonical_json(_tokenizer_json(**changes))})
    path.write_bytes(corpus.written(meta))
    runtime = rt.Runtime(path)
    with pytest.raises(rt.MetadataError) as info:
        runtime("i love this unknownword")
    assert str(info.value).removesuffix("; re-embed a tokenizer that transformers can load") == message
    assert isinstance(info.value, rt.ProcessorReconstructionError if "fails" in message else rt.InvalidInputError)


def test_fill_mask_output_narrower_than_the_vocabulary(tmp_path):
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.Runtime(build(tmp_path, graph=corpus.token_graph_model(), task="fill-mask"))
    assert str(info.value) == ("fill-mask output 'logits' scores 2 tokens but the embedded tokenizer has 10; "
                               "was the graph exported for another task?")


def test_a_token_id_past_the_embedding_table_is_our_error(tmp_path):
    """A tokenizer with more tokens than the graph's table (no digest to catch the edit): onnxruntime fails
    inside Gather at call time, and the error says where to look."""
    vocab = {**corpus.VOCAB, "extra": 10}
    document = {**corpus.TOKENIZER_JSON, "model": {**corpus.TOKENIZER_JSON["model"], "vocab": vocab}}
    path = tmp_path / "model.onnx"
    meta = corpus.metadata(**{rt.KEY_TOKENIZER_JSON: rt.canonical_json(document)})
    path.write_bytes(corpus.written(meta))
    runtime = rt.Runtime(path)
    assert runtime("i love this movie")[0]["label"] == "POSITIVE"
    with pytest.raises(rt.MetadataValidationError) as info:
        runtime("i love extra")
    message = str(info.value)
    assert message.startswith("onnxruntime cannot run the model on this input: ")
    assert "indices element out of data bounds, idx=10" in message
    assert message.endswith("; the embedded tokenizer and the graph may disagree (python -m authoring validate --check-graph)")
