"""onnxmeta runtime: run a self-contained ONNX model with nothing but this file.

A self-contained ONNX model carries its Hugging Face config, tokenizer (with its vocabulary) and
pipeline task in the ONNX ``metadata_props``. This module reads that metadata with a tiny
pure-Python protobuf scanner (the graph is never loaded into memory), rebuilds the tokenizer,
runs onnxruntime and post-processes exactly like the transformers pipeline::

    >>> from onnxmeta_runtime import Runtime
    >>> Runtime("model.onnx")("I love this!")
    [{'label': 'POSITIVE', 'score': 0.9998}]

It is also the specification of the metadata format (key names, version, value encoding); see
docs/FORMAT.md. Dependencies: the standard library to read metadata; numpy and onnxruntime to run a
model; tokenizers for text tasks. Never transformers, torch or onnx.

Copy this file to vendor it. Command line: ``python onnxmeta_runtime.py model.onnx "some text"``.
"""
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import os
import re
import stat
import sys
import threading
import time
import warnings
import zlib
from collections import OrderedDict
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

if TYPE_CHECKING:
    import numpy as np

__version__ = "0.1.0"

__all__ = (
    "FORMAT_VERSION",
    "KEYS",
    "MetadataError",
    "MetadataExtractionError",
    "MetadataEmbeddingError",
    "MetadataReadError",
    "MetadataValidationError",
    "UnsupportedVersionError",
    "ProcessorReconstructionError",
    "TaskDetectionError",
    "InvalidInputError",
    "read_metadata",
    "clear_metadata_cache",
    "encode_metadata",
    "decode_metadata",
    "scan_model",
    "model_info",
    "TokenizerProxy",
    "TextTokenizer",
    "TASKS",
    "Runtime",
    "pipeline",
    "ONNXAutoModel",
    "ONNXAutoProcessor",
)


########################################################################################################
# Format constants
########################################################################################################

FORMAT_VERSION = "2.0"
"""Version written into ``hf_metadata_version``. Minor bumps add keys; major bumps change meaning."""

KEY_VERSION = "hf_metadata_version"
KEY_TIMESTAMP = "hf_export_timestamp"
KEY_TRANSFORMERS_VERSION = "hf_transformers_version"
KEY_MODEL_CONFIG = "hf_model_config"
KEY_TOKENIZER_CONFIG = "hf_tokenizer_config"
KEY_TOKENIZER_JSON = "hf_tokenizer_json"
KEY_TOKENIZERS_VERSION = "hf_tokenizers_version"
KEY_IMAGE_PROCESSOR_CONFIG = "hf_image_processor_config"
KEY_FEATURE_EXTRACTOR_CONFIG = "hf_feature_extractor_config"
KEY_GENERATION_CONFIG = "hf_generation_config"
KEY_FEATURE_ENGINEERING = "feature_engineering"
KEY_PIPELINE_TASK = "hf_pipeline_task"
KEY_PIPELINE_CONFIG = "hf_pipeline_config"
KEY_EXPORT_CONFIG = "export_config"
KEY_EMBEDDING_LEVEL = "hf_embedding_level"
KEY_SENTENCE_TRANSFORMERS = "hf_sentence_transformers_config"
KEY_DIGEST = "hf_metadata_sha256"

# Values stored as plain text. hf_tokenizer_json is the tokenizer.json document as text: it goes
# straight to tokenizers.Tokenizer.from_str, so it is never parsed here.
STRING_KEYS = frozenset({
    KEY_VERSION, KEY_TIMESTAMP, KEY_TRANSFORMERS_VERSION, KEY_TOKENIZER_JSON, KEY_TOKENIZERS_VERSION,
    KEY_PIPELINE_TASK, KEY_EMBEDDING_LEVEL, KEY_DIGEST,
})
# Values stored as canonical JSON objects.
JSON_KEYS = frozenset({
    KEY_MODEL_CONFIG, KEY_TOKENIZER_CONFIG, KEY_IMAGE_PROCESSOR_CONFIG, KEY_FEATURE_EXTRACTOR_CONFIG,
    KEY_GENERATION_CONFIG, KEY_FEATURE_ENGINEERING, KEY_PIPELINE_CONFIG, KEY_EXPORT_CONFIG, KEY_SENTENCE_TRANSFORMERS,
})
KEYS = STRING_KEYS | JSON_KEYS
# The two keys the original design named without the hf_ prefix. Every other key of the format,
# present and future, starts with hf_; that is what makes a key "ours" (replaced on re-embed,
# covered by the digest), so that a newer writer's extra keys stay covered for older readers.
_UNPREFIXED_KEYS = frozenset({KEY_FEATURE_ENGINEERING, KEY_EXPORT_CONFIG})

COMPRESSED_SUFFIX = ":compressed"
# Older writers marked a compressed value by this prefix on the value instead of the key suffix; read only.
LEGACY_GZIP_PREFIX = "gzip:"
DEFAULT_COMPRESS_THRESHOLD = 10 * 1024
"""Values whose UTF-8 text is longer than this many bytes are stored gzip + base64."""
COMPRESSION_LEVEL = 6
MAX_DECOMPRESSED_SIZE = 256 * 1024 * 1024
"""Cap on one decompressed value, against decompression bombs."""

_VERY_LARGE_MAX_LENGTH = 10**6  # transformers writes int(1e30) when a tokenizer has no limit
# Families whose position ids start after padding_idx: max_position_embeddings counts pad_token_id + 1 extra.
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text", "ibert",
                               "roberta-prelayernorm", "xmod"})


def is_format_key(key: str) -> bool:
    """Whether a metadata_props key (without its :compressed suffix) belongs to this format."""
    return key.startswith("hf_") or key in _UNPREFIXED_KEYS


def canonical_json(value: Any) -> str:
    """The one JSON spelling of a value: sorted keys, compact separators, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


########################################################################################################
# Errors
########################################################################################################


class MetadataError(Exception):
    """Base class of every error onnxmeta raises."""


class MetadataExtractionError(MetadataError):
    """Metadata could not be discovered from a Hugging Face model."""


class MetadataEmbeddingError(MetadataError):
    """Metadata could not be written into an ONNX file."""


class MetadataReadError(MetadataError):
    """The file or one of its metadata values could not be read."""


class UnsupportedVersionError(MetadataReadError):
    """The metadata was written by a newer, incompatible major version of the format."""


class MetadataValidationError(MetadataError):
    """The metadata is readable but wrong: missing keys, bad digest, disagreement with the graph."""


class ProcessorReconstructionError(MetadataError):
    """The tokenizer or processor could not be rebuilt from the metadata."""


class TaskDetectionError(MetadataError):
    """No pipeline task is known for the model, or the task is not supported."""


class InvalidInputError(MetadataError, ValueError):
    """The caller passed inputs or arguments the task cannot use."""


########################################################################################################
# Protobuf scanner
########################################################################################################
# An ONNX file is a serialized ModelProto. We only walk its top-level fields: each is a tag varint
# (field_number << 3 | wire_type) followed by its payload. Length-delimited payloads (the graph, which
# holds the weights) are skipped by seeking, so a 400 MB model costs a handful of small reads.
# Only field 14, metadata_props (StringStringEntryProto: key = 1, value = 2), is read.

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5
FIELD_GRAPH = 7
FIELD_METADATA_PROPS = 14
_HEAD_BYTES = 20  # a tag varint and a length varint are at most 10 bytes each


class _Malformed(Exception):
    """Internal: a scanner failure; converted once into MetadataReadError with the offset."""


class Field(NamedTuple):
    """One top-level field of a ModelProto: bytes [start, end) of the file, payload from data_start."""

    number: int
    wire_type: int
    start: int
    data_start: int
    end: int


class Entry(NamedTuple):
    """One metadata_props entry and the top-level field that holds it."""

    key: str
    value: str
    field: Field


class ModelScan(NamedTuple):
    """The top-level layout of an ONNX file: its fields in file order and its metadata entries."""

    size: int
    fields: list[Field]
    entries: list[Entry]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at pos; return (value, position after it)."""
    result = 0
    for i in range(10):
        if pos + i >= len(buf):
            raise _Malformed("varint runs past the end of the data")
        byte = buf[pos + i]
        result |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if result >> 64:
                raise _Malformed("varint overflows 64 bits")
            return result, pos + i + 1
    raise _Malformed("varint longer than 10 bytes")


def _field_head(buf: bytes, pos: int, limit: int) -> tuple[int, int, int, int]:
    """Decode the field at buf[pos:], which may extend to limit; return (number, wire, data_start, end).

    Positions are relative to buf; limit is where the enclosing message ends (may exceed len(buf)).
    """
    tag, p = _varint(buf, pos)
    number, wire = tag >> 3, tag & 7
    if number == 0:
        raise _Malformed("field number 0")
    if wire == _WIRE_VARINT:
        _, end = _varint(buf, p)
        return number, wire, p, end
    if wire == _WIRE_I64:
        end = p + 8
    elif wire == _WIRE_I32:
        end = p + 4
    elif wire == _WIRE_LEN:
        length, p = _varint(buf, p)
        end = p + length
    else:
        raise _Malformed(f"unsupported wire type {wire} in field {number}")
    if end > limit:
        raise _Malformed(f"field {number} declares {end - p} bytes but only {limit - p} remain")
    return number, wire, p, end


def _parse_entry(body: bytes) -> tuple[str, str]:
    """Decode a StringStringEntryProto into (key, value)."""
    key = value = ""
    pos = 0
    while pos < len(body):
        number, wire, start, end = _field_head(body, pos, len(body))
        if number in (1, 2):
            if wire != _WIRE_LEN:
                raise _Malformed(f"metadata_props field {number} has wire type {wire}, expected 2")
            try:
                text = body[start:end].decode("utf-8")
            except UnicodeDecodeError:
                raise _Malformed("metadata_props entry is not valid UTF-8") from None
            if number == 1:
                key = text
            else:
                value = text
        pos = end
    return key, value


def _iter_fields(f: IO[bytes], size: int) -> Iterator[Field]:
    pos = 0
    while pos < size:
        f.seek(pos)
        head = f.read(_HEAD_BYTES)
        try:
            number, wire, data_start, end = _field_head(head, 0, size - pos)
        except _Malformed as exc:
            raise _Malformed(f"{exc} (at byte {pos})") from None
        yield Field(number, wire, pos, pos + data_start, pos + end)
        pos += end


def _model_path(path: Any) -> str:
    """path as a str, or InvalidInputError for what is not a path (None, a number, an open file)."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"a model path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise InvalidInputError(f"a model path must be text, got {type(path).__name__}")
    if not path:
        raise InvalidInputError("the model path is empty; pass the path of an .onnx file")
    return path


def _open_regular(path: str) -> IO[bytes]:
    """Open a regular file for reading; refuse directories, FIFOs and devices before they can block a read."""
    # O_NONBLOCK: opening a FIFO for reading otherwise waits forever for a writer.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise MetadataReadError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise MetadataReadError(f"{path} is a directory; pass the .onnx file inside it") from None
    except OSError as exc:
        raise MetadataReadError(f"cannot open {path}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise MetadataReadError(f"{path} is a directory; pass the .onnx file inside it")
        raise MetadataReadError(f"{path} is not a regular file (a pipe, socket or device); pass an .onnx file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def scan_model(path: str | os.PathLike[str]) -> ModelScan:
    """Walk the top-level fields of an ONNX file without reading the graph; collect metadata_props."""
    path = _model_path(path)
    name = os.path.basename(path)
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        fields: list[Field] = []
        entries: list[Entry] = []
        try:
            for field in _iter_fields(f, size):
                fields.append(field)
                if field.number != FIELD_METADATA_PROPS:
                    continue
                if field.wire_type != _WIRE_LEN:
                    raise _Malformed(f"metadata_props has wire type {field.wire_type} (at byte {field.start})")
                f.seek(field.data_start)
                body = f.read(field.end - field.data_start)
                try:
                    key, value = _parse_entry(body)
                except _Malformed as exc:
                    raise _Malformed(f"{exc} (in the metadata_props entry at byte {field.start})") from None
                entries.append(Entry(key, value, field))
        except _Malformed as exc:
            raise MetadataReadError(f"{name} is not a readable ONNX model: {exc}") from None
    if not any(fl.number == FIELD_GRAPH and fl.wire_type == _WIRE_LEN for fl in fields):
        raise MetadataReadError(f"{name} is not an ONNX model: it has no graph (field {FIELD_GRAPH})")
    return ModelScan(size, fields, entries)


_INFO_FIELDS = {1: "ir_version", 2: "producer_name", 3: "producer_version", 4: "domain", 5: "model_version", 8: "opset_import"}


def model_info(path: str | os.PathLike[str], scan: ModelScan | None = None) -> dict[str, Any]:
    """The small top-level facts of a model: ir_version, producer, domain, opset imports."""
    scan = scan or scan_model(path)
    info: dict[str, Any] = {"opset_import": {}}
    with _open_regular(_model_path(path)) as f:
        for field in scan.fields:
            name = _INFO_FIELDS.get(field.number)
            if name is None:
                continue
            f.seek(field.start)
            raw = f.read(field.end - field.start)
            data = raw[field.data_start - field.start:]
            try:
                if field.wire_type == _WIRE_VARINT:
                    info[name] = _varint(data, 0)[0]
                elif field.wire_type != _WIRE_LEN:
                    continue
                elif name == "opset_import":
                    domain, version, pos = "", 0, 0
                    while pos < len(data):
                        number, wire, start, end = _field_head(data, pos, len(data))
                        if number == 1 and wire == _WIRE_LEN:
                            domain = data[start:end].decode("utf-8")
                        elif number == 2 and wire == _WIRE_VARINT:
                            version = _varint(data, start)[0]
                        pos = end
                    info["opset_import"][domain or "ai.onnx"] = version
                else:
                    info[name] = data.decode("utf-8")
            except (_Malformed, UnicodeDecodeError):
                raise MetadataReadError(f"malformed field {field.number} (at byte {field.start})") from None
    return info


########################################################################################################
# Metadata encoding and decoding
########################################################################################################


def value_text(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if key in STRING_KEYS:
        raise MetadataEmbeddingError(f"metadata value {key!r} must be a string, got {type(value).__name__}")
    if key in JSON_KEYS and not isinstance(value, dict):
        # readers refuse anything but an object here, so writing it would make the file unreadable
        raise MetadataEmbeddingError(f"metadata value {key!r} must be a dict (a JSON object), got {type(value).__name__}")
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise MetadataEmbeddingError(f"metadata value {key!r} is not JSON-serializable: {exc}") from None


def metadata_digest(texts: Mapping[str, str]) -> str:
    """SHA-256 over the format's values as text (decompressed), in key order, digest key excluded."""
    h = hashlib.sha256()
    for key in sorted(texts):
        if is_format_key(key) and key != KEY_DIGEST:
            h.update(key.encode("utf-8") + b"\0" + texts[key].encode("utf-8") + b"\0")
    return h.hexdigest()


def _compress(text: str) -> str:
    # mtime=0 keeps the output deterministic: same metadata, same bytes.
    compressor = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, 31)
    data = compressor.compress(text.encode("utf-8")) + compressor.flush()
    return base64.b64encode(data).decode("ascii")


def encode_metadata(
    metadata: Mapping[str, Any], *, compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD
) -> list[tuple[str, str]]:
    """Turn metadata into sorted metadata_props (key, value) pairs, adding the digest.

    Values whose text exceeds compress_threshold bytes are stored gzip + base64 under
    ``key + ":compressed"``; ``None`` disables compression.
    """
    texts = {key: value_text(key, value) for key, value in metadata.items() if key != KEY_DIGEST}
    texts[KEY_DIGEST] = metadata_digest(texts)
    props = []
    for key in sorted(texts):
        text = texts[key]
        if compress_threshold is not None and len(text.encode("utf-8")) > compress_threshold:
            props.append((key + COMPRESSED_SUFFIX, _compress(text)))
        else:
            props.append((key, text))
    return props


_INFLATE_STEP = 1 << 20


def _decompress(key: str, value: str, limit: int) -> str:
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MetadataReadError(f"compressed value {key!r} is not valid base64") from None
    decompressor = zlib.decompressobj(31)
    # Inflate in steps into one growing buffer: a bomb costs at most the limit, not a multiple of it
    # (one call with max_length=limit grows its output by copies and can hold twice the limit).
    out = bytearray()
    pending = data
    try:
        while not decompressor.eof and len(out) <= limit:
            chunk = decompressor.decompress(pending, min(_INFLATE_STEP, limit + 1 - len(out)))
            if not chunk and len(decompressor.unconsumed_tail) == len(pending):
                break  # no progress: the input ended before the stream did
            out += chunk
            pending = decompressor.unconsumed_tail
    except zlib.error as exc:
        raise MetadataReadError(f"compressed value {key!r} is not valid gzip: {exc}") from None
    if len(out) > limit:
        raise MetadataReadError(
            f"compressed value {key!r} expands past the {limit}-byte limit (max_decompressed_size), a guard "
            "against decompression bombs; if the file is trusted, raise it: "
            "read_metadata(path, max_decompressed_size=...) or Runtime(path, max_decompressed_size=...)"
        )
    if not decompressor.eof:
        raise MetadataReadError(f"compressed value {key!r} is truncated gzip data")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise MetadataReadError(f"compressed value {key!r} is not UTF-8 text") from None


# ASCII digits only, and few of them: str.isdigit() accepts "²", which int() refuses, and int() refuses
# more than 4300 digits.
_VERSION = re.compile(r"([0-9]{1,6})\.([0-9]{1,6})")


