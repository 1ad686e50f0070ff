"""text-to-audio (text-to-speech) end to end: the runtime on ONNX vs transformers.pipeline("text-to-audio") on the same
VITS weights.

Tiny random VitsModel models (tests/models/tts_models.py: a character vocabulary learnt from the parity corpus)
exported by authoring's export (torch.onnx of authoring/vits.py: the noise as graph inputs) and run by the runtime:
with the stochastic duration predictor and add_blank (MMS-TTS's), with the plain one and without add_blank, and with
do_lower_case set and normalize off. The noise scales are 0 in their configs, so the pipeline is deterministic.

Tolerances: waveforms within 1e-3 of the pipeline's sample for sample (they differ by ~1e-5: onnxruntime's kernels
against torch's), the same length; token ids identical to transformers' VitsTokenizer's. With noise, the runtime's
samples come from numpy and a seed, so they are compared with themselves: the same seed gives the same waveform
(alone or in a list, however many prior frames were drawn first), another seed another one.
"""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest
from runtime_under_test import rt
from tts_models import tiny_vits, vits_tokenizer_folder

torch = pytest.importorskip("torch")

TOL = 1e-3
TEXTS = ["Hello world, this is a test.", "The quick brown fox jumps over the lazy dog", "a", "PARIS is the capital!",
         "it's a test, isn't it? yes! no.", "Ünïcödé façade — naïve café 🤗"]
TOKENIZER_TEXTS = [*TEXTS, "", "   ", "###", "ABC abc Th th QQ", "x_y", "a<unk>b", "  spaced  out  ", "thth", "B", "ț ţ"]
MODELS = {
    "stochastic-blank": {"seed": 1},
    "plain-no-blank": {"seed": 2, "stochastic": False, "add_blank": False},
    "lower-case-no-normalize": {"seed": 3, "do_lower_case": True, "normalize": False},
}


class Built:
    """A model folder, its embedded ONNX file, the runtime and the oracle pipeline."""

    def __init__(self, folder, onnx, oracle) -> None:
        self.folder, self.onnx, self.oracle = folder, onnx, oracle
        self.runtime = rt.Runtime(onnx)


def build(root, seed: int = 0, **options) -> Built:
    from transformers import pipeline

    from authoring.export import export

    tiny_vits(root / "hf", seed=seed, **options)
    report = export(root / "hf", root / "tts.onnx")
    assert report.task == "text-to-audio" and report.exporter == "torch.onnx"
    assert all(c.ok for c in report.checks), report.checks
    return Built(root / "hf", root / "tts.onnx", pipeline("text-to-audio", model=str(root / "hf")))


@pytest.fixture(scope="module", params=list(MODELS))
def vits(request, tmp_path_factory) -> Built:
    return build(tmp_path_factory.mktemp(request.param), **MODELS[request.param])


@pytest.fixture(scope="module")
def mms(tmp_path_factory) -> Built:
    """The MMS-TTS-like model alone (stochastic durations, add_blank), for the tests of one model."""
    return build(tmp_path_factory.mktemp("mms"), **MODELS["stochastic-blank"])


def assert_audio(actual, expected) -> None:
    reference = expected["audio"]
    assert set(actual) == {"audio", "sampling_rate"}
    assert actual["sampling_rate"] == expected["sampling_rate"] == 16000
    assert isinstance(actual["audio"], np.ndarray) and actual["audio"].dtype == np.float32
    assert actual["audio"].shape == reference.shape
    assert np.abs(actual["audio"] - reference).max() <= TOL


def test_waveforms_match_the_pipeline(vits):
    spoken = [t for t in TEXTS if vits.runtime._task.tokenizer.encode(t)]
    results = vits.runtime(spoken)
    for text, result in zip(spoken, results):
        assert_audio(result, vits.oracle(text))
    # the outputs vary with the text: lengths and samples
    assert len({r["audio"].shape for r in results}) > 2
    assert all(np.std(r["audio"]) > 0.05 for r in results)


def test_speaking_rate(vits):
    for rate in (0.5, 1.7):
        assert_audio(vits.runtime(TEXTS[0], speaking_rate=rate), vits.oracle(TEXTS[0], forward_params={"speaking_rate": rate}))
    assert vits.runtime(TEXTS[0], speaking_rate=2.0)["audio"].size < vits.runtime(TEXTS[0])["audio"].size


def test_task_alias_and_single_result(mms):
    runtime = rt.Runtime(mms.onnx, task="text-to-speech")
    assert runtime.task == "text-to-audio"
    assert_audio(runtime(TEXTS[1]), mms.oracle(TEXTS[1]))


