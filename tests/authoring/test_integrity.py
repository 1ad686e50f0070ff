"""Integrity: validate detects a change to any embedded value, and checks the metadata against the graph
(tokenizer outputs vs graph inputs, vocabulary vs embedding table, labels vs classifier width)."""

from __future__ import annotations

import base64
import gzip
import warnings
from pathlib import Path

import pytest
from runtime_under_test import rt

from helpers import shared

from authoring import validate
from authoring.cli import main

import make_corpus as corpus


def _tamper(key: str, value: str) -> str:
    """The value with one visible change, compressed again if it was compressed."""
    if key.endswith(rt.COMPRESSED_SUFFIX):
        text = gzip.decompress(base64.b64decode(value)).decode()
        return base64.b64encode(gzip.compress(_tamper(key.removesuffix(rt.COMPRESSED_SUFFIX), text).encode(), mtime=0)).decode()
    if key == rt.KEY_VERSION:
        return "2.1"
    if value.endswith("}"):
        return value[:-1] + ',"zz_added":1}'  # still a valid object, so only the digest can tell
    return value + "x"


def _props(path: Path) -> list[tuple[str, str]]:
    return [(e.key, e.value) for e in rt.scan_model(path).entries]


def _rewrite(source: Path, props: list[tuple[str, str]], out: Path) -> Path:
    from authoring.embedder import write_props

    write_props(source, props, out, verify=False)
    return out


def test_tampering_with_each_value_is_detected(bert_embedded, tmp_path):
    shared("bert-base-uncased")  # a real vocabulary makes tokenizer.json large enough to be compressed
    props = _props(bert_embedded)
    assert len(props) >= 12 and any(k.endswith(rt.COMPRESSED_SUFFIX) for k, _ in props)
    for i, (key, value) in enumerate(props):
        changed = [*props[:i], (key, _tamper(key, value)), *props[i + 1:]]
        path = _rewrite(bert_embedded, changed, tmp_path / "tampered.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a changed version number also warns that it is newer
            checks = validate(path)
            with pytest.raises(rt.MetadataValidationError, match="digest mismatch"):
                rt.Runtime(path)
        assert [(c.name, c.ok) for c in checks] == [("metadata", False)], key
        assert "metadata digest mismatch: the embedded values were changed after embedding" in checks[0].message, key


@pytest.mark.parametrize("change", ["drop", "add"])
def test_removing_or_adding_a_key_is_detected(bert_embedded, tmp_path, change):
    props = _props(bert_embedded)
    if change == "drop":
        props = [(k, v) for k, v in props if k != rt.KEY_PIPELINE_TASK]
    else:
        props = [*props, ("hf_extra", "x")]
    checks = validate(_rewrite(bert_embedded, props, tmp_path / "changed.onnx"))
    assert not checks[0].ok and "digest mismatch" in checks[0].message


def test_a_stripped_digest_is_reported(bert_embedded, tmp_path):
    """The digest guards against edits, not against an editor who also removes it: validate says so."""
    props = [(k, v) for k, v in _props(bert_embedded) if k != rt.KEY_DIGEST]
    checks = validate(_rewrite(bert_embedded, props, tmp_path / "stripped.onnx"))
    assert checks[0].ok and checks[0].message == "format 2.0, level full, no digest (older writer)"


def test_a_consistent_real_model(bert_embedded):
    checks = validate(bert_embedded)
    assert [c.name for c in checks if c.ok] == ["metadata", "task", "processor", "graph"], checks
    vocab = rt.read_metadata(bert_embedded)[rt.KEY_MODEL_CONFIG]["vocab_size"]
    assert checks[-1].message == (
        f"inputs input_ids, attention_mask, token_type_ids come from the tokenizer; tokenizer.json {vocab} fits the "
        f"embedding table ({vocab} rows); config vocab_size {vocab} fits the embedding table ({vocab} rows); "
        "labels: 3 = width of output 'logits'")


# -- graph against metadata, on the corpus classifier ------------------------------------------------


def _model(tmp_path: Path, *, edit=None, config=None, tokenizer_json=None, tokenizer=None, task="text-classification") -> Path:
    import onnx

    model = onnx.load_from_string(corpus.graph_model())
    if edit is not None:
        edit(model)
    changes = {rt.KEY_PIPELINE_TASK: task}
    if config is not None:
        changes[rt.KEY_MODEL_CONFIG] = {**corpus.CONFIG, **config}
    if tokenizer_json is not None:
        changes[rt.KEY_TOKENIZER_JSON] = rt.canonical_json(tokenizer_json)
    if tokenizer is not None:
        changes[rt.KEY_TOKENIZER_CONFIG] = {**corpus.TOKENIZER_CONFIG, **tokenizer}
    path = tmp_path / "model.onnx"
    props = rt.encode_metadata(corpus.metadata(**changes))
    path.write_bytes(model.SerializeToString() + b"".join(corpus.entry(k, v) for k, v in props))
    return path


def graph_check(path: Path):
    (check,) = validate(path, check_metadata=False, check_task=False, check_processor=False)
    assert check.name == "graph"
    return check


def _set_width(width):
    def edit(model):
        dim = model.graph.output[0].type.tensor_type.shape.dim[1]
        if isinstance(width, int):
            dim.dim_value = width
        else:
            dim.dim_param = width
    return edit


def _bigger_vocab(n: int) -> dict:
    vocab = {**corpus.VOCAB, **{f"extra{i}": 10 + i for i in range(n - 10)}}
    return {**corpus.TOKENIZER_JSON, "model": {**corpus.TOKENIZER_JSON["model"], "vocab": vocab}}


def _add_input(name):
    def edit(model):
        from onnx import TensorProto, helper

        model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]))
    return edit