def _check_version(version: str) -> None:
    match = _VERSION.fullmatch(version)
    if match is None:
        shown = version if len(version) <= 40 else version[:37] + "..."
        raise MetadataValidationError(f"{KEY_VERSION} is {shown!r}; expected MAJOR.MINOR such as {FORMAT_VERSION!r}")
    major, minor = int(match[1]), int(match[2])
    ours_major, ours_minor = (int(p) for p in FORMAT_VERSION.split("."))
    if major > ours_major:
        raise UnsupportedVersionError(
            f"metadata format {version} is newer than this runtime understands ({FORMAT_VERSION}); "
            "upgrade onnxmeta_runtime.py"
        )
    if major == ours_major and minor > ours_minor:
        warnings.warn(
            f"metadata format {version} is newer than this runtime ({FORMAT_VERSION}); "
            "keys it does not know are ignored",
            stacklevel=3,
        )


def _check_limit(max_decompressed_size: Any) -> None:
    if not isinstance(max_decompressed_size, int) or isinstance(max_decompressed_size, bool) or max_decompressed_size < 1:
        raise InvalidInputError(f"max_decompressed_size must be a positive number of bytes, got {max_decompressed_size!r}")


def decode_metadata(
    props: Iterable[tuple[str, str]],
    *,
    verify: bool = True,
    max_decompressed_size: int = MAX_DECOMPRESSED_SIZE,
) -> dict[str, Any]:
    """Turn metadata_props pairs back into metadata: decompress, parse JSON, check version and digest.

    Keys that are not part of the format are returned unchanged as strings.
    """
    _check_limit(max_decompressed_size)
    props = list(props)
    # The version first: a newer major format may spell or compress values differently, and must be
    # refused as such rather than as a bad value.
    versions = [value for key, value in props if key == KEY_VERSION]
    if len(versions) == 1:
        _check_version(versions[0])
    texts: dict[str, str] = {}
    for raw_key, value in props:
        key = raw_key
        # Only the format's keys are ever compressed; another tool's "notes:compressed" is its own business.
        if raw_key.endswith(COMPRESSED_SUFFIX) and is_format_key(raw_key[: -len(COMPRESSED_SUFFIX)]):
            key = raw_key[: -len(COMPRESSED_SUFFIX)]
            value = _decompress(key, value, max_decompressed_size)
        elif value.startswith(LEGACY_GZIP_PREFIX) and is_format_key(raw_key):
            # No JSON value and no value this format writes starts so: the prefix is unambiguous.
            value = _decompress(key, value[len(LEGACY_GZIP_PREFIX):], max_decompressed_size)
        if key in texts and is_format_key(key):
            raise MetadataReadError(f"metadata key {key!r} appears more than once; the file is ambiguous")
        texts[key] = value
    metadata: dict[str, Any] = {}
    for key, text in texts.items():
        if key in JSON_KEYS and text == "None":
            # The original design's writer stores str(value), so an Optional config that was None reads
            # "None": the value is absent. It cannot be a JSON object, so nothing else is lost.
            continue
        if key in JSON_KEYS:
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise MetadataReadError(f"metadata value {key!r} is not valid JSON: {exc}") from None
            except RecursionError:  # json recurses once per nesting level: "[[[[..." exhausts the stack
                raise MetadataReadError(f"metadata value {key!r} nests JSON too deeply to read") from None
            if not isinstance(value, dict):
                raise MetadataValidationError(f"metadata value {key!r} must be a JSON object, got {type(value).__name__}")
            metadata[key] = value
        else:
            metadata[key] = text
    if verify and KEY_DIGEST in texts:
        expected = metadata_digest(texts)
        if texts[KEY_DIGEST] != expected:
            raise MetadataValidationError(
                "metadata digest mismatch: the embedded values were changed after embedding "
                f"(stored {texts[KEY_DIGEST][:12]}..., computed {expected[:12]}...); re-embed the metadata"
            )
    return metadata


_INT = (int,)
_NUMBER = (int, float)
_TOKEN = (str, dict)
# JSON types of the configuration fields the runtime reads. A file with another type there is refused
# when a tokenizer or Runtime is built, with the field named, instead of failing deep inside a task.
# JSON null means "not set" and is always accepted.
_FIELD_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    KEY_MODEL_CONFIG: {
        "id2label": (dict,), "label2id": (dict,), "num_labels": _INT, "problem_type": (str,), "pad_token_id": _INT,
        "max_position_embeddings": _INT, "model_type": (str,), "function_to_apply": (str,), "vocab_size": _INT,
    },
    KEY_TOKENIZER_CONFIG: {
        "model_max_length": _NUMBER, "padding_side": (str,), "truncation_side": (str,), "pad_token_type_id": _INT,
        "pad_token": _TOKEN, "mask_token": _TOKEN, "unk_token": _TOKEN, "cls_token": _TOKEN, "sep_token": _TOKEN,
        "tokenizer_class": (str,),
    },
    KEY_SENTENCE_TRANSFORMERS: {
        "pooling": (dict,), "prompts": (dict,), "default_prompt_name": (str,), "modules": (list,),
        "max_seq_length": _INT, "normalize": (bool,), "do_lower_case": (bool,),
    },
}
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_NAMES.get(type(value), type(value).__name__)


def check_value_types(metadata: Mapping[str, Any]) -> None:
    """Refuse configuration fields the runtime reads when their JSON type is wrong (MetadataValidationError)."""

    def fail(where: str, expected: str, value: Any) -> None:
        raise MetadataValidationError(
            f"{where} must be {expected}, got {_json_type(value)}; re-embed from a model whose files have the right types"
        )

    for key, fields in _FIELD_TYPES.items():
        section = metadata.get(key)
        if not isinstance(section, dict):
            continue
        for name, types in fields.items():
            value = section.get(name)
            # bool is an int in Python but not in JSON: true is no num_labels
            if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
                fail(f"{key}.{name}", " or ".join(_JSON_NAMES[t] for t in types), value)
    config = metadata.get(KEY_MODEL_CONFIG) or {}
    for name, value in (config.get("label2id") or {}).items():
        if not isinstance(value, int) or isinstance(value, bool):
            fail(f"{KEY_MODEL_CONFIG}.label2id[{name!r}]", "an integer", value)
    side = (metadata.get(KEY_TOKENIZER_CONFIG) or {}).get("truncation_side")
    if side not in (None, "left", "right"):
        raise MetadataValidationError(f"{KEY_TOKENIZER_CONFIG}.truncation_side is {side!r}; expected 'left' or 'right'")
    st = metadata.get(KEY_SENTENCE_TRANSFORMERS) or {}
    for name, value in (st.get("prompts") or {}).items():
        if not isinstance(value, str):
            fail(f"{KEY_SENTENCE_TRANSFORMERS}.prompts[{name!r}]", "a string", value)
    for i, module in enumerate(st.get("modules") or []):
        if not isinstance(module, dict):
            fail(f"{KEY_SENTENCE_TRANSFORMERS}.modules[{i}]", "an object", module)
    mode = (st.get("pooling") or {}).get("pooling_mode")
    if mode is not None and not (isinstance(mode, str) or (isinstance(mode, list) and all(isinstance(m, str) for m in mode))):
        fail(f"{KEY_SENTENCE_TRANSFORMERS}.pooling.pooling_mode", "a string or an array of strings", mode)


METADATA_CACHE_SIZE = 32
"""How many files' decoded metadata read_metadata keeps (least recently used dropped first)."""
# A file changed twice within the filesystem's timestamp granularity can keep its size and mtime; like
# git's "racily clean" rule, a file modified this recently is not cached.
_RACY_NS = 2_000_000_000
_cache: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()
_cache_lock = threading.Lock()


