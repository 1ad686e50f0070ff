"""A Runtime pickles by reference to its file: process pools and Ray/Dask workers rebuild it there."""

from __future__ import annotations

import pickle
import shutil
from concurrent.futures import ProcessPoolExecutor

import pytest
from runtime_under_test import rt

TEXTS = ["I love this movie", "this was terrible", "the food was good but slow", "hello world"]


def _classify(runtime, text):
    return runtime(text, top_k=None)


def test_a_pickled_runtime_answers_the_same(bert_embedded):
    runtime = rt.Runtime(bert_embedded, batch_size=2, intra_op_num_threads=1)
    data = pickle.dumps(runtime)
    assert len(data) < 2000  # the path and arguments, not the model
    copy = pickle.loads(data)
    assert copy.path == runtime.path and copy.task == runtime.task
    assert copy.session.get_session_options().intra_op_num_threads == 1
    assert copy(TEXTS) == runtime(TEXTS)


def test_a_process_pool_answers_as_one_process(bert_embedded):
    runtime = rt.Runtime(bert_embedded)
    with ProcessPoolExecutor(2) as pool:
        answers = list(pool.map(_classify, [runtime] * len(TEXTS), TEXTS))
    assert answers == [runtime(text, top_k=None) for text in TEXTS]


def test_a_changed_file_is_refused(bert_embedded, tmp_path, bert_classifier):
    from authoring import embed_metadata

    path = tmp_path / "model.onnx"
    shutil.copy(bert_embedded, path)
    data = pickle.dumps(rt.Runtime(path))
    embed_metadata(bert_classifier.onnx, bert_classifier.folder, path, include_vocab=True, task="zero-shot-classification")
    rt.clear_metadata_cache()
    with pytest.raises(rt.MetadataValidationError, match=r"model.onnx changed since the Runtime was pickled \(metadata digest "):
        pickle.loads(data)


def test_session_options_cannot_be_pickled(bert_embedded):
    import onnxruntime

    runtime = rt.Runtime(bert_embedded, session_options=onnxruntime.SessionOptions())
    with pytest.raises(rt.MetadataError, match="a Runtime built with session_options cannot be pickled"):
        pickle.dumps(runtime)
