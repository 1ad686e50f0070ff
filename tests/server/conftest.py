"""Fixtures of the server tests: tiny one-file models built once per session (tests/server/server_models.py), the
runtime called in this process as the oracle, and servers (the runtime file's `serve` command in a subprocess)
started once per model and arguments, each stopped by SIGTERM at the end of the session (it must exit 0)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import server_models
from runtime_under_test import rt
from server_models import Served

# one onnxruntime thread everywhere: the tiny models gain nothing from more, and the test machine is shared
THREADS = ("--threads", "1")


def _model(fixture: str, build: Callable[[Path], Path], doc: str) -> Any:
    """A session fixture called `fixture`: the one-file model `build` makes in a folder of its own."""

    def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return build(tmp_path_factory.mktemp(f"server_{fixture}"))

    built.__doc__ = doc
    return pytest.fixture(scope="session", name=fixture)(built)


chat_model = _model("chat_model", server_models.text_generation, "text-generation with a chat template (a tiny Llama, no cache).")
embedding_model = _model("embedding_model", server_models.sentence_embedder,
                         "feature-extraction, a sentence-transformers folder (mean pooling, normalized).")
rerank_model = _model("rerank_model", lambda root: server_models.classifier(root, num_labels=1),
                      "text-classification with one label: a cross-encoder.")
multilabel_model = _model("multilabel_model", lambda root: server_models.classifier(
    root, num_labels=3, problem_type="multi_label_classification", seed=2),
    "text-classification, three labels, multi_label_classification (sigmoid).")
qa_model = _model("qa_model", server_models.question_answering, "question-answering (extractive).")
vit_model = _model("vit_model", server_models.image_classifier, "image-classification (a tiny ViT).")
ctc_model = _model("ctc_model", server_models.ctc, "automatic-speech-recognition with CTC (a tiny wav2vec2).")
tts_model = _model("tts_model", server_models.text_to_speech, "text-to-audio (a tiny VITS, its noise scales at 0).")
whisper_model = _model("whisper_model", server_models.whisper, "automatic-speech-recognition with a multilingual Whisper.")


class Servers:
    """Starts servers: `servers(model, *args)` is the URL of the one server of these arguments (started on first
    use); `servers.start(model, *args)` a fresh one the caller owns. All are stopped at the end of the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shared: dict[tuple[str, ...], Served] = {}
        self.all: list[Served] = []

    def __call__(self, model: Path, *args: str) -> str:
        return self.served(model, *args).url

    def served(self, model: Path, *args: str) -> Served:
        key = (str(model), *args)
        if key not in self.shared:
            self.shared[key] = self.start(model, *args)
        return self.shared[key]

    def start(self, model: Path, *args: str) -> Served:
        server = Served(model, self.root / f"server{len(self.all)}", *THREADS, *args)
        self.all.append(server)
        return server

    def stop_all(self) -> list[str]:
        """Stop every server still running; the failures (an exit other than 0)."""
        failures = []
        for server in self.all:
            if server.process.poll() is not None:  # stopped by its test
                server.kill()
                continue
            try:
                server.stop()
            except AssertionError as exc:
                failures.append(f"{server.model}: {exc}")
        return failures


@pytest.fixture(scope="session")
def servers(tmp_path_factory) -> Iterator[Servers]:
    started = Servers(tmp_path_factory.mktemp("servers"))
    yield started
    failures = started.stop_all()
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="session")
def served(servers) -> Callable[..., str]:
    """served(model_path, *args): the base URL of a server of that model (one per model and arguments)."""
    return servers


@pytest.fixture(scope="session")
def runtimes() -> Callable[[Path], Any]:
    """runtimes(model_path): one Runtime of the file per session, called in this process (the oracle)."""
    cache: dict[Path, Any] = {}

    def get(path: Path) -> Any:
        if path not in cache:
            cache[path] = rt.Runtime(path, intra_op_num_threads=1)
        return cache[path]

    return get
