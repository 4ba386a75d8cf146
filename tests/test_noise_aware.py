"""Noise-aware fusion: where frames are equally sharp within the noise they are averaged, so
flat areas come out less noisy than any frame; where one frame is clearly sharper, its detail is
kept as sharp as with a hard maximum."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pybridge import stack

H, W, N = 240, 360, 6
SHARP = 2  # the frame in which the textured patch is in focus
PATCH = (slice(70, 170), slice(130, 230))
FLAT = [(slice(10, 60), slice(10, 110)), (slice(180, 230), slice(250, 350))]


def _highpass(img: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(np.ascontiguousarray(img, np.float32), cv2.COLOR_RGB2GRAY)
    return g - cv2.GaussianBlur(g, (0, 0), 2.0)


@pytest.fixture(scope="module")
def bracket():
    """A flat grey field (out of focus in every frame) around a fine texture that is sharp in
    one frame and increasingly blurred in the others; every frame has its own sensor noise."""
    rng = np.random.default_rng(7)
    texture = rng.random((100, 100, 3)).astype(np.float32) * 0.6 + 0.2
    frames, clean = [], []
    for k in range(N):
        img = np.full((H, W, 3), 0.45, np.float32)
        blur = 2.0 * abs(k - SHARP)
        patch = cv2.GaussianBlur(texture, (0, 0), blur) if blur else texture
        img[PATCH] = patch
        clean.append(img.copy())
        frames.append(img + rng.normal(0, 0.02, img.shape).astype(np.float32))
    return frames, clean


@pytest.mark.parametrize("method", ["pyramid", "depthmap"])
def test_flat_areas_come_out_less_noisy_than_any_frame(bracket, method):
    frames, _ = bracket
    on = stack(frames, method=method, align=False).image
    off = stack(frames, method=method, align=False, noise_averaging=False).image
    for box in FLAT:
        frame_noise = min(float(_highpass(f)[box].std()) for f in frames)
        ratio_on = float(_highpass(on)[box].std()) / frame_noise
        ratio_off = float(_highpass(off)[box].std()) / frame_noise
        assert ratio_on < 0.8, (method, ratio_on)
        assert ratio_on < 0.8 * ratio_off, (method, ratio_on, ratio_off)


@pytest.mark.parametrize("method", ["pyramid", "depthmap"])
def test_detail_sharp_in_one_frame_stays_as_sharp(bracket, method):
    frames, clean = bracket
    inner = (
        slice(PATCH[0].start + 8, PATCH[0].stop - 8),
        slice(PATCH[1].start + 8, PATCH[1].stop - 8),
    )
    on = stack(frames, method=method, align=False).image
    off = stack(frames, method=method, align=False, noise_averaging=False).image
    truth = clean[SHARP][inner]
    err_on = float(np.sqrt(np.mean((on[inner] - truth) ** 2)))
    err_off = float(np.sqrt(np.mean((off[inner] - truth) ** 2)))
    # the texture's detail survives: far closer to the sharp frame than to its blurred neighbours
    neighbour = float(np.sqrt(np.mean((clean[SHARP + 1][inner] - truth) ** 2)))
    assert err_on < 0.5 * neighbour, (err_on, neighbour)
    assert err_on <= 1.05 * err_off, (err_on, err_off)
