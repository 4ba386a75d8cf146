"""The synthetic bracket generator does what its docstring claims."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from synthetic import Bracket, disk_kernel, make_bracket, psnr, save_bracket, save_image

SIZE = (240, 320)


@pytest.fixture(scope="module")
def clean():
    """No flicker and no noise, so geometry and blur can be checked tightly."""
    return make_bracket(5, SIZE, flicker=0.0, noise=0.0, seed=3, max_blur=6.0, keep_unwarped=True)


@pytest.fixture(scope="module")
def default():
    return make_bracket(7, SIZE, seed=1)


def _interior(shape, border):
    m = np.zeros(shape[:2], bool)
    m[border:-border, border:-border] = True
    return m


def test_shapes_and_types(default: Bracket):
    b = default
    assert len(b.frames) == len(b.transforms) == len(b.gains) == 7
    for f in b.frames:
        assert f.shape == SIZE + (3,) and f.dtype == np.float32
        assert f.min() >= 0.0 and f.max() <= 1.0
    assert b.truth.shape == SIZE + (3,) and b.truth.dtype == np.float32
    assert b.depth.shape == SIZE and b.depth.dtype == np.float32
    assert b.edge_band.shape == SIZE and b.edge_band.dtype == bool
    assert b.depth.min() >= -1e-6 and b.depth.max() <= 6 + 1e-6
    # the scene spans the focus range: nearest and farthest planes are both visible
    assert b.depth.min() < 0.5 and b.depth.max() > 5.5


def test_deterministic_by_seed():
    a = make_bracket(3, (64, 96), seed=5)
    b = make_bracket(3, (64, 96), seed=5)
    c = make_bracket(3, (64, 96), seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames, strict=True))
    assert not np.array_equal(a.truth, c.truth)


def test_reference_is_identity(default: Bracket):
    ref = default.reference
    assert ref == len(default.frames) // 2
    assert np.allclose(default.transforms[ref], np.eye(3))
    assert np.allclose(default.gains[ref], 1.0)
    # the others do move: breathing makes the scale differ from 1
    for k, T in enumerate(default.transforms):
        if k != ref:
            assert abs(np.linalg.det(T[:2, :2]) - 1.0) > 1e-4


def test_transforms_follow_breathing():
    b = make_bracket(5, (96, 128), breathing=0.02, shift=0.0, rotation=0.0, seed=2)
    for k, T in enumerate(b.transforms):
        # frame k is magnified by 1 + 0.02 (k - 2); T maps back, so it shrinks by that factor
        assert np.isclose(T[0, 0], 1.0 / (1.0 + 0.02 * (k - 2)))
        # about the centre: the centre maps to itself
        c = np.array([(128 - 1) / 2, (96 - 1) / 2, 1.0])
        assert np.allclose(T @ c, c)


def test_warp_back_matches_unwarped_render(clean: Bracket):
    b = clean
    H, W = SIZE
    for k, f in enumerate(b.frames):
        back = cv2.warpAffine(
            f,
            b.transforms[k][:2],
            (W, H),
            flags=cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(-1, -1, -1),
        )
        valid = (back.min(axis=2) >= 0) & _interior(SIZE, 12)
        valid = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert valid.mean() > 0.7
        p = psnr(back, b.unwarped[k], valid)
        # two cubic resamplings of pixel-level texture; a wrong transform gives < 20 dB
        assert p > 30.0, (k, p)
        if k != b.reference:
            # and the transform matters: without it the frames do not line up
            assert psnr(f, b.unwarped[k], valid) < p - 5.0


def test_sharp_region_matches_truth(clean: Bracket):
    """Where depth == k (away from depth edges), frame k is the truth."""
    b = clean
    H, W = SIZE
    kern = np.ones((3, 3), np.uint8)
    checked = 0
    for k in range(len(b.frames)):
        region = (np.abs(b.depth - k) < 1e-3) & ~b.edge_band & _interior(SIZE, 12)
        region = cv2.erode(region.astype(np.uint8), kern, iterations=2) > 0
        if region.sum() < 200:
            continue
        checked += 1
        # exact in reference geometry (before warping)...
        assert psnr(b.unwarped[k], b.truth, region) > 45.0
        # ...and within resampling error after the warp round trip
        back = cv2.warpAffine(
            b.frames[k],
            b.transforms[k][:2],
            (W, H),
            flags=cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_REFLECT,
        )
        assert psnr(back, b.truth, region) > 30.0
        # and a frame focused elsewhere is clearly worse there
        other = 0 if k >= len(b.frames) // 2 else len(b.frames) - 1
        assert psnr(b.unwarped[other], b.truth, region) < psnr(b.unwarped[k], b.truth, region) - 10
    assert checked >= 3


def test_single_frames_are_far_from_truth(default: Bracket):
    for k, f in enumerate(default.frames):
        back = (
            cv2.warpAffine(
                f,
                default.transforms[k][:2],
                SIZE[::-1],
                flags=cv2.INTER_CUBIC,
                borderMode=cv2.BORDER_REFLECT,
            )
            / default.gains[k]
        )
        p = psnr(back, default.truth, _interior(SIZE, 16))
        assert np.isfinite(p) and p < 33.0, (k, p)


def test_edge_band(default: Bracket):
    band = default.edge_band
    assert band.any() and not band.all()
    assert 0.02 < band.mean() < 0.6
    # every depth discontinuity lies inside the band
    d = default.depth
    jump = (
        cv2.dilate(d, np.ones((3, 3), np.uint8)) - cv2.erode(d, np.ones((3, 3), np.uint8))
    ) > 0.5
    assert jump.any() and band[jump].all()


def test_gains_and_noise_applied():
    b = make_bracket(
        3,
        (64, 96),
        flicker=0.05,
        noise=0.0,
        shift=0,
        rotation=0,
        breathing=0,
        seed=4,
        keep_unwarped=True,
    )
    for k, f in enumerate(b.frames):
        g = b.gains[k]
        assert np.all(np.abs(g - 1.0) <= 0.05 + 1e-6)
        est = f.reshape(-1, 3).sum(0) / b.unwarped[k].reshape(-1, 3).sum(0)
        assert np.allclose(est, g, atol=2e-3)
    n = make_bracket(
        3,
        (64, 96),
        noise=0.02,
        flicker=0,
        shift=0,
        rotation=0,
        breathing=0,
        seed=4,
        keep_unwarped=True,
    )
    resid = n.frames[1] - n.unwarped[1]
    assert 0.015 < resid.std() < 0.025


def test_bit_depth_quantises():
    b = make_bracket(3, (32, 48), bit_depth=8, seed=0)
    q = b.frames[0] * 255
    assert np.allclose(q, np.round(q), atol=1e-3)


def test_disk_kernel():
    assert disk_kernel(0.5) is None
    k = disk_kernel(4.0)
    assert k.shape == (11, 11) and np.isclose(k.sum(), 1.0)
    assert k[5, 5] == k.max() and k[0, 0] == 0


def test_psnr():
    a = np.zeros((4, 4, 3), np.float32)
    assert psnr(a, a) == float("inf")
    assert np.isclose(psnr(a, a + 0.1), 20.0)
    m = np.zeros((4, 4), bool)
    m[0, 0] = True
    b = a.copy()
    b[1:, 1:] = 1.0
    assert psnr(a, b, m) == float("inf")


def test_save_bracket_roundtrip(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    b = make_bracket(3, (40, 56), seed=0)
    paths = save_bracket(b, tmp_path / "tif")
    assert [p.name for p in paths] == ["frame_000.tif", "frame_001.tif", "frame_002.tif"]
    data = tifffile.imread(paths[1])
    assert data.dtype == np.uint16 and data.shape == (40, 56, 3)
    assert np.abs(data / 65535.0 - b.frames[1]).max() < 1e-4
    jpgs = save_bracket(b, tmp_path / "jpg", ext=".jpg")
    img = cv2.imdecode(np.fromfile(jpgs[0], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (40, 56, 3) and img.dtype == np.uint8
    assert psnr(img[..., ::-1] / 255.0, b.frames[0]) > 28
    png = save_image(tmp_path / "t.png", b.truth, 16)
    img = cv2.imdecode(np.fromfile(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16
    assert np.abs(img[..., ::-1] / 65535.0 - b.truth).max() < 1e-4


def test_speed():
    make_bracket(3, (64, 64))  # warm-up
    t = time.perf_counter()
    make_bracket(9, (480, 640))
    dt = time.perf_counter() - t
    assert dt < 4.0, dt  # well under 2 s on an idle core; slack for busy CI machines


def test_sink_streams_frames():
    got = {}
    b = make_bracket(3, (32, 48), seed=7, sink=lambda k, f: got.__setitem__(k, f.copy()))
    ref = make_bracket(3, (32, 48), seed=7)
    assert b.frames == [] and sorted(got) == [0, 1, 2]
    assert all(np.array_equal(got[k], ref.frames[k]) for k in range(3))
    assert np.array_equal(b.truth, ref.truth)
