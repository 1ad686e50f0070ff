"""onnxmeta export: a local model folder to ONE self-contained file, for one tiny model of each task the runtime
runs, through torch.onnx.export here (transformers 5) and through Optimum's exporter in the Optimum environment
(transformers 4.57, one process for every model); each file's answers against the transformers pipeline on the
same weights (question answering: transformers 4.57's, run in that process). Encoder-decoders (T5, Whisper) go
through Optimum and merge_export; their files are checked by their layout and by the encoder and first decoder
step against PyTorch (their generation is the seq2seq runtime's to test). Also: optimization and quantization,
hub ids from the cache and offline, progress and logging."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from audio_models import LABELS, as_processor_folder, audio_classifier, ctc_model, signal
from generation_models import build_model, genai_llama
from helpers import (
    ROOT,
    assert_parity,
    for_transformers_4,
    limited,
    optimum_python,
    tiny_classifier,
    tiny_model,
    trained_bpe,
    trained_wordpiece,
)
from image_helpers import synthetic, tiny_clip, tiny_vit
from runtime_under_test import rt

import authoring
from authoring import progress
from authoring.cli import main
from authoring.export import export
from authoring.quality import PROBE_TEXTS, quality_card

TEXTS = ["I love this movie, it was wonderful!", "the food was good but slow", "Paris is the capital of France.",
         "my name is wolfgang and i live in berlin.", "hello"]
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}


def _vocab_txt_classifier(folder: Path) -> None:
    """A classifier whose tokenizer is a slow one's files (vocab.txt, no tokenizer.json): discovery goes through
    transformers' AutoTokenizer, which the Optimum environment's is 4.57."""
    def wordpiece_files(target: Path) -> None:
        trained_wordpiece(target)
        vocab = json.loads((target / "tokenizer.json").read_text())["model"]["vocab"]
        (target / "vocab.txt").write_text("".join(f"{token}\n" for token in sorted(vocab, key=vocab.get)))
        (target / "tokenizer.json").unlink()

    tiny_classifier(folder, wordpiece_files, seed=5)


def _sentence_transformer(folder: Path) -> None:
    """A tiny BERT as a sentence-transformers folder: mean pooling, then Normalize."""
    tiny_model(folder, "AutoModel", trained_wordpiece, seed=6)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode": "mean"}))
    (folder / "2_Normalize").mkdir()
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))


def _nli(folder: Path) -> None:
    tiny_classifier(folder, trained_wordpiece, num_labels=3, seed=4)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "CONTRADICTION", "1": "NEUTRAL", "2": "ENTAILMENT"}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (folder / "config.json").write_text(json.dumps(config))


def _seq2seq(kind: str) -> Any:
    def build(folder: Path) -> None:
        from seq2seq_models import build as build_seq2seq

        build_seq2seq(kind, folder)

    return build


def _whisper(folder: Path) -> None:
    """A tiny Whisper with a tokenizer and generation config (the runtime transcribes it, so the file needs them),
    saved as transformers 5 saves a WhisperProcessor (processor_config.json, no preprocessor_config.json)."""
    from whisper_models import build

    build(folder, multilingual=False, real_tokenizer=False)
    as_processor_folder(folder, "WhisperProcessor")


def _ctc(folder: Path) -> None:
    """A tiny wav2vec2 CTC model saved as transformers 5 saves a Wav2Vec2Processor."""
    ctc_model(folder)
    as_processor_folder(folder, "Wav2Vec2Processor")


# name: (builder of the model folder, export options, exported by torch.onnx too)
MODELS: dict[str, tuple[Any, dict[str, Any], bool]] = {
    "text-classification": (lambda f: tiny_classifier(f, trained_wordpiece), {}, True),
    "token-classification": (lambda f: tiny_model(f, "AutoModelForTokenClassification", limited(trained_bpe),
                                                  model_type="roberta", seed=4, id2label=NER_LABELS,
                                                  label2id={v: k for k, v in NER_LABELS.items()}),
                             {}, True),
    "question-answering": (lambda f: tiny_model(f, "AutoModelForQuestionAnswering", limited(trained_wordpiece), seed=2),
                           {}, True),
    "fill-mask": (lambda f: tiny_model(f, "AutoModelForMaskedLM", trained_wordpiece, seed=3), {}, True),
    "feature-extraction": (lambda f: tiny_model(f, "AutoModel", trained_bpe, model_type="roberta", seed=6), {}, True),
    "sentence-transformers": (_sentence_transformer, {}, True),
    "zero-shot-classification": (_nli, {"task": "zero-shot-classification"}, True),
    "text-generation": (lambda f: build_model("gpt2", f), {}, True),
    "image-classification": (lambda f: tiny_vit(f, "classification"), {}, True),
    "image-feature-extraction": (lambda f: tiny_vit(f, "base", seed=1), {}, True),
    "zero-shot-image-classification": (tiny_clip, {}, True),
    "audio-classification": (lambda f: audio_classifier(f, "wav2vec2"), {}, True),
    "automatic-speech-recognition": (_ctc, {}, True),
    "slow-tokenizer": (_vocab_txt_classifier, {}, False),
    "text2text-generation": (_seq2seq("t5"), {}, False),
    "whisper": (_whisper, {}, False),
    "bart": (_seq2seq("bart"), {}, False),
    "llama": (lambda f: genai_llama(f), {}, False),  # tied; Optimum's export here (onnxruntime-genai's: test_quantize)
}
# Quantized exports through Optimum: the encoder-decoders' parts quantized before the merge, a decoder with a cache.
QUANTIZED = {"t5-int4": ("text2text-generation", "int4"), "bart-int8": ("bart", "int8"), "whisper-int8": ("whisper", "int8"),
             "whisper-int4": ("whisper", "int4"), "gpt2-int4": ("text-generation", "int4"), "llama-int4": ("llama", "int4"),
             "t5-fp16": ("text2text-generation", "fp16")}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-models")
    out = {}
    for name, (build, _, _) in MODELS.items():
        build(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def torch_files(folders, tmp_path_factory) -> dict[str, Path]:
    """Every one-graph task exported here with torch.onnx (the main environment has no Optimum)."""
    root = tmp_path_factory.mktemp("torch-export")
    files = {}
    for name, (_, options, by_torch) in MODELS.items():
        if by_torch:
            report = export(folders[name], root / f"{name}.onnx", **options)
            assert report.exporter == "torch.onnx" and all(c.ok for c in report.checks), report.checks
            files[name] = root / f"{name}.onnx"
    return files


OPTIMUM_SCRIPT = r"""
import json, sys, traceback
from pathlib import Path
from authoring.export import export

