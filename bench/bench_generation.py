"""Benchmark text generation: the runtime (with and without a cache) against Optimum and onnxruntime-genai.

    python bench/bench_generation.py [--passes 3] [--new-tokens 128] [--models gpt2-124m small] [--json FILE]

Two random-weight GPT-2 models, built once and cached under ~/.cache/onnxmeta/bench/ (real gpt2 tokenizer from
/work/shared/data/gpt2): "gpt2-124m" (GPT-2 small's shape, 124M parameters) and "small" (2 layers, hidden 256).
Each is exported by Optimum with a cache (model.onnx with past_key_values.N.*; the file every cached contender
runs) and by torch.onnx without one. A 32-token prompt, 128 new tokens, greedy (min_new_tokens=128 so that a
random model's eos cannot end it early), batch 1 and 8:

* runtime        Runtime(model.onnx)(prompts, do_sample=False, ...): the past stays in onnxruntime (I/O binding)
* runtime-nocache  the same call on the torch.onnx export: the whole sequence each step (batch 1 only)
* numpy-loop     a plain greedy loop around the same session, past copied through numpy (session.run)
* optimum        ORTModelForCausalLM.generate on the same model.onnx (its own environment, transformers 4.57)
* genai          onnxruntime-genai's C++ loop on the same model.onnx, given a genai_config.json (its model builder
                 does not take GPT-2); intra-op threads set to the cores, and once with its default ("genai-default")

Every contender runs in its own process (peak RSS is the process's), all with intra-op threads = the cores,
in interleaved passes: pass 1 runs each contender once, then pass 2, ... Each process warms up, then times one
generation per batch size: tokens/s (new tokens of all rows / wall time of the call), time to first token
(prompt in, first new token out), and for the Python loops their own cost per token (wall time minus the time
inside onnxruntime's run calls, per step). The best pass counts. Targets (issue 11): runtime >= 1.0x genai and
>= 1.4x Optimum on gpt2-124m at batch 1 and 8, >= 2x Optimum on small.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_cli

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "onnxmeta" / "bench"
GPT2 = Path(os.environ.get("ONNXMETA_SHARED_DATA", ROOT.parent / "shared" / "data")) / "gpt2" / "_derived"
if not GPT2.is_dir():
    GPT2 = Path("/work/shared/data/gpt2/_derived")
GENAI_VENV = CACHE.parent / "venv-genai"
MODELS = {
    "gpt2-124m": {"n_layer": 12, "n_embd": 768, "n_head": 12},
    "small": {"n_layer": 2, "n_embd": 256, "n_head": 4},
}
PROMPT_TOKENS = 32
CORES = os.cpu_count() or 1
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "small", "cats", "quietly",
         "sleep", "on", "the", "warm", "red", "mat", "in", "an", "old", "house")


def prompts(batch: int) -> list[str]:
    """batch prompts of PROMPT_TOKENS gpt2 tokens each ("The", then words of one token each)."""
    return [" ".join(["The", *(WORDS[(i + j) % len(WORDS)] for j in range(PROMPT_TOKENS - 1))]) for i in range(batch)]


# --------------------------------------------------------------------------------------------------------- models

def build(name: str) -> Path:
    """The cached model folder: hf/ (config, weights, tokenizer), optimum/ (Optimum's export), model.onnx and
    nocache.onnx (metadata embedded), genai/ (model.onnx + genai_config.json + tokenizer)."""
    folder = CACHE / f"gen-{name}"
    if (folder / "genai" / "genai_config.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    sys.path[:0] = [str(ROOT / "runtime"), str(ROOT), str(ROOT / "tests" / "models")]
    from generation_models import export_without_cache

    from authoring import embed_metadata

    hf = folder / "hf"
    tokenizer = AutoTokenizer.from_pretrained(GPT2, model_max_length=1024)
    tokenizer.save_pretrained(hf)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=1024, bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id, **MODELS[name])).eval()
    model.save_pretrained(hf)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(bench_cli.optimum_python()), "-m", "optimum.exporters.onnx", "--model", str(hf), "--task",
                    "text-generation-with-past", "--library-name", "transformers", str(folder / "optimum")],
                   check=True, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    embed_metadata(folder / "optimum" / "model.onnx", hf, folder / "model.onnx", include_vocab=True)
    export_without_cache(model, folder / "nocache-graph.onnx")  # the tests' whole-sequence export
    embed_metadata(folder / "nocache-graph.onnx", hf, folder / "nocache.onnx", include_vocab=True)
    genai = folder / "genai"
    genai.mkdir(exist_ok=True)
    for file in ("model.onnx", "tokenizer.json", "tokenizer_config.json", "config.json"):
        (genai / file).write_bytes((folder / "optimum" / file).read_bytes())
    (genai / "genai_config.json").write_text(json.dumps(genai_config(model.config), indent=2))
    return folder


def genai_config(config: Any, threads: int | None = CORES) -> dict[str, Any]:
    """onnxruntime-genai's description of Optimum's GPT-2 export: a decoder-only graph with the names genai's
    generic decoder uses (the "llama" type runs any such graph: input_ids, attention_mask, position_ids,
    past_key_values.N.key/value in, logits and present.N.key/value out)."""
    session: dict[str, Any] = {"log_id": "onnxruntime-genai", "provider_options": []}
    if threads is not None:
        session["intra_op_num_threads"] = threads
    return {"model": {
        "type": "llama", "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "pad_token_id": config.eos_token_id, "vocab_size": config.vocab_size, "context_length": config.n_positions,
        "decoder": {
            "session_options": session, "filename": "model.onnx", "head_size": config.n_embd // config.n_head,
            "hidden_size": config.n_embd, "num_attention_heads": config.n_head, "num_key_value_heads": config.n_head,
            "num_hidden_layers": config.n_layer,
            "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                       "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
            "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
        }},
        "search": {"do_sample": False, "num_beams": 1, "max_length": config.n_positions, "min_length": 0,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0},
    }


# ------------------------------------------------------------------------------------------------ contenders
# Each runs in its own process: `python bench_generation.py --contender NAME --model FOLDER --new-tokens N`
# prints one JSON line {batch: {"seconds", "first_token", "onnxruntime_seconds", "steps", "tokens"}, "rss_mb"}.



def run_runtime(folder: Path, new_tokens: int, cache: bool) -> dict[str, Any]:
    sys.path[:0] = [str(ROOT / "runtime")]
    import onnxmeta_runtime as rt

    runtime = rt.Runtime(folder / ("model.onnx" if cache else "nocache.onnx"), intra_op_num_threads=CORES)
    timer = bench_cli.Timed([runtime._task.step.session.ort], ("run_with_iobinding",))
    options = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    out: dict[str, Any] = {}
    for batch in (1, 8) if cache else (1,):
        texts = prompts(batch)
        runtime(texts, **{**options, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up
        start = time.perf_counter()  # the first token: a whole call (prompt in, text out) that makes one
        runtime(texts, **{**options, "max_new_tokens": 1, "min_new_tokens": 1})
        first = time.perf_counter() - start
        timer.seconds = 0.0
        start = time.perf_counter()
        result = runtime(texts, return_tensors=True, **options)
        seconds = time.perf_counter() - start
        out[str(batch)] = {"seconds": seconds, "first_token": first, "onnxruntime_seconds": timer.seconds, "steps": new_tokens,
                           "tokens": sum(len(r[0]["generated_token_ids"]) - PROMPT_TOKENS for r in result)}
    return out


def run_numpy_loop(folder: Path, new_tokens: int) -> dict[str, Any]:
    """The plain greedy loop: numpy in, numpy out, every past copied through numpy."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = CORES
    session = ort.InferenceSession(str(folder / "optimum" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    timer = bench_cli.Timed([session], ("run",))
    tokenizer = Tokenizer.from_file(str(folder / "hf" / "tokenizer.json"))
    past_names = [i.name for i in session.get_inputs() if i.name.startswith("past")]
    heads, head_dim = session.get_inputs()[1].shape[1], session.get_inputs()[1].shape[3]
    eos = tokenizer.token_to_id("<|endoftext|>")

    def generate(ids: np.ndarray, steps: int) -> tuple[np.ndarray, float]:
        batch = len(ids)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(ids.shape[1]), (batch, 1)),
                **{n: np.zeros((batch, heads, 0, head_dim), np.float32) for n in past_names}}
        out, first = [], 0.0
        start = time.perf_counter()
        for step in range(steps):
            logits, *presents = session.run(None, feed)
            scores = logits[:, -1]
            scores[:, eos] = -np.inf  # min_new_tokens: every step
            token = scores.argmax(-1)
            out.append(token)
            if step == 0:
                first = time.perf_counter() - start
            length = feed["attention_mask"].shape[1] + 1
            feed = {"input_ids": token[:, None], "attention_mask": np.ones((batch, length), np.int64),
                    "position_ids": np.full((batch, 1), length - 1), **dict(zip(past_names, presents))}
        return np.stack(out, 1), first

    out: dict[str, Any] = {}
    for batch in (1, 8):
        ids = np.array([e.ids for e in tokenizer.encode_batch(prompts(batch))], dtype=np.int64)
        generate(ids, 8)
        timer.seconds = 0.0
        start = time.perf_counter()
        tokens, first = generate(ids, new_tokens)
        out[str(batch)] = {"seconds": time.perf_counter() - start, "first_token": first, "onnxruntime_seconds": timer.seconds,
                           "steps": new_tokens, "tokens": int(tokens.size)}
    return out


def run_optimum(folder: Path, new_tokens: int) -> dict[str, Any]:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = CORES
    model = ORTModelForCausalLM.from_pretrained(folder / "optimum", session_options=options, provider="CPUExecutionProvider")
    timer = bench_cli.Timed([model.session if hasattr(model, "session") else model.model], ("run",))
    tokenizer = AutoTokenizer.from_pretrained(folder / "optimum")
    out: dict[str, Any] = {}
    for batch in (1, 8):
        inputs = tokenizer(prompts(batch), return_tensors="pt")
        model.generate(**inputs, do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=tokenizer.eos_token_id)
        start = time.perf_counter()
        model.generate(**inputs, do_sample=False, max_new_tokens=1, pad_token_id=tokenizer.eos_token_id)
        first = time.perf_counter() - start
        timer.seconds = 0.0
        start = time.perf_counter()
        result = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                pad_token_id=tokenizer.eos_token_id)
        out[str(batch)] = {"seconds": time.perf_counter() - start, "first_token": first, "onnxruntime_seconds": timer.seconds,
                           "steps": new_tokens, "tokens": int(result[:, PROMPT_TOKENS:].numel())}
    return out


