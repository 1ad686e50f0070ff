"""/v1/audio/speech (OpenAI's text to speech) on a VITS file, through the official `openai` client and raw HTTP: the
audio equals the runtime's answer for the same text and speaking rate, as a WAV file or raw 16-bit PCM; the fields
the server cannot honour are refused with OpenAI's error object."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import wave
from typing import Any

import numpy as np
import openai
import pytest
from runtime_under_test import rt

MODEL = "model.onnx"
TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog"]


def _pcm(audio: np.ndarray) -> bytes:
    return np.round(np.clip(audio.astype(np.float64), -1, 1) * 32767).astype("<i2").tobytes()


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any, str]:
    request = urllib.request.Request(url + "/v1/audio/speech", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.read(), answer.headers.get("Content-Type")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers.get("Content-Type")


@pytest.fixture(scope="module")
def url(served, tts_model) -> str:
    return served(tts_model)


def test_speech_is_the_runtimes_waveform_as_a_wav_file(url, tts_model, runtimes):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    spoken = []
    for text in TEXTS:
        data = client.audio.speech.create(model=MODEL, voice="alloy", input=text, response_format="wav").content
        expected = runtimes(tts_model)(text)
        with wave.open(io.BytesIO(data)) as wav:
            assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, expected["sampling_rate"])
            frames = wav.readframes(wav.getnframes())
        assert frames == _pcm(expected["audio"].reshape(-1))
        spoken.append(frames)
    assert spoken[0] != spoken[1] and len(spoken[1]) > len(spoken[0])


def test_speed_is_the_speaking_rate_and_pcm_is_raw(url, tts_model, runtimes):
    runtime = runtimes(tts_model)
    status, data, kind = _post(url, {"model": MODEL, "input": TEXTS[1], "voice": "nova", "speed": 2.0,
                                     "response_format": "pcm"})
    assert status == 200 and kind == f"audio/pcm; rate={runtime(TEXTS[1])['sampling_rate']}"
    rate = runtime._task.defaults["speaking_rate"]
    assert data == _pcm(runtime(TEXTS[1], speaking_rate=2.0 * rate)["audio"].reshape(-1))
    assert len(data) < len(_pcm(runtime(TEXTS[1])["audio"].reshape(-1)))


@pytest.mark.parametrize("body, param", [
    ({"input": "hello", "response_format": "mp3"}, "response_format"),
    ({"input": "   "}, "input"),
    ({"input": "hello", "speed": 9}, "speed"),
    ({"input": "hello", "instructions": "whisper it"}, "instructions"),
    ({"input": "hello", "stream_format": "sse"}, "stream_format"),
    ({"input": "hello", "pitch": 2}, "pitch"),
    ({"voice": "alloy"}, "input"),
])
def test_refusals(url, body, param):
    status, error, kind = _post(url, {"model": MODEL, **body})
    assert status == 400 and kind.startswith("application/json"), (status, error)
    assert error["error"]["param"] == param, error


def test_other_models_do_not_serve_speech(served, embedding_model):
    status, error, _ = _post(served(embedding_model), {"model": MODEL, "input": "hello", "voice": "alloy"})
    assert status == 404 and "does not serve /v1/audio/speech" in error["error"]["message"], error
    assert rt.TASKS["text-to-audio"].endpoints == ("/v1/audio/speech",)
