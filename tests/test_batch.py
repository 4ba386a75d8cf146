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
from pybridge.brackets import Bracket, Detection
from pybridge.progress import silent

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
    _, err = proc.communicate()  # until the resource tracker, which outlives it, is gone too
    assert "leaked semaphore" not in err and "Warning" not in err, err
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
    assert len(errors) == 1, done.stderr
    # the line starts with the bracket's result, then names the frame and its problem
    result = out / "mde_issue247-1_stacked.tif"
    assert errors[0].startswith(f"focusbridge: error: {result}: {bad}/mde_issue247-"), errors
    assert "batch: 3 brackets: 2 stacked, 1 failed" in done.stdout
    assert f"  failed: {result}: " in done.stderr
    # a file in the way is no bracket's: the new result takes the next name
    assert listing(out) == [
        JOURNAL_NAME,
        "frame_000_stacked.tif",
        "t_000_stacked-2.tif",
        "t_000_stacked.tif",
    ]
    assert_valid_result(out / "frame_000_stacked.tif")
    assert_valid_result(out / "t_000_stacked-2.tif")
    assert (out / "t_000_stacked.tif").read_bytes() == b"someone else's file"
    assert [
        r["event"] for r in records(out) if r["output"].endswith("mde_issue247-1_stacked.tif")
    ] == [
        "start",
        "failed",
    ]

    again = run("batch", good, bad, taken, "--by-folder", "--output-dir", out, "--jobs", "1")
    assert again.returncode == 1
    assert "batch: 3 brackets: 0 stacked, 2 already done, 1 failed" in again.stdout


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


def two_folders_of_one_name(tmp_path) -> tuple[Path, Path]:
    """Two brackets, a folder each, whose frames have the same names (IMG_000...): two days
    of one camera's numbering."""
    a, b = tmp_path / "dayA", tmp_path / "dayB"
    save_bracket(make_bracket(3, (120, 160), seed=21), a, prefix="IMG_")
    save_bracket(make_bracket(3, (120, 160), seed=22), b, prefix="IMG_")
    return a, b


def test_a_bracket_keeps_its_name_whatever_else_is_in_the_run(tmp_path):
    """A's result is IMG_000_stacked.tif and B's -2 after a run of both; B alone, with or
    without --overwrite, is already done and A's result is never touched. The other way round
    (B first) B keeps the first name and A takes -2. A file in the way is passed by; a bracket
    stacked with other options is refused, in a batch line too, and --overwrite restacks it."""
    a, b = two_folders_of_one_name(tmp_path)
    out = tmp_path / "out"
    both = run("batch", a, b, "--by-folder", "--output-dir", out, "--jobs", "1")
    assert both.returncode == 0, both.stderr
    first, second = out / "IMG_000_stacked.tif", out / "IMG_000_stacked-2.tif"
    mine = {p: p.read_bytes() for p in (first, second)}
    for extra in ([], ["--overwrite"]):
        alone = run("batch", b, "--by-folder", "--output-dir", out, *extra)
        assert alone.returncode == 0, alone.stderr
        assert "batch: 1 bracket: 0 stacked, 1 already done" in alone.stdout
    assert {p: p.read_bytes() for p in (first, second)} == mine
    assert listing(out) == sorted([first.name, second.name, JOURNAL_NAME])

    out = tmp_path / "mirror"
    assert run("batch", b, "--by-folder", "--output-dir", out).returncode == 0
    b_result = (out / first.name).read_bytes()
    both = run("batch", a, b, "--by-folder", "--output-dir", out, "--jobs", "1")
    assert both.returncode == 0, both.stderr
    assert "batch: 2 brackets: 1 stacked, 1 already done" in both.stdout
    assert (out / first.name).read_bytes() == b_result
    assert [Path(r["output"]).name for r in records(out) if r["event"] == "done"] == [
        first.name,
        second.name,
    ]

    out = tmp_path / "in the way"
    out.mkdir()
    (out / first.name).write_bytes(b"someone else's file")
    done = run("batch", a, "--by-folder", "--output-dir", out)
    assert done.returncode == 0, done.stderr
    assert (out / first.name).read_bytes() == b"someone else's file"
    assert_valid_result(out / second.name, (120, 160, 3))
    again = run(
        *["batch", a, "--by-folder", "--output-dir", out, "--method", "depthmap"],
        "--progress",
        "json",
    )
    assert again.returncode == 1
    problem = (
        f"{out / second.name}: exists: an earlier batch stacked this bracket with other "
        "options; pass --overwrite to stack it again"
    )
    assert again.stderr.splitlines()[0] == f"focusbridge: error: {problem}"
    lines = [json.loads(line) for line in again.stdout.splitlines()]
    assert lines == [
        {
            "phase": "batch",
            "frame": 0,
            "count": 1,
            "fraction": 1.0,
            "output": str(out / second.name),
            "outcome": "failed",
            "error": problem,
        },
        {
            "phase": "done",
            "frame": None,
            "count": None,
            "fraction": 1.0,
            "stacked": 0,
            "skipped": 0,
            "failed": 1,
            "cancelled": 0,
        },
    ]
    again = run(
        "batch", a, "--by-folder", "--output-dir", out, "--method", "depthmap", "--overwrite"
    )
    assert again.returncode == 0, again.stderr
    assert (out / first.name).read_bytes() == b"someone else's file"