jobs, qa_folder, qa_cases, results_path = json.loads(sys.argv[1])
results = {}
for name, folder, path, options in jobs:
    try:
        report = export(folder, path, **options)
        results[name] = {"exporter": report.exporter, "export_config": report.export_config, "layout": report.layout,
                         "checks": [[c.name, c.ok, c.message] for c in report.checks]}
    except Exception as exc:
        results[name] = {"error": traceback.format_exc()}
from transformers import pipeline
qa = pipeline("question-answering", model=qa_folder, device="cpu")
def plain(answer):
    if isinstance(answer, list):
        return [plain(a) for a in answer]
    return {k: getattr(v, "item", lambda: v)() for k, v in answer.items()}
results["qa-oracle"] = [plain(qa(**case)) for case in qa_cases]
Path(results_path).write_text(json.dumps(results))
"""

QA_CASES = [{"question": "Where do I live?", "context": "My name is Wolfgang and I live in Berlin."},
            {"question": "What is the capital of France?", "context": TEXTS[2] + " " + TEXTS[1]},
            {"question": "how was the food?", "context": TEXTS[1], "top_k": 2}]


@pytest.fixture(scope="module")
def optimum_run(folders, tmp_path_factory) -> dict[str, Any]:
    """Every model exported by `export` in ONE process of the Optimum environment (its imports take most of the
    time), with transformers 4.57's question-answering answers."""
    root = tmp_path_factory.mktemp("optimum-export")
    jobs = [(name, str(for_transformers_4(folders[name])), str(root / f"{name}.onnx"), options)
            for name, (_, options, _) in MODELS.items()]
    jobs[0] = (*jobs[0][:3], {"optimize": "O2"})  # the Optimum path with the optimizer
    jobs += [(name, str(for_transformers_4(folders[model])), str(root / f"{name}.onnx"), {"quantize": mode})
             for name, (model, mode) in QUANTIZED.items()]
    results = root / "results.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT)]), "HF_HUB_OFFLINE": "1"}
    argument = json.dumps([jobs, str(for_transformers_4(folders["question-answering"])), QA_CASES, str(results)])
    done = subprocess.run([str(optimum_python()), "-c", OPTIMUM_SCRIPT, argument], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        pytest.fail(f"the Optimum environment's export failed:\n{done.stderr[-3000:]}")
    out = json.loads(results.read_text())
    failed = {name: r["error"][-1500:] for name, r in out.items() if isinstance(r, dict) and "error" in r}
    assert not failed, failed
    return {"files": {name: root / f"{name}.onnx" for name in [*MODELS, *QUANTIZED]}, **out}


# ------------------------------------------------------------------------------------------------------
# The transformers pipeline on each folder, and the runtime on each file
# ------------------------------------------------------------------------------------------------------

def _pipeline(task: str, folder: Path) -> Any:
    from transformers import AutoTokenizer, pipeline

    if task in ("image-classification", "image-feature-extraction"):
        from transformers import ViTImageProcessorPil

        return pipeline(task, model=str(folder), image_processor=ViTImageProcessorPil.from_pretrained(folder), device="cpu")
    if task == "zero-shot-image-classification":
        from transformers import CLIPImageProcessorPil

        return pipeline(task, model=str(folder), tokenizer=AutoTokenizer.from_pretrained(folder),
                        image_processor=CLIPImageProcessorPil.from_pretrained(folder), device="cpu")
    return pipeline(task, model=str(folder), device="cpu")


IMAGES = [synthetic(48, 40, seed=1), synthetic(100, 60, seed=2), synthetic(33, 33, seed=3)]
SIGNALS = [signal(1.0, seed=1), signal(1.7, seed=2)]


def expect_same_answers(name: str, folder: Path, path: Path, qa_oracle: list[Any] | None = None) -> None:
    """The file's answers (the runtime) equal the transformers pipeline's on the model folder's weights."""
    runtime = rt.Runtime(path, intra_op_num_threads=1)
    if name == "question-answering":
        if qa_oracle is not None:
            assert_parity([runtime(**case) for case in QA_CASES], qa_oracle)
        return
    if name == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        expected = SentenceTransformer(str(folder), device="cpu").encode(TEXTS)
        np.testing.assert_allclose(runtime.encode(TEXTS), expected, atol=1e-5, rtol=0)
        return
    task = {"slow-tokenizer": "text-classification"}.get(name, name)
    oracle = _pipeline(task, folder)
    calls: dict[str, tuple[Any, dict[str, Any]]] = {
        "text-classification": (TEXTS, {"top_k": None}),
        "token-classification": (TEXTS, {"ignore_labels": []}),
        "fill-mask": (["I love this [MASK], it was wonderful!", "the food was [MASK] but slow",
                       "[MASK] is the capital of France."], {"top_k": 3}),
        "zero-shot-classification": (TEXTS[:3], {"candidate_labels": ["food", "cinema", "travel"]}),
        "text-generation": (TEXTS[:2], {"do_sample": False, "max_new_tokens": 12}),
        "image-classification": (IMAGES, {"top_k": 6}),
        "zero-shot-image-classification": (IMAGES, {"candidate_labels": ["a cat", "a dog", "a car"]}),
        "audio-classification": (SIGNALS, {"top_k": len(LABELS)}),
        "automatic-speech-recognition": (SIGNALS, {}),
    }
    if task in ("feature-extraction", "image-feature-extraction"):
        inputs = IMAGES if task == "image-feature-extraction" else TEXTS
        for actual, expected in zip(runtime(inputs), oracle(inputs)):
            np.testing.assert_allclose(np.array(actual), np.array(expected), atol=1e-4, rtol=0)
        return
    inputs, options = calls[task]
    if task in ("text-generation", "audio-classification", "automatic-speech-recognition", "image-classification",
                "zero-shot-image-classification"):
        expected = [oracle(i, **options) for i in inputs]
    else:
        expected = oracle(inputs, **options)
    assert_parity(runtime(inputs, **options), expected)


ONE_GRAPH = [name for name, (_, _, by_torch) in MODELS.items() if by_torch]


@pytest.mark.parametrize("name", ONE_GRAPH)
def test_torch_export_answers_like_the_pipeline(name, folders, torch_files):
    md = rt.read_metadata(torch_files[name])
    assert md[rt.KEY_EMBEDDING_LEVEL] == "full"
    assert md[rt.KEY_EXPORT_CONFIG]["exporter"] == "torch.onnx"
    expect_same_answers(name, folders[name], torch_files[name])


@pytest.mark.optimum
@pytest.mark.parametrize("name", [*ONE_GRAPH, "slow-tokenizer"])
def test_optimum_export_answers_like_the_pipeline(name, folders, optimum_run):
    result = optimum_run[name]
    assert result["exporter"] == "optimum" and all(ok for _, ok, _ in result["checks"]), result["checks"]
    config = result["export_config"]
    assert config["libraries"]["transformers"].startswith("4.") and "optimum" in config["libraries"]
    expect_same_answers(name, folders[name], optimum_run["files"][name], optimum_run["qa-oracle"])


@pytest.mark.optimum
def test_optimum_export_records_how(optimum_run, folders):
    config = optimum_run["text-classification"]["export_config"]
    assert config["source"] == str(for_transformers_4(folders["text-classification"]))
    assert config["exporter_task"] == "text-classification" and config["optimize"]["level"] == "O2"
    assert {"Attention", "SkipLayerNormalization"} <= set(config["optimize"]["fused"]), config["optimize"]
    assert optimum_run["text-generation"]["export_config"]["exporter_task"] == "text-generation-with-past"
    past = [i for i in _session(optimum_run["files"]["text-generation"]).get_inputs() if i.name.startswith("past_key_values")]
    assert len(past) == 4  # Optimum's export with a cache, which the runtime's generation loop feeds


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # a one-file encoder-decoder's defaulted inputs each log a warning at load
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.optimum
@pytest.mark.parametrize("name", ["text2text-generation", "whisper"])
def test_encoder_decoders_export_to_one_file(name, folders, optimum_run):
    """Optimum's separate files merged into one: the layout embedded, every entry point in the one graph; the
    encoder and the first decoder step give PyTorch's outputs (generation is the seq2seq runtime's to test)."""
    import torch
    import transformers

    path = optimum_run["files"][name]
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name)) == [path.name]  # no data file
    md = rt.read_metadata(path)
    assert md[rt.KEY_PIPELINE_TASK] == ("text2text-generation" if name != "whisper" else "automatic-speech-recognition")
    layout = md[rt.KEY_GRAPH_LAYOUT]
    assert sorted(layout["entry_points"]) == ["decoder", "decoder_with_past", "encoder"]
    assert sorted(optimum_run[name]["layout"]["entry_points"]) == sorted(layout["entry_points"])
    assert md[rt.KEY_EXPORT_CONFIG]["exporter_task"].endswith("-with-past")
    session = _session(path)
    model = transformers.AutoModelForSpeechSeq2Seq.from_pretrained(folders[name]) if name == "whisper" else \
        transformers.AutoModelForSeq2SeqLM.from_pretrained(folders[name])
    model.eval()
    rng = np.random.default_rng(0)
    if name == "whisper":
        frames = 2 * model.config.max_source_positions
        encoder_inputs = {"input_features": rng.standard_normal((1, 80, frames)).astype(np.float32)}
    else:
        ids = rng.integers(3, 200, (2, 9))
        encoder_inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    start = np.full((len(next(iter(encoder_inputs.values()))), 1), model.config.decoder_start_token_id, dtype=np.int64)

    def run(entry: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        point = layout["entry_points"][entry]
        wanted = list(point["outputs"].values())
        values = session.run(wanted, {layout["phase_input"]: np.array(point["phase"]),
                                      **{point["inputs"][k]: v for k, v in feeds.items() if k in point["inputs"]}})
        return dict(zip(point["outputs"], values))

    hidden = run("encoder", encoder_inputs)["last_hidden_state"]
    decoder_feeds = {"input_ids": start, "encoder_hidden_states": hidden}
    if "attention_mask" in encoder_inputs:
        decoder_feeds["encoder_attention_mask"] = encoder_inputs["attention_mask"]
    logits = run("decoder", decoder_feeds)["logits"]
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in encoder_inputs.items()}, decoder_input_ids=torch.from_numpy(start))
    np.testing.assert_allclose(hidden, expected.encoder_last_hidden_state.numpy(), atol=1e-4, rtol=0)
    # the tiny T5's logits reach 600: float32 sums of that size differ in the fourth decimal
    scale = float(np.abs(expected.logits.numpy()).max())
    # Whisper's first step attends over 1500 encoder positions of weights drawn at std 1: sums differ in the fourth decimal
    atol = 5e-4 if name == "whisper" else 1e-4 + 2e-6 * scale
    np.testing.assert_allclose(logits, expected.logits.numpy(), atol=atol, rtol=0)
    assert (logits.argmax(-1) == expected.logits.numpy().argmax(-1)).all()
    assert len({int(i) for i in logits.argmax(-1).ravel()}) == logits.shape[0] or logits.shape[0] == 1


