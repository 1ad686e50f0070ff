"""examples/: the Ray Data corpus embedding (local mode) gives one process's vectors; the edge app, serving a
vendored copy of the runtime over HTTP, answers as Runtime does."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, export_onnx, tiny_model, trained_wordpiece
from runtime_under_test import rt

EXAMPLES = ROOT / "examples"
CORPUS = [f"{subject} {verb} the {thing} {n} times." for n in range(3)
          for subject in ("The cat", "A very old man", "Ünïcödé café")
          for verb in ("sees", "carefully repaired")
          for thing in ("car", "small wooden boat near the river")] + ["", "word " * 200]


@pytest.fixture(scope="module")
def feature_model(tmp_path_factory) -> Path:
    """A tiny BERT encoder with a tokenizer trained in the tests, embedded as feature-extraction."""
    from authoring import embed_metadata

    root = tmp_path_factory.mktemp("examples")
    model = tiny_model(root / "hf", "AutoModel", trained_wordpiece, seed=7)
    plain = export_onnx(model, root / "plain.onnx", ["input_ids", "attention_mask", "token_type_ids"],
                        output="last_hidden_state")
    embed_metadata(plain, root / "hf", root / "model.onnx", include_vocab=True, task="feature-extraction")
    return root / "model.onnx"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ray():
    """Ray, or the test skipped with the reason before any model is built."""
    return pytest.importorskip("ray", reason="Ray is not installed: pip install 'ray[data]' (in the [test] extra)")


def test_ray_data_embeds_a_corpus_as_one_process(ray, feature_model, tmp_path):
    """The example's command line, in local mode: its vectors are one process's encode() of the corpus."""
    example = _example("ray_embed")
    expected = rt.Runtime(feature_model).encode(CORPUS)
    assert len({tuple(np.round(v, 3)) for v in expected}) > len(CORPUS) // 2  # different texts, different vectors
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{text}\n" for text in CORPUS), encoding="utf-8")
    assert example.main([str(feature_model), str(corpus), str(tmp_path / "vectors.npy"), "--actors", "2",
                         "--batch-size", "8"]) == 0
    assert not ray.is_initialized()
    vectors = np.load(tmp_path / "vectors.npy")
    assert vectors.shape == expected.shape and vectors.dtype == np.float32
    # other batches pad differently: equal up to float rounding
    np.testing.assert_allclose(vectors, expected, atol=1e-5, rtol=0)


def _request(url: str, body: object = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_edge_app_serves_a_model_with_the_runtime_file_copied_alone(bert_embedded, tmp_path):
    """The app and the runtime file copied into an empty folder, started there: its answers are Runtime's."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy2(EXAMPLES / "edge_app" / "app.py", app)
    shutil.copy2(rt.__file__, app / "onnxmeta_runtime.py")
    model = Path(shutil.copy2(bert_embedded, tmp_path / "model.onnx"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = subprocess.Popen([sys.executable, "-s", "app.py", str(model), "--port", "0"], cwd=app, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = server.stdout.readline()  # "serving Runtime(...) on http://127.0.0.1:PORT" once it listens
        assert " on http://" in started, server.stderr.read()
        url = started.rsplit(" on ", 1)[1].strip()
        runtime = rt.Runtime(model)
        assert _request(url) == (200, {"model": "model.onnx", "task": "text-classification",
                                       "labels": ["NEGATIVE", "NEUTRAL", "POSITIVE"]})
        calls = [("I love this movie!", {}), (["this was terrible", "hello world", "the food was good"], {"top_k": None}),
                 ({"text": "a premise", "text_pair": "a hypothesis"}, {"function_to_apply": "sigmoid"})]
        answers = [_request(url, {"inputs": inputs, "parameters": parameters}) for inputs, parameters in calls]
        assert answers == [(200, json.loads(json.dumps(runtime(inputs, **parameters)))) for inputs, parameters in calls]
        assert len({label["label"] for label in answers[1][1][0]}) == 3
        status, error = _request(url, {"inputs": "text", "parameters": {"top_k": "two"}})
        assert status == 400 and "top_k" in error["error"], error
        assert _request(url, {"text": "no inputs key"}) == (400, {"error": 'send {"inputs": ..., "parameters": {...}}'})
    finally:
        server.terminate()
        server.wait(10)