def test_other_spellings_of_the_same_files_are_the_same_brackets(tmp_path):
    """Frames and the output folder are known by their real paths: through a symlink to the
    shoot or to the output folder, the brackets are already done."""
    a, b = two_folders_of_one_name(tmp_path)
    out = tmp_path / "out"
    assert run("batch", a, b, "--by-folder", "--output-dir", out).returncode == 0
    (tmp_path / "alink").symlink_to(a)
    (tmp_path / "outlink").symlink_to(out)
    for paths, folder in [([tmp_path / "alink", b], out), ([a, b], tmp_path / "outlink")]:
        done = run("batch", *paths, "--by-folder", "--output-dir", folder)
        assert done.returncode == 0, done.stderr
        assert "batch: 2 brackets: 0 stacked, 2 already done" in done.stdout
    assert listing(out) == ["IMG_000_stacked-2.tif", "IMG_000_stacked.tif", JOURNAL_NAME]


def test_bad_input_is_one_line_before_anything_is_written(shoot, tmp_path):
    """A PATH that is not there, a --reference frame that a bracket lacks, a scheduler that
    does not answer: one line, exit 1, no output folder."""
    out = tmp_path / "out"
    cases = [
        (["batch", tmp_path / "nosuchdir"], f"{tmp_path / 'nosuchdir'}: no such file or folder"),
        (
            ["batch", shoot, "--reference", "10"],
            f"{shoot / 'b0_000.tif'}: reference frame 10 is outside the bracket (0..3); 2 other "
            "bracket(s) lack it too",
        ),
        (
            ["batch", shoot, "--scheduler", "tcp://127.0.0.1:1"],
            "cannot reach the Dask scheduler at tcp://127.0.0.1:1 (",
        ),
    ]
    for args, problem in cases:
        done = run(*args, "--output-dir", out, "--progress", "none")
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith(f"focusbridge: error: {problem}"), done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert not out.exists()


