"""`focusbridge brackets`: which files form focus brackets (pybridge/brackets.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from shoots import blank, when, write_tags

from pybridge.brackets import (
    InCamera,
    Shot,
    detect,
    fill_shot,
    group,
    in_camera,
    list_files,
    parse_time,
    read_shots,
)
from pybridge.errors import OptionError

FOCUSBRIDGE = [sys.executable, "-m", "pybridge"]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FOCUSBRIDGE, *map(str, args)], capture_output=True, text=True, timeout=120
    )


def names(paths) -> list[str]:
    return [Path(p).name for p in paths]


# -- the real cameras' files --------------------------------------------------------------


def test_real_camera_files_report_what_exiftool_reads(test_data):
    shots, bad = list_files([test_data / "camera-metadata"])
    read_shots(shots)
    by = {s.path.name: s for s in shots}
    assert len(by) == 12 and not bad
    # No file carries an in-camera focus-bracketing mark: none was shot in such a mode
    # (Panasonic BurstMode is 0 = Off; Canon's FocusBracketingInfo is decoded only from
    # ExifTool 13.33 on, and these bodies predate it), so the tag signals are all absent.
    assert [s.path.name for s in shots if s.in_camera] == []
    cr3 = by["CanonRaw.cr3"]  # sub-seconds from SubSecDateTimeOriginal: .21
    assert cr3.time == parse_time("2018:02:21 12:08:56.21")
    assert cr3.camera == ("Canon EOS M50", "613040000565")
    assert cr3.lens == "EF-M15-45mm f/3.5-6.3 IS STM"
    assert cr3.size == (6000, 4000) and cr3.orientation == 1
    assert cr3.focus == pytest.approx(0.23)  # Canon FocusDistanceLower/Upper 0.22/0.24 m
    nef = by["Nikon.nef"]
    assert nef.time == parse_time("2004:06:09 16:02:35")
    assert nef.camera == ("NIKON D70", "12345678")
    assert nef.lens == "AF-S DX Zoom-Nikkor 18-70mm f/3.5-4.5G IF-ED"
    assert nef.focus == pytest.approx(2.371, abs=1e-3)  # Nikon FocusDistance
    assert by["Canon.jpg"].focus == 5.46  # FocusDistanceLower 5.46 m, Upper inf
    assert by["Panasonic.rw2"].camera == ("DMC-LX3", "(F35) 2008:07:01 no. 0058")
    assert by["Panasonic.rw2"].size == (3648, 2736)
    assert by["Pentax.jpg"].orientation == 8  # Rotate 270 CW
    assert by["ExifTool.tif"].time is None and by["ExifTool.tif"].problem is None
    # the 350D's CR2 and the DNG made from another 350D share their capture second: only the
    # body (serial number) and the image size tell them apart
    cr2, dng = by["CanonRaw.cr2"], by["DNG.dng"]
    assert cr2.time == dng.time and cr2.camera != dng.camera

    found = group(shots)
    assert found.brackets == []
    reasons = {u.path.name: u.reason for u in found.unassigned}
    assert reasons.pop("ExifTool.tif").startswith("no capture time")
    assert set(reasons.values()) == {"a single frame, not a bracket"} and len(reasons) == 11


def test_copies_of_a_real_canon_raw_split_where_the_focus_turns_back(tmp_path, test_data):
    """Six CR3s (real Canon maker notes), 0.3 s apart: two near-to-far runs of focus."""
    folder = tmp_path / "cr3"
    folder.mkdir()
    jobs = {}
    for i, near in enumerate([0.20, 0.22, 0.24, 0.20, 0.22, 0.24]):
        f = folder / f"IMG_{i:04d}.CR3"
        shutil.copy(test_data / "camera-metadata" / "CanonRaw.cr3", f)
        jobs[f] = [
            *when(0.3 * i),
            f"-Canon:FocusDistanceLower={near}",
            f"-Canon:FocusDistanceUpper={near + 0.02}",
        ]
    write_tags(jobs)
    found = detect([folder])
    assert [names(b.frames) for b in found.brackets] == [
        ["IMG_0000.CR3", "IMG_0001.CR3", "IMG_0002.CR3"],
        ["IMG_0003.CR3", "IMG_0004.CR3", "IMG_0005.CR3"],
    ]
    assert found.brackets[0].reason.startswith("capture times 0.3 s apart")
    assert found.brackets[0].pixels == 6000 * 4000
    assert found.unassigned == []


def test_panasonic_focus_bracketing_tag_groups_slow_frames(tmp_path, test_data):
    """exiftool writes Panasonic BurstMode (3 = Focus Bracketing) and SequenceNumber into the
    real RW2's maker notes: frames 10 s apart (one run by their times) form two brackets by
    their frame numbers, and an untagged frame 1 s later belongs to neither."""
    folder = tmp_path / "lx3"
    folder.mkdir()
    jobs = {}
    for i, number in enumerate([1, 2, 3, 1, 2, 3, 0]):
        f = folder / f"P{i:07d}.RW2"
        shutil.copy(test_data / "camera-metadata" / "Panasonic.rw2", f)
        t = 10.0 * i if number else 10.0 * (i - 1) + 1.0
        tags = ["-Panasonic:BurstMode#=3", f"-Panasonic:SequenceNumber={number}"] if number else []
        jobs[f] = [*when(t), *tags]
    write_tags(jobs)
    shots, _ = list_files([folder])
    read_shots(shots)
    assert shots[0].in_camera == InCamera("Panasonic BurstMode", index=1)
    assert shots[-1].in_camera is None
    found = group(shots)
    assert [names(b.frames) for b in found.brackets] == [
        ["P0000000.RW2", "P0000001.RW2", "P0000002.RW2"],
        ["P0000003.RW2", "P0000004.RW2", "P0000005.RW2"],
    ]
    assert found.brackets[0].reason == (
        "in-camera focus bracketing (Panasonic BurstMode: frames 1-3)"
    )
    assert [(u.path.name, u.reason) for u in found.unassigned] == [
        ("P0000006.RW2", "a single frame, not a bracket")
    ]


@pytest.mark.parametrize(
    "meta, expected",
    [
        (
            {"Canon:FocusBracketing": 1, "Canon:FocusBracketingImageCount": 5},
            InCamera("Canon FocusBracketing", count=5),
        ),
        ({"Canon:FocusBracketing": 0}, None),
        (
            {"Nikon:FocusShiftShooting": 3, "Nikon:FocusShiftNumberShots": 10},
            InCamera("Nikon FocusShiftShooting", index=3, count=10),
        ),
        ({"Nikon:FocusShiftShooting": 0, "Nikon:FocusShiftNumberShots": 10}, None),
        ({"Olympus:DriveMode": "5 3 64 0 2"}, InCamera("Olympus DriveMode", index=3)),
        ({"Olympus:DriveMode": "5 3 65"}, InCamera("Olympus DriveMode", index=3)),  # AE+Focus
        ({"Olympus:DriveMode": "5 2 1"}, None),  # AE bracketing
        ({"Olympus:DriveMode": "1 4"}, None),  # continuous shooting
        ({"Olympus:DriveMode": 0}, None),
        (
            {"Panasonic:BurstMode": 3, "Panasonic:SequenceNumber": 2},
            InCamera("Panasonic BurstMode", index=2),
        ),
        ({"Panasonic:BurstMode": 2, "Panasonic:SequenceNumber": 2}, None),  # AEB
        (
            {"PhaseOne:SequenceID": "7F2A", "PhaseOne:SequenceFrameNumber": 4},
            InCamera("Phase One SequenceID", index=4, series="7F2A"),
        ),
        (
            {"PhaseOne:SequenceID": "7F2A", "PhaseOne:SequenceKind": "Exposure Bracketing"},
            None,
        ),
        ({"Composite:DriveMode": "Continuous Shooting"}, None),  # Canon.jpg's: not focus
    ],
)
def test_in_camera_marks_as_exiftool_prints_them(meta, expected):
    """The values as `exiftool -j -G1` gives them with numeric (`#`) tags."""
    assert in_camera(meta) == expected


def test_an_in_camera_composite_and_a_focusbridge_result_are_no_frames():
    base = {"ExifIFD:DateTimeOriginal": "2024:05:01 10:00:00"}
    shot = Shot(Path("a.jpg"), Path("."))
    fill_shot(shot, {**base, "Olympus:StackedImage": "9 8"})
    assert shot.problem == (
        "an in-camera focus-stacked image of 8 frames (Olympus StackedImage), not a frame"
    )
    shot = Shot(Path("b.tif"), Path("."))
    fill_shot(shot, {**base, "IFD0:Software": "focusbridge 0.1.0"})
    assert shot.problem == "a stacked result (focusbridge 0.1.0), not a frame"
    shot = Shot(Path("c.tif"), Path("."))
    fill_shot(shot, {**base, "IFD0:Software": "focusbridge 0.2 (depth map)"})
    assert shot.problem == "a depth map of a stack (focusbridge 0.2), not a frame"


def _shot(name, t, **kw) -> Shot:
    return Shot(Path(name), Path("."), time=t, camera=("X", "1"), size=(30, 20), **kw)


def test_frame_numbers_restart_a_bracket_and_a_flag_alone_splits_by_count():
    nikon = [
        _shot(f"n{i}", 5.0 * i, in_camera=InCamera("Nikon FocusShiftShooting", k, n))
        for i, (k, n) in enumerate([(1, 4), (2, 4), (3, 4), (4, 4), (1, 3), (2, 3), (3, 3)])
    ]
    found = group(nikon)
    assert [names(b.frames) for b in found.brackets] == [
        ["n0", "n1", "n2", "n3"],
        ["n4", "n5", "n6"],
    ]
    assert found.brackets[1].reason == (
        "in-camera focus bracketing (Nikon FocusShiftShooting: frames 1-3 of 3)"
    )
    canon = [
        _shot(f"c{i}", 0.3 * i, in_camera=InCamera("Canon FocusBracketing", count=3))
        for i in range(7)
    ]
    found = group(canon)
    assert [names(b.frames) for b in found.brackets] == [["c0", "c1", "c2"], ["c3", "c4", "c5"]]
    assert names(u.path for u in found.unassigned) == ["c6"]


def test_the_gap_rule_adapts_to_the_pace_and_has_a_ceiling():
    slow = [_shot(f"s{i}", 8.0 * i) for i in range(4)]  # 8 s apart: rule 24 s
    fast = [_shot(f"f{i}", 50 + 0.2 * i) for i in range(4)]  # 18 s after: rule 2 s
    far = [_shot(f"x{i}", 200 + 40.0 * i) for i in range(3)]  # 40 s apart: over the 30 s
    found = group(slow + fast + far)
    assert [names(b.frames) for b in found.brackets] == [
        ["s0", "s1", "s2", "s3"],
        ["f0", "f1", "f2", "f3"],
    ]
    assert names(u.path for u in found.unassigned) == ["x0", "x1", "x2"]
    found = group(slow + fast, gap=10)
    assert [names(b.frames) for b in found.brackets] == [
        ["s0", "s1", "s2", "s3"],
        ["f0", "f1", "f2", "f3"],
    ]
    assert group(slow, gap=5).brackets == []


def test_parse_time():
    assert parse_time("2024:05:01 10:00:00.25+02:00") == parse_time("2024:05:01 10:00:00") + 0.25
    assert parse_time("0000:00:00 00:00:00") is None
    assert parse_time("") is None and parse_time(None) is None and parse_time("garbage") is None


# -- a generated shoot, tags written by exiftool ------------------------------------------


@pytest.fixture(scope="module")
def shoot(tmp_path_factory, test_data):
    """One folder: brackets of several lengths and paces, a size change, a focus reversal, an
    orientation and a camera change, a late single frame, a frame without a capture time, a
    file exiftool cannot read, one whose name is not UTF-8, a hidden file and a text file. Returns (folder, expected
    brackets as file names in capture order, expected unassigned names)."""
    folder = tmp_path_factory.mktemp("shoot")
    jobs: dict[Path, list[str]] = {}
    expected: list[list[str]] = []
    t = 0.0

    def frames(count, prefix, pace, size=(20, 30), extra=lambda k: []):
        nonlocal t
        out = []
        for k in range(count):
            f = blank(folder / f"{prefix}{k}.tif", size(k) if callable(size) else size)
            jobs[f] = [*when(t), *extra(k)]
            out.append(f.name)
            t += pace
        return out

    expected.append(frames(5, "z_a", 0.4))  # named to sort last: capture order rules
    t += 20
    expected.append(frames(3, "b", 1.0))
    t += 15
    c = frames(6, "c", 0.5, size=lambda k: (20, 30) if k < 3 else (24, 36))
    expected += [c[:3], c[3:]]
    t += 30
    d = frames(6, "d", 0.5, extra=lambda k: [f"-SubjectDistance={0.10 + 0.01 * (k % 3)}"])
    expected += [d[:3], d[3:]]
    t += 40
    e = frames(
        6,
        "e",
        0.5,
        extra=lambda k: ["-IFD0:Orientation#=6"] * (k in (2, 3)) + ["-Model=Other"] * (k > 3),
    )
    expected += [e[:2], e[2:4], e[4:]]
    t += 60
    single = frames(1, "g", 1.0)
    blank(folder / "h_no_time.tif")
    # a name that is not UTF-8, on a file with a capture time (exiftool would have to read it;
    # tagged under a good name first)
    jobs[blank(folder / "bad_name.tif")] = when(t + 1000)
    shutil.copy(test_data / "raw" / "broken" / "filetype_fixture.raf", folder / "k_broken.raf")
    blank(folder / ".hidden.tif")
    (folder / "notes.txt").write_text("not an image")
    write_tags(jobs)
    os.rename(folder / "bad_name.tif", folder / os.fsdecode(b"bad\xff.tif"))
    return folder, expected, single + [os.fsdecode(b"bad\xff.tif"), "h_no_time.tif", "k_broken.raf"]


def test_generated_shoot(shoot):
    folder, expected, unassigned = shoot
    found = detect([folder])
    assert [names(b.frames) for b in found.brackets] == expected
    assert found.brackets[0].reason == (
        "capture times 0.4 s apart (median); split at pauses over 2 s"
    )
    reasons = {u.path.name: u.reason for u in found.unassigned}
    assert list(reasons) == unassigned  # capture order, then the files without a time
    assert reasons["g0.tif"] == "a single frame, not a bracket"
    assert reasons["h_no_time.tif"].startswith("no capture time")
    assert reasons["k_broken.raf"] == "exiftool cannot read it (File format error)"
    assert reasons[os.fsdecode(b"bad\xff.tif")] == (
        "file name is not valid UTF-8, which exiftool cannot be given; rename the file"
    )


def test_gap_option(shoot):
    folder, expected, _ = shoot
    found = detect([folder], gap=0.45)  # 0.4 s keeps the first; 0.5 s and 1 s are pauses now
    assert [names(b.frames) for b in found.brackets] == [expected[0]]


def test_command_line_json_and_table(shoot, tmp_path):
    folder, expected, unassigned = shoot
    missing = tmp_path / "missing.tif"
    done = run("brackets", folder, missing, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [names(b["frames"]) for b in data["brackets"]] == expected
    assert all(set(b) == {"frames", "reason"} for b in data["brackets"])
    assert [Path(u["file"]).name for u in data["unassigned"]] == [*unassigned, "missing.tif"]
    assert data["unassigned"][-1]["reason"] == "no such file or folder"
    done = run("brackets", folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{len(expected)} brackets, 4 files in no bracket\n")
    assert "bracket 2: 3 frames, capture times 1 s apart (median)" in done.stdout


def test_by_folder_needs_no_metadata(tmp_path, monkeypatch):
    for folder, count in (("m1", 3), ("m2", 2), ("m3", 1)):
        for k in reversed(range(count)):
            blank(tmp_path / folder / f"z{k:03d}.tif")
    monkeypatch.setenv("FOCUSBRIDGE_EXIFTOOL", str(tmp_path / "no-exiftool"))
    found = detect([tmp_path / "m1", tmp_path / "m2", tmp_path / "m3"], by_folder=True)
    assert [names(b.frames) for b in found.brackets] == [
        ["z000.tif", "z001.tif", "z002.tif"],
        ["z000.tif", "z001.tif"],
    ]
    assert found.brackets[0].reason == f"one folder (--by-folder): {tmp_path / 'm1'}"
    assert [(u.path.name, u.reason) for u in found.unassigned] == [
        ("z000.tif", "a single frame, not a bracket")
    ]


# -- what focusbridge wrote is no frame ---------------------------------------------------


@pytest.fixture(scope="module")
def stacked_shoot(tmp_path_factory):
    """A 3-frame bracket with capture times (so the metadata merge runs), and beside it what
    focusbridge writes: results in TIFF (merged and not), PNG and JPEG (merged) with their
    depth and confidence maps, the check's coverage maps; aligned frames in a folder."""
    from shoots import stack_shoot

    from pybridge.app import stack
    from pybridge.check import check_bracket

    folder = tmp_path_factory.mktemp("stacked")
    (frames,) = stack_shoot(folder, counts=(3,), size=(120, 160))
    for name, ext, metadata in (("t", "tif", True), ("n", "tif", False), ("p", "png", True)):
        stack(
            frames,
            folder / f"{name}_stacked.{ext}",
            depth_map=folder / f"{name}_depth.{ext}",
            confidence_map=folder / f"{name}_confidence.{ext}",
            metadata=metadata,
        )
    stack(
        frames,
        folder / "j_stacked.jpg",
        depth_map=folder / "j_depth.jpg",
        confidence_map=folder / "j_confidence.jpg",
        aligned_frames=folder / "aligned",
    )
    # aligned frames written three ways: moved as kept, cropped (written again), no metadata
    stack(frames, None, aligned_frames=folder / "aligned_cropped", crop=True, metadata=False)
    stack(frames, None, aligned_frames=folder / "aligned_plain", metadata=False)
    for ext in ("tif", "png", "jpg"):
        check_bracket(frames, coverage_map=folder / f"coverage.{ext}")
    return folder, names(frames)


