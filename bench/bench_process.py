"""Whole-process benchmark of the embed command: what a user waits for, process start and imports included.

    python bench/bench_process.py [--repeats 5] [--json bench/results-process.json]

Times, each in a fresh process, `python -m authoring embed model.onnx <folder> --include-vocab --output X`
on a random-weight BERT-base classifier (438 MB, built once and cached under ~/.cache/onnxmeta/bench/)
against `python -c "import onnx; m = onnx.load(a); onnx.save(m, b)"`, the onnx package's way to rewrite a
file. The folder has tokenizer.json and config.json (bert-base-uncased's from /work/shared/data when
present, else a trained WordPiece tokenizer), as a local model folder has them.

Bytecode caches are on, as users have them: PYTHONDONTWRITEBYTECODE is unset and each command runs once,
untimed, to write its .pyc files and bring the model into the page cache. Runs alternate between the
commands; the medians of wall time and of peak RSS (GNU time's %M) are reported, and the time of
`python -c "import authoring.cli"` shows how much of the command is process start and imports. Always
exits 0: this is a benchmark, not a test.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_cli

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "onnxmeta" / "bench" / "bert-base"
BERT = Path("/work/shared/data/bert-base-uncased")
TIME = "/usr/bin/time"  # GNU time: -f %M prints the peak RSS in KB


def build() -> None:
    """Build the cached folder: config.json, tokenizer files and model.onnx (plain, no metadata). Run in a
    subprocess: it peaks at a few GB."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    sys.path[:0] = [str(ROOT / "tests" / "models")]
    from helpers import export_onnx, trained_wordpiece

    tmp = CACHE.with_name(CACHE.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    if BERT.is_dir():
        AutoTokenizer.from_pretrained(BERT).save_pretrained(tmp)
    else:
        trained_wordpiece(tmp)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()  # bert-base: 768 hidden, 12 layers, 30522 words
    model.config.architectures = ["BertForSequenceClassification"]
    model.config.save_pretrained(tmp)
    export_onnx(model, tmp / "model.onnx", ["input_ids", "attention_mask", "token_type_ids"])
    tmp.rename(CACHE)


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process, which must succeed.

    The child runs under /usr/bin/time, a small process: on Linux a child's ru_maxrss starts from its
    parent's RSS at the fork, which would charge this Python to the command.
    """
    with tempfile.NamedTemporaryFile("r") as rss, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        done = subprocess.run([TIME, "-f", "%M", "-o", rss.name, *argv], env=env, stdout=subprocess.DEVNULL,
                              stderr=stderr, check=False)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"{' '.join(argv)} failed:\n{stderr.read().decode(errors='replace')[-2000:]}")
        return seconds, int(rss.read().split()[-1]) / 1024  # KB


def run(repeats: int) -> dict[str, Any]:
    """Build if needed, time both commands alternately in fresh processes, print; the figures as a dict."""
    folder = CACHE
    if not (folder / "model.onnx").is_file():
        subprocess.run([sys.executable, __file__, "--build"], check=True)
    model, out = folder / "model.onnx", folder / ".out.onnx"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "runtime"), str(ROOT)])  # this checkout, installed or not
    commands = {
        "embed": [sys.executable, "-m", "authoring", "embed", str(model), str(folder), "--include-vocab", "--output", str(out)],
        "onnx_load_save": [sys.executable, "-c", "import onnx, sys; m = onnx.load(sys.argv[1]); onnx.save(m, sys.argv[2])",
                           str(model), str(out)],
        "imports": [sys.executable, "-c", "import authoring.cli"],
        "python": [sys.executable, "-c", "pass"],
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    try:
        for name, argv in commands.items():  # .pyc files written, model in the page cache
            _run(argv, env)
        for _ in range(repeats):
            for name, argv in commands.items():
                runs[name].append(_run(argv, env))
                out.unlink(missing_ok=True)
    finally:
        out.unlink(missing_ok=True)
    results = {name: {"seconds": statistics.median(r[0] for r in rs), "peak_rss_mb": statistics.median(r[1] for r in rs),
                      "runs": len(rs)} for name, rs in runs.items()}
    embed, peer = results["embed"], results["onnx_load_save"]
    ratios = {
        "embed_process_vs_onnx_process": embed["seconds"] / peer["seconds"],
        "embed_process_rss_mb": embed["peak_rss_mb"],
        "onnx_process_rss_mb": peer["peak_rss_mb"],
        "embed_process_imports_share": results["imports"]["seconds"] / embed["seconds"],
    }
    print(f"model: {model} ({model.stat().st_size / 2**20:.0f} MB), {repeats} runs each, medians")
    print(f"{'command':<18}{'wall s':>9}{'peak RSS MB':>13}")
    for name, r in results.items():
        print(f"{name:<18}{r['seconds']:>9.3f}{r['peak_rss_mb']:>13.1f}")
    print(f"\nthe embed command takes {ratios['embed_process_vs_onnx_process']:.2f}x an onnx.load + onnx.save process "
          f"(target <= 0.5x), peak RSS {embed['peak_rss_mb']:.0f} MB (target < 150 MB) vs {peer['peak_rss_mb']:.0f} MB; "
          f"process start and imports are {ratios['embed_process_imports_share']:.0%} of it")
    return {"model": str(model), "model_bytes": model.stat().st_size, "results": results, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    return bench_cli.main(__doc__, run, "results-process.json", repeats=5, build=build, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
