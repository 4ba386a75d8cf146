"""`focusbridge batch`: every bracket of a shoot stacked, in parallel, resumable.

The brackets come from `brackets.detect`; each is stacked by `run_bracket` (pybridge.app.stack:
the engine with the metadata merge), the one function that does the work, in a local process
pool or on Dask workers (pybridge/cluster.py). docs/batch.md is the user's side of this.

Files in the output folder DIR:

* `DIR/<first frame's stem>_stacked.tif` (or the format chosen), with `_depth` /
  `_confidence` maps when asked for. A bracket the journal knows keeps its name; a new one
  takes `-2`, `-3`... past the names of the journal's other brackets and files in the way.
* `DIR/focusbridge-batch.jsonl`, the journal: one JSON object per line, appended and fsynced
  by the client only (never by a worker): `start` before a bracket is handed out, `done` (with
  the result's size) or `failed` after. A bracket is finished when its last record is `done`
  and its result exists with the recorded size: a rerun skips those and does the rest. The
  journal is locked while a batch runs, so two batches never write one folder.
* `DIR/.focusbridge-batch/`: each attempt at a bracket writes into a private folder there
  (host, pid, random) and, once its files are complete and fsynced, renames them into DIR: the
  outputs appear whole or not at all, an attempt on a worker that was killed leaves only its
  private folder (removed by the next batch into DIR), and attempts on different machines
  never clean up each other's temp files. A result a killed attempt had already put in place
  is replaced by the rerun's (the journal says it is ours: `start` came first).

Interruption (the process running `focusbridge batch`; see docs/batch.md):
first Ctrl-C / SIGTERM: no new bracket starts; the running ones finish and are journalled;
exit 130 (0 when nothing was left to start). Second: the running brackets are cancelled the
way `focusbridge stack` cancels (temp files removed; one already committing finishes), exit
130. SIGKILL or power loss: nothing partial appears; the rerun redoes what was not `done`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .atomic import check_no_clash, check_target, fsync_folder
from .errors import (
    EXIT_CANCELLED,
    EXIT_ERROR,
    FocusbridgeError,
    InputError,
    OutputError,
    describe_failure,
)
from .options import DEFAULT_MAX_PIXELS, FORMATS, OutputOptions, StackOptions
from .progress import silent

JOURNAL_NAME = "focusbridge-batch.jsonl"
STAGING_NAME = ".focusbridge-batch"
# Peak memory of one bracket: about 70 bytes a pixel of one frame (several float32 copies in
# the aligner and fusers; see DEFAULT_MAX_PIXELS in options.py), plus the worker process
# itself (Python, numpy, OpenCV, LibRaw).
BYTES_PER_PIXEL = 70
WORKER_BYTES = 300 * 2**20
MEMORY_SHARE = 0.8  # of MemAvailable a local batch plans to use
WORKER_ATTEMPTS = 2  # a bracket whose worker process died is tried this often in all


@dataclass
class Task:
    """One bracket's work: plain data, sent to a pool process or a Dask worker."""

    key: str  # identifies frames, outputs and options in the journal
    frames: list[str]  # absolute paths, in stacking order
    output: str  # absolute path of the result
    depth_map: str | None
    confidence_map: str | None
    options: dict  # StackOptions fields
    metadata: bool | None
    pixels: int | None = None  # of a frame, for the memory plan

    def outputs(self) -> list[tuple[str, Path]]:
        return [
            (role, Path(p))
            for role, p in (
                ("result", self.output),
                ("depth map", self.depth_map),
                ("confidence map", self.confidence_map),
            )
            if p
        ]

    def memory(self) -> int:
        return BYTES_PER_PIXEL * (self.pixels or 0) + WORKER_BYTES


# ------------------------------------------------------------------------------ the work

_IN_POOL = False  # set in local pool processes, which take charge of their own signals