def merging_exiftool(batch_pid: int, timeout=120) -> tuple[int, int]:
    """(pool process, exiftool): the exiftool that a pool process runs for a bracket's metadata
    merge, once it has set its own SIGINT handler (which exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pool in children(batch_pid):
            for pid in children(pool):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                caught = int(status.split("SigCgt:")[1].split()[0], 16)
                if b"exiftool" in cmdline and caught & (1 << (signal.SIGINT - 1)):
                    return pool, pid
        time.sleep(0.005)
    raise AssertionError("no exiftool merging metadata")


def test_one_ctrl_c_while_exiftool_merges_lets_the_bracket_finish(shoot, tmp_path):
    """The terminal's Ctrl-C reaches the whole process group; exiftool, in a session of its
    own, does not get it, so the metadata merge of the running bracket finishes."""
    out = tmp_path / "out"
    proc = start("batch", shoot, "--output-dir", out, "--jobs", "1", "--progress", "none")
    _, exiftool = merging_exiftool(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err  # 0: it was the last bracket
    events = [r["event"] for r in records(out)]
    assert "failed" not in events and events.count("start") == events.count("done"), err
    assert "error" not in err, err
    for r in records(out):
        assert_valid_result(Path(r["output"]))
    assert gone(exiftool)


def test_exiftool_has_a_session_of_its_own_and_dies_with_its_process():
    """open_exiftool: exiftool (which exits on SIGINT) is out of reach of the terminal's
    Ctrl-C, and an idle one, which would wait for ever at the end of its input, still dies
    with the process that started it (SIGKILL: no clean-up of ours runs)."""
    script = (
        "import time; from exif.tool import open_exiftool\n"
        "with open_exiftool() as et:\n"
        "    print(et._process.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        exiftool = int(proc.stdout.readline())
        assert os.getsid(exiftool) == exiftool != os.getsid(proc.pid)
    finally:
        proc.kill()
        proc.communicate()
    deadline = time.monotonic() + 10
    while not gone(exiftool):
        assert time.monotonic() < deadline, "exiftool outlived the process that started it"
        time.sleep(0.05)


@pytest.mark.parametrize("victim", ["batch", "pool process"])
def test_no_exiftool_outlives_a_killed_process(shoot, tmp_path, victim):
    """exiftool is in a session of its own, and still dies with the pool process that runs
    it (PR_SET_PDEATHSIG), which dies with the batch: SIGKILL leaves no exiftool behind. A
    killed pool process's bracket is tried again."""
    out = tmp_path / "out"
    proc = start("batch", shoot, "--output-dir", out, "--jobs", "1", "--progress", "none")
    pool, exiftool = merging_exiftool(proc.pid)
    os.kill(proc.pid if victim == "batch" else pool, signal.SIGKILL)
    said, err = proc.communicate(timeout=120)
    deadline = time.monotonic() + 10
    while not gone(exiftool):
        assert time.monotonic() < deadline, f"exiftool {exiftool} outlived the {victim}"
        time.sleep(0.05)
    if victim == "pool process":
        assert proc.returncode == 0, err
        assert "batch: 3 brackets: 3 stacked" in said


def test_a_late_ctrl_c_still_gets_the_summary(tmp_path):
    """A Ctrl-C that comes as the pool shuts down, once the brackets have ended (the second of
    two, say), does not cut the run short of its summary and exit status."""
    folder = tmp_path / "scope"
    save_bracket(make_bracket(3, (120, 160), seed=6), folder)
    late = (
        "import os, signal, sys; from pybridge import batch; from pybridge.cli import main; "
        "close = batch.LocalRunner.close; "
        "batch.LocalRunner.close = lambda self: (os.kill(os.getpid(), signal.SIGINT), "
        "close(self)); "
        "sys.exit(main(sys.argv[1:]))"
    )
    args = [folder, "--by-folder", "--output-dir", tmp_path / "out", "--progress", "none"]
    done = subprocess.run(
        [sys.executable, "-c", late, "batch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "batch: 1 bracket: 1 stacked\n"
    assert "cancelled" not in done.stderr


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


class _CtrlCAtTheEnd(FakeRunner):
    """One bracket at a time; a real SIGINT comes as the first one ends."""

    sent = False

    def slots(self):
        return 1

    def wait(self, futures, timeout):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return super().wait(futures, timeout)


def test_a_ctrl_c_as_the_running_bracket_ends_waits_for_nothing(tmp_path):
    journal = Journal(tmp_path)
    summary = Summary(total=3)
    logged = []
    todo = [_task(f"b{i}", 1) for i in range(3)]
    batch._run(
        todo, _CtrlCAtTheEnd(None), journal, summary, silent, lambda kind, m: logged.append(m)
    )
    journal.close()
    assert logged == ["stopping: 2 bracket(s) not started"]
    assert summary.stacked == ["/out/b0.tif"]
    assert summary.cancelled == ["/out/b1.tif", "/out/b2.tif"]


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
    found = Detection([Bracket(t.frames, "") for t in tasks])
    monkeypatch.setattr("pybridge.brackets.detect", lambda *a, **k: found)
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
