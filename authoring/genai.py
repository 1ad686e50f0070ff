"""onnxruntime-genai's model builder as an exporter of decoder-only LLMs.

The builder writes graphs made of onnxruntime's fused CPU operators (``GroupQueryAttention`` with rotary
embeddings, ``SkipSimplifiedLayerNormalization``, ``MatMulNBits``; a tied embedding table quantized once and shared
by the lookup and the output projection), which run several times faster than a plain export of the same model.
It is pip-installable (the ``[genai]`` extra: onnxruntime-genai, transformers 5, torch) and reads a local folder;
here it runs in a subprocess of this interpreter, and its ``model.onnx`` + ``model.onnx.data`` become ONE file.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxmeta_runtime import MetadataExtractionError

from .weights import Quantization

logger = logging.getLogger("onnxmeta")

GENAI_INSTALL = "pip install 'onnxmeta[genai]' (onnxruntime-genai's model builder; it needs transformers 5)"

# Decoder-only architectures the builder exports as one text graph the runtime runs (input_ids, attention_mask,
# past_key_values.N.key/value in; logits, present.N.* out). Vision, audio and mixture-of-experts variants are left out.
ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "GraniteForCausalLM", "OlmoForCausalLM", "PhiForCausalLM",
    "Phi3ForCausalLM", "SmolLM3ForCausalLM", "NemotronForCausalLM", "InternLM2ForCausalLM", "Ernie4_5ForCausalLM",
})


def available() -> bool:
    """Whether onnxruntime-genai's model builder can be imported here (it needs transformers 5 and torch)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime_genai", "transformers", "torch"))


def supports(config: Mapping[str, Any]) -> bool:
    """Whether the builder exports this model's architecture as a graph the runtime runs."""
    architectures = config.get("architectures") or []
    return bool(architectures) and architectures[0] in ARCHITECTURES


def precision(quantization: Quantization | None) -> tuple[str, str, dict[str, str]]:
    """The builder's precision, execution provider and extra options for a quantization: float32 and the weight-only
    modes for the CPU (int8 compute: accuracy_level 4), float16 and q4f16 for CUDA (float16 activations, which
    onnxruntime's CPU provider also runs, more slowly). The head is pruned to the last position (prune_lm_head): a
    prompt's first token comes sooner, and the runtime scores every position of a text step by step instead."""
    pruned = {"prune_lm_head": "true"}  # the prompt's last position only through the head: a faster first token
    if quantization is None:
        return "fp32", "cpu", pruned
    mode = quantization.mode
    if mode == "fp16":
        return "fp16", "cuda", pruned
    options = {**pruned, "block_size": str(quantization.block_size), "is_symmetric": str(quantization.symmetric).lower(),
               "accuracy_level": str(quantization.level)}
    if mode in ("int4", "q4f16") and quantization.lm_head == "int8":
        # rtn: the builder's default method names the 8-bit head's weights otherwise than its tied lookup reads them
        options.update(algo_config="rtn", matmul_mixed_precision="last_matmul:int8")
    if mode == "int8":
        return "int8", "cpu", options
    return "int4", "cuda" if mode == "q4f16" else "cpu", options


def build(folder: Path, out: Path, quantization: Quantization | None, cache: Path) -> dict[str, Any]:
    """Run the model builder on a local model folder into out (model.onnx, its .data, genai_config.json); returns
    what export_config records."""
    chosen, provider, options = precision(quantization)
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", os.fspath(folder), "-o", os.fspath(out),
               "-p", chosen, "-e", provider, "-c", os.fspath(cache)]
    if options:
        command += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    logger.debug("running %s", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 or not (out / "model.onnx").is_file():
        logger.debug("the builder's output:\n%s\n%s", done.stdout, done.stderr)
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise MetadataExtractionError(f"onnxruntime-genai's model builder failed on {folder.name} ({chosen}, {provider}): "
                                      f"{last[0][:400]} (-v shows its output)")
    return {"exporter": "onnxruntime-genai", "exporter_task": "text-generation",
            "builder": {"precision": chosen, "execution_provider": provider, "extra_options": options,
                        "version": importlib.metadata.version("onnxruntime-genai")}}
