"""Shared fixtures: the real test data and small file-making helpers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'

# Let tests import the helpers next to them (`from dng import write_dng`).
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope='session')
def shared_data() -> Path:
    """<repo root>/../shared/data. Missing data is a broken checkout: fail, never skip."""
    if not (SHARED_DATA / 'README.md').is_file():
        pytest.fail(f'test data not found at {SHARED_DATA} (expected <repo root>/../shared/data)')
    return SHARED_DATA


ICC_SOURCE = Path('brackets') / 'depthmap10' / 'reference' / '3d.jpg'


@pytest.fixture(scope='session')
def icc_profile(shared_data) -> bytes:
    """A real ICC profile (sRGB, 672 bytes) that exiftool extracts from a JPEG in the data."""
    done = subprocess.run([_exiftool(), '-b', '-ICC_Profile', str(shared_data / ICC_SOURCE)],
                          capture_output=True, timeout=60)
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
        done = subprocess.run([tool, *map(str, args)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout
    return run
