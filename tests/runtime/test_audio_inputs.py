"""Audio inputs the runtime refuses, with the error and its message; audio models without tokenizers; Whisper
files refused until the generation loop lands; the command line and ONNXAutoProcessor on audio models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave

import numpy as np
import pytest
from audio_models import built, signal
from helpers import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_under_test import rt


@pytest.fixture(scope="module")
def ctc(tmp_path_factory):
    return built("wav2vec2_ctc", tmp_path_factory)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return built("wav2vec2_classifier", tmp_path_factory)


@pytest.fixture(scope="module")
def wav_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.round(signal(0.5) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


BAD_ARRAYS = [
    (np.array([0.1, np.nan, 0.2, np.inf], np.float32), r"audio has 2 NaN or infinite samples; clean the signal first"),
    (np.zeros((3, 1600), np.float32), (r"audio of shape \(3, 1600\) is read as \(channels, samples\) and must have 1 or 2 "
                                      r"channels; transpose a \(samples, channels\) array")),
    (np.zeros((1600, 2), np.float32), r"shape \(1600, 2\) .* transpose a \(samples, channels\) array \(what soundfile.read returns\)"),
    (np.zeros((2, 2, 800), np.float32), r"audio must be a 1-D array of samples or \(channels, samples\), got shape \(2, 2, 800\)"),
    (np.zeros(1600, np.complex64), r"audio samples must be floats or PCM integers, got dtype complex64"),
    (np.array([None, 1.0]), r"audio samples must be floats or PCM integers, got dtype object"),
    (np.ones(1600, bool), r"audio samples must be floats or PCM integers, got dtype bool"),
    (np.array(["a", "b"]), r"audio samples must be floats or PCM integers, got dtype <U1"),
    (np.float32(0.5), r"audio must be a numpy array of samples, .*got float32"),
    ([0.1, 0.2, 0.3], (r"audio must be a numpy array of samples, a \{'raw': array, 'sampling_rate': rate\} dict, a file path or "
                      r"the bytes of a file; got (float \(a list is a batch of clips, not the samples of one\)|list)")),
    (12, r"audio must be a numpy array of samples, .*got int \(a list is a batch of clips"),
    ({"raw": np.zeros(10, np.float32)}, (r"an audio dict needs a 'raw' \(or 'array'\) key with the samples and a "
                                        r"'sampling_rate' key .*got keys \['raw'\]")),
    ({"audio": np.zeros(10), "sampling_rate": 16000}, r"an audio dict needs .*got keys \['audio', 'sampling_rate'\]"),
    ({"raw": np.zeros(10, np.float32), "sampling_rate": 0}, r"sampling_rate must be a positive whole number of Hz, got 0"),
    ({"raw": np.zeros(10, np.float32), "sampling_rate": 44100.5}, r"positive whole number of Hz, got 44100.5"),
    ({"raw": np.zeros(10, np.float32), "sampling_rate": float("inf")}, r"positive whole number of Hz, got inf"),
    ({"raw": np.zeros(10, np.float32), "sampling_rate": "16k"}, r"sampling_rate must be a number of Hz, got '16k'"),
    ({"raw": [0.1, 0.2], "sampling_rate": 16000}, r"audio must be a numpy array of samples.*got list"),
    ("https://example.com/a.wav", r"https://example.com/a.wav is a URL; the runtime reads no network"),
]


@pytest.mark.parametrize(("audio", "message"), BAD_ARRAYS)
def test_bad_audio(ctc, classifier, audio, message):
    for runtime in (ctc.runtime(), classifier.runtime()):
        with pytest.raises(rt.InvalidInputError, match=message):
            runtime(audio)
        with pytest.raises(rt.InvalidInputError, match=message):
            runtime([signal(0.1), audio])


def test_bad_files(ctc, tmp_path, wav_bytes):
    runtime = ctc.runtime()
    cases = {
        "missing.wav": None,
        "truncated.wav": wav_bytes[:-100],
        "no-fmt.wav": b"RIFF\x24\x00\x00\x00WAVEdata\x00\x00\x00\x00",
        "short-fmt.wav": b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00",
        "notes.txt": b"this is not audio at all\n" * 10,
        "empty.wav": b"",
    }
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    expected = {
        "missing.wav": r"cannot read audio file '.*missing.wav': No such file or directory",
        "truncated.wav": r"'.*truncated.wav' is not a readable WAV file: its data chunk declares 16000 bytes but 15900 remain "
                         r"\(truncated file\)",
        "no-fmt.wav": r"is not a readable WAV file: its data chunk comes before its fmt chunk",
        "short-fmt.wav": r"is not a readable WAV file: its fmt chunk is truncated",
        "notes.txt": r"'.*notes.txt' is not an audio file soundfile can read: ",
        "empty.wav": r"'.*empty.wav' is not an audio file soundfile can read",
    }
    for name, message in expected.items():
        with pytest.raises(rt.InvalidInputError, match=message):
            runtime(str(tmp_path / name))
    with pytest.raises(rt.InvalidInputError, match=r"cannot read audio file '.*': Is a directory"):
        runtime(str(tmp_path))
    with pytest.raises(rt.InvalidInputError, match=r"the audio bytes is not a readable WAV file: its data chunk declares"):
        runtime(wav_bytes[:-100])
    # without soundfile, what is not WAV says how to read it
    script = ("import sys; sys.modules['soundfile'] = None; sys.path.insert(0, sys.argv[1]); import onnxmeta_runtime as rt\n"
              "try:\n    rt.load_audio(sys.argv[2], 16000)\nexcept rt.InvalidInputError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", script, str(ROOT / "runtime"), str(tmp_path / "notes.txt")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("is not a WAV file this runtime decodes; other formats (FLAC, OGG, MP3, ...) are read "
                                "through the soundfile package: pip install soundfile (or the onnxmeta[audio] extra)")


def test_bad_options(ctc, classifier):
    audio = signal(1.0)
    runtime = ctc.runtime()
    cases = [
        ({"return_timestamps": True}, (r"return_timestamps=True: CTC models give character or word timestamps; pass "
                                      r"return_timestamps='char' or 'word'")),
        ({"chunk_length_s": -1}, r"chunk_length_s must be a non-negative number of seconds, got -1"),
        ({"chunk_length_s": "10"}, r"chunk_length_s must be a non-negative number of seconds, got '10'"),
        ({"chunk_length_s": 2, "stride_length_s": 1}, (r"chunk_length_s \(2.0\) must be longer than the left and right strides "
                                                      r"together \(1.0 \+ 1.0 s\)")),
        ({"chunk_length_s": 2, "stride_length_s": [1, 2, 3]}, r"stride_length_s must be a number of seconds or \[left, right\]"),
        ({"chunk_length_s": 2, "stride_length_s": [-1, 0]}, r"stride_length_s must be a non-negative number of seconds, got -1"),
        ({"language": "en"}, (r"automatic-speech-recognition does not take 'language'; it takes chunk_length_s, "
                             r"stride_length_s, return_timestamps")),
    ]
    for options, message in cases:
        with pytest.raises(rt.InvalidInputError, match=message):
            runtime(audio, **options)
    for stride, message in (((1, 2, 3), r"stride must be \(left, right\) numbers of samples, got \(1, 2, 3\)"),
                            ((-1, 0), r"stride must be \(left, right\) numbers of samples"),
                            ((10000, 10000), r"stride \(10000, 10000\) is larger than the audio \(16000 samples\)")):
        with pytest.raises(rt.InvalidInputError, match=message):
            runtime({"raw": audio, "sampling_rate": 16000, "stride": stride})
    runtime = classifier.runtime()
    for options, message in (({"top_k": 0}, r"top_k must be a positive integer or None, got 0"),
                             ({"top_k": "3"}, r"top_k must be a positive integer or None"),
                             ({"function_to_apply": "softplus"}, (r"function_to_apply must be one of softmax, sigmoid, none; "
                                                                 r"got 'softplus'")),
                             ({"chunk_length_s": 10}, r"audio-classification does not take 'chunk_length_s'")):
        with pytest.raises(rt.InvalidInputError, match=message):
            runtime(audio, **options)
    assert runtime([]) == [] and ctc.runtime()([]) == []


def test_essential_level_cannot_decode(ctc, tmp_path):
    """Without --include-vocab the CTC vocabulary is not embedded: refused when the Runtime is built."""
    from authoring import embed_metadata

    metadata = embed_metadata(ctc.plain, ctc.folder, tmp_path / "essential.onnx")
    assert "vocab" not in metadata[rt.KEY_TOKENIZER_CONFIG] and metadata[rt.KEY_EMBEDDING_LEVEL] == "essential"
    with pytest.raises(rt.ProcessorReconstructionError, match=r"no CTC vocabulary embedded, so this model's output cannot be "
                       r"decoded to text; re-embed with --include-vocab"):
        rt.Runtime(tmp_path / "essential.onnx")


def test_whisper_needs_an_encoder_decoder(ctc, tmp_path):
    """A Whisper config embedded on a single graph: Whisper runs from a merged export (test_parity_whisper.py)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor

    from authoring import embed_metadata

    folder = tmp_path / "whisper"
    WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, architectures=["WhisperForConditionalGeneration"]).save_pretrained(folder)
    WhisperFeatureExtractor().save_pretrained(folder)
    metadata = embed_metadata(ctc.plain, folder, tmp_path / "whisper.onnx")
    assert metadata[rt.KEY_PIPELINE_TASK] == "automatic-speech-recognition"
    with pytest.raises(rt.MetadataValidationError, match=r"automatic-speech-recognition needs an encoder-decoder: a file "
                       r"merged from an export"):
        rt.Runtime(tmp_path / "whisper.onnx")