OURS_REASONS = {
    "stacked": "a stacked result",
    "depth": "a depth map of a stack",
    "confidence": "a confidence map of a stack",
    "coverage": "a coverage map of a bracket check",
}


@pytest.mark.parametrize("how", ["capture times", "by folder", "by folder, no exiftool"])
def test_what_focusbridge_wrote_is_left_out(stacked_shoot, how, monkeypatch):
    from pybridge import __version__

    folder, frames = stacked_shoot
    if how.endswith("no exiftool"):
        monkeypatch.setenv("FOCUSBRIDGE_EXIFTOOL", str(folder / "no-exiftool"))
    found = detect([folder], by_folder=how != "capture times")
    assert [names(b.frames) for b in found.brackets] == [frames]
    reasons = {u.path.name: u.reason for u in found.unassigned}
    assert len(reasons) == 3 * 4 + 3
    for name, reason in reasons.items():
        what = OURS_REASONS[name.split("_")[-1].split(".")[0]]
        assert reason == f"{what} (focusbridge {__version__}), not a frame", name
    # aligned frames say what they are, with the metadata merge's Software or without it
    for name in ("aligned", "aligned_cropped", "aligned_plain"):
        aligned = detect([folder / name], by_folder=True)
        assert aligned.brackets == [] and len(aligned.unassigned) == 3, name
        assert {u.reason for u in aligned.unassigned} == {
            f"an aligned frame of a stack (focusbridge {__version__}), not a frame"
        }, name


