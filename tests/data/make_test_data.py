"""Regenerate the real-data part of tests/data from the full data set (../shared/data).

    .venv/bin/python tests/data/make_test_data.py [SOURCE]     # SOURCE: <repo>/../shared/data

Only the test suite's share of the data lives in the repository, made small here:

- camera-metadata/*, raw/canon_550d_magiclantern_colorchart.dng, raw/broken/* (but see below),
  brackets/depthmap10/reference/{3d.jpg,depth_raw.png} and the licence files: copied byte
  for byte.
- raw/broken/mde_issue247-*.nef: only the first 64 KiB. LibRaw opens the trimmed file the
  same way (NIKON D70s, 2000x3008 raw) and fails the same way when decoding (LibRawIOError,
  it runs out of data); checked below with rawpy for every file.
- brackets/pcb7/*.jpg (expected.jpg included) to 1024x768 and brackets/depthmap10/*.JPG to
  512x384: cv2.resize INTER_AREA, JPEG quality 80 (that of the pcb7 originals), then the
  original's metadata copied back with `exiftool -TagsFromFile SRC -all:all`.
- ring6 is not copied: the tests read pybridge/sample/ring6, byte-identical to
  brackets/ring6 (checked below).

The output is deterministic for a given OpenCV and exiftool version.
"""

from __future__ import annotations

import filecmp
import io
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
JPEG_QUALITY = 80  # the quality of the pcb7 originals
TRIM_BYTES = 64 * 1024
TRIMMED = [f'mde_issue247-{i}.nef' for i in range(1, 5)]
DOWNSCALE = {  # set: (glob, (width, height))
    'pcb7': ('*.jpg', (1024, 768)),
    'depthmap10': ('pcb_*.JPG', (512, 384)),
}
REFERENCE = ['3d.jpg', 'depth_raw.png']  # depthmap10/reference: used as they are
GENERATED = [
    'camera-metadata',
    'raw',
    'brackets',
]  # cmyk.jpg, README.md, LICENSE.file-type are kept


def copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(0o644)


def downscale(src: Path, dst: Path, size: tuple[int, int]) -> None:
    img = cv2.imdecode(np.fromfile(src, np.uint8), cv2.IMREAD_COLOR)
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode('.jpg', small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, src
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buf.tobytes())
    done = subprocess.run(
        [
            'exiftool',
            '-q',
            '-q',
            '-overwrite_original',
            '-TagsFromFile',
            str(src),
            '-all:all',
            str(dst),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    dst.chmod(0o644)


def libraw_behaviour(data: bytes):
    """('open-ok', raw size, error at decode) or ('open-fail', error) or ('decoded', size)."""
    import rawpy

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            size = (raw.sizes.raw_width, raw.sizes.raw_height)
            try:
                raw.postprocess()
            except Exception as exc:  # noqa: BLE001 - the class is what is compared
                return 'open-ok', size, type(exc).__name__
            return 'decoded', size
    except Exception as exc:  # noqa: BLE001
        return 'open-fail', type(exc).__name__


def trim(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    short = data[:TRIM_BYTES]
    before, after = libraw_behaviour(data), libraw_behaviour(short)
    assert before == after and before[0] == 'open-ok', (src.name, before, after)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(short)
    dst.chmod(0o644)


def main(source: Path) -> None:
    if not (source / 'README.md').is_file():
        sys.exit(f'no data set at {source}')
    for name in GENERATED:
        shutil.rmtree(HERE / name, ignore_errors=True)

    for src in sorted((source / 'camera-metadata').iterdir()):
        copy(src, HERE / 'camera-metadata' / src.name)

    for name in ('canon_550d_magiclantern_colorchart.dng', 'LICENSE.tinydng'):
        copy(source / 'raw' / name, HERE / 'raw' / name)
    for src in sorted((source / 'raw' / 'broken').iterdir()):
        (trim if src.name in TRIMMED else copy)(src, HERE / 'raw' / 'broken' / src.name)

    for set_, (pattern, size) in DOWNSCALE.items():
        folder = source / 'brackets' / set_
        for src in sorted(folder.glob(pattern)):
            downscale(src, HERE / 'brackets' / set_ / src.name, size)
        copy(folder / 'LICENSE.md', HERE / 'brackets' / set_ / 'LICENSE.md')
    for name in REFERENCE:
        copy(
            source / 'brackets' / 'depthmap10' / 'reference' / name,
            HERE / 'brackets' / 'depthmap10' / 'reference' / name,
        )

    ring6, sample = source / 'brackets' / 'ring6', REPO / 'pybridge' / 'sample' / 'ring6'
    names = sorted(p.name for p in ring6.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(ring6, sample, names, shallow=False)
    assert not mismatch and not errors, f'pybridge/sample/ring6 differs: {mismatch + errors}'

    total = sum(p.stat().st_size for p in HERE.rglob('*') if p.is_file())
    print(f'{HERE}: {total / 2**20:.2f} MiB')


if __name__ == '__main__':
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / 'shared' / 'data')
