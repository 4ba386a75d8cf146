"""`stack` and `run-job` under interruption and hostile input: nothing lost, nothing left.

Each test here failed on 0.1: side files replacing inputs, rollback losing the old result,
signals during the metadata phase leaving temp files, late errors after the whole stack,
a grey reference frame turning a colour bracket grey.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import copy_camera_files
from synthetic import make_bracket, save_bracket, save_image

FOCUSBRIDGE = [sys.executable, "-m", "pybridge"]


def run(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FOCUSBRIDGE, *map(os.fsdecode, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [*FOCUSBRIDGE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def one_line_error(done, *must_contain):
    assert done.returncode == 1, (done.returncode, done.stderr)
    err = done.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("focusbridge: error: "), err
    assert "internal error" not in err and "partial" not in err, err
    for text in must_contain:
        assert str(text) in err, (text, err)
    return err


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def digest(paths) -> dict:
    return {Path(p).name: Path(p).read_bytes() for p in paths}


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("frames")
    return save_bracket(
        make_bracket(4, (120, 160), breathing=0.005, seed=3), folder, ".png", bit_depth=8
    )


@pytest.fixture()
def own_frames(tmp_path, frames) -> list[Path]:
    """Copies in the test's own folder, so a test can check that nothing touched them."""
    folder = tmp_path / "in"
    folder.mkdir()
    return [Path(shutil.copy(f, folder)) for f in frames]


# -- 3. side files never land on what a command reads ----------------------------------------


def test_report_naming_an_input_or_the_result_is_refused(tmp_path, own_frames):
    before = digest(own_frames)
    out = tmp_path / "out.tif"
    one_line_error(
        run("stack", *own_frames, "-o", out, "--report", own_frames[2]),
        own_frames[2],
        "--report",
        "input frame",
    )
    one_line_error(
        run("stack", *own_frames, "-o", out, "--report", out, "--overwrite"),
        out,
        "--report",
        "result",
    )
    # the same file through `..` and through a symlink
    dotted = own_frames[1].parent / ".." / "in" / own_frames[1].name
    one_line_error(
        run("stack", *own_frames, "-o", out, "--report", dotted, "--overwrite"), "input frame"
    )
    link = tmp_path / "report.json"
    link.symlink_to(own_frames[0])
    one_line_error(
        run("stack", *own_frames, "-o", out, "--report", link, "--overwrite"), "input frame"
    )
    assert digest(own_frames) == before and not out.exists()


def test_output_that_is_a_hard_link_or_symlink_to_an_input_is_refused(tmp_path, own_frames):
    before = digest(own_frames)
    hard = tmp_path / "hard.png"
    os.link(own_frames[0], hard)
    one_line_error(run("stack", *own_frames, "-o", hard, "--overwrite"), hard, "input frame")
    soft = tmp_path / "soft.png"
    soft.symlink_to(own_frames[3])
    one_line_error(run("stack", *own_frames, "-o", soft, "--overwrite"), soft, "input frame")
    depth = tmp_path / "depth.png"
    os.link(own_frames[1], depth)
    one_line_error(
        run("stack", *own_frames, "-o", tmp_path / "o.tif", "--depth-map", depth, "--overwrite"),
        depth,
        "input frame",
    )
    assert digest(own_frames) == before


def test_output_that_is_a_metadata_source_or_base_is_refused(tmp_path, own_frames, test_data):
    cams = copy_camera_files(test_data, tmp_path / "cam", ["Canon.jpg", "Nikon.jpg"])
    originals = [cams / "Canon.jpg"] * 3 + [cams / "Nikon.jpg"]
    before = digest(originals)
    one_line_error(
        run("stack", *own_frames, "-o", cams / "Nikon.jpg", "--overwrite", "--sources", *originals),
        "Nikon.jpg",
        "metadata source",
    )
    one_line_error(
        run(
            "stack",
            *own_frames,
            "-o",
            cams / "Canon.jpg",
            "--overwrite",
            "--base",
            cams / "Canon.jpg",
        ),
        "Canon.jpg",
        "metadata base",
    )
    assert digest(originals) == before


