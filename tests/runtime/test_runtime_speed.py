"""Runtime laziness, the metadata cache and the onnxruntime options passed through."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from runtime_under_test import rt


def test_import_loads_no_heavy_module():
    code = ("import sys, onnxmeta_runtime as rt; rt.read_metadata; "
            "print(sorted(m for m in ('numpy', 'onnxruntime', 'tokenizers', 'onnx', 'torch', 'transformers') if m in sys.modules))")
    runtime_dir = Path(rt.__file__).parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(runtime_dir)}, cwd=runtime_dir)
    assert out.stdout.strip() == "[]"


def test_read_metadata_needs_no_heavy_module(bert_embedded):
    code = ("import sys, onnxmeta_runtime as rt; md = rt.read_metadata(sys.argv[1]); "
            "print(md['hf_pipeline_task'], sorted(m for m in ('numpy', 'onnxruntime', 'tokenizers') if m in sys.modules))")
    runtime_dir = Path(rt.__file__).parent
    out = subprocess.run([sys.executable, "-c", code, str(bert_embedded)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(runtime_dir)})
    assert out.stdout.strip() == "text-classification []"


@pytest.fixture
def counted_scans(monkeypatch):
    """Count the scans read_metadata makes; cache emptied, the recent-file rule off."""
    calls = []
    real = rt.scan_model
    monkeypatch.setattr(rt, "scan_model", lambda path: calls.append(os.fspath(path)) or real(path))
    monkeypatch.setattr(rt, "_RACY_NS", 0)
    rt.clear_metadata_cache()
    yield calls
    rt.clear_metadata_cache()


def test_metadata_is_read_once_per_file(bert_embedded, tmp_path, counted_scans):
    first = rt.read_metadata(bert_embedded)
    second = rt.read_metadata(bert_embedded)
    assert first == second and len(counted_scans) == 1
    # callers get copies: changing one result changes neither the cache nor other results
    first[rt.KEY_MODEL_CONFIG]["id2label"]["0"] = "CHANGED"
    first.clear()
    third = rt.read_metadata(bert_embedded)
    assert third[rt.KEY_MODEL_CONFIG]["id2label"]["0"] == "NEGATIVE" and second == third
    assert len(counted_scans) == 1
    # verify=False is another entry; a Runtime reuses the cached read
    rt.read_metadata(bert_embedded, verify=False)
    assert len(counted_scans) == 2
    rt.Runtime(bert_embedded)
    assert len(counted_scans) == 2


def test_a_changed_file_is_read_again(bert_embedded, tmp_path, counted_scans):
    path = tmp_path / "model.onnx"
    shutil.copyfile(bert_embedded, path)
    assert rt.read_metadata(path)[rt.KEY_PIPELINE_TASK] == "text-classification"
    from authoring import embed

    metadata = rt.read_metadata(path)
    embed(path, {**metadata, rt.KEY_PIPELINE_TASK: "feature-extraction"})
    assert rt.read_metadata(path)[rt.KEY_PIPELINE_TASK] == "feature-extraction"
    assert counted_scans.count(os.fspath(path)) >= 2


def test_recently_modified_files_are_not_cached(bert_embedded, tmp_path, counted_scans, monkeypatch):
    monkeypatch.setattr(rt, "_RACY_NS", 10**18)
    rt.read_metadata(bert_embedded)
    rt.read_metadata(bert_embedded)
    assert len(counted_scans) == 2 and len(rt._cache) == 0


def test_cache_is_bounded(bert_embedded, tmp_path, counted_scans, monkeypatch):
    monkeypatch.setattr(rt, "_METADATA_CACHE_SIZE", 2)
    paths = [tmp_path / f"m{i}.onnx" for i in range(3)]
    for path in paths:
        shutil.copyfile(bert_embedded, path)
        rt.read_metadata(path)
    assert len(rt._cache) == 2
    rt.read_metadata(paths[2])  # still cached
    rt.read_metadata(paths[0])  # evicted first, read again
    assert counted_scans == [os.fspath(p) for p in paths] + [os.fspath(paths[0])]


def test_cache_is_thread_safe(bert_embedded, counted_scans):
    expected = rt.read_metadata(bert_embedded)
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                md = rt.read_metadata(bert_embedded)
                md[rt.KEY_MODEL_CONFIG]["mutated"] = True  # must not leak into other threads' results
                results.append(md[rt.KEY_MODEL_CONFIG] == {**expected[rt.KEY_MODEL_CONFIG], "mutated": True})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 160 and all(results)
    assert len(counted_scans) == 1


def test_session_options_pass_through(bert_embedded):
    import onnxruntime as ort

    default = rt.Runtime(bert_embedded)
    tuned = rt.Runtime(bert_embedded, intra_op_num_threads=1, graph_optimization_level="basic")
    options = tuned.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    texts = ["short", "a somewhat longer text to classify here", "mid length text"]
    for a, b in zip(tuned(texts), default(texts)):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert rt.pipeline(bert_embedded, intra_op_num_threads=2).session.get_session_options().intra_op_num_threads == 2


def test_session_option_errors(bert_embedded):
    import onnxruntime as ort

    with pytest.raises(rt.InvalidInputError, match="pass either session_options or intra_op_num_threads"):
        rt.Runtime(bert_embedded, session_options=ort.SessionOptions(), intra_op_num_threads=1)
    with pytest.raises(rt.InvalidInputError, match="graph_optimization_level must be one of disable, basic, extended, all"):
        rt.Runtime(bert_embedded, graph_optimization_level="max")
    with pytest.raises(rt.InvalidInputError, match="intra_op_num_threads must be an integer >= 0"):
        rt.Runtime(bert_embedded, intra_op_num_threads=-1)


def test_tokenizer_built_once_per_runtime(bert_embedded, monkeypatch):
    runtime = rt.Runtime(bert_embedded, task="zero-shot-classification")
    built = []
    monkeypatch.setattr(rt.TextTokenizer, "__init__", lambda *a, **k: built.append(1))
    runtime("some text", candidate_labels=["a", "b"])
    runtime(["one", "two"], candidate_labels="a, b")
    assert built == []
