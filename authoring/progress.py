"""Progress of long work (an export, a folder of files, the validation of a large file) on one line of stderr.

The command line turns the display on when stderr is a terminal (and -q is not given); everywhere else it is
off, and each step is only logged (INFO). A step shows a spinner, its name, the seconds it has run and, when
it counts something, "done/total"; the line is cleared when the step ends, and log records printed meanwhile
go above it (use ``handler()`` for the logging handler).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

logger = logging.getLogger("onnxmeta")

_FRAMES = "|/-\\"
_DELAY = 0.3  # work shorter than this never shows a line: no flicker on small files
_INTERVAL = 0.1


class _Display:
    """The line on a terminal stream, redrawn by one thread while a step runs."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.RLock()
        self.text = ""  # what the current step shows after the spinner; "" when no step runs
        self.drawn = False

    def clear(self) -> None:
        with self.lock:
            if self.drawn:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
                self.drawn = False

    def draw(self, frame: str) -> None:
        with self.lock:
            if self.text:
                width = shutil.get_terminal_size().columns - 3
                self.stream.write(f"\r\x1b[2K{frame} {self.text[:width]}")
                self.stream.flush()
                self.drawn = True


_display: _Display | None = None


def enable(stream: TextIO | None = None) -> bool:
    """Show progress on stream (default stderr) when it is a terminal; returns whether it is shown."""
    global _display
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    _display = _Display(stream) if isatty is not None and isatty() else None
    return _display is not None


def disable() -> None:
    """No progress display (the default): steps are only logged."""
    global _display
    _display = None


class Step:
    """A running step: ``count(done, total)`` updates what it shows."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = time.monotonic()
        self.counted = ""

    def count(self, done: int, total: int) -> None:
        """Show done/total after the step's name."""
        self.counted = f" {done}/{total}"

    def text(self) -> str:
        return f"{self.name}{self.counted} ({time.monotonic() - self.start:.0f} s)"


@contextlib.contextmanager
def step(name: str) -> Iterator[Step]:
    """Run a block as a named step: logged at INFO, shown on the terminal line while it lasts when enabled."""
    logger.info("%s...", name)
    current = Step(name)
    display = _display
    if display is None:
        yield current
        logger.debug("%s: %.1f s", name, time.monotonic() - current.start)
        return
    done = threading.Event()

    def spin() -> None:
        if done.wait(_DELAY):
            return
        for frame in itertools.cycle(_FRAMES):
            with display.lock:
                display.text = current.text()
                display.draw(frame)
            if done.wait(_INTERVAL):
                return

    thread = threading.Thread(target=spin, name="onnxmeta-progress", daemon=True)
    thread.start()
    try:
        yield current
    finally:
        done.set()
        thread.join()
        with display.lock:
            display.text = ""
            display.clear()
    logger.debug("%s: %.1f s", name, time.monotonic() - current.start)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes each record above the progress line, then redraws the line."""

    def emit(self, record: logging.LogRecord) -> None:
        display = _display
        if display is None or display.stream is not self.stream:
            super().emit(record)
            return
        with display.lock:
            display.clear()
            super().emit(record)
            display.draw(_FRAMES[0])


def handler(stream: TextIO | None = None) -> logging.Handler:
    """A logging handler for stream (default stderr) that keeps log lines and the progress line apart."""
    return _Handler(stream if stream is not None else sys.stderr)
