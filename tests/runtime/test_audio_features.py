"""Audio front ends in numpy against transformers: load_audio, the resampler, Whisper's log-mel, Wav2Vec2's
normalization, AST's filter bank, greedy CTC decoding.

Tolerances: Whisper input_features within 1e-4 of WhisperFeatureExtractor (its default path here is torch's
STFT, since torch is installed; observed about 2e-5), Wav2Vec2 input_values within 1e-5 (observed: equal), AST
input_values within 1e-5 of ASTFeatureExtractor's numpy path, the one transformers takes without torchaudio (as
here; observed: equal). The resampler is within 1e-6 of torchaudio.functional.resample, which transformers'
pipelines call (observed 2.4e-7); features of resampled audio then within the tolerances above.
"""

from __future__ import annotations

import io
import json
import sys
import wave

import numpy as np
import pytest
from audio_models import (
    JFK_FLAC,
    RESAMPLED,
    SPEECH_WAV,
    asset,
    ctc_tokenizer_folder,
    oracle_signals,
    read,
    resampled,
    signal,
    torchaudio_oracle,
)
from helpers import SHARED
from runtime_under_test import rt

WHISPER_LARGE_V3 = {  # openai/whisper-large-v3's preprocessor_config.json, for a clone without ../shared
    "chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128, "hop_length": 160,
    "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right", "padding_value": 0.0,
    "processor_class": "WhisperProcessor", "return_attention_mask": False, "sampling_rate": 16000,
}
# shorter than one window, one window, a second, exactly 30 s, just over, longer
LENGTHS = [0, 1, 100, 399, 400, 16000, 480000, 480001, 720000]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The LibriSpeech sample, or a synthetic stand-in where ../shared is absent (test_real_files needs the file)."""
    return read(SPEECH_WAV)[0][:, 0] if (SHARED / "_assets" / SPEECH_WAV).exists() else signal(13.3, seed=9)


def whisper_config(bins: int) -> dict:
    if bins == 80:
        return {"feature_extractor_type": "WhisperFeatureExtractor"}
    path = SHARED / "openai__whisper-large-v3" / "preprocessor_config.json"
    return json.loads(path.read_text()) if path.exists() else WHISPER_LARGE_V3


# --- load_audio ---------------------------------------------------------------------------------------------


def write_wav(path, samples: np.ndarray, rate: int, width: int) -> None:
    """A PCM WAV written by the standard library's wave module: samples (frames, channels) in [-1, 1]."""
    if width == 1:
        data = np.round(samples * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.round(samples * (2 ** 23 - 1)).astype("<i4")
        data = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        data = np.round(samples * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2])
def test_pcm_wav_read_like_soundfile(tmp_path, width, channels):
    import soundfile

    samples = np.stack([signal(0.5, seed=c) for c in range(channels)], axis=1)
    path = tmp_path / "a.wav"
    write_wav(path, samples, 16000, width)
    expected = soundfile.read(path, dtype="float32", always_2d=True)[0].mean(axis=1)
    np.testing.assert_array_equal(rt.load_audio(path, 16000), expected)
    np.testing.assert_array_equal(rt.load_audio(str(path), 16000), expected)
    np.testing.assert_array_equal(rt.load_audio(path.read_bytes(), 16000), expected)


@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "FLOAT"), ("WAV", "DOUBLE"), ("WAVEX", "PCM_16"), ("WAVEX", "FLOAT"),
                                               ("WAVEX", "PCM_24")])
def test_float_and_extensible_wav(tmp_path, fmt, subtype):
    import soundfile

    samples = np.stack([signal(0.3, seed=1), signal(0.3, seed=2)], axis=1)
    path = tmp_path / "a.wav"
    soundfile.write(path, samples, 16000, format=fmt, subtype=subtype)
    expected = soundfile.read(path, dtype="float32", always_2d=True)[0].mean(axis=1)
    np.testing.assert_allclose(rt.load_audio(path, 16000), expected, atol=1e-7)


