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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeGuard


class _Numpy:
    """numpy, imported at the first use of ``np`` (reading metadata and the command line's --version need only the
    standard library): the first attribute read imports it and binds the module itself to ``np``."""

    def __getattr__(self, name: str) -> Any:
        global np
        import numpy

        np = numpy
        return getattr(numpy, name)  # name is the attribute this file's code reads (np.float32), never data


if TYPE_CHECKING:
    import numpy as np
else:
    np = _Numpy()

__version__ = "0.1.0"

# The public surface, by what it is for; every other name is internal and may change.
__all__ = (  # noqa: RUF022 - grouped by what the names are for, not sorted
    # Running a model: the pipeline's answers, the sessions, the tasks (docs/ARCHITECTURE.md), serving it over HTTP
    "Runtime", "pipeline", "ONNXAutoModel", "ONNXAutoProcessor", "Session", "open_sessions", "model_info", "TASKS",
    "TASK_ALIASES", "Server",
    # Processors rebuilt from the metadata, and the inputs they read
    "load_processor", "load_tokenizer", "load_image_processor", "load_feature_extractor", "PROCESSORS",
    "FEATURE_EXTRACTORS", "TextTokenizer", "TokenizerProxy", "ImageProcessor", "DetectionImageProcessor",
    "WhisperFeatureExtractor",
    "Wav2Vec2FeatureExtractor", "ASTFeatureExtractor", "CTCDecoder", "VitsTokenizer", "load_image", "load_audio", "resample",
    "mel_filter_bank", "ClapFeatureExtractor",
    # Reading a file: metadata without loading the graph (docs/FORMAT.md)
    "read_metadata", "scan_model", "ModelScan", "Entry", "decode_metadata", "iter_fields", "value_text", "graph_layout",
    "graph_operators", "session_signature", "metadata_digest", "clear_metadata_cache", "read_varint", "WIRE_LEN",
    "WIRE_VARINT", "FIELD_METADATA_PROPS", "MAX_DECOMPRESSED_SIZE",
    # The format, which authoring writes: key names, version, value encoding (docs/FORMAT.md)
    "FORMAT_VERSION", "KEY_DIGEST", "KEY_EMBEDDING_LEVEL", "KEY_EXPORT_CONFIG", "KEY_FEATURE_ENGINEERING",
    "KEY_FEATURE_EXTRACTOR_CONFIG", "KEY_GENERATION_CONFIG", "KEY_GRAPH_LAYOUT", "KEY_IMAGE_PROCESSOR_CONFIG",
    "KEY_MODEL_CONFIG", "KEY_PIPELINE_CONFIG", "KEY_PIPELINE_TASK", "KEY_SENTENCE_TRANSFORMERS", "KEY_TIMESTAMP",
    "KEY_TOKENIZERS_VERSION", "KEY_TOKENIZER_CONFIG", "KEY_TOKENIZER_JSON", "KEY_TRANSFORMERS_VERSION", "KEY_VERSION",
    "is_format_key", "encode_metadata", "canonical_json", "string_entry", "COMPRESSED_SUFFIX",
    "DEFAULT_COMPRESS_THRESHOLD", "SENTENCE_TRANSFORMERS_MODULES",
    # The encoder-decoder layout of one file (docs/FORMAT.md, hf_graph_layout)
    "ENCODER_FILE", "DECODER_FILE", "DECODER_WITH_PAST_FILE", "DECODER_MERGED_FILE", "PHASES", "PHASE_INPUT",
    "MERGED_BRANCH_INPUT", "check_fit", "past_pairs", "present_for", "is_past_input", "is_present_output", "is_cross_attention",
    "is_decoder_input",
    # Errors: every one the runtime raises is a MetadataError
    "MetadataError", "MetadataReadError", "UnsupportedVersionError", "MetadataValidationError",
    "MetadataExtractionError", "MetadataEmbeddingError", "ProcessorReconstructionError", "TaskDetectionError",
    "InvalidInputError",
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
KEY_GRAPH_LAYOUT = "hf_graph_layout"
KEY_DIGEST = "hf_metadata_sha256"

# Values stored as plain text. hf_tokenizer_json is the tokenizer.json document as text: it goes
# straight to tokenizers.Tokenizer.from_str, so it is never parsed here.
_STRING_KEYS = frozenset({
    KEY_VERSION, KEY_TIMESTAMP, KEY_TRANSFORMERS_VERSION, KEY_TOKENIZER_JSON, KEY_TOKENIZERS_VERSION,
    KEY_PIPELINE_TASK, KEY_EMBEDDING_LEVEL, KEY_DIGEST,
})
# Values stored as canonical JSON objects.
_JSON_KEYS = frozenset({
    KEY_MODEL_CONFIG, KEY_TOKENIZER_CONFIG, KEY_IMAGE_PROCESSOR_CONFIG, KEY_FEATURE_EXTRACTOR_CONFIG,
    KEY_GENERATION_CONFIG, KEY_FEATURE_ENGINEERING, KEY_PIPELINE_CONFIG, KEY_EXPORT_CONFIG, KEY_SENTENCE_TRANSFORMERS,
    KEY_GRAPH_LAYOUT,
})
_KEYS = _STRING_KEYS | _JSON_KEYS
# The two keys the original design named without the hf_ prefix. Every other key of the format,
# present and future, starts with hf_; that is what makes a key "ours" (replaced on re-embed,
# covered by the digest), so that a newer writer's extra keys stay covered for older readers.
_UNPREFIXED_KEYS = frozenset({KEY_FEATURE_ENGINEERING, KEY_EXPORT_CONFIG})

COMPRESSED_SUFFIX = ":compressed"
# Older writers marked a compressed value by this prefix on the value instead of the key suffix; read only.
_LEGACY_GZIP_PREFIX = "gzip:"
DEFAULT_COMPRESS_THRESHOLD = 10 * 1024
"""Values whose UTF-8 text is longer than this many bytes are stored gzip + base64."""
_COMPRESSION_LEVEL = 6
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


# Checks of values callers pass, shared by Runtime's arguments and every task's options.

_UNSET: Any = object()
_REQUIRED: Any = object()
_Check = Callable[[str, Any], Any]
"""An option's check: (name, value given) -> the value to use, or InvalidInputError naming the option."""


def _is_int(value: Any) -> TypeGuard[int]:
    """An integer as JSON and the pipelines have them: True is no integer (Python's bool is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[int | float]:
    """A number as JSON has them (an int or a float, not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(minimum: int = 1, *, optional: bool = False, hint: str = "") -> _Check:
    """An int (not a bool) of at least minimum; None too when optional."""
    kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if not _is_int(value) or value < minimum:
            raise InvalidInputError(f"{name} must be {kind}{' or None' if optional else ''}{hint}, got {value!r}")
        return value

    return check


def _choice(*choices: str) -> _Check:
    """One of choices, case-insensitive; an enum member counts by its value."""

    def check(name: str, value: Any) -> str:
        text = getattr(value, "value", value)
        if isinstance(text, str) and text.lower() in choices:
            return text.lower()
        raise InvalidInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")

    return check


def _flag(name: str, value: Any) -> bool:
    """Any value, read for its truth as the transformers pipelines read flags."""
    return bool(value)


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string, got {value!r}")
    return value


def _boolean(name: str, value: Any) -> bool:
    """True or False, nothing else (generate()'s flags)."""
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be True or False, got {value!r}")
    return value


class _Option(NamedTuple):
    """An option a task takes: its name; the check a given value passes, which returns the value to use;
    and its default: a value, _REQUIRED, or a function of the task and the options resolved before it
    (defaults taken from the embedded configs). A caller's None means the default unless none is set."""

    name: str
    check: _Check
    default: Any = None
    none: bool = False


########################################################################################################
# Protobuf scanner
########################################################################################################
# An ONNX file is a serialized ModelProto. We only walk its top-level fields: each is a tag varint
# (field_number << 3 | wire_type) followed by its payload. Length-delimited payloads (the graph, which
# holds the weights) are skipped by seeking, so a 400 MB model costs a handful of small reads.
# Only field 14, metadata_props (StringStringEntryProto: key = 1, value = 2), is read.

WIRE_VARINT, _WIRE_I64, WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5
"""Protobuf wire types: varint, fixed 64-bit, length-delimited, fixed 32-bit."""
_FIELD_GRAPH = 7
FIELD_METADATA_PROPS = 14
_HEAD_BYTES = 20  # a tag varint and a length varint are at most 10 bytes each


class _Malformed(Exception):
    """Internal: a scanner failure; converted once into MetadataReadError with the offset."""


class _Field(NamedTuple):
    """One field of a protobuf message in a file: bytes [start, end), its payload from data_start."""

    number: int
    wire_type: int
    start: int
    data_start: int
    end: int


class Entry(NamedTuple):
    """One metadata_props entry and the top-level field that holds it."""

    key: str
    value: str
    field: _Field


class ModelScan(NamedTuple):
    """The top-level layout of an ONNX file: its fields in file order and its metadata entries."""

    size: int
    fields: list[_Field]
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
    if wire == WIRE_VARINT:
        _, end = _varint(buf, p)
        return number, wire, p, end
    if wire == _WIRE_I64:
        end = p + 8
    elif wire == _WIRE_I32:
        end = p + 4
    elif wire == WIRE_LEN:
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
            if wire != WIRE_LEN:
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


def _fields(f: IO[bytes], start: int, end: int) -> Iterator[_Field]:
    pos = start
    while pos < end:
        f.seek(pos)
        head = f.read(_HEAD_BYTES)
        try:
            number, wire, data_start, field_end = _field_head(head, 0, end - pos)
        except _Malformed as exc:
            raise _Malformed(f"{exc} (at byte {pos})") from None
        yield _Field(number, wire, pos, pos + data_start, pos + field_end)
        pos += field_end


def iter_fields(f: IO[bytes], start: int, end: int) -> Iterator[_Field]:
    """The fields of the message at bytes [start, end) of an open file, in order; payloads are skipped by
    seeking, never read. A malformed field raises MetadataReadError naming its byte offset."""
    try:
        yield from _fields(f, start, end)
    except _Malformed as exc:
        raise MetadataReadError(f"malformed message: {exc}") from None


def read_varint(buf: bytes, pos: int = 0) -> tuple[int, int]:
    """Decode the base-128 varint at buf[pos:]: (value, position after it); MetadataReadError if malformed."""
    try:
        return _varint(buf, pos)
    except _Malformed as exc:
        raise MetadataReadError(f"malformed varint: {exc}") from None


def string_entry(body: bytes) -> tuple[str, str]:
    """Decode a StringStringEntryProto (a metadata_props or external_data entry) into (key, value)."""
    try:
        return _parse_entry(body)
    except _Malformed as exc:
        raise MetadataReadError(f"malformed string entry: {exc}") from None


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
        fields: list[_Field] = []
        entries: list[Entry] = []
        try:
            for field in _fields(f, 0, size):
                fields.append(field)
                if field.number != FIELD_METADATA_PROPS:
                    continue
                if field.wire_type != WIRE_LEN:
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
    if not any(fl.number == _FIELD_GRAPH and fl.wire_type == WIRE_LEN for fl in fields):
        raise MetadataReadError(f"{name} is not an ONNX model: it has no graph (field {_FIELD_GRAPH})")
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
                if field.wire_type == WIRE_VARINT:
                    info[name] = _varint(data, 0)[0]
                elif field.wire_type != WIRE_LEN:
                    continue
                elif name == "opset_import":
                    domain, version, pos = "", 0, 0
                    while pos < len(data):
                        number, wire, start, end = _field_head(data, pos, len(data))
                        if number == 1 and wire == WIRE_LEN:
                            domain = data[start:end].decode("utf-8")
                        elif number == 2 and wire == WIRE_VARINT:
                            version = _varint(data, start)[0]
                        pos = end
                    info["opset_import"][domain or "ai.onnx"] = version
                else:
                    info[name] = data.decode("utf-8")
            except (_Malformed, UnicodeDecodeError):
                raise MetadataReadError(f"malformed field {field.number} (at byte {field.start})") from None
    return info


_GRAPH_NODE, _NODE_OP_TYPE = 1, 4  # GraphProto.node, NodeProto.op_type
_MAX_OP_TYPE = 256  # an op type is a short name; a longer field is not read


def graph_operators(path: str | os.PathLike[str], scan: ModelScan | None = None) -> frozenset[str]:
    """The op types of the nodes of a model's main graph (not its subgraphs), read field by field: initializers
    and everything else are skipped by seeking, so a multi-gigabyte file costs a few reads."""
    scan = scan or scan_model(path)
    found: set[str] = set()
    with _open_regular(_model_path(path)) as f:
        for graph in (fl for fl in scan.fields if fl.number == _FIELD_GRAPH and fl.wire_type == WIRE_LEN):
            for node in iter_fields(f, graph.data_start, graph.end):
                if node.number != _GRAPH_NODE or node.wire_type != WIRE_LEN:
                    continue
                for field in iter_fields(f, node.data_start, node.end):
                    if field.number == _NODE_OP_TYPE and field.wire_type == WIRE_LEN and \
                            field.end - field.data_start <= _MAX_OP_TYPE:
                        f.seek(field.data_start)
                        found.add(f.read(field.end - field.data_start).decode("utf-8", "replace"))
    return frozenset(found)


########################################################################################################
# Metadata encoding and decoding
########################################################################################################


def value_text(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if key in _STRING_KEYS:
        raise MetadataEmbeddingError(f"metadata value {key!r} must be a string, got {type(value).__name__}")
    if key in _JSON_KEYS and not isinstance(value, dict):
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
    compressor = zlib.compressobj(_COMPRESSION_LEVEL, zlib.DEFLATED, 31)
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
    if not _is_int(max_decompressed_size) or max_decompressed_size < 1:
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
        elif value.startswith(_LEGACY_GZIP_PREFIX) and is_format_key(raw_key):
            # No JSON value and no value this format writes starts so: the prefix is unambiguous.
            value = _decompress(key, value[len(_LEGACY_GZIP_PREFIX):], max_decompressed_size)
        if key in texts and is_format_key(key):
            raise MetadataReadError(f"metadata key {key!r} appears more than once; the file is ambiguous")
        texts[key] = value
    metadata: dict[str, Any] = {}
    for key, text in texts.items():
        if key in _JSON_KEYS and text == "None":
            # The original design's writer stores str(value), so an Optional config that was None reads
            # "None": the value is absent. It cannot be a JSON object, so nothing else is lost.
            continue
        if key in _JSON_KEYS:
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
    return "null" if value is None or value is _JSON_NULL else _JSON_NAMES.get(type(value), type(value).__name__)


_REEMBED = "re-embed from a model whose files have the right types"
_JSON_NULL: Any = object()  # an item that is null, which no field reader accepts


def _field(path: str, value: Any, types: tuple[type, ...], default: Any = None, *, each: tuple[type, ...] = (),
           low: float | None = None, high: float | None = None, error: type[MetadataError] = MetadataValidationError) -> Any:
    """The one reader of a configuration field (path names it: hf_model_config.num_labels): its value when it has
    one of JSON's types (True is no number) within the bounds, default when it is null or absent; else the error
    naming the field, what it must be and what it is, ending in the re-embed hint. With `each`, the field is an
    array or an object whose every item (value) has one of those types, within the bounds."""
    if value is None:
        return default
    if each:
        container = _field(path, value, types, error=error)
        for key, item in enumerate(container) if isinstance(container, list) else container.items():
            _field(f"{path}[{key!r}]", _JSON_NULL if item is None else item, each, low=low, high=high, error=error)
        return value
    number = _is_number(value)
    typed = isinstance(value, types) and (bool in types or not isinstance(value, bool))
    bounded = not number or (-float("inf") < value < float("inf") and (low is None or value >= low)
                             and (high is None or value <= high))
    if typed and bounded:
        return value
    expected = " or ".join(_JSON_NAMES[t] for t in types)
    if high is not None:
        expected += f" from {low:g} to {high:g}" if low is not None else f" of at most {high:g}"
    elif low is not None:
        expected += f" of at least {low:g}"
    found = repr(value) if typed else _json_type(value)
    raise error(f"{path} must be {expected}, got {found}; {_REEMBED}")


def _check_value_types(metadata: Mapping[str, Any]) -> None:
    """Refuse configuration fields the runtime reads when their JSON type is wrong (MetadataValidationError)."""
    for key, fields in _FIELD_TYPES.items():
        section = metadata.get(key)
        if isinstance(section, dict):
            for name, types in fields.items():
                _field(f"{key}.{name}", section.get(name), types)
    _field(f"{KEY_MODEL_CONFIG}.label2id", (metadata.get(KEY_MODEL_CONFIG) or {}).get("label2id"), (dict,), each=(int,))
    side = (metadata.get(KEY_TOKENIZER_CONFIG) or {}).get("truncation_side")
    if side not in (None, "left", "right"):
        raise MetadataValidationError(f"{KEY_TOKENIZER_CONFIG}.truncation_side is {side!r}; expected 'left' or 'right'")
    st = metadata.get(KEY_SENTENCE_TRANSFORMERS) or {}
    _field(f"{KEY_SENTENCE_TRANSFORMERS}.prompts", st.get("prompts"), (dict,), each=(str,))
    _field(f"{KEY_SENTENCE_TRANSFORMERS}.modules", st.get("modules"), (list,), each=(dict,))
    mode = (st.get("pooling") or {}).get("pooling_mode")
    _field(f"{KEY_SENTENCE_TRANSFORMERS}.pooling.pooling_mode", mode, (str, list), each=(str,) if isinstance(mode, list) else ())


_METADATA_CACHE_SIZE = 32
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
        if key is not None and cached is not None:
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
            while len(_cache) > _METADATA_CACHE_SIZE:
                _cache.popitem(last=False)
    return metadata


########################################################################################################
# Processors
########################################################################################################
# A processor turns raw inputs (texts, images, audio) into the arrays a graph takes. Each is rebuilt from
# the embedded configuration alone by a loader in PROCESSORS, keyed by feature_engineering's type
# ("tokenizer", "image_processor", "feature_extractor"). A task names the processors it needs and only
# those are built, so that a model of one modality needs no library of another.

# --- Tokenizer ----------------------------------------------------------------------------------------


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
        except BaseException as exc:  # noqa: BLE001 - tokenizers' panics are BaseException; see below
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
        except Exception as exc:  # noqa: BLE001 - tokenizers rejects a stride too large for the window
            raise InvalidInputError(
                f"cannot cut texts into windows of {self.window} tokens with stride {stride}: {exc}"
            ) from None
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
        except BaseException as exc:  # noqa: BLE001 - tokenizers' panics are BaseException; see below
            _reraise_unless_tokenizer_error(exc)
            if isinstance(exc, Exception):  # tokenizers reports it, e.g. a pair that cannot be truncated
                raise InvalidInputError(f"cannot tokenize the input: {exc}") from None
            raise ProcessorReconstructionError(f"the embedded tokenizer.json fails to tokenize: {exc}; re-embed a "
                                               "tokenizer that transformers can load") from None

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Token ids to text as transformers decodes them, clean_up_tokenization_spaces included (the tokenizer
        config's, as transformers 5 reads it, unless given)."""
        try:
            text = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        except BaseException as exc:  # noqa: BLE001 - tokenizers' panics are BaseException; see below
            _reraise_unless_tokenizer_error(exc)
            raise ProcessorReconstructionError(f"the embedded tokenizer.json fails to decode: {exc}; re-embed a "
                                               "tokenizer that transformers can load") from None
        if self.clean_up_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces:
            for old, new in _CLEAN_UP:
                text = text.replace(old, new)
        return text

    def tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Tokens joined as transformers' convert_tokens_to_string does: through the decoder, no clean-up."""
        decoder = self._tokenizer.decoder
        if decoder is None:
            return " ".join(tokens)
        try:
            return str(decoder.decode(list(tokens)))
        except BaseException as exc:  # noqa: BLE001 - tokenizers' panics are BaseException; see below
            _reraise_unless_tokenizer_error(exc)
            raise ProcessorReconstructionError(f"the embedded tokenizer.json fails to decode: {exc}; re-embed a "
                                               "tokenizer that transformers can load") from None

    def pad(self, encodings: Sequence[Any], dtypes: Mapping[str, Any], *, side: str | None = None) -> dict[str, np.ndarray]:
        """Pad encodings to the longest into arrays named like the model inputs in dtypes, on the tokenizer's
        padding_side unless side says otherwise."""
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


def _vocab_json(config: Mapping[str, Any], missing: str) -> dict[str, int]:
    """The vocab.json a tokenizer config carries under ``vocab`` (embedded at the full level; the target_lang's where
    it nests one per language, as MMS does); missing starts the error when there is none."""
    vocab = config.get("vocab")
    if vocab is None:
        raise ProcessorReconstructionError(
            f"{missing}; re-embed with --include-vocab (python -m authoring embed model.onnx <model> --include-vocab)"
        )
    target_lang = config.get("target_lang")
    if target_lang is not None:  # nested multilingual vocabularies (MMS): one per language
        if not isinstance(vocab, dict) or not isinstance(vocab.get(target_lang), dict):
            raise ProcessorReconstructionError(
                f"{KEY_TOKENIZER_CONFIG}.vocab has no vocabulary for target_lang {target_lang!r}"
            )
        vocab = vocab[target_lang]
    if not isinstance(vocab, dict) or not all(_is_int(i) for i in vocab.values()):
        raise ProcessorReconstructionError(
            f"{KEY_TOKENIZER_CONFIG}.vocab must map tokens to integer ids; re-embed with --include-vocab"
        )
    return vocab


class CTCDecoder:
    """Greedy CTC decoding of argmax ids as transformers' Wav2Vec2CTCTokenizer.decode: repeats collapsed, the
    pad (blank) token dropped, the word delimiter turned into spaces; built from the embedded tokenizer config,
    whose ``vocab`` holds vocab.json (embedded at the full level)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        vocab = _vocab_json(config, "no CTC vocabulary embedded, so this model's output cannot be decoded to text")
        self.tokens = {i: token for token, i in vocab.items()}
        added = config.get("added_tokens_decoder") or {}
        for key, token in (added.items() if isinstance(added, dict) else ()):
            content = _token_content(token)
            if str(key).isdigit() and content is not None:
                self.tokens.setdefault(int(key), content)

        def text(name: str, default: str | None) -> str | None:
            return _token_content(config[name]) if name in config else default

        self.pad_token = text("pad_token", "<pad>")
        self.unk_token = text("unk_token", "<unk>") or "<unk>"
        self.word_delimiter_token = text("word_delimiter_token", "|")
        self.replace_word_delimiter_char = str(config.get("replace_word_delimiter_char", " "))
        self.do_lower_case = bool(config.get("do_lower_case", False))
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        specials = [text(name, None) for name in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                                                 "mask_token")]
        for name in ("additional_special_tokens", "extra_special_tokens"):
            extra = config.get(name)
            specials += [_token_content(t) for t in (extra.values() if isinstance(extra, dict) else extra or [])]
        specials += [_token_content(t) for t in (added.values() if isinstance(added, dict) else ())
                     if isinstance(t, dict) and t.get("special")]
        self.special_tokens = {t for t in specials if t is not None and t != self.word_delimiter_token}

    def _characters(self, ids: Sequence[int], skip_special_tokens: bool) -> tuple[list[str], list[int]]:
        """The tokens of ids with repeats grouped, and each group's length."""
        chars: list[str] = []
        counts: list[int] = []
        for i in ids:
            token = self.tokens.get(int(i), self.unk_token)
            if skip_special_tokens and token in self.special_tokens:
                continue
            if chars and chars[-1] == token:
                counts[-1] += 1
            else:
                chars.append(token)
                counts.append(1)
        return chars, counts

    def _char(self, token: str) -> str:
        return self.replace_word_delimiter_char if token == self.word_delimiter_token else token

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of one sequence of argmax ids (the ASR pipeline decodes CTC ids without skipping special tokens)."""
        chars, _ = self._characters(ids, skip_special_tokens)
        text = "".join(self._char(c) for c in chars if c != self.pad_token).strip()
        if self.do_lower_case:
            text = text.lower()
        if self.clean_up_spaces:
            for old, new in _CLEAN_UP:
                text = text.replace(old, new)
        return text

    def char_offsets(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Each decoded character with its first and past-the-end frame, as decode(output_char_offsets=True)."""
        chars, repetitions = self._characters(ids, False)
        offsets, end = [], 0
        for char, count in zip(chars, repetitions):
            if char != self.pad_token:
                offsets.append({"char": self._char(char), "start_offset": end, "end_offset": end + count})
            end += count
        return offsets

    def word_offsets(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Words (runs of characters between delimiters) with their first and past-the-end frame."""
        words: list[dict[str, Any]] = []
        space = True
        for offset in self.char_offsets(ids):
            if offset["char"] == self.replace_word_delimiter_char:
                space = True
            elif space:
                words.append({"word": offset["char"], "start_offset": offset["start_offset"], "end_offset": offset["end_offset"]})
                space = False
            else:
                words[-1]["word"] += offset["char"]
                words[-1]["end_offset"] = offset["end_offset"]
        return words


VITS_TOKENIZER_CLASS = "VitsTokenizer"


class VitsTokenizer:
    """VITS / MMS-TTS's character tokenizer as transformers' VitsTokenizer encodes a text: ``normalize`` (each
    vocabulary word kept as it is written, other characters lower-cased, then characters outside the vocabulary dropped
    and the ends stripped), the text cut at its added tokens, and with ``add_blank`` the id-0 token between characters
    and at both ends of each piece; no special tokens added. Built from the embedded tokenizer config, whose ``vocab``
    holds vocab.json. ``do_lower_case`` is not read: transformers' VitsTokenizer does not either (normalize
    lower-cases). Texts are phonemized (espeak) or romanized (uroman) by no code here: a tokenizer that phonemizes is
    refused, a romanizing one refuses non-ASCII text."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        if config.get("phonemize", True):  # VitsTokenizer's default
            raise ProcessorReconstructionError(
                "this VITS tokenizer turns text into phonemes with the phonemizer package and espeak (phonemize: true), "
                "which this runtime does not do; MMS-TTS models (phonemize: false) run here"
            )
        self.vocab = _vocab_json(config, "no character vocabulary embedded, so this model cannot tokenize text")
        self.add_blank = bool(config.get("add_blank", True))
        self.normalize = bool(config.get("normalize", True))
        self.is_uroman = bool(config.get("is_uroman", False))
        self.language = config.get("language")
        added = config.get("added_tokens_decoder") or {}
        self.added: dict[str, tuple[int, Mapping[str, Any]]] = {}
        for key, token in sorted(added.items() if isinstance(added, dict) else (), key=lambda kv: int(kv[0])
                                 if str(kv[0]).isdigit() else -1):
            content = _token_content(token)
            if str(key).isdigit() and content:
                self.added[content] = (int(key), token if isinstance(token, dict) else {})
        for name in ("pad_token", "unk_token"):  # transformers adds its special tokens to those it splits at
            content = _token_content(config.get(name, "<pad>" if name == "pad_token" else "<unk>"))
            if content and content not in self.added and content in self.vocab:
                self.added[content] = (self.vocab[content], {})
        unk = _token_content(config.get("unk_token", "<unk>"))
        self.unk_id = self.token_id(unk) if unk else None
        if self.add_blank and 0 not in self.vocab.values():
            raise ProcessorReconstructionError(f"{KEY_TOKENIZER_CONFIG}.vocab has no token of id 0, which add_blank puts "
                                               "between characters; re-embed the model's vocab.json")
        # normalize tries the vocabulary's words in vocab.json's order, as transformers' save_pretrained writes it
        # (sorted), then the added tokens; grouped here by first character
        self._words: dict[str, list[str]] = {}
        for word in [*self.vocab, *self.added]:
            if word:
                self._words.setdefault(word[0], []).append(word)

    def token_id(self, token: str) -> int | None:
        """A token's id as transformers converts it: an added token's, the vocabulary's, else None."""
        return self.added[token][0] if token in self.added else self.vocab.get(token)

    def normalized(self, text: str) -> str:
        """The text as VitsTokenizer.prepare_for_tokenization leaves it."""
        if self.normalize:
            out, i = [], 0
            while i < len(text):
                word = next((w for w in self._words.get(text[i], ()) if text.startswith(w, i)), None)
                out.append(text[i].lower() if word is None else word)
                i += 1 if word is None else len(word)
            text = "".join(out)
        if self.language == "ron":
            text = text.replace("ț", "ţ")
        if self.is_uroman and not text.isascii():
            raise InvalidInputError(
                "this model's tokenizer romanizes non-Roman text with uroman (is_uroman), which this runtime does not "
                "do; romanize the text first (pip install uroman: uroman.Uroman().romanize_string(text))"
            )
        return "".join(c for c in text if c in self.vocab).strip() if self.normalize else text

    def _pieces(self, text: str) -> list[str]:
        """The text cut at its added tokens (the longest first where several start at one place), each kept whole;
        their lstrip, rstrip and single_word as transformers' tokenize applies them."""
        pieces: list[str] = []
        start = i = 0
        while i < len(text):
            token = max((t for t in self.added if text.startswith(t, i)), key=len, default=None)
            if token is None:
                i += 1
                continue
            pieces += [text[start:i], token]
            start = i = i + len(token)
        pieces.append(text[start:])
        for i, piece in enumerate(pieces):
            if i % 2 == 0:
                continue
            flags = self.added[piece][1]
            if flags.get("rstrip") and pieces[i + 1]:
                pieces[i + 1] = pieces[i + 1].lstrip()
            if flags.get("lstrip") and pieces[i - 1]:
                pieces[i - 1] = pieces[i - 1].rstrip()
            if flags.get("single_word"):
                if pieces[i - 1] and pieces[i - 1][-1] != " ":
                    pieces[i - 1], pieces[i] = pieces[i - 1] + piece, ""
                elif pieces[i + 1] and pieces[i + 1][0] != " ":
                    pieces[i + 1], pieces[i] = piece + pieces[i + 1], ""
        return pieces

    def encode(self, text: str) -> list[int]:
        """The input_ids of one text, as VitsTokenizer(text)["input_ids"]."""
        ids: list[int] = []
        blank = next(token for token, i in self.vocab.items() if i == 0) if self.add_blank else ""
        for i, piece in enumerate(self._pieces(self.normalized(text))):
            if not piece:
                continue
            if i % 2 and piece in self.added:
                ids.append(self.added[piece][0])
                continue
            tokens = list(piece)
            if self.add_blank:
                tokens = [blank, *(t for c in tokens for t in (c, blank))]
            for token in tokens:
                found = self.token_id(token)
                if found is None:
                    found = self.unk_id
                if found is None:
                    raise InvalidInputError(f"{token!r} is not in the model's vocabulary and its tokenizer has no "
                                            "unk_token; leave it out of the text")
                ids.append(found)
        return ids


def _max_length(metadata: Mapping[str, Any]) -> int:
    """Longest input the model takes: tokenizer, model and sentence-transformers limits, the smallest."""
    model_config = metadata.get(KEY_MODEL_CONFIG) or {}
    # GPT-2 style configs call it n_positions (n_ctx); Whisper's text is its decoder's, max_target_positions
    positions = next((model_config.get(k) for k in ("max_position_embeddings", "n_positions", "n_ctx", "max_target_positions")
                      if model_config.get(k) is not None), None)
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
            "(max_position_embeddings, n_positions); re-embed from a model that declares one"
        )
    return min(limits)


def load_tokenizer(metadata: Mapping[str, Any]) -> TextTokenizer | CTCDecoder | VitsTokenizer | TokenizerProxy | None:
    """The tokenizer of a model: full when the vocabulary is embedded (tokenizer.json, or the vocab.json of a CTC
    tokenizer or of VITS's character tokenizer), a proxy when only its config is."""
    _check_value_types(metadata)
    config = metadata.get(KEY_TOKENIZER_CONFIG)
    tokenizer_json = metadata.get(KEY_TOKENIZER_JSON)
    if tokenizer_json is not None:
        return TextTokenizer(tokenizer_json, config or {}, _max_length(metadata))
    if config is not None and config.get("vocab") is not None and config.get("tokenizer_class") == VITS_TOKENIZER_CLASS:
        return VitsTokenizer(config)
    if config is not None and config.get("vocab") is not None:  # a CTC tokenizer's vocab.json (Wav2Vec2CTCTokenizer)
        return CTCDecoder(config)
    if config is not None:
        return TokenizerProxy(config)
    return None


# --- Image processor ----------------------------------------------------------------------------------
# transformers' image processors (their PIL backends) rebuilt from preprocessor_config.json alone: Pillow
# decodes and resamples, as transformers does; cropping, rescaling and normalizing are numpy.

_IMAGENET_STANDARD = [0.5, 0.5, 0.5]
_OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225]
# What a field left out of preprocessor_config.json (or null) means: the class attribute of transformers'
# image processor, for every class (_IMAGE_DEFAULTS) and per class (_IMAGE_PROCESSORS, which also lists the
# fields only that class reads: crop_pct, do_flip_channel_order).
_IMAGE_DEFAULTS: dict[str, Any] = {
    "do_resize": None, "size": None, "default_to_square": True, "resample": None, "do_center_crop": None,
    "crop_size": None, "do_rescale": None, "rescale_factor": 1 / 255, "do_normalize": None, "image_mean": None,
    "image_std": None, "do_convert_rgb": None, "do_pad": None,
}
_STANDARD_STEPS = {"do_resize": True, "do_rescale": True, "do_normalize": True}
_IMAGE_PROCESSORS: dict[str, dict[str, Any]] = {
    "ViTImageProcessor": {**_STANDARD_STEPS, "size": {"height": 224, "width": 224}, "resample": 2,
                          "image_mean": _IMAGENET_STANDARD, "image_std": _IMAGENET_STANDARD},
    "DeiTImageProcessor": {**_STANDARD_STEPS, "size": {"height": 256, "width": 256}, "resample": 3, "do_center_crop": True,
                           "crop_size": {"height": 224, "width": 224}, "image_mean": _IMAGENET_STANDARD,
                           "image_std": _IMAGENET_STANDARD},
    "BeitImageProcessor": {**_STANDARD_STEPS, "size": {"height": 224, "width": 224}, "resample": 3, "do_center_crop": False,
                           "crop_size": {"height": 224, "width": 224}, "image_mean": _IMAGENET_STANDARD,
                           "image_std": _IMAGENET_STANDARD},
    "ConvNextImageProcessor": {**_STANDARD_STEPS, "size": {"shortest_edge": 384}, "default_to_square": False, "resample": 3,
                               "image_mean": _IMAGENET_STANDARD, "image_std": _IMAGENET_STANDARD, "crop_pct": 224 / 256},
    "CLIPImageProcessor": {**_STANDARD_STEPS, "size": {"shortest_edge": 224}, "default_to_square": False, "resample": 3,
                           "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "image_mean": _OPENAI_CLIP_MEAN,
                           "image_std": _OPENAI_CLIP_STD, "do_convert_rgb": True},
    "BitImageProcessor": {**_STANDARD_STEPS, "size": {"shortest_edge": 224}, "default_to_square": False, "resample": 3,
                          "do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "image_mean": _OPENAI_CLIP_MEAN,
                          "image_std": _OPENAI_CLIP_STD, "do_convert_rgb": True},
    "OwlViTImageProcessor": {**_STANDARD_STEPS, "size": {"height": 768, "width": 768}, "resample": 3,
                             "do_center_crop": False, "crop_size": {"height": 768, "width": 768},
                             "image_mean": _OPENAI_CLIP_MEAN, "image_std": _OPENAI_CLIP_STD, "do_convert_rgb": True},
    # OWLv2's (_Owlv2ImageProcessor): padded to a square, then resized as scikit-image does, not by Pillow
    "Owlv2ImageProcessor": {**_STANDARD_STEPS, "size": {"height": 960, "width": 960}, "resample": 2,
                            "image_mean": _OPENAI_CLIP_MEAN, "image_std": _OPENAI_CLIP_STD, "do_convert_rgb": True,
                            "do_pad": True},
    "MobileViTImageProcessor": {"do_resize": True, "size": {"shortest_edge": 224}, "default_to_square": False, "resample": 3,
                                "do_center_crop": True, "crop_size": {"height": 256, "width": 256}, "do_rescale": True,
                                "image_mean": _IMAGENET_STANDARD, "image_std": _IMAGENET_STANDARD,
                                "do_flip_channel_order": True},
    # the detection processors (DetectionImageProcessor): size and padding are read there
    **{name: {**_STANDARD_STEPS, "size": {"shortest_edge": 800, "longest_edge": 1333}, "default_to_square": False,
              "resample": 2, "image_mean": _IMAGENET_DEFAULT_MEAN, "image_std": _IMAGENET_DEFAULT_STD, "do_pad": True}
       for name in ("DetrImageProcessor", "ConditionalDetrImageProcessor", "YolosImageProcessor")},
    # MaskFormer's and Mask2Former's: DETR's size rule, each side then rounded up to multiples of size_divisor
    **{name: {**_STANDARD_STEPS, "size": {"shortest_edge": 800, "longest_edge": 1333}, "default_to_square": False,
              "resample": 2, "image_mean": _IMAGENET_DEFAULT_MEAN, "image_std": _IMAGENET_DEFAULT_STD,
              "size_divisor": 32}  # no do_pad: they pad whatever it says
       for name in ("MaskFormerImageProcessor", "Mask2FormerImageProcessor")},
    # the dense-prediction processors (_DenseImageProcessor): DPT (and Depth Anything, which uses it) resizes to size,
    # or as near as the aspect ratio allows, in multiples of ensure_multiple_of, and may pad to multiples of
    # size_divisor; GLPN rounds each image down to multiples of size_divisor; Swin2SR only rescales and pads.
    "DPTImageProcessor": {**_STANDARD_STEPS, "size": {"height": 384, "width": 384}, "resample": 3,
                          "image_mean": _IMAGENET_STANDARD, "image_std": _IMAGENET_STANDARD, "do_pad": False,
                          "keep_aspect_ratio": False, "ensure_multiple_of": 1},
    "GLPNImageProcessor": {"do_resize": True, "resample": 2, "do_rescale": True},
    "Swin2SRImageProcessor": {"do_rescale": True, "do_pad": True},
    # Donut's (_DonutImageProcessor): turned to size's long axis, shortest edge resized, thumbnail, centred padding
    "DonutImageProcessor": {**_STANDARD_STEPS, "size": {"height": 2560, "width": 1920}, "resample": 2,
                            "image_mean": _IMAGENET_STANDARD, "image_std": _IMAGENET_STANDARD, "do_pad": True,
                            "do_thumbnail": True, "do_align_long_axis": False},
    # SegFormer's (UperNet's too): resize to size, rescale, normalize; do_reduce_labels only touches label maps
    "SegformerImageProcessor": {**_STANDARD_STEPS, "size": {"height": 512, "width": 512}, "resample": 2,
                                "image_mean": _IMAGENET_DEFAULT_MEAN, "image_std": _IMAGENET_DEFAULT_STD},
    # transformers.js's base class (configs written for it, e.g. RMBG's, name "ImageFeatureExtractor"): resize to
    # size, rescale, normalize where the config says so, bilinear and 1/255 unless it says otherwise
    "ImageProcessor": {"do_resize": True, "resample": 2, "do_rescale": True},
}
# Class names that are not "<Model>FeatureExtractor" for "<Model>ImageProcessor".
_IMAGE_PROCESSOR_ALIASES = {"ImageFeatureExtractor": "ImageProcessor"}
# The dense-prediction classes that pad, and the size_divisor each pads to by default (DPT: none, no padding).
_PADDING_DIVISORS: dict[str, int | None] = {"DPTImageProcessor": None, "Swin2SRImageProcessor": 8}
# MobileViT's processor never normalizes, whatever do_normalize says.
_NEVER_NORMALIZED = frozenset({"MobileViTImageProcessor"})
# The class transformers picks for a config that names none, from the model config's model_type.
_IMAGE_PROCESSOR_MODEL_TYPES = {
    **dict.fromkeys(("vit", "vit_mae", "vit_msn", "swin", "swinv2", "dinat"), "ViTImageProcessor"),
    "deit": "DeiTImageProcessor",
    **dict.fromkeys(("beit", "data2vec-vision"), "BeitImageProcessor"),
    **dict.fromkeys(("convnext", "convnextv2", "cvt", "resnet", "regnet"), "ConvNextImageProcessor"),
    "clip": "CLIPImageProcessor", "owlvit": "OwlViTImageProcessor", "owlv2": "Owlv2ImageProcessor",
    **dict.fromkeys(("bit", "dinov2", "focalnet"), "BitImageProcessor"),
    **dict.fromkeys(("mobilevit", "mobilevitv2"), "MobileViTImageProcessor"),
    "detr": "DetrImageProcessor", "conditional_detr": "ConditionalDetrImageProcessor", "yolos": "YolosImageProcessor",
    "maskformer": "MaskFormerImageProcessor", "mask2former": "Mask2FormerImageProcessor",
    **dict.fromkeys(("dpt", "depth_anything"), "DPTImageProcessor"),
    "glpn": "GLPNImageProcessor", "swin2sr": "Swin2SRImageProcessor",
    **dict.fromkeys(("segformer", "upernet"), "SegformerImageProcessor"),
}
_NUMBER_NAMES = (int, float)
# JSON types of the fields the image processor reads (null: the class default).
_IMAGE_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb", "do_pad",
                     "default_to_square", "do_flip_channel_order", "keep_aspect_ratio", "do_thumbnail",
                     "do_align_long_axis"), (bool,)),
    **dict.fromkeys(("ensure_multiple_of", "size_divisor"), (int,)),
    "resample": (int,), "rescale_factor": _NUMBER_NAMES, "crop_pct": _NUMBER_NAMES,
    "size": (int, list, dict), "crop_size": (int, list, dict), "image_mean": (int, float, list), "image_std": (int, float, list),
}
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_EXIF_ORIENTATION = 0x0112


def _pil() -> Any:
    """Pillow's Image module; image models need it to decode files and to resample, as transformers does."""
    try:
        from PIL import Image
    except ImportError:
        raise ProcessorReconstructionError(
            "image models need Pillow; pip install Pillow (or the onnxmeta[vision] extra)"
        ) from None
    return Image


def _check_pixels(height: int, width: int, what: str) -> None:
    """Refuse an image of more pixels than Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS)."""
    limit = _pil().MAX_IMAGE_PIXELS
    if limit is not None and height * width > limit:
        raise InvalidInputError(
            f"{what} of {width}x{height} pixels exceeds Pillow's limit of {limit} pixels, a guard against "
            "decompression bombs; if the image is trusted, raise PIL.Image.MAX_IMAGE_PIXELS"
        )


def _image_array(image: np.ndarray) -> np.ndarray:
    """An image array checked: (height, width) or (height, width, 1, 3 or 4 channels); uint8, integers 0-255
    (returned as uint8), or finite floats in [0, 1] or whole numbers 0-255, as transformers tells them apart."""
    shape = tuple(image.shape)
    if image.ndim not in (2, 3) or (image.ndim == 3 and shape[2] not in (1, 3, 4)):
        hint = ("; it looks channels-first: pass np.transpose(image, (1, 2, 0))"
                if image.ndim == 3 and shape[0] in (1, 3, 4) else "; pass a list of images for several")
        raise InvalidInputError(
            f"an image array is (height, width) or (height, width, channels) with 1, 3 or 4 channels; got shape {shape}{hint}"
        )
    if image.size == 0:
        raise InvalidInputError(f"the image array has no pixels (shape {shape})")
    kind = image.dtype.kind
    if image.dtype == np.uint8:
        return image
    if kind in "iu":
        if image.min() < 0 or image.max() > 255:
            raise InvalidInputError(
                f"an integer image array holds values 0-255; got {image.min()}-{image.max()} ({image.dtype}); scale it to uint8"
            )
        return image.astype(np.uint8)
    if kind != "f":
        raise InvalidInputError(f"an image array is uint8 (0-255) or float (0-1); got dtype {image.dtype}")
    if not np.isfinite(image).all():
        raise InvalidInputError("the image array holds NaN or infinite values")
    whole = np.allclose(image, image.astype(np.int64))
    low, high = float(image.min()), float(image.max())
    alpha = image.ndim == 3 and shape[2] == 4
    if low < 0 or high > (1 if alpha or not whole else 255):
        raise InvalidInputError(
            f"a float image array holds values in [0, 1]{'' if alpha else ' (or whole numbers 0-255)'}; got {low}-{high}"
        )
    return image


def _decode(source: Any, name: str) -> Any:
    """A PIL image decoded from a file-like object, pixels loaded; Pillow's failures as InvalidInputError."""
    Image = _pil()
    try:
        image = Image.open(source)
        _check_pixels(image.height, image.width, name)
        image.load()
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(f"{name}: {exc} (PIL.Image.MAX_IMAGE_PIXELS); if the image is trusted, raise it") from None
    except MetadataError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for bad data
        raise InvalidInputError(f"cannot read {name} as an image: {exc}") from None
    return image


def load_image(image: Any) -> Any:
    """An image as transformers' load_image opens it: a path, raw bytes or a PIL.Image becomes an RGB
    PIL.Image with its EXIF orientation applied; a numpy array (height, width[, channels]) is checked and
    returned as an array, as the pipelines pass arrays on. URLs are refused: the runtime never downloads."""
    import io

    Image = _pil()
    if isinstance(image, np.ndarray):
        return _image_array(image)
    if isinstance(image, Image.Image):
        name = "the PIL image"
        try:
            image.load()  # a lazily opened image is decoded here, as exif_transpose does first
        except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types for bad data
            raise InvalidInputError(f"cannot read {name}: {exc}") from None
    elif isinstance(image, (bytes, bytearray, memoryview)):
        name = "the image bytes"
        image = _decode(io.BytesIO(image), name)
    elif isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not isinstance(path, str):
            raise InvalidInputError(f"an image path must be text, got {type(path).__name__}")
        if path.startswith(("http://", "https://")):
            raise InvalidInputError(f"{path} is a URL; the runtime never downloads: fetch the image and pass its path or bytes")
        if not os.path.isfile(path):
            raise InvalidInputError(f"no such image file: {path}")
        name = path
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise InvalidInputError(f"cannot open {path}: {exc.strerror}") from None
        image = _decode(io.BytesIO(data), name)
    else:
        raise InvalidInputError(
            f"an image is a path, raw bytes, a PIL.Image or a numpy array; got {type(image).__name__}"
        )
    if image.width == 0 or image.height == 0:
        raise InvalidInputError(f"{name} has no pixels ({image.width}x{image.height})")
    try:
        # ImageOps.exif_transpose without its copy when the orientation is already upright.
        if image.getexif().get(_EXIF_ORIENTATION, 1) in range(2, 9):
            from PIL import ImageOps

            image = ImageOps.exif_transpose(image)
        # convert() copies an RGB image unchanged, info included: skipping it changes nothing
        return image if image.mode == "RGB" else image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - a malformed EXIF block, a mode Pillow cannot convert (La)
        raise InvalidInputError(f"cannot read {name}: {exc}") from None


def _size_dict(value: Any, default_to_square: bool, field: str) -> dict[str, int]:
    """A size field as transformers' get_size_dict reads it: an int (square, or the shortest edge when
    default_to_square is false), [height, width], or a dict of positive integers."""
    if _is_int(value):
        value = {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    elif isinstance(value, list) and len(value) == 2:
        value = {"height": value[0], "width": value[1]}
    forms = ({"height", "width"},) if field == "crop_size" else ({"height", "width"}, {"shortest_edge"},
                                                                 {"shortest_edge", "longest_edge"})
    if (not isinstance(value, dict) or set(value) not in forms
            or not all(_is_int(v) and v > 0 for v in value.values())):
        raise ProcessorReconstructionError(
            f"{KEY_IMAGE_PROCESSOR_CONFIG}.{field} is {value!r}; this runtime reads "
            f"{' or '.join(str(sorted(f)) for f in forms)} of positive integers"
        )
    return dict(value)


def _resize_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """The (height, width) an image is resized to, as transformers' PIL backend computes it for each size form."""
    if "height" in size:
        return size["height"], size["width"]
    shortest = size["shortest_edge"]
    longest = size.get("longest_edge")
    if longest is None:  # get_resize_output_image_size, default_to_square=False
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(shortest * long / short)
        return (new_long, shortest) if width <= height else (shortest, new_long)
    # get_size_with_aspect_ratio
    raw = None
    low, high = float(min(height, width)), float(max(height, width))
    if high / low * shortest > longest:
        raw = longest * low / high
        shortest = round(raw)
    if (height <= width and height == shortest) or (width <= height and width == shortest):
        return height, width
    if width < height:
        return int((shortest if raw is None else raw) * height / width), shortest
    return shortest, int((shortest if raw is None else raw) * width / height)


def _resize(image: Any, height: int, width: int, resample: int) -> Any:
    """A PIL image resized by Pillow, as transformers' resize does it (no reducing_gap)."""
    if height < 1 or width < 1:
        raise InvalidInputError(f"an image of {image.width}x{image.height} pixels resizes to {width}x{height}: nothing is left")
    _check_pixels(height, width, "the resized image")
    return image.resize((width, height), resample=resample)


def _center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centered (height, width) window of an HWC array, zero-padded where the image is smaller, as
    transformers' center_crop."""
    import math

    old_height, old_width = image.shape[:2]
    top, left = (old_height - height) // 2, (old_width - width) // 2
    if top >= 0 and left >= 0:
        return image[top: top + height, left: left + width]
    new_height, new_width = max(height, old_height), max(width, old_width)
    padded = np.zeros((new_height, new_width, *image.shape[2:]), dtype=image.dtype)
    top_pad, left_pad = math.ceil((new_height - old_height) / 2), math.ceil((new_width - old_width) / 2)
    padded[top_pad: top_pad + old_height, left_pad: left_pad + old_width] = image
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top): min(new_height, top + height), max(0, left): min(new_width, left + width)]


def _rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """image * factor, computed in float64 and stored as float32, as transformers' rescale."""
    return (image.astype(np.float64) * factor).astype(np.float32)


def _normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(image - mean) / std per channel of an HWC array, in the image's float type (float32 for integers),
    as transformers' normalize."""
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    normalized: np.ndarray = (image - np.array(mean, dtype=image.dtype)) / np.array(std, dtype=image.dtype)
    return normalized


def _flip_channel_order(image: np.ndarray) -> np.ndarray:
    """RGB to BGR (or back) of an HWC array."""
    return image[..., ::-1]


def _array_to_rgb(image: np.ndarray) -> np.ndarray:
    """An HWC (or HW) array as 3 channels: grey repeated, alpha composited onto white, as transformers'
    convert_to_rgb does arrays."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=-1)
    if image.shape[2] == 4:
        white = 255 if image.dtype == np.uint8 else 1.0
        alpha = image[..., 3:4] / white
        composite: np.ndarray = alpha * image[..., :3] + (1 - alpha) * white
        return np.round(composite).astype(image.dtype) if white == 255 else composite.astype(image.dtype)
    return image


# transformers.js's base ImageProcessor's steps this runtime does not rebuild (it rebuilds the resize to one
# {height, width}, rescale and normalize, which RMBG's configs ask for).
_UNBUILT_BASE_STEPS = ("do_thumbnail", "do_crop_margin", "size_divisibility", "size_divisor", "pad_size")


def _check_base_steps(config: Mapping[str, Any], size: Mapping[str, int]) -> None:
    """Refuse a transformers.js ImageFeatureExtractor config that asks for a step or size rule not rebuilt here."""
    steps = [key for key in _UNBUILT_BASE_STEPS if config.get(key)]
    if steps or (size and "height" not in size):
        raise ProcessorReconstructionError(
            f"{KEY_IMAGE_PROCESSOR_CONFIG} (transformers.js's ImageFeatureExtractor) asks for "
            f"{', '.join(steps) or f'size {dict(size)}'}; this runtime rebuilds its resize to one {{height, width}}, "
            "rescale and normalize only"
        )


def _pil_to_rgb(image: Any) -> Any:
    """A PIL image as RGB, transparency composited onto white, as transformers' convert_to_rgb."""
    Image = _pil()
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _array_to_pil(image: np.ndarray) -> tuple[Any, bool]:
    """An HWC RGB array as a PIL image, and whether it was scaled from [0, 1] to 0-255 (to undo after
    resizing), as transformers' to_pil_image decides."""
    scaled = image.dtype != np.uint8 and not np.allclose(image, image.astype(np.int64))
    if scaled:
        image = _rescale(image, 255)
    return _pil().fromarray(np.ascontiguousarray(image.astype(np.uint8))), scaled


class ImageProcessor:
    """A transformers image processor (its PIL backend: ViT, DeiT, BEiT, ConvNeXT, CLIP, BiT, MobileViT and
    the models that use them) rebuilt from its preprocessor_config.json alone; no transformers needed.

    Steps in the reference's order: resize (Pillow) -> center crop -> rescale -> normalize -> channel flip.
    ``processor(images)`` gives ``{"pixel_values": float32 array (n, 3, height, width)}``.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        self.name = self._class_name(config)
        values = {**_IMAGE_DEFAULTS, **_IMAGE_PROCESSORS[self.name]}
        for key, default in list(values.items()):
            values[key] = _field(f"{KEY_IMAGE_PROCESSOR_CONFIG}.{key}", config.get(key), _IMAGE_FIELD_TYPES.get(key, (object,)),
                                 default, error=ProcessorReconstructionError)
        if values["do_pad"]:
            raise ProcessorReconstructionError(
                f"{KEY_IMAGE_PROCESSOR_CONFIG}.do_pad is true; padding images to one size is not supported by this runtime"
            )
        _pil()
        self.do_resize = bool(values["do_resize"])
        self.size = _size_dict(values["size"], values["default_to_square"], "size") if self.do_resize else {}
        if self.name == "ImageProcessor":
            _check_base_steps(config, self.size)
        self.resample = values["resample"]
        if self.do_resize and self.resample not in _RESAMPLE_NAMES:
            raise ProcessorReconstructionError(
                f"{KEY_IMAGE_PROCESSOR_CONFIG}.resample is {self.resample!r}; expected one of Pillow's filters "
                f"{', '.join(f'{k} ({v})' for k, v in _RESAMPLE_NAMES.items())}"
            )
        # ConvNeXT resizes the shortest edge to shortest_edge / crop_pct and crops it square below 384, warps above.
        self.crop_pct: float | None = values.get("crop_pct") if self.do_resize else None
        if self.crop_pct is not None and ("shortest_edge" not in self.size or self.crop_pct <= 0):
            raise ProcessorReconstructionError(
                f"{self.name} needs size {{'shortest_edge': N}} and crop_pct > 0; got size {self.size}, crop_pct {self.crop_pct}"
            )
        self.do_center_crop = bool(values["do_center_crop"])
        self.crop_size = _size_dict(values["crop_size"], True, "crop_size") if self.do_center_crop else {}
        self.do_rescale = bool(values["do_rescale"])
        self.rescale_factor = float(values["rescale_factor"])
        self.do_normalize = bool(values["do_normalize"]) and self.name not in _NEVER_NORMALIZED
        self.image_mean = self._channels(values["image_mean"], "image_mean") if self.do_normalize else []
        self.image_std = self._channels(values["image_std"], "image_std") if self.do_normalize else []
        if 0 in self.image_std:
            raise ProcessorReconstructionError(f"{KEY_IMAGE_PROCESSOR_CONFIG}.image_std is {self.image_std}: it divides by zero")
        self.do_convert_rgb = bool(values["do_convert_rgb"])
        self.channel_order = (2, 1, 0) if values.get("do_flip_channel_order") else (0, 1, 2)
        # Rescale and normalize map each 0-255 value of a channel to one float: tables of what the steps give
        # for every byte (also after transformers' [0, 1] -> 0-255 -> [0, 1] round trip through Pillow).
        ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
        self._tables = {scaled: np.ascontiguousarray(self._values(_rescale(ramp, 1 / 255) if scaled else ramp)[0].T)
                        for scaled in (False, True)}

    @staticmethod
    def _class_name(config: Mapping[str, Any]) -> str:
        name = config.get("image_processor_type")
        if name is None and isinstance(config.get("feature_extractor_type"), str):
            # transformers reads an old ViTFeatureExtractor config as ViTImageProcessor
            name = config["feature_extractor_type"]
            name = _IMAGE_PROCESSOR_ALIASES.get(name) or name.replace("FeatureExtractor", "ImageProcessor")
        if not isinstance(name, str):
            raise ProcessorReconstructionError(
                f"{KEY_IMAGE_PROCESSOR_CONFIG} names no image processor class (image_processor_type); re-embed from "
                "a model folder with its processor files (preprocessor_config.json or processor_config.json)"
            )
        base = name.removesuffix("Fast").removesuffix("Pil")
        if base not in _IMAGE_PROCESSORS:
            raise ProcessorReconstructionError(
                f"image processor {name!r} is not supported by this runtime; supported: {', '.join(sorted(_IMAGE_PROCESSORS))}"
            )
        return base

    @staticmethod
    def _channels(value: Any, field: str) -> list[float]:
        values = [value] * 3 if isinstance(value, (int, float)) else value
        if (not isinstance(values, list) or len(values) != 3
                or not all(_is_number(v) for v in values)):
            raise ProcessorReconstructionError(
                f"{KEY_IMAGE_PROCESSOR_CONFIG}.{field} is {value!r}; expected a number or 3 numbers (one per RGB channel)"
            )
        return [float(v) for v in values]

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every processed image, or None when it depends on the image."""
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        if self.crop_pct is not None:
            return self.size["shortest_edge"], self.size["shortest_edge"]
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        return None

    def _values(self, image: np.ndarray) -> np.ndarray:
        """Rescale and normalize of an HWC array, as float32."""
        if self.do_rescale:
            image = _rescale(image, self.rescale_factor)
        if self.do_normalize:
            image = _normalize(image, self.image_mean, self.image_std)
        return image.astype(np.float32, copy=False)

    def target_size(self, height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
        """The (height, width) an image of height x width is resized to."""
        return _resize_size(height, width, size)

    def process(self, image: Any) -> np.ndarray:
        """One image (a PIL.Image, an HWC array, or what load_image opens) as (3, height, width) float32 pixels."""
        Image = _pil()
        if isinstance(image, Image.Image):
            try:
                image.load()
            except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types for bad data
                raise InvalidInputError(f"cannot read the PIL image: {exc}") from None
            if image.width == 0 or image.height == 0:
                raise InvalidInputError(f"the PIL image has no pixels ({image.width}x{image.height})")
            # Without do_convert_rgb transformers fails on anything but RGB; an RGB conversion is what works.
            try:
                pil: Any = _pil_to_rgb(image) if self.do_convert_rgb else image if image.mode == "RGB" else image.convert("RGB")
            except ValueError as exc:  # a mode Pillow cannot convert (La)
                raise InvalidInputError(f"cannot convert the PIL image to RGB: {exc}") from None
            array = None
        else:
            loaded = load_image(image)
            if isinstance(loaded, np.ndarray):
                pil, array = None, _array_to_rgb(loaded)
            else:
                pil, array = loaded, None
        scaled = False
        if self.do_resize:
            if pil is None and array is not None:
                pil, scaled = _array_to_pil(array)
            if self.crop_pct is not None:
                edge = self.size["shortest_edge"]
                size = {"shortest_edge": int(edge / self.crop_pct)} if edge < 384 else {"height": edge, "width": edge}
            else:
                size = self.size
            pil = _resize(pil, *self.target_size(pil.height, pil.width, size), self.resample)
            array = np.asarray(pil)
            if self.crop_pct is not None and self.size["shortest_edge"] < 384:
                array = _center_crop(array, self.size["shortest_edge"], self.size["shortest_edge"])
        elif array is None:
            array = np.asarray(pil)
        if self.do_center_crop:
            array = _center_crop(array, self.crop_size["height"], self.crop_size["width"])
        return self._pixels(array, scaled)

    def _pixels(self, array: np.ndarray, scaled: bool) -> np.ndarray:
        """An HWC image rescaled and normalized (by table for bytes; scaled: bytes of a [0, 1] image) as CHW float32."""
        if array.dtype != np.uint8:
            values = self._values(array)
            return np.ascontiguousarray(values[..., list(self.channel_order)].transpose(2, 0, 1))
        table = self._tables[scaled]
        out = np.empty((3, *array.shape[:2]), dtype=np.float32)
        for channel, source in enumerate(self.channel_order):
            np.take(table[source], array[..., source], out=out[channel], mode="clip")
        return out

    def __call__(self, images: Sequence[Any]) -> dict[str, np.ndarray]:
        """Process a list of images (or one) into ``{"pixel_values": (n, 3, height, width) float32}``."""
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise InvalidInputError("no images given; pass an image or a list of images")
        pixels = [self.process(image) for image in items]
        shapes = sorted({p.shape for p in pixels})
        if len(shapes) > 1:
            raise InvalidInputError(
                f"the images process to different shapes {shapes} (this processor keeps the aspect ratio); process them "
                "one at a time"
            )
        return {"pixel_values": np.stack(pixels)}

    def __repr__(self) -> str:
        return f"ImageProcessor({self.name}, output size {self.output_size or 'per image'})"


_DETECTION_PROCESSORS = frozenset({"DetrImageProcessor", "ConditionalDetrImageProcessor", "YolosImageProcessor",
                                   "MaskFormerImageProcessor", "Mask2FormerImageProcessor"})
_DIVISOR_PADDED = frozenset({"MaskFormerImageProcessor", "Mask2FormerImageProcessor"})  # always padded; size_divisor
_DETR_SIZE: dict[str, int] = _IMAGE_PROCESSORS["DetrImageProcessor"]["size"]  # its size, and max_size, left out


def _detection_size(config: Mapping[str, Any]) -> dict[str, int]:
    """DETR's size field as its __init__ reads it: an int is the shortest edge, max_size (1333 when left out) the
    longest; a dict is {shortest_edge, longest_edge} or {height, width}."""
    size = config.get("size")
    if size is None:
        return dict(_DETR_SIZE)
    if _is_int(size):
        size = {"shortest_edge": size, "longest_edge": config.get("max_size", _DETR_SIZE["longest_edge"])}
    if (not isinstance(size, dict) or set(size) not in ({"shortest_edge", "longest_edge"}, {"height", "width"})
            or not all(_is_int(v) and v > 0 for v in size.values())):
        raise ProcessorReconstructionError(
            f"{KEY_IMAGE_PROCESSOR_CONFIG}.size is {size!r} (max_size {config.get('max_size')!r}); this runtime reads "
            "{shortest_edge, longest_edge} or {height, width} of positive integers for DETR-style processors"
        )
    return dict(size)


def _yolos_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """The (height, width) YOLOS resizes an image to: DETR's rule with its own order of cases, rounded down to
    multiples of 16 (get_size_with_aspect_ratio_yolos)."""
    if "height" in size:
        return size["height"], size["width"]
    shortest, longest = size["shortest_edge"], size["longest_edge"]
    raw = None
    low, high = float(min(height, width)), float(max(height, width))
    if high / low * shortest > longest:
        raw = longest * low / high
        shortest = round(raw)
    edge = shortest if raw is None else raw
    if width < height:
        new_height, new_width = int(edge * height / width), shortest
    elif (height <= width and height == shortest) or (width <= height and width == shortest):
        new_height, new_width = height, width
    else:
        new_height, new_width = shortest, int(edge * width / height)
    return new_height - new_height % 16, new_width - new_width % 16


def _pad_bottom_right(pixels: Sequence[np.ndarray], size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(3, height, width) arrays zero-padded at the bottom and right to the largest height and width among them (or
    to size), stacked, and their pixel_mask: 1 on the image, 0 on the padding (int64), as DETR's pad."""
    height = max(p.shape[1] for p in pixels) if size is None else size[0]
    width = max(p.shape[2] for p in pixels) if size is None else size[1]
    values = np.zeros((len(pixels), 3, height, width), dtype=np.float32)
    mask = np.zeros((len(pixels), height, width), dtype=np.int64)
    for i, p in enumerate(pixels):
        if p.shape[1] > height or p.shape[2] > width:
            raise InvalidInputError(f"an image processes to {p.shape[1]}x{p.shape[2]} pixels, larger than the pad_size "
                                    f"{height}x{width} of the image processor")
        values[i, :, :p.shape[1], :p.shape[2]] = p
        mask[i, :p.shape[1], :p.shape[2]] = 1
    return values, mask


class DetectionImageProcessor(ImageProcessor):
    """DETR's, Conditional DETR's, YOLOS's, MaskFormer's and Mask2Former's image processors (their PIL backends):
    ImageProcessor's steps with their size rules (the shortest edge, the longest capped; YOLOS's multiples of 16;
    MaskFormer's sides rounded up to multiples of size_divisor), and images padded at the bottom and right to the
    batch's largest with a pixel_mask. ``processor(images)`` gives ``{"pixel_values", "pixel_mask"}``."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        where = KEY_IMAGE_PROCESSOR_CONFIG
        do_pad = _field(f"{where}.do_pad", config.get("do_pad", config.get("pad_and_return_pixel_mask")), (bool,), True,
                        error=ProcessorReconstructionError)
        pad_size = _field(f"{where}.pad_size", config.get("pad_size"), (dict,), error=ProcessorReconstructionError)
        if pad_size is not None and (set(pad_size) != {"height", "width"}
                                     or not all(_is_int(v) and v > 0 for v in pad_size.values())):
            raise ProcessorReconstructionError(f"{where}.pad_size is {pad_size!r}; expected {{height, width}} of positive "
                                               "integers")
        super().__init__({**config, "do_pad": False, "size": _detection_size(config)})
        self.config = dict(config)
        # MaskFormer's and Mask2Former's pad whatever do_pad says (they read none)
        self.do_pad = do_pad or self.name in _DIVISOR_PADDED
        self.pad_size = None if pad_size is None else (pad_size["height"], pad_size["width"])
        self.size_divisor = 0
        if self.name in _DIVISOR_PADDED:
            self.size_divisor = _field(f"{where}.size_divisor", config.get("size_divisor"), (int,),
                                       _IMAGE_PROCESSORS[self.name]["size_divisor"], low=0,
                                       error=ProcessorReconstructionError)

    def target_size(self, height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
        if self.name == "YolosImageProcessor":
            return _yolos_size(height, width, size)
        height, width = _resize_size(height, width, size)
        if self.size_divisor:  # MaskFormer's resize: each side up to a multiple of size_divisor
            height, width = (-(-side // self.size_divisor) * self.size_divisor for side in (height, width))
        return height, width

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every processed image (a {height, width} size, rounded as target_size rounds it), or None."""
        if "height" not in self.size:
            return super().output_size
        return self.target_size(1, 1, self.size)

    def __call__(self, images: Sequence[Any]) -> dict[str, np.ndarray]:
        """Process a list of images (or one) into ``{"pixel_values": (n, 3, height, width) float32, "pixel_mask":
        (n, height, width) int64}``, padded to the largest (without do_pad: pixel_values of images of one shape)."""
        if not self.do_pad:
            return super().__call__(images)
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise InvalidInputError("no images given; pass an image or a list of images")
        values, mask = _pad_bottom_right([self.process(image) for image in items], self.pad_size)
        return {"pixel_values": values, "pixel_mask": mask}


def _multiple_of(value: float, multiple: int) -> int:
    """value rounded to a multiple of multiple, as DPT's constrain_to_multiple_of (no bounds; Python's round)."""
    import math

    rounded = round(value / multiple) * multiple
    return rounded if rounded >= 0 else math.ceil(value / multiple) * multiple


def _dpt_size(height: int, width: int, size: Mapping[str, int], keep_aspect_ratio: bool, multiple: int) -> tuple[int, int]:
    """The (height, width) DPT resizes an image to: size, or with keep_aspect_ratio one scale for both sides (the
    one nearer 1), each side a multiple of ensure_multiple_of (get_resize_output_image_size)."""
    scale_height, scale_width = size["height"] / height, size["width"] / width
    if keep_aspect_ratio:
        if abs(1 - scale_width) < abs(1 - scale_height):
            scale_height = scale_width
        else:
            scale_width = scale_height
    return _multiple_of(scale_height * height, multiple), _multiple_of(scale_width * width, multiple)


def _pad_centered(pixels: np.ndarray, divisor: int) -> np.ndarray:
    """A (3, height, width) array zero-padded on both sides of each axis (the odd pixel after) up to multiples of
    divisor, as DPT's pad_image."""
    def sides(length: int) -> tuple[int, int]:
        pad = -(-length // divisor) * divisor - length
        return pad // 2, pad - pad // 2

    padded: np.ndarray = np.pad(pixels, ((0, 0), sides(pixels.shape[1]), sides(pixels.shape[2])))
    return padded


def _pad_symmetric(pixels: np.ndarray, divisor: int) -> np.ndarray:
    """A (3, height, width) array padded at the bottom and right by mirroring (numpy's symmetric mode) past the next
    multiple of divisor (a whole divisor more when it is one already), as Swin2SR's pad."""
    height, width = pixels.shape[1:]
    bottom, right = (height // divisor + 1) * divisor - height, (width // divisor + 1) * divisor - width
    padded: np.ndarray = np.pad(pixels, ((0, 0), (0, bottom), (0, right)), mode="symmetric")
    return padded


_DENSE_PROCESSORS = frozenset({"DPTImageProcessor", "GLPNImageProcessor", "Swin2SRImageProcessor"})


class _DenseImageProcessor(ImageProcessor):
    """DPT's (Depth Anything's), GLPN's and Swin2SR's image processors (their PIL backends): ImageProcessor's steps
    with their sizes (DPT: size kept to the aspect ratio and multiples; GLPN: rounded down to multiples of
    size_divisor) and their padding of each image after the other steps (DPT: zeros, centred; Swin2SR: mirrored)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        name = self._class_name(config)
        where = KEY_IMAGE_PROCESSOR_CONFIG
        values = _IMAGE_PROCESSORS[name]

        def read(key: str, low: int | None = None) -> Any:
            # pad_size, only read for Swin2SR here, is an int (DETR's is {height, width}, read there)
            return _field(f"{where}.{key}", config.get(key), _IMAGE_FIELD_TYPES.get(key, (int,)), values.get(key), low=low,
                          error=ProcessorReconstructionError)

        self.do_pad = bool(read("do_pad")) if name in _PADDING_DIVISORS else False
        # Swin2SR's legacy pad_size is its size_divisor where that is left out
        divisor = read("size_divisor", 1) or (read("pad_size", 1) if name == "Swin2SRImageProcessor" else None)
        self.size_divisor: int | None = divisor or (32 if name == "GLPNImageProcessor" else _PADDING_DIVISORS.get(name))
        self.keep_aspect_ratio = bool(read("keep_aspect_ratio")) if name == "DPTImageProcessor" else False
        self.ensure_multiple_of = int(read("ensure_multiple_of", 1)) if name == "DPTImageProcessor" else 1
        # GLPN reads no size: each image is rounded down to multiples of size_divisor (target_size)
        placeholder = {"size": {"height": 1, "width": 1}} if name == "GLPNImageProcessor" else {}
        super().__init__({**config, **placeholder, "do_pad": False})
        self.config = dict(config)
        if self.do_resize and name == "DPTImageProcessor" and "height" not in self.size:
            raise ProcessorReconstructionError(f"{where}.size is {self.size}; DPT's processor reads {{height, width}}")

    def target_size(self, height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
        if self.name == "GLPNImageProcessor" and self.size_divisor:
            return height // self.size_divisor * self.size_divisor, width // self.size_divisor * self.size_divisor
        return _dpt_size(height, width, size, self.keep_aspect_ratio, self.ensure_multiple_of)

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every processed image: DPT's without keep_aspect_ratio; None for the others."""
        if self.name != "DPTImageProcessor" or self.keep_aspect_ratio or not self.do_resize:
            return None
        height, width = (_multiple_of(self.size[side], self.ensure_multiple_of) for side in ("height", "width"))
        if self.do_pad and self.size_divisor:
            height, width = (-(-n // self.size_divisor) * self.size_divisor for n in (height, width))
        return height, width

    def process(self, image: Any) -> np.ndarray:
        pixels = super().process(image)
        if not self.do_pad or self.size_divisor is None:
            return pixels
        return (_pad_symmetric if self.name == "Swin2SRImageProcessor" else _pad_centered)(pixels, self.size_divisor)


def _mirror_blur(image: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d of a float32 array along axis (truncated at 4 sigma, mode "mirror": the edge
    sample not repeated), computed in float64 and stored as float32."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 / (sigma * sigma) * offsets ** 2)
    weights /= weights.sum()
    moved = np.moveaxis(image.astype(np.float64), axis, 0)
    length = moved.shape[0]
    index = np.abs(np.arange(-radius, length + radius))  # mirrored about the first and the last sample
    if length > 1:
        period = 2 * (length - 1)
        index = index % period
        index = np.where(index >= length, period - index, index)
    else:
        index = np.zeros_like(index)
    padded = moved[index]
    out = np.zeros_like(moved)
    for k, weight in enumerate(weights):
        out += weight * padded[k: k + length]
    return np.moveaxis(out, 0, axis).astype(np.float32)


def _mirror_zoom(image: np.ndarray, length: int, axis: int) -> np.ndarray:
    """scipy.ndimage.zoom with order 1, mode "mirror" and grid_mode along axis, to length samples: linear
    interpolation at (i + 0.5) * old / new - 0.5, coordinates mirrored about the first and last samples; float64."""
    old = image.shape[axis]
    if old == 1:
        return np.repeat(image, length, axis=axis)
    coords = (np.arange(length, dtype=np.float64) + 0.5) * (old / length) - 0.5
    coords = np.abs(coords)
    coords = np.where(coords > old - 1, 2 * (old - 1) - coords, coords)
    low = np.clip(np.floor(coords).astype(np.int64), 0, old - 1)
    high = np.where(low + 1 > old - 1, 2 * (old - 1) - (low + 1), low + 1)
    shape = [1] * image.ndim
    shape[axis] = length
    fraction = (coords - low).reshape(shape)
    out: np.ndarray = np.take(image, low, axis=axis) * (1 - fraction) + np.take(image, high, axis=axis) * fraction
    return out


class _Owlv2ImageProcessor(ImageProcessor):
    """OWLv2's image processor (its PIL backend): rescale, zero-pad at the bottom and right to a square, resize as
    scikit-image does (a Gaussian blur of sigma (factor - 1) / 2 when shrinking, then linear interpolation, scipy's mirror
    edges), clip to the padded image's range, normalize; in numpy (within 1e-5 of scipy's)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__({**config, "do_pad": False})
        self.do_pad = bool(_field(f"{KEY_IMAGE_PROCESSOR_CONFIG}.do_pad", config.get("do_pad"), (bool,), True,
                                  error=ProcessorReconstructionError))

    def process(self, image: Any) -> np.ndarray:
        loaded = load_image(image)
        if isinstance(loaded, np.ndarray):
            array = _array_to_rgb(loaded)
        else:
            try:
                array = np.asarray(_pil_to_rgb(loaded))
            except ValueError as exc:  # a mode Pillow cannot convert (La)
                raise InvalidInputError(f"cannot convert the PIL image to RGB: {exc}") from None
        pixels = _rescale(array, self.rescale_factor) if self.do_rescale else array.astype(np.float32)
        if self.do_pad:
            side = max(pixels.shape[:2])
            pixels = np.pad(pixels, ((0, side - pixels.shape[0]), (0, side - pixels.shape[1]), (0, 0)))
        if self.do_resize:
            low, high = pixels.min(), pixels.max()
            target = (self.size["height"], self.size["width"])
            for axis in (0, 1):
                sigma = max(0.0, (pixels.shape[axis] / target[axis] - 1) / 2)
                if sigma > 1e-15:
                    pixels = _mirror_blur(pixels, sigma, axis)
            zoomed = _mirror_zoom(_mirror_zoom(pixels.astype(np.float64), target[0], 0), target[1], 1)
            pixels = np.clip(zoomed.astype(np.float32), low, high)
        if self.do_normalize:
            pixels = _normalize(pixels, self.image_mean, self.image_std)
        return np.ascontiguousarray(pixels.astype(np.float32, copy=False).transpose(2, 0, 1))


def _thumbnail_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """The (height, width) Donut's thumbnail shrinks an image to: within size, its aspect ratio kept (rounded down)."""
    new_height, new_width = min(height, size["height"]), min(width, size["width"])
    if (new_height, new_width) == (height, width):
        return height, width
    if height > width:
        new_width = int(width * new_height / height)
    elif width > height:
        new_height = int(height * new_width / width)
    return new_height, new_width


def _pad_around(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """An HWC image zero-padded to height x width, the image centred (the odd pixel after it), as Donut pads."""
    top, left = (height - array.shape[0]) // 2, (width - array.shape[1]) // 2
    return np.pad(array, ((top, height - array.shape[0] - top), (left, width - array.shape[1] - left), (0, 0)))


class _DonutImageProcessor(ImageProcessor):
    """Donut's image processor (its PIL backend): an image whose long axis is not size's turned a quarter clockwise
    (do_align_long_axis), its shortest edge resized to size's shorter side, shrunk to fit size with its aspect ratio
    kept (do_thumbnail: bicubic unless resample names a filter), zero-padded around its centre to size (do_pad), then
    rescaled and normalized. size may be a [width, height] list, as Donut reads it."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        defaults = _IMAGE_PROCESSORS["DonutImageProcessor"]
        size = config.get("size")
        size = size[::-1] if isinstance(size, list) else size
        super().__init__({**config, "size": size, "do_pad": False})
        self.config = dict(config)

        def read(key: str) -> bool:
            return bool(_field(f"{KEY_IMAGE_PROCESSOR_CONFIG}.{key}", config.get(key), (bool,), defaults[key],
                               error=ProcessorReconstructionError))

        self.do_pad, self.do_thumbnail, self.do_align_long_axis = read("do_pad"), read("do_thumbnail"), read("do_align_long_axis")
        self.target = _size_dict(defaults["size"] if size is None else size, True, "size")
        if "height" not in self.target:
            raise ProcessorReconstructionError(f"{KEY_IMAGE_PROCESSOR_CONFIG}.size is {size!r}; Donut's processor reads "
                                               "{height, width} or [width, height]")

    @property
    def output_size(self) -> tuple[int, int] | None:
        return (self.target["height"], self.target["width"]) if self.do_pad else None

    def process(self, image: Any) -> np.ndarray:
        Image = _pil()
        loaded = load_image(image)
        scaled = False
        if isinstance(loaded, np.ndarray):
            pil, scaled = _array_to_pil(_array_to_rgb(loaded))
        else:
            try:
                pil = _pil_to_rgb(loaded)
            except ValueError as exc:  # a mode Pillow cannot convert (La)
                raise InvalidInputError(f"cannot convert the PIL image to RGB: {exc}") from None
        height, width = self.target["height"], self.target["width"]
        if self.do_align_long_axis and ((width < height and pil.width > pil.height)
                                        or (width > height and pil.width < pil.height)):
            pil = pil.transpose(Image.Transpose.ROTATE_270)
        if self.do_resize:
            pil = _resize(pil, *_resize_size(pil.height, pil.width, {"shortest_edge": min(height, width)}), self.resample)
        if self.do_thumbnail:
            shrunk = _thumbnail_size(pil.height, pil.width, self.target)
            if shrunk != (pil.height, pil.width):
                pil = _resize(pil, *shrunk, self.resample or 3)
        array = np.asarray(pil)
        if self.do_pad:
            if array.shape[0] > height or array.shape[1] > width:
                raise InvalidInputError(f"the image is {array.shape[1]}x{array.shape[0]} after resizing, larger than the "
                                        f"{width}x{height} Donut pads to (its processor's do_thumbnail is off)")
            array = _pad_around(array, height, width)
        return self._pixels(array, scaled)


def load_image_processor(metadata: Mapping[str, Any]) -> ImageProcessor | None:
    """The image processor of a model, rebuilt from hf_image_processor_config (the class named there, else
    the one transformers uses for the model config's model_type); None when none is embedded."""
    config = metadata.get(KEY_IMAGE_PROCESSOR_CONFIG)
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ProcessorReconstructionError(f"{KEY_IMAGE_PROCESSOR_CONFIG} must be an object, got {_json_type(config)}")
    if config.get("image_processor_type") is None and config.get("feature_extractor_type") is None:
        model_type = (metadata.get(KEY_MODEL_CONFIG) or {}).get("model_type")
        if model_type in _IMAGE_PROCESSOR_MODEL_TYPES:
            config = {**config, "image_processor_type": _IMAGE_PROCESSOR_MODEL_TYPES[model_type]}
    if ImageProcessor._class_name(config) in _DETECTION_PROCESSORS:
        return DetectionImageProcessor(config)
    if ImageProcessor._class_name(config) == "Owlv2ImageProcessor":
        return _Owlv2ImageProcessor(config)
    if ImageProcessor._class_name(config) == "DonutImageProcessor":
        return _DonutImageProcessor(config)
    if ImageProcessor._class_name(config) in _DENSE_PROCESSORS:
        return _DenseImageProcessor(config)
    return ImageProcessor(config)


# torch's bilinear interpolation (align_corners=False) in numpy: semantic segmentation brings logits to the image's
# size with it, CLAP's feature extractor shrinks a long clip's whole mel spectrogram.

def _linear_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each of target positions, the 2 source positions it reads and their weights, as torch's
    upsample_bilinear2d with align_corners=False computes them (in float32: centres aligned, scale source / target,
    positions before the first clamped to it)."""
    scale = np.float32(source / target)
    real = np.maximum(scale * (np.arange(target, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    low = real.astype(np.int64)
    high = np.minimum(low + 1, source - 1)
    far = np.clip(real - low.astype(np.float32), np.float32(0), np.float32(1))
    return low, high, (np.float32(1) - far).astype(np.float32), far.astype(np.float32)


def _bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., h, w) maps resized to (..., height, width) in float32 as torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False): along each row, then down each column."""
    source = maps.astype(np.float32, copy=False)
    low, high, near, far = _linear_taps(source.shape[-1], width)
    wide = source[..., low] * near + source[..., high] * far
    low, high, near, far = _linear_taps(source.shape[-2], height)
    out: np.ndarray = wide[..., low, :] * near[:, None] + wide[..., high, :] * far[:, None]
    return out


# --- Audio feature extractors -------------------------------------------------------------------------
#
# Audio inputs become mono float32 waveforms at the model's sampling rate (load_audio), then the features
# the graph takes, computed in numpy exactly as transformers computes them in the pipeline: Whisper's
# log-mel spectrogram, Wav2Vec2's normalized waveform, the Audio Spectrogram Transformer's Kaldi filter
# bank, CLAP's dB mels (cut, repeated or fused). CTCDecoder turns the argmax ids of a CTC model into text as
# Wav2Vec2CTCTokenizer does.

_WAVE_PCM, _WAVE_FLOAT, _WAVE_EXTENSIBLE = 1, 3, 0xFFFE
# WAV encodings decoded here: (format tag, bits per sample) -> numpy dtype of one sample.
_WAV_DTYPES = {(_WAVE_PCM, 8): "u1", (_WAVE_PCM, 16): "<i2", (_WAVE_PCM, 24): "<i4", (_WAVE_PCM, 32): "<i4",
               (_WAVE_FLOAT, 32): "<f4", (_WAVE_FLOAT, 64): "<f8"}
_WAV_UNKNOWN_SIZE = 0xFFFFFFFF  # what streaming writers put in a data chunk whose length they did not know
_RESAMPLE_BLOCK = 1 << 20  # numbers per block of the resampler's matrix product: bounds its memory
# Bounds on the sizes a feature extractor config may ask for: far above any model's, far below exhausting memory.
_MAX_MEL_BINS, _MAX_FFT, _MAX_RATE, _MAX_FRAMES, _MAX_CHUNK_SAMPLES = 1024, 1 << 14, 1_000_000, 1 << 16, 1 << 27


def _wav_error(name: str, what: str) -> InvalidInputError:
    return InvalidInputError(f"{name} is not a readable WAV file: {what}")


def _le(data: bytes, start: int, size: int) -> int:
    return int.from_bytes(data[start: start + size], "little")


def _read_wav(data: bytes, name: str) -> tuple[np.ndarray, int] | None:
    """Samples (frames, channels) in [-1, 1] and the rate of a RIFF/WAVE file: PCM 8/16/24/32-bit and IEEE
    float, plain or WAVE_FORMAT_EXTENSIBLE; None for other encodings (A-law, ADPCM...)."""
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk, size, body = data[pos: pos + 4], _le(data, pos + 4, 4), pos + 8
        if chunk == b"fmt ":
            if size < 16 or body + size > len(data):
                raise _wav_error(name, "its fmt chunk is truncated")
            tag, channels = _le(data, body, 2), _le(data, body + 2, 2)
            rate, bits = _le(data, body + 4, 4), _le(data, body + 14, 2)
            if tag == _WAVE_EXTENSIBLE and size >= 40:
                tag = _le(data, body + 24, 2)  # the SubFormat GUID begins with the plain format tag
            fmt = (tag, channels, rate, bits)
        elif chunk == b"data":
            if fmt is None:
                raise _wav_error(name, "its data chunk comes before its fmt chunk")
            end = len(data) if size == _WAV_UNKNOWN_SIZE else body + size
            if end > len(data):
                raise _wav_error(name, f"its data chunk declares {size} bytes but {len(data) - body} remain (truncated file)")
            tag, channels, rate, bits = fmt
            dtype = _WAV_DTYPES.get((tag, bits))
            if dtype is None:
                return None
            if channels < 1 or rate < 1:
                raise _wav_error(name, f"it declares {channels} channels at {rate} Hz")
            raw = data[body:end]
            raw = raw[: len(raw) - len(raw) % (bits // 8 * channels)]  # a partial last frame is dropped
            if bits == 24:  # three bytes a sample: widened to int32 with a zero low byte
                wide = np.zeros((len(raw) // 3, 4), dtype=np.uint8)
                wide[:, 1:] = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
                raw = wide.tobytes()
            samples = np.frombuffer(raw, dtype=dtype).reshape(-1, channels)
            if tag == _WAVE_FLOAT:
                return samples.astype(np.float32), rate
            if bits == 8:  # 8-bit WAV is unsigned, centred on 128
                return ((samples.astype(np.float64) - 128.0) / 128.0).astype(np.float32), rate
            return (samples / float(2 ** (8 * np.dtype(dtype).itemsize - 1))).astype(np.float32), rate
        pos = body + size + (size & 1)
    raise _wav_error(name, "it has no fmt chunk" if fmt is None else "it has no data chunk")


def _read_audio_file(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Samples (frames, channels) and rate of an audio file's bytes: WAV here, other formats through soundfile."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        read = _read_wav(data, name)
        if read is not None:
            return read
    try:
        import soundfile  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise InvalidInputError(
            f"{name} is not a WAV file this runtime decodes; other formats (FLAC, OGG, MP3, ...) are read through "
            "the soundfile package: pip install soundfile (or the onnxmeta[audio] extra)"
        ) from None
    import io

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        raise InvalidInputError(f"{name} is not an audio file soundfile can read: {exc}") from None
    return samples, int(rate)


def _sampling_rate(value: Any) -> int:
    """A caller's sampling rate as a positive integer number of Hz."""
    if isinstance(value, bool) or (not isinstance(value, (int, float)) and not hasattr(value, "__index__")):
        raise InvalidInputError(f"sampling_rate must be a number of Hz, got {value!r}")
    rate = float(value)
    if not 0 < rate < float("inf") or rate != int(rate):
        raise InvalidInputError(f"sampling_rate must be a positive whole number of Hz, got {value!r}")
    return int(rate)


def _waveform(audio: Any) -> np.ndarray:
    """A caller's array as a mono float32 waveform: PCM integers scaled to [-1, 1] as soundfile reads them,
    (channels, samples) averaged as transformers' ASR pipeline does; NaN, infinities and other dtypes refused."""
    if not isinstance(audio, np.ndarray):
        batch = " (a list is a batch of clips, not the samples of one)" if isinstance(audio, (int, float)) else ""
        raise InvalidInputError(
            f"audio must be a numpy array of samples, a {{'raw': array, 'sampling_rate': rate}} dict, a file path or "
            f"the bytes of a file; got {type(audio).__name__}{batch}"
        )
    if audio.dtype.kind == "f":
        samples = audio.astype(np.float32, copy=False)
    elif audio.dtype.kind in "iu":
        half = float(2 ** (8 * audio.dtype.itemsize - 1))
        offset = half if audio.dtype.kind == "u" else 0.0
        samples = ((audio.astype(np.float64) - offset) / half).astype(np.float32)
    else:
        raise InvalidInputError(f"audio samples must be floats or PCM integers, got dtype {audio.dtype}")
    if samples.ndim == 2:
        if not 0 < samples.shape[0] <= 2:
            raise InvalidInputError(
                f"audio of shape {samples.shape} is read as (channels, samples) and must have 1 or 2 channels; "
                "transpose a (samples, channels) array (what soundfile.read returns), or downmix more channels yourself"
            )
        samples = samples.mean(axis=0)
    elif samples.ndim != 1:
        raise InvalidInputError(f"audio must be a 1-D array of samples or (channels, samples), got shape {samples.shape}")
    if not np.isfinite(samples).all():
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise InvalidInputError(f"audio has {bad} NaN or infinite samples; clean the signal first (e.g. np.nan_to_num)")
    return samples


def _audio_dict(item: Mapping[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """(samples, sampling_rate, the other keys) of a {"raw" or "array": ..., "sampling_rate": ...} input, read
    as transformers' pipelines read it ("path" dropped beside "array", as datasets rows carry it)."""
    if "sampling_rate" not in item or ("raw" not in item and "array" not in item):
        raise InvalidInputError(
            "an audio dict needs a 'raw' (or 'array') key with the samples and a 'sampling_rate' key with their rate, "
            f"e.g. {{'raw': array, 'sampling_rate': 16000}}; got keys {sorted(map(str, item))}"
        )
    rest = dict(item)
    samples = rest.pop("raw", None)
    if samples is None:
        rest.pop("path", None)
        samples = rest.pop("array", None)
    return samples, rest.pop("sampling_rate"), rest


def _file_bytes(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    """The contents of an audio file and its name for messages."""
    name = os.fsdecode(path)
    if name.startswith(("http://", "https://")):
        raise InvalidInputError(f"{name} is a URL; the runtime reads no network: download the file and pass its path")
    try:
        with open(name, "rb") as f:
            return f.read(), repr(name)
    except OSError as exc:
        raise InvalidInputError(f"cannot read audio file {name!r}: {exc.strerror or exc}") from None


def load_audio(x: Any, sampling_rate: int) -> np.ndarray:
    """One audio input as a mono float32 waveform at sampling_rate, taking what transformers' audio pipelines take.

    x is a numpy array already at sampling_rate (floats, or PCM integers scaled to [-1, 1]; (channels, samples)
    averaged), a ``{"raw" or "array": samples, "sampling_rate": rate}`` dict (resampled as transformers does), or
    a file path or the bytes of a file: WAV is read here, other formats through soundfile when it is installed.
    """
    if isinstance(x, dict):
        samples, rate, _ = _audio_dict(x)
        waveform, rate = _waveform(samples), _sampling_rate(rate)
    elif isinstance(x, (str, os.PathLike, bytes, bytearray)):
        data, name = (bytes(x), "the audio bytes") if isinstance(x, (bytes, bytearray)) else _file_bytes(x)
        samples, rate = _read_audio_file(data, name)
        waveform = _waveform(samples.mean(axis=1))  # files are (frames, channels): every channel averaged
    else:
        waveform, rate = _waveform(x), sampling_rate
    return resample(waveform, rate, sampling_rate)


def resample(audio: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """A float32 waveform from orig_freq to new_freq Hz as torchaudio.functional.resample, which transformers'
    pipelines call: windowed sinc (Hann window, 6 zero crossings, rolloff 0.99), the kernel in float32."""
    if orig_freq == new_freq:
        return audio
    gcd = int(np.gcd(orig_freq, new_freq))
    orig, new = orig_freq // gcd, new_freq // gcd
    base = min(orig, new) * 0.99
    width = int(np.ceil(6 * orig / base))
    # The arithmetic, in its order, of torchaudio's _get_sinc_resample_kernel (6 = lowpass_filter_width).
    idx = np.arange(-width, width + orig, dtype=np.float32)[None] / orig
    t = np.arange(0, -new, -1, dtype=np.float32)[:, None] / new + idx
    t *= base
    t = np.clip(t, -6, 6)
    window = np.cos(t * np.pi / 6 / 2) ** 2
    t *= np.pi
    kernels = np.where(t == 0, np.float32(1.0), np.sin(t) / np.where(t == 0, np.float32(1.0), t))
    kernels *= window * (base / orig)
    # y[j * new + phase] = frame j (input samples j * orig - width onwards) . kernel[phase]
    padded = np.pad(audio, (width, width + orig))
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernels.shape[1])[::orig]
    step = max(1, _RESAMPLE_BLOCK // kernels.shape[1])
    out = np.concatenate([frames[i: i + step] @ kernels.T for i in range(0, len(frames), step)]).reshape(-1)
    return out[: -(-new * len(audio) // orig)]  # ceil(new * len / orig)


def _hertz_to_mel(freq: Any, mel_scale: str) -> Any:
    if mel_scale == "htk":
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    if mel_scale == "kaldi":
        return 1127.0 * np.log(1.0 + freq / 700.0)
    # slaney: linear below 1 kHz, logarithmic above
    freq = np.asarray(freq, dtype=np.float64)
    return np.where(freq >= 1000.0, 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) * (27.0 / np.log(6.4)), 3.0 * freq / 200.0)


def _mel_to_hertz(mels: Any, mel_scale: str) -> Any:
    if mel_scale == "htk":
        return 700.0 * (np.power(10, mels / 2595.0) - 1.0)
    if mel_scale == "kaldi":
        return 700.0 * (np.exp(mels / 1127.0) - 1.0)
    return np.where(mels >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels - 15.0)), 200.0 * mels / 3.0)


def mel_filter_bank(num_frequency_bins: int, num_mel_filters: int, min_frequency: float, max_frequency: float,
                    sampling_rate: int, *, norm: str | None, mel_scale: str,
                    triangularize_in_mel_space: bool = False) -> np.ndarray:
    """Triangular mel filters (num_frequency_bins, num_mel_filters), float64, as transformers.audio_utils.mel_filter_bank
    computes them: mel_scale "slaney" (with norm "slaney": Whisper's, as librosa; CLAP's rand_trunc), "kaldi" (in mel
    space: AST's) or "htk" (CLAP's fusion, as torchaudio)."""
    mel_freqs = np.linspace(_hertz_to_mel(min_frequency, mel_scale), _hertz_to_mel(max_frequency, mel_scale), num_mel_filters + 2)
    filter_freqs = _mel_to_hertz(mel_freqs, mel_scale)
    if triangularize_in_mel_space:
        bin_width = sampling_rate / ((num_frequency_bins - 1) * 2)
        fft_freqs = _hertz_to_mel(bin_width * np.arange(num_frequency_bins), mel_scale)
        filter_freqs = mel_freqs
    else:
        fft_freqs = np.linspace(0, sampling_rate // 2, num_frequency_bins)
    slopes = filter_freqs[None] - fft_freqs[:, None]
    diff = np.diff(filter_freqs)
    filters = np.maximum(np.zeros(1), np.minimum(-slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]))
    if norm == "slaney":  # constant energy per channel
        filters *= (2.0 / (filter_freqs[2: num_mel_filters + 2] - filter_freqs[:num_mel_filters]))[None]
    out: np.ndarray = filters
    return out


def _hann_window(length: int, *, periodic: bool) -> np.ndarray:
    """float64 Hann window: periodic (torch.hann_window's, Whisper's) or symmetric (Kaldi's 'hanning')."""
    return np.hanning(length + 1)[:-1] if periodic else np.hanning(length)


def _frames(waveforms: np.ndarray, length: int, hop: int) -> np.ndarray:
    """Frames (..., n, length) of the last axis, hop samples apart, a view: n = 1 + (samples - length) // hop."""
    return np.lib.stride_tricks.sliding_window_view(waveforms, length, axis=-1)[..., ::hop, :]


def _pad_or_trim(audio: np.ndarray, length: int, value: float, side: str) -> np.ndarray:
    """audio cut to its first length samples, or padded with value on side ("right" or "left") up to length."""
    if len(audio) >= length:
        return audio[:length]
    pad = (0, length - len(audio)) if side == "right" else (length - len(audio), 0)
    return np.pad(audio, pad, constant_values=value)


def _pad_stack(arrays: Sequence[np.ndarray], value: float, side: str = "right") -> np.ndarray:
    """Arrays stacked on a new first axis, their last axis padded with value on side to the longest."""
    width = max(a.shape[-1] for a in arrays)
    padded = []
    for a in arrays:
        extra = width - a.shape[-1]
        pad = [(0, 0)] * (a.ndim - 1) + [(0, extra) if side == "right" else (extra, 0)]
        padded.append(np.pad(a, pad, constant_values=value) if extra else a)
    return np.stack(padded)


def _whisper_power(waveforms: np.ndarray, window: np.ndarray, hop: int) -> np.ndarray:
    """Power spectrum (n, frames, n_fft // 2 + 1) of float32 waveforms (n, samples) as torch.stft computes it
    (centred frames, reflect padding), without its last frame as Whisper drops it: frames = samples // hop."""
    half = len(window) // 2
    padded = np.pad(waveforms, ((0, 0), (half, half)), mode="reflect")
    spectrum = np.fft.rfft(_frames(padded, len(window), hop)[:, :-1] * window, axis=-1)
    return spectrum.real ** 2 + spectrum.imag ** 2


def _whisper_log_mel(power: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Whisper's log-mel features (n, n_mels, frames) of a power spectrum (n, frames, bins) and mel filters
    (n_mels, bins): log10 floored at 1e-10, each item clamped to 8 below its maximum, then (x + 4) / 4."""
    log = np.log10(np.maximum(filters @ power.transpose(0, 2, 1), 1e-10))
    if log.size:  # audio shorter than one hop has no frame
        log = np.maximum(log, log.max(axis=(1, 2), keepdims=True) - 8.0)
    out: np.ndarray = (log + 4.0) / 4.0
    return out


def _zero_mean_unit_var(audio: np.ndarray) -> np.ndarray:
    """Wav2Vec2's normalization of one waveform: zero mean, unit variance (1e-7 added to the variance)."""
    if not len(audio):
        return audio
    out: np.ndarray = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    return out


def _kaldi_power(waveform: np.ndarray, window: np.ndarray, hop: int, fft_length: int) -> np.ndarray:
    """Power spectrum (frames, fft_length // 2 + 1), float64, as transformers' numpy spectrogram computes it with
    Kaldi's options: frames not centred, DC offset removed, pre-emphasis 0.97, window, zero-padded FFT."""
    if len(waveform) < len(window):
        return np.zeros((0, fft_length // 2 + 1))
    frames = _frames(waveform.astype(np.float64), len(window), hop)
    frames = frames - frames.mean(axis=-1, keepdims=True)
    emphasized = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], axis=-1)
    return _power_spectrum(emphasized * window, fft_length)


def _power_spectrum(frames: np.ndarray, fft_length: int) -> np.ndarray:
    """|rfft|² (frames, fft_length // 2 + 1) of windowed float64 frames as transformers' numpy spectrogram computes it:
    the spectrum stored as complex64, then squared in float64."""
    spectrum = np.fft.rfft(frames, n=fft_length, axis=-1).astype(np.complex64)
    out: np.ndarray = np.abs(spectrum, dtype=np.float64) ** 2
    return out


def _fe_value(config: Mapping[str, Any], name: str, default: Any, types: tuple[type, ...], *, at_most: int | None = None) -> Any:
    """A feature extractor config field (_field); at_most: a size, from 1 to at_most (a hostile file cannot make the
    features take unbounded memory)."""
    return _field(f"{KEY_FEATURE_EXTRACTOR_CONFIG}.{name}", config.get(name), types, default,
                  low=1 if at_most else None, high=at_most, error=ProcessorReconstructionError)


def _fe_choice(config: Mapping[str, Any], name: str, default: str, choices: tuple[str, ...]) -> str:
    """A feature extractor config field that names one of choices."""
    value = _fe_value(config, name, default, (str,))
    if value not in choices:
        raise ProcessorReconstructionError(f"{KEY_FEATURE_EXTRACTOR_CONFIG}.{name} is {value!r}; expected "
                                           f"{', '.join(map(repr, choices[:-1]))} or {choices[-1]!r}")
    return str(value)


def _fe_side(config: Mapping[str, Any]) -> str:
    return _fe_choice(config, "padding_side", "right", ("right", "left"))


class _AudioFeatureExtractor:
    """A feature extractor built from its embedded config: waveforms in, the graph's named inputs out."""

    sampling_rate: int
    padding_value: float
    model_input_names: tuple[str, ...] = ("input_values",)  # the waveform's features first
    # whether __call__ returns an attention_mask: batches padded with it give the model what one waveform would
    returns_attention_mask = False

    def __call__(self, audios: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _waveforms(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The waveforms as mono float32 arrays (load_audio's checks), at least one."""
        if not isinstance(audios, (list, tuple)) or not audios:
            raise InvalidInputError(f"{type(self).__name__} takes a non-empty list of waveforms (numpy arrays at "
                                    f"{self.sampling_rate} Hz; load_audio reads files and resamples)")
        return [_waveform(a) for a in audios]


class WhisperFeatureExtractor(_AudioFeatureExtractor):
    """Whisper's log-mel spectrogram as transformers' WhisperFeatureExtractor computes it in the ASR pipeline:
    each waveform padded or cut to chunk_length seconds; input_features (n, feature_size, nb_max_frames)."""

    model_input_names = ("input_features", "attention_mask")
    returns_attention_mask = True

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.feature_size = int(_fe_value(config, "feature_size", 80, _INT, at_most=_MAX_MEL_BINS))
        self.sampling_rate = int(_fe_value(config, "sampling_rate", 16000, _INT, at_most=_MAX_RATE))
        self.hop_length = int(_fe_value(config, "hop_length", 160, _INT, at_most=_MAX_FFT))
        self.chunk_length = int(_fe_value(config, "chunk_length", 30, _INT, at_most=_MAX_CHUNK_SAMPLES))
        self.n_fft = int(_fe_value(config, "n_fft", 400, _INT, at_most=_MAX_FFT))
        self.padding_value = float(_fe_value(config, "padding_value", 0.0, _NUMBER))
        self.dither = float(_fe_value(config, "dither", 0.0, _NUMBER))
        self.padding_side = _fe_side(config)
        # derived as transformers derives them (the config's own n_samples and nb_max_frames are ignored there too)
        self.n_samples = self.chunk_length * self.sampling_rate
        if not self.hop_length <= self.n_samples <= _MAX_CHUNK_SAMPLES:
            raise ProcessorReconstructionError(
                f"{KEY_FEATURE_EXTRACTOR_CONFIG}: chunk_length {self.chunk_length} s at {self.sampling_rate} Hz is "
                f"{self.n_samples} samples a chunk; it must be from hop_length ({self.hop_length}) to {_MAX_CHUNK_SAMPLES}"
            )
        self.nb_max_frames = self.n_samples // self.hop_length
        self.window = _hann_window(self.n_fft, periodic=True).astype(np.float32)
        self.mel_filters = np.ascontiguousarray(mel_filter_bank(
            1 + self.n_fft // 2, self.feature_size, 0.0, 8000.0, self.sampling_rate, norm="slaney", mel_scale="slaney",
        ).T.astype(np.float32))

    def log_mel_spectrogram(self, waveforms: np.ndarray) -> np.ndarray:
        """Features (n, feature_size, samples // hop_length), float32, of equally long float32 waveforms (n, samples)."""
        if self.dither:  # as transformers: Gaussian noise of this deviation on every sample
            waveforms = waveforms + self.dither * np.random.default_rng().standard_normal(waveforms.shape, dtype=np.float32)
        return _whisper_log_mel(_whisper_power(waveforms, self.window, self.hop_length), self.mel_filters)

    def __call__(self, audios: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """input_features (n, feature_size, nb_max_frames) float32 and the attention_mask (n, nb_max_frames) int32
        the pipeline asks for: 1 on frames that start within the waveform."""
        audios = self._waveforms(audios)
        waveforms = np.stack([_pad_or_trim(a, self.n_samples, self.padding_value, self.padding_side) for a in audios])
        starts = np.arange(self.nb_max_frames) * self.hop_length
        mask = []
        for audio in audios:
            length = min(len(audio), self.n_samples)
            first = 0 if self.padding_side == "right" else self.n_samples - length
            mask.append((starts >= first) & (starts < first + length))
        return {"input_features": self.log_mel_spectrogram(waveforms), "attention_mask": np.array(mask, dtype=np.int32)}


class Wav2Vec2FeatureExtractor(_AudioFeatureExtractor):
    """The waveform itself as transformers' Wav2Vec2FeatureExtractor gives it (wav2vec2, HuBERT, WavLM,
    Data2VecAudio...): each waveform normalized on its own samples when do_normalize, padded to the longest."""

    model_input_names = ("input_values", "attention_mask")

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.sampling_rate = int(_fe_value(config, "sampling_rate", 16000, _INT, at_most=_MAX_RATE))
        self.padding_value = float(_fe_value(config, "padding_value", 0.0, _NUMBER))
        self.do_normalize = bool(_fe_value(config, "do_normalize", True, (bool,)))
        self.returns_attention_mask = bool(_fe_value(config, "return_attention_mask", False, (bool,)))
        self.padding_side = _fe_side(config)

    def __call__(self, audios: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """input_values (n, longest) float32, and the attention_mask (n, longest) int32 when the config asks for it."""
        audios = self._waveforms(audios)
        values = [_zero_mean_unit_var(a) if self.do_normalize else a for a in audios]
        out = {"input_values": _pad_stack([v.astype(np.float32) for v in values], self.padding_value, self.padding_side)}
        if self.returns_attention_mask:
            out["attention_mask"] = _pad_stack([np.ones(len(a), dtype=np.int32) for a in audios], 0, self.padding_side)
        return out


class ASTFeatureExtractor(_AudioFeatureExtractor):
    """The Audio Spectrogram Transformer's Kaldi-style log-mel filter bank, as transformers' ASTFeatureExtractor
    computes it without torchaudio (its numpy path): padded or cut to max_length frames, mean/std normalized."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.sampling_rate = int(_fe_value(config, "sampling_rate", 16000, _INT, at_most=_MAX_RATE))
        self.num_mel_bins = int(_fe_value(config, "num_mel_bins", 128, _INT, at_most=_MAX_MEL_BINS))
        self.max_length = int(_fe_value(config, "max_length", 1024, _INT, at_most=_MAX_FRAMES))
        self.do_normalize = bool(_fe_value(config, "do_normalize", True, (bool,)))
        self.mean = float(_fe_value(config, "mean", -4.2677393, _NUMBER))
        self.std = float(_fe_value(config, "std", 4.5689974, _NUMBER))
        if self.do_normalize and self.std == 0:
            raise ProcessorReconstructionError(f"{KEY_FEATURE_EXTRACTOR_CONFIG}.std is 0; the features cannot be normalized")
        self.padding_value = float(_fe_value(config, "padding_value", 0.0, _NUMBER))
        # transformers' numpy path: 25 ms frames every 10 ms at 16 kHz, a 512-point FFT, whatever the rate
        self.window = _hann_window(400, periodic=False)
        self.mel_filters = mel_filter_bank(257, self.num_mel_bins, 20, self.sampling_rate // 2, self.sampling_rate,
                                           norm=None, mel_scale="kaldi", triangularize_in_mel_space=True)

    def fbank(self, waveform: np.ndarray) -> np.ndarray:
        """Log-mel filter bank (max_length, num_mel_bins) float32 of one waveform, zero-padded or cut to max_length."""
        power = _kaldi_power(waveform, self.window, 160, 512)
        fbank = np.log(np.maximum(1.192092955078125e-07, power @ self.mel_filters)).astype(np.float32)[: self.max_length]
        padded: np.ndarray = np.pad(fbank, ((0, self.max_length - len(fbank)), (0, 0)))
        return padded

    def __call__(self, audios: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """input_values (n, max_length, num_mel_bins) float32."""
        features = np.stack([self.fbank(a) for a in self._waveforms(audios)])
        if self.do_normalize:
            features = (features - self.mean) / (self.std * 2)
        return {"input_values": features}


_CLAP_TRUNCATIONS, _CLAP_PADDINGS = ("fusion", "rand_trunc"), ("repeatpad", "repeat", "pad")
_CLAP_SHRUNK_BINS = 64  # fusion shrinks the whole clip's mel to 64 bins, whatever feature_size says (as transformers)
_STFT_BLOCK = 4096  # frames per block of a spectrogram: a long clip's frames are never all held at once


def _clap_log_mel(waveform: np.ndarray, window: np.ndarray, hop: int, filters: np.ndarray) -> np.ndarray:
    """Log-mel spectrogram (frames, mels), float32 dB, of a float64 waveform as transformers' spectrogram computes it
    for CLAP: centred frames (reflect padding), power spectrum, mel floored at 1e-10, 10 log10."""
    half = len(window) // 2
    frames = _frames(np.pad(waveform, (half, half), mode="reflect"), len(window), hop)
    mel = np.concatenate([np.maximum(1e-10, _power_spectrum(frames[i: i + _STFT_BLOCK] * window, len(window)) @ filters)
                          for i in range(0, len(frames), _STFT_BLOCK)])
    out: np.ndarray = (10.0 * np.log10(mel)).astype(np.float32)
    return out


class ClapFeatureExtractor(_AudioFeatureExtractor):
    """CLAP's log-mel features as transformers' ClapFeatureExtractor computes them. A clip longer than max_length_s is
    cut or fused (truncation "rand_trunc": a random window of max_length_s, slaney mels; "fusion": the whole clip's htk
    mels shrunk to the window's frames by torch's bilinear interpolation beside 3 random crops of them, one from each
    third); a shorter one is repeated (padding "repeat", "repeatpad") and zero-padded to max_length_s. input_features
    (n, 4 with fusion else 1, frames, feature_size) float32, is_longer (n, 1) bool: whether the clip was cut or fused
    (with fusion, when none of the batch was, one chosen at random is marked, as transformers does)."""

    model_input_names = ("input_features", "is_longer")

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.feature_size = int(_fe_value(config, "feature_size", 64, _INT, at_most=_MAX_MEL_BINS))
        self.sampling_rate = int(_fe_value(config, "sampling_rate", 48000, _INT, at_most=_MAX_RATE))
        self.hop_length = int(_fe_value(config, "hop_length", 480, _INT, at_most=_MAX_FFT))
        self.max_length_s = int(_fe_value(config, "max_length_s", 10, _INT, at_most=_MAX_CHUNK_SAMPLES))
        self.fft_window_size = int(_fe_value(config, "fft_window_size", 1024, _INT, at_most=_MAX_FFT))
        self.padding_value = 0.0  # transformers pads with zeros, whatever padding_value says
        low = float(_fe_value(config, "frequency_min", 0, _NUMBER))
        high = float(_fe_value(config, "frequency_max", 14000, _NUMBER))
        self.truncation = _fe_choice(config, "truncation", "fusion", _CLAP_TRUNCATIONS)
        self.padding = _fe_choice(config, "padding", "repeatpad", _CLAP_PADDINGS)
        self.max_length = self.max_length_s * self.sampling_rate  # transformers' nb_max_samples
        if not 2 <= self.fft_window_size <= self.max_length <= _MAX_CHUNK_SAMPLES or not 0 <= low <= high:
            raise ProcessorReconstructionError(
                f"{KEY_FEATURE_EXTRACTOR_CONFIG}: max_length_s {self.max_length_s} at {self.sampling_rate} Hz is "
                f"{self.max_length} samples, fft_window_size {self.fft_window_size}, frequencies {low:g} to {high:g} Hz; "
                f"the window must be from 2 samples to max_length, max_length at most {_MAX_CHUNK_SAMPLES}, and "
                "0 <= frequency_min <= frequency_max"
            )
        if self.truncation == "fusion" and self.feature_size != _CLAP_SHRUNK_BINS:
            raise ProcessorReconstructionError(
                f"{KEY_FEATURE_EXTRACTOR_CONFIG}: truncation 'fusion' shrinks a long clip's mel spectrogram to "
                f"{_CLAP_SHRUNK_BINS} bins (as transformers), so feature_size must be {_CLAP_SHRUNK_BINS}, "
                f"not {self.feature_size}"
            )
        self.frames = self.max_length // self.hop_length + 1  # transformers' chunk_frames
        self.window = _hann_window(self.fft_window_size, periodic=True)
        # fusion's filters are torchaudio's (htk), rand_trunc's librosa's (slaney), as in the original implementation
        scale = "htk" if self.truncation == "fusion" else "slaney"
        self.mel_filters = mel_filter_bank(self.fft_window_size // 2 + 1, self.feature_size, low, high, self.sampling_rate,
                                           norm=None if scale == "htk" else "slaney", mel_scale=scale)

    def log_mel(self, waveform: np.ndarray) -> np.ndarray:
        """Log-mel spectrogram (frames, feature_size) float32 of one waveform (float64)."""
        return _clap_log_mel(waveform, self.window, self.hop_length, self.mel_filters)

    def fusion(self, mel: np.ndarray, rng: Any) -> np.ndarray:
        """A long clip's 4 mels: the whole of it shrunk to the window's frames, and 3 crops starting in each third of
        the possible starts (rng.choice, as transformers' np.random.choice)."""
        starts = np.array_split(np.arange(len(mel) - self.frames + 1), 3)
        picked = [rng.choice(s if len(s) else [0]) for s in starts]
        shrunk = _bilinear(mel, self.frames, _CLAP_SHRUNK_BINS)
        return np.stack([shrunk, *(mel[int(p): int(p) + self.frames] for p in picked)])

    def input_mel(self, waveform: np.ndarray, rng: Any) -> tuple[np.ndarray, bool]:
        """One waveform's mels (4 or 1, frames, feature_size) and whether it was longer than max_length (transformers'
        _get_input_mel)."""
        waveform = waveform.astype(np.float64)
        if len(waveform) > self.max_length:
            if self.truncation == "rand_trunc":
                start = int(rng.randint(0, len(waveform) - self.max_length + 1))
                return self.log_mel(waveform[start: start + self.max_length])[None], True
            mel = self.log_mel(waveform)
            if len(mel) == self.frames:  # longer by less than a hop: the whole clip, 4 times, as transformers
                return np.stack([mel] * 4), False
            return self.fusion(mel, rng), True
        if len(waveform) < self.max_length:
            if self.padding == "repeat":
                waveform = np.tile(waveform, int(self.max_length / len(waveform)) + 1)[: self.max_length]
            elif self.padding == "repeatpad":
                waveform = np.tile(waveform, int(self.max_length / len(waveform)))
            waveform = np.pad(waveform, (0, self.max_length - len(waveform)))
        mel = self.log_mel(waveform)
        return (np.stack([mel] * 4) if self.truncation == "fusion" else mel[None]), False

    def __call__(self, audios: Sequence[np.ndarray], rng: Any = None) -> dict[str, np.ndarray]:
        """input_features and is_longer of the waveforms; rng draws the random crops and marks (numpy's RandomState
        API: randint, choice), numpy's global random state by default, as transformers draws them."""
        rng = np.random if rng is None else rng
        mels, longer = [], []
        for audio in self._waveforms(audios):
            if not len(audio):
                raise InvalidInputError("the audio is empty: CLAP's features need at least one sample")
            mel, is_longer = self.input_mel(audio, rng)
            mels.append(mel)
            longer.append(is_longer)
        if self.truncation == "fusion" and not any(longer):
            longer[int(rng.randint(0, len(mels)))] = True
        return {"input_features": np.stack(mels), "is_longer": np.array(longer, dtype=bool)[:, None]}


FEATURE_EXTRACTORS: dict[str, Callable[[Mapping[str, Any]], _AudioFeatureExtractor]] = {
    "WhisperFeatureExtractor": WhisperFeatureExtractor,
    "Wav2Vec2FeatureExtractor": Wav2Vec2FeatureExtractor,
    "ASTFeatureExtractor": ASTFeatureExtractor,
    "ClapFeatureExtractor": ClapFeatureExtractor,
}
"""The audio feature extractors this runtime rebuilds, by their ``feature_extractor_type``."""
# What transformers' AutoFeatureExtractor picks for a config that names no feature_extractor_type.
_MODEL_FEATURE_EXTRACTORS = {
    **dict.fromkeys(("wav2vec2", "hubert", "wavlm", "data2vec-audio", "sew", "sew-d", "unispeech", "unispeech-sat",
                     "wav2vec2-conformer"), "Wav2Vec2FeatureExtractor"),
    "whisper": "WhisperFeatureExtractor",
    "audio-spectrogram-transformer": "ASTFeatureExtractor",
    "clap": "ClapFeatureExtractor",
}


def load_feature_extractor(metadata: Mapping[str, Any]) -> _AudioFeatureExtractor | None:
    """The audio feature extractor of a model, built from its embedded hf_feature_extractor_config alone; None
    when none is embedded."""
    config = metadata.get(KEY_FEATURE_EXTRACTOR_CONFIG)
    if config is None:
        return None
    kind = config.get("feature_extractor_type")
    if kind is None:
        kind = _MODEL_FEATURE_EXTRACTORS.get(str((metadata.get(KEY_MODEL_CONFIG) or {}).get("model_type")))
    cls = FEATURE_EXTRACTORS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProcessorReconstructionError(
            f"feature extractor {kind!r} is not supported by this runtime; supported: {', '.join(FEATURE_EXTRACTORS)} "
            "(set feature_extractor_type in preprocessor_config.json and re-embed if the model uses one of them)"
        )
    return cls(config)


# --- Registry -----------------------------------------------------------------------------------------

PROCESSORS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "tokenizer": load_tokenizer,
    "image_processor": load_image_processor,
    "feature_extractor": load_feature_extractor,
}
"""Processor loaders by feature_engineering type; each builds its processor from the metadata alone and
returns None when the metadata holds none of its kind."""


def _processor_kinds(metadata: Mapping[str, Any]) -> list[str]:
    """The processors a file embeds: feature_engineering's type, its components for a combined processor,
    else what the keys show (older writers and the minimal level write no feature_engineering)."""
    engineering = metadata.get(KEY_FEATURE_ENGINEERING) or {}
    kind = engineering.get("type")
    if kind == "processor":
        components = (engineering.get("config") or {}).get("components")
        return [c for c in components if isinstance(c, str)] if isinstance(components, list) else []
    if isinstance(kind, str):
        return [kind]
    return ["tokenizer"] if KEY_TOKENIZER_CONFIG in metadata or KEY_TOKENIZER_JSON in metadata else []


def load_processor(metadata: Mapping[str, Any], kind: str | None = None) -> Any:
    """The processor of kind (a PROCESSORS key) rebuilt from the metadata; without kind, the one the file
    embeds (a dict of them for a combined processor such as CLIP's). None when none is embedded."""
    if kind is None:
        kinds = _processor_kinds(metadata)
        if len(kinds) != 1:
            return {k: load_processor(metadata, k) for k in kinds} or None
        kind = kinds[0]
    loader = PROCESSORS.get(kind)
    if loader is None:
        raise ProcessorReconstructionError(
            f"processor type {kind!r} is not supported by this runtime; supported: {', '.join(PROCESSORS)}"
        )
    return loader(metadata)


########################################################################################################
# Sessions
########################################################################################################
# onnxruntime is imported when a model is run, never at import. A Session wraps one InferenceSession, or one
# entry point into it: its inputs and outputs by name with their types and shapes, read once, and runs that
# raise the project's errors. A model may hold several graphs run in turn (an encoder, then decoder steps):
# open_sessions returns them by name; a single-graph file has one, "model", an encoder-decoder "encoder",
# "decoder" and "decoder_with_past", whether one file (an entry point per graph, see "Encoder-decoder layouts")
# or a folder of Optimum's separate files. Tasks never see file or graph names of several graphs, only roles.

_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(int64)": "int64",
    "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class _Port(NamedTuple):
    """A graph input or output: its name, onnxruntime type ("tensor(int64)") and shape (ints, symbolic
    names, or None where unknown)."""

    name: str
    type: str
    shape: tuple[int | str | None, ...]

    @property
    def dtype(self) -> str | None:
        """The numpy dtype name of a tensor type, None for other types."""
        return _DTYPES.get(self.type)


def _port(name: str, node: Any) -> _Port:
    return _Port(name, node.type, tuple(node.shape or ()))


_INT_DTYPES = ("int64", "int32")
_FLOAT_DTYPES = ("float32", "float16", "float64")


class _Reads(NamedTuple):
    """A graph port a task or model step declares that it reads: its name (an entry point's role), the dtypes it may
    have, whether the graph must have it, and for an output the axes it must have ("(batch, sequence, vocabulary)":
    its rank; "" any)."""

    name: str
    dtypes: tuple[str, ...] = ()
    required: bool = True
    axes: str = ""


def _feeds(ports: Sequence[_Reads], more: str = "") -> str:
    """Declared inputs in words: "input_ids, optional attention_mask and token_type_ids"."""
    words = [p.name for p in ports if p.required]
    optional = [p.name for p in ports if not p.required]
    if optional:
        words += [f"optional {optional[0]}", *optional[1:]]
    words += [more] if more else []
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _check_ports(session: Session, inputs: Sequence[_Reads], outputs: Sequence[_Reads] = (), *, what: str,
                also: Callable[[str], bool] | None = None, more: str = "") -> dict[str, str]:
    """The one check of a graph against the ports a task or step declares, when the Runtime is built: the inputs it
    feeds (no others, but those also() accepts: `more` says which, in words), their dtypes, the outputs it reads and
    their axes. Returns the dtype of each declared input the graph has."""
    given = session.inputs
    declared = {p.name for p in inputs}
    if any(p.required and p.name not in given for p in inputs) or any(
            n not in declared and not (also and also(n)) for n in given):
        raise MetadataValidationError(f"{what} feeds {_feeds(inputs, more)}; the graph takes {list(given)}; was it exported "
                                      "for another task?")
    dtypes = {}
    for port in (p for p in inputs if p.name in given):
        found = given[port.name]
        if port.dtypes and found.dtype not in port.dtypes:
            raise MetadataValidationError(f"graph input {port.name!r} has type {found.type}; {what} feeds it "
                                          f"{' or '.join(port.dtypes)}")
        dtypes[port.name] = str(found.dtype)
    for port in outputs:
        out = session.outputs.get(port.name)
        if out is None:
            if port.required:
                raise MetadataValidationError(f"{what} reads the output {port.name!r}; the graph gives "
                                              f"{list(session.outputs)}; was it exported for another task?")
            continue
        if port.axes and out.shape and len(out.shape) != port.axes.count(",") + 1:
            raise MetadataValidationError(f"{what} reads the output {port.name!r} as {port.axes}; it has shape "
                                          f"{list(out.shape)}; was the graph exported for another task?")
    return dtypes


class Session:
    """One graph of a model, or one entry point into a file of several, as tasks see it: inputs and outputs by
    name (an entry point's by role, the names of Optimum's separate files, each mapped to the graph's own name),
    runs that raise MetadataError. An entry point feeds its ``fixed`` inputs itself (the phase that selects it);
    ``past`` pairs an encoder-decoder's past inputs with the outputs that feed them at the next step, in roles,
    and says which are cross-attention ones (computed once, by "decoder")."""

    def __init__(self, ort_session: Any, *, fed_by: str = "inputs", inputs: Mapping[str, str] | None = None,
                 outputs: Mapping[str, str] | None = None, fixed: Mapping[str, Any] | None = None,
                 past: Sequence[tuple[str, str, bool]] = (), path: str | None = None) -> None:
        self.ort = ort_session
        self._path = path
        self._operators: frozenset[str] | None = None
        graph_inputs = {i.name: i for i in ort_session.get_inputs()}
        # an entry point into one file takes inputs that have empty defaults there (overridable initializers)
        defaulted = {i.name: i for i in ort_session.get_overridable_initializers()} if inputs is not None else {}
        graph_inputs.update(defaulted)
        self.defaulted = frozenset(defaulted)
        graph_outputs = {o.name: o for o in ort_session.get_outputs()}
        self._input_names = dict(inputs) if inputs is not None else {n: n for n in graph_inputs}
        self._output_names = dict(outputs) if outputs is not None else {n: n for n in graph_outputs}
        self.inputs = {role: _port(role, graph_inputs[name]) for role, name in self._input_names.items()}
        self.outputs = {role: _port(role, graph_outputs[name]) for role, name in self._output_names.items()}
        self.fixed = dict(fixed or {})
        self.past = tuple(past)
        self._fed_by = fed_by

    @property
    def operators(self) -> frozenset[str]:
        """The op types of a single-graph file's nodes (graph_operators), read on first use; empty for an entry
        point. A step reads it to use a kernel's abilities (GroupQueryAttention's shared past buffer)."""
        if self._operators is None:
            self._operators = graph_operators(self._path) if self._path is not None else frozenset()
        return self._operators

    def output(self, preferred: str) -> str:
        """preferred when the graph has such an output, else its first output."""
        return preferred if preferred in self.outputs else next(iter(self.outputs))

    def input_name(self, role: str) -> str:
        """The graph's name of an input (the role itself for a graph of its own)."""
        return self._input_names.get(role, role)

    def output_name(self, role: str) -> str:
        """The graph's name of an output (the role itself for a graph of its own)."""
        return self._output_names.get(role, role)

    def run(self, outputs: Sequence[str] | None, feed: Mapping[str, Any]) -> list[Any]:
        """The named outputs (all of the graph's or entry point's when None) for the feed, as numpy arrays."""
        asked = list(self._output_names.values()) if outputs is None else [self.output_name(o) for o in outputs]
        given = {self.input_name(name): value for name, value in feed.items()}
        given.update(self.fixed)
        try:
            return list(self.ort.run(asked, given))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types, e.g. a token id past the embedding table
            raise self.failure(exc) from None

    def failure(self, exc: Exception) -> MetadataValidationError:
        """The project's error for onnxruntime's failure to run the graph on an input."""
        return MetadataValidationError(
            f"onnxruntime cannot run the model on this input: {exc}; the embedded {self._fed_by} and the graph "
            "may disagree (python -m authoring validate --check-graph)"
        )


_OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                        "all": "ORT_ENABLE_ALL"}


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MetadataError("running a model needs onnxruntime; pip install onnxruntime") from None
    return onnxruntime


def _session_options(session_options: Any, threads: int | None, level: str | None, *, quiet: bool = False) -> Any:
    """session_options as given; else new SessionOptions with the thread count and optimization level set, and
    onnxruntime's warnings silenced when quiet (a one-file encoder-decoder logs one per defaulted input as it
    loads); None when there is nothing to set."""
    if session_options is not None and (threads is not None or level is not None):
        raise InvalidInputError(
            "pass either session_options or intra_op_num_threads/graph_optimization_level, not both; "
            "set them on your SessionOptions instead"
        )
    if session_options is not None or (threads is None and level is None and not quiet):
        return session_options
    if threads is not None:
        threads = _integer(0, hint=" (0: onnxruntime's default)")("intra_op_num_threads", threads)
    if level is not None:
        level = _choice(*_OPTIMIZATION_LEVELS)("graph_optimization_level", level)
    ort = _onnxruntime()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if level is not None:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPTIMIZATION_LEVELS[level])
    if quiet:
        options.log_severity_level = 3
    return options


def _session(path: str, providers: Sequence[Any] | None, session_options: Any) -> Any:
    """A checked onnxruntime.InferenceSession for the file."""
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
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own non-exported exception types
        raise MetadataReadError(f"onnxruntime cannot load {os.path.basename(path)}: {exc}") from None
    if not session.get_outputs():
        raise MetadataValidationError(f"{os.path.basename(path)} has a graph without outputs; re-export the model")
    return session


# --- Encoder-decoder layouts ---------------------------------------------------------------------------
# An encoder-decoder's graphs are three entry points: "encoder" (run once per input), "decoder" (the first
# decoder step: no past in, the self- and cross-attention past out) and "decoder_with_past" (every later step).
# Each maps roles, the names of Optimum's separate files, to the graph's names (docs/FORMAT.md,
# "Encoder-decoders in one file"). A one-file model carries the layout as hf_graph_layout (authoring writes
# it); a file without the key, or a folder of Optimum's files, is recognised from its graph and file names by
# these pure functions, which authoring uses too.

PHASE_INPUT = "phase"
"""The int64 scalar input of a one-file encoder-decoder whose value (PHASES) selects the entry point."""
PHASES = {"encoder": 0, "decoder": 1, "decoder_with_past": 2}
ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_model.onnx"
DECODER_WITH_PAST_FILE = "decoder_with_past_model.onnx"
DECODER_MERGED_FILE = "decoder_model_merged.onnx"
"""Optimum's file names for the parts of an encoder-decoder export."""
MERGED_BRANCH_INPUT = "use_cache_branch"
"""The bool input of Optimum's merged decoder that selects the step with past."""
_PAST_PREFIX, _PRESENT_PREFIX, _DECODER_PREFIX = "past_key_values.", "present.", "decoder_"
# A graph's signature as onnxruntime reports it: {"inputs": [(name, type, shape)], "outputs": [...]}.
_Signature = Mapping[str, Sequence[tuple[str, str, Sequence[Any]]]]


def is_past_input(name: str) -> bool:
    """A past key value input, by Optimum's naming (past_key_values.N.{decoder,encoder}.{key,value})."""
    return name.startswith(_PAST_PREFIX)


def is_present_output(name: str) -> bool:
    return name.startswith(_PRESENT_PREFIX)


def is_cross_attention(name: str) -> bool:
    """A cross-attention past or present (computed once, from the encoder output), by Optimum's naming."""
    return ".encoder." in name


def is_decoder_input(name: str) -> bool:
    """A one-file input that feeds a decoder: decoder_*, encoder_* (hidden states, mask) or a past; others feed the
    encoder."""
    return name.startswith((_DECODER_PREFIX, "encoder_")) or is_past_input(name)


def present_for(past: str) -> str:
    """The output that feeds a past input at the next step (past_key_values.0.decoder.key -> present.0.decoder.key)."""
    return _PRESENT_PREFIX + past[len(_PAST_PREFIX):]


def past_pairs(past_roles: Sequence[str]) -> list[dict[str, Any]]:
    """The layout's past entries: which output feeds each past input at the next step; cross-attention ones come
    once, from "decoder"."""
    return [{"input": name, "output": present_for(name), "cross": is_cross_attention(name)} for name in past_roles]


def _names(items: Sequence[tuple[str, str, Sequence[Any]]]) -> list[str]:
    return [item[0] for item in items]


def _same(names: Sequence[str]) -> dict[str, str]:
    return {n: n for n in names}


def graph_layout(signatures: Mapping[str, _Signature]) -> dict[str, Any]:
    """The layout of an encoder-decoder from its graphs' names alone.

    signatures maps file names to signatures: Optimum's files of a folder (``encoder_model.onnx`` and
    ``decoder_model.onnx`` / ``decoder_with_past_model.onnx`` / ``decoder_model_merged.onnx``), or a single file
    of this format (an int64 ``phase`` input). Returns the ``hf_graph_layout`` object; raises
    MetadataValidationError when the names do not say what each part is.
    """
    if len(signatures) == 1:
        (name, signature), = signatures.items()
        if PHASE_INPUT in _names(signature["inputs"]):
            return _one_file_layout(signature)
        raise MetadataValidationError(
            f"{name} is not an encoder-decoder in one file: it has no {PHASE_INPUT!r} input "
            f"(inputs: {', '.join(_names(signature['inputs']))})"
        )
    return _folder_layout(signatures)


def _one_file_layout(signature: _Signature) -> dict[str, Any]:
    """A file of this format by its names: decoder_* / encoder_* / past inputs feed the decoders (decoder_input_ids
    is Optimum's input_ids), the rest the encoder; an output prefixed with an entry point (decoder_with_past.logits)
    is that entry point's, logits and present.* the decoder's, the rest the encoder's."""
    inputs = [n for n in _names(signature["inputs"]) if n != PHASE_INPUT]
    decoder_in = [n for n in inputs if is_decoder_input(n)]
    encoder_in = [n for n in inputs if n not in decoder_in]
    roles = {n: n.removeprefix(_DECODER_PREFIX) for n in decoder_in}
    outputs: dict[str, dict[str, str]] = {entry: {} for entry in PHASES}
    for name in _names(signature["outputs"]):
        entry, dot, role = name.partition(".")
        if dot and entry in outputs:
            outputs[entry][role] = name
        else:
            outputs["decoder" if name == "logits" or is_present_output(name) else "encoder"][name] = name
    first = {roles[n]: n for n in decoder_in if not is_past_input(n)}
    # later steps read the cross-attention past; a decoder without one (GPT-2's cross-attention) the encoder's output
    cross_past = any(is_past_input(n) and is_cross_attention(n) for n in decoder_in)
    step = {roles[n]: n for n in decoder_in if n != "encoder_hidden_states" or not cross_past}
    entries = {
        "encoder": {"inputs": _same(encoder_in), "outputs": outputs["encoder"], "phase": PHASES["encoder"]},
        "decoder": {"inputs": first, "outputs": outputs["decoder"], "phase": PHASES["decoder"]},
    }
    if outputs["decoder_with_past"]:
        entries["decoder_with_past"] = {"inputs": step, "outputs": outputs["decoder_with_past"],
                                        "phase": PHASES["decoder_with_past"]}
    past = [roles[n] for n in decoder_in if is_past_input(n)] if "decoder_with_past" in entries else []
    return {"phase_input": PHASE_INPUT, "entry_points": entries, "past": past_pairs(past)}


def _folder_layout(signatures: Mapping[str, _Signature]) -> dict[str, Any]:
    """Optimum's files by their names: separate decoders, or the merged one whose every input must be fed."""
    files = set(signatures)
    if ENCODER_FILE not in files or not files & {DECODER_FILE, DECODER_WITH_PAST_FILE, DECODER_MERGED_FILE}:
        raise MetadataValidationError(
            f"not an encoder-decoder export: expected {ENCODER_FILE} and {DECODER_FILE}, {DECODER_WITH_PAST_FILE} "
            f"or {DECODER_MERGED_FILE}; found {', '.join(sorted(files)) or 'no .onnx files'}"
        )

    def names(file: str, kind: str) -> list[str]:
        return _names(signatures[file][kind])

    def entry(file: str, inputs: Sequence[str], outputs: Sequence[str], **extra: Any) -> dict[str, Any]:
        return {"inputs": _same(inputs), "outputs": _same(outputs), "file": file, **extra}

    entries = {"encoder": entry(ENCODER_FILE, names(ENCODER_FILE, "inputs"), names(ENCODER_FILE, "outputs"))}
    layout: dict[str, Any] = {"phase_input": None, "entry_points": entries, "past": []}
    if DECODER_FILE in files:
        entries["decoder"] = entry(DECODER_FILE, names(DECODER_FILE, "inputs"), names(DECODER_FILE, "outputs"))
    if DECODER_WITH_PAST_FILE in files and DECODER_FILE in files:
        inputs = names(DECODER_WITH_PAST_FILE, "inputs")
        entries["decoder_with_past"] = entry(DECODER_WITH_PAST_FILE, inputs, names(DECODER_WITH_PAST_FILE, "outputs"))
        layout["past"] = past_pairs([n for n in inputs if is_past_input(n)])
    elif DECODER_MERGED_FILE in files:
        inputs = [n for n in names(DECODER_MERGED_FILE, "inputs") if n != MERGED_BRANCH_INPUT]
        outputs = names(DECODER_MERGED_FILE, "outputs")
        past = [n for n in inputs if is_past_input(n)]
        hidden = [n for n in inputs if n == "encoder_hidden_states"]
        # The merged graph needs every input fed: an entry point feeds the ones it does not use empty.
        entries["decoder"] = entry(DECODER_MERGED_FILE, [n for n in inputs if not is_past_input(n)], outputs, phase=False,
                                   empty_inputs=past)
        entries["decoder_with_past"] = entry(
            DECODER_MERGED_FILE, [n for n in inputs if n not in hidden],
            [n for n in outputs if not (is_present_output(n) and is_cross_attention(n))], phase=True, empty_inputs=hidden)
        layout["phase_input"] = MERGED_BRANCH_INPUT
        layout["past"] = past_pairs(past)
    elif DECODER_FILE not in files:
        raise MetadataValidationError(f"{DECODER_WITH_PAST_FILE} without {DECODER_FILE}: the first decoder step, which "
                                      "computes the cross-attention past, is missing")
    return layout


def session_signature(session: Any) -> dict[str, list[tuple[str, str, list[Any]]]]:
    """The signature of an onnxruntime session: inputs (overridable initializers included) and outputs."""
    def arg(a: Any) -> tuple[str, str, list[Any]]:
        return a.name, a.type, list(a.shape or ())

    inputs = [arg(a) for a in session.get_inputs()] + [arg(a) for a in session.get_overridable_initializers()]
    return {"inputs": inputs, "outputs": [arg(a) for a in session.get_outputs()]}


def _checked_layout(layout: Any, where: str) -> dict[str, Any]:
    """An hf_graph_layout value checked for the types the runtime reads (a file is hostile until read)."""
    def bad(what: str) -> MetadataValidationError:
        return MetadataValidationError(f"{KEY_GRAPH_LAYOUT} of {where} is malformed: {what}; merge the export again "
                                       "(python -m authoring embed <export-folder> <model>)")

    def names(value: Any) -> bool:
        return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())

    points = layout.get("entry_points") if isinstance(layout, dict) else None
    if not isinstance(points, dict) or not {"encoder", "decoder"} <= set(points) or not set(points) <= set(PHASES):
        raise bad("entry_points must name 'encoder', 'decoder' and optionally 'decoder_with_past'")
    phase_input = layout.get("phase_input")
    if phase_input is not None and not isinstance(phase_input, str):
        raise bad("phase_input must be a string or null")
    for entry, point in points.items():
        if not isinstance(point, dict) or not names(point.get("inputs")) or not names(point.get("outputs")):
            raise bad(f"entry point {entry!r} needs inputs and outputs mapping roles to graph names")
        phase = point.get("phase")
        if phase_input is not None and not isinstance(phase, (int, bool)):
            raise bad(f"entry point {entry!r} needs a phase (the value of {phase_input!r} that selects it)")
        empty = point.get("empty_inputs", [])
        if not isinstance(point.get("file", ""), str) or not isinstance(empty, list) or not all(
                isinstance(n, str) for n in empty):
            raise bad(f"entry point {entry!r} has a file or empty_inputs of the wrong type")
    past = layout.get("past", [])
    if not isinstance(past, list) or not all(
            isinstance(p, dict) and isinstance(p.get("input"), str) and isinstance(p.get("output"), str)
            and isinstance(p.get("cross"), bool) for p in past):
        raise bad("past must be a list of {input, output, cross}")
    return dict(layout)


# --- Opening a model ----------------------------------------------------------------------------------


def _export_files(folder: str | os.PathLike[str]) -> list[str]:
    """The files of an Optimum encoder-decoder export folder to run, in entry-point order: the encoder, then the
    separate decoders (preferred: the merged decoder holds the same weights) or the merged one."""
    present = [n for n in (ENCODER_FILE, DECODER_FILE, DECODER_WITH_PAST_FILE, DECODER_MERGED_FILE)
               if os.path.isfile(os.path.join(folder, n))]
    if {DECODER_FILE, DECODER_WITH_PAST_FILE} <= set(present) and DECODER_MERGED_FILE in present:
        present.remove(DECODER_MERGED_FILE)
    return present


def _export_metadata(folder: str, max_decompressed_size: int) -> dict[str, Any]:
    """The metadata of an Optimum export folder: that of its first file (encoder first) that carries onnxmeta's."""
    files = _export_files(folder)
    name = os.path.basename(os.path.normpath(folder))
    if ENCODER_FILE not in files:
        raise MetadataReadError(f"{folder} is a directory, not an encoder-decoder export ({ENCODER_FILE} and decoders); "
                                "pass the .onnx file inside it")
    for file in files:
        metadata = read_metadata(os.path.join(folder, file), max_decompressed_size=max_decompressed_size)
        if KEY_VERSION in metadata:
            return metadata
    raise MetadataValidationError(
        f"the export folder {name} has no onnxmeta metadata in {', '.join(files)}; merge it into ONE file with its "
        f"metadata (python -m authoring embed {name} <model> --include-vocab), or embed its {ENCODER_FILE} "
        f"(python -m authoring embed {name}/{ENCODER_FILE} <model> --include-vocab)"
    )


def open_sessions(
    path: str | os.PathLike[str], providers: Sequence[Any] | None = None, session_options: Any = None, *,
    fed_by: str = "inputs", metadata: Mapping[str, Any] | None = None,
) -> dict[str, Session]:
    """The sessions of a model by name: "model" for a single graph; "encoder", "decoder" and "decoder_with_past" for
    an encoder-decoder in one file (its hf_graph_layout, from metadata, read from the file when not given; else
    recognised from its graph names) or for a folder of Optimum's separate files. fed_by names what makes the
    inputs, for the hint of a failed run ("tokenizer")."""
    path = _model_path(path)
    if os.path.isdir(path):
        files = _export_files(path)
        graphs = {name: _session(os.path.join(path, name), providers, session_options) for name in files}
        layout = graph_layout({name: session_signature(graph) for name, graph in graphs.items()})
        return _entry_points(graphs, layout, fed_by, os.path.basename(os.path.normpath(path)))
    embedded = (read_metadata(path) if metadata is None else metadata).get(KEY_GRAPH_LAYOUT)
    graph = _session(path, providers, session_options)
    name = os.path.basename(path)
    if embedded is not None:
        return _entry_points({"": graph}, _checked_layout(embedded, name), fed_by, name)
    defaulted = {i.name for i in graph.get_overridable_initializers()}
    if not any(i.name == PHASE_INPUT for i in graph.get_inputs()) or "decoder_input_ids" not in defaulted:
        return {"model": Session(graph, fed_by=fed_by, path=path)}
    return _entry_points({"": graph}, graph_layout({name: session_signature(graph)}), fed_by, name)


def _entry_points(graphs: Mapping[str, Any], layout: Mapping[str, Any], fed_by: str, where: str) -> dict[str, Session]:
    """A Session per entry point of the layout, over the graphs by file name ("" for one file), checked to fit."""
    phase_input = layout.get("phase_input")
    pairs = [(p["input"], p["output"], p["cross"]) for p in layout.get("past", [])]
    sessions = {}
    for entry, point in layout["entry_points"].items():
        graph = graphs.get(point.get("file", ""))
        if graph is None:
            raise MetadataValidationError(f"{KEY_GRAPH_LAYOUT} of {where} names the file {point.get('file')!r} for the "
                                          f"{entry}, which is not there")
        ports = {p.name: p for p in (*graph.get_inputs(), *graph.get_overridable_initializers())}
        given = {o.name for o in graph.get_outputs()}
        for kind, names, known in (("input", point["inputs"], ports), ("output", point["outputs"], given)):
            missing = sorted(n for n in names.values() if n not in known)
            if missing:
                raise MetadataValidationError(
                    f"{KEY_GRAPH_LAYOUT} of {where} names {kind}s {missing} for the {entry}, which the graph does not "
                    "have; merge the export again (python -m authoring embed <export-folder> <model>)")
        fixed = {}
        phase = [(phase_input, point["phase"])] if phase_input is not None and "phase" in point else []
        for name, value in phase + [(n, None) for n in point.get("empty_inputs", [])]:
            port = ports.get(name)
            if port is None or _DTYPES.get(port.type) is None:
                raise MetadataValidationError(f"{KEY_GRAPH_LAYOUT} of {where}: the graph has no tensor input {name!r} to "
                                              f"feed the {entry}")
            shape = [d if isinstance(d, int) else 0 for d in port.shape or ()]
            # the phase: a scalar (this format) or a one-element tensor (Optimum's use_cache_branch); else empty
            fixed[name] = (np.full([1] * len(shape), value, dtype=_DTYPES[port.type]) if value is not None
                           else np.zeros(shape, dtype=_DTYPES[port.type]))
        sessions[entry] = Session(graph, fed_by=fed_by, inputs=point["inputs"], outputs=point["outputs"], fixed=fixed,
                                  past=pairs)
    check_fit({entry: ({k: p.shape for k, p in session.inputs.items()}, {k: p.shape for k, p in session.outputs.items()})
               for entry, session in sessions.items()},
              {entry: str(layout["entry_points"][entry].get("file") or f"the {entry} of {where}") for entry in sessions})
    return sessions


def check_fit(ports: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]], names: Mapping[str, str],
              error: type[MetadataError] = MetadataValidationError) -> None:
    """Refuse the parts of an encoder-decoder that do not fit together, naming them (names: each entry point's file)
    and what does not match: the encoder's output width against what the decoders take, past inputs no output feeds
    (or of another shape), logits widths. ports maps each entry point ("encoder", "decoder", "decoder_with_past") to
    its inputs and its outputs, each a mapping of name to shape (a list of ints and dimension names, or None)."""

    def refuse(a: str, b: str, what: str) -> MetadataError:
        both = names[a] if names[a] == names[b] else f"{names[a]} and {names[b]}"
        return error(f"{both} do not fit together: {what}; are they from the same export?")

    def width(shape: Any) -> int | None:
        last = shape[-1] if shape else None
        return last if isinstance(last, int) and last > 0 else None

    given = ports["encoder"][1]
    hidden = "last_hidden_state" if "last_hidden_state" in given else next(iter(given), "")
    for entry in ("decoder", "decoder_with_past"):
        taken = width(ports[entry][0].get("encoder_hidden_states")) if entry in ports else None
        if taken and width(given.get(hidden)) and width(given.get(hidden)) != taken:
            raise refuse("encoder", entry, f"{names['encoder']} gives {hidden} of width {width(given.get(hidden))}, "
                                           f"{names[entry]} takes encoder_hidden_states of width {taken}")
    if "decoder" not in ports or "decoder_with_past" not in ports:
        return
    first, later = names["decoder"], names["decoder_with_past"]
    for past, mine in ports["decoder_with_past"][0].items():
        present, sources = present_for(past), ("decoder",) if is_cross_attention(past) else ("decoder", "decoder_with_past")
        for entry in sources if is_past_input(past) else ():
            theirs = ports[entry][1].get(present, _UNSET)
            if theirs is _UNSET:
                raise refuse("decoder", "decoder_with_past", f"{later} takes {past}, but {names[entry]} gives no {present}")
            if mine and theirs and len(mine) == len(theirs) and any(
                    isinstance(x, int) and isinstance(y, int) and x and y and x != y for x, y in zip(mine, theirs)):
                raise refuse("decoder", "decoder_with_past", f"{later} takes {past} of shape {list(mine)}, {names[entry]} "
                                                             f"gives {present} of shape {list(theirs)}")
    logits = [width(ports[entry][1].get("logits")) for entry in ("decoder", "decoder_with_past")]
    if all(logits) and logits[0] != logits[1]:
        raise refuse("decoder", "decoder_with_past", f"logits of width {logits[0]} in {first}, {logits[1]} in {later}")


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


# --- Options ------------------------------------------------------------------------------------------

def _number(low: float, *, low_open: bool = False, high: float | None = None) -> _Check:
    """A real number (not a bool) in an interval."""
    def check(name: str, value: Any) -> float:
        real = _is_number(value)
        if not real or not (value > low if low_open else value >= low) or (high is not None and not value <= high):
            interval = f"{'(' if low_open else '['}{low}, {'inf)' if high is None else f'{high}]'}"
            raise InvalidInputError(f"{name} must be a number in {interval}, got {value!r}")
        return float(value)

    return check


def _token_list(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(_is_int(t) and t >= 0 for t in value):
        raise InvalidInputError(f"{name} must be a list of token ids (integers >= 0), got {value!r}")
    return tuple(value)


def _token_ids(name: str, value: Any) -> tuple[int, ...]:
    """A token id or a non-empty list of them (eos_token_id may name several)."""
    ids = _token_list(name, [value] if _is_int(value) else value)
    if not ids:
        raise InvalidInputError(f"{name} must be a token id or a non-empty list of token ids, got {value!r}")
    return ids


def _token_sequences(name: str, value: Any) -> tuple[tuple[int, ...], ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(s, (list, tuple)) and s for s in value):
        raise InvalidInputError(f"{name} must be a non-empty list of non-empty lists of token ids, got {value!r}")
    return tuple(_token_list(name, s) for s in value)


def _early_stopping(name: str, value: Any) -> bool | str:
    if value not in (True, False, "never") or (_is_number(value)):
        raise InvalidInputError(f"{name} must be True, False or 'never', got {value!r}")
    return bool(value) if value != "never" else "never"


def _strings(name: str, value: Any) -> tuple[str, ...]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise InvalidInputError(f"{name} must be a non-empty string or a list of them, got {value!r}")
    return tuple(texts)


# The constraint options (the Constraints room compiles them) are checked to hashable values: a _GenerationConfig
# stays one (the server batches by it).
def _json_schema_option(name: str, value: Any) -> str:
    """A JSON Schema (an object or a boolean, or its JSON text) as compact JSON text, its key order kept."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidInputError(f"{name} must be a JSON Schema (an object, or its JSON text): {exc}") from None
    if not isinstance(value, (dict, bool)):
        raise InvalidInputError(f"{name} must be a JSON Schema (an object, or its JSON text), got {value!r}")
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:  # a value JSON cannot hold, a circular reference
        raise InvalidInputError(f"{name} must be a JSON Schema, which holds JSON values only: {exc}") from None


def _choices_option(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise InvalidInputError(f"{name} must be a non-empty list of non-empty strings, got {value!r}")
    return tuple(value)


_GENERATION_OPTIONS = (  # name, check, transformers' global default (GenerationConfig)
    _Option("max_new_tokens", _integer(1), None),
    _Option("max_length", _integer(1), 20),
    _Option("min_new_tokens", _integer(0), None),
    _Option("min_length", _integer(0), 0),
    _Option("do_sample", _boolean, False),
    _Option("temperature", _number(0.0), 1.0),
    _Option("top_k", _integer(0), 50),
    _Option("top_p", _number(0.0, low_open=True, high=1.0), 1.0),
    _Option("typical_p", _number(0.0, low_open=True, high=1.0), 1.0),
    _Option("repetition_penalty", _number(0.0, low_open=True), 1.0),
    _Option("no_repeat_ngram_size", _integer(0), 0),
    _Option("num_beams", _integer(1), 1),
    _Option("length_penalty", _number(float("-inf")), 1.0),
    _Option("early_stopping", _early_stopping, False),
    _Option("num_return_sequences", _integer(1), 1),
    _Option("bos_token_id", _integer(0), None),
    _Option("eos_token_id", _token_ids, None),
    _Option("pad_token_id", _integer(0), None),
    _Option("bad_words_ids", _token_sequences, None),
    _Option("suppress_tokens", _token_list, None),
    _Option("begin_suppress_tokens", _token_list, None),
    _Option("forced_bos_token_id", _integer(0), None),
    _Option("forced_eos_token_id", _token_ids, None),
    _Option("stop_strings", _strings, None),
    _Option("use_cache", _boolean, True),
    # not transformers': sampling here draws from numpy, so a seed makes it reproducible
    _Option("seed", _integer(0), None),
    # not transformers': constrained generation (the Constraints room), at most one of them
    _Option("json_schema", _json_schema_option, None),
    _Option("json_object", _boolean, False),
    _Option("regex", _string, None),
    _Option("choices", _choices_option, None),
)
_GENERATION_OPTION_NAMES = tuple(o.name for o in _GENERATION_OPTIONS)
# options a caller gives, never a model's generation config or task_specific_params
_CALLER_OPTIONS = frozenset({"seed", "json_schema", "json_object", "regex", "choices"})

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
    json_schema: str | None
    json_object: bool
    regex: str | None
    choices: tuple[str, ...] | None
    explicit: frozenset[str]

    @property
    def pad(self) -> int | None:
        """The token finished rows are filled with: pad_token_id, else the first eos (as generate() sets it)."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_id[0] if self.eos_token_id else None


def _checked(where: str, key: str, value: Any, check: _Check, hint: str = "re-embed a fixed generation_config.json") -> Any:
    """A value of an embedded config read with the check of the option of that name: its complaint becomes a
    MetadataValidationError saying where the value is and how to fix it."""
    try:
        return check(key, value)
    except InvalidInputError as exc:
        raise MetadataValidationError(f"{where} is wrong: {exc}; {hint}") from None


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
        if key not in checks or key in _CALLER_OPTIONS:
            ignored.append(key)
            continue
        _checked("the embedded generation config", key, value, checks[key])
        values[key] = value
    if ignored and generation_config is not None:
        warnings.warn(f"the generation config sets {', '.join(sorted(ignored))}, which this runtime does not apply", stacklevel=4)
    return values


def _generation_config(model: Mapping[str, Any], user: Mapping[str, Any], task_defaults: Mapping[str, Any]) -> _GenerationConfig:
    """Options as the pipeline and generate() resolve them: the caller's (checked; None meaning unset) over the model's
    over the task's defaults (applied only where neither set the option: not max_new_tokens when max_length is
    set, the sampling ones only when sampling) over transformers' global defaults; each checked, then together."""
    checks = {o.name: o.check for o in _GENERATION_OPTIONS}
    explicit = {**model, **{k: v for k, v in user.items() if v is not None}}
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
            f"num_return_sequences={sequences} needs do_sample=True or num_beams >= {sequences}: greedy search returns "
            "one sequence"
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


# --- Logits processors --------------------------------------------------------------------------------

# Logits processors: each a callable (ids, scores) -> scores on the last position's scores (rows, vocab),
# float32, ids the rows so far (rows, length) including their left padding (transformers' input_ids). The loop
# owns the scores, so a processor may change them in place (a copy of the whole row per step is what a small
# model's loop would otherwise spend its time on).
_Processor = Callable[["np.ndarray", "np.ndarray"], "np.ndarray"]


def _in_vocab(tokens: Sequence[int], scores: np.ndarray) -> np.ndarray:
    """The tokens that have a column in scores."""
    return np.array([t for t in tokens if t < scores.shape[-1]], dtype=np.int64)


class _RepetitionPenalty:
    """RepetitionPenaltyLogitsProcessor: scores of tokens already in the row divided by the penalty (multiplied
    when negative); the left padding is not counted (prompt_ignore_length)."""

    def __init__(self, penalty: float, pad: np.ndarray) -> None:
        self.penalty, self.pad = penalty, pad

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
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
        sequences = [s for s in sequences if not (len(s) == 1 and s[0] in eos)]
        self.tokens = sorted({t for s in sequences for t in s})
        self.single = [s[0] for s in sequences if len(s) == 1]
        by_length: dict[int, list[Sequence[int]]] = {}
        for s in sequences:
            if len(s) > 1:
                by_length.setdefault(len(s) - 1, []).append(s)
        self.multi = [(np.array([s[:-1] for s in group]), np.array([s[-1] for s in group])) for group in by_length.values()]

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.tokens and self.tokens[-1] >= scores.shape[-1]:
            outside = [t for t in self.tokens if t >= scores.shape[-1]]
            raise InvalidInputError(
                f"bad_words_ids has token ids outside the model's {scores.shape[-1]}-token vocabulary: {outside}"
            )
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
        self.columns: np.ndarray | None = None

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        short = ids.shape[1] - self.pad < self.minimums
        if not short.any():
            return scores
        if self.columns is None:  # the same vocabulary every step
            self.columns = _in_vocab(self.eos, scores)
        if short.all():  # every row (the usual case): no fancy row indexing, a step costs microseconds
            scores[:, self.columns] = -np.inf
        else:
            scores[np.ix_(np.flatnonzero(short), self.columns)] = -np.inf
        return scores


class _ForcedTokens:
    """ForcedBOSTokenLogitsProcessor / ForcedEOSTokenLogitsProcessor: rows that reach a length (without
    padding) may only emit the forced tokens."""

    def __init__(self, tokens: Sequence[int], at: np.ndarray, pad: np.ndarray) -> None:
        self.tokens, self.at, self.pad = list(tokens), at, pad

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        rows = ids.shape[1] - self.pad == self.at
        if rows.any():
            scores[rows] = -np.inf
            scores[np.ix_(rows, _in_vocab(self.tokens, scores))] = 0
        return scores


class _SuppressTokens:
    """SuppressTokensLogitsProcessor, and SuppressTokensAtBeginLogitsProcessor when ``at`` gives the row length
    (without the padding ``pad``, per row or one for every row) where it applies."""

    def __init__(self, tokens: Sequence[int], at: np.ndarray | int | None = None, pad: np.ndarray | int = 0) -> None:
        self.tokens, self.at, self.pad = list(tokens), at, pad

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        rows = np.arange(len(scores)) if self.at is None else np.flatnonzero(
            np.broadcast_to(ids.shape[1] - np.asarray(self.pad) == self.at, len(scores)))
        scores[np.ix_(rows, _in_vocab(self.tokens, scores))] = -np.inf
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
        k = min(self.top_k, scores.shape[-1])
        kth = np.partition(scores, scores.shape[-1] - k, axis=-1)[:, scores.shape[-1] - k, None]
        return np.where(scores < kth, -np.inf, scores).astype(scores.dtype, copy=False)


def _softmax_sorted_cumsum(sorted_scores: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(sorted_scores - sorted_scores.max(axis=-1, keepdims=True))
    return np.cumsum(e / e.sum(axis=-1, keepdims=True), axis=-1)


def _unsort(mask: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    np.put_along_axis(out, order, mask, axis=-1)
    return out


class _TopP:
    """TopPLogitsWarper: the smallest set of likeliest tokens whose probabilities add up to top_p is kept."""

    def __init__(self, top_p: float, min_tokens_to_keep: int) -> None:
        self.top_p, self.keep = top_p, min_tokens_to_keep

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        order = np.argsort(scores, axis=-1, kind="stable")
        remove = _softmax_sorted_cumsum(np.take_along_axis(scores, order, axis=-1)) <= 1 - self.top_p
        remove[:, -self.keep:] = False
        return np.where(_unsort(remove, order), -np.inf, scores).astype(scores.dtype, copy=False)


class _Typical:
    """TypicalLogitsWarper: tokens kept by how close their information is to the row's entropy, up to a mass."""

    def __init__(self, mass: float, min_tokens_to_keep: int) -> None:
        self.mass, self.keep = mass, min_tokens_to_keep

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
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


def _logits_processors(config: _GenerationConfig, prompts: _Prompts, rows: np.ndarray,
                       constraints: Sequence[_TokenIndex | None] | None = None) -> list[_Processor]:
    """The processors generate() builds for these options, in _get_logits_processor's order (warpers last,
    when sampling); rows maps each decoding row to its prompt. A constraint (one per prompt, None for a free one)
    masks after the other processors and before the warpers (as a logits_processor given to generate() runs), so
    that sampling, top-k and top-p choose among the tokens it allows."""
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
    if constraints is not None and any(c is not None for c in constraints):
        processors.append(_Constrained([constraints[r] for r in rows.tolist()], eos))
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


# --- Stopping -----------------------------------------------------------------------------------------

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
        self.max_lengths, self.pad, self.eos, self.stop = max_lengths, pad, np.array(eos, dtype=np.int64), stop

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        done: np.ndarray = ids.shape[1] - self.pad >= self.max_lengths
        if len(self.eos):
            done |= (ids[:, -1:] == self.eos).any(axis=-1)
        if self.stop is not None:
            for row in np.flatnonzero(~done):
                done[row] = self.stop(ids[row, self.pad[row]:])
        return done


# --- Constraints --------------------------------------------------------------------------------------
# Constrained generation (the options json_schema, json_object, regex, choices): the constraint becomes a regular
# expression (a JSON Schema through _json_schema_regex, choices an alternation of their literal text), parsed
# (Python re syntax without back-references or look-around) into an NFA over UTF-8 bytes (a character class is
# the byte ranges of its encodings), determinized lazily (_Automaton: a state is a set of NFA states; transitions
# by byte class filled as they are first needed; capped). _TokenIndex maps an automaton state to the tokens whose
# bytes it can read, walking the whole vocabulary at once in numpy (tokens longest first, one byte column at a time:
# a trie's walk, vectorized), cached per state; _Constrained masks the logits row by row. Bytes, not characters, so
# a token that ends inside a multi-byte character is as good as any. The new text must match the whole pattern.

_MAX_PATTERN = 200_000  # characters of a pattern
_MAX_REPEAT = 10_000  # a {m,n} bound
_MAX_NFA_STATES = 300_000
_MAX_DFA_STATES = 20_000
_MAX_SUBSET_ITEMS = 4_000_000  # NFA states in the DFA's states, together (about 200 MB at most)
_MAX_MASKS = 1_024  # token masks kept per constraint (one bool per token each)
_MAX_CONSTRAINTS = 8  # compiled constraints kept per task
_MAX_TOKEN_BYTES = 256  # longer tokens are never allowed under a constraint (their walk would cost more than they give)
_JSON_DEPTH = 4  # containers nested in the object of json_object=True
_SCHEMA_ANY_DEPTH = 2  # containers nested in a schema's untyped parts ({}, true, an object without properties)
_MAX_NESTING = 120  # groups nested in a pattern (a schema nests at most half as deep)
_MAX_CHAR = 0x10FFFF
_BOUND_DIGITS = 15  # a schema's numeric bounds lie within +-10**15

_Node = tuple[Any, ...]  # ("set", ranges) | ("cat", nodes) | ("alt", nodes) | ("rep", node, low, high or None)
_Ranges = tuple[tuple[int, int], ...]
# re.ASCII's classes: a generated digit is an ASCII digit
_CLASS_ESCAPES: dict[str, _Ranges] = {"d": ((48, 57),), "w": ((48, 57), (65, 90), (95, 95), (97, 122)),
                                      "s": ((9, 13), (32, 32))}
_CHAR_ESCAPES = {"n": 10, "t": 9, "r": 13, "f": 12, "v": 11, "a": 7}
_QUANTIFIER = re.compile(r"\{(\d*)(,?)(\d*)\}")


def _merged(ranges: Iterable[tuple[int, int]]) -> _Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _negated(ranges: Iterable[tuple[int, int]]) -> _Ranges:
    out, start = [], 0
    for lo, hi in _merged(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _MAX_CHAR:
        out.append((start, _MAX_CHAR))
    return tuple(out)


class _RegexParser:
    """A pattern in Python's re syntax as a tree of _Node: literals, escapes, classes, groups, alternation and
    quantifiers (lazy ones read as greedy: the same language). Back-references, look-around, word boundaries,
    conditionals, atomic groups, possessive quantifiers and inline flags are refused: they are not regular, or
    change what matches. ^ and $ (\\A, \\Z) are taken at the ends only: the text matches the whole pattern."""

    def __init__(self, pattern: str, what: str) -> None:
        self.p, self.i, self.what = pattern, 0, what
        self.depth = 0

    def error(self, message: str) -> InvalidInputError:
        shown = self.p if len(self.p) <= 60 else self.p[:57] + "..."
        return InvalidInputError(f"{self.what}: {message} (at position {self.i} of {shown!r})")

    def parse(self) -> _Node:
        if len(self.p) > _MAX_PATTERN:
            raise InvalidInputError(f"{self.what} is {len(self.p)} characters long, more than {_MAX_PATTERN}; "
                                    "simplify it")
        node = self.alternation()
        if self.i < len(self.p):
            raise self.error("unbalanced parenthesis")
        return node

    def alternation(self) -> _Node:
        items = [self.sequence()]
        while self.i < len(self.p) and self.p[self.i] == "|":
            self.i += 1
            items.append(self.sequence())
        return items[0] if len(items) == 1 else ("alt", tuple(items))

    def sequence(self) -> _Node:
        items: list[_Node] = []
        while self.i < len(self.p) and self.p[self.i] not in "|)":
            atom = self.atom()
            if atom is not None:
                items.append(self.quantified(atom))
        return items[0] if len(items) == 1 else ("cat", tuple(items))

    def quantified(self, atom: _Node) -> _Node:
        p = self.p
        while self.i < len(p):
            c = p[self.i]
            bounds = _QUANTIFIER.match(p, self.i)
            if c in "*+?":
                low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
                self.i += 1
            elif c == "{" and bounds is not None and (bounds[1] or bounds[3]):
                if max(len(bounds[1]), len(bounds[3])) > len(str(_MAX_REPEAT)):
                    raise self.error(f"a repetition bound above {_MAX_REPEAT}")
                low = int(bounds[1] or 0)
                high = int(bounds[3]) if bounds[3] else (None if bounds[2] else low)
                if max(low, high or 0) > _MAX_REPEAT:
                    raise self.error(f"a repetition bound above {_MAX_REPEAT}")
                if high is not None and high < low:
                    raise self.error("min repeat greater than max repeat")
                self.i = bounds.end()
            else:
                return atom
            if self.i < len(p) and p[self.i] == "?":
                self.i += 1
            elif self.i < len(p) and p[self.i] == "+":
                raise self.error("possessive quantifiers (*+, ++, ?+) are not supported")
            atom = ("rep", atom, low, high)
        return atom

    def atom(self) -> _Node | None:
        p, c = self.p, self.p[self.i]
        self.i += 1
        if c == "(":
            return self.group()
        if c == "[":
            return ("set", self.klass())
        if c == ".":
            return ("set", ((0, 9), (11, _MAX_CHAR)))
        if c == "^" or c == "$":
            if (c == "^" and self.i == 1) or (c == "$" and self.i == len(p)):
                return None
            raise self.error(f"{c} is taken only at the {'start' if c == '^' else 'end'} of the pattern")
        if c in "*+?":
            raise self.error("nothing to repeat")
        if c == "\\":
            ahead = p[self.i: self.i + 1]
            if (ahead == "A" and self.i == 1) or (ahead == "Z" and self.i + 1 == len(p)):
                self.i += 1
                return None
            return ("set", self.escape(in_class=False))
        return ("set", ((ord(c), ord(c)),))

    def group(self) -> _Node | None:
        p = self.p
        if p.startswith("?", self.i):
            ahead = p[self.i: self.i + 4]
            if ahead.startswith("?:"):
                self.i += 2
            elif ahead.startswith("?P="):
                raise self.error("back-references ((?P=name)) are not supported: they are not regular")
            elif ahead.startswith(("?P<", "?<")) and not ahead.startswith(("?<=", "?<!")):
                end = p.find(">", self.i)
                if end < 0:
                    raise self.error("unterminated group name")
                self.i = end + 1
            elif ahead.startswith(("?=", "?!", "?<=", "?<!")):
                raise self.error(f"look-around (({ahead[:3] if ahead.startswith('?<') else ahead[:2]}...)) is not "
                                 "supported")
            elif ahead.startswith("?#"):
                end = p.find(")", self.i)
                if end < 0:
                    raise self.error("unterminated comment")
                self.i = end + 1
                return None
            elif ahead.startswith("?("):
                raise self.error("conditional groups ((?(1)...)) are not supported: they are not regular")
            elif ahead.startswith("?>"):
                raise self.error("atomic groups ((?>...)) are not supported")
            else:
                raise self.error("inline flags ((?i), (?s), ...) are not supported; write the characters out")
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise self.error(f"groups nested more than {_MAX_NESTING} deep")
        node = self.alternation()
        self.depth -= 1
        if self.i >= len(p) or p[self.i] != ")":
            raise self.error("missing ), unterminated subpattern")
        self.i += 1
        return node

    def escape(self, in_class: bool) -> _Ranges:
        p = self.p
        if self.i >= len(p):
            raise self.error("the pattern ends with a backslash")
        c = p[self.i]
        self.i += 1
        if c in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[c]
        if c.lower() in _CLASS_ESCAPES:
            return _negated(_CLASS_ESCAPES[c.lower()])
        if c in _CHAR_ESCAPES:
            return ((_CHAR_ESCAPES[c],) * 2,)
        if c == "b" and in_class:
            return ((8, 8),)
        if c in "xuU":
            digits = {"x": 2, "u": 4, "U": 8}[c]
            text = p[self.i: self.i + digits]
            if len(text) != digits or not all(d in "0123456789abcdefABCDEF" for d in text) or int(text, 16) > _MAX_CHAR:
                raise self.error(f"bad escape \\{c}{text}")
            self.i += digits
            return ((int(text, 16),) * 2,)
        if c == "0":
            octal = re.match(r"[0-7]{0,2}", p[self.i:])
            self.i += len(octal[0]) if octal else 0
            value = int("0" + (octal[0] if octal else ""), 8)
            return ((value, value),)
        if c.isdigit():
            raise self.error(f"back-references (\\{c}) are not supported: they are not regular")
        if c in "bB":
            raise self.error(f"word boundaries (\\{c}) are not supported")
        if c in "AZ":
            raise self.error(f"\\{c} is taken only at the {'start' if c == 'A' else 'end'} of the pattern")
        if c.isascii() and c.isalpha():
            raise self.error(f"bad escape \\{c}")
        return ((ord(c), ord(c)),)

    def klass(self) -> _Ranges:
        p = self.p
        negate = p.startswith("^", self.i)
        self.i += negate
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            if self.i >= len(p):
                raise self.error("unterminated character set")
            if p[self.i] == "]" and not first:
                self.i += 1
                break
            first = False
            item = self.class_item()
            if p.startswith("-", self.i) and not p.startswith("-]", self.i) and len(item) == 1 and item[0][0] == item[0][1]:
                self.i += 1
                end = self.class_item()
                if len(end) != 1 or end[0][0] != end[0][1] or end[0][0] < item[0][0]:
                    raise self.error("bad character range")
                item = ((item[0][0], end[0][0]),)
            ranges.extend(item)
        return _negated(ranges) if negate else _merged(ranges)

    def class_item(self) -> _Ranges:
        c = self.p[self.i]
        self.i += 1
        return self.escape(in_class=True) if c == "\\" else ((ord(c), ord(c)),)


def _regex_source(node: _Node) -> str:
    """A _Node as a pattern that _RegexParser (and re) read back."""
    kind = node[0]
    if kind == "set":
        ranges = node[1]
        if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            return _char_source(ranges[0][0])
        if not ranges:
            return "[^\\x00-\\U0010ffff]"
        return "[" + "".join(_char_source(lo) if lo == hi else f"{_char_source(lo)}-{_char_source(hi)}"
                             for lo, hi in ranges) + "]"
    if kind == "cat":
        return "".join(f"(?:{_regex_source(n)})" if n[0] == "alt" else _regex_source(n) for n in node[1])
    if kind == "alt":
        return "|".join(_regex_source(n) for n in node[1])
    inner = _regex_source(node[1])
    inner = inner if node[1][0] == "set" else f"(?:{inner})"
    low, high = node[2], node[3]
    return inner + ("*" if (low, high) == (0, None) else "+" if (low, high) == (1, None) else "?" if (low, high) == (0, 1)
                    else f"{{{low},}}" if high is None else f"{{{low},{high}}}")


def _char_source(code: int) -> str:
    char = chr(code)
    if char.isascii() and char.isalnum():
        return char
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _utf8_sequences(lo: int, hi: int) -> list[list[tuple[int, int]]]:
    """The code points lo..hi (surrogates left out) as UTF-8: sequences of byte ranges, each matching whole
    characters (as regex-automata's Utf8Sequences)."""
    out: list[list[tuple[int, int]]] = []
    pending = [(lo, hi)]
    while pending:
        lo, hi = pending.pop()
        if lo <= 0xDFFF and hi >= 0xD800:
            pending += [r for r in ((lo, 0xD7FF), (0xE000, hi)) if r[0] <= r[1]]
            continue
        split = next(((lo, b), (b + 1, hi)) for b in (0x7F, 0x7FF, 0xFFFF, hi) if lo <= b <= hi)
        if split[0][1] != hi:
            pending += split
            continue
        if hi <= 0x7F:
            out.append([(lo, hi)])
            continue
        for k in range(1, 4):
            m = (1 << (6 * k)) - 1
            if lo & ~m != hi & ~m:
                if lo & m:
                    pending += [(lo, lo | m), ((lo | m) + 1, hi)]
                    break
                if hi & m != m:
                    pending += [(lo, (hi & ~m) - 1), (hi & ~m, hi)]
                    break
        else:
            out.append(list(zip(chr(lo).encode(), chr(hi).encode())))
    return out


class _Nfa:
    """Thompson's construction over bytes: per state its byte-range edges and its empty moves; capped."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.edges: list[list[tuple[int, int, int]]] = []
        self.eps: list[list[int]] = []

    def state(self) -> int:
        if len(self.eps) >= _MAX_NFA_STATES:
            raise InvalidInputError(f"{self.what} is too large: its automaton passes {_MAX_NFA_STATES} states; "
                                    "simplify it (fewer alternatives, smaller repetition bounds)")
        self.edges.append([])
        self.eps.append([])
        return len(self.eps) - 1

    def build(self, node: _Node) -> tuple[int, int]:
        """The (start, end) states of a fragment matching node; each call builds a new copy."""
        kind = node[0]
        if kind == "set":
            start, end = self.state(), self.state()
            for lo, hi in node[1]:
                for sequence in _utf8_sequences(lo, hi):
                    at = start
                    for k, (low, high) in enumerate(sequence):
                        to = end if k == len(sequence) - 1 else self.state()
                        self.edges[at].append((low, high, to))
                        at = to
            return start, end
        if kind == "cat":
            start = end = self.state()
            for item in node[1]:
                first, last = self.build(item)
                self.eps[end].append(first)
                end = last
            return start, end
        if kind == "alt":
            start, end = self.state(), self.state()
            for item in node[1]:
                first, last = self.build(item)
                self.eps[start].append(first)
                self.eps[last].append(end)
            return start, end
        _, item, low, high = node
        start = end = self.state()
        for _ in range(low):
            first, last = self.build(item)
            self.eps[end].append(first)
            end = last
        if high is None:
            loop = self.state()
            self.eps[end].append(loop)
            first, last = self.build(item)
            self.eps[loop].append(first)
            self.eps[last].append(loop)
            return start, loop
        exit_ = self.state()
        for _ in range(high - low):
            first, last = self.build(item)
            self.eps[end] += [exit_, first]
            end = last
        self.eps[end].append(exit_)
        return start, exit_


class _Automaton:
    """A DFA over bytes built lazily from an NFA by the subset construction: state 0 is the start, -1 the dead state;
    ``table[state, byte class]`` is the next state (-2 until first needed). The NFA is trimmed to the states that can
    still reach its end, so every DFA state can still complete the text."""

    def __init__(self, nfa: _Nfa, start: int, end: int, what: str) -> None:
        self.what = what
        count = len(nfa.eps)
        back: list[list[int]] = [[] for _ in range(count)]
        for s in range(count):
            for t in nfa.eps[s]:
                back[t].append(s)
            for _, _, t in nfa.edges[s]:
                back[t].append(s)
        live = bytearray(count)
        live[end] = 1
        stack = [end]
        while stack:
            for s in back[stack.pop()]:
                if not live[s]:
                    live[s] = 1
                    stack.append(s)
        if not live[start]:
            raise InvalidInputError(f"{what} matches no text at all; nothing can be generated under it")
        cuts = {0, 256}
        for s in range(count):
            if live[s]:
                for lo, hi, t in nfa.edges[s]:
                    if live[t]:
                        cuts.update((lo, hi + 1))
        bounds = sorted(cuts)
        self.classes = np.zeros(256, dtype=np.int32)
        for k in range(len(bounds) - 1):
            self.classes[bounds[k]: bounds[k + 1]] = k
        self.byte_class = self.classes.tolist()
        self.moves: list[dict[int, list[int]]] = [{} for _ in range(count)]
        for s in range(count):
            for lo, hi, t in nfa.edges[s] if live[s] else ():
                if live[t]:
                    for k in range(self.byte_class[lo], self.byte_class[hi] + 1):
                        self.moves[s].setdefault(k, []).append(t)
        self.eps = [[t for t in targets if live[t]] for targets in nfa.eps]
        self.end = end
        self.sets: list[frozenset[int]] = []
        self.held = 0  # NFA states in all the sets: what their memory grows with
        self.ids: dict[frozenset[int], int] = {}
        self.accepting: list[bool] = []
        self.table = np.full((64, len(bounds) - 1), -2, dtype=np.int32)
        self.add(self.closure([start]))

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        seen = set(states)
        stack = list(seen)
        while stack:
            for t in self.eps[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return frozenset(seen)

    def add(self, states: frozenset[int]) -> int:
        known = self.ids.get(states)
        if known is not None:
            return known
        self.held += len(states)
        if len(self.sets) >= _MAX_DFA_STATES or self.held > _MAX_SUBSET_ITEMS:
            raise InvalidInputError(f"{self.what} needs more than {_MAX_DFA_STATES} automaton states (or states of "
                                    f"{_MAX_SUBSET_ITEMS} NFA states in all); simplify it (patterns such as "
                                    "(a|b)*a(a|b){20} grow exponentially)")
        if len(self.sets) == len(self.table):
            self.table = np.concatenate([self.table, np.full_like(self.table, -2)])
        self.ids[states] = len(self.sets)
        self.sets.append(states)
        self.accepting.append(self.end in states)
        return len(self.sets) - 1

    def step(self, state: int, byte_class: int) -> int:
        """The state after a byte of that class (-1: dead)."""
        known = int(self.table[state, byte_class])
        if known != -2:
            return known
        targets = [t for s in self.sets[state] for t in self.moves[s].get(byte_class, ())]
        after = self.add(self.closure(targets)) if targets else -1
        self.table[state, byte_class] = after
        return after

    def walk(self, state: int, data: bytes) -> int:
        for byte in data:
            if state < 0:
                break
            state = self.step(state, self.byte_class[byte])
        return state


def _regex_constraint(pattern: str, what: str = "regex") -> _Automaton:
    """A pattern (Python re syntax, matched whole) compiled to a lazily built automaton over UTF-8 bytes;
    InvalidInputError names what it cannot take."""
    if not isinstance(pattern, str):
        raise InvalidInputError(f"{what} must be a string, got {pattern!r}")
    nfa = _Nfa(what)
    start, end = nfa.build(_RegexParser(pattern, what).parse())
    return _Automaton(nfa, start, end, what)


# JSON Schema as a regular expression: the text json.dumps(value, ensure_ascii=False) writes (separators ", " and
# ": ", no newlines), properties in the schema's order, required ones always present, optional ones skippable.

_JSON_STRING_CHAR = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})'
_JSON_STRING = f'"{_JSON_STRING_CHAR}*"'
_JSON_INTEGER = r"(?:0|-?[1-9][0-9]*)"  # not -0, which json.dumps never writes for an int
_JSON_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_JSON_DAYS = (r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
              r"|02-(?:0[1-9]|1[0-9]|2[0-8]))")  # February to the 28th
_JSON_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_JSON_FORMATS = {  # what the string holds (no character needs escaping)
    "date-time": rf"[0-9]{{4}}-{_JSON_DAYS}T{_JSON_TIME}",
    "date": rf"[0-9]{{4}}-{_JSON_DAYS}",
    "time": _JSON_TIME,
    "email": r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
}
# keywords that constrain a value in ways this runtime does not express: refused rather than ignored
_SCHEMA_UNSUPPORTED = ("not", "if", "then", "else", "patternProperties", "dependentRequired", "dependentSchemas",
                       "prefixItems", "contains", "multipleOf", "minProperties", "maxProperties", "propertyNames",
                       "unevaluatedProperties", "unevaluatedItems", "dependencies")
_JSON_ANY: dict[int, str] = {}


def _json_any(depth: int) -> str:
    """Any JSON value with containers nested at most depth deep."""
    if depth not in _JSON_ANY:
        scalar = f"{_JSON_STRING}|{_JSON_NUMBER}|true|false|null"
        if depth <= 0:
            _JSON_ANY[depth] = f"(?:{scalar})"
        else:
            inner = _json_any(depth - 1)
            _JSON_ANY[depth] = (f"(?:{scalar}|\\[(?:{inner}(?:, {inner})*)?\\]"
                                f"|\\{{(?:{_JSON_STRING}: {inner}(?:, {_JSON_STRING}: {inner})*)?\\}})")
    return _JSON_ANY[depth]


def _floor(x: float) -> int:
    return int(x // 1)


def _ceil(x: float) -> int:
    return -int(-x // 1)


def _digit_strings(a: str, b: str) -> str:
    """All digit strings from a to b (of one length) as a pattern."""
    if a == b:
        return a
    k = len(a) - 1
    if a[0] == b[0]:
        return a[0] + _digit_strings(a[1:], b[1:])
    tail = f"[0-9]{{{k}}}" if k else ""
    parts, first, last = [], int(a[0]), int(b[0])
    if a[1:] != "0" * k:
        parts.append(a[0] + _digit_strings(a[1:], "9" * k))
        first += 1
    end = None
    if b[1:] != "9" * k:
        end = b[0] + _digit_strings("0" * k, b[1:])
        last -= 1
    if first <= last:
        parts.append((f"[{first}-{last}]" if first < last else str(first)) + tail)
    if end is not None:
        parts.append(end)
    return "(?:" + "|".join(parts) + ")"


def _natural_range(low: int, high: int | None) -> str:
    """The numerals (no leading zeros) of the integers low..high (high None: unbounded), 0 <= low <= high."""
    parts = []
    top = len(str(high)) if high is not None else len(str(low))
    for digits in range(len(str(low)), top + 1):
        a = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        b = 10 ** digits - 1 if high is None else min(high, 10 ** digits - 1)
        if a <= b:
            parts.append(_digit_strings(str(a), str(b)))
    if high is None:
        parts.append(f"[1-9][0-9]{{{len(str(low))},}}")
    return "(?:" + "|".join(parts) + ")"


def _integer_range(low: int | None, high: int | None) -> str | None:
    """Integers low..high (None: unbounded) as JSON writes them; None when there are none."""
    parts = []
    if low is None or low < 0:
        top = None if low is None else -low
        bottom = 1 if high is None or high >= 0 else -high
        if top is None or bottom <= top:
            parts.append("-" + _natural_range(bottom, top))
    if high is None or high >= 0:
        bottom = 0 if low is None or low < 0 else low
        if high is None or bottom <= high:
            parts.append(_natural_range(bottom, high))
    return "(?:" + "|".join(parts) + ")" if parts else None


class _SchemaRegex:
    """A JSON Schema (draft 2020-12 and the drafts before it, as far as a regular language goes) as a pattern."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.refs: list[str] = []

    def error(self, path: str, message: str) -> InvalidInputError:
        return InvalidInputError(f"json_schema at {path or '/'}: {message}")

    def value(self, schema: Any, path: str) -> str:
        if path.count("/") > _MAX_NESTING // 2:
            raise self.error(path[:200] + "...", f"schemas nested more than {_MAX_NESTING // 2} deep")
        if schema is True or schema == {}:
            return _json_any(_SCHEMA_ANY_DEPTH)
        if schema is False:
            raise self.error(path, "the schema false matches nothing")
        if not isinstance(schema, dict):
            raise self.error(path, f"a schema must be an object or a boolean, got {schema!r}")
        for key in _SCHEMA_UNSUPPORTED:
            if key in schema:
                raise self.error(path, f"{key!r} is not supported in constrained generation")
        if schema.get("uniqueItems") is True:
            raise self.error(path, "uniqueItems is not supported in constrained generation (not regular)")
        if "$ref" in schema:
            return self.ref(schema, path)
        if "const" in schema:
            return re.escape(json.dumps(schema["const"], ensure_ascii=False))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.error(path, "enum must be a non-empty array")
            return "(?:" + "|".join(re.escape(json.dumps(v, ensure_ascii=False)) for v in values) + ")"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = schema[key]
                if not isinstance(options, list) or not options:
                    raise self.error(path, f"{key} must be a non-empty array")
                rest = {k: v for k, v in schema.items() if k != key}
                return "(?:" + "|".join(self.value({**rest, **o} if isinstance(o, dict) else o, f"{path}/{key}/{i}")
                                        for i, o in enumerate(options)) + ")"
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise self.error(path, "allOf is supported with one schema only")
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            return self.value({**rest, **parts[0]} if isinstance(parts[0], dict) else parts[0], f"{path}/allOf/0")
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise self.error(path, "type must not be an empty array")
            return "(?:" + "|".join(self.value({**schema, "type": k}, path) for k in kind) + ")"
        if kind is None:
            kind = "object" if "properties" in schema or "required" in schema else "array" if "items" in schema else None
            if kind is None:
                return _json_any(_SCHEMA_ANY_DEPTH)
        if kind == "object":
            return self.object(schema, path)
        if kind == "array":
            return self.array(schema, path)
        if kind == "string":
            return self.string(schema, path)
        if kind in ("integer", "number"):
            return self.number(schema, path, kind == "integer")
        if kind in ("boolean", "null"):
            return "(?:true|false)" if kind == "boolean" else "null"
        raise self.error(path, f"unknown type {kind!r}")

    def ref(self, schema: dict[str, Any], path: str) -> str:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.error(path, f"$ref {ref!r}: only references inside the schema (#/$defs/...) are supported")
        if ref in self.refs:
            raise self.error(path, f"$ref {ref!r} is recursive; a recursive schema is not a regular language, so it "
                             "cannot constrain generation (unroll it to a fixed depth)")
        target: Any = self.root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise self.error(path, f"$ref {ref!r} points nowhere in the schema")
            target = target[part]
        self.refs.append(ref)
        try:
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.value({**rest, **target} if isinstance(target, dict) and rest else target, path)
        finally:
            self.refs.pop()

    def object(self, schema: dict[str, Any], path: str) -> str:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        if not isinstance(properties, dict) or not isinstance(required, list):
            raise self.error(path, "properties must be an object and required an array")
        if not properties and not required:
            if schema.get("additionalProperties") is False:
                return r"\{\}"
            inner = _json_any(_SCHEMA_ANY_DEPTH - 1)
            return f"\\{{(?:{_JSON_STRING}: {inner}(?:, {_JSON_STRING}: {inner})*)?\\}}"
        names = [*properties, *(r for r in required if r not in properties)]
        members = [(re.escape(json.dumps(name, ensure_ascii=False)) + ": "
                    + self.value(properties.get(name, True), f"{path}/properties/{name}"), name in required)
                   for name in names]
        # after[k]: the members from k on once one is written, each behind its comma, optional ones skippable
        after = [""] * (len(members) + 1)
        for k in range(len(members) - 1, -1, -1):
            member, needed = members[k]
            after[k] = (f", {member}" if needed else f"(?:, {member})?") + after[k + 1]
        # the first member written: an optional one before the first required one, or that one
        firsts = []
        for k, (member, needed) in enumerate(members):
            firsts.append(member + after[k + 1])
            if needed:
                break
        body = "(?:" + "|".join(firsts) + ")" + ("" if any(needed for _, needed in members) else "?")
        return f"\\{{{body}\\}}"

    def array(self, schema: dict[str, Any], path: str) -> str:
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if not _is_int(low) or low < 0 or (high is not None and (not _is_int(high) or high < low)):
            raise self.error(path, "minItems and maxItems must be integers, 0 <= minItems <= maxItems")
        if max(low, high or 0) > _MAX_REPEAT:
            raise self.error(path, f"minItems and maxItems above {_MAX_REPEAT} are not supported")
        if high == 0:
            return r"\[\]"
        item = self.value(schema.get("items", True), f"{path}/items")
        more = f"(?:, {item}){{{max(low - 1, 0)},{'' if high is None else high - 1}}}"
        return f"\\[{item}{more}\\]" if low else f"\\[(?:{item}{more})?\\]"

    def string(self, schema: dict[str, Any], path: str) -> str:
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        pattern, form = schema.get("pattern"), schema.get("format")
        if not _is_int(low) or low < 0 or (high is not None and (not _is_int(high) or high < low)):
            raise self.error(path, "minLength and maxLength must be integers, 0 <= minLength <= maxLength")
        if pattern is not None or (isinstance(form, str) and form in _JSON_FORMATS):
            if low or high is not None or (pattern is not None and form in _JSON_FORMATS):
                raise self.error(path, "pattern, format and minLength/maxLength cannot be combined here; use one")
            if pattern is None:
                return f'"{_JSON_FORMATS[str(form)]}"'
            if not isinstance(pattern, str):
                raise self.error(path, f"pattern must be a string, got {pattern!r}")
            # the string's characters as the pattern matches them, those JSON must escape left out
            node = _RegexParser(pattern, f"json_schema at {path or '/'}: pattern").parse()
            return '"' + _regex_source(_without_escapes(node)) + '"'
        if max(low, high or 0) > _MAX_REPEAT:
            raise self.error(path, f"minLength and maxLength above {_MAX_REPEAT} are not supported")
        return f'"{_JSON_STRING_CHAR}{{{low},{"" if high is None else high}}}"'

    def number(self, schema: dict[str, Any], path: str, integer: bool) -> str:
        bounds = {}
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            value = schema.get(key)
            if value is not None and not isinstance(value, bool) and not _is_number(value):
                raise self.error(path, f"{key} must be a number, got {value!r}")
            if _is_number(value) and not -(10 ** _BOUND_DIGITS) <= value <= 10 ** _BOUND_DIGITS:
                raise self.error(path, f"{key} must lie within +-10**{_BOUND_DIGITS} here, got {value!r}")
            bounds[key] = value
        low, low_open = bounds["minimum"], False
        high, high_open = bounds["maximum"], False
        # draft 4 writes exclusiveMinimum: true beside minimum; later drafts give the bound itself
        if bounds["exclusiveMinimum"] is True:
            low_open = True
        elif _is_number(bounds["exclusiveMinimum"]) and (low is None or bounds["exclusiveMinimum"] >= low):
            low, low_open = bounds["exclusiveMinimum"], True
        if bounds["exclusiveMaximum"] is True:
            high_open = True
        elif _is_number(bounds["exclusiveMaximum"]) and (high is None or bounds["exclusiveMaximum"] <= high):
            high, high_open = bounds["exclusiveMaximum"], True
        if low is None and high is None:
            return _JSON_INTEGER if integer else _JSON_NUMBER
        # integers in range; decimals only where their whole unit interval is in range (a subset, but regular)
        first = None if low is None else (_floor(low) + 1 if low_open else _ceil(low))
        last = None if high is None else (_ceil(high) - 1 if high_open else _floor(high))
        parts = [_integer_range(first, last)]
        if not integer:  # ip.digits lies in [ip, ip + 1); -ip.digits in (-ip - 1, -ip]
            parts.append(_integer_range(0 if first is None else max(first, 0),
                                        None if high is None else _floor(high) - 1))
            if low is None or low < 0:
                smallest = 0 if high is None else max(0, _floor(-high) + 1 if high_open else _ceil(-high))
                parts.append(_integer_range(smallest, None if low is None else _floor(-low) - 1))
            parts = [parts[0], *(f"{sign}{p}\\.[0-9]+" for sign, p in zip(("", "-"), parts[1:]) if p is not None)]
        kept = [p for p in parts if p is not None]
        if not kept:
            raise self.error(path, "no number lies between its bounds")
        return "(?:" + "|".join(kept) + ")"


def _without_escapes(node: _Node) -> _Node:
    """node with the characters a JSON string must escape (", \\ and controls) taken out of every class."""
    kind = node[0]
    if kind == "set":
        return ("set", _negated([*_negated(node[1]), (0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]))
    if kind in ("cat", "alt"):
        return (kind, tuple(_without_escapes(n) for n in node[1]))
    return ("rep", _without_escapes(node[1]), node[2], node[3])


def _json_schema_regex(schema: Any) -> str:
    """A JSON Schema as a pattern (Python re syntax, matched whole) whose texts are the JSON values it accepts, as
    json.dumps(value, ensure_ascii=False) writes them (escapes allowed in strings): separators ", " and ": ",
    properties in the order of "properties" (required ones always,
    optional ones when the model writes them), no other properties. InvalidInputError for what is not regular
    (recursive $ref, uniqueItems, ...). Numbers with bounds are the integers in range and the decimals whose unit
    interval is in range (no exponents); a "pattern" is matched whole (as if anchored), its characters that JSON
    escapes left out; an untyped value (``{}``, an object without properties) nests containers at most
    _SCHEMA_ANY_DEPTH deep."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise InvalidInputError(f"json_schema is not valid JSON: {exc}") from None
    return _SchemaRegex(schema).value(schema, "")


# Token masks: an automaton state's allowed tokens over the vocabulary, and the logits processor.

class _Vocabulary:
    """Each token's bytes (_TokenText: byte-level and byte-fallback pieces as their bytes, SentencePiece's ▁ as a
    space), special tokens empty (never allowed under a constraint; eos ends it), and the bytes as a matrix of
    tokens sorted longest first, for _TokenIndex's walk."""

    def __init__(self, tokenizer: TextTokenizer, token_text: _TokenText) -> None:
        backend = tokenizer.backend
        self.size = int(backend.get_vocab_size(with_added_tokens=True))
        special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        self.texts: list[bytes] = []
        for i in range(self.size):
            text = b"" if i in special else token_text(i)
            text = text if isinstance(text, bytes) else text.encode("utf-8")
            self.texts.append(text if len(text) <= _MAX_TOKEN_BYTES else b"")
        lengths = np.array([len(t) for t in self.texts], dtype=np.int64)
        self.order = np.argsort(-lengths, kind="stable")
        ordered = lengths[self.order]
        width = int(ordered[0]) if self.size else 0
        # longer[j]: how many tokens have more than j bytes (the first ones, longest first)
        self.longer = np.searchsorted(-ordered, -np.arange(width), side="left")
        flat = np.frombuffer(b"".join(self.texts[i] for i in self.order.tolist()), dtype=np.uint8)
        rows = np.repeat(np.arange(self.size), ordered)
        columns = np.arange(len(flat)) - np.repeat(np.cumsum(ordered) - ordered, ordered)
        self.matrix = np.zeros((self.size, max(width, 1)), dtype=np.uint8)
        self.matrix[rows, columns] = flat
        self.nonempty = ordered > 0


class _TokenIndex:
    """A constraint's automaton over a vocabulary: per automaton state, the tokens whose bytes it reads without
    dying (a boolean mask, True where banned, eos not included), computed the first time a state is met and kept."""

    def __init__(self, automaton: _Automaton, vocabulary: _Vocabulary) -> None:
        self.automaton, self.vocabulary = automaton, vocabulary
        # the byte classes of the tokens' bytes, one contiguous row per byte position
        self.columns = np.ascontiguousarray(automaton.classes.astype(np.uint8)[vocabulary.matrix].T)
        self.masks: OrderedDict[int, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def banned(self, state: int) -> np.ndarray:
        with self.lock:
            mask = self.masks.get(state)
            if mask is None:
                mask = self._walk(state)
                if len(self.masks) >= _MAX_MASKS:
                    self.masks.popitem(last=False)
                self.masks[state] = mask
            return mask

    def _walk(self, state: int) -> np.ndarray:
        """All tokens read from state at once, one byte column at a time (tokens sorted longest first, so the
        tokens still reading are a prefix of the rows)."""
        automaton, vocabulary = self.automaton, self.vocabulary
        alive = vocabulary.nonempty.copy()
        rows = np.flatnonzero(alive)  # the tokens still reading, and their states
        current = np.full(len(rows), state, dtype=np.int64)
        width = automaton.table.shape[1]
        for column, count in enumerate(vocabulary.longer.tolist()):
            reading = int(np.searchsorted(rows, count))  # the rest have no byte in this column: they read whole
            if not reading:
                break
            rows, current = rows[:reading], current[:reading]
            cells = current * width + self.columns[column][rows]
            after = automaton.table.reshape(-1)[cells]
            unknown = after == -2
            if unknown.any():
                for cell in set(cells[unknown].tolist()):
                    automaton.step(*divmod(cell, width))
                after = automaton.table.reshape(-1)[cells]  # the table may have grown
            dead = after < 0
            if dead.any():
                alive[rows[dead]] = False
                rows, after = rows[~dead], after[~dead]
            current = after
        banned = np.ones(vocabulary.size, dtype=bool)
        banned[vocabulary.order[alive]] = False
        return banned

    def advance(self, state: int, token: int) -> int:
        texts = self.vocabulary.texts
        if state < 0 or token >= len(texts) or not texts[token]:
            return -1
        with self.lock:
            return self.automaton.walk(state, texts[token])

    def text(self, tokens: Iterable[int]) -> str:
        """The text the tokens stand for under the constraint: their bytes joined (special tokens, eos among
        them, left out), as UTF-8."""
        texts = self.vocabulary.texts
        return b"".join(texts[t] for t in tokens if 0 <= t < len(texts)).decode("utf-8", errors="replace")


class _Constrained:
    """The logits processor of constrained rows: each row's automaton state follows the tokens it chose (found by the
    row's new tokens, so beams that reorder and rows that repeat keep theirs), tokens it cannot read banned, eos
    allowed only where the text is complete (and forced when nothing else can follow). Rows whose index is None
    are left alone; so are finished rows (their filler is no text of the constraint)."""

    def __init__(self, indexes: Sequence[_TokenIndex | None], eos: Sequence[int]) -> None:
        self.indexes, self.eos = list(indexes), np.array(eos, dtype=np.int64)
        self.start: int | None = None
        self.states: dict[tuple[int, bytes], int] = {}

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.start is None:
            self.start = ids.shape[1]
        states: dict[tuple[int, bytes], int] = {}
        width = scores.shape[-1]
        eos = self.eos[self.eos < width]
        for row, index in enumerate(self.indexes):
            if index is None:
                continue
            new = ids[row, self.start:]
            key = (id(index), new.tobytes())
            state = states.get(key)
            if state is None:
                state = self.states.get(key)
            if state is None:
                before = self.states.get((id(index), new[:-1].tobytes())) if len(new) else 0
                if before is None:  # not seen at the step before: read the row from the start
                    before = 0
                    for token in new[:-1].tolist():
                        before = index.advance(before, token)
                state = index.advance(before, int(new[-1])) if len(new) else before
            states[key] = state
            if state < 0:
                continue
            scores[row] = self.mask(index, state, scores[row], eos)
        self.states = states
        return scores

    def mask(self, index: _TokenIndex, state: int, scores: np.ndarray, eos: np.ndarray) -> np.ndarray:
        banned = index.banned(state)
        size, width = len(banned), len(scores)
        complete = index.automaton.accepting[state]
        kept = scores[eos].copy()
        np.copyto(scores[:size], -np.inf, where=banned[:width])
        scores[size:] = -np.inf
        scores[eos] = kept if complete else -np.inf
        if complete and banned.all():
            scores[eos] = np.where(np.isfinite(kept), kept, 0.0)  # nothing else can follow: end here
        if not np.isfinite(scores).any():
            allowed = np.flatnonzero(~banned[:width])
            if not len(allowed) and not complete:
                raise InvalidInputError(
                    f"{index.automaton.what}: the model's vocabulary has no token that can continue the text here; "
                    "the constraint asks for characters the tokenizer cannot write")
            # the other processors banned every token the constraint allows: the constraint wins
            scores[allowed] = 0.0
            if complete:
                scores[eos] = 0.0
        return scores


def _constraint_pattern(config: _GenerationConfig) -> tuple[str, str] | None:
    """The call's constraint (the options json_schema, json_object, regex, choices) as (the option, its pattern);
    None without one. At most one may be set."""
    given = [name for name in ("json_schema", "json_object", "regex", "choices") if getattr(config, name)]
    if not given:
        return None
    if len(given) > 1:
        raise InvalidInputError(f"{' and '.join(given)} cannot be combined; pass one constraint")
    if config.json_schema is not None:
        return "json_schema", _json_schema_regex(config.json_schema)
    if config.json_object:
        inner = _json_any(_JSON_DEPTH - 1)
        return "json_object", f"\\{{(?:{_JSON_STRING}: {inner}(?:, {_JSON_STRING}: {inner})*)?\\}}"
    if config.regex is not None:
        return "regex", config.regex
    return "choices", "|".join(re.escape(c) for c in config.choices or ())


# --- Search -------------------------------------------------------------------------------------------

class _Step:
    """What the decoding loop needs from a model. prefill runs the prompts (rows, width) and returns an
    opaque state and the last position's logits (rows, vocab); advance appends one token per row; reorder
    keeps the given rows (repeating or dropping them: beams, several sequences per prompt). An encoder-decoder
    step takes the decoder prompt (start tokens) here, and carries the encoder outputs in its state."""

    def prefill(self, ids: np.ndarray, mask: np.ndarray, use_cache: bool, capacity: int = 0) -> tuple[Any, np.ndarray]:
        """capacity: the most tokens a row reaches (prompt included), for a step that preallocates its past."""
        raise NotImplementedError

    def advance(self, state: Any, tokens: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reorder(self, state: Any, rows: np.ndarray) -> None:
        raise NotImplementedError


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of each row, largest first (ties: lower index first)."""
    part = np.argpartition(-values, k - 1, axis=-1)[:, :k] if k < values.shape[-1] else np.broadcast_to(
        np.arange(values.shape[-1]), values.shape)
    picked = np.take_along_axis(values, part, axis=-1)
    order = np.lexsort((part, -picked), axis=-1)
    return np.take_along_axis(part, order, axis=-1)


class _Search:
    """One generation call: iterating runs it step by step, yielding the new token of every row; then
    ``sequences`` holds the new tokens of each returned sequence, num_return_sequences per prompt in prompt
    order, cut as the prompt alone would be (a batch pads finished rows while others go on)."""

    def __init__(self, step: _Step, prompts: _Prompts, config: _GenerationConfig, stop: _StopStrings | None,
                 extra: Sequence[_Processor] = (), constraints: Sequence[_TokenIndex | None] | None = None) -> None:
        self.step, self.prompts, self.config, self.stop = step, prompts, config, stop
        # processors of the caller's own (generate()'s logits_processor argument), after those of the options
        self.extra = list(extra)
        self.constraints = constraints  # one per prompt (_Generating.constraints), None for a free one
        self.sequences: list[np.ndarray] = []
        self.unfinished: np.ndarray | None = None  # sampling's rows still going (after the step before the last yield)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._beam_search() if self.config.num_beams > 1 else self._sample()

    def run(self) -> list[np.ndarray]:
        """Run to the end; the sequences."""
        for _ in self:
            pass
        return self.sequences

    def _sample(self) -> Iterator[np.ndarray]:
        """Greedy search or multinomial sampling (transformers' _sample)."""
        config, prompts = self.config, self.prompts
        count = config.num_return_sequences if config.do_sample else 1
        rows = np.repeat(np.arange(len(prompts.ids)), count)
        pad, width = prompts.pad[rows], prompts.ids.shape[1]
        new_tokens = prompts.max_lengths[rows] - (width - pad)
        state, logits = self.step.prefill(prompts.ids, prompts.mask, config.use_cache, width + int(new_tokens.max()))
        if count > 1:
            self.step.reorder(state, rows)
            logits = logits[rows]
        ids = np.empty((len(rows), width + int(new_tokens.max())), dtype=np.int64)
        ids[:, :width] = prompts.ids[rows]
        processors = [*_logits_processors(config, prompts, rows, self.constraints), *self.extra]
        stopping = _Stopping(prompts.max_lengths[rows], pad, config.eos_token_id or (), self.stop)
        rng = np.random.default_rng(config.seed) if config.do_sample else None
        fill = config.pad if config.pad is not None else 0
        unfinished = self.unfinished = np.ones(len(rows), dtype=bool)
        generated = np.zeros(len(rows), dtype=np.int64)
        length = width
        while True:
            scores = logits.astype(np.float32, copy=False)
            for processor in processors:
                scores = processor(ids[:, :length], scores)
            tokens = scores.argmax(axis=-1) if rng is None else _draw(scores, rng)
            if config.eos_token_id and not unfinished.all():
                tokens = np.where(unfinished, tokens, fill)
            ids[:, length] = tokens
            length += 1
            generated += unfinished
            yield tokens
            unfinished &= ~stopping(ids[:, :length])
            if not unfinished.any():
                break
            logits = self.step.advance(state, tokens)
        group = generated.reshape(-1, count).max(axis=1).repeat(count)
        self.sequences = [ids[row, width: width + group[row]] for row in range(len(rows))]

    def _beam_search(self) -> Iterator[np.ndarray]:
        """Beam search (and beam sampling), as transformers 5's vectorized _beam_search: each step scores the
        continuations of the running beams, keeps the best that did not stop running and lets the best that did
        replace worse finished ones (_Beams), until no running beam can improve on them."""
        config, prompts, step = self.config, self.prompts, self.step
        batch, beams, width = len(prompts.ids), config.num_beams, prompts.ids.shape[1]
        eos = config.eos_token_id or ()
        keep = max(2, 1 + len(eos)) * beams
        max_new = prompts.max_lengths - (width - prompts.pad)
        rows = np.repeat(np.arange(batch), beams)
        state, logits = step.prefill(prompts.ids, prompts.mask, config.use_cache, width + int(max_new.max()))
        step.reorder(state, rows)
        logits = logits[rows]
        processors = [*_logits_processors(config, prompts, rows, self.constraints), *self.extra]
        candidate_rows = np.repeat(np.arange(batch), keep)
        stopping = _Stopping(prompts.max_lengths[candidate_rows], prompts.pad[candidate_rows], eos, self.stop)
        rng = np.random.default_rng(config.seed) if config.do_sample else None
        # generate's `pad_token_id or eos_token_id[0]` fills short finished sequences
        state_of = _Beams(config, batch, keep, int(max_new.max()), (config.pad or eos[0]) if eos else -1)
        t = 0
        while True:
            log_probs = _log_softmax(logits.astype(np.float32, copy=False))
            flat = np.concatenate([prompts.ids[rows], state_of.running.reshape(batch * beams, t)], axis=1)
            for processor in processors:
                log_probs = processor(flat, log_probs)
            candidates, scores, source = state_of.continuations(log_probs, rng)
            hits = stopping(np.concatenate([prompts.ids[candidate_rows], candidates.reshape(batch * keep, t + 1)],
                                           axis=1)).reshape(batch, keep)
            beam_source = state_of.go_on(candidates, scores, source, hits)
            state_of.finish(candidates, scores, hits, t + 1)
            t += 1
            yield state_of.running[:, :, -1].reshape(-1)
            if not state_of.may_improve(t, max_new) or hits.all():
                break
            step.reorder(state, (np.arange(batch)[:, None] * beams + beam_source).reshape(-1))
            logits = step.advance(state, state_of.running[:, :, -1].reshape(-1))
        count = config.num_return_sequences
        lengths = state_of.done_lengths[:, :count].max(axis=1)
        self.sequences = [state_of.done[b, i, : lengths[b]] for b in range(batch) for i in range(count)]


class _Beams:
    """Beam search's state, `batch` prompts of num_beams beams: the running beams and their scores, the finished
    sequences (filled past their length), their scores, lengths and whether each is finished, and whether a running
    beam could still beat them. Steps named as transformers' _beam_search names them."""

    def __init__(self, config: _GenerationConfig, batch: int, keep: int, max_new: int, fill: int) -> None:
        self.config, self.keep, self.fill, beams = config, keep, fill, config.num_beams
        self.running = np.zeros((batch, beams, 0), dtype=np.int64)
        self.running_scores = np.zeros((batch, beams), dtype=np.float32)
        self.running_scores[:, 1:] = -1e9
        self.done = np.full((batch, beams, max_new), fill, dtype=np.int64)
        self.done_lengths = np.zeros((batch, beams), dtype=np.int64)
        self.done_scores = np.full((batch, beams), -1e9, dtype=np.float32)
        self.finished = np.zeros((batch, beams), dtype=bool)
        self.improvable = np.ones((batch, 1), dtype=bool)
        self.top_beams = np.arange(keep) < beams

    def continuations(self, log_probs: np.ndarray, rng: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """_get_top_k_continuations: the `keep` best (or drawn) continuations of each prompt's beams, their summed
        scores and the beam each continues."""
        batch, beams, _ = self.running.shape
        vocab = log_probs.shape[-1]
        accumulated = (log_probs.reshape(batch, beams, vocab) + self.running_scores[:, :, None]).reshape(batch, -1)
        if rng is None:
            chosen = _top(accumulated, self.keep)
        else:
            chosen = _draw_without_replacement(accumulated, self.keep, rng)
            chosen = np.take_along_axis(chosen, _top(np.take_along_axis(accumulated, chosen, axis=-1), self.keep), axis=-1)
        source, tokens = chosen // vocab, chosen % vocab
        candidates = np.concatenate([np.take_along_axis(self.running, source[:, :, None], axis=1), tokens[:, :, None]],
                                    axis=2)
        return candidates, np.take_along_axis(accumulated, chosen, axis=-1), source

    def go_on(self, candidates: np.ndarray, scores: np.ndarray, source: np.ndarray, hits: np.ndarray) -> np.ndarray:
        """_get_running_beams_for_next_iteration: the best candidates that did not stop run on; the beams they
        continue."""
        open_scores = scores + hits.astype(np.float32) * np.float32(-1e9)
        best = _top(open_scores, self.config.num_beams)
        self.running = np.take_along_axis(candidates, best[:, :, None], axis=1)
        self.running_scores = np.take_along_axis(open_scores, best, axis=-1)
        beam_source: np.ndarray = np.take_along_axis(source, best, axis=-1)
        return beam_source

    def finish(self, candidates: np.ndarray, scores: np.ndarray, hits: np.ndarray, length: int) -> None:
        """_update_finished_beams: the best candidates among the top num_beams that stopped may replace finished
        sequences (scored with the length penalty)."""
        config, (batch, keep), beams = self.config, hits.shape, self.config.num_beams
        just = hits & self.top_beams[None, :]
        scores = scores / (length ** config.length_penalty)
        full = self.finished.all(axis=-1, keepdims=True) & (config.early_stopping is True)
        scores = scores + full.astype(np.float32) * np.float32(-1e9)
        scores = scores + (~self.improvable).astype(np.float32) * np.float32(-1e9)
        scores = scores + (~just).astype(np.float32) * np.float32(-1e9)
        grown = np.full((batch, keep, self.done.shape[2]), self.fill, dtype=np.int64)
        grown[:, :, :length] = candidates
        merged_scores = np.concatenate([self.done_scores, scores], axis=1)
        kept = _top(merged_scores, beams)
        self.done = np.take_along_axis(np.concatenate([self.done, grown], axis=1), kept[:, :, None], axis=1)
        self.done_scores = np.take_along_axis(merged_scores, kept, axis=-1)
        self.done_lengths = np.take_along_axis(np.concatenate([self.done_lengths, np.full((batch, keep), length)], axis=1),
                                               kept, axis=-1)
        self.finished = np.take_along_axis(np.concatenate([self.finished, just], axis=1), kept, axis=-1)

    def may_improve(self, length: int, max_new: np.ndarray) -> bool:
        """_beam_search_has_unfinished_sequences: whether a running beam could still beat the worst finished one
        (_check_early_stop_heuristic) and early stopping does not end the search."""
        config = self.config
        hypothetical: Any = np.float32(length ** config.length_penalty)
        if config.early_stopping == "never" and config.length_penalty > 0.0:
            hypothetical = (max_new[:, None].astype(np.float64) ** config.length_penalty).astype(np.float32)
        best_running = self.running_scores[:, :1] / hypothetical
        worst_done = np.where(self.finished, self.done_scores.min(axis=1, keepdims=True), np.float32(-1e9))
        self.improvable = self.improvable & (best_running > worst_done).any(axis=-1, keepdims=True)
        return bool(self.improvable.any()) and not (self.finished.all() and config.early_stopping is True)


def _draw(scores: np.ndarray, rng: Any) -> np.ndarray:
    """One token per row drawn from softmax(scores) (torch.multinomial's distribution, numpy's generator)."""
    with np.errstate(invalid="ignore", over="ignore"):
        weights = np.exp(scores.astype(np.float64) - scores.max(axis=-1, keepdims=True))
    cumulative = np.cumsum(weights, axis=-1)
    total = cumulative[:, -1]
    if not np.all(np.isfinite(total) & (total > 0)):
        raise InvalidInputError(
            "every token was filtered out of a sampling step; loosen top_k, top_p, typical_p or the banned tokens"
        )
    drawn: np.ndarray = (cumulative <= (rng.random(len(scores)) * total)[:, None]).sum(axis=-1)
    return drawn


def _draw_without_replacement(scores: np.ndarray, k: int, rng: Any) -> np.ndarray:
    """k indices per row drawn without replacement from softmax(scores), as torch.multinomial draws them:
    the Gumbel top-k trick gives the same distribution."""
    with np.errstate(divide="ignore"):
        keys = _log_softmax(scores.astype(np.float64)) - np.log(-np.log(rng.random(scores.shape)))
    return _top(keys, k)


# --- Decoder-only models ------------------------------------------------------------------------------

# past key value input -> present output; Optimum and onnxruntime-genai name them past_key_values.N.key/value
# (present.N.key/value), onnxruntime's GPT-2 export stacks key and value as past_N (present_N)
_PAST_NAMES = ((re.compile(r"past_key_values\.(\d+)\.(key|value)"), "present.{}.{}"), (re.compile(r"past_(\d+)"), "present_{}"))
# what a decoder step feeds besides the past key values (past_key_values.N.key/value, past_N)
_DECODER_INPUTS = (_Reads("input_ids", _INT_DTYPES), _Reads("attention_mask", _INT_DTYPES, False),
                   _Reads("position_ids", _INT_DTYPES, False), _Reads("use_cache_branch", ("bool",), False))


class _Binding:
    """One call's onnxruntime I/O binding: outputs stay in onnxruntime's memory, to be fed back as inputs. It is
    driven through onnxruntime's C binding object (IOBinding._iobinding, there since onnxruntime 1.3): the Python
    wrapper builds an object per output and a device per bind, ~10 us a value, which costs a model with 24 past
    tensors half a millisecond a token."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.binding = session.ort.io_binding()
        self.raw = self.binding._iobinding
        ort = _onnxruntime()
        self.cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()
        self.values = ort.capi._pybind_state.OrtValue
        for name, value in session.fixed.items():  # an entry point's phase: the session keeps the array alive
            self.raw.bind_input(name, value)

    def run(self, inputs: Mapping[str, Any], outputs: Sequence[str]) -> list[Any]:
        """Run on numpy arrays (not copied: they must live until the run ends) and onnxruntime values, by the
        session's names (an entry point's roles); the outputs as onnxruntime values (``.numpy()`` views them)."""
        session = self.session
        for name, value in inputs.items():
            graph_name = session.input_name(name)
            if not isinstance(value, np.ndarray):
                self.raw.bind_ortvalue_input(graph_name, value)
            elif graph_name in session.defaulted:  # bind_input knows only the graph's true inputs
                self.raw.bind_ortvalue_input(graph_name, self.values.ortvalue_from_numpy(value, self.cpu))
            else:
                self.raw.bind_input(graph_name, value)
        for name in outputs:  # every run: a bound output keeps the shape of the last run's
            self.raw.bind_output(session.output_name(name), self.cpu)
        try:
            self.session.ort.run_with_iobinding(self.binding)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types derive from Exception only
            raise self.session.failure(exc) from None
        values = self.raw.get_outputs()
        return [values[i] for i in range(len(values))]

    def value(self, array: np.ndarray) -> Any:
        """An onnxruntime value over array's memory (which must outlive it)."""
        return self.values.ortvalue_from_numpy(array, self.cpu)

    def share(self, pairs: Sequence[tuple[str, str, Any]]) -> None:
        """Bind each (input, output) pair to one value, once: onnxruntime reads the past from it and writes the
        present into it (GroupQueryAttention's past_present_share_buffer)."""
        for name, present, value in pairs:
            self.raw.bind_ortvalue_input(name, value)
            self.raw.bind_ortvalue_output(present, value)

    def run_into(self, inputs: Mapping[str, np.ndarray], output: str, into: Any) -> Any:
        """Run on numpy inputs (by graph name) with output written into a bound value (None: a new one); the
        output's value, onnxruntime's first bound output (bind it first)."""
        for name, value in inputs.items():
            self.raw.bind_input(name, value)
        if into is None:
            self.raw.bind_output(output, self.cpu)
        else:
            self.raw.bind_ortvalue_output(output, into)
        try:
            self.session.ort.run_with_iobinding(self.binding)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types derive from Exception only
            raise self.session.failure(exc) from None
        return into if into is not None else self.raw.get_outputs()[0]


class _SharedPast:
    """The past key values of a GroupQueryAttention graph as preallocated buffers of the call's whole length, each
    bound once as a layer's past input and its present output (onnxruntime-genai's past_present_share_buffer): a
    step writes the new keys and values in place, where a growing past copies every layer's past each step; and
    the step's logits written into one preallocated buffer."""

    def __init__(self, binding: _Binding, buffers: list[np.ndarray], names: Sequence[tuple[str, str]], logits: str) -> None:
        self.binding, self.buffers, self.names, self.logits_name = binding, buffers, names, logits
        rows = buffers[0].shape[0]
        self.logits: np.ndarray | None = None
        self.logits_value: Any = None
        self.rows = rows
        self.mask: np.ndarray | None = None
        binding.raw.bind_output(logits, binding.cpu)  # first, so that a run's first output is the logits
        binding.share([(past, present, binding.value(b)) for (past, present), b in zip(names, buffers)])
        self._np = np

    def grow(self, mask: np.ndarray) -> np.ndarray:
        """The attention mask one column longer (a view into a buffer of the whole length; contiguous for one row,
        copied for several)."""
        width = mask.shape[1]
        if self.mask is None or self.mask.shape[0] != mask.shape[0] or self.mask[:, :width].base is not mask.base:
            self.mask = self._np.ones((mask.shape[0], self.buffers[0].shape[2]), dtype=mask.dtype)
            self.mask[:, :width] = mask
        grown: np.ndarray = self.mask[:, : width + 1]
        return grown

    def step_logits(self, vocabulary: int, dtype: Any) -> Any:
        """The value a one-token step writes its logits into (rows, 1, vocabulary), made at the first step."""
        if self.logits is None:
            self.logits = self._np.empty((self.rows, 1, vocabulary), dtype=dtype)
            self.logits_value = self.binding.value(self.logits)
        return self.logits_value

    def reorder(self, rows: np.ndarray) -> _SharedPast:
        """The buffers of the given rows (beams kept, rows repeated), bound anew."""
        return _SharedPast(self.binding, [b.take(rows, axis=0) for b in self.buffers], self.names, self.logits_name)


class _DecoderState:
    """One call's rows in a decoder-only graph: the attention mask, the position ids (all of them without a
    cache, else the next), the tokens so far (without a cache), the past key values (onnxruntime values kept
    in its memory between steps, or arrays after a reorder) and the I/O binding."""

    def __init__(self, binding: _Binding, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, cache: bool) -> None:
        self.binding, self.ids, self.mask, self.positions, self.cache = binding, ids, mask, positions, cache
        self.past: list[Any] | None = None
        self.shared: _SharedPast | None = None


class _DecoderOnly(_Step):
    """A decoder-only graph as a step of the decoding loop, its feeds resolved once from the session's input
    and output names, shapes and dtypes: no past (the whole sequence each step), Optimum's
    past_key_values.N.key/value and present.N.*, the legacy merged decoder (use_cache_branch), onnxruntime's
    GPT-2 with stacked past_N [2, batch, heads, sequence, head_dim] and int32 inputs; position_ids when the
    graph takes them. An empty past at the first step has the graph's own dtype and head shape (the config's
    num_key_value_heads and head size where the graph leaves them symbolic)."""

    def __init__(self, session: Session, config: Mapping[str, Any]) -> None:
        inputs, outputs = session.inputs, list(session.outputs)
        self.session = session
        self.past: list[tuple[str, str]] = []
        for name in inputs:
            present = next((fmt.format(*m.groups()) for pattern, fmt in _PAST_NAMES if (m := pattern.fullmatch(name))), None)
            if present is None:
                continue
            if present not in outputs:
                raise MetadataValidationError(f"graph input {name!r} has no matching output {present!r} to carry the past on")
            self.past.append((name, present))
        self.logits = session.output("logits")
        dtypes = _check_ports(session, _DECODER_INPUTS, [_Reads(self.logits, axes="(batch, sequence, vocabulary)")],
                              what="text generation", also={p for p, _ in self.past}.__contains__,
                              more="past key values (past_key_values.N.key/value or past_N)")
        self.int_types = {name: dtype for name, dtype in dtypes.items() if name != "use_cache_branch"}
        self.branch = "use_cache_branch" in inputs
        self.past_dtype = "float32"
        self.past_shape: tuple[int, ...] = ()
        if self.past:
            first = inputs[self.past[0][0]]
            dtype = first.dtype
            if dtype not in ("float32", "float16") or len(first.shape) not in (4, 5):
                raise MetadataValidationError(
                    f"past input {first.name!r} is {first.type} {list(first.shape)}; expected float32 or float16 "
                    "[batch, heads, sequence, head_dim] or [2, batch, heads, sequence, head_dim]"
                )
            self.past_dtype = str(dtype)
            # the shape of an empty past with batch 1 and sequence 0
            dims = first.shape[1:] if len(first.shape) == 5 else first.shape
            heads, head_dim = (d if isinstance(d, int) else None for d in (dims[1], dims[3]))
            heads = heads or _config_int(config, "num_key_value_heads", "num_attention_heads", "n_head")
            head_dim = head_dim or _config_int(config, "head_dim") or _head_size(config)
            if not heads or not head_dim:
                raise MetadataValidationError(
                    f"past input {first.name!r} has shape {list(first.shape)} and the config gives no num_key_value_heads "
                    "and head size to build an empty past from; re-embed with the model's config.json"
                )
            self.past_shape = (2, 1, heads, 0, head_dim) if len(first.shape) == 5 else (1, heads, 0, head_dim)
        self.batch_axis = len(self.past_shape) - 4
        self.outputs = [self.logits, *(present for _, present in self.past)]
        # GroupQueryAttention reads the past and writes the present in place when they are one buffer
        self.shares = "GroupQueryAttention" in session.operators and len(self.past_shape) == 4 and all(
            session.outputs[present].dtype == self.past_dtype for _, present in self.past)
        self.logits_dtype = str(session.outputs[self.logits].dtype)
        width = session.outputs[self.logits].shape[-1] if session.outputs[self.logits].shape else None
        self.vocabulary = width if isinstance(width, int) else 0  # a one-token step's logits buffer, when known

    def prefill(self, ids: np.ndarray, mask: np.ndarray, use_cache: bool, capacity: int = 0) -> tuple[_DecoderState, np.ndarray]:
        positions = np.where(mask == 0, 0, mask.cumsum(axis=-1) - 1)
        state = _DecoderState(_Binding(self.session), ids, mask, positions, use_cache and bool(self.past))
        if state.cache and self.shares:
            shape = (len(ids), self.past_shape[1], max(capacity, ids.shape[1]), self.past_shape[3])
            names = [(self.session.input_name(p), self.session.output_name(q)) for p, q in self.past]
            state.shared = _SharedPast(state.binding, [np.zeros(shape, dtype=self.past_dtype) for _ in self.past], names,
                                       self.session.output_name(self.logits))
        logits = _last_logits(self._run(state, ids, positions))
        if state.cache:
            state.positions = positions[:, -1:] + 1
        return state, logits

    def all_logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Every position's logits (rows, width, vocabulary), float32: one run over the whole sequences, or, for a
        graph that computes the last position's logits only (its head pruned, for a faster prefill), one step per
        token through the cache."""
        positions = np.where(mask == 0, 0, mask.cumsum(axis=-1) - 1)
        logits: np.ndarray = self._run(_DecoderState(_Binding(self.session), ids, mask, positions, False), ids, positions)
        if logits.shape[1] == ids.shape[1] or not self.past:
            return logits.astype(np.float32)  # a copy: the next run may reuse the buffer
        state, first = self.prefill(ids[:, :1], mask[:, :1], True, ids.shape[1])
        steps = [first.copy()]
        for column in range(1, ids.shape[1]):
            steps.append(self.advance(state, ids[:, column]).copy())
        return np.stack(steps, axis=1).astype(np.float32)

    def advance(self, state: _DecoderState, tokens: np.ndarray) -> np.ndarray:
        if state.shared is not None:  # the mask grows inside a buffer of the call's whole length
            state.mask = state.shared.grow(state.mask)
        else:
            state.mask = np.concatenate([state.mask, np.ones((len(tokens), 1), dtype=state.mask.dtype)], axis=1)
        if state.cache:
            logits = _last_logits(self._run(state, tokens[:, None], state.positions))
            state.positions = state.positions + 1
            return logits
        state.ids = np.concatenate([state.ids, tokens[:, None]], axis=1)
        state.positions = np.concatenate([state.positions, state.positions[:, -1:] + 1], axis=1)
        return _last_logits(self._run(state, state.ids, state.positions))

    def reorder(self, state: _DecoderState, rows: np.ndarray) -> None:
        state.ids, state.mask, state.positions = state.ids[rows], state.mask[rows], state.positions[rows]
        if state.shared is not None:
            state.shared = state.shared.reorder(rows)
        elif state.past is not None:  # onnxruntime values after a run, arrays after a reorder
            state.past = [(v if isinstance(v, np.ndarray) else v.numpy()).take(rows, axis=self.batch_axis) for v in state.past]

    def _feed(self, state: _DecoderState, ids: np.ndarray, positions: np.ndarray) -> dict[str, Any]:
        """The token inputs of a run, in the graph's integer types."""
        feed: dict[str, Any] = {"input_ids": np.ascontiguousarray(ids, dtype=self.int_types["input_ids"])}
        if "attention_mask" in self.int_types:
            feed["attention_mask"] = np.ascontiguousarray(state.mask, dtype=self.int_types["attention_mask"])
        if "position_ids" in self.int_types:
            feed["position_ids"] = np.ascontiguousarray(positions, dtype=self.int_types["position_ids"])
        return feed

    def _run_shared(self, state: _DecoderState, shared: _SharedPast, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """A run over the shared past buffers; a one-token step writes its logits into a preallocated buffer."""
        feed = self._feed(state, ids, positions)  # a single graph's inputs: the roles are the names
        vocabulary = self.vocabulary
        into = shared.step_logits(vocabulary, self.logits_dtype) if ids.shape[1] == 1 and vocabulary else None
        value = state.binding.run_into(feed, shared.logits_name, into)
        logits: np.ndarray = shared.logits if into is not None and shared.logits is not None else value.numpy()
        return logits

    def _run(self, state: _DecoderState, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Run the graph on the new tokens (all of them without a cache); the logits (a view of onnxruntime's buffer,
        valid until the next run)."""
        if state.shared is not None:
            return self._run_shared(state, state.shared, ids, positions)
        feed = self._feed(state, ids, positions)
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
        return logits


def _last_logits(value: Any) -> np.ndarray:
    """The last position's logits of a run's (batch, sequence, vocabulary) output (an array, or an onnxruntime
    value), float32: a view of onnxruntime's buffer, the loop's to change until the next run."""
    logits: np.ndarray = value if isinstance(value, np.ndarray) else value.numpy()
    if logits.ndim != 3:
        raise MetadataValidationError(
            f"the graph's logits have shape {logits.shape}; generation needs (batch, sequence, vocabulary)"
        )
    last: np.ndarray = logits[:, -1]
    return last if last.dtype == np.float32 else last.astype(np.float32)


def _config_int(config: Mapping[str, Any], *names: str) -> int | None:
    """The first of the config's fields that is a positive integer."""
    return next((v for v in (config.get(n) for n in names) if _is_int(v) and v > 0), None)


def _head_size(config: Mapping[str, Any]) -> int | None:
    hidden = _config_int(config, "hidden_size", "n_embd", "d_model")
    heads = _config_int(config, "num_attention_heads", "n_head")
    return hidden // heads if hidden and heads else None


# --- Encoder-decoder models ---------------------------------------------------------------------------

# what a decoder entry point takes besides its past: the tokens and the encoder's outputs (the first step needs them)
_DECODER_ROLES = (_Reads("input_ids", _INT_DTYPES), _Reads("encoder_hidden_states", _FLOAT_DTYPES, False),
                  _Reads("encoder_attention_mask", _INT_DTYPES, False))


class _EncoderDecoderModel:
    """An encoder-decoder's entry points ("encoder", "decoder", and "decoder_with_past" when it was exported with
    past) resolved once for the decoding loop: the encoder's output, what the decoders take, the past pairs
    (self-attention ones carried from step to step, cross-attention ones computed once by "decoder"). The encoder
    runs on whatever feed the task builds (token ids and mask, audio features)."""

    def __init__(self, ctx: _Context, task: str) -> None:
        if "encoder" not in ctx.sessions or "decoder" not in ctx.sessions:
            raise MetadataValidationError(
                f"{task} needs an encoder-decoder: a file merged from an export (python -m authoring embed "
                f"<export-folder> <model>) or Optimum's export folder; this model has the graphs {sorted(ctx.sessions)}"
            )
        self.encoder, self.decoder = ctx.session("encoder"), ctx.session("decoder")
        self.with_past = ctx.sessions.get("decoder_with_past")
        self.hidden = self.encoder.output("last_hidden_state")
        pairs = self.decoder.past if self.with_past is not None else ()
        self.cross = [(past, present) for past, present, cross in pairs if cross]
        self.self_past = [(past, present) for past, present, cross in pairs if not cross]
        # what the step with past takes once per input row: the cross-attention past, and the encoder's output where
        # every step attends to it anew (GPT-2's cross-attention keeps no past)
        self.kept = [past for past, _ in self.cross]
        if self.with_past is not None and "encoder_hidden_states" in self.with_past.inputs:
            self.kept.append("encoder_hidden_states")
        self.int_types: dict[str, str] = {}
        logits = [_Reads("logits", axes="(batch, sequence, vocabulary)")]
        for entry, session in (("decoder", self.decoder), ("decoder_with_past", self.with_past)):
            if session is not None:
                dtypes = _check_ports(session, _DECODER_ROLES, logits, what=f"the {entry} step of {task}",
                                      also={past for past, _, _ in pairs}.__contains__, more="past key values")
                self.int_types.update((k, v) for k, v in dtypes.items() if k != "encoder_hidden_states")
        if "encoder_hidden_states" not in self.decoder.inputs:
            raise MetadataValidationError(f"the decoder takes {sorted(self.decoder.inputs)}, not the encoder's output "
                                          "(encoder_hidden_states)")
        self.first_outputs = ["logits", *(present for _, present in self.cross), *(present for _, present in self.self_past)]
        self.step_outputs = ["logits", *(present for _, present in self.self_past)]


def _rows(value: Any, rows: np.ndarray | None) -> Any:
    """An array or onnxruntime value (rows on axis 0) with rows picked; as it is for rows None."""
    return value if rows is None else (value if isinstance(value, np.ndarray) else value.numpy()).take(rows, axis=0)


class _EncoderDecoderState:
    """One call's rows in an encoder-decoder. The encoder's outputs (hidden states, attention mask) and the
    cross-attention past are kept once per input row; ``owner`` maps each decoding row (beams, sequences) to its input
    row (None: one each, in order), and the rows are gathered from them only when that mapping changes (a beam search
    reorders beams within an input's, which keeps it). The self-attention past is kept per row, in onnxruntime's
    memory between steps (arrays after a reorder); without it, the decoder reruns on all the tokens (``ids``)."""

    def __init__(self, model: _EncoderDecoderModel, hidden: Any, mask: np.ndarray, ids: np.ndarray, cache: bool) -> None:
        self.decoder = _Binding(model.decoder)
        self.step = _Binding(model.with_past) if cache and model.with_past is not None else None
        self.hidden, self.mask, self.ids = hidden, mask, ids
        self.owner: np.ndarray | None = None
        self.cross: list[Any] = []
        self.past: list[Any] = []
        self._view: tuple[np.ndarray | None, np.ndarray, list[Any]] | None = None

    def rows(self) -> tuple[np.ndarray, list[Any]]:
        """The encoder attention mask and what the step keeps per input row (the model's ``kept``: the
        cross-attention past, the encoder's output) of the decoding rows, once the first step has run."""
        view = self._view
        if view is None or not (view[0] is self.owner or (view[0] is not None and self.owner is not None
                                                           and np.array_equal(view[0], self.owner))):
            view = self._view = (self.owner, _rows(self.mask, self.owner), [_rows(v, self.owner) for v in self.cross])
        return view[1], view[2]



class _EncoderDecoder(_Step):
    """One call of an encoder-decoder as a step of the decoding loop: prefill runs the encoder once on the task's
    feed (rows = the inputs), then the first decoder step on the decoder prompts (the start tokens), which gives the
    cross-attention past once; advance runs the decoder with past on the new token of each row."""

    def __init__(self, model: _EncoderDecoderModel, encoder_feed: Mapping[str, np.ndarray], hidden: Any = None) -> None:
        # hidden: the encoder's output when the caller already has it (Whisper decodes one window several times)
        self.model, self.encoder_feed, self.hidden = model, encoder_feed, hidden

    def prefill(self, ids: np.ndarray, mask: np.ndarray, use_cache: bool,
                capacity: int = 0) -> tuple[_EncoderDecoderState, np.ndarray]:
        if not mask.all():
            raise InvalidInputError("the decoder prompts of one call must have the same length")
        model = self.model
        hidden = self.hidden if self.hidden is not None else _Binding(model.encoder).run(self.encoder_feed, [model.hidden])[0]
        encoder_mask = self.encoder_feed.get("attention_mask")
        if encoder_mask is None:  # an encoder without a mask (audio features): every position counts
            encoder_mask = np.ones(hidden.shape()[:2])
        encoder_mask = np.ascontiguousarray(encoder_mask, dtype=model.int_types.get("encoder_attention_mask", "int64"))
        state = _EncoderDecoderState(model, hidden, encoder_mask, ids, use_cache)
        values = state.decoder.run(self._decoder_feed(state, ids), model.first_outputs if state.step else ["logits"])
        if state.step is not None:
            state.cross = [*values[1: 1 + len(model.cross)], *([hidden] if "encoder_hidden_states" in model.kept else [])]
            state.past = values[1 + len(model.cross):]
        return state, _last_logits(values[0])

    def advance(self, state: _EncoderDecoderState, tokens: np.ndarray) -> np.ndarray:
        model = self.model
        if state.step is None:  # no past: the decoder runs on every token so far
            state.ids = np.concatenate([state.ids, tokens[:, None]], axis=1)
            return _last_logits(state.decoder.run(self._decoder_feed(state, state.ids), ["logits"])[0])
        mask, cross = state.rows()
        feed: dict[str, Any] = {"input_ids": np.ascontiguousarray(tokens[:, None], dtype=model.int_types["input_ids"])}
        if "encoder_attention_mask" in state.step.session.inputs:
            feed["encoder_attention_mask"] = mask
        feed.update(zip(model.kept, cross))
        feed.update(zip((past for past, _ in model.self_past), state.past))
        values = state.step.run(feed, model.step_outputs)
        state.past = values[1:]
        return _last_logits(values[0])

    def reorder(self, state: _EncoderDecoderState, rows: np.ndarray) -> None:
        state.owner = rows if state.owner is None else state.owner[rows]
        state.ids = state.ids[rows]
        state.past = [(v if isinstance(v, np.ndarray) else v.numpy()).take(rows, axis=0) for v in state.past]

    def _decoder_feed(self, state: _EncoderDecoderState, ids: np.ndarray) -> dict[str, Any]:
        """The first decoder step's feed (every step's without past): the tokens and the encoder's outputs."""
        feed = {"input_ids": np.ascontiguousarray(ids, dtype=self.model.int_types["input_ids"]),
                "encoder_hidden_states": _rows(state.hidden, state.owner)}
        if "encoder_attention_mask" in self.model.decoder.inputs:
            feed["encoder_attention_mask"] = _rows(state.mask, state.owner)
        return feed


# --- Streaming ----------------------------------------------------------------------------------------

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
        if (text and _is_cjk(ord(text[-1]))) or all(
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
# A task is a class in TASKS with one contract. It names the processors it needs and declares its options
# once (name, check, default); _Task.__call__ always runs the same steps: the call's inputs mapped to a
# list of items, the options checked against the declaration, preprocess -> forward -> postprocess, and a
# single input's result unwrapped. A task is built once per Runtime around a _Context (metadata,
# processors, sessions by name), so configuration errors surface at construction. Each task has a room
# below, its helpers just above its class.

# --- The task contract --------------------------------------------------------------------------------

class _Context:
    """What a task needs, built once per Runtime: metadata, model config, the processors the task named,
    the model's sessions by name, the batch size, and the task's name as asked (translation_en_to_de)."""

    def __init__(self, metadata: Mapping[str, Any], processors: Mapping[str, Any], sessions: Mapping[str, Session],
                 batch_size: int, task: str = "") -> None:
        self.metadata = metadata
        self.config: Mapping[str, Any] = metadata.get(KEY_MODEL_CONFIG) or {}
        self.processors = processors
        self.sessions = sessions
        self.batch_size = batch_size
        self.task = task

    def session(self, name: str = "model") -> Session:
        """The session called name; a file without it is the wrong kind of model for the task."""
        if name not in self.sessions:
            raise MetadataValidationError(f"the task needs the graph {name!r}, but the file has {sorted(self.sessions)}")
        return self.sessions[name]

    def labels(self, width: int) -> list[str]:
        """The model's label names for an output width, LABEL_i where id2label has none."""
        id2label = self.config.get("id2label") or {}
        return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(width)]


class _Task:
    """A pipeline task: inputs -> options -> preprocess -> forward -> postprocess -> a single input unwrapped."""

    name: ClassVar[str] = ""
    processors: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[tuple[_Option, ...]] = ()
    example: ClassVar[str] = "text"  # what one input is, for messages
    # Whether a list runs through the three steps batch_size items at a time, so that a long list of images or
    # audio never holds all its arrays; text tasks take the whole list at once, to sort it by length.
    incremental: ClassVar[bool] = False
    # the endpoints of OpenAI's API (and the common rerank API) the server answers with this task, beside /v1/pipeline
    endpoints: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx

    def served(self) -> tuple[str, ...]:
        """The endpoints this model serves: the task's, less those its model cannot (a chat without a template)."""
        return self.endpoints

    @classmethod
    def variant(cls, metadata: Mapping[str, Any]) -> type[_Task]:
        """The class that runs this task for a model: itself, or for a task that models of several kinds run (speech
        recognition: CTC or Whisper) the sibling for this model's kind."""
        return cls

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        """The call's inputs as a list of items, and whether one was given alone (its result is unwrapped).
        A task whose inputs may come by name (question=..., context=...) takes them out of kwargs here."""
        if not args:
            raise InvalidInputError(f"{self.name} needs its inputs: runtime({self.example}) or runtime([{self.example}, ...])")
        if len(args) > 1:
            raise InvalidInputError(
                f"{self.name} takes the inputs as its only positional argument (a {self.example} or a list); "
                "pass options by name"
            )
        single = not isinstance(args[0], list)
        return ([args[0]] if single else list(args[0])), single

    @classmethod
    def cli_inputs(cls, values: Sequence[str]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments for inputs given on the command line: one value alone, several as a list."""
        return (values[0] if len(values) == 1 else list(values),), {}

    def cli(self, values: Sequence[str], options: Mapping[str, Any], output: str | None = None) -> Iterator[str]:
        """What the command line prints for inputs given there: the result as JSON (a generating task prints
        text as it comes)."""
        args, kwargs = self.cli_inputs(values)
        yield json.dumps(self(*args, **{**options, **kwargs}), indent=2, ensure_ascii=False) + "\n"

    def check_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The value of every declared option: checked when given, its default otherwise."""
        unknown = sorted(set(given) - {o.name for o in self.options})
        if unknown:
            raise InvalidInputError(
                f"{self.name} does not take {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(o.name for o in self.options) or 'no options'}"
            )
        values: dict[str, Any] = {}
        for option in self.options:
            value = given.get(option.name)
            if option.name in given and (value is not None or option.none):
                values[option.name] = option.check(option.name, value)
            elif option.default is _REQUIRED:
                values[option.name] = option.check(option.name, None)  # the check says what is needed
            else:
                values[option.name] = option.default(self, values) if callable(option.default) else option.default
        return values

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> Any:
        """The items made ready for the model (tokenized, loaded, ...)."""
        raise NotImplementedError

    def forward(self, batch: Any, options: Mapping[str, Any]) -> Any:
        """The model's outputs for the preprocessed batch."""
        raise NotImplementedError

    def postprocess(self, batch: Any, outputs: Any, options: Mapping[str, Any]) -> list[Any]:
        """One result per item, as the transformers pipeline gives it."""
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        items, single = self.inputs(args, kwargs)
        results = self.run(items, self.check_options(kwargs))
        return results[0] if single else results

    def run(self, items: list[Any], options: Mapping[str, Any]) -> list[Any]:
        """Each item's result: preprocess -> forward -> postprocess, batch_size items at a time when incremental."""
        step = self.ctx.batch_size if self.incremental else max(len(items), 1)
        results: list[Any] = []
        for start in range(0, len(items), step):
            batch = self.preprocess(items[start: start + step], options)
            results += self.postprocess(batch, self.forward(batch, options), options)
        return results

    def calls(self, calls: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]]) -> list[Any]:
        """Several calls' results (or the exception each raises), run as one batch when their options are the same:
        what each call gives alone (a batch gives what each item gives alone). When the batch fails, each call runs
        alone, so that one bad input fails only its own call."""
        parsed: list[tuple[list[Any], bool, dict[str, Any]] | BaseException] = []
        for args, kwargs in calls:
            given = dict(kwargs)
            try:
                items, single = self.inputs(args, given)
                parsed.append((items, single, given))
            except MetadataError as exc:
                parsed.append(exc)
        good = [p for p in parsed if not isinstance(p, BaseException)]
        if len(good) > 1 and all(p[2] == good[0][2] for p in good):
            try:
                results = iter(self.run([i for p in good for i in p[0]], self.check_options(good[0][2])))
                return [p if isinstance(p, BaseException) else self._one(p[1], [next(results) for _ in p[0]])
                        for p in parsed]
            except InvalidInputError:
                pass
        return [p if isinstance(p, BaseException) else self._alone(p) for p in parsed]

    def _alone(self, call: tuple[list[Any], bool, dict[str, Any]]) -> Any:
        try:
            return self._one(call[1], self.run(call[0], self.check_options(call[2])))
        except MetadataError as exc:
            return exc

    @staticmethod
    def _one(single: bool, results: list[Any]) -> Any:
        return results[0] if single else results


def _batched(keys: Sequence[Any], size: int, run: Callable[[list[int]], Sequence[Any]], *, mixed: bool = True) -> list[Any]:
    """The one batcher: the items (given by their keys: a length, a shape) sorted by key and run `size` at a time,
    items of different keys together only when `mixed` (where padding cannot change a result); each item's result
    back in the caller's order. A batch gives what each item gives alone."""
    out: list[Any] = [None] * len(keys)
    group: list[int] = []
    for i in [*sorted(range(len(keys)), key=lambda i: keys[i]), None]:
        if group and (i is None or len(group) == size or (not mixed and keys[i] != keys[group[0]])):
            for j, result in zip(group, run(group)):
                out[j] = result
            group = []
        if i is not None:
            group.append(i)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
    out: np.ndarray = shifted / shifted.sum(axis=-1, keepdims=True)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


_FUNCTIONS: dict[str, Callable[[Any], Any]] = {"softmax": _softmax, "sigmoid": _sigmoid, "none": lambda x: x}


def _default_function(config: Mapping[str, Any]) -> str:
    """The score function a classification pipeline applies by default, by its rules in their order."""
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


def _text_tokenizer(ctx: _Context, task: str) -> TextTokenizer:
    """The context's tokenizer, or the error saying why a text task cannot have one."""
    tokenizer = ctx.processors.get("tokenizer")
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    if isinstance(tokenizer, TokenizerProxy):
        tokenizer()  # raises the --include-vocab error
    raise ProcessorReconstructionError(f"{task} needs a tokenizer but none is embedded; re-embed with --include-vocab")


def _texts(task: str, items: list[Any]) -> list[str]:
    """items when every one is a string, else the error naming what was given."""
    for item in items:
        if not isinstance(item, str):
            raise InvalidInputError(f"{task} takes a string or a list of strings; got {type(item).__name__}")
    return items


_TOKEN_INPUTS = (_Reads("input_ids", _INT_DTYPES), _Reads("attention_mask", _INT_DTYPES, False),
                 _Reads("token_type_ids", _INT_DTYPES, False))


class _TextTask(_Task):
    """A task on tokenized text: the tokenizer fills the graph's inputs; lists run in length-sorted buckets."""

    processors = ("tokenizer",)
    output: ClassVar[str] = "logits"  # the output to read, when the graph has it (else its first)
    axes: ClassVar[str] = ""  # the output's axes, when it has a token axis cut back to each text's tokens

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.tokenizer = _text_tokenizer(ctx, self.name)
        self.session = ctx.session()
        self.output_name = self.session.output(self.output)
        self.dtypes = _check_ports(self.session, _TOKEN_INPUTS, [_Reads(self.output_name, axes=self.axes)], what=self.name)

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        items, single = super().inputs(args, kwargs)
        return _texts(self.name, items), single

    def rows(self, encodings: Sequence[Any], outputs: Sequence[str] | None = None) -> list[list[np.ndarray]]:
        """The rows of the named outputs (the task's output by default) for each encoding, in caller order,
        run in length-sorted buckets of batch_size; a task with a token axis has its rows cut to the encoding's tokens."""
        names = [self.output_name] if outputs is None else outputs

        def run(chunk: list[int]) -> list[list[np.ndarray]]:
            # Padding goes on the right whatever the tokenizer says: with absolute positions, left padding would shift
            # every token of the shorter texts, while transformers' pipelines run one text at a time, unpadded.
            results = self.session.run(names, self.tokenizer.pad([encodings[i] for i in chunk], self.dtypes, side="right"))
            rows = [[out[position] for out in results] for position in range(len(chunk))]
            return [[r[: len(encodings[i].ids)] for r in row] if self.axes else row for i, row in zip(chunk, rows)]

        return _batched([len(e.ids) for e in encodings], self.ctx.batch_size, run)

    def logits(self, encodings: Sequence[Any]) -> list[np.ndarray]:
        """The row of the task's output for each encoding, in caller order (see rows)."""
        return [row[0] for row in self.rows(encodings)]


# --- Text classification ------------------------------------------------------------------------------


def _classification_input(item: Any) -> str | tuple[str, str]:
    """A text, or a {"text", "text_pair"} dict as a (text, pair) tuple."""
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


class _TextClassification(_TextTask):
    """text-classification (sentiment-analysis), as transformers.TextClassificationPipeline."""

    name = "text-classification"
    options = (
        # unset: the best label alone, as the pipeline's legacy default; None: every label
        _Option("top_k", _integer(1, optional=True), _UNSET, none=True),
        _Option("function_to_apply", _choice(*_FUNCTIONS), lambda task, _: _default_function(task.ctx.config)),
    )
    endpoints = ("/v1/rerank", "/rerank")

    def served(self) -> tuple[str, ...]:
        """Rerank for a cross-encoder: one label, its score the relevance."""
        config = self.ctx.config
        return self.endpoints if (len(config.get("id2label") or {}) or config.get("num_labels")) == 1 else ()

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        items, single = _Task.inputs(self, args, kwargs)
        # transformers wraps the best label of a single string in a list (not of a single pair)
        legacy_string = single and isinstance(items[0], str) and "top_k" not in kwargs
        return [_classification_input(item) for item in items], single and not legacy_string

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> list[Any]:
        return self.tokenizer.encode(items)

    def forward(self, batch: list[Any], options: Mapping[str, Any]) -> np.ndarray:
        return np.stack(self.logits(batch)).astype(np.float32)

    def postprocess(self, batch: list[Any], outputs: np.ndarray, options: Mapping[str, Any]) -> list[Any]:
        top_k = options["top_k"]
        labels = self.ctx.labels(outputs.shape[-1])
        results: list[Any] = []
        for scores in _FUNCTIONS[options["function_to_apply"]](outputs):
            if top_k is _UNSET:
                best = int(scores.argmax())
                results.append({"label": labels[best], "score": float(scores[best])})
                continue
            order = sorted(range(len(scores)), key=lambda i: float(scores[i]), reverse=True)
            ranked = [{"label": labels[i], "score": float(scores[i])} for i in order]
            results.append(ranked if top_k is None else ranked[:top_k])
        return results


# --- Fill-mask ----------------------------------------------------------------------------------------


def _targets(name: str, value: Any) -> list[str]:
    targets = [value] if isinstance(value, str) else value
    if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
        raise InvalidInputError(f"{name} must be a string or a list of strings, got {value!r}")
    return list(targets)


class _Masked(NamedTuple):
    """Fill-mask texts tokenized: the encodings, the mask positions of each, the target token ids if any."""

    texts: list[str]
    encodings: list[Any]
    masks: list[list[int]]
    target_ids: np.ndarray | None


class _FillMask(_TextTask):
    """fill-mask, as transformers.FillMaskPipeline: the likeliest tokens for each mask token of a text."""

    name = "fill-mask"
    options = (
        _Option("top_k", _integer(1), 5),
        _Option("targets", _targets),
    )
    axes = "(batch, sequence, features)"

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
        shape = self.session.outputs[self.output_name].shape
        vocab = self.tokenizer.backend.get_vocab_size(with_added_tokens=True)
        if shape and isinstance(shape[-1], int) and shape[-1] < vocab:
            raise MetadataValidationError(
                f"fill-mask output {self.output_name!r} scores {shape[-1]} tokens but the embedded tokenizer has {vocab}; "
                "was the graph exported for another task?"
            )

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        items, _ = super().inputs(args, kwargs)
        return items, len(items) == 1  # transformers unwraps a one-text list too

    def target_ids(self, targets: list[str]) -> np.ndarray:
        """Token ids of targets as FillMaskPipeline.get_target_ids finds them: a vocabulary entry, else the first token."""
        backend = self.tokenizer.backend
        ids: set[int] = set()
        for target in targets:
            token_id = backend.token_to_id(target)
            if token_id is None:
                pieces = self.tokenizer.encode([target], add_special_tokens=False)[0].ids
                if not pieces:
                    warnings.warn(f"target {target!r} is not in the vocabulary and has no tokens; ignoring it", stacklevel=5)
                    continue
                token_id = pieces[0]
                warnings.warn(
                    f"target {target!r} is not in the vocabulary; using its first token {backend.id_to_token(token_id)!r}",
                    stacklevel=5,
                )
            ids.add(token_id)
        if not ids:
            raise InvalidInputError(f"targets {targets!r} give no token to score; pass words of the vocabulary")
        return np.array(sorted(ids))

    def preprocess(self, items: list[str], options: Mapping[str, Any]) -> _Masked:
        target_ids = None if options["targets"] is None else self.target_ids(options["targets"])
        encodings = self.tokenizer.encode(items)
        masks = []
        for text, encoding in zip(items, encodings):
            masks.append([i for i, token_id in enumerate(encoding.ids) if token_id == self.mask_id])
            if not masks[-1]:
                cut = f" within its first {self.tokenizer.max_length} tokens" if encoding.overflowing else ""
                shown = text if len(text) <= 80 else text[:77] + "..."
                raise InvalidInputError(f"fill-mask input has no mask token {self.mask_token}{cut}: {shown!r}")
        return _Masked(items, encodings, masks, target_ids)

    def forward(self, batch: _Masked, options: Mapping[str, Any]) -> list[np.ndarray]:
        return self.logits(batch.encodings)

    def postprocess(self, batch: _Masked, outputs: list[np.ndarray], options: Mapping[str, Any]) -> list[Any]:
        return [self._proposals(encoding.ids, positions, logits, options["top_k"], batch.target_ids)
                for encoding, positions, logits in zip(batch.encodings, batch.masks, outputs)]

    def _proposals(self, ids: Sequence[int], positions: Sequence[int], logits: np.ndarray, top_k: int,
                   target_ids: np.ndarray | None) -> list[Any]:
        """The top_k proposals for each mask of one text; a single mask's list is not nested."""
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


# --- Token classification -----------------------------------------------------------------------------

_AGGREGATIONS = ("none", "simple", "first", "average", "max")


def _labels(name: str, value: Any) -> set[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set)) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError(f"{name} must be a list of labels, e.g. ['O']; got {value!r}")
    return set(value)


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
            if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged


class _Sentences(NamedTuple):
    """Token-classification texts tokenized: each text, where its words start (pre-split words only), and
    its windows (one, or overlapping stride windows)."""

    texts: list[str]
    word_starts: list[list[int] | None]
    windows: list[list[Any]]


class _TokenClassification(_TextTask):
    """token-classification (ner), as transformers.TokenClassificationPipeline: one label per token, or
    entities grouped by an aggregation strategy, with character offsets into the text."""

    name = "token-classification"
    options = (
        _Option("aggregation_strategy", _choice(*_AGGREGATIONS), "none"),
        _Option("ignore_labels", _labels, frozenset({"O"})),
        _Option("stride", _integer(0)),
        _Option("is_split_into_words", _flag, False),
        _Option("delimiter", _string, " "),
    )
    axes = "(batch, sequence, features)"

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.unk_id = self.tokenizer.token_id("unk_token")
        # Subwords are told apart by token length only where the model marks continuations (WordPiece's
        # "##"); byte-level BPE and SentencePiece fall back to "no space before", as transformers does.
        self.word_aware = bool(getattr(self.tokenizer.backend.model, "continuing_subword_prefix", None))

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        if not kwargs.get("is_split_into_words"):
            return super().inputs(args, kwargs)
        items, _ = _Task.inputs(self, args, kwargs)
        if items and all(isinstance(w, str) for w in items):
            return [items], False  # transformers runs a single list of words as a batch of one, nested
        if all(isinstance(s, list) and all(isinstance(w, str) for w in s) for s in items):
            return items, False
        raise InvalidInputError("with is_split_into_words=True the input is a list of words, or a list of such lists")

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> _Sentences:
        stride = options["stride"]
        if stride is not None:
            if stride >= self.tokenizer.max_length:
                raise InvalidInputError(
                    f"stride ({stride}) must be less than the model's maximum length ({self.tokenizer.max_length}), "
                    "less the special tokens"
                )
            if options["aggregation_strategy"] == "none":
                raise InvalidInputError(
                    "stride runs overlapping windows over the whole text, which needs an aggregation_strategy "
                    "to merge them: pass aggregation_strategy='simple' (or first, average, max)"
                )
        split = options["is_split_into_words"]
        tokenizer = self.tokenizer if stride is None else self.tokenizer.with_truncation("longest_first", stride=stride)
        encodings = tokenizer.encode(items, is_pretokenized=split)
        texts: list[str] = []
        word_starts: list[list[int] | None] = []
        for item in items:
            starts: list[int] | None = None
            if split:
                starts, position = [], 0
                for word in item:
                    starts.append(position)
                    position += len(word) + len(options["delimiter"])
                item = options["delimiter"].join(item)
            texts.append(item)
            word_starts.append(starts)
        # without a stride transformers keeps the first window only (the text is truncated)
        windows = [[e, *e.overflowing] if stride is not None else [e] for e in encodings]
        return _Sentences(texts, word_starts, windows)

    def forward(self, batch: _Sentences, options: Mapping[str, Any]) -> list[np.ndarray]:
        return self.logits([window for group in batch.windows for window in group])

    def postprocess(self, batch: _Sentences, outputs: list[np.ndarray], options: Mapping[str, Any]) -> list[Any]:
        strategy, ignore = options["aggregation_strategy"], options["ignore_labels"]
        if strategy in ("first", "average", "max") and not self.word_aware:
            warnings.warn("Tokenizer does not support real words, using fallback heuristic", UserWarning, stacklevel=4)
        rows = iter(outputs)
        results = []
        for text, starts, group in zip(batch.texts, batch.word_starts, batch.windows):
            entities = []
            for window in group:
                pre_entities = self._gather(text, window, _softmax(next(rows).astype(np.float32)), starts)
                entities += [e for e in self._aggregate(pre_entities, strategy)
                             if e.get("entity") not in ignore and e.get("entity_group") not in ignore]
            results.append(_merge_overlapping(entities) if len(group) > 1 else entities)
        return results

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


# --- Question answering -------------------------------------------------------------------------------


class _AnswerSearch:
    """The answers to one question over the windows of its context, as transformers 4.57's
    QuestionAnsweringPipeline finds them: token spans scored start x end probability, equal answers from
    several windows adding up, the numpy calls of its decode_spans so that ties fall the same way."""

    inclusive: ClassVar[bool] = False  # whether top_k candidates over as many scores sort them all (argsort)

    def __init__(self, context: str, question_first: bool, cls_id: int | None, options: Mapping[str, Any]) -> None:
        self.context, self.question_first, self.cls_id = context, question_first, cls_id
        self.top_k, self.max_answer_len = options["top_k"], options["max_answer_len"]
        self.align = options["align_to_words"]
        self.impossible = options["handle_impossible_answer"]
        self.candidates = self.top_k * 2 + 10 if self.align else self.top_k
        self.answers: list[dict[str, Any]] = []
        self.min_null_score = 1000000.0  # large and positive, as transformers starts it

    def add(self, window: Any, start: np.ndarray, end: np.ndarray) -> None:
        """One window's candidate answers, from its (1, n) start and end logits."""
        for s, e, score in self.spans(window, start, end):
            first, last = self._chars(window, int(s), int(e))
            text = self.context[first:last]
            same = next((a for a in self.answers if a["answer"].lower() == text.lower()), None)
            if same is not None:
                same["score"] += score.item()
            else:
                self.answers.append({"score": score.item(), "start": first, "end": last, "answer": text})

    def spans(self, window: Any, start: np.ndarray, end: np.ndarray) -> list[tuple[Any, Any, Any]]:
        """One window's best (start token, end token, score) spans, as transformers' select_starts_ends: logits
        masked to the context (and [CLS]), softmaxed, the no-answer score kept with handle_impossible_answer."""
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
        if self.impossible:
            self.min_null_score = min(self.min_null_score, (start[0, 0] * end[0, 0]).item())
        start[0, 0] = end[0, 0] = 0.0
        return list(zip(*self._spans(start, end, desired)))

    def _spans(self, start: np.ndarray, end: np.ndarray, desired: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The best (start, end) token spans, end >= start, at most max_answer_len tokens, with their scores."""
        outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
        candidates = np.tril(np.triu(outer), self.max_answer_len - 1)
        scores_flat = candidates.flatten()
        if self.candidates == 1:
            idx_sort = np.array([np.argmax(scores_flat)])
        elif len(scores_flat) < self.candidates + self.inclusive:  # 4.57's QA pipeline: <; document QA's: <=
            idx_sort = np.argsort(-scores_flat)
        else:
            idx = np.argpartition(-scores_flat, self.candidates)[0:self.candidates]
            idx_sort = idx[np.argsort(-scores_flat[idx])]
        starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
        # transformers tests membership in desired.nonzero() of the (1, n) mask, row indices included
        allowed = desired.nonzero()
        keep = np.isin(starts, allowed) & np.isin(ends, allowed)
        starts, ends = starts[keep], ends[keep]
        return starts, ends, candidates[0, starts, ends]

    def _chars(self, window: Any, s: int, e: int) -> tuple[int, int]:
        """Character span of tokens s..e, widened to whole words when align_to_words and the tokens have words."""
        if self.align:
            start_word, end_word = window.token_to_word(s), window.token_to_word(e)
            if start_word is not None and end_word is not None:
                sequence_index = 1 if self.question_first else 0
                first = window.word_to_chars(start_word, sequence_index)
                last = window.word_to_chars(end_word, sequence_index)
                if first is not None and last is not None:
                    return first[0], last[1]
        return window.offsets[s][0], window.offsets[e][1]

    def best(self) -> dict[str, Any] | list[dict[str, Any]]:
        """The top_k answers, best first (the no-answer among them with handle_impossible_answer); one alone."""
        answers = self.answers + ([{"score": self.min_null_score, "start": 0, "end": 0, "answer": ""}]
                                  if self.impossible else [])
        answers = sorted(answers, key=lambda a: float(a["score"]), reverse=True)[:self.top_k]
        return answers[0] if len(answers) == 1 else answers


class _Windows(NamedTuple):
    """Question-answering examples tokenized: each (question, context) and the windows of its context."""

    examples: list[tuple[str, str]]
    windows: list[list[Any]]


class _QuestionAnswering(_TextTask):
    """question-answering (extractive), as transformers 4.57's QuestionAnsweringPipeline (transformers 5
    dropped it): answer spans in the context, long contexts read in doc_stride windows."""

    name = "question-answering"
    options = (
        _Option("top_k", _integer(1), 1),
        _Option("max_seq_len", _integer(1), lambda task, _: min(task.tokenizer.max_length, 384)),
        _Option("doc_stride", _integer(0), lambda task, options: min(options["max_seq_len"] // 2, 128)),
        _Option("max_answer_len", _integer(1), 15),
        _Option("max_question_len", _integer(1), 64),  # accepted as transformers does; the window decides
        _Option("handle_impossible_answer", _flag, False),
        _Option("align_to_words", _flag, True),
    )
    axes = "(batch, sequence)"  # start and end logits

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        names = list(self.session.outputs)
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

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        """(question, context) pairs from the call forms transformers accepts."""
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

    @classmethod
    def cli_inputs(cls, values: Sequence[str]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if len(values) != 2:
            raise InvalidInputError("question-answering takes two inputs, a question and a context: "
                                    "model.onnx 'Where do I live?' 'I live in Berlin.'")
        return (), {"question": values[0], "context": values[1]}

    def preprocess(self, items: list[tuple[str, str]], options: Mapping[str, Any]) -> _Windows:
        max_seq_len, doc_stride = options["max_seq_len"], options["doc_stride"]
        if max_seq_len > self.tokenizer.max_length:
            raise InvalidInputError(f"max_seq_len ({max_seq_len}) is longer than the model takes ({self.tokenizer.max_length})")
        if doc_stride > max_seq_len:
            raise InvalidInputError(f"doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})")
        tokenizer = self.tokenizer.with_truncation(
            "only_second" if self.question_first else "only_first", window=max_seq_len, stride=doc_stride
        )
        pairs = [(q, c) if self.question_first else (c, q) for q, c in items]
        try:
            encodings = tokenizer.encode(pairs)
        except InvalidInputError as exc:
            raise InvalidInputError(
                f"{exc}; a question must leave room for the context in max_seq_len ({max_seq_len}) tokens: "
                "shorten the question or raise max_seq_len"
            ) from None
        return _Windows(items, [[e, *e.overflowing] for e in encodings])

    def forward(self, batch: _Windows, options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        return self.rows([w for group in batch.windows for w in group], self.outputs)

    def postprocess(self, batch: _Windows, outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        rows = iter(outputs)
        results = []
        for (_, context), group in zip(batch.examples, batch.windows):
            search = _AnswerSearch(context, self.question_first, self.cls_id, options)
            for window in group:
                start, end = (np.asarray(r, dtype=np.float32)[None] for r in next(rows))
                search.add(window, start, end)
            results.append(search.best())
        return results


# --- Feature extraction -------------------------------------------------------------------------------

_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
SENTENCE_TRANSFORMERS_MODULES = ("Transformer", "Pooling", "Normalize")
"""sentence-transformers modules whose work this runtime does (Transformer is the graph itself)."""


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


class _Ids(NamedTuple):
    """Token ids given by a caller, shaped as the tokenizer's encodings are for padding."""

    ids: list[int]
    attention_mask: list[int]
    type_ids: list[int]


def _pool(tokens: np.ndarray, mode: str) -> np.ndarray:
    """One pooling mode over the token rows of one text (no padding rows), as sentence-transformers."""
    if mode == "cls":
        out: np.ndarray = tokens[0]
    elif mode == "lasttoken":
        out = tokens[-1]
    elif mode == "max":
        out = tokens.max(axis=0)
    elif mode == "weightedmean":
        weights = np.arange(1, len(tokens) + 1, dtype=np.float32)[:, None]
        out = (tokens * weights).sum(axis=0) / max(float(weights.sum()), 1e-9)
    else:
        count = max(float(len(tokens)), 1e-9)
        out = tokens.sum(axis=0) / (count if mode == "mean" else np.sqrt(count))
    return out


class _FeatureExtraction(_TextTask):
    """feature-extraction: token embeddings as transformers.FeatureExtractionPipeline, and encode()
    with the sentence-transformers pooling, normalization and prompts embedded with the model."""

    name = "feature-extraction"
    options = (_Option("return_tensors", _flag, False),)
    endpoints = ("/v1/embeddings",)
    output = "last_hidden_state"
    axes = "(batch, sequence, features)"

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
        # the sizes a Matryoshka-trained model's embeddings may be cut to (its model card's matryoshka_dims)
        self.dimensions: list[int] = _field(f"{KEY_SENTENCE_TRANSFORMERS}.matryoshka_dimensions",
                                            st.get("matryoshka_dimensions"), (list,), [], each=(int,), low=1)
        self.unsupported = [m.get("type", "?") for m in st.get("modules") or []
                            if str(m.get("type", "")).rsplit(".", 1)[-1] not in SENTENCE_TRANSFORMERS_MODULES]

    def preprocess(self, items: list[str], options: Mapping[str, Any]) -> list[Any]:
        return self.tokenizer.encode(items)

    def forward(self, batch: list[Any], options: Mapping[str, Any]) -> list[np.ndarray]:
        return self.logits(batch)

    def postprocess(self, batch: list[Any], outputs: list[np.ndarray], options: Mapping[str, Any]) -> list[Any]:
        return [row[None] if options["return_tensors"] else [row.tolist()] for row in outputs]

    def encode(self, sentences: Any, *, prompt_name: str | None = None, prompt: str | None = None,
               normalize_embeddings: bool = False) -> np.ndarray:
        """Sentence embeddings, as SentenceTransformer.encode (see Runtime.encode)."""
        if self.unsupported:
            raise ProcessorReconstructionError(
                f"sentence-transformers modules {self.unsupported} are not supported by this runtime; "
                "only Transformer, Pooling and Normalize are"
            )
        items, single = _Task.inputs(self, (sentences,), {})
        texts = _texts(self.name, items)
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
        out = self.vectors(self.tokenizer.encode(texts), skip, normalize_embeddings)
        return out[0] if single else out

    def vectors(self, encodings: Sequence[Any], skip: int = 0, normalize_embeddings: bool = False) -> np.ndarray:
        """The pooled (and normalized, where the model or the caller says) embeddings of encodings, (n, dim);
        `skip` leading tokens (a prompt's) left out of the pooling."""
        vectors = []
        for tokens in self.logits(encodings):
            tokens = tokens.astype(np.float32)[skip:]
            vectors.append(np.concatenate([_pool(tokens, m) for m in self.modes]))
        out = np.stack(vectors)
        if self.normalize or normalize_embeddings:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def encode_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Embeddings of texts given as token ids (special tokens included, as the model reads them), (n, dim)."""
        vocabulary = self.tokenizer.backend.get_vocab_size(with_added_tokens=True)
        for row in ids:
            if not row or not all(_is_int(t) and 0 <= t < vocabulary for t in row):
                raise InvalidInputError(f"token ids must be non-empty lists of integers in [0, {vocabulary})")
            if len(row) > self.tokenizer.max_length:
                raise InvalidInputError(f"{len(row)} token ids are past the model's {self.tokenizer.max_length}")
        return self.vectors([_Ids(list(row), [1] * len(row), [0] * len(row)) for row in ids])


# --- Zero-shot classification -------------------------------------------------------------------------


def _candidate_labels(name: str, value: Any) -> list[str]:
    labels = [label.strip() for label in value.split(",") if label.strip()] if isinstance(value, str) else value
    if not labels or not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) for x in labels):
        raise InvalidInputError(
            "zero-shot-classification needs candidate_labels: a list of strings or a comma-separated string, "
            "e.g. candidate_labels=['sports', 'politics']"
        )
    return list(labels)


def _hypothesis_template(name: str, value: Any) -> str:
    try:
        ok = isinstance(value, str) and value.format("label") != value
    except (IndexError, KeyError, ValueError):  # "{0} {1}", "{name}", "{": not one {} for the label
        ok = False
    if not ok:
        raise InvalidInputError(f"{name} {value!r} has no {{}} where the label should go")
    return str(value)


def _positional_labels(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The zero-shot pipelines' positional labels, runtime(inputs, labels), moved into kwargs; the inputs remain."""
    if len(args) > 1:
        if len(args) > 2 or "candidate_labels" in kwargs:
            raise InvalidInputError(f"cannot understand the extra arguments {args[1:]!r}; pass candidate_labels=[...]")
        kwargs["candidate_labels"] = args[1]
    return args[:1]


class _Pairs(NamedTuple):
    """Zero-shot inputs tokenized: the sequences, the labels, and an encoding per (sequence, hypothesis)."""

    sequences: list[str]
    labels: list[str]
    encodings: list[Any]


class _ZeroShotClassification(_TextTask):
    """zero-shot-classification with an NLI model, as transformers.ZeroShotClassificationPipeline."""

    name = "zero-shot-classification"
    options = (
        _Option("candidate_labels", _candidate_labels, _REQUIRED),
        _Option("hypothesis_template", _hypothesis_template, "This example is {}."),
        _Option("multi_label", _flag, False),
    )

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        # transformers truncates only the premise, so that the hypothesis (the label) stays whole
        self.tokenizer = self.tokenizer.with_truncation("only_first")
        label2id = ctx.config.get("label2id") or {}
        self.entailment_id = next((int(i) for label, i in label2id.items() if str(label).lower().startswith("entail")), -1)

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        return super().inputs(_positional_labels(args, kwargs), kwargs)

    def preprocess(self, items: list[str], options: Mapping[str, Any]) -> _Pairs:
        labels, template = options["candidate_labels"], options["hypothesis_template"]
        pairs = [(seq, template.format(label)) for seq in items for label in labels]
        return _Pairs(items, labels, self.tokenizer.encode(pairs))

    def forward(self, batch: _Pairs, options: Mapping[str, Any]) -> np.ndarray:
        logits = np.stack(self.logits(batch.encodings)).astype(np.float32)
        return logits.reshape(len(batch.sequences), len(batch.labels), -1)

    def postprocess(self, batch: _Pairs, outputs: np.ndarray, options: Mapping[str, Any]) -> list[Any]:
        results = []
        for seq, rows in zip(batch.sequences, outputs):
            if options["multi_label"] or len(batch.labels) == 1:
                contradiction_id = -1 if self.entailment_id == 0 else 0
                pair = np.exp(rows[:, [contradiction_id, self.entailment_id]])
                scores = (pair / pair.sum(-1, keepdims=True))[:, 1]
            else:
                entail = np.exp(rows[:, self.entailment_id])
                scores = entail / entail.sum(-1, keepdims=True)
            top = list(reversed(scores.argsort()))
            results.append({"sequence": seq, "labels": [batch.labels[i] for i in top], "scores": scores[top].tolist()})
        return results


# --- Generating tasks ---------------------------------------------------------------------------------
# What text generation, text-to-text and Whisper share: the call's generation config (the caller's generate() options
# over the model's generation config and the pipeline's defaults), the decoding loop over left-padded rows with the
# stop strings the config names, refused when a row may grow past the model's positions, items run batch_size at a
# time with each one's num_return_sequences sequences back in the caller's order, and the new tokens decoded.

class _Generating(_Task):
    """A task that generates tokens; its __init__ sets the tokenizer, the model's generation defaults and the
    pipeline's (and positions, where learned positions end)."""

    tokenizer: TextTokenizer
    model_generation: Mapping[str, Any]
    task_defaults: Mapping[str, Any]
    positions: int | None = None
    too_long: ClassVar[str] = ""  # the last hint of the positions check
    _token_text: _TokenText | None = None
    _vocabulary: _Vocabulary | None = None  # the tokens' bytes, for constraints
    _constraint_lock: ClassVar[threading.Lock] = threading.Lock()

    def generation(self, options: Mapping[str, Any], **given: Any) -> _GenerationConfig:
        """The call's generation config: the caller's generate() options (and `given`) over the model's and the
        pipeline's defaults."""
        user = {name: options[name] for name in _GENERATION_OPTION_NAMES if name in options}
        return _generation_config(self.model_generation, {**user, **given}, self.task_defaults)

    def search(self, step: _Step, sequences: Sequence[Sequence[int]], config: _GenerationConfig, pad: int,
               extra: Sequence[_Processor] = ()) -> _Search:
        """The decoding loop over rows starting from the token id lists."""
        rows = _prompts(sequences, config, pad, self.positions)
        longest = int(rows.max_lengths.argmax())
        if self.positions is not None and rows.max_lengths[longest] > self.positions:
            raise InvalidInputError(
                f"the output may grow to {rows.max_lengths[longest]} tokens ({len(sequences[longest])} given), past the "
                f"model's {self.positions} positions; lower max_new_tokens (or max_length){self.too_long}")
        return _Search(step, rows, config, self.stops(config), extra, self.constraints(config, len(sequences)))

    def constraint(self, config: _GenerationConfig) -> _TokenIndex | None:
        """The call's constraint (json_schema, json_object, regex, choices) over the tokenizer's vocabulary; None
        without one. Kept (a few): the same constraint in later calls reuses its automaton and token masks."""
        key = (config.json_schema, config.json_object, config.regex, config.choices)
        if not any(key):
            return None
        with _Generating._constraint_lock:
            compiled = self.__dict__.setdefault("_compiled", OrderedDict())
            index: _TokenIndex | None = compiled.get(key)
            if index is None:
                pattern = _constraint_pattern(config)
                if pattern is None:
                    return None
                if self._vocabulary is None:
                    self._token_text = self._token_text or _TokenText(self.tokenizer)
                    self._vocabulary = _Vocabulary(self.tokenizer, self._token_text)
                index = compiled[key] = _TokenIndex(_regex_constraint(pattern[1], pattern[0]), self._vocabulary)
                if len(compiled) > _MAX_CONSTRAINTS:
                    compiled.popitem(last=False)
            compiled.move_to_end(key)
        if not config.eos_token_id:
            raise InvalidInputError(f"{index.automaton.what} needs an eos token, to end the text where the constraint "
                                    "is complete, and the model names none; pass eos_token_id")
        return index

    def constraints(self, config: _GenerationConfig, prompts: int) -> list[_TokenIndex | None] | None:
        """The constraint of each of the prompts that run together (_Search's constraints); None without one."""
        index = self.constraint(config)
        return None if index is None else [index] * prompts

    def constrained(self, config: _GenerationConfig, sequence: Iterable[int]) -> tuple[str, bool] | None:
        """A constrained sequence's text (its tokens' own text: what the constraint matched, which decode() may
        change, dropping a SentencePiece leading space) and whether it was cut before the text was complete
        (max_new_tokens, max_length, a stop string); None for a free one."""
        index = self.constraint(config)
        if index is None:
            return None
        eos = set(config.eos_token_id or ())
        tokens = [int(t) for t in sequence if t >= 0]
        ended = next((k for k, t in enumerate(tokens) if t in eos), None)
        tokens = tokens[:ended]
        state = 0
        for token in tokens:
            state = index.advance(state, token)
        complete = ended is not None or (state >= 0 and index.automaton.accepting[state])
        return index.text(tokens), not complete

    def stops(self, config: _GenerationConfig) -> _StopStrings | None:
        """The stop strings' criterion, None without them."""
        if not config.stop_strings:
            return None
        self._token_text = self._token_text or _TokenText(self.tokenizer)
        return _StopStrings(config.stop_strings, self._token_text)

    def generate(self, keys: Sequence[Any], config: _GenerationConfig, search: Callable[[list[int]], _Search], *,
                 mixed: bool = True) -> list[list[np.ndarray]]:
        """Each item's num_return_sequences sequences of new tokens; items (by their keys) batched by _batched."""
        count = config.num_return_sequences

        def run(group: list[int]) -> list[list[np.ndarray]]:
            sequences = search(group).run()
            return [sequences[k * count: (k + 1) * count] for k in range(len(group))]

        return _batched(keys, self.ctx.batch_size, run, mixed=mixed)

    def decode(self, ids: Iterable[int], **options: Any) -> str:
        # beam search fills short sequences with -1 when the model has no eos or pad token
        return self.tokenizer.decode([int(t) for t in ids if t >= 0], **options)


# --- Tool calls ---------------------------------------------------------------------------------------
# Tools reach the chat template as transformers' apply_chat_template(tools=...) hands them over: OpenAI function tools
# ({"type": "function", "function": {...}}) or bare JSON-schema function dicts, as given. The model's answer is parsed
# back in the format its chat template teaches, recognised by the template's text (_tool_format): Hermes / Qwen
# <tool_call>{json}</tool_call> blocks, Llama 3.x's JSON message ({"name", "parameters"}, after <|python_tag|> or not),
# Mistral's [TOOL_CALLS] [{...}] (and its later [TOOL_CALLS]name[ARGS]{...}). A call is {"type": "function",
# "function": {"name", "arguments": dict}}, as transformers' parse_response shapes it. tool_choice "required" or a named
# tool constrains generation to one call in that format: its literal text around the call's JSON schema.


def _tool_function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """A tool's function: an OpenAI tool's "function", else the dict itself (as transformers' parser reads tools)."""
    function = tool.get("function", tool)
    return function if isinstance(function, dict) else {}


def _tools(name: str, value: Any) -> list[dict[str, Any]]:
    """A list of tools, each a dict with a function name (and a JSON-schema object of parameters, if any); names unique."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, dict) for t in value):
        raise InvalidInputError(f"{name} must be a list of tool dicts ({{'type': 'function', 'function': {{'name': ..., "
                                f"'parameters': {{...}}}}}}), got {value!r:.200}")
    seen: set[str] = set()
    for i, tool in enumerate(value):
        function = _tool_function(tool)
        tool_name, parameters = function.get("name"), function.get("parameters")
        if not isinstance(tool_name, str) or not tool_name:
            raise InvalidInputError(f"{name}[{i}] has no function name: give {{'type': 'function', 'function': "
                                    "{'name': ..., 'parameters': {...}}}")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidInputError(f"{name}[{i}].function.parameters must be a JSON schema object, got {parameters!r:.200}")
        if tool_name in seen:
            raise InvalidInputError(f"{name} names the function {tool_name!r} twice")
        seen.add(tool_name)
    return [dict(t) for t in value]


def _tool_choice(name: str, value: Any) -> str | dict[str, Any]:
    """"auto", "none", "required", or a named function ({"type": "function", "function": {"name": ...}})."""
    if value in ("auto", "none", "required"):
        return str(value)
    if isinstance(value, dict) and isinstance(_tool_function(value).get("name"), str):
        return value
    raise InvalidInputError(f"{name} must be 'auto', 'none', 'required' or {{'type': 'function', 'function': {{'name': "
                            f"...}}}}, got {value!r:.200}")


def _json_or_none(text: str) -> Any:
    """The JSON value of text, None when it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _json_values(text: str) -> list[Any]:
    """The JSON values written one after another in text, apart by spaces or ";" (Llama 3.2's parallel calls); [] when
    anything else is there."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text):
        try:
            value, at = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):
            return []
        values.append(value)
        while at < len(text) and text[at] in " \t\r\n;":
            at += 1
    return values


def _call(value: Any, arguments: str = "arguments") -> dict[str, Any] | None:
    """A parsed call as {"type": "function", "function": {"name", "arguments"}}; None when value is not one. Arguments
    given as a JSON string are read as the object they encode."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    args = value.get(arguments, value.get("arguments", value.get("parameters", {})))
    if isinstance(args, str):
        args = _json_or_none(args)
    if not isinstance(args, dict):
        return None
    return {"type": "function", "function": {"name": value["name"], "arguments": args}}


class _ToolFormat(NamedTuple):
    """A chat template's tool-call format: its name, where a call may start in the answer (`start`, "" where the whole
    answer is the call), and a forced call's text around its JSON (`prefix`, `suffix`), whose arguments sit under
    `arguments`."""

    name: str
    start: str
    prefix: str
    suffix: str
    arguments: str = "arguments"

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """The answer's text outside its calls (stripped) and its calls; a block that does not parse stays text."""
        if self.name == "hermes":
            calls, kept, at = [], [], 0
            for match in re.finditer(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", text, re.S):
                call = _call(_json_or_none(match.group(1)))
                if call is not None:
                    calls.append(call)
                    kept.append(text[at: match.start()])
                    at = match.end()
            return ("".join(kept) + text[at:]).strip(), calls
        if self.name == "llama3":
            body = text.strip()
            body = body[len(self.start):].lstrip() if body.startswith(self.start) else body
            found = [_call(v, "parameters") for v in _json_values(body)] if body.startswith("{") else []
            return ("", [c for c in found if c]) if found and all(found) else (text.strip(), [])
        at = text.find(self.start)  # mistral
        if at < 0:
            return text.strip(), []
        body = text[at + len(self.start):].strip()
        if body.startswith("["):
            values = _json_or_none(body)
            found = [_call(v) for v in values] if isinstance(values, list) else []
        else:  # [TOOL_CALLS]name[ARGS]{...}, repeated for parallel calls
            pieces = [piece.partition("[ARGS]") for piece in body.split(self.start)]
            found = [_call({"name": name.strip(), "arguments": _json_or_none(args)}) if tag else None
                     for name, tag, args in pieces]
        return (text[:at].strip(), [c for c in found if c]) if found and all(found) else (text.strip(), [])

    def held(self, text: str) -> int:
        """Where a stream's text must be held back from: a call's start, or the start of what may become one."""
        if self.name == "llama3":
            stripped = text.lstrip()
            return 0 if stripped[:1] == "{" or self.start.startswith(stripped[: len(self.start)]) else len(text)
        at = text.find(self.start)
        if at >= 0:
            return at
        return next((len(text) - k for k in range(min(len(self.start) - 1, len(text)), 0, -1)
                     if self.start.startswith(text[-k:])), len(text))

    def pattern(self, tools: Sequence[Mapping[str, Any]], regex: Callable[[Any], str]) -> str:
        """The regular expression of one call to any of the tools in this format, `regex` turning a JSON schema into
        the regular expression of its JSON: the JSON {"name": <its name>, <arguments>: <its parameters>} between the
        format's prefix and suffix, or (Mistral's later format) name[ARGS]{parameters}."""
        functions = [_tool_function(t) for t in tools]
        if self.name == "mistral" and not self.suffix:  # [TOOL_CALLS]name[ARGS]{...}
            return re.escape(self.prefix) + "(?:" + "|".join(
                re.escape(f["name"] + "[ARGS]") + regex(f.get("parameters") or {"type": "object"}) for f in functions) + ")"
        calls = [{"type": "object", "properties": {"name": {"const": f["name"]},
                                                     self.arguments: f.get("parameters") or {"type": "object"}},
                  "required": ["name", self.arguments], "additionalProperties": False} for f in functions]
        return re.escape(self.prefix) + regex(calls[0] if len(calls) == 1 else {"anyOf": calls}) + re.escape(self.suffix)


# Each format by the texts its chat template writes (all of them), tried in order.
_TOOL_FORMATS = (
    (("<tool_call>",), _ToolFormat("hermes", "<tool_call>", "<tool_call>\n", "\n</tool_call>")),
    (("[TOOL_CALLS]", "[ARGS]"), _ToolFormat("mistral", "[TOOL_CALLS]", "[TOOL_CALLS]", "")),
    (("[TOOL_CALLS]",), _ToolFormat("mistral", "[TOOL_CALLS]", "[TOOL_CALLS] [", "]")),
    (("<|python_tag|>",), _ToolFormat("llama3", "<|python_tag|>", "", "", "parameters")),
    (('"parameters"', "<|eot_id|>"), _ToolFormat("llama3", "<|python_tag|>", "", "", "parameters")),
)


def _tool_format(template: str | None) -> _ToolFormat | None:
    """The tool-call format a chat template teaches, None when it reads no tools or writes no format known here."""
    if not template or "tools" not in template:
        return None
    return next((f for markers, f in _TOOL_FORMATS if all(m in template for m in markers)), None)


def _forced_tools(tools: Sequence[Mapping[str, Any]], choice: str | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The tools a forced call may call: all of them for "required", the named one."""
    if choice == "required":
        return list(tools)
    wanted = _tool_function(choice if isinstance(choice, Mapping) else {}).get("name")
    named = [t for t in tools if _tool_function(t).get("name") == wanted]
    if not named:
        raise InvalidInputError(f"tool_choice names the function {wanted!r}, which is not among the tools "
                                f"({', '.join(repr(_tool_function(t).get('name')) for t in tools)})")
    return named


# --- Text generation ----------------------------------------------------------------------------------


def _long_generation(name: str, value: Any) -> str:
    if value != "hole":
        raise InvalidInputError(f"{name} must be None or 'hole', got {value!r}")
    return "hole"


# TextGenerationPipeline's own options, then generate()'s: those unset (None) are left to the embedded
# generation config and the pipeline's defaults (_generation_config).
_TEXT_GENERATION_OPTIONS = (
    _Option("return_full_text", _boolean),
    _Option("return_tensors", _boolean),
    _Option("return_text", _boolean),
    _Option("prefix", _string, lambda task, _: task.prefix),
    _Option("stop_sequence", _strings),
    _Option("handle_long_generation", _long_generation),
    _Option("continue_final_message", _boolean),
    _Option("skip_special_tokens", _boolean, True),
    _Option("tools", _tools),
    _Option("tool_choice", _tool_choice, "auto"),
    *(option._replace(default=None) for option in _GENERATION_OPTIONS),
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


class _Generation(NamedTuple):
    """Text-generation inputs made ready: the prompts as token ids and the call's generation config."""

    prompts: list[_Prompt]
    config: _GenerationConfig


class _TextGeneration(_Generating):
    """text-generation, as transformers.TextGenerationPipeline: continues strings or chats (rendered with the
    embedded chat template) with the generation options of GenerationConfig, defaults from the embedded
    generation config. Lists run together, left-padded, in batches of batch_size."""

    name = "text-generation"
    processors = ("tokenizer",)
    options = _TEXT_GENERATION_OPTIONS
    # the pipeline's defaults, where neither the caller nor the model's generation config sets them
    defaults: ClassVar[Mapping[str, Any]] = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
    too_long = ", shorten the prompt, or pass handle_long_generation='hole' to drop its start"
    endpoints = ("/v1/chat/completions", "/v1/completions")

    def served(self) -> tuple[str, ...]:
        return self.endpoints if self.chat_template else self.endpoints[1:]

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        # a prompt is never cut silently: the position check below says when one is too long
        self.tokenizer = _text_tokenizer(ctx, self.name).with_truncation("longest_first", window=_VERY_LARGE_MAX_LENGTH)
        self.step = _DecoderOnly(ctx.session(), ctx.config)
        self.model_generation = _model_generation_defaults(ctx.metadata.get(KEY_GENERATION_CONFIG), ctx.config)
        pad = self.tokenizer.token_id("pad_token")
        self.task_defaults = {**self.defaults, **({} if pad is None else {"pad_token_id": pad})}
        self.positions = _config_int(ctx.config, "max_position_embeddings", "n_positions", "n_ctx")
        prefix = ctx.config.get("prefix")
        self.prefix = prefix if isinstance(prefix, str) else None
        template = self.tokenizer.config.get("chat_template")
        if isinstance(template, list):  # named templates, as transformers 4 saved several
            template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
        self.chat_template = template if isinstance(template, str) else None
        self.tool_format = _tool_format(self.chat_template)
        self._template: Any = None

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        """A string or a chat (a list of messages) is one prompt; a list of them, several."""
        items, _ = super().inputs(args, kwargs)
        single = len(args) == 1 and (isinstance(args[0], str) or _is_chat(args[0]))
        items = [args[0]] if single else items
        if not all(isinstance(i, str) or _is_chat(i) for i in items):
            raise InvalidInputError(
                "text-generation takes a string, chat messages ([{'role': ..., 'content': ...}, ...]) or a list of "
                f"either; got {type(args[0]).__name__}"
            )
        return items, single

    def config(self, options: Mapping[str, Any]) -> _GenerationConfig:
        """The call's generation config; the pipeline options that exclude each other refused."""
        full, tensors, text = options["return_full_text"], options["return_tensors"], options["return_text"]
        if full is not None and text is not None:
            raise InvalidInputError("return_text is mutually exclusive with return_full_text")
        if full is not None and tensors:
            raise InvalidInputError("return_full_text is mutually exclusive with return_tensors")
        if tensors and text is not None:
            raise InvalidInputError("return_text is mutually exclusive with return_tensors")
        given: dict[str, Any] = {} if options["stop_sequence"] is None else {"stop_strings": options["stop_sequence"]}
        forced = self.forced_call(options)
        if forced is not None:
            other = [n for n in ("regex", "json_schema", "json_object", "choices") if options.get(n)]
            if other:
                raise InvalidInputError(f"tool_choice={options['tool_choice']!r} constrains the answer to a tool call; "
                                        f"leave out {other[0]} (or pass tool_choice='auto')")
            given["regex"] = forced[1]
        return self.with_prefix(self.generation(options, **given), options)

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> _Generation:
        """The prompts as token ids (strings behind the prefix, chats rendered with the chat template), and
        the generation config."""
        config = self.config(options)
        forced = self.forced_call(options)
        prompts = []
        for item in items:
            continue_final = False
            if isinstance(item, str):
                if options["tools"]:
                    raise InvalidInputError("tools reach the model through its chat template: pass chat messages "
                                            "([{'role': 'user', 'content': ...}]), not a string")
                tokenizer = self.tokenizer
                if options["max_length"] is not None:  # the pipeline hands max_length to the tokenizer too
                    tokenizer = tokenizer.with_truncation("longest_first", window=options["max_length"])
                ids = tokenizer.encode([(options["prefix"] or "") + item])[0].ids
            else:
                continue_final = options["continue_final_message"]
                if continue_final is None:
                    continue_final = item[-1]["role"] == "assistant"
                text = self.render(item, continue_final, self.tools(options))
                ids = self.tokenizer.encode([text], add_special_tokens=False)[0].ids
            if options["handle_long_generation"] == "hole":
                ids = self.hole(ids, config)
            if forced is not None and forced[0]:  # a forced call's special tokens: the prompt's, decoded as new text
                prompts.append(_Prompt(item, [*ids, *forced[0]], len(ids), True, continue_final))
            elif ids:
                prompts.append(_Prompt(item, ids, len(ids), not isinstance(item, str), continue_final))
            elif config.bos_token_id is not None:  # generate() starts an empty prompt with bos
                prompts.append(_Prompt(item, [config.bos_token_id], 0, not isinstance(item, str), continue_final))
            else:
                raise InvalidInputError("the prompt is empty and the model has no bos_token_id to start from; pass some text")
        return _Generation(prompts, config)

    def hole(self, ids: list[int], config: _GenerationConfig) -> list[int]:
        """handle_long_generation='hole': the prompt's start dropped to leave room for the new tokens."""
        new_tokens = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - len(ids)
        if new_tokens < 0:
            raise InvalidInputError(
                "handle_long_generation='hole' cannot tell how many new tokens are expected; pass max_new_tokens"
            )
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

    def tools(self, options: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """The tools the chat template gets: the caller's, unless tool_choice is "none"; refused where the template
        reads none, or where a forced call needs a tool-call format this runtime does not know."""
        tools: list[dict[str, Any]] | None = options["tools"]
        choice = options["tool_choice"]
        if choice != "auto" and choice != "none" and not tools:
            raise InvalidInputError(f"tool_choice={choice!r} needs tools=[...] to choose from")
        if not tools or choice == "none":
            return None
        if self.chat_template is None or "tools" not in self.chat_template:
            raise InvalidInputError("this model's chat template does not read tools, so tools=[...] would change nothing; "
                                    "leave tools out (or re-embed from a tokenizer whose chat_template takes tools)")
        if choice != "auto":
            _forced_tools(tools, choice)
            if self.tool_format is None:
                raise InvalidInputError(
                    f"tool_choice={choice!r} forces a call in the model's tool-call format, and its chat template writes "
                    "none known here (Hermes <tool_call>, Llama 3 JSON, Mistral [TOOL_CALLS]); use tool_choice='auto'")
        return tools

    def forced_call(self, options: Mapping[str, Any]) -> tuple[list[int], str] | None:
        """For tool_choice "required" or a named tool: the special tokens that start a call in the model's format
        (the prompt's last tokens: a constraint masks special tokens) and the regular expression of the rest of one
        call; None otherwise."""
        choice, tools = options["tool_choice"], options["tools"]
        if choice in ("auto", "none") or not tools:
            return None
        named = _forced_tools(tools, choice)
        if self.tool_format is None:
            self.tools(options)  # raises, naming the formats known
            return None
        prefix, prefill = self.tool_format.prefix, []
        ids = {t.content: i for i, t in self.tokenizer.backend.get_added_tokens_decoder().items() if t.special}
        while (token := next((s for s in sorted(ids, key=len, reverse=True) if s and prefix.startswith(s)), None)):
            prefill.append(ids[token])
            prefix = prefix[len(token):]
        pattern = self.tool_format._replace(prefix=prefix).pattern(named, _json_schema_regex)
        return prefill, pattern

    def parses_tools(self, options: Mapping[str, Any]) -> bool:
        """Whether the answers of a call with these options are parsed for tool calls."""
        return self.tool_format is not None and bool(options.get("tools")) and options.get("tool_choice") != "none"

    def tool_calls(self, ids: Iterable[int], options: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
        """New tokens as (text outside the calls, the calls) when the call had tools in a format known here; else None.
        The text is decoded with special tokens ([TOOL_CALLS] and <|python_tag|> are), which the content loses."""
        if not self.parses_tools(options):
            return None
        return self.split_calls(self.decode(ids, skip_special_tokens=False), options["skip_special_tokens"])

    def special_texts(self) -> list[str]:
        """The text of each special token, longest first."""
        tokens = self.tokenizer.backend.get_added_tokens_decoder().values()
        return sorted({t.content for t in tokens if t.special and t.content}, key=len, reverse=True)

    def split_calls(self, text: str, skip_special: bool = True) -> tuple[str, list[dict[str, Any]]]:
        """Text decoded with its special tokens as (the text outside its calls, the calls), in the model's format; the
        special tokens that end it (end of turn, eos, padding) dropped first, the others from the content."""
        special = self.special_texts()
        while (end := next((s for s in special if text.rstrip().endswith(s)), None)) is not None:
            text = text.rstrip()[: -len(end)]
        content, calls = self.tool_format.parse(text) if self.tool_format is not None else (text, [])
        for token in special if skip_special else ():
            content = content.replace(token, "")
        return content.strip(), calls

    def render(self, messages: Sequence[Mapping[str, Any]], continue_final: bool,
               tools: Sequence[Mapping[str, Any]] | None = None) -> str:
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
                raise InvalidInputError(
                    "continue_final_message needs a final message with text content that the chat template reads"
                )
            chat[-1]["content"] = final + _CONTINUE_TAG
        special = {n: t for n in _SPECIAL_TOKEN_NAMES if (t := _token_content(self.tokenizer.config.get(n))) is not None}
        try:
            text = str(self._template.render(messages=chat, tools=None if tools is None else list(tools), documents=None,
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

    def prompt_search(self, prompts: Sequence[_Prompt], config: _GenerationConfig) -> _Search:
        """The decoding loop for prompts that run together."""
        return self.search(self.step, [p.ids for p in prompts], config, self.tokenizer.pad_token_id)

    def forward(self, batch: _Generation, options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        """The new tokens of num_return_sequences sequences per prompt. A graph without position_ids numbers
        positions from the first column, so only prompts of one length run together there (left padding would
        shift them)."""
        prompts = batch.prompts
        return self.generate([len(p.ids) for p in prompts], batch.config,
                             lambda group: self.prompt_search([prompts[i] for i in group], batch.config),
                             mixed="position_ids" in self.step.int_types)

    def postprocess(self, batch: _Generation, outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        """One record per sequence: token ids (prompt included), the new text, or the prompt continued."""
        return [self._records(prompt, sequences, options, batch.config) for prompt, sequences in zip(batch.prompts, outputs)]

    def _records(self, prompt: _Prompt, sequences: Sequence[np.ndarray], options: Mapping[str, Any],
                 config: _GenerationConfig | None = None) -> list[dict[str, Any]]:
        """A constrained call's records say whether the text was cut before it was complete ("truncated"); their
        text is the constrained tokens' own."""
        records: list[dict[str, Any]] = []
        for new in sequences:
            constrained = None if config is None else self.constrained(config, new)
            if options["return_tensors"]:
                records.append({"generated_token_ids": [*prompt.ids, *(int(t) for t in new)]})
                if constrained is not None:
                    records[-1]["truncated"] = constrained[1]
                continue
            text = self.decode([*prompt.ids[prompt.skip:], *new], skip_special_tokens=options["skip_special_tokens"])
            if constrained is not None:
                text = self.decode(prompt.ids[prompt.skip:], skip_special_tokens=options["skip_special_tokens"]) + constrained[0]
            generated: Any = text
            if options["return_full_text"] is not False:
                if not prompt.chat:
                    generated = prompt.given + text
                elif prompt.continue_final:
                    final = prompt.given[-1]
                    generated = [*prompt.given[:-1], {"role": final["role"], "content": final["content"] + text}]
                elif (parsed := self.tool_calls([*prompt.ids[prompt.skip:], *new], options)) is not None and parsed[1]:
                    # transformers' parse_response shape; content kept (maybe "") so that the chat can be passed back
                    generated = [*prompt.given, {"role": "assistant", "content": parsed[0], "tool_calls": parsed[1]}]
                else:
                    generated = [*prompt.given, {"role": "assistant", "content": text}]
            records.append({"generated_text": generated})
            if constrained is not None:
                records[-1]["truncated"] = constrained[1]
        return records

    def logprobs(self, texts: str | Sequence[str]) -> Any:
        """Each text's tokens scored by the model: the log-probability of every token given those before it
        (None for the first, which nothing predicts) and the model's own top prediction at each position."""
        single = isinstance(texts, str)
        items = [texts] if single else texts
        if not isinstance(items, (list, tuple)) or not items or not all(isinstance(t, str) and t for t in items):
            raise InvalidInputError("logprobs() takes a non-empty string or a list of them")
        out = []
        for encoding in self.tokenizer.encode(list(items)):
            ids = np.array([encoding.ids], dtype=np.int64)
            if self.positions is not None and ids.shape[1] > self.positions:
                raise InvalidInputError(f"the text has {ids.shape[1]} tokens, past the model's {self.positions} positions")
            scores = _log_softmax(self.step.all_logits(ids, np.ones_like(ids))[0, :-1])
            picked = scores[np.arange(len(scores)), ids[0, 1:]]
            out.append({"tokens": list(encoding.tokens), "token_ids": [int(i) for i in ids[0]],
                        "token_logprobs": [None, *(float(v) for v in picked)],
                        "top_token_ids": [None, *(int(v) for v in scores.argmax(axis=-1))]})
        return out[0] if single else out

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        """The new text of one prompt as it is generated, held back until stable (_TextStreamer)."""
        items, single = self.inputs(args, kwargs)
        options = self.check_options(kwargs)
        if not single:
            raise InvalidInputError("stream() takes one prompt (a string or one chat), not a list")
        if not self.streamable(options):
            raise InvalidInputError("stream() yields the text of one sequence: pass num_beams=1 and "
                                    "num_return_sequences=1, and no return_tensors")
        batch = self.preprocess(items, options)
        return self._stream(self.prompt_search(batch.prompts, batch.config), options["skip_special_tokens"])

    def streamable(self, options: Mapping[str, Any]) -> bool:
        """Whether these options give one sequence, as text: what stream() can yield."""
        config = self.config(options)
        return config.num_beams == 1 and config.num_return_sequences == 1 and not options["return_tensors"]

    def _stream(self, search: _Search, skip: bool) -> Iterator[str]:
        streamer = _TextStreamer(lambda ids: self.decode(ids, skip_special_tokens=skip))
        for tokens in search:
            text = streamer.put(tokens[:1])
            if text:
                yield text
        text = streamer.end()
        if text:
            yield text

    def cli(self, values: Sequence[str], options: Mapping[str, Any], output: str | None = None) -> Iterator[str]:
        """One prompt on the command line prints as it is generated: the prompt, then the new text."""
        checked = self.check_options(options)
        if len(values) != 1 or not self.streamable(checked):
            yield from super().cli(values, options)
            return
        yield "" if checked["return_full_text"] is False else values[0]
        yield from self.stream(values[0], **{k: v for k, v in options.items() if k != "return_full_text"})
        yield "\n"


# --- Text-to-text generation ---------------------------------------------------------------------------
# transformers 4.57's Text2TextGenerationPipeline, SummarizationPipeline and TranslationPipeline (transformers 5
# removed them) over an encoder-decoder (_EncoderDecoder): the pipeline's defaults, the model's generation config
# and the config's task_specific_params merged as 4.57 merges them, then the caller's options.

# transformers 4.57's _default_generation_config of the three pipelines
_SEQ2SEQ_DEFAULTS: Mapping[str, Any] = {"max_new_tokens": 256, "num_beams": 4}
# tokenizers whose translation inputs carry language codes (4.57's _build_translation_inputs)
_LANGUAGE_CODE_TOKENIZERS = frozenset({"MBartTokenizer", "MBart50Tokenizer", "NllbTokenizer", "M2M100Tokenizer",
                                       "SeamlessM4TTokenizer"})


def _truncation(name: str, value: Any) -> str | None:
    """transformers' truncation argument for one text: False or 'do_not_truncate' (the pipeline's default) keep the
    whole text; True, 'longest_first' or 'only_first' cut it to the model's length."""
    if value is False or value == "do_not_truncate":
        return None
    if value is True or value in ("longest_first", "only_first"):
        return "longest_first"
    raise InvalidInputError(f"{name} must be True, False, 'longest_first', 'only_first' or 'do_not_truncate'; got {value!r}")


# The pipelines' own options, then generate()'s: those unset (None) are left to the model's generation config and
# the pipeline's defaults (_pipeline_generation).
_SEQ2SEQ_OPTIONS = (
    _Option("return_tensors", _boolean),
    _Option("return_text", _boolean),  # taken and ignored, as 4.57 does: the text is returned unless return_tensors
    _Option("clean_up_tokenization_spaces", _boolean, False),
    _Option("truncation", _truncation),
    _Option("stop_sequence", _string),
    _Option("decoder_start_token_id", _integer(0)),
    *(option._replace(default=None) for option in _GENERATION_OPTIONS),
)


def _task_params(config: Mapping[str, Any], task: str) -> tuple[str | None, dict[str, Any]]:
    """The prefix and the generation options of the model config's task_specific_params entry for task (the pipeline's
    task name: summarization, translation_en_to_de); the config's own prefix and none when it has no entry."""
    prefix = config.get("prefix") if isinstance(config.get("prefix"), str) else None
    params = config.get("task_specific_params")
    entry = params.get(task) if isinstance(params, dict) else None
    if entry is None:
        return prefix, {}
    where = f"{KEY_MODEL_CONFIG}.task_specific_params.{task}"
    if not isinstance(entry, dict) or not isinstance(entry.get("prefix", ""), str):
        raise MetadataValidationError(f"{where} must be an object whose prefix is a string; re-embed a fixed config.json")
    checks = {o.name: o.check for o in _GENERATION_OPTIONS if o.name not in _CALLER_OPTIONS}
    options = {}
    for key, value in entry.items():
        if key in checks and value is not None:
            _checked(where, key, value, checks[key], "re-embed a fixed config.json")
            options[key] = value
    return entry.get("prefix", prefix), options


def _pipeline_generation(model: Mapping[str, Any], params: Mapping[str, Any], pad: int | None,
                         pipeline: Mapping[str, Any] = _SEQ2SEQ_DEFAULTS) -> dict[str, Any]:
    """The generation options a transformers 4.57 pipeline calls generate() with, before the caller's: its defaults
    (pipeline: its _default_generation_config); the model's where those are GenerationConfig's global defaults (so the
    text-to-text pipelines' num_beams=4 and max_new_tokens=256 stay unless the model sets max_length); the
    task_specific_params entry over them; the tokenizer's pad token when none is set; then, as generate() does, the
    model's again where the result is a global default. Options left at the global defaults are left out (unset)."""
    defaults = {o.name: o.default for o in _GENERATION_OPTIONS}
    values = {**defaults, **pipeline}

    def model_defaults() -> None:
        for key, value in model.items():
            if values.get(key) == defaults.get(key) and value != defaults.get(key):
                values[key] = value

    model_defaults()
    if values["max_new_tokens"] == pipeline.get("max_new_tokens") and values["max_length"] != defaults["max_length"]:
        values["max_new_tokens"] = None  # a model's max_length wins over the pipeline's length default
    values.update(params)
    if values["pad_token_id"] is None:
        values["pad_token_id"] = pad
    model_defaults()
    return {key: value for key, value in values.items() if value != defaults[key]}


def _decoder_start(generation_config: Mapping[str, Any] | None, config: Mapping[str, Any]) -> int | None:
    """The token the decoder starts from: decoder_start_token_id, else bos_token_id, of the generation config (the
    model config's when the model has no generation_config.json), as generate() takes it."""
    source = generation_config if generation_config is not None else config
    where = KEY_GENERATION_CONFIG if generation_config is not None else KEY_MODEL_CONFIG
    for key in ("decoder_start_token_id", "bos_token_id"):
        value = _field(f"{where}.{key}", source.get(key), (int,), low=0)
        if value is not None:
            return int(value)
    return None


class _Seq2SeqBatch(NamedTuple):
    """Text-to-text inputs made ready: each text tokenized (prefix first), the start token, the generation config."""

    encodings: list[Any]
    start: int
    config: _GenerationConfig


class _Seq2Seq(_Generating):
    """The three text-to-text pipelines of transformers 4.57 over an encoder-decoder: each text (behind the prefix)
    encoded once, tokens generated from the decoder start token with the generation options of GenerationConfig;
    lists run together in batches of batch_size and give what each text gives alone. The result of a text is a list of
    num_return_sequences records ``{"<returns>_text": ...}`` (``<returns>_token_ids`` with return_tensors, the start
    token first); a list of texts gives a list of records when each has one, else a list of lists."""

    processors = ("tokenizer",)
    options: ClassVar[tuple[_Option, ...]] = _SEQ2SEQ_OPTIONS
    returns: ClassVar[str] = ""  # the records' key: generated, summary, translation

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        tokenizer = _text_tokenizer(ctx, self.name)
        self.truncating = tokenizer
        # the pipeline does not truncate unless asked (truncation=True)
        self.tokenizer = tokenizer.with_truncation("longest_first", window=_VERY_LARGE_MAX_LENGTH)
        self.model = _EncoderDecoderModel(ctx, self.name)
        self.dtypes = _check_ports(self.model.encoder, _TOKEN_INPUTS, what=f"the encoder of {self.name}")
        self.prefix, params = _task_params(ctx.config, self.task_name())
        generation_config = ctx.metadata.get(KEY_GENERATION_CONFIG)
        model = _model_generation_defaults(generation_config, ctx.config)
        self.model_generation = _pipeline_generation(model, params, self.tokenizer.token_id("pad_token"))
        self.task_defaults = {}
        self.start = _decoder_start(generation_config, ctx.config)
        # learned positions (BART, Marian) end there; T5's relative ones do not
        self.positions = _config_int(ctx.config, "max_position_embeddings")

    def task_name(self) -> str:
        """The pipeline task name whose task_specific_params apply."""
        return self.name

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        items, single = super().inputs(args, kwargs)
        return _texts(self.name, items), single

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = super().__call__(*args, **kwargs)
        if isinstance(args[0], list) and all(len(records) == 1 for records in result):
            return [records[0] for records in result]
        return result

    def config(self, options: Mapping[str, Any]) -> _GenerationConfig:
        """The call's generation config: the caller's options over _pipeline_generation's; a stop_sequence becomes the
        eos token (its first token, as 4.57 does)."""
        if options["stop_sequence"] is None:
            return self.generation(options)
        ids = self.tokenizer.encode([options["stop_sequence"]], add_special_tokens=False)[0].ids
        if not ids:
            raise InvalidInputError(f"stop_sequence {options['stop_sequence']!r} has no tokens")
        return self.generation(options, eos_token_id=ids[0])

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> _Seq2SeqBatch:
        """Each text tokenized behind the prefix (cut to the model's length only with truncation), and the call's
        start token and generation config."""
        for position, text in enumerate(items):
            if not text.strip():
                where = f" (item {position} of the list)" if len(items) > 1 else ""
                raise InvalidInputError(f"{self.name} got an empty text{where}; pass some text")
        config = self.config(options)
        start = options["decoder_start_token_id"]
        start = self.start if start is None else start
        if start is None:
            raise InvalidInputError("the model names no decoder_start_token_id or bos_token_id to start decoding from; "
                                    "pass decoder_start_token_id")
        tokenizer = self.tokenizer
        if options["truncation"] is not None:
            tokenizer = self.truncating.with_truncation(options["truncation"])
        encodings = tokenizer.encode([(self.prefix or "") + text for text in items])
        longest = max((len(e.ids) for e in encodings), default=0)
        if self.positions is not None and longest > self.positions:
            raise InvalidInputError(f"the text has {longest} tokens, more than the model's {self.positions} positions; "
                                    "shorten it or pass truncation=True")
        return _Seq2SeqBatch(encodings, start, config)

    def forward(self, batch: _Seq2SeqBatch, options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        """The new tokens of num_return_sequences sequences per text, each text's encoder input padded on the right."""
        encodings = batch.encodings

        def search(group: list[int]) -> _Search:
            feed = self.tokenizer.pad([encodings[i] for i in group], self.dtypes, side="right")
            return self.search(_EncoderDecoder(self.model, feed), [[batch.start]] * len(group), batch.config,
                               self.tokenizer.pad_token_id)

        return self.generate([len(e.ids) for e in encodings], batch.config, search)

    def postprocess(self, batch: _Seq2SeqBatch, outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        """One list of records per text: token ids (the start token first), or the text decoded without special
        tokens, cleaned up only when asked (clean_up_tokenization_spaces, False by default as in the pipelines)."""
        results = []
        for sequences in outputs:
            records: list[dict[str, Any]] = []
            for new in sequences:
                constrained = self.constrained(batch.config, new)
                if options["return_tensors"]:
                    records.append({f"{self.returns}_token_ids": [batch.start, *(int(t) for t in new)]})
                else:
                    text = self.decode(new, skip_special_tokens=True,
                                       clean_up_tokenization_spaces=options["clean_up_tokenization_spaces"])
                    records.append({f"{self.returns}_text": text if constrained is None else constrained[0]})
                if constrained is not None:  # as text generation's
                    records[-1]["truncated"] = constrained[1]
            results.append(records)
        return results


class _Text2TextGeneration(_Seq2Seq):
    """text2text-generation, as transformers 4.57's Text2TextGenerationPipeline: ``[{"generated_text": ...}]``."""

    name = "text2text-generation"
    returns = "generated"


class _Summarization(_Seq2Seq):
    """summarization, as transformers 4.57's SummarizationPipeline: ``[{"summary_text": ...}]``, with the prefix and
    options of the config's task_specific_params["summarization"] (T5: "summarize: ", beams, lengths). 4.57's
    warnings about lengths are not repeated."""

    name = "summarization"
    returns = "summary"


class _Translation(_Seq2Seq):
    """translation and translation_XX_to_YY, as transformers 4.57's TranslationPipeline: ``[{"translation_text": ...}]``,
    with the prefix and options of the config's task_specific_params entry for the pair (T5: "translate English to
    German: "); "translation" takes the first translation_* entry, as the pipeline does. A pair the config has no entry
    for, where it has entries for others, is refused. src_lang and tgt_lang are taken and change nothing, as for the
    tokenizers that 4.57 does not give language codes to (tokenizers with language codes, mBART's, NLLB's, M2M100's,
    are refused)."""

    name = "translation"
    returns = "translation"
    options = (*_SEQ2SEQ_OPTIONS, _Option("src_lang", _string), _Option("tgt_lang", _string))

    def __init__(self, ctx: _Context) -> None:
        params = ctx.config.get("task_specific_params")
        pairs = sorted(k for k in params if str(k).startswith("translation")) if isinstance(params, dict) else []
        asked = ctx.task if ctx.task.startswith("translation_") else None
        if asked is None:
            self.pair = pairs[0] if pairs else self.name
        elif pairs and asked not in pairs:
            raise TaskDetectionError(f"{asked}: the model's task_specific_params have no entry for it (it has "
                                     f"{', '.join(pairs)}); pass one of those as the task")
        else:
            self.pair = asked
        tokenizer_class = str((ctx.metadata.get(KEY_TOKENIZER_CONFIG) or {}).get("tokenizer_class") or "")
        if tokenizer_class.removesuffix("Fast") in _LANGUAGE_CODE_TOKENIZERS:
            raise TaskDetectionError(f"translation with {tokenizer_class} (language codes from src_lang and tgt_lang) is "
                                     "not supported by this runtime yet")
        super().__init__(ctx)

    def task_name(self) -> str:
        return self.pair


# --- Image tasks ------------------------------------------------------------------------------------


class _Sized(NamedTuple):
    """An image's processed pixels, and its size as opened (what the output is brought back to)."""

    pixels: np.ndarray
    height: int
    width: int


def _image_processor(ctx: _Context) -> ImageProcessor:
    """The context's image processor, or the error saying that the file has none."""
    processor: ImageProcessor | None = ctx.processors.get("image_processor")
    if processor is None:
        raise ProcessorReconstructionError(
            f"no image processor embedded ({KEY_IMAGE_PROCESSOR_CONFIG}); re-embed from a model folder with "
            "its processor files (preprocessor_config.json or processor_config.json)"
        )
    return processor


def _sized(processor: ImageProcessor, item: Any) -> _Sized:
    image = load_image(item)
    height, width = image.shape[:2] if isinstance(image, np.ndarray) else (image.height, image.width)
    return _Sized(processor.process(image), height, width)


class _ImageTask(_Task):
    """A task on images: each opened as transformers' load_image opens it and processed by the embedded image
    processor; images of one pixel shape run together, batch_size at a time."""

    processors: ClassVar[tuple[str, ...]] = ("image_processor",)
    example = "image"
    incremental = True
    output: ClassVar[str] = "logits"
    axes: ClassVar[str] = ""  # the output's axes
    ports: ClassVar[tuple[_Reads, ...]] = (_Reads("pixel_values", _FLOAT_DTYPES),)  # the inputs it feeds

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.processor = _image_processor(ctx)
        self.session = ctx.session()
        self.output_name = self.session.output(self.output)
        self.dtypes = _check_ports(self.session, self.ports, [_Reads(self.output_name, axes=self.axes)], what=self.name)
        self.pixel_dtype = self.dtypes["pixel_values"]
        port = self.session.inputs["pixel_values"]
        expected_shape = (3, *(self.processor.output_size or ()))
        if len(port.shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(port.shape[1:], expected_shape)):
            raise MetadataValidationError(
                f"graph input 'pixel_values' has shape {list(port.shape)} but the embedded image processor makes images of "
                f"{expected_shape}; re-embed the model with its own processor files"
            )
        if port.shape[0] == 1:  # a graph exported with a batch of one (rembg's BiRefNet): one image a run
            ctx.batch_size = 1

    def pixels(self, images: Sequence[Any]) -> list[np.ndarray]:
        """Each image opened (load_image) and processed: (3, height, width) float32 pixels."""
        return [self.processor.process(load_image(image)) for image in images]

    def rows(self, pixels: Sequence[np.ndarray], outputs: Sequence[str],
             feed: Mapping[str, np.ndarray] | None = None) -> list[list[np.ndarray]]:
        """The rows of the named outputs for each image's pixels, in caller order; images of one shape run
        together, batch_size at a time, with feed (tokenized texts) beside them."""
        def run(chunk: list[int]) -> list[list[np.ndarray]]:
            batch = np.stack([pixels[i] for i in chunk]).astype(self.pixel_dtype, copy=False)
            results = self.session.run(outputs, {**(feed or {}), "pixel_values": batch})
            return [[out[position] for out in results] for position in range(len(chunk))]

        return _batched([p.shape for p in pixels], self.ctx.batch_size, run, mixed=False)


# --- Image classification ---------------------------------------------------------------------------


class _ImageClassification(_ImageTask):
    """image-classification, as transformers.ImageClassificationPipeline: the top_k labels of each image."""

    name = "image-classification"
    axes = "(batch, labels)"
    options = (
        _Option("top_k", _integer(1), 5),
        _Option("function_to_apply", _choice(*_FUNCTIONS), lambda task, _: _default_function(task.ctx.config)),
    )

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> list[np.ndarray]:
        return self.pixels(items)

    def forward(self, batch: list[np.ndarray], options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        return self.rows(batch, [self.output_name])

    def postprocess(self, batch: list[np.ndarray], outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        """The top_k labels of each image, best first (ties in label order)."""
        results = []
        for (logits,) in outputs:
            scores = [float(s) for s in _FUNCTIONS[options["function_to_apply"]](logits.astype(np.float32))]
            labels = self.ctx.labels(len(scores))
            ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
            results.append([{"label": labels[i], "score": scores[i]} for i in ranked[:options["top_k"]]])
        return results


# --- Image feature extraction -----------------------------------------------------------------------


class _ImageFeatureExtraction(_ImageTask):
    """image-feature-extraction, as transformers.ImageFeatureExtractionPipeline (pool for the pooled output),
    and encode(): one embedding per image."""

    name = "image-feature-extraction"
    options = (
        _Option("pool", _flag, False),
        _Option("return_tensors", _flag, False),
    )
    output = "last_hidden_state"

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.pooled = "pooler_output" if "pooler_output" in self.session.outputs else None
        # an embedding: a projection (CLIP's image_embeds) or the pooled output, else the first token's state
        self.embedding = next((n for n in ("image_embeds", "pooler_output") if n in self.session.outputs), None)

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> list[np.ndarray]:
        if options["pool"] and self.pooled is None:
            raise InvalidInputError(
                f"pool=True needs the pooled output (pooler_output) but the graph has {list(self.session.outputs)}; "
                "export the model with its pooler, or call without pool"
            )
        return self.pixels(items)

    def forward(self, batch: list[np.ndarray], options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        return self.rows(batch, [str(self.pooled) if options["pool"] else self.output_name])

    def postprocess(self, batch: list[np.ndarray], outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        """Each image's features as the pipeline gives them: nested lists with a batch axis of 1, or an array."""
        return [features[None] if options["return_tensors"] else [features.tolist()] for (features,) in outputs]

    def encode(self, images: Any, *, normalize_embeddings: bool = False) -> np.ndarray:
        """One embedding per image, (n, dim) float32 ((dim,) for one image): image_embeds or pooler_output
        where the graph has one, else the first token's last hidden state."""
        items, single = self.inputs((images,), {})
        vectors = []
        for start in range(0, len(items), self.ctx.batch_size):
            for (row,) in self.rows(self.pixels(items[start: start + self.ctx.batch_size]), [self.embedding or self.output_name]):
                if self.embedding is None:
                    if row.ndim != 2:
                        raise MetadataValidationError(
                            f"encode() needs image_embeds, pooler_output or a (batch, tokens, hidden) output; the graph has "
                            f"{list(self.session.outputs)} and {self.output_name!r} has {row.ndim + 1} axes"
                        )
                    row = row[0]
                vectors.append(row.astype(np.float32))
        if not vectors:
            return np.zeros((0,), dtype=np.float32)
        out = np.stack(vectors)
        if normalize_embeddings:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out


# --- Zero-shot image classification -----------------------------------------------------------------


def _label_list(task: str, example: str) -> _Check:
    """The check of a CLIP-style task's candidate_labels: a non-empty list of strings (a string is refused: the
    pipelines would read each of its characters as a label)."""
    def check(name: str, value: Any) -> list[str]:
        if not value or not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
            raise InvalidInputError(f"{task} needs {name}: a list of strings, e.g. {name}={example}")
        return list(value)

    return check


def _ranked_labels(logits: np.ndarray, labels: Sequence[str]) -> list[dict[str, Any]]:
    """The labels by the softmax of their logits, best first (ties in label order), as the zero-shot pipelines."""
    scores = _softmax(logits.astype(np.float32))
    return [{"score": float(s), "label": label} for s, label in sorted(zip(scores, labels), key=lambda x: -float(x[0]))]


class _Photos(NamedTuple):
    """Zero-shot images processed, and the label hypotheses tokenized as the graph's text inputs."""

    pixels: list[np.ndarray]
    feed: dict[str, np.ndarray]


class _ZeroShotImageClassification(_ImageTask):
    """zero-shot-image-classification with a CLIP-style model (both towers in one graph: input_ids,
    attention_mask and pixel_values in, logits_per_image out), as transformers.ZeroShotImageClassificationPipeline."""

    name = "zero-shot-image-classification"
    processors = ("image_processor", "tokenizer")
    options = (
        _Option("candidate_labels", _label_list("zero-shot-image-classification", "['a cat', 'a dog']"), _REQUIRED),
        _Option("hypothesis_template", _hypothesis_template, "This is a photo of {}."),
    )
    output = "logits_per_image"
    ports = (_Reads("pixel_values", _FLOAT_DTYPES), *_TOKEN_INPUTS[:2])

    def __init__(self, ctx: _Context) -> None:
        if "siglip" in str(ctx.config.get("model_type", "")):
            raise TaskDetectionError(
                "zero-shot-image-classification runs CLIP-style models (softmax over logits_per_image); SigLIP's "
                "sigmoid scores and fixed-length padding are not supported by this runtime"
            )
        outputs = list(ctx.session().outputs)
        if "logits_per_image" not in outputs:  # the whole CLIP model: both towers, one graph
            raise MetadataValidationError(
                f"zero-shot-image-classification needs the output logits_per_image but the graph has {outputs}; export the "
                "whole CLIP model (both towers) for zero-shot-image-classification"
            )
        super().__init__(ctx)
        self.tokenizer = _text_tokenizer(ctx, self.name)
        self.dtypes = {k: v for k, v in self.dtypes.items() if k != "pixel_values"}  # what the tokenizer fills

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        return super().inputs(_positional_labels(args, kwargs), kwargs)

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> _Photos:
        hypotheses = [options["hypothesis_template"].format(label) for label in options["candidate_labels"]]
        return _Photos(self.pixels(items), self.tokenizer.pad(self.tokenizer.encode(hypotheses), self.dtypes))

    def forward(self, batch: _Photos, options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        return self.rows(batch.pixels, [self.output_name], batch.feed)

    def postprocess(self, batch: _Photos, outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        """Each image's labels by softmax score, best first (ties in label order)."""
        return [_ranked_labels(logits, options["candidate_labels"]) for (logits,) in outputs]


# --- Object detection ---------------------------------------------------------------------------------
# DETR-style heads: per query, class logits (with the no-object class last: softmax, that class dropped; Conditional
# DETR: sigmoid over every class, the best 100 query-class pairs) and a box (centre x, centre y, width, height, in
# [0, 1] of the processed image), as the image processors' post_process_object_detection reads them.

_SIGMOID_DETECTION = frozenset({"ConditionalDetrImageProcessor"})  # post-processing with sigmoid scores
_SIGMOID_TOP_K = 100  # post_process_object_detection's top_k, which the pipeline leaves at its default


def _corner_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(centre x, centre y, width, height) boxes in [0, 1] as (xmin, ymin, xmax, ymax) in pixels of a height x
    width image, in float32 as center_to_corners_format and the scaling compute them."""
    cx, cy, w, h = boxes.astype(np.float32).T
    half = np.float32(0.5)
    corners = np.stack([cx - half * w, cy - half * h, cx + half * w, cy + half * h], axis=-1)
    scaled: np.ndarray = corners * np.array([width, height, width, height], dtype=np.float32)
    return scaled


def _softmax_detections(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's best class and score, the no-object class (the last) left out; and the queries, in order."""
    probabilities = _softmax(logits.astype(np.float32))[:, :-1]
    return probabilities.max(-1), probabilities.argmax(-1), np.arange(len(logits))


def _sigmoid_detections(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best query-class pairs by sigmoid score (at most 100, best first): scores, classes, queries."""
    flat = _sigmoid(logits.astype(np.float32)).reshape(-1)
    top = np.argsort(-flat, kind="stable")[:_SIGMOID_TOP_K]
    return flat[top], top % logits.shape[1], top // logits.shape[1]


class _ObjectDetection(_ImageTask):
    """object-detection with a DETR-style head (DETR, Conditional DETR, YOLOS: logits and pred_boxes per query), as
    transformers.ObjectDetectionPipeline: the detections scoring above threshold, boxes in the image's pixels."""

    name = "object-detection"
    options = (_Option("threshold", _number(0.0, high=1.0), 0.5),)
    axes = "(batch, queries, classes)"
    ports = (_Reads("pixel_values", _FLOAT_DTYPES), _Reads("pixel_mask", _INT_DTYPES, required=False))

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        _check_ports(self.session, self.ports, [_Reads("pred_boxes", axes="(batch, queries, box)")], what=self.name)
        self.detections = _sigmoid_detections if self.processor.name in _SIGMOID_DETECTION else _softmax_detections

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> list[_Sized]:
        return [_sized(self.processor, item) for item in items]

    def forward(self, batch: list[_Sized], options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        """Images of one processed shape run together (padding others to it changes what the backbone sees near the
        padding: the pipeline runs each image alone), with an all-ones pixel_mask where the graph takes one."""
        def run(chunk: list[int]) -> list[list[np.ndarray]]:
            pixels = np.stack([batch[i].pixels for i in chunk]).astype(self.pixel_dtype, copy=False)
            feed = {"pixel_values": pixels}
            if "pixel_mask" in self.dtypes:
                feed["pixel_mask"] = np.ones((len(chunk), *pixels.shape[2:]), dtype=self.dtypes["pixel_mask"])
            logits, boxes = self.session.run([self.output_name, "pred_boxes"], feed)
            return [[logits[position], boxes[position]] for position in range(len(chunk))]

        return _batched([d.pixels.shape for d in batch], self.ctx.batch_size, run, mixed=False)

    def postprocess(self, batch: list[_Sized], outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        """Each image's detections above threshold: score, label and box (pixels, truncated to ints as the pipeline's)."""
        results = []
        for image, (logits, boxes) in zip(batch, outputs):
            scores, classes, queries = self.detections(logits)
            corners = _corner_boxes(boxes, image.height, image.width)[queries]
            labels = self.ctx.labels(logits.shape[-1])
            keep = scores > options["threshold"]
            results.append([
                {"score": float(score), "label": labels[int(label)],
                 "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (int(v) for v in box)))}
                for score, label, box in zip(scores[keep], classes[keep], corners[keep])
            ])
        return results


# --- Zero-shot object detection -----------------------------------------------------------------------
# OWL-ViT and OWLv2 (its boxes relative to the image padded to a square, scaled by its longer side as its
# post-processing does): the labels (a text query each, through the tokenizer) and the image through one graph: input_ids and
# attention_mask (a row per query of each image, images' rows one after the other), pixel_values; logits (batch, boxes,
# queries) and pred_boxes (batch, boxes, 4). The pipeline runs each label alone through post_process_object_detection
# (its sigmoid score per box, boxes scaled to the image as opened), then sorts all labels' boxes by score (stably:
# label order, then box order) and keeps top_k.


def _detection_labels(name: str, value: Any) -> list[str]:
    """candidate_labels as the pipeline reads them: a list of strings, or one string split at its commas (as is)."""
    if isinstance(value, str) and value:
        value = value.split(",")
    if not value or not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise InvalidInputError(
            f"zero-shot-object-detection needs {name}: a list of strings or a comma-separated string, e.g. "
            f"{name}=['a cat', 'a remote control']; got {value!r}"
        )
    return list(value)


class _Asked(NamedTuple):
    """An image, and its own candidate labels where the call gave them with it (None: the call's candidate_labels)."""

    image: Any
    labels: list[str] | None


def _asked(item: Mapping[Any, Any]) -> _Asked:
    """The pipeline's per-image input {"image": ..., "candidate_labels": ...} as an image and its labels."""
    if set(item) != {"image", "candidate_labels"}:
        raise InvalidInputError("zero-shot-object-detection takes an input dict as {'image': ..., 'candidate_labels': "
                                f"[...]}}; got the keys {sorted(map(str, item))}")
    return _Asked(item["image"], _detection_labels("candidate_labels", item["candidate_labels"]))


class _Queries(NamedTuple):
    """Images processed (with their sizes as opened), each image's labels, and those tokenized as the graph's text
    inputs (one feed a set of labels, shared by the images that have it)."""

    images: list[_Sized]
    labels: list[list[str]]
    feeds: list[dict[str, np.ndarray]]


class _ZeroShotObjectDetection(_ImageTask):
    """zero-shot-object-detection with OWL-ViT (both towers in one graph), as transformers.ZeroShotObjectDetectionPipeline:
    each label's boxes scoring above threshold, best first, boxes in the image's pixels."""

    name = "zero-shot-object-detection"
    processors = ("image_processor", "tokenizer")
    options = (
        _Option("candidate_labels", _detection_labels, None),  # None: each input gives its own (see inputs)
        _Option("threshold", _number(0.0, high=1.0), 0.1),
        _Option("top_k", _integer(0, optional=True), None),
    )
    axes = "(batch, boxes, queries)"
    ports = (_Reads("pixel_values", _FLOAT_DTYPES), *_TOKEN_INPUTS[:2])

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        _check_ports(self.session, self.ports, [_Reads("pred_boxes", axes="(batch, boxes, box)")], what=self.name)
        self.tokenizer = _text_tokenizer(ctx, self.name)
        self.dtypes = {k: v for k, v in self.dtypes.items() if k != "pixel_values"}  # what the tokenizer fills
        text_config = ctx.config.get("text_config")
        positions = text_config.get("max_position_embeddings") if isinstance(text_config, dict) else None
        self.positions = positions if _is_int(positions) and positions > 0 else None
        self.square = isinstance(self.processor, _Owlv2ImageProcessor)  # its post-processing scales by the longer side

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        """Each image with its own labels where the call gives them so, as the pipeline reads its arguments: a dict
        {"image", "candidate_labels"} or a list of them, or a list of images with candidate_labels a list of label lists
        (one per image); otherwise every image takes the call's candidate_labels."""
        if "text_queries" in kwargs:  # the pipeline's older name for the labels
            kwargs["candidate_labels"] = kwargs.pop("text_queries")
        items, single = super().inputs(_positional_labels(args, kwargs), kwargs)
        labels = kwargs.get("candidate_labels")
        if any(isinstance(item, dict) for item in items):
            if not all(isinstance(item, dict) for item in items):
                raise InvalidInputError("zero-shot-object-detection takes a list of images or a list of {'image', "
                                        "'candidate_labels'} dicts, not both in one list")
            if labels is not None:
                raise InvalidInputError("candidate_labels given both in the input dicts and as an option; give each "
                                        "image's labels in its dict only")
            return [_asked(item) for item in items], single
        if single or not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(x, (list, tuple))
                                                                                    for x in labels):
            return [_Asked(item, None) for item in items], single
        if len(labels) != len(items):
            raise InvalidInputError(f"got {len(items)} images but {len(labels)} candidate label lists; give one list per "
                                    "image, or one list for every image")
        del kwargs["candidate_labels"]
        return [_Asked(item, _detection_labels("candidate_labels", each)) for item, each in zip(items, labels)], single

    def _tokenized(self, labels: list[str]) -> dict[str, np.ndarray]:
        """The labels as the graph's text inputs, a row each; a label longer than the text encoder takes refused."""
        encodings = self.tokenizer.encode(labels)
        for label, encoding in zip(labels, encodings):
            if self.positions is not None and len(encoding.ids) > self.positions:
                raise InvalidInputError(
                    f"candidate label {label!r} is {len(encoding.ids)} tokens; the model's text encoder takes at most "
                    f"{self.positions}"
                )
        return self.tokenizer.pad(encodings, self.dtypes)

    def preprocess(self, items: list[_Asked], options: Mapping[str, Any]) -> _Queries:
        feeds: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
        labels = []
        for item in items:
            # no labels with the image nor in the call: the option's check says what is needed
            chosen = item.labels or options["candidate_labels"] or _detection_labels("candidate_labels", None)
            if tuple(chosen) not in feeds:
                feeds[tuple(chosen)] = self._tokenized(chosen)
            labels.append(chosen)
        return _Queries([_sized(self.processor, item.image) for item in items], labels,
                        [feeds[tuple(chosen)] for chosen in labels])

    def forward(self, batch: _Queries, options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        """Images of one processed shape and one set of labels run together, the queries repeated for each."""
        def run(chunk: list[int]) -> list[list[np.ndarray]]:
            pixels = np.stack([batch.images[i].pixels for i in chunk]).astype(self.pixel_dtype, copy=False)
            feed = {name: np.tile(array, (len(chunk), 1)) for name, array in batch.feeds[chunk[0]].items()}
            logits, boxes = self.session.run([self.output_name, "pred_boxes"], {**feed, "pixel_values": pixels})
            return [[logits[position], boxes[position]] for position in range(len(chunk))]

        keys = [(image.pixels.shape, tuple(labels)) for image, labels in zip(batch.images, batch.labels)]
        return _batched(keys, self.ctx.batch_size, run, mixed=False)

    def postprocess(self, batch: _Queries, outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        """Each image's boxes above threshold for each of its labels, by score, best first; top_k of them when given."""
        results = []
        for image, labels, (logits, boxes) in zip(batch.images, batch.labels, outputs):
            if self.square:  # OWLv2: boxes relative to the image padded to a square
                corners = _corner_boxes(boxes, max(image.height, image.width), max(image.height, image.width))
            else:
                corners = _corner_boxes(boxes, image.height, image.width)
            found: list[dict[str, Any]] = []
            for query, label in enumerate(labels):
                scores = _sigmoid(logits[:, query].astype(np.float32))
                for box in np.nonzero(scores > options["threshold"])[0]:
                    found.append({"score": float(scores[box]), "label": label,
                                  "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (int(v) for v in corners[box])))})
            found.sort(key=lambda detection: detection["score"], reverse=True)
            results.append(found[:options["top_k"]] if options["top_k"] else found)
        return results


# --- Depth estimation ---------------------------------------------------------------------------------
# The model's depth map back at the image's size as post_process_depth_estimation makes it (torch's bicubic
# interpolation, rebuilt in numpy: within 1e-5 of torch's relative to the map's largest value), then the 8-bit
# depth image of DepthEstimationPipeline (the map's minimum to maximum as 0 to 255, truncated).

_CUBIC_A = -0.75  # torch's cubic convolution constant (upsample_bicubic2d)


def _cubic_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of target positions, the 4 source positions it reads (clamped to the edges) and their weights, as
    torch's upsample_bicubic2d with align_corners=False computes them (in float32: centres aligned, scale
    source / target)."""
    scale = np.float32(source / target)
    real = scale * (np.arange(target, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    floor = np.floor(real)
    distance = np.abs((real - floor)[:, None] + np.array([1, 0, -1, -2], dtype=np.float32))
    a = np.float32(_CUBIC_A)
    near = ((a + 2) * distance - (a + 3)) * distance * distance + 1
    far = ((a * distance - 5 * a) * distance + 8 * a) * distance - 4 * a
    weights = np.where(distance <= 1, near, far).astype(np.float32)
    positions = np.clip(floor.astype(np.int64)[:, None] + np.arange(-1, 3), 0, source - 1)
    return positions, weights


def _bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (h, w) map resized to (height, width) in float32 as torch.nn.functional.interpolate(mode="bicubic",
    align_corners=False): along each row, then down each column."""
    columns, column_weights = _cubic_taps(image.shape[1], width)
    rows, row_weights = _cubic_taps(image.shape[0], height)
    source = image.astype(np.float32, copy=False)
    wide = np.zeros((image.shape[0], width), dtype=np.float32)
    for tap in range(4):
        wide += column_weights[:, tap] * source[:, columns[:, tap]]
    out = np.zeros((height, width), dtype=np.float32)
    for tap in range(4):
        out += row_weights[:, tap, None] * wide[rows[:, tap]]
    return out


def _depth_image(depth: np.ndarray) -> Any:
    """The pipeline's depth image: (depth - min) / (max - min) * 255 truncated to uint8 ("L"); black for a flat map
    (where the pipeline divides by zero)."""
    low, high = depth.min(), depth.max()
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    return _pil().fromarray((scaled * 255).astype(np.uint8))


def _write_whole(path: str, save: Callable[[str], None]) -> str:
    """path written whole or not at all: save(temporary) writes a temporary file beside it, renamed over it; path."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        save(temporary)
        os.replace(temporary, path)
    except OSError as exc:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise InvalidInputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _written(value: str, suffix: str, image: Any, output: str | None = None) -> str:
    """The command line's image output saved as PNG next to the input it came from (in the folder `output`, made if
    missing, when given), written whole or not at all (a temporary file renamed); the path written."""
    stem = os.path.splitext(value if output is None else os.path.join(output, os.path.basename(value)))[0]
    if output is not None:
        try:
            os.makedirs(output, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(f"cannot write {stem}-{suffix}.png: {exc.strerror or exc}") from None
    return _write_whole(f"{stem}-{suffix}.png", lambda temporary: image.save(temporary, format="PNG"))


class _DepthEstimation(_ImageTask):
    """depth-estimation, as transformers.DepthEstimationPipeline (DPT, Depth Anything, GLPN: one depth map per image):
    predicted_depth, the map interpolated to the image's size (a float32 array), and depth, it as an 8-bit image."""

    name = "depth-estimation"
    output = "predicted_depth"
    axes = "(batch, height, width)"

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> list[_Sized]:
        return [_sized(self.processor, item) for item in items]

    def forward(self, batch: list[_Sized], options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        return self.rows([image.pixels for image in batch], [self.output_name])

    def postprocess(self, batch: list[_Sized], outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        results = []
        for image, (depth,) in zip(batch, outputs):
            predicted = _bicubic(depth, image.height, image.width)
            results.append({"predicted_depth": predicted, "depth": _depth_image(predicted)})
        return results

    def cli(self, values: Sequence[str], options: Mapping[str, Any], output: str | None = None) -> Iterator[str]:
        """Each input's depth image written next to it or in --output (photo-depth.png) and, as JSON, the depth map's
        shape and range."""
        for value, result in zip(values, self(list(values), **options)):
            depth = result["predicted_depth"]
            summary = {"input": value, "depth": _written(value, "depth", result["depth"], output), "predicted_depth": {
                "shape": list(depth.shape), "min": float(depth.min()), "max": float(depth.max()), "mean": float(depth.mean())}}
            yield json.dumps(summary, indent=2, ensure_ascii=False) + "\n"


# --- Image to image -----------------------------------------------------------------------------------
# Super-resolution (Swin2SR) as transformers 4.57's ImageToImagePipeline (transformers 5 removed it; transformers.js
# has it): the reconstruction clipped to [0, 1] as an 8-bit RGB image. Neither pipeline crops the processor's
# padding: the image is the padded input's size times the model's upscale.


def _reconstructed_image(reconstruction: np.ndarray) -> Any:
    """A (3, height, width) reconstruction as the pipeline's RGB image: clipped to [0, 1], times 255, rounded (half to
    even, as torch.round)."""
    pixels = np.moveaxis(np.clip(reconstruction.astype(np.float32), 0, 1), 0, -1)
    return _pil().fromarray((pixels * 255.0).round().astype(np.uint8))


class _ImageToImage(_ImageTask):
    """image-to-image, as transformers 4.57's ImageToImagePipeline (Swin2SR super-resolution): one image per image."""

    name = "image-to-image"
    output = "reconstruction"
    axes = "(batch, channels, height, width)"

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> list[np.ndarray]:
        return self.pixels(items)

    def forward(self, batch: list[np.ndarray], options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        return self.rows(batch, [self.output_name])

    def postprocess(self, batch: list[np.ndarray], outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        return [_reconstructed_image(reconstruction) for (reconstruction,) in outputs]

    def cli(self, values: Sequence[str], options: Mapping[str, Any], output: str | None = None) -> Iterator[str]:
        """Each input's output image written next to it or in --output (photo-output.png); as JSON, where and its size."""
        for value, image in zip(values, self(list(values), **options)):
            summary = {"input": value, "image": _written(value, "output", image, output), "size": [image.width, image.height]}
            yield json.dumps(summary, indent=2, ensure_ascii=False) + "\n"


# --- Image segmentation -------------------------------------------------------------------------------
# Semantic segmentation (SegFormer, UperNet: logits (batch, labels, height, width) at the processed image's size or a
# fraction of it) as ImageSegmentationPipeline's semantic subtask: post_process_semantic_segmentation's logits brought
# to the image's size by torch's bilinear interpolation (align_corners=False, rebuilt in numpy: within 1e-5 of torch's
# relative to the largest logit), the label of each pixel the first largest, and one 0/255 mask per label present, in
# label order, with no score.
# MaskFormer and Mask2Former (class_queries_logits: per query, label logits with a no-object label last;
# masks_queries_logits: per query, mask logits at a quarter of the processed image, which Mask2Former's post-processing
# first brings to 384 x 384) as the pipeline runs them: subtask "panoptic" (its default for them), "instance" or
# "semantic", each as the image processor's post_process_*_segmentation with the pipeline's options (and no
# label_ids_to_fuse, which the pipeline never passes). DETR's panoptic head (DetrForSegmentation: logits and
# pred_masks) likewise, its instance segmentation being compute_segments as its panoptic. OneFormer is not run.

_QUERY_SUBTASKS = ("panoptic", "instance", "semantic")  # the pipeline's order of preference


def _subtask(name: str, value: Any) -> str:
    """A semantic model's subtask: "semantic" alone, as the pipeline finds no other post-processing for it."""
    if value == "semantic":
        return "semantic"
    if value in _QUERY_SUBTASKS:
        raise InvalidInputError(f"{name} {value!r} is not one this model can do: a semantic segmentation model (one logit "
                                f"map per label) segments {name}='semantic' (or None); MaskFormer, Mask2Former and DETR "
                                "panoptic models do 'panoptic' and 'instance' too")
    raise InvalidInputError(f"{name} must be 'semantic' (or None); got {value!r}")


def _query_subtask(name: str, value: Any) -> str:
    if value in _QUERY_SUBTASKS:
        return str(value)
    raise InvalidInputError(f"{name} must be one of {', '.join(map(repr, _QUERY_SUBTASKS))} (or None: 'panoptic'); "
                            f"got {value!r}")


def _bilinear_bands(maps: np.ndarray, height: int, width: int) -> Iterator[tuple[slice, np.ndarray]]:
    """(maps, h, w) brought to (maps, height, width) as _bilinear does, a band of rows at a time, so that a large image
    never holds every map's full-size values at once: each band's rows and its values."""
    rows = max(1, (1 << 24) // max(1, maps.shape[0] * width))
    source = maps.astype(np.float32, copy=False)
    columns, right, left_weight, right_weight = _linear_taps(source.shape[-1], width)
    wide = source[..., columns] * left_weight + source[..., right] * right_weight
    low, high, near, far = _linear_taps(source.shape[-2], height)
    for start in range(0, height, rows):
        band = slice(start, start + rows)
        yield band, wide[:, low[band], :] * near[band, None] + wide[:, high[band], :] * far[band, None]


def _semantic_map(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """The (height, width) label of each pixel: the logits brought to the image's size, their first largest label.

    Each resized value is near * (left * A + right * B) + far * (left * C + right * D) of its four source values
    (weights of sum one), so it is at most their largest. The rows that read the same two source rows resize first
    the labels that are largest at one of their source pixels: the best of those bounds each pixel's winner from
    below, and a label whose largest corner stays below that bound, by more than float32 rounding can bridge, wins
    nowhere along those rows. Only the others are resized there (a few of a model's 150 in a real photo), each value
    computed exactly as _bilinear_bands computes it, so the labels are the same."""
    source = logits.astype(np.float32, copy=False)
    labels = np.empty((height, width), dtype=np.int64)
    if not np.isfinite(source).all() or source.shape[0] < 8:
        for band, values in _bilinear_bands(source, height, width):
            labels[band] = values.argmax(axis=0)
        return labels
    columns, right, left_weight, right_weight = _linear_taps(source.shape[-1], width)
    low, high, near, far = _linear_taps(source.shape[-2], height)
    margin = np.float32(1e-5) * (np.float32(np.abs(source).max()) + np.float32(1e-30))  # >> rounding of 2 products

    def resized(two: np.ndarray, rows: slice) -> np.ndarray:  # (labels, 2 source rows, w) -> (labels, rows, width)
        wide = two[..., columns] * left_weight + two[..., right] * right_weight
        out: np.ndarray = wide[:, 0][:, None, :] * near[rows, None] + wide[:, 1][:, None, :] * far[rows, None]
        return out

    starts = np.flatnonzero(np.diff(low * source.shape[-2] + high, prepend=-1))
    for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), height]):
        rows, two = slice(start, stop), source[:, [low[start], high[start]]]
        leaders = np.unique(two.argmax(axis=0))
        bound = resized(two[leaders], rows).max(axis=0).min(axis=0)  # (width,): below each column's winner
        corners = np.maximum(two[:, 0], two[:, 1])
        largest = np.maximum(corners[:, columns], corners[:, right])  # (labels, width): above each label's values
        kept = np.flatnonzero((largest >= bound - margin).any(axis=1))
        labels[rows] = kept[0] if len(kept) == 1 else kept[resized(two[kept], rows).argmax(axis=0)]
    return labels


def _semantic_segments(logits: np.ndarray, height: int, width: int, names: Sequence[str]) -> list[dict[str, Any]]:
    """The pipeline's semantic result: per label present (in label order) no score, its name and its 0/255 mask."""
    Image = _pil()
    segmentation = _semantic_map(logits, height, width)
    return [{"score": None, "label": names[int(label)],
             "mask": Image.fromarray(((segmentation == label) * 255).astype(np.uint8), mode="L")}
            for label in np.unique(segmentation)]


def _heap_adjust(heap: list[tuple[float, int]], first: int, hole: int, length: int, value: tuple[float, int]) -> None:
    """libstdc++'s __adjust_heap (then __push_heap) of a max-first heap of (value, index) at heap[first:first + length]."""
    top, child = hole, hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if heap[first + child][0] > heap[first + child - 1][0]:
            child -= 1
        heap[first + hole] = heap[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        heap[first + hole] = heap[first + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and heap[first + parent][0] > value[0]:
        heap[first + hole] = heap[first + parent]
        hole, parent = parent, (parent - 1) // 2
    heap[first + hole] = value


def _heap_select(items: list[tuple[float, int]], first: int, middle: int, last: int) -> None:
    """libstdc++'s __heap_select: items[first:middle] made a heap holding the best of items[first:last]."""
    length = middle - first
    for parent in range((length - 2) // 2, -1, -1) if length > 1 else ():
        _heap_adjust(items, first, parent, length, items[first + parent])
    for i in range(middle, last):
        if items[i][0] > items[first][0]:
            value, items[i] = items[i], items[first]
            _heap_adjust(items, first, 0, length, value)


def _torch_topk(values: np.ndarray, k: int) -> np.ndarray:
    """The indices torch.topk(values, k, sorted=False) gives on the CPU, in its order: torch's kernel runs libstdc++'s
    std::partial_sort (best first) when k * 64 <= len(values), else std::nth_element (introselect, whose order is
    the partitions'), both rebuilt here step for step (ties fall as they fall there)."""
    items = [(float(v), i) for i, v in enumerate(values.tolist())]
    if k * 64 <= len(items):  # partial_sort: heap select, then sort_heap
        _heap_select(items, 0, k, len(items))
        for last in range(k - 1, 0, -1):
            value, items[last] = items[last], items[0]
            _heap_adjust(items, 0, 0, last, value)
        return np.array([i for _, i in items[:k]], dtype=np.int64)
    nth, first, last = k - 1, 0, len(items)
    depth = 2 * ((last - first).bit_length() - 1)
    while last - first > 3:
        if depth == 0:
            _heap_select(items, first, nth + 1, last)
            items[first], items[nth] = items[nth], items[first]
            return np.array([i for _, i in items[:k]], dtype=np.int64)
        depth -= 1
        a, b, c = first + 1, first + (last - first) // 2, last - 1  # the median of three moved to first
        x, y, z = items[a][0], items[b][0], items[c][0]
        median = (b if y > z else c if x > z else a) if x > y else (a if x > z else c if y > z else b)
        items[first], items[median] = items[median], items[first]
        low, high = first + 1, last  # __unguarded_partition about items[first]
        while True:
            while items[low][0] > items[first][0]:
                low += 1
            high -= 1
            while items[first][0] > items[high][0]:
                high -= 1
            if low >= high:
                break
            items[low], items[high] = items[high], items[low]
            low += 1
        first, last = (low, last) if low <= nth else (first, low)
    for i in range(first + 1, last):  # __insertion_sort
        value, j = items[i], i
        if value[0] > items[first][0]:
            items[first + 1: i + 1] = items[first: i]
            items[first] = value
            continue
        while value[0] > items[j - 1][0]:
            items[j] = items[j - 1]
            j -= 1
        items[j] = value
    return np.array([i for _, i in items[:k]], dtype=np.int64)


def _nearest_taps(source: int, target: int) -> np.ndarray:
    """For each of target positions the source position torch's nearest interpolation (mode "nearest") reads:
    floor(position * source / target), in float32."""
    scale = np.float32(source) / np.float32(target)
    taps: np.ndarray = np.minimum(np.floor(np.arange(target, dtype=np.float32) * scale).astype(np.int64), source - 1)
    return taps


_Segment = tuple[int, float, "np.ndarray"]  # a label, its score and its (height, width) pixels (quoted: no numpy at import)


def _panoptic_segments(classes: np.ndarray, masks: np.ndarray, height: int, width: int,
                       options: Mapping[str, Any]) -> list[_Segment]:
    """post_process_panoptic_segmentation (compute_segments, nothing fused): the queries whose best label (of all,
    no-object included) is an object and scores above threshold; their mask probabilities brought to the image's size
    and weighted by that score; each pixel to the query of the largest (the first of equals); a query a segment where it
    holds pixels, more than overlap_mask_area_threshold of those where its weighted probability reaches mask_threshold."""
    probabilities = _softmax(classes.astype(np.float32))
    scores, labels = probabilities.max(-1), probabilities.argmax(-1)
    kept = np.flatnonzero((labels != classes.shape[-1] - 1) & (scores > options["threshold"]))
    if not len(kept):
        return []
    with np.errstate(over="ignore"):
        probs = _sigmoid(masks[kept].astype(np.float32))
    owner = np.empty((height, width), dtype=np.int64)
    reached = np.zeros(len(kept), dtype=np.int64)
    for band, resized in _bilinear_bands(probs, height, width):
        weighted = resized * scores[kept][:, None, None]
        owner[band] = weighted.argmax(axis=0)
        reached += (weighted >= options["mask_threshold"]).sum(axis=(1, 2))
    areas = np.bincount(owner.ravel(), minlength=len(kept))
    return [(int(labels[query]), round(float(scores[query]), 6), owner == k) for k, query in enumerate(kept)
            if areas[k] > 0 and reached[k] > 0
            and float(np.float32(areas[k]) / np.float32(reached[k])) > options["overlap_mask_area_threshold"]]


def _instance_segments(classes: np.ndarray, masks: np.ndarray, height: int, width: int,
                       options: Mapping[str, Any]) -> list[_Segment]:
    """post_process_instance_segmentation: as many (query, label) pairs as queries, the best by label probability
    (no-object left out) in torch's topk order; each pair's mask where its query's logit is above 0, scored by that
    probability times the mask's mean sigmoid; brought to the image's size by nearest interpolation; kept where it
    covers a pixel and scores threshold or more, later masks drawn over earlier ones."""
    queries, count = classes.shape[0], classes.shape[-1] - 1
    flat = _softmax(classes.astype(np.float32))[:, :-1].reshape(-1)
    order = _torch_topk(flat, queries)
    picked = masks[order // count].astype(np.float32)
    binary = picked > 0
    with np.errstate(over="ignore"):
        inside = (_sigmoid(picked) * binary).reshape(queries, -1).sum(axis=1)
    scores = flat[order] * (inside / (binary.reshape(queries, -1).sum(axis=1, dtype=np.float32) + np.float32(1e-6)))
    rows, columns = _nearest_taps(picked.shape[1], height), _nearest_taps(picked.shape[2], width)
    sampled = np.ix_(np.unique(rows), np.unique(columns))
    owner = np.full(picked.shape[1:], -1, dtype=np.int64)  # at the masks' size: nearest interpolation only samples it
    found: list[tuple[int, float]] = []
    for j in range(queries):
        if binary[j][sampled].any() and float(scores[j]) >= options["threshold"]:
            owner[binary[j]] = len(found)
            found.append((int(order[j] % count), round(float(scores[j]), 6)))
    full = owner[rows][:, columns]
    return [(label, score, full == index) for index, (label, score) in enumerate(found)]


class _ImageSegmentation(_ImageTask):
    """image-segmentation, semantic (SegFormer, UperNet: one logit map per label), as transformers'
    ImageSegmentationPipeline with subtask "semantic": per label present, {"score": None, "label", "mask"} (an "L"
    image of the input's size, 255 where the pixel has the label). threshold, mask_threshold and
    overlap_mask_area_threshold are taken and change nothing, as for the pipeline's semantic models."""

    name = "image-segmentation"
    options = (
        _Option("subtask", _subtask),
        _Option("threshold", _number(0.0, high=1.0), 0.9),
        _Option("mask_threshold", _number(0.0, high=1.0), 0.5),
        _Option("overlap_mask_area_threshold", _number(0.0, high=1.0), 0.5),
    )
    axes = "(batch, labels, height, width)"

    @classmethod
    def variant(cls, metadata: Mapping[str, Any]) -> type[_Task]:
        """MaskFormer, Mask2Former and DETR (a mask and a label per query) run in _QuerySegmentation and its kin."""
        model_type = (metadata.get(KEY_MODEL_CONFIG) or {}).get("model_type")
        if model_type in _QUERY_SEGMENTERS:
            return _QUERY_SEGMENTERS[model_type]
        if model_type == "oneformer":
            raise TaskDetectionError("image-segmentation with OneFormer (task tokens through its tokenizer) is not supported "
                                     "by this runtime; semantic models (SegFormer, UperNet), MaskFormer, Mask2Former and "
                                     "DETR's panoptic head are")
        return cls

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> list[_Sized]:
        return [_sized(self.processor, item) for item in items]

    def forward(self, batch: list[_Sized], options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        return self.rows([image.pixels for image in batch], [self.output_name])

    def postprocess(self, batch: list[_Sized], outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        return [_semantic_segments(logits, image.height, image.width, self.ctx.labels(logits.shape[0]))
                for image, (logits,) in zip(batch, outputs)]

    def cli(self, values: Sequence[str], options: Mapping[str, Any], output: str | None = None) -> Iterator[str]:
        """Each input's masks written next to it or in --output (photo-mask-0-<label>.png, in the result's order); as
        JSON, each label, its mask's path and size and its share of the image."""
        for value, segments in zip(values, self(list(values), **options)):
            masks = []
            for index, segment in enumerate(segments):
                slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in segment["label"])
                mask = segment["mask"]
                masks.append({"label": segment["label"], "mask": _written(value, f"mask-{index}-{slug}", mask, output),
                              "size": [mask.width, mask.height],
                              "area": float((np.asarray(mask) > 0).mean())})
            yield json.dumps({"input": value, "segments": masks}, indent=2, ensure_ascii=False) + "\n"


class _QuerySegmentation(_ImageSegmentation):
    """image-segmentation with MaskFormer and Mask2Former (per query: label logits, no-object last, and mask logits),
    as ImageSegmentationPipeline: subtask "panoptic" (None: what the pipeline picks for them), "instance" (one segment
    per query-label pair, scored, masks drawn in torch's topk order) or "semantic" (score None)."""

    options = (_Option("subtask", _query_subtask, "panoptic"), *_ImageSegmentation.options[1:])
    output = "class_queries_logits"
    axes = "(batch, queries, labels)"
    ports = (_Reads("pixel_values", _FLOAT_DTYPES), _Reads("pixel_mask", _INT_DTYPES, required=False))
    masks: ClassVar[str] = "masks_queries_logits"  # the mask logits' output
    square: ClassVar[int] = 0  # the side the post-processing first brings the mask logits to (Mask2Former's 384)
    instance: ClassVar[Callable[..., list[_Segment]]] = staticmethod(_instance_segments)

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        _check_ports(self.session, self.ports, [_Reads(self.masks, axes="(batch, queries, height, width)")], what=self.name)

    def forward(self, batch: list[_Sized], options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        """Images of one processed shape run together, each padded as the pipeline pads it alone: to the processor's
        pad_size where it has one, else not at all; with its pixel_mask where the graph takes one."""
        def run(chunk: list[int]) -> list[list[np.ndarray]]:
            padded, mask = _pad_bottom_right([batch[i].pixels for i in chunk], getattr(self.processor, "pad_size", None))
            feed = {"pixel_values": padded.astype(self.pixel_dtype, copy=False)}
            if "pixel_mask" in self.dtypes:
                feed["pixel_mask"] = mask.astype(self.dtypes["pixel_mask"], copy=False)
            classes, masks = self.session.run([self.output_name, self.masks], feed)
            return [[classes[position], masks[position]] for position in range(len(chunk))]

        return _batched([image.pixels.shape for image in batch], self.ctx.batch_size, run, mixed=False)

    def postprocess(self, batch: list[_Sized], outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        Image = _pil()
        results = []
        for image, (classes, masks) in zip(batch, outputs):
            if self.square:
                masks = _bilinear(masks, self.square, self.square)
            names = self.ctx.labels(classes.shape[-1] - 1)
            if options["subtask"] == "semantic":  # post_process_semantic_segmentation: label scores summed over queries
                with np.errstate(over="ignore"):
                    logits = np.einsum("qc,qhw->chw", _softmax(classes.astype(np.float32))[:, :-1],
                                       _sigmoid(masks.astype(np.float32)))
                results.append(_semantic_segments(logits, image.height, image.width, names))
                continue
            segments = (_panoptic_segments if options["subtask"] == "panoptic" else self.instance)(
                classes, masks, image.height, image.width, options)
            results.append([{"score": score, "label": names[label],
                             "mask": Image.fromarray(pixels.astype(np.uint8) * np.uint8(255), mode="L")}
                            for label, score, pixels in segments])
        return results


class _Mask2FormerSegmentation(_QuerySegmentation):
    """Mask2Former: its post-processing first brings the mask logits to 384 x 384."""

    square = 384


class _DetrSegmentation(_QuerySegmentation):
    """DETR's panoptic head (DetrForSegmentation: logits, pred_masks); its instance segmentation is compute_segments,
    as its panoptic (nothing fused either way)."""

    output = "logits"
    masks = "pred_masks"
    instance = staticmethod(_panoptic_segments)


_QUERY_SEGMENTERS: dict[str, type[_Task]] = {"maskformer": _QuerySegmentation, "mask2former": _Mask2FormerSegmentation,
                                             "detr": _DetrSegmentation}


# --- Background removal -------------------------------------------------------------------------------
# Matting models (RMBG-1.4, RMBG-2.0, BiRefNet: one foreground map per image) as transformers.js's
# BackgroundRemovalPipeline (transformers has no such pipeline). The graph's first output, (batch, 1, height, width),
# is read as its ImageSegmentationPipeline reads a model without post-processing: the sigmoid of the map unless it
# lies in [0, 1] (within 1e-5), times 255 truncated to 8 bits, brought to the image's size by RawImage.resize's
# bilinear interpolation as written there (source position x * in / out, not centred; rounded), and put as the alpha
# of the image's RGB. A graph whose one input is not pixel_values (RMBG-1.4's "input") is fed the pixels under its own
# name, as transformers.js feeds it.

_MATTE_EPSILON = 1e-5  # transformers.js's margin around [0, 1] within which a map is taken as probabilities


def _matte_alpha(matte: np.ndarray) -> np.ndarray:
    """A (height, width) foreground map as transformers.js's 8-bit mask: the sigmoid unless the map lies in [0, 1]
    (within 1e-5), times 255, truncated (NaN as 0); each step rounded to float32, as its Float32Array stores it."""
    values = matte.astype(np.float32)
    if (values < -_MATTE_EPSILON).any() or (values > 1 + _MATTE_EPSILON).any():
        with np.errstate(over="ignore"):
            values = (1.0 / (1.0 + np.exp(-values.astype(np.float64)))).astype(np.float32)
    scaled = (values.astype(np.float64) * 255).astype(np.float32)
    alpha: np.ndarray = np.clip(np.nan_to_num(np.trunc(scaled)), 0, 255).astype(np.uint8)
    return alpha


def _corner_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of target positions, the 2 source positions it reads and the weight of the second, as
    transformers.js's RawImage.resize computes them (float64: position x * (source / target), its floor and the next,
    clamped to the last)."""
    position = np.arange(target, dtype=np.float64) * (source / target)
    low = np.floor(position)
    first = low.astype(np.int64)
    return first, np.minimum(first + 1, source - 1), position - low


def _resized_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """An 8-bit (h, w) mask at (height, width) as transformers.js's RawImage.resize(width, height) (bilinear, as written
    for browsers): the four neighbours' values along the rows, then between them, rounded half up; the same mask when
    its size is already that (a band of rows at a time)."""
    if mask.shape == (height, width):
        return mask
    columns, right, across = _corner_taps(mask.shape[1], width)
    rows, below, down = _corner_taps(mask.shape[0], height)
    source = mask.astype(np.float64)
    wide = source[:, columns] * (1 - across) + source[:, right] * across
    out = np.empty((height, width), dtype=np.uint8)
    band = max(1, (1 << 22) // max(1, width))
    for start in range(0, height, band):
        part = slice(start, start + band)
        weight = down[part, None]
        top, bottom = wide[rows[part]], wide[below[part]]
        top *= 1 - weight  # in place, in transformers.js's order: top * (1 - dy) + bottom * dy, then Math.round
        bottom *= weight
        top += bottom
        top += 0.5
        out[part] = np.floor(top, out=top)
    return out


def _matting_session(session: Session) -> Session:
    """The model's session, its one input fed as pixel_values where the graph names it otherwise (RMBG-1.4's "input"),
    as transformers.js feeds such a model."""
    names = list(session.inputs)
    if "pixel_values" in names or len(names) != 1 or session.inputs[names[0]].dtype not in _FLOAT_DTYPES:
        return session
    return Session(session.ort, inputs={"pixel_values": session.input_name(names[0])},
                   outputs={name: session.output_name(name) for name in session.outputs}, fed_by="image processor")


class _Cutout(NamedTuple):
    """An image's processed pixels, and its RGB pixels as opened (what the alpha is put on)."""

    pixels: np.ndarray
    rgb: np.ndarray


class _BackgroundRemoval(_ImageTask):
    """background-removal, as transformers.js's BackgroundRemovalPipeline (RMBG, BiRefNet: one foreground map per
    image): each image as an RGBA PIL image of its size, its RGB as opened, the map as its alpha."""

    name = "background-removal"
    output = ""  # the graph's first output, as transformers.js reads it
    axes = "(batch, channels, height, width)"

    def __init__(self, ctx: _Context) -> None:
        ctx.sessions = {**ctx.sessions, "model": _matting_session(ctx.session())}
        super().__init__(ctx)
        channels = self.session.outputs[self.output_name].shape[1:2]
        if channels and _is_int(channels[0]) and channels[0] != 1:
            raise MetadataValidationError(
                f"background-removal reads one foreground map per image; the output {self.output_name!r} has shape "
                f"{list(self.session.outputs[self.output_name].shape)}: {channels[0]} maps; was it exported for another task?"
            )

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> list[_Cutout]:
        cutouts = []
        for item in items:
            image = load_image(item)
            rgb = _array_to_pil(_array_to_rgb(image))[0] if isinstance(image, np.ndarray) else image
            cutouts.append(_Cutout(self.processor.process(image), np.asarray(rgb)))
        return cutouts

    def forward(self, batch: list[_Cutout], options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        return self.rows([cutout.pixels for cutout in batch], [self.output_name])

    def postprocess(self, batch: list[_Cutout], outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        Image = _pil()
        results = []
        for cutout, (matte,) in zip(batch, outputs):
            if matte.shape[0] != 1:
                raise MetadataValidationError(f"background-removal reads one foreground map per image; the model gave "
                                              f"{matte.shape[0]} (output {self.output_name!r}, {list(matte.shape)} per image)")
            alpha = _resized_mask(_matte_alpha(matte[0]), *cutout.rgb.shape[:2])
            results.append(Image.fromarray(np.dstack([cutout.rgb, alpha])))
        return results

    def cli(self, values: Sequence[str], options: Mapping[str, Any], output: str | None = None) -> Iterator[str]:
        """Each input without its background written next to it or in --output (photo-nobg.png); as JSON, where, its
        size and its share of foreground (the mean alpha, 0 to 1)."""
        for value, image in zip(values, self(list(values), **options)):
            summary = {"input": value, "image": _written(value, "nobg", image, output), "size": [image.width, image.height],
                       "foreground": float(np.asarray(image)[..., 3].mean() / 255)}
            yield json.dumps(summary, indent=2, ensure_ascii=False) + "\n"


# --- Image to text ------------------------------------------------------------------------------------
# transformers 4.57's ImageToTextPipeline over a VisionEncoderDecoderModel (a ViT-family encoder; a GPT-2, BERT,
# RoBERTa or TrOCR decoder) in one file (_EncoderDecoder): each image processed as the image tasks process it, the
# encoder run once per image, tokens generated from the decoder start token. transformers 5.25 turns "image-to-text"
# into its image-text-to-text pipeline, which cannot run these models (its processors give no decoder_input_ids), so
# "image-text-to-text" names this room too, with 4.57's output.

# transformers 4.57's ImageToTextPipeline._default_generation_config
_IMAGE_TO_TEXT_DEFAULTS: Mapping[str, Any] = {"max_new_tokens": 256}


def _generation_kwargs(name: str, value: Any) -> dict[str, Any]:
    """generate_kwargs: a dict of generate() options, each checked as the option of its name."""
    checks = {o.name: o.check for o in _GENERATION_OPTIONS}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{name} must be a dict of generate() options, got {value!r}")
    unknown = sorted(repr(k) for k in value if k not in checks)
    if unknown:
        raise InvalidInputError(f"{name} {', '.join(unknown)}: not generate() options this runtime applies; it takes "
                                f"{', '.join(checks)}")
    return {k: None if v is None else checks[k](f"{name}[{k!r}]", v) for k, v in value.items()}


class _Captions(NamedTuple):
    """Images made ready: each one's pixels, and the call's generation config."""

    pixels: list[np.ndarray]
    config: _GenerationConfig


class _ImageToText(_Generating):
    """image-to-text (and image-text-to-text), as transformers 4.57's ImageToTextPipeline: the generate() options by
    name or in generate_kwargs (not both for one option), over the model's generation config and the pipeline's
    max_new_tokens=256. An image gives num_return_sequences records ``{"generated_text": ...}`` (the decoder start
    token and the new ones decoded without special tokens, cleaned up as the tokenizer config says, as 4.57 decodes);
    a list of images gives a list of those."""

    name = "image-to-text"
    processors = ("image_processor", "tokenizer")
    example = "image"
    incremental = True
    options = (_Option("generate_kwargs", _generation_kwargs),
               *(option._replace(default=None) for option in _GENERATION_OPTIONS))

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.processor = _image_processor(ctx)
        self.tokenizer = _text_tokenizer(ctx, self.name)
        self.model = _EncoderDecoderModel(ctx, self.name)
        self.pixel_dtype = _check_ports(self.model.encoder, (_Reads("pixel_values", _FLOAT_DTYPES),),
                                        what=f"the encoder of {self.name}")["pixel_values"]
        generation_config = ctx.metadata.get(KEY_GENERATION_CONFIG)
        model = _model_generation_defaults(generation_config, ctx.config)
        _, params = _task_params(ctx.config, self.name)
        self.model_generation = _pipeline_generation(model, params, self.tokenizer.token_id("pad_token"),
                                                     _IMAGE_TO_TEXT_DEFAULTS)
        self.task_defaults = {}
        start = _decoder_start(generation_config, ctx.config)
        if start is None:
            raise MetadataValidationError("the model names no decoder_start_token_id or bos_token_id to start decoding "
                                          "from; re-embed its config.json and generation_config.json")
        self.start = start
        decoder = ctx.config.get("decoder")  # the decoder's own config: its learned positions end there
        self.positions = _config_int(decoder, "max_position_embeddings", "n_positions") if isinstance(decoder, dict) else None
        tokenizer_config = ctx.metadata.get(KEY_TOKENIZER_CONFIG) or {}
        self.clean_up = bool(_field(f"{KEY_TOKENIZER_CONFIG}.clean_up_tokenization_spaces",
                                    tokenizer_config.get("clean_up_tokenization_spaces"), (bool,), False))

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> _Captions:
        """Each image opened and processed; the call's generation config from its options and generate_kwargs."""
        extra = options["generate_kwargs"] or {}
        both = sorted(k for k, v in extra.items() if v is not None and options[k] is not None)
        if both:
            raise InvalidInputError(f"{', '.join(both)} given both as an option and in generate_kwargs; pass it once")
        config = self.generation({**options, **{k: v for k, v in extra.items() if v is not None}})
        return _Captions([self.processor.process(load_image(item)) for item in items], config)

    def forward(self, batch: _Captions, options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        """The new tokens of num_return_sequences sequences per image; images of one pixel shape decode together."""
        pixels = batch.pixels

        def search(group: list[int]) -> _Search:
            feed = {"pixel_values": np.stack([pixels[i] for i in group]).astype(self.pixel_dtype, copy=False)}
            return self.search(_EncoderDecoder(self.model, feed), [[self.start]] * len(group), batch.config,
                               self.tokenizer.pad_token_id)

        return self.generate([p.shape for p in pixels], batch.config, search, mixed=False)

    def postprocess(self, batch: _Captions, outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        return [[{"generated_text": self.decode([self.start, *new], skip_special_tokens=True,
                                                clean_up_tokenization_spaces=self.clean_up)} for new in sequences]
                for sequences in outputs]


# --- Document question answering ----------------------------------------------------------------------
# transformers 5.25's DocumentQuestionAnsweringPipeline over Donut (a VisionEncoderDecoderModel: DonutSwin encoder,
# MBart decoder; OCR-free) in one file: the image processed by Donut's image processor, the decoder started from the
# task prompt, the answer read from the decoded sequence as the pipeline reads it. LayoutLM (v1) picks the answer among
# the caller's word_boxes (extractive, with the question-answering room's span search); reading words from the image
# (pytesseract OCR) and LayoutLMv2/v3 (image features) are not supported.

_DOCVQA_PROMPT = "<s_docvqa><s_question>{}</s_question><s_answer>"
_DOCVQA_TAGS = ("<s_docvqa>", "<s_question>", "</s_question>", "<s_answer>")
# transformers 5.25's DocumentQuestionAnsweringPipeline._default_generation_config
_DOCVQA_DEFAULTS: Mapping[str, Any] = {"max_new_tokens": 256}


def _donut_answer(sequence: str, drop: Sequence[str]) -> str | None:
    """The answer in a decoded Donut sequence, as the pipeline finds it: the eos and pad tokens (drop) removed, then
    the first tag (the task's), then the text from <s_answer> to the last </s_answer>, stripped; None without one."""
    for token in drop:
        sequence = sequence.replace(token, "")
    sequence = re.sub(r"<.*?>", "", sequence, count=1).strip()
    found = re.search(r"<s_answer>(.*)</s_answer>", sequence)
    return None if found is None else found.group(1).strip()


class _Questions(NamedTuple):
    """Documents made ready: each one's pixels and prompt token ids, and the call's generation config."""

    pixels: list[np.ndarray]
    prompts: list[list[int]]
    config: _GenerationConfig


class _DocumentQuestionAnswering(_Generating):
    """document-question-answering with Donut, as transformers 5.25's DocumentQuestionAnsweringPipeline:
    ``runtime(image, question)`` (or ``image=``/``question=``, or a list of ``{"image": ..., "question": ...}``) gives
    ``[{"answer": ...}]`` (None where the model wrote no </s_answer>); a list gives a list of those. The decoder starts
    from the prompt "<s_docvqa><s_question>{question}</s_question><s_answer>" tokenized without special tokens; the
    pipeline's max_new_tokens=256 unless the model sets max_length; generate()'s options as the other generating
    tasks take them, but top_k: as in the pipeline, the number of answers (taken; Donut gives one)."""

    name = "document-question-answering"
    processors = ("image_processor", "tokenizer")
    example = "image, question"
    incremental = True
    # top_k is the pipeline's number of answers, not sampling's (the pipeline's _non_generation_params)
    options = (_Option("top_k", _integer(1), 1),
               *(option._replace(default=None) for option in _GENERATION_OPTIONS if option.name != "top_k"))

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        encoder = ctx.config.get("encoder")
        encoder_type = encoder.get("model_type") if isinstance(encoder, dict) else None
        if encoder_type != "donut-swin":
            kind = str(ctx.config.get("model_type") or "this model")
            raise TaskDetectionError(
                f"document-question-answering runs Donut (a vision-encoder-decoder with a donut-swin encoder), not "
                f"{kind if encoder_type is None else f'{kind} with a {encoder_type} encoder'}: LayoutLM-style models "
                "pick the answer among OCR words: LayoutLM (v1) runs with the caller's word_boxes, while LayoutLMv2/v3 "
                "need image features (and pytesseract OCR without word_boxes) and are not supported by this runtime")
        self.processor = _image_processor(ctx)
        self.tokenizer = _text_tokenizer(ctx, self.name).with_truncation("longest_first", window=_VERY_LARGE_MAX_LENGTH)
        missing = [tag for tag in _DOCVQA_TAGS if self.tokenizer.backend.token_to_id(tag) is None]
        if missing:
            raise TaskDetectionError(f"this Donut model was not trained for document question answering: its tokenizer "
                                     f"has no {', '.join(missing)} (the DocVQA prompt's tokens); use a Donut checkpoint "
                                     "fine-tuned on DocVQA")
        self.model = _EncoderDecoderModel(ctx, self.name)
        self.pixel_dtype = _check_ports(self.model.encoder, (_Reads("pixel_values", _FLOAT_DTYPES),),
                                        what=f"the encoder of {self.name}")["pixel_values"]
        self.model_generation = _model_generation_defaults(ctx.metadata.get(KEY_GENERATION_CONFIG), ctx.config)
        pad = self.tokenizer.token_id("pad_token")
        self.task_defaults = {**_DOCVQA_DEFAULTS, **({} if pad is None else {"pad_token_id": pad})}
        decoder = ctx.config.get("decoder")
        self.positions = _config_int(decoder, "max_position_embeddings") if isinstance(decoder, dict) else None
        self.drop = [t for t in (_token_content(self.tokenizer.config.get(k)) for k in ("eos_token", "pad_token")) if t]

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        """(image, question) pairs: runtime(image, question), image=/question= by name, or {"image", "question"}
        dicts (one, or a list)."""
        if "word_boxes" in kwargs:
            raise InvalidInputError("word_boxes are for LayoutLM models; Donut reads the image itself: pass "
                                    "runtime(image, question)")
        given = list(args)
        for position, key in enumerate(("image", "question")):
            if key in kwargs and len(given) == position:
                given.append(kwargs.pop(key))
        items: list[Any]
        if len(given) == 2:
            items, single = [{"image": given[0], "question": given[1]}], True
        elif len(given) == 1 and isinstance(given[0], (dict, list)):
            single = isinstance(given[0], dict)
            items = [given[0]] if single else list(given[0])
        else:
            raise InvalidInputError(f"{self.name} takes runtime(image, question) or a list of {{'image': ..., 'question': "
                                    "...}} dicts")
        for position, item in enumerate(items):
            if not isinstance(item, dict) or "image" not in item or not isinstance(item.get("question"), str):
                raise InvalidInputError(f"item {position} is {item!r}; each needs an image and a question (a string)")
        return items, single

    @classmethod
    def cli_inputs(cls, values: Sequence[str]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if len(values) != 2:
            raise InvalidInputError("document-question-answering takes an image and a question: IMAGE QUESTION")
        return (values[0], values[1]), {}

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> _Questions:
        prompts = [e.ids for e in self.tokenizer.encode([_DOCVQA_PROMPT.format(item["question"]) for item in items],
                                                        add_special_tokens=False)]
        return _Questions([self.processor.process(load_image(item["image"])) for item in items], prompts,
                          self.generation(options))

    def forward(self, batch: _Questions, options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        """The new tokens of each document's answer; documents with prompts of one length and one pixel shape decode
        together (the decoder's prompts are not padded)."""
        pixels, prompts = batch.pixels, batch.prompts

        def search(group: list[int]) -> _Search:
            feed = {"pixel_values": np.stack([pixels[i] for i in group]).astype(self.pixel_dtype, copy=False)}
            return self.search(_EncoderDecoder(self.model, feed), [prompts[i] for i in group], batch.config,
                               self.tokenizer.pad_token_id)

        return self.generate([(len(p), x.shape) for p, x in zip(prompts, pixels)], batch.config, search, mixed=False)

    def postprocess(self, batch: _Questions, outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        return [[{"answer": _donut_answer(self.decode([*prompt, *sequences[0]]), self.drop)}]
                for prompt, sequences in zip(batch.prompts, outputs)]

    @classmethod
    def variant(cls, metadata: Mapping[str, Any]) -> type[_Task]:
        """The pipeline's model types: LayoutLM (v1, with the caller's word_boxes) or Donut; others are refused."""
        config = metadata.get(KEY_MODEL_CONFIG) or {}
        return _LayoutLMQuestionAnswering if config.get("model_type") == "layoutlm" else cls


class _WordAnswerSearch(_AnswerSearch):
    """The answers to one question over the windows of its words, as transformers 5.25's
    DocumentQuestionAnsweringPipeline.postprocess_extractive_qa: the spans of select_starts_ends (top_k of each
    window) read as the words they cover, joined by spaces; windows' answers not merged."""

    inclusive = True

    def __init__(self, words: Sequence[str], cls_id: int | None, options: Mapping[str, Any]) -> None:
        super().__init__("", True, cls_id, {**options, "align_to_words": False})
        self.words = words

    def add(self, window: Any, start: np.ndarray, end: np.ndarray) -> None:
        for s, e, score in self.spans(window, start, end):
            first, last = window.word_ids[int(s)], window.word_ids[int(e)]
            if first is not None and last is not None:
                self.answers.append({"score": float(score), "answer": " ".join(self.words[first:last + 1]),
                                     "start": first, "end": last})

    def best(self) -> list[dict[str, Any]]:
        answers = self.answers + ([{"score": self.min_null_score, "answer": "", "start": 0, "end": 0}]
                                  if self.impossible else [])
        return sorted(answers, key=lambda a: float(a["score"]), reverse=True)[:self.top_k]


class _Pages(NamedTuple):
    """Questions on words tokenized: each item's words and boxes, and its windows (encoding, bbox rows)."""

    words: list[list[str]]
    windows: list[list[tuple[Any, list[list[int]]]]]


class _LayoutLMQuestionAnswering(_Task):
    """document-question-answering with LayoutLM (v1) on the caller's words, as transformers 5.25's
    DocumentQuestionAnsweringPipeline given word_boxes: ``runtime(image, question, word_boxes=[(word, [x0, y0, x1,
    y1]), ...])`` (the image may be None; LayoutLM does not read it) or dicts with "word_boxes"; gives
    ``[{"score", "answer", "start", "end"}]`` (start, end: word indexes), top_k of them. The question's words and the
    document's are tokenized as a pair (is_split_into_words), cut into max_seq_len windows overlapping doc_stride
    tokens; each token's box is its word's, [1000] * 4 for [SEP], zeros for the rest."""

    name = "document-question-answering"
    processors = ("tokenizer",)
    example = "image, question, word_boxes=..."
    options = (
        _Option("top_k", _integer(1), 1),
        _Option("max_seq_len", _integer(1), lambda task, _: task.tokenizer.max_length),
        _Option("doc_stride", _integer(0), lambda task, options: min(options["max_seq_len"] // 2, 256)),
        _Option("max_answer_len", _integer(1), 15),
        _Option("max_question_len", _integer(1), 64),  # accepted as transformers does; the window decides
        _Option("handle_impossible_answer", _flag, False),
    )

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.tokenizer = _text_tokenizer(ctx, self.name)
        if self.tokenizer.padding_side != "right":
            raise ProcessorReconstructionError("document question answering only supports tokenizers whose padding "
                                               f"side is 'right', not {self.tokenizer.padding_side!r}")
        self.session = ctx.session()
        outputs = (_Reads("start_logits", axes="(batch, sequence)"), _Reads("end_logits", axes="(batch, sequence)"))
        self.dtypes = _check_ports(self.session, (*_TOKEN_INPUTS, _Reads("bbox", _INT_DTYPES)), outputs,
                                   what=f"{self.name} with LayoutLM")
        self.cls_id = self.tokenizer.token_id("cls_token")
        self.sep_id = self.tokenizer.token_id("sep_token")
        self.box_limit = _config_int(ctx.config, "max_2d_position_embeddings") or 1024

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        """{"image", "question", "word_boxes"} items: runtime(image, question, word_boxes=...), the same by name, or
        dicts (one, or a list)."""
        given = list(args)
        for position, key in enumerate(("image", "question")):
            if key in kwargs and len(given) == position:
                given.append(kwargs.pop(key))
        word_boxes = kwargs.pop("word_boxes", None)
        items: list[Any]
        if len(given) == 2 and isinstance(given[1], str):
            items, single = [{"image": given[0], "question": given[1], "word_boxes": word_boxes}], True
        elif len(given) == 1 and isinstance(given[0], (dict, list)) and word_boxes is None:
            single = isinstance(given[0], dict)
            items = [given[0]] if single else list(given[0])
        else:
            raise InvalidInputError(f"{self.name} takes runtime(image, question, word_boxes=[(word, [x0, y0, x1, y1]), "
                                    "...]) or a list of {'image': ..., 'question': ..., 'word_boxes': ...} dicts")
        checked = []
        for position, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].split():
                raise InvalidInputError(f"item {position} is {item!r}; each needs a question (a non-empty string)")
            checked.append((item["question"], *self._word_boxes(item)))
        return checked, single

    def _word_boxes(self, item: Mapping[str, Any]) -> tuple[list[str], list[list[int]]]:
        """The item's words and boxes, checked; its image, if any, loaded as the pipeline does (and not used)."""
        word_boxes = item.get("word_boxes")
        if word_boxes is None:
            raise InvalidInputError(
                "LayoutLM answers among the document's words: pass word_boxes=[(word, [x0, y0, x1, y1]), ...] (boxes "
                "normalized to 0-1000); reading them from the image needs OCR (pytesseract, Tesseract), which this "
                "runtime does not run")
        if item.get("image") is not None:
            load_image(item["image"])
        hint = ("word_boxes must be a list of (word, [x0, y0, x1, y1]) pairs, a word a string and a box four integers "
                f"from 0 to {self.box_limit - 1}")
        if not isinstance(word_boxes, (list, tuple)) or not word_boxes:
            raise InvalidInputError(f"{hint}; got {word_boxes!r}")
        words, boxes = [], []
        for pair in word_boxes:
            box = pair[1] if isinstance(pair, (list, tuple)) and len(pair) == 2 else None
            if (box is None or not isinstance(pair[0], str) or not isinstance(box, (list, tuple)) or len(box) != 4
                    or not all(_is_int(v) and 0 <= v < self.box_limit for v in box)):
                raise InvalidInputError(f"{hint}; got {pair!r}")
            words.append(pair[0])
            boxes.append([int(v) for v in box])
        return words, boxes

    @classmethod
    def cli_inputs(cls, values: Sequence[str]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        raise InvalidInputError("document-question-answering with LayoutLM needs word_boxes, which the command line "
                                "does not take; call the runtime from Python")

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> _Pages:
        max_seq_len, doc_stride = options["max_seq_len"], options["doc_stride"]
        tokenizer = self.tokenizer.with_truncation("only_second", window=max_seq_len, stride=doc_stride)
        try:
            encodings = tokenizer.encode([(q.split(), words) for q, words, _ in items], is_pretokenized=True)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{exc}; a question must leave room for the words in max_seq_len ({max_seq_len}) "
                                    "tokens: shorten the question or raise max_seq_len") from None
        windows = []
        for (_, _, boxes), encoding in zip(items, encodings):
            group = []
            for window in (encoding, *encoding.overflowing):
                bbox = [boxes[word] if sequence == 1 else [1000] * 4 if token == self.sep_id else [0] * 4
                        for token, sequence, word in zip(window.ids, window.sequence_ids, window.word_ids)]
                group.append((window, bbox))
            windows.append(group)
        return _Pages([words for _, words, _ in items], windows)

    def forward(self, batch: _Pages, options: Mapping[str, Any]) -> list[list[np.ndarray]]:
        windows = [w for group in batch.windows for w in group]

        def run(chunk: list[int]) -> list[list[np.ndarray]]:
            feed = self.tokenizer.pad([windows[i][0] for i in chunk], self.dtypes, side="right")
            width = feed["input_ids"].shape[1]
            bbox = np.zeros((len(chunk), width, 4), dtype=self.dtypes["bbox"])
            for row, i in enumerate(chunk):
                bbox[row, :len(windows[i][1])] = windows[i][1]
            feed["bbox"] = bbox
            start, end = self.session.run(["start_logits", "end_logits"], feed)
            return [[start[row, :len(windows[i][1])], end[row, :len(windows[i][1])]] for row, i in enumerate(chunk)]

        return _batched([len(w[1]) for w in windows], self.ctx.batch_size, run)

    def postprocess(self, batch: _Pages, outputs: list[list[np.ndarray]], options: Mapping[str, Any]) -> list[Any]:
        rows = iter(outputs)
        results = []
        for words, group in zip(batch.words, batch.windows):
            search = _WordAnswerSearch(words, self.cls_id, options)
            for window, _ in group:
                start, end = (np.asarray(r, dtype=np.float32)[None] for r in next(rows))
                search.add(window, start, end)
            results.append(search.best())
        return results


# --- Audio tasks --------------------------------------------------------------------------------------

def _conv_layers(config: Mapping[str, Any]) -> list[tuple[int, int]] | None:
    """(kernel, stride) of each layer of a wav2vec2-style convolutional feature encoder (conv_kernel, conv_stride
    of the model config); None when the config has none, or an adapter that changes the frame count."""
    kernels, strides = config.get("conv_kernel"), config.get("conv_stride")
    if (config.get("add_adapter") or not isinstance(kernels, list) or not isinstance(strides, list)
            or len(kernels) != len(strides)):
        return None
    if not all(_is_int(v) and v > 0 for v in kernels + strides):
        return None
    return list(zip(kernels, strides))


def _output_frames(layers: Sequence[tuple[int, int]], samples: int) -> int:
    """Frames the feature encoder makes of samples (transformers' _get_feat_extract_output_lengths), 0 if too short."""
    for kernel, stride in layers:
        samples = (samples - kernel) // stride + 1 if samples >= kernel else 0
    return samples


def _min_samples(layers: Sequence[tuple[int, int]]) -> int:
    """The fewest samples the feature encoder makes one frame of (its receptive field)."""
    need = 1
    for kernel, stride in reversed(layers):
        need = (need - 1) * stride + kernel
    return need


class _AudioPiece(NamedTuple):
    """One waveform the model runs on (an input, or one chunk of it) and its features, batch axis of 1."""

    features: dict[str, np.ndarray]
    samples: int
    stride: tuple[int, int, int] | None = None  # (samples, left, right): the ends only there as context


class _AudioTask(_Task):
    """A task on audio: each input read by load_audio and featurized alone, as the pipeline does, then run in
    batches of batch_size. Waveforms of different lengths share a batch only where the feature extractor
    gives an attention mask and the graph takes it, which keeps the padding from changing the result."""

    processors: ClassVar[tuple[str, ...]] = ("feature_extractor",)
    example = "audio"
    incremental = True
    output: ClassVar[str] = "logits"
    axes: ClassVar[str] = ""  # the output's axes
    one_graph: ClassVar[bool] = True  # a single graph fed the features (Whisper's encoder-decoder sets up its own)

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        features = ctx.processors.get("feature_extractor")
        if features is None:
            raise ProcessorReconstructionError(
                "no audio feature extractor is embedded (hf_feature_extractor_config); re-embed from the model folder "
                "with its processor files (preprocessor_config.json or processor_config.json) at the essential or full level"
            )
        self.features: _AudioFeatureExtractor = features
        self.align_to = 1  # samples per output frame (CTC's); the pipeline's _align_to
        if not self.one_graph:
            return
        self.session = ctx.session()
        self.output_name = self.session.output(self.output)
        self.layers = _conv_layers(ctx.config)
        self.main_input = self.features.model_input_names[0]
        ports = (_Reads(self.main_input, _FLOAT_DTYPES), _Reads("attention_mask", _INT_DTYPES, False))
        self.dtypes = _check_ports(self.session, ports, [_Reads(self.output_name, axes=self.axes)], what=self.name)
        self.pad_batches = self.features.returns_attention_mask and "attention_mask" in self.dtypes

    def piece(self, waveform: np.ndarray, stride: tuple[int, int, int] | None = None) -> _AudioPiece:
        return _AudioPiece(self.features([waveform]), len(waveform), stride)

    def rows(self, pieces: Sequence[_AudioPiece]) -> list[np.ndarray]:
        """The task output's row for each piece, in order; run in length-sorted batches of batch_size."""
        lengths = [int(p.features[self.main_input].shape[-1]) for p in pieces]
        return _batched(lengths, self.ctx.batch_size, lambda chunk: list(self._run([pieces[i].features for i in chunk])),
                        mixed=self.pad_batches)

    def _run(self, features: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        values = _pad_stack([f[self.main_input][0] for f in features], self.features.padding_value)
        feed = {self.main_input: values.astype(self.dtypes[self.main_input])}
        if "attention_mask" in self.dtypes:
            if "attention_mask" in features[0]:
                feed["attention_mask"] = _pad_stack([f["attention_mask"][0] for f in features], 0)
            else:  # the graph takes a mask the feature extractor does not give: nothing is padded here
                feed["attention_mask"] = np.ones(values.shape[:2])
            feed["attention_mask"] = feed["attention_mask"].astype(self.dtypes["attention_mask"])
        (out,) = self.session.run([self.output_name], feed)
        return np.asarray(out)


# --- Speech recognition -------------------------------------------------------------------------------


def _chunks(audio: np.ndarray, chunk_len: int, left: int, right: int) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    """Windows of chunk_len samples overlapping by left + right, each with its stride (samples, left, right):
    the ends that are only context (none at the start and end of the audio); as the pipeline's chunk_iter."""
    windows = []
    for start in range(0, len(audio), chunk_len - left - right):
        chunk = audio[start: start + chunk_len]
        first = 0 if start == 0 else left
        last = start + chunk_len >= len(audio)
        if len(chunk) > first:
            windows.append((chunk, (len(chunk), first, 0 if last else right)))
        if last:
            break
    return windows


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise InvalidInputError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def _chunk_length(name: str, value: Any) -> float:
    return _seconds(value, name)


def _stride_length(name: str, value: Any) -> tuple[float, float]:
    strides = [value, value] if _is_number(value) else value
    if not isinstance(strides, (list, tuple)) or len(strides) != 2:
        raise InvalidInputError(f"{name} must be a number of seconds or [left, right], got {value!r}")
    return _seconds(strides[0], name), _seconds(strides[1], name)


def _ctc_timestamps(name: str, value: Any) -> str:
    if value not in ("char", "word"):
        raise InvalidInputError(f"{name}={value!r}: CTC models give character or word timestamps; pass {name}='char' or 'word'")
    return str(value)


class _Speech(NamedTuple):
    """Speech inputs prepared: each input's pieces (its chunks, or the whole), and the other keys of a dict input."""

    pieces: list[list[_AudioPiece]]
    extras: list[dict[str, Any]]


class _SpeechRecognition(_AudioTask):
    """automatic-speech-recognition, as transformers.AutomaticSpeechRecognitionPipeline: what CTC models
    (_CTCRecognition) and Whisper (_WhisperRecognition), its two kinds of models here, share: long audio in
    overlapping chunk_length_s windows, dict inputs with a stride."""

    name = "automatic-speech-recognition"
    processors = ("feature_extractor", "tokenizer")
    endpoints: ClassVar[tuple[str, ...]] = ("/v1/audio/transcriptions",)
    options: ClassVar[tuple[_Option, ...]] = (
        _Option("chunk_length_s", _chunk_length, 0.0),  # 0: the whole input at once
        _Option("stride_length_s", _stride_length),  # default: chunk_length_s / 6 on each side
    )

    @classmethod
    def variant(cls, metadata: Mapping[str, Any]) -> type[_Task]:
        """The pipeline's model types: Whisper, CTC models; other encoder-decoders are refused."""
        config = metadata.get(KEY_MODEL_CONFIG) or {}
        if config.get("model_type") == "whisper":
            return _WhisperRecognition
        if config.get("is_encoder_decoder") or KEY_GRAPH_LAYOUT in metadata:
            raise TaskDetectionError(
                "automatic-speech-recognition with a sequence-to-sequence model other than Whisper "
                f"({config.get('model_type') or 'encoder-decoder'}) is not supported by this runtime yet; CTC "
                "models (wav2vec2, HuBERT, WavLM, Data2VecAudio *ForCTC) and Whisper are")
        return _CTCRecognition

    def _chunking(self, options: Mapping[str, Any]) -> tuple[int, int, int]:
        """(chunk_len, stride_left, stride_right) in samples; chunk_len 0: no chunking."""
        chunk = options["chunk_length_s"]
        if not chunk:
            return 0, 0, 0
        strides = options["stride_length_s"] or (chunk / 6, chunk / 6)
        sizes = [round(seconds * self.features.sampling_rate / self.align_to) * self.align_to
                 for seconds in (chunk, *strides)]
        if sizes[0] <= sizes[1] + sizes[2]:
            raise InvalidInputError(
                f"chunk_length_s ({chunk}) must be longer than the left and right strides together "
                f"({strides[0]} + {strides[1]} s)"
            )
        return sizes[0], sizes[1], sizes[2]

    def _pieces(self, item: Any, chunking: tuple[int, int, int]) -> tuple[list[_AudioPiece], dict[str, Any]]:
        """The pieces of one input (its chunks, or the whole) and the extra keys of a dict input, which the pipeline
        returns beside the text."""
        rate = self.features.sampling_rate
        stride: tuple[int, int, int] | None = None
        extra: dict[str, Any] = {}
        if isinstance(item, dict):
            samples, item_rate, extra = _audio_dict(item)
            asked = extra.pop("stride", None)
            audio = load_audio({"raw": samples, "sampling_rate": item_rate}, rate)
            if asked is not None:
                if not isinstance(asked, (list, tuple)) or len(asked) != 2 or not all(
                        _is_int(s) and s >= 0 for s in asked):
                    raise InvalidInputError(f"stride must be (left, right) numbers of samples, got {asked!r}")
                if asked[0] + asked[1] > len(audio):
                    raise InvalidInputError(f"stride {tuple(asked)} is larger than the audio ({len(audio)} samples)")
                ratio = rate / _sampling_rate(item_rate)
                stride = (len(audio), round(asked[0] * ratio), round(asked[1] * ratio))
        else:
            audio = load_audio(item, rate)
        chunk_len, left, right = chunking
        if chunk_len:
            return [self.piece(chunk, chunk_stride) for chunk, chunk_stride in _chunks(audio, chunk_len, left, right)], extra
        return [self.piece(audio, stride)], extra

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> _Speech:
        chunking = self._chunking(options)
        prepared = [self._pieces(item, chunking) for item in items]
        return _Speech([pieces for pieces, _ in prepared], [extra for _, extra in prepared])

class _CTCRecognition(_SpeechRecognition):
    """Speech recognition with CTC models (wav2vec2, HuBERT, WavLM, Data2VecAudio *ForCTC), as the pipeline runs them:
    greedy CTC decoding of each frame's likeliest token, char or word timestamps."""

    axes = "(batch, frames, vocabulary)"  # CTC logits
    options = (*_SpeechRecognition.options, _Option("return_timestamps", _ctc_timestamps))

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        decoder = ctx.processors.get("tokenizer")
        if not isinstance(decoder, CTCDecoder):
            raise ProcessorReconstructionError(
                "no CTC vocabulary embedded, so this model's output cannot be decoded to text; re-embed with "
                "--include-vocab (python -m authoring embed model.onnx <model> --include-vocab)"
            )
        self.decoder = decoder
        # samples per logit frame, as the pipeline's _align_to (the config's inputs_to_logits_ratio, else 1)
        self.align_to = 1
        for _, stride in self.layers or ():
            self.align_to *= stride
        # a padded batch is cut back to each waveform's own frames, which needs the encoder's shape
        self.pad_batches = self.pad_batches and self.layers is not None

    def forward(self, batch: _Speech, options: Mapping[str, Any]) -> list[np.ndarray]:
        """Each piece's likeliest token per frame, cut to the frames outside its stride; a waveform too short
        for one frame has none (the model is not run on it)."""
        pieces = [piece for group in batch.pieces for piece in group]
        frames = [0 if not p.samples else None if self.layers is None else _output_frames(self.layers, p.samples)
                  for p in pieces]
        run = [i for i, n in enumerate(frames) if n != 0]
        ids = [np.zeros(0, dtype=np.int64) for _ in pieces]
        for i, logits in zip(run, self.rows([pieces[i] for i in run])):
            ids[i] = logits[: frames[i]].argmax(axis=-1)
        for i, piece in enumerate(pieces):
            if piece.stride is not None and piece.samples:  # the pipeline's rescale_stride, from samples to frames
                total, left, right = piece.stride
                frames_n = round(total * (1 / self.align_to))
                left, right = round(left / total * frames_n), round(right / total * frames_n)
                ids[i] = ids[i][left: frames_n - right]
        return ids

    def postprocess(self, batch: _Speech, outputs: list[np.ndarray], options: Mapping[str, Any]) -> list[Any]:
        """The text of each input's pieces decoded together, with timestamped chunks when asked."""
        ids = iter(outputs)
        timestamps = options["return_timestamps"]
        results = []
        for pieces, extra in zip(batch.pieces, batch.extras):
            own = [next(ids) for _ in pieces]
            tokens = np.concatenate(own).tolist() if own else []
            result: dict[str, Any] = {"text": self.decoder.decode(tokens)}
            if timestamps is not None:
                offsets = self.decoder.char_offsets(tokens) if timestamps == "char" else self.decoder.word_offsets(tokens)
                rate, align = self.features.sampling_rate, self.align_to
                result["chunks"] = [{"text": o[timestamps], "timestamp": (o["start_offset"] * align / rate,
                                                                          o["end_offset"] * align / rate)}
                                    for o in offsets]
            # as the pipeline: a dict input's other keys come back, one value per piece
            result.update({key: [value] * len(own) for key, value in extra.items()})
            results.append(result)
        return results


# --- Whisper ------------------------------------------------------------------------------------------
# transformers 5's AutomaticSpeechRecognitionPipeline for Whisper ("seq2seq_whisper"): WhisperForConditionalGeneration
# .generate's short form (one window of 2 * max_source_positions frames, decoded again from its last timestamp while it
# ends inside a segment) over the encoder-decoder step (_EncoderDecoder), then WhisperTokenizer._decode_asr, which joins
# the chunks of long audio and reads segment timestamps.

# transformers' whisper LANGUAGES (code: name), and the other names its TO_LANGUAGE_CODE knows
_WHISPER_LANGUAGES = dict(pair.replace("_", " ").split(":") for pair in (
    "en:english zh:chinese de:german es:spanish ru:russian ko:korean fr:french ja:japanese pt:portuguese tr:turkish "
    "pl:polish ca:catalan nl:dutch ar:arabic sv:swedish it:italian id:indonesian hi:hindi fi:finnish vi:vietnamese "
    "he:hebrew uk:ukrainian el:greek ms:malay cs:czech ro:romanian da:danish hu:hungarian ta:tamil no:norwegian th:thai "
    "ur:urdu hr:croatian bg:bulgarian lt:lithuanian la:latin mi:maori ml:malayalam cy:welsh sk:slovak te:telugu "
    "fa:persian lv:latvian bn:bengali sr:serbian az:azerbaijani sl:slovenian kn:kannada et:estonian mk:macedonian "
    "br:breton eu:basque is:icelandic hy:armenian ne:nepali mn:mongolian bs:bosnian kk:kazakh sq:albanian sw:swahili "
    "gl:galician mr:marathi pa:punjabi si:sinhala km:khmer sn:shona yo:yoruba so:somali af:afrikaans oc:occitan "
    "ka:georgian be:belarusian tg:tajik sd:sindhi gu:gujarati am:amharic yi:yiddish lo:lao uz:uzbek fo:faroese "
    "ht:haitian_creole ps:pashto tk:turkmen nn:nynorsk mt:maltese sa:sanskrit lb:luxembourgish my:myanmar bo:tibetan "
    "tl:tagalog mg:malagasy as:assamese tt:tatar haw:hawaiian ln:lingala ha:hausa ba:bashkir jw:javanese su:sundanese "
    "yue:cantonese").split())
_WHISPER_LANGUAGE_CODES = {**{name: code for code, name in _WHISPER_LANGUAGES.items()}, "burmese": "my",
                           "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb", "pushto": "ps",
                           "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si", "castilian": "es",
                           "mandarin": "zh"}
_WHISPER_TASKS = ("translate", "transcribe")
# the pipeline's _default_generation_config (beam search, as openai's whisper)
_WHISPER_DEFAULTS: Mapping[str, Any] = {"max_new_tokens": 256, "num_beams": 5}
# keys of a Whisper generation_config.json read here rather than as generate()'s common options
_WHISPER_KEYS = frozenset({
    "lang_to_id", "task_to_id", "no_timestamps_token_id", "is_multilingual", "forced_decoder_ids", "suppress_tokens",
    "begin_suppress_tokens", "max_initial_timestamp_index", "return_timestamps", "language", "task", "alignment_heads",
    "prev_sot_token_id", "decoder_start_token_id",
})
_WHISPER_INPUT_STRIDE = 2  # the encoder's two convolutions, strides 1 and 2: frames per encoder position
_TIMESTAMP_TEXT = re.compile(r"<\|(\d+\.\d+)\|>")


def _whisper_timestamps(name: str, value: Any) -> bool:
    if value == "char":
        raise InvalidInputError("Whisper cannot return char timestamps, only segment ones; pass return_timestamps=True")
    if value == "word":
        raise InvalidInputError("word timestamps (cross-attention alignment) are not supported by this runtime; pass "
                                "return_timestamps=True for segment timestamps")
    return _boolean(name, value)


def _generate_kwargs(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidInputError(f"{name} must be a dict of generate() options, got {value!r}")
    return dict(value)


_WHISPER_GENERATE_OPTIONS = (
    _Option("language", _string),
    _Option("task", _string),
    _Option("max_new_tokens", _integer(1)),
    _Option("num_beams", _integer(1)),
)


class _WhisperTimestamps:
    """WhisperTimeStampLogitsProcessor: timestamps come in pairs (except right before eos) and never decrease; the first
    new token is a timestamp (at most max_initial_timestamp_index); where timestamps together are likelier than any
    text token, a timestamp it is. begin: the decoder prompt's length."""

    def __init__(self, no_timestamps: int, eos: int, begin: int, max_initial: int | None) -> None:
        self.no_timestamps, self.first, self.eos = no_timestamps, no_timestamps + 1, eos
        self.begin, self.max_initial = begin, max_initial

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        first = self.first
        scores[:, self.no_timestamps] = -np.inf
        for row, seq in enumerate(ids[:, self.begin:].tolist()):
            last = len(seq) >= 1 and seq[-1] >= first
            penultimate = len(seq) < 2 or seq[-2] >= first
            if last:
                if penultimate:
                    scores[row, first:] = -np.inf
                else:
                    scores[row, : self.eos] = -np.inf
            stamps = [t for t in seq if t >= first]
            lowest = first if not stamps else stamps[-1] if last and not penultimate else stamps[-1] + 1
            scores[row, first:lowest] = -np.inf
        if ids.shape[1] == self.begin:
            scores[:, :first] = -np.inf
            if self.max_initial is not None:
                scores[:, first + self.max_initial + 1:] = -np.inf
        logprobs = _log_softmax(scores.astype(np.float32, copy=False))
        with np.errstate(divide="ignore", invalid="ignore"):
            top = logprobs[:, first:].max(axis=-1, keepdims=True)
            stamp = (np.log(np.exp(logprobs[:, first:] - top).sum(axis=-1)) + top[:, 0])
        stamp = np.where(np.isfinite(top[:, 0]), stamp, -np.inf)
        scores[stamp > logprobs[:, :first].max(axis=-1), :first] = -np.inf
        return scores


class _WhisperSettings:
    """What WhisperForConditionalGeneration.generate reads from the generation config (the model config's keys when the
    model has no generation_config.json): the start token, languages and tasks, timestamps, suppressed tokens."""

    def __init__(self, generation_config: Mapping[str, Any] | None, config: Mapping[str, Any]) -> None:
        source = generation_config if generation_config is not None else config
        start = _decoder_start(generation_config, config)
        if start is None:
            raise MetadataValidationError("the Whisper model names no decoder_start_token_id; re-embed its "
                                          "generation_config.json")
        self.start = start
        where = KEY_GENERATION_CONFIG if generation_config is not None else KEY_MODEL_CONFIG
        self.lang_to_id: dict[str, int] | None = _field(f"{where}.lang_to_id", source.get("lang_to_id"), (dict,), each=(int,),
                                                        low=0)
        self.task_to_id: dict[str, int] | None = _field(f"{where}.task_to_id", source.get("task_to_id"), (dict,), each=(int,),
                                                        low=0)
        self.no_timestamps: int | None = _field(f"{where}.no_timestamps_token_id", source.get("no_timestamps_token_id"),
                                                (int,), low=0)
        multilingual = source.get("is_multilingual")
        self.is_multilingual = None if multilingual is None else bool(multilingual)
        forced = source.get("forced_decoder_ids")
        if forced is None:
            forced = config.get("forced_decoder_ids")
        if forced is not None and not (isinstance(forced, list) and all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and (p[1] is None or isinstance(p[1], int))
                for p in forced)):
            raise MetadataValidationError("the embedded forced_decoder_ids must be [position, token] pairs; re-embed a "
                                          "fixed generation_config.json")
        self.forced: list[list[Any]] | None = forced
        self.suppress: list[int] | None = _field(f"{where}.suppress_tokens", source.get("suppress_tokens"), (list,),
                                                 each=(int,), low=0)
        self.begin_suppress: list[int] | None = _field(f"{where}.begin_suppress_tokens", source.get("begin_suppress_tokens"),
                                                       (list,), each=(int,), low=0)
        self.max_initial: int | None = _field(f"{where}.max_initial_timestamp_index", source.get("max_initial_timestamp_index"),
                                              (int,), low=0)
        self.return_timestamps = bool(source.get("return_timestamps"))
        self.language = source.get("language") if isinstance(source.get("language"), str) else None
        self.task = source.get("task") if isinstance(source.get("task"), str) else None
        common = {k: v for k, v in (generation_config or {}).items() if k not in _WHISPER_KEYS}
        self.generation = _model_generation_defaults(common if generation_config is not None else None,
                                                     {k: v for k, v in config.items() if k not in _WHISPER_KEYS})

    def check(self, language: str | None, task: str | None) -> None:
        """generate()'s _set_language_and_task: what an English-only model or an old generation config refuses."""
        if self.is_multilingual is False and (language is not None or task is not None):
            raise InvalidInputError("this Whisper model is English-only: it takes no language or task; leave them out")
        if language is not None and self.lang_to_id is None:
            raise InvalidInputError("the embedded generation config has no lang_to_id, so language cannot be set; "
                                    "re-embed the model's current generation_config.json")
        if task is not None and self.task_to_id is None:
            raise InvalidInputError("the embedded generation config has no task_to_id, so task cannot be set; "
                                    "re-embed the model's current generation_config.json")
        if task is not None and task not in _WHISPER_TASKS:
            raise InvalidInputError(f"task must be 'transcribe' or 'translate', got {task!r}")

    def language_id(self, language: str) -> int:
        """The token of a language given as a token (<|fr|>), a code (fr) or a name (french), as generate() reads it."""
        lang_to_id = self.lang_to_id or {}
        asked = language.lower()
        if asked in lang_to_id:
            token = asked
        elif asked in _WHISPER_LANGUAGE_CODES:
            token = f"<|{_WHISPER_LANGUAGE_CODES[asked]}|>"
        elif asked in _WHISPER_LANGUAGES:
            token = f"<|{asked}|>"
        else:
            known = sorted(_WHISPER_LANGUAGES) if len(asked) == 2 else sorted(_WHISPER_LANGUAGE_CODES)
            raise InvalidInputError(f"unsupported language {language!r}; pass one of {', '.join(known)}")
        if token not in lang_to_id:
            raise InvalidInputError(f"{token} is not one of this model's languages (its generation config's lang_to_id)")
        return lang_to_id[token]

    def prompt(self, language: str | None, task: str | None, timestamps: bool, detect: Callable[[], int]) -> list[int]:
        """The decoder prompt (generate()'s _retrieve_init_tokens for one input): start of transcript, the language
        (given, from forced_decoder_ids, or detected), the task, and no-timestamps unless timestamps are asked."""
        init: list[Any] = [self.start]
        if task is None and language is None and self.forced:
            forced = list(self.forced)
            if forced[0][0] == 1:
                position = 1
                while forced and forced[0][0] == position:
                    init.append(forced[0][1])
                    forced = forced[1:]
                    position += 1
                if forced:
                    raise MetadataValidationError(f"the embedded forced_decoder_ids {self.forced} do not follow Whisper's "
                                                  "prompt pattern; re-embed a fixed generation_config.json")
        undefined = len(init) <= 1 or init[1] is None
        lang_id = None
        if language is not None:
            lang_id = self.language_id(language)
        elif self.lang_to_id is not None and undefined:
            lang_id = detect()
        if lang_id is not None:
            if len(init) > 1:
                init[1] = lang_id
            else:
                init.append(lang_id)
        if task is not None and self.task_to_id is not None:
            if task not in self.task_to_id:
                raise InvalidInputError(f"task {task!r} is not in this model's task_to_id")
            init.append(self.task_to_id[task])
        elif language is not None and self.task_to_id is not None and not any(
                t in init for t in self.task_to_id.values()):
            init.append(self.task_to_id["transcribe"])
        if not timestamps and self.no_timestamps is not None and init[-1] != self.no_timestamps:
            init.append(self.no_timestamps)
        elif timestamps and init[-1] == self.no_timestamps:
            init = init[:-1]
        return [t for t in init if t is not None]


def _whisper_segments(tokens: list[int], first: int, frames: int) -> tuple[list[int], int]:
    """generate()'s _retrieve_segment for the tokens of one window: the tokens its segments keep (all, or up to the last
    pair of timestamps when it ends inside a segment) and how many frames decoding moves on."""
    stamps = [t >= first for t in tokens]
    single_ending = stamps[-2:] == [False, True]
    ends = [i + 1 for i in range(len(stamps) - 1) if stamps[i] and stamps[i + 1]]
    if not ends:
        return tokens, frames
    if single_ending:
        return tokens, frames
    last = ends[-1] + 1
    return tokens[:last], (tokens[last - 2] - first) * _WHISPER_INPUT_STRIDE


def _longest_common_sequence(sequences: Sequence[Sequence[int]]) -> list[int]:
    """transformers' whisper _find_longest_common_sequence: token sequences of overlapping chunks joined at the
    alignment with the most matching tokens, each side trusted for its half of the overlap."""
    left = list(sequences[0])
    total: list[int] = []
    for right in sequences[1:]:
        best, indices = 0.0, (len(left), len(left), 0, 0)
        left_length, right_length = len(left), len(right)
        for i in range(1, left_length + right_length):
            left_start, left_stop = max(0, left_length - i), min(left_length, left_length + right_length - i)
            right_start, right_stop = max(0, i - left_length), min(right_length, i)
            matches = int(np.sum(np.array(left[left_start:left_stop]) == np.array(right[right_start:right_stop])))
            matching = matches / i + i / 10000.0
            if matches > 1 and matching > best:
                best, indices = matching, (left_start, left_stop, right_start, right_stop)
        left_start, left_stop, right_start, right_stop = indices
        total.extend(left[: (left_stop + left_start) // 2])
        left = list(right[(right_stop + right_start) // 2:])
    total.extend(left)
    return total


class _WhisperOutput(NamedTuple):
    """The tokens generate() gave for one piece of audio, and its stride in seconds (chunk, left, right) when chunked."""

    tokens: list[int]
    stride: tuple[float, float, float] | None


class _WhisperDecoder:
    """WhisperTokenizer._decode_asr for segment timestamps: the text of the pieces of one input (chunks joined where
    they overlap), and its chunks with (start, end) seconds when timestamps are asked."""

    def __init__(self, tokenizer: TextTokenizer, time_precision: float) -> None:
        self.tokenizer, self.time_precision = tokenizer, time_precision
        no_timestamps = tokenizer.backend.token_to_id("<|notimestamps|>")
        if no_timestamps is None:
            raise ProcessorReconstructionError("the embedded tokenizer has no <|notimestamps|> token, which Whisper's "
                                               "decoding needs; re-embed the model's own tokenizer.json")
        self.first = no_timestamps + 1
        added = tokenizer.backend.get_added_tokens_decoder()
        self.special = {i for i, token in added.items() if token.special}
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            token_id = tokenizer.token_id(name)
            if token_id is not None:
                self.special.add(token_id)
        self.prompt_id = tokenizer.backend.token_to_id("<|startofprev|>")
        self.start_id = tokenizer.backend.token_to_id("<|startoftranscript|>")

    def text(self, tokens: Sequence[int]) -> str:
        return _TIMESTAMP_TEXT.sub("", self.tokenizer.decode(list(tokens)))

    def __call__(self, outputs: Sequence[_WhisperOutput], timestamps: bool) -> dict[str, Any]:
        run = _DecodeAsr(self, timestamps)
        for output in outputs:
            run.piece(output)
        if run.previous:
            run.close()
        result: dict[str, Any] = {"text": "".join(c["text"] for c in run.chunks)}
        if timestamps:
            result["chunks"] = [{"timestamp": tuple(c["timestamp"]), "text": c["text"]} for c in run.chunks]
        return result


class _DecodeAsr:
    """One _decode_asr call over the pieces of an input: the chunks read so far, the chunk being read and the token
    runs of its text (`previous`, joined where chunks overlap), the time offset of the piece, and, within a piece,
    the clock that counts the segments whose timestamps start again from zero."""

    def __init__(self, decoder: _WhisperDecoder, timestamps: bool) -> None:
        self.decoder, self.timestamps = decoder, timestamps
        self.chunks: list[dict[str, Any]] = []
        self.chunk: dict[str, Any] = {"timestamp": [None, None], "text": ""}
        self.previous: list[list[int]] = []
        self.last_language: str | None = None
        self.time_offset, self.skip = 0.0, False
        self.cur_max = self.prev_segments = self.penultimate = 0.0

    def close(self, current: list[int] | None = None) -> None:
        """The chunk being read ends (with the tokens of `current`): its text joined, a new chunk begun."""
        if current is not None:
            self.previous.append(current)
        self.chunk["text"] = self.decoder.text(_longest_common_sequence(self.previous))
        self.chunks.append(self.chunk)
        self.previous, self.chunk = [], {"timestamp": [None, None], "text": ""}

    def bounds(self, output: _WhisperOutput, tokens: Sequence[int]) -> tuple[float, int | None]:
        """A chunk's first timestamp token past its left stride, and its last timestamp token inside its right one."""
        first, precision = self.decoder.first, self.decoder.time_precision
        if output.stride is None:
            return first, None
        chunk_len, stride_left, stride_right = output.stride
        self.time_offset -= stride_left
        last_timestamp = None
        if stride_right:
            for token in reversed(tokens):
                if token >= first:
                    if last_timestamp is not None and (token - first) * precision < chunk_len - stride_right:
                        break
                    last_timestamp = token
        return (stride_left / precision + first if stride_left else first), last_timestamp

    def piece(self, output: _WhisperOutput) -> None:
        """The tokens of one piece: language tokens may split chunks, timestamps open and close them, text tokens
        are the chunk's text."""
        decoder, tokens = self.decoder, list(output.tokens)
        if tokens and tokens[0] == decoder.prompt_id:  # _strip_prompt
            tokens = tokens[tokens.index(decoder.start_id):] if decoder.start_id in tokens else []
        first_timestamp, last_timestamp = self.bounds(output, tokens)
        self.cur_max = self.prev_segments = self.penultimate = 0.0
        current: list[int] = []
        for i, token in enumerate(tokens):
            if token in decoder.special:
                if self.split_language(token, current):
                    current = []
            elif token >= decoder.first:
                time = self.time(tokens, i)
                if last_timestamp and token >= last_timestamp:
                    self.skip = True
                elif self.skip or (self.previous and token < first_timestamp):
                    self.skip = False
                elif self.chunk["timestamp"][0] is None:
                    self.chunk["timestamp"][0] = time
                elif time != self.chunk["timestamp"][0]:
                    self.chunk["timestamp"][1] = time
                    self.close(current)
                    current = []
            else:
                current.append(token)
        if output.stride is not None:
            self.time_offset += output.stride[0] - output.stride[2]
        if current:
            self.previous.append(current)
        elif not any(self.previous):
            self.chunk, self.previous = {"timestamp": [None, None], "text": ""}, []

    def split_language(self, token: int, current: list[int]) -> bool:
        """A language token: without timestamps, a change of language closes the chunk (whether it did)."""
        language = _WHISPER_LANGUAGES.get((self.decoder.tokenizer.backend.id_to_token(token) or "")[2:-2])
        if language is None:
            return False
        closes = bool(self.last_language and language != self.last_language and not self.timestamps)
        if closes:
            self.close(current)
        self.last_language = language
        return closes

    def time(self, tokens: Sequence[int], i: int) -> float:
        """The time of the timestamp token tokens[i] in the input: a timestamp below the last one starts a new
        segment (after a single ending, the window's 30 s have passed)."""
        first, precision = self.decoder.first, self.decoder.time_precision
        timestamp = float((tokens[i] - first) * precision)
        if timestamp < self.cur_max:
            if i >= 2 and not (tokens[i - 1] >= first and tokens[i - 2] >= first):  # a single ending
                self.prev_segments += precision * 1500
            else:
                self.cur_max = self.penultimate
                self.prev_segments += self.penultimate
        self.penultimate, self.cur_max = self.cur_max, timestamp
        return float(round((tokens[i] - first) * precision + self.time_offset + self.prev_segments, 2))


class _WhisperRecognition(_SpeechRecognition, _Generating):
    """automatic-speech-recognition with Whisper, as transformers 5's pipeline: each input's log-mel features (of each
    chunk_length_s chunk of a long input) run through the encoder once per window, then the decoder from the prompt of
    the generation config (start of transcript, language given or detected, task, no-timestamps) with its suppressed
    tokens, by beam search (the pipeline's num_beams=5) unless the model or the caller sets otherwise; language, task
    and return_timestamps (segments: ``chunks`` of ``{"timestamp": (start, end), "text": ...}``) as the pipeline takes
    them, directly or in generate_kwargs. Audio past one window needs chunk_length_s (long-form decoding is not
    supported)."""

    endpoints = ("/v1/audio/transcriptions", "/v1/audio/translations")
    options = (
        _Option("chunk_length_s", _chunk_length, 0.0),
        _Option("stride_length_s", _stride_length),
        _Option("return_timestamps", _whisper_timestamps),
        *_WHISPER_GENERATE_OPTIONS,
        _Option("generate_kwargs", _generate_kwargs),
    )

    one_graph = False  # an encoder-decoder: _EncoderDecoderModel

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        self.model = _EncoderDecoderModel(ctx, self.name)
        features = self.features
        if not isinstance(features, WhisperFeatureExtractor):
            raise ProcessorReconstructionError(
                "no Whisper feature extractor is embedded (hf_feature_extractor_config); re-embed from the model folder "
                "with its processor files (preprocessor_config.json or processor_config.json)")
        self.features = self.whisper = features
        tokenizer = ctx.processors.get("tokenizer")
        if not isinstance(tokenizer, TextTokenizer):
            raise ProcessorReconstructionError("no tokenizer embedded, so Whisper's tokens cannot be decoded to text; "
                                               "re-embed with --include-vocab")
        self.tokenizer = tokenizer
        self.main_input = "input_features"
        self.dtype = _check_ports(self.model.encoder, (_Reads(self.main_input, _FLOAT_DTYPES),), what="Whisper's encoder")[
            self.main_input]
        self.settings = _WhisperSettings(ctx.metadata.get(KEY_GENERATION_CONFIG), ctx.config)
        positions = _config_int(ctx.config, "max_source_positions")
        self.targets = _config_int(ctx.config, "max_target_positions")
        if positions is None:
            raise MetadataValidationError("the Whisper config has no max_source_positions; re-embed its config.json")
        self.window = _WHISPER_INPUT_STRIDE * positions  # frames the encoder takes
        self.asr = _WhisperDecoder(tokenizer, features.chunk_length / positions)
        pad = tokenizer.token_id("pad_token")
        self.model_generation = self.settings.generation
        self.task_defaults = {**_WHISPER_DEFAULTS, **({"pad_token_id": pad} if pad is not None else {})}

    def _options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The call's options with generate_kwargs merged in (the pipeline takes both)."""
        merged = dict(options)
        extra = options["generate_kwargs"] or {}
        known = {o.name: o for o in (*_WHISPER_GENERATE_OPTIONS, _Option("return_timestamps", _whisper_timestamps))}
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise InvalidInputError(f"generate_kwargs {', '.join(map(repr, unknown))} are not supported for Whisper; it "
                                    f"takes {', '.join(known)}")
        for key, value in extra.items():
            if value is not None:
                merged[key] = known[key].check(key, value)
        return merged

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> _Speech:
        options = self._options(options)
        self.settings.check(options["language"], options["task"])
        chunking = self._chunking(options)
        prepared = [self._pieces(item, chunking) for item in items]
        for pieces, _ in prepared:
            for piece in pieces:
                if piece.samples > self.whisper.n_samples:
                    raise InvalidInputError(
                        f"the audio is {piece.samples / self.features.sampling_rate:g} s long, past Whisper's "
                        f"{self.whisper.chunk_length} s window; pass chunk_length_s=30 to transcribe it in chunks")
        return _Speech([pieces for pieces, _ in prepared], [extra for _, extra in prepared])

    def _config(self, options: Mapping[str, Any], prompt: int) -> _GenerationConfig:
        """The generation config of one window: the pipeline's defaults under the model's and the caller's, then
        generate()'s Whisper rules (no sampling without a temperature; max_length grown by the prompt)."""
        config = self.generation(options)._replace(do_sample=False, temperature=1.0)
        targets = self.targets if self.targets is not None else _VERY_LARGE_MAX_LENGTH
        if (config.max_new_tokens or 0) + prompt > targets:
            raise InvalidInputError(f"the decoder prompt ({prompt} tokens) and max_new_tokens ({config.max_new_tokens}) "
                                    f"pass the model's {targets} positions; lower max_new_tokens")
        if config.max_new_tokens is None:
            length = min(config.max_length + min(targets // 2 - 1, prompt), targets)
            return config._replace(max_length=length, explicit=config.explicit | {"max_length"})
        return config._replace(max_new_tokens=min(config.max_new_tokens, targets - prompt))

    def _encode(self, features: np.ndarray) -> Any:
        return _Binding(self.model.encoder).run({self.main_input: features}, [self.model.hidden])[0]

    def _window(self, features: np.ndarray, seek: int, frames: int) -> np.ndarray:
        """generate()'s _get_input_segment: frames from seek, zero-padded to the encoder's window."""
        window = features[:, :, seek: seek + frames]
        if window.shape[-1] < self.window:
            window = np.pad(window, ((0, 0), (0, 0), (0, self.window - window.shape[-1])))
        return np.ascontiguousarray(window, dtype=self.dtype)

    def _detect(self, hidden: Any) -> int:
        """generate()'s detect_language: the likeliest language token after the start token alone."""
        step = _EncoderDecoder(self.model, {}, hidden)
        _, logits = step.prefill(np.array([[self.settings.start]], dtype=np.int64), np.ones((1, 1), dtype=np.int64), False)
        languages = np.array(sorted((self.settings.lang_to_id or {}).values()), dtype=np.int64)
        languages = languages[languages < logits.shape[-1]]
        return int(languages[np.argmax(logits[0, languages])])

    def transcribe(self, features: np.ndarray, options: Mapping[str, Any]) -> list[int]:
        """WhisperForConditionalGeneration.generate on one piece's features (1, bins, frames), short form: the tokens of
        its segments (prompt and eos left out)."""
        settings = self.settings
        timestamps = bool(options["return_timestamps"]) or settings.return_timestamps
        if timestamps and settings.no_timestamps is None:
            raise MetadataValidationError("the embedded generation config has no no_timestamps_token_id, which timestamps "
                                          "need; re-embed the model's current generation_config.json")
        frames = features.shape[-1]
        if frames > self.window:
            raise InvalidInputError(f"{frames} feature frames are more than Whisper's window of {self.window}; pass "
                                    "chunk_length_s")
        first_hidden = self._encode(self._window(features, 0, frames))
        language = options["language"] if options["language"] is not None else settings.language
        task = options["task"] if options["task"] is not None else settings.task
        prompt = settings.prompt(language, task, timestamps, lambda: self._detect(first_hidden))
        config = self._config(options, len(prompt))
        eos = config.eos_token_id[0] if config.eos_token_id else None
        pad = config.pad_token_id
        extra: list[_Processor] = []
        if settings.begin_suppress is not None:
            extra.append(_SuppressTokens(settings.begin_suppress, at=len(prompt)))
        if settings.suppress is not None:
            extra.append(_SuppressTokens(settings.suppress))
        if timestamps and settings.no_timestamps is not None:
            stop = eos if eos is not None else (config.bos_token_id or 0)
            extra.append(_WhisperTimestamps(settings.no_timestamps, stop, len(prompt), settings.max_initial))
        first = settings.no_timestamps + 1 if settings.no_timestamps is not None else _VERY_LARGE_MAX_LENGTH
        kept: list[int] = []
        seek = 0
        while seek < frames:
            size = min(frames - seek, self.window)
            hidden = first_hidden if seek == 0 else self._encode(self._window(features, seek, size))
            sequence = self.search(_EncoderDecoder(self.model, {}, hidden), [prompt], config, pad or 0, extra).run()[0]
            tokens = [int(t) for t in sequence]
            if tokens and pad is not None and tokens[-1] == pad:  # generate()'s padding removal, eos kept
                count = tokens.count(pad) - (1 if pad == eos else 0)
                tokens = tokens[:-count] if count else tokens
            if tokens and tokens[-1] == eos:
                tokens = tokens[:-1]
            segment, offset = _whisper_segments(tokens, first, size)
            kept += segment
            if offset <= 0:  # transformers would decode the same window again forever
                break
            seek += offset
            if config.max_new_tokens is None:  # generate() grows max_length by the prompt again for each window
                targets = self.targets if self.targets is not None else _VERY_LARGE_MAX_LENGTH
                config = config._replace(max_length=min(config.max_length + min(targets // 2 - 1, len(prompt)), targets))
        return kept

    def forward(self, batch: _Speech, options: Mapping[str, Any]) -> list[Any]:
        """The tokens of each piece, decoded alone (the pipeline's batch of one); strides in seconds."""
        options = self._options(options)
        rate = self.features.sampling_rate
        outputs = []
        for pieces in batch.pieces:
            own = []
            for piece in pieces:
                stride = None if piece.stride is None else (piece.stride[0] / rate, piece.stride[1] / rate,
                                                            piece.stride[2] / rate)
                own.append(_WhisperOutput(self.transcribe(piece.features[self.main_input], options), stride))
            outputs.append(own)
        return outputs

    def postprocess(self, batch: _Speech, outputs: list[Any], options: Mapping[str, Any]) -> list[Any]:
        """_decode_asr of each input's pieces; a dict input's other keys come back, one value per piece. Only the
        return_timestamps option (or the generation config's) gives chunks: in generate_kwargs it reaches generate() alone,
        as in the pipeline."""
        timestamps = bool(options["return_timestamps"]) or self.settings.return_timestamps
        results = []
        for own, extra in zip(outputs, batch.extras):
            result = self.asr(own, timestamps)
            result.update({key: [value] * len(own) for key, value in extra.items()})
            results.append(result)
        return results


# --- Audio classification ---------------------------------------------------------------------------


_AUDIO_FUNCTIONS = {"regression": "none", "multi_label_classification": "sigmoid"}  # by problem_type, else softmax


class _AudioClassification(_AudioTask):
    """audio-classification, as transformers.AudioClassificationPipeline: wav2vec2-style *ForSequenceClassification,
    the Audio Spectrogram Transformer, Whisper's encoder; the top_k labels (default: all) with their scores."""

    name = "audio-classification"
    axes = "(batch, labels)"
    options = (
        # transformers' pipeline sets top_k=5 when built, but each call without top_k resets it to every label
        _Option("top_k", _integer(1, optional=True)),
        _Option("function_to_apply", _choice(*_FUNCTIONS), lambda task, _: _AUDIO_FUNCTIONS.get(
            str(task.ctx.config.get("problem_type")), "softmax")),
    )

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> list[_AudioPiece]:
        pieces = []
        for item in items:
            waveform = load_audio(item, self.features.sampling_rate)
            if self.layers is not None and not _output_frames(self.layers, len(waveform)):
                shortest = _min_samples(self.layers)
                raise InvalidInputError(
                    f"audio of {len(waveform)} samples is too short for this model, which needs at least {shortest} "
                    f"({1000 * shortest / self.features.sampling_rate:g} ms at {self.features.sampling_rate} Hz)"
                )
            pieces.append(self.piece(waveform))
        return pieces

    def forward(self, batch: list[_AudioPiece], options: Mapping[str, Any]) -> list[np.ndarray]:
        return self.rows(batch)

    def postprocess(self, batch: list[_AudioPiece], outputs: list[np.ndarray], options: Mapping[str, Any]) -> list[Any]:
        results = []
        for logits in outputs:
            scores = _FUNCTIONS[options["function_to_apply"]](logits.astype(np.float32))
            labels = self.ctx.labels(len(scores))
            top_k = options["top_k"] or len(scores)
            results.append([{"score": float(scores[i]), "label": labels[i]} for i in np.argsort(-scores, kind="stable")[:top_k]])
        return results


# --- Zero-shot audio classification -------------------------------------------------------------------
# CLAP (ClapModel: the audio and text towers in one graph: input_ids, attention_mask, input_features and is_longer in,
# logits_per_audio (batch, texts) out), as transformers.ZeroShotAudioClassificationPipeline: the hypotheses tokenized
# once a call, each clip featurized alone by ClapFeatureExtractor (the pipeline calls it one clip at a time, so that
# with fusion every clip is marked is_longer), the softmax over the labels. A clip longer than max_length_s is cut or
# cropped at random, as transformers draws it from numpy's global random state; `seed` draws from RandomState(seed)
# instead, which gives what transformers gives after np.random.seed(seed).


def _random_state(name: str, value: Any) -> Any:
    if not _is_int(value) or not 0 <= value < 2 ** 32:
        raise InvalidInputError(f"{name} must be an integer from 0 to 2**32 - 1 (numpy's RandomState seed), got {value!r}")
    return np.random.RandomState(value)


class _Clips(NamedTuple):
    """Clips featurized (a batch axis of 1 each), and the label hypotheses tokenized as the graph's text inputs."""

    features: list[dict[str, np.ndarray]]
    feed: dict[str, np.ndarray]


class _ZeroShotAudioClassification(_AudioTask):
    """zero-shot-audio-classification with CLAP (both towers in one graph), as transformers'
    ZeroShotAudioClassificationPipeline: each clip's labels by softmax score, best first."""

    name = "zero-shot-audio-classification"
    processors = ("feature_extractor", "tokenizer")
    options = (
        _Option("candidate_labels", _label_list("zero-shot-audio-classification", "['a dog barking', 'rain']"), _REQUIRED),
        _Option("hypothesis_template", _hypothesis_template, "This is a sound of {}."),
        # what draws the random crops of long clips: numpy's global random state (as transformers), or RandomState(seed)
        _Option("seed", _random_state, lambda task, _: np.random),
    )
    output = "logits_per_audio"
    axes = "(batch, texts)"
    one_graph = False  # the graph takes the text tower's inputs beside the features: declared here

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        if not isinstance(self.features, ClapFeatureExtractor):
            raise ProcessorReconstructionError(
                f"zero-shot-audio-classification runs CLAP models, whose feature extractor is ClapFeatureExtractor; the "
                f"file embeds {type(self.features).__name__}"
            )
        self.clap: ClapFeatureExtractor = self.features
        self.session = ctx.session()
        outputs = list(self.session.outputs)
        if self.output not in outputs:
            raise MetadataValidationError(
                f"zero-shot-audio-classification needs the output logits_per_audio but the graph has {outputs}; export the "
                "whole CLAP model (both towers) for zero-shot-audio-classification"
            )
        self.output_name = self.output
        ports = (_Reads("input_features", _FLOAT_DTYPES), _Reads("is_longer", ("bool",), False), *_TOKEN_INPUTS[:2])
        self.dtypes = _check_ports(self.session, ports, [_Reads(self.output, axes=self.axes)], what=self.name)
        shape = self.session.inputs["input_features"].shape
        expected = (4 if self.clap.truncation == "fusion" else 1, self.clap.frames, self.clap.feature_size)
        if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected)):
            raise MetadataValidationError(
                f"graph input 'input_features' has shape {list(shape)} but the embedded feature extractor (truncation "
                f"{self.clap.truncation!r}) makes features of {expected}; re-embed the model with its own processor files"
            )
        self.tokenizer = _text_tokenizer(ctx, self.name)
        self.text_dtypes = {k: v for k, v in self.dtypes.items() if k in ("input_ids", "attention_mask")}

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        return super().inputs(_positional_labels(args, kwargs), kwargs)

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> _Clips:
        hypotheses = [options["hypothesis_template"].format(label) for label in options["candidate_labels"]]
        clips = [self.clap([load_audio(item, self.clap.sampling_rate)], options["seed"]) for item in items]
        return _Clips(clips, self.tokenizer.pad(self.tokenizer.encode(hypotheses), self.text_dtypes))

    def forward(self, batch: _Clips, options: Mapping[str, Any]) -> list[np.ndarray]:
        """Every clip's features have one shape: batch_size clips a run, the hypotheses beside them."""
        def run(chunk: list[int]) -> list[np.ndarray]:
            feed = dict(batch.feed)
            for name in ("input_features", "is_longer"):
                if name in self.dtypes:
                    feed[name] = np.concatenate([batch.features[i][name] for i in chunk]).astype(self.dtypes[name])
            (logits,) = self.session.run([self.output_name], feed)
            return list(logits)

        return _batched([0] * len(batch.features), self.ctx.batch_size, run)

    def postprocess(self, batch: _Clips, outputs: list[np.ndarray], options: Mapping[str, Any]) -> list[Any]:
        return [_ranked_labels(logits, options["candidate_labels"]) for logits in outputs]


# --- Text to audio ------------------------------------------------------------------------------------
# VITS / MMS-TTS as transformers.TextToAudioPipeline runs VitsModel: one graph from token ids to a waveform
# (authoring/vits.py exports it) whose noise is fed in: the stochastic duration predictor's (batch, 2, tokens) and the
# prior's (batch, flow_size, frames), drawn here with numpy from `seed`, times the noise scales. How many frames the
# prior needs is known only inside the graph: it pads a short prior_noise with zeros and says `frames`, and a run that
# was given too few runs again with exactly enough (each noise drawn from its own stream, so the samples drawn do not
# depend on how many were). A model without the stochastic duration predictor has no duration noise to take.

_VITS_PORTS = (_Reads("input_ids", _INT_DTYPES), _Reads("attention_mask", _INT_DTYPES),
               *(_Reads(name, _FLOAT_DTYPES) for name in ("noise_scale", "speaking_rate", "prior_noise")),
               *(_Reads(name, _FLOAT_DTYPES, False) for name in ("noise_scale_duration", "duration_noise")))
_VITS_NOISE_FRAMES = 12  # prior noise frames drawn per token before the first run (MMS-TTS speaks 2 to 8 a token)


def _pcm16(audio: np.ndarray) -> bytes:
    """Mono 16-bit little-endian PCM of audio (floats in [-1, 1], clipped)."""
    return bytes(np.round(np.clip(audio.astype(np.float64), -1.0, 1.0) * 32767).astype("<i2").tobytes())


def _wav_data(audio: np.ndarray, sampling_rate: int) -> bytes:
    """A mono 16-bit PCM WAV file of audio, made with the standard library."""
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sampling_rate)
        out.writeframes(_pcm16(audio))
    return buffer.getvalue()


def _wav_bytes(audio: np.ndarray, sampling_rate: int) -> Callable[[str], None]:
    """A writer of audio as a WAV file (_wav_data) at a path."""
    data = _wav_data(audio, sampling_rate)

    def save(path: str) -> None:
        with open(path, "wb") as file:
            file.write(data)

    return save


class _TextToAudio(_Task):
    """text-to-audio (text-to-speech), as transformers.TextToAudioPipeline with a VitsModel (VITS, MMS-TTS): one
    {"audio": float32 waveform, "sampling_rate": int} per text, each text run alone (as the pipeline does: padding
    would change a batch's waveforms). noise_scale, noise_scale_duration and speaking_rate default to the model
    config's; seed makes the noise, and so the waveform, reproducible (without it every call draws new noise)."""

    name = "text-to-audio"
    processors = ("tokenizer",)
    endpoints = ("/v1/audio/speech",)
    incremental = True
    options = (
        _Option("noise_scale", _number(0.0), lambda task, _: task.defaults["noise_scale"]),
        _Option("noise_scale_duration", _number(0.0), lambda task, _: task.defaults["noise_scale_duration"]),
        _Option("speaking_rate", _number(0.0, low_open=True), lambda task, _: task.defaults["speaking_rate"]),
        _Option("seed", _integer(0, optional=True)),
    )

    def __init__(self, ctx: _Context) -> None:
        super().__init__(ctx)
        tokenizer = ctx.processors.get("tokenizer")
        if isinstance(tokenizer, TokenizerProxy):
            tokenizer()  # raises the --include-vocab error
        if not isinstance(tokenizer, VitsTokenizer):
            raise ProcessorReconstructionError(
                "text-to-audio runs VITS models, whose character tokenizer (VitsTokenizer: vocab.json and "
                "tokenizer_config.json) is embedded at the full level; re-embed with --include-vocab"
            )
        self.tokenizer = tokenizer
        self.session = ctx.session()
        self.dtypes = _check_ports(self.session, _VITS_PORTS, [_Reads("waveform", axes="(batch, samples)"),
                                                               _Reads("frames", axes="(batch)")], what=self.name)
        config = ctx.config
        self.defaults = {name: float(_field(f"{KEY_MODEL_CONFIG}.{name}", config.get(name), (int, float), default,
                                            low=0.0))
                         for name, default in (("noise_scale", 0.667), ("noise_scale_duration", 0.8),
                                               ("speaking_rate", 1.0))}  # VitsConfig's defaults
        if self.defaults["speaking_rate"] <= 0:
            raise MetadataValidationError(f"{KEY_MODEL_CONFIG}.speaking_rate must be above 0, got 0; {_REEMBED}")
        self.sampling_rate = int(_field(f"{KEY_MODEL_CONFIG}.sampling_rate", config.get("sampling_rate"), (int,), 16000,
                                        low=1))
        self.flow_size = int(_field(f"{KEY_MODEL_CONFIG}.flow_size", config.get("flow_size"), (int,), 192, low=1))

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], bool]:
        items, single = super().inputs(args, kwargs)
        return _texts(self.name, items), single

    def preprocess(self, items: list[Any], options: Mapping[str, Any]) -> list[list[int]]:
        batch = []
        for text in items:
            ids = self.tokenizer.encode(text)
            if not ids:
                raise InvalidInputError(
                    f"text-to-audio got a text with nothing to speak ({text!r}): the tokenizer keeps only the "
                    "characters of the model's vocabulary; pass text in the model's language"
                )
            batch.append(ids)
        return batch

    def _run(self, ids: list[int], noise: np.ndarray, prior: np.ndarray, options: Mapping[str, Any]) -> list[Any]:
        feed = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids))),
                "noise_scale": np.array(options["noise_scale"]), "speaking_rate": np.array(options["speaking_rate"]),
                "noise_scale_duration": np.array(options["noise_scale_duration"]), "duration_noise": noise,
                "prior_noise": prior}
        return self.session.run(["waveform", "frames"], {k: v.astype(self.dtypes[k]) for k, v in feed.items()
                                                         if k in self.dtypes})

    def _prior(self, stream: Any, frames: int) -> np.ndarray:
        """The prior's noise for frames: drawn frame by frame, so that fewer frames are a prefix of more."""
        draws = np.random.default_rng(stream).standard_normal((frames, self.flow_size), dtype=np.float32)
        return np.ascontiguousarray(draws.T[None])

    def _speak(self, ids: list[int], options: Mapping[str, Any]) -> np.ndarray:
        """One text's waveform, as the pipeline squeezes it; the prior's noise without a draw when noise_scale is 0."""
        duration_stream, prior_stream = np.random.SeedSequence(options["seed"]).spawn(2)
        noise = np.random.default_rng(duration_stream).standard_normal((1, 2, len(ids)), dtype=np.float32)
        guess = 0 if options["noise_scale"] == 0 else int(np.ceil(_VITS_NOISE_FRAMES * len(ids) / options["speaking_rate"]))
        waveform, frames = self._run(ids, noise, self._prior(prior_stream, guess), options)
        if guess and int(frames[0]) > guess:
            waveform, frames = self._run(ids, noise, self._prior(prior_stream, int(frames[0])), options)
        return np.squeeze(np.asarray(waveform, dtype=np.float32))

    def forward(self, batch: list[list[int]], options: Mapping[str, Any]) -> list[np.ndarray]:
        return [self._speak(ids, options) for ids in batch]

    def postprocess(self, batch: list[list[int]], outputs: list[np.ndarray], options: Mapping[str, Any]) -> list[Any]:
        return [{"audio": audio, "sampling_rate": self.sampling_rate} for audio in outputs]

    def cli(self, values: Sequence[str], options: Mapping[str, Any], output: str | None = None) -> Iterator[str]:
        """Each text's speech written to the WAV file --output names (16-bit PCM; several texts: speech-1.wav,
        speech-2.wav, ...) and, as JSON, where, its rate and length."""
        if output is None:
            raise InvalidInputError("text-to-audio writes speech to a WAV file: pass --output speech.wav")
        stem, suffix = os.path.splitext(output)
        for number, (value, result) in enumerate(zip(values, self(list(values), **options)), 1):
            path = output if len(values) == 1 else f"{stem}-{number}{suffix or '.wav'}"
            audio, rate = result["audio"], result["sampling_rate"]
            summary = {"input": value, "audio": _write_whole(path, _wav_bytes(audio, rate)), "sampling_rate": rate,
                       "samples": int(audio.size), "seconds": round(audio.size / rate, 3)}
            yield json.dumps(summary, indent=2, ensure_ascii=False) + "\n"


# --- Registry -----------------------------------------------------------------------------------------

TASKS: dict[str, type[_Task]] = {
    "text-classification": _TextClassification,
    "fill-mask": _FillMask,
    "token-classification": _TokenClassification,
    "question-answering": _QuestionAnswering,
    "feature-extraction": _FeatureExtraction,
    "zero-shot-classification": _ZeroShotClassification,
    "text-generation": _TextGeneration,
    "text2text-generation": _Text2TextGeneration,
    "summarization": _Summarization,
    "translation": _Translation,
    "image-classification": _ImageClassification,
    "image-feature-extraction": _ImageFeatureExtraction,
    "zero-shot-image-classification": _ZeroShotImageClassification,
    "object-detection": _ObjectDetection,
    "zero-shot-object-detection": _ZeroShotObjectDetection,
    "depth-estimation": _DepthEstimation,
    "image-to-image": _ImageToImage,
    "image-segmentation": _ImageSegmentation,
    "background-removal": _BackgroundRemoval,
    "image-to-text": _ImageToText,
    "document-question-answering": _DocumentQuestionAnswering,
    "automatic-speech-recognition": _SpeechRecognition,
    "audio-classification": _AudioClassification,
    "zero-shot-audio-classification": _ZeroShotAudioClassification,
    "text-to-audio": _TextToAudio,
}
"""The tasks this runtime runs, by pipeline name, in the order of their rooms above."""
TASK_ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification",
                "text-to-speech": "text-to-audio", "image-text-to-text": "image-to-text"}


def _task_class(name: str) -> type[_Task] | None:
    """The task that runs a pipeline task name: TASKS' names, their aliases, and translation_XX_to_YY (as transformers
    reads it: four parts joined by "_", "translation" and "to" among them)."""
    parts = name.split("_")
    if len(parts) == 4 and parts[0] == "translation" and parts[2] == "to":
        name = "translation"
    return TASKS.get(TASK_ALIASES.get(name, name))


########################################################################################################
# Runtime
########################################################################################################


class Runtime:
    """A self-contained ONNX model ready to call: ``Runtime("model.onnx")("text")``.

    Everything is built and checked here (metadata, the processors the task needs, sessions, task), so a
    call can only fail on its inputs. Lists run in batches of batch_size. intra_op_num_threads and
    graph_optimization_level ("disable", "basic", "extended", "all") set the onnxruntime session; for
    anything else pass an onnxruntime.SessionOptions as session_options. Safe to share between threads.
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
        # what a pickled Runtime is rebuilt from (onnxruntime's SessionOptions cannot be pickled)
        self._arguments = None if session_options is not None else {
            "task": task, "providers": providers, "batch_size": batch_size, "max_decompressed_size": max_decompressed_size,
            "intra_op_num_threads": intra_op_num_threads, "graph_optimization_level": graph_optimization_level,
        }
        if os.path.isdir(self.path):
            metadata = _export_metadata(self.path, max_decompressed_size)
        else:
            metadata = read_metadata(self.path, max_decompressed_size=max_decompressed_size)
            if KEY_VERSION not in metadata:
                raise MetadataValidationError(
                    f"{os.path.basename(self.path)} has no onnxmeta metadata; embed it first: "
                    f"python -m authoring embed {os.path.basename(self.path)} <model> --include-vocab"
                )
        _check_value_types(metadata)
        self.task = self._task_name(metadata, task)
        batch_size = _integer(1)("batch_size", batch_size)
        task_class = _task_class(self.task)
        if task_class is None:
            raise TaskDetectionError(f"task {self.task!r} is not supported by this runtime; supported: "
                                     f"{', '.join(sorted(TASKS))} (translation_XX_to_YY too)")
        task_class = task_class.variant(metadata)
        processors = {kind: load_processor(metadata, kind) for kind in task_class.processors}
        # an encoder-decoder in one file: onnxruntime would log a warning per input with an empty default
        quiet = KEY_GRAPH_LAYOUT in metadata or (metadata.get(KEY_MODEL_CONFIG) or {}).get("is_encoder_decoder") is True
        options = _session_options(session_options, intra_op_num_threads, graph_optimization_level, quiet=quiet)
        fed_by = " and ".join(kind.replace("_", " ") for kind in task_class.processors) or "inputs"
        sessions = open_sessions(self.path, providers, options, fed_by=fed_by, metadata=metadata)
        self._task = task_class(_Context(metadata, processors, sessions, batch_size, self.task))

    def _task_name(self, metadata: Mapping[str, Any], task: str | None) -> str:
        name = task or metadata.get(KEY_PIPELINE_TASK)
        if not name:
            raise TaskDetectionError(
                f"{os.path.basename(self.path)} names no pipeline task; pass task=... or re-embed with --task"
            )
        return TASK_ALIASES.get(name, name)

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The embedded metadata, decoded."""
        return self._task.ctx.metadata

    @property
    def config(self) -> Mapping[str, Any]:
        """The embedded model config (config.json)."""
        return self._task.ctx.config

    @property
    def tokenizer(self) -> Any:
        """The task's tokenizer (a TextTokenizer), None for a task without one."""
        return self._task.ctx.processors.get("tokenizer")

    @property
    def session(self) -> Any:
        """The onnxruntime.InferenceSession of a single-graph model."""
        return self._task.ctx.session().ort

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task on one input or a list, returning what the transformers pipeline returns."""
        return self._task(*args, **kwargs)

    def encode(self, inputs: Any, *, prompt_name: str | None = None, prompt: str | None = None,
               normalize_embeddings: bool = False) -> np.ndarray:
        """Embeddings: a (n, dim) float32 array, (dim,) for one input.

        Sentences as SentenceTransformer(...).encode: pooling, normalization, max_seq_length and prompts come
        from the embedded sentence-transformers config (a plain transformers model is mean-pooled, as
        SentenceTransformer does). Images, for an image-feature-extraction model: image_embeds or the pooled
        output where the graph has one, else the first token's state.
        """
        if isinstance(self._task, _ImageFeatureExtraction):
            if prompt_name is not None or prompt is not None:
                raise InvalidInputError("prompts are for text; encode(images) takes normalize_embeddings only")
            return self._task.encode(inputs, normalize_embeddings=normalize_embeddings)
        if not isinstance(self._task, _FeatureExtraction):
            raise TaskDetectionError(
                f"encode() needs a feature-extraction or image-feature-extraction model; this one is {self.task}"
            )
        return self._task.encode(inputs, prompt_name=prompt_name, prompt=prompt, normalize_embeddings=normalize_embeddings)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        """The new text of one prompt as it is generated: ``for text in Runtime("gpt2.onnx").stream("Once"): ...``.

        Text is held back until stable, as transformers' TextIteratorStreamer does (incomplete characters and
        words wait); the pieces join to what ``runtime(prompt, return_full_text=False)`` returns.
        """
        stream = getattr(self._task, "stream", None)
        if stream is None:
            raise TaskDetectionError(f"stream() needs a text-generation model; this one is {self.task}")
        result: Iterator[str] = stream(*args, **kwargs)
        return result

    def logprobs(self, texts: str | Sequence[str]) -> Any:
        """A text-generation model's scores of given text: ``{"tokens", "token_ids", "token_logprobs",
        "top_token_ids"}`` per text, the log-probability of each token given those before it (None for the first)
        and the model's own likeliest token at each position; as OpenAI's completions with ``echo`` and ``logprobs``.
        exp(-mean(token_logprobs[1:])) is the text's perplexity."""
        if not isinstance(self._task, _TextGeneration):
            raise TaskDetectionError(f"logprobs() needs a text-generation model; this one is {self.task}")
        return self._task.logprobs(texts)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by reference: the path, the arguments and the metadata digest. A worker (multiprocessing,
        Ray, Dask) rebuilds the Runtime from the file at the same path and checks it is the same model."""
        if self._arguments is None:
            raise MetadataError(
                "a Runtime built with session_options cannot be pickled (onnxruntime's SessionOptions cannot be); "
                "pass intra_op_num_threads / graph_optimization_level instead"
            )
        return _rebuild_runtime, (self.path, self._arguments, self.metadata.get(KEY_DIGEST))

    def __repr__(self) -> str:
        return f"Runtime({os.path.basename(self.path)!r}, task={self.task!r})"


def _rebuild_runtime(path: str, arguments: dict[str, Any], digest: str | None) -> Runtime:
    """A pickled Runtime, built again from its file; refused when the file's metadata changed meanwhile."""
    runtime = Runtime(path, **arguments)
    found = runtime.metadata.get(KEY_DIGEST)
    if found != digest:
        raise MetadataValidationError(
            f"{path} changed since the Runtime was pickled (metadata digest {str(digest)[:12]}... is now "
            f"{str(found)[:12]}...); give every worker the same model file"
        )
    return runtime


########################################################################################################
# Seed aliases
########################################################################################################
# The original design's names, kept for its users.


def pipeline(model: str | os.PathLike[str], task: str | None = None, **options: Any) -> Runtime:
    """The design's name for Runtime: ``pipeline(model="model.onnx")``; options as Runtime takes them."""
    return Runtime(model, task=task, **options)


class ONNXAutoModel:
    """The design's model loader: the onnxruntime session of a self-contained file, nothing else built."""

    @staticmethod
    def from_model(model_path: str | os.PathLike[str], providers: Sequence[Any] | None = None,
                   session_options: Any = None) -> Any:
        """An onnxruntime.InferenceSession for the file."""
        return _session(_model_path(model_path), providers, session_options)


class ONNXAutoProcessor:
    """The design's processor loader: the embedded processor alone, no session."""

    @staticmethod
    def from_model(model_path: str | os.PathLike[str], processor_type: str | None = None) -> Any:
        """The embedded processor of processor_type (a PROCESSORS key: "tokenizer" gives a TextTokenizer, or a
        TokenizerProxy without vocabulary), by default the one the file embeds (a dict of several)."""
        processor = load_processor(read_metadata(model_path), processor_type)
        if processor is None:
            what = processor_type.replace("_", " ") if processor_type else "processor"
            raise ProcessorReconstructionError(f"{os.path.basename(os.fspath(model_path))} has no embedded {what}")
        return processor


########################################################################################################
# Server
########################################################################################################
# ``python onnxmeta_runtime.py serve model.onnx``: the file over HTTP with the standard library alone
# (http.server), request and response bodies as OpenAI's API documents them (chat and text completions,
# embeddings, audio transcriptions and translations), rerank as the common rerank APIs shape it, and
# /v1/pipeline for every task. Encoder requests that arrive together run as one batch (_Batcher); generation
# requests run concurrently, a bounded number at once. Every error is OpenAI's error object with its 4xx
# status, and the server goes on serving.

# --- Requests and errors ------------------------------------------------------------------------------

_MAX_BODY = 25 * 1024 * 1024
_JSON_TYPE = "application/json"


class _ApiError(Exception):
    """An error answered as OpenAI's error object ({"error": {"message", "type", "param", "code"}}) with its status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def _api_error(exc: BaseException) -> _ApiError:
    """What a failure answers: the caller's mistakes (InvalidInputError) a 400 with the runtime's message; the
    model's or the server's a 500."""
    if isinstance(exc, _ApiError):
        return exc
    if isinstance(exc, InvalidInputError):
        return _ApiError(400, str(exc))
    if isinstance(exc, MetadataError):
        return _ApiError(500, str(exc), kind="server_error")
    return _ApiError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")


_JSON_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
                    dict: "an object"}


class _Body:
    """A request's JSON object read field by field: each read checks the field's type and bounds (the error names
    the field); done() refuses the fields nothing read, as OpenAI's API does."""

    def __init__(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise _ApiError(400, f"the request body must be a JSON object, got {_json_type(value)}")
        self.value: dict[str, Any] = value
        self.read: set[str] = set()

    def get(self, name: str, types: tuple[type, ...], default: Any = None, *, low: float | None = None,
            high: float | None = None, required: bool = False) -> Any:
        self.read.add(name)
        value = self.value.get(name)
        if value is None:
            if required:
                raise _ApiError(400, f"'{name}' is a required property", param=name, code="missing_required_parameter")
            return default
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(_JSON_TYPE_NAMES[t] for t in types)
            raise _ApiError(400, f"'{name}' must be {expected}, got {_json_type(value)}", param=name, code="invalid_type")
        if _is_number(value) and ((low is not None and value < low) or (high is not None and value > high)):
            bounds = f"at least {low:g}" if high is None else f"from {low:g} to {high:g}" if low is not None else \
                f"at most {high:g}"
            raise _ApiError(400, f"'{name}' must be {bounds}, got {value!r}", param=name, code="invalid_value")
        return value

    def unsupported(self, name: str, why: str, *, allowed: Any = None) -> None:
        """A field of OpenAI's API this server does not take: refused unless absent or `allowed`."""
        self.read.add(name)
        value = self.value.get(name)
        if value is not None and value != allowed and value is not False:
            raise _ApiError(400, f"'{name}' is not supported by this server: {why}", param=name,
                            code="unsupported_parameter")

    def done(self) -> None:
        unknown = sorted(set(self.value) - self.read)
        if unknown:
            raise _ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                            code="unrecognized_argument")


def _form(content_type: str, data: bytes) -> dict[str, list[tuple[bytes, str | None]]]:
    """A multipart/form-data body's parts by field name: (bytes, file name) each."""
    from email import policy
    from email.parser import BytesParser

    if "boundary=" not in content_type:
        raise _ApiError(400, "a multipart/form-data body needs a boundary in its Content-Type")
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=policy.HTTP).parsebytes(head + data)
    parts = list(message.iter_parts()) if message.is_multipart() else []
    if not parts or message.defects:
        raise _ApiError(400, "the multipart/form-data body cannot be read: no parts between its boundaries")
    fields: dict[str, list[tuple[bytes, str | None]]] = {}
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise _ApiError(400, "a part of the multipart/form-data body has no name")
        payload = part.get_payload(decode=True)
        fields.setdefault(name, []).append((payload if isinstance(payload, bytes) else b"", part.get_filename()))
    return fields


def _media(value: Any, what: str) -> Any:
    """An image or audio sent in JSON: base64 text or a data URL (data:image/png;base64,...) as bytes; an audio dict's
    samples as an array; lists item by item. The server never opens a path or a URL a client names."""
    if isinstance(value, list):
        return [_media(v, what) for v in value]
    if isinstance(value, dict) and isinstance(value.get("raw", value.get("array")), list):
        key = "raw" if "raw" in value else "array"
        return {**value, key: np.asarray(value[key], dtype=np.float32)}
    if not isinstance(value, str):
        return value
    data = value.split(",", 1)[1] if value.startswith("data:") and ";base64," in value[:100] else value
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _ApiError(400, f"send each {what} as base64 or a data URL (data:...;base64,...); the server reads no "
                             "paths or URLs", param="inputs") from None


def _jsonable(value: Any) -> Any:
    """json.dumps' default: numpy arrays and numbers as lists and numbers, PIL images (depth, image-to-image) as PNG
    data URLs."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "getbands"):
        import io

        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --- Batching -----------------------------------------------------------------------------------------


class _Job:
    """One request's share of a batch: its key (requests batch only with the same key), payload and size."""

    def __init__(self, key: Any, payload: Any, size: int) -> None:
        self.key, self.payload, self.size = key, payload, size
        self.done = threading.Event()
        self.result: Any = None


class _Batcher:
    """Requests queue here and run one batch at a time, as many together as have the same key, up to max_items
    inputs: run(key, payloads) gives each payload's result (or the exception it raised alone), `workers` batches at
    once. While a batch runs, the next one gathers; under load (the last batch had several requests, or another is
    running) a batch also waits up to `wait` seconds for more, so a lone client never waits."""

    def __init__(self, run: Callable[[Any, list[Any]], list[Any]], max_items: int, wait: float, workers: int = 1) -> None:
        self.run, self.max_items, self.wait = run, max_items, wait
        self.jobs: list[_Job] = []
        self.ready = threading.Condition()
        self.busy = self.closed = False
        self.running = 0  # batches running now
        self.batches = self.requests = 0  # counts, for /health
        for _ in range(workers):  # batches run at once
            threading.Thread(target=self._loop, name="onnxmeta-batcher", daemon=True).start()

    def submit(self, key: Any, payload: Any, size: int) -> _Job:
        """Queue a request's payload; its job is done when its batch has run."""
        job = _Job(key, payload, size)
        with self.ready:
            self.jobs.append(job)
            self.ready.notify()
        return job

    def __call__(self, key: Any, payload: Any, size: int) -> Any:
        """A request's result, once its batch has run."""
        job = self.submit(key, payload, size)
        job.done.wait()
        if isinstance(job.result, BaseException):
            raise job.result
        return job.result

    def _queued(self, key: Any) -> int:
        return sum(job.size for job in self.jobs if job.key == key)

    def close(self) -> None:
        """End the batching thread once the queued requests are answered."""
        with self.ready:
            self.closed = True
            self.ready.notify_all()

    def _take(self) -> list[_Job]:
        with self.ready:
            while not self.jobs:
                if self.closed:
                    return []
                self.ready.wait()
            key = self.jobs[0].key
            deadline = time.monotonic() + (self.wait if self.busy or self.running else 0.0)
            while self._queued(key) < self.max_items and (left := deadline - time.monotonic()) > 0:
                self.ready.wait(left)
            group: list[_Job] = []
            for job in self.jobs:
                if job.key == key and (not group or sum(j.size for j in group) + job.size <= self.max_items):
                    group.append(job)
            self.jobs = [job for job in self.jobs if job not in group]
            self.busy = len(group) > 1
            self.running += 1
            return group

    def _loop(self) -> None:
        while group := self._take():
            try:
                results = self.run(group[0].key, [job.payload for job in group])
            except BaseException as exc:  # noqa: BLE001 - handed to each waiting request, which answers it
                results = [exc] * len(group)
            with self.ready:
                self.running -= 1
                self.batches, self.requests = self.batches + 1, self.requests + len(group)
            for job, result in zip(group, results):
                job.result = result
                job.done.set()


# --- Completions --------------------------------------------------------------------------------------


class _Penalties:
    """OpenAI's frequency and presence penalties and logit_bias, after the model's own logits processors: each
    token's logit less frequency_penalty times its count among the new tokens and presence_penalty where it
    occurs among them; the biases added."""

    def __init__(self, width: int, frequency: float, presence: float, bias: Mapping[int, float]) -> None:
        self.width, self.frequency, self.presence, self.bias = width, frequency, presence, bias

    def __call__(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.frequency or self.presence:
            for row, new in enumerate(ids[:, self.width:]):
                counts = np.bincount(new, minlength=scores.shape[1])[: scores.shape[1]].astype(np.float32)
                scores[row] -= self.frequency * counts + self.presence * (counts > 0)
        for token, value in self.bias.items():
            scores[:, token] += value
        return scores


class _Ask(NamedTuple):
    """A completion request's generation settings: the Runtime's options, choices per prompt, stop strings, the
    penalties, whether to stream and to end a stream with usage, and whether an answer may hold several tool calls."""

    options: dict[str, Any]
    n: int
    stop: tuple[str, ...]
    frequency: float
    presence: float
    bias: dict[int, float]
    stream: bool
    usage: bool
    parallel: bool = True


class _Rows:
    """A completion's rows (one per choice) in a batch of generations: the request's prompt and settings, and each
    step's tokens of its rows, handed over by the batch as they come (None once they have ended)."""

    def __init__(self, prompt: _Prompt, config: _GenerationConfig, ask: _Ask) -> None:
        import queue

        self.prompt, self.config, self.ask = prompt, config, ask
        self.count = config.num_return_sequences if config.do_sample else 1
        self.steps: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.cancelled = False

    def __iter__(self) -> Iterator[np.ndarray]:
        """Each step's tokens of these rows; the batch's failure raised."""
        while (step := self.steps.get()) is not None:
            if isinstance(step, BaseException):
                raise step
            yield step


class _Choice(NamedTuple):
    text: str
    finish_reason: str
    tokens: int
    calls: list[dict[str, Any]] = []  # noqa: RUF012 - a NamedTuple's default, never mutated


class _Piece(NamedTuple):
    """A streamed completion's next text, its finish reason at the end, the tokens so far, and its tool calls."""

    text: str
    finish_reason: str | None
    tokens: int
    calls: list[dict[str, Any]] = []  # noqa: RUF012 - a NamedTuple's default, never mutated


def _openai_calls(calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Parsed calls in OpenAI's shape: an id each, the arguments as a JSON string."""
    return [{"id": "call_" + os.urandom(12).hex(), "type": "function",
             "function": {"name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"])}}
            for c in calls]


def _cut(text: str, stop: Sequence[str]) -> int | None:
    """Where the first stop string starts in text, None without one."""
    found = [at for s in stop if (at := text.find(s)) >= 0]
    return min(found) if found else None


def _used(sequence: np.ndarray, eos: Sequence[int]) -> tuple[int, bool]:
    """How many new tokens a sequence used (up to its first eos, included), and whether it ended at eos."""
    hits: Any = np.flatnonzero(np.isin(sequence, list(eos))) if eos else []
    return (int(hits[0]) + 1, True) if len(hits) else (len(sequence), False)


# --- The server ---------------------------------------------------------------------------------------


class _Reply(NamedTuple):
    """A response other than JSON: its body and content type."""

    body: bytes
    content_type: str


class _Request:
    """One HTTP request as an endpoint reads it: the path, the headers, the body (read once, within max_body)."""

    def __init__(self, http: Any, max_body: int) -> None:
        self.http, self.max_body = http, max_body
        self.method: str = http.command
        self.path = str(http.path).split("?", 1)[0].split("#", 1)[0].rstrip("/") or "/"
        self.headers = http.headers
        length = self.headers.get("Content-Length")
        self.consumed = not length or length.strip() == "0"  # an unread body leaves a connection that must close

    def content_type(self) -> str:
        return str(self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def body(self) -> bytes:
        if "chunked" in str(self.headers.get("Transfer-Encoding") or "").lower():
            raise _ApiError(411, "send the body with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            raise _ApiError(400, "the Content-Length header is not a number of bytes")
        if length > self.max_body:
            raise _ApiError(413, f"the body has {length:,} bytes, over this server's limit of {self.max_body:,} (--max-body)",
                            code="request_too_large")
        data = bytes(self.http.rfile.read(length)) if length > 0 else b""
        self.consumed = True
        if len(data) < length:
            raise _ApiError(400, f"the body ended after {len(data)} of its {length} bytes")
        return data

    def json(self) -> Any:
        if self.content_type() != _JSON_TYPE:
            raise _ApiError(415, f"send JSON with the header Content-Type: {_JSON_TYPE}, not "
                                 f"{self.content_type() or 'no Content-Type'}")
        data = self.body()
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise _ApiError(400, f"the body is not valid JSON ({str(exc)[:200]})") from None

    def form(self) -> dict[str, list[tuple[bytes, str | None]]]:
        if self.content_type() != "multipart/form-data":
            raise _ApiError(415, f"send the file as multipart/form-data, not {self.content_type() or 'no Content-Type'}")
        return _form(str(self.headers.get("Content-Type")), self.body())


def _tool_call_message(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's tool_calls as chat templates read them: each function's arguments (a JSON string in
    OpenAI's API) as the object it encodes, as transformers' server hands them over."""
    if not isinstance(calls, list):
        raise _ApiError(400, f"{where} must be a list of tool calls", param=where)
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _ApiError(400, f"{where}[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'arguments': "
                                 "...}}", param=f"{where}[{i}]")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            arguments = _json_or_none(arguments)
        if not isinstance(arguments, dict):
            raise _ApiError(400, f"{where}[{i}].function.arguments must be a JSON object (as a string)",
                            param=f"{where}[{i}].function.arguments")
        out.append({**call, "function": {**function, "arguments": arguments}})
    return out


def _message(message: Any, index: int) -> dict[str, Any]:
    """A chat message as the chat template takes it: a role and text content (OpenAI's text parts joined); an
    assistant's tool_calls (content may be null then) and a tool message's tool_call_id kept."""
    where = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise _ApiError(400, f"{where} must be an object with a 'role' and 'content'", param=where)
    unknown = sorted(set(message) - {"role", "content", "name", "tool_calls", "tool_call_id"})
    if unknown:
        raise _ApiError(400, f"{where}.{unknown[0]} is not supported by this server (text messages only)",
                        param=f"{where}.{unknown[0]}", code="unsupported_parameter")
    if message.get("tool_calls") is not None:
        message = {**message, "content": message.get("content") or "",
                   "tool_calls": _tool_call_message(message["tool_calls"], f"{where}.tool_calls")}
    content = message.get("content")
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
            raise _ApiError(400, f"{where}.content: only text parts are supported", param=f"{where}.content")
        content = "\n".join(str(t) for t in texts)
    if not isinstance(content, str):
        raise _ApiError(400, f"{where}.content must be a string or a list of text parts", param=f"{where}.content")
    return {**message, "content": content}


def _prompts_of(value: Any, param: str = "prompt") -> list[str | list[int]]:
    """A completion's prompt (or the texts to embed) as a list: a string, strings, token ids, or lists of token ids."""
    if isinstance(value, str):
        return [value]
    if value and all(_is_int(t) for t in value):
        return [list(value)]
    if value and all(isinstance(p, str) or (isinstance(p, list) and p and all(_is_int(t) for t in p)) for p in value):
        return list(value)
    raise _ApiError(400, f"'{param}' must be a string, a list of strings, a list of token ids or a list of such lists",
                    param=param)


def _srt_time(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    return f"{millis // 3600000:02d}:{millis // 60000 % 60:02d}:{millis // 1000 % 60:02d}{separator}{millis % 1000:03d}"


def _subtitles(segments: Sequence[Mapping[str, Any]], vtt: bool) -> str:
    """Segments as SubRip or WebVTT subtitles."""
    blocks = [f"{'' if vtt else str(i + 1) + chr(10)}{_srt_time(s['start'], '.' if vtt else ',')} --> "
              f"{_srt_time(s['end'], '.' if vtt else ',')}\n{s['text'].strip()}\n" for i, s in enumerate(segments)]
    return ("WEBVTT\n\n" if vtt else "") + "\n".join(blocks)


def _http_server(address: tuple[str, int], server: Server) -> Any:
    """A ThreadingHTTPServer whose handler hands every request to server (http.server is imported only to serve)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length (or closes: streams)
        server_version = "onnxmeta"
        timeout = 120  # seconds a connection may sit idle or send its body
        disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms wait for a delayed ACK

        def do_GET(self) -> None:  # http.server's names
            server.handle(self)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

        def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
            if server.log is not None:
                server.log.write(f"{self.address_string()} {format % args}\n")

    class HTTPServer(ThreadingHTTPServer):
        request_queue_size = 256  # connections waiting to be accepted (socketserver's 5 resets clients under load)

        def handle_error(self, request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):  # a client that went away is no error
                super().handle_error(request, client_address)

    return HTTPServer(address, Handler)


class Server:
    """The model over HTTP, as OpenAI's API (``python onnxmeta_runtime.py serve model.onnx``): chat and text
    completions (text-generation), embeddings (feature-extraction), audio transcriptions and translations (speech
    recognition), rerank (one-label text classification: cross-encoders), /v1/pipeline for every task, /v1/models
    and /health. Each answer is what the Runtime gives called directly. Encoder requests that arrive together run
    as one batch of up to max_batch inputs; at most max_concurrent generations run at once. Binds to 127.0.0.1
    unless told; with api_key every request but /health needs ``Authorization: Bearer KEY``.

    ``with Server("model.onnx") as server: ...`` serves from a thread (server.url); serve_forever() serves until
    SIGINT or SIGTERM; stop() refuses new requests, lets those in flight finish and closes.
    """

    def __init__(self, model: str | os.PathLike[str] | Runtime, *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, max_batch: int = 32, max_body: int = _MAX_BODY, max_concurrent: int = 4,
                 batch_wait_ms: float = 5.0, task: str | None = None, threads: int | None = None, batch_size: int = 8,
                 log: IO[str] | None = None) -> None:
        # a gathered batch runs length-sorted, batch_size rows at a time: on a CPU, less padding beats larger batches
        self.runtime = model if isinstance(model, Runtime) else Runtime(model, task=task, intra_op_num_threads=threads,
                                                                        batch_size=batch_size)
        self.task = self.runtime._task
        self.model_id = os.path.basename(self.runtime.path)
        self.created = int(os.path.getmtime(self.runtime.path))
        self.api_key, self.log = api_key, log
        self.max_body = _integer(1)("max_body", max_body)
        self.slots = threading.BoundedSemaphore(_integer(1)("max_concurrent", max_concurrent))
        wait = _number(0.0)("batch_wait_ms", batch_wait_ms) / 1000
        self.batcher = _Batcher(self._run_batch, _integer(1)("max_batch", max_batch), wait)
        # completions that wait together decode as one batch (the same settings), max_concurrent batches at once
        self.generations = _Batcher(self._generate, max_batch, wait, workers=max_concurrent)
        self.routes: dict[str, tuple[str, Callable[[_Request], Any]]] = {
            "/health": ("GET", self._health), "/v1/models": ("GET", self._models),
            "/v1/chat/completions": ("POST", self._chat), "/v1/completions": ("POST", self._completions),
            "/v1/embeddings": ("POST", self._embeddings),
            "/v1/audio/transcriptions": ("POST", lambda request: self._audio(request, False)),
            "/v1/audio/translations": ("POST", lambda request: self._audio(request, True)),
            "/v1/audio/speech": ("POST", self._speech),
            "/v1/rerank": ("POST", self._rerank), "/rerank": ("POST", self._rerank), "/v1/pipeline": ("POST", self._pipeline),
        }
        self.served = [*self.task.served(), "/v1/pipeline"]
        self.in_flight = 0
        self.idle = threading.Condition()
        self.closing = False
        self.thread: threading.Thread | None = None
        self.httpd = _http_server((host, port), self)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"

    # serving

    def start(self) -> Server:
        """Serve from a background thread; returns the server (its url)."""
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="onnxmeta-server", daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM (or stop() from another thread), then stop gracefully."""
        import signal

        stopping = threading.Event()
        handlers = {}

        def on_signal(*_: Any) -> None:
            self.closing = True  # new requests are refused from the signal on; stop() runs on the next wake
            stopping.set()

        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                handlers[number] = signal.signal(number, on_signal)
        self.start()
        try:
            while not stopping.wait(0.2) and not self.closing:
                pass
        finally:
            self.stop()
            for number, handler in handlers.items():
                signal.signal(number, handler)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking connections, answer new requests on open ones with 503, wait (up to timeout seconds) for the
        requests in flight, and close."""
        if self.closing and self.thread is None:
            return
        self.closing = True
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread = None
        self.httpd.socket.close()
        deadline = time.monotonic() + timeout
        with self.idle:
            while self.in_flight and (left := deadline - time.monotonic()) > 0:
                self.idle.wait(left)
        self.httpd.server_close()
        self.batcher.close()
        self.generations.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def handle(self, http: Any) -> None:
        """Answer one request (the handler's do_*): its endpoint's answer, or the error object."""
        with self.idle:
            self.in_flight += 1
        try:
            request = _Request(http, self.max_body)
            try:
                answer = self._answer(request)
                if not isinstance(answer, (_Reply, Iterator)):  # encoded here, so that a failure is answered too
                    answer = _Reply(json.dumps(answer, ensure_ascii=False, default=_jsonable).encode("utf-8"), _JSON_TYPE)
            except Exception as exc:  # noqa: BLE001 - every failure is answered; the server goes on serving
                answer = _api_error(exc)
                if answer.status >= 500 and not isinstance(exc, (_ApiError, MetadataError)):
                    import traceback

                    traceback.print_exc(file=sys.stderr)
            if not request.consumed:
                http.close_connection = True
            self._send(http, answer)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):  # the client went away
            http.close_connection = True
        finally:
            with self.idle:
                self.in_flight -= 1
                self.idle.notify_all()

    def _answer(self, request: _Request) -> Any:
        if self.closing:
            raise _ApiError(503, "the server is shutting down", kind="server_error")
        method, endpoint = self._route(request.path)
        if request.method != method:
            raise _ApiError(405, f"{request.path} takes {method}, not {request.method}")
        if self.api_key is not None and request.path != "/health":
            import hmac

            given = str(request.headers.get("Authorization") or "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                raise _ApiError(401, "Incorrect API key provided" if given else
                                "Missing API key: send the header Authorization: Bearer YOUR_KEY",
                                kind="authentication_error", code="invalid_api_key")
        return endpoint(request)

    def _route(self, path: str) -> tuple[str, Callable[[_Request], Any]]:
        if path.startswith("/v1/models/"):
            return "GET", lambda request: self._model_card(path[len("/v1/models/"):])
        if path not in self.routes:
            raise _ApiError(404, f"no endpoint {path}; this server serves {', '.join(self.served)}, /v1/models and /health",
                            code="not_found")
        return self.routes[path]

    def _send(self, http: Any, answer: Any) -> None:
        """Write an answer: the error object with its status, a _Reply, or a stream of events (server-sent)."""
        if isinstance(answer, Iterator):
            self._send_events(http, answer)
            return
        status = answer.status if isinstance(answer, _ApiError) else 200
        if isinstance(answer, _ApiError):
            answer = _Reply(json.dumps(answer.body(), ensure_ascii=False).encode("utf-8"), _JSON_TYPE)
        data, kind = answer.body, answer.content_type
        http.send_response(status)
        http.send_header("Content-Type", kind)
        http.send_header("Content-Length", str(len(data)))
        if http.close_connection or self.closing:
            http.send_header("Connection", "close")
            http.close_connection = True
        http.end_headers()
        http.wfile.write(data)

    def _send_events(self, http: Any, events: Iterator[Any]) -> None:
        http.send_response(200)
        http.send_header("Content-Type", "text/event-stream")
        http.send_header("Cache-Control", "no-cache")
        http.send_header("Connection", "close")
        http.end_headers()
        http.close_connection = True
        try:
            for event in events:
                http.wfile.write(b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n")
            http.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            raise
        except Exception as exc:  # noqa: BLE001 - headers are sent: the error goes as the stream's last event
            http.wfile.write(b"data: " + json.dumps(_api_error(exc).body()).encode("utf-8") + b"\n\n")
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # a client that went away stops its generation

    # requests' common parts

    def _check_model(self, name: Any) -> None:
        if name is not None and name not in (self.model_id, os.path.splitext(self.model_id)[0]):
            raise _ApiError(404, f"The model '{name}' does not exist; this server serves '{self.model_id}'",
                            param="model", code="model_not_found")

    def _body(self, request: _Request, path: str) -> _Body:
        """The request's JSON object, its model checked, for an endpoint this model serves."""
        self._need(path)
        body = _Body(request.json())
        self._check_model(body.get("model", (str,)))
        return body

    def _need(self, path: str) -> None:
        if path not in self.served:
            raise _ApiError(404, f"{self.model_id} is a {self.runtime.task} model and does not serve {path}; it serves "
                                 f"{', '.join(self.served)}", param="model", code="unsupported_endpoint")

    def _generating(self) -> _TextGeneration:
        assert isinstance(self.task, _TextGeneration)
        return self.task

    def _run_batch(self, key: Any, payloads: list[Any]) -> list[Any]:
        """The batcher's work: pipeline calls (one batch when their parameters match: _Task.calls) or embeddings."""
        task = self.task
        if key[0] == "pipeline":
            return task.calls(payloads)
        assert isinstance(task, _FeatureExtraction)
        try:
            vectors = task.encode_ids([i for p in payloads for i in p]) if key[1] == "ids" else task.encode(
                [i for p in payloads for i in p])
        except MetadataError as exc:
            return [exc] if len(payloads) == 1 else [self._run_batch(key, [p])[0] for p in payloads]
        out, start = [], 0
        for payload in payloads:
            out.append(vectors[start: start + len(payload)])
            start += len(payload)
        return out

    # endpoints

    def _health(self, request: _Request) -> Any:
        return {"status": "ok", "batches": self.batcher.batches, "batched_requests": self.batcher.requests,
                "generation_batches": self.generations.batches, "generation_requests": self.generations.requests}

    def _model_card(self, name: str | None = None) -> dict[str, Any]:
        if name is not None:
            self._check_model(name)
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "onnxmeta",
                "task": self.runtime.task, "format_version": str(self.runtime.metadata.get(KEY_VERSION))}

    def _models(self, request: _Request) -> Any:
        return {"object": "list", "data": [self._model_card()]}

    # completions

    def _ask(self, body: _Body, chat: bool) -> _Ask:
        """The generation settings of a completion request, mapped to the Runtime's options."""
        max_tokens = body.get("max_tokens", (int,), low=1)
        if chat:
            max_tokens = body.get("max_completion_tokens", (int,), low=1) or max_tokens
        temperature = body.get("temperature", (int, float), low=0, high=2)
        top_p = body.get("top_p", (int, float), low=0, high=1)
        n = body.get("n", (int,), 1, low=1, high=128)
        stop = body.get("stop", (str, list))
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
            raise _ApiError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
        seed = body.get("seed", (int,), low=0)
        bias = self._bias(body.get("logit_bias", (dict,), {}))
        stream = body.get("stream", (bool,), False)
        stream_options = body.get("stream_options", (dict,))
        if stream_options is not None and (not stream or set(stream_options) - {"include_usage"}):
            raise _ApiError(400, "'stream_options' takes include_usage, with stream: true", param="stream_options")
        if stream and n > 1:
            raise _ApiError(400, "stream gives one choice: leave n at 1", param="n")
        body.get("user", (str,))
        options: dict[str, Any] = {"return_full_text": False, **self._response_format(body)}
        parallel = body.get("parallel_tool_calls", (bool,), True) if chat else True
        if chat:
            options.update(self._tools(body))
        for name in ("logprobs", "top_logprobs", "functions", "function_call", "suffix", "best_of", *(("echo",) if chat else ())):
            body.unsupported(name, "not implemented yet", allowed={"best_of": 1}.get(name))
        for name in () if chat else ("tools", "tool_choice", "parallel_tool_calls"):
            body.unsupported(name, "tools are for /v1/chat/completions", allowed={"tool_choice": "none"}.get(name))
        if max_tokens is not None:
            options["max_new_tokens"] = max_tokens
        if temperature is not None or top_p is not None:
            options["do_sample"] = temperature != 0
        if temperature:
            options["temperature"] = float(temperature)
        if top_p is not None and temperature != 0:
            options["top_p"] = float(top_p)
        if seed is not None:
            options["seed"] = seed
        if stops:
            options["stop_sequence"] = list(stops)
        return _Ask(options, n, stops, float(body.get("frequency_penalty", (int, float), 0, low=-2, high=2)),
                    float(body.get("presence_penalty", (int, float), 0, low=-2, high=2)), bias, stream,
                    bool((stream_options or {}).get("include_usage")), parallel)

    def _response_format(self, body: _Body) -> dict[str, Any]:
        """response_format as the runtime's constraint options: {"type": "json_object"} any JSON object (with
        llama.cpp's "schema", that schema), {"type": "json_schema", "json_schema": {"name", "schema", "strict"}} its
        schema; a schema the constraint cannot compile a 400 naming it."""
        value = body.get("response_format", (dict,))
        kind = None if value is None else value.get("type")
        if value is None or (kind == "text" and set(value) == {"type"}):
            return {}
        if kind == "json_object" and set(value) <= {"type", "schema"}:
            schema, param = value.get("schema", {"type": "object"}), "response_format.schema"
        elif kind == "json_schema" and set(value) == {"type", "json_schema"} and isinstance(value["json_schema"], dict) \
                and set(value["json_schema"]) <= {"name", "schema", "strict", "description"}:
            schema, param = value["json_schema"].get("schema", {"type": "object"}), "response_format.json_schema.schema"
        else:
            raise _ApiError(400, "'response_format' must be {'type': 'text'}, {'type': 'json_object'} (llama.cpp's "
                                 "'schema' beside it) or {'type': 'json_schema', 'json_schema': {'name': ..., 'schema': "
                                 f"{{...}}, 'strict': ...}}}}; got {json.dumps(value)[:200]}", param="response_format")
        if not isinstance(schema, (dict, bool)):
            raise _ApiError(400, f"'{param}' must be a JSON schema object, got {_json_type(schema)}", param=param)
        try:
            _json_schema_regex(schema)
        except InvalidInputError as exc:
            raise _ApiError(400, f"'{param}': {exc}", param=param, code="invalid_schema") from None
        return {"json_schema": schema}

    def _tools(self, body: _Body) -> dict[str, Any]:
        """tools and tool_choice as the runtime's options; a forced call's schemas compiled now (a 400 naming them)."""
        tools, choice = body.get("tools", (list,)), body.get("tool_choice", (str, dict))
        if tools is None and choice is None:
            return {}
        task, options = self._generating(), {"tools": tools, "tool_choice": choice or "auto"}
        for i, tool in enumerate(tools or ()):
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
                raise _ApiError(400, f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': "
                                     "{...}}}", param=f"tools[{i}]")
        try:
            checked = task.check_options(options)
            task.tools(checked)
            task.forced_call(checked)
        except InvalidInputError as exc:
            param = "tool_choice" if str(exc).startswith("tool_choice") else "tools"
            raise _ApiError(400, str(exc), param=param, code="invalid_schema" if "schema" in str(exc) else None) from None
        return options

    def _bias(self, value: Mapping[str, Any]) -> dict[int, float]:
        vocabulary = self._generating().tokenizer.backend.get_vocab_size(with_added_tokens=True)
        bias = {}
        for key, number in value.items():
            if not key.isdigit() or int(key) >= vocabulary or not _is_number(number) or not -100 <= number <= 100:
                raise _ApiError(400, f"'logit_bias' maps token ids (below {vocabulary}) to numbers from -100 to 100; got "
                                     f"{key!r}: {number!r}", param="logit_bias")
            bias[int(key)] = float(number)
        return bias

    def _prepare(self, given: Any, ask: _Ask, param: str) -> tuple[_Prompt, _GenerationConfig]:
        """A prompt (text, chat messages or token ids) as token ids and its generation config, the new tokens capped to
        the model's positions when the request sets no max_tokens."""
        task = self._generating()
        checked = task.check_options(ask.options)
        if isinstance(given, list) and all(_is_int(t) for t in given):
            vocabulary = task.tokenizer.backend.get_vocab_size(with_added_tokens=True)
            if not all(0 <= t < vocabulary for t in given):
                raise _ApiError(400, f"token ids must be in [0, {vocabulary})", param=param)
            prompt, config = _Prompt(given, list(given), len(given), False, False), task.config(checked)
        else:
            batch = task.preprocess([given], checked)
            prompt, config = batch.prompts[0], batch.config
        config = config._replace(num_return_sequences=ask.n if config.do_sample else 1)
        limit, used = task.positions, len(prompt.ids)
        new = int(_prompts([prompt.ids], config, task.tokenizer.pad_token_id, None).max_lengths[0]) - used
        if limit is not None and "max_new_tokens" not in ask.options and used < limit:
            new = min(new, limit - used)
        if limit is not None and used + new > limit:
            raise _ApiError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                                 f"{used + new} tokens ({used} in the {param}, {new} in the completion). Please reduce "
                                 f"the length of the {param} or the completion.", param=param,
                            code="context_length_exceeded")
        return prompt, config._replace(max_new_tokens=new)

    def _submit(self, prompt: _Prompt, config: _GenerationConfig, ask: _Ask) -> _Rows:
        """A completion's rows, queued to run with others of the same settings."""
        rows = _Rows(prompt, config, ask)
        if rows.count > 1 or (config.do_sample and config.seed is not None):
            key: Any = object()  # alone: a seed's draws, several choices of one prompt
        else:
            mixed = "position_ids" in self._generating().step.int_types  # else left padding would shift positions
            key = (config._replace(max_new_tokens=None), ask.frequency, ask.presence, sorted(ask.bias.items()),
                   None if mixed else len(prompt.ids))
        self.generations.submit(key, rows, 1)
        return rows

    def _generate(self, key: Any, group: list[_Rows]) -> list[None]:
        """One batch of completions (the generation batcher's work): a search over the rows of every request still
        waiting, each step's tokens handed to their requests, a request's rows closed once they end or its client
        goes away."""
        live = [rows for rows in group if not rows.cancelled]
        try:
            with self.slots:
                if live:
                    self._steps(live)
        except BaseException as exc:  # noqa: BLE001 - each request of the batch answers it
            for rows in live:
                rows.steps.put(exc)
        for rows in group:
            rows.steps.put(None)
        return [None] * len(group)

    def _steps(self, group: list[_Rows]) -> None:
        task, first = self._generating(), group[0]
        lengths = np.array([len(rows.prompt.ids) for rows in group])
        prompts = _prompts([rows.prompt.ids for rows in group], first.config._replace(max_new_tokens=1),
                           task.tokenizer.pad_token_id, None)
        prompts = prompts._replace(max_lengths=lengths + np.array([rows.config.max_new_tokens for rows in group]))
        ask = first.ask
        extra = [_Penalties(prompts.ids.shape[1], ask.frequency, ask.presence, ask.bias)] if (
            ask.frequency or ask.presence or ask.bias) else []
        search = _Search(task.step, prompts, first.config, task.stops(first.config), extra,
                         constraints=task.constraints(first.config, len(group)))
        spans = [slice(i * rows.count, (i + 1) * rows.count) for i, rows in enumerate(group)]
        going = set(range(len(group)))
        for tokens in search:
            for i in sorted(going):  # search.unfinished: the rows still going after the step before this one
                rows, span = group[i], spans[i]
                if rows.cancelled or (search.unfinished is not None and not search.unfinished[span].any()):
                    rows.steps.put(None)
                    going.discard(i)
                else:
                    rows.steps.put(tokens[span].copy())
            if not going:
                break

    def _choices(self, prompt: _Prompt, config: _GenerationConfig, ask: _Ask) -> list[_Choice]:
        """A prompt's n completions: the text (cut before a stop string), why it ended, the tokens it took."""
        task = self._generating()
        rows = self._submit(prompt, config, ask)
        steps = list(rows)
        sequences = np.array(steps, dtype=np.int64).T if steps else np.zeros((rows.count, 0), dtype=np.int64)
        choices = []
        tools = task.parses_tools(ask.options)
        for sequence in sequences:
            used, ended = _used(sequence, config.eos_token_id or ())
            text = task.decode([*prompt.ids[prompt.skip:], *sequence[:used]], skip_special_tokens=not tools)
            if (constrained := task.constrained(config, sequence[:used])) is not None:  # the text the constraint matched
                text = task.decode(prompt.ids[prompt.skip:], skip_special_tokens=not tools) + constrained[0]
            at = _cut(text, ask.stop)
            text, calls = task.split_calls(text[:at]) if tools else (text[:at], [])
            finish = "tool_calls" if calls else "stop" if ended or at is not None else "length"
            choices.append(_Choice(text, finish, used, calls if ask.parallel else calls[:1]))
        return choices * ask.n if len(choices) == 1 else choices

    def _pieces(self, prompt: _Prompt, config: _GenerationConfig, ask: _Ask) -> Iterator[_Piece]:
        """A prompt's completion as it is generated: (new text, finish reason at the end, tokens so far, tool calls);
        text held back until stable (TextStreamer), while it may be the start of a stop string, and from where a tool
        call may start (its calls parsed at the end)."""
        task = self._generating()
        rows = self._submit(prompt, config, ask)
        eos = set(config.eos_token_id or ())
        tools = task.parses_tools(ask.options)
        special = task.special_texts() if tools else []

        def shown(text: str, end: int) -> str:
            """With tools, the content text[:end] shows for sure: held back from a special token's or a call's start,
            its special tokens dropped, stripped (as split_calls strips the content)."""
            if task.tool_format is None:
                return text[:end]
            end = min(end, task.tool_format.held(text))
            for token in special:  # never end inside a special token
                at = text.find(token, max(0, end - len(token) + 1))
                end = at if 0 <= at < end else end
            visible = text[:end]
            for token in special:
                visible = visible.replace(token, "")
            return visible.strip()

        def pieces() -> Iterator[_Piece]:
            try:
                streamer = _TextStreamer(lambda ids: task.decode(ids, skip_special_tokens=not tools))
                hold = max((len(s) for s in ask.stop), default=1) - 1
                text = task.decode(prompt.ids[prompt.skip:], skip_special_tokens=not tools)  # a forced call's start
                sent, count, at, last = "", 0, None, -1
                for tokens in rows:
                    count, last = count + 1, int(tokens[0])
                    text += streamer.put(tokens[:1])
                    at = _cut(text, ask.stop)
                    if at is not None:
                        break
                    now = shown(text, len(text) - hold) if tools else text[: len(text) - hold]
                    if len(now) > len(sent) and now.startswith(sent):
                        yield _Piece(now[len(sent):], None, count)
                        sent = now
                if at is None:
                    text += streamer.end()
                    at = _cut(text, ask.stop)
                whole, calls = task.split_calls(text[:at]) if tools else (text[:at], [])
                finish = "tool_calls" if calls else "stop" if at is not None or last in eos else "length"
                rest = whole[len(sent):] if whole.startswith(sent) else ""
                yield _Piece(rest, finish, count, calls if ask.parallel else calls[:1])
            finally:
                rows.cancelled = True  # a client gone (or a stop string found) ends the rows at the batch's next step

        return pieces()

    def _completion(self, prepared: list[tuple[Any, _Prompt, _GenerationConfig]], ask: _Ask, chat: bool,
                    echo: bool) -> Any:
        """The completion of each prompt (n choices each), as OpenAI's chat.completion or text_completion, or its
        stream of chunks."""
        head = {"id": ("chatcmpl-" if chat else "cmpl-") + os.urandom(16).hex(), "object": "chat.completion" if chat else
                "text_completion", "created": int(time.time()), "model": self.model_id}
        prompt_tokens = sum(len(prompt.ids) for _, prompt, _ in prepared)
        if ask.stream:
            given, prompt, config = prepared[0]
            return self._chunks(head, self._pieces(prompt, config, ask), chat, self._echo(given, prompt) if echo else "",
                                prompt_tokens, ask.usage)
        choices: list[dict[str, Any]] = []
        used = 0
        for given, prompt, config in prepared:
            start = self._echo(given, prompt) if echo else ""
            for choice in self._choices(prompt, config, ask):
                index, used = len(choices), used + choice.tokens
                message: dict[str, Any] = {"role": "assistant", "content": choice.text}
                if choice.calls:
                    message = {"role": "assistant", "content": choice.text or None,
                               "tool_calls": _openai_calls(choice.calls)}
                choices.append({"index": index, "message": message,
                                "logprobs": None, "finish_reason": choice.finish_reason} if chat else
                               {"text": start + choice.text, "index": index, "logprobs": None,
                                "finish_reason": choice.finish_reason})
        return {**head, "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": used,
                                                      "total_tokens": prompt_tokens + used}}

    def _echo(self, given: Any, prompt: _Prompt) -> str:
        return given if isinstance(given, str) else self._generating().decode(prompt.ids)

    def _chunks(self, head: Mapping[str, Any], pieces: Iterator[_Piece], chat: bool, start: str,
                prompt_tokens: int, usage: bool) -> Iterator[dict[str, Any]]:
        """A completion's stream: chunks of new text, each tool call whole in one delta (with its index, as
        transformers' server sends them), the finish reason, and usage when asked."""
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

        def chunk(text: str | None, finish: str | None, role: bool = False, **delta: Any) -> dict[str, Any]:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else delta if text is None else {"content": text}
                return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return {**head, "choices": [{"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}]}

        def events() -> Iterator[dict[str, Any]]:
            try:
                yield chunk(None, None, True) if chat else chunk(start, None)
                count = 0
                for text, finish, tokens, calls in pieces:
                    count = tokens
                    if text:
                        yield chunk(text, None)
                    for index, call in enumerate(_openai_calls(calls)):
                        yield chunk(None, None, tool_calls=[{"index": index, **call}])
                    if finish is not None:
                        yield chunk(None, finish)
                if usage:
                    yield {**head, "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": count,
                                                            "total_tokens": prompt_tokens + count}}
            finally:
                pieces.close()  # type: ignore[attr-defined]

        return events()

    def _chat(self, request: _Request) -> Any:
        body = self._body(request, "/v1/chat/completions")
        value = body.get("messages", (list,), required=True)
        if not value:
            raise _ApiError(400, "'messages' must not be empty", param="messages")
        messages = [_message(m, i) for i, m in enumerate(value)]
        ask = self._ask(body, chat=True)
        body.done()
        return self._completion([(messages, *self._prepare(messages, ask, "messages"))], ask, True, False)

    def _completions(self, request: _Request) -> Any:
        body = self._body(request, "/v1/completions")
        prompts = _prompts_of(body.get("prompt", (str, list), required=True))
        echo = body.get("echo", (bool,), False)
        ask = self._ask(body, chat=False)
        body.done()
        if ask.stream and len(prompts) > 1:
            raise _ApiError(400, "stream takes one prompt", param="prompt")
        return self._completion([(p, *self._prepare(p, ask, "prompt")) for p in prompts], ask, False, echo)

    # encoders

    def _embeddings(self, request: _Request) -> Any:
        body = self._body(request, "/v1/embeddings")
        task = self.task
        assert isinstance(task, _FeatureExtraction)
        given = body.get("input", (str, list), required=True)
        form = body.get("encoding_format", (str,), "float")
        if form not in ("float", "base64"):
            raise _ApiError(400, f"'encoding_format' must be 'float' or 'base64', got {form!r}", param="encoding_format")
        dimensions = body.get("dimensions", (int,), low=1)
        body.get("user", (str,))
        body.done()
        if dimensions is not None and not task.dimensions:
            raise _ApiError(400, "this model was not trained for shorter embeddings (Matryoshka); leave out 'dimensions'",
                            param="dimensions")
        items: list[Any] = [given] if isinstance(given, str) else _prompts_of(given, "input") if given else []
        if not items or (not all(isinstance(i, str) for i in items) and not all(isinstance(i, list) for i in items)):
            raise _ApiError(400, "'input' must be a non-empty string, a list of strings, token ids or lists of token ids",
                            param="input")
        ids = isinstance(items[0], list)
        vectors = self.batcher(("embed", "ids" if ids else "texts"), items, len(items))
        width = vectors.shape[1]
        if dimensions is not None:
            if dimensions > width:
                raise _ApiError(400, f"'dimensions' must be at most {width}", param="dimensions")
            vectors = vectors[:, :dimensions]
            if task.normalize:  # unit vectors stay unit vectors, as OpenAI's shortened embeddings are
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        tokens = sum(len(i) for i in items) if ids else sum(len(e.ids) for e in task.tokenizer.encode(items))
        data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
                 if form == "base64" else v.astype(np.float32).tolist()} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": self.model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def _rerank(self, request: _Request) -> Any:
        body = self._body(request, "/v1/rerank")
        query = body.get("query", (str,), required=True)
        documents = body.get("documents", (list,), required=True)
        top_n = body.get("top_n", (int,), low=1)
        keep = body.get("return_documents", (bool,), False)
        body.done()
        texts = [d.get("text") if isinstance(d, dict) else d for d in documents]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise _ApiError(400, "'documents' must be a non-empty list of strings (or {\"text\": ...} objects)",
                            param="documents")
        pairs = [{"text": query, "text_pair": t} for t in texts]
        scores = self.batcher(("pipeline", "{}"), ((pairs,), {}), len(pairs))
        order = sorted(range(len(texts)), key=lambda i: -float(scores[i]["score"]))[:top_n]
        assert isinstance(self.task, _TextTask)
        tokens = sum(len(e.ids) for e in self.task.tokenizer.encode([(query, t) for t in texts]))
        return {"id": f"rerank-{os.urandom(8).hex()}", "model": self.model_id,
                "results": [{"index": i, "relevance_score": scores[i]["score"],
                             **({"document": {"text": texts[i]}} if keep else {})} for i in order],
                "usage": {"total_tokens": tokens}}

    def _pipeline(self, request: _Request) -> Any:
        body = self._body(request, "/v1/pipeline")
        if "inputs" not in body.value:
            raise _ApiError(400, "'inputs' is a required property", param="inputs", code="missing_required_parameter")
        body.read.add("inputs")
        inputs = body.value["inputs"]
        parameters = body.get("parameters", (dict,), {})
        body.done()
        kinds = type(self.task).processors
        if "image_processor" in kinds or "feature_extractor" in kinds:
            inputs = _media(inputs, "image" if "image_processor" in kinds else "audio")
        if isinstance(self.task, _Generating):
            with self.slots:
                return self.runtime(inputs, **parameters)
        key = ("pipeline", json.dumps(parameters, sort_keys=True, default=str))
        return self.batcher(key, ((inputs,), parameters), len(inputs) if isinstance(inputs, list) else 1)

    # audio

    def _speech(self, request: _Request) -> Any:
        """OpenAI's text to speech: the model's voice (a VITS file has one: `voice` is taken and not used), `speed` as
        VITS's speaking rate times the model's, a WAV file or raw 16-bit PCM at the model's sampling rate."""
        body = self._body(request, "/v1/audio/speech")
        task = self.task
        assert isinstance(task, _TextToAudio)
        text = body.get("input", (str,), required=True)
        body.get("voice", (str, dict))
        form = body.get("response_format", (str,), "wav")
        speed = body.get("speed", (int, float), 1.0, low=0.25, high=4.0)
        body.unsupported("instructions", "a VITS model speaks in its one voice and manner")
        body.unsupported("stream_format", "the audio comes whole, not as server-sent events", allowed="audio")
        body.done()
        if form not in ("wav", "pcm"):
            raise _ApiError(400, f"'response_format' must be 'wav' or 'pcm' (16-bit little-endian mono at the model's "
                                 f"sampling rate); {form!r} needs an encoder the standard library lacks",
                            param="response_format")
        if not text.strip():
            raise _ApiError(400, "'input' must be text to speak", param="input")
        try:
            with self.slots:
                result = self.runtime(text, speaking_rate=speed * task.defaults["speaking_rate"])
        except InvalidInputError as exc:
            raise _ApiError(400, str(exc), param="input") from None
        audio, rate = result["audio"].reshape(-1), int(result["sampling_rate"])
        if form == "pcm":
            return _Reply(_pcm16(audio), f"audio/pcm; rate={rate}")
        return _Reply(_wav_data(audio, rate), "audio/wav")

    def _audio(self, request: _Request, translate: bool) -> Any:
        self._need("/v1/audio/translations" if translate else "/v1/audio/transcriptions")
        task = self.task
        assert isinstance(task, _SpeechRecognition)
        fields = request.form()
        granularity = "timestamp_granularities[]"
        unknown = sorted(set(fields) - {"file", "model", "language", "prompt", "response_format", "temperature",
                                        granularity, "timestamp_granularities"})
        if unknown:
            raise _ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                            code="unrecognized_argument")

        def text(name: str) -> str | None:
            values = fields.get(name)
            try:
                return values[0][0].decode("utf-8") if values else None
            except UnicodeDecodeError:
                raise _ApiError(400, f"'{name}' is not UTF-8 text", param=name) from None

        data = fields["file"][0][0] if "file" in fields else b""
        if not data:
            raise _ApiError(400, "send the audio as the form's 'file' part", param="file")
        self._check_model(text("model"))
        language, prompt, form = text("language") or None, text("prompt") or None, text("response_format") or "json"
        if form not in ("json", "text", "verbose_json", "srt", "vtt"):
            raise _ApiError(400, f"'response_format' must be json, text, verbose_json, srt or vtt; got {form!r}",
                            param="response_format")
        granularities = [v.decode("utf-8", "replace") for v, _ in fields.get(granularity, []) + fields.get(
            "timestamp_granularities", [])]
        if any(g != "segment" for g in granularities) or (granularities and form != "verbose_json"):
            raise _ApiError(400, "timestamp_granularities takes 'segment', with response_format verbose_json (word "
                                 "timestamps are not supported)", param=granularity)
        try:
            temperature = float(text("temperature") or 0)
        except ValueError:
            raise _ApiError(400, "'temperature' must be a number", param="temperature") from None
        if temperature:
            raise _ApiError(400, "sampling is not supported for transcription: leave temperature at 0", param="temperature")
        if prompt is not None:
            raise _ApiError(400, "a prompt to condition the transcription on is not supported by this runtime",
                            param="prompt")
        whisper = isinstance(task, _WhisperRecognition)
        options: dict[str, Any] = {}
        if language is not None and not whisper:
            raise _ApiError(400, "a CTC model transcribes the language it was trained on: leave out 'language'",
                            param="language")
        generate = {**({"language": language} if language else {}), **({"task": "translate"} if translate else {})}
        if generate:
            options["generate_kwargs"] = generate
        timed = form in ("verbose_json", "srt", "vtt")
        if timed and whisper:
            options["return_timestamps"] = True
        rate = task.features.sampling_rate
        try:
            audio = load_audio(data, rate)  # decoded once: what the runtime takes, and the duration
        except InvalidInputError as exc:
            raise _ApiError(400, str(exc), param="file") from None
        with self.slots:
            result = self.runtime(audio, **options)
        if form == "json":
            return {"text": result["text"]}
        if form == "text":
            return _Reply(result["text"].encode("utf-8"), "text/plain; charset=utf-8")
        segments = self._segments(result, len(audio) / rate)
        if form != "verbose_json":
            return _Reply(_subtitles(segments, form == "vtt").encode("utf-8"), f"text/{form}; charset=utf-8")
        return {"task": "translate" if translate else "transcribe", "language": language or getattr(
            getattr(task, "settings", None), "language", None) or "unknown", "duration": len(audio) / rate,
                "text": result["text"], "segments": segments}

    def _segments(self, result: Mapping[str, Any], duration: float) -> list[dict[str, Any]]:
        """verbose_json's segments: Whisper's timestamped chunks, or the whole clip as one (CTC)."""
        chunks = result.get("chunks") or [{"timestamp": (0.0, duration), "text": result["text"]}]
        tokenizer = getattr(self.task, "tokenizer", None)
        out = []
        for i, chunk in enumerate(chunks):
            start, end = chunk["timestamp"]
            tokens = tokenizer.encode([chunk["text"]], add_special_tokens=False)[0].ids if isinstance(
                tokenizer, TextTokenizer) else []
            out.append({"id": i, "seek": 0, "start": float(start or 0.0), "end": float(duration if end is None else end),
                        "text": chunk["text"], "tokens": list(tokens), "temperature": 0.0, "avg_logprob": None,
                        "compression_ratio": None, "no_speech_prob": None})
        return out


def _serve_main(argv: Sequence[str]) -> int:
    """python onnxmeta_runtime.py serve model.onnx [options]: serve until SIGINT or SIGTERM."""
    import argparse

    parser = argparse.ArgumentParser(prog="onnxmeta_runtime serve",
                                     description="Serve a self-contained ONNX model over HTTP with OpenAI's API.")
    parser.add_argument("model", help="a self-contained .onnx file")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one, printed)")
    parser.add_argument("--api-key", default=os.environ.get("ONNXMETA_API_KEY"),
                        help="require Authorization: Bearer KEY (default: $ONNXMETA_API_KEY; none: open)")
    parser.add_argument("--max-batch", type=int, default=32, help="inputs per batch of encoder requests (1: no batching)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for more under load")
    parser.add_argument("--max-concurrent", type=int, default=4, help="generations running at once (others wait)")
    parser.add_argument("--max-body", type=int, default=_MAX_BODY, help=f"largest request body in bytes ({_MAX_BODY:,})")
    parser.add_argument("--task", help="serve as this task instead of the embedded one")
    parser.add_argument("--threads", type=int, help="onnxruntime's intra-op threads (default: the cores)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="rows per model run within a batch, sorted by length (default 8: less padding)")
    parser.add_argument("--log", action="store_true", help="log each request on stderr")
    args = parser.parse_args(argv)
    try:
        server = Server(args.model, host=args.host, port=args.port, api_key=args.api_key, max_batch=args.max_batch,
                        batch_wait_ms=args.batch_wait_ms, max_concurrent=args.max_concurrent, max_body=args.max_body,
                        task=args.task, threads=args.threads, batch_size=args.batch_size,
                        log=sys.stderr if args.log else None)
    except (MetadataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"serving {server.model_id} ({server.runtime.task}) on {server.url}", flush=True)
    server.serve_forever()
    return 0


########################################################################################################
# Command line
########################################################################################################


def _summary(path: str) -> str:
    """A few lines on what a file carries, read without onnxruntime: task, model, labels, processors, entries."""
    scan = scan_model(path)
    metadata = read_metadata(path)
    if KEY_VERSION not in metadata:
        return f"{os.path.basename(path)}: no onnxmeta metadata; embed it: python -m authoring embed {path} <model>"
    config = metadata.get(KEY_MODEL_CONFIG) or {}
    architectures = config.get("architectures") or []
    labels = list((config.get("id2label") or {}).values())
    kinds = _processor_kinds(metadata)
    # tokenizer.json, or the vocab.json of a CTC or VITS tokenizer
    vocabulary = (KEY_TOKENIZER_JSON in metadata or "tokenizer" not in kinds
                  or (metadata.get(KEY_TOKENIZER_CONFIG) or {}).get("vocab") is not None)
    tokenizer = "" if vocabulary else " (no vocabulary: re-embed with --include-vocab)"
    shown = ", ".join(map(str, labels[:8])) + (", ..." if len(labels) > 8 else "")
    lines = [
        f"{os.path.basename(path)}: onnxmeta format {metadata[KEY_VERSION]}, level {metadata.get(KEY_EMBEDDING_LEVEL, '?')}, "
        f"{scan.size:,} bytes",
        f"  task: {metadata.get(KEY_PIPELINE_TASK) or '(none)'}"
        + ("" if _task_class(str(metadata.get(KEY_PIPELINE_TASK, ""))) is not None else " (not run by this runtime)"),
        f"  model: {', '.join(map(str, architectures)) or '?'} ({config.get('model_type', '?')})",
        f"  labels: {len(labels)}" + (f": {shown}" if labels else ""),
        f"  processors: {', '.join(kinds) or '(none)'}{tokenizer}",
        f"  metadata: {len(scan.entries)} entries, {sum(len(e.value) for e in scan.entries):,} bytes",
    ]
    return "\n".join(lines)


def _json_lines(runtime: Runtime, options: Mapping[str, Any], stdin: IO[str], stdout: IO[str]) -> int:
    """Each line of stdin a JSON value given to the model as runtime(value, **options); one JSON line out per
    line in (an {"error": ...} object for a line that fails). Returns 1 when any line failed."""
    failed = 0
    for number, line in enumerate(stdin, 1):
        if not line.strip():
            continue
        try:
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise InvalidInputError(f"line {number} is not JSON ({exc})") from None
            out: Any = runtime(value, **options)
        except InvalidInputError as exc:
            failed += 1
            out = {"error": str(exc)}
        stdout.write(json.dumps(out, ensure_ascii=False, default=_jsonable) + "\n")
        stdout.flush()
    return 1 if failed else 0


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["serve"] and not os.path.isfile("serve"):
        return _serve_main(given[1:])

    parser = argparse.ArgumentParser(
        prog="onnxmeta_runtime", description="Run a self-contained ONNX model.",
        epilog="JSON lines: with '-' as the input (or no input and stdin a pipe), each line of stdin is one JSON "
               "input (a text, a {\"question\": ..., \"context\": ...} object, ...) and each result is written as "
               "one JSON line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (metadata format {FORMAT_VERSION})")
    parser.add_argument("model", help="a self-contained .onnx file")
    parser.add_argument("inputs", nargs="*",
                        help="what to run the model on: texts (question-answering: a question and a context); "
                             "'-' to read JSON lines from stdin")
    parser.add_argument("--inspect", action="store_true",
                        help="print a summary of what the file carries (no onnxruntime needed) and exit")
    parser.add_argument("--metadata", action="store_true", help="print the embedded metadata as JSON and exit")
    parser.add_argument("--task", help="run as this task instead of the embedded one")
    parser.add_argument("--options", default="{}", metavar="JSON",
                        help='task options as a JSON object, e.g. \'{"aggregation_strategy": "simple"}\'')
    parser.add_argument("--output", metavar="DIR",
                        help="the folder image outputs are written to (depth maps, masks, images; default: beside each "
                             "input); for text-to-audio, the WAV file to write (speech.wav)")
    args = parser.parse_args(argv)
    lines = args.inputs == ["-"] or (not args.inputs and not sys.stdin.isatty())
    if not (args.inputs or lines or args.inspect or args.metadata):
        parser.error("pass the inputs after the model, '-' to read JSON lines from stdin, or --inspect")
    try:
        if args.inspect:
            print(_summary(_model_path(args.model)))
            return 0
        if args.metadata:
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
        if lines:
            return _json_lines(runtime, options, sys.stdin, sys.stdout)
        for text in runtime._task.cli(args.inputs, options, args.output):
            print(text, end="", flush=True)
    except MetadataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
