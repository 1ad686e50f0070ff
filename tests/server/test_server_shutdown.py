"""Graceful shutdown: SIGTERM (or SIGINT) lets the requests in flight finish, refuses new ones (503 or no connection),
and the process exits 0; the `Server` class of the Python API does the same in a thread."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from runtime_under_test import rt
from server_http import Stream, assert_error, events, get, post
from server_models import wait_until

MODEL = "model.onnx"
CHAT = [{"role": "user", "content": "Tell me a story."}]
LONG = 480  # new tokens: with the chat's prompt, within the model's 512 positions


def refused(url: str) -> bool:
    """Whether a new request is refused: 503 with the error object, or no connection at all (False: served)."""
    try:
        response = post(url, "/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 1}, timeout=30)
    except OSError:
        return True
    if response.status == 200:
        return False
    assert_error(response, 503)
    return True


def test_sigterm_finishes_the_requests_in_flight(servers, chat_model, runtimes):
    server = servers.start(chat_model)
    payload = {"model": MODEL, "messages": CHAT, "max_tokens": LONG, "temperature": 0, "stream": True}
    stream = Stream(server.url, payload)
    server.terminate()
    # a signal is handled asynchronously: a request sent at the same instant may still be served, but not for long
    assert wait_until(lambda: refused(server.url), timeout=1.0, step=0.02), "new requests served 1 s after SIGTERM"
    data = events(stream.head + stream.finish())
    assert data[-1] == "[DONE]", data[-3:]
    text = "".join(d["choices"][0]["delta"].get("content") or "" for d in data[:-1] if d["choices"])
    expected = "".join(runtimes(chat_model).stream(CHAT, max_new_tokens=LONG, do_sample=False))
    assert text == expected
    assert data[-2]["choices"][0]["finish_reason"] == "length"
    code = server.wait(30)
    assert code == 0, f"exit status {code} after SIGTERM\n{server.stderr()}"


def test_sigint_is_graceful_too(servers, embedding_model):
    server = servers.start(embedding_model)
    assert get(server.url, "/health").status == 200
    server.process.send_signal(signal.SIGINT)
    assert server.wait(30) == 0, server.stderr()
    with pytest.raises(OSError):
        get(server.url, "/health")


def test_the_python_api(embedding_model, runtimes):
    runtime = runtimes(embedding_model)
    with rt.Server(embedding_model) as server:
        assert server.url.startswith("http://127.0.0.1:")
        answer = post(server.url, "/v1/embeddings", {"model": MODEL, "input": ["a cat", "a dog"], "encoding_format": "float"})
        assert answer.status == 200, answer
        vectors = [d["embedding"] for d in answer.json()["data"]]
        np.testing.assert_allclose(vectors, runtime.encode(["a cat", "a dog"]), atol=1e-5, rtol=0)
        url = server.url
    with pytest.raises(OSError):
        get(url, "/health")
    started = rt.Server(runtime, port=0).start()  # a Runtime serves too
    try:
        assert get(started.url, "/v1/models").json()["data"][0]["id"] == MODEL
    finally:
        started.stop(timeout=30.0)
    assert wait_until(lambda: _closed(started.url), timeout=10)


def _closed(url: str) -> bool:
    try:
        get(url, "/health")
    except OSError:
        return True
    return False