def test_text_model_as_audio_task(bert_embedded):
    with pytest.raises(rt.ProcessorReconstructionError, match="no audio feature extractor is embedded"):
        rt.Runtime(bert_embedded, task="audio-classification")


def test_audio_models_run_without_tokenizers(ctc, classifier, tmp_path):
    """An audio model needs numpy and onnxruntime only: tokenizers made unimportable, both tasks run."""
    audio = tmp_path / "a.npy"
    np.save(audio, signal(1.0))
    script = (
        "import sys, json; sys.modules['tokenizers'] = None; sys.path.insert(0, sys.argv[1])\n"
        "import numpy as np, onnxmeta_runtime as rt\n"
        "audio = np.load(sys.argv[4])\n"
        "print(json.dumps([rt.Runtime(sys.argv[2])(audio), rt.Runtime(sys.argv[3])(audio, top_k=2)]))\n"
        "assert 'tokenizers' not in sys.modules or sys.modules['tokenizers'] is None"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script, str(ROOT / "runtime"), str(ctc.onnx), str(classifier.onnx), str(audio)],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    text, labels = json.loads(result.stdout)
    assert text == ctc.oracle(signal(1.0)) and len(labels) == 2


def test_command_line_and_processor(ctc, capsys, tmp_path, wav_bytes):
    (tmp_path / "a.wav").write_bytes(wav_bytes)
    assert rt._main([str(ctc.onnx), str(tmp_path / "a.wav"), "--options", '{"return_timestamps": "word"}']) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["text"] == ctc.runtime()(wav_bytes)["text"] and "chunks" in printed
    extractor = rt.ONNXAutoProcessor.from_model(ctc.onnx, processor_type="feature_extractor")
    assert isinstance(extractor, rt.Wav2Vec2FeatureExtractor) and extractor.returns_attention_mask
    # without a type: what the file embeds, here a feature extractor and a CTC tokenizer (a Wav2Vec2Processor's parts)
    both = rt.ONNXAutoProcessor.from_model(ctc.onnx)
    assert isinstance(both["feature_extractor"], rt.Wav2Vec2FeatureExtractor) and isinstance(both["tokenizer"], rt.CTCDecoder)


