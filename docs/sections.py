"""Print the sections of runtime/onnxmeta_runtime.py with their line counts; with --update, write the counts
into docs/ARCHITECTURE.md's table (its rows, one per section in file order, are kept by a test)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "runtime" / "onnxmeta_runtime.py"
DOC = Path(__file__).resolve().parent / "ARCHITECTURE.md"
BANNER = "#" * 104


def sections(path: Path = RUNTIME) -> list[tuple[int, str, int]]:
    """(depth, name, lines) for each banner (depth 0) and sub-banner (depth 1), in file order."""
    lines = path.read_text(encoding="utf-8").split("\n")
    marks = []
    for i, line in enumerate(lines):
        if line == BANNER and i + 2 < len(lines) and lines[i + 1].startswith("# ") and lines[i + 2] == BANNER:
            marks.append((i, lines[i + 1][2:], 0))
        elif line.startswith("# --- "):
            marks.append((i, line[6:].rstrip("- "), 1))
    ends = [i for i, _, _ in marks[1:]] + [len(lines)]
    return [(depth, name, end - start) for (start, name, depth), end in zip(marks, ends)]


def update(doc: Path = DOC) -> None:
    """Write the current line counts into the doc's table rows, in order."""
    counts = iter([count for _, _, count in sections()])
    row = re.compile(r"^(\| (?:&nbsp;)*[^|]+? \| +)\d+( \|)", re.M)
    doc.write_text(row.sub(lambda m: f"{m[1]}{next(counts)}{m[2]}", doc.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    if "--update" in sys.argv:
        update()
    for depth, name, count in sections():
        print(f"{'  ' * depth}{name:<{40 - 2 * depth}}{count:>6}")