def test_real_files(speech):
    wav = asset(SPEECH_WAV)
    np.testing.assert_array_equal(rt.load_audio(wav, 16000), speech)
    stereo, rate = read(JFK_FLAC)
    assert rate == 44100 and stereo.shape[1] == 2
    expected = rt.resample(stereo.mean(axis=1), 44100, 16000)
    np.testing.assert_array_equal(rt.load_audio(asset(JFK_FLAC), 16000), expected)
    np.testing.assert_array_equal(rt.load_audio(asset(JFK_FLAC).read_bytes(), 16000), expected)


def test_arrays_and_dicts():
    x = signal(1.0)
    np.testing.assert_array_equal(rt.load_audio(x, 16000), x)
    np.testing.assert_array_equal(rt.load_audio(x.astype(np.float64), 16000), x)
    pcm = np.round(x * 32767).astype(np.int16)  # PCM integers are scaled as soundfile reads them
    np.testing.assert_array_equal(rt.load_audio(pcm, 16000), (pcm / 32768).astype(np.float32))
    np.testing.assert_array_equal(rt.load_audio(np.array([0, 128, 255], np.uint8), 16000), [-1.0, 0.0, 127 / 128])
    stereo = np.stack([x, signal(1.0, seed=3)])  # (channels, samples), as the ASR pipeline reads arrays
    np.testing.assert_array_equal(rt.load_audio(stereo, 16000), stereo.mean(axis=0))
    np.testing.assert_array_equal(rt.load_audio(x[None], 16000), x)
    for item in ({"raw": x, "sampling_rate": 16000}, {"array": x, "sampling_rate": 16000, "path": "a.wav"},
                 {"raw": x, "sampling_rate": np.int64(16000)}, {"raw": None, "array": x, "sampling_rate": 16000.0}):
        np.testing.assert_array_equal(rt.load_audio(item, 16000), x)
    np.testing.assert_array_equal(rt.load_audio({"raw": stereo, "sampling_rate": 16000}, 16000), stereo.mean(axis=0))
    np.testing.assert_array_equal(rt.load_audio({"raw": x, "sampling_rate": 8000}, 16000), rt.resample(x, 8000, 16000))
    assert rt.load_audio(np.zeros(0, np.float32), 16000).shape == (0,)
    assert rt.resample(np.zeros(0, np.float32), 8000, 16000).shape == (0,)  # torchaudio raises on empty input


def test_resampler_matches_torchaudio():
    """Within 1e-6 of torchaudio.functional.resample (what transformers' pipelines call) from 8 kHz, 22.05 kHz and
    44.1 kHz, and down to 8 kHz; Whisper and Wav2Vec2 features of the results within their tolerances."""
    from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

    answers, signals = resampled(), oracle_signals()
    whisper, ours_whisper = WhisperFeatureExtractor(), rt.WhisperFeatureExtractor({})
    w2v, ours_w2v = Wav2Vec2FeatureExtractor(), rt.Wav2Vec2FeatureExtractor({})
    for name, (orig, new) in RESAMPLED.items():
        if name not in signals:
            continue
        expected = answers[name]
        ours = rt.resample(signals[name], orig, new)
        assert ours.dtype == np.float32 and ours.shape == expected.shape
        np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)
        if new == 16000:
            reference = whisper(expected, sampling_rate=16000, return_tensors="np")["input_features"]
            np.testing.assert_allclose(ours_whisper([ours])["input_features"], reference, atol=1e-4, rtol=0)
            reference = w2v(expected, sampling_rate=16000, return_tensors="np")["input_values"]
            np.testing.assert_allclose(ours_w2v([ours])["input_values"], reference, atol=1e-5, rtol=0)


