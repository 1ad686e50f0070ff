"""Packaging: a wheel built from the sources installs a working `onnxmeta` command, the version lives in one
place, the extras hold what their users import, and a base install without transformers embeds every folder
that has tokenizer.json while naming the extra for the others; transformers 4.57 (Optimum's) reads the rest."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT, for_transformers_4, optimum_python, trained_bpe, trained_wordpiece

import onnxmeta_runtime as rt

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# What a fresh clone's build reads: the project file, the README (its long description) and the two parts.
BUILD_SOURCES = ("pyproject.toml", "README.md", "runtime", "authoring")


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the sources (no build/ or egg-info left in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "onnxmeta"
    source.mkdir()
    for name in BUILD_SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    # no build isolation: setuptools from this environment, so the test needs no index
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
          str(source)])
    [built] = (root / "dist").glob("onnxmeta-*.whl")
    return built


@pytest.fixture(scope="session")
def installed(wheel, tmp_path_factory) -> Path:
    """A venv with the wheel installed (not editable) and this environment's packages visible: the venv's bin.

    Visible through a .pth file naming this interpreter's site-packages, not --system-site-packages, which shows the
    *base* interpreter's packages: the tests run from a venv (as CI runs them), whose packages the base lacks."""
    import site

    venv = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(purelib) / "test-environment.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)])
    return venv / "bin"


def test_wheel_holds_the_runtime_module_and_the_typed_authoring_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {n for n in names if not n.startswith("onnxmeta-")}
    expected = {"onnxmeta_runtime.py", "authoring/py.typed"} | {
        f"authoring/{p.name}" for p in (ROOT / "authoring").glob("*.py")}
    assert sources == expected
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"\nVersion: {rt.__version__}\n" in metadata
    assert "onnxmeta = authoring.cli:main" in zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    base = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [line for line in base if "transformers" in line or "torch" in line], base


def test_installed_wheel_gives_a_working_onnxmeta_command(installed, tmp_path):
    """pip install . (not -e): the console script, the version, the demo, and both modules from site-packages."""
    version = f"{rt.__version__} (metadata format {rt.FORMAT_VERSION})"
    assert _run([str(installed / "onnxmeta"), "--version"]).stdout.strip() == f"onnxmeta {version}"
    demo = _run([str(installed / "onnxmeta"), "demo", "--output-dir", str(tmp_path / "demo")], cwd=tmp_path)
    assert "-> POSITIVE" in demo.stdout and "-> NEGATIVE" in demo.stdout
    assert "python -m onnxmeta_runtime" in demo.stdout  # a hint that works from an installed wheel
    python = str(installed / "python")
    where = _run([python, "-c", "import authoring, onnxmeta_runtime; print(authoring.__file__); "
                                "print(onnxmeta_runtime.__file__); print(authoring.__version__)"], cwd=tmp_path)
    authoring_file, runtime_file, authoring_version = where.stdout.split()
    prefix = str(installed.parent.resolve())
    assert authoring_file.startswith(prefix) and runtime_file.startswith(prefix), where.stdout
    assert authoring_version == rt.__version__
    out = _run([python, "-m", "onnxmeta_runtime", str(tmp_path / "demo" / "sentiment.onnx"), "what a wonderful day"],
               cwd=tmp_path)
    assert json.loads(out.stdout)[0]["label"] == "POSITIVE"
    assert _run([python, "-m", "onnxmeta_runtime", "--version"]).stdout.strip() == f"onnxmeta_runtime {version}"