def _cache_key(path: str, extra: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The identity of a file's current contents: path, inode, size, mtime and ctime; None if uncachable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS:
        return None
    return (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, *extra)


def clear_metadata_cache() -> None:
    """Forget every cached read_metadata result."""
    with _cache_lock:
        _cache.clear()


def read_metadata(
    path: str | os.PathLike[str], *, verify: bool = True, max_decompressed_size: int = MAX_DECOMPRESSED_SIZE
) -> dict[str, Any]:
    """Read the metadata of an ONNX file without loading its graph.

    Returns every metadata_props entry: the format's keys decoded (JSON objects as dicts), others as
    strings. Raises MetadataReadError for unreadable files, UnsupportedVersionError for a newer major
    format, MetadataValidationError when the digest does not match (unless verify=False).
    Results are cached per file contents (path, inode, size, mtime, ctime); each call gets its own copy.
    """
    path = _model_path(path)
    _check_limit(max_decompressed_size)
    key = _cache_key(path, (verify, max_decompressed_size))
    with _cache_lock:
        cached = _cache.get(key) if key is not None else None
        if cached is not None:
            _cache.move_to_end(key)
    if cached is not None:
        return copy.deepcopy(cached)
    scan = scan_model(path)
    try:
        metadata = decode_metadata(
            ((e.key, e.value) for e in scan.entries), verify=verify, max_decompressed_size=max_decompressed_size
        )
    except MetadataError as exc:
        raise type(exc)(f"{os.path.basename(path)}: {exc}") from None
    # Cache only when the file did not change while it was read.
    if key is not None and key == _cache_key(path, (verify, max_decompressed_size)):
        with _cache_lock:
            _cache[key] = copy.deepcopy(metadata)
            while len(_cache) > METADATA_CACHE_SIZE:
                _cache.popitem(last=False)
    return metadata


########################################################################################################
# Tokenizer
########################################################################################################


def _token_content(token: Any) -> str | None:
    """A special token from a tokenizer_config: a string or an AddedToken dict."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


# transformers' clean_up_tokenization, in its order: spaces that WordPiece decoding puts before punctuation
# and English contractions.
_CLEAN_UP = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
    (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)


def _reraise_unless_tokenizer_error(exc: BaseException) -> None:
    """Re-raise exc unless the tokenizers library raised it for a bad tokenizer.json.

    tokenizers raises plain Exception for errors it reports, and pyo3's PanicException, a BaseException,
    when its Rust code panics (a template naming a special token it does not define); so its calls catch
    BaseException and pass KeyboardInterrupt and SystemExit on through here.
    """
    if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
        raise exc


class TokenizerProxy:
    """The tokenizer's configuration when no vocabulary is embedded; tokenizing raises a clear error."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def _no_vocab(self, *args: Any, **kwargs: Any) -> Any:
        raise ProcessorReconstructionError(
            "no vocabulary embedded, so this model cannot tokenize text; re-embed with --include-vocab "
            "(python -m authoring embed model.onnx <model> --include-vocab)"
        )

    __call__ = encode = encode_batch = decode = _no_vocab

    def __repr__(self) -> str:
        return f"TokenizerProxy({self.config.get('tokenizer_class', 'tokenizer')}, no vocabulary)"


_MAX_TOKENIZER_VARIANTS = 8


class TextTokenizer:
    """A tokenizers.Tokenizer configured like the transformers tokenizer it was saved from."""

    def __init__(self, tokenizer_json: str, config: Mapping[str, Any], max_length: int, *,
                 truncation: str = "longest_first", stride: int = 0, window: int | None = None) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ProcessorReconstructionError(
                "text models need the 'tokenizers' package; pip install tokenizers"
            ) from None
        try:
            tokenizer = Tokenizer.from_str(tokenizer_json)
        except BaseException as exc:
            _reraise_unless_tokenizer_error(exc)
            raise ProcessorReconstructionError(f"embedded tokenizer.json cannot be loaded: {exc}") from None
        self.config = dict(config)
        self.max_length = max_length
        self.window = max_length if window is None else window
        # transformers pads and truncates per call, ignoring what tokenizer.json says; so do we.
        tokenizer.no_padding()
        try:
            tokenizer.enable_truncation(
                self.window, stride=stride, strategy=truncation, direction=config.get("truncation_side") or "right"
            )
        except Exception as exc:  # tokenizers rejects a stride too large for the window
            raise InvalidInputError(f"cannot cut texts into windows of {self.window} tokens with stride {stride}: {exc}") from None
        self._tokenizer = tokenizer
        self._source = tokenizer_json
        self._variants: dict[tuple[str, int, int], TextTokenizer] = {}
        self._variants_lock = threading.Lock()
        # transformers 5 skips the clean-up for BPE models, where it would eat real spaces, unless told.
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces")) and (
            type(tokenizer.model).__name__ != "BPE"
            or bool(config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"))
        )
        pad_id = self.token_id("pad_token")
        self.pad_token_id = 0 if pad_id is None else pad_id
        # JSON null means "not set", as absent does.
        self.pad_token_type_id = int(config.get("pad_token_type_id") or 0)
        # transformers feeds a model what its tokenizer returns: one without token_type_ids (DistilBERT's,
        # RoBERTa's) leaves a graph that takes them with zeros
        names = config.get("model_input_names")
        self.type_ids = not isinstance(names, list) or "token_type_ids" in names
        self.padding_side = config.get("padding_side") or "right"
        if self.padding_side not in ("right", "left"):
            raise ProcessorReconstructionError(f"padding_side is {self.padding_side!r}; expected 'right' or 'left'")

    def token_id(self, name: str) -> int | None:
        """Id of the special token the config names (``mask_token``, ``pad_token``); None if absent or unknown."""
        token = _token_content(self.config.get(name))
        return None if token is None else self._tokenizer.token_to_id(token)

    def with_truncation(self, strategy: str, *, window: int | None = None, stride: int = 0) -> TextTokenizer:
        """The same tokenizer truncating otherwise: strategy (only_first, only_second, longest_first), window
        length, and stride (the tokens overlapping windows repeat; the rest land in encoding.overflowing).

        Built once per setting and kept: a tokenizers.Tokenizer holds its truncation, so each setting
        needs its own for threads to share them.
        """
        key = (strategy, self.max_length if window is None else window, stride)
        with self._variants_lock:
            variant = self._variants.get(key)
            if variant is None:
                variant = TextTokenizer(self._source, self.config, self.max_length,
                                        truncation=strategy, window=key[1], stride=stride)
                if len(self._variants) >= _MAX_TOKENIZER_VARIANTS:  # settings come from callers: keep a few
                    del self._variants[next(iter(self._variants))]
                self._variants[key] = variant
        return variant

    @property
    def backend(self) -> Any:
        """The underlying tokenizers.Tokenizer."""
        return self._tokenizer

    def encode(self, inputs: Sequence[Any], *, is_pretokenized: bool = False, add_special_tokens: bool = True) -> list[Any]:
        """Tokenize texts or (text, text_pair) tuples with special tokens, truncated to the window
        (max_length unless with_truncation said otherwise); is_pretokenized takes lists of words."""
        try:
            return self._tokenizer.encode_batch(list(inputs), add_special_tokens=add_special_tokens,
                                                is_pretokenized=is_pretokenized)
        except BaseException as exc:
            _reraise_unless_tokenizer_error(exc)
            if isinstance(exc, Exception):  # tokenizers reports it, e.g. a pair that cannot be truncated
                raise InvalidInputError(f"cannot tokenize the input: {exc}") from None
            raise ProcessorReconstructionError(f"the embedded tokenizer.json fails to tokenize: {exc}; re-embed a "
                                               "tokenizer that transformers can load") from None

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Token ids to text as transformers decodes them, clean_up_tokenization_spaces included."""
        try:
            text = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        except BaseException as exc:
            _reraise_unless_tokenizer_error(exc)
            raise ProcessorReconstructionError(f"the embedded tokenizer.json fails to decode: {exc}; re-embed a "
                                               "tokenizer that transformers can load") from None
        if self.clean_up_spaces:
            for old, new in _CLEAN_UP:
                text = text.replace(old, new)
        return text

    def tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Tokens joined as transformers' convert_tokens_to_string does: through the decoder, no clean-up."""
        decoder = self._tokenizer.decoder
        if decoder is None:
            return " ".join(tokens)
        try:
            return decoder.decode(list(tokens))
        except BaseException as exc:
            _reraise_unless_tokenizer_error(exc)
            raise ProcessorReconstructionError(f"the embedded tokenizer.json fails to decode: {exc}; re-embed a "
                                               "tokenizer that transformers can load") from None

    def pad(self, encodings: Sequence[Any], dtypes: Mapping[str, Any], *, side: str | None = None) -> dict[str, np.ndarray]:
        """Pad encodings to the longest into arrays named like the model inputs in dtypes, on the tokenizer's
        padding_side unless side says otherwise."""
        import numpy as np

        side = side or self.padding_side
        width = max(len(e.ids) for e in encodings)
        arrays = {}
        for name, attr, fill in (
            ("input_ids", "ids", self.pad_token_id),
            ("attention_mask", "attention_mask", 0),
            ("token_type_ids", "type_ids", self.pad_token_type_id),
        ):
            if name not in dtypes:
                continue
            out = np.full((len(encodings), width), fill, dtype=dtypes[name])
            if name == "token_type_ids" and not self.type_ids:
                arrays[name] = np.zeros_like(out)
                continue
            for row, enc in enumerate(encodings):
                values = getattr(enc, attr)
                if side == "right":
                    out[row, : len(values)] = values
                else:
                    out[row, width - len(values):] = values
            arrays[name] = out
        return arrays

    def __call__(self, inputs: Sequence[str | tuple[str, str]], dtypes: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Tokenize and pad in one step."""
        return self.pad(self.encode(inputs), dtypes)


def _max_length(metadata: Mapping[str, Any]) -> int:
    """Longest input the model takes: tokenizer, model and sentence-transformers limits, the smallest."""
    model_config = metadata.get(KEY_MODEL_CONFIG) or {}
    positions = model_config.get("max_position_embeddings")
    if isinstance(positions, int) and model_config.get("model_type") in _OFFSET_POSITIONS:
        positions -= int(model_config.get("pad_token_id") or 0) + 1
    candidates = (
        (metadata.get(KEY_TOKENIZER_CONFIG) or {}).get("model_max_length"),
        positions,
        (metadata.get(KEY_SENTENCE_TRANSFORMERS) or {}).get("max_seq_length"),
    )
    limits = [int(v) for v in candidates if isinstance(v, (int, float)) and 0 < v < _VERY_LARGE_MAX_LENGTH]
    if not limits:
        raise ProcessorReconstructionError(
            "no maximum sequence length in the tokenizer config (model_max_length) or model config "
            "(max_position_embeddings); re-embed from a model that declares one"
        )
    return min(limits)


def load_tokenizer(metadata: Mapping[str, Any]) -> TextTokenizer | TokenizerProxy | None:
    """The tokenizer of a model: full when the vocabulary is embedded, a proxy when only its config is."""
    check_value_types(metadata)
    config = metadata.get(KEY_TOKENIZER_CONFIG)
    tokenizer_json = metadata.get(KEY_TOKENIZER_JSON)
    if tokenizer_json is not None:
        return TextTokenizer(tokenizer_json, config or {}, _max_length(metadata))
    if config is not None:
        return TokenizerProxy(config)
    return None


########################################################################################################
# Generation
########################################################################################################
# The decoding loop that generative tasks share, as transformers' generate() runs it: options resolved
# like a GenerationConfig, logits processors in _get_logits_processor's order, stopping criteria, greedy
# search, sampling and beam search, and the streaming text holdback. The loop reaches the model through
# a step object (_Step); _DecoderOnly runs a decoder-only graph and keeps its past key values. An
# encoder-decoder step plugs in the same way: its state carries the encoder outputs, computed once.
#
# Rows are the prompts of one call, left-padded to a common width. Everything that transformers measures
# on input_ids (min_length, max_length, forced tokens, stop strings) is measured here on each row without
# its padding, so that a batch gives what each prompt gives alone, as the pipeline runs them.


class _GenerationOption(NamedTuple):
    """A generation option: its name, its check (returns the value normalized or raises InvalidInputError
    naming the option) and transformers' global default (GenerationConfig._get_default_generation_params)."""

    name: str
    check: Callable[[str, Any], Any]
    default: Any


def _integer(minimum: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
        return value

    return check


def _number(low: float, *, low_open: bool = False, high: float | None = None) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        real = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not real or not (value > low if low_open else value >= low) or (high is not None and not value <= high):
            interval = f"{'(' if low_open else '['}{low}, {'inf)' if high is None else f'{high}]'}"
            raise InvalidInputError(f"{name} must be a number in {interval}, got {value!r}")
        return float(value)

    return check


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be True or False, got {value!r}")
    return value


def _token_list(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
        raise InvalidInputError(f"{name} must be a list of token ids (integers >= 0), got {value!r}")
    return tuple(value)


def _token_ids(name: str, value: Any) -> tuple[int, ...]:
    """A token id or a non-empty list of them (eos_token_id may name several)."""
    ids = _token_list(name, [value] if isinstance(value, int) and not isinstance(value, bool) else value)
    if not ids:
        raise InvalidInputError(f"{name} must be a token id or a non-empty list of token ids, got {value!r}")
    return ids


def _token_sequences(name: str, value: Any) -> tuple[tuple[int, ...], ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(s, (list, tuple)) and s for s in value):
        raise InvalidInputError(f"{name} must be a non-empty list of non-empty lists of token ids, got {value!r}")
    return tuple(_token_list(name, s) for s in value)


def _early_stopping(name: str, value: Any) -> bool | str:
    if value not in (True, False, "never") or isinstance(value, (int, float)) and not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be True, False or 'never', got {value!r}")
    return bool(value) if value != "never" else "never"


def _texts(name: str, value: Any) -> tuple[str, ...]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise InvalidInputError(f"{name} must be a non-empty string or a list of them, got {value!r}")
    return tuple(texts)


_GENERATION_OPTIONS = (
    _GenerationOption("max_new_tokens", _integer(1), None),
    _GenerationOption("max_length", _integer(1), 20),
    _GenerationOption("min_new_tokens", _integer(0), None),
    _GenerationOption("min_length", _integer(0), 0),
    _GenerationOption("do_sample", _flag, False),
    _GenerationOption("temperature", _number(0.0), 1.0),
    _GenerationOption("top_k", _integer(0), 50),
    _GenerationOption("top_p", _number(0.0, low_open=True, high=1.0), 1.0),
    _GenerationOption("typical_p", _number(0.0, low_open=True, high=1.0), 1.0),
    _GenerationOption("repetition_penalty", _number(0.0, low_open=True), 1.0),
    _GenerationOption("no_repeat_ngram_size", _integer(0), 0),
    _GenerationOption("num_beams", _integer(1), 1),
    _GenerationOption("length_penalty", _number(float("-inf")), 1.0),
    _GenerationOption("early_stopping", _early_stopping, False),
    _GenerationOption("num_return_sequences", _integer(1), 1),
    _GenerationOption("bos_token_id", _integer(0), None),
    _GenerationOption("eos_token_id", _token_ids, None),
    _GenerationOption("pad_token_id", _integer(0), None),
    _GenerationOption("bad_words_ids", _token_sequences, None),
    _GenerationOption("suppress_tokens", _token_list, None),
    _GenerationOption("begin_suppress_tokens", _token_list, None),
    _GenerationOption("forced_bos_token_id", _integer(0), None),
    _GenerationOption("forced_eos_token_id", _token_ids, None),
    _GenerationOption("stop_strings", _texts, None),
    _GenerationOption("use_cache", _flag, True),
    # not transformers': sampling here draws from numpy, so a seed makes it reproducible
    _GenerationOption("seed", _integer(0), None),
)
_GENERATION_OPTION_NAMES = tuple(o.name for o in _GENERATION_OPTIONS)

_SAMPLING_OPTIONS = frozenset({"temperature", "top_k", "top_p", "typical_p"})
# Keys of a generation_config.json that change nothing here: bookkeeping, and outputs a pipeline never returns.
_INERT_GENERATION_KEYS = frozenset({
    "transformers_version", "_from_model_config", "output_attentions", "output_hidden_states", "output_scores",
    "output_logits", "return_dict_in_generate", "decoder_start_token_id", "cache_implementation", "is_assistant",
})


class _GenerationConfig(NamedTuple):
    """Generation options resolved as generate() resolves them; ``explicit`` names those not left to the
    global defaults (set by the caller, the model's generation config or the task)."""

    max_new_tokens: int | None
    max_length: int
    min_new_tokens: int | None
    min_length: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    typical_p: float
    repetition_penalty: float
    no_repeat_ngram_size: int
    num_beams: int
    length_penalty: float
    early_stopping: bool | str
    num_return_sequences: int
    bos_token_id: int | None
    eos_token_id: tuple[int, ...] | None
    pad_token_id: int | None
    bad_words_ids: tuple[tuple[int, ...], ...] | None
    suppress_tokens: tuple[int, ...] | None
    begin_suppress_tokens: tuple[int, ...] | None
    forced_bos_token_id: int | None
    forced_eos_token_id: tuple[int, ...] | None
    stop_strings: tuple[str, ...] | None
    use_cache: bool
    seed: int | None
    explicit: frozenset[str]

    @property
    def pad(self) -> int | None:
        """The token finished rows are filled with: pad_token_id, else the first eos (as generate() sets it)."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_id[0] if self.eos_token_id else None


def _model_generation_defaults(generation_config: Mapping[str, Any] | None, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The options a model sets: its generation_config.json, or else the generation keys of its config.json
    (GenerationConfig.from_model_config). Checked: a bad value is a MetadataValidationError naming it."""
    source = generation_config if generation_config is not None else {
        k: v for k, v in model_config.items() if k in _GENERATION_OPTION_NAMES or k in _INERT_GENERATION_KEYS
    }
    checks = {o.name: o.check for o in _GENERATION_OPTIONS}
    values: dict[str, Any] = {}
    ignored = []
    for key, value in source.items():
        if value is None or key in _INERT_GENERATION_KEYS:
            continue
        if key not in checks or key == "seed":
            ignored.append(key)
            continue
        try:
            checks[key](key, value)
        except InvalidInputError as exc:
            raise MetadataValidationError(f"the embedded generation config is wrong: {exc}; re-embed a fixed generation_config.json") from None
        values[key] = value
    if ignored and generation_config is not None:
        warnings.warn(f"the generation config sets {', '.join(sorted(ignored))}, which this runtime does not apply", stacklevel=4)
    return values


def _generation_config(model: Mapping[str, Any], user: Mapping[str, Any], task_defaults: Mapping[str, Any]) -> _GenerationConfig:
    """Options as the pipeline and generate() resolve them: the caller's (None meaning unset) over the model's
    over the task's defaults (applied only where neither set the option: not max_new_tokens when max_length is
    set, the sampling ones only when sampling) over transformers' global defaults; each checked, then together."""
    checks = {o.name: o.check for o in _GENERATION_OPTIONS}
    explicit = {**model, **{k: checks[k](k, v) for k, v in user.items() if v is not None}}
    added = {k: v for k, v in task_defaults.items()
             if k not in explicit and not (k == "max_new_tokens" and "max_length" in explicit)}
    if not {**added, **explicit}.get("do_sample"):
        added = {k: v for k, v in added.items() if k not in _SAMPLING_OPTIONS}
    values = {o.name: o.default for o in _GENERATION_OPTIONS}
    values.update({k: None if v is None else checks[k](k, v) for k, v in {**added, **explicit}.items()})
    config = _GenerationConfig(**values, explicit=frozenset(added) | frozenset(explicit))
    sequences, beams = config.num_return_sequences, config.num_beams
    if sequences > 1 and beams == 1 and not config.do_sample:
        raise InvalidInputError(
            f"num_return_sequences={sequences} needs do_sample=True or num_beams >= {sequences}: greedy search returns one sequence"
        )
    if beams > 1 and sequences > beams:
        raise InvalidInputError(f"num_return_sequences ({sequences}) must be at most num_beams ({beams})")
    if config.do_sample and config.temperature == 0:
        raise InvalidInputError("temperature must be > 0 when do_sample=True; for greedy decoding pass do_sample=False")
    return config


class _Prompts(NamedTuple):
    """The rows of one generation call: input_ids and attention_mask left-padded to one width, each row's
    padding, and the total lengths (prompt + new tokens, without padding) it may not pass and must reach."""

    ids: np.ndarray
    mask: np.ndarray
    pad: np.ndarray
    max_lengths: np.ndarray
    min_lengths: np.ndarray


def _prompts(sequences: Sequence[Sequence[int]], config: _GenerationConfig, pad_id: int, positions: int | None) -> _Prompts:
    """Left-pad token id lists into rows and give each its length limits, as generate()'s
    _prepare_generated_length does for one prompt (max_new_tokens over max_length; the default max_length,
    20 new tokens, capped at the model's positions)."""
    import numpy as np

    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    width = int(lengths.max())
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, tokens in enumerate(sequences):
        if len(tokens):
            ids[row, width - len(tokens):] = tokens
            mask[row, width - len(tokens):] = 1
    if config.max_new_tokens is not None:
        max_lengths = lengths + config.max_new_tokens
    elif "max_length" in config.explicit:
        max_lengths = np.full_like(lengths, config.max_length)
    else:
        max_lengths = lengths + config.max_length
        if positions is not None:
            max_lengths = np.minimum(max_lengths, positions)
    if config.min_new_tokens is not None:
        min_lengths = lengths + config.min_new_tokens
    else:
        min_lengths = np.full_like(lengths, config.min_length)
    longest = int(np.argmax(lengths - max_lengths))
    if lengths[longest] >= max_lengths[longest]:
        raise InvalidInputError(
            f"the input has {lengths[longest]} tokens but max_length is {max_lengths[longest]}, so nothing can be "
            "generated; raise max_length or pass max_new_tokens"
        )
    return _Prompts(ids, mask, width - lengths, max_lengths, min_lengths)


# Logits processors: each a callable (ids, scores) -> scores on the last position's scores (rows, vocab),
# float32, ids the rows so far (rows, length) including their left padding (transformers' input_ids). The loop
# owns the scores, so a processor may change them in place (a copy of the whole row per step is what a small
# model's loop would otherwise spend its time on).
_Processor = Callable[["np.ndarray", "np.ndarray"], "np.ndarray"]


def _in_vocab(tokens: Sequence[int], scores: np.ndarray) -> np.ndarray:
    """The tokens that have a column in scores."""
    import numpy as np

    return np.array([t for t in tokens if t < scores.shape[-1]], dtype=np.int64)


class _RepetitionPenalty:
    """RepetitionPenaltyLogitsProcessor: scores of tokens already in the row divided by the penalty (multiplied
    when negative); the left padding is not counted (prompt_ignore_length)."""

    def __init__(self, penalty: float, pad: np.ndarray) -> None:
        self.penalty, self.pad = penalty, pad

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        import numpy as np

        vocab = scores.shape[-1]
        # ids past the scores' width and padding go to a spare column, dropped at the end
        ids = np.where(np.arange(ids.shape[1]) < self.pad[:, None], vocab, np.minimum(ids, vocab))
        padded = np.concatenate([scores, np.zeros((len(scores), 1), dtype=scores.dtype)], axis=1)
        rows = np.arange(len(ids))[:, None]
        picked = padded[rows, ids]
        padded[rows, ids] = np.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return padded[:, :vocab]


class _NoRepeatNGram:
    """NoRepeatNGramLogitsProcessor: a token that would repeat an n-gram of the row is banned."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        import numpy as np

        n, length = self.size, ids.shape[1]
        if length < n:
            return scores
        windows = np.lib.stride_tricks.sliding_window_view(ids, n, axis=1)
        matches = (windows[..., :-1] == ids[:, None, length + 1 - n:]).all(axis=-1)
        rows, starts = np.nonzero(matches)
        banned = windows[rows, starts, -1]
        keep = banned < scores.shape[-1]
        scores[rows[keep], banned[keep]] = -np.inf
        return scores


class _BadWords:
    """NoBadWordsLogitsProcessor: the last token of a banned sequence is banned where the row ends with the
    rest of it (a one-token sequence always); sequences that are just an eos token are ignored."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos: Sequence[int]) -> None:
        import numpy as np

        sequences = [s for s in sequences if not (len(s) == 1 and s[0] in eos)]
        self.tokens = sorted({t for s in sequences for t in s})
        self.single = [s[0] for s in sequences if len(s) == 1]
        by_length: dict[int, list[Sequence[int]]] = {}
        for s in sequences:
            if len(s) > 1:
                by_length.setdefault(len(s) - 1, []).append(s)
        self.multi = [(np.array([s[:-1] for s in group]), np.array([s[-1] for s in group])) for group in by_length.values()]

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        import numpy as np

        if self.tokens and self.tokens[-1] >= scores.shape[-1]:
            outside = [t for t in self.tokens if t >= scores.shape[-1]]
            raise InvalidInputError(f"bad_words_ids has token ids outside the model's {scores.shape[-1]}-token vocabulary: {outside}")
        scores[:, self.single] = -np.inf
        for prefixes, last in self.multi:
            if prefixes.shape[1] > ids.shape[1]:
                continue
            rows, which = np.nonzero((ids[:, None, ids.shape[1] - prefixes.shape[1]:] == prefixes[None]).all(axis=-1))
            scores[rows, last[which]] = -np.inf
        return scores


class _MinLength:
    """MinLengthLogitsProcessor and MinNewTokensLengthLogitsProcessor: eos banned in rows shorter than their minimum."""

    def __init__(self, minimums: np.ndarray, eos: Sequence[int], pad: np.ndarray) -> None:
        self.minimums, self.eos, self.pad = minimums, list(eos), pad

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        import numpy as np

        short = ids.shape[1] - self.pad < self.minimums
        if short.any():
            scores[np.ix_(np.flatnonzero(short), _in_vocab(self.eos, scores))] = -np.inf
        return scores


class _ForcedTokens:
    """ForcedBOSTokenLogitsProcessor / ForcedEOSTokenLogitsProcessor: rows that reach a length (without
    padding) may only emit the forced tokens."""

    def __init__(self, tokens: Sequence[int], at: np.ndarray, pad: np.ndarray) -> None:
        self.tokens, self.at, self.pad = list(tokens), at, pad

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        import numpy as np

        rows = ids.shape[1] - self.pad == self.at
        if rows.any():
            scores[rows] = -np.inf
            scores[np.ix_(rows, _in_vocab(self.tokens, scores))] = 0
        return scores


class _SuppressTokens:
    """SuppressTokensLogitsProcessor, and SuppressTokensAtBeginLogitsProcessor when ``at`` gives the row
    length (without padding) where it applies."""

    def __init__(self, tokens: Sequence[int], at: np.ndarray | None = None, pad: np.ndarray | None = None) -> None:
        self.tokens, self.at, self.pad = list(tokens), at, pad

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        import numpy as np

        rows = slice(None) if self.at is None or self.pad is None else ids.shape[1] - self.pad == self.at
        scores[np.ix_(np.arange(len(scores))[rows], _in_vocab(self.tokens, scores))] = -np.inf
        return scores


class _Temperature:
    """TemperatureLogitsWarper."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return scores / self.temperature


class _TopK:
    """TopKLogitsWarper: scores below the k-th largest of the row removed (ties kept)."""

    def __init__(self, top_k: int, min_tokens_to_keep: int) -> None:
        self.top_k = max(top_k, min_tokens_to_keep)

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        import numpy as np

        k = min(self.top_k, scores.shape[-1])
        kth = np.partition(scores, scores.shape[-1] - k, axis=-1)[:, scores.shape[-1] - k, None]
        return np.where(scores < kth, -np.inf, scores).astype(scores.dtype, copy=False)


def _softmax_sorted_cumsum(sorted_scores: np.ndarray) -> np.ndarray:
    import numpy as np

    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(sorted_scores - sorted_scores.max(axis=-1, keepdims=True))
    return np.cumsum(e / e.sum(axis=-1, keepdims=True), axis=-1)


def _unsort(mask: np.ndarray, order: np.ndarray) -> np.ndarray:
    import numpy as np

    out = np.empty_like(mask)
    np.put_along_axis(out, order, mask, axis=-1)
    return out


class _TopP:
    """TopPLogitsWarper: the smallest set of likeliest tokens whose probabilities add up to top_p is kept."""

    def __init__(self, top_p: float, min_tokens_to_keep: int) -> None:
        self.top_p, self.keep = top_p, min_tokens_to_keep

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        import numpy as np

        order = np.argsort(scores, axis=-1, kind="stable")
        remove = _softmax_sorted_cumsum(np.take_along_axis(scores, order, axis=-1)) <= 1 - self.top_p
        remove[:, -self.keep:] = False
        return np.where(_unsort(remove, order), -np.inf, scores).astype(scores.dtype, copy=False)


class _Typical:
    """TypicalLogitsWarper: tokens kept by how close their information is to the row's entropy, up to a mass."""

    def __init__(self, mass: float, min_tokens_to_keep: int) -> None:
        self.mass, self.keep = mass, min_tokens_to_keep

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        import numpy as np

        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            shifted = scores - scores.max(axis=-1, keepdims=True)
            normalized = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            p = np.exp(normalized)
            entropy = -np.nansum(normalized * p, axis=-1, keepdims=True)
            distance = np.abs(-normalized - entropy)
        order = np.argsort(distance, axis=-1, kind="stable")
        sorted_distance = np.take_along_axis(distance, order, axis=-1)
        cumulative = _softmax_sorted_cumsum(np.take_along_axis(scores, order, axis=-1))
        last = np.minimum((cumulative < self.mass).sum(axis=-1), scores.shape[-1] - 1)
        remove = sorted_distance > np.take_along_axis(sorted_distance, last[:, None], axis=-1)
        remove[:, : self.keep] = False
        return np.where(_unsort(remove, order), -np.inf, scores).astype(scores.dtype, copy=False)


def _logits_processors(config: _GenerationConfig, prompts: _Prompts, rows: np.ndarray) -> list[_Processor]:
    """The processors generate() builds for these options, in _get_logits_processor's order (warpers last,
    when sampling); rows maps each decoding row to its prompt."""
    pad, lengths = prompts.pad[rows], prompts.ids.shape[1] - prompts.pad[rows]
    eos = config.eos_token_id or ()
    processors: list[_Processor] = []
    if config.repetition_penalty != 1.0:
        processors.append(_RepetitionPenalty(config.repetition_penalty, pad))
    if config.no_repeat_ngram_size > 0:
        processors.append(_NoRepeatNGram(config.no_repeat_ngram_size))
    if config.bad_words_ids is not None:
        processors.append(_BadWords(config.bad_words_ids, eos))
    if eos and (prompts.min_lengths[rows] > lengths).any():
        processors.append(_MinLength(prompts.min_lengths[rows], eos, pad))
    if config.forced_bos_token_id is not None:
        processors.append(_ForcedTokens([config.forced_bos_token_id], lengths * 0 + 1, pad))
    if config.forced_eos_token_id is not None:
        processors.append(_ForcedTokens(config.forced_eos_token_id, prompts.max_lengths[rows] - 1, pad))
    if config.suppress_tokens is not None:
        processors.append(_SuppressTokens(config.suppress_tokens))
    if config.begin_suppress_tokens is not None:
        # the first new token, or the second when a forced bos follows a prompt of one token
        late = (lengths <= 1) & (config.forced_bos_token_id is not None)
        processors.append(_SuppressTokens(config.begin_suppress_tokens, lengths + late, pad))
    if config.do_sample:
        # beams keep at least one token that is not eos, to go on with
        keep = len(eos) + 1 if config.num_beams > 1 else 1
        if config.temperature != 1.0:
            processors.append(_Temperature(config.temperature))
        if config.top_k != 0:
            processors.append(_TopK(config.top_k, keep))
        if config.top_p < 1.0:
            processors.append(_TopP(config.top_p, keep))
        if config.typical_p < 1.0:
            processors.append(_Typical(config.typical_p, keep))
    return processors


_BYTE_LEVEL_TABLE: dict[str, int] = {}


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (bytes_to_unicode) reversed: the character standing for each byte."""
    if not _BYTE_LEVEL_TABLE:
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
        extra = [b for b in range(256) if b not in printable]
        table = {chr(b): b for b in printable}
        table.update({chr(256 + i): b for i, b in enumerate(extra)})
        _BYTE_LEVEL_TABLE.update(table)
    return _BYTE_LEVEL_TABLE


class _TokenText:
    """The text each token stands for, as StopStringCriteria.clean_tokenizer_vocab finds it: bytes for
    byte-level and byte-fallback vocabularies (so that a character split over tokens matches), else the
    token decoded after a static prefix (which keeps its leading space). Found once per token and kept."""

    _PREFIX = "abcdef"

    def __init__(self, tokenizer: TextTokenizer) -> None:
        decoder = tokenizer.backend.decoder
        state = decoder.__getstate__() if decoder is not None else b"{}"
        kinds = set(re.findall(r'"type":\s*"(\w+)"', state.decode("utf-8") if isinstance(state, bytes) else str(state)))
        if type(decoder).__name__ == "ByteLevel":
            self.mode: str | None = "byte_level"
        else:
            self.mode = "byte_fallback" if "ByteFallback" in kinds else "byte_level" if "ByteLevel" in kinds else None
        self.tokenizer = tokenizer
        prefix_ids = tokenizer.encode([self._PREFIX], add_special_tokens=False)[0].ids
        self.base = [tokenizer.backend.id_to_token(i) for i in prefix_ids]
        self.texts: dict[int, str | bytes] = {}

    def __call__(self, token_id: int) -> str | bytes:
        text = self.texts.get(token_id)
        if text is None:
            token = self.tokenizer.backend.id_to_token(token_id) or ""
            table = _byte_level_decoder()
            if self.mode == "byte_level" and all(c in table for c in token):
                text = bytes(table[c] for c in token)
            elif self.mode == "byte_fallback" and re.fullmatch(r"<0x[0-9a-fA-F]{2}>", token):
                text = bytes([int(token[3:5], 16)])
            else:
                joined = self.tokenizer.tokens_to_string([*self.base, token])
                text = joined[joined.index(self._PREFIX) + len(self._PREFIX):] if self._PREFIX in joined else token
                if self.mode is not None:
                    text = text.encode("utf-8")
            self.texts[token_id] = text
        return text


class _StopStrings:
    """StopStringCriteria: a row stops when one of the strings ends inside its last token (matched on the
    text of its last tokens, as many as the longest string has characters)."""

    def __init__(self, strings: Sequence[str], token_text: _TokenText) -> None:
        self.token_text = token_text
        self.targets: list[Any] = [s.encode("utf-8") for s in strings] if token_text.mode else list(strings)
        self.window = max(len(t) for t in self.targets)

    def __call__(self, tokens: np.ndarray) -> bool:
        pieces = [self.token_text(int(t)) for t in tokens[-self.window:]]
        if not pieces:
            return False
        text: Any = b"".join(p for p in pieces if isinstance(p, bytes)) if self.token_text.mode else "".join(
            p for p in pieces if isinstance(p, str))
        last = len(text) - len(pieces[-1])
        return any(text.find(t, max(0, last - len(t) + 1)) >= 0 for t in self.targets)


class _Stopping:
    """The stopping criteria generate() builds: max length, eos token, stop strings; per row."""

    def __init__(self, max_lengths: np.ndarray, pad: np.ndarray, eos: Sequence[int], stop: _StopStrings | None) -> None:
        import numpy as np

        self.max_lengths, self.pad, self.eos, self.stop = max_lengths, pad, np.array(eos, dtype=np.int64), stop

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        import numpy as np

        done: np.ndarray = ids.shape[1] - self.pad >= self.max_lengths
        if len(self.eos):
            done |= (ids[:, -1:] == self.eos).any(axis=-1)
        if self.stop is not None:
            for row in np.flatnonzero(~done):
                done[row] = self.stop(ids[row, self.pad[row]:])
        return done


class _Step:
    """What the decoding loop needs from a model. prefill runs the prompts (rows, width) and returns an
    opaque state and the last position's logits (rows, vocab); advance appends one token per row; reorder
    keeps the given rows (repeating or dropping them: beams, several sequences per prompt). An encoder-decoder
    step takes the decoder prompt (start tokens) here, and carries the encoder outputs in its state."""

    def prefill(self, ids: np.ndarray, mask: np.ndarray, use_cache: bool) -> tuple[Any, np.ndarray]:
        raise NotImplementedError

    def advance(self, state: Any, tokens: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reorder(self, state: Any, rows: np.ndarray) -> None:
        raise NotImplementedError


def _log_softmax(x: np.ndarray) -> np.ndarray:
    import numpy as np

    shifted = x - x.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of each row, largest first (ties: lower index first)."""
    import numpy as np

    part = np.argpartition(-values, k - 1, axis=-1)[:, :k] if k < values.shape[-1] else np.broadcast_to(
        np.arange(values.shape[-1]), values.shape)
    picked = np.take_along_axis(values, part, axis=-1)
    order = np.lexsort((part, -picked), axis=-1)
    return np.take_along_axis(part, order, axis=-1)


class _Search:
    """One generation call: iterating runs it step by step, yielding the new token of every row; then
    ``sequences`` holds the new tokens of each returned sequence, num_return_sequences per prompt in prompt
    order, cut as the prompt alone would be (a batch pads finished rows while others go on)."""

    def __init__(self, step: _Step, prompts: _Prompts, config: _GenerationConfig, stop: _StopStrings | None) -> None:
        self.step, self.prompts, self.config, self.stop = step, prompts, config, stop
        self.sequences: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._beam_search() if self.config.num_beams > 1 else self._sample()

    def run(self) -> list[np.ndarray]:
        """Run to the end; the sequences."""
        for _ in self:
            pass
        return self.sequences

    def _sample(self) -> Iterator[np.ndarray]:
        """Greedy search or multinomial sampling (transformers' _sample)."""
        import numpy as np

        config, prompts = self.config, self.prompts
        count = config.num_return_sequences if config.do_sample else 1
        rows = np.repeat(np.arange(len(prompts.ids)), count)
        state, logits = self.step.prefill(prompts.ids, prompts.mask, config.use_cache)
        if count > 1:
            self.step.reorder(state, rows)
            logits = logits[rows]
        pad, width = prompts.pad[rows], prompts.ids.shape[1]
        new_tokens = prompts.max_lengths[rows] - (width - pad)
        ids = np.empty((len(rows), width + int(new_tokens.max())), dtype=np.int64)
        ids[:, :width] = prompts.ids[rows]
        processors = _logits_processors(config, prompts, rows)
        stopping = _Stopping(prompts.max_lengths[rows], pad, config.eos_token_id or (), self.stop)
        rng = np.random.default_rng(config.seed) if config.do_sample else None
        fill = config.pad if config.pad is not None else 0
        unfinished = np.ones(len(rows), dtype=bool)
        generated = np.zeros(len(rows), dtype=np.int64)
        length = width
        while True:
            scores = logits.astype(np.float32, copy=False)
            for processor in processors:
                scores = processor(ids[:, :length], scores)
            tokens = scores.argmax(axis=-1) if rng is None else _draw(scores, rng)
            if config.eos_token_id:
                tokens = np.where(unfinished, tokens, fill)
            ids[:, length] = tokens
            length += 1
            generated[unfinished] += 1
            yield tokens
            unfinished &= ~stopping(ids[:, :length])
            if not unfinished.any():
                break
            logits = self.step.advance(state, tokens)
        group = generated.reshape(-1, count).max(axis=1).repeat(count)
        self.sequences = [ids[row, width: width + group[row]] for row in range(len(rows))]

    def _beam_search(self) -> Iterator[np.ndarray]:
        """Beam search (and beam sampling), as transformers 5's vectorized _beam_search."""
        import numpy as np

        config, prompts, step = self.config, self.prompts, self.step
        batch, beams, width = len(prompts.ids), config.num_beams, prompts.ids.shape[1]
        eos = config.eos_token_id or ()
        keep = max(2, 1 + len(eos)) * beams
        fill = (config.pad or eos[0]) if eos else -1  # generate's `pad_token_id or eos_token_id[0]`
        max_new = prompts.max_lengths - (width - prompts.pad)
        rows = np.repeat(np.arange(batch), beams)
        state, logits = step.prefill(prompts.ids, prompts.mask, config.use_cache)
        step.reorder(state, rows)
        logits = logits[rows]
        processors = _logits_processors(config, prompts, rows)
        candidate_rows = np.repeat(np.arange(batch), keep)
        stopping = _Stopping(prompts.max_lengths[candidate_rows], prompts.pad[candidate_rows], eos, self.stop)
        rng = np.random.default_rng(config.seed) if config.do_sample else None
        running = np.zeros((batch, beams, 0), dtype=np.int64)
        running_scores = np.zeros((batch, beams), dtype=np.float32)
        running_scores[:, 1:] = -1e9
        done = np.full((batch, beams, int(max_new.max())), fill, dtype=np.int64)
        done_lengths = np.zeros((batch, beams), dtype=np.int64)
        done_scores = np.full((batch, beams), -1e9, dtype=np.float32)
        finished = np.zeros((batch, beams), dtype=bool)
        improvable = np.ones((batch, 1), dtype=bool)
        top_beams = np.arange(keep) < beams
        t = 0
        while True:
            flat = np.concatenate([prompts.ids[rows], running.reshape(batch * beams, t)], axis=1)
            log_probs = _log_softmax(logits.astype(np.float32, copy=False))
            for processor in processors:
                log_probs = processor(flat, log_probs)
            vocab = log_probs.shape[-1]
            accumulated = (log_probs.reshape(batch, beams, vocab) + running_scores[:, :, None]).reshape(batch, -1)
            if rng is None:
                chosen = _top(accumulated, keep)
            else:
                chosen = _draw_without_replacement(accumulated, keep, rng)
                chosen = np.take_along_axis(chosen, _top(np.take_along_axis(accumulated, chosen, axis=-1), keep), axis=-1)
            candidate_scores = np.take_along_axis(accumulated, chosen, axis=-1)
            source, tokens = chosen // vocab, chosen % vocab
            candidates = np.concatenate([np.take_along_axis(running, source[:, :, None], axis=1), tokens[:, :, None]], axis=2)
            hits = stopping(np.concatenate([prompts.ids[candidate_rows], candidates.reshape(batch * keep, t + 1)],
                                           axis=1)).reshape(batch, keep)
            # the best candidates that did not stop go on
            open_scores = candidate_scores + hits.astype(np.float32) * np.float32(-1e9)
            best = _top(open_scores, beams)
            running = np.take_along_axis(candidates, best[:, :, None], axis=1)
            running_scores = np.take_along_axis(open_scores, best, axis=-1)
            beam_source = np.take_along_axis(source, best, axis=-1)
            # the best candidates among the top num_beams that stopped may replace finished sequences
            just = hits & top_beams[None, :]
            scores = candidate_scores / ((t + 1) ** config.length_penalty)
            full = finished.all(axis=-1, keepdims=True) & (config.early_stopping is True)
            scores = scores + full.astype(np.float32) * np.float32(-1e9)
            scores = scores + (~improvable).astype(np.float32) * np.float32(-1e9)
            scores = scores + (~just).astype(np.float32) * np.float32(-1e9)
            grown = np.full((batch, keep, done.shape[2]), fill, dtype=np.int64)
            grown[:, :, : t + 1] = candidates
            merged_scores = np.concatenate([done_scores, scores], axis=1)
            kept = _top(merged_scores, beams)
            done = np.take_along_axis(np.concatenate([done, grown], axis=1), kept[:, :, None], axis=1)
            done_scores = np.take_along_axis(merged_scores, kept, axis=-1)
            done_lengths = np.take_along_axis(np.concatenate([done_lengths, np.full((batch, keep), t + 1)], axis=1), kept, axis=-1)
            finished = np.take_along_axis(np.concatenate([finished, just], axis=1), kept, axis=-1)
            t += 1
            yield running[:, :, -1].reshape(-1)
            # whether a running beam could still beat the worst finished one
            if config.early_stopping == "never" and config.length_penalty > 0.0:
                hypothetical = (max_new[:, None].astype(np.float64) ** config.length_penalty).astype(np.float32)
            else:
                hypothetical = np.float32(t ** config.length_penalty)
            best_running = running_scores[:, :1] / hypothetical
            worst_done = np.where(finished, done_scores.min(axis=1, keepdims=True), np.float32(-1e9))
            improvable = improvable & (best_running > worst_done).any(axis=-1, keepdims=True)
            if not (improvable.any() and not (finished.all() and config.early_stopping is True) and not hits.all()):
                break
            flat_source = (np.arange(batch)[:, None] * beams + beam_source).reshape(-1)
            step.reorder(state, flat_source)
            logits = step.advance(state, running[:, :, -1].reshape(-1))
        count = config.num_return_sequences
        lengths = done_lengths[:, :count].max(axis=1)
        self.sequences = [done[b, i, : lengths[b]] for b in range(batch) for i in range(count)]


def _draw(scores: np.ndarray, rng: Any) -> np.ndarray:
    """One token per row drawn from softmax(scores) (torch.multinomial's distribution, numpy's generator)."""
    import numpy as np

    with np.errstate(invalid="ignore", over="ignore"):
        weights = np.exp(scores.astype(np.float64) - scores.max(axis=-1, keepdims=True))
    cumulative = np.cumsum(weights, axis=-1)
    total = cumulative[:, -1]
    if not np.all(np.isfinite(total) & (total > 0)):
        raise InvalidInputError("every token was filtered out of a sampling step; loosen top_k, top_p, typical_p or the banned tokens")
    drawn: np.ndarray = (cumulative <= (rng.random(len(scores)) * total)[:, None]).sum(axis=-1)
    return drawn


def _draw_without_replacement(scores: np.ndarray, k: int, rng: Any) -> np.ndarray:
    """k indices per row drawn without replacement from softmax(scores), as torch.multinomial draws them:
    the Gumbel top-k trick gives the same distribution."""
    import numpy as np

    with np.errstate(divide="ignore"):
        keys = _log_softmax(scores.astype(np.float64)) - np.log(-np.log(rng.random(scores.shape)))
    return _top(keys, k)


_ORT_FLOAT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}
# past key value input -> present output; Optimum and onnxruntime-genai name them past_key_values.N.key/value
# (present.N.key/value), onnxruntime's GPT-2 export stacks key and value as past_N (present_N)
_PAST_NAMES = ((re.compile(r"past_key_values\.(\d+)\.(key|value)"), "present.{}.{}"), (re.compile(r"past_(\d+)"), "present_{}"))
_DECODER_INPUTS = ("input_ids", "attention_mask", "position_ids", "use_cache_branch")


class _Binding:
    """One call's onnxruntime I/O binding: outputs stay in onnxruntime's memory, to be fed back as inputs. It is
    driven through onnxruntime's C binding object (IOBinding._iobinding, there since onnxruntime 1.3): the Python
    wrapper builds an object per output and a device per bind, ~10 us a value, which costs a model with 24 past
    tensors half a millisecond a token."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.binding = session.io_binding()
        self.raw = self.binding._iobinding
        self.cpu = _onnxruntime().OrtDevice.make("cpu", 0)._get_c_device()

    def run(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> list[Any]:
        """Run on numpy arrays (not copied: they must live until the run ends) and onnxruntime values; the
        outputs as onnxruntime values (``.numpy()`` views them)."""
        import numpy as np

        for name, value in inputs.items():
            if isinstance(value, np.ndarray):
                self.raw.bind_input(name, value)
            else:
                self.raw.bind_ortvalue_input(name, value)
        for name in outputs:  # every run: a bound output keeps the shape of the last run's
            self.raw.bind_output(name, self.cpu)
        try:
            self.session.run_with_iobinding(self.binding)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types derive from Exception only
            raise MetadataValidationError(
                f"onnxruntime cannot run the model on this input: {exc}; the embedded tokenizer and the graph may "
                "disagree (python -m authoring validate --check-graph)"
            ) from None
        values = self.raw.get_outputs()
        return [values[i] for i in range(len(values))]


class _DecoderState:
    """One call's rows in a decoder-only graph: the attention mask, the position ids (all of them without a
    cache, else the next), the tokens so far (without a cache), the past key values (onnxruntime values kept
    in its memory between steps, or arrays after a reorder) and the I/O binding."""

    def __init__(self, binding: _Binding, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: bool) -> None:
        self.binding, self.ids, self.mask, self.positions, self.cache = binding, ids, mask, positions, cache
        self.past: list[Any] | None = None


class _DecoderOnly(_Step):
    """A decoder-only graph as a step of the decoding loop, its feeds resolved once from the session's input
    and output names, shapes and dtypes: no past (the whole sequence each step), Optimum's
    past_key_values.N.key/value and present.N.*, the legacy merged decoder (use_cache_branch), onnxruntime's
    GPT-2 with stacked past_N [2, batch, heads, sequence, head_dim] and int32 inputs; position_ids when the
    graph takes them. An empty past at the first step has the graph's own dtype and head shape (the config's
    num_key_value_heads and head size where the graph leaves them symbolic)."""

    def __init__(self, session: Any, config: Mapping[str, Any]) -> None:
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        self.session = session
        if "input_ids" not in inputs:
            raise MetadataValidationError(f"text generation needs a graph that takes input_ids; this one takes {sorted(inputs)}")
        self.int_types: dict[str, str] = {}
        for name in ("input_ids", "attention_mask", "position_ids"):
            if name in inputs:
                dtype = _ORT_INT_TYPES.get(inputs[name].type)
                if dtype is None:
                    raise MetadataValidationError(f"graph input {name!r} has type {inputs[name].type}; expected int64 or int32")
                self.int_types[name] = dtype
        self.logits = "logits" if "logits" in outputs else outputs[0]
        shape = next(o.shape for o in session.get_outputs() if o.name == self.logits)
        if shape and len(shape) != 3:
            raise MetadataValidationError(
                f"text generation needs logits for every position, (batch, sequence, vocabulary); output {self.logits!r} "
                f"has shape {shape}; was the graph exported for another task?"
            )
        self.branch = "use_cache_branch" in inputs
        self.past: list[tuple[str, str]] = []
        for name in inputs:
            present = next((fmt.format(*m.groups()) for pattern, fmt in _PAST_NAMES if (m := pattern.fullmatch(name))), None)
            if present is None:
                continue
            if present not in outputs:
                raise MetadataValidationError(f"graph input {name!r} has no matching output {present!r} to carry the past on")
            self.past.append((name, present))
        unknown = sorted(set(inputs) - set(_DECODER_INPUTS) - {p for p, _ in self.past})
        if unknown:
            raise MetadataValidationError(
                f"text generation does not know how to feed graph inputs {unknown}; it feeds {', '.join(_DECODER_INPUTS)} "
                "and past key values (past_key_values.N.key/value or past_N)"
            )
        self.past_dtype = "float32"
        self.past_shape: tuple[int, ...] = ()
        if self.past:
            first = inputs[self.past[0][0]]
            dtype = _ORT_FLOAT_TYPES.get(first.type)
            if dtype is None or len(first.shape) not in (4, 5):
                raise MetadataValidationError(
                    f"past input {first.name!r} is {first.type} {first.shape}; expected float32 or float16 "
                    "[batch, heads, sequence, head_dim] or [2, batch, heads, sequence, head_dim]"
                )
            self.past_dtype = dtype
            # the shape of an empty past with batch 1 and sequence 0
            dims = first.shape[1:] if len(first.shape) == 5 else first.shape
            heads, head_dim = (d if isinstance(d, int) else None for d in (dims[1], dims[3]))
            heads = heads or _config_int(config, "num_key_value_heads", "num_attention_heads", "n_head")
            head_dim = head_dim or _config_int(config, "head_dim") or _head_size(config)
            if not heads or not head_dim:
                raise MetadataValidationError(
                    f"past input {first.name!r} has shape {first.shape} and the config gives no num_key_value_heads "
                    "and head size to build an empty past from; re-embed with the model's config.json"
                )
            self.past_shape = (2, 1, heads, 0, head_dim) if len(first.shape) == 5 else (1, heads, 0, head_dim)
        self.batch_axis = len(self.past_shape) - 4
        self.outputs = [self.logits, *(present for _, present in self.past)]

    def prefill(self, ids: np.ndarray, mask: np.ndarray, use_cache: bool) -> tuple[_DecoderState, np.ndarray]:
        import numpy as np

        positions = np.where(mask == 0, 0, mask.cumsum(axis=-1) - 1)
        state = _DecoderState(_Binding(self.session), ids, mask, positions, use_cache and bool(self.past))
        logits = self._run(state, ids, positions)
        if state.cache:
            state.positions = positions[:, -1:] + 1
        return state, logits

    def advance(self, state: _DecoderState, tokens: np.ndarray) -> np.ndarray:
        import numpy as np

        state.mask = np.concatenate([state.mask, np.ones((len(tokens), 1), dtype=state.mask.dtype)], axis=1)
        if state.cache:
            logits = self._run(state, tokens[:, None], state.positions)
            state.positions = state.positions + 1
            return logits
        state.ids = np.concatenate([state.ids, tokens[:, None]], axis=1)
        state.positions = np.concatenate([state.positions, state.positions[:, -1:] + 1], axis=1)
        return self._run(state, state.ids, state.positions)

    def reorder(self, state: _DecoderState, rows: np.ndarray) -> None:
        import numpy as np

        state.ids, state.mask, state.positions = state.ids[rows], state.mask[rows], state.positions[rows]
        if state.past is not None:  # onnxruntime values after a run, arrays after a reorder
            state.past = [(v if isinstance(v, np.ndarray) else v.numpy()).take(rows, axis=self.batch_axis) for v in state.past]

    def _run(self, state: _DecoderState, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Run the graph on the new tokens (all of them without a cache); the last position's logits, float32."""
        import numpy as np

        feed: dict[str, Any] = {"input_ids": np.ascontiguousarray(ids, dtype=self.int_types["input_ids"])}
        if "attention_mask" in self.int_types:
            feed["attention_mask"] = np.ascontiguousarray(state.mask, dtype=self.int_types["attention_mask"])
        if "position_ids" in self.int_types:
            feed["position_ids"] = np.ascontiguousarray(positions, dtype=self.int_types["position_ids"])
        if self.branch:
            feed["use_cache_branch"] = np.array([state.past is not None])
        past = state.past
        if past is None and self.past:
            shape = list(self.past_shape)
            shape[self.batch_axis] = len(ids)
            past = [np.zeros(shape, dtype=self.past_dtype)] * len(self.past)
        feed.update(zip((name for name, _ in self.past), past or ()))
        values = state.binding.run(feed, self.outputs if state.cache else self.outputs[:1])
        if state.cache:
            state.past = values[1:]
        logits: np.ndarray = values[0].numpy()
        if logits.ndim != 3:
            raise MetadataValidationError(f"the graph's logits have shape {logits.shape}; text generation needs (batch, sequence, vocabulary)")
        # a view of onnxruntime's buffer (each run allocates a new one), the loop's to change; float32
        last: np.ndarray = logits[:, -1]
        return last if last.dtype == np.float32 else last.astype(np.float32)


def _config_int(config: Mapping[str, Any], *names: str) -> int | None:
    """The first of the config's fields that is a positive integer."""
    return next((v for v in (config.get(n) for n in names) if isinstance(v, int) and not isinstance(v, bool) and v > 0), None)


def _head_size(config: Mapping[str, Any]) -> int | None:
    hidden = _config_int(config, "hidden_size", "n_embd", "d_model")
    heads = _config_int(config, "num_attention_heads", "n_head")
    return hidden // heads if hidden and heads else None


def _is_cjk(code: int) -> bool:
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF or 0x2A700 <= code <= 0x2B73F
            or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF or 0xF900 <= code <= 0xFAFF
            or 0x2F800 <= code <= 0x2FA1F)


