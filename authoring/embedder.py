"""Write metadata into an ONNX file: streaming, the graph copied byte for byte in the kernel, crash-safe
replacement (a rewritten tail through an undo journal in place, a temp file renamed otherwise)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxmeta_runtime as rt
from onnxmeta_runtime import MetadataEmbeddingError, MetadataError

from . import fileio
from .discovery import EMBEDDING_LEVELS, MetadataDiscovery, embedding_level
from .external import copy_data_files, data_files
from .seq2seq import file_layout

logger = logging.getLogger("onnxmeta")

_CAN_LOCK = os.name == "posix"  # the in-place rewrite needs flock; elsewhere every write takes the temp-file way
_TAG_METADATA_PROPS = (rt.FIELD_METADATA_PROPS << 3) | 2


@dataclass
class EmbeddedEntry:
    """One metadata_props entry as written."""

    key: str
    stored_bytes: int
    text_bytes: int
    compressed: bool


@dataclass
class EmbedReport:
    """What embed() wrote."""

    output_path: str
    entries: list[EmbeddedEntry]
    preserved_keys: list[str]
    warnings: list[str] = field(default_factory=list)
    data_files: list[str] = field(default_factory=list)
    """External data files of the model, relative to its folder."""
    copied_data_files: list[str] = field(default_factory=list)
    """The data files copied beside an output in another folder, so that their locations stay valid."""

    @property
    def total_bytes(self) -> int:
        return sum(e.stored_bytes for e in self.entries)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _entry_field(key: str, value: str) -> bytes:
    """A serialized top-level metadata_props field (StringStringEntryProto: key = 1, value = 2)."""
    k, v = key.encode("utf-8"), value.encode("utf-8")
    body = b"\x0a" + _varint_bytes(len(k)) + k + b"\x12" + _varint_bytes(len(v)) + v
    return _varint_bytes(_TAG_METADATA_PROPS) + _varint_bytes(len(body)) + body


# In-place rewrite of the metadata at the end of a file. Truncating and appending in place is not atomic:
# killed half-way, the file would hold the graph and half an entry. So the old tail is first saved,
# fsynced, to an undo journal beside the model; only then is the model's tail rewritten and fsynced, and
# the journal removed. An interrupted rewrite is undone (old tail written back, file cut to its old size)
# by the next write to that file; a journal that does not check out was interrupted before the model was
# touched and is dropped. An advisory lock (flock) keeps two writers apart. Readers are not locked out:
# one reading the file during the few milliseconds of the rewrite can see a torn tail.
_UNDO_MAGIC = "onnxmeta-undo/1"
_MAX_TAIL = 64 * 2**20  # larger metadata goes the temp-file way


def _undo_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.onnxmeta-undo")


def _recover(fd: int, path: Path) -> None:
    """Undo an interrupted in-place rewrite of path (open as fd, locked) if its journal says so."""
    journal = _undo_path(path)
    try:
        raw = journal.read_bytes()
    except FileNotFoundError:
        return
    head, _, tail = raw.partition(b"\n")
    try:
        header = json.loads(head)
        valid = (header.get("format") == _UNDO_MAGIC and hashlib.sha256(tail).hexdigest() == header["sha256"]
                 and header["offset"] + len(tail) == header["size"])
    except (ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if valid:
        fileio.pwrite_all(fd, tail, header["offset"])
        os.ftruncate(fd, header["size"])
        os.fsync(fd)
        logger.warning("restored %s from an interrupted in-place embed (%s)", path.name, journal.name)
    journal.unlink()
    fileio.fsync_dir(path.parent)


def recover(path: str | os.PathLike[str]) -> None:
    """Undo an interrupted in-place embed of path, if one left its journal; embed and write_props do this first."""
    path = Path(path)
    if not _undo_path(path).exists():
        return
    import fcntl

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _recover(fd, path)
    finally:
        os.close(fd)


def _rewrite_tail(path: Path, scan: rt.ModelScan, offset: int, tail: bytes, check: Callable[[], None]) -> None:
    """Replace bytes [offset, end) of path with tail, crash-safe through the undo journal; check() verifies."""
    import fcntl

    journal = _undo_path(path)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _recover(fd, path)
        if os.fstat(fd).st_size != scan.size:
            raise MetadataEmbeddingError(f"{path.name} changed while it was being read; try again")
        old = os.pread(fd, scan.size - offset, offset)
        header = {"format": _UNDO_MAGIC, "offset": offset, "size": scan.size, "sha256": hashlib.sha256(old).hexdigest()}
        with open(journal, "wb") as j:
            j.write(rt.canonical_json(header).encode("utf-8") + b"\n" + old)
            j.flush()
            os.fsync(j.fileno())
        fileio.fsync_dir(path.parent)
        try:
            fileio.pwrite_all(fd, tail, offset)
            os.ftruncate(fd, offset + len(tail))
            os.fsync(fd)
            check()
        except BaseException:
            _recover(fd, path)
            raise
        journal.unlink()
        fileio.fsync_dir(path.parent)
    finally:
        os.close(fd)


def write_props(onnx_path: str | os.PathLike[str], props: Sequence[tuple[str, str]],
                output_path: str | os.PathLike[str] | None = None, *, verify: bool = True,
                in_place: bool = False) -> list[str]:
    """Replace the format's metadata_props of an ONNX file with props, keeping every other byte.

    The top-level fields are copied byte for byte in their order, without parsing the graph; the old
    format entries are dropped and the new ones written where the first metadata entry stood (or before
    the first field after metadata_props). Returns the keys of the foreign entries that were kept.

    By default the file is written to a temp file beside the output (kernel copies of the unchanged
    fields), fsynced and renamed over it: the output is the old file or the complete new one, whatever
    happens, and readers that have it open keep the old bytes. With in_place, replacing a file whose
    metadata_props close it (as onnx.save and this tool write them) only rewrites its tail, through an
    fsynced undo journal (see _rewrite_tail): faster, but a process killed half-way leaves a torn file
    until the next write or recover() restores it, and a reader during the rewrite can see it torn.
    """
    src = Path(onnx_path)
    dst = Path(output_path) if output_path is not None else src
    same_file = dst == src or (dst.exists() and os.path.samefile(src, dst))
    recover(src)
    for name in fileio.remove_stale_temps(dst):
        logger.info("removed %s, left by an embed that was killed", name)
    scan = rt.scan_model(src)
    dropped = {e.field.start for e in scan.entries if rt.is_format_key(e.key.removesuffix(rt.COMPRESSED_SUFFIX))}
    preserved = [e.key for e in scan.entries if e.field.start not in dropped]
    clash = sorted({k for k, _ in props} & set(preserved))
    if clash:
        raise MetadataEmbeddingError(f"keys {clash} are already used by metadata this tool does not own")
    starts = [e.field.start for e in scan.entries] + [
        f.start for f in scan.fields if f.number > rt.FIELD_METADATA_PROPS
    ]
    insert_at = min(starts, default=scan.size)
    block = b"".join(_entry_field(k, v) for k, v in props)
    expected_size = scan.size + len(block) - sum(f.end - f.start for f in scan.fields if f.start in dropped)
    tail_fields = [f for f in scan.fields if f.start >= insert_at]

    if (in_place and same_file and _CAN_LOCK and os.access(src, os.W_OK) and scan.size - insert_at <= _MAX_TAIL
            and all(f.number == rt.FIELD_METADATA_PROPS for f in tail_fields)):
        with open(src, "rb") as f:
            kept = b""
            for fl in tail_fields:
                if fl.start not in dropped:
                    f.seek(fl.start)
                    kept += f.read(fl.end - fl.start)
        _rewrite_tail(src, scan, insert_at, block + kept,
                      lambda: _verify(os.fspath(src), props, preserved, expected_size) if verify else None)
        return preserved

    def write(out: int, tmp: str) -> None:
        with open(src, "rb") as f:
            fd = f.fileno()
            if os.fstat(fd).st_size != scan.size:
                raise MetadataEmbeddingError(f"{src.name} changed while it was being read; try again")
            pos = 0
            for fl in scan.fields:
                if fl.start == insert_at:
                    fileio.pwrite_all(out, block, pos)
                    pos += len(block)
                if fl.start not in dropped:
                    fileio.copy_range(fd, out, fl.start, fl.end, pos)
                    pos += fl.end - fl.start
            if insert_at == scan.size:
                fileio.pwrite_all(out, block, pos)
        if verify:
            _verify(tmp, props, preserved, expected_size)

    dst.parent.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write(dst, write, src)
    return preserved


def _verify(path: str, props: Sequence[tuple[str, str]], preserved: list[str], expected_size: int) -> None:
    size = os.path.getsize(path)
    if size != expected_size:
        raise MetadataEmbeddingError(f"wrote {size} bytes, expected {expected_size}; nothing was replaced")
    try:
        scan = rt.scan_model(path)
    except MetadataError as exc:
        raise MetadataEmbeddingError(f"the written file does not read back: {exc}") from None
    written = [(e.key, e.value) for e in scan.entries]
    ours = [kv for kv in written if kv[0] not in preserved]
    if ours != list(props):
        raise MetadataEmbeddingError("the written metadata does not read back identically; nothing was replaced")
    rt.decode_metadata(ours)


def embed(
    onnx_path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    output_path: str | os.PathLike[str] | None = None,
    *,
    compress_threshold: int | None = rt.DEFAULT_COMPRESS_THRESHOLD,
    validate: bool = True,
    in_place: bool = False,
) -> EmbedReport:
    """Embed a metadata dict (as discovered) into an ONNX file; compress_threshold in bytes or None.

    export_config, unless given, records how the graph was exported (ir_version, opsets, producer);
    hf_graph_layout, unless given, is kept for a file that has one (recognised again from the graph's names).
    in_place rewrites only the metadata at the end of the file (see write_props) instead of replacing
    the file atomically.
    """
    recover(onnx_path)
    if rt.KEY_EXPORT_CONFIG not in metadata:
        metadata = {**metadata, rt.KEY_EXPORT_CONFIG: rt.model_info(onnx_path)}
    if rt.KEY_GRAPH_LAYOUT not in metadata and any(
            e.key.removesuffix(rt.COMPRESSED_SUFFIX) == rt.KEY_GRAPH_LAYOUT for e in rt.scan_model(onnx_path).entries):
        # an encoder-decoder in one file keeps its layout, recognised again from the graph's names
        layout = file_layout(onnx_path)
        if layout is not None:
            metadata = {**metadata, rt.KEY_GRAPH_LAYOUT: layout}
    props = rt.encode_metadata(metadata, compress_threshold=compress_threshold)
    # External data stays where the graph says it is, relative to the model: an output in another folder
    # gets copies of the data files (before the model, so that a model never points at missing data).
    files = data_files(onnx_path)
    copied = copy_data_files(onnx_path, output_path) if files and output_path is not None else []
    preserved = write_props(onnx_path, props, output_path, verify=validate, in_place=in_place)
    entries = []
    for key, value in props:
        logical = key.removesuffix(rt.COMPRESSED_SUFFIX)
        text = value if logical == key else rt.value_text(logical, metadata.get(logical, value))
        entries.append(EmbeddedEntry(logical, len(_entry_field(key, value)), len(text.encode("utf-8")), logical != key))
    report = EmbedReport(os.fspath(output_path or onnx_path), entries, preserved, data_files=files, copied_data_files=copied)
    level = EMBEDDING_LEVELS.get(str(metadata.get(rt.KEY_EMBEDDING_LEVEL)))
    if level is not None and report.total_bytes > level.max_size_kb * 1024:
        report.warnings.append(
            f"embedded metadata is {report.total_bytes / 1024:.1f} KB, over the {level.max_size_kb} KB "
            f"guide for the {level.name} level"
        )
    for message in report.warnings:
        logger.warning(message)
    return report


@dataclass
class FolderResult:
    """One file of embed_folder: its report, or the error that stopped it."""

    onnx_path: str
    report: EmbedReport | None = None
    error: Exception | None = None


def embed_folder(
    folder: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    output_folder: str | os.PathLike[str] | None = None,
    *,
    compress_threshold: int | None = rt.DEFAULT_COMPRESS_THRESHOLD,
    validate: bool = True,
    max_workers: int | None = None,
    progress: Callable[[int, int, FolderResult], None] | None = None,
    in_place: bool = False,
) -> list[FolderResult]:
    """Embed the same metadata into every .onnx file of an export folder (Optimum's encoder_model.onnx,
    decoder_model.onnx, decoder_with_past_model.onnx, decoder_model_merged.onnx, model.onnx...) in a
    thread pool. A failed file does not stop the others; progress(done, total, result) is called as each
    finishes. Results come in file-name order.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.onnx") if p.is_file())
    if not files:
        raise MetadataEmbeddingError(f"no .onnx files in {folder}")
    out_folder = Path(output_folder) if output_folder is not None else None

    def one(path: Path) -> FolderResult:
        try:
            report = embed(path, metadata, None if out_folder is None else out_folder / path.name,
                           compress_threshold=compress_threshold, validate=validate, in_place=in_place)
            return FolderResult(os.fspath(path), report)
        except (MetadataError, OSError) as exc:
            return FolderResult(os.fspath(path), error=exc)

    results: dict[Path, FolderResult] = {}
    # The work is file I/O and zlib, which release the GIL: threads overlap them.
    with ThreadPoolExecutor(max_workers=max_workers or min(len(files), 8)) as pool:
        futures = {pool.submit(one, path): path for path in files}
        for future in as_completed(futures):
            results[futures[future]] = result = future.result()
            if progress is not None:
                progress(len(results), len(files), result)
    return [results[path] for path in files]


def embed_metadata(
    onnx_path: str | os.PathLike[str],
    model_name_or_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    include_vocab: bool = False,
    compress_large_configs: bool = True,
    validate: bool = True,
    *,
    level: str | None = None,
    task: str | None = None,
    compress_threshold_kb: float | None = None,
    in_place: bool = False,
) -> dict[str, Any]:
    """Discover a model's metadata and embed it into an ONNX file; returns the metadata embedded.

    include_vocab selects the full level (tokenizer.json with its vocabulary). output_path None
    replaces the input atomically.
    """
    chosen = embedding_level("full" if include_vocab else (level or "essential"))
    metadata = MetadataDiscovery().discover(model_name_or_path, level=chosen.name, task=task)
    embed(onnx_path, metadata, output_path,
          compress_threshold=compress_threshold(chosen.name, compress_large_configs, compress_threshold_kb),
          validate=validate, in_place=in_place)
    return metadata


def compress_threshold(level: str, compress: bool, threshold_kb: float | None) -> int | None:
    """Bytes above which values are compressed: the explicit threshold, else the level's; None for off."""
    if not compress:
        return None
    kb = threshold_kb if threshold_kb is not None else embedding_level(level).compress_threshold_kb
    if kb < 0:
        raise MetadataEmbeddingError(f"compress threshold must be >= 0 KB, got {kb}")
    return int(kb * 1024)
