"""Tiny random-weight CLAP models (ClapModel: a RoBERTa text tower and an HTSAT audio tower) for the zero-shot audio
classification tests: a byte-level BPE trained here (RobertaTokenizer), a ClapFeatureExtractor at 8 kHz with 1 s
windows, saved as transformers 5 saves a ClapProcessor (one processor_config.json nesting the feature extractor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from audio_models import signal
from helpers import trained_bpe

RATE, WINDOW_S = 8000, 1  # the feature extractor's sampling rate and max_length_s: a window of 8000 samples
EXTRACTOR = {"feature_size": 64, "sampling_rate": RATE, "hop_length": 160, "max_length_s": WINDOW_S,
             "fft_window_size": 256, "frequency_min": 50, "frequency_max": 4000, "padding": "repeatpad"}


def calibration_clips() -> list[np.ndarray]:
    """Clips the text projection is spread on: short and long, tones and noise."""
    return [signal(seconds, RATE, seed=300 + i) for i, seconds in enumerate((0.3, 0.7, 1.6, 2.5, 0.45, 3.1))]


def tiny_clap(folder: Path, *, fusion: bool, seed: int = 0) -> Any:
    """A random-weight ClapModel saved in folder with its processor; fusion: the fused audio tower (enable_fusion,
    aff_2d) and truncation "fusion", else the plain one and "rand_trunc". Returns the model (eval mode)."""
    import torch
    from transformers import AutoTokenizer, ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    folder.mkdir(parents=True, exist_ok=True)
    trained_bpe(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 130, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    # spec_size 64 with 64 mel bins: the 51 frames of a window are stretched to a 64x64 image, 4x4 patches
    audio = {"spec_size": 64, "num_mel_bins": 64, "window_size": 4, "patch_size": 4, "patch_stride": 4, "depths": [1, 1],
             "num_attention_heads": [2, 2], "patch_embeds_hidden_size": 16, "hidden_size": 32, "enable_fusion": fusion,
             "fusion_type": "aff_2d" if fusion else None}
    config = ClapConfig(text_config=text, audio_config=audio, projection_dim=16)
    config.architectures = ["ClapModel"]
    torch.manual_seed(seed)
    model = ClapModel(config).eval()
    extractor = ClapFeatureExtractor(**EXTRACTOR, truncation="fusion" if fusion else "rand_trunc")
    _calibrate(model, extractor, tok)
    model.save_pretrained(folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # ClapProcessor saves its tokenizer again
        (folder / name).unlink(missing_ok=True)
    ClapProcessor(feature_extractor=extractor, tokenizer=tok).save_pretrained(folder)
    if (folder / "preprocessor_config.json").exists() or "feature_extractor" not in json.loads(
            (folder / "processor_config.json").read_text()):
        raise AssertionError("ClapProcessor.save_pretrained did not nest its feature extractor")
    return model


def _calibrate(model: Any, extractor: Any, tok: Any) -> None:
    """Random audio embeddings of different clips point nearly the same way: the audio projection's output is centred
    on the calibration clips and rescaled, so that different clips rank the labels differently."""
    import torch

    state = np.random.get_state()
    np.random.seed(0)
    try:
        features = [extractor([clip], sampling_rate=RATE, return_tensors="pt") for clip in calibration_clips()]
    finally:
        np.random.set_state(state)
    with torch.no_grad():
        embeds = torch.cat([model.audio_projection(model.audio_model(**f).pooler_output) for f in features])
        projection = model.audio_projection.linear2
        projection.bias -= embeds.mean(0)
