"""Builders for the audio tests: signals, tiny random-weight speech models exported to ONNX, and the
torchaudio oracle (transformers' pipelines resample with torchaudio.functional.resample)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import ROOT, SHARED, shared

SPEECH_WAV = "1272-141231-0002.wav"  # LibriSpeech, 16 kHz mono PCM_16, 13.3 s
JFK_FLAC = "jfk.flac"  # 44.1 kHz stereo PCM_24, 11 s
TORCHAUDIO = Path(os.environ.get("ONNXMETA_TORCHAUDIO", Path.home() / ".cache" / "onnxmeta" / "torchaudio-2.11"))
CTC_LETTERS = "ETAONIHSRDLUMWCFGYPBVKXJQZ'"


def asset(name: str) -> Path:
    """A real speech file from ../shared/data/_assets; skips the test when it is absent."""
    path = shared("_assets") / name
    if not path.exists():
        pytest.skip(f"{path} is absent (real speech files live in ../shared/data/_assets)")
    return path


def read(name: str) -> tuple[np.ndarray, int]:
    """A real speech file as soundfile reads it: (frames, channels) float32, and its rate."""
    import soundfile

    samples, rate = soundfile.read(asset(name), dtype="float32", always_2d=True)
    return samples, rate


def signal(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A speech-like synthetic signal: a few drifting tones, bursts and noise, float32 in [-1, 1]."""
    rng = np.random.RandomState(seed)
    t = np.arange(round(seconds * rate)) / rate
    out = np.zeros_like(t)
    for _ in range(4):
        freq = rng.uniform(120, 3000)
        out += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * freq * t * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)))
    out *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 4) * t) ** 2
    out += 0.02 * rng.randn(len(t))
    return out.astype(np.float32)


def ctc_tokenizer_folder(folder: Path, **options: Any) -> Any:
    """A Wav2Vec2CTCTokenizer (letters, '|', pad/bos/eos/unk; options as its arguments) saved in folder by transformers."""
    from transformers import Wav2Vec2CTCTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate(CTC_LETTERS)}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), **options)
    tokenizer.save_pretrained(folder)
    return tokenizer


