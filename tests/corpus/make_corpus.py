"""Regenerate the crafted ONNX files of tests/corpus and their README.

    python tests/corpus/make_corpus.py            # rewrite tests/corpus/*.onnx and README.md
    python tests/corpus/make_corpus.py --check    # exit 1 if the committed files differ

Each file is small (a 10-token tokenizer and a 10x2 embedding table, or no graph at all) and is built
from literals, so the bytes do not depend on the installed tokenizers or torch. CASES says what each
file tests and what read_metadata / Runtime must do with it; tests/runtime/test_corpus.py checks exactly that.
"""

from __future__ import annotations

import base64
import gzip
import json
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "runtime"))

import onnxmeta_runtime as rt

VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "i": 5, "love": 6, "hate": 7, "this": 8, "movie": 9}
# tokenizer.json of a WordLevel tokenizer, as tokenizers 0.23 writes it.
TOKENIZER_JSON = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
                      "special": True} for t, i in (("[PAD]", 0), ("[UNK]", 1), ("[CLS]", 2), ("[SEP]", 3), ("[MASK]", 4))],
    "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
    "post_processor": {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
        "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                           "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}},
    },
    "decoder": None,
    "model": {"type": "WordLevel", "vocab": VOCAB, "unk_token": "[UNK]"},
}
# Logit rows per token: "love" pushes POSITIVE, "hate" NEGATIVE, the rest nothing.
EMBEDDING = [[0.0, 0.0]] * 6 + [[-2.0, 2.0], [2.0, -2.0], [0.0, 0.0], [0.0, 0.0]]
CONFIG = {
    "architectures": ["BertForSequenceClassification"], "model_type": "bert", "vocab_size": 10,
    "max_position_embeddings": 64, "pad_token_id": 0, "id2label": {"0": "NEGATIVE", "1": "POSITIVE"},
    "label2id": {"NEGATIVE": 0, "POSITIVE": 1},
}
TOKENIZER_CONFIG = {
    "tokenizer_class": "BertTokenizer", "model_max_length": 16, "pad_token": "[PAD]", "unk_token": "[UNK]",
    "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]", "clean_up_tokenization_spaces": True,
}
TIMESTAMP = "2026-11-26T12:00:00Z"


def graph_model() -> bytes:
    """A text classifier: logits = sum over unmasked tokens of EMBEDDING[token] (ir 8, opset 17)."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["rows"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["rows", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["logits"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny_classifier",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor("embedding", TensorProto.FLOAT, [10, 2], [v for row in EMBEDDING for v in row]),
         helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
         helper.make_tensor("axis2", TensorProto.INT64, [1], [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="make_corpus")
    return model.SerializeToString()


def token_graph_model(width: int = 2) -> bytes:
    """graph_model() without the sum over tokens: a (batch, sequence, width) output, for token-level tasks.

    width 10 scores every token of the vocabulary (the embedding is then 10x10, token i scoring i), as
    fill-mask needs.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(graph_model())
    model.graph.node[-1].CopyFrom(helper.make_node("Identity", ["masked"], ["logits"]))
    if width != 2:
        table = [[float(i == j) for j in range(width)] for i in range(10)]
        model.graph.initializer[0].CopyFrom(
            helper.make_tensor("embedding", TensorProto.FLOAT, [10, width], [v for row in table for v in row]))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    del dims[:]
    dims.add(dim_param="batch")
    dims.add(dim_param="sequence")
    dims.add(dim_value=width)
    return model.SerializeToString()


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def entry(key: str | bytes, value: str | bytes) -> bytes:
    """A top-level metadata_props field (field 14) from raw key and value bytes."""
    k = key.encode() if isinstance(key, str) else key
    v = value.encode() if isinstance(value, str) else value
    body = b"\x0a" + varint(len(k)) + k + b"\x12" + varint(len(v)) + v
    return b"\x72" + varint(len(body)) + body


