"""run-job's kinds for the darktable plugin's bracket queue and check: "brackets" (which of the
selected files belong together, the caller's groups kept), "batch" (several stacks in one
process, one progress stream, cancel between and within stacks, a failure stops nothing
else) and "check" (pybridge.check with a coverage map). Every manifest here is first checked
against the manifest's JSON Schema, then run through `python -m pybridge.cli run-job`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import tifffile
from shoots import blank, stack_shoot, when, write_tags
from synthetic import make_bracket, save_bracket

from pybridge.job import manifest_schema

SCHEMA = manifest_schema()
RUN_JOB = [sys.executable, "-m", "pybridge.cli", "run-job"]
REPO = Path(__file__).resolve().parents[1]


def job(work: Path, manifest: dict, *, valid: bool = True) -> Path:
    """Write the manifest (with status and progress files in `work`) after checking it
    against the schema; returns its path."""
    work.mkdir(parents=True, exist_ok=True)
    manifest = {
        "version": 1,
        "status_file": str(work / "status.json"),
        "progress_file": str(work / "progress.jsonl"),
        "cancel_file": str(work / "cancel"),
        **manifest,
    }
    if valid:
        jsonschema.validate(manifest, SCHEMA)
    else:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(manifest, SCHEMA)
    path = work / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def run(manifest: Path, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RUN_JOB, str(manifest)], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def status(work: Path) -> dict:
    return json.loads((work / "status.json").read_text())


def progress(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "progress.jsonl").read_text().splitlines()]


def one_line_error(done, *texts):
    assert done.returncode == 1, (done.returncode, done.stderr)
    err = done.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("focusbridge: error: "), err
    for t in texts:
        assert t in err, (t, err)


# -- brackets ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shoot(tmp_path_factory):
    """Two brackets of three frames (0.5 s apart, 30 s between them), a lone frame two
    minutes later and a stacked result: small real TIFFs with real capture times."""
    folder = tmp_path_factory.mktemp("shoot")
    b0, b1 = stack_shoot(folder, counts=(3, 3), size=(120, 160))
    lone = blank(folder / "lone.tif")
    result = blank(folder / "b0_stacked.tif")
    write_tags({lone: when(120), result: [*when(130), "-Software=focusbridge 0.1.0"]})
    return b0, b1, lone, result


def test_brackets_found_groups_kept_rest_unassigned(tmp_path, shoot):
    b0, b1, lone, result = shoot
    # in the caller's order (the plugin's: by name); the second bracket's first two frames
    # grouped by the user together with the lone frame; a file that is gone
    sources = [*b0, *b1[:2], lone, result, b1[2], tmp_path / "gone.tif"]
    sources = [str(s) for s in sources]
    manifest = job(tmp_path, {"kind": "brackets", "sources": sources, "groups": [[3, 4, 5]]})
    done = run(manifest)
    assert done.returncode == 0, done.stderr
    st = status(tmp_path)
    assert st["ok"] is True and st["cancelled"] is False and st["error"] is None
    assert st["brackets"] == [
        {"indexes": [0, 1, 2], "reason": st["brackets"][0]["reason"]},
        {"indexes": [3, 4, 5], "reason": "one of the given groups"},
    ]
    assert st["brackets"][0]["reason"].startswith("capture times 0.5 s apart")
    stacked = "a stacked result (focusbridge 0.1.0), not a frame"
    assert st["unassigned"] == [
        {"index": 6, "file": sources[6], "reason": stacked},
        {"index": 7, "file": sources[7], "reason": "a single frame, not a bracket"},
        {"index": 8, "file": sources[8], "reason": "no such file"},
    ]
    # every index is accounted for exactly once
    seen = [i for b in st["brackets"] for i in b["indexes"]] + [
        u["index"] for u in st["unassigned"]
    ]
    assert sorted(seen) == list(range(len(sources)))


def test_brackets_two_detected_and_a_duplicate_file(tmp_path, shoot):
    """darktable's duplicates share one file: both indexes come back, in one bracket."""
    b0, b1, _, _ = shoot
    sources = [str(s) for s in (*b0, b0[1], *b1)]
    done = run(job(tmp_path, {"kind": "brackets", "sources": sources}))
    assert done.returncode == 0, done.stderr
    st = status(tmp_path)
    assert [b["indexes"] for b in st["brackets"]] == [[0, 1, 2, 3], [4, 5, 6]]
    assert st["unassigned"] == []


