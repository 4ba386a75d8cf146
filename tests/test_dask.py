"""`focusbridge batch --scheduler`: brackets on a real Dask cluster (pybridge/cluster.py).

These tests need the `dask` extra (`uv sync --extra dask`; ./dev.sh installs it). Without it
they fail, never skip: the extra is part of what the project promises."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from shoots import stack_shoot

from pybridge.batch import JOURNAL_NAME, run_batch


@pytest.fixture(scope="module")
def distributed():
    try:
        import distributed
    except ImportError:
        pytest.fail("the dask extra is missing: uv sync --locked --group dev --extra dask")
    return distributed


@pytest.fixture(scope="module")
def cluster(distributed):
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
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