# --- Whisper ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [80, 128])
def test_mel_filters(bins):
    from transformers.audio_utils import mel_filter_bank

    ours = rt.mel_filter_bank(201, bins, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    expected = mel_filter_bank(201, bins, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    np.testing.assert_array_equal(ours, expected)
    npz = SHARED / "_assets" / "openai-whisper-repo" / "mel_filters.npz"
    if npz.exists():  # openai/whisper's filters, made by librosa and shipped as data: the same up to float32
        with np.load(npz) as shipped:
            np.testing.assert_allclose(ours.T, shipped[f"mel_{bins}"], atol=1e-6)


def test_whisper_steps(speech):
    """Each step against transformers' numpy functions: window, power spectrum, log-mel."""
    from transformers.audio_utils import spectrogram, window_function

    window = rt._hann_window(400, periodic=True)
    np.testing.assert_array_equal(window, window_function(400, "hann"))
    waveform = rt._pad_or_trim(speech, 480000, 0.0, "right")
    power = rt._whisper_power(waveform[None], window.astype(np.float32), 160)[0]
    expected = spectrogram(waveform, window_function(400, "hann"), frame_length=400, hop_length=160, power=2.0)[:, :-1]
    np.testing.assert_allclose(power.T, expected, rtol=1e-3, atol=1e-6)
    extractor = rt.WhisperFeatureExtractor({})
    log_mel = rt._whisper_log_mel(power[None], extractor.mel_filters)
    from transformers import WhisperFeatureExtractor

    np.testing.assert_allclose(log_mel, WhisperFeatureExtractor()._np_extract_fbank_features(waveform[None], "cpu"), atol=1e-4)


@pytest.mark.parametrize("bins", [80, 128])
def test_whisper_features(speech, bins):
    from transformers import WhisperFeatureExtractor

    config = whisper_config(bins)
    reference = WhisperFeatureExtractor(**{k: v for k, v in config.items() if k != "feature_extractor_type"})
    ours = rt.WhisperFeatureExtractor(config)
    assert ours.feature_size == bins and ours.n_samples == 480000 and ours.nb_max_frames == 3000
    audios = [speech, rt.load_audio(asset(JFK_FLAC), 16000) if (SHARED / "_assets").exists() else signal(11.0)]
    audios += [signal(n / 16000, seed=n) for n in LENGTHS] + [np.zeros(32000, np.float32)]
    for audio in audios:
        expected = reference(audio, sampling_rate=16000, return_tensors="np", return_attention_mask=True)
        got = ours([audio])
        assert got["input_features"].dtype == np.float32 and got["input_features"].shape == (1, bins, 3000)
        np.testing.assert_allclose(got["input_features"], expected["input_features"], atol=1e-4, rtol=0)
        np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"])
    batch = ours(audios[:4])
    for i, audio in enumerate(audios[:4]):
        np.testing.assert_array_equal(batch["input_features"][i], ours([audio])["input_features"][0])


def test_whisper_long_form(speech):
    """log_mel_spectrogram of audio past 30 s, unpadded: what the pipeline computes for long-form Whisper
    (truncation=False, padding="longest")."""
    from transformers import WhisperFeatureExtractor

    audio = np.concatenate([speech, signal(25.0), speech])
    expected = WhisperFeatureExtractor()(audio, sampling_rate=16000, truncation=False, padding="longest", return_tensors="np")
    got = rt.WhisperFeatureExtractor({}).log_mel_spectrogram(audio[None])
    np.testing.assert_allclose(got, expected["input_features"], atol=1e-4, rtol=0)


# --- Wav2Vec2 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("side", ["right", "left"])
def test_wav2vec2_features(speech, normalize, mask, side):
    from transformers import Wav2Vec2FeatureExtractor

    config = {"do_normalize": normalize, "return_attention_mask": mask, "padding_side": side, "padding_value": 0.25}
    reference = Wav2Vec2FeatureExtractor(**config)
    ours = rt.Wav2Vec2FeatureExtractor({"feature_extractor_type": "Wav2Vec2FeatureExtractor", **config})
    audios = [speech, signal(0.5, seed=1), signal(2.0, seed=2), np.zeros(8000, np.float32), signal(0.01, seed=3)]
    for audio in audios:  # one at a time, as the pipeline calls it
        expected = reference(audio, sampling_rate=16000, return_tensors="np")
        got = ours([audio])
        assert set(got) == set(expected) and got["input_values"].dtype == np.float32
        np.testing.assert_allclose(got["input_values"], expected["input_values"], atol=1e-5, rtol=0)
    # a batch of different lengths: each normalized on its own samples, as transformers with an attention mask
    # (which, padding on the left, normalizes the first samples of each row, padding included: not compared)
    expected = reference(audios, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="np")
    got = ours(audios)
    if side == "right" or not normalize:
        np.testing.assert_allclose(got["input_values"], expected["input_values"], atol=1e-5, rtol=0)
    if mask:
        np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"])


# --- AST ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [{}, {"num_mel_bins": 64, "max_length": 256, "mean": -3.0, "std": 2.0}])
def test_ast_features(speech, config):
    from transformers import ASTFeatureExtractor
    from transformers.utils import is_speech_available

    assert not is_speech_available(), "torchaudio is importable: ASTFeatureExtractor takes its Kaldi path here"
    reference = ASTFeatureExtractor(**config)
    ours = rt.ASTFeatureExtractor({"feature_extractor_type": "ASTFeatureExtractor", **config})
    # transformers' numpy path fails below 240 samples (a negative frame count); 240-399 give no frame
    for audio in [speech, signal(12.0), np.zeros(16000, np.float32), signal(300 / 16000), signal(400 / 16000)]:
        expected = reference(audio, sampling_rate=16000, return_tensors="np")["input_values"]
        got = ours([audio])["input_values"]
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # shorter than one frame, even empty: no frame, all padding (transformers raises below 240 samples)
    np.testing.assert_array_equal(ours([np.zeros(0, np.float32)])["input_values"], ours([signal(300 / 16000)])["input_values"])


@pytest.mark.slow
def test_ast_kaldi_path_tolerance(speech):
    """Where torchaudio is installed ASTFeatureExtractor takes torchaudio's Kaldi fbank (float32 torch): the numpy
    path reproduced here stays within 5e-4 of it after normalization (observed 1.5e-4)."""
    signals = {"speech": speech, "tone": signal(3.0)}
    answers = torchaudio_oracle(signals, [{"name": n, "op": "ast", "signal": n, "config": {}} for n in signals])
    ours = rt.ASTFeatureExtractor({})
    for name, audio in signals.items():
        np.testing.assert_allclose(ours([audio])["input_values"], answers[name], atol=5e-4, rtol=0)


# --- factory and CTC decoding ---------------------------------------------------------------------------------


def test_load_feature_extractor():
    for kind in rt.FEATURE_EXTRACTORS:
        extractor = rt.load_feature_extractor({rt.KEY_FEATURE_EXTRACTOR_CONFIG: {"feature_extractor_type": kind}})
        assert type(extractor).__name__ == kind
    # a config naming no type: the model family's, as AutoFeatureExtractor picks it
    metadata = {rt.KEY_FEATURE_EXTRACTOR_CONFIG: {"sampling_rate": 16000}, rt.KEY_MODEL_CONFIG: {"model_type": "hubert"}}
    assert isinstance(rt.load_feature_extractor(metadata), rt.Wav2Vec2FeatureExtractor)
    with pytest.raises(rt.ProcessorReconstructionError, match=r"'SeamlessM4TFeatureExtractor' is not supported .*supported: "
                       r"WhisperFeatureExtractor, Wav2Vec2FeatureExtractor, ASTFeatureExtractor"):
        rt.load_feature_extractor({rt.KEY_FEATURE_EXTRACTOR_CONFIG: {"feature_extractor_type": "SeamlessM4TFeatureExtractor"}})
    assert rt.load_feature_extractor({}) is None  # the PROCESSORS loaders' contract: None when none is embedded
    with pytest.raises(rt.ProcessorReconstructionError, match=r"hf_feature_extractor_config.hop_length must be an integer "
                       r"from 1 to 16384, got 0"):
        rt.WhisperFeatureExtractor({"hop_length": 0})
    # a hostile file cannot make the features take unbounded memory
    with pytest.raises(rt.ProcessorReconstructionError, match=r"feature_size must be an integer from 1 to 1024, got 1000000"):
        rt.WhisperFeatureExtractor({"feature_size": 10**6})
    with pytest.raises(rt.ProcessorReconstructionError, match=r"chunk_length 3600 s at 1000000 Hz is 3600000000 samples a "
                       r"chunk; it must be from hop_length \(160\) to 134217728"):
        rt.WhisperFeatureExtractor({"chunk_length": 3600, "sampling_rate": 10**6})
    with pytest.raises(rt.ProcessorReconstructionError, match=r"max_length must be an integer from 1 to 65536"):
        rt.ASTFeatureExtractor({"max_length": 10**9})
    with pytest.raises(rt.ProcessorReconstructionError, match="do_normalize must be a boolean"):
        rt.Wav2Vec2FeatureExtractor({"do_normalize": "yes"})
    for extractor in (rt.WhisperFeatureExtractor({}), rt.Wav2Vec2FeatureExtractor({}), rt.ASTFeatureExtractor({})):
        with pytest.raises(rt.InvalidInputError, match=r"takes a non-empty list of waveforms \(numpy arrays at 16000 Hz"):
            extractor([])
        with pytest.raises(rt.InvalidInputError, match=r"audio has 1 NaN or infinite samples"):
            extractor([np.array([0.0, np.nan])])


@pytest.mark.parametrize("options", [{}, {"do_lower_case": True}, {"replace_word_delimiter_char": "_"},
                                     {"clean_up_tokenization_spaces": True}, {"added": True}])
def test_ctc_decoder_matches_wav2vec2_tokenizer(tmp_path, options):
    """CTCDecoder, built from the config discovery embeds, against Wav2Vec2CTCTokenizer.decode of the same ids."""
    from transformers import AutoTokenizer

    from authoring.discovery import _ctc_tokenizer_metadata

    options = dict(options)
    added = options.pop("added", False)
    tokenizer = ctc_tokenizer_folder(tmp_path / "tok", **options)
    if added:
        tokenizer.add_tokens(["<laugh>"])
        tokenizer.add_special_tokens({"additional_special_tokens": ["<noise>"]})
        tokenizer.save_pretrained(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    config = _ctc_tokenizer_metadata(tmp_path / "tok", include_vocab=True)[rt.KEY_TOKENIZER_CONFIG]
    decoder = rt.CTCDecoder(json.loads(rt.canonical_json(config)))
    rng = np.random.RandomState(0)
    size = len(tokenizer) + 2  # ids past the vocabulary decode to <unk>
    for n in [0, 1, 2, 5, 40, 200]:
        for _ in range(8):
            ids = np.repeat(rng.randint(0, size, n), rng.randint(1, 4, n)).tolist()  # CTC repeats
            ids[::5] = [0] * len(ids[::5])  # blanks
            ids[2::9] = [4] * len(ids[2::9])  # word delimiters
            assert decoder.decode(ids) == tokenizer.decode(ids), ids
            assert decoder.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids, skip_special_tokens=True), ids
            expected = tokenizer.decode(ids, output_char_offsets=True, output_word_offsets=True)
            assert decoder.char_offsets(ids) == [{k: v if k == "char" else int(v) for k, v in o.items()}
                                                 for o in expected["char_offsets"]]
            assert decoder.word_offsets(ids) == [{k: v if k == "word" else int(v) for k, v in o.items()}
                                                 for o in expected["word_offsets"]]


def test_ctc_decoder_needs_the_vocabulary():
    with pytest.raises(rt.ProcessorReconstructionError, match="no CTC vocabulary embedded.*re-embed with --include-vocab"):
        rt.CTCDecoder({"tokenizer_class": "Wav2Vec2CTCTokenizer"})
    with pytest.raises(rt.ProcessorReconstructionError, match="must map tokens to integer ids"):
        rt.CTCDecoder({"vocab": {"a": "1"}})
    nested = rt.CTCDecoder({"vocab": {"eng": {"<pad>": 0, "a": 1}, "fra": {"<pad>": 0, "b": 1}}, "target_lang": "fra"})
    assert nested.decode([1, 1, 0, 1]) == "bb"


def test_wave_bytes_helpers_are_stdlib_only():
    """The WAV reader needs no soundfile: simulated absent, WAV still reads and FLAC says how to read it."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.arange(-5, 5, dtype="<i2").tobytes())
    saved = sys.modules.get("soundfile")
    sys.modules["soundfile"] = None  # type: ignore[assignment]
    try:
        np.testing.assert_array_equal(rt.load_audio(buffer.getvalue(), 16000), np.arange(-5, 5) / 32768)
        with pytest.raises(rt.InvalidInputError, match=r"'.*jfk.flac' is not a WAV file this runtime decodes; other formats "
                           r"\(FLAC, OGG, MP3, ...\) are read through the soundfile package: pip install soundfile \(or the onnxmeta\[audio\] extra\)"):
            rt.load_audio(asset(JFK_FLAC), 16000)
    finally:
        if saved is None:
            del sys.modules["soundfile"]
        else:
            sys.modules["soundfile"] = saved