def test_brackets_a_group_member_that_is_no_frame_is_left_out(tmp_path, shoot):
    b0, _, _, result = shoot
    sources = [str(s) for s in (*b0, result)]
    done = run(job(tmp_path, {"kind": "brackets", "sources": sources, "groups": [[0, 1, 2, 3]]}))
    assert done.returncode == 0, done.stderr
    st = status(tmp_path)
    assert [b["indexes"] for b in st["brackets"]] == [[0, 1, 2]]
    assert [u["index"] for u in st["unassigned"]] == [3]


@pytest.mark.parametrize(
    "groups, problem",
    [
        ([[0, 5]], "indexes into 'sources' (0..2), not 5"),
        ([[0, 1], [1, 2]], "index 1 is in two groups"),
        ([[0]], "at least two indexes"),
        ([[0, True]], "not True"),
        ("0 1", "'groups' must be a list"),
    ],
)
def test_brackets_bad_groups_are_refused_up_front(tmp_path, shoot, groups, problem):
    sources = [str(s) for s in shoot[0]]
    manifest = job(
        tmp_path,
        {"kind": "brackets", "sources": sources, "groups": groups},
        valid=groups == [[0, 5]] or groups == [[0, 1], [1, 2]],  # the schema sees types only
    )
    done = run(manifest)
    one_line_error(done, str(manifest), problem)
    assert status(tmp_path)["ok"] is False


# -- batch ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brackets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("brackets")
    return stack_shoot(folder, counts=(3, 4), size=(160, 240))


def test_batch_stacks_each_reports_each_and_a_failure_stops_nothing(tmp_path, brackets):
    b0, b1 = brackets
    out = tmp_path / "out"
    out.mkdir()
    manifest = job(
        tmp_path / "job",
        {
            "kind": "batch",
            "stacks": [
                {
                    "frames": [str(f) for f in b0],
                    "output": str(out / "b0_stacked.tif"),
                    "aligned_frames": str(out / "b0_stacked_aligned"),
                },
                {"frames": [str(b0[0]), str(tmp_path / "gone.tif")], "output": str(out / "x.tif")},
                {
                    "frames": [str(f) for f in b1],
                    "sources": [str(f) for f in b1],
                    "output": str(out / "b1_stacked.tif"),
                },
            ],
            "options": {"method": "depthmap", "depth_map": True, "format": "tiff"},
        },
    )
    done = run(manifest)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"focusbridge: error: {tmp_path / 'gone.tif'}: no such file"  # a frame, not a source
    )
    st = status(tmp_path / "job")
    assert st["ok"] is False and st["cancelled"] is False and st["stacked"] == 2
    assert st["error"] == (
        f"1 of 3 stacks failed; first: stacks[1]: {tmp_path / 'gone.tif'}: no such file"
    )
    r0, r1, r2 = st["results"]
    assert r0["ok"] and r0["output"] == str(out / "b0_stacked.tif")
    assert r0["depth_map"] == str(out / "b0_stacked_depth.tif")
    assert r0["aligned_frames"] == [
        str(out / "b0_stacked_aligned" / f"{f.stem}_aligned.tif") for f in b0
    ]
    assert len(r0["frames"]) == 3 and r0["metadata"] is True
    assert r1 == {
        "ok": False,
        "output": None,
        "error": st["error"].split(": ", 2)[2],
        "cancelled": False,
    }
    assert r2["ok"] and r2["aligned_frames"] == [] and r2["layers"] is None
    for name in ("b0_stacked.tif", "b1_stacked.tif"):
        with tifffile.TiffFile(out / name) as t:
            assert t.pages[0].dtype.name == "uint16"
    assert sorted(p.name for p in out.iterdir()) == [
        "b0_stacked.tif",
        "b0_stacked_aligned",
        "b0_stacked_depth.tif",
        "b1_stacked.tif",
        "b1_stacked_depth.tif",
    ]
    # one progress stream: monotonic, each line saying which stack, one "batch" line a stack
    lines = progress(tmp_path / "job")
    fractions = [e["fraction"] for e in lines]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {e["bracket"] for e in lines if e["phase"] not in ("batch", "done")} == {0, 2}
    ends = [e for e in lines if e["phase"] == "batch"]
    assert [(e["frame"], e["count"], e["outcome"]) for e in ends] == [
        (0, 3, "done"),
        (1, 3, "failed"),
        (2, 3, "done"),
    ]
    assert ends[0]["fraction"] == pytest.approx(3 / 9, abs=1e-3)
    assert lines[-1]["phase"] == "done"


