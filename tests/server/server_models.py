"""The tiny models the server tests serve, built offline with the builders of tests/models, each exported and embedded
as ONE self-contained .onnx file; and `Served`, the runtime file's `serve` command run as users run it (the file
copied alone into an empty folder, a subprocess).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the runtime the other tests import (runtime_under_test): the checkout's file, or the copy ONNXMETA_RUNTIME_FILE names
RUNTIME_FILE = Path(os.environ.get("ONNXMETA_RUNTIME_FILE") or Path(__file__).resolve().parents[2] / "runtime" /
                    "onnxmeta_runtime.py")
BERT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
READY = re.compile(r"^serving (\S+) \((\S+)\) on (http://\S+)$")


def _embed(graph: Path, folder: Path, out: Path) -> Path:
    """graph with the model folder's metadata embedded (vocabulary included): one self-contained file."""
    from authoring import embed_metadata

    out.parent.mkdir(parents=True, exist_ok=True)
    embed_metadata(graph, folder, out, include_vocab=True)
    return out


# ------------------------------------------------------------------------------------------------------
# The models (each builder takes an empty folder and returns the path of its one-file model)
# ------------------------------------------------------------------------------------------------------

def text_generation(root: Path) -> Path:
    """The Llama of test_parity_text_generation (grouped-query attention, a byte-level BPE with a chat template),
    exported without a cache: the fastest to build."""
    from generation_models import build_model, export_without_cache

    model = build_model("llama", root / "hf")
    return _embed(export_without_cache(model, root / "graph.onnx"), root / "hf", root / "chat" / "model.onnx")


def sentence_embedder(root: Path) -> Path:
    """A sentence-transformers folder (BERT, mean pooling, normalized) around a tiny random BertModel."""
    from helpers import export_onnx, tiny_model

    folder = root / "hf"
    model = tiny_model(folder, "AutoModel", seed=3)
    modules = [("Transformer", ""), ("Pooling", "1_Pooling"), ("Normalize", "2_Normalize")]
    (folder / "modules.json").write_text(json.dumps([
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(modules)]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "mean"}))
    (folder / "2_Normalize").mkdir()
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    graph = export_onnx(model, root / "graph.onnx", BERT_INPUTS, output="last_hidden_state")
    return _embed(graph, folder, root / "embed" / "model.onnx")


def classifier(root: Path, *, num_labels: int, problem_type: str | None = None, seed: int = 7) -> Path:
    """A tiny BERT text classifier: num_labels=1 is a cross-encoder (one logit, sigmoid)."""
    from helpers import export_onnx, tiny_classifier

    model = tiny_classifier(root / "hf", num_labels=num_labels, problem_type=problem_type, seed=seed)
    return _embed(export_onnx(model, root / "graph.onnx", BERT_INPUTS), root / "hf", root / "classify" / "model.onnx")


def question_answering(root: Path) -> Path:
    """A tiny BERT extractive question-answering model (start and end logits)."""
    from helpers import export_onnx, limited, tiny_model, trained_wordpiece

    model = tiny_model(root / "hf", "AutoModelForQuestionAnswering", limited(trained_wordpiece), seed=5)
    graph = export_onnx(model, root / "graph.onnx", BERT_INPUTS, output=("start_logits", "end_logits"))
    return _embed(graph, root / "hf", root / "qa" / "model.onnx")


def image_classifier(root: Path) -> Path:
    """A tiny random ViT image classifier (6 labels, 32x32 pixels)."""
    from image_helpers import export_vision_onnx, tiny_vit

    model = tiny_vit(root / "hf", "classification", seed=3)
    graph = export_vision_onnx(model, root / "graph.onnx", ["pixel_values"], ["logits"], 32)
    return _embed(graph, root / "hf", root / "vit" / "model.onnx")


def ctc(root: Path) -> Path:
    """A tiny random Wav2Vec2ForCTC with a letters tokenizer (automatic-speech-recognition)."""
    from audio_models import ctc_model, export_audio

    model = ctc_model(root / "hf")
    graph = export_audio(model, root / "graph.onnx", ["input_values", "attention_mask"])
    return _embed(graph, root / "hf", root / "ctc" / "model.onnx")


