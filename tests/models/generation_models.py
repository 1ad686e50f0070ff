"""Tiny generative models for the text-generation tests: GPT-2 and a Llama with grouped-query attention, random
weights (initializer_range 0.5, so that greedy decoding wanders over many tokens), exported without a cache
(torch.onnx) and with one (Optimum's current export, and its legacy merged decoder with use_cache_branch),
each with the model folder's metadata embedded.

Optimum (the venv of tests/models/helpers.optimum_python) no longer writes the legacy merged decoder from its command
line: it exports one model that takes an empty past. LEGACY_EXPORT builds it the way Optimum did: its own
exporter writes decoder_model.onnx (no past in, present out) and decoder_with_past_model.onnx, and its own
optimum.onnx.merge_decoders joins them under an If on use_cache_branch into decoder_model_merged.onnx.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import SHARED, for_transformers_4, optimum_python

CORPUS = [
    "Once upon a time there was a little robot who wanted to learn how to write stories.",
    "The quick brown fox jumps over the lazy dog, and the dog does not mind at all.",
    "Hello world! This is a test of the tokenizer, with numbers like 42 and 1999.",
    "She said: \"we will meet at noon\" and then she left the room quietly.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "In the beginning the universe was created. This has made a lot of people very angry.",
    "A café in München serves naïve crème brûlée — délicieux, 東京 and 日本語 too.",
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role') }}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{% if not loop.last or message['role'] != 'assistant' %}"
    "{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
POSITIONS = 512


def byte_level_bpe(specials: list[str], vocab_size: int = 500) -> Any:
    """A byte-level BPE (GPT-2's scheme) trained on CORPUS."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 10, trainer)
    return tokenizer


def gpt2_tokenizer_folder(folder: Path) -> None:
    """The real gpt2 tokenizer from ../shared/data when present, else a byte-level BPE trained here."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    source = SHARED / "gpt2" / "_derived"
    if source.is_dir():
        AutoTokenizer.from_pretrained(source, model_max_length=POSITIONS).save_pretrained(folder)
        return
    tokenizer = byte_level_bpe(["<|endoftext|>"])
    GPT2TokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                      unk_token="<|endoftext|>", model_max_length=POSITIONS).save_pretrained(folder)


def llama_tokenizer_folder(folder: Path, vocab_size: int = 500) -> None:
    """A byte-level BPE that starts every text with <s>, as Llama's does, with a chat template."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = byte_level_bpe(["<unk>", "<s>", "</s>"], vocab_size)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=POSITIONS, chat_template=CHAT_TEMPLATE).save_pretrained(folder)


def build_model(kind: str, folder: Path, seed: int = 0) -> Any:
    """A random-weight GPT2LMHeadModel or LlamaForCausalLM (4 heads, 2 key-value heads) saved with its tokenizer."""
    import torch
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    folder.mkdir(parents=True, exist_ok=True)
    (gpt2_tokenizer_folder if kind == "gpt2" else llama_tokenizer_folder)(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    if kind == "gpt2":
        config: Any = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=POSITIONS,
                                 initializer_range=0.5, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=POSITIONS,
                             initializer_range=0.5, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    model.eval().save_pretrained(folder)
    return model


def genai_llama(folder: Path, seed: int = 0, *, tied: bool = True) -> Any:
    """A random-weight LlamaForCausalLM that onnxruntime-genai's builder exports: head size 16 (its
    GroupQueryAttention kernel needs a multiple of 16), 4 heads, 2 key-value heads, tied embeddings by default."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    llama_tokenizer_folder(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=POSITIONS,
                         initializer_range=0.5, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    model.config.architectures = ["LlamaForCausalLM"]
    model.eval().save_pretrained(folder)
    return model


def export_without_cache(model: Any, path: Path, position_ids: bool = True) -> Path:
    """torch.onnx.export of the whole-sequence forward (use_cache=False): logits for input_ids, attention_mask
    and, unless told otherwise, position_ids."""
    import torch

    names = ["input_ids", "attention_mask", *(["position_ids"] if position_ids else [])]

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            return self.model(**dict(zip(names, tensors)), use_cache=False).logits

    dummy = tuple(torch.ones((2, 7), dtype=torch.long) for _ in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "logits"]}
    torch.onnx.export(Forward().eval(), dummy, path, input_names=names, output_names=["logits"], dynamic_axes=axes,
                      opset_version=17, dynamo=False)
    model.eval()
    return path


LEGACY_EXPORT = """
import sys
from pathlib import Path
from optimum.exporters.onnx import export, main_export
from optimum.exporters.tasks import TasksManager
from optimum.onnx import merge_decoders
from transformers import AutoModelForCausalLM

for source, out in zip(sys.argv[1::2], map(Path, sys.argv[2::2])):
    main_export(source, out / "current", task="text-generation-with-past", library_name="transformers", do_validation=False)
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    config = TasksManager.get_exporter_config_constructor(exporter="onnx", model=model, task="text-generation-with-past",
                                                           library_name="transformers")
    legacy = out / "legacy"
    legacy.mkdir(parents=True, exist_ok=True)
    export(model, config(model.config, task="text-generation", use_past=True, use_past_in_inputs=False),
           legacy / "decoder_model.onnx")
    export(model, config(model.config, task="text-generation", use_past=True, use_past_in_inputs=True),
           legacy / "decoder_with_past_model.onnx")
    merge_decoders(legacy / "decoder_model.onnx", legacy / "decoder_with_past_model.onnx",
                   save_path=legacy / "decoder_model_merged.onnx")
"""


def optimum_exports(jobs: list[tuple[Path, Path]]) -> list[dict[str, Path]]:
    """Optimum's current export (model.onnx) and legacy merged decoder of each (model folder, output folder),
    all in one process of the Optimum environment."""
    script = jobs[0][1].parent / "optimum_legacy_export.py"
    script.write_text(LEGACY_EXPORT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    arguments = [str(p) for folder, out in jobs for p in (for_transformers_4(folder), out)]
    result = subprocess.run([str(optimum_python()), str(script), *arguments], capture_output=True, text=True,
                            env={**env, "HF_HUB_OFFLINE": "1"}, check=False)
    if result.returncode != 0:
        pytest.fail(f"optimum export failed:\n{result.stderr[-3000:]}")
    return [{"current": out / "current" / "model.onnx", "legacy": out / "legacy" / "decoder_model_merged.onnx"} for _, out in jobs]


def embedded(graph: Path, folder: Path, out: Path) -> Path:
    """graph with the model folder's metadata embedded (vocabulary included)."""
    from authoring import embed_metadata

    embed_metadata(graph, folder, out, include_vocab=True)
    return out


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