def _start(manifest: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*RUN_JOB, str(manifest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _batch(work: Path, out: Path, brackets) -> Path:
    return job(
        work,
        {
            "kind": "batch",
            "stacks": [
                {"frames": [str(f) for f in b], "output": str(out / f"s{i}.tif")}
                for i, b in enumerate(brackets)
            ],
            "options": {"depth_map": True},
        },
    )


@pytest.fixture(scope="module")
def long_brackets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    return [
        save_bracket(make_bracket(6, (600, 800), seed=20 + i), folder, prefix=f"l{i}_")
        for i in range(3)
    ]


def test_batch_cancel_between_stacks_keeps_what_was_finished(tmp_path, long_brackets):
    out = tmp_path / "out"
    out.mkdir()
    proc = _start(_batch(tmp_path / "job", out, long_brackets))
    for line in proc.stdout:
        event = json.loads(line)
        if event["phase"] == "batch":  # the first stack is done: cancel the rest
            (tmp_path / "job" / "cancel").touch()
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert err.strip().endswith("focusbridge: cancelled")
    st = status(tmp_path / "job")
    assert st["ok"] is False and st["cancelled"] is True
    first, *rest = st["results"]
    assert first["ok"] and Path(first["output"]).is_file()
    # the second may have been about to commit when the cancel came; the third never began
    assert rest[-1] == {"ok": False, "output": None, "error": "cancelled", "cancelled": True}
    written = {r["output"] for r in st["results"] if r["ok"]}
    assert st["stacked"] == len(written) < 3
    assert st["error"] == f"cancelled after {len(written)} of 3 stacks"
    expected = set()
    for w in written:
        expected |= {Path(w).name, Path(w).stem + "_depth.tif"}
    assert {p.name for p in out.iterdir()} == expected  # nothing partial


def test_batch_cancel_within_a_stack(tmp_path, long_brackets):
    out = tmp_path / "out"
    out.mkdir()
    proc = _start(_batch(tmp_path / "job", out, long_brackets))
    first = json.loads(proc.stdout.readline())
    assert first["bracket"] == 0 and first["brackets"] == 3
    (tmp_path / "job" / "cancel").touch()
    proc.communicate(timeout=300)
    assert proc.returncode == 130
    st = status(tmp_path / "job")
    assert st["cancelled"] is True and st["stacked"] == 0
    assert [r["cancelled"] for r in st["results"]] == [True, True, True]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"options": {"aligned_frames": "/tmp/a"}}, "cannot hold aligned_frames or layers"),
        (
            {"stacks": [{"frames": ["a.tif", "b.tif"], "output": "o.tif", "x": 1}]},
            "unknown key(s) in stacks[0]: x",
        ),
        (
            {"stacks": [{"frames": ["a.tif"], "output": "o.tif"}]},
            "stacks[0]: 'frames' must name at least two files",
        ),
        (
            {"stacks": [{"frames": ["a.tif", "b.tif"], "output": "o.tif", "aligned_frames": ""}]},
            "stacks[0]: option 'aligned_frames' must be a path or null",
        ),
        ({"stacks": []}, "'stacks' must be a list of at least one stack job"),
    ],
)
def test_batch_bad_manifests_are_refused_before_any_work(tmp_path, brackets, change, problem):
    base = {"kind": "batch", "stacks": [{"frames": ["a.tif", "b.tif"], "output": "o.tif"}]}
    manifest = job(tmp_path, {**base, **change}, valid=False)
    one_line_error(run(manifest), problem)
    assert status(tmp_path)["ok"] is False


def test_batch_two_stacks_with_one_output_are_refused(tmp_path, brackets):
    b0, b1 = brackets
    manifest = job(
        tmp_path,
        {
            "kind": "batch",
            "stacks": [
                {"frames": [str(f) for f in b0], "output": str(tmp_path / "s.tif")},
                {"frames": [str(f) for f in b1], "output": str(tmp_path / "s.jpg")},
            ],
            "options": {"format": "tiff"},
        },
    )
    one_line_error(run(manifest), "stacks[1]: output", "is also stacks[0]'s")
    assert not (tmp_path / "s.tif").exists()