def _job(tmp_path: Path, frames, **extra) -> Path:
    manifest = {
        "version": 1,
        "frames": [str(f) for f in frames],
        "output": str(tmp_path / "stacked.tif"),
        **extra,
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("key", ["status_file", "progress_file", "pid_file"])
def test_run_job_side_files_never_replace_an_input(tmp_path, own_frames, key):
    before = digest(own_frames)
    done = run("run-job", _job(tmp_path, own_frames, **{key: str(own_frames[1])}))
    one_line_error(done, own_frames[1], key)
    assert digest(own_frames) == before and not (tmp_path / "stacked.tif").exists()
    # nor the result the job is about to write
    done = run(
        "run-job",
        _job(
            tmp_path,
            own_frames,
            **{key: str(tmp_path / "stacked_depth.tif")},
            options={"depth_map": True},
        ),
    )
    one_line_error(done, "stacked_depth.tif")


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"overwrite": "false"}, "overwrite"),
        ({"bit_depth": "16"}, "bit_depth"),
        ({"bit_depth": True}, "bit_depth"),
        ({"depth_map": 1}, "depth_map"),
        ({"method": ["pyramid"]}, "method"),
        ({"reference": 2.5}, "reference"),
        ({"metadata": "no"}, "metadata"),
    ],
)
def test_run_job_options_are_checked_by_type(tmp_path, own_frames, options, problem):
    existing = tmp_path / "stacked.tif"
    existing.write_bytes(b"precious")
    status = tmp_path / "status.json"
    done = run("run-job", _job(tmp_path, own_frames, options=options, status_file=str(status)))
    one_line_error(done, problem)
    assert existing.read_bytes() == b"precious"
    assert json.loads(status.read_text())["ok"] is False


def test_run_job_rejects_bad_top_level_types(tmp_path, own_frames):
    for extra, problem in [
        ({"status_file": 7}, "status_file"),
        ({"kind": ["stack"]}, "kind"),
        ({"options": "fast"}, "options"),
        ({"version": True}, "version"),
    ]:
        one_line_error(run("run-job", _job(tmp_path, own_frames, **extra)), problem)


# -- 4. --overwrite rollback puts the old files back ---------------------------------------


def test_failed_commit_of_a_set_restores_the_previous_files(tmp_path):
    from pybridge.atomic import atomic_outputs

    result, depth = tmp_path / "stack.tif", tmp_path / "stack_depth.tif"
    result.write_bytes(b"old result")
    depth.write_bytes(b"old depth")
    with pytest.raises(OSError):  # keeping the old "depth map" aside fails: it is a folder
        with atomic_outputs([result, depth], overwrite=True) as (t1, t2):
            t1.write_bytes(b"new result")
            t2.write_bytes(b"new depth")
            # the depth map's commit will fail: its name turns into a non-empty folder
            depth.unlink()
            depth.mkdir()
            (depth / "x").write_bytes(b"")
    assert result.read_bytes() == b"old result"
    assert listing(tmp_path) == ["stack.tif", "stack_depth.tif"]


def test_successful_overwrite_leaves_no_backup(tmp_path):
    from pybridge.atomic import atomic_outputs

    result = tmp_path / "stack.tif"
    result.write_bytes(b"old")
    with atomic_outputs([result], overwrite=True) as (t,):
        t.write_bytes(b"new")
    assert result.read_bytes() == b"new" and listing(tmp_path) == ["stack.tif"]


# -- 7. signals during writing and metadata: done, or nothing left -----------------------