@pytest.mark.parametrize("kwargs, message", [
    ({"config": {"id2label": {"0": "A", "1": "B", "2": "C"}}},
     "config id2label has 3 labels but output 'logits' has width 2"),
    ({"edit": _set_width(3)}, "config id2label has 2 labels but output 'logits' has width 3"),
    ({"config": {"vocab_size": 12}}, "config vocab_size is 12 but the embedding table 'embedding' has 10 rows"),
    ({"tokenizer_json": _bigger_vocab(12), "config": {"vocab_size": 10}},
     "tokenizer.json has 12 tokens but the embedding table 'embedding' has 10 rows"),
    ({"edit": _add_input("pixel_values")},
     "graph inputs ['pixel_values'] are not among the tokenizer's outputs ['input_ids', 'attention_mask', 'token_type_ids']"),
    ({"edit": _add_input("token_type_ids"), "tokenizer": {"model_input_names": ["input_ids", "attention_mask"]}},
     "graph inputs ['token_type_ids'] are not among the tokenizer's outputs ['input_ids', 'attention_mask']"),
    ({"config": {"vocab_size": 12, "id2label": {"0": "A"}}},
     ("config vocab_size is 12 but the embedding table 'embedding' has 10 rows; "
      "config id2label has 1 labels but output 'logits' has width 2")),
])
def test_disagreements_name_what_differs(tmp_path, kwargs, message):
    check = graph_check(_model(tmp_path, **kwargs))
    assert not check.ok and check.message == message


def test_symbolic_dimensions_are_not_checkable_rather_than_wrong(tmp_path):
    check = graph_check(_model(tmp_path, edit=_set_width("num_labels")))
    assert check.ok
    assert check.message.endswith("; not checkable: labels (output 'logits' has width 'num_labels')")


def test_no_embedding_table_is_not_checkable(tmp_path):
    from onnx import helper

    def edit(model):
        model.graph.node[0].input[1] = "input_ids_copy"
        model.graph.node.insert(0, helper.make_node("Identity", ["input_ids"], ["input_ids_copy"]))

    check = graph_check(_model(tmp_path, edit=edit))
    assert check.ok and "not checkable: vocabulary (no embedding table gathered by input_ids)" in check.message


def test_a_padded_embedding_table_is_fine(tmp_path):
    """Tables padded past the tokenizer (vocab_size rounded up to a multiple of 8) are common and correct."""
    check = graph_check(_model(tmp_path, tokenizer_json=_bigger_vocab(10), config={"vocab_size": 10}))
    assert check.ok


def test_cli_reports_the_graph_check(tmp_path, capsys):
    path = _model(tmp_path, config={"id2label": {"0": "A", "1": "B", "2": "C"}})
    assert main(["validate", str(path), "--check-graph"]) == 1
    assert capsys.readouterr().out == "FAIL graph: config id2label has 3 labels but output 'logits' has width 2\n"