def test_noise_defaults_come_from_the_config(tmp_path):
    built = build(tmp_path, seed=4, noise_scale=0.5, noise_scale_duration=0.7)
    task = built.runtime._task
    assert task.defaults == {"noise_scale": 0.5, "noise_scale_duration": 0.7, "speaking_rate": 1.0}
    # with noise, the pipeline draws it with torch; ours with numpy: a seed makes ours reproducible
    first, again = built.runtime(TEXTS[0], seed=7), built.runtime(TEXTS[0], seed=7)
    assert np.array_equal(first["audio"], again["audio"])
    other = built.runtime(TEXTS[0], seed=8)["audio"]
    assert other.shape != first["audio"].shape or not np.allclose(other, first["audio"])
    # noise scales at 0 give the pipeline's waveform on a model whose defaults are not 0
    built.oracle.model.noise_scale = built.oracle.model.noise_scale_duration = 0.0
    assert_audio(built.runtime(TEXTS[0], noise_scale=0, noise_scale_duration=0), built.oracle(TEXTS[0]))


def test_seed_reproduces_the_samples(mms, monkeypatch):
    noisy = {"noise_scale": 0.667, "noise_scale_duration": 0.8}
    one = mms.runtime(TEXTS[0], seed=3, **noisy)["audio"]
    assert np.array_equal(one, mms.runtime(TEXTS[0], seed=3, **noisy)["audio"])
    assert np.array_equal(one, mms.runtime([TEXTS[1], TEXTS[0]], seed=3, **noisy)[1]["audio"])
    other = mms.runtime(TEXTS[0], seed=4, **noisy)["audio"]
    assert other.shape != one.shape or np.abs(other - one).max() > 0.01
    # without a seed each call draws new noise
    drawn = [mms.runtime(TEXTS[0], **noisy)["audio"] for _ in range(2)]
    assert drawn[0].shape != drawn[1].shape or not np.array_equal(*drawn)
    # the prior's noise is the same whether the first run drew too few frames (and ran again) or plenty
    for frames in (1, 500):
        monkeypatch.setattr(rt, "_VITS_NOISE_FRAMES", frames)
        assert np.array_equal(one, mms.runtime(TEXTS[0], seed=3, **noisy)["audio"])
    # the duration noise alone changes the lengths; the prior noise alone the samples
    durations = mms.runtime(TEXTS[0], seed=3, noise_scale=0, noise_scale_duration=0.8)["audio"]
    prior = mms.runtime(TEXTS[0], seed=3, noise_scale=0.667, noise_scale_duration=0)["audio"]
    plain = mms.runtime(TEXTS[0], noise_scale=0, noise_scale_duration=0)["audio"]
    assert prior.shape == plain.shape and np.abs(prior - plain).max() > 0.01
    assert durations.shape != plain.shape or np.abs(durations - plain).max() > 0.01


@pytest.mark.parametrize("options", [{}, {"add_blank": False}, {"normalize": False}, {"do_lower_case": True},
                                     {"do_lower_case": True, "normalize": False, "add_blank": False},
                                     {"language": "ron"}])
def test_tokenizer_matches_transformers(tmp_path, options):
    """The runtime's VitsTokenizer, rebuilt from the metadata discovery embeds, gives transformers' ids."""
    from authoring.discovery import MetadataDiscovery

    reference = vits_tokenizer_folder(tmp_path, **options)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vits", "architectures": ["VitsModel"]}))
    metadata = MetadataDiscovery().discover_folder(tmp_path, level="full")
    tokenizer = rt.load_tokenizer(metadata)
    assert isinstance(tokenizer, rt.VitsTokenizer)
    assert metadata[rt.KEY_TOKENIZER_CONFIG]["tokenizer_class"] == "VitsTokenizer"
    for text in TOKENIZER_TEXTS:
        assert tokenizer.encode(text) == reference(text)["input_ids"], text
    if options.get("normalize", True):
        for text in TOKENIZER_TEXTS:
            assert tokenizer.normalized(text) == reference.prepare_for_tokenization(text)[0], text


def test_empty_and_unknown_texts_are_refused(mms):
    for text in ("", "   ", "###", "¿¡ @"):
        with pytest.raises(rt.InvalidInputError, match=r"text-to-audio got a text with nothing to speak .* keeps only the "
                                                       "characters of the model's vocabulary"):
            mms.runtime(text)
    with pytest.raises(rt.InvalidInputError, match="text-to-audio takes a string or a list of strings; got int"):
        mms.runtime(3)
    with pytest.raises(rt.InvalidInputError, match=r"speaking_rate must be a number in \(0.0, inf\), got 0"):
        mms.runtime("a", speaking_rate=0)
    with pytest.raises(rt.InvalidInputError, match=r"noise_scale must be a number in \[0.0, inf\), got -1"):
        mms.runtime("a", noise_scale=-1)
    with pytest.raises(rt.InvalidInputError, match=r"seed must be an integer >= 0 or None, got 1\.5"):
        mms.runtime("a", seed=1.5)


