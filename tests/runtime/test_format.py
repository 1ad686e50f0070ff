"""Format v2: value encoding, compression, digest, versioning (the runtime file is the spec)."""

from __future__ import annotations

import base64
import gzip
import json
import warnings

import pytest

from runtime_under_test import rt

SAMPLE = {
    rt.KEY_VERSION: "2.0",
    rt.KEY_TIMESTAMP: "2026-11-26T12:00:00Z",
    rt.KEY_TRANSFORMERS_VERSION: "5.24.0",
    rt.KEY_MODEL_CONFIG: {"model_type": "bert", "id2label": {"0": "NEG", "1": "POS"}, "note": "naïve ✓"},
    rt.KEY_TOKENIZER_CONFIG: {"tokenizer_class": "BertTokenizer", "model_max_length": 512},
    rt.KEY_TOKENIZER_JSON: json.dumps({"version": "1.0", "model": {"vocab": {f"w{i}": i for i in range(3000)}}}),
    rt.KEY_TOKENIZERS_VERSION: "0.23.3",
    rt.KEY_IMAGE_PROCESSOR_CONFIG: {"do_resize": True, "size": {"height": 224, "width": 224}},
    rt.KEY_FEATURE_EXTRACTOR_CONFIG: {"sampling_rate": 16000, "feature_size": 80},
    rt.KEY_GENERATION_CONFIG: {"max_length": 20},
    rt.KEY_FEATURE_ENGINEERING: {"type": "tokenizer", "config": {"components": ["tokenizer"]}},
    rt.KEY_PIPELINE_TASK: "text-classification",
    rt.KEY_PIPELINE_CONFIG: {"detected_task": "text-classification", "task_source": "detected"},
    rt.KEY_EXPORT_CONFIG: {"opset": 17},
    rt.KEY_EMBEDDING_LEVEL: "full",
    rt.KEY_SENTENCE_TRANSFORMERS: {"pooling": {"pooling_mode": "mean"}, "normalize": True, "prompts": {"query": "q: "}},
    rt.KEY_GRAPH_LAYOUT: {"phase_input": "phase", "entry_points": {"encoder": {"phase": 0, "inputs": {"input_ids": "input_ids"},
                                                                              "outputs": {}}}, "past": []},
}


def roundtrip(metadata, **kwargs):
    return rt.decode_metadata(rt.encode_metadata(metadata, **kwargs))


def test_every_key_round_trips():
    assert set(SAMPLE) == rt._KEYS - {rt.KEY_DIGEST}
    for threshold in (None, 0, 100, rt.DEFAULT_COMPRESS_THRESHOLD):
        decoded = roundtrip(SAMPLE, compress_threshold=threshold)
        assert decoded.pop(rt.KEY_DIGEST) == rt.metadata_digest({k: rt.value_text(k, v) for k, v in SAMPLE.items()})
        assert decoded == SAMPLE


def test_json_values_are_canonical():
    props = dict(rt.encode_metadata({rt.KEY_MODEL_CONFIG: {"b": 1, "a": [1, 2], "c": "é"}}, compress_threshold=None))
    assert props[rt.KEY_MODEL_CONFIG] == '{"a":[1,2],"b":1,"c":"é"}'


def test_compression_threshold_is_exclusive_and_in_bytes():
    text = "x" * 1000
    props = dict(rt.encode_metadata({rt.KEY_TOKENIZER_JSON: text}, compress_threshold=1000))
    assert props[rt.KEY_TOKENIZER_JSON] == text
    props = dict(rt.encode_metadata({rt.KEY_TOKENIZER_JSON: text + "y"}, compress_threshold=1000))
    assert rt.KEY_TOKENIZER_JSON not in props
    stored = props[rt.KEY_TOKENIZER_JSON + rt.COMPRESSED_SUFFIX]
    assert gzip.decompress(base64.b64decode(stored)).decode() == text + "y"
    # 400 two-byte characters are 800 bytes: over a 500-byte threshold though only 400 characters long
    props = dict(rt.encode_metadata({rt.KEY_TOKENIZER_JSON: "é" * 400}, compress_threshold=500))
    assert rt.KEY_TOKENIZER_JSON + rt.COMPRESSED_SUFFIX in props


def test_no_compression_when_disabled():
    props = rt.encode_metadata(SAMPLE, compress_threshold=None)
    assert not any(k.endswith(rt.COMPRESSED_SUFFIX) for k, _ in props)


def test_encoding_is_deterministic():
    assert rt.encode_metadata(SAMPLE, compress_threshold=100) == rt.encode_metadata(dict(reversed(SAMPLE.items())),
                                                                                     compress_threshold=100)
    keys = [k for k, _ in rt.encode_metadata(SAMPLE)]
    assert keys == sorted(keys)


