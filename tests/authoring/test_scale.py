"""Scale: in-place and kernel-copy embedding, crash recovery, external data, export folders, many models."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import authoring
import onnxmeta_runtime as rt
from authoring import cli, embedder, external, fileio
from helpers import ROOT, optimum_export, shared


def graph_bytes(path):
    raw = Path(path).read_bytes()
    return [raw[f.start:f.end] for f in rt.scan_model(path).fields if f.number != rt.FIELD_METADATA_PROPS]


@pytest.fixture(scope="module")
def metadata(bert_embedded):
    return rt.read_metadata(bert_embedded)


@pytest.fixture
def plain(bert_classifier, tmp_path):
    path = tmp_path / "model.onnx"
    shutil.copyfile(bert_classifier.onnx, path)
    return path


def no_temp_write(*args, **kwargs):
    raise AssertionError("the temp-file path was taken")


# -- in place -------------------------------------------------------------------------------------------


def test_in_place_embed_rewrites_only_the_tail(plain, metadata, monkeypatch):
    import onnx

    before, inode, size = plain.read_bytes(), plain.stat().st_ino, plain.stat().st_size
    monkeypatch.setattr(fileio, "atomic_write", no_temp_write)
    authoring.embed(plain, metadata, in_place=True)  # no metadata yet: an append
    assert plain.stat().st_ino == inode
    assert plain.read_bytes()[:size] == before  # every byte before the metadata untouched
    assert rt.read_metadata(plain)[rt.KEY_MODEL_CONFIG] == metadata[rt.KEY_MODEL_CONFIG]
    embedded_size = plain.stat().st_size
    authoring.embed(plain, {**metadata, rt.KEY_PIPELINE_TASK: "feature-extraction"}, in_place=True)  # replaces the tail
    assert plain.stat().st_ino == inode and plain.stat().st_size == embedded_size - 1  # "feature-extraction" is one byte shorter
    assert rt.read_metadata(plain)[rt.KEY_PIPELINE_TASK] == "feature-extraction"
    assert plain.read_bytes()[:size] == before
    onnx.checker.check_model(onnx.load(plain))
    assert rt.Runtime(plain, task="text-classification")("good")[0]["label"] in {"NEGATIVE", "NEUTRAL", "POSITIVE"}
    assert sorted(os.listdir(plain.parent)) == ["model.onnx"]  # the journal is gone


def test_default_replaces_the_file_atomically(plain, metadata, bert_classifier):
    """Without in_place the file is renamed over: a reader holding the old file keeps consistent bytes."""
    authoring.embed(plain, metadata)
    inode = plain.stat().st_ino
    with open(plain, "rb") as reader:
        before = reader.read()
        authoring.embed(plain, {**metadata, rt.KEY_PIPELINE_TASK: "fill-mask"})
        reader.seek(0)
        assert reader.read() == before  # the open file is the old one, whole
    inode_after = plain.stat().st_ino
    assert inode_after != inode
    assert rt.read_metadata(plain)[rt.KEY_PIPELINE_TASK] == "fill-mask"
    # the command line's --in-place rewrites the tail of the same file
    assert cli.main(["embed", str(plain), str(bert_classifier.folder), "--in-place", "--task", "feature-extraction"]) == 0
    assert plain.stat().st_ino == inode_after
    assert rt.read_metadata(plain)[rt.KEY_PIPELINE_TASK] == "feature-extraction"


def test_metadata_not_at_the_end_takes_the_temp_file_way(plain, metadata):
    # a top-level field after metadata_props (training_info, 20; empty) means more than the tail changes
    trailing = b"\xa2\x01\x00"
    authoring.embed(plain, metadata)
    with open(plain, "ab") as f:
        f.write(trailing)
    inode = plain.stat().st_ino
    authoring.embed(plain, {**metadata, rt.KEY_PIPELINE_TASK: "fill-mask"}, in_place=True)
    assert plain.stat().st_ino != inode  # renamed over
    assert plain.read_bytes().endswith(trailing)
    assert rt.read_metadata(plain)[rt.KEY_PIPELINE_TASK] == "fill-mask"
    assert [f.number for f in rt.scan_model(plain).fields][-1] == 20


def test_other_output_uses_kernel_copies(plain, metadata, tmp_path, monkeypatch):
    calls = []
    real = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(a[2]) or real(*a))
    authoring.embed(plain, metadata, tmp_path / "a.onnx")
    assert sum(calls) >= plain.stat().st_size  # the fields before the metadata went through the kernel
    assert graph_bytes(tmp_path / "a.onnx") == graph_bytes(plain)

    def unsupported(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    authoring.embed(plain, metadata, tmp_path / "b.onnx")  # falls back to user-space copies
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()


CRASH = """
import os, sys
import onnxmeta_runtime as rt
from authoring import embed, fileio

