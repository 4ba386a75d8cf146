"""Generated shoots for the bracket and batch tests: small frames whose capture times (and
other tags) are written by the real exiftool, in one exiftool run per shoot."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import tifffile
from synthetic import make_bracket, save_bracket

T0 = datetime(2024, 5, 1, 10, 0, 0)


def when(seconds: float) -> list[str]:
    """exiftool arguments that set the capture time to T0 + seconds, with sub-seconds."""
    t = T0 + timedelta(seconds=seconds)
    return [
        f"-DateTimeOriginal={t:%Y:%m:%d %H:%M:%S}",
        f"-SubSecTimeOriginal={t.microsecond // 10000:02d}",
    ]


def write_tags(jobs: dict[Path, list[str]]) -> None:
    """Write each file's tags (exiftool arguments) in place, all in one exiftool process."""
    tool = shutil.which("exiftool")
    assert tool, "exiftool is required (apt install libimage-exiftool-perl)"
    lines = []
    for path, args in jobs.items():
        lines += [*args, "-overwrite_original", "-m", str(path), "-execute"]
    with tempfile.NamedTemporaryFile("w", suffix=".args", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        done = subprocess.run(
            [tool, "-charset", "filename=utf8", "-@", f.name],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        Path(f.name).unlink()
    assert "error" not in done.stderr.lower(), done.stderr


def blank(path: Path, size: tuple[int, int] = (20, 30)) -> Path:
    """A tiny RGB TIFF (detection reads no pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.zeros((*size, 3), np.uint8), photometric="rgb")
    return path


def stack_shoot(
    folder: Path,
    counts=(4, 4, 4),
    size: tuple[int, int] = (200, 300),
    interval: float = 0.5,
    pause: float = 30.0,
) -> list[list[Path]]:
    """Real (synthetic) focus brackets, bracket i named `b<i>_000.tif`..., with capture times
    `interval` apart and `pause` between brackets. Returns the frames of each bracket."""
    brackets, tags, t = [], {}, 0.0
    for i, n in enumerate(counts):
        frames = save_bracket(make_bracket(n, size, seed=10 + i), folder, prefix=f"b{i}_")
        for f in frames:
            tags[f] = when(t)
            t += interval
        t += pause
        brackets.append(frames)
    write_tags(tags)
    return brackets
