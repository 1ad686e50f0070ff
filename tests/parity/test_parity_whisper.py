"""Whisper speech recognition from ONE file: the runtime against transformers 5's pipeline("automatic-speech-recognition")
on the same PyTorch weights, text and timestamp chunks identical.

Models (tests/models/whisper_models.py): a tiny random multilingual Whisper with the real whisper-tiny tokenizer (a tokenizer
built here when ../shared/data is absent) and an English-only one with a built tokenizer; both with real generation
configs (prompt, lang_to_id, task_to_id, suppressed tokens; max_length 24 to keep the pipeline's 5-beam search short),
exported by Optimum and merged by `python -m authoring embed <export> <model> --include-vocab`. Their weights are
large (init_std 1.0), and each transcript is checked to hold varied tokens, so that a broken runtime cannot pass on a
degenerate output. transformers resamples with torchaudio, absent here: its pipeline gets the array torchaudio
resamples (tests/oracles/torchaudio_oracle.py), the runtime the original rate.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from audio_models import SPEECH_WAV, oracle_signals, read, resampled, signal
from helpers import SHARED
from runtime_under_test import rt

pytestmark = pytest.mark.optimum


class Whisper:
    """A tiny Whisper: its folder, transformers' pipeline on the PyTorch model, and the one file (copied alone)."""

    def __init__(self, folder: Path, onnx: Path) -> None:
        import transformers

        self.folder, self.onnx = folder, onnx
        model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
        self.pipeline = transformers.pipeline(
            "automatic-speech-recognition", model=model, tokenizer=transformers.AutoTokenizer.from_pretrained(folder),
            feature_extractor=transformers.WhisperFeatureExtractor.from_pretrained(folder))
        self.runtime = rt.Runtime(onnx)

    def oracle(self, audio: np.ndarray, **options: Any) -> dict[str, Any]:
        return self.pipeline(audio.copy(), **options)


@pytest.fixture(scope="session")
def whispers(tmp_path_factory) -> dict[str, Whisper]:
    """"multi" (multilingual, the real tokenizer where ../shared is present) and "en" (English-only, built tokenizer),
    exported in one Optimum process and embedded as one file each, then copied alone into an empty folder."""
    from whisper_models import build, export, one_file

    root = tmp_path_factory.mktemp("whisper")
    build(root / "multi", multilingual=True, real_tokenizer=(SHARED / "openai__whisper-tiny").exists())
    build(root / "en", multilingual=False, real_tokenizer=False, seed=1)
    models = {}
    for kind, export_folder in zip(("multi", "en"), export([root / "multi", root / "en"])):
        alone = tmp_path_factory.mktemp(f"whisper-{kind}-alone") / "model.onnx"
        shutil.copyfile(one_file(export_folder, root / kind), alone)
        models[kind] = Whisper(root / kind, alone)
    return models


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    """16 kHz audio: the real speech files where ../shared is present (jfk.flac resampled by torchaudio), synthetic
    speech-like signals, silence."""
    if (SHARED / "_assets").exists():
        out = {"speech": read(SPEECH_WAV)[0][:, 0], "jfk": resampled()["jfk"]}
    else:
        out = {"speech": signal(4.0, seed=3), "jfk": signal(2.5, seed=5)}
    return {**out, "silence": np.zeros(16000, np.float32), "short": signal(0.5, seed=4)}


def varied(result: dict[str, Any]) -> bool:
    """A transcript of several different characters (the built tokenizer's are mostly bytes): not empty, not one token
    repeated."""
    return len(set(result["text"].replace(" ", ""))) >= 4 and len(set(result["text"].split())) >= 2


@pytest.mark.parametrize("kind", ["multi", "en"])
@pytest.mark.parametrize("options", [{}, {"return_timestamps": True}, {"generate_kwargs": {"num_beams": 1}}])
def test_transcripts(whispers, clips, kind, options):
    """The pipeline's defaults (5 beams, the generation config's max_length grown by the prompt, its suppressed tokens,
    language detected on the multilingual model), segment timestamps, greedy search."""
    whisper, texts = whispers[kind], []
    for name in ("speech", "jfk", "silence"):
        audio = clips[name]
        expected = whisper.oracle(audio, **options)
        assert whisper.runtime(audio, **options) == expected, name
        texts.append(expected["text"])
        if options.get("return_timestamps"):
            assert "chunks" in expected and expected["text"] == "".join(c["text"] for c in expected["chunks"])
    # the built tokenizer is mostly timestamps, which the text leaves out: variety is asked of all the clips together
    assert varied({"text": " ".join(texts)}) and len(set(texts)) >= 2, texts


@pytest.mark.parametrize("options", [
    {"generate_kwargs": {"language": "fr"}},
    {"generate_kwargs": {"language": "german", "task": "translate"}},
    {"generate_kwargs": {"task": "translate"}, "return_timestamps": True},
    {"language": "<|es|>", "task": "transcribe"},
    {"generate_kwargs": {"language": "en", "max_new_tokens": 12, "return_timestamps": True}},
])
def test_language_and_task(whispers, clips, options):
    whisper = whispers["multi"]
    results = []
    for audio in (clips["speech"], clips["jfk"]):
        expected = whisper.oracle(audio, **options)
        assert whisper.runtime(audio, **options) == expected
        results.append(expected["text"])
    assert any(varied({"text": text}) for text in results)


