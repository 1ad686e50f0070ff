"""Crash-safe file writing, shared by the embedder and the encoder-decoder merge: a temp file fsynced and renamed
over its target, positioned writes that finish, copies in the kernel, and the clean-up after writers that were killed.

Callers reach these through the module (``fileio.atomic_write(...)``), so that a test can replace one for all of them.
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from onnxmeta_runtime import MetadataEmbeddingError

_COPY_CHUNK = 1 << 20
_WRITEBACK_CHUNK = 16 << 20  # copied, then handed to the disk, this much at a time


def copy_range(src: int, dst: int, start: int, end: int, dst_pos: int) -> None:
    """Copy bytes [start, end) of fd src to fd dst at dst_pos; in the kernel (copy_file_range) where it can."""
    pos, out = start, dst_pos
    if hasattr(os, "copy_file_range"):
        try:
            while pos < end:
                n = os.copy_file_range(src, dst, min(end - pos, _WRITEBACK_CHUNK), pos, out)
                if n == 0:
                    break
                _start_writeback(dst, out, n)
                pos, out = pos + n, out + n
        except OSError as exc:  # filesystems and kernels without it: copy the rest in user space
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
    while pos < end:
        chunk = os.pread(src, min(end - pos, _COPY_CHUNK), pos)
        if not chunk:
            raise MetadataEmbeddingError(f"the input file shrank while it was being copied (at byte {pos})")
        pwrite_all(dst, chunk, out)
        _start_writeback(dst, out, len(chunk))
        pos, out = pos + len(chunk), out + len(chunk)


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing [offset, offset + length) to disk now, so that the final fsync waits only for the end.

    Linux's POSIX_FADV_DONTNEED starts writeback of dirty pages and drops only clean ones, so what was
    just written stays cached (a copy of 400 MB with its fsync goes from ~0.24 s to ~0.17 s here).
    """
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def pwrite_all(fd: int, data: bytes, pos: int) -> None:
    """Write all of data at pos (os.pwrite may write less than it is given)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that a rename or unlink in it survives a crash; where a folder cannot be opened, nothing."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def remove_stale_temps(dst: Path) -> list[str]:
    """Delete temp files that writers killed before they could clean up (SIGKILL, power loss) left beside dst.

    A temp file is named .<dst name>.<pid>.<random>.tmp; it is stale when process pid is gone. A live
    process's file is never touched, so concurrent writers into one folder are safe. Returns the names removed.
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


def atomic_write(dst: Path, write: Callable[[int, str], None], mode_from: Path) -> None:
    """Write to a temp file in dst's folder, fsync, rename over dst; on any failure leave dst untouched.

    write(fd, temp path) fills the temp file; it takes mode_from's permission bits.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.{os.getpid()}.", suffix=".tmp", dir=dst.parent)
    try:
        try:
            write(fd, tmp)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, os.stat(mode_from).st_mode & 0o7777)
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(dst.parent)
