"""Progress reporting: a bar for people, JSON lines for programs (the darktable plugin).

The pipeline calls a `Progress` with (phase, frame, count, fraction); what happens with it
depends on who is watching. Each event is one JSON object per line:
{"phase": "align", "frame": 3, "count": 15, "fraction": 0.27}
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

ProgressCallback = Callable[..., None]


class JsonLines:
    """Writes each event as one JSON line to a stream and/or appends it to a file."""

    def __init__(self, stream: TextIO | None = sys.stdout, file: str | Path | None = None):
        self.stream = stream
        self.file = Path(file) if file else None

    def __call__(
        self,
        phase: str,
        frame: int | None = None,
        count: int | None = None,
        fraction: float = 0.0,
        **extra,
    ) -> None:
        event = {"phase": phase, "frame": frame, "count": count, "fraction": round(fraction, 4)}
        event.update(extra)
        line = json.dumps(event)  # ASCII: any file name survives, even one that is not UTF-8
        if self.stream is not None:
            print(line, file=self.stream, flush=True)
        if self.file is not None:
            with open(self.file, "a", encoding="utf-8") as f:
                f.write(line + "\n")


class Bar:
    """A one-line terminal progress bar on stderr."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30):
        self.stream = stream
        self.width = width
        self.start = time.monotonic()

    def __call__(
        self,
        phase: str,
        frame: int | None = None,
        count: int | None = None,
        fraction: float = 0.0,
        **extra,
    ) -> None:
        filled = int(round(fraction * self.width))
        what = f"{phase} {frame + 1}/{count}" if frame is not None and count else phase
        elapsed = time.monotonic() - self.start
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:5.1f}% "
            f"{what:<16} {elapsed:6.1f}s"
        )
        if phase == "done":
            self.stream.write("\n")
        self.stream.flush()


def silent(*args, **kwargs) -> None:
    pass


def choose(mode: str) -> ProgressCallback:
    """`mode`: 'auto' (a bar when stderr is a terminal), 'bar', 'json' or 'none'."""
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    if mode == "json":
        return JsonLines(sys.stdout)
    if mode == "bar":
        return Bar()
    if mode == "none":
        return silent
    raise ValueError(f"unknown progress mode {mode!r}")