def run_genai(folder: Path, new_tokens: int, default_threads: bool) -> dict[str, Any]:
    import numpy as np
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    model_folder = folder / "genai"
    if default_threads:
        model_folder = folder / "genai-default"
        model_folder.mkdir(exist_ok=True)
        for file in (folder / "genai").iterdir():
            if not (model_folder / file.name).exists():
                (model_folder / file.name).symlink_to(file)
        config = json.loads((folder / "genai" / "genai_config.json").read_text())
        config["model"]["decoder"]["session_options"].pop("intra_op_num_threads", None)
        (model_folder / "genai_config.json").unlink()
        (model_folder / "genai_config.json").write_text(json.dumps(config))
    model = og.Model(str(model_folder))
    tokenizer = Tokenizer.from_file(str(folder / "hf" / "tokenizer.json"))

    def generate(ids: np.ndarray, steps: int) -> tuple[int, float]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=ids.shape[1] + steps, min_length=ids.shape[1] + steps,
                                  batch_size=len(ids))
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        first, count = 0.0, 0
        while not generator.is_done():
            generator.generate_next_token()
            count += 1
            if count == 1:
                first = time.perf_counter() - start
        return count * len(ids), first

    out: dict[str, Any] = {}
    for batch in (1, 8):
        ids = np.array([e.ids for e in tokenizer.encode_batch(prompts(batch))], dtype=np.int32)
        generate(ids, 8)
        start = time.perf_counter()
        tokens, first = generate(ids, new_tokens)
        out[str(batch)] = {"seconds": time.perf_counter() - start, "first_token": first, "onnxruntime_seconds": None,
                           "steps": new_tokens, "tokens": tokens}
    return out