@pytest.mark.optimum
@pytest.mark.parametrize("name", ["text2text-generation", "bart", "whisper", "text-generation", "llama"])
def test_tied_weights_are_stored_once(name, folders, optimum_run):
    """Optimum writes a tied output projection as a transposed copy of the embedding table (T5's and BART's lm_head,
    Whisper's proj_out, GPT-2's and Llama's lm_head): the one file stores the table once, its weights at most 1.02x
    the model's safetensors."""
    from test_quantize import safetensors_bytes, weight_bytes

    config = optimum_run[name]["export_config"]
    assert any(t["transposed"] for t in config["weights"]["tied"]), config["weights"]
    assert weight_bytes(optimum_run["files"][name]) <= 1.02 * safetensors_bytes(folders[name])


@pytest.mark.optimum
@pytest.mark.parametrize("name", list(QUANTIZED))
def test_quantized_exports_through_optimum(name, folders, optimum_run):
    """int4, int8 and fp16 through Optimum's exporter: an encoder-decoder's parts quantized before the merge (a
    tied table packed once), a decoder with a cache; each file runs, and its card (made in the Optimum environment)
    is what the two files give here."""
    from test_quantize import weight_bytes

    model, mode = QUANTIZED[name]
    result = optimum_run[name]
    assert "error" not in result and all(ok for _, ok, _ in result["checks"]), result
    config = result["export_config"]
    assert config["quantize"]["mode"] == mode and config["exporter"] == "optimum"
    path, plain = optimum_run["files"][name], optimum_run["files"][model]
    assert quality_card(plain, path).as_dict() == pytest.approx(config["quality"])
    measure = {"text-generation": "top1_agreement", "llama": "top1_agreement"}.get(model, "word_error_rate")
    assert measure in config["quality"]
    runtime = rt.Runtime(path)
    if model == "whisper":
        text = runtime(SIGNALS[0])["text"]
    elif model in ("text-generation", "llama"):
        text = runtime(TEXTS[0], do_sample=False, max_new_tokens=6)[0]["generated_text"][len(TEXTS[0]):]
    else:
        text = runtime(TEXTS[2], do_sample=False, max_new_tokens=6)[0]["generated_text"]
    assert isinstance(text, str)
    # the tiny Whisper's convolutions and position tables, left in float, are 42% of its weights (whisper-tiny's: 3%)
    most = {"int4": 0.55, "int8": 0.6} if model == "whisper" else {"int4": 0.35, "int8": 0.4, "fp16": 0.52}
    most = most[mode]
    assert weight_bytes(path) <= most * weight_bytes(plain), (weight_bytes(path), weight_bytes(plain))
    if mode != "fp16":
        assert "MatMulNBits" in _all_ops(path)
    if name == "whisper-int8":  # its encoder runs whole inputs: dynamically quantized
        assert config["quantize"]["encoder_method"] == "dynamic" and "MatMulInteger" in _all_ops(path)