@pytest.fixture(scope="module")
def metadata_bracket(tmp_path_factory, test_data):
    """Frames plus camera originals to take metadata from: the run has a metadata phase."""
    folder = tmp_path_factory.mktemp("meta")
    frames = save_bracket(
        make_bracket(4, (600, 800), breathing=0.004, seed=5), folder / "f", ".png", bit_depth=8
    )
    cams = copy_camera_files(test_data, folder / "cam", ["CanonRaw.cr3"])
    return frames, [cams / "CanonRaw.cr3"] * len(frames)


def _run_and_signal(out_dir: Path, frames, sources, when, signals=(signal.SIGTERM,)):
    """Start a stack with metadata; at `when` ("metadata" or seconds) send `signals`."""
    out = out_dir / "stacked.tif"
    proc = start(
        "stack", *frames, "-o", out, "--depth-map", "--sources", *sources, "--progress", "json"
    )
    if isinstance(when, str):
        for line in proc.stdout:
            if json.loads(line)["phase"] == when:
                break
    else:
        time.sleep(when)
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, out


def _done_or_nothing(rc, err, out: Path):
    """The promise: exit 0 with the whole set (metadata included), or 130 with nothing."""
    names = listing(out.parent)
    if rc == 0:
        assert names == ["stacked.tif", "stacked_depth.tif"], names
        assert tifffile.imread(out).dtype == np.uint16
        tags = subprocess.run(
            ["exiftool", "-s3", "-XMP-fbstack:FrameCount", str(out)], capture_output=True, text=True
        ).stdout.strip()
        assert tags == "4", err
    else:
        assert rc == 130, err
        assert names == [], names


def test_one_signal_in_the_metadata_phase_finishes_the_run(tmp_path, metadata_bracket):
    frames, sources = metadata_bracket
    for sig in (signal.SIGTERM, signal.SIGINT):
        out_dir = tmp_path / sig.name
        out_dir.mkdir()
        rc, err, out = _run_and_signal(out_dir, frames, sources, "metadata", (sig,))
        assert rc == 0, err
        assert "finished instead" in err
        _done_or_nothing(rc, err, out)


def test_a_second_signal_in_the_metadata_phase_cancels_and_removes_everything(
    tmp_path, metadata_bracket
):
    frames, sources = metadata_bracket
    rc, err, out = _run_and_signal(
        tmp_path, frames, sources, "metadata", (signal.SIGTERM, signal.SIGTERM)
    )
    time.sleep(0.5)  # anything exiftool might still write would be there by now
    assert rc == 130, err
    assert listing(tmp_path) == []


def test_signals_at_random_points_give_done_or_nothing(tmp_path, metadata_bracket):
    frames, sources = metadata_bracket
    rng = random.Random(7)
    start_t = time.perf_counter()
    # one undisturbed run measures how long a run takes here
    clean = tmp_path / "clean"
    clean.mkdir()
    t0 = time.perf_counter()
    rc, err, out = _run_and_signal(clean, frames, sources, 0.0, ())
    span = time.perf_counter() - t0
    assert rc == 0, err
    for i in range(6):
        out_dir = tmp_path / f"run{i}"
        out_dir.mkdir()
        sigs = (signal.SIGTERM,) * rng.choice((1, 2))
        rc, err, out = _run_and_signal(out_dir, frames, sources, rng.uniform(0.2, span), sigs)
        time.sleep(0.2)
        _done_or_nothing(rc, err, out)
    assert time.perf_counter() - start_t < 300


def test_stale_partials_of_a_killed_run_are_cleaned_by_the_next(tmp_path, frames):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale = [
        tmp_path / f".stacked.partial-{dead.pid}-0badcafe.tif",
        tmp_path / f"..stacked.partial-{dead.pid}-0badcafe.fbmeta-12345678.tif",
    ]
    live = tmp_path / f".stacked.partial-{os.getpid()}-00c0ffee.tif"  # this test is alive
    other = tmp_path / ".hidden-notes.txt"
    for p in [*stale, live, other]:
        p.write_bytes(b"x" * 1000)
        os.utime(p, (time.time() - 60, time.time() - 60))
    done = run("stack", *frames, "-o", tmp_path / "stacked.tif")
    assert done.returncode == 0, done.stderr
    assert listing(tmp_path) == sorted([live.name, other.name, "stacked.tif"])


