"""Embedding: levels, discovery, streaming rewrite, preservation, atomicity."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest

import authoring
import onnxmeta_runtime as rt
from authoring import embedder
from helpers import shared
from helpers import SHARED


def load(path):
    import onnx

    return onnx.load(path)


def props_of(path):
    return {p.key: p.value for p in load(path).metadata_props}


def with_props(src, dst, props):
    """A copy of src with extra metadata_props written by onnx itself."""
    import onnx

    model = load(src)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, dst)
    return dst


def test_full_level(bert_classifier, bert_embedded):
    shared("bert-base-uncased")  # a real vocabulary: tokenizer.json past the compression threshold
    md = rt.read_metadata(bert_embedded)
    config = json.loads((bert_classifier.folder / "config.json").read_text())
    assert md[rt.KEY_MODEL_CONFIG] == config  # config.json unmodified
    assert md[rt.KEY_VERSION] == "2.0"
    assert md[rt.KEY_EMBEDDING_LEVEL] == "full"
    assert md[rt.KEY_PIPELINE_TASK] == "text-classification"
    assert md[rt.KEY_TOKENIZER_CONFIG]["tokenizer_class"] == "BertTokenizer"
    assert "is_local" not in md[rt.KEY_TOKENIZER_CONFIG]
    import tokenizers
    import transformers

    assert md[rt.KEY_TOKENIZERS_VERSION] == tokenizers.__version__
    assert md[rt.KEY_TRANSFORMERS_VERSION] == transformers.__version__
    embedded = tokenizers.Tokenizer.from_str(md[rt.KEY_TOKENIZER_JSON])
    original = transformers.AutoTokenizer.from_pretrained(bert_classifier.folder)
    text = "Hello world, this is a test. Ünïcödé!"
    assert embedded.encode(text).ids == original(text)["input_ids"]
    assert md[rt.KEY_FEATURE_ENGINEERING] == {
        "type": "tokenizer",
        "config": {"components": ["tokenizer"], "tokenizer_class": "BertTokenizer", "vocabulary": rt.KEY_TOKENIZER_JSON},
    }
    assert md[rt.KEY_PIPELINE_CONFIG] == {"detected_task": "text-classification", "task_source": "detected"}
    import torch

    assert md[rt.KEY_EXPORT_CONFIG] == {"ir_version": 8, "opset_import": {"ai.onnx": 17}, "producer_name": "pytorch",
                                        "producer_version": torch.__version__.split("+")[0]}
    stored = props_of(bert_embedded)
    assert rt.KEY_TOKENIZER_JSON + rt.COMPRESSED_SUFFIX in stored  # > 10 KB
    assert rt.KEY_MODEL_CONFIG in stored  # < 10 KB


def test_essential_and_minimal_levels(bert_classifier, tmp_path):
    authoring.embed_metadata(bert_classifier.onnx, bert_classifier.folder, tmp_path / "e.onnx")
    md = rt.read_metadata(tmp_path / "e.onnx")
    assert md[rt.KEY_EMBEDDING_LEVEL] == "essential"
    assert rt.KEY_TOKENIZER_JSON not in md and rt.KEY_TOKENIZER_CONFIG in md
    assert md[rt.KEY_MODEL_CONFIG]["hidden_size"] == 32
    assert isinstance(rt.load_tokenizer(md), rt.TokenizerProxy)

    authoring.embed_metadata(bert_classifier.onnx, bert_classifier.folder, tmp_path / "m.onnx", level="minimal")
    md = rt.read_metadata(tmp_path / "m.onnx")
    assert md[rt.KEY_EMBEDDING_LEVEL] == "minimal"
    assert set(md) == {rt.KEY_VERSION, rt.KEY_TIMESTAMP, rt.KEY_TRANSFORMERS_VERSION, rt.KEY_EMBEDDING_LEVEL,
                       rt.KEY_MODEL_CONFIG, rt.KEY_PIPELINE_TASK, rt.KEY_EXPORT_CONFIG, rt.KEY_DIGEST}
    config = json.loads((bert_classifier.folder / "config.json").read_text())
    assert md[rt.KEY_MODEL_CONFIG] == {k: config[k] for k in authoring.discovery.MINIMAL_CONFIG_FIELDS if k in config}
    assert {"architectures", "model_type", "id2label", "label2id"} <= set(md[rt.KEY_MODEL_CONFIG])
    assert sum(len(k) + len(v) for k, v in props_of(tmp_path / "m.onnx").items()) < 2 * 1024


def test_graph_and_foreign_props_survive_byte_for_byte(bert_classifier, tmp_path):
    import onnx

    src = with_props(bert_classifier.onnx, tmp_path / "src.onnx", {"author": "me", "onnx.quantized": "false"})
    before = load(src)
    authoring.embed_metadata(src, bert_classifier.folder, tmp_path / "out.onnx", include_vocab=True)
    after = load(tmp_path / "out.onnx")
    onnx.checker.check_model(after)
    assert after.graph.SerializeToString() == before.graph.SerializeToString()
    assert list(after.opset_import) == list(before.opset_import)
    assert (after.ir_version, after.producer_name, after.producer_version) == (before.ir_version, before.producer_name,
                                                                               before.producer_version)
    kept = [(p.key, p.value) for p in after.metadata_props if not rt.is_format_key(p.key.split(":")[0])]
    assert kept == [("author", "me"), ("onnx.quantized", "false")]
    # every non-metadata top-level field is the same bytes, in the same order
    raw_before, raw_after = src.read_bytes(), (tmp_path / "out.onnx").read_bytes()
    fields = lambda scan, raw: [raw[f.start:f.end] for f in scan.fields if f.number != rt.FIELD_METADATA_PROPS]  # noqa: E731
    assert fields(rt.scan_model(src), raw_before) == fields(rt.scan_model(tmp_path / "out.onnx"), raw_after)


def test_reembedding_replaces_stale_entries(bert_classifier, tmp_path):
    out = tmp_path / "out.onnx"
    authoring.embed_metadata(bert_classifier.onnx, bert_classifier.folder, out, include_vocab=True,
                             compress_large_configs=False)
    first = props_of(out)
    assert rt.KEY_TOKENIZER_JSON in first
    authoring.embed_metadata(out, bert_classifier.folder, level="minimal")  # in place
    second = props_of(out)
    assert rt.KEY_TOKENIZER_JSON not in second and rt.KEY_TOKENIZER_JSON + rt.COMPRESSED_SUFFIX not in second
    assert len(load(out).metadata_props) == len(second)  # no duplicates
    assert rt.read_metadata(out)[rt.KEY_EMBEDDING_LEVEL] == "minimal"


def test_compression_options(bert_classifier, tmp_path):
    shared("bert-base-uncased")  # a real vocabulary: compression saves hundreds of KB
    plain, small = tmp_path / "plain.onnx", tmp_path / "small.onnx"
    authoring.embed_metadata(bert_classifier.onnx, bert_classifier.folder, plain, include_vocab=True,
                             compress_large_configs=False)
    authoring.embed_metadata(bert_classifier.onnx, bert_classifier.folder, small, include_vocab=True,
                             compress_threshold_kb=0.1)
    assert not any(k.endswith(rt.COMPRESSED_SUFFIX) for k in props_of(plain))
    compressed = {k for k in props_of(small) if k.endswith(rt.COMPRESSED_SUFFIX)}
    assert rt.KEY_MODEL_CONFIG + rt.COMPRESSED_SUFFIX in compressed
    assert os.path.getsize(small) < os.path.getsize(plain) - 200_000
    a, b = rt.read_metadata(plain), rt.read_metadata(small)
    a.pop(rt.KEY_TIMESTAMP), b.pop(rt.KEY_TIMESTAMP), a.pop(rt.KEY_DIGEST), b.pop(rt.KEY_DIGEST)
    assert a == b


def test_same_inputs_same_bytes(bert_classifier, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    for name in ("a.onnx", "b.onnx"):
        authoring.embed_metadata(bert_classifier.onnx, bert_classifier.folder, tmp_path / name, include_vocab=True)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert rt.read_metadata(tmp_path / "a.onnx")[rt.KEY_TIMESTAMP] == "2026-09-21T14:13:20Z"


def test_failed_write_leaves_input_untouched(bert_classifier, tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    shutil.copy(bert_classifier.onnx, target)
    original = target.read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embedder, "_verify", broken)
    with pytest.raises(OSError, match="No space left on device"):
        authoring.embed_metadata(target, bert_classifier.folder, include_vocab=True)
    assert target.read_bytes() == original
    assert os.listdir(tmp_path) == ["model.onnx"]  # no temp file left behind


def test_verification_catches_a_bad_write(bert_classifier, tmp_path, monkeypatch):
    monkeypatch.setattr(embedder, "_entry_field", lambda k, v: embedder._varint_bytes(0x72) + b"\x00")
    with pytest.raises(rt.MetadataEmbeddingError, match="nothing was replaced"):
        authoring.embed_metadata(bert_classifier.onnx, bert_classifier.folder, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_permissions_are_kept(bert_classifier, tmp_path):
    target = tmp_path / "model.onnx"
    shutil.copy(bert_classifier.onnx, target)
    os.chmod(target, 0o640)
    authoring.embed_metadata(target, bert_classifier.folder)
    assert os.stat(target).st_mode & 0o777 == 0o640


def test_foreign_key_clash_is_refused(bert_classifier, tmp_path):
    src = with_props(bert_classifier.onnx, tmp_path / "src.onnx", {"custom": "x"})
    with pytest.raises(rt.MetadataEmbeddingError, match=r"keys \['custom'\] are already used"):
        embedder.write_props(src, [("custom", "y")], tmp_path / "out.onnx")


def test_task_override_and_unknown_task(bert_classifier, tmp_path):
    authoring.embed_metadata(bert_classifier.onnx, bert_classifier.folder, tmp_path / "o.onnx", task="sentiment-analysis")
    md = rt.read_metadata(tmp_path / "o.onnx")
    assert md[rt.KEY_PIPELINE_TASK] == "text-classification"
    assert md[rt.KEY_PIPELINE_CONFIG]["task_source"] == "override"
    with pytest.raises(rt.TaskDetectionError, match="unknown task 'text-clasification'; known tasks: "):
        authoring.embed_metadata(bert_classifier.onnx, bert_classifier.folder, tmp_path / "x.onnx", task="text-clasification")


def test_missing_tokenizer_falls_back_to_minimal_with_a_warning(bert_classifier, tmp_path, caplog):
    folder = tmp_path / "no_tokenizer"
    folder.mkdir()
    shutil.copy(bert_classifier.folder / "config.json", folder)
    with caplog.at_level(logging.WARNING, logger="onnxmeta"):
        md = authoring.embed_metadata(bert_classifier.onnx, folder, tmp_path / "out.onnx", include_vocab=True)
    assert md[rt.KEY_EMBEDDING_LEVEL] == "minimal"
    assert "no_tokenizer has no tokenizer or preprocessor files; falling back to the minimal level" in caplog.text
    assert rt.KEY_TOKENIZER_CONFIG not in rt.read_metadata(tmp_path / "out.onnx")


def test_unloadable_tokenizer_falls_back_to_minimal(bert_classifier, tmp_path, caplog):
    folder = shutil.copytree(bert_classifier.folder, tmp_path / "bad_tok")
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "NoSuchTokenizer"}')
    (folder / "tokenizer.json").unlink()
    with caplog.at_level(logging.WARNING, logger="onnxmeta"):
        md = authoring.discover(folder, level="full")
    assert md[rt.KEY_EMBEDDING_LEVEL] == "minimal"
    assert "the tokenizer in" in caplog.text and "falling back to the minimal level" in caplog.text


def test_errors_for_bad_model_sources(bert_classifier, tmp_path):
    with pytest.raises(rt.MetadataExtractionError, match="has no config.json; is it a Hugging Face model folder"):
        authoring.discover(tmp_path)
    with pytest.raises(rt.MetadataExtractionError, match="is a file; pass the model's folder"):
        authoring.discover(bert_classifier.onnx)
    with pytest.raises(rt.MetadataExtractionError, match="no such folder: ./missing"):
        authoring.discover("./missing")


def test_hub_id_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(rt.MetadataExtractionError) as info:
        authoring.discover("bert-base-uncased")
    message = str(info.value)
    assert message == (
        "cannot get 'bert-base-uncased' from the Hugging Face hub: offline mode is on (HF_HUB_OFFLINE=1) and it is not in "
        f"the cache {huggingface_hub.constants.HF_HUB_CACHE}; download it first where the hub can be reached: hf download "
        "bert-base-uncased (into that cache), or pass a local model folder")


def test_discover_from_in_memory_objects(bert_classifier):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bert_classifier.folder)
    md = authoring.MetadataDiscovery().discover_from_hf(bert_classifier.model, tokenizer, level="full")
    assert md[rt.KEY_PIPELINE_TASK] == "text-classification"
    assert md[rt.KEY_MODEL_CONFIG]["id2label"] == {"0": "NEGATIVE", "1": "NEUTRAL", "2": "POSITIVE"}
    assert md[rt.KEY_TOKENIZER_JSON] == authoring.discover(bert_classifier.folder, level="full")[rt.KEY_TOKENIZER_JSON]


def test_real_hub_files_from_shared_data(bert_classifier, tmp_path):
    """The real distilbert SST-2 config and bert-base-uncased tokenizer: labels and task come through."""
    sst2 = SHARED / "distilbert-base-uncased-finetuned-sst-2-english"
    if not sst2.exists():
        pytest.skip(f"{sst2} is absent (real Hugging Face files live in ../shared/data)")
    folder = shutil.copytree(sst2, tmp_path / "sst2")
    md = authoring.discover(folder, level="full")
    assert md[rt.KEY_PIPELINE_TASK] == "text-classification"
    assert md[rt.KEY_MODEL_CONFIG]["id2label"] == {"0": "NEGATIVE", "1": "POSITIVE"}
    assert md[rt.KEY_MODEL_CONFIG]["finetuning_task"] == "sst-2"
    tokenizer = rt.load_tokenizer(md)
    assert tokenizer.max_length == 512
    assert tokenizer.encode(["Hello world, this is a test."])[0].ids == [101, 7592, 2088, 1010, 2023, 2003, 1037, 3231, 1012, 102]
