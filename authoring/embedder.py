"""Write metadata into an ONNX file: streaming, byte-for-byte copy of the graph, atomic replace."""

from __future__ import annotations

import glob
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Sequence

import onnxmeta_runtime as rt
from onnxmeta_runtime import MetadataEmbeddingError, MetadataError

from .discovery import EMBEDDING_LEVELS, MetadataDiscovery, embedding_level

logger = logging.getLogger("onnxmeta")

_COPY_CHUNK = 1 << 20
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


def _copy_range(src: IO[bytes], dst: IO[bytes], start: int, end: int) -> None:
    src.seek(start)
    left = end - start
    while left:
        chunk = src.read(min(left, _COPY_CHUNK))
        if not chunk:
            raise MetadataEmbeddingError(f"the input file shrank while it was being copied (at byte {end - left})")
        dst.write(chunk)
        left -= len(chunk)


def _remove_stale_temps(dst: Path) -> list[str]:
    """Delete temp files that embeds killed before they could clean up (SIGKILL, power loss) left beside dst.

    A temp file is named .<dst name>.<pid>.<random>.tmp; it is stale when process pid is gone. A live
    process's file is never touched, so concurrent embeds into one folder are safe. Returns the names removed.
    """
    if os.name != "posix":
        return []  # os.kill(pid, 0) does not probe a process elsewhere
    removed = []
    for path in dst.parent.glob(f".{glob.escape(dst.name)}.*.tmp"):
        pid_text = path.name[len(dst.name) + 2:].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # alive (or alive under another user: PermissionError below)
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        try:
            path.unlink()
            removed.append(path.name)
        except FileNotFoundError:
            pass
    return removed


def _atomic_write(dst: Path, write: Callable[[IO[bytes], str], None], mode_from: Path) -> None:
    """Write to a temp file in dst's folder, fsync, rename over dst; on any failure leave dst untouched."""
    for name in _remove_stale_temps(dst):
        logger.info("removed %s, left by an embed that was killed", name)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.{os.getpid()}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out, tmp)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, os.stat(mode_from).st_mode & 0o7777)
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(dst.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_props(onnx_path: str | os.PathLike[str], props: Sequence[tuple[str, str]],
                output_path: str | os.PathLike[str] | None = None, *, verify: bool = True) -> list[str]:
    """Replace the format's metadata_props of an ONNX file with props, keeping every other byte.

    The top-level fields are copied byte for byte in their order, without parsing the graph; the old
    format entries are dropped and the new ones written where the first metadata entry stood (or before
    the first field after metadata_props). Returns the keys of the foreign entries that were kept.
    """
    src = Path(onnx_path)
    dst = Path(output_path) if output_path is not None else src
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

    def write(out: IO[bytes], tmp: str) -> None:
        with open(src, "rb") as f:
            if os.fstat(f.fileno()).st_size != scan.size:
                raise MetadataEmbeddingError(f"{src.name} changed while it was being read; try again")
            for fl in scan.fields:
                if fl.start == insert_at:
                    out.write(block)
                if fl.start not in dropped:
                    _copy_range(f, out, fl.start, fl.end)
            if insert_at == scan.size:
                out.write(block)
        out.flush()
        if verify:
            _verify(tmp, props, preserved, expected_size)

    dst.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(dst, write, src)
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
) -> EmbedReport:
    """Embed a metadata dict (as discovered) into an ONNX file; compress_threshold in bytes or None.

    export_config, unless given, records how the graph was exported (ir_version, opsets, producer).
    """
    if rt.KEY_EXPORT_CONFIG not in metadata:
        metadata = {**metadata, rt.KEY_EXPORT_CONFIG: rt.model_info(onnx_path)}
    props = rt.encode_metadata(metadata, compress_threshold=compress_threshold)
    preserved = write_props(onnx_path, props, output_path, verify=validate)
    entries = []
    for key, value in props:
        logical = key.removesuffix(rt.COMPRESSED_SUFFIX)
        text = value if logical == key else rt.value_text(logical, metadata.get(logical, value))
        entries.append(EmbeddedEntry(logical, len(_entry_field(key, value)), len(text.encode("utf-8")), logical != key))
    report = EmbedReport(os.fspath(output_path or onnx_path), entries, preserved)
    level = EMBEDDING_LEVELS.get(str(metadata.get(rt.KEY_EMBEDDING_LEVEL)))
    if level is not None and report.total_bytes > level.max_size_kb * 1024:
        report.warnings.append(
            f"embedded metadata is {report.total_bytes / 1024:.1f} KB, over the {level.max_size_kb} KB "
            f"guide for the {level.name} level"
        )
    for message in report.warnings:
        logger.warning(message)
    return report


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
) -> dict[str, Any]:
    """Discover a model's metadata and embed it into an ONNX file; returns the metadata embedded.

    include_vocab selects the full level (tokenizer.json with its vocabulary). output_path None
    replaces the input atomically.
    """
    chosen = embedding_level("full" if include_vocab else (level or "essential"))
    metadata = MetadataDiscovery().discover(model_name_or_path, level=chosen.name, task=task)
    embed(onnx_path, metadata, output_path,
          compress_threshold=compress_threshold(chosen.name, compress_large_configs, compress_threshold_kb),
          validate=validate)
    return metadata


def compress_threshold(level: str, compress: bool, threshold_kb: float | None) -> int | None:
    """Bytes above which values are compressed: the explicit threshold, else the level's; None for off."""
    if not compress:
        return None
    kb = threshold_kb if threshold_kb is not None else embedding_level(level).compress_threshold_kb
    if kb < 0:
        raise MetadataEmbeddingError(f"compress threshold must be >= 0 KB, got {kb}")
    return int(kb * 1024)
