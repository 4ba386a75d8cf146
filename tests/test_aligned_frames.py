"""`--aligned-frames DIR`: every frame registered onto the result's grid, for retouching.

Checked on pixels (each aligned frame is what the fusion took where the depth map picked it,
and better registered than its source), on geometry (cropped like the result), on metadata
(each carries its own source's tags), on atomicity (a cancelled or failed run leaves none),
on names (checked before any pixel is read) and on memory (flat in the number of frames)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from synthetic import make_bracket, psnr, save_bracket

from pybridge import stack
from pybridge.errors import Cancelled, OptionError, OutputError, StackError
from pybridge.options import StackOutputOptions, split_manifest_options
from pybridge.pipeline import stack as engine_stack

FOCUSBRIDGE = [sys.executable, "-m", "pybridge"]


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FOCUSBRIDGE, *map(os.fsdecode, args)], capture_output=True, text=True, timeout=timeout
    )


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def read01(path: Path) -> np.ndarray:
    data = tifffile.imread(path)
    assert data.dtype == np.uint16, (path, data.dtype)
    return data.astype(np.float32) / 65535


@pytest.fixture(scope="module")
def bracket():
    return make_bracket(
        5, (240, 320), breathing=0.012, shift=3.0, rotation=0.15, flicker=0.04, noise=0.003, seed=3
    )


@pytest.fixture(scope="module")
def bracket_files(bracket, tmp_path_factory):
    return save_bracket(bracket, tmp_path_factory.mktemp("in"), ".tif", bit_depth=16)


# -- pixels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["pyramid", "depthmap"])
def test_each_aligned_frame_is_the_result_where_the_depth_map_picked_it(
    tmp_path, bracket_files, method
):
    """Without noise averaging the fusion takes one frame per region: there the result is that
    frame as the fusion saw it (resampled, gain applied), which is what the aligned frame must
    be. The unaligned source frame is far off in the same places (breathing, shift, flicker)."""
    res = stack(
        bracket_files,
        tmp_path / "out.tif",
        aligned_frames=tmp_path / "aligned",
        method=method,
        noise_averaging=False,
    )
    names = [f"frame_{i:03d}_aligned.tif" for i in range(len(bracket_files))]
    assert res.aligned_frame_paths == [tmp_path / "aligned" / n for n in names]
    assert listing(tmp_path / "aligned") == names
    result = read01(tmp_path / "out.tif")
    checked = 0
    for i, path in enumerate(res.aligned_frame_paths):
        aligned = read01(path)
        assert aligned.shape == result.shape
        picked = (res.depth == i).astype(np.uint8)
        inner = cv2.erode(picked, np.ones((9, 9), np.uint8)).astype(bool)  # off the seams
        if inner.sum() < 300:
            continue
        checked += 1
        got = psnr(aligned, result, inner)
        assert got > 35, (i, got)
        if i != res.reference:  # the reference is its own aligned frame
            source = read01(bracket_files[i])
            assert psnr(source, result, inner) < got - 8, (i, got)
    assert checked >= 3


def test_aligned_frames_are_gain_matched_as_fused(tmp_path, bracket_files):
    """Flicker of +-4 % per channel: the aligned frames match the reference's brightness (the
    gain the fusion applied), unless gain matching is off."""
    on = stack(bracket_files, aligned_frames=tmp_path / "on")
    off = stack(bracket_files, aligned_frames=tmp_path / "off", match_gain=False)
    ref = read01(on.aligned_frame_paths[on.reference])
    inner = np.zeros(ref.shape[:2], bool)
    inner[30:-30, 30:-30] = True
    for i in range(len(bracket_files)):
        if i == on.reference:
            continue
        matched = read01(on.aligned_frame_paths[i])[inner].mean(axis=0) / ref[inner].mean(axis=0)
        raw = read01(off.aligned_frame_paths[i])[inner].mean(axis=0) / ref[inner].mean(axis=0)
        assert np.abs(matched - 1).max() < 0.012, (i, matched)
        assert np.abs(raw - 1).max() > np.abs(matched - 1).max(), (i, raw, matched)


def test_aligned_frames_with_crop_have_the_results_size_and_are_cropped_alike(
    tmp_path, bracket_files
):
    full = stack(bracket_files, aligned_frames=tmp_path / "full")
    cropped = stack(
        bracket_files, tmp_path / "out.tif", aligned_frames=tmp_path / "crop", crop=True
    )
    top, left, h, w = cropped.crop
    assert (h, w) != full.image.shape[:2]
    assert tifffile.imread(tmp_path / "out.tif").shape[:2] == (h, w)
    for a, b in zip(full.aligned_frame_paths, cropped.aligned_frame_paths, strict=True):
        small = tifffile.imread(b)
        assert small.shape[:2] == (h, w)
        assert np.array_equal(small, tifffile.imread(a)[top : top + h, left : left + w])


def test_arrays_give_numbered_frames_and_grey_stays_grey(tmp_path, bracket):
    grey = [f.mean(axis=2) for f in bracket.frames[:3]]
    res = stack(grey, aligned_frames=tmp_path / "a")
    assert listing(tmp_path / "a") == [f"frame_{i:03d}_aligned.tif" for i in range(3)]
    assert tifffile.imread(res.aligned_frame_paths[0]).shape == grey[0].shape


# -- metadata -------------------------------------------------------------------------------


def test_aligned_frames_carry_their_sources_metadata(tmp_path, test_data, exiftool):
    frames = sorted((test_data / "brackets" / "pcb7").glob("pcb_00[1-3].jpg"))
    out = tmp_path / "stacked.tif"
    done = run("stack", *frames, "-o", out, "--crop", "--aligned-frames", tmp_path / "aligned")
    assert done.returncode == 0, done.stderr
    tags = ["-Make", "-Model", "-DateTimeOriginal"]
    size = json.loads(exiftool("-j", "-ImageSize", out))[0]["ImageSize"]
    dates = set()
    for f in frames:
        aligned = tmp_path / "aligned" / f"{f.stem}_aligned.tif"
        want = json.loads(exiftool("-j", *tags, f))[0]
        got = json.loads(exiftool("-j", *tags, "-ImageSize", "-Orientation#", aligned))[0]
        for key in ("Make", "Model", "DateTimeOriginal"):
            assert got[key] == want[key], (aligned, key)
        assert got["ImageSize"] == size and got["Orientation"] == 1
        dates.add(got["DateTimeOriginal"])
        history = exiftool("-s3", "-XMP-xmpMM:DerivedFromFilePath", aligned).strip()
        assert history == f.name
    assert len(dates) == 3  # each frame its own tags, not the result's


def test_sources_name_the_aligned_frames(tmp_path, bracket_files, test_data):
    """darktable's exports are stacked, the originals named: the aligned frames are named
    after the originals."""
    cams = tmp_path / "cam"
    cams.mkdir()
    originals = []
    for i, src in enumerate(sorted((test_data / "brackets" / "pcb7").glob("pcb_00*.jpg"))[:5]):
        originals.append(cams / f"IMG_{i:04d}.jpg")
        originals[-1].write_bytes(src.read_bytes())
    res = stack(
        bracket_files,
        tmp_path / "out.tif",
        aligned_frames=tmp_path / "a",
        sources=originals,
        metadata=False,
    )
    assert listing(tmp_path / "a") == [f"IMG_{i:04d}_aligned.tif" for i in range(5)]
    assert not res.metadata_written


# -- atomic: all or nothing -----------------------------------------------------------------


def test_a_cancelled_run_leaves_no_aligned_frames(tmp_path, bracket_files):
    seen = []

    def progress(phase, **kw):
        seen.append(phase)

    folder = tmp_path / "aligned"
    with pytest.raises(Cancelled):
        stack(
            bracket_files,
            tmp_path / "out.tif",
            aligned_frames=folder,
            layers=tmp_path / "l.ora",
            progress=progress,
            cancel=lambda: seen.count("fuse") >= 3,
        )
    assert seen.count("fuse") == 3
    assert listing(tmp_path) == []  # the folder it made is gone again, temps and all
    # a folder that was there stays, with the user's files only
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    seen.clear()
    with pytest.raises(Cancelled):
        stack(
            bracket_files,
            aligned_frames=folder,
            progress=progress,
            cancel=lambda: seen.count("fuse") >= 2,
        )
    assert listing(folder) == ["notes.txt"]


def test_sigterm_while_streaming_leaves_no_aligned_frames(tmp_path, bracket_files):
    def start(frames):
        args = ["stack", *frames, "-o", tmp_path / "out.tif"]
        args += ["--aligned-frames", tmp_path / "aligned", "--progress", "json"]
        return subprocess.Popen(
            [*FOCUSBRIDGE, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # 20 frames of 5 files: the names clash, so the run must fail before any pixel...
    proc = start(bracket_files * 4)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "is named for both" in err, err
    assert listing(tmp_path) == []
    links = []
    for k in range(20):  # ...distinct files of the same frames (one file twice is refused)
        links.append(tmp_path / "in" / f"f{k:02d}.tif")
        links[-1].parent.mkdir(exist_ok=True)
        shutil.copyfile(bracket_files[k % 5], links[-1])
    proc = start(links)
    fused = 0
    for line in proc.stdout:
        fused += json.loads(line)["phase"] == "fuse"
        if fused == 3:
            break
    assert (tmp_path / "aligned").is_dir()  # made, and being filled
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert listing(tmp_path) == ["in"]


def test_a_failure_while_writing_leaves_none_of_the_set(tmp_path, bracket_files):
    """The aligned frames are committed with the result: a hook failing on the third frame's
    metadata leaves no frame, no result, no layers file and no temp file."""

    def hook(temp, index):
        assert temp.exists() and ".partial-" in temp.name
        if index == 2:
            raise StackError(f"{temp}: no metadata today")

    folder = tmp_path / "aligned"
    with pytest.raises(StackError) as err:
        engine_stack(
            bracket_files,
            tmp_path / "out.tif",
            aligned_frames=folder,
            layers=tmp_path / "l.ora",
            before_commit_frame=hook,
            crop=True,
        )
    assert "frame_002_aligned.tif" in str(err.value) and ".partial-" not in str(err.value)
    assert listing(tmp_path) == []


def test_overwrite_replaces_the_whole_set(tmp_path, bracket_files):
    folder = tmp_path / "aligned"
    stack(bracket_files[:3], aligned_frames=folder)
    with pytest.raises(OutputError, match="exists"):
        stack(bracket_files[:3], aligned_frames=folder)
    stack(bracket_files[:3], aligned_frames=folder, overwrite=True, crop=True)
    assert len(listing(folder)) == 3


# -- names, checked before any pixel is read -------------------------------------------------


def _no_work_done(done):
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert not [e for e in events if e["phase"] in ("align", "fuse", "write")], events


def _one_line_error(done, *must_contain):
    assert done.returncode == 1, (done.returncode, done.stderr)
    err = done.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("focusbridge: error: "), err
    assert "partial" not in err and "internal error" not in err, err
    for text in must_contain:
        assert str(text) in err, (text, err)
    _no_work_done(done)


def test_bad_aligned_frame_names_fail_before_reading_pixels(tmp_path, bracket_files):
    out = tmp_path / "out.tif"
    # an aligned frame that would replace an input
    src = tmp_path / "src"
    src.mkdir()
    a, b = src / "f.tif", src / "f_aligned.tif"
    a.write_bytes(bracket_files[0].read_bytes())
    b.write_bytes(bracket_files[1].read_bytes())
    done = run("stack", a, b, "-o", out, "--aligned-frames", src, "--progress", "json")
    _one_line_error(done, b, "aligned frame", "input frame")
    # two frames with one stem
    other = tmp_path / "other"
    other.mkdir()
    (other / "f.tif").write_bytes(bracket_files[2].read_bytes())
    dest = tmp_path / "dest"
    done = run(
        "stack", a, other / "f.tif", "-o", out, "--aligned-frames", dest, "--progress", "json"
    )
    _one_line_error(done, dest / "f_aligned.tif", "is named for both")
    assert not dest.exists()
    # a file where the folder should be, a missing parent, an existing frame
    (tmp_path / "file").write_text("x")
    done = run("stack", *bracket_files, "-o", out, "--aligned-frames", tmp_path / "file")
    _one_line_error(done, tmp_path / "file", "is not a folder")
    done = run("stack", *bracket_files, "-o", out, "--aligned-frames", tmp_path / "no" / "dir")
    _one_line_error(done, tmp_path / "no", "folder does not exist")
    dest.mkdir()
    (dest / "frame_003_aligned.tif").write_text("keep me")
    done = run("stack", *bracket_files, "-o", out, "--aligned-frames", dest)
    _one_line_error(done, dest / "frame_003_aligned.tif", "exists")
    assert listing(dest) == ["frame_003_aligned.tif"]
    assert not out.exists()


# -- the options model: command line, manifest, API -----------------------------------------


def test_the_option_is_on_the_command_line_in_the_manifest_and_its_schema(tmp_path):
    import jsonschema

    from pybridge.job import manifest_schema

    help_text = run("stack", "--help").stdout
    assert "--aligned-frames DIR" in help_text and "--layers ORA" in help_text
    opts = split_manifest_options({"aligned_frames": "/x/dir", "layers": "/x/l.ora"})[1]
    assert opts == StackOutputOptions(aligned_frames="/x/dir", layers="/x/l.ora")
    good = {"version": 1, "frames": ["/a.tif", "/b.tif"], "output": "/o.tif"}
    jsonschema.validate(
        {**good, "options": {"aligned_frames": "/x", "layers": None}}, manifest_schema()
    )
    for bad in ({"aligned_frames": ""}, {"aligned_frames": True}, {"layers": ["/x.ora"]}):
        with pytest.raises(OptionError):
            split_manifest_options(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**good, "options": bad}, manifest_schema())


def test_run_job_writes_aligned_frames_and_layers(tmp_path, bracket_files):
    work = tmp_path / "job"
    work.mkdir()
    manifest = {
        "frames": [str(f) for f in bracket_files[:3]],
        "output": str(tmp_path / "stacked.tif"),
        "options": {
            "aligned_frames": str(tmp_path / "aligned"),
            "layers": str(tmp_path / "stacked.ora"),
            "crop": True,
        },
        "status_file": str(work / "status.json"),
    }
    (work / "job.json").write_text(json.dumps(manifest))
    done = run("run-job", work / "job.json")
    assert done.returncode == 0, done.stderr
    status = json.loads((work / "status.json").read_text())
    assert status["layers"] == str(tmp_path / "stacked.ora")
    assert status["aligned_frames"] == [
        str(tmp_path / "aligned" / f"frame_{i:03d}_aligned.tif") for i in range(3)
    ]
    assert listing(tmp_path / "aligned") == [f"frame_{i:03d}_aligned.tif" for i in range(3)]
    # the run's own files never land on an aligned frame
    manifest["status_file"] = str(tmp_path / "aligned" / "frame_001_aligned.tif")
    (work / "job.json").write_text(
        json.dumps({**manifest, "options": {**manifest["options"], "overwrite": True}})
    )
    done = run("run-job", work / "job.json")
    assert done.returncode == 1 and "aligned frame" in done.stderr, done.stderr


# -- memory ---------------------------------------------------------------------------------


def test_memory_stays_flat_with_aligned_frames_and_layers(tmp_path):
    """The aligned frames wait on disk, not in memory, and come back one at a time (the crop
    pass, the layers file): 64 frames peak no higher than 16 (loosely: thread timing)."""
    import tracemalloc

    b = make_bracket(8, (240, 360), breathing=0.004, seed=8)
    paths = save_bracket(b, tmp_path / "in", ".tif", bit_depth=16)

    def peak(frames, tag):
        names = [f"f{k:03d}" for k in range(len(frames))]
        tracemalloc.start()
        try:
            engine_stack(
                frames,
                aligned_frames=tmp_path / tag,
                aligned_names=names,
                layers=tmp_path / f"{tag}.ora",
                crop=True,
            )
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    few = peak(paths * 2, "few")  # 16 frames
    many = peak(paths * 8, "many")  # 64 frames
    assert len(listing(tmp_path / "many")) == 64
    assert many <= 1.3 * few, (few, many)
    frame_bytes = 240 * 360 * 3 * 4
    assert few < 45 * frame_bytes, few / frame_bytes  # two fusers' state, not 16 frames
