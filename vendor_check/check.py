"""Prove that ``runtime/onnxmeta_runtime.py`` works when vendored alone.

Builds the demo model (or takes ``--model``), prepares a clean virtual environment that holds only
numpy, onnxruntime and tokenizers (same versions as this interpreter; cached and reused), copies the
runtime file and the model into an empty temporary folder and runs them there in isolated mode,
checking that transformers, torch, onnx and the authoring package cannot be imported.

Usage: ``python vendor_check/check.py [--model PATH] [--venv DIR] [--fresh]``. Exits 0 on success.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNTIME = REPO / "runtime" / "onnxmeta_runtime.py"
PACKAGES = ("numpy", "onnxruntime", "tokenizers")
DEFAULT_VENV = Path.home() / ".cache" / "onnxmeta" / "vendor-venv"

# Runs inside the clean venv with cwd = the vendor folder; argv: vendor folder, model file name.
VENDORED_CHECK = """
import importlib.util, json, subprocess, sys
from pathlib import Path
folder, model = Path(sys.argv[1]).resolve(), sys.argv[2]
for name in ("transformers", "torch", "onnx", "authoring"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable from the clean venv"
import numpy
assert Path(numpy.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), numpy.__file__
sys.path.insert(0, str(folder))
import onnxmeta_runtime
assert Path(onnxmeta_runtime.__file__).resolve().parent == folder, onnxmeta_runtime.__file__
task = onnxmeta_runtime.read_metadata(model).get("hf_pipeline_task")
assert task == "text-classification", f"hf_pipeline_task is {task!r}"
out = onnxmeta_runtime.Runtime(model)(["I love this movie!", "This was a terrible waste of time."])
assert [r["label"] for r in out] == ["POSITIVE", "NEGATIVE"], out
cli = subprocess.run([sys.executable, "-I", "onnxmeta_runtime.py", model, "I love this movie!"],
                     capture_output=True, text=True, check=True)
assert json.loads(cli.stdout)[0]["label"] == "POSITIVE", cli.stdout
print(f"  api: {out}")
print(f"  cli: {json.loads(cli.stdout)}")
"""


class CheckError(Exception):
    """A step of the check failed; the message says which and why."""


def run(cmd: list[str], step: str, cwd: Path | None = None) -> str:
    """Run ``cmd`` and return its stdout, or raise CheckError with its output."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckError(f"{step} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def build_demo(out_dir: Path) -> Path:
    """Build the demo model with the current interpreter and return its path."""
    run([sys.executable, "-m", "authoring", "demo", "--output-dir", str(out_dir)], "building the demo model", cwd=REPO)
    return out_dir / "sentiment.onnx"


def wanted_versions() -> dict[str, str]:
    """The versions of the runtime dependencies installed in the current interpreter."""
    return {name: importlib.metadata.version(name) for name in PACKAGES}


def venv_python(venv_dir: Path) -> Path:
    """The interpreter of the venv at ``venv_dir``."""
    return venv_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def installed_versions(python: Path) -> dict[str, str]:
    """The versions of PACKAGES in the venv (missing ones left out)."""
    code = (
        "import importlib.metadata as m, json\n"
        "v = {}\n"
        f"for n in {PACKAGES!r}:\n"
        "    try: v[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(v))"
    )
    return json.loads(run([str(python), "-I", "-c", code], "reading the venv's packages"))


def prepare_venv(venv_dir: Path, fresh: bool) -> tuple[Path, str]:
    """Create (or reuse) a clean venv holding exactly the wanted versions; return its python and what was done."""
    python, wanted = venv_python(venv_dir), wanted_versions()
    if fresh or not python.exists():
        venv.create(venv_dir, clear=True, with_pip=True, system_site_packages=False)
    elif installed_versions(python) == wanted:
        return python, "reused"
    pins = [f"{name}=={version}" for name, version in wanted.items()]
    run([str(python), "-I", "-m", "pip", "install", "--disable-pip-version-check", "-q", *pins], "pip install")
    if installed_versions(python) != wanted:
        raise CheckError(f"venv packages {installed_versions(python)} != wanted {wanted}")
    return python, "installed " + " ".join(pins)


def check_vendored(python: Path, model: Path) -> str:
    """Copy the runtime file and the model into an empty folder and run the checks there."""
    with tempfile.TemporaryDirectory(prefix="onnxmeta-vendored-") as tmp:
        folder = Path(tmp)
        shutil.copy2(RUNTIME, folder)
        shutil.copy2(model, folder)
        cmd = [str(python), "-I", "-c", VENDORED_CHECK, str(folder), model.name]
        return run(cmd, "the vendored runtime check", cwd=folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="self-contained model to use (default: build the demo)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"clean venv folder (default: {DEFAULT_VENV})")
    parser.add_argument("--fresh", action="store_true", help="recreate the venv")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="onnxmeta-demo-") as build_dir:
            model = args.model.resolve() if args.model else build_demo(Path(build_dir))
            if not model.is_file():
                raise CheckError(f"no model at {model}")
            print(f"model:   {model}")
            python, action = prepare_venv(args.venv.expanduser(), args.fresh)
            print(f"venv:    {args.venv.expanduser()} ({action})")
            print(f"vendored {RUNTIME.name} alone; no transformers/torch/onnx/authoring:")
            print(check_vendored(python, model), end="")
    except CheckError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    print(f"OK: the vendored runtime works alone ({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