def test_typing_of_the_installed_packages(installed, tmp_path):
    """authoring is typed (py.typed); the single-file runtime module cannot carry the marker (PEP 561 marks
    packages), so a type checker reads it when told to follow it, as the README says."""
    pytest.importorskip("mypy")
    user = tmp_path / "user.py"
    user.write_text("import authoring\nimport onnxmeta_runtime\n"
                    "level: int = authoring.EMBEDDING_LEVELS\n"
                    "runtime: int = onnxmeta_runtime.Runtime('m.onnx')\n")
    mypy = [sys.executable, "-m", "mypy", "--python-executable", str(installed / "python"), "--no-incremental",
            "--cache-dir", os.devnull, str(user)]
    plain = subprocess.run(mypy, capture_output=True, text=True, cwd=tmp_path).stdout
    assert 'Incompatible types in assignment (expression has type "dict[str, EmbeddingLevel]"' in plain, plain
    assert 'Skipping analyzing "onnxmeta_runtime": module is installed, but missing library stubs or py.typed' in plain
    followed = subprocess.run([*mypy, "--follow-untyped-imports"], capture_output=True, text=True, cwd=tmp_path).stdout
    assert 'expression has type "Runtime", variable has type "int"' in followed, followed
    assert "Skipping analyzing" not in followed


def test_version_in_one_place():
    """The runtime file's __version__ is the distribution's (setuptools reads it), authoring's and the CLI's."""
    import authoring
    from authoring.cli import main

    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "onnxmeta_runtime.__version__"}
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]
    assert authoring.__version__ == rt.__version__
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"], prog="onnxmeta")
    assert exit_info.value.code == 0


def _declared(*extras: str) -> set[str]:
    project = PYPROJECT["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {_requirement_name(r) for r in requirements}


def test_extras():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"transformers", "export", "vision", "audio", "test"} <= set(extras)
    assert _declared() == {"numpy", "onnxruntime", "tokenizers", "onnx", "huggingface-hub"}
    assert "optimum-onnx[onnxruntime]" in extras["export"]
    assert _declared("vision") - _declared() == {"pillow"} and _declared("audio") - _declared() == {"soundfile"}
    # [export]'s Optimum pins transformers<4.58: the transformers extra must allow it (the tests need 5)
    [spec] = [r for r in extras["transformers"] if _requirement_name(r) == "transformers"]
    assert spec.replace(" ", "") == "transformers>=4.57"


# Imported by tests but installed elsewhere on purpose: Optimum in its own venv (it pins transformers<4.58),
# torchaudio with pip --target (no release for torch 2.13); google is protobuf's namespace (onnx's dependency).
SEPARATE = {"optimum", "torchaudio", "google"}


def _third_party_imports(files: list[Path]) -> set[str]:
    local = {p.stem for folder in ("tests", "docs", "examples", "tools") for p in (ROOT / folder).rglob("*.py")}
    local |= {"authoring", "onnxmeta_runtime", "tests"}
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name not in local}


def test_test_extra_holds_what_the_tests_import():
    """Every third-party module the tests and examples import comes from a package the base install or [test]
    names (not through another package's dependencies), except those installed apart on purpose."""
    files = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "tools").rglob("*.py"), *(ROOT / "examples").rglob("*.py"),
             ROOT / "vendor_check" / "check.py"]
    distributions = importlib.metadata.packages_distributions()
    declared = _declared("test")
    missing = {}
    for module in sorted(_third_party_imports(files) - SEPARATE):
        names = {_requirement_name(d) for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported by the tests, not in [test] or the base install: {missing}"


def test_readme_first_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines()[:2]]
    assert commands == ["pip install -e . && python -m authoring demo", "pip install -e '.[test]' && python -m pytest"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert all(command in ci for command in commands), commands


# The base install without transformers: a subprocess in which it cannot be imported and has no package metadata.
WITHOUT_TRANSFORMERS = """
import importlib.metadata, sys
sys.modules["transformers"] = None
_version = importlib.metadata.version
def version(name):
    if name == "transformers":
        raise importlib.metadata.PackageNotFoundError(name)
    return _version(name)
importlib.metadata.version = version
sys.path[:0] = [sys.argv[1] + "/runtime", sys.argv[1]]
from authoring.cli import main
sys.exit(main(sys.argv[2:], prog="onnxmeta"))
"""


def _without_transformers(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_TRANSFORMERS, str(ROOT), *args], capture_output=True,
                          text=True, cwd=cwd)


