"""Benchmark an encoder-decoder as ONE file: the runtime against Optimum, and the one file against the separate files.

    python bench/bench_seq2seq.py [--passes 5] [--new-tokens 32] [--repeats 3] [--trials 3] [--threads N]
                                  [--quick] [--json bench/results-seq2seq.json]

Builds (once, cached under ~/.cache/onnxmeta/bench/t5-small-random/) a random-weight T5 of t5-small's
size (the real t5-small config.json from /work/shared/data: d_model 512, 6 layers, 8 heads, vocab 32128)
with the t5-small tokenizer, exports it with Optimum (text2text-generation-with-past, in the Optimum
environment ~/.cache/onnxmeta/venv-optimum) and merges the export into one file with full metadata.

Part 1, the runtime against Optimum (tokens per second). Two contenders, each in its own process, on the same
export, greedy, max_new_tokens = min_new_tokens (so a random model's eos cannot end a row early and both make the
same count), batch 1 and 8 (texts of 50 to 70 tokens), the same intra-op threads (--threads, default the cores):

* runtime  Runtime(model.onnx, task="text2text-generation")(texts, num_beams=1, do_sample=False, ...): the one
           file; texts in, texts out
* optimum  ORTModelForSeq2SeqLM.from_pretrained(export).generate(**tokenizer(texts), ...), then batch_decode: the
           separate files (its environment: transformers 4.57, Optimum's defaults, no I/O binding on CPU)

In-process figures: each process imports, loads, warms up, then times --repeats calls per batch size (median):
tokens/s (new tokens of all rows / wall time of the call) and the loop's own cost per token (the call's wall time
minus the time inside onnxruntime's run calls, per step; tokenizing and decoding included). Whole-process figure:
another process that starts, imports, loads, generates once at batch 1 and exits, timed from outside (what a user
of a command line waits for). The two contenders run in --passes passes, their order flipped every pass; each
figure is the median over passes. Target (issue 12): runtime >= 1.3x Optimum in tokens/s at batch 1 and 8.

Part 2, the one file against the separate files, with plain onnxruntime. Prints and writes to --json:

* sizes: the one file (its embedded metadata apart), the export's separate graph files, and the
  export's weights counted once by content (the floor for any one-file form);
* time per generated token of the same plain numpy greedy loop (encoder once, first decoder step, then
  the decoder with past; 32 new tokens, no early stop) over the one file and over the separate files, at
  batch 1 and 8, in interleaved runs (median of --repeats);
* each phase's time (encoder, first decoder step, one decoder step with a past of 16), one file against
  the separate file, each the median of many interleaved calls.

Both contenders run in this process with the same onnxruntime session options, in --trials trials with
fresh sessions created in alternating order (two sessions of the SAME file differ by up to 20% here,
by where their memory lands); each figure is the median over trials. On a machine shared with other
work the absolute times move from run to run; the interleaved ratios are the figures to read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_cli

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "onnxmeta" / "bench" / "t5-small-random"
T5_SMALL = Path(os.environ.get("ONNXMETA_SHARED_DATA", "/work/shared/data")) / "t5-small"
NEW_TOKENS = 32
SOURCE_LENGTH = 64
EXPORT = """
import sys
from optimum.exporters.onnx import main_export
main_export(sys.argv[1], sys.argv[2], task="text2text-generation-with-past", library_name="transformers",
            do_validation=False, no_post_process=True)
"""


def build() -> Path:
    """The cached folder: model/ (config, weights, tokenizer), export/ (Optimum's files), model.onnx (one file)."""
    one_file = CACHE / "model.onnx"
    if one_file.is_file():
        return CACHE
    import torch
    import transformers

    sys.path[:0] = [str(ROOT / "runtime"), str(ROOT)]
    from authoring import discover
    from authoring.seq2seq import merge_export

    model_folder, export = CACHE / "model", CACHE / "export"
    model_folder.mkdir(parents=True, exist_ok=True)
    transformers.AutoTokenizer.from_pretrained(T5_SMALL).save_pretrained(model_folder)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config.from_pretrained(T5_SMALL)).eval()
    model.save_pretrained(model_folder)
    # transformers 4.57 (the Optimum environment) reads T5's extra_special_tokens as a dict of named tokens
    config_path = model_folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if isinstance(config.get("extra_special_tokens"), list):
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
        config_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(bench_cli.optimum_python()), "-c", EXPORT, str(model_folder), str(export)], check=True,
                   env={**env, "HF_HUB_OFFLINE": "1"})
    merge_export(export, one_file, discover(model_folder, level="full"))
    return CACHE