def run_bracket(task: Task) -> dict:
    """Stack one bracket and put its outputs in place. Returns {"ok": True, "output", "size",
    "warnings", "seconds"} or {"ok": False, "error"} for a failure that another attempt would
    repeat (a bad frame); other exceptions (a file system hiccup) propagate, so Dask retries
    them. The same function runs locally and on Dask workers, so results are identical."""
    from .app import stack

    t0 = time.monotonic()
    if _IN_POOL:
        _arm_signals()
    finals = task.outputs()
    stage = Path(task.output).parent / STAGING_NAME / _attempt_name(task.key)
    staged = {role: stage / final.name for role, final in finals}
    try:
        stage.mkdir(parents=True)
        result = stack(
            task.frames,
            staged["result"],
            StackOptions(**task.options),
            depth_map=staged.get("depth map"),
            confidence_map=staged.get("confidence map"),
            metadata=task.metadata,
        )
        for path in staged.values():  # the data is on disk before the name is
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        for role, final in reversed(finals):  # the result last: it marks the set complete
            os.replace(staged[role], final)
        fsync_folder(Path(task.output).parent)
        return {
            "ok": True,
            "output": task.output,
            "size": os.stat(task.output).st_size,
            "warnings": list(result.warnings),
            "seconds": round(time.monotonic() - t0, 3),
        }
    except FocusbridgeError as exc:
        message = str(exc)
        for role, final in finals:  # name the user's file, not the private copy
            message = message.replace(str(staged[role]), str(final))
        return {"ok": False, "error": message}
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _attempt_name(key: str) -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())
    return f"{key[:16]}.{host}.{os.getpid()}.{secrets.token_hex(4)}"


def _arm_signals() -> None:
    """In a pool process: SIGTERM (sent by the client on a second Ctrl-C) cancels the bracket
    as `focusbridge stack` would; SIGINT (the terminal's Ctrl-C reaches the whole process
    group) is the client's to handle."""
    from . import signals

    signals.install()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_init(parent: int, threads: int) -> None:
    global _IN_POOL
    _IN_POOL = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if sys.platform.startswith("linux"):  # die with the client (SIGKILL), not finish alone
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    from multiprocessing.util import Finalize

    import cv2

    from exif.tool import end_kept_exiftool, keep_exiftool

    from .memory import reuse_freed_memory

    reuse_freed_memory()
    cv2.setNumThreads(threads)
    keep_exiftool()  # one exiftool for the worker's brackets, not one started for each
    Finalize(None, end_kept_exiftool, exitpriority=10)  # a pool process's exit skips atexit


# ------------------------------------------------------------------------------ the journal


def _lock(fd: int) -> bool:
    """An exclusive lock on the open file `fd`, without waiting: False when another holds it."""
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - Windows: no lock
        pass
    except OSError:
        return False
    return True


def _locked(folder: Path) -> OutputError:
    return OutputError(
        folder, f"another focusbridge batch is writing here ({JOURNAL_NAME} is locked)"
    )


class Journal:
    """DIR/focusbridge-batch.jsonl: append-only JSON lines, fsynced, locked while in use."""

    def __init__(self, folder: Path):
        self.path = folder / JOURNAL_NAME
        new = not self.path.exists()
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise OutputError(self.path, f"cannot open the journal ({exc.strerror})") from None
        if not _lock(self.fd):
            os.close(self.fd)
            raise _locked(folder)
        if new:
            fsync_folder(folder)
        with open(self.path, "rb") as f:
            data = f.read()
        self.records = _parse_records(data)
        if data and not data.endswith(b"\n"):
            os.write(self.fd, b"\n")

    @staticmethod
    def peek_outputs(folder: Path) -> set[str]:
        """outputs() of the journal in `folder` as it is now, read without creating it or
        keeping a lock (empty when there is none); fails at once, before the brackets are
        found, when another batch holds it (the lock is taken once the run starts writing)."""
        try:
            f = open(folder / JOURNAL_NAME, "rb")
        except OSError:
            return set()  # none yet: nobody is writing here
        with f:  # closing it drops the probe's own lock
            if not _lock(f.fileno()):
                raise _locked(folder)
            return _outputs(_parse_records(f.read()))

    def last(self) -> dict[str, dict]:
        return {r["key"]: r for r in self.records}

    def started(self) -> set[str]:
        return {r["key"] for r in self.records if r.get("event") == "start"}

    def outputs(self) -> set[str]:
        """Every file a batch into this folder wrote (results and maps): never frames."""
        return _outputs(self.records)

    def append(self, event: str, task: Task, **extra) -> None:
        record = {
            "event": event,
            "key": task.key,
            "output": task.output,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **extra,
        }
        line = json.dumps(record) + "\n"
        os.write(self.fd, line.encode())
        os.fsync(self.fd)
        self.records.append(record)

    def close(self) -> None:
        os.close(self.fd)


