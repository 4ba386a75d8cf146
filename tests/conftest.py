"""Shared fixtures: the real test data and small file-making helpers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real test data, in the repository (tests/data/README.md lists each file, its origin and
# licence; tests/data/make_test_data.py derives it from the full data set).
TEST_DATA = Path(__file__).resolve().parent / 'data'
# The real ring6 bracket ships with the package as its demo; the tests read that copy.
RING6 = REPO_ROOT / 'pybridge' / 'sample' / 'ring6'

# Let tests import the helpers next to them (`from dng import write_dng`).
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope='session')
def test_data() -> Path:
    """tests/data. Missing data is a broken checkout: fail, never skip."""
    missing = [
        p
        for p in (
            TEST_DATA / 'README.md',
            TEST_DATA / 'brackets',
            TEST_DATA / 'raw',
            TEST_DATA / 'camera-metadata',
            RING6 / 'step0.jpg',
        )
        if not p.exists()
    ]
    if missing:
        pytest.fail(f'test data missing: {", ".join(map(str, missing))} (a broken checkout)')
    return TEST_DATA


ICC_SOURCE = Path('brackets') / 'depthmap10' / 'reference' / '3d.jpg'


@pytest.fixture(scope='session')
def icc_profile(test_data) -> bytes:
    """A real ICC profile (sRGB, 672 bytes) that exiftool extracts from a JPEG in the data."""
    done = subprocess.run(
        [_exiftool(), '-b', '-ICC_Profile', str(test_data / ICC_SOURCE)],
        capture_output=True,
        timeout=60,
    )
    icc = done.stdout
    assert done.returncode == 0 and icc[36:40] == b'acsp', 'expected an ICC profile in 3d.jpg'
    return icc


@pytest.fixture(scope='session')
def large_icc_profile(icc_profile) -> bytes:
    """A 150 kB "profile" (real header, size field patched, padded): too big for one JPEG
    APP2 segment, so it exercises splitting. Readers only carry ICC bytes, never parse them."""
    size = 150_000
    body = icc_profile + bytes(range(256)) * ((size - len(icc_profile)) // 256 + 1)
    body = body[:size]
    return size.to_bytes(4, 'big') + body[4:]


def _exiftool() -> str:
    tool = shutil.which('exiftool')
    if not tool:
        pytest.fail('exiftool is required for these tests (apt install libimage-exiftool-perl)')
    return tool


@pytest.fixture(scope='session')
def exiftool():
    """run(*args) -> stdout of exiftool with an argument list (never a shell)."""
    tool = _exiftool()

    def run(*args) -> str:
        done = subprocess.run([tool, *map(str, args)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


@pytest.fixture(scope='session')
def unprivileged():
    """Run a command as an ordinary user, so permission bits apply (they don't stop root).

    Returns run(args, cwd) -> CompletedProcess for `python -m pybridge ARGS`. As root it
    drops to uid/gid 65534 with setpriv and an interpreter that user may execute (the venv's
    own one often lives under /root). Paths it touches must be reachable by that user.
    """
    import os
    import sysconfig

    base = [sys.executable]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), sysconfig.get_paths()['purelib']])
    )
    if os.geteuid() == 0:
        drop = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']
        version = f'python{sys.version_info.major}.{sys.version_info.minor}'
        for candidate in (
            os.path.realpath(sys.executable),
            f'/usr/bin/{version}',
            f'/usr/local/bin/{version}',
        ):
            probe = subprocess.run(
                [*drop, candidate, '-c', 'import numpy, cv2, pybridge'],
                env=env,
                capture_output=True,
                cwd='/',
            )
            if probe.returncode == 0:
                base = [*drop, candidate]
                break
        else:
            pytest.fail(
                f'no {version} interpreter that uid 65534 can run with the project '
                f'(tried the venv\'s and /usr/bin/{version}); install python3'
            )

    def run(args, cwd='/'):
        return subprocess.run(
            [*base, '-m', 'pybridge', *map(str, args)],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run


@pytest.fixture
def public_tmp():
    """A temp folder every user can enter (pytest's tmp_path is private to root)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix='focusbridge-test-'))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def copy_camera_files(test_data: Path, folder: Path, names) -> Path:
    """Copy real camera files into `folder` (created; a name with a space and an umlaut keeps
    file-name handling honest), writable, so tests never touch the originals in tests/data."""
    import os

    folder.mkdir()
    for name in names:
        shutil.copy(test_data / 'camera-metadata' / name, folder / name)
        os.chmod(folder / name, 0o644)
    return folder
