"""Bad input to `lens set|show|undo` and `meta show`: one line naming the option or the file,
exit status 1, nothing written; and what the commands print around it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_camera_files
from test_exif_lens import REPO, run_cli, sha, store_files, tags

pytestmark = pytest.mark.skipif(
    shutil.which('exiftool') is None or sys.platform != 'linux', reason='needs exiftool, Linux'
)

BAD_OPTIONS = [
    (['--model', 'X', '--aperture', '-1'], '--aperture -1: '),
    (['--aperture', '0'], '--aperture 0: '),
    (['--aperture', '1e-9'], '--aperture 1e-9: '),
    (['--aperture', 'inf'], '--aperture inf: '),
    (['--focal-length', '1e308'], '--focal-length 1e308: '),
    (['--focal-length', '-5'], '--focal-length -5: '),
    (['--focal-length', 'nan'], '--focal-length nan: '),
    (['--lens-info', '-5'], '--lens-info -5: '),
    (['--lens-info', '100 2.8 nan'], '--lens-info 100 2.8 nan: '),
    (['--lens-info', '100 0.01'], '--lens-info 100 0.01: '),
    (['--lens-info', '55 18 2.8 4'], '--lens-info 55 18 2.8 4: '),
    (['--canon-lens-type', '99999999999'], '--canon-lens-type 99999999999: '),
    (['--canon-lens-type', '1.5'], '--canon-lens-type 1.5: '),
]


@pytest.fixture()
def photos(test_data, tmp_path) -> Path:
    return copy_camera_files(test_data, tmp_path / 'Fotos', ['Canon.jpg', 'Nikon.jpg'])


def test_bad_values_are_refused_before_anything_is_written(photos, tmp_path):
    files = sorted(photos.iterdir())
    before = [sha(p) for p in files]
    store = tmp_path / 'undo'
    for options, start in BAD_OPTIONS:
        done = run_cli('lens', 'set', *options, *map(str, files), store=store)
        assert done.returncode == 1, (options, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith('focusbridge: error: ' + start), lines
        assert done.stdout == ''
        assert [sha(p) for p in files] == before, options
    assert store_files(store) == []


def test_text_values_are_written_and_compared_as_text(photos, tmp_path):
    files = sorted(photos.iterdir())
    done = run_cli(
        'lens', 'set', '--serial', 'inf', '--model', 'NaN', '--make', '1e3', *map(str, files),
        store=tmp_path / 'undo',
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for p in files:
        t = tags(p, 'ExifIFD:LensSerialNumber', 'ExifIFD:LensModel')
        assert (t['ExifIFD:LensSerialNumber'], t['ExifIFD:LensModel']) == ('inf', 'NaN')


def test_not_regular_files_are_named_as_such(photos, tmp_path):
    fifo = tmp_path / 'pipe.jpg'
    os.mkfifo(fifo)
    folder = tmp_path / 'folder.jpg'
    folder.mkdir()
    missing = tmp_path / 'missing.jpg'
    expected = {
        '/dev/null': 'not a regular file (a device)',
        str(fifo): 'not a regular file (a named pipe)',
        str(folder): 'is a directory',
        str(missing): 'no such file',
    }
    store = tmp_path / 'undo'
    for command in (
        ['lens', 'set', '--model', 'X'],
        ['lens', 'show'],
        ['meta', 'show'],
        ['lens', 'undo'],
    ):
        done = run_cli(*command, *expected, store=store)
        assert done.returncode == 1, command
        lines = done.stderr.splitlines()
        for name, problem in expected.items():
            assert f'focusbridge: error: {name}: {problem}' in lines, (command, lines)


def test_show_reports_bad_files_on_stderr(photos, tmp_path):
    text = photos / 'notes.jpg'
    text.write_text('not a photo')
    odd = photos / 'odd\tname\x1b[31m.jpg'
    shutil.copy(photos / 'Canon.jpg', odd)
    broken = photos / 'line\nbreak.jpg'
    shutil.copy(photos / 'Canon.jpg', broken)
    for command in ('lens', 'meta'):
        done = run_cli(command, 'show', str(text), str(odd), str(broken), store=tmp_path / 'u')
        assert done.returncode == 1
        err = done.stderr.splitlines()
        assert err[0] == f'focusbridge: error: {text}: not an image (exiftool reads it as TXT)'
        assert err[1].startswith('focusbridge: error: ') and 'line breaks' in err[1]
        assert len(err) == 2, err
        assert 'notes.jpg' not in done.stdout and 'error' not in done.stdout
        row = next(ln for ln in done.stdout.splitlines() if 'odd' in ln)
        assert row.startswith(str(odd).replace('\t', '\\t').replace('\x1b', '\\x1b'))
        assert '\x1b' not in done.stdout


def test_messages(photos, tmp_path):
    nikon, canon = photos / 'Nikon.jpg', photos / 'Canon.jpg'
    store = tmp_path / 'undo'
    # a Nikon file has no Canon maker-note fields to report
    done = run_cli('lens', 'set', '--preset', 'canon-mp-e-65', str(nikon), str(canon), store=store)
    assert done.returncode == 0, done.stderr
    nikon_part, canon_part = done.stdout.split(f'{canon}:')
    assert 'not writable' not in nikon_part
    assert 'not writable' in canon_part and 'Canon:LensModel' in canon_part
    # no exiftool: no option lens does not have
    env = dict(os.environ, FOCUSBRIDGE_EXIFTOOL=str(tmp_path / 'none'))
    done = subprocess.run(
        [sys.executable, '-m', 'exif', 'lens', 'set', '--model', 'X', str(nikon)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith('focusbridge: error: exiftool not found')
    assert '--no-metadata' not in done.stderr and len(done.stderr.splitlines()) == 1
    # an undo store that cannot be created: say so, and where
    blocker = tmp_path / 'a file'
    blocker.write_text('')
    before = sha(nikon)
    done = run_cli('lens', 'set', '--model', 'X', str(nikon), store=blocker / 'store')
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f'focusbridge: error: {blocker / "store"}: undo store ')
    assert sha(nikon) == before


def test_closed_output_pipe_is_quiet(photos, tmp_path):
    env = dict(os.environ, FOCUSBRIDGE_UNDO_DIR=str(tmp_path / 'undo'))
    for args in (['lens', 'set', '--model', 'X'], ['lens', 'show'], ['meta', 'show']):
        proc = subprocess.Popen(
            [sys.executable, '-m', 'exif', *args, *map(str, sorted(photos.iterdir()))],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        proc.stdout.close()  # `| head -0`: the reader is gone before anything is printed
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 141 and err == b'', (args, err)
    assert tags(photos / 'Canon.jpg', 'ExifIFD:LensModel')['ExifIFD:LensModel'] == 'X'
