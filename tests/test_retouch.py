"""`focusbridge retouch RESULT --from FRAME --mask MASK -o OUT`: an aligned frame painted into
the result through a mask. Outside the (feathered) mask OUT is RESULT bit for bit, inside it
is FRAME; sizes, names and metadata are checked like the stack's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from synthetic import make_bracket, save_bracket

from pybridge import stack
from pybridge.retouch import mask_weights, paint

FOCUSBRIDGE = [sys.executable, "-m", "pybridge"]


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FOCUSBRIDGE, *map(os.fsdecode, args)], capture_output=True, text=True, timeout=timeout
    )


def one_line_error(done, *must_contain):
    assert done.returncode == 1, (done.returncode, done.stderr)
    err = done.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("focusbridge: error: "), err
    assert "partial" not in err and "internal error" not in err, err
    for text in must_contain:
        assert str(text) in err, (text, err)


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    """A 16-bit result, its aligned frames, and a mask: a filled ellipse, and a grey ramp."""
    folder = tmp_path_factory.mktemp("stacked")
    b = make_bracket(5, (200, 280), breathing=0.01, flicker=0.03, seed=21)
    frames = save_bracket(b, folder / "in", ".tif", bit_depth=16)
    res = stack(frames, folder / "stacked.tif", aligned_frames=folder / "aligned", crop=True)
    h, w = res.image.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 5, h // 4), 0, 0, 360, 255, -1)
    cv2.imwrite(str(folder / "mask.png"), mask)
    return folder, res


def reach(feather: float) -> int:
    """How far cv2's Gaussian of that sigma reaches (its kernel radius for float images)."""
    return (int(round(feather * 4 * 2 + 1)) | 1) // 2 + 1