def whisper(root: Path) -> Path:
    """A tiny random multilingual Whisper (the real whisper-tiny tokenizer where ../shared is present), exported by
    Optimum and merged into one file, copied alone into an empty folder."""
    from helpers import SHARED
    from whisper_models import build, export, one_file

    build(root / "hf", multilingual=True, real_tokenizer=(SHARED / "openai__whisper-tiny").exists())
    merged = one_file(export([root / "hf"])[0], root / "hf")
    alone = root / "whisper" / "model.onnx"
    alone.parent.mkdir()
    return Path(shutil.copyfile(merged, alone))


# ------------------------------------------------------------------------------------------------------
# Signals, images and audio files as clients send them
# ------------------------------------------------------------------------------------------------------

def text_to_speech(root: Path) -> Path:
    """A tiny random VitsModel (text-to-audio), exported by `onnxmeta export` (the noise scales at 0: one waveform a text)."""
    from tts_models import tiny_vits

    from authoring.export import export

    tiny_vits(root / "hf")
    out = root / "tts" / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    export(root / "hf", out)
    return out


def wav_bytes(samples: Any, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV file of float samples in [-1, 1], written by the standard library."""
    import io
    import wave

    import numpy as np

    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def speech(seconds: float, seed: int) -> bytes:
    """A speech-like synthetic signal (tests/models/audio_models.signal) as WAV bytes."""
    from audio_models import signal as synthetic_signal

    return wav_bytes(synthetic_signal(seconds, seed=seed))


def image_png(width: int, height: int, seed: int) -> bytes:
    from image_helpers import png_bytes, synthetic

    return png_bytes(synthetic(width, height, seed=seed))


# ------------------------------------------------------------------------------------------------------
# The server as a subprocess
# ------------------------------------------------------------------------------------------------------

class Served:
    """`python onnxmeta_runtime.py serve MODEL --port 0 ARGS` with the runtime file copied alone into an empty folder
    (the working directory), as users vendor it. `url` once it printed its `serving ... on URL` line."""

    def __init__(self, model: Path, workdir: Path, *args: str, timeout: float = 120.0) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RUNTIME_FILE, workdir / RUNTIME_FILE.name)
        self.model, self.stderr_path = model, workdir / "stderr.txt"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ONNXMETA_RUNTIME_FILE")}
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, RUNTIME_FILE.name, "serve", str(model), "--port", "0", *args], cwd=workdir,
            stdout=subprocess.PIPE, stderr=self._stderr, env={**env, "PYTHONUNBUFFERED": "1"}, text=True)
        self.model_id, self.task, self.url = self._wait_ready(timeout)
        # keep reading stdout, so that a chatty server never blocks on a full pipe
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_ready(self, timeout: float) -> tuple[str, str, str]:
        found: list[str] = []

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                found.append(line.rstrip("\n"))
                if READY.match(found[-1]):
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        match = READY.match(found[-1]) if found else None
        if match is None:
            self.kill()
            raise AssertionError(f"the server did not print its 'serving ... on URL' line within {timeout:.0f} s; "
                                 f"stdout: {found!r}\nstderr:\n{self.stderr()}")
        return match.group(1), match.group(2), match.group(3)

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def stderr(self) -> str:
        """The end of what the server wrote to stderr."""
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-5000:]

    def terminate(self) -> None:
        """SIGTERM (graceful shutdown)."""
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int | None:
        """The exit status within timeout, else None."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Kill the server if it still runs; release its stderr file."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._stderr.close()

    def stop(self) -> None:
        """SIGTERM, then assert that the server exited 0 within 30 s (killed otherwise)."""
        if self.process.poll() is None:
            self.terminate()
        code = self.wait(30.0)
        self.kill()
        assert code == 0, f"the server exited with {code} after SIGTERM (None: still running after 30 s)\n{self.stderr()}"


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll condition until it holds or timeout passes; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()
