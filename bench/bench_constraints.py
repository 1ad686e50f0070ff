"""Benchmark constrained generation: a JSON-schema constraint's cost per token and its compile time.

    python bench/bench_constraints.py [--model FILE] [--tokens 64] [--repeats 3] [--json FILE]

On a SmolLM2-shaped chat model (49,152-token byte-level BPE vocabulary; bench_serve.py builds
~/.cache/onnxmeta/bench/serve/smollm2-chat.onnx), greedy generation of the same prompt:

* compile       _json_schema_regex + the automaton of a typical schema (a person record: strings with bounds, an
                integer range, an email, an enum, an array), in a fresh process state (no cache)
* vocabulary    the tokenizer's 49k tokens as bytes (once per model, on the first constrained call)
* first call    the first constrained generation (compile, vocabulary, and every token mask built as states are met)
* mask          the constraint processor alone per token, after warm-up (masks cached): the generated tokens replayed
                through a fresh _Constrained over random scores of the vocabulary's width
* per token     constrained vs unconstrained generation of the same number of tokens (min_new_tokens forces the
                free one to run as long), wall time per new token, after warm-up; the difference is the overhead

Goals (issue 25): <= 1 ms per token after warm-up on 2 cores, compile of a typical schema <= 0.5 s. In-process
figures (imports done, model loaded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime"))

import numpy as np  # noqa: E402

import onnxmeta_runtime as rt  # noqa: E402

MODEL = Path.home() / ".cache" / "onnxmeta" / "bench" / "serve" / "smollm2-chat.onnx"
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 40},
    "age": {"type": "integer", "minimum": 0, "maximum": 130},
    "email": {"type": "string", "format": "email"},
    "role": {"enum": ["admin", "editor", "viewer"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
    "active": {"type": "boolean"},
}, "required": ["name", "age", "role"]}
PROMPT = "Write a JSON record for a new user of the site, a designer called Ada who is 36."


def best(runs: list[float]) -> float:
    return min(runs)


def run(model: Path, tokens: int, repeats: int) -> dict[str, Any]:
    runtime = rt.Runtime(model)
    task = runtime._task
    out: dict[str, Any] = {"model": str(model), "vocabulary": task.tokenizer.backend.get_vocab_size(with_added_tokens=True)}

    compile_times = []
    for _ in range(repeats):
        started = time.perf_counter()
        automaton = rt._regex_constraint(rt._json_schema_regex(SCHEMA), "json_schema")
        compile_times.append(time.perf_counter() - started)
    out["compile_s"] = best(compile_times)

    started = time.perf_counter()
    task._token_text = task._token_text or rt._TokenText(task.tokenizer)
    vocabulary = rt._Vocabulary(task.tokenizer, task._token_text)
    out["vocabulary_s"] = time.perf_counter() - started

    options = {"do_sample": False, "max_new_tokens": tokens, "return_tensors": True}
    started = time.perf_counter()
    first = runtime(PROMPT, json_schema=SCHEMA, **options)[0]
    out["first_call_s"] = time.perf_counter() - started
    ids = first["generated_token_ids"]
    prompt_length = len(task.tokenizer.encode([PROMPT])[0].ids)
    new = ids[prompt_length:]
    out["new_tokens"] = len(new)
    out["truncated"] = first["truncated"]
    out["text"] = task.tokenizer.decode(new, skip_special_tokens=True)

    # the processor alone, masks warm: the tokens replayed over random scores
    index = rt._TokenIndex(automaton, vocabulary)
    width = vocabulary.size
    scores = np.random.default_rng(0).normal(size=(1, width)).astype(np.float32)
    eos = task.tokenizer.token_id("eos_token")
    times = []
    for repeat in range(repeats + 1):
        processor = rt._Constrained([index], [eos])
        row = np.array([ids[:prompt_length]], dtype=np.int64)
        elapsed = 0.0
        for token in new:
            started = time.perf_counter()
            processor(row, scores.copy())
            elapsed += time.perf_counter() - started
            row = np.concatenate([row, [[token]]], axis=1)
        if repeat:  # the first replay builds the masks
            times.append(elapsed / max(len(new), 1))
    out["mask_ms_per_token"] = best(times) * 1000

    steps = len(new)
    constrained, free = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        runtime(PROMPT, json_schema=SCHEMA, **options)
        constrained.append((time.perf_counter() - started) / steps)
        started = time.perf_counter()
        runtime(PROMPT, **{**options, "max_new_tokens": steps, "min_new_tokens": steps})
        free.append((time.perf_counter() - started) / steps)
    out["constrained_ms_per_token"] = best(constrained) * 1000
    out["free_ms_per_token"] = best(free) * 1000
    out["overhead_ms_per_token"] = out["constrained_ms_per_token"] - out["free_ms_per_token"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens (the constraint may end sooner)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.model.exists():
        print(f"{args.model} is absent; run bench/bench_serve.py once to build it (or pass --model)", file=sys.stderr)
        return 2
    result = run(args.model, args.tokens, args.repeats)
    for key in ("vocabulary", "compile_s", "vocabulary_s", "first_call_s", "new_tokens", "truncated",
                "mask_ms_per_token", "constrained_ms_per_token", "free_ms_per_token", "overhead_ms_per_token"):
        value = result[key]
        print(f"{key:26} {value:.4f}" if isinstance(value, float) else f"{key:26} {value}")
    print(f"{'text':26} {result['text'][:200]}")
    goals = {"mask <= 1 ms/token": result["mask_ms_per_token"] <= 1.0, "compile <= 0.5 s": result["compile_s"] <= 0.5}
    print("goals: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in goals.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
