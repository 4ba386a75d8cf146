"""How a focusbridge process uses memory: glibc's malloc tuned for frame-sized arrays.

A stack allocates and frees arrays of the same few sizes over and over (a frame, its pyramid
levels, the fusion's planes). glibc's default threshold rule starts by mmapping every block
over 128 KiB and slides up only as such blocks are freed, and trims the heap top whenever
more than twice that lies free, so a run keeps handing memory back and faulting it in again
(zeroed) for the next frame. Fixing the thresholds at the end of glibc's own slide keeps
arrays under 32 MiB in the heap and reuses them: on 8 x 2 MP frames about a third fewer page
faults and a quarter less wall time for `focusbridge stack`, and for Dask workers (whose
nanny sets MALLOC_TRIM_THRESHOLD_, which switches the sliding off) ten times fewer faults.

Only the programs call this (the command line, pool processes, Dask workers), never the
library when a caller's process imports it.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold its sliding rule reaches
# (DEFAULT_MMAP_THRESHOLD_MAX: 32 MiB on 64-bit systems); the trim threshold ends at twice that
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_ready = False


def reuse_freed_memory() -> None:
    """Set the mmap threshold to 32 MiB and the trim threshold to 64 MiB for this process,
    once. An mmap threshold the user set (MALLOC_MMAP_THRESHOLD_, or glibc.malloc.mmap_threshold
    in GLIBC_TUNABLES) leaves both alone; a trim threshold alone (MALLOC_TRIM_THRESHOLD_, which
    Dask's nanny sets) does not. Elsewhere than on glibc this does nothing."""
    global _ready
    if _ready:
        return
    _ready = True
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "glibc.malloc.mmap_threshold" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        top = 4 * 2**20 * ctypes.sizeof(ctypes.c_long)
        if mallopt(M_MMAP_THRESHOLD, top):
            mallopt(M_TRIM_THRESHOLD, 2 * top)


def release_freed_memory() -> None:
    """Hand the memory freed by a finished bracket back to the system (glibc's malloc_trim),
    as a Dask worker that may run other work between brackets is expected to: what it keeps
    drops to about its idle size (in bench/bench_batch.py from ~350 MiB to ~200 MiB)."""
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim.argtypes = (ctypes.c_size_t,)
        trim(0)


def _glibc(name: str):
    """A function of the C library when it is glibc's (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # musl has no malloc_trim
        return None