# ------------------------------------------------------------------------------------ part 1: against Optimum
# Each contender runs in its own process: `python bench_seq2seq.py --contender NAME --model FOLDER ...` prints one
# JSON line: {batch: {"seconds": [...], "onnxruntime_seconds": [...], "steps", "tokens", "ids"}} (warm), or nothing
# but its exit status (cold: the whole process is the figure).

CORES = os.cpu_count() or 1
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "small", "cats", "quietly",
         "sleep", "on", "the", "warm", "red", "mat", "in", "an", "old", "house")


def texts(batch: int) -> list[str]:
    """batch texts of 50 to 70 t5 tokens, different lengths (about 1.2 tokens a word)."""
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(60 - 2 * i if batch > 1 else 60)) for i in range(batch)]



Generate = Callable[[list[str], int], list[list[int]]]


def generator(name: str, folder: Path, threads: int) -> tuple[Generate, Callable[[], list[Any]]]:
    """The contender's generate(texts, new_tokens) -> new token ids per row, and its onnxruntime sessions."""
    if name == "runtime":
        sys.path[:0] = [str(ROOT / "runtime")]
        import onnxmeta_runtime as rt

        runtime = rt.Runtime(folder / "model.onnx", task="text2text-generation", intra_op_num_threads=threads, batch_size=8)

        def generate_runtime(batch: list[str], new_tokens: int) -> list[list[int]]:
            out = runtime(batch, return_tensors=True, num_beams=1, do_sample=False, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens)
            return [r["generated_token_ids"][1:] for r in (out if isinstance(out, list) else [out])]

        def sessions_runtime() -> list[Any]:
            return [s.ort for s in runtime._task.ctx.sessions.values()]

        return generate_runtime, sessions_runtime
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from transformers import AutoTokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    model = ORTModelForSeq2SeqLM.from_pretrained(folder / "export", session_options=options, provider="CPUExecutionProvider")
    tokenizer = AutoTokenizer.from_pretrained(folder / "export")

    def generate_optimum(batch: list[str], new_tokens: int) -> list[list[int]]:
        ids = model.generate(**tokenizer(batch, return_tensors="pt", padding=True), num_beams=1, do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [row[1:] for row in ids.tolist()]

    def sessions_optimum() -> list[Any]:
        return [part.session for part in (model.encoder, model.decoder, model.decoder_with_past) if part is not None]

    return generate_optimum, sessions_optimum


def contender_main(name: str, folder: Path, new_tokens: int, repeats: int, threads: int, cold: bool) -> None:
    generate, sessions = generator(name, folder, threads)
    if cold:
        generate(texts(1), new_tokens)
        return
    timer = bench_cli.Timed(sessions())
    out: dict[str, Any] = {}
    for batch in (1, 8):
        generate(texts(batch), 4)  # warm-up
        seconds, inside, ids = [], [], []
        for _ in range(repeats):
            timer.seconds = 0.0
            start = time.perf_counter()
            ids = generate(texts(batch), new_tokens)
            seconds.append(time.perf_counter() - start)
            inside.append(timer.seconds)
        out[str(batch)] = {"seconds": seconds, "onnxruntime_seconds": inside, "steps": new_tokens,
                           "tokens": sum(len(row) for row in ids), "ids": ids}
    print("RESULT " + json.dumps(out))


def contender(name: str, folder: Path, new_tokens: int, repeats: int, threads: int, cold: bool) -> dict[str, Any] | None:
    """One contender's process: its printed results (warm) and the whole process's wall time."""
    python = bench_cli.optimum_python() if name == "optimum" else Path(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [str(python), __file__, "--contender", name, "--model", str(folder), "--new-tokens", str(new_tokens),
               "--repeats", str(repeats), "--threads", str(threads), *(["--cold"] if cold else [])]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"}, check=False)
    wall = time.perf_counter() - start
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    if result.returncode != 0 or (line is None and not cold):
        print(f"  {name} failed:\n{result.stderr[-1500:]}", file=sys.stderr)
        return None
    out: dict[str, Any] = json.loads(line[len("RESULT "):]) if line else {}
    out["process_seconds"] = wall
    return out


CONTENDERS = ("runtime", "optimum")


def versus_optimum(folder: Path, passes: int, new_tokens: int, repeats: int, threads: int) -> dict[str, Any]:
    """Both contenders in passes (order flipped every pass): per contender and batch size the median over passes of
    tokens/s and loop cost per token, the whole-process seconds, and the ratios runtime / Optimum."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    cold: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for p in range(passes):
        for name in CONTENDERS if p % 2 == 0 else reversed(CONTENDERS):
            warm = contender(name, folder, new_tokens, repeats, threads, cold=False)
            whole = contender(name, folder, new_tokens, repeats, threads, cold=True)
            if warm is not None:
                runs[name].append(warm)
            if whole is not None:
                cold[name].append(whole["process_seconds"])
    figures: dict[str, Any] = {"new_tokens": new_tokens, "threads": threads, "passes": passes, "repeats": repeats}
    for name in CONTENDERS:
        if not runs[name]:
            continue
        figures[name] = {"process_seconds": statistics.median(cold[name]) if cold[name] else None}
        for batch in ("1", "8"):
            per_pass = [(statistics.median(r[batch]["seconds"]), statistics.median(
                [s - o for s, o in zip(r[batch]["seconds"], r[batch]["onnxruntime_seconds"])]), r[batch]) for r in runs[name]]
            figures[name][batch] = {
                "tokens_per_second": statistics.median(b["tokens"] / s for s, _, b in per_pass),
                "loop_ms_per_token": statistics.median(1000 * loop / b["steps"] for _, loop, b in per_pass),
                "tokens": per_pass[0][2]["tokens"],
            }
    if runs["runtime"] and runs["optimum"]:
        figures["tokens_agree"] = {batch: runs["runtime"][0][batch]["ids"] == runs["optimum"][0][batch]["ids"]
                                   for batch in ("1", "8")}
        figures["ratios"] = {
            **{f"bs{batch}_vs_optimum": figures["runtime"][batch]["tokens_per_second"]
               / figures["optimum"][batch]["tokens_per_second"] for batch in ("1", "8")},
            "process_vs_optimum": figures["runtime"]["process_seconds"] / figures["optimum"]["process_seconds"]
            if figures["runtime"]["process_seconds"] and figures["optimum"]["process_seconds"] else None,
        }
    return figures


def report_versus(figures: dict[str, Any]) -> None:
    print(f"runtime (one file) vs Optimum (separate files): {figures['new_tokens']} new tokens greedy, "
          f"{figures['threads']} intra-op threads, medians of {figures['passes']} passes")
    print(f"{'contender':<10}{'batch':>6}{'tok/s':>9}{'loop/token':>12}   (in-process, warm)")
    for name in CONTENDERS:
        for batch in ("1", "8"):
            if name in figures:
                f = figures[name][batch]
                print(f"{name:<10}{batch:>6}{f['tokens_per_second']:>9.1f}{f['loop_ms_per_token']:>9.2f} ms")
    for name in CONTENDERS:
        if name in figures and figures[name]["process_seconds"]:
            print(f"{name:<10} whole process (start, imports, load, batch 1 x {figures['new_tokens']} tokens, exit): "
                  f"{figures[name]['process_seconds']:.2f} s")
    if "ratios" in figures:
        r = figures["ratios"]
        print(f"ratio runtime / Optimum tokens/s: batch 1 {r['bs1_vs_optimum']:.2f}x, batch 8 {r['bs8_vs_optimum']:.2f}x "
              f"(target >= 1.3x); whole process {r['process_vs_optimum']:.2f}x the time; same tokens: {figures['tokens_agree']}")


# ------------------------------------------------------------------- part 2: one file against separate files


Run = Callable[[str, dict[str, Any]], dict[str, Any]]


def runners(folder: Path, threads: int | None, one_first: bool) -> tuple[Run, Run, dict[str, Any]]:
    """Entry points by role of the one file (phase fed) and of the separate files, and the file's layout.

    Sessions are created in the order asked: where a session's memory lands moves its speed by up to
    20% here, so trials alternate the order.
    """
    import numpy as np
    import onnxruntime as ort

    import onnxmeta_runtime as rt

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    layout = rt.read_metadata(folder / "model.onnx")["hf_graph_layout"]
    files = {"encoder": "encoder_model.onnx", "decoder": "decoder_model.onnx",
             "decoder_with_past": "decoder_with_past_model.onnx"}

    def load(path: Path) -> Any:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    one = load(folder / "model.onnx") if one_first else None
    separate = {entry: load(folder / "export" / name) for entry, name in files.items()}
    one = one or load(folder / "model.onnx")
    names = {entry: [o.name for o in s.get_outputs()] for entry, s in separate.items()}
    phases = {entry: np.array(point["phase"], np.int64) for entry, point in layout["entry_points"].items()}

    def run_one(entry: str, feed: dict[str, Any]) -> dict[str, Any]:
        point = layout["entry_points"][entry]
        feeds = {point["inputs"][role]: value for role, value in feed.items() if role in point["inputs"]}
        outputs = one.run(list(point["outputs"].values()), {layout["phase_input"]: phases[entry], **feeds})
        return dict(zip(point["outputs"], outputs))

    def run_separate(entry: str, feed: dict[str, Any]) -> dict[str, Any]:
        wanted = {i.name for i in separate[entry].get_inputs()}
        return dict(zip(names[entry], separate[entry].run(None, {k: v for k, v in feed.items() if k in wanted})))

    return run_one, run_separate, layout


def greedy(run: Run, layout: dict[str, Any], ids: Any, mask: Any) -> Any:
    """NEW_TOKENS greedy tokens (no early stop): encoder once, the first decoder step, then the decoder with past."""
    import numpy as np

    hidden = run("encoder", {"input_ids": ids, "attention_mask": mask})["last_hidden_state"]
    tokens = np.zeros((len(ids), 1), np.int64)
    out = run("decoder", {"input_ids": tokens, "encoder_hidden_states": hidden, "encoder_attention_mask": mask})
    past = {p["input"]: out[p["output"]] for p in layout["past"]}
    for step in range(NEW_TOKENS):
        token = out["logits"][:, -1].argmax(-1)
        tokens = np.concatenate([tokens, token[:, None]], 1)
        if step == NEW_TOKENS - 1:
            return tokens
        out = run("decoder_with_past", {"input_ids": token[:, None], "encoder_attention_mask": mask, **past})
        past.update({p["input"]: out[p["output"]] for p in layout["past"] if not p["cross"]})
    return tokens


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each call, the calls alternating (order flipped every round)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(repeats):
        for name in (list(calls) if i % 2 == 0 else list(reversed(calls))):
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def trial(folder: Path, repeats: int, threads: int | None, one_first: bool) -> dict[str, Any]:
    """One trial: fresh sessions, the greedy loop and each phase timed at batch 1 and 8."""
    import numpy as np

    run_one, run_separate, layout = runners(folder, threads, one_first)
    figures: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        ids = rng.integers(5, 32000, (batch, SOURCE_LENGTH)).astype(np.int64)
        mask = np.ones_like(ids)
        a = greedy(run_one, layout, ids, mask)  # warm-up, and the tokens must agree
        b = greedy(run_separate, layout, ids, mask)
        if not np.array_equal(a, b):
            raise SystemExit(f"the one file and the separate files disagree at batch {batch}")
        loops = interleaved({"one_file": lambda i=ids, m=mask: greedy(run_one, layout, i, m),
                             "separate": lambda i=ids, m=mask: greedy(run_separate, layout, i, m)}, repeats)
        hidden = run_separate("encoder", {"input_ids": ids, "attention_mask": mask})["last_hidden_state"]
        first = {"input_ids": np.zeros((batch, 1), np.int64), "encoder_hidden_states": hidden, "encoder_attention_mask": mask}
        out = run_separate("decoder", first)
        past = {p["input"]: out[p["output"]] for p in layout["past"]}
        step = {"input_ids": np.ones((batch, 1), np.int64), "encoder_attention_mask": mask, **past}
        for _ in range(15):  # a self-attention past of 16
            out = run_separate("decoder_with_past", step)
            step.update({p["input"]: out[p["output"]] for p in layout["past"] if not p["cross"]})
        phases = {}
        for entry, feed, n in (("encoder", {"input_ids": ids, "attention_mask": mask}, 3 * repeats),
                               ("decoder", first, 6 * repeats), ("decoder_with_past", step, 12 * repeats)):
            phases[entry] = interleaved({"one_file": lambda e=entry, f=feed: run_one(e, f),
                                         "separate": lambda e=entry, f=feed: run_separate(e, f)}, n)
        figures[f"batch_{batch}"] = {
            "ms_per_token": {name: 1000 * seconds / NEW_TOKENS for name, seconds in loops.items()},
            "phase_ms": {entry: {name: 1000 * s for name, s in t.items()} for entry, t in phases.items()},
        }
    return figures


def measure(folder: Path, repeats: int, trials: int, threads: int | None) -> dict[str, Any]:
    """Sizes, and the median over trials of each time (the trials' own figures kept under "trials")."""
    sys.path.insert(0, str(ROOT / "tests" / "models"))
    import seq2seq_models  # the tests' count of the unique weights

    import onnxmeta_runtime as rt

    metadata = sum(e.field.end - e.field.start for e in rt.scan_model(folder / "model.onnx").entries)
    figures: dict[str, Any] = {"sizes": {
        "one_file": (folder / "model.onnx").stat().st_size,
        "one_file_metadata": metadata,
        "separate_files": {p.name: p.stat().st_size for p in sorted((folder / "export").glob("*.onnx"))},
        "unique_weights": seq2seq_models.unique_weight_bytes(folder / "export"),
    }}
    runs = [trial(folder, repeats, threads, one_first=i % 2 == 0) for i in range(trials)]
    figures["trials"] = runs

    def median(path: tuple[str, ...]) -> float:
        values = []
        for run in runs:
            value: Any = run
            for key in path:
                value = value[key]
            values.append(value)
        return statistics.median(values)

    for batch in ("batch_1", "batch_8"):
        figures[batch] = {
            "ms_per_token": {name: median((batch, "ms_per_token", name)) for name in ("one_file", "separate")},
            "phase_ms": {entry: {name: median((batch, "phase_ms", entry, name)) for name in ("one_file", "separate")}
                         for entry in ("encoder", "decoder", "decoder_with_past")},
            "ratio_per_trial": [run[batch]["ms_per_token"]["one_file"] / run[batch]["ms_per_token"]["separate"]
                                for run in runs],
        }
    return figures


def report(figures: dict[str, Any]) -> None:
    mb = 1024 * 1024
    sizes = figures["sizes"]
    separate = sum(sizes["separate_files"].values())
    weights = sizes["one_file"] - sizes["one_file_metadata"]
    print(f"sizes: one file {sizes['one_file'] / mb:.1f} MB ({sizes['one_file_metadata'] / mb:.2f} MB of it metadata, "
          f"the model {weights / mb:.1f} MB = {weights / sizes['unique_weights']:.4f} x the unique weights "
          f"{sizes['unique_weights'] / mb:.1f} MB); separate files {separate / mb:.1f} MB "
          f"({', '.join(f'{n} {s / mb:.1f}' for n, s in sizes['separate_files'].items())})")
    for batch in (1, 8):
        f = figures[f"batch_{batch}"]
        one, sep = f["ms_per_token"]["one_file"], f["ms_per_token"]["separate"]
        trials = ", ".join(f"{r:.3f}" for r in f["ratio_per_trial"])
        print(f"batch {batch}: {one:.2f} ms/token one file, {sep:.2f} separate files: {one / sep:.3f}x (target <= 1.05; "
              f"trials {trials})")
        for entry, t in f["phase_ms"].items():
            print(f"  {entry:<18} one file {t['one_file']:8.2f} ms, separate {t['separate']:8.2f} ms: "
                  f"{t['one_file'] / t['separate']:.3f}x")


def run(passes: int = 5, new_tokens: int = 32, repeats: int = 3, trials: int = 3, threads: int = CORES) -> dict[str, Any]:
    """Both parts, printed; their figures, with the ratios run.py tabulates under "ratios"."""
    sys.path[:0] = [str(ROOT / "runtime"), str(ROOT)]
    folder = build()
    versus = versus_optimum(folder, passes, new_tokens, repeats, threads)
    report_versus(versus)
    files = measure(folder, repeats, trials, threads)
    report(files)
    ratios = dict(versus.get("ratios", {}))
    for batch in ("1", "8"):
        f = files[f"batch_{batch}"]["ms_per_token"]
        ratios[f"one_file_vs_separate_bs{batch}"] = f["one_file"] / f["separate"]
    return {"versus_optimum": versus, "one_file_vs_separate": files, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=5, help="runtime-and-Optimum passes, order flipped each (median)")
    parser.add_argument("--new-tokens", type=int, default=32, help="new tokens per row against Optimum (min = max)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per contender and batch size (median)")
    parser.add_argument("--trials", type=int, default=3, help="one-file-vs-separate trials, each with fresh sessions")
    parser.add_argument("--threads", type=int, default=CORES, help="onnxruntime intra-op threads of every contender")
    parser.add_argument("--quick", action="store_true", help="3 passes, 2 repeats, 2 trials (what run.py runs)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results-seq2seq.json"))
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.contender:
        contender_main(args.contender, args.model, args.new_tokens, args.repeats, args.threads, args.cold)
        return 0
    if args.quick:
        args.passes, args.repeats, args.trials = 3, 2, 2
    figures = run(args.passes, args.new_tokens, args.repeats, args.trials, args.threads)
    args.json.write_text(json.dumps(figures, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
