"""Brackets on a Dask cluster: `focusbridge batch --scheduler tcp://HOST:PORT`.

Optional: Dask comes with the `dask` extra (`pip install 'focusbridge[dask]'`) and is imported
only here, only when --scheduler is given. One task per bracket (`client.submit(run_bracket,
task, pure=False, retries=2)`), collected with `as_completed`. The workers run the same
`batch.run_bracket` as a local batch, so the results are the same; they read the frames and
write the results through paths that every one of them sees (a shared file system), and the
client alone writes the journal. A worker that dies mid-bracket leaves only its private staging
folder; the scheduler gives the task to another worker, whose outputs replace nothing but
what the dead one may have put in place, whole. docs/batch.md says how to start a cluster.
"""

from __future__ import annotations

import time

from .errors import FocusbridgeError, one_line

DASK_HINT = (
    "--scheduler needs Dask, which is not installed: pip install 'focusbridge[dask]' "
    "(in a checkout: uv sync --extra dask)"
)


def run_on_worker(task):
    """batch.run_bracket on a Dask worker, with OpenCV held to the worker's own threads: a
    worker started with N threads is given N cores, and OpenCV's default (every core of the
    machine, in each task) oversubscribes them, as the local pool avoids too. (Not the main
    cost: bench/bench_batch.py still measures Dask ~1.9x the local pool on 2 cores.)"""
    import cv2
    from distributed import get_worker

    from .batch import run_bracket

    cv2.setNumThreads(max(1, get_worker().state.nthreads))
    return run_bracket(task)


def require_dask():
    """The `distributed` module, or a one-line error saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise FocusbridgeError(DASK_HINT) from None
    return distributed


class DaskRunner:
    """The batch loop's runner (see batch.LocalRunner) for a Dask scheduler."""

    budget = None  # the workers' memory is theirs to manage (dask worker --memory-limit)

    def __init__(self, address: str):
        distributed = require_dask()
        self.address = address
        try:
            self.client = distributed.Client(address, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise FocusbridgeError(
                f"cannot reach the Dask scheduler at {address} ({one_line(exc)})"
            ) from None
        self.finished = distributed.as_completed(loop=self.client.loop)

    def threads(self) -> int:
        return sum(self.client.nthreads().values())

    def slots(self) -> int:
        # brackets handed to the scheduler at once: enough to keep every worker thread busy
        # (and new workers that join), few enough that a Ctrl-C leaves the rest unstarted
        return max(2, 2 * self.threads())

    def submit(self, task):
        future = self.client.submit(run_on_worker, task, pure=False, retries=2)
        self.finished.add(future)
        return future

    def wait(self, futures, timeout: float) -> list:
        if self.finished.has_ready():
            return self.finished.next_batch(block=False)
        time.sleep(timeout)
        return self.finished.next_batch(block=False) if self.finished.has_ready() else []

    def outcome(self, future) -> dict:
        return future.result()

    def lost_worker(self, exc: BaseException) -> bool:
        return False  # the scheduler already gave the task to another worker (allowed-failures)

    def cancel(self, futures) -> None:
        # a task already running finishes on its worker (threads cannot be stopped) and may
        # put its outputs in place; the journal does not record it, so a rerun stacks it again
        self.client.cancel(futures)

    def close(self) -> None:
        self.client.close()

    def describe(self) -> str:
        return f"on the Dask cluster at {self.address} ({self.threads()} worker threads)"
