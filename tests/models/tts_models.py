"""Tiny random-weight VITS models (VitsModel and its VitsTokenizer) for the text-to-audio tests.

The character vocabulary is learnt here from the parity corpus: "_" (id 0, the blank add_blank puts between
characters, and the pad token), then every character of the lower-cased corpus by how often it occurs, then a few
upper-case letters and a multi-character word, so that normalize's "keep vocabulary words as written" has something
to keep. The weights are drawn with a small initializer range and the noise scales are 0 in the config, so that the
waveform varies with the text and matches the pipeline's sample for sample.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from helpers import CORPUS

EXTRA_TOKENS = ("A", "B", "Q", "th")  # kept as written by normalize (transformers tries vocabulary words first)


def vits_vocab() -> dict[str, int]:
    """The character vocabulary: "_" at id 0, the corpus's lower-case characters by frequency, EXTRA_TOKENS."""
    counts = Counter(c for line in CORPUS for c in line.lower() if c != "_")
    chars = ["_", *sorted(counts, key=lambda c: (-counts[c], c)), *EXTRA_TOKENS]
    return {c: i for i, c in enumerate(dict.fromkeys(chars))}


def vits_tokenizer_folder(folder: Path, **options: Any) -> Any:
    """A VitsTokenizer over vits_vocab() saved in folder by transformers (phonemize off, as MMS-TTS; options as its
    arguments: add_blank, normalize, do_lower_case, language...)."""
    from transformers import VitsTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vits_vocab(), ensure_ascii=False))
    tokenizer = VitsTokenizer(str(folder / "vocab.json"), pad_token="_", unk_token="<unk>",
                              **{"phonemize": False, **options})
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_vits(folder: Path, *, seed: int = 0, stochastic: bool = True, noise_scale: float = 0.0,
              noise_scale_duration: float = 0.0, **tokenizer_options: Any) -> Any:
    """A tiny random VitsModel in folder with its VitsTokenizer; returns the model (eval mode).

    stochastic: VITS's stochastic duration predictor (MMS-TTS's), else the plain convolutional one."""
    import torch
    from transformers import VitsConfig, VitsModel

    tokenizer = vits_tokenizer_folder(folder, **tokenizer_options)
    config = VitsConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=32, flow_size=8,
        spectrogram_bins=9, upsample_initial_channel=16, upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], duration_predictor_filter_channels=16,
        duration_predictor_num_flows=2, prior_encoder_num_flows=2, prior_encoder_num_wavenet_layers=2,
        posterior_encoder_num_wavenet_layers=2, depth_separable_num_layers=2, initializer_range=0.1,
        use_stochastic_duration_prediction=stochastic, noise_scale=noise_scale,
        noise_scale_duration=noise_scale_duration, sampling_rate=16000, architectures=["VitsModel"],
    )
    torch.manual_seed(seed)
    model = VitsModel(config).eval()
    model.save_pretrained(folder)
    return model