def contender_main(name: str, folder: Path, new_tokens: int) -> None:
    import resource

    start = time.perf_counter()
    if name in ("runtime", "runtime-nocache"):
        out = run_runtime(folder, new_tokens, cache=name == "runtime")
    elif name == "numpy-loop":
        out = run_numpy_loop(folder, new_tokens)
    elif name == "optimum":
        out = run_optimum(folder, new_tokens)
    else:
        out = run_genai(folder, new_tokens, default_threads=name == "genai-default")
    out["process_seconds"] = time.perf_counter() - start
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


# ------------------------------------------------------------------------------------------------ orchestration

def genai_python() -> Path | None:
    """Python of the onnxruntime-genai environment (created on first use); None when it cannot be made."""
    python = GENAI_VENV / "bin" / "python"
    probe = [str(python), "-c", "import onnxruntime_genai, tokenizers, numpy"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(GENAI_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "onnxruntime-genai", "tokenizers", "numpy"], check=False)
    return python if subprocess.run(probe, capture_output=True, check=False).returncode == 0 else None


def contender(name: str, folder: Path, new_tokens: int) -> dict[str, Any] | None:
    """Run one contender in its own process; its results plus the whole process's wall time."""
    if name == "optimum":
        python: Path | None = bench_cli.optimum_python()
    elif name.startswith("genai"):
        python = genai_python()
    else:
        python = Path(sys.executable)
    if python is None:
        return None
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    start = time.perf_counter()
    result = subprocess.run([str(python), __file__, "--contender", name, "--model", str(folder), "--new-tokens", str(new_tokens)],
                            capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"}, check=False)
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        print(f"  {name} failed:\n{result.stderr[-1500:]}", file=sys.stderr)
        return None
    out: dict[str, Any] = json.loads(line[len("RESULT "):])
    out["wall_seconds"] = time.perf_counter() - start
    return out


CONTENDERS = ("runtime", "numpy-loop", "optimum", "genai", "genai-default")


def run(passes: int = 3, new_tokens: int = 128, models: tuple[str, ...] = tuple(MODELS)) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for model in models:
        folder = build(model)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in (*CONTENDERS, "runtime-nocache")}
        for p in range(passes):
            for name in CONTENDERS if p else (*CONTENDERS, "runtime-nocache"):
                out = contender(name, folder, new_tokens)
                if out is not None:
                    runs[name].append(out)
        results[model] = summarize(model, runs)
    results["ratios"] = {
        f"{model}_bs{batch}_vs_{peer}": results[model]["runtime"][str(batch)]["tokens_per_second"]
        / results[model][peer][str(batch)]["tokens_per_second"]
        for model in models for batch in (1, 8) for peer in ("optimum", "genai", "genai-default", "numpy-loop")
        if results[model].get(peer) and results[model].get("runtime")
    }
    return results


