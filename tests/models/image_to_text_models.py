"""Tiny random-weight VisionEncoderDecoderModels (image captioning, OCR), exported into one file each by onnxmeta's
export (Optimum's exporter, its parts merged) in one Optimum process with transformers 4.57's answers.

Three families, each a ViT encoder (32x32 images, 8x8 patches) with another decoder and tokenizer:

- "vit-gpt2": a GPT-2 decoder with its byte-level BPE (the real gpt2 tokenizer when ../shared/data is present),
  as nlpconnect/vit-gpt2-image-captioning;
- "vit-bert": a BERT decoder (BertLMHeadModel) with a WordPiece tokenizer trained here, starting from [CLS];
- "trocr": TrOCR's decoder (TrOCRForCausalLM) with a RoBERTa byte-level BPE trained
  here, starting from </s> as microsoft/trocr-base-printed does.

Optimum exports GPT-2's and TrOCR's decoders with past, BERT's without (its exporter has no past for BERT): the
runtime reruns that decoder on every token so far.

The weights are scaled up (initializer_range) so that greedy decoding wanders over many tokens and differs from
one image to the next.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from generation_models import gpt2_tokenizer_folder
from helpers import ROOT, for_transformers_4, optimum_python, trained_bpe, trained_unigram, trained_wordpiece

FAMILIES = ("vit-gpt2", "vit-bert", "trocr")
IMAGE_SIZE = 32


def vit_config() -> Any:
    from transformers import ViTConfig

    return ViTConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=37, initializer_range=0.5)


def decoder_config(kind: str, tokenizer: Any) -> Any:
    """The decoder's config for a family, its special tokens from the tokenizer."""
    from transformers import BertConfig, GPT2Config, TrOCRConfig

    vocab = len(tokenizer)
    if kind == "vit-gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64, initializer_range=0.5,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, add_cross_attention=True)
    if kind == "vit-bert":
        return BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                          max_position_embeddings=64, initializer_range=0.5, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    return TrOCRConfig(vocab_size=vocab, d_model=32, decoder_layers=2, decoder_attention_heads=2, decoder_ffn_dim=37,
                       max_position_embeddings=64, init_std=0.5, cross_attention_hidden_size=32,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id)


def build(kind: str, folder: Path, seed: int = 0) -> None:
    """A random-weight VisionEncoderDecoderModel folder with its tokenizer and ViT image processor."""
    import torch
    from transformers import (
        AutoTokenizer,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTImageProcessor,
    )

    folder.mkdir(parents=True)
    {"vit-gpt2": gpt2_tokenizer_folder, "vit-bert": trained_wordpiece, "trocr": trained_bpe}[kind](folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), decoder_config(kind, tokenizer))
    start = {"vit-gpt2": tokenizer.bos_token_id, "vit-bert": tokenizer.cls_token_id, "trocr": tokenizer.eos_token_id}[kind]
    config.decoder_start_token_id = start
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config.eos_token_id = tokenizer.sep_token_id if kind == "vit-bert" else tokenizer.eos_token_id
    model = VisionEncoderDecoderModel(config)
    model.config.architectures = ["VisionEncoderDecoderModel"]
    model.eval().save_pretrained(folder)
    # preprocessor_config.json, as the hub's TrOCR folders have it (4.57's image-to-text pipeline reads it)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)


DOCVQA_TAGS = ["<s_docvqa>", "<s_question>", "</s_question>", "<s_answer>", "</s_answer>"]
DONUT_SIZE = {"height": 64, "width": 48}


def build_donut(folder: Path, *, docvqa: bool = True, seed: int = 0) -> None:
    """A random-weight Donut (DonutSwin encoder, MBart decoder) for document question answering: XLM-RoBERTa's
    Unigram tokenizer trained here with the DocVQA prompt's tags added (without them with docvqa=False), Donut's image
    processor at 48x64, generation up to the decoder's 40 positions. </s_answer>'s embedding (tied to the output
    layer) is scaled up so that some documents get an answer and others none."""
    import torch
    from transformers import (
        AutoTokenizer,
        DonutImageProcessor,
        DonutSwinConfig,
        MBartConfig,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
    )

    folder.mkdir(parents=True)
    trained_unigram(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(DOCVQA_TAGS if docvqa else ["<s_cord-v2>"], special_tokens=False)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    encoder = DonutSwinConfig(image_size=[DONUT_SIZE["height"], DONUT_SIZE["width"]], patch_size=4, embed_dim=16,
                              depths=[1, 1], num_heads=[1, 2], window_size=4, initializer_range=0.5)
    # encoder_attention_heads: unused by the decoder, but Optimum shapes its dummy past with it
    decoder = MBartConfig(vocab_size=len(tokenizer), d_model=32, decoder_layers=2, decoder_attention_heads=2,
                          encoder_attention_heads=2, decoder_ffn_dim=37, max_position_embeddings=40, init_std=0.5,
                          scale_embedding=True, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    model = VisionEncoderDecoderModel(config).eval()
    model.config.architectures = ["VisionEncoderDecoderModel"]
    model.generation_config.max_length = 40  # as Donut's DocVQA demo: the decoder's positions
    if docvqa:
        with torch.no_grad():
            model.decoder.model.decoder.embed_tokens.weight[tokenizer.convert_tokens_to_ids("</s_answer>")] *= 3
    model.save_pretrained(folder)
    DonutImageProcessor(size=DONUT_SIZE, do_align_long_axis=True).save_pretrained(folder)


# Each family exported by onnxmeta's own export (Optimum's exporter, the parts merged into one file) and answered by
# transformers 4.57's image-to-text pipeline (tests/oracles/image_to_text.py), all in one process of the Optimum
# environment: its imports take most of the time.
EXPORT_SCRIPT = """
import json, sys
from pathlib import Path
from authoring.export import export
sys.path.insert(0, sys.argv[2])
from image_to_text import answers
jobs, results = json.loads(sys.argv[1])
out = {}
for kind, folder, path, calls in jobs:
    report = export(folder, path, task="document-question-answering" if kind == "donut" else None)
    out[kind] = {"exporter_task": report.export_config["exporter_task"],
                 "answers": [] if kind.startswith("donut") else answers(folder, calls)}
Path(results).write_text(json.dumps(out))
"""


def export_all(root: Path, calls: list[dict[str, Any]],
               kinds: tuple[str, ...] = FAMILIES) -> dict[str, tuple[Path, Path, dict[str, Any]]]:
    """Per kind (FAMILIES; "donut" and "donut-cord", build_donut's with and without the DocVQA tags, exported for
    document-question-answering and for its detected task, image-to-text): its model folder, its file exported by
    onnxmeta's export (Optimum's parts in one file), and {"exporter_task": Optimum's task, "answers": transformers
    4.57's image-to-text results for calls (none for Donut: transformers 5 has its pipeline)}."""
    jobs = []
    for kind in kinds:
        if kind.startswith("donut"):
            build_donut(root / kind, docvqa=kind == "donut")
        else:
            build(kind, root / kind)
        jobs.append((kind, str(for_transformers_4(root / kind)), str(root / f"{kind}.onnx"), calls))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT)]), "HF_HUB_OFFLINE": "1"}
    results = root / "results.json"
    done = subprocess.run([str(optimum_python()), "-c", EXPORT_SCRIPT, json.dumps([jobs, str(results)]),
                           str(ROOT / "tests" / "oracles")], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        pytest.fail(f"the Optimum environment's export or oracle failed:\n{done.stderr[-3000:]}")
    out = json.loads(results.read_text())
    return {kind: (root / kind, root / f"{kind}.onnx", out[kind]) for kind in kinds}