def speech_config(model_type: str, *, stable: bool, **extra: Any) -> Any:
    """A tiny wav2vec2-family config: real conv strides (320 samples a frame), 16 channels, 2 layers of 32."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, initializer_range=0.5,
        feat_extract_norm="layer" if stable else "group", do_stable_layer_norm=stable, **extra,
    )


def ctc_model(folder: Path, *, model_type: str = "wav2vec2", stable: bool = True, seed: int = 0) -> Any:
    """A tiny random *ForCTC in folder with its tokenizer and feature extractor; returns the model.

    stable: layer norms and an attention mask (wav2vec2-large style), else group norm without one (base style).
    The blank and the word delimiter get biases that make them the likeliest token on about 30% and 15% of the
    frames of a few signals, so that transcripts have gaps and words.
    """
    import torch
    import transformers
    from transformers import Wav2Vec2FeatureExtractor

    tokenizer = ctc_tokenizer_folder(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=stable, do_normalize=True).save_pretrained(folder)
    config = speech_config(model_type, stable=stable, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    cls = {"wav2vec2": transformers.Wav2Vec2ForCTC, "hubert": transformers.HubertForCTC}[model_type]
    config.architectures = [cls.__name__]
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        waves = torch.from_numpy(np.stack([signal(2.0, seed=100 + i) for i in range(4)]))
        logits = model((waves - waves.mean(1, keepdim=True)) / waves.std(1, keepdim=True)).logits.reshape(-1, len(tokenizer))
        for token, share in ((tokenizer.pad_token_id, 0.3), (tokenizer.word_delimiter_token_id, 0.15)):
            others = logits.clone()
            others[:, token] = -float("inf")
            shift = torch.quantile(others.max(-1).values - logits[:, token], share)
            model.lm_head.bias[token] += shift
            logits[:, token] += shift
    model.save_pretrained(folder)
    return model


def as_processor_folder(folder: Path, processor_class: str) -> Path:
    """Re-save a model folder's feature extractor and tokenizer as transformers 5's processor_class.save_pretrained
    does: ONE processor_config.json nesting the feature extractor, no preprocessor_config.json (fine-tunes look so)."""
    import transformers

    processor = getattr(transformers, processor_class).from_pretrained(folder)
    (folder / "preprocessor_config.json").unlink()
    processor.save_pretrained(folder)
    if (folder / "preprocessor_config.json").exists() or "feature_extractor" not in json.loads(
            (folder / "processor_config.json").read_text()):
        raise AssertionError(f"{processor_class}.save_pretrained did not nest its feature extractor")
    return folder


LABELS = ["yes", "no", "up", "down", "left", "right", "on", "off"]


def audio_classifier(folder: Path, kind: str, *, seed: int = 0) -> Any:
    """A tiny random audio classifier with 8 labels in folder: kind "wav2vec2" (*ForSequenceClassification with
    Wav2Vec2FeatureExtractor) or "ast" (ASTForAudioClassification, 64 mel bins, 256 frames)."""
    import torch
    from transformers import (
        ASTConfig,
        ASTFeatureExtractor,
        ASTForAudioClassification,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
    )

    folder.mkdir(parents=True, exist_ok=True)
    labels = dict(enumerate(LABELS))
    names = {"id2label": labels, "label2id": {v: k for k, v in labels.items()}}
    torch.manual_seed(seed)
    if kind == "ast":
        ASTFeatureExtractor(num_mel_bins=64, max_length=256).save_pretrained(folder)
        config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_mel_bins=64,
                           max_length=256, initializer_range=0.5, architectures=["ASTForAudioClassification"], **names)
        model = ASTForAudioClassification(config).eval()
    else:
        Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True).save_pretrained(folder)
        config = speech_config("wav2vec2", stable=True, classifier_proj_size=16, **names)
        config.architectures = ["Wav2Vec2ForSequenceClassification"]
        model = Wav2Vec2ForSequenceClassification(config).eval()
    # Pooled random features vary little between inputs: the head is rescaled and centred on a few signals so
    # that different inputs get different labels.
    head = model.classifier.dense if kind == "ast" else model.classifier
    waves = [signal(1.5, seed=200 + i) for i in range(6)]
    with torch.no_grad():
        if kind == "ast":
            features = ASTFeatureExtractor(num_mel_bins=64, max_length=256)(waves, sampling_rate=16000, return_tensors="pt")
        else:
            features = Wav2Vec2FeatureExtractor()(waves, sampling_rate=16000, return_tensors="pt")
        logits = model(**features).logits
        scale = 3.0 / float(logits.std(0).mean())
        centre = (logits.mean(0) - head.bias) * scale  # the mean of the rescaled weights' part
        head.weight *= scale
        head.bias.copy_(-centre)
    model.save_pretrained(folder)
    return model


def export_audio(model: Any, path: Path, input_names: list[str], *, samples: int = 16000) -> Path:
    """torch.onnx.export of an audio model's logits, batch and time axes dynamic; model left in eval mode."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            return self.model(**dict(zip(input_names, tensors))).logits

    model.eval()
    main = getattr(model, "main_input_name", "input_values")
    if main == "input_values" and model.config.model_type == "audio-spectrogram-transformer":
        dummy: tuple[Any, ...] = (torch.randn(2, model.config.max_length, model.config.num_mel_bins),)
        axes = {"input_values": {0: "batch"}}
    else:
        dummy = tuple(torch.randn(2, samples) if n == "input_values" else torch.ones(2, samples, dtype=torch.long)
                      for n in input_names)
        axes = {n: {0: "batch", 1: "samples"} for n in input_names}
    frames = {1: "frames"} if "ForCTC" in type(model).__name__ else {}
    torch.onnx.export(Logits().eval(), dummy, path, input_names=input_names, output_names=["logits"],
                      dynamic_axes={**axes, "logits": {0: "batch", **frames}}, opset_version=17, dynamo=False)
    model.eval()
    return path


def torchaudio_site() -> Path:
    """A folder holding torchaudio 2.11 (pip --target, no dependencies), the resampler transformers' pipelines call.

    Created on first use. torchaudio has no release for torch 2.13; its C++ extension, built for 2.11, is removed:
    functional.resample and compliance.kaldi are plain torch code and import without it.
    """
    if (TORCHAUDIO / "torchaudio" / "functional").is_dir():
        return TORCHAUDIO
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(TORCHAUDIO),
                              "torchaudio==2.11.0"], capture_output=True, text=True, check=False)
    if install.returncode != 0:
        pytest.skip(f"cannot install torchaudio (the resampling oracle) into {TORCHAUDIO}: {install.stderr[-500:]}")
    for library in (TORCHAUDIO / "torchaudio" / "lib").glob("*.so"):
        library.unlink()
    return TORCHAUDIO


