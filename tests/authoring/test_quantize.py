"""onnxmeta export --quantize on tiny models of every kind, and onnxruntime-genai's builder as the exporter of
decoder-only LLMs.

Every quantized or converted file is compared with its float32 twin by its quality card (authoring.quality), whose
numbers must be reproducible from the two files and above each mode's stated floor. The tiny models have random
weights drawn large (initializer_range 0.5, so that their answers vary), which makes them fragile to int4 and int8
noise: their floors are low, and a trained model's (all-MiniLM-L6-v2 from ../shared/data) are checked beside them.
Sizes: tied weights stored once (the float32 weights at most 1.02x the model's safetensors), int4 at most 0.3x
float32 where MatMul and embedding weights dominate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from generation_models import genai_llama
from helpers import shared
from runtime_under_test import rt
from test_export import MODELS

from authoring.export import export
from authoring.quality import PROBE_TEXTS, quality_card

MODES = ("int4", "int8", "fp16", "q4f16")
# the tiny models of test_export, one of each kind of graph
KINDS = ("text-classification", "token-classification", "sentence-transformers", "text-generation",
         "image-classification", "zero-shot-image-classification", "audio-classification", "automatic-speech-recognition")


def weight_bytes(path: Path, but: tuple[str, ...] = ()) -> int:
    """The bytes of a file's initializers (but those named): its weights without the graph and the metadata."""
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer if t.name not in but)


