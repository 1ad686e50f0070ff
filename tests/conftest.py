from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test this checkout whatever an editable install elsewhere points at.
_TESTS = Path(__file__).resolve().parent
_ROOT = _TESTS.parent
# tests (runtime_under_test), tests/models (the builders of tiny models and folders: helpers, audio_models...),
# tests/corpus (make_corpus builds the crafted files and the small models many tests use), tools (generate_tables,
# which test_tables runs), the runtime file and the authoring package.
sys.path[:0] = [str(_TESTS), str(_TESTS / "models"), str(_TESTS / "corpus"), str(_ROOT / "tools"), str(_ROOT / "runtime"),
                str(_ROOT)]

from helpers import export_onnx, tiny_classifier  # noqa: E402


class Built:
    """A model folder, its torch model, and its plain ONNX export."""

    def __init__(self, folder: Path, model, onnx_path: Path, input_names: list[str]) -> None:
        self.folder, self.model, self.onnx, self.input_names = folder, model, onnx_path, input_names


@pytest.fixture(scope="session")
def bert_classifier(tmp_path_factory) -> Built:
    """Tiny BERT text classifier (3 labels, bert-base-uncased WordPiece tokenizer), plain ONNX export."""
    root = tmp_path_factory.mktemp("bert")
    model = tiny_classifier(root / "hf")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    return Built(root / "hf", model, export_onnx(model, root / "model.onnx", names), names)


@pytest.fixture(scope="session")
def bert_embedded(bert_classifier, tmp_path_factory) -> Path:
    """bert_classifier with full metadata embedded (vocabulary included)."""
    from authoring import embed_metadata

    out = tmp_path_factory.mktemp("bert_embedded") / "model.onnx"
    embed_metadata(bert_classifier.onnx, bert_classifier.folder, out, include_vocab=True)
    return out


@pytest.fixture(scope="module")
def runtime(bert_embedded):
    """A Runtime of bert_embedded, one per module (a module testing another model defines its own)."""
    from runtime_under_test import rt

    return rt.Runtime(bert_embedded)


@pytest.fixture(scope="session")
def seq2seq_exports(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Tiny T5, BART and Whisper (model folder, Optimum export folder), exported in one Optimum process."""
    from seq2seq_models import export_all

    return export_all(tmp_path_factory.mktemp("seq2seq"))