class _TextStreamer:
    """transformers' TextStreamer holdback: new tokens are decoded with those before them, and text is let out
    once stable: at a newline (keeping the last token as context), at a CJK character, when it holds only
    letters, marks, digits and spaces, else up to its last space (so an incomplete character, U+FFFD, waits)."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.tokens: list[int] = []
        self.printed = 0

    def put(self, tokens: Iterable[int]) -> str:
        """The text the new tokens make printable."""
        import unicodedata

        self.tokens.extend(int(t) for t in tokens)
        text = self.decode(self.tokens)
        if text.endswith("\n"):
            out = text[self.printed:]
            self.tokens = self.tokens[-1:]
            self.printed = len(self.decode(self.tokens))
            return out
        if text and _is_cjk(ord(text[-1])) or all(
                c.isspace() or unicodedata.category(c)[0] in "LMN" for c in text[self.printed:]):
            out = text[self.printed:]
        else:
            out = text[self.printed: text.rfind(" ") + 1]
        self.printed += len(out)
        return out

    def end(self) -> str:
        """What is left when generation ends."""
        out = self.decode(self.tokens)[self.printed:] if self.tokens else ""
        self.tokens, self.printed = [], 0
        return out


########################################################################################################
# Tasks
########################################################################################################

_ORT_INT_TYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32"}
_UNSET: Any = object()


class _Context:
    """What a task needs, built once per Runtime: session, configs, tokenizer, input dtypes."""

    def __init__(self, session: Any, metadata: Mapping[str, Any], tokenizer: Any, batch_size: int) -> None:
        self.session = session
        self.metadata = metadata
        self.config: Mapping[str, Any] = metadata.get(KEY_MODEL_CONFIG) or {}
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.input_types = {i.name: i.type for i in session.get_inputs()}

    def text_tokenizer(self, task: str) -> TextTokenizer:
        if isinstance(self.tokenizer, TextTokenizer):
            return self.tokenizer
        if isinstance(self.tokenizer, TokenizerProxy):
            self.tokenizer()  # raises the --include-vocab error
        raise ProcessorReconstructionError(
            f"{task} needs a tokenizer but none is embedded; re-embed with --include-vocab"
        )

    def text_input_dtypes(self) -> dict[str, str]:
        """dtype of each graph input a tokenizer fills; other graph inputs are an error."""
        known = ("input_ids", "attention_mask", "token_type_ids")
        unknown = [n for n in self.input_names if n not in known]
        if unknown or "input_ids" not in self.input_names:
            raise MetadataValidationError(
                f"graph inputs {self.input_names} do not match a text model (expected input_ids, optional "
                "attention_mask and token_type_ids); was the model exported with past key values?"
            )
        dtypes = {}
        for name in self.input_names:
            dtype = _ORT_INT_TYPES.get(self.input_types[name])
            if dtype is None:
                raise MetadataValidationError(f"graph input {name!r} has type {self.input_types[name]}; expected int64 or int32")
            dtypes[name] = dtype
        return dtypes

    def output_name(self, preferred: str) -> str:
        return preferred if preferred in self.output_names else self.output_names[0]

    def labels(self, width: int) -> list[str]:
        id2label = self.config.get("id2label") or {}
        return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(width)]


def _softmax(x: np.ndarray) -> np.ndarray:
    import numpy as np

    shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    import numpy as np

    return 1.0 / (1.0 + np.exp(-x))


_FUNCTIONS: dict[str, Callable[[Any], Any]] = {"softmax": _softmax, "sigmoid": _sigmoid, "none": lambda x: x}


class _Task:
    """A pipeline task: preprocess a batch, run the session, postprocess one item at a time."""

    name = ""
    arguments: tuple[str, ...] = ()
    positional = False  # whether options may follow the inputs positionally
    keyword_inputs = False  # whether the inputs may come by name alone (question=..., context=...)

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx

    def check_arguments(self, kwargs: Mapping[str, Any]) -> None:
        unknown = sorted(set(kwargs) - set(self.arguments))
        if unknown:
            raise InvalidInputError(
                f"{self.name} does not take {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(self.arguments) or 'no arguments'}"
            )

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class _TextTask(_Task):
    """A task on tokenized text: runs lists in length-sorted buckets of batch_size."""

    output = "logits"
    per_token = False  # whether the outputs have a sequence axis, cut back to each text's own tokens
    output_rank = 3  # the rank such an output has: (batch, sequence, features)

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.tokenizer = ctx.text_tokenizer(self.name)
        self.dtypes = ctx.text_input_dtypes()
        self.output = ctx.output_name(self.output)
        shape = next(o.shape for o in ctx.session.get_outputs() if o.name == self.output)
        if self.per_token and shape and len(shape) != self.output_rank:
            axes = "(batch, sequence, features)" if self.output_rank == 3 else "(batch, sequence)"
            raise MetadataValidationError(
                f"{self.name} needs an output with a token axis {axes}; output {self.output!r} "
                f"has shape {shape}; was the graph exported for another task?"
            )

    def run(self, encodings: Sequence[Any], outputs: Sequence[str]) -> list[list[np.ndarray]]:
        """The rows of the named outputs for each encoding, in caller order, run in length-sorted buckets.

        A per_token task's rows are cut back to the encoding's own tokens.
        """
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        rows: list[Any] = [None] * len(encodings)
        for start in range(0, len(order), self.ctx.batch_size):
            chunk = order[start: start + self.ctx.batch_size]
            # Padding goes on the right whatever the tokenizer says: with absolute positions, left padding
            # would shift every token of the shorter texts and make results depend on the batch, while
            # transformers' pipelines run one text at a time, unpadded.
            feed = self.tokenizer.pad([encodings[i] for i in chunk], self.dtypes, side="right")
            try:
                results = self.ctx.session.run(list(outputs), feed)
            except Exception as exc:  # onnxruntime's own exception types, e.g. a token id past the embedding table
                raise MetadataValidationError(
                    f"onnxruntime cannot run the model on this input: {exc}; the embedded tokenizer and the graph "
                    "may disagree (python -m authoring validate --check-graph)"
                ) from None
            for position, i in enumerate(chunk):
                n = len(encodings[i].ids)
                row = [out[position] for out in results]
                if self.per_token:
                    row = [r[:n] for r in row]
                rows[i] = row
        return rows

    def forward(self, encodings: Sequence[Any]) -> list[np.ndarray]:
        """The row of the task's output for each encoding, in caller order (see run)."""
        return [row[0] for row in self.run(encodings, [self.output])]

    def texts(self, inputs: Any) -> tuple[list[str], bool]:
        """The inputs as a list of strings, and whether a single string was given."""
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            bad = texts if not isinstance(texts, list) else next(t for t in texts if not isinstance(t, str))
            raise InvalidInputError(f"{self.name} takes a string or a list of strings; got {type(bad).__name__}")
        return texts, single


