"""The server under load on loopback: 64 client threads, 2,000 embedding requests (one text or several), every answer
the embedding of its own texts; concurrent streaming chats, each its own answer; a client that goes away mid-stream."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import openai
import pytest
from server_http import Stream, get, post

MODEL = "model.onnx"
THREADS, REQUESTS = 64, 2000
WORDS = "the quick brown fox jumps over lazy dog a man is playing guitar stock market fell sharply today cat sleeps".split()
POOL = [" ".join(random.Random(i).choices(WORDS, k=3 + i % 9)) for i in range(48)]
CHATS = [[{"role": "user", "content": text}] for text in ("Hello there", "Tell me a story.", "What is the capital?",
                                                          "The quick brown fox")]
LONG = 480  # new tokens of a long generation: with the chat's prompt, within the model's 512 positions


@pytest.fixture(scope="module")
def embed_url(served, embedding_model) -> str:
    return served(embedding_model)


@pytest.fixture(scope="module")
def expected(embedding_model, runtimes) -> dict[str, np.ndarray]:
    vectors = runtimes(embedding_model).encode(POOL)
    assert len({tuple(np.round(v, 4)) for v in vectors}) == len(POOL)
    return dict(zip(POOL, vectors))


def requests_to_send() -> list[str | list[str]]:
    """One text alone (a string) or in a list, or 2 to 6 texts: the same list every run."""
    rng = random.Random(7)
    out: list[str | list[str]] = []
    for _ in range(REQUESTS):
        size = rng.choice([1, 1, 1, 2, 3, 6])
        texts = rng.sample(POOL, size)
        out.append(texts[0] if size == 1 and rng.random() < 0.5 else texts)
    return out


def check_one(url: str, inputs: str | list[str], expected: dict[str, np.ndarray]) -> str | None:
    """None if the answer is the embedding of each of its texts, else what went wrong."""
    try:
        response = post(url, "/v1/embeddings", {"model": MODEL, "input": inputs, "encoding_format": "float"}, timeout=60)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status != 200:
        return f"{response.status}: {response.body[:300]!r}"
    texts = [inputs] if isinstance(inputs, str) else inputs
    data = response.json()["data"]
    if [d["index"] for d in data] != list(range(len(texts))):
        return f"indices {[d['index'] for d in data]} for {len(texts)} inputs"
    for text, item in zip(texts, data):
        if not np.allclose(item["embedding"], expected[text], atol=1e-5, rtol=0):
            return f"mixed up: the answer for {text!r} is not its embedding"
    return None


def batching(url: str) -> tuple[int, int] | None:
    """The server's (batches, batched requests) counts where /health gives them."""
    body = get(url, "/health").json()
    if not {"batches", "batched_requests"} <= set(body):
        return None
    return body["batches"], body["batched_requests"]


def test_embeddings_under_load(embed_url, expected):
    jobs = requests_to_send()
    before = batching(embed_url)
    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        problems = [p for p in pool.map(lambda inputs: check_one(embed_url, inputs, expected), jobs) if p]
    elapsed = time.monotonic() - started
    assert not problems, f"{len(problems)} of {REQUESTS} requests failed, e.g. {problems[:5]}"
    assert elapsed < 110, f"{REQUESTS} requests took {elapsed:.0f} s"
    after = batching(embed_url)
    if before is None or after is None:
        pytest.skip("the server exposes no batching counts (/health has no batches, batched_requests)")
    batches, batched = after[0] - before[0], after[1] - before[1]
    assert batched >= REQUESTS and batches < batched * 0.9, (batches, batched)


def test_concurrent_streams_each_get_their_own_answer(served, chat_model, runtimes):
    client = openai.OpenAI(base_url=f"{served(chat_model)}/v1", api_key="unused", max_retries=0, timeout=120)
    runtime = runtimes(chat_model)
    barrier = threading.Barrier(len(CHATS))

    def stream(messages: list[dict[str, str]]) -> str:
        barrier.wait(30)
        chunks = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(len(CHATS)) as pool:
        streamed = list(pool.map(stream, CHATS))
    expected = [runtime(m, max_new_tokens=24, do_sample=False, return_full_text=False)[0]["generated_text"] for m in CHATS]
    assert streamed == expected
    assert len(set(expected)) == len(CHATS)


def chat_payload(tokens: int, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": CHATS[1], "max_tokens": tokens, "temperature": 0, **fields}


@pytest.fixture(scope="module")
def one_at_a_time(servers, chat_model) -> tuple[str, float]:
    """A chat server with --max-concurrent 1, and how long its long generation takes."""
    url = servers(chat_model, "--max-concurrent", "1")
    started = time.monotonic()
    whole = post(url, "/v1/chat/completions", chat_payload(LONG))
    assert whole.status == 200 and whole.json()["usage"]["completion_tokens"] == LONG, whole
    return url, time.monotonic() - started


def timed_short_request(url: str, done: list[float]) -> threading.Thread:
    def run() -> None:
        assert post(url, "/v1/chat/completions", chat_payload(2)).status == 200
        done.append(time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_max_concurrent_generations(one_at_a_time):
    """A second generation waits for the one running."""
    url, _ = one_at_a_time
    stream, done = Stream(url, chat_payload(LONG, stream=True)), []
    thread = timed_short_request(url, done)
    assert stream.finish().rstrip().endswith(b"data: [DONE]")
    finished = time.monotonic()
    thread.join(60)
    assert done and done[0] >= finished - 0.1, "the second generation ran beside the first"


def test_a_client_that_goes_away_mid_stream(one_at_a_time):
    """The long stream a client left is stopped: the next request does not wait for it; the server goes on."""
    url, full = one_at_a_time
    Stream(url, chat_payload(LONG, stream=True)).leave()
    started, done = time.monotonic(), []
    timed_short_request(url, done).join(60)
    assert done, "the next request failed"
    waited = done[0] - started
    assert waited < full * 0.6, f"the next request waited {waited:.1f} s; the whole generation takes {full:.1f} s"
