"""Benchmark the runtime against Optimum + transformers and against a hand-written onnxruntime loop.

    python bench/bench_runtime.py [--repeats 3] [--json bench/results-runtime.json]

Builds (once, cached under ~/.cache/onnxmeta/bench/bert-small/) a random-weight BERT classifier of a
realistic small size (hidden 256, 4 layers, 4 heads, bert-base-uncased tokenizer from
/work/shared/data), exported with torch.onnx.export and embedded with full metadata. Every contender
runs that same model.onnx:

* cold start: a new process imports, loads and classifies one text (wall time of the whole process);
* throughput: 256 mixed-length texts (2-80 words) per pass at batch sizes 32 and 1: our Runtime,
  Optimum's ORTModelForSequenceClassification in a transformers pipeline, and a hand-written
  length-sorted tokenizers + onnxruntime loop (the practical limit); all in one process with the same
  libraries, each warmed up, then timed in interleaved passes; texts/s from the best pass.

Optimum runs in its own environment (~/.cache/onnxmeta/venv-optimum, transformers 4.57; see
tests/models/helpers.optimum_python). Medians are printed with the ratios and written to --json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_cli

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "onnxmeta" / "bench" / "bert-small"
BERT = Path("/work/shared/data/bert-base-uncased")
TEXTS = 256
WORDS = ("the", "movie", "was", "good", "bad", "great", "terrible", "a", "an", "of", "and", "to", "in", "is",
         "it", "this", "that", "with", "for", "on", "as", "was", "but", "not", "very", "really", "quite",
         "acting", "plot", "story", "ending", "music", "scene", "character", "film", "time", "people",
         "would", "could", "never", "always", "love", "hate", "boring", "exciting", "slow", "fast", "funny",
         "sad")


def texts() -> list[str]:
    """256 deterministic texts of 2 to 80 words."""
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 80))) + "." for _ in range(TEXTS)]


def build() -> Path:
    """The cached model folder (config, tokenizer, model.onnx with metadata); built in this process."""
    model_path = CACHE / "model.onnx"
    if model_path.is_file():
        return CACHE
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    sys.path[:0] = [str(ROOT / "runtime"), str(ROOT)]
    from authoring import embed_metadata

    CACHE.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(BERT).save_pretrained(CACHE)
    config = BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=512, num_labels=2,
                        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                        architectures=["BertForSequenceClassification"])
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(CACHE)
    names = ["input_ids", "attention_mask", "token_type_ids"]

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            return self.model(**dict(zip(names, tensors))).logits

    dummy = tuple(torch.ones((2, 7), dtype=torch.long) for _ in names)
    bare = CACHE / "bare.onnx"
    torch.onnx.export(Wrapped().eval(), dummy, bare, input_names=names, output_names=["logits"],
                      dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    embed_metadata(bare, CACHE, model_path, include_vocab=True)
    bare.unlink()
    return CACHE


# Each contender is a small program run in a fresh process: argv = folder, batch size, passes.
COLD = {
    "onnxmeta": """
import sys, onnxmeta_runtime as rt
print(rt.Runtime(sys.argv[1] + "/model.onnx")("what a wonderful film")[0]["label"])
""",
    "optimum": """
import sys
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer, pipeline
model = ORTModelForSequenceClassification.from_pretrained(sys.argv[1], file_name="model.onnx")
classify = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(sys.argv[1]))
print(classify("what a wonderful film")[0]["label"])
""",
}

# Throughput: one process (the Optimum environment, so that every contender uses the same onnxruntime,
# tokenizers and numpy) builds every contender, warms each up once, then times them in interleaved passes,
# so that load from other processes on the machine falls on all of them alike.
THROUGHPUT = """
import json, sys, time
sys.path[:0] = [{bench!r}, {runtime!r}]
from bench_runtime import texts
folder, passes = sys.argv[1], int(sys.argv[2])
TEXTS = texts()

import onnxmeta_runtime as rt
ours = {{batch: rt.Runtime(folder + "/model.onnx", batch_size=batch) for batch in (32, 1)}}

from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer, pipeline
classify = pipeline("text-classification", tokenizer=AutoTokenizer.from_pretrained(folder),
                    model=ORTModelForSequenceClassification.from_pretrained(folder, file_name="model.onnx"))

import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
tok = Tokenizer.from_file(folder + "/tokenizer.json")
tok.no_padding()
tok.enable_truncation(512)
session = ort.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
LABELS = ["NEGATIVE", "POSITIVE"]