# ------------------------------------------------------------------------------------------------------
# The command line, optimization and quantization (torch path)
# ------------------------------------------------------------------------------------------------------

def test_cli_export_prints_what_it_did(folders, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(folders["text-classification"]), str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"exported {folders['text-classification']} (text-classification) with torch.onnx into ONE "
                                 f"file {out}: ")
    assert printed[1] == "  ok   metadata: format 2.0, level full, digest verified"
    config = rt.read_metadata(out)[rt.KEY_EXPORT_CONFIG]
    assert config["source"] == str(folders["text-classification"]) and "revision" not in config
    assert config["exporter"] == "torch.onnx" and config["opset_import"] == {"ai.onnx": 17}
    assert {"onnxmeta", "transformers", "torch", "onnxruntime"} <= set(config["libraries"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # the temporary folder is gone


def test_cli_export_options(folders, tmp_path, capsys):
    out = tmp_path / "essential.onnx"
    assert main(["export", str(folders["fill-mask"]), str(out), "--level", "essential", "--opset", "18", "--no-validate"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("exported ") and not [line for line in printed if line.startswith(("  ok", "  FAIL"))]
    md = rt.read_metadata(out)
    assert md[rt.KEY_EMBEDDING_LEVEL] == "essential" and md[rt.KEY_EXPORT_CONFIG]["opset_import"]["ai.onnx"] == 18
    assert main(["export", str(folders["fill-mask"]), str(tmp_path / "x.onnx"), "--revision", "v1"]) == 1
    assert capsys.readouterr().err == f"error: {folders['fill-mask']} is a local folder: --revision applies only to hub ids\n"
    assert main(["export", str(folders["fill-mask"]), str(tmp_path)]) == 1
    assert "is a folder; name the file to write" in capsys.readouterr().err


@pytest.mark.parametrize("optimize", ["O1", "O2", "O3"])
def test_optimize(optimize, folders, tmp_path):
    report = export(folders["text-classification"], tmp_path / "model.onnx", optimize=optimize)
    config = report.export_config
    assert config["optimize"]["level"] == optimize and config["optimize"]["model_type"] == "bert"
    fused = set(config["optimize"]["fused"])
    ops = {node.op_type for node in _graph_nodes(tmp_path / "model.onnx")}
    if optimize == "O1":
        assert not fused and "Attention" not in ops
    else:
        assert {"Attention", "SkipLayerNormalization"} <= fused and {"Attention", "SkipLayerNormalization"} <= ops
        assert ("FastGelu" in ops or "BiasGelu" not in ops) if optimize == "O3" else "FastGelu" not in ops
    assert report.quality.probes == len(PROBE_TEXTS) and report.quality.changed == 0
    assert report.quality.max_score_difference < (1e-2 if optimize == "O3" else 1e-4)
    assert report.quality.metrics == {"label_agreement": 1.0}
    expect_same_answers("text-classification", folders["text-classification"], tmp_path / "model.onnx") \
        if optimize != "O3" else None


def _all_ops(path: Path) -> set[str]:
    """The op types of a graph's nodes and its subgraphs' (a one-file encoder-decoder's If branches)."""
    import onnx

    def walk(graph: Any) -> set[str]:
        found = set()
        for node in graph.node:
            found.add(node.op_type)
            for attribute in node.attribute:
                for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    found |= walk(sub)
        return found

    return walk(onnx.load(str(path)).graph)


def _graph_nodes(path: Path) -> list[Any]:
    import onnx

    return list(onnx.load(str(path)).graph.node)


def test_quantize(folders, tmp_path, capsys, monkeypatch):
    out = tmp_path / "int8.onnx"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert main(["export", str(folders["text-classification"]), str(out), "--optimize", "O2", "--quantize", "dynamic-int8"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"exported {folders['text-classification']} (text-classification) with torch.onnx + O2 + "
                                 "int8 into ONE file")
    assert printed[1].startswith("  quality card vs the float32 export: label agreement ") and " max score difference " \
        in printed[1] and " of 5 (" in printed[1]
    config = rt.read_metadata(out)[rt.KEY_EXPORT_CONFIG]
    # int8 of an encoder: onnxruntime's dynamic quantization (dynamic-int8 is its old name)
    assert config["quantize"] == {"mode": "int8", "method": "dynamic", "weight_type": "QInt8", "per_channel": True,
                                  "reduce_range": False, "op_types": ["MatMul", "Attention", "Gather"],
                                  "shape_inference": "symbolic"}
    assert config["quality"]["probes"] == 5 and 0.6 <= config["quality"]["label_agreement"] <= 1.0
    ops = {node.op_type for node in _graph_nodes(out)}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops or "QAttention" in ops, ops
    report = export(folders["automatic-speech-recognition"], tmp_path / "ctc.onnx", quantize="dynamic-int8")
    assert report.quality.probes == 3 and "MatMulInteger" in {node.op_type for node in _graph_nodes(tmp_path / "ctc.onnx")}
    assert report.plain_bytes > 0  # (its weights are mostly convolutions, left in float: the tiny file is no smaller)
    assert report.quality.max_score_difference is None  # speech recognition answers text only
    assert 0.0 <= report.quality.metrics["word_error_rate"] <= 1.0
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ctc.onnx", "cwd", "int8.onnx"]


def test_onnxruntime_temporaries_stay_out_of_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime's symbolic shape inference saves sym_shape_infer_temp.onnx and a <uuid>.data file into the
    working directory when it gives up (here on an op it does not know): quantization runs it in a scratch
    folder, removed afterwards, and falls back to onnx's shape inference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).random((64, 64), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Unknown", ["X"], ["Y"], domain="custom"), helper.make_node("MatMul", ["Y", "W"], ["Z"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["batch", 64])], [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)]),
              tmp_path / "model.onnx")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    settings = authoring.export.quantize_graph(tmp_path / "model.onnx", tmp_path / "out" / "int8.onnx")
    assert settings["shape_inference"] == "onnx"
    assert os.listdir(tmp_path / "cwd") == [] and os.listdir(tmp_path / "out") == ["int8.onnx"]
    assert "MatMulInteger" in {node.op_type for node in _graph_nodes(tmp_path / "out" / "int8.onnx")}


def test_optimize_refusals(folders, tmp_path):
    with pytest.raises(rt.MetadataExtractionError, match=r"onnxruntime's transformer optimizer has no fusions for 'wav2vec2' "
                                                          r"models .*; use --optimize O1"):
        export(folders["audio-classification"], tmp_path / "a.onnx", optimize="O2")
    report = export(folders["audio-classification"], tmp_path / "o1" / "a.onnx", optimize="O1")
    assert report.export_config["optimize"]["model_type"] == "generic" and report.quality.changed == 0
    with pytest.raises(rt.MetadataExtractionError, match="not available for encoder-decoders"):
        export(folders["text2text-generation"], tmp_path / "t5.onnx", optimize="O1")
    with pytest.raises(rt.MetadataExtractionError, match="it is exported with Optimum's exporter, which is not installed: "
                                                          r"pip install 'onnxmeta\[export\]' \(Optimum's exporter"):
        export(folders["whisper"], tmp_path / "whisper.onnx")
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.parametrize("name", ["whisper", "automatic-speech-recognition", "image-classification"])
def test_a_folder_without_its_processor_fails_before_the_export(name, folders, tmp_path, monkeypatch):
    """The processors a task needs are checked right after discovery, so a folder without them fails in a second
    (before, a Whisper export ran for minutes to fail validation with "no Whisper feature extractor is embedded")."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(folders[name], folder)
    for processor_file in ("processor_config.json", "preprocessor_config.json"):
        (folder / processor_file).unlink(missing_ok=True)
    monkeypatch.setattr(authoring.export, "_torch_export", lambda *a: pytest.fail("exported without a processor"))
    part = "image processor" if name == "image-classification" else "feature extractor"
    task = {"whisper": "automatic-speech-recognition"}.get(name, name)
    with pytest.raises(rt.MetadataExtractionError) as info:
        export(folder, tmp_path / "out.onnx")
    assert str(info.value) == (f"{task} needs the model's {part} (preprocessor_config.json, or processor_config.json as "
                               "transformers 5 saves it), which the folder lacks")
    assert not (tmp_path / "out.onnx").exists()


OPTIMUM_WARNING = """The ONNX export succeeded with the warning: The maximum absolute difference between the output of \
the reference model and the ONNX exported model is not within the set tolerance 1e-05:
- logits: max diff = 2.288818359375e-05
- present.0.key: max diff = 1.52587890625e-05
- present.29.value: max diff = 0.00031280517578125.
 The exported model was saved at: /tmp/export"""


def test_optimum_check_in_one_line(caplog):
    """Optimum's check of an export against PyTorch lists every output beyond its tolerance (60 present.N.* of a
    30-layer model): one line says how many, the worst and by how much; -v keeps Optimum's own list."""
    from authoring.export import _optimum_notes, optimum_check_summary

    assert optimum_check_summary(OPTIMUM_WARNING) == (
        "3 outputs differ beyond its tolerance 1e-05, the most present.29.value by 0.000313 (-v lists each)")
    one = OPTIMUM_WARNING.replace("- logits: max diff = 2.288818359375e-05\n- present.0.key: max diff = 1.52587890625e-05\n", "")
    assert optimum_check_summary(one) == "present.29.value differs by 0.000313, beyond its tolerance 1e-05"
    other = "The ONNX export succeeded with the warning: Output names do not match.\n The exported model was saved at: /x"
    assert optimum_check_summary(other) == "Output names do not match"
    logger = logging.getLogger("onnxmeta")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with caplog.at_level(logging.WARNING, logger="onnxmeta"), _optimum_notes():
            logging.getLogger("optimum").warning(OPTIMUM_WARNING)
    finally:
        logger.setLevel(level)
    assert [r.getMessage() for r in caplog.records if r.name == "onnxmeta"] == [
        "Optimum's check of the export against PyTorch: 3 outputs differ beyond its tolerance 1e-05, the most "
        "present.29.value by 0.000313 (-v lists each)"]


def test_failed_validation_writes_nothing(folders, tmp_path, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's file")
    monkeypatch.setattr(authoring.export, "validate_file", lambda path, **_: [authoring.inspection.Check("graph", False, "bad")])
    with pytest.raises(rt.MetadataValidationError, match=f"the exported file fails validation, so {out} was not written: "
                                                         "graph: bad"):
        export(folders["text-classification"], out)
    assert out.read_bytes() == b"the user's file" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_quality_card_of_a_file_against_itself(torch_files, tmp_path):
    card = quality_card(torch_files["text-classification"], torch_files["text-classification"])
    assert (card.probes, card.max_score_difference, card.changed, card.metrics) == (5, 0.0, 0, {"label_agreement": 1.0})
    card = quality_card(torch_files["text-generation"], torch_files["text-generation"])
    assert (card.probes, card.max_score_difference, card.changed) == (3, None, 0)
    assert card.metrics["top1_agreement"] == 1.0 and card.metrics["perplexity_ratio"] == 1.0


# ------------------------------------------------------------------------------------------------------
# Hub ids: the cache, revisions, offline
# ------------------------------------------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_hub_id_from_the_cache_records_its_commit(folders, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--onnxmeta-test--tiny-classifier"
    shutil.copytree(folders["text-classification"], repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    report = export("onnxmeta-test/tiny-classifier", tmp_path / "model.onnx")
    config = report.export_config
    assert (config["source"], config["revision"], config["commit"]) == ("onnxmeta-test/tiny-classifier", "main", COMMIT)
    expect_same_answers("text-classification", folders["text-classification"], tmp_path / "model.onnx")
    assert authoring.discover("onnxmeta-test/tiny-classifier", revision=COMMIT)[rt.KEY_PIPELINE_TASK] == "text-classification"


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run([sys.executable, "-m", "authoring", *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**base, "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT)]), **env})


def test_offline_hub_id_fails_with_the_cache_and_the_command(tmp_path):
    cache = tmp_path / "empty-cache"
    done = _cli("export", "onnxmeta-test/absent", str(tmp_path / "m.onnx"), "--revision", "v2",
                HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "error: cannot get 'onnxmeta-test/absent' at revision v2 from the Hugging Face hub: offline mode is on "
        f"(HF_HUB_OFFLINE=1) and it is not in the cache {cache}; download it first where the hub can be reached: "
        "hf download onnxmeta-test/absent --revision v2 (into that cache), or pass a local model folder\n")
    # no network (a closed port for the hub): the same advice
    done = _cli("embed", str(tmp_path / "m.onnx"), "onnxmeta-test/absent", HF_ENDPOINT="http://127.0.0.1:9",
                HF_HUB_CACHE=str(cache), HF_HUB_ETAG_TIMEOUT="2")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ")
    done = _cli("embed", str(ROOT / "tests" / "corpus" / "modelinsider_seed.onnx"), "onnxmeta-test/absent",
                HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(cache), HF_HUB_ETAG_TIMEOUT="2")
    assert done.stderr == (
        "error: cannot get 'onnxmeta-test/absent' from the Hugging Face hub: the hub cannot be reached and it is not in the "
        f"cache {cache}; download it first where the hub can be reached: hf download onnxmeta-test/absent (into that "
        "cache), or pass a local model folder\n")


# ------------------------------------------------------------------------------------------------------
# Progress and logging
# ------------------------------------------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_only():
    terminal = _Terminal()
    assert progress.enable(terminal)
    try:
        with progress.step("exporting") as step:
            step.count(1, 3)
            time.sleep(0.6)
    finally:
        progress.disable()
    shown = terminal.getvalue()
    assert "exporting 1/3 (0 s)" in shown and shown.endswith("\r\x1b[2K")  # the line is cleared at the end
    pipe = io.StringIO()
    assert not progress.enable(pipe)
    with progress.step("exporting"):
        time.sleep(0.4)
    assert pipe.getvalue() == ""


def test_log_records_go_above_the_progress_line():
    terminal = _Terminal()
    progress.enable(terminal)
    handler = progress.handler(terminal)
    log = logging.getLogger("onnxmeta.test")
    log.addHandler(handler)
    try:
        with progress.step("working"):
            time.sleep(0.5)
            log.warning("careful")
            time.sleep(0.2)
    finally:
        log.removeHandler(handler)
        progress.disable()
    shown = terminal.getvalue()
    assert "\r\x1b[2Kcareful\n" in shown and shown.index("working") < shown.index("careful")


def test_verbose_and_quiet(folders, tmp_path):
    loud = _cli("-v", "embed", str(ROOT / "tests" / "corpus" / "modelinsider_seed.onnx"), str(folders["fill-mask"]),
                "-o", str(tmp_path / "a.onnx"))
    assert loud.returncode == 0 and "info: embedding into modelinsider_seed.onnx..." in loud.stderr
    quiet = _cli("-q", "embed", str(tmp_path / "a.onnx"), str(tmp_path / "no-config"), "-o", str(tmp_path / "b.onnx"))
    assert quiet.returncode == 1 and quiet.stderr.startswith("error: ")
    after = _cli("embed", str(tmp_path / "a.onnx"), str(folders["fill-mask"]), "-o", str(tmp_path / "b.onnx"), "-v")
    assert after.returncode == 0 and "info: embedding into a.onnx..." in after.stderr  # -v/-q after the command too
    both = _cli("-v", "inspect", str(tmp_path / "a.onnx"), "-q")
    assert both.returncode == 2 and "-v/--verbose and -q/--quiet exclude each other" in both.stderr
    tokenless = tmp_path / "tokenless"
    tokenless.mkdir()
    (tokenless / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    normal = _cli("embed", str(tmp_path / "a.onnx"), str(tokenless), "-o", str(tmp_path / "c.onnx"))
    assert normal.returncode == 0 and "warning: tokenless has no tokenizer or preprocessor files; falling back" in normal.stderr
    quiet = _cli("-q", "embed", str(tmp_path / "a.onnx"), str(tokenless), "-o", str(tmp_path / "c.onnx"))
    assert quiet.returncode == 0 and quiet.stderr == ""