# -- RAW + JPEG: one shot, two files ------------------------------------------------------


@pytest.fixture(scope="module")
def twins(tmp_path_factory, test_data):
    """Shots saved as RAW + JPEG (copies of a real CR3 and tiny JPEGs, one capture time per
    shot) 0.5 s and 8 s apart, and shots saved as TIFF + PNG + JPEG."""
    root = tmp_path_factory.mktemp("twins")
    jobs: dict[Path, list[str]] = {}
    tiny = np.zeros((20, 30, 3), np.uint8)
    for folder, pace in (("fast", 0.5), ("slow", 8.0)):
        (root / folder).mkdir()
        for i in range(4):
            raw, jpeg = root / folder / f"IMG_{i:04d}.CR3", root / folder / f"IMG_{i:04d}.JPG"
            shutil.copy(test_data / "camera-metadata" / "CanonRaw.cr3", raw)
            jpeg.write_bytes(cv2.imencode(".jpg", tiny)[1].tobytes())
            jobs[raw] = jobs[jpeg] = when(pace * i)
    for i in range(3):
        tif = blank(root / "exports" / f"DSC_{i}.tif")
        for ext in (".png", ".jpg"):
            other = tif.with_suffix(ext)
            other.write_bytes(cv2.imencode(ext, tiny)[1].tobytes())
            jobs[other] = when(0.5 * i)
        jobs[tif] = when(0.5 * i)
    write_tags(jobs)
    return root