def torn(fd, data, pos):  # killed half-way through writing the new tail
    os.pwrite(fd, data[: len(data) // 2], pos)
    os._exit(9)

fileio.pwrite_all = torn
metadata = rt.read_metadata(sys.argv[2])
embed(sys.argv[1], {**metadata, rt.KEY_PIPELINE_TASK: "feature-extraction"}, in_place=True)
"""


def crash_in_place(path, source):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", CRASH, str(path), str(source)], env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 9, proc.stderr


def test_killed_in_place_embed_is_undone(plain, metadata, bert_embedded):
    authoring.embed(plain, metadata)
    original = plain.read_bytes()
    crash_in_place(plain, bert_embedded)
    journal = plain.with_name(".model.onnx.onnxmeta-undo")
    assert journal.is_file() and plain.read_bytes() != original
    with pytest.raises(rt.MetadataError):
        rt.read_metadata(plain)  # torn: half an entry at the end
    embedder.recover(plain)
    assert plain.read_bytes() == original and not journal.exists()


def test_next_embed_recovers_first(plain, metadata, bert_embedded, caplog):
    authoring.embed(plain, metadata)
    crash_in_place(plain, bert_embedded)
    authoring.embed(plain, {**metadata, rt.KEY_PIPELINE_TASK: "fill-mask"})
    assert "restored model.onnx from an interrupted in-place embed" in caplog.text
    assert rt.read_metadata(plain)[rt.KEY_PIPELINE_TASK] == "fill-mask"
    assert sorted(os.listdir(plain.parent)) == ["model.onnx"]


def test_a_journal_cut_short_is_dropped_without_touching_the_model(plain, metadata):
    authoring.embed(plain, metadata)
    original = plain.read_bytes()
    journal = plain.with_name(".model.onnx.onnxmeta-undo")
    journal.write_bytes(b'{"format":"onnxmeta-undo/1","offset":10,"size":20,"sha256":"00"}\nabc')  # killed while writing it
    embedder.recover(plain)
    assert plain.read_bytes() == original and not journal.exists()


# -- external data ----------------------------------------------------------------------------------------


def save_external(source, folder, location="model.onnx.data"):
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(onnx.load(source), folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    size_threshold=0, location=location)
    return folder / "model.onnx"


def test_external_data_model_reads_embeds_validates_runs(bert_classifier, bert_embedded, tmp_path, capsys):
    import onnx

    shared("bert-base-uncased")  # a real 30522-word embedding table makes the data file large
    path = save_external(bert_classifier.onnx, tmp_path / "ext")
    data = tmp_path / "ext" / "model.onnx.data"
    assert path.stat().st_size < 100_000 and data.stat().st_size > 1_000_000
    assert [t.location for t in external.external_tensors(path)][:1] == ["model.onnx.data"]
    assert cli.main(["embed", str(path), str(bert_classifier.folder), "--include-vocab"]) == 0
    assert "external data model.onnx.data: already beside the output" in capsys.readouterr().out
    # the scanner never needs the data file
    data.rename(data.with_suffix(".away"))
    assert rt.read_metadata(path)[rt.KEY_PIPELINE_TASK] == "text-classification"
    assert cli.main(["validate", str(path), "--check-metadata"]) == 1
    assert "FAIL external data: external data 'model.onnx.data' of model.onnx is missing" in capsys.readouterr().out
    data.with_suffix(".away").rename(data)
    assert cli.main(["validate", str(path)]) == 0
    assert "ok   external data: 1 data file beside the model (model.onnx.data;" in capsys.readouterr().out
    onnx.checker.check_model(str(path))
    texts = ["I love this", "terrible film", "okay"]
    got, want = rt.Runtime(path)(texts), rt.Runtime(bert_embedded)(texts)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-5)


def test_external_data_output_elsewhere_copies_the_data(bert_classifier, tmp_path, capsys):
    path = save_external(bert_classifier.onnx, tmp_path / "ext")
    out = tmp_path / "elsewhere" / "sub" / "self-contained.onnx"
    assert cli.main(["embed", str(path), str(bert_classifier.folder), "--include-vocab", "-o", str(out)]) == 0
    assert "external data model.onnx.data: copied beside the output (its location in the graph is unchanged)" \
        in capsys.readouterr().out
    copied = out.parent / "model.onnx.data"
    assert copied.read_bytes() == (tmp_path / "ext" / "model.onnx.data").read_bytes()
    assert graph_bytes(out) == graph_bytes(path)
    shutil.rmtree(tmp_path / "ext")  # the output stands on its own
    assert rt.Runtime(out)("great")[0]["label"] in {"NEGATIVE", "NEUTRAL", "POSITIVE"}
    assert sorted(os.listdir(out.parent)) == ["model.onnx.data", "self-contained.onnx"]


@pytest.mark.parametrize("location", ["../model.onnx.data", "/etc/passwd", "sub/../../x.data", "C:\\x.data"])
def test_escaping_data_locations_are_refused(bert_classifier, tmp_path, capsys, location):
    import onnx

    path = save_external(bert_classifier.onnx, tmp_path / "ext")
    model = onnx.load(path, load_external_data=False)
    model.graph.initializer[0].external_data[0].value = location
    onnx.save(model, path)
    message = f"keeps its data at {location!r}, outside the model's folder; external data must be a relative path inside it"
    with pytest.raises(rt.MetadataValidationError, match="outside the model's folder"):
        authoring.embed_metadata(path, bert_classifier.folder, tmp_path / "out" / "model.onnx")
    assert not (tmp_path / "out").exists()
    assert cli.main(["embed", str(path), str(bert_classifier.folder)]) == 1
    assert message in capsys.readouterr().err
    assert cli.main(["validate", str(path), "--check-metadata"]) == 1
    assert message in capsys.readouterr().out


def test_link_out_of_the_folder_is_refused(bert_classifier, tmp_path):
    path = save_external(bert_classifier.onnx, tmp_path / "ext")
    outside = tmp_path / "outside.data"
    (tmp_path / "ext" / "model.onnx.data").rename(outside)
    (tmp_path / "ext" / "model.onnx.data").symlink_to(outside)
    with pytest.raises(rt.MetadataValidationError, match="no links out"):
        external.data_files(path)


def test_runtime_refuses_escaping_data(bert_classifier, bert_embedded, tmp_path):
    import onnx

    path = save_external(bert_classifier.onnx, tmp_path / "ext")
    authoring.embed_metadata(path, bert_classifier.folder, include_vocab=True)
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        tensor.external_data[0].value = "../model.onnx.data"
    (tmp_path / "ext" / "sub").mkdir()
    onnx.save(model, tmp_path / "ext" / "sub" / "model.onnx")
    with pytest.raises(rt.MetadataReadError, match="External data path escapes model directory"):
        rt.Runtime(tmp_path / "ext" / "sub" / "model.onnx")


# -- export folders -----------------------------------------------------------------------------------------

OPTIMUM_NAMES = ["decoder_model.onnx", "decoder_model_merged.onnx", "decoder_with_past_model.onnx", "encoder_model.onnx"]


@pytest.fixture
def export_folder(bert_classifier, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    for name in OPTIMUM_NAMES:
        shutil.copyfile(bert_classifier.onnx, folder / name)
    (folder / "config.json").write_text("{}")  # not ONNX: left alone
    return folder


def test_folder_embed_runs_in_parallel_with_one_discovery(export_folder, bert_classifier, capsys, monkeypatch):
    discoveries = []
    real_discover = authoring.MetadataDiscovery.discover
    monkeypatch.setattr(authoring.MetadataDiscovery, "discover", lambda self, *a, **k: discoveries.append(a) or
                        real_discover(self, *a, **k))
    barrier = threading.Barrier(2, timeout=30)  # two files must be in embed() at the same time
    real_embed = embedder.embed

    def embed(path, *args, **kwargs):
        if Path(path).name in OPTIMUM_NAMES[:2]:
            barrier.wait()
        return real_embed(path, *args, **kwargs)

    monkeypatch.setattr(embedder, "embed", embed)
    before = {name: graph_bytes(export_folder / name) for name in OPTIMUM_NAMES}
    assert cli.main(["embed", str(export_folder), str(bert_classifier.folder), "--include-vocab", "-j", "4"]) == 0
    out, err = capsys.readouterr()
    assert len(discoveries) == 1
    lines = err.strip().splitlines()
    assert sorted(line.split("]")[0] + "]" for line in lines) == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert sorted(line.split(" ")[1].rstrip(":") for line in lines) == OPTIMUM_NAMES
    assert all(" entries, " in line for line in lines)
    assert "into 4 of 4 files of" in out
    for name in OPTIMUM_NAMES:
        assert rt.read_metadata(export_folder / name)[rt.KEY_EMBEDDING_LEVEL] == "full"
        assert graph_bytes(export_folder / name) == before[name]
        assert f"/{name}  " in out


def test_folder_embed_to_another_folder_and_failures(export_folder, bert_classifier, tmp_path, capsys):
    (export_folder / "broken.onnx").write_bytes(b"not a model")
    save_external(bert_classifier.onnx, export_folder, location="model.onnx_data")
    out = tmp_path / "out"
    assert cli.main(["embed", str(export_folder), str(bert_classifier.folder), "--include-vocab", "-o", str(out)]) == 1
    stdout, err = capsys.readouterr()
    assert "broken.onnx: failed: broken.onnx is not a readable ONNX model" in err
    assert "error: 1 of 6 files failed: broken.onnx:" in err
    assert "into 5 of 6 files" in stdout and "external data model.onnx_data copied beside it" in stdout
    assert sorted(os.listdir(out)) == sorted([*OPTIMUM_NAMES, "model.onnx", "model.onnx_data"])
    assert rt.Runtime(out / "model.onnx")(["fine", "bad"])[1]["label"] in {"NEGATIVE", "NEUTRAL", "POSITIVE"}
    assert rt.KEY_VERSION not in rt.read_metadata(export_folder / "encoder_model.onnx")  # inputs untouched


def test_empty_folder_is_an_error(tmp_path, bert_classifier, capsys):
    assert cli.main(["embed", str(tmp_path), str(bert_classifier.folder)]) == 1
    assert f"error: no .onnx files in {tmp_path}" in capsys.readouterr().err


@pytest.mark.optimum
def test_optimum_export_folder(bert_classifier, bert_embedded, tmp_path, capsys):
    folder = optimum_export(bert_classifier.folder, tmp_path / "optimum", "text-classification")
    assert cli.main(["embed", str(folder), str(bert_classifier.folder), "--include-vocab"]) == 0
    assert "[1/1] model.onnx: " in capsys.readouterr().err
    texts = ["I love this", "a much longer sentence that goes on and on", "meh"]
    got, want = rt.Runtime(folder / "model.onnx")(texts), rt.Runtime(bert_embedded)(texts)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-4)


# -- many models -------------------------------------------------------------------------------------------


def test_discover_many_reports_each_failure(bert_classifier, tmp_path):
    (tmp_path / "no-config").mkdir()
    models = [bert_classifier.folder, tmp_path / "no-config", tmp_path / "missing", bert_classifier.folder]
    results = authoring.MetadataDiscovery().discover_many(models, level="full", max_workers=3)
    assert [r.model for r in results] == [os.fspath(m) for m in models]
    assert [r.ok for r in results] == [True, False, False, True]
    assert isinstance(results[1].error, rt.MetadataExtractionError) and "has no config.json" in str(results[1].error)
    assert str(results[2].error) == f"no such folder: {tmp_path / 'missing'}"
    first, last = (dict(r.metadata) for r in (results[0], results[3]))
    first.pop(rt.KEY_TIMESTAMP), last.pop(rt.KEY_TIMESTAMP)
    assert first == last and first[rt.KEY_TOKENIZER_JSON]
    assert authoring.MetadataDiscovery().discover_many([]) == []
    with pytest.raises(rt.MetadataExtractionError, match="unknown embedding level 'huge'"):
        authoring.MetadataDiscovery().discover_many(models, level="huge")


def test_read_only_file_in_a_writable_folder_is_replaced(plain, metadata):
    os.chmod(plain, 0o444)
    authoring.embed(plain, metadata)  # the temp-file way: rename needs only the folder
    assert rt.read_metadata(plain)[rt.KEY_PIPELINE_TASK] == "text-classification"
    assert os.stat(plain).st_mode & 0o777 == 0o444