def metadata(**changes: Any) -> dict[str, Any]:
    """The metadata of a full-level text classifier, with changes (a value of None drops the key)."""
    base = {
        rt.KEY_VERSION: "2.0", rt.KEY_TIMESTAMP: TIMESTAMP, rt.KEY_TRANSFORMERS_VERSION: "5.24.0",
        rt.KEY_EMBEDDING_LEVEL: "full", rt.KEY_MODEL_CONFIG: CONFIG, rt.KEY_TOKENIZER_CONFIG: TOKENIZER_CONFIG,
        rt.KEY_TOKENIZER_JSON: rt.canonical_json(TOKENIZER_JSON), rt.KEY_TOKENIZERS_VERSION: "0.23.0",
        rt.KEY_PIPELINE_TASK: "text-classification",
        rt.KEY_FEATURE_ENGINEERING: {"type": "tokenizer", "config": {"components": ["tokenizer"],
                                                                     "tokenizer_class": "BertTokenizer",
                                                                     "vocabulary": rt.KEY_TOKENIZER_JSON}},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def written(meta: dict[str, Any], threshold: int | None = 1024) -> bytes:
    """The graph model with meta embedded by this runtime's encoder (tokenizer.json compressed)."""
    return graph_model() + b"".join(entry(k, v) for k, v in rt.encode_metadata(meta, compress_threshold=threshold))


def gzip_prefixed() -> bytes:
    """The metadata of written() with every compressed value marked by a 'gzip:' value prefix on the plain key,
    as older writers stored them, instead of the ':compressed' key suffix."""
    props = []
    for key, value in rt.encode_metadata(metadata(), compress_threshold=1024):
        if key.endswith(rt.COMPRESSED_SUFFIX):
            key, value = key[: -len(rt.COMPRESSED_SUFFIX)], rt._LEGACY_GZIP_PREFIX + value
        props.append(entry(key, value))
    return graph_model() + b"".join(props)


def modelinsider() -> bytes:
    """What the original design's MetadataEmbedder writes (seed-design.md, _add_metadata_prop): json.dumps
    with compact separators but unsorted keys and ASCII escapes, str() for everything else (so an
    Optional value that is None becomes "None"), gzip.compress with a real mtime, the ':compressed' key
    suffix past 10240 characters, and no digest."""
    meta: dict[str, Any] = {
        rt.KEY_VERSION: "2.0", rt.KEY_TIMESTAMP: TIMESTAMP, rt.KEY_TRANSFORMERS_VERSION: "4.40.0",
        rt.KEY_MODEL_CONFIG: {**CONFIG, "note": "naïve", "padding": "x" * 12000},
        rt.KEY_TOKENIZER_CONFIG: TOKENIZER_CONFIG, rt.KEY_IMAGE_PROCESSOR_CONFIG: None,
        rt.KEY_FEATURE_EXTRACTOR_CONFIG: None,
        rt.KEY_FEATURE_ENGINEERING: {"type": "tokenizer", "config": TOKENIZER_CONFIG},
        rt.KEY_PIPELINE_TASK: "text-classification", rt.KEY_PIPELINE_CONFIG: None, rt.KEY_EXPORT_CONFIG: None,
    }
    out = graph_model()
    for key, value in meta.items():
        text = json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else str(value)
        if len(text) > 10240:
            text = base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=1700000000)).decode("ascii")
            key = f"{key}:compressed"
        out += entry(key, text)
    return out


def tampered() -> bytes:
    props = rt.encode_metadata(metadata(), compress_threshold=None)
    return graph_model() + b"".join(
        entry(k, v.replace("POSITIVE", "P0SITIVE") if k == rt.KEY_MODEL_CONFIG else v) for k, v in props)


