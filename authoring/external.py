"""External data: the files an ONNX model (> 2 GB, .onnx + data file) keeps its tensors in.

The locations are found by walking the graph's messages with the runtime's scanner primitives: field
heads are read, tensor payloads skipped by seeking, so neither the graph nor the data files are loaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, NamedTuple

import onnxmeta_runtime as rt
from onnxmeta_runtime import MetadataValidationError

# The message fields that can hold tensors, by message kind: field number -> kind of the submessage.
_SUBMESSAGES = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 8, 13, 14, 1
_MAX_DEPTH = 64  # subgraphs nest; a hostile file must not exhaust the stack


class ExternalTensor(NamedTuple):
    """A tensor whose data lives in another file, location relative to the model's folder."""

    name: str
    location: str


def _tensor(f: IO[bytes], start: int, end: int) -> ExternalTensor | None:
    name, location, external = "", None, False
    for field in rt.iter_fields(f, start, end):
        if field.number == _TENSOR_DATA_LOCATION and field.wire_type == rt.WIRE_VARINT:
            f.seek(field.data_start)
            external = rt.read_varint(f.read(10))[0] == _EXTERNAL
        elif (field.wire_type != rt.WIRE_LEN or field.number not in (_TENSOR_NAME, _TENSOR_EXTERNAL_DATA)
              or field.end - field.data_start > 1 << 16):
            continue
        f.seek(field.data_start)
        body = f.read(field.end - field.data_start)
        if field.number == _TENSOR_NAME:
            name = body.decode("utf-8", "replace")
        elif field.number == _TENSOR_EXTERNAL_DATA:
            key, value = rt.string_entry(body)
            if key == "location":
                location = value
    return ExternalTensor(name, location) if external and location is not None else None


def _walk(f: IO[bytes], kind: str, start: int, end: int, depth: int, out: list[ExternalTensor]) -> None:
    if depth > _MAX_DEPTH:
        raise rt.MetadataReadError(f"graph nests deeper than {_MAX_DEPTH} levels")
    children = _SUBMESSAGES[kind]
    for field in rt.iter_fields(f, start, end):
        child = children.get(field.number)
        if child is None or field.wire_type != rt.WIRE_LEN:
            continue
        if child == "tensor":
            tensor = _tensor(f, field.data_start, field.end)
            if tensor is not None:
                out.append(tensor)
        else:
            _walk(f, child, field.data_start, field.end, depth + 1, out)


def external_tensors(path: str | os.PathLike[str]) -> list[ExternalTensor]:
    """The tensors of a model stored as external data, in graph order (the data files are not opened)."""
    scan = rt.scan_model(path)
    out: list[ExternalTensor] = []
    with open(path, "rb") as f:
        for field in scan.fields:
            kind = _SUBMESSAGES["model"].get(field.number)
            if kind is not None and field.wire_type == rt.WIRE_LEN:
                _walk(f, kind, field.data_start, field.end, 0, out)
    return out


def data_files(path: str | os.PathLike[str]) -> list[str]:
    """The external data files of a model, relative to its folder; refuses any that escape that folder."""
    folder = Path(path).resolve().parent
    files: list[str] = []
    for tensor in external_tensors(path):
        loc = tensor.location
        parts = PurePosixPath(loc.replace("\\", "/")).parts
        escapes = (not loc or PurePosixPath(loc).is_absolute() or PureWindowsPath(loc).is_absolute()
                   or PureWindowsPath(loc).drive or ".." in parts)
        if not escapes:
            resolved = (folder / loc).resolve()
            escapes = folder != resolved and folder not in resolved.parents
        if escapes:
            raise MetadataValidationError(
                f"tensor {tensor.name!r} keeps its data at {loc!r}, outside the model's folder; external data must "
                "be a relative path inside it (no absolute paths, no '..', no links out)"
            )
        if loc not in files:
            files.append(loc)
    return files


def check_data_files(path: str | os.PathLike[str]) -> list[str]:
    """data_files(path), each checked to exist beside the model."""
    files = data_files(path)
    folder = Path(path).parent
    missing = [loc for loc in files if not (folder / loc).is_file()]
    if missing:
        raise MetadataValidationError(
            f"external data {', '.join(map(repr, missing))} of {Path(path).name} is missing from {folder}; "
            "keep the data files next to the .onnx file"
        )
    return files


def copy_data_files(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> list[str]:
    """Copy the external data of model src beside dst (same relative paths); returns the files copied.

    A data file already in place (the same file) is left alone; each copy lands atomically.
    """
    src_folder, dst_folder = Path(src).parent, Path(dst).parent
    copied = []
    for loc in check_data_files(src):
        source, target = src_folder / loc, dst_folder / loc
        if target.exists() and os.path.samefile(source, target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)  # sendfile/copy_file_range in the kernel on Linux
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        copied.append(loc)
    return copied
