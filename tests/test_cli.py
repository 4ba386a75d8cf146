"""The `focusbridge` command: stack, demo, run-job, bad input, progress, cancel."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from synthetic import make_bracket, save_bracket

REPO = Path(__file__).resolve().parents[1]
FOCUSBRIDGE = [sys.executable, "-m", "pybridge"]


def run(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FOCUSBRIDGE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


@pytest.fixture(scope="module")
def bracket_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bracket")
    b = make_bracket(5, (200, 300), breathing=0.01, seed=4)
    return save_bracket(b, folder, ".tif", bit_depth=16)


def _assert_one_line_error(done, *must_contain):
    assert done.returncode == 1, (done.returncode, done.stderr)
    err = done.stderr.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("focusbridge: error: ")
    for text in must_contain:
        assert str(text) in err, (text, err)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- happy paths --------------------------------------------------------------------------


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("focusbridge")
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("focusbridge ")


def test_help_explains_every_option():
    done = run("stack", "--help")
    assert done.returncode == 0
    for option in (
        "--method",
        "--no-align",
        "--align-model",
        "--interpolation",
        "--reference",
        "--no-gain",
        "--no-halo-suppression",
        "--crop",
        "--depth-map",
        "--confidence-map",
        "--bit-depth",
        "--overwrite",
        "--no-metadata",
        "--sources",
        "--base",
        "--report",
        "--progress",
    ):
        assert option in done.stdout


def test_stack_writes_result_maps_report_and_json_progress(tmp_path, bracket_files):
    out = tmp_path / "result.tif"
    done = run(
        "stack",
        *bracket_files,
        "-o",
        out,
        "--depth-map",
        "--confidence-map",
        "--report",
        tmp_path / "report.json",
        "--progress",
        "json",
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert {e["phase"] for e in events} >= {"align", "fuse", "write", "done"}
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(e["count"] == 5 for e in events if e["phase"] in ("align", "fuse"))
    assert sorted(e["frame"] for e in events if e["phase"] == "fuse") == [0, 1, 2, 3, 4]
    assert events[-1]["output"] == str(out)

    assert tifffile.imread(out).dtype == np.uint16
    depth = tifffile.imread(tmp_path / "result_depth.tif")
    assert depth.dtype == np.uint16 and len(np.unique(depth)) >= 3
    from pybridge.write import depth_map_index

    assert set(np.unique(depth)) <= {round(i * 65535 / 4) for i in range(5)}
    assert depth_map_index(depth, 5).max() <= 4
    conf = tifffile.imread(tmp_path / "result_confidence.tif")
    assert conf.dtype == np.uint16 and conf.shape == depth.shape
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["frames"]) == 5 and report["reference"] == 2
    assert report["frames"][2]["scale"] == 1.0
    assert abs(report["frames"][4]["scale"] - 1.0201) < 0.003  # 1 % breathing per frame
    assert _leftovers(tmp_path) == [
        "report.json",
        "result.tif",
        "result_confidence.tif",
        "result_depth.tif",
    ]


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_output_format_follows_extension(tmp_path, bracket_files, ext):
    import cv2

    out = tmp_path / f"result{ext}"
    done = run("stack", *bracket_files, "-o", out)
    assert done.returncode == 0, done.stderr
    img = cv2.imdecode(np.fromfile(out, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.shape == (200, 300, 3)
    assert img.dtype == (np.uint16 if ext == ".png" else np.uint8)


def test_demo_stacks_the_bundled_bracket(tmp_path):
    done = run("demo", "--progress", "none", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "focusbridge-demo" / "ring6_stacked.tif"
    assert str(out) in done.stdout
    data = tifffile.imread(out)
    assert data.shape == (1141, 1521, 3) and data.dtype == np.uint16
    assert (tmp_path / "focusbridge-demo" / "ring6_depth.tif").is_file()


def test_unicode_and_shell_characters_in_names(tmp_path, bracket_files):
    folder = tmp_path / "Küvette $(touch PWNED); `id` 'q' \"d\""
    folder.mkdir()
    frames = []
    for i, f in enumerate(bracket_files):
        target = folder / f"Kä$fer;{i} `x`.tif"
        shutil.copy(f, target)
        frames.append(target)
    out = folder / "Ergebnis – gestapelt.tif"
    done = run("stack", *frames, "-o", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.is_file()
    assert not (tmp_path / "PWNED").exists()


# -- bad input: one line naming the file, non-zero exit, no output --------------------------


def test_single_frame(tmp_path, bracket_files):
    done = run("stack", bracket_files[0], "-o", tmp_path / "out.tif")
    _assert_one_line_error(done, bracket_files[0], "at least two frames")
    assert _leftovers(tmp_path) == []


def test_missing_file(tmp_path, bracket_files):
    missing = tmp_path / "nope.tif"
    done = run("stack", bracket_files[0], missing, "-o", tmp_path / "out.tif")
    _assert_one_line_error(done, missing, "no such file")
    assert _leftovers(tmp_path) == []


def test_frames_of_different_sizes(tmp_path, bracket_files):
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((100, 150, 3), np.uint16))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    done = run("stack", bracket_files[0], bracket_files[1], small, "-o", out_dir / "out.tif")
    _assert_one_line_error(done, small, "150x100", "300x200")
    assert _leftovers(out_dir) == []


def test_broken_file(tmp_path, bracket_files, test_data):
    broken = test_data / "raw" / "broken" / "filetype_fixture.cr3"
    done = run("stack", bracket_files[0], broken, "-o", tmp_path / "out.tif")
    _assert_one_line_error(done, broken)
    assert _leftovers(tmp_path) == []


def test_unsupported_file(tmp_path, bracket_files):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    done = run("stack", bracket_files[0], text, "-o", out_dir / "out.tif")
    _assert_one_line_error(done, text)
    assert _leftovers(out_dir) == []


def test_output_is_an_input(tmp_path, bracket_files):
    frames = [shutil.copy(f, tmp_path) for f in bracket_files[:3]]
    before = Path(frames[1]).read_bytes()
    done = run("stack", *frames, "-o", frames[1], "--overwrite")
    _assert_one_line_error(done, frames[1], "input")
    assert Path(frames[1]).read_bytes() == before


def test_output_exists_without_overwrite(tmp_path, bracket_files):
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    done = run("stack", *bracket_files, "-o", out)
    _assert_one_line_error(done, out, "--overwrite")
    assert out.read_bytes() == b"precious"
    assert _leftovers(tmp_path) == ["out.tif"]
    done = run("stack", *bracket_files, "-o", out, "--overwrite")
    assert done.returncode == 0 and out.read_bytes() != b"precious"


def test_missing_output_folder(tmp_path, bracket_files):
    missing = tmp_path / "no" / "such" / "folder"
    done = run("stack", *bracket_files, "-o", missing / "out.tif")
    _assert_one_line_error(done, missing, "does not exist")


def test_unwritable_folder(public_tmp, bracket_files, unprivileged):
    """A real read-only folder, run as an ordinary user (root ignores permission bits)."""
    frames = [shutil.copy(f, public_tmp) for f in bracket_files[:3]]
    for f in frames:
        os.chmod(f, 0o644)
    locked = public_tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    done = unprivileged(["stack", *frames, "-o", locked / "out.tif"])
    _assert_one_line_error(done, locked, "not writable")
    assert _leftovers(locked) == []
    # the same user can write where it may: the failure above was the folder, nothing else
    mine = public_tmp / "mine"
    mine.mkdir()
    mine.chmod(0o777)
    done = unprivileged(["stack", *frames, "-o", mine / "out.tif", "--no-metadata"])
    assert done.returncode == 0, done.stderr


def test_unknown_option_is_a_usage_error(bracket_files, tmp_path):
    done = run("stack", *bracket_files, "-o", tmp_path / "o.tif", "--method", "magic")
    assert done.returncode == 2 and "invalid choice" in done.stderr
    assert _leftovers(tmp_path) == []


# -- cancel: nothing half-written ----------------------------------------------------------


@pytest.fixture(scope="module")
def long_bracket(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    b = make_bracket(24, (400, 600), breathing=0.003, seed=9)
    return save_bracket(b, folder, ".tif", bit_depth=16)


def _start(args, **kw):
    return subprocess.Popen(
        [*FOCUSBRIDGE, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_sigterm_mid_run_leaves_nothing(tmp_path, long_bracket):
    out = tmp_path / "out.tif"
    proc = _start(["stack", *long_bracket, "-o", out, "--depth-map", "--progress", "json"])
    first = proc.stdout.readline()  # the run is under way
    assert json.loads(first)["phase"] == "align"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert _leftovers(tmp_path) == []


def test_run_job_cancel_file(tmp_path, long_bracket):
    work = tmp_path / "job"
    work.mkdir()
    out_dir = tmp_path / "photos"
    out_dir.mkdir()
    manifest = {
        "version": 1,
        "frames": [str(f) for f in long_bracket],
        "output": str(out_dir / "stacked.tif"),
        "options": {"depth_map": True},
        "progress_file": str(work / "progress.jsonl"),
        "cancel_file": str(work / "cancel"),
        "status_file": str(work / "status.json"),
    }
    (work / "job.json").write_text(json.dumps(manifest))
    proc = _start(["run-job", work / "job.json"])
    proc.stdout.readline()
    (work / "cancel").touch()
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    status = json.loads((work / "status.json").read_text())
    assert status == {"ok": False, "output": None, "error": "cancelled", "cancelled": True}
    assert _leftovers(out_dir) == []
    lines = (work / "progress.jsonl").read_text().splitlines()
    assert 1 <= len(lines) < 2 * len(long_bracket)


def test_run_job_success_and_failure_status(tmp_path, bracket_files):
    out = tmp_path / "stacked.tif"
    job = {
        "version": 1,
        "frames": [str(f) for f in bracket_files],
        "output": str(out),
        "options": {"method": "depthmap", "depth_map": True, "format": "tiff"},
        "status_file": str(tmp_path / "status.json"),
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    done = run("run-job", tmp_path / "job.json")
    assert done.returncode == 0, done.stderr
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["ok"] and status["output"] == str(out) and out.is_file()
    assert status["depth_map"] == str(tmp_path / "stacked_depth.tif")
    assert len(status["frames"]) == 5

    # the same job again: the output exists, so a one-line error in stderr and the status
    done = run("run-job", tmp_path / "job.json")
    assert done.returncode == 1
    status = json.loads((tmp_path / "status.json").read_text())
    assert not status["ok"] and str(out) in status["error"] and "--overwrite" in status["error"]
    assert done.stderr.strip() == f"focusbridge: error: {status['error']}"


def test_run_job_rejects_a_bad_manifest(tmp_path):
    bad = tmp_path / "job.json"
    bad.write_text("{not json")
    done = run("run-job", bad)
    _assert_one_line_error(done, bad, "JSON")
    bad.write_text(json.dumps({"version": 1, "frames": "a.tif", "output": "x.tif"}))
    _assert_one_line_error(run("run-job", bad), bad, "'frames'")


def test_python_api_cancel_writes_nothing(tmp_path, bracket_files):
    from pybridge import stack
    from pybridge.errors import Cancelled

    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        stack(bracket_files, tmp_path / "out.tif", cancel=cancel)
    assert _leftovers(tmp_path) == []


def test_without_exiftool_stack_says_how_to_install_and_no_metadata_still_works(
    tmp_path, test_data
):
    """pcb7's frames carry camera EXIF, so metadata is wanted: without exiftool the run stops
    before any work with the install hint; --no-metadata stacks anyway; a bracket with no
    metadata at all stacks without exiftool and without being asked."""
    env = dict(os.environ, FOCUSBRIDGE_EXIFTOOL=str(tmp_path / "no-exiftool-here"))
    frames = sorted((test_data / "brackets" / "pcb7").glob("pcb_00[1-3].jpg"))
    out = tmp_path / "out.tif"
    done = subprocess.run(
        [*FOCUSBRIDGE, "stack", *map(str, frames), "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    _assert_one_line_error(done, "exiftool not found", "--no-metadata", "apt-get install")
    assert not out.exists()
    done = subprocess.run(
        [*FOCUSBRIDGE, "stack", *map(str, frames), "-o", str(out), "--no-metadata"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    synthetic = save_bracket(make_bracket(3, (200, 300), seed=1), tmp_path / "synth", ".png")
    done = subprocess.run(
        [*FOCUSBRIDGE, "stack", *map(str, synthetic), "-o", str(tmp_path / "synth.tif")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


# -- what a frame holds and what it is: said in one line, as a frame ------------------------


@pytest.fixture(scope="module")
def float_frames(tmp_path_factory):
    """Three 32-bit float TIFFs of one bracket (scene-linear exports), 0..1."""
    folder = tmp_path_factory.mktemp("float")
    b = make_bracket(3, (120, 160), seed=1)
    paths = [folder / f"f{i}.tif" for i in range(3)]
    for path, frame in zip(paths, b.frames, strict=True):
        tifffile.imwrite(path, frame.astype(np.float32), photometric="rgb")
    return paths


def test_a_frame_with_samples_that_are_not_numbers_is_refused(tmp_path, float_frames):
    """A NaN patch became a black square that won the fusion (a 0 stood in for it)."""
    frames = [Path(shutil.copy(f, tmp_path)) for f in float_frames]
    data = tifffile.imread(frames[2])
    data[50:60, 70:80] = np.nan
    tifffile.imwrite(frames[2], data, photometric="rgb")
    done = run("stack", *frames, "-o", tmp_path / "out.tif")
    assert done.stderr == (
        f"focusbridge: error: {frames[2]}: 300 samples are not numbers (NaN/Inf); fix the export\n"
    )
    assert done.returncode == 1 and _leftovers(tmp_path) == ["f0.tif", "f1.tif", "f2.tif"]


def test_float_frames_over_1_are_said_once_per_file(tmp_path, float_frames):
    frames = [Path(shutil.copy(f, tmp_path)) for f in float_frames]
    for f in frames[1:]:
        tifffile.imwrite(f, tifffile.imread(f) * 2, photometric="rgb")
    done = run("stack", *frames, "-o", tmp_path / "out.tif", "--progress", "none")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2, lines
    for f, line in zip(frames[1:], lines, strict=True):
        assert line.startswith(f"focusbridge: warning: {f}: ") and "above 1.0" in line, line
        assert line.endswith("the result clips them to 1"), line


def _not_a_file(kind: str, folder: Path) -> Path:
    if kind == "missing":
        return folder / "nope.tif"
    if kind == "folder":
        (folder / "dir.tif").mkdir()
        return folder / "dir.tif"
    if kind == "fifo":
        os.mkfifo(folder / "pipe.tif")
        return folder / "pipe.tif"
    return Path("/dev/zero")


_NOT_A_FILE = {
    "missing": "no such file",
    "folder": "is not a regular file (a folder); give image files only",
    "fifo": "is not a regular file (a named pipe); give image files only",
    "device": "is not a regular file (a device); give image files only",
}


@pytest.mark.parametrize("kind", list(_NOT_A_FILE))
def test_a_frame_that_is_no_file_is_named_as_a_frame(tmp_path, test_data, kind):
    """It was called a missing "metadata source" when metadata was wanted (the frames are
    their own metadata sources); the same line with --no-metadata and in run-job's status."""
    frames = [Path(shutil.copy(test_data / "camera-metadata" / "Canon.jpg", tmp_path / "a.jpg"))]
    frames.append(_not_a_file(kind, tmp_path))
    out = tmp_path / "out" / "o.tif"
    out.parent.mkdir()
    expected = f"focusbridge: error: {frames[1]}: {_NOT_A_FILE[kind]}\n"
    for extra in ([], ["--no-metadata"]):
        done = run("stack", *frames, "-o", out, *extra, timeout=60)
        assert (done.returncode, done.stderr) == (1, expected), extra
    manifest = tmp_path / "job.json"
    st = tmp_path / "out" / "status.json"
    manifest.write_text(
        json.dumps({"frames": list(map(str, frames)), "output": str(out), "status_file": str(st)})
    )
    done = run("run-job", manifest, timeout=60)
    assert (done.returncode, done.stderr) == (1, expected)
    assert json.loads(st.read_text())["error"] == expected[len("focusbridge: error: ") : -1]
    assert _leftovers(out.parent) == ["status.json"]