def _parse_records(data: bytes) -> list[dict]:
    records = []
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # the line a power cut tore
            continue
        if isinstance(record, dict) and isinstance(record.get("key"), str):
            records.append(record)
    return records


def _outputs(records: list[dict]) -> set[str]:
    named = set()
    for r in records:
        for path in [r.get("output"), *(r.get("outputs") or [])]:
            if isinstance(path, str):
                named.add(path)
    return named


# ------------------------------------------------------------------------------ the plan


@dataclass
class Summary:
    total: int = 0
    stacked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (output, one-line error)
    cancelled: list[str] = field(default_factory=list)  # not stacked: the run was stopped
    unassigned: list = field(default_factory=list)  # brackets.Unassigned
    interrupted: bool = False  # a Ctrl-C / SIGTERM came (the running brackets may have finished)
    jobs: int = 0

    @property
    def exit_status(self) -> int:
        if self.cancelled:
            return EXIT_CANCELLED
        return EXIT_ERROR if self.failed else 0

    def line(self) -> str:
        parts = [f"{len(self.stacked)} stacked"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} already done")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.cancelled:
            parts.append(f"{len(self.cancelled)} cancelled")
        n = self.total
        return f"batch: {n} bracket{'s' * (n != 1)}: " + ", ".join(parts)


def plan_tasks(
    brackets, output_dir: Path, opts: StackOptions, out: OutputOptions, records: Sequence[dict] = ()
) -> list[Task]:
    """One task per bracket. A bracket that the journal's `records` name (by its frames) keeps
    its name on every rerun, whatever else is in the run; a new one is named after its first
    frame, with `-2`, `-3`... past every name the journal gives a bracket and every file in the
    way. Frames and outputs are identified by their real paths (symlinks resolved), so another
    spelling of the same files is the same bracket; the work uses the paths as given (a Dask
    worker may know the files only by those)."""
    ext = FORMATS[out.format][0] if out.format else ".tif"
    engine = {k: v for k, v in dataclasses.asdict(opts).items() if k != "overwrite"}
    folder = Path(os.path.abspath(output_dir))
    real_folder = os.path.realpath(folder)
    owners, names = _journal_names(records)
    taken = set(owners)  # the journal's names belong to their brackets
    tasks = []
    for b in brackets:
        frames = [os.path.abspath(f) for f in b.frames]
        real = [os.path.realpath(f) for f in frames]
        stem = names.get(tuple(real)) or _new_name(Path(frames[0]).stem, folder, ext, out, taken)
        taken.add(stem.lower())
        output = folder / (stem + ext)
        maps = _maps(output, out)
        ident = {
            "frames": real,
            **{
                k: p and os.path.join(real_folder, Path(p).name)
                for k, p in {"output": output, **maps}.items()
            },
            "options": engine,
            "metadata": out.metadata,
        }
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
        tasks.append(
            Task(
                key=key,
                frames=frames,
                output=str(output),
                options={**engine, "overwrite": False},
                metadata=out.metadata,
                pixels=b.pixels,
                **maps,
            )
        )
    return tasks


def _journal_names(records: Sequence[dict]) -> tuple[dict[str, tuple], dict[tuple, str]]:
    """From the journal's `start` records: the bracket (its frames' real paths) that owns each
    name (a lower-case stem, of a result or a map; the last record naming it wins), and each
    bracket's own name (its last record's, unless another bracket has owned it since, as older
    versions allowed)."""
    owners: dict[str, tuple] = {}
    last: dict[tuple, str] = {}
    for r in records:
        frames, output = r.get("frames"), r.get("output")
        if r.get("event") != "start" or not isinstance(output, str) or not isinstance(frames, list):
            continue
        bracket = tuple(os.path.realpath(str(f)) for f in frames)
        last[bracket] = Path(output).stem
        for path in [output, *(r.get("outputs") or [])]:
            owners[Path(str(path)).stem.lower()] = bracket
    return owners, {b: stem for b, stem in last.items() if owners.get(stem.lower()) == b}


def _new_name(stem: str, folder: Path, ext: str, out: OutputOptions, taken: set[str]) -> str:
    """`<stem>_stacked`, else `-2`, `-3`...: a name no bracket has and no file is in the way of
    (so --overwrite is never the way past another bracket's result)."""
    name, n = f"{stem}_stacked", 1
    while name.lower() in taken or any(
        p and os.path.lexists(p)
        for p in [folder / (name + ext), *_maps(folder / (name + ext), out).values()]
    ):
        n += 1
        name = f"{stem}_stacked-{n}"
    return name