def limit(xs, batch):
    encodings = tok.encode_batch(xs)
    order = sorted(range(len(xs)), key=lambda i: len(encodings[i].ids))
    out = [None] * len(xs)
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        width = max(len(encodings[i].ids) for i in chunk)
        ids = np.zeros((len(chunk), width), np.int64)
        mask = np.zeros((len(chunk), width), np.int64)
        for row, i in enumerate(chunk):
            n = len(encodings[i].ids)
            ids[row, :n] = encodings[i].ids
            mask[row, :n] = 1
        (logits,) = session.run(["logits"], {{"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}})
        e = np.exp(logits - logits.max(-1, keepdims=True))
        probs = e / e.sum(-1, keepdims=True)
        for row, i in enumerate(chunk):
            out[i] = LABELS[int(probs[row].argmax())]
    return out

contenders = {{}}
for batch in (32, 1):
    contenders[f"onnxmeta_bs{{batch}}"] = lambda b=batch: [r["label"] for r in ours[b](TEXTS)]
    contenders[f"optimum_bs{{batch}}"] = lambda b=batch: [r["label"] for r in classify(TEXTS, batch_size=b)]
    contenders[f"limit_bs{{batch}}"] = lambda b=batch: limit(TEXTS, b)
labels = {{name: fn() for name, fn in contenders.items()}}  # warm-up
seconds = {{name: [] for name in contenders}}
for _ in range(passes):
    for name, fn in contenders.items():
        start = time.perf_counter()
        fn()
        seconds[name].append(time.perf_counter() - start)
print(json.dumps({{"seconds": seconds, "labels": labels, "versions": {{"onnxruntime": ort.__version__,
      "tokenizers": __import__("tokenizers").__version__, "numpy": np.__version__}}}}))
"""



def cold_start(folder: Path, repeats: int) -> dict[str, dict[str, Any]]:
    """Median wall time of a whole new process that imports, loads and classifies one text, rounds interleaved."""
    runs: dict[str, list[float]] = {c: [] for c in COLD}
    labels: dict[str, str] = {}
    for _ in range(repeats):
        for contender, code in COLD.items():
            cmd, env = bench_cli.contender_command(contender, code)
            start = time.perf_counter()
            proc = subprocess.run([*cmd, str(folder)], env=env, capture_output=True, text=True, check=False)
            runs[contender].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise RuntimeError(f"{contender} cold start failed:\n{proc.stderr[-2000:]}")
            labels[contender] = proc.stdout.strip().splitlines()[-1]
    return {c: {"seconds": statistics.median(r), "runs": r, "label": labels[c]} for c, r in runs.items()}


def throughput(folder: Path, passes: int) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Per contender: best and median seconds over interleaved passes of the 256 texts, and texts per second."""
    code = THROUGHPUT.format(bench=str(Path(__file__).parent), runtime=str(ROOT / "runtime"))
    cmd, env = bench_cli.contender_command("optimum", code)
    proc = subprocess.run([*cmd, str(folder), str(passes)], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"throughput run failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    speed = {}
    for name, runs in out["seconds"].items():
        speed[name] = {"best_s": min(runs), "median_s": statistics.median(runs), "texts_per_s": TEXTS / min(runs),
                       "runs": runs, "labels": out["labels"][name]}
    return speed, out["versions"]


def run(repeats: int) -> dict[str, Any]:
    """Build if needed, measure, print; the figures and target verdicts as a dict."""
    start = time.perf_counter()
    if not (CACHE / "model.onnx").is_file():
        subprocess.run([sys.executable, __file__, "--build"], check=True)
    folder = CACHE
    size = (folder / "model.onnx").stat().st_size
    print(f"model: {folder / 'model.onnx'} ({size / 2**20:.1f} MB, ready in {time.perf_counter() - start:.1f} s)")
    cold = cold_start(folder, repeats)
    print(f"\n{'cold start (new process)':<28}{'median s':>10}")
    for name, r in cold.items():
        print(f"{name:<28}{r['seconds']:>10.2f}")
    speed, versions = throughput(folder, max(repeats, 7))
    print(f"\n{'throughput, 256 texts':<28}{'best s':>10}{'median s':>10}{'texts/s':>10}   (one process: "
          f"onnxruntime {versions['onnxruntime']}, tokenizers {versions['tokenizers']})")
    for name, r in speed.items():
        print(f"{name:<28}{r['best_s']:>10.3f}{r['median_s']:>10.3f}{r['texts_per_s']:>10.1f}")
    reference = speed["limit_bs32"]["labels"]
    agree = {name: r.pop("labels") == reference for name, r in speed.items()}
    ratios = {
        "cold_start_vs_optimum": cold["onnxmeta"]["seconds"] / cold["optimum"]["seconds"],
        "throughput_vs_optimum_bs32": speed["onnxmeta_bs32"]["texts_per_s"] / speed["optimum_bs32"]["texts_per_s"],
        "throughput_vs_optimum_bs1": speed["onnxmeta_bs1"]["texts_per_s"] / speed["optimum_bs1"]["texts_per_s"],
        "throughput_vs_limit_bs32": speed["onnxmeta_bs32"]["texts_per_s"] / speed["limit_bs32"]["texts_per_s"],
        "throughput_vs_limit_bs1": speed["onnxmeta_bs1"]["texts_per_s"] / speed["limit_bs1"]["texts_per_s"],
    }
    print(f"\ncold start: {ratios['cold_start_vs_optimum']:.2f}x Optimum's; throughput "
          f"{ratios['throughput_vs_optimum_bs32']:.2f}x Optimum at batch 32, {ratios['throughput_vs_optimum_bs1']:.2f}x at "
          f"batch 1; {ratios['throughput_vs_limit_bs32']:.2f}x / {ratios['throughput_vs_limit_bs1']:.2f}x the hand-written "
          f"loop; same labels as the loop: {', '.join(n for n, ok in agree.items() if ok) or 'none'}")
    targets = {
        "cold start <= 0.3x Optimum": ratios["cold_start_vs_optimum"] <= 0.3,
        "throughput >= 1.5x Optimum at batch 32": ratios["throughput_vs_optimum_bs32"] >= 1.5,
        "throughput >= 1.5x Optimum at batch 1": ratios["throughput_vs_optimum_bs1"] >= 1.5,
        "throughput >= 0.9x the hand-written loop at batch 32": ratios["throughput_vs_limit_bs32"] >= 0.9,
        "throughput >= 0.9x the hand-written loop at batch 1": ratios["throughput_vs_limit_bs1"] >= 0.9,
        "every contender gives the same labels": all(agree.values()),
    }
    print()
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    return {"model": str(folder / "model.onnx"), "model_bytes": size, "cold_start": cold, "throughput": speed,
            "versions": versions, "labels_agree": agree, "ratios": ratios, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    return bench_cli.main(__doc__, run, "results-runtime.json", repeats=3, build=build, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
