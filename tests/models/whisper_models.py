"""Tiny random-weight Whisper models with the generation config of the real ones (decoder prompt, languages, tasks,
suppressed tokens, timestamps), exported by Optimum (automatic-speech-recognition-with-past) in one process and merged
into ONE file each: the Whisper parity tests (test_parity_whisper.py) and bench/bench_whisper.py share them.

Tokenizers: the real whisper-tiny one (51,865 tokens) from ../shared/data when present; else, and always for the
English-only model, a byte-level BPE trained here on a small corpus that carries Whisper's special tokens (a few
languages, tasks, <|notimestamps|>, the 1,501 timestamps) in Whisper's order.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from helpers import SHARED, for_transformers_4, optimum_python

CORPUS = ["and so my fellow americans ask not what your country can do for you",
          "ask what you can do for your country", "he hoped there would be stew for dinner turnips and carrots",
          "the quick brown fox jumps over the lazy dog", "mister quilter is the apostle of the middle classes"] * 20
LANGUAGES = ("en", "zh", "de", "es", "ru", "fr")  # the built tokenizer's few languages
SPECIALS_BEFORE = ("<|endoftext|>", "<|startoftranscript|>")
SPECIALS_AFTER = ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
                  "<|notimestamps|>")
# openai/whisper-tiny's suppress_tokens that are ordinary tokens (its special ones are added by name below)
SUPPRESS = [1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 359, 503, 522, 542,
            873, 893, 902, 918, 922, 931, 1350, 1853, 1982, 2460, 2627, 3246, 3253, 3268, 3536, 3846, 3961, 4183, 4667]


def built_tokenizer(folder: Path) -> None:
    """A byte-level BPE trained on CORPUS with Whisper's special tokens, saved as a WhisperTokenizer."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import WhisperTokenizerFast

    tok = Tokenizer(BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=[],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    specials = [*SPECIALS_BEFORE, *(f"<|{code}|>" for code in LANGUAGES), *SPECIALS_AFTER]
    tok.add_special_tokens(specials)
    tok.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    tokenizer = WhisperTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                     unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                                     additional_special_tokens=specials[1:])
    tokenizer.save_pretrained(folder)


def generation_config(tokenizer: Any, multilingual: bool, max_length: int) -> dict[str, Any]:
    """A generation_config.json as the real checkpoints have it: multilingual ones with lang_to_id, task_to_id and a
    forced_decoder_ids prompt left to detection; English-only ones (tiny.en) with no languages and only no-timestamps
    forced."""
    ids = tokenizer.convert_tokens_to_ids
    end, start, no_timestamps = ids("<|endoftext|>"), ids("<|startoftranscript|>"), ids("<|notimestamps|>")
    specials = [ids(t) for t in ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>")]
    config: dict[str, Any] = {
        "bos_token_id": end, "eos_token_id": end, "pad_token_id": end, "decoder_start_token_id": start,
        "max_length": max_length, "begin_suppress_tokens": [220, end], "no_timestamps_token_id": no_timestamps,
        "max_initial_timestamp_index": 50, "return_timestamps": False,
        "suppress_tokens": [t for t in SUPPRESS if t < no_timestamps] + [start, *specials],
        "is_multilingual": multilingual,
    }
    if multilingual:
        from transformers.models.whisper.tokenization_whisper import LANGUAGES as ALL

        vocab = tokenizer.get_vocab()
        config["lang_to_id"] = {f"<|{code}|>": vocab[f"<|{code}|>"] for code in ALL if f"<|{code}|>" in vocab}
        config["task_to_id"] = {"translate": ids("<|translate|>"), "transcribe": ids("<|transcribe|>")}
        config["forced_decoder_ids"] = [[1, None], [2, ids("<|transcribe|>")]]
    else:
        config["forced_decoder_ids"] = [[1, no_timestamps]]
    return config


def build(folder: Path, *, multilingual: bool, real_tokenizer: bool, size: str = "tiny", seed: int = 0) -> None:
    """A random-weight Whisper folder: config, weights, feature extractor (80 bins, 30 s), tokenizer, generation
    config. size "tiny": d_model 32, 2+2 layers; "bench": whisper-tiny's shapes (d_model 384, 4+4 layers, 6 heads)."""
    import torch
    import transformers

    folder.mkdir(parents=True)
    if real_tokenizer:
        transformers.WhisperTokenizer.from_pretrained(SHARED / "openai__whisper-tiny").save_pretrained(folder)
    else:
        built_tokenizer(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    generation = generation_config(tokenizer, multilingual, 24 if size == "tiny" else 448)
    if size == "tiny":
        shapes = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
                  "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "init_std": 1.0}
    else:
        shapes = {"d_model": 384, "encoder_layers": 4, "decoder_layers": 4, "encoder_attention_heads": 6,
                  "decoder_attention_heads": 6, "encoder_ffn_dim": 1536, "decoder_ffn_dim": 1536, "init_std": 0.02}
    torch.manual_seed(seed)
    config = transformers.WhisperConfig(
        vocab_size=len(tokenizer) if not real_tokenizer else 51865, num_mel_bins=80, max_source_positions=1500,
        max_target_positions=448, decoder_start_token_id=generation["decoder_start_token_id"],
        bos_token_id=generation["bos_token_id"], eos_token_id=generation["eos_token_id"],
        pad_token_id=generation["pad_token_id"], suppress_tokens=None, begin_suppress_tokens=None, **shapes)
    model = transformers.WhisperForConditionalGeneration(config)
    model.config.architectures = ["WhisperForConditionalGeneration"]
    model.generation_config = transformers.GenerationConfig(**generation)
    model.eval().save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)


EXPORT_SCRIPT = """
import json, sys
from optimum.exporters.onnx import main_export
for model, output in json.loads(sys.argv[1]):
    main_export(model, output, task="automatic-speech-recognition-with-past", library_name="transformers",
                do_validation=False, no_post_process=True)
"""


def export(folders: list[Path]) -> list[Path]:
    """Optimum exports of model folders (encoder, decoder, decoder with past), in one process; the export folders."""
    jobs = [(str(for_transformers_4(folder)), str(folder.parent / f"{folder.name}-onnx")) for folder in folders]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(optimum_python()), "-c", EXPORT_SCRIPT, json.dumps(jobs)], capture_output=True,
                            text=True, env={**env, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"optimum export failed:\n{result.stderr[-3000:]}")
    return [Path(output) for _, output in jobs]


def one_file(export_folder: Path, model_folder: Path) -> Path:
    """The export merged with the model folder's metadata (vocabulary included) by the command line: model.onnx."""
    from authoring.cli import main

    if main(["embed", str(export_folder), str(model_folder), "--include-vocab"]) != 0:
        raise RuntimeError(f"embed of {export_folder} failed")
    return export_folder / "model.onnx"
