"""The server through the official `openai` client: chat, completions, embeddings, transcriptions and translations,
every answer compared with the runtime called directly in this process on the same file (/tmp/serve_spec.md's
mapping of the request's fields to the Runtime's options)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from runtime_under_test import rt
from server_models import speech

MODEL = "model.onnx"  # every built file is called so: its id
CHATS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "You are a robot."}, {"role": "user", "content": "Tell me a story about the sea."}],
]
PROMPTS = ["Once upon a time", "The quick brown fox jumps over"]
TEXTS = ["A man is playing a guitar.", "Someone is playing an instrument.", "The stock market fell sharply today.",
         "the cat sleeps on the mat"]
TOKENS = 12


@dataclass
class Endpoint:
    """A served model: the client on its URL, the runtime on its file (the oracle), its model folder."""

    url: str
    client: openai.OpenAI
    runtime: Any
    folder: Path

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.folder)


def endpoint(served: Any, runtimes: Any, model: Path) -> Endpoint:
    url = served(model)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    return Endpoint(url, client, runtimes(model), model.parents[1] / "hf")


@pytest.fixture(scope="module")
def chat(served, runtimes, chat_model) -> Endpoint:
    return endpoint(served, runtimes, chat_model)


@pytest.fixture(scope="module")
def chat_tokenizer(chat) -> Any:
    return chat.tokenizer()


@pytest.fixture(scope="module")
def embed(served, runtimes, embedding_model) -> Endpoint:
    return endpoint(served, runtimes, embedding_model)


@pytest.fixture(scope="module")
def whisper(served, runtimes, whisper_model) -> Endpoint:
    return endpoint(served, runtimes, whisper_model)


@pytest.fixture(scope="module")
def ctc(served, runtimes, ctc_model) -> Endpoint:
    return endpoint(served, runtimes, ctc_model)


@pytest.fixture(scope="module")
def clips() -> list[bytes]:
    """Two different 3 s speech-like WAV files."""
    return [speech(3.0, seed=1), speech(3.0, seed=2)]


# ------------------------------------------------------------------------------------------------------
# What the runtime answers
# ------------------------------------------------------------------------------------------------------

def generated(runtime: Any, prompt: Any, tokens: int = TOKENS, **options: Any) -> list[str]:
    """The new texts the runtime generates for one prompt or chat (greedy unless options say otherwise)."""
    options = {"do_sample": False, **options}
    return [r["generated_text"] for r in runtime(prompt, max_new_tokens=tokens, return_full_text=False, **options)]


def new_token_count(runtime: Any, prompt: Any, prompt_tokens: int, tokens: int = TOKENS) -> int:
    """How many tokens greedy decoding adds (fewer than tokens where it ends on eos)."""
    ids = runtime(prompt, max_new_tokens=tokens, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    return len(ids) - prompt_tokens


def chat_prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


def usage(answer: Any) -> tuple[int, int, int]:
    return answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens


def assert_varied(texts: list[str]) -> None:
    """Different inputs gave different, non-empty outputs (a tiny random model can be degenerate)."""
    assert all(texts) and len(set(texts)) == len(texts), texts


# ------------------------------------------------------------------------------------------------------
# Chat
# ------------------------------------------------------------------------------------------------------

def test_chat_greedy(chat, chat_tokenizer):
    contents = []
    for messages in CHATS:
        answer = chat.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=TOKENS, temperature=0)
        assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-") and answer.model == MODEL
        assert isinstance(answer.created, int) and len(answer.choices) == 1
        choice = answer.choices[0]
        assert choice.message.content == generated(chat.runtime, messages)[0]
        assert choice.message.role == "assistant" and choice.index == 0 and choice.logprobs is None
        prompt = chat_prompt_tokens(chat_tokenizer, messages)
        completion = new_token_count(chat.runtime, messages, prompt)
        assert usage(answer) == (prompt, completion, prompt + completion)
        assert choice.finish_reason == ("length" if completion == TOKENS else "stop")
        contents.append(choice.message.content)
    assert_varied(contents)


def test_chat_greedy_n_gives_the_one_answer_n_times(chat, chat_tokenizer):
    answer = chat.client.chat.completions.create(model=MODEL, messages=CHATS[0], max_tokens=TOKENS, temperature=0, n=2)
    expected = generated(chat.runtime, CHATS[0])[0]
    assert [(c.index, c.message.content) for c in answer.choices] == [(0, expected), (1, expected)]
    prompt = chat_prompt_tokens(chat_tokenizer, CHATS[0])
    completion = new_token_count(chat.runtime, CHATS[0], prompt)
    # OpenAI counts the prompt once and the tokens of every choice
    assert usage(answer) == (prompt, 2 * completion, prompt + 2 * completion)


def test_chat_seeded_sampling(chat):
    def ask(seed: int) -> list[str]:
        answer = chat.client.chat.completions.create(model=MODEL, messages=CHATS[1], max_tokens=TOKENS, temperature=0.9,
                                                     seed=seed, n=2)
        return [c.message.content for c in sorted(answer.choices, key=lambda c: c.index)]

    expected = generated(chat.runtime, CHATS[1], do_sample=True, temperature=0.9, seed=5, num_return_sequences=2)
    first = ask(5)
    assert first == expected
    assert_varied(first)
    assert ask(5) == first
    assert ask(6) != first


def stream_chat(chat: Endpoint, messages: list[dict[str, str]], tokens: int = TOKENS, **options: Any) -> list[Any]:
    return list(chat.client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=tokens,
                                                    temperature=0, stream=True, **options))


def test_chat_stream(chat):
    whole = chat.client.chat.completions.create(model=MODEL, messages=CHATS[1], max_tokens=TOKENS, temperature=0)
    chunks = stream_chat(chat, CHATS[1], stream_options={"include_usage": True})
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    first, *middle, last_choice, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.choices[0].finish_reason is None for c in (first, *middle))
    pieces = [c.choices[0].delta.content for c in middle]
    assert all(pieces) and len(pieces) >= 2, pieces
    joined = "".join(pieces)
    assert joined == whole.choices[0].message.content == "".join(chat.runtime.stream(CHATS[1], max_new_tokens=TOKENS,
                                                                                       do_sample=False))
    assert last_choice.choices[0].finish_reason == whole.choices[0].finish_reason
    assert not last_choice.choices[0].delta.content and last_choice.choices[0].delta.role is None
    assert usage_chunk.choices == [] and usage(usage_chunk) == usage(whole)


def test_chat_stream_without_usage(chat):
    chunks = stream_chat(chat, CHATS[0])
    assert all(c.choices and c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == generated(chat.runtime, CHATS[0])[0]
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def a_stop_string(text: str) -> str:
    """Three letters from the middle of a generated text."""
    for match in re.finditer(r"[A-Za-z]{3}", text):
        if match.start() >= 2 and text.find(match.group()) == match.start():
            return match.group()
    pytest.fail(f"no stop string to pick in the degenerate generated text {text!r}")


def test_stop_strings_cut_the_text_before_them(chat):
    full = generated(chat.runtime, CHATS[0], 24)[0]
    stop = a_stop_string(full)
    stopped = generated(chat.runtime, CHATS[0], 24, stop_sequence=[stop])[0]
    expected = stopped[: stopped.index(stop)]
    assert expected and full.startswith(expected)
    for stops in (stop, ["never in the text, surely", stop]):
        answer = chat.client.chat.completions.create(model=MODEL, messages=CHATS[0], max_tokens=24, temperature=0,
                                                     stop=stops)
        assert answer.choices[0].message.content == expected, stops
        assert answer.choices[0].finish_reason == "stop"
    # OpenAI's streams never carry the stop string either
    chunks = stream_chat(chat, CHATS[0], 24, stop=stop)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def penalized_greedy(chat: Endpoint, ids: list[int], steps: int, *, logit_bias: dict[str, float] | None = None,
                     frequency_penalty: float = 0.0, presence_penalty: float = 0.0) -> list[int]:
    """Greedy decoding on the file's graph, with OpenAI's additive penalties over the generated tokens and its logit
    bias: the oracle of the options the runtime does not have."""
    session, eos = chat.runtime.session, chat.runtime.config["eos_token_id"]
    ids, new = list(ids), []
    for _ in range(steps):
        row = np.array([ids], dtype=np.int64)
        logits = session.run(["logits"], {"input_ids": row, "attention_mask": np.ones_like(row),
                                          "position_ids": np.arange(len(ids))[None]})[0][0, -1].astype(np.float64)
        counts = np.bincount(np.array(new, dtype=np.int64), minlength=len(logits))
        logits -= frequency_penalty * counts + presence_penalty * (counts > 0)
        for token, bias in (logit_bias or {}).items():
            logits[int(token)] += bias
        new.append(int(np.argmax(logits)))
        ids.append(new[-1])
        if new[-1] == eos:
            break
    return new


def test_chat_penalties_and_logit_bias(chat, chat_tokenizer):
    prompt = chat_tokenizer.apply_chat_template(CHATS[1], add_generation_prompt=True, tokenize=True)["input_ids"]
    plain = penalized_greedy(chat, prompt, 24)
    # the oracle is the runtime where there are no penalties
    assert chat_tokenizer.decode(plain, skip_special_tokens=True) == generated(chat.runtime, CHATS[1], 24)[0]
    favourite = chat_tokenizer("robot", add_special_tokens=False)["input_ids"][0]
    for options in ({"frequency_penalty": 1.5}, {"presence_penalty": 2.0}, {"logit_bias": {str(plain[0]): -100}},
                    {"logit_bias": {str(favourite): 100}},
                    {"frequency_penalty": 0.7, "presence_penalty": 0.4, "logit_bias": {str(plain[1]): -5, str(favourite): 3}}):
        tokens = penalized_greedy(chat, prompt, 24, **options)
        assert tokens != plain, f"{options} change nothing here: pick others"
        answer = chat.client.chat.completions.create(model=MODEL, messages=CHATS[1], max_tokens=24, temperature=0,
                                                     **options)
        assert answer.choices[0].message.content == chat_tokenizer.decode(tokens, skip_special_tokens=True), options
        assert answer.usage.completion_tokens == len(tokens)


# ------------------------------------------------------------------------------------------------------
# Completions
# ------------------------------------------------------------------------------------------------------

def complete(chat: Endpoint, prompt: Any, **options: Any) -> Any:
    return chat.client.completions.create(model=MODEL, prompt=prompt, max_tokens=TOKENS, temperature=0, **options)


def test_completion_of_a_string(chat, chat_tokenizer):
    texts = []
    for prompt in PROMPTS:
        answer = complete(chat, prompt)
        assert answer.object == "text_completion" and answer.model == MODEL and len(answer.choices) == 1
        choice = answer.choices[0]
        assert choice.text == generated(chat.runtime, prompt)[0] and choice.index == 0 and choice.logprobs is None
        prompt_tokens = len(chat_tokenizer(prompt)["input_ids"])
        completion = new_token_count(chat.runtime, prompt, prompt_tokens)
        assert usage(answer) == (prompt_tokens, completion, prompt_tokens + completion)
        assert choice.finish_reason == ("length" if completion == TOKENS else "stop")
        texts.append(choice.text)
    assert_varied(texts)


def test_completion_of_a_list_of_prompts_with_n(chat, chat_tokenizer):
    answer = complete(chat, PROMPTS, n=2)
    expected = [generated(chat.runtime, prompt)[0] for prompt in PROMPTS]
    assert sorted((c.index, c.text) for c in answer.choices) == [(i, expected[i // 2]) for i in range(4)]
    prompt_tokens = sum(len(chat_tokenizer(p)["input_ids"]) for p in PROMPTS)
    assert answer.usage.prompt_tokens == prompt_tokens
    assert answer.usage.total_tokens == prompt_tokens + answer.usage.completion_tokens


def test_completion_of_token_ids(chat, chat_tokenizer):
    ids = [chat_tokenizer(p)["input_ids"] for p in PROMPTS]
    assert complete(chat, ids[0]).choices[0].text == generated(chat.runtime, PROMPTS[0])[0]
    texts = sorted((c.index, c.text) for c in complete(chat, ids).choices)
    assert texts == [(i, generated(chat.runtime, p)[0]) for i, p in enumerate(PROMPTS)]
    assert complete(chat, ids[1]).usage.prompt_tokens == len(ids[1])


def test_completion_echo(chat):
    answer = complete(chat, PROMPTS[0], echo=True)
    assert answer.choices[0].text == PROMPTS[0] + generated(chat.runtime, PROMPTS[0])[0]


def test_completion_stream(chat):
    chunks = list(complete(chat, PROMPTS[1], stream=True))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == complete(chat, PROMPTS[1]).choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")


# ------------------------------------------------------------------------------------------------------
# Embeddings
# ------------------------------------------------------------------------------------------------------

def vectors(answer: Any) -> np.ndarray:
    assert answer.object == "list" and answer.model == MODEL
    assert [d.index for d in answer.data] == list(range(len(answer.data)))
    assert all(d.object == "embedding" for d in answer.data)
    return np.array([d.embedding for d in answer.data], dtype=np.float64)


def test_embeddings_of_a_string_and_a_list(embed):
    expected = embed.runtime.encode(TEXTS)
    single = embed.client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(vectors(single), expected[:1], atol=1e-5, rtol=0)
    several = vectors(embed.client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float"))
    np.testing.assert_allclose(several, expected, atol=1e-5, rtol=0)
    assert len({tuple(np.round(v, 4)) for v in several}) == len(TEXTS)


def test_embedding_usage_counts_the_tokens(embed):
    tokenizer = embed.tokenizer()
    answer = embed.client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)  # the tokens the model ran on, special ones too
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (tokens, tokens)


def test_embeddings_base64_equal_float(embed):
    floats = vectors(embed.client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float"))
    encoded = embed.client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="base64")
    raw = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in encoded.data]
    np.testing.assert_allclose(np.array(raw), floats, atol=1e-7, rtol=0)
    # the client's default: it asks for base64 and decodes it itself
    np.testing.assert_allclose(vectors(embed.client.embeddings.create(model=MODEL, input=TEXTS)), floats, atol=1e-7, rtol=0)


def test_matryoshka_dimensions(embedding_model, tmp_path):
    """A model whose card records MatryoshkaLoss's dims embeds them; the server cuts its embeddings to `dimensions`
    (renormalized, as the model normalizes), and refuses more than it has."""
    import shutil

    from server_models import _embed

    folder = shutil.copytree(embedding_model.parents[1] / "hf", tmp_path / "hf")
    (folder / "README.md").write_text('## Training\n```json\n{"loss": "MatryoshkaLoss", "matryoshka_dims": [32, 16, 8]}\n```\n')
    path = _embed(embedding_model.parents[1] / "graph.onnx", folder, tmp_path / "model.onnx")
    runtime = rt.Runtime(path)
    assert runtime.metadata[rt.KEY_SENTENCE_TRANSFORMERS]["matryoshka_dimensions"] == [32, 16, 8]
    with rt.Server(runtime) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        short = vectors(client.embeddings.create(model=MODEL, input=TEXTS, dimensions=16, encoding_format="float"))
        full = runtime.encode(TEXTS)[:, :16]
        np.testing.assert_allclose(short, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
        with pytest.raises(openai.BadRequestError, match="at most 32"):
            client.embeddings.create(model=MODEL, input=TEXTS, dimensions=64)


def test_embeddings_of_token_ids(embed):
    tokenizer = embed.tokenizer()
    ids = [tokenizer(t)["input_ids"] for t in TEXTS[:2]]
    expected = embed.runtime.encode(TEXTS[:2])
    one = embed.client.embeddings.create(model=MODEL, input=ids[0], encoding_format="float")
    np.testing.assert_allclose(vectors(one), expected[:1], atol=1e-5, rtol=0)
    two = embed.client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    np.testing.assert_allclose(vectors(two), expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------
# Audio
# ------------------------------------------------------------------------------------------------------

def transcribe(endpoint: Endpoint, wav: bytes, **options: Any) -> Any:
    return endpoint.client.audio.transcriptions.create(model=MODEL, file=("clip.wav", wav, "audio/wav"), **options)


def assert_text_answer(answer: Any, text: str) -> None:
    """response_format text: the text itself (OpenAI ends it with a newline)."""
    assert isinstance(answer, str) and answer in (text, text + "\n"), (answer, text)


SEGMENT_KEYS = {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
                "no_speech_prob"}


def verbose(endpoint: Endpoint, wav: bytes, task: str) -> dict[str, Any]:
    """A verbose_json answer, its form checked (every field, 3 s of audio)."""
    answer = transcribe(endpoint, wav, response_format="verbose_json").to_dict()
    assert set(answer) >= {"task", "language", "duration", "text", "segments"}, answer
    assert answer["task"] == task and isinstance(answer["language"], str)
    assert answer["duration"] == pytest.approx(3.0, abs=0.01)
    assert answer["segments"] and all(set(s) == SEGMENT_KEYS for s in answer["segments"]), answer["segments"]
    assert [s["id"] for s in answer["segments"]] == list(range(len(answer["segments"])))
    assert all(isinstance(t, int) for s in answer["segments"] for t in s["tokens"])
    return answer


def assert_transcribes(served: Endpoint, clips: list[bytes]) -> list[str]:
    """Each clip's transcription as json and as text equals the runtime's; the texts."""
    texts = [served.runtime(wav)["text"] for wav in clips]
    assert_varied(texts)
    for wav, text in zip(clips, texts):
        assert transcribe(served, wav).text == text
        assert_text_answer(transcribe(served, wav, response_format="text"), text)
    return texts


def test_whisper_transcriptions(whisper, clips):
    assert_transcribes(whisper, clips)


def test_whisper_verbose_json_segments(whisper, clips):
    answer = verbose(whisper, clips[0], "transcribe")
    chunks = whisper.runtime(clips[0], return_timestamps=True)["chunks"]
    segments = answer["segments"]
    assert [s["text"] for s in segments] == [c["text"] for c in chunks]
    assert answer["text"] == "".join(s["text"] for s in segments)
    for segment, chunk in zip(segments, chunks):
        start, end = chunk["timestamp"]
        assert segment["start"] == pytest.approx(start)
        assert segment["end"] == pytest.approx(end if end is not None else answer["duration"], abs=0.02)


def test_whisper_subtitles(whisper, clips):
    segments = verbose(whisper, clips[1], "transcribe")["segments"]
    srt = transcribe(whisper, clips[1], response_format="srt")
    vtt = transcribe(whisper, clips[1], response_format="vtt")
    assert srt.startswith("1\n00:00:") and " --> " in srt, srt
    assert vtt.startswith("WEBVTT") and " --> " in vtt, vtt
    for segment in segments:
        assert segment["text"].strip() in srt and segment["text"].strip() in vtt
    granular = transcribe(whisper, clips[1], response_format="verbose_json", timestamp_granularities=["segment"])
    assert granular.to_dict()["segments"] == segments


def test_whisper_language(whisper, clips):
    texts = []
    for language in ("fr", "de"):
        expected = whisper.runtime(clips[0], generate_kwargs={"language": language, "task": "transcribe"})["text"]
        assert transcribe(whisper, clips[0], language=language).text == expected
        texts.append(expected)
    assert_varied(texts)


def test_whisper_translations(whisper, clips):
    texts = []
    for wav in clips:
        expected = whisper.runtime(wav, generate_kwargs={"task": "translate"})["text"]
        answer = whisper.client.audio.translations.create(model=MODEL, file=("clip.wav", wav, "audio/wav"))
        assert answer.text == expected
        texts.append(expected)
    assert_varied(texts)
    assert texts[0] != whisper.runtime(clips[0])["text"]


def test_ctc_transcriptions(ctc, clips):
    texts = assert_transcribes(ctc, clips)
    answer = verbose(ctc, clips[0], "transcribe")
    assert answer["text"] == texts[0]
    assert " ".join(" ".join(s["text"] for s in answer["segments"]).split()) == " ".join(texts[0].split())