def test_sigkill_leaves_partials_that_the_next_run_removes(tmp_path, metadata_bracket):
    frames, sources = metadata_bracket
    proc = start(
        "stack",
        *frames,
        "-o",
        tmp_path / "stacked.tif",
        "--sources",
        *sources,
        "--progress",
        "json",
    )
    for line in proc.stdout:
        if json.loads(line)["phase"] == "metadata":
            break
    proc.kill()
    proc.wait(timeout=60)
    time.sleep(2.5)  # past the age a starting run may have
    assert any(".partial-" in n for n in listing(tmp_path))
    done = run("stack", *frames, "-o", tmp_path / "stacked.tif", "--sources", *sources)
    assert done.returncode == 0, done.stderr
    assert listing(tmp_path) == ["stacked.tif"]


# -- 9. every checkable error comes before the first pixel is read ---------------------------


def _no_work_done(done):
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert not [e for e in events if e["phase"] in ("align", "fuse", "write")], events


@pytest.mark.parametrize(
    "name, problem",
    [
        ("out.xyz", "unsupported result format"),
        ("out", "(no extension)"),
        ("two\nlines.tif", "line breaks"),
    ],
)
def test_bad_output_names_fail_before_reading_pixels(tmp_path, frames, name, problem):
    done = run("stack", *frames, "-o", tmp_path / name, "--progress", "json")
    one_line_error(done, problem)
    _no_work_done(done)
    assert listing(tmp_path) == []


def test_bad_depth_map_name_fails_before_reading_pixels(tmp_path, frames):
    done = run(
        "stack",
        *frames,
        "-o",
        tmp_path / "o.tif",
        "--depth-map",
        tmp_path / "d.bmp",
        "--progress",
        "json",
    )
    one_line_error(done, "d.bmp", "depth map")
    _no_work_done(done)


def test_missing_metadata_files_fail_before_reading_pixels(tmp_path, frames, test_data):
    cams = copy_camera_files(test_data, tmp_path / "cam", ["Canon.jpg"])
    out = tmp_path / "o.tif"
    done = run("stack", *frames, "-o", out, "--base", tmp_path / "nope.cr3", "--progress", "json")
    one_line_error(done, "nope.cr3", "no such file")
    _no_work_done(done)
    partly = [cams / "Canon.jpg", tmp_path / "gone.cr3", cams / "Canon.jpg", cams / "Canon.jpg"]
    done = run("stack", *frames, "-o", out, "--sources", *partly, "--progress", "json")
    one_line_error(done, "gone.cr3", "no such file")
    _no_work_done(done)
    # 10: sources that are all missing were silently ignored (no metadata, exit 0)
    missing = [tmp_path / f"missing{i}.cr3" for i in range(4)]
    done = run("stack", *frames, "-o", out, "--sources", *missing)
    one_line_error(done, "missing0.cr3")
    assert not out.exists()