def test_gzip_output_is_level_6_without_timestamp():
    stored = dict(rt.encode_metadata({rt.KEY_TOKENIZER_JSON: "abc" * 5000}, compress_threshold=0))
    raw = base64.b64decode(stored[rt.KEY_TOKENIZER_JSON + rt.COMPRESSED_SUFFIX])
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip magic, mtime 0


def test_tampering_is_detected():
    props = rt.encode_metadata(SAMPLE, compress_threshold=None)
    tampered = [(k, v.replace("POS", "NEG")) if k == rt.KEY_MODEL_CONFIG else (k, v) for k, v in props]
    with pytest.raises(rt.MetadataValidationError, match="metadata digest mismatch"):
        rt.decode_metadata(tampered)
    assert rt.decode_metadata(tampered, verify=False)[rt.KEY_MODEL_CONFIG]["id2label"]["1"] == "NEG"


def test_digest_ignores_compression_and_foreign_keys():
    a = rt.decode_metadata(rt.encode_metadata(SAMPLE, compress_threshold=None))[rt.KEY_DIGEST]
    b = rt.decode_metadata(rt.encode_metadata({**SAMPLE, "producer_note": "x"}, compress_threshold=0))[rt.KEY_DIGEST]
    assert a == b


def test_unknown_keys_are_kept_as_strings():
    props = rt.encode_metadata(SAMPLE) + [("hf_future_thing", '{"x":1}'), ("author", "me")]
    decoded = rt.decode_metadata(props, verify=False)
    assert decoded["hf_future_thing"] == '{"x":1}' and decoded["author"] == "me"


def test_newer_minor_version_reads_with_a_warning():
    props = rt.encode_metadata({**SAMPLE, rt.KEY_VERSION: "2.7"})
    with pytest.warns(UserWarning, match=r"metadata format 2\.7 is newer than this runtime \(2\.0\)"):
        assert rt.decode_metadata(props)[rt.KEY_MODEL_CONFIG] == SAMPLE[rt.KEY_MODEL_CONFIG]


def test_same_version_reads_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rt.decode_metadata(rt.encode_metadata(SAMPLE))


def test_newer_major_version_is_refused():
    props = rt.encode_metadata({**SAMPLE, rt.KEY_VERSION: "3.0"})
    with pytest.raises(rt.UnsupportedVersionError) as info:
        rt.decode_metadata(props)
    assert str(info.value) == ("metadata format 3.0 is newer than this runtime understands (2.0); "
                               "upgrade onnxmeta_runtime.py")


def test_newer_major_version_is_refused_before_its_values_are_read():
    # a format 3 may spell or compress values differently: what matters is that it is format 3
    props = [(rt.KEY_MODEL_CONFIG, "v3:binary"), (rt.KEY_TOKENIZER_JSON + rt.COMPRESSED_SUFFIX, "zstd:..."),
             (rt.KEY_VERSION, "3.0")]
    with pytest.raises(rt.UnsupportedVersionError, match=r"^metadata format 3\.0 is newer than this runtime"):
        rt.decode_metadata(props)


@pytest.mark.parametrize("version, shown", [
    ("two", "'two'"), ("2", "'2'"), ("2.0.1", "'2.0.1'"), (" 2.0", "' 2.0'"), ("", "''"),
    ("\u00b2.0", "'\u00b2.0'"),  # str.isdigit() is true for superscript two; int() refuses it
    ("9" * 5000 + ".0", "'" + "9" * 37 + "...'"),  # int() refuses more than 4300 digits
])
def test_malformed_version(version, shown):
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.decode_metadata([(rt.KEY_VERSION, version)])
    assert str(info.value) == f"hf_metadata_version is {shown}; expected MAJOR.MINOR such as '2.0'"