class _TextClassification(_TextTask):
    """text-classification (sentiment-analysis), as transformers.TextClassificationPipeline."""

    name = "text-classification"
    arguments = ("top_k", "function_to_apply")

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.default_function = self._default_function(ctx.config)

    @staticmethod
    def _default_function(config: Mapping[str, Any]) -> str:
        # Same order of rules as TextClassificationPipeline.postprocess.
        problem_type = config.get("problem_type")
        id2label = config.get("id2label")
        num_labels = len(id2label) if isinstance(id2label, dict) else int(config.get("num_labels") or 2)
        if problem_type == "regression":
            return "none"
        if problem_type == "multi_label_classification" or num_labels == 1:
            return "sigmoid"
        if problem_type == "single_label_classification" or num_labels > 1:
            return "softmax"
        function = config.get("function_to_apply")
        return function.lower() if isinstance(function, str) and function.lower() in _FUNCTIONS else "none"

    @staticmethod
    def _item(item: Any) -> str | tuple[str, str]:
        if isinstance(item, str):
            return item
        if isinstance(item, dict) and set(item) <= {"text", "text_pair"} and "text" in item:
            text, pair = item["text"], item.get("text_pair")
            if isinstance(text, str) and (pair is None or isinstance(pair, str)):
                return text if pair is None else (text, pair)
        raise InvalidInputError(
            f"text-classification takes a string, a {{'text': ..., 'text_pair': ...}} dict, or a list of "
            f"those; got {type(item).__name__}"
        )

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        self.check_arguments(kwargs)
        top_k = kwargs.get("top_k", _UNSET)
        legacy = top_k is _UNSET
        if not legacy and top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise InvalidInputError(f"top_k must be a positive integer or None, got {top_k!r}")
        function = kwargs.get("function_to_apply") or self.default_function
        if not isinstance(function, str) or function.lower() not in _FUNCTIONS:
            raise InvalidInputError(f"function_to_apply must be one of softmax, sigmoid, none; got {function!r}")
        apply = _FUNCTIONS[function.lower()]
        single = not isinstance(inputs, list)
        items = [self._item(x) for x in ([inputs] if single else inputs)]
        if not items:
            return []
        import numpy as np

        results = []
        logits = np.stack(self.forward(self.tokenizer.encode(items))).astype(np.float32)
        labels = self.ctx.labels(logits.shape[-1])
        for scores in apply(logits):
            if legacy:
                best = int(scores.argmax())
                results.append({"label": labels[best], "score": float(scores[best])})
                continue
            ranked = sorted(
                ({"label": labels[i], "score": float(s)} for i, s in enumerate(scores)),
                key=lambda d: d["score"], reverse=True,
            )
            results.append(ranked if top_k is None else ranked[:top_k])
        if single:
            # transformers wraps the best label of a single string in a list, but not of a single pair.
            return results if legacy and isinstance(inputs, str) else results[0]
        return results


