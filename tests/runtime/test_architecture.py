"""The runtime file's shape: its sections as docs/ARCHITECTURE.md lists them, a public API that exists,
and an authoring package that uses only that API."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs"))

from sections import sections  # noqa: E402

import onnxmeta_runtime as rt  # noqa: E402


def test_architecture_doc_lists_the_sections_in_order():
    table = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    documented = [name.replace("&nbsp;", "").strip() for name in re.findall(r"^\| ([^|]+?) \| +\d+ \|", table, re.M)]
    assert documented == [name for _, name, _ in sections()]


def test_every_public_name_exists_and_is_listed_once():
    assert len(set(rt.__all__)) == len(rt.__all__)
    for name in rt.__all__:
        assert hasattr(rt, name), name
    assert {"Runtime", "pipeline", "ONNXAutoModel", "ONNXAutoProcessor", "read_metadata", "KEY_MODEL_CONFIG",
            "FORMAT_VERSION", "iter_fields", "Session", "PROCESSORS", "TASKS"} <= set(rt.__all__)


def test_authoring_uses_only_public_runtime_names():
    used: set[str] = set()
    for path in (ROOT / "authoring").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "rt":
                used.add(node.attr)
            elif isinstance(node, ast.ImportFrom) and node.module == "onnxmeta_runtime":
                used.update(alias.name for alias in node.names)
    assert used - set(rt.__all__) - {"__version__"} == set()


def test_every_task_declares_its_contract():
    for name, task in rt.TASKS.items():
        assert task.name == name
        assert set(task.processors) <= set(rt.PROCESSORS), name
        options = [option.name for option in task.options]
        assert len(options) == len(set(options)), name
        # a task that models of several kinds run (speech recognition) picks a sibling class in variant()
        picks = task.variant.__func__ is not rt._Task.variant.__func__
        for runs in task.__subclasses__() if picks else [task]:
            for method in ("preprocess", "forward", "postprocess"):
                assert getattr(runs, method) is not getattr(rt._Task, method), (name, runs.__name__, method)
