"""Speech recognition (CTC) and audio classification parity: the runtime on ONNX against transformers.pipeline on
the same PyTorch weights.

Models: tiny random wav2vec2 *ForCTC (layer norms, attention mask: padded batches) and HuBERT *ForCTC (group norm,
no mask: batches of one length), Wav2Vec2ForSequenceClassification and ASTForAudioClassification with 8 labels.
Tolerance: transcripts and labels identical, scores within 1e-4. transformers resamples {"raw", "sampling_rate"}
inputs with torchaudio, which is not installed beside torch 2.13: its pipelines are given the array torchaudio
resamples (tests/oracles/torchaudio_oracle.py), which is what they compute where it is installed; and they read
no file without ffmpeg, so they are given the arrays soundfile reads.
"""

from __future__ import annotations

import numpy as np
import pytest
from audio_models import (
    JFK_FLAC,
    LABELS,
    RESAMPLED,
    SPEECH_WAV,
    Audio,
    asset,
    built,
    oracle_signals,
    read,
    resampled,
    signal,
)
from helpers import SHARED, assert_parity
from runtime_under_test import rt


@pytest.fixture(scope="module")
def wav2vec2_ctc(tmp_path_factory) -> Audio:
    return built("wav2vec2_ctc", tmp_path_factory)


@pytest.fixture(scope="module")
def hubert_ctc(tmp_path_factory) -> Audio:
    return built("hubert_ctc", tmp_path_factory)