@pytest.mark.parametrize(
    "name, libraw_said",
    [("Nikon.nef", "data corrupted at 1378"), ("FujiFilm.raf", "Unexpected end of file")],
)
def test_a_broken_raw_gives_our_line_only(tmp_path, test_data, name, libraw_said):
    """LibRaw prints its own complaint from C (`unknown file: data corrupted at 1378`): the
    command says one line, its own, with what LibRaw said in it. (Both files have intact
    headers and no full image data.)"""
    ext = Path(name).suffix
    frames = [tmp_path / f"a{ext}", tmp_path / f"b{ext}"]
    for f in frames:
        shutil.copy(test_data / "camera-metadata" / name, f)
    done = run("stack", *frames, "-o", tmp_path / "out.tif", "--no-metadata")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "unknown file" not in done.stderr, done.stderr
    assert done.stderr.startswith("focusbridge: error: "), done.stderr
    assert "not a readable RAW file (LibRaw: " in done.stderr and libraw_said in done.stderr
    assert _leftovers(tmp_path) == sorted(f.name for f in frames)


# -- names that name no file, and values argparse would answer with its usage --------------


@pytest.mark.parametrize(
    "output, problem",
    [
        (" ", "' ': unsupported result format"),
        ("out.tif/", "out.tif/: names a folder, not a file"),
        (".", ".: names a folder, not a file"),
        ("", "'': names a folder, not a file"),
    ],
)
def test_output_names_that_name_no_file(tmp_path, bracket_files, output, problem):
    done = run("stack", *bracket_files[:2], "-o", output, "--no-metadata", cwd=tmp_path)
    _assert_one_line_error(done, problem)
    assert _leftovers(tmp_path) == []


def test_a_line_break_in_a_name_is_shown_escaped(tmp_path, bracket_files):
    missing = tmp_path / "two\nlines.tif"
    done = run("stack", bracket_files[0], missing, "-o", tmp_path / "o.tif")
    _assert_one_line_error(done, f"{tmp_path}/two\\nlines.tif: no such file")


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "many"])
def test_max_pixels_out_of_range_is_one_line(tmp_path, bracket_files, value):
    done = run("stack", *bracket_files[:2], "-o", tmp_path / "o.tif", "--max-pixels", value)
    _assert_one_line_error(done, "--max-pixels", repr(value))
    assert "usage" not in done.stderr and _leftovers(tmp_path) == []


def test_demo_output_dir_must_be_a_folder(tmp_path):
    (tmp_path / "afile").write_text("mine")
    done = run("demo", "--output-dir", "afile", cwd=tmp_path)
    _assert_one_line_error(done, "afile: is not a folder")
    done = run("demo", "--output-dir", "", cwd=tmp_path)
    _assert_one_line_error(done, "--output-dir")
    assert _leftovers(tmp_path) == ["afile"]
