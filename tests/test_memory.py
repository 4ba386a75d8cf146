"""pybridge.memory: glibc's malloc thresholds fixed for frame-sized arrays, in the programs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# Is a 24 MiB array, allocated after another was freed, an mmap of its own (glibc's
# mallinfo2: bytes in mmapped chunks) or served from the heap? Before and after SETUP;
# then malloc_trim hands the heap back.
_MAPPED = """
import ctypes, sys
import numpy as np
from pybridge.memory import release_freed_memory, reuse_freed_memory
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
def mapped():
    a = np.ones(3 * 2**20)
    del a
    b = np.ones(3 * 2**20)
    return libc.mallinfo2().hblkhd >= b.nbytes
before = mapped()
SETUP
after = mapped()
kept = libc.mallinfo2().arena
release_freed_memory()
print(before, after, libc.mallinfo2().arena < kept)
"""


def mapped(setup: str, **extra: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _MAPPED.replace("SETUP", setup)],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-3:]  # what the program printed comes first


def test_freed_arrays_are_reused_where_the_environment_turned_that_off():
    """MALLOC_TRIM_THRESHOLD_ (Dask's nanny sets it) makes every array an mmap of its own,
    page-faulted in afresh each time; reuse_freed_memory (pool processes, Dask workers, the
    command line) brings back heap reuse, so a freed frame's memory serves the next, and
    release_freed_memory gives the heap back after a bracket."""
    assert mapped("reuse_freed_memory()", MALLOC_TRIM_THRESHOLD_="65536") == [
        "True",
        "False",
        "True",
    ]
    assert mapped("reuse_freed_memory()") == ["False", "False", "True"]


@pytest.mark.parametrize(
    "setting",
    [
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
    ],
)
def test_a_threshold_the_user_set_is_left_alone(setting):
    assert mapped("reuse_freed_memory()", **setting) == ["True", "True", "True"]


def test_the_command_line_program_tunes_malloc_and_a_caller_in_process_does_not():
    program = (
        "from pybridge.cli import main\n"
        "sys.argv = ['focusbridge', 'plan', '--magnification', '1', '--aperture', '8']\n"
        "main()"
    )
    assert mapped(program, MALLOC_TRIM_THRESHOLD_="65536") == ["True", "False", "True"]
    in_process = (
        "from pybridge.cli import main\nmain(['plan', '--magnification', '1', '--aperture', '8'])"
    )
    # (not whether malloc_trim then hands memory back: with the environment's low trim
    # threshold, free() may already have done so, depending on where the heap's top lies)
    assert mapped(in_process, MALLOC_TRIM_THRESHOLD_="65536")[:2] == ["True", "True"]