def test_batch_status_file_never_lands_on_a_frame(tmp_path, brackets):
    b0, _ = brackets
    before = b0[1].read_bytes()
    manifest = job(
        tmp_path,
        {
            "kind": "batch",
            "stacks": [{"frames": [str(f) for f in b0], "output": str(tmp_path / "s.tif")}],
            "status_file": str(b0[1]),
        },
    )
    done = run(manifest)
    assert done.returncode == 1 and str(b0[1]) in done.stderr
    assert b0[1].read_bytes() == before and not (tmp_path / "s.tif").exists()


# -- check ------------------------------------------------------------------------------


def test_check_finds_the_gap_and_writes_the_coverage_map(tmp_path):
    b = make_bracket(12, (480, 640), max_blur=16.0, seed=1, flicker=0.005, slant=0.9)
    frames = save_bracket(b, tmp_path / "frames")
    kept = [f for k, f in enumerate(frames) if k not in (5, 6)]  # frames 4 and 5 of 10 now
    coverage = tmp_path / "frames" / "f_coverage.png"
    manifest = job(
        tmp_path / "job",
        {"kind": "check", "frames": [str(f) for f in kept], "coverage_map": str(coverage)},
    )
    done = run(manifest)
    assert done.returncode == 0, done.stderr
    st = status(tmp_path / "job")
    assert st["ok"] is True and st["problems"] is True
    assert st["check"]["gaps"] == [[4, 5]] and st["check"]["frames"] == 10
    assert st["coverage_map"] == str(coverage) == st["check"]["coverage_map"]
    assert coverage.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(line.startswith("gap between frames 4 and 5") for line in st["summary"])
    assert progress(tmp_path / "job")[-1]["phase"] == "done"
    # the same job again: the map exists and is never replaced without overwrite
    done = run(manifest)
    one_line_error(done, str(coverage))
    manifest = job(
        tmp_path / "job2",
        {
            "kind": "check",
            "frames": [str(f) for f in kept],
            "coverage_map": str(coverage),
            "overwrite": True,
            "long_side": 400,
        },
    )
    assert run(manifest).returncode == 0
    assert status(tmp_path / "job2")["check"]["check_size"] == [400, 300]


@pytest.mark.parametrize(
    "extra, problem",
    [
        ({"long_side": 10}, "option 'long_side' must be a whole number >= 64"),
        ({"long_side": 50000}, "'long_side' must be 64..20000 px"),
        ({"sources": ["a.jpg"]}, "'sources' names 1 files for 2 frames"),
        ({"coverage_map": ""}, "'coverage_map' must be a file path or null"),
    ],
)
def test_check_bad_manifests(tmp_path, brackets, extra, problem):
    frames = [str(f) for f in brackets[0][:2]]
    valid = "sources" in extra
    manifest = job(tmp_path, {"kind": "check", "frames": frames, **extra}, valid=valid)
    one_line_error(run(manifest), problem)


def test_unknown_kind_names_them_all(tmp_path):
    manifest = job(tmp_path, {"kind": "retouch", "frames": []}, valid=False)
    one_line_error(
        run(manifest), "unknown job kind 'retouch' (stack, lens, brackets, batch or check)"
    )


# -- a manifest that cannot run: one line naming it and the key, and the status file ---------