def test_tokenizers_the_runtime_cannot_rebuild_are_refused(mms, tmp_path):
    from authoring.embedder import embed_metadata

    metadata = dict(rt.read_metadata(mms.onnx))
    config = dict(metadata[rt.KEY_TOKENIZER_CONFIG])
    with pytest.raises(rt.ProcessorReconstructionError, match=r"turns text into phonemes with the phonemizer package and "
                                                              r"espeak \(phonemize: true\)"):
        rt.VitsTokenizer({**config, "phonemize": True})
    uroman = rt.VitsTokenizer({**config, "is_uroman": True})
    assert uroman.encode("abc") == rt.VitsTokenizer(config).encode("abc")
    with pytest.raises(rt.InvalidInputError, match=r"romanizes non-Roman text with uroman \(is_uroman\)"):
        uroman.encode("東京")
    # an essential-level file (no vocabulary): the --include-vocab error when the Runtime is built
    embed_metadata(mms.onnx, mms.folder, tmp_path / "essential.onnx", level="essential")
    with pytest.raises(rt.ProcessorReconstructionError, match="re-embed with --include-vocab"):
        rt.Runtime(tmp_path / "essential.onnx")


def test_command_line_writes_a_wav(mms, tmp_path, capsys):
    out = tmp_path / "speech.wav"
    assert rt._main([str(mms.onnx), TEXTS[0], "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    expected = mms.runtime(TEXTS[0])["audio"]
    assert summary == {"input": TEXTS[0], "audio": str(out), "sampling_rate": 16000, "samples": expected.size,
                       "seconds": round(expected.size / 16000, 3)}
    with wave.open(str(out)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()) == (1, 2, 16000, expected.size)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert np.abs(pcm / 32767 - np.clip(expected, -1, 1)).max() <= 1 / 32767
    assert not list(tmp_path.glob("*.tmp"))
    # several texts: one file each, numbered
    assert rt._main([str(mms.onnx), "a", "the dog", "--output", str(tmp_path / "many.wav")]) == 0
    assert sorted(p.name for p in tmp_path.glob("many-*.wav")) == ["many-1.wav", "many-2.wav"]
    capsys.readouterr()
    assert rt._main([str(mms.onnx), "a"]) == 1
    assert "text-to-audio writes speech to a WAV file: pass --output speech.wav" in capsys.readouterr().err
    assert rt._main([str(mms.onnx), "a", "--output", str(tmp_path / "missing" / "x.wav")]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert rt._main([str(mms.onnx), "--inspect"]) == 0
    summary = capsys.readouterr().out
    assert "task: text-to-audio" in summary and "processors: tokenizer\n" in summary  # its vocab.json embedded


def test_fp16_export_carries_a_waveform_quality_card(mms, tmp_path):
    """A converted export's quality card compares speech with the same seed: lengths and waveform similarity."""
    from authoring.export import export

    report = export(mms.folder, tmp_path / "fp16.onnx", quantize="fp16")
    assert report.quality is not None and report.quality.task == "text-to-audio"
    # fp16 may round a duration across a whole frame: that text is spoken a frame longer or shorter
    assert report.quality.metrics["same_length"] >= 0.6 and report.quality.metrics["cosine_similarity"] > 0.999
    fp16 = rt.Runtime(tmp_path / "fp16.onnx")(TEXTS[0])["audio"]
    assert fp16.dtype == np.float32 and abs(fp16.size - mms.runtime(TEXTS[0])["audio"].size) <= 2 * 16  # 16 samples a frame


def test_detection_and_exporter_choice():
    from authoring.export import choose_exporter
    from authoring.tasks import detect_task, resolve_task

    config = {"model_type": "vits", "architectures": ["VitsModel"]}
    assert detect_task(config) == detect_task({"model_type": "vits"}) == "text-to-audio"
    assert resolve_task(config, "text-to-speech") == "text-to-audio"
    assert choose_exporter("auto", "text-to-audio", config) == choose_exporter("torch", "text-to-audio", config) == "torch"
    from onnxmeta_runtime import MetadataExtractionError  # authoring's errors: the installed runtime's

    with pytest.raises(MetadataExtractionError, match=r"text-to-audio \(VITS\) is exported with torch.onnx, its noise "
                                                         "as graph inputs"):
        choose_exporter("optimum", "text-to-audio", config)
