"""The server over raw HTTP: health and models, /v1/pipeline for every kind of input, /v1/rerank, the API key, and
malformed requests of every kind on every endpoint: each gets its 4xx with OpenAI's error object, and the next request
on the same server succeeds."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_parity
from server_http import Response, assert_error, b64, connection, events, get, multipart, post, post_form, request
from server_models import image_png, speech

MODEL = "model.onnx"
KEY = "sk-test-secret"
SMALL_BODY = 4096
CHAT = [{"role": "user", "content": "Hello there"}]
TEXTS = ["I love this movie", "this was terrible", "the food was good but slow"]
QUESTION = {"question": "Where do I live?", "context": "My name is Wolfgang and I live in Berlin, the capital of Germany."}
DOCUMENTS = ["Knead the dough, let it rise, bake at 220 C.", "The stock market fell sharply today.",
             "A man is playing a guitar.", "how do i bake bread?", "Paris is the capital of France."]


@dataclass
class Target:
    """A server and the one request that must succeed on it (after every error)."""

    url: str
    path: str
    good: dict[str, Any]
    form: dict[str, tuple[str, bytes]] | None = None  # multipart files: the request is a form of good's fields

    def send(self, **changes: Any) -> Response:
        payload = {**self.good, **changes}
        if self.form is not None:
            return post_form(self.url, self.path, payload, self.form)
        return post(self.url, self.path, payload)

    def assert_serving(self) -> None:
        response = self.send()
        assert response.status == 200, response


@pytest.fixture(scope="module")
def wav() -> bytes:
    return speech(2.0, seed=1)


@pytest.fixture(scope="module")
def png() -> bytes:
    return image_png(40, 30, seed=1)


@pytest.fixture(scope="module")
def targets(served, chat_model, embedding_model, rerank_model, multilabel_model, qa_model, vit_model, ctc_model,
            whisper_model, wav, png) -> dict[str, Target]:
    audio = {"file": ("clip.wav", wav)}
    return {
        "chat": Target(served(chat_model), "/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 2}),
        "completions": Target(served(chat_model), "/v1/completions", {"model": MODEL, "prompt": "Once", "max_tokens": 2}),
        "embeddings": Target(served(embedding_model), "/v1/embeddings", {"model": MODEL, "input": TEXTS[0]}),
        "rerank": Target(served(rerank_model), "/v1/rerank", {"model": MODEL, "query": "q", "documents": DOCUMENTS[:2]}),
        "classify": Target(served(multilabel_model), "/v1/pipeline", {"inputs": TEXTS[0]}),
        "qa": Target(served(qa_model), "/v1/pipeline", {"inputs": QUESTION}),
        "image": Target(served(vit_model), "/v1/pipeline", {"inputs": b64(png)}),
        "ctc": Target(served(ctc_model), "/v1/pipeline", {"inputs": b64(wav)}),
        "transcriptions": Target(served(whisper_model), "/v1/audio/transcriptions", {"model": MODEL}, audio),
        "translations": Target(served(whisper_model), "/v1/audio/translations", {"model": MODEL}, audio),
    }


JSON_TARGETS = ["chat", "completions", "embeddings", "rerank", "classify", "qa", "image", "ctc"]
ALL_TARGETS = [*JSON_TARGETS, "transcriptions", "translations"]
WITH_MODEL = [name for name in ALL_TARGETS if name not in ("classify", "qa", "image", "ctc")]


def pipeline(target: Target, inputs: Any, **parameters: Any) -> Any:
    response = post(target.url, "/v1/pipeline", {"inputs": inputs, **({"parameters": parameters} if parameters else {})})
    assert response.status == 200, response
    return response.json()


# ------------------------------------------------------------------------------------------------------
# Health and models
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["chat", "embeddings", "classify", "transcriptions"])
def test_health_and_models(targets, name):
    url = targets[name].url
    health = get(url, "/health")
    assert health.status == 200 and health.json()["status"] == "ok", health  # extra counts allowed
    listing = get(url, "/v1/models")
    assert listing.status == 200, listing
    body = listing.json()
    assert body["object"] == "list" and len(body["data"]) == 1
    model = body["data"][0]
    assert set(model) >= {"id", "object", "created", "owned_by", "task", "format_version"}
    assert (model["id"], model["object"], model["owned_by"]) == (MODEL, "model", "onnxmeta")
    assert isinstance(model["created"], int) and isinstance(model["format_version"], str) and model["task"]
    one = get(url, f"/v1/models/{MODEL}")
    assert one.status == 200 and one.json() == model, one
    assert_error(get(url, "/v1/models/other.onnx"), 404, code="model_not_found")


def test_the_model_may_be_named_without_its_suffix(targets):
    assert targets["embeddings"].send(model="model").status == 200


# ------------------------------------------------------------------------------------------------------
# /v1/pipeline
# ------------------------------------------------------------------------------------------------------

def test_pipeline_text_classification(targets, multilabel_model, runtimes):
    runtime, target = runtimes(multilabel_model), targets["classify"]
    assert_parity(pipeline(target, TEXTS[0]), runtime(TEXTS[0]), tol=1e-5)
    every = pipeline(target, TEXTS, top_k=None)
    assert_parity(every, runtime(TEXTS, top_k=None), tol=1e-5)
    assert len({round(r[0]["score"], 4) for r in every}) == len(TEXTS)


def test_pipeline_question_answering(targets, qa_model, runtimes):
    runtime, target = runtimes(qa_model), targets["qa"]
    assert_parity([pipeline(target, QUESTION)], [runtime(QUESTION)], tol=1e-5)
    assert_parity(pipeline(target, QUESTION, top_k=3), runtime(QUESTION, top_k=3), tol=1e-5)
    other = {**QUESTION, "question": "What is the capital of Germany?"}
    assert_parity([pipeline(target, other)], [runtime(other)], tol=1e-5)


def test_pipeline_image_classification(targets, vit_model, runtimes):
    runtime, target = runtimes(vit_model), targets["image"]
    images = [image_png(40, 30, seed=1), image_png(64, 48, seed=9)]
    answers = []
    for image in images:
        expected = runtime(image)
        assert_parity(pipeline(target, b64(image)), expected, tol=1e-5)
        assert_parity(pipeline(target, f"data:image/png;base64,{b64(image)}"), expected, tol=1e-5)
        answers.append(expected)
    assert answers[0] != answers[1]
    assert_parity(pipeline(target, [b64(i) for i in images], top_k=2), runtime(images, top_k=2), tol=1e-5)


def test_pipeline_speech_recognition(targets, ctc_model, runtimes, wav):
    runtime, target = runtimes(ctc_model), targets["ctc"]
    other = speech(2.0, seed=2)
    texts = [runtime(wav)["text"], runtime(other)["text"]]
    assert texts[0] != texts[1] and all(texts)
    assert pipeline(target, b64(wav)) == {"text": texts[0]}
    assert pipeline(target, f"data:audio/wav;base64,{b64(other)}") == {"text": texts[1]}


# ------------------------------------------------------------------------------------------------------
# /v1/rerank
# ------------------------------------------------------------------------------------------------------

def rerank(target: Target, path: str = "/v1/rerank", **fields: Any) -> dict[str, Any]:
    response = post(target.url, path, {"model": MODEL, "query": "How do I bake bread?", "documents": DOCUMENTS, **fields})
    assert response.status == 200, response
    return response.json()


@pytest.fixture(scope="module")
def rerank_scores(rerank_model, runtimes) -> list[float]:
    scores = [r["score"] for r in runtimes(rerank_model)([{"text": "How do I bake bread?", "text_pair": d} for d in DOCUMENTS])]
    assert len({round(s, 4) for s in scores}) == len(DOCUMENTS), scores
    return scores


def assert_ranked(results: list[dict[str, Any]], scores: list[float], count: int) -> None:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:count]
    assert [r["index"] for r in results] == order
    assert [r["relevance_score"] for r in results] == pytest.approx([scores[i] for i in order], abs=1e-5)


def test_rerank(targets, rerank_scores):
    body = rerank(targets["rerank"], return_documents=False)
    assert isinstance(body["id"], str) and body["model"] == MODEL
    assert isinstance(body["usage"]["total_tokens"], int) and body["usage"]["total_tokens"] > len(DOCUMENTS)
    assert_ranked(body["results"], rerank_scores, len(DOCUMENTS))
    assert all(r.get("document") is None for r in body["results"])


def test_rerank_top_n_and_documents(targets, rerank_scores):
    body = rerank(targets["rerank"], top_n=2, return_documents=True)
    assert_ranked(body["results"], rerank_scores, 2)
    assert [r["document"] for r in body["results"]] == [{"text": DOCUMENTS[r["index"]]} for r in body["results"]]
    assert_ranked(rerank(targets["rerank"], "/rerank", top_n=3)["results"], rerank_scores, 3)


# ------------------------------------------------------------------------------------------------------
# The API key
# ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed(served, embedding_model) -> str:
    return served(embedding_model, "--api-key", KEY)


def test_api_key(keyed):
    assert get(keyed, "/health").status == 200
    payload = {"model": MODEL, "input": "hello"}
    for key in (None, "wrong", KEY + "x", ""):
        assert_error(get(keyed, "/v1/models", key=key), 401, code="invalid_api_key", type_="authentication_error")
        assert_error(post(keyed, "/v1/embeddings", payload, key=key), 401, code="invalid_api_key",
                     type_="authentication_error")
    assert get(keyed, "/v1/models", key=KEY).status == 200
    assert post(keyed, "/v1/embeddings", payload, key=KEY).status == 200
    basic = request(keyed, "GET", "/v1/models", headers={"Authorization": f"Basic {KEY}"})
    assert_error(basic, 401, code="invalid_api_key")


def test_api_key_through_the_openai_client(keyed):
    import openai

    client = openai.OpenAI(base_url=f"{keyed}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model=MODEL, input="hello")
    assert openai.OpenAI(base_url=f"{keyed}/v1", api_key=KEY, max_retries=0).embeddings.create(model=MODEL, input="hi").data


# ------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, path, served_by", [
    ("embeddings", "/v1/chat/completions", "/v1/embeddings"),
    ("embeddings", "/v1/completions", "/v1/embeddings"),
    ("chat", "/v1/embeddings", "/v1/chat/completions"),
    ("classify", "/v1/rerank", "/v1/pipeline"),
    ("chat", "/v1/rerank", "/v1/completions"),
])
def test_an_endpoint_the_task_cannot_serve(targets, name, path, served_by):
    target = targets[name]
    payload = {"model": MODEL, "messages": CHAT, "prompt": "x", "input": "x", "query": "q", "documents": ["d"]}
    fields = {"/v1/chat/completions": ("model", "messages"), "/v1/completions": ("model", "prompt"),
              "/v1/embeddings": ("model", "input"), "/v1/rerank": ("model", "query", "documents")}[path]
    error = assert_error(post(target.url, path, {k: payload[k] for k in fields}), 404, code="unsupported_endpoint",
                         param="model")
    assert served_by in error["message"], error
    target.assert_serving()


@pytest.mark.parametrize("name, path", [("embeddings", "/v1/audio/transcriptions"), ("ctc", "/v1/audio/translations"),
                                        ("chat", "/v1/audio/transcriptions")])
def test_an_audio_endpoint_the_task_cannot_serve(targets, wav, name, path):
    target = targets[name]
    assert_error(post_form(target.url, path, {"model": MODEL}, {"file": ("clip.wav", wav)}), 404,
                 code="unsupported_endpoint", param="model")
    target.assert_serving()


@pytest.mark.parametrize("name", JSON_TARGETS)
@pytest.mark.parametrize("body", [b'{"model": "model.onnx", "inp', b"{", b"not json", b'{"a": 1}}', b"\xff\xfe\x00",
                                  b"[1, 2]", b'"a string"', b"3", b"null", b""],
                         ids=["truncated", "brace", "text", "trailing", "bytes", "array", "string", "number", "null", "empty"])
def test_bad_json(targets, name, body):
    target = targets[name]
    assert_error(request(target.url, "POST", target.path, body, {"Content-Type": "application/json"}), 400)
    target.assert_serving()


@pytest.mark.parametrize("name", JSON_TARGETS)
def test_unknown_field(targets, name):
    target = targets[name]
    assert_error(target.send(bogus_field=1), 400, code="unrecognized_argument", param="bogus_field")
    target.assert_serving()


ANY = "*"  # a refusal whose param the contract leaves open (the runtime's own message)
WRONG_TYPES = [
    ("chat", "messages", "hi", "messages"), ("chat", "messages", [{"role": "user", "content": 3}], ANY),
    ("chat", "max_tokens", "ten", "max_tokens"), ("chat", "max_tokens", True, "max_tokens"),
    ("chat", "max_tokens", -1, "max_tokens"), ("chat", "temperature", "hot", "temperature"), ("chat", "n", 1.5, "n"),
    ("chat", "stop", 3, "stop"), ("chat", "stream", "yes", "stream"), ("chat", "seed", "s", "seed"),
    ("chat", "top_p", [1], "top_p"), ("chat", "stream_options", "usage", "stream_options"), ("chat", "model", 3, "model"),
    ("completions", "prompt", 3, "prompt"), ("completions", "prompt", [1, "a"], "prompt"), ("completions", "echo", "no", "echo"),
    ("completions", "max_tokens", 2.5, "max_tokens"),
    ("embeddings", "input", 3, "input"), ("embeddings", "input", [1, "a"], "input"), ("embeddings", "input", {"a": 1}, "input"),
    ("embeddings", "encoding_format", "int8", "encoding_format"), ("embeddings", "encoding_format", 5, "encoding_format"),
    ("embeddings", "dimensions", 8, "dimensions"),
    ("rerank", "documents", "a document", "documents"), ("rerank", "documents", [1, 2], "documents"),
    ("rerank", "query", 3, "query"), ("rerank", "top_n", "2", "top_n"), ("rerank", "return_documents", "yes", "return_documents"),
    ("classify", "inputs", 3, ANY), ("classify", "parameters", [], "parameters"),
    ("classify", "parameters", {"top_k": "all"}, ANY), ("qa", "inputs", {"question": "q"}, ANY), ("image", "inputs", 5, ANY),
]


@pytest.mark.parametrize("name, field, value, param", WRONG_TYPES,
                         ids=[f"{n}-{f}-{v!r}"[:40] for n, f, v, _ in WRONG_TYPES])
def test_wrong_types(targets, name, field, value, param):
    target = targets[name]
    error = assert_error(target.send(**{field: value}), 400)
    assert param == ANY or error["param"] == param, error
    target.assert_serving()


CHAT_REFUSALS = [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),  # its chat template reads no tools
    ({"tool_choice": "required"}, "tool_choice"),  # no tools to choose from
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"logprobs": True}, "logprobs"),
    ({"stream": True, "n": 2}, "n"),
]


@pytest.mark.parametrize("fields, param", CHAT_REFUSALS, ids=[p for _, p in CHAT_REFUSALS])
def test_unsupported_chat_options(targets, fields, param):
    assert_error(targets["chat"].send(**fields), 400, param=param)
    assert targets["chat"].send(response_format={"type": "text"}).status == 200


def test_a_message_the_template_refuses(targets):
    error = assert_error(targets["chat"].send(messages=[{"role": "wizard", "content": "hi"}]), 400)
    assert "unknown role" in error["message"], error
    targets["chat"].assert_serving()


@pytest.mark.parametrize("name", ["chat", "completions"])
def test_a_prompt_past_the_context(targets, name):
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 120)  # > 512 positions
    fields = {"messages": [{"role": "user", "content": text}]} if name == "chat" else {"prompt": text}
    assert_error(targets[name].send(**fields), 400, code="context_length_exceeded")
    targets[name].assert_serving()


@pytest.mark.parametrize("name", WITH_MODEL)
def test_unknown_model(targets, name):
    target = targets[name]
    assert_error(target.send(model="gpt-4o"), 404, code="model_not_found", param="model")
    target.assert_serving()


@pytest.mark.parametrize("name", JSON_TARGETS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None],
                         ids=["text", "form", "absent"])
def test_wrong_content_type(targets, name, content_type):
    target = targets[name]
    headers = {"Content-Type": content_type} if content_type else {}
    assert_error(request(target.url, "POST", target.path, json.dumps(target.good).encode(), headers), 415)
    charset = {"Content-Type": "application/json; charset=utf-8"}
    assert request(target.url, "POST", target.path, json.dumps(target.good).encode(), charset).status == 200


@pytest.mark.parametrize("name", ALL_TARGETS)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method(targets, name, method):
    target = targets[name]
    assert_error(request(target.url, method, target.path), 405)
    target.assert_serving()


@pytest.mark.parametrize("method, path", [("GET", "/"), ("GET", "/v1/nothing"), ("POST", "/v2/embeddings"),
                                          ("POST", "/v1/embeddings/extra"), ("GET", "/health/x"), ("GET", "/../etc/passwd")])
def test_unknown_path(targets, method, path):
    target = targets["embeddings"]
    body = json.dumps(target.good).encode() if method == "POST" else None
    assert_error(request(target.url, method, path, body, {"Content-Type": "application/json"}), 404, code="not_found")
    target.assert_serving()


# ------------------------------------------------------------------------------------------------------
# Bodies over --max-body
# ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(served, embedding_model) -> Target:
    return Target(served(embedding_model, "--max-body", str(SMALL_BODY)), "/v1/embeddings", {"model": MODEL, "input": "hi"})


def test_a_body_over_max_body(small):
    assert_error(small.send(input="word " * SMALL_BODY), 413, code="request_too_large")
    small.assert_serving()
    assert small.send(input="word " * (SMALL_BODY // 10)).status == 200


def test_a_declared_length_over_max_body_is_refused_unread(small):
    """A Content-Length past the limit is answered at once, without waiting for the body."""
    conn = connection(small.url, 20)
    try:
        conn.putrequest("POST", "/v1/embeddings")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(10**9))
        conn.endheaders(b'{"model": "model.onnx", "input": "')
        response = conn.getresponse()
        assert_error(Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()), 413,
                     code="request_too_large")
    finally:
        conn.close()
    small.assert_serving()


# ------------------------------------------------------------------------------------------------------
# Multipart
# ------------------------------------------------------------------------------------------------------

def truncated_form(wav: bytes) -> tuple[bytes, str]:
    body, content_type = multipart({"model": MODEL}, {"file": ("clip.wav", wav)})
    return body[: len(body) // 2], content_type


BAD_FORMS: dict[str, Callable[[bytes], tuple[bytes, str]]] = {
    "no boundary": lambda wav: (multipart({"model": MODEL}, {"file": ("clip.wav", wav)})[0], "multipart/form-data"),
    "other boundary": lambda wav: (multipart({"model": MODEL}, {"file": ("clip.wav", wav)})[0],
                                   "multipart/form-data; boundary=elsewhere"),
    "truncated": truncated_form,
    "not multipart": lambda wav: (b"just some bytes", "multipart/form-data; boundary=xyz"),
    "no file": lambda wav: multipart({"model": MODEL}),
    "file as a field": lambda wav: multipart({"model": MODEL, "file": "clip.wav"}),
    "garbage audio": lambda wav: multipart({"model": MODEL}, {"file": ("clip.wav", b"RIFF not really a wave file" * 20)}),
    "empty audio": lambda wav: multipart({"model": MODEL}, {"file": ("clip.wav", b"")}),
    "truncated wav": lambda wav: multipart({"model": MODEL}, {"file": ("clip.wav", wav[:30])}),
}


@pytest.mark.parametrize("name", ["transcriptions", "translations"])
@pytest.mark.parametrize("case", BAD_FORMS)
def test_bad_multipart(targets, wav, name, case):
    target = targets[name]
    body, content_type = BAD_FORMS[case](wav)
    error = assert_error(request(target.url, "POST", target.path, body, {"Content-Type": content_type}), 400)
    if case == "no file":
        assert error["param"] == "file", error
    target.assert_serving()


@pytest.mark.parametrize("fields, param", [
    ({"response_format": "xml"}, "response_format"), ({"temperature": "hot"}, "temperature"),
    ({"timestamp_granularities[]": "word"}, "timestamp_granularities[]"), ({"bogus_field": "1"}, "bogus_field"),
    ({"language": "klingon"}, ANY),
], ids=["format", "temperature", "words", "unknown", "language"])
def test_bad_form_fields(targets, fields, param):
    target = targets["transcriptions"]
    error = assert_error(target.send(**fields), 400)
    assert param == ANY or error["param"] in (param, param.removesuffix("[]")), error
    target.assert_serving()


def test_a_prompt_the_model_cannot_take(served, ctc_model, wav):
    url = served(ctc_model)
    response = post_form(url, "/v1/audio/transcriptions", {"model": MODEL, "prompt": "hello"}, {"file": ("clip.wav", wav)})
    assert_error(response, 400, param="prompt")
    assert post_form(url, "/v1/audio/transcriptions", {"model": MODEL}, {"file": ("clip.wav", wav)}).status == 200


@pytest.mark.parametrize("name", ["transcriptions", "translations"])
def test_audio_endpoints_need_multipart(targets, wav, name):
    target = targets[name]
    assert_error(post(target.url, target.path, {"model": MODEL, "file": b64(wav)}), 415)
    target.assert_serving()


# ------------------------------------------------------------------------------------------------------
# Images and audio the server must not decode, read or fetch
# ------------------------------------------------------------------------------------------------------

@dataclass
class Web:
    """A web server on loopback that would hand out an image to whoever asks, and the paths it was asked for."""

    url: str
    hits: list[str]


@pytest.fixture(scope="module")
def web(png) -> Iterator[Web]:
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Web(f"http://127.0.0.1:{server.server_address[1]}", hits)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def local_files(tmp_path_factory, png, wav) -> dict[str, Path]:
    """A real image and a real WAV file on this machine, which the server must never open."""
    root = tmp_path_factory.mktemp("local_files")
    (root / "image.png").write_bytes(png)
    (root / "clip.wav").write_bytes(wav)
    return {"image": root / "image.png", "ctc": root / "clip.wav"}


@pytest.mark.parametrize("name", ["image", "ctc"])
def test_a_local_path_or_url_is_refused_never_read(targets, local_files, web, name):
    target, path = targets[name], local_files[name]
    for inputs in (str(path), f"file://{path}", f"{web.url}/{path.name}", [str(path)], path.name):
        assert_error(target.send(inputs=inputs), 400)
        target.assert_serving()
    assert web.hits == []


@pytest.mark.parametrize("name", ["image", "ctc"])
@pytest.mark.parametrize("inputs", ["bm90IGFuIGltYWdlIGF0IGFsbA==", "data:image/png;base64,bm90IGFuIGltYWdl",
                                    "data:image/png;base64,%%%", "data:text/plain,hello", "", "!!!not base64!!!"],
                         ids=["garbage", "garbage-url", "bad-base64-url", "plain-url", "empty", "not-base64"])
def test_undecodable_inputs(targets, name, inputs):
    target = targets[name]
    assert_error(target.send(inputs=inputs), 400)
    target.assert_serving()


# ------------------------------------------------------------------------------------------------------
# The wire format of streams
# ------------------------------------------------------------------------------------------------------

def test_stream_wire_format(targets):
    target = targets["chat"]
    response = target.send(stream=True, max_tokens=4)
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream"), response
    data = events(response.body)
    assert data[-1] == "[DONE]" and all(isinstance(d, dict) for d in data[:-1]), data
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert data[-2]["choices"][0]["delta"] == {} and data[-2]["choices"][0]["finish_reason"] in ("length", "stop")