def _maps(output: Path, out: OutputOptions) -> dict[str, str | None]:
    return {
        "depth_map": str(side(output, "depth")) if out.depth_map else None,
        "confidence_map": str(side(output, "confidence")) if out.confidence_map else None,
    }


def side(output: Path, suffix: str) -> Path:
    from .pipeline import side_path

    return side_path(output, suffix)


def preflight(task: Task, journal: Journal, overwrite: bool) -> str | None:
    """'skip' when finished, None to run it; raises OutputError when it cannot be run."""
    last = journal.last().get(task.key)
    out = Path(task.output)
    if (
        last is not None
        and last.get("event") == "done"
        and out.is_file()
        and out.stat().st_size == last.get("size")
    ):
        return "skip"
    check_no_clash(task.outputs(), [("input frame", Path(f)) for f in task.frames])
    for _, path in task.outputs():
        check_target(path, overwrite=True)
    exists = [p for _, p in task.outputs() if p.exists() or p.is_symlink()]
    if exists and not overwrite:
        if last is not None and last.get("event") == "done":
            raise OutputError(
                exists[0],
                "exists but is not what this batch wrote (its size changed); pass --overwrite "
                "to stack it again",
            )
        if task.key not in journal.started():
            # a name the journal holds is planned for its own bracket only (plan_tasks)
            held = {Path(p).name.lower() for p in journal.outputs()}
            raise OutputError(
                exists[0],
                "exists: an earlier batch stacked this bracket with other options; pass "
                "--overwrite to stack it again"
                if exists[0].name.lower() in held
                else "exists; pass --overwrite to replace it",
            )
    return None


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (bytes); None where there is none."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_jobs(tasks: Sequence[Task], memory: int | None) -> int:
    """As many brackets at once as there are cores, and no more than the memory holds."""
    jobs = min(cpu_count(), max(1, len(tasks)))
    if memory is not None and tasks:
        jobs = min(jobs, int(memory * MEMORY_SHARE) // max(t.memory() for t in tasks))
    return max(1, jobs)


def _fill_pixels(task: Task) -> None:
    """The frame size for the memory plan when the metadata had none: the first frame's header."""
    if task.pixels is None:
        from .frames import probe_frame

        try:
            info = probe_frame(task.frames[0], max_pixels=task.options.get("max_pixels"))
            task.pixels = info.height * info.width
        except FocusbridgeError:
            task.pixels = DEFAULT_MAX_PIXELS // 10  # unknown: the stack will say why


# ------------------------------------------------------------------------------ running


class LocalRunner:
    """A pool of processes (spawn: a fresh interpreter each, nothing inherited but the
    signal mask), one bracket per task."""

    def __init__(self, jobs: int, budget: int | None = None, largest: int = 0):
        self.jobs = jobs
        self.budget = budget  # bytes the running brackets may use together (None: no limit)
        self.largest = largest
        self.threads = max(1, cpu_count() // jobs)
        self._start()

    def _start(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(
            self.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(os.getpid(), self.threads),
        )

    def slots(self) -> int:
        return self.jobs

    def submit(self, task: Task):
        # a new process must not die of the Ctrl-C that the client handles: it starts with
        # SIGINT/SIGTERM blocked (inherited) and unblocks them once it ignores SIGINT
        with _blocked(signal.SIGINT, signal.SIGTERM):
            return self.pool.submit(run_bracket, task)

    def wait(self, futures, timeout: float) -> list:
        from concurrent.futures import FIRST_COMPLETED, wait

        if not futures:
            time.sleep(timeout)
            return []
        done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def outcome(self, future) -> dict:
        return future.result()

    def lost_worker(self, exc: BaseException) -> bool:
        """A pool process died (the kernel's OOM killer, a crash in a decoder): every bracket
        it had failed with BrokenProcessPool; a fresh pool takes over."""
        from concurrent.futures.process import BrokenProcessPool

        if not isinstance(exc, BrokenProcessPool):
            return False
        if getattr(self.pool, "_broken", False):  # not yet replaced
            self.pool.shutdown(wait=True, cancel_futures=True)
            self._start()
        return True

    def cancel(self, futures) -> None:
        for pid in list(getattr(self.pool, "_processes", {}) or {}):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        gb = 2**30
        memory = (
            f", {self.budget / MEMORY_SHARE / gb:.1f} GB free, up to {self.largest / gb:.1f} GB "
            "a bracket"
            if self.budget
            else ""
        )
        return f"{self.jobs} at a time ({cpu_count()} cores{memory})"


@contextmanager
def _blocked(*signums) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)


class _Stop:
    """The client's Ctrl-C / SIGTERM: 1 = start nothing new, 2 = cancel the running ones.
    Until it is `armed` (the first bracket is handed out) a signal does what it did before:
    the command line cancels at once, as nothing is written yet."""

    def __init__(self):
        self.level = 0
        self.armed = False
        self.previous: dict = {}

    def __call__(self, signum, frame) -> None:
        if self.armed:
            self.level = min(self.level + 1, 2)
        elif callable(self.previous.get(signum)):
            self.previous[signum](signum, frame)
        elif self.previous.get(signum) != signal.SIG_IGN:
            raise KeyboardInterrupt


@contextmanager
def _stopping() -> Iterator[_Stop]:
    """The batch's _Stop, installed by the outermost caller and shared with the inner ones: the
    command line keeps it until the summary is printed, so a late Ctrl-C (the pool shutting
    down) cannot cut the run short of its summary."""
    if threading.current_thread() is not threading.main_thread():
        yield _Stop()  # signals reach the main thread only
        return
    current = signal.getsignal(signal.SIGINT)
    if isinstance(current, _Stop):
        yield current
        return
    stop = _Stop()
    stop.previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in stop.previous:
        signal.signal(s, stop)
    try:
        yield stop
    finally:
        for s, handler in stop.previous.items():
            signal.signal(s, handler)


def run_batch(
    paths: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    options: StackOptions | None = None,
    outputs: OutputOptions | None = None,
    *,
    jobs: int | None = None,
    scheduler: str | None = None,
    gap: float | None = None,
    by_folder: bool = False,
    progress: Callable[..., None] = silent,
    log: Callable[[str, str], None] = lambda kind, message: None,
) -> Summary:
    """Stack every bracket found in `paths` into `output_dir` (see the module's docstring).
    `log(kind, message)`: 'error' for a bracket that failed, 'warning', 'info'."""
    from .brackets import detect

    opts = options or StackOptions()
    out = outputs or OutputOptions()
    if jobs is not None and jobs < 1:
        raise FocusbridgeError(f"--jobs must be 1 or more, not {jobs}")
    paths = list(paths)
    for p in paths:  # a mistyped PATH stops the batch: it is not a file in no bracket
        if not (os.path.isdir(p) or os.path.isfile(p)):
            problem = "not a file or folder" if os.path.lexists(p) else "no such file or folder"
            raise InputError(p, problem)
    folder = Path(output_dir)
    if scheduler:
        from .cluster import require_dask

        require_dask(load=False)  # before anything is written (loaded while detecting)
    if folder.exists() and not folder.is_dir():
        raise OutputError(folder, "is not a folder")
    summary = Summary()
    staging = folder / STAGING_NAME
    # undone in reverse: local pool, staging, journal, client; Ctrl-C counted until the end
    with _stopping(), ExitStack() as cleanup:
        # Dask loads (1-2 s) and connects in a thread while the brackets are found (exiftool's
        # read of every file); the journal is only read until the connection stands
        connecting = _Connecting(scheduler) if scheduler else None
        if connecting is not None:
            cleanup.callback(connecting.close)
        seen = Journal.peek_outputs(folder)
        found = detect(paths, gap=gap, by_folder=by_folder, exclude=seen)
        runner = connecting.result() if connecting else None  # fail fast: nothing written yet
        _check_reference(found.brackets, opts.reference)
        summary.unassigned = found.unassigned
        if not found.brackets:
            return summary  # nothing to do: no folder, no journal
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(folder, f"cannot create the folder ({exc.strerror})") from None
        journal = Journal(folder)
        cleanup.callback(journal.close)  # the lock goes once every local worker is done
        cleanup.callback(_remove_staging, staging, summary, remote=bool(scheduler))
        shutil.rmtree(staging, ignore_errors=True)  # what killed attempts left
        if journal.outputs() != seen:  # a batch into DIR ended meanwhile: its results too
            found = detect(paths, gap=gap, by_folder=by_folder, exclude=journal.outputs())
            summary.unassigned = found.unassigned
        tasks = plan_tasks(found.brackets, folder, opts, out, journal.records)
        summary.total = len(tasks)
        todo = []
        for task in tasks:
            try:
                verdict = preflight(task, journal, opts.overwrite)
            except FocusbridgeError as exc:
                _failed(task, str(exc), summary, progress, log)
                continue
            if verdict == "skip":
                summary.skipped.append(task.output)
            else:
                todo.append(task)
        if todo and runner is None:
            for task in todo:
                _fill_pixels(task)
            memory = available_memory()
            _quiet_resource_tracker()
            runner = LocalRunner(
                min(jobs or default_jobs(todo, memory), len(todo)),
                int(memory * MEMORY_SHARE) if memory else None,
                max(t.memory() for t in todo),
            )
            cleanup.callback(runner.close)
        if todo:
            # the largest first (stable: detection order among equals), so the last to run
            # are small ones and the workers finish together rather than wait on one big one
            todo.sort(key=lambda t: len(t.frames) * (t.pixels or 1), reverse=True)
            summary.jobs = runner.slots()
            log("info", f"{len(todo)} to stack, {runner.describe()}")
            _run(todo, runner, journal, summary, progress, log)
    return summary


def _check_reference(brackets, reference) -> None:
    """A --reference frame number that a bracket lacks fails the batch before any work."""
    from .pipeline import resolve_reference

    bad = []
    for b in brackets:
        try:
            resolve_reference(reference, len(b.frames))
        except FocusbridgeError as exc:
            bad.append((b.frames[0], str(exc)))
    if bad:
        more = f"; {len(bad) - 1} other bracket(s) lack it too" if len(bad) > 1 else ""
        raise InputError(bad[0][0], f"{bad[0][1]}{more}")


def _quiet_resource_tracker() -> None:
    """multiprocessing's resource tracker outlives a batch that was SIGKILLed, removes the
    pool's semaphores and warns on the terminal that they had leaked: nothing is lost, so it
    says nothing (it takes its warning filters from ours when it starts)."""
    quiet = "ignore::UserWarning:multiprocessing.resource_tracker"
    if quiet not in sys.warnoptions:
        sys.warnoptions.append(quiet)


def _failed(task: Task, message: str, summary: Summary, progress, log) -> str:
    """A bracket that failed, in one line that starts with its result's path."""
    if not message.startswith(f"{task.output}: "):
        message = f"{task.output}: {message}"
    summary.failed.append((task.output, message))
    log("error", message)
    _report(progress, summary, task, "failed", error=message)
    return message


def _report(progress, summary: Summary, task: Task, outcome: str, **extra) -> None:
    """The batch line of a bracket that ended (`summary` already counts it)."""
    finished = len(summary.stacked) + len(summary.skipped) + len(summary.failed)
    progress(
        "batch",
        frame=finished - 1,
        count=summary.total,
        fraction=finished / summary.total,
        output=task.output,
        outcome=outcome,
        **extra,
    )


def _remove_staging(staging: Path, summary: Summary, remote: bool) -> None:
    """Every attempt of this run is over (local workers have exited), so whatever is left in
    the staging folder is a dead attempt's. Cancelled Dask tasks may still be running on their
    workers: their folders are left to the next batch."""
    if remote and summary.cancelled:
        try:
            staging.rmdir()
        except OSError:
            pass
    else:
        shutil.rmtree(staging, ignore_errors=True)


class _Connecting:
    """cluster.DaskRunner(address), made in a thread of its own: `result()` waits for it
    (raising what its making raised), `close()` closes it whenever it is made."""

    def __init__(self, address: str):
        from concurrent.futures import Future

        from .cluster import DaskRunner

        self.future: Future = Future()

        def connect() -> None:
            try:
                self.future.set_result(DaskRunner(address))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                self.future.set_exception(exc)

        # a daemon thread: a Ctrl-C while a scheduler does not answer ends the program now
        # (an executor's thread is joined at exit, which waited on the connection)
        threading.Thread(target=connect, name="dask-connect", daemon=True).start()

    def result(self):
        return self.future.result()

    def close(self) -> None:
        def close(future) -> None:
            if not future.cancelled() and future.exception() is None:
                future.result().close()

        self.future.add_done_callback(close)  # now, or when it comes (interrupted meanwhile)


def _run(todo: list[Task], runner, journal: Journal, summary: Summary, progress, log) -> None:
    queue = list(todo)
    running: dict = {}  # future -> task
    attempts: dict[str, int] = {}
    budget = getattr(runner, "budget", None)

    with _stopping() as stop:
        stop.armed = True  # from now on a Ctrl-C lets the running brackets finish
        cancelling = announced = False
        while queue or running:
            if stop.level >= 2 and not cancelling:
                cancelling = True
                runner.cancel(list(running))
                log("warning", f"cancelling {len(running)} running bracket(s)")
            while queue and not stop.level and len(running) < runner.slots():
                task = queue[0]
                in_use = sum(t.memory() for t in running.values())
                if budget is not None and running and in_use + task.memory() > budget:
                    break  # wait: it would not fit in memory beside the running ones
                queue.pop(0)
                outputs = [str(p) for _, p in task.outputs()]
                journal.append("start", task, frames=task.frames, outputs=outputs)
                running[runner.submit(task)] = task
            if stop.level and not announced:
                announced = True
                summary.cancelled += [t.output for t in queue]
                waiting = (
                    f"; waiting for the {len(running)} running (Ctrl-C again cancels them)"
                    if running
                    else ""
                )
                log("warning", f"stopping: {len(queue)} bracket(s) not started{waiting}")
                queue.clear()
            for future in runner.wait(list(running), 0.2):
                task = running.pop(future)
                try:
                    result = runner.outcome(future)
                except BaseException as exc:  # noqa: B036 - a worker's KeyboardInterrupt too
                    if isinstance(exc, KeyboardInterrupt) or (cancelling and _is_cancel(exc)):
                        summary.cancelled.append(task.output)
                        continue
                    if runner.lost_worker(exc):
                        attempts[task.key] = attempts.get(task.key, 1) + 1
                        if stop.level:
                            summary.cancelled.append(task.output)
                            continue
                        if attempts[task.key] <= WORKER_ATTEMPTS:
                            queue.insert(0, task)  # perhaps another bracket's process died
                            continue
                        result = {
                            "ok": False,
                            "error": "the process stacking it died (killed by the system, "
                            "perhaps out of memory)",
                        }
                    else:
                        _, message = describe_failure(exc)
                        result = {"ok": False, "error": message or repr(exc)}
                if result.get("ok"):
                    journal.append("done", task, size=result["size"])
                    summary.stacked.append(task.output)
                    for warning in result.get("warnings", []):
                        log("warning", warning)
                    _report(progress, summary, task, "done")
                else:
                    message = _failed(task, result["error"], summary, progress, log)
                    journal.append("failed", task, error=message)
        summary.interrupted = stop.level > 0


def _is_cancel(exc: BaseException) -> bool:
    """What a cancelled task ends with: a local pool whose processes got SIGTERM breaks; a
    Dask future says CancelledError (FutureCancelledError in recent versions)."""
    name = type(exc).__name__
    return name == "BrokenProcessPool" or name.endswith("CancelledError")


# ------------------------------------------------------------------------------ command line

_BATCH_EPILOG = """\
examples:
  focusbridge brackets shoot/                      what would be stacked, and why
  focusbridge batch shoot/ --output-dir stacked/   stack every bracket
  focusbridge batch scope/*/ --by-folder --output-dir stacked/ --no-align
  focusbridge batch shoot/ --output-dir stacked/ --scheduler tcp://node1:8786

Run it again after an interruption: finished brackets are skipped (see docs/batch.md).
"""


def _add_detection_options(p) -> None:
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files (RAW, TIFF, JPEG, PNG) and folders (their image files)",
    )
    p.add_argument(
        "--gap",
        type=_seconds,
        metavar="SECONDS",
        help="split brackets at every pause longer than this between two shots (default: "
        f"adaptive, over 3 x the bracket's median interval and over {2:g} s)",
    )
    p.add_argument(
        "--by-folder",
        action="store_true",
        help="every folder is one bracket, its files in name order (microscopes, rails "
        "that write a folder per stack, files without capture times)",
    )


def _seconds(text: str) -> float:
    from .options import nonnegative

    return nonnegative(text, "seconds")


def _add_output_options(p) -> None:
    """OutputOptions on the batch command line (one output per bracket, so no paths)."""
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(OutputOptions)}
    p.add_argument("--depth-map", action="store_true", help=helps["depth_map"])
    p.add_argument("--confidence-map", action="store_true", help=helps["confidence_map"])
    p.add_argument("--format", choices=tuple(FORMATS), help=helps["format"] + " (default tiff)")
    p.add_argument(
        "--no-metadata", dest="metadata", action="store_false", default=None, help=helps["metadata"]
    )