def test_non_utf8_file_names_work_or_fail_cleanly(tmp_path, frames):
    folder = os.fsencode(tmp_path) + b"/bad\xff\xfename"
    os.mkdir(folder)
    copies = []
    for i, f in enumerate(frames):
        name = folder + b"/frame\xe9%d.png" % i
        shutil.copy(f, name)
        copies.append(name)
    out = folder + b"/stacked\xff.tif"
    done = subprocess.run(
        [
            *FOCUSBRIDGE,
            "stack",
            *copies,
            "-o",
            out,
            "--report",
            folder + b"/report\xfe.json",
            "--progress",
            "json",
        ],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert os.path.exists(out)
    done = subprocess.run(
        [*FOCUSBRIDGE, "stack", *copies, "-o", out], capture_output=True, timeout=300
    )
    err = done.stderr.decode("utf-8")
    assert done.returncode == 1 and "exists" in err and "internal error" not in err


# -- 10. a grey reference frame keeps a colour bracket colour ----------------------------


def test_grey_reference_frame_keeps_the_result_in_colour(tmp_path):
    b = make_bracket(5, (120, 160), breathing=0.0, seed=11)
    paths = save_bracket(b, tmp_path / "in", ".png", bit_depth=8)
    grey = b.frames[2].mean(axis=2)  # the middle (reference) frame is grey
    paths[2].unlink()
    save_image(paths[2], grey, 8)
    out = tmp_path / "out.tif"
    done = run("stack", *paths, "-o", out)
    assert done.returncode == 0, done.stderr
    img = tifffile.imread(out).astype(np.float32)
    assert img.ndim == 3 and img.shape[2] == 3
    truth = b.truth
    spread = np.abs(img[..., 0] - img[..., 2]).mean() / 65535
    assert spread > 0.5 * np.abs(truth[..., 0] - truth[..., 2]).mean(), spread


def test_write_errors_name_the_users_file_not_the_temp_file(tmp_path, frames, monkeypatch):
    """A disk that fills up while the depth map is written (simulated at the one call that
    writes it): the message names OUT_depth.tif, and the set leaves nothing behind."""
    import errno

    from pybridge import pipeline
    from pybridge.errors import StackError

    def full_disk(path, *args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pipeline, "write_depth_map", full_disk)
    out = tmp_path / "stacked.tif"
    with pytest.raises(StackError) as err:
        pipeline.stack(frames, out, depth_map=tmp_path / "stacked_depth.tif")
    assert "stacked_depth.tif: No space left on device" in str(err.value)
    assert ".partial-" not in str(err.value)
    assert listing(tmp_path) == []


# -- 11. long names: temp names fit wherever the name itself does ----------------------------


def test_names_up_to_the_limit_work_with_metadata_and_overwrite(tmp_path, frames, test_data):
    """A 255-byte name (the most a file system takes) was refused: its temp name
    `.<stem>.partial-<pid>-<hex>.tif`, and exiftool's names made from that, are longer."""
    cams = copy_camera_files(test_data, tmp_path / "cam", ["Canon.jpg"])
    out = tmp_path / ("ä" * 125 + "x.tif")  # multi-byte characters: the limit is in bytes
    assert len(os.fsencode(out.name)) == 255
    for again in ([], ["--overwrite"]):
        done = run("stack", *frames, "-o", out, "--sources", *[cams / "Canon.jpg"] * 4, *again)
        assert done.returncode == 0, done.stderr
    assert listing(tmp_path) == ["cam", out.name]
    make = subprocess.run(["exiftool", "-s3", "-Make", str(out)], capture_output=True, text=True)
    assert make.stdout.strip() == "Canon"
    too_long = tmp_path / ("ä" * 126 + ".tif")
    one_line_error(run("stack", *frames, "-o", too_long), f"{too_long}: file name too long")
    assert listing(tmp_path) == ["cam", out.name]


def test_temps_of_a_long_name_and_what_tools_make_of_them_are_removed(tmp_path):
    from pybridge.atomic import atomic_outputs, replaced

    out = tmp_path / ("b" * 251 + ".tif")
    with pytest.raises(KeyboardInterrupt):
        with atomic_outputs([out]) as (temp,):
            temp.write_bytes(b"result")
            with replaced(temp, "fbmeta") as derived:  # the metadata merge's copy
                derived.write_bytes(b"tags")
                # exiftool edits in place through `<name>_exiftool_tmp`
                Path(f"{derived}_exiftool_tmp").write_bytes(b"edit")
                assert listing(tmp_path) == sorted(
                    [temp.name, derived.name, f"{derived.name}_exiftool_tmp"]
                )
                raise KeyboardInterrupt
    assert listing(tmp_path) == []
