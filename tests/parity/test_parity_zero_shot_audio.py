"""zero-shot-audio-classification (CLAP) parity: the runtime on ONNX against transformers.pipeline on the same weights.

Models: tiny random ClapModels (tests/models/clap_models.py), fused (enable_fusion, truncation "fusion": 4-channel
mels) and plain (truncation "rand_trunc"), exported by `onnxmeta export` (authoring.export: task detected from
ClapModel, both towers in one torch.onnx graph, the processor read from transformers 5's processor_config.json).
Clips shorter and longer than the feature extractor's 1 s window. Longer clips are cropped at random as transformers
draws from numpy's global random state: the oracle runs after np.random.seed(s), the runtime with seed=s (its own
RandomState(s)) or, without seed, after the same np.random.seed(s). Labels identical, scores within 1e-4.
ClapFeatureExtractor's steps against transformers': mel filters and every mode's features bit-equal (numpy vs numpy),
but fusion's shrunk mel (torch's bilinear interpolation vs numpy's: within 1e-4 dB on values of tens of dB).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from audio_models import signal
from clap_models import EXTRACTOR, RATE, tiny_clap
from helpers import assert_parity
from runtime_under_test import rt

LABELS = ["a dog barking", "rain on a roof", "a car engine", "people talking", "music"]


class Clap:
    def __init__(self, folder, model, onnx, oracle) -> None:
        self.folder, self.model, self.onnx, self.oracle = folder, model, onnx, oracle


_built: dict[bool, Clap] = {}


def _clap(fusion: bool, tmp_path_factory) -> Clap:
    if fusion not in _built:
        from transformers import AutoTokenizer, ClapFeatureExtractor, pipeline

        from authoring.export import export

        root = tmp_path_factory.mktemp("clap_fused" if fusion else "clap_plain")
        model = tiny_clap(root / "hf", fusion=fusion)
        report = export(root / "hf", root / "model.onnx")
        assert (report.task, report.exporter) == ("zero-shot-audio-classification", "torch.onnx")
        oracle = pipeline("zero-shot-audio-classification", model=model,
                          tokenizer=AutoTokenizer.from_pretrained(root / "hf"),
                          feature_extractor=ClapFeatureExtractor.from_pretrained(root / "hf"), device="cpu")
        _built[fusion] = Clap(root / "hf", model, root / "model.onnx", oracle)
    return _built[fusion]


@pytest.fixture(scope="module", params=[True, False], ids=["fusion", "rand_trunc"])
def clap(request, tmp_path_factory) -> Clap:
    return _clap(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def fused(tmp_path_factory) -> Clap:
    return _clap(True, tmp_path_factory)


# shorter than the 1 s window (repeated and padded), exactly it, longer by less than a hop (fusion: the whole clip),
# longer (cut or fused)
SHORT = [signal(s, RATE, seed=i) for i, s in enumerate((0.05, 0.3, 0.77))] + [signal(1.0, RATE, seed=3)]
LONG = [signal(1.01, RATE, seed=4), signal(1.6, RATE, seed=5), signal(4.2, RATE, seed=6)]


def _oracle(clap: Clap, clip, seed: int, **options):
    np.random.seed(seed)
    return clap.oracle(clip, candidate_labels=options.pop("candidate_labels", LABELS), **options)


def test_detected_and_embedded(clap):
    metadata = rt.read_metadata(clap.onnx)
    assert metadata[rt.KEY_PIPELINE_TASK] == "zero-shot-audio-classification"
    assert metadata[rt.KEY_FEATURE_ENGINEERING]["config"]["components"] == ["tokenizer", "feature_extractor"]
    assert metadata[rt.KEY_FEATURE_EXTRACTOR_CONFIG]["feature_extractor_type"] == "ClapFeatureExtractor"
    runtime = rt.Runtime(clap.onnx)
    fused = clap.model.config.audio_config.enable_fusion
    assert list(runtime._task.session.inputs) == (["input_features", "is_longer", "input_ids", "attention_mask"] if fused
                                                 else ["input_features", "input_ids", "attention_mask"])


def test_task_detection():
    from authoring.tasks import detect_task

    assert detect_task({"architectures": ["ClapModel"], "model_type": "clap"}) == "zero-shot-audio-classification"
    assert detect_task({"model_type": "clap"}) == "zero-shot-audio-classification"


@pytest.mark.parametrize("index", range(len(SHORT)))
def test_short_clips(clap, index):
    runtime = rt.Runtime(clap.onnx)
    assert_parity(runtime(SHORT[index], candidate_labels=LABELS), _oracle(clap, SHORT[index], 0))


@pytest.mark.parametrize("index", range(len(LONG)))
def test_long_clips_seeded(clap, index):
    """Random crops: equal for the same seed, as the runtime's option or numpy's global seed."""
    runtime = rt.Runtime(clap.onnx)
    for seed in (0, 7, 123):
        expected = _oracle(clap, LONG[index], seed)
        assert_parity(runtime(LONG[index], candidate_labels=LABELS, seed=seed), expected)
        np.random.seed(seed)
        assert_parity(runtime(LONG[index], candidate_labels=LABELS), expected)


def test_lists_batches_and_templates(clap):
    """A list runs as the pipeline runs its clips one after the other (the random draws in the same order), in batches."""
    clips = [LONG[2], SHORT[1], LONG[1], SHORT[0], LONG[0]]
    np.random.seed(11)
    expected = clap.oracle(clips, candidate_labels=LABELS[:3], hypothesis_template="The sound of {} here.")
    for batch_size in (1, 2, 8):
        actual = rt.Runtime(clap.onnx, batch_size=batch_size)(clips, LABELS[:3], hypothesis_template="The sound of {} here.",
                                                             seed=11)
        assert_parity(actual, expected)
    np.random.seed(11)
    expected = clap.oracle(clips, candidate_labels=["rain"])
    np.random.seed(11)
    assert_parity(rt.Runtime(clap.onnx)(clips, candidate_labels=["rain"]), expected)
    assert all(result == [{"score": 1.0, "label": "rain"}] for result in rt.Runtime(clap.onnx)(clips, ["rain"], seed=1))


def test_not_degenerate(fused):
    """Different clips get different labels; scores sum to 1."""
    runtime = rt.Runtime(fused.onnx)
    results = runtime(SHORT + LONG, candidate_labels=LABELS, seed=0)
    assert len({r[0]["label"] for r in results}) >= 2, results
    assert len({round(r[0]["score"], 4) for r in results}) >= 5, results
    assert sum(d["score"] for d in results[0]) == pytest.approx(1.0, abs=1e-5)


def test_files_and_dicts(fused, tmp_path):
    """A WAV file and a {"raw", "sampling_rate"} dict at the model's rate give what the array gives."""
    import wave

    clip = SHORT[2]
    path = tmp_path / "clip.wav"
    pcm = np.round(np.clip(clip, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes(pcm.tobytes())
    runtime = rt.Runtime(fused.onnx)
    as_read = pcm.astype(np.float32) / 32768
    assert_parity(runtime(str(path), LABELS), _oracle(fused, as_read, 0))
    assert_parity(runtime({"raw": clip, "sampling_rate": RATE}, LABELS), _oracle(fused, clip, 0))


def test_bad_inputs(fused):
    runtime = rt.Runtime(fused.onnx)
    for labels in ([], None, "a dog, rain", ["a dog", 3]):
        with pytest.raises(rt.InvalidInputError) as info:
            runtime(SHORT[0], candidate_labels=labels)
        assert str(info.value) == ("zero-shot-audio-classification needs candidate_labels: a list of strings, e.g. "
                                   "candidate_labels=['a dog barking', 'rain']")
    with pytest.raises(rt.InvalidInputError, match="needs candidate_labels"):
        runtime(SHORT[0])
    with pytest.raises(rt.InvalidInputError, match="the audio bytes is not a readable WAV file: it has no fmt chunk"):
        runtime(b"RIFF\x04\x00\x00\x00WAVE", LABELS)
    with pytest.raises(rt.InvalidInputError, match="cannot read audio file"):
        runtime("/nonexistent/clip.wav", LABELS)
    with pytest.raises(rt.InvalidInputError, match="the audio is empty"):
        runtime(np.zeros(0, np.float32), LABELS)
    with pytest.raises(rt.InvalidInputError, match=r"seed must be an integer from 0 to 2\*\*32 - 1"):
        runtime(SHORT[0], LABELS, seed=-1)
    with pytest.raises(rt.InvalidInputError, match=r"hypothesis_template 'A sound\.' has no \{\} where the label should go"):
        runtime(SHORT[0], LABELS, hypothesis_template="A sound.")
    with pytest.raises(rt.InvalidInputError, match="does not take 'top_k'"):
        runtime(SHORT[0], LABELS, top_k=1)
    pytest.importorskip("soundfile")  # other formats than WAV are read through it
    with pytest.raises(rt.InvalidInputError, match="the audio bytes is not an audio file soundfile can read"):
        runtime(b"not audio at all", LABELS)


def test_graph_and_processor_must_agree(fused, tmp_path):
    """A fused graph (4-channel features) with a rand_trunc feature extractor is refused when the Runtime is built."""
    import shutil

    from authoring import embed_metadata

    folder = tmp_path / "hf"
    shutil.copytree(fused.folder, folder)
    config = json.loads((folder / "processor_config.json").read_text())
    config["feature_extractor"]["truncation"] = "rand_trunc"
    (folder / "processor_config.json").write_text(json.dumps(config))
    embed_metadata(fused.onnx, folder, tmp_path / "model.onnx", include_vocab=True)
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.Runtime(tmp_path / "model.onnx")
    assert str(info.value) == ("graph input 'input_features' has shape ['batch', 4, 51, 64] but the embedded feature "
                               "extractor (truncation 'rand_trunc') makes features of (1, 51, 64); re-embed the model "
                               "with its own processor files")
    with pytest.raises(rt.MetadataValidationError, match=r"audio-classification feeds input_features and optional "
                                                         r"attention_mask; the graph takes \['input_features', 'is_longer'"):
        rt.Runtime(fused.onnx, task="audio-classification")


def test_processors(fused):
    processors = rt.ONNXAutoProcessor.from_model(fused.onnx)  # a ClapProcessor's parts
    assert isinstance(processors["tokenizer"], rt.TextTokenizer)
    assert isinstance(processors["feature_extractor"], rt.ClapFeatureExtractor)
    assert processors["feature_extractor"].truncation == "fusion" and processors["feature_extractor"].frames == 51


def test_cli(fused, tmp_path, capsys):
    import wave

    wav = tmp_path / "clip.wav"
    pcm = np.round(np.clip(SHORT[1], -1, 1) * 32767).astype("<i2")
    with wave.open(str(wav), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes(pcm.tobytes())
    assert rt._main([str(fused.onnx), str(wav), "--options", json.dumps({"candidate_labels": LABELS[:2]})]) == 0
    assert json.loads(capsys.readouterr().out) == rt.Runtime(fused.onnx)(str(wav), candidate_labels=LABELS[:2])


# --- ClapFeatureExtractor's steps against transformers' ---------------------------------------------------------------

LENGTHS = (1, 777, 3000, 7999, 8000, 8100, 8159, 8200, 20000, 123457)


@pytest.mark.parametrize("truncation", ["fusion", "rand_trunc"])
@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad"])
def test_feature_extractor_matches_transformers(truncation, padding):
    from transformers import ClapFeatureExtractor

    reference = ClapFeatureExtractor(**{**EXTRACTOR, "padding": padding}, truncation=truncation)
    ours = rt.ClapFeatureExtractor(reference.to_dict())
    assert np.array_equal(ours.mel_filters, reference.mel_filters if truncation == "fusion" else reference.mel_filters_slaney)
    for length in LENGTHS:
        waveform = (np.random.RandomState(length).randn(length) * 0.1).astype(np.float32)
        np.random.seed(length)
        expected = reference([waveform], sampling_rate=RATE)
        actual = ours([waveform], np.random.RandomState(length))
        features = np.asarray(expected["input_features"])
        assert actual["input_features"].dtype == np.float32 and actual["input_features"].shape == features.shape
        assert actual["is_longer"].tolist() == np.asarray(expected["is_longer"]).tolist(), length
        fused = truncation == "fusion" and length > 8159  # longer than the window by a hop or more: the shrunk mel
        assert np.array_equal(actual["input_features"][:, 1:] if fused else actual["input_features"],
                              features[:, 1:] if fused else features), (length, truncation, padding)
        if fused:
            shrunk, whole = actual["input_features"][0, 0], features[0, 0]
            assert np.abs(shrunk - whole).max() <= 1e-4, np.abs(shrunk - whole).max()
        np.random.seed(length)  # the global state when no rng is given, as transformers
        assert np.array_equal(ours([waveform])["input_features"], actual["input_features"])


def test_feature_extractor_batches_and_marks():
    """Several clips in one call: with fusion and none longer, one is marked at random (rng.randint), as transformers."""
    from transformers import ClapFeatureExtractor

    reference = ClapFeatureExtractor(**EXTRACTOR, truncation="fusion")
    ours = rt.ClapFeatureExtractor(reference.to_dict())
    clips = [signal(s, RATE, seed=i) for i, s in enumerate((0.2, 0.5, 0.9, 0.4))]
    for seed in range(6):
        np.random.seed(seed)
        expected = reference(clips, sampling_rate=RATE)
        actual = ours(clips, np.random.RandomState(seed))
        assert actual["is_longer"].tolist() == np.asarray(expected["is_longer"]).tolist()
        assert np.array_equal(actual["input_features"], np.asarray(expected["input_features"]))


def test_htk_mel_filters_match_transformers():
    from transformers.audio_utils import mel_filter_bank

    for bins, mels, low, high, rate in ((513, 64, 50, 14000, 48000), (129, 64, 0, 4000, 8000), (201, 80, 20, 8000, 16000)):
        assert np.array_equal(rt.mel_filter_bank(bins, mels, low, high, rate, norm=None, mel_scale="htk"),
                              mel_filter_bank(bins, mels, low, high, rate, norm=None, mel_scale="htk"))


def test_bad_feature_extractor_configs():
    good = {**EXTRACTOR, "feature_extractor_type": "ClapFeatureExtractor", "truncation": "fusion"}
    with pytest.raises(rt.ProcessorReconstructionError, match=r"truncation is 'trim'; expected 'fusion' or 'rand_trunc'"):
        rt.ClapFeatureExtractor({**good, "truncation": "trim"})
    with pytest.raises(rt.ProcessorReconstructionError,
                       match=r"padding is 'max_length'; expected 'repeatpad', 'repeat' or 'pad'"):
        rt.ClapFeatureExtractor({**good, "padding": "max_length"})
    with pytest.raises(rt.ProcessorReconstructionError, match="so feature_size must be 64, not 32"):
        rt.ClapFeatureExtractor({**good, "feature_size": 32})
    rt.ClapFeatureExtractor({**good, "feature_size": 32, "truncation": "rand_trunc"})  # rand_trunc takes any size
    with pytest.raises(rt.ProcessorReconstructionError, match="0 <= frequency_min <= frequency_max"):
        rt.ClapFeatureExtractor({**good, "frequency_min": 5000})