def register(sub) -> None:
    """Add `brackets` and `batch` to the `focusbridge` command line."""
    import argparse

    p = sub.add_parser(
        "brackets",
        help="find the focus brackets among files and folders",
        description="List the focus brackets among the files (in-camera bracketing tags, "
        "then capture times; a change of camera, lens, size or orientation, or the focus "
        "distance turning back, ends a bracket). Single frames are in no bracket.",
    )
    _add_detection_options(p)
    p.add_argument("--json", action="store_true", help="print JSON: brackets and unassigned")
    p.set_defaults(func=cmd_brackets)

    p = sub.add_parser(
        "batch",
        help="stack every bracket among files and folders",
        description="Find the brackets (as `focusbridge brackets`) and stack each into "
        "DIR/<first frame>_stacked.tif with its metadata. Resumable: a rerun skips the "
        "brackets already done.",
        epilog=_BATCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_detection_options(p)
    p.add_argument("--output-dir", required=True, metavar="DIR", help="folder for the results")
    p.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="brackets stacked at once on this machine (default: from the cores and the free "
        "memory; never more than the memory holds)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="stack on a Dask cluster (tcp://HOST:PORT of `dask scheduler`); needs the "
        "'dask' extra and paths every worker sees",
    )
    StackOptions.add_arguments(p)
    _add_output_options(p)
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "json", "none"),
        default="auto",
        help="auto (default): a bar when run in a terminal; json: one JSON object per line "
        'on stdout ({"phase": "batch", "frame": i, "count": n, "fraction": f, "output": ..., '
        '"outcome": "done"|"failed"}, then "done")',
    )
    p.set_defaults(func=cmd_batch)


