"""An exiftool that dies (at start, or after answering a request) ends the command in one line.

pyexiftool used to spin at 100 % CPU for ever on the closed pipe; every run here has a timeout so
a regression fails instead of hanging. FOCUSBRIDGE_EXIFTOOL points at a fake exiftool.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_camera_files
from test_exif_merge import fresh_image

REPO = Path(__file__).resolve().parents[1]

# speaks pyexiftool's -stay_open protocol: answers ANSWERS requests (the first is -ver), then dies
TALKS_THEN_DIES = '''#!{python}
import re, sys
answered = 0
for line in sys.stdin:
    m = re.fullmatch(r'-execute(\\d*)', line.strip())
    if not m:
        continue
    if answered == {answers}:
        sys.exit(7)
    answered += 1
    sys.stdout.write('12.57\\n{{ready%s}}\\n' % m.group(1))
    sys.stdout.flush()
    sys.stderr.write('=0=post%s\\n' % m.group(1))
    sys.stderr.flush()
'''


def fake_exiftool(folder: Path, script: str) -> Path:
    exe = folder / 'exiftool'
    exe.write_text(script)
    exe.chmod(0o755)
    return exe


@pytest.fixture(params=['exits at once', 'dies after the version request'])
def dying(request, tmp_path) -> tuple[Path, str]:
    """(fake exiftool, what the error line must say)"""
    if request.param == 'exits at once':
        return fake_exiftool(tmp_path, '#!/bin/sh\nexit 3\n'), 'exiftool stopped unexpectedly'
    return (
        fake_exiftool(tmp_path, TALKS_THEN_DIES.format(python=sys.executable, answers=1)),
        'exiftool stopped unexpectedly (exit status 7)',
    )


@pytest.fixture()
def cam(test_data, tmp_path) -> Path:
    return copy_camera_files(test_data, tmp_path / 'Kamera', ['Canon.jpg', 'Sony.jpg'])


def run_cli(exe: Path, *args: str, module: str = 'exif') -> subprocess.CompletedProcess:
    env = dict(
        os.environ, FOCUSBRIDGE_EXIFTOOL=str(exe), FOCUSBRIDGE_UNDO_DIR=str(exe.parent / 'undo')
    )
    return subprocess.run(
        [sys.executable, '-m', module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize('command', ['lens show', 'lens set', 'meta merge'])
def test_dying_exiftool_one_line_no_hang(dying, cam, tmp_path, command):
    exe, message = dying
    files = [str(cam / 'Canon.jpg'), str(cam / 'Sony.jpg')]
    before = {f: Path(f).read_bytes() for f in files}
    if command == 'lens set':
        args = ['lens', 'set', '--make', 'Venus Optics', *files]
    elif command == 'meta merge':
        out = tmp_path / 'stacked.tif'
        fresh_image(out)
        args = ['meta', 'merge', str(out), '--sources', *files]
    else:
        args = [*command.split(), *files]
    done = run_cli(exe, *args)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'focusbridge: error: {message}'), done.stderr
    assert 'not found' not in done.stderr  # the install hint is for a missing exiftool only
    assert all(Path(f).read_bytes() == b for f, b in before.items())


def test_stack_metadata_step_with_dying_exiftool(cam, tmp_path):
    """`focusbridge stack`'s metadata step (exif.merge.merge_metadata) fails in one line."""
    pytest.importorskip('pybridge.pipeline')
    synthetic = pytest.importorskip('synthetic')
    exe = fake_exiftool(tmp_path, TALKS_THEN_DIES.format(python=sys.executable, answers=1))
    br = synthetic.make_bracket(2, (32, 48), seed=1, max_blur=2.0)
    frames = []
    for i, img in enumerate(br.frames):
        p = tmp_path / f'f{i}.jpg'
        synthetic.save_image(p, img)
        frames.append(str(p))
    out = tmp_path / 'out.tif'
    done = run_cli(
        exe,
        'stack',
        *frames,
        '-o',
        str(out),
        '--progress',
        'none',
        '--sources',
        str(cam / 'Canon.jpg'),
        str(cam / 'Sony.jpg'),
        module='pybridge',
    )
    assert done.returncode != 0
    assert 'exiftool stopped unexpectedly (exit status 7)' in done.stderr, done.stderr
    assert 'Traceback' not in done.stderr
    assert not out.exists()
