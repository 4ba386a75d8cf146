"""File names that used to confuse the metadata commands.

* '%' is a format code in exiftool's -o and -tagsFromFile names (%d, %f, %e: parts of the file
  being written); exiftool has no escape for it;
* a `meta merge` output that is one of its own sources (by name, `..`, symlink or hard link);
* bytes that are not UTF-8 in a name, and line breaks: one line per file, never a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_camera_files
from test_exif_lens import REPO, store_files
from test_exif_merge import fresh_image, tags

pytestmark = pytest.mark.skipif(shutil.which('exiftool') is None, reason='needs exiftool')

PERCENT_NAMES = ['%d.jpg', '%e.jpg', '%f.jpg', '100%%.jpg']


def cli(*args, store: Path) -> subprocess.CompletedProcess:
    """`python -m exif ARGS`; arguments may be bytes (names that are not UTF-8)."""
    env = dict(os.environ, FOCUSBRIDGE_UNDO_DIR=str(store))
    return subprocess.run(
        [sys.executable, '-m', 'exif', *args], cwd=REPO, env=env, capture_output=True, timeout=120
    )


def text(b: bytes) -> str:
    out = b.decode('utf-8')
    assert 'Traceback' not in out and 'internal error' not in out, out
    return out


def tree(root: Path) -> set[str]:
    """Every path under ``root`` but the undo store."""
    return {
        str(p.relative_to(root)) for p in root.rglob('*') if 'undo' not in p.relative_to(root).parts
    }


def test_percent_in_names(test_data, tmp_path):
    folder = copy_camera_files(test_data, tmp_path / 'Serie %d', ['Canon.jpg', 'Sony.jpg'])
    for name in PERCENT_NAMES:
        shutil.copy(folder / 'Canon.jpg', folder / name)
    base = folder / 'shot.%e'
    shutil.copy(folder / 'Canon.jpg', base)
    shutil.copy(folder / 'Sony.jpg', folder / 'shot.tif')  # what 'shot.%e' expands to
    out = folder / 'o%d.tif'
    fresh_image(out)
    sources = [folder / n for n in PERCENT_NAMES] + [base]
    store = tmp_path / 'undo'
    files_before = tree(tmp_path)

    done = cli(
        'meta', 'merge', str(out), '--sources', *map(str, sources), '--base', str(base), store=store
    )
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path) == files_before  # no stray directory tree
    t = tags(out)
    assert t['IFD0:Make'] == 'Canon'  # from shot.%e, not shot.tif
    assert t['XMP-fbstack:SourceFiles'] == [s.name for s in sources]
    assert t['XMP-fbstack:MetadataBase'] == 'shot.%e'

    # lens set / undo take '%' names literally too
    lens_files = [folder / n for n in PERCENT_NAMES]
    before = {p: p.read_bytes() for p in lens_files}
    done = cli('lens', 'set', '--model', 'Test Lens', *map(str, lens_files), store=store)
    assert done.returncode == 0, done.stderr
    assert all(tags(p)['ExifIFD:LensModel'] == 'Test Lens' for p in lens_files)
    done = cli('lens', 'undo', *map(str, lens_files), store=store)
    assert done.returncode == 0, done.stderr
    assert all(p.read_bytes() == before[p] for p in lens_files)
    assert tree(tmp_path) == files_before


def test_merge_output_that_is_a_source(test_data, tmp_path):
    folder = copy_camera_files(
        test_data, tmp_path / 'Fotos', ['Canon.jpg', 'Sony.jpg', 'ExifTool.tif']
    )
    a, b, base = folder / 'Canon.jpg', folder / 'Sony.jpg', folder / 'ExifTool.tif'
    (tmp_path / 'sub').mkdir()
    link = tmp_path / 'link.tif'
    link.symlink_to(base)
    hard = tmp_path / 'hard.jpg'
    os.link(b, hard)
    before = {p: p.read_bytes() for p in (a, b, base)}
    for output, source in [
        (b, b),
        (tmp_path / 'sub' / '..' / 'Fotos' / 'Canon.jpg', a),
        (link, base),
        (hard, b),
    ]:
        done = cli(
            'meta',
            'merge',
            str(output),
            '--sources',
            str(a),
            str(b),
            '--base',
            str(base),
            store=tmp_path / 'undo',
        )
        err = text(done.stderr)
        assert done.returncode == 1
        assert err.splitlines() == [
            f'focusbridge: error: {output}: the output is also a metadata '
            f'source ({source}); not writing it'
        ], err
    assert all(p.read_bytes() == b for p, b in before.items())


def test_names_not_utf8_or_with_line_breaks(test_data, tmp_path):
    folder = copy_camera_files(test_data, tmp_path / 'Fotos', ['Canon.jpg', 'Sony.jpg'])
    good = folder / 'Canon.jpg'
    latin1 = os.fsencode(folder) + b'/caf\xe9.jpg'  # 'café' in Latin-1
    newline = folder / 'two\nlines.jpg'
    shutil.copy(good, os.fsdecode(latin1))
    shutil.copy(good, newline)
    shown = str(folder).encode() + b'/caf\\udce9.jpg'  # how it is printed
    before = {p: Path(os.fsdecode(p)).read_bytes() for p in (latin1, newline, good)}
    store = tmp_path / 'undo'

    done = cli('lens', 'set', '--model', 'Test Lens', latin1, newline, good, store=store)
    err = text(done.stderr).splitlines()
    assert done.returncode == 1
    assert err == [
        f'focusbridge: error: {os.fsdecode(shown)}: file name is not valid UTF-8, '
        'which exiftool cannot be given; rename the file',
        f'focusbridge: error: {folder}/two lines.jpg: file names and values with line '
        'breaks are not supported',
        '1 file(s) done, 2 failed',
    ], err
    assert Path(os.fsdecode(latin1)).read_bytes() == before[latin1]
    assert newline.read_bytes() == before[newline] and good.read_bytes() != before[good]

    done = cli('lens', 'show', latin1, good, store=store)
    assert done.returncode == 1 and b'caf' not in done.stdout  # the table has the good file
    assert text(done.stderr).splitlines() == [
        f'focusbridge: error: {os.fsdecode(shown)}: file name is not valid UTF-8, '
        'which exiftool cannot be given; rename the file'
    ]

    done = cli('lens', 'undo', latin1, good, store=store)
    assert done.returncode == 0, done.stderr
    assert text(done.stdout).splitlines() == [
        f'{os.fsdecode(shown)}: nothing to undo (no lens change recorded)',
        f'{good}: restored (1 change(s) undone)',
    ]
    assert good.read_bytes() == before[good] and store_files(store) == []

    out = folder / 'out.tif'
    fresh_image(out)
    for output, sources in [(out, [latin1, good]), (latin1, [good])]:
        done = cli('meta', 'merge', output, '--sources', *sources, store=store)
        err = text(done.stderr).splitlines()
        assert done.returncode == 1 and len(err) == 1, err
        assert 'caf\\udce9.jpg: file name is not valid UTF-8' in err[0]