@pytest.fixture(scope="module", params=["wav2vec2_ctc", "hubert_ctc"])
def ctc(request) -> Audio:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module", params=["wav2vec2_classifier", "ast_classifier"])
def classifier(request, tmp_path_factory) -> Audio:
    return built(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Real speech where ../shared is present, synthetic signals of many lengths, silence."""
    out = [signal(seconds, seed=i) for i, seconds in enumerate([0.025, 0.3, 1.0, 2.5, 4.0])] + [np.zeros(16000, np.float32)]
    if (SHARED / "_assets").exists():
        out.insert(0, read(SPEECH_WAV)[0][:, 0])
    return out


def test_transcripts_are_not_degenerate(ctc, clips):
    texts = [r["text"] for r in ctc.runtime()(clips)]
    assert len(set(texts)) >= len(texts) - 1, texts  # the silence and the shortest clip may agree
    assert any(" " in t for t in texts) and max(len(t) for t in texts) > 20, texts


def test_transcripts(ctc, clips):
    runtime = ctc.runtime()
    for clip in clips:
        assert runtime(clip) == ctc.oracle(clip)
    # stereo as (channels, samples) is averaged, as the pipeline does; PCM integers read as soundfile reads them
    stereo = np.stack([clips[-2], signal(4.0, seed=9)])
    assert runtime(stereo) == ctc.oracle(stereo)
    pcm = np.round(clips[-2] * 32767).astype(np.int16)
    assert runtime(pcm) == ctc.oracle(pcm.astype(np.float32) / 32768)


def test_batches(ctc, clips):
    """A list runs as batches; waveforms of different lengths share one only where the model takes an attention
    mask (wav2vec2 here); HuBERT's group norm would see the padding, so its batches hold one length."""
    items = [*clips, clips[2], clips[3], clips[2]]
    expected = [ctc.oracle(x) for x in items]
    for batch_size in (1, 2, 3, 32):
        assert ctc.runtime(batch_size=batch_size)(items) == expected


def test_files_and_resampling(ctc):
    """Files read by the runtime (WAV by the standard library, FLAC through soundfile, resampled from 44.1 kHz),
    and {"raw", "sampling_rate"} inputs at 8, 22.05 and 44.1 kHz."""
    runtime, answers, signals = ctc.runtime(), resampled(), oracle_signals()
    for name, (orig, new) in RESAMPLED.items():
        if new == 16000 and name in signals:
            assert runtime({"raw": signals[name], "sampling_rate": orig}) == ctc.oracle(answers[name]), name
    if "jfk" in signals:
        assert runtime(str(asset(JFK_FLAC))) == ctc.oracle(answers["jfk"])
        assert runtime(asset(SPEECH_WAV)) == ctc.oracle(signals["speech"])
        assert runtime(asset(SPEECH_WAV).read_bytes()) == ctc.oracle(signals["speech"])


@pytest.fixture(scope="module")
def long_audio() -> np.ndarray:
    """15 s: the LibriSpeech sample where ../shared is present, then synthetic signal."""
    first = read(SPEECH_WAV)[0][:, 0] if (SHARED / "_assets").exists() else signal(13.0, seed=11)
    return np.concatenate([first, signal(15.0, seed=13)])[:240000]


@pytest.mark.parametrize("options", [{"chunk_length_s": 4}, {"chunk_length_s": 2.7, "stride_length_s": [1, 0.5]},
                                     {"return_timestamps": "char"}, {"chunk_length_s": 4, "return_timestamps": "word"}])
def test_chunking_and_timestamps(ctc, long_audio, options):
    expected = ctc.oracle(long_audio, **options)
    assert ctc.runtime(batch_size=4)(long_audio, **options) == expected
    if "return_timestamps" in options:
        assert len(expected["chunks"]) > 10


def test_stride_and_extra_keys(ctc, clips):
    """A dict's stride (samples at its own rate) drops the ends from the text; its other keys come back, one per
    piece, as the pipeline returns them."""
    runtime = ctc.runtime()
    audio = clips[-2]
    for item in ({"raw": audio, "sampling_rate": 16000, "stride": (4000, 8000)},
                 {"raw": audio[::2].copy(), "sampling_rate": 8000, "stride": (2000, 4000), "id": 7},
                 {"array": audio, "sampling_rate": 16000, "path": "clip.wav", "speaker": "a"}):
        assert runtime(dict(item)) == ctc.oracle(dict(item) if item["sampling_rate"] == 16000 else
                                                 {**item, "raw": rt.resample(item["raw"], 8000, 16000), "sampling_rate": 16000,
                                                  "stride": (4000, 8000)})
    item = {"raw": audio, "sampling_rate": 16000, "id": 3}
    assert runtime(dict(item), chunk_length_s=2) == ctc.oracle(dict(item), chunk_length_s=2)


def test_empty_and_too_short_audio(ctc):
    """Empty audio, or too short for one frame (400 samples at 16 kHz), is heard as nothing: empty text (the
    pipeline's model raises on it)."""
    runtime = ctc.runtime()
    for audio in (np.zeros(0, np.float32), signal(0.02), {"raw": np.zeros(0), "sampling_rate": 8000},
                  {"raw": np.zeros(0), "sampling_rate": 16000, "stride": (0, 0)}):
        assert runtime(audio) == {"text": ""}
    assert runtime([np.zeros(0, np.float32), signal(1.0)])[0] == {"text": ""}
    assert runtime(np.zeros(0, np.float32), chunk_length_s=2) == {"text": ""}
    assert runtime(signal(400 / 16000)) == ctc.oracle(signal(400 / 16000))


def test_labels_are_not_degenerate(classifier, clips):
    labels = {r[0]["label"] for r in classifier.runtime()(clips + [signal(3.0, seed=s) for s in range(20, 26)])}
    assert len(labels) >= 3, labels


def test_classification(classifier, clips):
    runtime = classifier.runtime()
    expected = [classifier.oracle(clip) for clip in clips]
    for clip, labels in zip(clips, expected):
        assert_parity(runtime(clip), labels)
        assert len(labels) == len(LABELS)  # the pipeline's top_k=5 default is reset to every label by each call
    assert_parity(classifier.runtime(batch_size=3)(clips), expected)


@pytest.mark.parametrize("options", [{"top_k": 1}, {"top_k": 3}, {"top_k": None}, {"top_k": 100},
                                     {"function_to_apply": "sigmoid"}, {"function_to_apply": "none", "top_k": 2}])
def test_classification_options(classifier, clips, options):
    runtime = classifier.runtime()
    for clip in clips[-4:-1]:
        assert_parity(runtime(clip, **options), classifier.oracle(clip, **options))
    assert_parity(runtime(clips[-4:-1], **options), classifier.oracle(clips[-4:-1], **options))


def test_classification_resampled(classifier):
    runtime, answers, signals = classifier.runtime(), resampled(), oracle_signals()
    for name in ("s8k", "s44k"):
        assert_parity(runtime({"raw": signals[name], "sampling_rate": RESAMPLED[name][0]}),
                      classifier.oracle(answers[name]))


def test_classification_of_too_short_audio(classifier):
    """The AST's filter bank of audio without a single frame is all padding, a defined result; a wav2vec2 encoder
    needs 400 samples (its receptive field) and says so."""
    runtime = classifier.runtime()
    if classifier.onnx.parent.name.startswith("ast"):
        assert runtime(np.zeros(0, np.float32)) == runtime(signal(300 / 16000))
        return
    with pytest.raises(rt.InvalidInputError, match=r"audio of 399 samples is too short for this model, which needs at "
                       r"least 400 \(25 ms at 16000 Hz\)"):
        runtime(signal(399 / 16000))