def test_validate(ctc, classifier, tmp_path):
    """python -m authoring validate on audio models: the feature extractor, the CTC vocabulary, the graph's input."""
    from authoring import embed_metadata, validate

    for model in (ctc, classifier):
        checks = validate(model.onnx)
        assert all(c.ok for c in checks), checks
    processor = next(c for c in validate(ctc.onnx) if c.name == "processor")
    assert processor.message == "Wav2Vec2FeatureExtractor rebuilt (16000 Hz); CTC vocabulary of 32 tokens"
    embed_metadata(ctc.plain, ctc.folder, tmp_path / "essential.onnx")
    processor = next(c for c in validate(tmp_path / "essential.onnx") if c.name == "processor")
    assert not processor.ok and "re-embed with --include-vocab" in processor.message


_VALUES = (st.none() | st.booleans() | st.integers(-2, 10**12) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=6) | st.lists(st.integers(0, 3), max_size=2))
_FIELDS = ["feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft", "padding_value", "dither", "padding_side",
           "do_normalize", "return_attention_mask", "num_mel_bins", "max_length", "mean", "std", "feature_extractor_type"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(rt.FEATURE_EXTRACTORS)), config=st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=4))
def test_hostile_feature_extractor_configs(kind, config):
    """Any JSON in the fields the feature extractors read: an error of the hierarchy or features, never a crash."""
    config = {"feature_extractor_type": kind, **config}
    try:
        extractor = rt.load_feature_extractor({rt.KEY_FEATURE_EXTRACTOR_CONFIG: config})
        features = extractor([signal(0.05), np.zeros(0, np.float32)])
    except rt.MetadataError:
        return
    assert all(isinstance(v, np.ndarray) and len(v) == 2 for v in features.values())