class _FillMask(_TextTask):
    """fill-mask, as transformers.FillMaskPipeline: the likeliest tokens for each mask token of a text."""

    name = "fill-mask"
    arguments = ("top_k", "targets")
    per_token = True

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.mask_token = _token_content(self.tokenizer.config.get("mask_token"))
        mask_id = self.tokenizer.token_id("mask_token")
        if mask_id is None:
            found = "has no mask_token" if self.mask_token is None else f"names {self.mask_token!r}, not in the vocabulary"
            raise MetadataValidationError(
                f"fill-mask needs a mask token but the embedded tokenizer config {found}; "
                "re-embed from a tokenizer that defines one"
            )
        self.mask_id = mask_id
        self.pad_id = self.tokenizer.token_id("pad_token")
        width = next(o.shape for o in ctx.session.get_outputs() if o.name == self.output)[-1]
        vocab = self.tokenizer.backend.get_vocab_size(with_added_tokens=True)
        if isinstance(width, int) and width < vocab:
            raise MetadataValidationError(
                f"fill-mask output {self.output!r} scores {width} tokens but the embedded tokenizer has {vocab}; "
                "was the graph exported for another task?"
            )

    def target_ids(self, targets: Any) -> np.ndarray:
        """Token ids of targets as FillMaskPipeline.get_target_ids finds them: a vocabulary entry, else the first token."""
        import numpy as np

        targets = [targets] if isinstance(targets, str) else targets
        if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
            raise InvalidInputError(f"targets must be a string or a list of strings, got {targets!r}")
        backend = self.tokenizer.backend
        ids: set[int] = set()
        for target in targets:
            token_id = backend.token_to_id(target)
            if token_id is None:
                pieces = self.tokenizer.encode([target], add_special_tokens=False)[0].ids
                if not pieces:
                    warnings.warn(f"target {target!r} is not in the vocabulary and has no tokens; ignoring it", stacklevel=3)
                    continue
                token_id = pieces[0]
                warnings.warn(
                    f"target {target!r} is not in the vocabulary; using its first token {backend.id_to_token(token_id)!r}",
                    stacklevel=3,
                )
            ids.add(token_id)
        if not ids:
            raise InvalidInputError(f"targets {targets!r} give no token to score; pass words of the vocabulary")
        return np.array(sorted(ids))

    def postprocess(
        self, ids: Sequence[int], positions: Sequence[int], logits: np.ndarray, top_k: int, target_ids: np.ndarray | None
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """The top_k proposals for each mask of one text; a single mask's list is not nested."""
        import numpy as np

        probs = _softmax(logits[list(positions)].astype(np.float32))
        if target_ids is not None:
            probs = probs[:, target_ids]
        # Like transformers: other masks stay visible in a sequence, so special tokens are skipped only
        # when there is a single mask; padding tokens are dropped either way.
        single = len(positions) == 1
        per_mask = []
        for position, row in zip(positions, probs):
            proposals = []
            for best in np.argsort(-row, kind="stable")[:top_k]:
                token = int(best if target_ids is None else target_ids[best])
                filled = list(ids)
                filled[position] = token
                proposals.append({
                    "score": float(row[best]),
                    "token": token,
                    "token_str": self.tokenizer.decode([token]),
                    "sequence": self.tokenizer.decode([t for t in filled if t != self.pad_id], skip_special_tokens=single),
                })
            per_mask.append(proposals)
        return per_mask[0] if single else per_mask

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        self.check_arguments(kwargs)
        top_k = kwargs.get("top_k")
        if top_k is None:
            top_k = 5
        elif not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise InvalidInputError(f"top_k must be a positive integer, got {top_k!r}")
        targets = kwargs.get("targets")
        target_ids = None if targets is None else self.target_ids(targets)
        texts, _ = self.texts(inputs)
        encodings = self.tokenizer.encode(texts)
        masks = []
        for text, encoding in zip(texts, encodings):
            masks.append([i for i, token_id in enumerate(encoding.ids) if token_id == self.mask_id])
            if not masks[-1]:
                cut = f" within its first {self.tokenizer.max_length} tokens" if encoding.overflowing else ""
                shown = text if len(text) <= 80 else text[:77] + "..."
                raise InvalidInputError(f"fill-mask input has no mask token {self.mask_token}{cut}: {shown!r}")
        results = [
            self.postprocess(encoding.ids, positions, logits, top_k, target_ids)
            for encoding, positions, logits in zip(encodings, masks, self.forward(encodings))
        ]
        # transformers unwraps a one-text list too.
        return results[0] if len(results) == 1 else results


_AGGREGATIONS = ("none", "simple", "first", "average", "max")


def _bio_tag(entity: str) -> tuple[str, str]:
    """("B" or "I", tag) of a B-/I- label; other labels continue ("I") as transformers reads them."""
    if entity.startswith("B-"):
        return "B", entity[2:]
    if entity.startswith("I-"):
        return "I", entity[2:]
    return "I", entity


def _merge_overlapping(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entities of overlapping stride windows: of two that overlap keep the longer, then the likelier."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda x: x["start"])
    merged = []
    previous = entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or length == previous_length and entity["score"] > previous["score"]:
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged


class _TokenClassification(_TextTask):
    """token-classification (ner), as transformers.TokenClassificationPipeline: one label per token, or
    entities grouped by an aggregation strategy, with character offsets into the text."""

    name = "token-classification"
    arguments = ("aggregation_strategy", "ignore_labels", "stride", "is_split_into_words", "delimiter")
    per_token = True

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.unk_id = self.tokenizer.token_id("unk_token")
        # Subwords are told apart by token length only where the model marks continuations (WordPiece's
        # "##"); byte-level BPE and SentencePiece fall back to "no space before", as transformers does.
        self.word_aware = bool(getattr(self.tokenizer.backend.model, "continuing_subword_prefix", None))

    def _options(self, kwargs: Mapping[str, Any]) -> tuple[str, set[str], int | None, str | None]:
        strategy = kwargs.get("aggregation_strategy")
        strategy = "none" if strategy is None else str(getattr(strategy, "value", strategy)).lower()
        if strategy not in _AGGREGATIONS:
            raise InvalidInputError(f"aggregation_strategy must be one of {', '.join(_AGGREGATIONS)}; got {kwargs['aggregation_strategy']!r}")
        ignore = kwargs.get("ignore_labels")
        ignore = ["O"] if ignore is None else ignore
        if isinstance(ignore, str) or not all(isinstance(label, str) for label in ignore):
            raise InvalidInputError(f"ignore_labels must be a list of labels, e.g. ['O']; got {ignore!r}")
        stride = kwargs.get("stride")
        if stride is not None:
            if not isinstance(stride, int) or isinstance(stride, bool) or stride < 0:
                raise InvalidInputError(f"stride must be a non-negative integer, got {stride!r}")
            if stride >= self.tokenizer.max_length:
                raise InvalidInputError(
                    f"stride ({stride}) must be less than the model's maximum length ({self.tokenizer.max_length}), "
                    "less the special tokens"
                )
            if strategy == "none":
                raise InvalidInputError(
                    "stride runs overlapping windows over the whole text, which needs an aggregation_strategy "
                    "to merge them: pass aggregation_strategy='simple' (or first, average, max)"
                )
        delimiter = None
        if kwargs.get("is_split_into_words"):
            delimiter = " " if kwargs.get("delimiter") is None else kwargs["delimiter"]
            if not isinstance(delimiter, str):
                raise InvalidInputError(f"delimiter must be a string, got {delimiter!r}")
        return strategy, set(ignore), stride, delimiter

    def _sentences(self, inputs: Any, split: bool) -> tuple[list[Any], bool]:
        """Texts (or lists of words when split), and whether one was given alone."""
        if not split:
            return self.texts(inputs)
        if isinstance(inputs, list) and inputs and all(isinstance(w, str) for w in inputs):
            # transformers runs a single list of words as a batch of one and returns it nested
            return [inputs], False
        if isinstance(inputs, list) and all(isinstance(s, list) and all(isinstance(w, str) for w in s) for s in inputs):
            return inputs, False
        raise InvalidInputError("with is_split_into_words=True the input is a list of words, or a list of such lists")

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        import numpy as np

        self.check_arguments(kwargs)
        strategy, ignore, stride, delimiter = self._options(kwargs)
        split = delimiter is not None
        sentences, single = self._sentences(inputs, split)
        tokenizer = self.tokenizer if stride is None else self.tokenizer.with_truncation("longest_first", stride=stride)
        encodings = tokenizer.encode(sentences, is_pretokenized=split)
        # without a stride transformers keeps the first window only (the text is truncated)
        windows = [[e, *e.overflowing] if stride is not None else [e] for e in encodings]
        rows = iter(self.run([w for group in windows for w in group], [self.output]))
        if strategy in ("first", "average", "max") and not self.word_aware:
            warnings.warn("Tokenizer does not support real words, using fallback heuristic", UserWarning, stacklevel=3)
        results = []
        for sentence, group in zip(sentences, windows):
            word_chars = None
            if split:
                word_chars, position = [], 0
                for word in sentence:
                    word_chars.append(position)
                    position += len(word) + len(delimiter)
                sentence = delimiter.join(sentence)
            entities = []
            for window in group:
                (logits,) = next(rows)
                pre_entities = self._gather(sentence, window, _softmax(logits.astype(np.float32)), word_chars)
                entities += [e for e in self._aggregate(pre_entities, strategy)
                             if e.get("entity") not in ignore and e.get("entity_group") not in ignore]
            results.append(_merge_overlapping(entities) if len(group) > 1 else entities)
        return results[0] if single else results

    def _gather(self, sentence: str, window: Any, scores: np.ndarray, word_chars: list[int] | None) -> list[dict[str, Any]]:
        """Each non-special token with its scores, character span and whether it continues a word."""
        backend = self.tokenizer.backend
        pre_entities = []
        for index, token_id in enumerate(window.ids):
            if window.special_tokens_mask[index]:
                continue
            word = backend.id_to_token(token_id)
            start, end = window.offsets[index]
            if word_chars is not None and window.word_ids[index] is not None:
                start += word_chars[window.word_ids[index]]
                end += word_chars[window.word_ids[index]]
            reference = sentence[start:end]
            if self.word_aware:
                is_subword = len(word) != len(reference)
            else:
                is_subword = start > 0 and " " not in sentence[start - 1: start + 1]
            if token_id == self.unk_id:
                word, is_subword = reference, False
            pre_entities.append({"word": word, "scores": scores[index], "start": start, "end": end,
                                 "index": index, "is_subword": is_subword})
        return pre_entities

    def _aggregate(self, pre_entities: list[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
        labels = self.ctx.labels(len(pre_entities[0]["scores"])) if pre_entities else []
        if strategy in ("none", "simple"):
            entities = []
            for pre in pre_entities:
                best = int(pre["scores"].argmax())
                entities.append({"entity": labels[best], "score": float(pre["scores"][best]), "index": pre["index"],
                                 "word": pre["word"], "start": pre["start"], "end": pre["end"]})
            if strategy == "none":
                return entities
        else:
            groups: list[list[dict[str, Any]]] = []
            for pre in pre_entities:
                if groups and pre["is_subword"]:
                    groups[-1].append(pre)
                else:
                    groups.append([pre])
            entities = [self._aggregate_word(group, strategy, labels) for group in groups]
        return self._group_entities(entities)

    def _aggregate_word(self, tokens: list[dict[str, Any]], strategy: str, labels: list[str]) -> dict[str, Any]:
        """One word from its tokens, labelled by its first token, its most confident token, or the mean."""
        import numpy as np

        if strategy == "first":
            scores = tokens[0]["scores"]
        elif strategy == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        best = int(scores.argmax())
        return {"entity": labels[best], "score": float(scores[best]),
                "word": self.tokenizer.tokens_to_string([t["word"] for t in tokens]),
                "start": tokens[0]["start"], "end": tokens[-1]["end"]}

    def _group_entities(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Adjacent entities of one tag joined, a B- label starting a new one."""
        import numpy as np

        groups: list[list[dict[str, Any]]] = []
        for entity in entities:
            bi, tag = _bio_tag(entity["entity"])
            if groups and tag == _bio_tag(groups[-1][-1]["entity"])[1] and bi != "B":
                groups[-1].append(entity)
            else:
                groups.append([entity])
        return [{
            "entity_group": group[0]["entity"].split("-", 1)[-1],
            "score": float(np.nanmean([e["score"] for e in group])),
            "word": self.tokenizer.tokens_to_string([e["word"] for e in group]),
            "start": group[0]["start"],
            "end": group[-1]["end"],
        } for group in groups]


def _decode_spans(start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int,
                  desired: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top_k (start, end) token spans by start x end probability, end >= start, at most max_answer_len
    tokens; numpy calls as transformers' decode_spans, so that ties fall the same way."""
    import numpy as np

    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if top_k == 1:
        idx_sort = np.array([np.argmax(scores_flat)])
    elif len(scores_flat) < top_k:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, top_k)[0:top_k]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    # transformers tests membership in desired.nonzero() of the (1, n) mask, row indices included
    allowed = desired.nonzero()
    keep = np.isin(starts, allowed) & np.isin(ends, allowed)
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[0, starts, ends]


class _QuestionAnswering(_TextTask):
    """question-answering (extractive), as transformers 4.57's QuestionAnsweringPipeline (transformers 5
    dropped it): answer spans in the context, long contexts read in doc_stride windows."""

    name = "question-answering"
    arguments = ("question", "context", "top_k", "doc_stride", "max_answer_len", "max_seq_len", "max_question_len",
                 "handle_impossible_answer", "align_to_words")
    positional = True
    keyword_inputs = True
    per_token = True
    output_rank = 2  # start and end logits: (batch, sequence)

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        names = ctx.output_names
        if "start_logits" in names and "end_logits" in names:
            self.outputs = ["start_logits", "end_logits"]
        elif len(names) >= 2:
            self.outputs = names[:2]
        else:
            raise MetadataValidationError(
                f"question-answering needs start and end logits but the graph has outputs {names}; "
                "export the model's *ForQuestionAnswering head (outputs start_logits, end_logits)"
            )
        # transformers puts the question where the padding is not: first when padding on the right
        self.question_first = self.tokenizer.padding_side == "right"
        self.cls_id = self.tokenizer.token_id("cls_token")

    _NEEDS_CONTEXT = ("question-answering needs a question and a context: call runtime(question=..., context=...), "
                      "runtime(question, context) or runtime({'question': ..., 'context': ...})")

    def _examples(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[tuple[str, str]], bool]:
        """(question, context) pairs from the call forms transformers accepts, and whether one was given."""
        question, context = kwargs.pop("question", None), kwargs.pop("context", None)
        if args:
            if question is not None or context is not None:
                raise InvalidInputError("pass the question and context either positionally or by name, not both")
            if len(args) == 2 and all(isinstance(a, str) for a in args):
                items: Any = [{"question": args[0], "context": args[1]}]
            elif len(args) == 1:
                items = args[0]
            else:
                items = list(args)
        elif question is None or context is None:
            raise InvalidInputError(self._NEEDS_CONTEXT + ("; the context is missing" if question is not None else ""))
        elif isinstance(question, str) and isinstance(context, str):
            items = [{"question": question, "context": context}]
        elif isinstance(question, list) and isinstance(context, str):
            items = [{"question": q, "context": context} for q in question]
        elif isinstance(question, list) and isinstance(context, list):
            if len(question) != len(context):
                raise InvalidInputError(f"{len(question)} questions but {len(context)} contexts; pass one context per question")
            items = [{"question": q, "context": c} for q, c in zip(question, context)]
        else:
            raise InvalidInputError(self._NEEDS_CONTEXT)
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, (list, tuple)):
            raise InvalidInputError(self._NEEDS_CONTEXT + f"; got a {type(items).__name__}")
        examples = []
        for item in items:
            if not isinstance(item, dict):
                raise InvalidInputError(self._NEEDS_CONTEXT + f"; got a {type(item).__name__}")
            for key in ("question", "context"):
                value = item.get(key)
                if not isinstance(value, str) or not value:
                    found = "missing" if value is None else ("empty" if value == "" else f"a {type(value).__name__}")
                    raise InvalidInputError(f"question-answering {key} is {found}; it must be a non-empty string")
            examples.append((item["question"], item["context"]))
        return examples, len(examples) == 1

    @staticmethod
    def _positive(kwargs: Mapping[str, Any], name: str, default: int) -> int:
        value = kwargs.get(name)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import numpy as np

        examples, single = self._examples(args, kwargs)
        self.check_arguments(kwargs)
        top_k = self._positive(kwargs, "top_k", 1)
        max_answer_len = self._positive(kwargs, "max_answer_len", 15)
        max_seq_len = self._positive(kwargs, "max_seq_len", min(self.tokenizer.max_length, 384))
        if max_seq_len > self.tokenizer.max_length:
            raise InvalidInputError(f"max_seq_len ({max_seq_len}) is longer than the model takes ({self.tokenizer.max_length})")
        doc_stride = kwargs.get("doc_stride")
        doc_stride = min(max_seq_len // 2, 128) if doc_stride is None else doc_stride
        if not isinstance(doc_stride, int) or isinstance(doc_stride, bool) or doc_stride < 0:
            raise InvalidInputError(f"doc_stride must be a non-negative integer, got {doc_stride!r}")
        if doc_stride > max_seq_len:
            raise InvalidInputError(f"doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})")
        handle_impossible = bool(kwargs.get("handle_impossible_answer", False))
        align_to_words = kwargs.get("align_to_words")
        align_to_words = True if align_to_words is None else bool(align_to_words)

        tokenizer = self.tokenizer.with_truncation(
            "only_second" if self.question_first else "only_first", window=max_seq_len, stride=doc_stride
        )
        pairs = [(q, c) if self.question_first else (c, q) for q, c in examples]
        try:
            encodings = tokenizer.encode(pairs)
        except InvalidInputError as exc:
            raise InvalidInputError(
                f"{exc}; a question must leave room for the context in max_seq_len ({max_seq_len}) tokens: "
                "shorten the question or raise max_seq_len"
            ) from None
        windows = [[e, *e.overflowing] for e in encodings]
        rows = iter(self.run([w for group in windows for w in group], self.outputs))
        results = []
        for (_, context), group in zip(examples, windows):
            answers: list[dict[str, Any]] = []
            min_null_score = 1000000.0  # large and positive, as transformers starts it
            for window in group:
                start, end = (np.asarray(r, dtype=np.float32)[None] for r in next(rows))
                min_null_score = self._window_answers(window, start, end, context, answers, min_null_score,
                                                      top_k * 2 + 10 if align_to_words else top_k,
                                                      handle_impossible, max_answer_len, align_to_words)
            if handle_impossible:
                answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
            answers = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
            results.append(answers[0] if len(answers) == 1 else answers)
        return results[0] if single else results

    def _window_answers(self, window: Any, start: np.ndarray, end: np.ndarray, context: str, answers: list[dict[str, Any]],
                        min_null_score: float, top_k: int, handle_impossible: bool, max_answer_len: int,
                        align_to_words: bool) -> float:
        """Add one window's candidate answers to answers (summing the scores of equal answers); returns
        the smallest no-answer score seen so far."""
        import numpy as np

        # p_mask: 1 where no answer may be (question, special tokens) except the [CLS] tokens
        p_mask = [int(s != 1) if self.question_first else 0 for s in window.sequence_ids]
        for i, token_id in enumerate(window.ids):
            if token_id == self.cls_id:
                p_mask[i] = 0
        desired = np.abs(np.array([p_mask]) - 1) & np.array([window.attention_mask])
        masked = desired == 0
        start = np.where(masked, np.float32(-10000.0), start)
        end = np.where(masked, np.float32(-10000.0), end)
        start = np.exp(start - start.max(axis=-1, keepdims=True))
        start = start / start.sum()
        end = np.exp(end - end.max(axis=-1, keepdims=True))
        end = end / end.sum()
        if handle_impossible:
            min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
        start[0, 0] = end[0, 0] = 0.0
        sequence_index = 1 if self.question_first else 0
        for s, e, score in zip(*_decode_spans(start, end, top_k, max_answer_len, desired)):
            first, last = self._span(window, int(s), int(e), sequence_index, align_to_words)
            text = context[first:last]
            same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
            if same is not None:
                same["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": first, "end": last, "answer": text})
        return min_null_score

    @staticmethod
    def _span(window: Any, s: int, e: int, sequence_index: int, align_to_words: bool) -> tuple[int, int]:
        """Character span of tokens s..e, widened to whole words when align_to_words and the tokens have words."""
        if align_to_words:
            start_word, end_word = window.token_to_word(s), window.token_to_word(e)
            if start_word is not None and end_word is not None:
                first = window.word_to_chars(start_word, sequence_index)
                last = window.word_to_chars(end_word, sequence_index)
                if first is not None and last is not None:
                    return first[0], last[1]
        return window.offsets[s][0], window.offsets[e][1]


_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# sentence-transformers modules whose work happens here (Transformer is the graph itself).
SENTENCE_TRANSFORMERS_MODULES = ("Transformer", "Pooling", "Normalize")


def _pooling_modes(pooling: Mapping[str, Any]) -> list[str]:
    """Pooling modes of a sentence-transformers Pooling config, old boolean keys or new pooling_mode."""
    mode = pooling.get("pooling_mode")
    if mode is None:
        modes = [m for m in _POOLING_MODES if pooling.get(f"pooling_mode_{m}") or pooling.get(f"pooling_mode_{m}_token")
                 or pooling.get(f"pooling_mode_{m}_tokens")]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    bad = [m for m in modes if m not in _POOLING_MODES]
    if bad or not modes:
        raise ProcessorReconstructionError(f"pooling modes {bad or modes} are not supported; known: {', '.join(_POOLING_MODES)}")
    return modes


def _pool(tokens: np.ndarray, mode: str) -> np.ndarray:
    """One pooling mode over the token rows of one text (no padding rows), as sentence-transformers."""
    import numpy as np

    if mode == "cls":
        return tokens[0]
    if mode == "lasttoken":
        return tokens[-1]
    if mode == "max":
        return tokens.max(axis=0)
    if mode == "weightedmean":
        weights = np.arange(1, len(tokens) + 1, dtype=np.float32)[:, None]
        return (tokens * weights).sum(axis=0) / max(float(weights.sum()), 1e-9)
    total = tokens.sum(axis=0)
    count = max(float(len(tokens)), 1e-9)
    return total / (count if mode == "mean" else np.sqrt(count))


class _FeatureExtraction(_TextTask):
    """feature-extraction: token embeddings as transformers.FeatureExtractionPipeline, and encode()
    with the sentence-transformers pooling, normalization and prompts embedded with the model."""

    name = "feature-extraction"
    arguments = ("return_tensors",)
    output = "last_hidden_state"
    per_token = True

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        st = ctx.metadata.get(KEY_SENTENCE_TRANSFORMERS) or {}
        # A plain transformers model gets what SentenceTransformer gives it: mean pooling.
        self.modes = _pooling_modes(st.get("pooling") or {"pooling_mode": "mean"})
        self.include_prompt = bool((st.get("pooling") or {}).get("include_prompt", True))
        self.normalize = bool(st.get("normalize", False))
        self.lowercase = bool(st.get("do_lower_case", False))
        self.prompts: dict[str, str] = dict(st.get("prompts") or {})
        self.default_prompt_name = st.get("default_prompt_name")
        self.unsupported = [m.get("type", "?") for m in st.get("modules") or []
                            if str(m.get("type", "")).rsplit(".", 1)[-1] not in SENTENCE_TRANSFORMERS_MODULES]

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        self.check_arguments(kwargs)
        texts, single = self.texts(inputs)
        rows = self.forward(self.tokenizer.encode(texts)) if texts else []
        if kwargs.get("return_tensors"):
            results: list[Any] = [row[None] for row in rows]
        else:
            results = [[row.tolist()] for row in rows]
        return results[0] if single else results

    def encode(self, sentences: Any, *, prompt_name: str | None = None, prompt: str | None = None,
               normalize_embeddings: bool = False) -> np.ndarray:
        import numpy as np

        if self.unsupported:
            raise ProcessorReconstructionError(
                f"sentence-transformers modules {self.unsupported} are not supported by this runtime; "
                "only Transformer, Pooling and Normalize are"
            )
        texts, single = self.texts(sentences)
        if prompt is None:
            name = prompt_name if prompt_name is not None else self.default_prompt_name
            if name is not None and name not in self.prompts:
                raise InvalidInputError(f"prompt_name {name!r} not found; the model has prompts {sorted(self.prompts)}")
            prompt = self.prompts.get(name, "") if name is not None else ""
        skip = 0
        if prompt and not self.include_prompt:
            encoded = self.tokenizer.encode([prompt])[0]
            # as sentence-transformers: the prompt's tokens, less a trailing [SEP] / </s>
            skip = len(encoded.ids) - (1 if encoded.special_tokens_mask[-1] else 0)
        texts = [prompt + t for t in texts]
        if self.lowercase:
            texts = [t.lower() for t in texts]
        if not texts:
            return np.zeros((0,), dtype=np.float32)
        vectors = []
        for tokens in self.forward(self.tokenizer.encode(texts)):
            tokens = tokens.astype(np.float32)[skip:]
            vectors.append(np.concatenate([_pool(tokens, m) for m in self.modes]))
        out = np.stack(vectors)
        if self.normalize or normalize_embeddings:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out


class _ZeroShotClassification(_TextTask):
    """zero-shot-classification with an NLI model, as transformers.ZeroShotClassificationPipeline."""

    name = "zero-shot-classification"
    arguments = ("candidate_labels", "hypothesis_template", "multi_label")
    positional = True

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        # transformers truncates only the premise, so that the hypothesis (the label) stays whole
        self.tokenizer = self.tokenizer.with_truncation("only_first")
        label2id = ctx.config.get("label2id") or {}
        self.entailment_id = next((int(i) for label, i in label2id.items() if str(label).lower().startswith("entail")), -1)

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        import numpy as np

        if args:
            if len(args) > 1 or "candidate_labels" in kwargs:
                raise InvalidInputError(f"cannot understand the extra arguments {args!r}; pass candidate_labels=[...]")
            kwargs["candidate_labels"] = args[0]
        self.check_arguments(kwargs)
        labels = kwargs.get("candidate_labels")
        if isinstance(labels, str):
            labels = [label.strip() for label in labels.split(",") if label.strip()]
        if not labels or not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) for x in labels):
            raise InvalidInputError(
                "zero-shot-classification needs candidate_labels: a list of strings or a comma-separated string, "
                "e.g. candidate_labels=['sports', 'politics']"
            )
        template = kwargs.get("hypothesis_template", "This example is {}.")
        if not isinstance(template, str) or template.format(labels[0]) == template:
            raise InvalidInputError(f"hypothesis_template {template!r} has no {{}} where the label should go")
        sequences, single = self.texts(inputs)
        if not sequences:
            return []
        pairs = [(seq, template.format(label)) for seq in sequences for label in labels]
        logits = np.stack(self.forward(self.tokenizer.encode(pairs))).astype(np.float32)
        logits = logits.reshape(len(sequences), len(labels), -1)
        results = []
        for seq, rows in zip(sequences, logits):
            if kwargs.get("multi_label") or len(labels) == 1:
                contradiction_id = -1 if self.entailment_id == 0 else 0
                pair = np.exp(rows[:, [contradiction_id, self.entailment_id]])
                scores = (pair / pair.sum(-1, keepdims=True))[:, 1]
            else:
                entail = np.exp(rows[:, self.entailment_id])
                scores = entail / entail.sum(-1, keepdims=True)
            top = list(reversed(scores.argsort()))
            results.append({"sequence": seq, "labels": [labels[i] for i in top], "scores": scores[top].tolist()})
        return results[0] if single else results


# --- Text generation ----------------------------------------------------------------------------------


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: None if value is None else check(name, value)


def _long_generation(name: str, value: Any) -> str:
    if value != "hole":
        raise InvalidInputError(f"{name} must be None or 'hole', got {value!r}")
    return "hole"


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string, got {value!r}")
    return value


# TextGenerationPipeline's own options (name, check, default); the generation options come on top.
_TEXT_GENERATION_OPTIONS = (
    _GenerationOption("return_full_text", _optional(_flag), None),
    _GenerationOption("return_tensors", _optional(_flag), None),
    _GenerationOption("return_text", _optional(_flag), None),
    _GenerationOption("prefix", _optional(_string), None),
    _GenerationOption("stop_sequence", _optional(_texts), None),
    _GenerationOption("handle_long_generation", _optional(_long_generation), None),
    _GenerationOption("continue_final_message", _optional(_flag), None),
    _GenerationOption("skip_special_tokens", _optional(_flag), True),
)
# The chat template's tag marking where the final message ends, when the model continues it.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class _Prompt(NamedTuple):
    """One input: the prompt as given (a string, or chat messages), the token ids generation starts from,
    how many of them the text skips (an empty prompt starts from bos, which is decoded), whether it is a chat
    and whether its final message is continued."""

    given: Any
    ids: list[int]
    skip: int
    chat: bool
    continue_final: bool


def _is_chat(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _chat_environment() -> Any:
    """A jinja2 environment as transformers renders chat templates in: sandboxed, trim_blocks and lstrip_blocks,
    loop controls, its tojson filter, raise_exception, strftime_now and the {% generation %} tag."""
    try:
        import jinja2
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ProcessorReconstructionError(
            "chat messages need the 'jinja2' package to render the model's chat template; pip install jinja2"
        ) from None
    # a chat template comes from the file: older jinja2 sandboxes have known escapes (transformers refuses them too)
    if tuple(int(n) for n in re.findall(r"\d+", jinja2.__version__)[:3]) < (3, 1, 6):
        raise ProcessorReconstructionError(f"rendering a chat template needs jinja2 >= 3.1.6 (its sandbox), not "
                                           f"{jinja2.__version__}; pip install -U jinja2")

    class GenerationTag(Extension):
        """{% generation %}...{% endgeneration %} marks the assistant's text for training masks; rendered as is."""

        tags = {"generation"}  # noqa: RUF012 - jinja2.ext.Extension declares it a class-level set

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller: Callable[[], str]) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = time.strftime
    return environment


class _TextGeneration(_Task):
    """text-generation, as transformers.TextGenerationPipeline: continues strings or chats (rendered with the
    embedded chat template) with the generation options of GenerationConfig, defaults from the embedded
    generation config. Lists run together, left-padded, in batches of batch_size."""

    name = "text-generation"
    options = _TEXT_GENERATION_OPTIONS
    arguments = (*(o.name for o in _TEXT_GENERATION_OPTIONS), *_GENERATION_OPTION_NAMES)
    # the pipeline's defaults, where neither the caller nor the model's generation config sets them
    defaults: Mapping[str, Any] = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        # a prompt is never cut silently: the position check below says when one is too long
        self.tokenizer = ctx.text_tokenizer(self.name).with_truncation("longest_first", window=_VERY_LARGE_MAX_LENGTH)
        self.step = _DecoderOnly(ctx.session, ctx.config)
        self.model_defaults = _model_generation_defaults(ctx.metadata.get(KEY_GENERATION_CONFIG), ctx.config)
        pad = self.tokenizer.token_id("pad_token")
        self.task_defaults = {**self.defaults, **({} if pad is None else {"pad_token_id": pad})}
        self.positions = _config_int(ctx.config, "max_position_embeddings", "n_positions", "n_ctx")
        prefix = ctx.config.get("prefix")
        self.prefix = prefix if isinstance(prefix, str) else None
        template = self.tokenizer.config.get("chat_template")
        if isinstance(template, list):  # named templates, as transformers 4 saved several
            template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
        self.chat_template = template if isinstance(template, str) else None
        self._template: Any = None
        self._token_text: _TokenText | None = None

    def resolve(self, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], _GenerationConfig]:
        """The task's options (checked, defaults applied) and the generation config of a call."""
        self.check_arguments(kwargs)
        options = {o.name: o.default if kwargs.get(o.name) is None else o.check(o.name, kwargs[o.name]) for o in self.options}
        if options["prefix"] is None:
            options["prefix"] = self.prefix
        # the pipeline hands a max_length it is called with to the tokenizer too, which then cuts string prompts
        options["max_length"] = kwargs.get("max_length")
        generation = {k: v for k, v in kwargs.items() if k in _GENERATION_OPTION_NAMES}
        if options["stop_sequence"] is not None:
            generation["stop_strings"] = options["stop_sequence"]
        config = _generation_config(self.model_defaults, generation, self.task_defaults)
        full, tensors, text = options["return_full_text"], options["return_tensors"], options["return_text"]
        if full is not None and text is not None:
            raise InvalidInputError("return_text is mutually exclusive with return_full_text")
        if full is not None and tensors:
            raise InvalidInputError("return_full_text is mutually exclusive with return_tensors")
        if tensors and text is not None:
            raise InvalidInputError("return_text is mutually exclusive with return_tensors")
        return options, config

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        options, config = self.resolve(kwargs)
        prompts, single = self.preprocess(inputs, options, config)
        config = self.with_prefix(config, options)
        results = [self.postprocess(p, sequences, options) for p, sequences in zip(prompts, self.forward(prompts, config))]
        return results[0] if single else results

    def stream(self, inputs: Any, **kwargs: Any) -> Iterator[str]:
        """The new text of one prompt as it is generated, held back until stable (_TextStreamer)."""
        options, config = self.resolve(kwargs)
        if config.num_beams > 1 or config.num_return_sequences > 1:
            raise InvalidInputError("stream() generates one sequence: pass num_beams=1 and num_return_sequences=1")
        if options["return_tensors"]:
            raise InvalidInputError("stream() yields text; return_tensors cannot be streamed")
        prompts, single = self.preprocess(inputs, options, config)
        if not single:
            raise InvalidInputError("stream() takes one prompt (a string or one chat), not a list")
        return self._stream(self.search(prompts, self.with_prefix(config, options)), options["skip_special_tokens"])

    def streamable(self, kwargs: Mapping[str, Any]) -> bool:
        """Whether stream() takes these options: one sequence, as text."""
        options, config = self.resolve(kwargs)
        return config.num_beams == 1 and config.num_return_sequences == 1 and not options["return_tensors"]

    def _stream(self, search: _Search, skip: bool) -> Iterator[str]:
        streamer = _TextStreamer(lambda ids: self.decode(ids, skip))
        for tokens in search:
            text = streamer.put(tokens[:1])
            if text:
                yield text
        text = streamer.end()
        if text:
            yield text

    def preprocess(self, inputs: Any, options: Mapping[str, Any], config: _GenerationConfig) -> tuple[list[_Prompt], bool]:
        """The prompts as token ids: strings behind the prefix, chats rendered with the chat template; and
        whether a single prompt was given."""
        single = isinstance(inputs, str) or _is_chat(inputs)
        items = [inputs] if single else inputs
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) or _is_chat(i) for i in items):
            raise InvalidInputError(
                "text-generation takes a string, chat messages ([{'role': ..., 'content': ...}, ...]) or a list of "
                f"either; got {type(inputs).__name__}"
            )
        prompts = []
        for item in items:
            continue_final = False
            if isinstance(item, str):
                tokenizer = self.tokenizer
                if options["max_length"] is not None:
                    tokenizer = tokenizer.with_truncation("longest_first", window=options["max_length"])
                ids = tokenizer.encode([(options["prefix"] or "") + item])[0].ids
            else:
                continue_final = options["continue_final_message"]
                if continue_final is None:
                    continue_final = item[-1]["role"] == "assistant"
                ids = self.tokenizer.encode([self.render(item, continue_final)], add_special_tokens=False)[0].ids
            if options["handle_long_generation"] == "hole":
                ids = self.hole(ids, config)
            if ids:
                prompts.append(_Prompt(item, ids, len(ids), not isinstance(item, str), continue_final))
            elif config.bos_token_id is not None:  # generate() starts an empty prompt with bos
                prompts.append(_Prompt(item, [config.bos_token_id], 0, not isinstance(item, str), continue_final))
            else:
                raise InvalidInputError("the prompt is empty and the model has no bos_token_id to start from; pass some text")
        return prompts, single

    def hole(self, ids: list[int], config: _GenerationConfig) -> list[int]:
        """handle_long_generation='hole': the prompt's start dropped to leave room for the new tokens."""
        new_tokens = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - len(ids)
        if new_tokens < 0:
            raise InvalidInputError("handle_long_generation='hole' cannot tell how many new tokens are expected; pass max_new_tokens")
        limit = self.tokenizer.max_length
        if len(ids) + new_tokens <= limit:
            return ids
        if limit - new_tokens <= 0:
            raise InvalidInputError(
                f"handle_long_generation='hole' cannot make room for {new_tokens} new tokens in the model's {limit}; "
                "lower max_new_tokens"
            )
        return ids[len(ids) + new_tokens - limit:]

    def with_prefix(self, config: _GenerationConfig, options: Mapping[str, Any]) -> _GenerationConfig:
        """As the pipeline: a total length (max_length, min_length) set without its new-token twin counts the prefix too."""
        if not options["prefix"]:
            return config
        extra = len(self.tokenizer.encode([options["prefix"]], add_special_tokens=False)[0].ids)
        if config.max_new_tokens is None and "max_length" in config.explicit:
            config = config._replace(max_length=config.max_length + extra)
        if config.min_new_tokens is None and "min_length" in config.explicit:
            config = config._replace(min_length=config.min_length + extra)
        return config

    def render(self, messages: Sequence[Mapping[str, Any]], continue_final: bool) -> str:
        """Chat messages as text through the embedded chat template, as apply_chat_template renders them."""
        if self.chat_template is None:
            raise InvalidInputError(
                "this model has no chat template, so it cannot take chat messages; pass the prompt as a string "
                "(or re-embed from a tokenizer with a chat_template)"
            )
        if self._template is None:
            self._template = _chat_environment().from_string(self.chat_template)
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        final = chat[-1]["content"]
        if continue_final:
            if "content" not in self.chat_template or not isinstance(final, str):
                raise InvalidInputError("continue_final_message needs a final message with text content that the chat template reads")
            chat[-1]["content"] = final + _CONTINUE_TAG
        special = {n: t for n in _SPECIAL_TOKEN_NAMES if (t := _token_content(self.tokenizer.config.get(n))) is not None}
        try:
            text = str(self._template.render(messages=chat, tools=None, documents=None,
                                             add_generation_prompt=not continue_final, **special))
        except Exception as exc:  # noqa: BLE001 - jinja2's TemplateError, or whatever a template's code raises
            raise InvalidInputError(f"the chat template cannot render these messages: {exc}") from None
        if continue_final:
            tag = _CONTINUE_TAG.strip()
            if final.strip() not in text or tag not in text:
                raise InvalidInputError("continue_final_message: the chat template drops part of the final message")
            at = text.rindex(tag)
            text = text[:at] if text[at: at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
        return text

    def search(self, prompts: Sequence[_Prompt], config: _GenerationConfig) -> _Search:
        """The decoding loop for prompts that run together."""
        if self._token_text is None and config.stop_strings:
            self._token_text = _TokenText(self.tokenizer)
        stop = _StopStrings(config.stop_strings, self._token_text) if config.stop_strings and self._token_text else None
        sequences = [p.ids for p in prompts]
        rows = _prompts(sequences, config, self.tokenizer.pad_token_id, self.positions)
        if self.positions is not None and int(rows.max_lengths.max()) > self.positions:
            longest = int(rows.max_lengths.argmax())
            raise InvalidInputError(
                f"the prompt has {len(sequences[longest])} tokens and may grow to {rows.max_lengths[longest]}, past "
                f"the model's {self.positions} positions; shorten it, lower max_new_tokens (or max_length), or pass "
                "handle_long_generation='hole' to drop its start"
            )
        return _Search(self.step, rows, config, stop)

    def forward(self, prompts: Sequence[_Prompt], config: _GenerationConfig) -> list[list[np.ndarray]]:
        """The new tokens of num_return_sequences sequences per prompt. Prompts run in batches of batch_size;
        a graph without position_ids numbers positions from the first column, so only prompts of one length
        run together there (left padding would shift them)."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids))
        batches: list[list[int]] = []
        for i in order:
            last = batches[-1] if batches else None
            if (last is None or len(last) >= self.ctx.batch_size
                    or "position_ids" not in self.step.int_types and len(prompts[last[0]].ids) != len(prompts[i].ids)):
                batches.append([i])
            else:
                last.append(i)
        results: list[list[np.ndarray]] = [[] for _ in prompts]
        count = config.num_return_sequences
        for batch in batches:
            sequences = self.search([prompts[i] for i in batch], config).run()
            for position, i in enumerate(batch):
                results[i] = sequences[position * count: (position + 1) * count]
        return results

    def decode(self, ids: Iterable[int], skip_special_tokens: bool) -> str:
        # beam search fills short sequences with -1 when the model has no eos or pad token
        return self.tokenizer.decode([int(t) for t in ids if t >= 0], skip_special_tokens=skip_special_tokens)

    def postprocess(self, prompt: _Prompt, sequences: Sequence[np.ndarray], options: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One record per sequence: token ids (prompt included), the new text, or the prompt continued."""
        records = []
        for new in sequences:
            if options["return_tensors"]:
                records.append({"generated_token_ids": [*prompt.ids, *(int(t) for t in new)]})
                continue
            text = self.decode([*prompt.ids[prompt.skip:], *new], options["skip_special_tokens"])
            generated: Any = text
            if options["return_full_text"] is not False:
                if not prompt.chat:
                    generated = prompt.given + text
                elif prompt.continue_final:
                    final = prompt.given[-1]
                    generated = [*prompt.given[:-1], {"role": final["role"], "content": final["content"] + text}]
                else:
                    generated = [*prompt.given, {"role": "assistant", "content": text}]
            records.append({"generated_text": generated})
        return records


TASKS: dict[str, type[_Task]] = {
    "text-classification": _TextClassification,
    "fill-mask": _FillMask,
    "feature-extraction": _FeatureExtraction,
    "zero-shot-classification": _ZeroShotClassification,
    "token-classification": _TokenClassification,
    "question-answering": _QuestionAnswering,
    "text-generation": _TextGeneration,
}
TASK_ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}