def test_older_versions_read_without_warning():
    for version in ("1.0", "1.9", "0.1", "2.0"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert rt.decode_metadata([(rt.KEY_VERSION, version)]) == {rt.KEY_VERSION: version}


@pytest.mark.parametrize("value, message", [
    ("not base64!", "compressed value 'hf_model_config' is not valid base64"),
    (base64.b64encode(b"not gzip").decode(), "compressed value 'hf_model_config' is not valid gzip"),
    (base64.b64encode(gzip.compress(b'{"a": 1}')[:-6]).decode(), "compressed value 'hf_model_config' is truncated gzip data"),
    (base64.b64encode(gzip.compress(b"\xff\xfe")).decode(), "compressed value 'hf_model_config' is not UTF-8 text"),
])
def test_bad_compressed_values(value, message):
    with pytest.raises(rt.MetadataReadError) as info:
        rt.decode_metadata([(rt.KEY_MODEL_CONFIG + rt.COMPRESSED_SUFFIX, value)])
    assert str(info.value).startswith(message)


def test_decompression_bomb_is_capped():
    bomb = base64.b64encode(gzip.compress(b"0" * 5_000_000)).decode()
    assert len(bomb) < 20_000
    with pytest.raises(rt.MetadataReadError) as info:
        rt.decode_metadata([(rt.KEY_TOKENIZER_JSON + rt.COMPRESSED_SUFFIX, bomb)], max_decompressed_size=1_000_000)
    assert str(info.value) == (
        "compressed value 'hf_tokenizer_json' expands past the 1000000-byte limit (max_decompressed_size), a guard "
        "against decompression bombs; if the file is trusted, raise it: read_metadata(path, max_decompressed_size=...) "
        "or Runtime(path, max_decompressed_size=...)")
    assert len(rt.decode_metadata([(rt.KEY_TOKENIZER_JSON + rt.COMPRESSED_SUFFIX, bomb)])[rt.KEY_TOKENIZER_JSON]) == 5_000_000


def test_invalid_json_and_non_objects():
    with pytest.raises(rt.MetadataReadError, match="metadata value 'hf_model_config' is not valid JSON"):
        rt.decode_metadata([(rt.KEY_MODEL_CONFIG, "{nope")])
    with pytest.raises(rt.MetadataValidationError, match="'hf_model_config' must be a JSON object, got list"):
        rt.decode_metadata([(rt.KEY_MODEL_CONFIG, "[1]")])


def test_deeply_nested_json_is_a_read_error():
    with pytest.raises(rt.MetadataReadError) as info:
        rt.decode_metadata([(rt.KEY_MODEL_CONFIG, "[" * 200_000)])
    assert str(info.value) == "metadata value 'hf_model_config' nests JSON too deeply to read"
    assert rt.decode_metadata([(rt.KEY_MODEL_CONFIG, '{"a":' + "[" * 100 + "]" * 100 + "}")])[rt.KEY_MODEL_CONFIG]["a"]


def test_foreign_compressed_suffix_is_left_alone():
    # another tool's key that happens to end in :compressed is not ours to decode
    assert rt.decode_metadata([("notes:compressed", "plain text")]) == {"notes:compressed": "plain text"}


def test_duplicate_format_keys_are_ambiguous():
    with pytest.raises(rt.MetadataReadError, match="'hf_pipeline_task' appears more than once"):
        rt.decode_metadata([(rt.KEY_PIPELINE_TASK, "a"), (rt.KEY_PIPELINE_TASK, "b")])
    with pytest.raises(rt.MetadataReadError, match="'hf_model_config' appears more than once"):
        rt.decode_metadata([(rt.KEY_MODEL_CONFIG, "{}"),
                            (rt.KEY_MODEL_CONFIG + rt.COMPRESSED_SUFFIX, dict(rt.encode_metadata({rt.KEY_MODEL_CONFIG: {}}, compress_threshold=0))[rt.KEY_MODEL_CONFIG + rt.COMPRESSED_SUFFIX])])
    assert rt.decode_metadata([("author", "a"), ("author", "b")]) == {"author": "b"}


def test_original_writers_none_is_an_absent_value():
    # seed-design's MetadataEmbedder writes str(value): an Optional config that was None is "None"
    decoded = rt.decode_metadata([(rt.KEY_VERSION, "2.0"), (rt.KEY_IMAGE_PROCESSOR_CONFIG, "None")])
    assert decoded == {rt.KEY_VERSION: "2.0"}


@pytest.mark.parametrize("value", [None, [1], 3])
def test_json_keys_must_be_objects_when_written(value):
    # a reader refuses anything but an object there, so the writer must not produce it
    with pytest.raises(rt.MetadataEmbeddingError) as info:
        rt.encode_metadata({rt.KEY_PIPELINE_CONFIG: value})
    assert str(info.value) == f"metadata value 'hf_pipeline_config' must be a dict (a JSON object), got {type(value).__name__}"


def test_string_keys_reject_non_strings():
    with pytest.raises(rt.MetadataEmbeddingError, match="'hf_pipeline_task' must be a string, got int"):
        rt.encode_metadata({rt.KEY_PIPELINE_TASK: 3})
    with pytest.raises(rt.MetadataEmbeddingError, match="'hf_model_config' is not JSON-serializable"):
        rt.encode_metadata({rt.KEY_MODEL_CONFIG: {"x": float("nan")}})


def test_format_keys():
    assert rt.is_format_key("hf_anything") and rt.is_format_key("feature_engineering") and rt.is_format_key("export_config")
    assert not rt.is_format_key("author") and not rt.is_format_key("onnx.infer")
