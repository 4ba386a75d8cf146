"""`focusbridge batch`: every bracket stacked, resumable after SIGKILL, failures reported,
Ctrl-C semantics, the memory plan (pybridge/batch.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from shoots import stack_shoot
from synthetic import make_bracket, save_bracket

from pybridge import batch
from pybridge.batch import JOURNAL_NAME, Journal, Summary, Task, default_jobs
from pybridge.brackets import Detection

FOCUSBRIDGE = [sys.executable, "-m", "pybridge"]


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FOCUSBRIDGE, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def start(*args) -> subprocess.Popen:
    """`focusbridge ...` in a session of its own, so the test can signal its process group
    the way a terminal's Ctrl-C does."""
    return subprocess.Popen(
        [*FOCUSBRIDGE, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def records(out: Path) -> list[dict]:
    path = out / JOURNAL_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(out: Path, event: str, proc: subprocess.Popen, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["event"] == event for r in records(out)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {event!r} in the journal"
        time.sleep(0.01)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def assert_valid_result(path: Path, shape=(200, 300, 3)) -> None:
    img = tifffile.imread(path)
    assert img.shape == shape and img.dtype == np.uint16 and img.max() > 0, path


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


RESULTS = ["b0_000_stacked.tif", "b1_000_stacked.tif", "b2_000_stacked.tif"]


@pytest.fixture
def shoot(tmp_path) -> Path:
    folder = tmp_path / "shoot"
    stack_shoot(folder, counts=(4, 4, 4))
    return folder


def test_a_rerun_after_sigkill_skips_finished_brackets(shoot, tmp_path):
    out = tmp_path / "out"
    proc = start("batch", shoot, "--output-dir", out, "--jobs", "1", "--progress", "json")
    wait_for(out, "done", proc)
    pool = children(proc.pid)
    proc.kill()  # SIGKILL, to the client alone
    proc.communicate()
    # its pool process dies with it (PR_SET_PDEATHSIG), so nothing is written after the kill
    deadline = time.monotonic() + 10
    while not all(gone(p) for p in pool):
        assert time.monotonic() < deadline, "the pool outlived the killed client"
        time.sleep(0.05)
    finished = {r["output"] for r in records(out) if r["event"] == "done"}
    assert 1 <= len(finished) < 3
    before = {f: os.stat(f) for f in finished}

    done = run("batch", shoot, "--output-dir", out, "--jobs", "1")
    assert done.returncode == 0, done.stderr
    assert f"{3 - len(finished)} stacked, {len(finished)} already done" in done.stdout
    assert listing(out) == [*RESULTS, JOURNAL_NAME]  # no temp file, no staging folder
    for name in RESULTS:
        assert_valid_result(out / name)
    for f, st in before.items():  # not stacked again
        now = os.stat(f)
        assert (now.st_mtime_ns, now.st_ino, now.st_size) == (st.st_mtime_ns, st.st_ino, st.st_size)
    last = {}
    for r in records(out):
        last[r["key"]] = r
    assert sorted(Path(r["output"]).name for r in last.values()) == RESULTS
    assert {r["event"] for r in last.values()} == {"done"}
    # the same frames stacked alone give the same pixels (the batch adds nothing of its own)
    alone = tmp_path / "alone.tif"
    frames = sorted(shoot.glob("b1_*.tif"))
    assert run("stack", *frames, "-o", alone).returncode == 0
    assert np.array_equal(tifffile.imread(alone), tifffile.imread(out / RESULTS[1]))


def test_a_failing_bracket_is_reported_and_the_others_go_on(tmp_path, test_data):
    good = tmp_path / "good"
    save_bracket(make_bracket(4, (200, 300), seed=3), good)
    bad = tmp_path / "bad"  # NEFs that LibRaw opens and then fails to decode
    bad.mkdir()
    for name in ("mde_issue247-1.nef", "mde_issue247-2.nef"):
        shutil.copy(test_data / "raw" / "broken" / name, bad / name)
    taken = tmp_path / "taken"
    save_bracket(make_bracket(3, (200, 300), seed=4), taken, prefix="t_")
    out = tmp_path / "out"
    out.mkdir()
    (out / "t_000_stacked.tif").write_bytes(b"someone else's file")

    done = run("batch", good, bad, taken, "--by-folder", "--output-dir", out, "--jobs", "2")
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("focusbridge: error: ")]
    assert len(errors) == 2, done.stderr
    assert errors[0] == (
        f"focusbridge: error: {out / 't_000_stacked.tif'}: exists; pass --overwrite to replace it"
    )
    assert "mde_issue247-" in errors[1] and ".nef: " in errors[1]
    assert "batch: 3 brackets: 1 stacked, 2 failed" in done.stdout
    assert listing(out) == [JOURNAL_NAME, "frame_000_stacked.tif", "t_000_stacked.tif"]
    assert_valid_result(out / "frame_000_stacked.tif")
    assert (out / "t_000_stacked.tif").read_bytes() == b"someone else's file"
    assert [
        r["event"] for r in records(out) if r["output"].endswith("mde_issue247-1_stacked.tif")
    ] == [
        "start",
        "failed",
    ]

    again = run("batch", good, bad, taken, "--by-folder", "--output-dir", out, "--jobs", "1")
    assert again.returncode == 1
    assert "batch: 3 brackets: 0 stacked, 1 already done, 2 failed" in again.stdout


def test_results_in_the_input_folder_are_no_frames_next_time(tmp_path):
    folder = tmp_path / "scope"
    save_bracket(make_bracket(3, (200, 300), seed=5), folder)
    args = ["batch", folder, "--by-folder", "--output-dir", folder, "--depth-map", "--jobs", "1"]
    done = run(*args)
    assert done.returncode == 0, done.stderr
    made = ["frame_000_stacked.tif", "frame_000_stacked_depth.tif"]
    assert set(made) <= set(listing(folder))
    again = run(*args)  # the result and its depth map are not taken for frames of the folder
    assert again.returncode == 0, again.stderr
    assert "batch: 1 bracket: 0 stacked, 1 already done" in again.stdout
    assert "in no bracket" not in again.stderr


@pytest.mark.parametrize("count", [1, 2], ids=["one Ctrl-C", "two Ctrl-C"])
def test_ctrl_c(shoot, tmp_path, count):
    """One Ctrl-C (SIGINT to the whole process group, as a terminal sends it): the running
    bracket finishes, no other starts, exit 130. Two: the running bracket is cancelled and
    leaves nothing. A rerun does the rest."""
    out = tmp_path / "out"
    proc = start("batch", shoot, "--output-dir", out, "--jobs", "1", "--progress", "json")
    wait_for(out, "start", proc)
    for _ in range(count):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    events = [(r["event"], Path(r["output"]).name) for r in records(out)]
    if count == 1:
        assert "stopping: 2 bracket(s) not started; waiting for the 1 running" in err
        assert events == [("start", RESULTS[0]), ("done", RESULTS[0])]
        assert listing(out) == [RESULTS[0], JOURNAL_NAME]
        assert_valid_result(out / RESULTS[0])
    else:
        assert "cancelling 1 running bracket(s)" in err
        assert events == [("start", RESULTS[0])]
        assert listing(out) == [JOURNAL_NAME]
    done = run("batch", shoot, "--output-dir", out, "--jobs", "2")
    assert done.returncode == 0, done.stderr
    assert listing(out) == [*RESULTS, JOURNAL_NAME]


# -- the plan ----------------------------------------------------------------------------


def _task(name: str, megapixels: float) -> Task:
    return Task(name, [name], f"/out/{name}.tif", None, None, {}, None, int(megapixels * 1e6))


class FakeRunner:
    """Finishes the oldest running bracket at each wait; records what ran together."""

    def __init__(self, budget):
        self.budget = budget
        self.running: list = []
        self.together: list[list[str]] = []

    def slots(self):
        return 4

    def submit(self, task):
        self.running.append(task)
        self.together.append([t.key for t in self.running])
        return task.key  # the "future"

    def wait(self, futures, timeout):
        return [self.running.pop(0).key] if self.running else []

    def outcome(self, future):
        return {"ok": True, "size": 1}


def test_brackets_start_only_when_they_fit_in_memory(tmp_path):
    big, small = _task("big", 40), _task("small", 2)
    budget = 2 * big.memory() + 1  # two big ones fit, not three
    runner = FakeRunner(budget)
    journal = Journal(tmp_path)
    summary = Summary(total=5)
    todo = [_task(f"b{i}", 40) for i in range(3)] + [small, _task("huge", 100)]
    batch._run(todo, runner, journal, summary, lambda *a, **k: None, lambda *a: None)
    journal.close()
    assert len(summary.stacked) == 5
    sizes = {t.key: t.memory() for t in todo}
    for together in runner.together:
        assert len(together) == 1 or sum(sizes[k] for k in together) <= budget, together
    assert ["b0", "b1"] in runner.together and ["huge"] in runner.together  # alone


def test_the_largest_brackets_start_first(tmp_path, monkeypatch):
    """Largest first (frames x pixels), detection order among equals: the batch does not end
    waiting on one big bracket started last."""
    sizes = {"a": (3, 2), "b": (9, 2), "c": (3, 2), "d": (3, 8), "e": (5, 2)}
    tasks = [
        Task(
            k,
            [f"/in/{k}{i}.tif" for i in range(n)],
            f"/out/{k}.tif",
            None,
            None,
            {},
            None,
            int(mp * 1e6),
        )
        for k, (n, mp) in sizes.items()
    ]
    monkeypatch.setattr(batch, "plan_tasks", lambda *a: tasks)
    monkeypatch.setattr(batch, "preflight", lambda *a: "run")
    monkeypatch.setattr("pybridge.brackets.detect", lambda *a, **k: Detection())
    submitted = []
    monkeypatch.setattr(batch, "LocalRunner", lambda *a: _Recorder(submitted))
    batch.run_batch([tmp_path], tmp_path / "out")
    assert submitted == ["d", "b", "e", "a", "c"]


class _Recorder(FakeRunner):
    def __init__(self, submitted):
        super().__init__(None)
        self.submitted = submitted

    def submit(self, task):
        self.submitted.append(task.key)
        return super().submit(task)

    def close(self):
        pass

    def describe(self):
        return "recorder"


def test_default_jobs_from_cores_and_memory(monkeypatch):
    monkeypatch.setattr(batch, "cpu_count", lambda: 8)
    tasks = [_task(f"t{i}", 24) for i in range(10)]  # 24 MP: ~2 GB each at its peak
    assert default_jobs(tasks, None) == 8
    assert default_jobs(tasks, 8 * 2**30) == 3
    assert default_jobs(tasks, 2**30) == 1  # never 0
    assert default_jobs(tasks[:2], 64 * 2**30) == 2


def test_journal_survives_a_torn_last_line(tmp_path):
    good = {"event": "done", "key": "k1", "output": "/o.tif", "size": 5}
    (tmp_path / JOURNAL_NAME).write_text(json.dumps(good) + "\n" + '{"event": "do')
    journal = Journal(tmp_path)
    assert journal.last() == {"k1": good}
    journal.append("start", _task("k2", 1))
    with pytest.raises(Exception, match="another focusbridge batch is writing here"):
        Journal(tmp_path)
    journal.close()
    lines = (tmp_path / JOURNAL_NAME).read_text().splitlines()
    assert json.loads(lines[-1])["key"] == "k2" and len(lines) == 3


def test_scheduler_without_dask_is_one_line_and_dask_loads_only_for_it(tmp_path):
    hide = "import sys; sys.modules['distributed'] = sys.modules['dask'] = None; "
    main = "from pybridge.cli import main; code = main(sys.argv[1:]); "
    leave = "sys.exit(code)"
    report = "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    args = ["batch", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-c", hide + main + leave, *args, "--scheduler", "tcp://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == (
        "focusbridge: error: --scheduler needs Dask, which is not installed: pip install "
        "'focusbridge[dask]' (in a checkout: uv sync --extra dask)\n"
    )
    assert not (tmp_path / "out").exists()
    done = subprocess.run(
        [sys.executable, "-c", "import sys; " + main + report + "; " + leave, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_a_second_batch_into_a_folder_in_use_fails_before_detecting(tmp_path, monkeypatch):
    """The journal's lock is probed first: no exiftool pass over every file just to be told
    that another batch is writing into the same folder."""
    holder = Journal(tmp_path)
    detected = []
    monkeypatch.setattr("pybridge.brackets.detect", lambda *a, **k: detected.append(a))
    with pytest.raises(Exception, match="another focusbridge batch is writing here"):
        batch.run_batch([tmp_path], tmp_path)
    assert detected == []
    holder.close()
    assert Journal.peek_outputs(tmp_path) == set()  # free again; the probe kept no lock
    Journal(tmp_path).close()
