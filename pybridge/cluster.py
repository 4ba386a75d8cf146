"""Brackets on a Dask cluster: `focusbridge batch --scheduler tcp://HOST:PORT`.

Optional: Dask comes with the `dask` extra (`pip install 'focusbridge[dask]'`) and is imported
only here, only when --scheduler is given (in a thread, while the brackets are found: see
batch._Connecting). One task per bracket (`client.submit(run_on_worker, task, pure=False,
retries=2)`), collected with `as_completed`. The workers run the same `batch.run_bracket` as a
local batch, in a pool process's conditions (run_on_worker), so the results are the same, and
so is the time a bracket takes (bench/bench_batch.py); they read the frames and write the
results through paths that every one of them sees (a shared file system), and the client alone
writes the journal. A worker that dies mid-bracket leaves only its private staging folder; the
scheduler gives the task to another worker, whose outputs replace nothing but what the dead one
may have put in place, whole. docs/batch.md says how to start a cluster.
"""

from __future__ import annotations

import time

from .errors import FocusbridgeError, one_line

DASK_HINT = (
    "--scheduler needs Dask, which is not installed: pip install 'focusbridge[dask]' "
    "(in a checkout: uv sync --extra dask)"
)


def dask_setup(worker) -> None:
    """`dask worker --preload pybridge.cluster`: the engine (NumPy, OpenCV, the pipeline) is
    loaded when the worker starts, as a local pool process loads it, instead of in its first
    bracket; what run_on_worker sets for each bracket is set now too."""
    from . import batch, pipeline  # noqa: F401 - loaded for what comes
    from .memory import reuse_freed_memory

    reuse_freed_memory()
    _worker_settings(worker)


def _worker_settings(worker) -> None:
    import cv2

    from exif.tool import keep_exiftool

    cv2.setNumThreads(max(1, worker.state.nthreads))
    keep_exiftool()  # one exiftool per worker thread, kept from bracket to bracket


def run_on_worker(task):
    """batch.run_bracket on a Dask worker, in the conditions of a local pool process: OpenCV
    held to the worker's own threads (a worker started with N threads is given N cores;
    OpenCV's default, every core of the machine in each task, oversubscribes them, as the local
    pool avoids too), and glibc's malloc reusing freed arrays (memory.reuse_freed_memory: the
    nanny turns that off, which made a Dask batch ~1.9x the local pool's time), and exiftool
    kept from bracket to bracket as in a pool process (exif.tool.keep_exiftool). The memory a
    bracket freed goes back to the system (memory.release_freed_memory) once the worker has no
    other task waiting, so an idle worker is small again and brackets in a row do not
    page-fault their memory in afresh."""
    from distributed import get_worker

    from .batch import run_bracket
    from .memory import release_freed_memory, reuse_freed_memory

    worker = get_worker()
    reuse_freed_memory()
    _worker_settings(worker)
    try:
        return run_bracket(task)
    finally:
        if not _more_waiting(worker):
            release_freed_memory()


def _more_waiting(worker) -> bool:
    """Has the worker another task running beside this one, or ready to start (the scheduler
    hands each worker a little more than it runs at once: distributed.scheduler.
    worker-saturation)?"""
    try:
        return len(worker.state.ready) > 0 or worker.state.executing_count > 1
    except (AttributeError, TypeError):  # another version of Dask's worker state
        return False


def require_dask(load: bool = True):
    """The `distributed` module, or a one-line error saying how to install it. `load=False`:
    only whether it is installed (importing it takes a second or two)."""
    if not load:
        from importlib.util import find_spec

        try:
            found = find_spec("distributed") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise FocusbridgeError(DASK_HINT)
        return None
    try:
        import distributed
    except ImportError:
        raise FocusbridgeError(DASK_HINT) from None
    return distributed


def _close_unfinished(tb, kind) -> None:
    """Close the half-made Client that a failed constructor left in `tb`, at once: else its
    __del__ at exit waits 20 s on a connection that will not answer, then prints a traceback."""
    while tb is not None:
        made = tb.tb_frame.f_locals.get("self")
        if isinstance(made, kind):
            try:
                made.close(timeout=1)
            except Exception:  # noqa: BLE001 - it is broken already; only the wait matters
                pass
            made.status = "closed"  # what Client.__del__ looks at before closing again
            return
        tb = tb.tb_next


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
        except MemoryError as exc:  # Dask read another service's answer as a message length
            _close_unfinished(exc.__traceback__, distributed.Client)
            raise FocusbridgeError(
                f"cannot reach the Dask scheduler at {address} (what answers there is not a "
                "Dask scheduler: check the address and port)"
            ) from None
        self.finished = distributed.as_completed(loop=self.client.loop)
        self._threads: int | None = None
        self._asked = 0.0

    def threads(self) -> int:
        # asked of the scheduler at most once a second (the batch loop asks on every turn)
        now = time.monotonic()
        if self._threads is None or now - self._asked > 1.0:
            self._threads, self._asked = sum(self.client.nthreads().values()), now
        return self._threads

    def slots(self) -> int:
        # brackets handed to the scheduler at once: enough to keep every worker thread busy
        # (and new workers that join), few enough that a Ctrl-C leaves the rest unstarted
        return max(2, 2 * self.threads())

    def submit(self, task):
        future = self.client.submit(run_on_worker, task, pure=False, retries=2)
        self.finished.add(future)
        return future

    def wait(self, futures, timeout: float) -> list:
        """The futures finished so far, waiting up to `timeout` for one: woken by
        as_completed's own notification, not by polling."""
        ready = self.finished.thread_condition
        with ready:  # checked under the lock: a notification cannot slip in between
            if not self.finished.has_ready():
                ready.wait(timeout)
        return self.finished.next_batch(block=False)

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
