"""The command line every bench script shares: --repeats, --json, and a hidden --build (the script calls itself with
it to build its models in a fresh process)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
