"""`focusbridge batch --scheduler`: brackets on a real Dask cluster (pybridge/cluster.py).

These tests need the `dask` extra (`uv sync --extra dask`; ./dev.sh installs it). Without it
they fail, never skip: the extra is part of what the project promises."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from shoots import stack_shoot

from pybridge.batch import JOURNAL_NAME, run_batch
from pybridge.options import OutputOptions, StackOptions


@pytest.fixture(scope="module")
def distributed():
    try:
        import distributed
    except ImportError:
        pytest.fail("the dask extra is missing: uv sync --locked --group dev --extra dask")
    return distributed


@pytest.fixture(scope="module")
def cluster(distributed):
    environ = dict(os.environ)
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        # the nanny leaves its workers' settings (MALLOC_TRIM_THRESHOLD_...) in this
        # process's environment: the other tests' subprocesses must not inherit them
        os.environ.clear()
        os.environ.update(environ)
        yield cluster


def journal(out: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (out / JOURNAL_NAME).read_text().splitlines()]


def results(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name != JOURNAL_NAME)


def test_a_dask_batch_equals_a_local_one(cluster, tmp_path):
    shoot = tmp_path / "shoot"
    stack_shoot(shoot, counts=(4, 4, 4))
    remote = run_batch([shoot], tmp_path / "remote", scheduler=cluster.scheduler_address)
    local = run_batch([shoot], tmp_path / "local", jobs=2)
    assert (len(remote.stacked), remote.failed) == (3, [])
    assert (len(local.stacked), local.failed) == (3, [])
    names = ["b0_000_stacked.tif", "b1_000_stacked.tif", "b2_000_stacked.tif"]
    assert results(tmp_path / "remote") == results(tmp_path / "local") == names
    for name in names:
        a = tifffile.imread(tmp_path / "remote" / name)
        b = tifffile.imread(tmp_path / "local" / name)
        assert a.shape == (200, 300, 3) and np.array_equal(a, b), name
    # the client wrote the journal: a start and a done per bracket
    events = sorted((r["event"], Path(r["output"]).name) for r in journal(tmp_path / "remote"))
    assert events == sorted([("start", n) for n in names] + [("done", n) for n in names])
    again = run_batch([shoot], tmp_path / "remote", scheduler=cluster.scheduler_address)
    assert (again.stacked, len(again.skipped)) == ([], 3)


def test_a_worker_killed_mid_bracket_loses_and_duplicates_nothing(cluster, distributed, tmp_path):
    shoot = tmp_path / "shoot"
    stack_shoot(shoot, counts=(4, 4, 4), size=(320, 480))
    out = tmp_path / "out"
    summary = {}
    batch = threading.Thread(
        target=lambda: summary.update(
            done=run_batch([shoot], out, scheduler=cluster.scheduler_address)
        )
    )
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        pids = client.run(os.getpid)  # worker address -> its process
        batch.start()
        deadline = time.monotonic() + 120
        while not any(client.processing().values()):
            assert time.monotonic() < deadline and batch.is_alive(), "no bracket started"
            time.sleep(0.01)
        time.sleep(0.2)  # inside the bracket (reading, aligning, fusing, merging metadata)
        busy = [w for w, keys in client.processing().items() if keys]
        assert busy, "the bracket was over before the worker could be killed"
        os.kill(pids[busy[0]], signal.SIGKILL)
        batch.join(timeout=300)
        assert pids[busy[0]] not in client.run(os.getpid).values()  # it was killed, replaced
    assert not batch.is_alive()
    done = summary["done"]
    assert (len(done.stacked), done.failed, done.cancelled) == (3, [], [])
    names = [f"b{i}_000_stacked.tif" for i in range(3)]
    assert results(out) == names  # no second copy, no temp file, no staging folder left
    for name in names:
        img = tifffile.imread(out / name)
        assert img.shape == (320, 480, 3) and img.max() > 0
    events = [(r["event"], Path(r["output"]).name) for r in journal(out)]
    assert sorted(events) == sorted([("start", n) for n in names] + [("done", n) for n in names])


def _second_array_mapped() -> bool:
    """On a worker: is a 24 MiB array allocated after another was freed an mmap of its own
    (glibc's mallinfo2), rather than the freed one's memory from the heap?"""
    import ctypes

    fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in fields.split()]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    a = np.ones(3 * 2**20)
    del a
    b = np.ones(3 * 2**20)
    return libc.mallinfo2().hblkhd >= b.nbytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_workers_reuse_freed_arrays_as_a_local_process_does(cluster, distributed, tmp_path):
    """The nanny starts workers with MALLOC_TRIM_THRESHOLD_, which makes every array an mmap
    page-faulted in afresh (Dask ~1.9x the local pool in bench/bench_batch.py); a bracket on a
    worker brings back glibc's heap reuse there (memory.reuse_freed_memory)."""
    from pybridge.batch import plan_tasks
    from pybridge.brackets import detect
    from pybridge.cluster import run_on_worker

    shoot = tmp_path / "shoot"
    stack_shoot(shoot, counts=(3, 3))
    tasks = plan_tasks(detect([shoot]).brackets, tmp_path / "out", StackOptions(), OutputOptions())
    (tmp_path / "out").mkdir()
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        client.restart()  # workers that have run no bracket yet
        workers = sorted(client.nthreads())
        env = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert set(env.values()) == {"65536"}  # the premise
        assert all(client.run(_second_array_mapped).values())
        for worker, task in zip(workers, tasks, strict=True):
            done = client.submit(run_on_worker, task, pure=False, workers=[worker]).result()
            assert done["ok"], done
        assert not any(client.run(_second_array_mapped).values())


def test_ctrl_c_while_a_scheduler_does_not_answer_ends_the_batch_at_once(distributed, tmp_path):
    """The connection to the scheduler is made beside the detection; a scheduler that accepts
    and never answers must not keep the program alive after Ctrl-C."""
    import socket
    import subprocess

    shoot = tmp_path / "shoot"
    stack_shoot(shoot, counts=(3, 3))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pybridge",
            "batch",
            str(shoot),
            "--output-dir",
            str(tmp_path / "out"),
        ]
        + ["--scheduler", f"tcp://127.0.0.1:{server.getsockname()[1]}", "--progress", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        time.sleep(3.0)  # Dask loaded, detection done: waiting on the connection
        assert proc.poll() is None, proc.communicate()
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        assert time.monotonic() - started < 5.0
        assert proc.returncode == 130, err
        assert not any((tmp_path / "out").glob("*.tif"))
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()


def test_another_service_at_the_scheduler_address_is_named_plainly(distributed, tmp_path):
    """Dask reads another service's answer (here an HTTP server's) as a message length and
    fails for memory; the user is told the address is wrong, at once and in one line."""
    import socket
    import subprocess

    shoot = tmp_path / "shoot"
    stack_shoot(shoot, counts=(3, 3))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
            except OSError:
                return

    threading.Thread(target=answer, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pybridge", "batch", str(shoot)]
            + ["--output-dir", str(tmp_path / "out"), "--scheduler", address],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        server.close()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"focusbridge: error: cannot reach the Dask scheduler at {address} (what answers there"
        " is not a Dask scheduler: check the address and port)"
    ]
    assert time.monotonic() - started < 15


def _engine_state() -> dict:
    import exif.tool

    return {
        "loaded": all(m in sys.modules for m in ("cv2", "pybridge.pipeline", "pybridge.batch")),
        "kept exiftool": exif.tool._Kept.wanted,
        "reuses freed arrays": not _second_array_mapped(),
    }


def test_workers_preloaded_with_the_engine_start_ready(distributed):
    """`dask worker --preload pybridge.cluster` (docs/batch.md): the engine loaded and the
    worker set up as a local pool process is (malloc, one kept exiftool) before any bracket."""
    environ = dict(os.environ)
    with distributed.LocalCluster(
        n_workers=1,
        processes=True,
        threads_per_worker=1,
        dashboard_address=None,
        preload=["pybridge.cluster"],
    ) as preloaded:
        os.environ.clear()
        os.environ.update(environ)
        with distributed.Client(preloaded.scheduler_address, set_as_default=False) as client:
            (state,) = client.run(_engine_state).values()
    assert state == {"loaded": True, "kept exiftool": True, "reuses freed arrays": True}