def safetensors_bytes(folder: Path) -> int:
    """The tensors' bytes in a model folder's model.safetensors (its header read, not the data)."""
    with open(folder / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(end - start for name, v in header.items() if name != "__metadata__" for start, end in [v["data_offsets"]])


def ops(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Any]:
    """Each kind's folder, its float32 export and one export per mode (torch.onnx in this environment)."""
    root = tmp_path_factory.mktemp("quantize")
    out: dict[str, Any] = {}
    for kind in KINDS:
        build, options, _ = MODELS[kind]
        build(root / kind)
        out[kind] = {"folder": root / kind, "fp32": export(root / kind, root / f"{kind}.onnx", **options)}
        for mode in MODES:
            out[kind][mode] = export(root / kind, root / f"{kind}-{mode}.onnx", quantize=mode, **options)
    return out


# The floor each mode keeps on the tiny random models, per measure (measured: fp16 keeps every answer; int8 and
# int4 move the flat scores of random weights enough to reorder close labels).
FLOORS = {
    "fp16": {"label_agreement": 1.0, "cosine_similarity": 0.9999, "top1_agreement": 0.98, "word_error_rate": 0.0},
    "int8": {"label_agreement": 0.6, "cosine_similarity": 0.99, "top1_agreement": 0.85, "word_error_rate": 0.5},
    "int4": {"label_agreement": 0.0, "cosine_similarity": 0.8, "top1_agreement": 0.25, "word_error_rate": 1.0},
}
FLOORS["q4f16"] = FLOORS["int4"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_mode_on_every_kind(kind, mode, exports):
    report = exports[kind][mode]
    config = rt.read_metadata(report.output_path)[rt.KEY_EXPORT_CONFIG]
    card = config["quality"]
    assert card == report.quality.as_dict() and card["compared_with"] == "the float32 export"
    # reproducible: the card again from the two files
    assert quality_card(exports[kind]["fp32"].output_path, report.output_path).as_dict() == card
    floors = FLOORS[mode]
    for measure, floor in floors.items():
        if measure in card:
            assert (card[measure] <= floor) if measure == "word_error_rate" else (card[measure] >= floor), (measure, card)
    expected = {"text-generation": "top1_agreement", "automatic-speech-recognition": "word_error_rate",
                "sentence-transformers": "cosine_similarity"}.get(kind, "label_agreement")
    assert expected in card
    if kind == "text-generation":
        assert 0.5 < card["perplexity_ratio"] < 2.0 and card["probe_tokens"] > 50
    if mode == "fp16" and expected == "label_agreement":  # scores (probabilities), not raw hidden states
        assert card["max_score_difference"] < 0.01
    assert config["quantize"]["mode"] == mode
    graph_ops = ops(Path(report.output_path))
    dynamic = mode == "int8" and kind != "text-generation"
    assert config["quantize"].get("method") == ("dynamic" if dynamic else "weight-only" if mode != "fp16" else None)
    if mode in ("int4", "q4f16") or (mode == "int8" and not dynamic):
        assert "MatMulNBits" in graph_ops
    elif dynamic:
        assert {"MatMulInteger", "DynamicQuantizeLinear"} & graph_ops or "DynamicQuantizeMatMul" in graph_ops
    runtime = rt.Runtime(report.output_path)
    assert runtime.task == rt.Runtime(exports[kind]["fp32"].output_path).task


def proportioned_gpt2(folder: Path) -> Path:
    """A GPT-2 whose weights are in the proportions of a real one (matrices and the token embedding dominate; a
    short position table), so that sizes say what they say for real models."""
    import torch
    from generation_models import gpt2_tokenizer_folder
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    gpt2_tokenizer_folder(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=128, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    return folder


def test_sizes(tmp_path):
    """int4 at most 0.3x the float32 weights, int8 0.35x, fp16 half; tied weights stored once."""
    folder = proportioned_gpt2(tmp_path / "gpt2")
    plain = export(folder, tmp_path / "fp32.onnx")
    weights = weight_bytes(Path(plain.output_path))
    assert weights <= 1.02 * safetensors_bytes(folder)
    for mode, most in (("int4", 0.3), ("int8", 0.35), ("fp16", 0.51), ("q4f16", 0.3)):
        report = export(folder, tmp_path / f"{mode}.onnx", quantize=mode)
        assert weight_bytes(Path(report.output_path)) <= most * weights, mode


def test_tied_weights_are_stored_once(exports):
    """GPT-2's lm_head is its embedding table: torch.onnx writes it a second time, transposed; export keeps one."""
    report = exports["text-generation"]["fp32"]
    tied = report.export_config["weights"]["tied"]
    assert [t["transposed"] for t in tied] == [True] and report.export_config["weights"]["tied_bytes"] == tied[0]["bytes"]
    assert weight_bytes(Path(report.output_path)) <= 1.02 * safetensors_bytes(exports["text-generation"]["folder"])
    runtime = rt.Runtime(report.output_path)
    assert runtime(PROBE_TEXTS[0], do_sample=False, max_new_tokens=5)[0]["generated_text"].startswith(PROBE_TEXTS[0])


def test_the_card_is_printed_by_export_and_inspect(exports, tmp_path, capsys):
    from authoring.cli import main

    out = tmp_path / "tc.onnx"
    assert main(["export", str(exports["text-classification"]["folder"]), str(out), "--quantize", "int4",
                 "--block-size", "16", "--no-symmetric", "--lm-head", "int8"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("  quality card vs the float32 export: ") and "label agreement" in printed[1]
    settings = rt.read_metadata(out)[rt.KEY_EXPORT_CONFIG]["quantize"]
    assert (settings["block_size"], settings["symmetric"], settings["lm_head_bits"]) == (16, False, 8)
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "quality: vs the float32 export: " in shown and "quantization: int4 (weight-only, 4 bits, blocks of 16" in shown
    assert main(["inspect", str(out), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["quality"]["label_agreement"] == rt.read_metadata(out)[rt.KEY_EXPORT_CONFIG]["quality"]["label_agreement"]


# ------------------------------------------------------------------------------------------------------
# A trained model: all-MiniLM-L6-v2's real weights (../shared/data)
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "floor"), [("int8", 0.975), ("fp16", 0.9999), ("int4", 0.93)])
def test_a_trained_sentence_encoder(mode, floor, tmp_path):
    """Sentence embeddings of the quantized file against float32's on the card's probes: int8 (dynamic, per channel)
    keeps a cosine of 0.98 (measured 0.9807), int4 0.94 (its embedding table and every MatMul in 4 bits), fp16 all but
    exactly."""
    folder = shared("sentence-transformers__all-MiniLM-L6-v2")
    report = export(folder, tmp_path / f"{mode}.onnx", quantize=mode)
    assert report.quality.metrics["cosine_similarity"] >= floor, report.quality.as_dict()
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]
    runtime = rt.Runtime(report.output_path)
    vectors = runtime.encode(texts)
    # the trained model still ranks a paraphrase above an unrelated sentence
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.2
    assert report.file_bytes <= {"int8": 0.3, "fp16": 0.52, "int4": 0.2}[mode] * report.plain_bytes


# ------------------------------------------------------------------------------------------------------
# onnxruntime-genai's builder as the exporter
# ------------------------------------------------------------------------------------------------------

genai = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is in the test extra")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> dict[str, Any]:
    """A tiny tied Llama exported by the builder: float32, and each mode."""
    root = tmp_path_factory.mktemp("genai")
    model = genai_llama(root / "hf")
    out: dict[str, Any] = {"folder": root / "hf", "model": model, "fp32": export(root / "hf", root / "fp32.onnx")}
    for mode in MODES:
        out[mode] = export(root / "hf", root / f"{mode}.onnx", quantize=mode)
    return out


def test_genai_is_the_default_exporter_of_a_llama(llama):
    report = llama["fp32"]
    config = report.export_config
    assert report.exporter == "onnxruntime-genai" and config["builder"]["precision"] == "fp32"
    assert config["builder"]["extra_options"] == {"prune_lm_head": "true"}
    path = Path(report.output_path)
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith("fp32")) == ["fp32.onnx"]  # no .data
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= ops(path) <= set(config["operators"])
    # the tied table once; the rotary embedding's cos/sin caches are the builder's own (0.4% of SmolLM2-135M's file)
    assert weight_bytes(path, but=("cos_cache", "sin_cache")) <= 1.02 * safetensors_bytes(llama["folder"])


def test_genai_float32_answers_like_the_pipeline(llama):
    """Greedy tokens and beams of the builder's float32 graph, run by the runtime (its past in one buffer per layer),
    equal transformers' on the PyTorch weights."""
    from transformers import AutoTokenizer, pipeline

    oracle = pipeline("text-generation", model=llama["model"], tokenizer=AutoTokenizer.from_pretrained(llama["folder"]))
    runtime = rt.Runtime(llama["fp32"].output_path)
    for prompt in ["Once upon a time", "The quick brown fox jumps over the lazy dog"]:
        for options in ({"do_sample": False, "max_new_tokens": 12}, {"do_sample": False, "num_beams": 3, "max_new_tokens": 8,
                                                                     "num_return_sequences": 2}):
            expected = oracle(prompt, return_tensors=True, **options)
            got = runtime(prompt, return_tensors=True, **options)
            assert got == [{"generated_token_ids": list(map(int, e["generated_token_ids"]))} for e in expected], (prompt, options)
    ids = runtime(["Once upon a time"] * 2, do_sample=False, max_new_tokens=12, return_tensors=True)[0][0]["generated_token_ids"]
    assert len(set(ids[5:])) >= 4  # varied: a broken runtime cannot pass on one repeated token


def test_genai_modes(llama):
    plain = weight_bytes(Path(llama["fp32"].output_path))
    for mode in MODES:
        report = llama[mode]
        card = report.quality.as_dict()
        assert card["top1_agreement"] >= FLOORS[mode]["top1_agreement"] - 0.1, (mode, card)
        assert quality_card(llama["fp32"].output_path, report.output_path).as_dict() == card
        runtime = rt.Runtime(report.output_path)
        text = runtime("Once upon a time", do_sample=False, max_new_tokens=6)[0]["generated_text"]
        assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")
        graph = ops(Path(report.output_path))
        if mode in ("int4", "q4f16"):
            assert weight_bytes(Path(report.output_path)) <= 0.3 * plain
            # the tied table quantized once: the lookup reads the projection's packed weights
            assert {"MatMulNBits", "GatherBlockQuantized"} <= graph
    assert llama["int4"].export_config["builder"]["extra_options"]["accuracy_level"] == "4"


def test_genai_lm_head_in_int8(llama, tmp_path):
    from authoring.weights import Quantization

    report = export(llama["folder"], tmp_path / "head8.onnx", quantize=Quantization("int4", lm_head="int8"))
    assert report.export_config["builder"]["extra_options"]["matmul_mixed_precision"] == "last_matmul:int8"
    assert weight_bytes(Path(report.output_path)) > weight_bytes(Path(llama["int4"].output_path))


def test_genai_refusals(llama, tmp_path):
    with pytest.raises(rt.MetadataExtractionError, match="onnxruntime-genai's builder exports decoder-only text generation"):
        export(_classifier(tmp_path), tmp_path / "c.onnx", exporter="genai")
    with pytest.raises(rt.MetadataExtractionError, match="--optimize does not apply to --exporter genai"):
        export(llama["folder"], tmp_path / "o.onnx", optimize="O1")


def _classifier(tmp_path: Path) -> Path:
    MODELS["text-classification"][0](tmp_path / "classifier")
    return tmp_path / "classifier"


def test_logprobs_of_a_pruned_head_are_the_full_graphs(llama, tmp_path):
    """The builder's head computes the last position only (prune_lm_head); logprobs() then scores step by step,
    and gives what PyTorch gives on every position."""
    import torch

    runtime = rt.Runtime(llama["fp32"].output_path)
    text = "The history of the city begins with a small settlement on the banks of the river."
    scored = runtime.logprobs(text)
    ids = torch.tensor([scored["token_ids"]])
    with torch.no_grad():
        expected = torch.log_softmax(llama["model"](ids).logits[0, :-1], -1)
    picked = expected[torch.arange(ids.shape[1] - 1), ids[0, 1:]].numpy()
    np.testing.assert_allclose(scored["token_logprobs"][1:], picked, atol=2e-4)
    assert scored["top_token_ids"][1:] == expected.argmax(-1).tolist() and scored["token_logprobs"][0] is None
    assert os.path.basename(runtime.path) == "fp32.onnx"
