"""Noise-aware fusion: where frames are equally sharp within the noise they are averaged, so
flat areas come out less noisy than any frame; where one frame is clearly sharper, its detail is
kept as sharp as with a hard maximum."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from synthetic import make_bracket

from pybridge import stack
from pybridge.fuse import SoftSelect, _quiet_blocks, make_fuser
from pybridge.pipeline import chain_order

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


@pytest.mark.parametrize("method", ["pyramid", "depthmap"])
def test_noise_is_measured_on_frame_differences_not_on_blurred_texture(method):
    """On a scene textured everywhere, each sharpness statistic's noise estimate (spread and
    floor) matches what the statistic reads on pure noise of the bracket's sigma. Measured
    on the frames themselves, the blurred texture they share read as noise (the coarse
    levels' floor up to 60x too high), and averaging blurred detail."""
    sigma = 0.01
    b = make_bracket(
        n_frames=9, size=(300, 450), noise=sigma, seed=3, breathing=0, shift=0, rotation=0
    )
    h, w = b.frames[0].shape[:2]
    fuser = make_fuser(method, (h, w), 3, frame_count=len(b.frames))
    for index in chain_order(len(b.frames), len(b.frames) // 2):
        fuser.add(index, b.frames[index])
    states = fuser._noise_states()
    assert len(states) == (4 if method == "pyramid" else 1)
    rng = np.random.default_rng(11)

    def pure_noise_statistics():
        noise = rng.normal(0.5, sigma, (h, w, 3)).astype(np.float32)
        return list(fuser._statistics(cv2.cvtColor(noise, cv2.COLOR_RGB2GRAY), None))

    first, second = pure_noise_statistics(), pure_noise_statistics()
    truth = [_quiet_blocks(a, b) for a, b in zip(first, second, strict=True)]
    for (ties, _), (spread, floor) in zip(states, truth, strict=True):
        assert ties.measured
        assert 0.5 < ties.floor / floor < 2.0, (ties.floor, floor)
        assert 0.5 < ties.spread / spread < 3.0, (ties.spread, spread)


def test_retie_moves_kept_ties_to_the_new_threshold():
    select = SoftSelect((1, 5))
    select.top[:] = [0.5, 1.0, 1.5, 3.0, -1e30]  # the last pixel: not covered
    select.total[:] = [2.0, 3.0, 1.0, 1.0, 0.0]
    select.retie(old=1.0, new=2.0)
    assert select.top[0, :4].tolist() == [2.0, 2.0, 2.0, 3.0]
    assert select.top[0, 4] < -1e29
    assert select.total[0].tolist() == [2.0, 3.0, 1.0, 1.0, 0.0]  # the weights stay


def test_noise_pairs_are_neighbours_in_the_bracket():
    """Chain order turns back to the reference after the last frame: a pair that would span
    that turn (frames 4 and 1 of [2, 3, 4, 1, 0]) is not a pair of neighbours, so the second
    pair is 1 - 0 and the estimate comes at the fifth frame."""
    rng = np.random.default_rng(3)
    fuser = make_fuser("depthmap", (96, 128), 3, frame_count=5)
    calls = []
    for index in chain_order(5, 2):
        frame = rng.normal(0.5, 0.02, (96, 128, 3)).astype(np.float32)
        calls.append(fuser.differences.observe(index, frame, None, fuser._statistics))
    assert calls[:4] == [None] * 4
    assert calls[4] is not None and all(e is not None for e in calls[4])


@pytest.mark.parametrize("method", ["pyramid", "depthmap"])
def test_a_fuser_is_freed_as_soon_as_it_is_dropped(method):
    """No reference cycle keeps a fuser's frame-sized state waiting for the garbage collector:
    a batch worker stacking bracket after bracket grew by a fuser's state per bracket."""
    import gc
    import weakref

    rng = np.random.default_rng(4)
    gc.disable()
    try:
        fuser = make_fuser(method, (64, 96), 3, frame_count=6)
        for index in chain_order(6, 3):
            fuser.add(index, rng.normal(0.5, 0.02, (64, 96, 3)).astype(np.float32))
        fuser.finish()
        alive = weakref.ref(fuser)
        del fuser
        assert alive() is None
    finally:
        gc.enable()


def _shoot(base: np.ndarray, sigma, seed: int) -> list[np.ndarray]:
    """N frames of the flat field `base` (H x W) around the textured patch of the `bracket`
    fixture (sharp in frame SHARP), with noise of std sigma(pixel value) in every frame."""
    rng = np.random.default_rng(seed)
    texture = rng.random((100, 100)).astype(np.float32) * 0.5 + 0.25
    frames = []
    for k in range(N):
        img = base.copy()
        blur = 2.0 * abs(k - SHARP)
        img[PATCH] = cv2.GaussianBlur(texture, (0, 0), blur) if blur else texture
        noisy = img + rng.normal(0, 1, img.shape).astype(np.float32) * sigma(img)
        frames.append(np.repeat(noisy[..., None], 3, axis=2))
    return frames


def _flat_ratio(result: np.ndarray, frames, box) -> float:
    return float(_highpass(result)[box].std()) / min(float(_highpass(f)[box].std()) for f in frames)


def test_shot_noise_is_averaged_in_bright_areas_too():
    """Noise that grows with brightness (shot noise: a raw file, a linear export): measured
    where the picture is quietest (the dark half), one noise level left the bright half with
    more than one frame's noise (1.2x the least noisy frame's here). The noise is measured
    per brightness (fuse.noise_scale_table), so both halves come out averaged."""
    base = np.full((H, W), 0.06, np.float32)
    base[:, W // 2 :] = 0.85
    frames = _shoot(base, lambda img: np.sqrt(1.3e-6 + 7.94e-4 * np.clip(img, 0, 1)), seed=11)
    result = stack(frames, align=False).image
    dark, bright = (slice(180, 230), slice(20, 120)), (slice(180, 230), slice(250, 350))
    assert _flat_ratio(result, frames, bright) < 0.8  # 1.18 with one noise level
    assert _flat_ratio(result, frames, dark) < 0.6


def test_crushed_blacks_do_not_set_the_noise_level():
    """A JPEG's shadows crushed to a few levels (a black vignette): almost no noise there. Its
    blocks were the quietest and set the noise of the whole frame, and the background kept
    one frame's noise (1.15x the least noisy frame's here); pixels crushed to black or
    clipped to white are left out of the measurement (fuse._unclipped)."""
    base = np.full((H, W), 0.08, np.float32)
    yy, xx = np.mgrid[0:H, 0:W]
    corners = np.hypot((yy - H / 2) / H, (xx - W / 2) / W) > 0.45
    base[corners] = 0.0
    quantum = 1 / 255

    def sigma(img):
        return np.where(img > 0.01, 0.01, 0.004).astype(np.float32)

    frames = _shoot(base, sigma, seed=12)
    for f in frames:  # the corners crushed to 0..2 of 255, as an 8-bit JPEG's tone curve does
        f[corners] = np.round(np.clip(f[corners], 0, 2 * quantum) / quantum) * quantum
    result = stack(frames, align=False).image
    background = (slice(100, 150), slice(240, 320))
    assert corners.mean() > 0.15 and not corners[background].any()
    assert _flat_ratio(result, frames, background) < 0.8  # 1.15 with the crushed blocks


def _bands(sigma, levels, blocks=2000, seed=0):
    """Noise blocks (energy, brightness) as FrameDifferences gathers them."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(*levels, blocks).astype(np.float32)
    # the energy of an 8x8 block of noise: a mean of 64 squares
    energy = (rng.normal(0, 1, (blocks, 64)) ** 2).mean(axis=1) * sigma(level) ** 2
    return energy.astype(np.float32), level


def test_noise_scale_table_follows_shot_noise_and_nothing_else():
    from pybridge.fuse import noise_scale_table

    def shot(x):
        return np.sqrt(1e-6 + 8e-4 * x)

    table = noise_scale_table([_bands(shot, (0.05, 0.9)), _bands(shot, (0.05, 0.9), seed=1)])
    assert table is not None and table.shape == (256,)
    # relative to the darkest band's noise (~0.08 brightness), within 15 %
    want = shot(np.array([0.5, 0.8])) / shot(0.08)
    assert np.allclose(table[[128, 204]], want, rtol=0.15), (table[[128, 204]], want)
    # noise alike at every brightness: no table
    assert noise_scale_table([_bands(lambda x: 0.01 + 0 * x, (0.05, 0.9))]) is None
    # detail left in the brightest eighth of the blocks (misregistered texture): no table
    energy, level = _bands(lambda x: 0.01 + 0 * x, (0.05, 0.9))
    energy[level > 0.8] *= 30
    assert noise_scale_table([(energy, level)]) is None
    # too few blocks to tell
    assert noise_scale_table([_bands(shot, (0.05, 0.9), blocks=100)]) is None