########################################################################################################
# Runtime
########################################################################################################


class Runtime:
    """A self-contained ONNX model ready to call: ``Runtime("model.onnx")("text")``.

    Everything is built and checked here (metadata, tokenizer, session, task), so a call can only
    fail on its inputs. Lists run in length-sorted batches of batch_size. intra_op_num_threads and
    graph_optimization_level ("disable", "basic", "extended", "all") set the onnxruntime session;
    for anything else pass an onnxruntime.SessionOptions as session_options.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        task: str | None = None,
        providers: Sequence[Any] | None = None,
        session_options: Any = None,
        batch_size: int = 32,
        max_decompressed_size: int = MAX_DECOMPRESSED_SIZE,
        intra_op_num_threads: int | None = None,
        graph_optimization_level: str | None = None,
    ) -> None:
        self.path = _model_path(path)
        self.metadata = read_metadata(self.path, max_decompressed_size=max_decompressed_size)
        if KEY_VERSION not in self.metadata:
            raise MetadataValidationError(
                f"{os.path.basename(self.path)} has no onnxmeta metadata; embed it first: "
                f"python -m authoring embed {os.path.basename(self.path)} <model> --include-vocab"
            )
        check_value_types(self.metadata)
        self.task = self._task_name(task)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.config: Mapping[str, Any] = self.metadata.get(KEY_MODEL_CONFIG) or {}
        self.tokenizer = load_tokenizer(self.metadata)
        options = _session_options(session_options, intra_op_num_threads, graph_optimization_level)
        self.session = _session(self.path, providers, options)
        self._task = TASKS[self.task](_Context(self.session, self.metadata, self.tokenizer, batch_size))

    def _task_name(self, task: str | None) -> str:
        name = task or self.metadata.get(KEY_PIPELINE_TASK)
        if not name:
            raise TaskDetectionError(
                f"{os.path.basename(self.path)} names no pipeline task; pass task=... or re-embed with --task"
            )
        name = TASK_ALIASES.get(name, name)
        if name not in TASKS:
            raise TaskDetectionError(f"task {name!r} is not supported by this runtime; supported: {', '.join(sorted(TASKS))}")
        return name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task on one input or a list, returning what the transformers pipeline returns."""
        if not args and not self._task.keyword_inputs:
            raise InvalidInputError(f"{self.task} needs its inputs: runtime(text) or runtime([text, ...])")
        if len(args) > 1 and not self._task.positional:
            raise InvalidInputError(
                f"{self.task} takes the inputs as its only positional argument (a text or a list); pass options by name"
            )
        return self._task(*args, **kwargs)

    def encode(self, sentences: str | list[str], *, prompt_name: str | None = None, prompt: str | None = None,
               normalize_embeddings: bool = False) -> np.ndarray:
        """Sentence embeddings, as SentenceTransformer(...).encode: a (n, dim) float32 array, (dim,) for one string.

        Pooling, normalization, max_seq_length and prompts come from the embedded sentence-transformers
        config; a plain transformers model is mean-pooled, as SentenceTransformer does.
        """
        if not isinstance(self._task, _FeatureExtraction):
            raise TaskDetectionError(f"encode() needs a feature-extraction model; this one is {self.task}")
        return self._task.encode(sentences, prompt_name=prompt_name, prompt=prompt, normalize_embeddings=normalize_embeddings)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        """The new text of one prompt as it is generated: ``for text in Runtime("gpt2.onnx").stream("Once"): ...``.

        Text is held back until stable, as transformers' TextIteratorStreamer does (incomplete characters and
        words wait); the pieces join to what ``runtime(prompt, return_full_text=False)`` returns.
        """
        if not isinstance(self._task, _TextGeneration):
            raise TaskDetectionError(f"stream() needs a text-generation model; this one is {self.task}")
        return self._task.stream(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Runtime({os.path.basename(self.path)!r}, task={self.task!r})"


_OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                        "all": "ORT_ENABLE_ALL"}


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MetadataError("running a model needs onnxruntime; pip install onnxruntime") from None
    return onnxruntime