@pytest.mark.parametrize("folder, pace", [("fast", "0.5 s"), ("slow", "8 s")])
def test_raw_and_jpeg_of_one_shot_enter_a_bracket_once(twins, folder, pace):
    found = detect([twins / folder])
    assert [names(b.frames) for b in found.brackets] == [[f"IMG_{i:04d}.CR3" for i in range(4)]]
    assert found.brackets[0].reason.startswith(f"capture times {pace} apart (median)")
    assert [(u.path.name, u.reason) for u in found.unassigned] == [
        (f"IMG_{i:04d}.JPG", f"the same shot as IMG_{i:04d}.CR3 (same name and capture time)")
        for i in range(4)
    ]


def test_without_a_raw_the_tiff_stands_for_the_shot(twins):
    for by_folder in (False, True):
        found = detect([twins / "exports"], by_folder=by_folder)
        assert [names(b.frames) for b in found.brackets] == [[f"DSC_{i}.tif" for i in range(3)]]
        assert sorted(u.path.name for u in found.unassigned) == sorted(
            f"DSC_{i}{ext}" for i in range(3) for ext in (".jpg", ".png")
        )
    done = run("brackets", twins / "exports")
    assert done.returncode == 0, done.stderr
    assert "DSC_0.png  the same shot as DSC_0.tif (same name and capture time)" in done.stdout


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-1", "0", "-0", "soon"])
def test_a_gap_must_be_a_finite_number_of_seconds_over_0(value, tmp_path):
    done = run("brackets", tmp_path, f"--gap={value}")
    assert done.returncode == 2 and done.stdout == ""
    last = done.stderr.splitlines()[-1]
    assert "--gap" in last and "a finite number of seconds > 0" in last, last
    with pytest.raises(OptionError, match=r"^option 'gap' must be a finite number of seconds"):
        group([], gap=0.0)