def bomb(size: int) -> str:
    """base64 of gzip of size zero bytes, built in 1 MiB steps."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    data = b"".join(compressor.compress(chunk) for _ in range(size >> 20)) + compressor.flush()
    return base64.b64encode(data).decode("ascii")


GRAPH = b"\x3a\x00"  # field 7 (graph), length-delimited, empty


class Case(NamedTuple):
    build: Callable[[], bytes]
    tests: str
    expect: str  # "ok", "warn: <message start>", or "<ErrorClass>: <message start>" from read_metadata
    runtime: str = ""  # the same for Runtime(file)("i love this movie") when the file has a runnable graph


_ERR = "is not a readable ONNX model: "
CASES: dict[str, Case] = {
    "v2_0.onnx": Case(lambda: written(metadata()), "this runtime's own writer, tokenizer.json compressed", "ok",
                      "ok: POSITIVE"),
    "v2_7_newer_minor.onnx": Case(
        lambda: written(metadata(**{rt.KEY_VERSION: "2.7", "hf_future_key": "kept"})),
        "a newer minor version with a key this runtime does not know: read with a warning",
        "warn: metadata format 2.7 is newer than this runtime (2.0); keys it does not know are ignored", "ok: POSITIVE"),
    "v3_0_newer_major.onnx": Case(
        lambda: written(metadata(**{rt.KEY_VERSION: "3.0"})), "a newer major version: refused",
        "UnsupportedVersionError: v3_0_newer_major.onnx: metadata format 3.0 is newer than this runtime understands "
        "(2.0); upgrade onnxmeta_runtime.py", "UnsupportedVersionError"),
    "v1_0_older.onnx": Case(
        lambda: graph_model() + b"".join(entry(k, v) for k, v in rt.encode_metadata(
            metadata(**{rt.KEY_VERSION: "1.0"}), compress_threshold=None) if k != rt.KEY_DIGEST),
        "an older major version without a digest: read silently", "ok", "ok: POSITIVE"),
    "modelinsider_seed.onnx": Case(
        modelinsider, "the original design's writer: unsorted ASCII JSON, gzip with mtime, 'None' for absent values, "
        "no digest, no vocabulary", "ok",
        "ProcessorReconstructionError: no vocabulary embedded, so this model cannot tokenize text; re-embed with "
        "--include-vocab"),
    "foreign_props.onnx": Case(
        lambda: written(metadata()) + entry("author", "someone") + entry("notes:compressed", "not base64 at all"),
        "entries of other tools, one ending in ':compressed', are kept as they are", "ok", "ok: POSITIVE"),
    "auto_map_tokenizer.onnx": Case(
        lambda: written(metadata(**{rt.KEY_TOKENIZER_CONFIG: {
            **TOKENIZER_CONFIG, "tokenizer_class": "corpus_evil.EvilTokenizer",
            "auto_map": {"AutoTokenizer": ["corpus_evil.EvilTokenizer", None]}, "trust_remote_code": True}})),
        "a tokenizer_config naming remote code (auto_map, a foreign tokenizer_class): never imported", "ok",
        "ok: POSITIVE"),
    "digest_mismatch.onnx": Case(
        tampered, "a value changed after embedding",
        "MetadataValidationError: digest_mismatch.onnx: metadata digest mismatch", "MetadataValidationError"),
    "bomb_16mib.onnx": Case(
        lambda: graph_model() + entry(rt.KEY_TOKENIZER_JSON + rt.COMPRESSED_SUFFIX, bomb(16 << 20)),
        "16 MiB of zeros in 22 KB: refused past max_decompressed_size (tests read it with a 1 MiB limit)",
        "MetadataReadError: bomb_16mib.onnx: compressed value 'hf_tokenizer_json' expands past the 1048576-byte limit"),
    "invalid_base64.onnx": Case(
        lambda: graph_model() + entry(rt.KEY_MODEL_CONFIG + rt.COMPRESSED_SUFFIX, "H4sI!!!!"), "invalid base64",
        "MetadataReadError: invalid_base64.onnx: compressed value 'hf_model_config' is not valid base64"),
    "invalid_gzip.onnx": Case(
        lambda: graph_model() + entry(rt.KEY_MODEL_CONFIG + rt.COMPRESSED_SUFFIX, base64.b64encode(b"\x1f\x8bnot").decode()),
        "base64 of bytes that are not gzip",
        "MetadataReadError: invalid_gzip.onnx: compressed value 'hf_model_config' is not valid gzip"),
    "truncated_gzip.onnx": Case(
        lambda: graph_model() + entry(rt.KEY_MODEL_CONFIG + rt.COMPRESSED_SUFFIX,
                                      base64.b64encode(gzip.compress(b'{"a": 1}', mtime=0)[:-6]).decode()),
        "gzip cut short", "MetadataReadError: truncated_gzip.onnx: compressed value 'hf_model_config' is truncated gzip data"),
    "invalid_json.onnx": Case(
        lambda: graph_model() + entry(rt.KEY_MODEL_CONFIG, '{"model_type": "bert",'), "a JSON value cut short",
        "MetadataReadError: invalid_json.onnx: metadata value 'hf_model_config' is not valid JSON"),
    "deep_json.onnx": Case(
        lambda: graph_model() + entry(rt.KEY_MODEL_CONFIG, "[" * 100_000), "JSON nested 100000 deep",
        "MetadataReadError: deep_json.onnx: metadata value 'hf_model_config' nests JSON too deeply to read"),
    "gzip_prefix_value.onnx": Case(
        gzip_prefixed, "an older writer's 'gzip:' value prefix instead of the ':compressed' key suffix: read", "ok",
        "ok: POSITIVE"),
    "gzip_prefix_bad.onnx": Case(
        lambda: graph_model() + entry(rt.KEY_MODEL_CONFIG, "gzip:not base64!"), "a 'gzip:' prefix on a value that is not base64",
        "MetadataReadError: gzip_prefix_bad.onnx: compressed value 'hf_model_config' is not valid base64"),
    "invalid_utf8_key.onnx": Case(
        lambda: GRAPH + entry(b"hf_\xff\xfe", "v"), "a key that is not UTF-8",
        f"MetadataReadError: invalid_utf8_key.onnx {_ERR}metadata_props entry is not valid UTF-8 "
        "(in the metadata_props entry at byte 2)"),
    "duplicate_key.onnx": Case(
        lambda: GRAPH + entry(rt.KEY_PIPELINE_TASK, "fill-mask") + entry(rt.KEY_PIPELINE_TASK, "text-classification"),
        "the same format key twice",
        "MetadataReadError: duplicate_key.onnx: metadata key 'hf_pipeline_task' appears more than once; the file is ambiguous"),
    "varint_11_bytes.onnx": Case(
        lambda: b"\x08" + b"\xff" * 10 + b"\x01" + GRAPH, "an 11-byte varint",
        f"MetadataReadError: varint_11_bytes.onnx {_ERR}varint longer than 10 bytes (at byte 0)"),
    "length_past_eof.onnx": Case(
        lambda: GRAPH + b"\x72\x64\x0a", "a length past the end of the file",
        f"MetadataReadError: length_past_eof.onnx {_ERR}field 14 declares 100 bytes but only 1 remain (at byte 2)"),
    "length_2_63.onnx": Case(
        lambda: GRAPH + b"\x72" + varint(2**63 - 1), "a length near 2^63",
        f"MetadataReadError: length_2_63.onnx {_ERR}field 14 declares 9223372036854775807 bytes but only 0 remain (at byte 2)"),
    "wrong_wire_type.onnx": Case(
        lambda: GRAPH + b"\x70\x01", "metadata_props as a varint",
        f"MetadataReadError: wrong_wire_type.onnx {_ERR}metadata_props has wire type 0 (at byte 2)"),
    "no_graph.onnx": Case(
        lambda: b"\x08\x08" + entry(rt.KEY_VERSION, "2.0"), "metadata but no graph",
        "MetadataReadError: no_graph.onnx is not an ONNX model: it has no graph (field 7)"),
    "hostile_config_shapes.onnx": Case(
        lambda: written(metadata(**{
            rt.KEY_MODEL_CONFIG: {**CONFIG, "id2label": ["NEGATIVE", "POSITIVE"], "pad_token_id": "zero",
                                  "max_position_embeddings": "many", "num_labels": "two"},
            rt.KEY_TOKENIZER_CONFIG: {**TOKENIZER_CONFIG, "pad_token_type_id": "x", "model_max_length": [1]}})),
        "config values of the wrong JSON type where the runtime reads them", "ok",
        "MetadataValidationError: hf_model_config.id2label must be an object"),
}


def readme() -> str:
    lines = ["# Crafted ONNX files", "", "Generated by `make_corpus.py` (run it to regenerate, `--check` to compare);",
             "`tests/runtime/test_corpus.py` checks what `read_metadata` and `Runtime` do with each.", "",
             "| file | tests | read_metadata |", "|---|---|---|"]
    lines += [f"| `{name}` | {case.tests} | {case.expect.split(':')[0]} |" for name, case in CASES.items()]
    return "\n".join(lines) + "\n"


def build_all() -> dict[str, bytes]:
    files = {name: case.build() for name, case in CASES.items()}
    files["README.md"] = readme().encode("utf-8")
    return files


def main(argv: list[str]) -> int:
    files = build_all()
    if "--check" in argv:
        stale = [name for name, data in files.items() if not (HERE / name).is_file() or (HERE / name).read_bytes() != data]
        for name in stale:
            print(f"{name} differs from what make_corpus.py builds", file=sys.stderr)
        return 1 if stale else 0
    for name, data in files.items():
        (HERE / name).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
