"""Real Hugging Face files (../shared/data, or ONNXMETA_SHARED_DATA): the parity variants built from them run
where they are present; a clone without them runs the variants with tokenizers trained in the tests."""

from __future__ import annotations

import pytest

from helpers import SHARED

# The folders the suite's real-file variants read.
USED = (
    "bert-base-uncased", "distilbert-base-uncased-distilled-squad", "distilbert-base-uncased-finetuned-sst-2-english",
    "dslim__bert-base-NER", "deepset__roberta-base-squad2", "gpt2", "google__vit-base-patch16-224",
    "openai__clip-vit-base-patch32", "openai__whisper-large-v3", "openai__whisper-tiny", "roberta-base",
    "sentence-transformers__all-MiniLM-L6-v2", "t5-small",
)


def test_real_files_are_present():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the parity variants on real tokenizers ({', '.join(USED)}) are not "
                    "collected; those on tokenizers trained in the tests cover every task and option")
    missing = [name for name in USED if not (SHARED / name).exists()]
    assert not missing, f"{SHARED} lacks {missing}"