@pytest.mark.parametrize("feather", [0.0, 3.0])
def test_only_masked_pixels_change_and_they_become_the_frame(tmp_path, stacked, feather):
    folder, res = stacked
    frame = res.aligned_frame_paths[0]
    out = tmp_path / "retouched.tif"
    args = ["--feather", str(feather)] if feather else []
    done = run(
        "retouch", folder / "stacked.tif", "--from", frame, "--mask", folder / "mask.png",
        *args, "-o", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result, src, got = (tifffile.imread(p) for p in (folder / "stacked.tif", frame, out))
    assert got.dtype == np.uint16 and got.shape == result.shape
    mask = cv2.imread(str(folder / "mask.png"), cv2.IMREAD_GRAYSCALE)
    r = reach(feather) if feather else 0
    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    outside = cv2.dilate(mask, kernel) == 0
    inside = cv2.erode(mask, kernel) == 255
    assert outside.sum() > 0.5 * mask.size and inside.sum() > 0.05 * mask.size
    assert np.array_equal(got[outside], result[outside])  # bit for bit
    assert np.array_equal(got[inside], src[inside])
    assert (got[inside] != result[inside]).any()  # the frame differs from the result there
    changed = np.any(got != result, axis=2)
    assert not (changed & outside).any()
    if feather:  # a soft edge: values between the two in the ring
        ring = ~outside & ~inside
        between = (np.minimum(src, result) <= got) & (got <= np.maximum(src, result))
        assert between[ring].all()
        assert (changed & ring).sum() > 0.5 * ring.sum()  # and mostly changed


def test_grey_levels_blend_and_16_bit_masks_work(tmp_path, stacked):
    folder, res = stacked
    h, w = res.image.shape[:2]
    ramp = np.tile(np.linspace(0, 65535, w).astype(np.uint16), (h, 1))
    cv2.imwrite(str(tmp_path / "ramp.png"), ramp)
    out = tmp_path / "o.tif"
    frame = res.aligned_frame_paths[4]
    done = run(
        "retouch", folder / "stacked.tif", "--from", frame, "--mask", tmp_path / "ramp.png",
        "-o", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = tifffile.imread(folder / "stacked.tif").astype(np.float64)
    src = tifffile.imread(frame).astype(np.float64)
    got = tifffile.imread(out).astype(np.float64)
    weight = (ramp / 65535.0)[:, :, None]
    assert np.abs(got - (result + weight * (src - result))).max() <= 1.0
    assert np.array_equal(got[:, 0], result[:, 0]) and np.array_equal(got[:, -1], src[:, -1])


def test_paint_is_exact_at_both_ends():
    rng = np.random.default_rng(1)
    a, b = (rng.random((40, 50, 3), dtype=np.float32) for _ in range(2))
    m = np.zeros((40, 50), np.float32)
    m[10:30, 10:40] = 1.0
    m[20, 20] = 0.5
    w = mask_weights(m)
    out = paint(a, b, w)
    assert np.array_equal(out[w == 0], a[w == 0]) and np.array_equal(out[w == 1], b[w == 1])
    assert np.allclose(out[20, 20], (a[20, 20] + b[20, 20]) / 2)
    assert mask_weights(np.dstack([m, m, m]), 2.0).shape == (40, 50)


def test_sizes_must_match_and_names_must_differ(tmp_path, stacked):
    folder, res = stacked
    result, mask = folder / "stacked.tif", folder / "mask.png"
    frame = res.aligned_frame_paths[1]
    out = tmp_path / "o.tif"
    source = folder / "in" / "frame_001.tif"  # the uncropped source: not the result's size
    h, w = res.image.shape[:2]
    one_line_error(
        run("retouch", result, "--from", source, "--mask", mask, "-o", out),
        source,
        f"the result {result} is {w}x{h}",
    )
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((h // 2, w // 2), np.uint8))
    one_line_error(
        run("retouch", result, "--from", frame, "--mask", small, "-o", out), small, "mask"
    )
    for clash, role in ((result, "result"), (frame, "frame"), (mask, "mask")):
        before = clash.read_bytes()
        done = run("retouch", result, "--from", frame, "--mask", mask, "-o", clash, "--overwrite")
        one_line_error(done, clash, f"would replace the {role}")
        assert clash.read_bytes() == before
    one_line_error(
        run("retouch", result, "--from", frame, "--mask", mask, "-o", tmp_path / "o.xyz"),
        "unsupported output format",
    )
    done = run("retouch", result, "--from", frame, "--mask", mask, "-o", out, "--feather", "-2")
    one_line_error(done, "--feather")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.png"]
    out.write_text("old")
    one_line_error(run("retouch", result, "--from", frame, "--mask", mask, "-o", out), "exists")
    assert out.read_text() == "old"


def test_the_results_metadata_is_kept(tmp_path, stacked, exiftool):
    folder, res = stacked
    result = tmp_path / "tagged.tif"
    result.write_bytes((folder / "stacked.tif").read_bytes())
    exiftool(
        "-overwrite_original",
        "-Make=Testmaker",
        "-Model=Macro 1",
        "-DateTimeOriginal=2024:05:06 07:08:09",
        "-XMP-dc:Title=pollen",
        result,
    )
    out = tmp_path / "retouched.tif"
    frame = res.aligned_frame_paths[2]
    done = run("retouch", result, "--from", frame, "--mask", folder / "mask.png", "-o", out)
    assert done.returncode == 0, done.stderr
    tags = ["-Make", "-Model", "-DateTimeOriginal", "-Title", "-ImageSize"]
    want = json.loads(exiftool("-j", *tags, result))[0]
    got = json.loads(exiftool("-j", *tags, "-HistoryParameters", "-DerivedFromFilePath", out))[0]
    for key in ("Make", "Model", "DateTimeOriginal", "Title", "ImageSize"):
        assert got[key] == want[key], key
    assert (
        "retouched" in str(got["HistoryParameters"]) and got["DerivedFromFilePath"] == result.name
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retouched.tif", "tagged.tif"]
    # and without
    plain = tmp_path / "plain.tif"
    done = run(
        "retouch", result, "--from", frame, "--mask", folder / "mask.png", "-o", plain,
        "--no-metadata",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert exiftool("-s3", "-Make", plain).strip() == ""


def test_eight_bit_jpeg_output(tmp_path, stacked):
    folder, res = stacked
    out = tmp_path / "r.jpg"
    done = run(
        "retouch", folder / "stacked.tif", "--from", res.aligned_frame_paths[3], "--mask",
        folder / "mask.png", "-o", out, "--no-metadata",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    img = cv2.imread(str(out))
    assert img.dtype == np.uint8 and img.shape[:2] == res.image.shape[:2]
    assert not math.isnan(float(img.mean()))
    assert Path(out).stat().st_size > 0


def test_feather_beyond_the_diagonal_is_refused_in_one_line(tmp_path, stacked):
    """--feather 1e9 was an OpenCV assertion, 5e7 std::bad_alloc, 1e6 16 GB and minutes deaf
    to SIGTERM: a Gaussian of sigma s costs O(s) a pixel. The image's diagonal is the most a
    feather can soften (the mask is nearly flat by then)."""
    folder, res = stacked
    h, w = res.image.shape[:2]
    limit = math.ceil(math.hypot(h, w))
    args = ["--from", res.aligned_frame_paths[0], "--mask", folder / "mask.png"]
    for feather in ("1e9", "5e7", "1e6", str(limit + 1)):
        out = tmp_path / "o.tif"
        done = run(
            "retouch", folder / "stacked.tif", *args, "--feather", feather, "-o", out, timeout=60
        )
        one_line_error(done, f"--feather {float(feather):g} is more than", f"{limit} px")
    assert list(tmp_path.iterdir()) == []
    done = run("retouch", folder / "stacked.tif", *args, "--feather", str(limit), "-o", out)
    assert done.returncode == 0, done.stderr


def test_a_wide_feather_is_a_gaussian_at_the_cost_of_a_narrow_one():
    """Feathers over 16 px blur a reduced copy of the mask: close to the full Gaussian, zero
    where it cannot reach (the result kept bit for bit there), and a sigma of the diagonal
    costs what a narrow one does (in a child: the full-size blur would take minutes)."""
    mask = np.zeros((500, 800), np.float32)
    cv2.ellipse(mask, (400, 250), (60, 40), 0, 0, 360, 1.0, -1)
    for sigma in (17.0, 40.0):
        r = math.ceil(4.5 * sigma)  # a separable blur reaches a square
        far = cv2.dilate(mask, np.ones((2 * r + 1, 2 * r + 1), np.uint8)) == 0
        want = cv2.GaussianBlur(mask, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        got = mask_weights(mask, sigma)
        assert got.shape == mask.shape and got.dtype == np.float32
        assert np.abs(got - want).max() < 0.01, sigma
        assert (got[far] == 0).all() and far.sum() > 0.2 * far.size, sigma
    code = (
        "import time, numpy as np; from pybridge.retouch import mask_weights; "
        "m = np.zeros((3000, 4000), np.float32); m[1000:2000, 1500:2500] = 1; "
        "t = time.perf_counter(); w = mask_weights(m, 5000.0); "
        "assert w.shape == m.shape and 0 <= w.min() < w[1500, 2000] <= 1; "
        "print(time.perf_counter() - t)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 5.0