def summarize(model: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The best pass of each contender and batch size, printed as a table."""
    summary: dict[str, Any] = {}
    print(f"\n== {model}: {PROMPT_TOKENS}-token prompt, new tokens greedy, {CORES} intra-op threads ==")
    print(f"{'contender':<16}{'batch':>6}{'tok/s':>9}{'first token':>13}{'loop/token':>12}{'peak RSS':>10}{'process':>9}")
    for name, outs in runs.items():
        if not outs:
            continue
        summary[name] = {}
        for batch in ("1", "8"):
            candidates = [o[batch] for o in outs if batch in o]
            if not candidates:
                continue
            best = min(candidates, key=lambda r: r["seconds"])
            entry = {
                "tokens_per_second": best["tokens"] / best["seconds"],
                "first_token_ms": 1000 * min(r["first_token"] for r in candidates),
                "loop_ms_per_token": None if best["onnxruntime_seconds"] is None
                else 1000 * (best["seconds"] - best["onnxruntime_seconds"]) / best["steps"],
                "rss_mb": min(o["rss_mb"] for o in outs),
                "process_seconds": min(o["wall_seconds"] for o in outs),
                "tokens": best["tokens"],
            }
            summary[name][batch] = entry
            loop = "-" if entry["loop_ms_per_token"] is None else f"{entry['loop_ms_per_token']:.2f} ms"
            print(f"{name:<16}{batch:>6}{entry['tokens_per_second']:>9.1f}{entry['first_token_ms']:>10.1f} ms{loop:>12}"
                  f"{entry['rss_mb']:>7.0f} MB{entry['process_seconds']:>8.1f}s")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results-generation.json"))
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.contender:
        contender_main(args.contender, args.model, args.new_tokens)
        return 0
    results = run(args.passes, args.new_tokens, tuple(args.models))
    print("\n== runtime vs peers (tokens/s ratio; targets: >= 1.0x genai, >= 1.4x optimum on gpt2-124m, >= 2x optimum on small) ==")
    for key, value in results["ratios"].items():
        print(f"{key:<36}{value:>7.2f}x")
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