def _raw_job(work: Path, manifest: dict) -> Path:
    """The manifest as given (no schema check: some of these are schema-valid JSON)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "manifest.json"
    path.write_text(json.dumps({"status_file": str(work / "status.json"), **manifest}))
    return path


_FRAMES = {"frames": ["a.tif", "b.tif"]}


@pytest.mark.parametrize(
    "manifest, problem",
    [
        ({**_FRAMES, "output": "o.tif", "bogus": 1}, "unknown key(s) for a stack job: bogus"),
        ({**_FRAMES, "output": "o.tif", "version": 2}, "unsupported manifest version 2"),
        ({**_FRAMES, "output": "o.tif", "kind": "zz"}, "unknown job kind 'zz'"),
        ({**_FRAMES, "output": "o.tif", "pid_file": 5}, "'pid_file' must be a file path or null"),
        ({**_FRAMES, "output": "."}, "'output' must name a file, not a folder ('.')"),
        ({**_FRAMES, "output": "/"}, "'output' must name a file, not a folder ('/')"),
        ({**_FRAMES, "output": "o.tif/"}, "'output' must name a file, not a folder ('o.tif/')"),
        ({**_FRAMES, "output": "o\0.tif"}, "'output' holds a NUL character"),
        ({"frames": ["a.tif", "b\0.tif"], "output": "o.tif"}, "'frames[1]' holds a NUL"),
        (
            {**_FRAMES, "output": "o.tif", "options": {"layers": "l\0.ora"}},
            "'options.layers' holds a NUL",
        ),
        (
            {"kind": "batch", "stacks": [{**_FRAMES, "output": "."}]},
            "stacks[0]: 'output' must name a file, not a folder ('.')",
        ),
    ],
)
def test_a_manifest_that_cannot_run_says_so_in_its_status(tmp_path, manifest, problem):
    """Every failure once the status file is known to be usable ends in the status file: the
    darktable plugin polls for it (unknown keys, a bad version or kind exited without one;
    '.', '/', NUL were internal errors)."""
    path = _raw_job(tmp_path, manifest)
    done = run(path)
    one_line_error(done, f"{path}: ", problem)
    assert "internal error" not in done.stderr
    assert status(tmp_path) == {
        "ok": False,
        "output": None,
        "error": done.stderr.strip().removeprefix("focusbridge: error: "),
        "cancelled": False,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "status.json"]


def test_a_manifest_nested_too_deeply_is_one_line(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("[" * 100_000)
    one_line_error(run(path), f"{path}: not a readable JSON job manifest (nested too deeply)")
    path.write_text(json.dumps({**_FRAMES, "output": "o.tif", "status_file": "s\0.json"}))
    one_line_error(run(path), f"{path}: 'status_file' holds a NUL character")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_the_schema_says_what_true_means_for_switches_that_are_on_by_default():
    """The command line's help of --no-gain says what the flag does ("don't match ..."); as
    the description of `"match_gain": true` it read backwards."""
    from pybridge.options import StackOptions

    for options in (
        SCHEMA["oneOf"][0]["properties"]["options"],
        SCHEMA["oneOf"][3]["properties"]["options"],
    ):
        props = options["properties"]
        for name in ("align", "match_gain", "halo_suppression", "noise_averaging"):
            assert props[name]["description"].startswith("true (default): "), name
            assert "; false: " in props[name]["description"], name
    assert StackOptions.schema()["properties"]["crop"]["description"].startswith("crop to")


def test_a_batch_job_merges_every_stack_with_one_exiftool(tmp_path, brackets):
    """darktable's queue (kind batch) runs its stacks in one process: one exiftool merges the
    metadata of all of them (starting one costs more CPU than a merge) and ends with the job."""
    import os

    log = tmp_path / "starts.log"
    wrapper = tmp_path / "exiftool"
    real = subprocess.run(["which", "exiftool"], capture_output=True, text=True).stdout.strip()
    wrapper.write_text(f'#!/bin/sh\necho started >> "{log}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    manifest = job(
        tmp_path / "job",
        {
            "kind": "batch",
            "stacks": [
                {"frames": [str(f) for f in b], "output": str(out / f"b{i}_stacked.tif")}
                for i, b in enumerate(brackets)
            ],
        },
    )
    env = {**os.environ, "FOCUSBRIDGE_EXIFTOOL": str(wrapper)}
    done = subprocess.run(
        [*RUN_JOB, str(manifest)], capture_output=True, text=True, timeout=300, cwd=REPO, env=env
    )
    assert done.returncode == 0, done.stderr
    st = status(tmp_path / "job")
    assert st["stacked"] == 2
    for i in range(2):  # both results carry their frames' merged tags
        tags = subprocess.run(
            ["exiftool", "-s3", "-DateTimeOriginal", str(out / f"b{i}_stacked.tif")],
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert tags, i
    assert log.read_text().count("started") == 1


def test_a_file_name_that_is_not_utf8_is_named(tmp_path):
    """A manifest naming a file whose name is in another encoding (Latin-1 bytes) says which
    string is not UTF-8 text, not only at which byte the decoder stopped."""
    path = tmp_path / "manifest.json"
    body = json.dumps({**_FRAMES, "output": "PLACEHOLDER"}).encode()
    path.write_bytes(body.replace(b"PLACEHOLDER", b"/photos/M\xfccke_stack.tif"))
    one_line_error(
        run(path),
        f"{path}: the string \"/photos/M\ufffdcke_stack.tif\" is not UTF-8 text (byte 0xfc at",
        "rename a file whose name uses another encoding",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