def oracle_signals() -> dict[str, np.ndarray]:
    """The signals the torchaudio oracle works on: synthetic ones at 8, 16, 22.05 and 44.1 kHz, and the real
    speech files where ../shared is present (jfk.flac at 44.1 kHz, averaged to mono)."""
    signals = {"s8k": signal(3.0, 8000, seed=4), "s44k": signal(2.5, 44100, seed=5), "s22k": signal(1.0, 22050, seed=6),
               "s16k": signal(1.5, 16000, seed=7)}
    if (SHARED / "_assets").exists():
        signals["jfk"] = read(JFK_FLAC)[0].mean(axis=1)
        signals["speech"] = read(SPEECH_WAV)[0][:, 0]
    return signals


RESAMPLED = {"s8k": (8000, 16000), "s44k": (44100, 16000), "s22k": (22050, 16000), "s16k": (16000, 8000), "jfk": (44100, 16000)}
_resampled: dict[str, np.ndarray] = {}


def torchaudio_oracle(signals: dict[str, np.ndarray], requests: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Run tests/oracles/torchaudio_oracle.py (torchaudio importable) on signals; one array back per request."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp, "signals.npz"), **signals)
        Path(tmp, "requests.json").write_text(json.dumps(requests))
        env = {**os.environ, "PYTHONPATH": str(torchaudio_site())}
        result = subprocess.run([sys.executable, str(ROOT / "tests" / "oracles" / "torchaudio_oracle.py"), tmp],
                                capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            pytest.fail(f"torchaudio oracle failed:\n{result.stderr[-3000:]}")
        with np.load(Path(tmp, "answers.npz")) as answers:
            return {name: answers[name] for name in answers.files}


def resampled() -> dict[str, np.ndarray]:
    """torchaudio.functional.resample of the oracle_signals() named in RESAMPLED, computed once per session."""
    if not _resampled:
        signals = oracle_signals()
        _resampled.update(torchaudio_oracle(signals, [
            {"name": name, "op": "resample", "signal": name, "orig": orig, "new": new}
            for name, (orig, new) in RESAMPLED.items() if name in signals
        ]))
    return _resampled


class Audio:
    """A tiny audio model: its folder, the transformers pipeline on it, and its export with full metadata embedded."""

    def __init__(self, folder: Path, oracle: Any, onnx: Path, plain: Path) -> None:
        self.folder, self.oracle, self.onnx, self.plain = folder, oracle, onnx, plain

    def runtime(self, **options: Any) -> Any:
        import onnxmeta_runtime

        return onnxmeta_runtime.Runtime(self.onnx, **options)


def _build(tmp: Path, name: str) -> Audio:
    from transformers import AutoFeatureExtractor, AutoTokenizer, pipeline

    from authoring import embed_metadata

    folder = tmp / "hf"
    if name == "wav2vec2_ctc":
        model, inputs = ctc_model(folder), ["input_values", "attention_mask"]
    elif name == "hubert_ctc":
        model, inputs = ctc_model(folder, model_type="hubert", stable=False, seed=1), ["input_values"]
    elif name == "wav2vec2_classifier":
        model, inputs = audio_classifier(folder, "wav2vec2"), ["input_values", "attention_mask"]
    else:
        model, inputs = audio_classifier(folder, "ast"), ["input_values"]
    export_audio(model, tmp / "plain.onnx", inputs)
    embed_metadata(tmp / "plain.onnx", folder, tmp / "model.onnx", include_vocab=True)
    task = "automatic-speech-recognition" if name.endswith("ctc") else "audio-classification"
    tokenizer = AutoTokenizer.from_pretrained(folder) if task == "automatic-speech-recognition" else None
    oracle = pipeline(task, model=model, tokenizer=tokenizer, feature_extractor=AutoFeatureExtractor.from_pretrained(folder),
                      device="cpu")
    return Audio(folder, oracle, tmp / "model.onnx", tmp / "plain.onnx")


_built: dict[str, Audio] = {}


def built(name: str, tmp_path_factory: Any) -> Audio:
    """A tiny audio model built once per session: wav2vec2_ctc (layer norms, attention mask), hubert_ctc (group
    norm, no mask), wav2vec2_classifier, ast_classifier."""
    if name not in _built:
        _built[name] = _build(tmp_path_factory.mktemp(name), name)
    return _built[name]
