"""Bad inputs everywhere: paths that are not ONNX files, and values that are not texts, for
read_metadata, Runtime and the authoring CLI. Each is an error of the hierarchy with a clear message,
or a defined result."""

from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path

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
        assert str(info.value) == (_runtime_message(tmp_path, kind, message) if call is rt.Runtime else message)


def _runtime_message(tmp_path, kind, message):
    """What a Runtime says: for a directory, that it is not an encoder-decoder's export folder either (it runs those)."""
    if kind != "directory":
        return message
    return (f"{tmp_path} is a directory, not an encoder-decoder export (encoder_model.onnx and decoders); "
            "pass the .onnx file inside it")


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


# -- the authoring CLI: "error: ..." on stderr, exit 1, never a traceback ---------------------------

CORPUS = Path(__file__).parents[1] / "corpus"


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from authoring.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "png"])
def test_cli_on_files_that_are_not_onnx(tmp_path, capsys, kind, bert_classifier):
    path, message = _files(tmp_path)[kind]
    assert _cli(["inspect", str(path)], capsys) == (1, "", f"error: {message}\n")
    assert _cli(["validate", str(path)], capsys) == (1, f"FAIL metadata: {message}\n", "")
    # embed checks the ONNX file before the slow model discovery (a folder means: embed every .onnx file in it)
    if kind != "directory":
        assert _cli(["embed", str(path), str(bert_classifier.folder)], capsys) == (1, "", f"error: {message}\n")


def test_cli_embed_with_bad_model_sources_and_outputs(tmp_path, capsys, bert_classifier):
    model = str(bert_classifier.onnx)
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert _cli(["embed", model, str(tmp_path / "nomodel")], capsys) == (1, "", f"error: no such folder: {tmp_path / 'nomodel'}\n")
    assert _cli(["embed", model, str(tmp_path)], capsys) == (
        1, "", f"error: {tmp_path} has no config.json; is it a Hugging Face model folder?\n")
    assert _cli(["embed", model, str(a_file)], capsys)[2].startswith(f"error: {a_file} is a file; pass the model's folder")
    # an output whose folder is a file: the file system's refusal, as one line
    assert _cli(["embed", model, str(bert_classifier.folder), "-o", str(a_file / "out.onnx")], capsys) == (
        1, "", f"error: File exists: {a_file}\n")


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.onnx")))
def test_cli_on_every_crafted_file(name, capsys):
    """inspect (human and JSON) and validate on hostile files: a result or one error line, exit 0 or 1."""
    for argv in (["inspect", str(CORPUS / name)], ["inspect", "--json", "--show-metadata", str(CORPUS / name)],
                 ["validate", str(CORPUS / name)]):
        code, out, err = _cli(argv, capsys)
        assert code in (0, 1), argv
        if argv[0] == "inspect" and code == 1:
            assert out == "" and err.startswith("error: ") and err.count("\n") == 1, (argv, err)
        assert "Traceback" not in out + err


# -- Runtime calls: inputs that are not texts, empty and very long texts -----------------------------


@pytest.fixture(scope="module")
def runtime():
    return rt.Runtime(CORPUS / "v2_0.onnx")


@pytest.mark.parametrize("bad, got", [(None, "NoneType"), (3, "int"), (b"text", "bytes"), (["ok", None], "NoneType"),
                                      ([["nested"]], "list"), ({"text": 3}, "dict"), (("a", "b"), "tuple")])
def test_inputs_that_are_not_texts(runtime, bad, got):
    with pytest.raises(rt.InvalidInputError) as info:
        runtime(bad)
    assert str(info.value) == ("text-classification takes a string, a {'text': ..., 'text_pair': ...} dict, or a list "
                               f"of those; got {got}")


def test_empty_texts_and_lists_have_defined_results(runtime):
    # an empty text is [CLS] [SEP]: the model still scores it (here both logits are 0: a tie)
    assert runtime("") == [{"label": "NEGATIVE", "score": 0.5}]
    assert runtime([]) == []
    assert runtime(["", "i love this movie"])[1]["label"] == "POSITIVE"


def test_very_long_texts_are_truncated_to_the_model_limit(runtime):
    """The runtime always truncates, as the transformers pipeline does (model_max_length 16 here): a text
    of 200000 words gives the result of its first 14 words plus the special tokens."""
    long_text = "hate " * 14 + "love " * 200_000
    assert runtime(long_text) == runtime("hate " * 14)
    encoding = runtime.tokenizer.encode([long_text])[0]
    assert len(encoding.ids) == 16 and encoding.overflowing


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "png"])
def test_runtime_command_line_on_files_that_are_not_onnx(tmp_path, capsys, kind):
    path, message = _files(tmp_path)[kind]
    for argv in ([str(path)], [str(path), "some text"]):
        assert rt._main(argv) == 1
        assert capsys.readouterr() == ("", f"error: {_runtime_message(tmp_path, kind, message)}\n")
