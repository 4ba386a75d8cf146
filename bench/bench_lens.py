"""Benchmark: `focusbridge lens set` on N copies of a real camera file vs exiftool once per file.

    .venv/bin/python bench/bench_lens.py [--count 500] [--file ../shared/data/camera-metadata/CanonRaw.cr2]

Methods, each on its own fresh copies in a temporary folder:
  focusbridge API   exif.lens.set_lens(): one exiftool process, read + grouped write + read-back,
                    undo store (hard links, verified deltas) included
  focusbridge CLI   `python -m exif lens set --preset ...` (adds Python start-up)
  exiftool/file     subprocess `exiftool -overwrite_original -n TAGS FILE`, once per file
  exiftool batch    one plain `exiftool -overwrite_original -n TAGS FILE...` (floor, no undo)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exif.lens import makernote_tags, preset, set_lens, standard_tags  # noqa: E402
from exif.tool import require_exiftool  # noqa: E402
from exif.undo import UndoStore  # noqa: E402

PRESET = 'canon-mp-e-65'


def copies(src: Path, folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    out = []
    for i in range(n):
        p = folder / f'IMG_{i:04d}{src.suffix}'
        shutil.copyfile(src, p)
        out.append(p)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--count', type=int, default=500)
    ap.add_argument(
        '--file',
        type=Path,
        default=REPO.parent / 'shared' / 'data' / 'camera-metadata' / 'CanonRaw.cr2',
    )
    ap.add_argument('--skip-cli', action='store_true')
    args = ap.parse_args()
    exe = require_exiftool()
    spec = preset(PRESET)
    tag_args = [
        f'-{t}={v}' for t, v in standard_tags(spec) + makernote_tags(spec) if t != 'Canon:LensModel'
    ]  # CR2 has no Canon:LensModel field
    ver = subprocess.run([exe, '-ver'], capture_output=True, text=True).stdout.strip()
    results = []
    with tempfile.TemporaryDirectory(prefix='fb-bench-lens-') as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, FOCUSBRIDGE_UNDO_DIR=str(tmp / 'undo-cli'))

        files = copies(args.file, tmp / 'api', args.count)
        t0 = time.perf_counter()
        rep = set_lens(files, spec, store=UndoStore(tmp / 'undo-api'))
        results.append(
            ('focusbridge lens set (API, 1 exiftool process, undo store)', time.perf_counter() - t0)
        )
        assert rep.ok, [r.error for r in rep.failed][:3]

        if not args.skip_cli:
            files = copies(args.file, tmp / 'cli', args.count)
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, '-m', 'exif', 'lens', 'set', '--preset', PRESET, *map(str, files)],
                cwd=REPO,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            results.append(
                ('focusbridge lens set (CLI incl. Python start-up)', time.perf_counter() - t0)
            )

        files = copies(args.file, tmp / 'each', args.count)
        t0 = time.perf_counter()
        for f in files:
            subprocess.run([exe, '-q', '-overwrite_original', '-n', *tag_args, str(f)], check=True)
        results.append(('exiftool once per file (subprocess loop)', time.perf_counter() - t0))

        files = copies(args.file, tmp / 'batch', args.count)
        t0 = time.perf_counter()
        subprocess.run(
            [exe, '-q', '-overwrite_original', '-n', *tag_args, *map(str, files)], check=True
        )
        results.append(
            ('plain exiftool, one call for all files (no undo, floor)', time.perf_counter() - t0)
        )

    per_file = dict(results)['exiftool once per file (subprocess loop)']
    print(
        f'lens set on {args.count} copies of {args.file.name} '
        f'({args.file.stat().st_size} bytes), exiftool {ver}, Python {platform.python_version()}, '
        f'{os.cpu_count()} CPUs'
    )
    print(f'{"method":62s} {"total s":>8s} {"ms/file":>8s} {"speed-up":>9s}')
    for name, secs in results:
        print(f'{name:62s} {secs:8.2f} {1000 * secs / args.count:8.2f} {per_file / secs:8.1f}x')
    api = results[0][1]
    print(f'ratio exiftool-per-file / focusbridge API = {per_file / api:.1f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