def test_languages_change_the_prompt(whispers, clips):
    """Different languages give different transcripts (the prompt is not ignored)."""
    runtime = whispers["multi"].runtime
    texts = {runtime(clips["speech"], language=language)["text"] for language in ("en", "fr", "de", "es")}
    assert len(texts) >= 3


@pytest.fixture(scope="module")
def minute() -> np.ndarray:
    """60 s: the real speech files where ../shared is present, then synthetic signal."""
    parts = [read(SPEECH_WAV)[0][:, 0]] if (SHARED / "_assets").exists() else []
    parts.append(signal(60.0, seed=21))
    return np.concatenate(parts)[: 60 * 16000]


@pytest.mark.parametrize("kind, options", [
    ("multi", {"chunk_length_s": 30}), ("multi", {"chunk_length_s": 30, "return_timestamps": True}),
    ("multi", {"chunk_length_s": 12, "stride_length_s": [2, 3], "return_timestamps": True}),
    ("en", {"chunk_length_s": 30, "return_timestamps": True}),
])
def test_chunking_a_minute(whispers, minute, kind, options):
    whisper = whispers[kind]
    expected = whisper.oracle(minute, batch_size=1, **options)
    assert whisper.runtime(minute, **options) == expected
    assert varied(expected)


def test_resampling(whispers):
    """{"raw", "sampling_rate"} at 8 and 44.1 kHz (jfk.flac as a file where ../shared is present): the text of
    torchaudio's resampling."""
    whisper, answers, signals, texts = whispers["multi"], resampled(), oracle_signals(), []
    for name, rate in (("s8k", 8000), ("s44k", 44100)):
        expected = whisper.oracle(answers[name])
        assert whisper.runtime({"raw": signals[name], "sampling_rate": rate}) == expected, name
        texts.append(expected["text"])
    assert varied({"text": " ".join(texts)}), texts
    if "jfk" in signals:
        assert whisper.runtime(str(SHARED / "_assets" / "jfk.flac")) == whisper.oracle(answers["jfk"])


def test_one_file_metadata(whispers):
    """The embedded file names its task and carries the tokenizer, feature extractor and Whisper's generation config."""
    metadata = rt.read_metadata(whispers["multi"].onnx)
    assert metadata[rt.KEY_PIPELINE_TASK] == "automatic-speech-recognition"
    assert metadata[rt.KEY_TOKENIZER_JSON] and metadata["hf_feature_extractor_config"]
    generation = metadata[rt.KEY_GENERATION_CONFIG]
    assert generation["lang_to_id"]["<|en|>"] and set(generation["task_to_id"]) == {"translate", "transcribe"}
    assert not rt.read_metadata(whispers["en"].onnx)[rt.KEY_GENERATION_CONFIG]["is_multilingual"]


@pytest.mark.parametrize("kind, options, message", [
    ("multi", {"language": "klingon"}, "unsupported language 'klingon'"),
    ("multi", {"language": "xx"}, "unsupported language 'xx'"),
    ("multi", {"generate_kwargs": {"task": "summarize"}}, "task must be 'transcribe' or 'translate'"),
    ("en", {"language": "fr"}, "English-only"),
    ("en", {"generate_kwargs": {"task": "translate"}}, "English-only"),
    ("multi", {"return_timestamps": "char"}, "only segment ones"),
    ("multi", {"return_timestamps": "word"}, "word timestamps"),
    ("multi", {"generate_kwargs": {"temperature": 0.5}}, "not supported for Whisper"),
    ("multi", {"generate_kwargs": "beams"}, "generate_kwargs must be a dict"),
    ("multi", {"max_new_tokens": 1000}, "lower max_new_tokens"),
    ("multi", {"chunk_length_s": 2, "stride_length_s": 1}, "longer than the left and right strides"),
])
def test_bad_options(whispers, clips, kind, options, message):
    with pytest.raises(rt.InvalidInputError, match=message):
        whispers[kind].runtime(clips["short"], **options)


def test_long_audio_needs_chunking(whispers, minute):
    with pytest.raises(rt.InvalidInputError, match="pass chunk_length_s=30"):
        whispers["multi"].runtime(minute)


def test_bad_audio(whispers):
    runtime = whispers["en"].runtime
    for audio, message in ((np.full(1600, np.nan, np.float32), "NaN|finite"), (np.zeros((2, 2, 2)), "shape|dimension|channels"),
                           ("/nonexistent.wav", "nonexistent")):
        with pytest.raises(rt.InvalidInputError, match=message):
            runtime(audio)


def test_a_transformers_5_processor_folder(whispers, clips, tmp_path):
    """The English model re-saved as transformers 5 saves a WhisperProcessor (ONE processor_config.json nesting the
    feature extractor, no preprocessor_config.json) merges with the same export into a file that transcribes alike."""
    from audio_models import as_processor_folder
    from whisper_models import one_file

    model = whispers["en"]
    folder = as_processor_folder(Path(shutil.copytree(model.folder, tmp_path / "en")), "WhisperProcessor")
    export = Path(shutil.copytree(model.folder.parent / "en-onnx", tmp_path / "en-onnx"))
    (export / "model.onnx").unlink()  # the fixture's merged file: merged again here from the parts
    runtime = rt.Runtime(one_file(export, folder))
    assert rt.read_metadata(runtime.path)[rt.KEY_FEATURE_EXTRACTOR_CONFIG]["feature_extractor_type"] == "WhisperFeatureExtractor"
    for clip in clips.values():
        assert runtime(clip) == model.runtime(clip)