def _slow_tokenizer_folder(folder: Path, build, architecture: str) -> Path:
    """A model folder whose tokenizer has no tokenizer.json: vocab.txt, or vocab.json + merges.txt, written from the
    tokenizer.json that transformers 5 saves alone."""
    build(folder)
    model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    (folder / "tokenizer.json").unlink()
    vocab = sorted(model["vocab"], key=model["vocab"].get)
    if model["type"] == "WordPiece":
        (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    else:
        (folder / "vocab.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture], "model_type": "bert",
                                                    "id2label": {"0": "NO", "1": "YES"}}))
    return folder


def test_base_install_without_transformers(tmp_path):
    """The README's first command needs no transformers; a folder with tokenizer.json embeds and records the
    tables' transformers release; one without names the extra instead of falling back to the minimal level."""
    demo = _without_transformers("demo", "--output-dir", str(tmp_path / "demo"), cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    from authoring._tokenizer_classes import TRANSFORMERS_VERSION

    assert rt.read_metadata(tmp_path / "demo" / "sentiment.onnx")[rt.KEY_TRANSFORMERS_VERSION] == TRANSFORMERS_VERSION
    folder = _slow_tokenizer_folder(tmp_path / "slow", trained_wordpiece, "BertForSequenceClassification")
    out = _without_transformers("embed", str(tmp_path / "demo" / "model.onnx"), str(folder), "-o", str(tmp_path / "x.onnx"),
                                cwd=tmp_path)
    assert out.returncode == 1 and not (tmp_path / "x.onnx").exists()
    assert out.stderr.strip() == (f"error: the tokenizer in {folder} can only be read by transformers (no tokenizer.json, "
                                  "or settings the files alone do not resolve); pip install 'onnxmeta[transformers]'")


# Run by the Optimum venv's python (transformers 4.57): discover each folder, tokenize with the runtime.
DISCOVER = """
import json, sys
sys.path[:0] = [sys.argv[1] + "/runtime", sys.argv[1]]
import transformers
import onnxmeta_runtime as rt
from authoring import discover
out = {}
for folder in sys.argv[3:]:
    metadata = discover(folder, level="full")
    ids = [e.ids for e in rt.load_tokenizer(metadata).encode(json.loads(sys.argv[2]))]
    out[folder] = {"config": metadata[rt.KEY_TOKENIZER_CONFIG], "ids": ids,
                   "version": metadata[rt.KEY_TRANSFORMERS_VERSION], "transformers": transformers.__version__}
print(json.dumps(out))
"""
TEXTS = ["Hello world, it's me!", "The quick brown fox jumped over the lazy dog.", "unbelievable tokenization"]


@pytest.mark.optimum
def test_transformers_4_reads_tokenizers_without_tokenizer_json(tmp_path):
    """[transformers] allows 4.57 so that it installs beside [export]: discovery's transformers path works there,
    and the runtime tokenizes as with transformers 5."""
    folders = [for_transformers_4(_slow_tokenizer_folder(tmp_path / "wordpiece", trained_wordpiece, "BertModel")),
               for_transformers_4(_slow_tokenizer_folder(tmp_path / "bpe", trained_bpe, "RobertaModel"))]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}

    def run(python: str) -> dict:
        out = _run([python, "-c", DISCOVER, str(ROOT), json.dumps(TEXTS), *map(str, folders)], cwd=tmp_path, env=env)
        return json.loads(out.stdout)

    old, new = run(str(optimum_python())), run(sys.executable)
    for folder in map(str, folders):
        assert old[folder]["transformers"].startswith("4.57") and old[folder]["version"] == old[folder]["transformers"]
        assert old[folder]["ids"] == new[folder]["ids"]
        assert "added_tokens_decoder" not in old[folder]["config"]  # the added tokens are in tokenizer.json
        assert {"tokenizer_class", "model_input_names", "padding_side", "model_max_length"} <= set(old[folder]["config"])