def cmd_brackets(args) -> int:
    from .brackets import detect, format_table

    found = detect(args.paths, gap=args.gap, by_folder=args.by_folder)
    if args.json:
        print(json.dumps(found.to_json(), indent=1))
    else:
        print(format_table(found))
    return 0


@_stopping()  # Ctrl-C once the brackets are handed out: counted, the summary still printed
def cmd_batch(args) -> int:
    from .errors import print_failure, print_warning
    from .progress import Bar, choose

    if args.jobs is not None and args.scheduler:
        raise FocusbridgeError("--jobs is for local runs; with --scheduler the workers decide")
    show = choose(args.progress)
    quiet = args.progress == "json"
    drawn = False  # a bar is on the terminal's current line

    def progress(*a, **kw) -> None:
        nonlocal drawn
        show(*a, **kw)
        drawn = isinstance(show, Bar)

    def log(kind: str, message: str) -> None:
        nonlocal drawn
        if drawn:  # below the bar, not over it
            sys.stderr.write("\n")
            drawn = False
        if kind == "error":
            print_failure(EXIT_ERROR, message)
        elif kind == "warning":
            print_warning(message)
        elif not quiet:
            print(f"focusbridge: {message}", file=sys.stderr)

    summary = run_batch(
        args.paths,
        args.output_dir,
        StackOptions.from_args(args),
        OutputOptions(**{name: getattr(args, name) for name in OutputOptions.names()}),
        jobs=args.jobs,
        scheduler=args.scheduler,
        gap=args.gap,
        by_folder=args.by_folder,
        progress=progress,
        log=log,
    )
    if summary.unassigned:
        names = ", ".join(str(u.path) for u in summary.unassigned[:3])
        more = ", ..." if len(summary.unassigned) > 3 else ""
        log(
            "warning",
            f"{len(summary.unassigned)} file(s) in no bracket ({names}{more}); "
            "`focusbridge brackets PATH...` says why",
        )
    progress(
        "done",
        fraction=1.0,
        stacked=len(summary.stacked),
        skipped=len(summary.skipped),
        failed=len(summary.failed),
        cancelled=len(summary.cancelled),
    )
    print(summary.line(), file=sys.stdout if not quiet else sys.stderr)
    for _, error in summary.failed:
        print(f"  failed: {error}", file=sys.stderr)
    return summary.exit_status