def _session_options(session_options: Any, threads: int | None, level: str | None) -> Any:
    """session_options, or new SessionOptions with the thread count and optimization level set."""
    if threads is None and level is None:
        return session_options
    if session_options is not None:
        raise InvalidInputError(
            "pass either session_options or intra_op_num_threads/graph_optimization_level, not both; "
            "set them on your SessionOptions instead"
        )
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 0):
        raise InvalidInputError(f"intra_op_num_threads must be an integer >= 0 (0: onnxruntime's default), got {threads!r}")
    if level is not None and level not in _OPTIMIZATION_LEVELS:
        raise InvalidInputError(f"graph_optimization_level must be one of {', '.join(_OPTIMIZATION_LEVELS)}, got {level!r}")
    ort = _onnxruntime()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if level is not None:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPTIMIZATION_LEVELS[level])
    return options


def _session(path: str, providers: Sequence[Any] | None, session_options: Any) -> Any:
    ort = _onnxruntime()
    providers = list(providers or ["CPUExecutionProvider"])
    # onnxruntime quietly falls back to the CPU when a requested provider is missing (a CPU-only wheel
    # asked for CUDA); a caller who named a provider should know.
    available = ort.get_available_providers()
    missing = [p for p in providers if (p[0] if isinstance(p, tuple) else p) not in available]
    if missing:
        raise InvalidInputError(
            f"execution provider {', '.join(str(p) for p in missing)} is not available in this onnxruntime "
            f"(available: {', '.join(available)}); install the matching build, e.g. onnxruntime-gpu for CUDA"
        )
    try:
        session = ort.InferenceSession(path, sess_options=session_options, providers=providers)
        # onnxruntime decodes names and shapes only when asked: a name that is not UTF-8 fails here.
        for node in (*session.get_inputs(), *session.get_outputs()):
            _ = (node.name, node.type, node.shape)
    except Exception as exc:  # onnxruntime raises its own non-exported exception types
        raise MetadataReadError(f"onnxruntime cannot load {os.path.basename(path)}: {exc}") from None
    if not session.get_outputs():
        raise MetadataValidationError(f"{os.path.basename(path)} has a graph without outputs; re-export the model")
    return session


def pipeline(model: str | os.PathLike[str], task: str | None = None, **options: Any) -> Runtime:
    """The design's name for Runtime: ``pipeline(model="model.onnx")``; options as Runtime takes them."""
    return Runtime(model, task=task, **options)


class ONNXAutoModel:
    """The design's model loader: an onnxruntime session for a self-contained file."""

    @staticmethod
    def from_model(model_path: str | os.PathLike[str], providers: Sequence[Any] | None = None, session_options: Any = None) -> Any:
        """An onnxruntime.InferenceSession for the file."""
        return _session(os.fspath(model_path), providers, session_options)


class ONNXAutoProcessor:
    """The design's processor loader."""

    @staticmethod
    def from_model(model_path: str | os.PathLike[str], processor_type: str | None = None) -> Any:
        """The embedded tokenizer (TextTokenizer, or TokenizerProxy without vocabulary)."""
        if processor_type not in (None, "tokenizer"):
            raise ProcessorReconstructionError(f"processor type {processor_type!r} is not supported yet; use 'tokenizer'")
        processor = load_tokenizer(read_metadata(model_path))
        if processor is None:
            raise ProcessorReconstructionError(f"{os.path.basename(os.fspath(model_path))} has no embedded tokenizer")
        return processor


########################################################################################################
# Command line
########################################################################################################


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="onnxmeta_runtime", description="Run a self-contained ONNX model.")
    parser.add_argument("model", help="a self-contained .onnx file")
    parser.add_argument("inputs", nargs="*", help="texts to run the model on (question-answering: a question and a context)")
    parser.add_argument("--metadata", action="store_true", help="print the embedded metadata as JSON and exit")
    parser.add_argument("--task", help="run as this task instead of the embedded one")
    parser.add_argument("--options", default="{}", metavar="JSON",
                        help='task options as a JSON object, e.g. \'{"aggregation_strategy": "simple"}\'')
    args = parser.parse_args(argv)
    try:
        if args.metadata or not args.inputs:
            metadata = read_metadata(args.model)
            summary = {k: (f"<{len(v)} characters>" if k == KEY_TOKENIZER_JSON else v) for k, v in metadata.items()}
            print(json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False))
            return 0
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"--options is not JSON ({exc}); e.g. --options '{{\"top_k\": 3}}'") from None
        if not isinstance(options, dict):
            raise InvalidInputError("--options must be a JSON object, e.g. --options '{\"top_k\": 3}'")
        runtime = Runtime(args.model, task=args.task)
        if runtime.task == "question-answering":
            if len(args.inputs) != 2:
                raise InvalidInputError("question-answering takes two inputs, a question and a context: "
                                        "model.onnx 'Where do I live?' 'I live in Berlin.'")
            result = runtime(question=args.inputs[0], context=args.inputs[1], **options)
        elif runtime.task == "text-generation" and len(args.inputs) == 1 and isinstance(runtime._task, _TextGeneration) \
                and runtime._task.streamable(options):
            # tokens as they come: the prompt, then the new text
            print("" if options.get("return_full_text") is False else args.inputs[0], end="", flush=True)
            for text in runtime.stream(args.inputs[0], **{k: v for k, v in options.items() if k != "return_full_text"}):
                print(text, end="", flush=True)
            print()
            return 0
        else:
            result = runtime(args.inputs if len(args.inputs) > 1 else args.inputs[0], **options)
        print(json.dumps(result, indent=2, ensure_ascii=False))
    except MetadataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
