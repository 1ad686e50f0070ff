"""One Runtime shared by 16 threads gives exactly the results of sequential calls: the session, the
tokenizer and the task objects hold no per-call state."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import export_onnx, tiny_model
from runtime_under_test import rt

THREADS = 16
TEXTS = [
    "i love this movie", "this was terrible", "the quick brown fox jumps over the lazy dog",
    "a wonderful day at the beach", "hello world, this is a test.", "the food was good but slow", "",
    "short", "a much longer text " * 30,
]


def hammer(call, inputs: list) -> list:
    """Every input from 16 threads at once, several rounds, each thread starting at a different input."""
    barrier = threading.Barrier(THREADS)

    def worker(offset: int) -> list:
        barrier.wait()  # start together, so that calls really overlap
        out = []
        for round_ in range(3):
            for i in range(len(inputs)):
                k = (i + offset + round_) % len(inputs)
                out.append((k, call(inputs[k])))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        return [item for result in pool.map(worker, range(THREADS)) for item in result]


def test_text_classification_from_16_threads(bert_embedded):
    runtime = rt.Runtime(bert_embedded, batch_size=2)
    sequential = [runtime(t, top_k=None) for t in TEXTS]
    batches = [TEXTS[i:] + TEXTS[:i] for i in range(3)]
    sequential_batches = [runtime(b) for b in batches]
    results = hammer(lambda t: runtime(t, top_k=None), TEXTS)
    assert len(results) == THREADS * 3 * len(TEXTS)
    for k, result in results:
        assert result == sequential[k]  # exactly: same floats, same order
    for k, result in hammer(runtime, batches):
        assert result == sequential_batches[k]


@pytest.fixture(scope="module")
def feature_model(tmp_path_factory):
    from authoring import embed_metadata

    root = tmp_path_factory.mktemp("features")
    model = tiny_model(root / "hf", "AutoModel", seed=5)
    plain = export_onnx(model, root / "plain.onnx", ["input_ids", "attention_mask", "token_type_ids"],
                        output="last_hidden_state")
    embed_metadata(plain, root / "hf", root / "model.onnx", include_vocab=True, task="feature-extraction")
    return root / "model.onnx"


def test_feature_extraction_from_16_threads(feature_model):
    runtime = rt.Runtime(feature_model, batch_size=3)
    assert runtime.task == "feature-extraction"
    sequential = [runtime.encode(t) for t in TEXTS]
    tokens = [runtime(t) for t in TEXTS]
    for k, vector in hammer(runtime.encode, TEXTS):
        np.testing.assert_array_equal(vector, sequential[k])
    for k, result in hammer(runtime, TEXTS):
        assert result == tokens[k]