def test_the_report_escapes_line_breaks_in_names(tmp_path):
    for k in range(2):
        blank(tmp_path / f"new\nline{k}.tif")
    blank(tmp_path / "lone" / "tab\there.tif")
    done = run("brackets", tmp_path, tmp_path / "lone", "--by-folder")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name in ("new\\nline0.tif", "new\\nline1.tif", "lone/tab\\there.tif"):
        assert any(line.startswith(f"  {tmp_path}/{name}") for line in lines), name
    assert not any(line.startswith(("line", "here")) for line in lines)


def test_files_without_metadata_are_not_given_to_exiftool(tmp_path, monkeypatch):
    """A microscope's (or a generator's) TIFFs hold no EXIF or XMP: exiftool would find no
    capture time, camera or lens there, so it is not started (a second on a big folder); with
    --by-folder they are a bracket, by time they are unassigned as before."""
    import exif.tool

    def refuse(*a, **k):
        raise AssertionError("exiftool started")

    monkeypatch.setattr(exif.tool, "open_exiftool", refuse)
    frames = [blank(tmp_path / f"f{k}.tif") for k in range(3)]
    found = detect([tmp_path], by_folder=True)
    assert [b.frames for b in found.brackets] == [frames]
    by_time = detect([tmp_path])
    assert by_time.brackets == []
    assert {u.path for u in by_time.unassigned} == set(frames)
    assert all(u.reason.startswith("no capture time") for u in by_time.unassigned)
