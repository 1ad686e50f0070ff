"""What the bench scripts share: their command line (--repeats, --json, and a hidden --build: a script calls itself
with it to build its models in a fresh process) and a clock for the time spent inside onnxruntime."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Bytecode caches on, as users have them: every process a bench starts inherits this environment.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def optimum_python() -> Path:
    """The Optimum environment's Python (transformers 4.57), created on first use by the tests' helper."""
    sys.path[:0] = [str(ROOT / "tests" / "models"), str(ROOT / "runtime"), str(ROOT)]
    import helpers

    return helpers.optimum_python()


def main(doc: str, run: Callable[[int], dict[str, Any]], results: str, *, repeats: int,
         build: Callable[[], Any] | None = None, argv: list[str] | None = None) -> int:
    """Parse the shared options, build or measure, write the figures to --json (default bench/<results>)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name(results))
    if build is not None:
        parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if build is not None and args.build:
        build()
        return 0
    figures = run(args.repeats)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2))
    print(f"\nwrote {args.json}")
    return 0


def contender_command(contender: str, code: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``code`` for a contender: "optimum" in Optimum's environment (its own
    transformers 4.57), any other with this interpreter and the runtime file on the path; hub access off."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    if contender == "optimum":
        return [str(optimum_python()), "-c", code], env
    return [sys.executable, "-c", code], {**env, "PYTHONPATH": str(ROOT / "runtime")}


# The end of an in-process script: given `ours` (a Runtime), `contenders` (name -> a call over the inputs, "onnxmeta"
# among them) and `passes`, it wraps the runtime task's preprocess / forward / postprocess to split our time, warms
# every contender up, times interleaved passes and prints {"seconds", "outputs", "split"} as JSON.
IN_PROCESS_TIMING = """
steps = {"preprocess": 0.0, "forward": 0.0, "postprocess": 0.0}
for step in steps:
    def timed(*args, _original=getattr(ours._task, step), _step=step, **kwargs):
        start = time.perf_counter()
        try:
            return _original(*args, **kwargs)
        finally:
            steps[_step] += time.perf_counter() - start
    setattr(ours._task, step, timed)
for fn in contenders.values():
    fn()  # warm-up on the inputs themselves
seconds, outputs, split = {n: [] for n in contenders}, {}, []
for _ in range(passes):
    for name, fn in contenders.items():
        before = dict(steps)
        start = time.perf_counter()
        outputs[name] = fn()
        seconds[name].append(time.perf_counter() - start)
        if name == "onnxmeta":
            split.append({k: steps[k] - before[k] for k in steps})
print(json.dumps({"seconds": seconds, "outputs": outputs, "split": split}))
"""


class Timed:
    """Adds up the time spent inside onnxruntime's run calls (``methods``) of the sessions given, in ``seconds``."""

    def __init__(self, sessions: list[Any], methods: tuple[str, ...] = ("run", "run_with_iobinding")) -> None:
        self.seconds = 0.0
        for session in {id(s): s for s in sessions}.values():
            for method in methods:
                setattr(session, method, self._timed(getattr(session, method)))

    def _timed(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed
