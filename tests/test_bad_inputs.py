"""Bad inputs everywhere: paths that are not ONNX files, and values that are not texts, for
read_metadata, Runtime and the authoring CLI. Each is an error of the hierarchy with a clear message,
or a defined result."""

from __future__ import annotations

import os
import threading
import zlib

import pytest
from runtime_under_test import rt

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 17


def _png(tmp_path):
    path = tmp_path / "picture.onnx"
    path.write_bytes(PNG + zlib.compress(b"\0" * 64))
    return path


@pytest.mark.parametrize("bad, message", [
    (None, "a model path must be a str or os.PathLike, got NoneType"),
    (3, "a model path must be a str or os.PathLike, got int"),
    (b"model.onnx", "a model path must be a str or os.PathLike, got bytes"),
    ("", "the model path is empty; pass the path of an .onnx file"),
])
def test_paths_that_are_not_paths(bad, message):
    for call in (rt.read_metadata, rt.scan_model, rt.Runtime):
        with pytest.raises(rt.InvalidInputError) as info:
            call(bad)
        assert str(info.value) == message


def _files(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model\n")
    return {
        "missing": (tmp_path / "nope.onnx", f"no such file: {tmp_path / 'nope.onnx'}"),
        "directory": (tmp_path, f"{tmp_path} is a directory; pass the .onnx file inside it"),
        "empty": (empty, "empty.onnx is not an ONNX model: it has no graph (field 7)"),
        "text": (text, "notes.txt is not a readable ONNX model: unsupported wire type 4 in field 13 (at byte 2)"),
        "png": (_png(tmp_path), "picture.onnx is not a readable ONNX model: field number 0 (at byte 10)"),
    }


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "png"])
def test_files_that_are_not_onnx(tmp_path, kind):
    path, message = _files(tmp_path)[kind]
    for call in (rt.read_metadata, rt.Runtime):
        with pytest.raises(rt.MetadataReadError) as info:
            call(path)
        assert str(info.value) == message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            rt.read_metadata(fifo)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the thread reports whatever happened
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        with open(fifo, "wb"):  # release the blocked reader so the test process can exit
            pass
        pytest.fail("read_metadata blocked on a FIFO")
    assert isinstance(outcome[0], rt.MetadataReadError)
    assert str(outcome[0]) == f"{fifo} is not a regular file (a pipe, socket or device); pass an .onnx file"
