"""FUSE step: fold aligned frames, one at a time, into one all-in-focus image.

Both fusers keep a fixed amount of state (a few full-size arrays, or one pyramid), whatever the
number of frames, so a 300-frame bracket needs the memory of a 15-frame one.

* `DepthMapFuser` ("depthmap", DMap-like): a per-pixel focus measure (smoothed energy of the
  Laplacian of Gaussian) picks the sharpest frame; each frame is composited where it wins, with
  a feathered mask, so the selection follows smooth regions rather than single noisy pixels.
* `PyramidFuser` ("pyramid", PMax-like): Laplacian-pyramid fusion; at fine levels each
  coefficient comes from the frame with the highest *local* contrast (activity summed over a
  small window: the consistency step that keeps flat areas from turning into noise; at the
  finest level plus a share of the next level's, as detail in focus has energy in both octaves
  and noise mostly in the finest). With halo suppression (default) the coarse levels do not
  pick by contrast, which is what spreads a defocused foreground's blur into a halo; they
  follow the focus decision (its noise-aware weights computed FOCUS_WEIGHTS_LEVEL levels
  down), blended through a Gaussian pyramid of its mask.

Noise-aware (default): where several frames are equally sharp within what sensor noise
explains (flat areas, backgrounds, overlapping depths of field), both fusers average them
instead of picking one, so noise there falls below a single frame's; where one frame is clearly
sharper it is taken alone, as before (`SoftSelect`, with the noise measured from the frames
themselves: `FrameDifferences` on the first four frames, `TieSpread` for shorter brackets and
until then).

Both track the depth map (index of the sharpest frame) and a confidence map.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from .options import METHODS

_LUMA = np.array([[0.299, 0.587, 0.114]], np.float32)  # Rec. 601 weights, as cv2's RGB2GRAY


@dataclass
class FusionResult:
    image: np.ndarray  # float32 H x W x C
    depth: np.ndarray  # uint16 H x W: index (in bracket order) of the sharpest frame
    confidence: np.ndarray  # float32 H x W, 0..1: how clearly that frame won
    coverage: np.ndarray  # uint16 H x W: how many frames covered each pixel


def _grey(pixels: np.ndarray) -> np.ndarray:
    """Luminance (H x W); a view of a one-channel frame, a new plane otherwise."""
    return pixels[..., 0] if pixels.shape[2] == 1 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)


def focus_measure(pixels: np.ndarray, window_sigma: float) -> np.ndarray:
    """Local sharpness: squared Laplacian of the (slightly smoothed) grey image, averaged over a
    Gaussian window. The pre-smoothing keeps sensor noise from reading as detail."""
    grey = cv2.GaussianBlur(_grey(pixels), (0, 0), 1.0)
    lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=3)
    del grey
    # in place: this runs on full-size frames, and memory is the budget that matters
    cv2.multiply(lap, lap, dst=lap)
    return cv2.GaussianBlur(lap, (0, 0), window_sigma, dst=lap)


def window_sigma_for(shape: tuple[int, int]) -> float:
    """The focus window grows with the image: ~0.1 % of the long side, at least 2 px."""
    return max(2.0, 0.0012 * max(shape))


def aligned_focus_measure(
    pixels: np.ndarray, valid: np.ndarray | None, window_sigma: float
) -> np.ndarray:
    """The focus measure of one aligned frame, pushed far down where the frame has no data.
    A pure function, so the pipeline can compute it for the next frame in its read-ahead thread."""
    f = focus_measure(pixels, window_sigma)
    if valid is not None:
        # the border of a warped frame is replicated, not real: never let it win
        inner = cv2.erode(valid, np.ones((5, 5), np.uint8))
        cv2.subtract(f, 1e30, dst=f, mask=cv2.bitwise_not(inner))
    return f


class SoftSelect:
    """Streaming soft selection over frames, per pixel: the noise-aware part of fusion.

    Each frame brings a sharpness statistic u (per pixel); the fused value is the mean of the
    frames' values weighted by exp((u - max u) / T), where T is the spread of u that sensor
    noise alone explains. A frame sharper than the rest by many T takes the pixel alone (fine
    detail stays as sharp as with a hard maximum); frames equally sharp within the noise (flat
    areas, overlapping depths of field) are averaged, which divides their noise by sqrt(k).
    Only the running maximum and the sum of weights relative to it are kept, so memory does
    not grow with the frame count. T = 0 is the classic hard maximum."""

    def __init__(self, shape: tuple[int, int]):
        self.top = np.full(shape, _NONE, np.float32)
        self.total = np.zeros(shape, np.float32)

    def update(self, u: np.ndarray, spread: float) -> np.ndarray:
        """Fold in one frame's statistic; returns alpha (float32, 0..1): this frame's share of
        the weighted mean so far, for `mean += alpha * (value - mean)`."""
        if spread <= 0:
            alpha = np.greater(u, self.top).astype(np.float32)
            np.maximum(self.top, u, out=self.top)
            self.total.fill(1.0)  # only the maximum has weight
            return alpha
        # relative to the new maximum M: old weights scale by exp((M_old - M) / T), the new
        # frame weighs exp((u - M) / T). Weights stay relative to the maximum, so a spread
        # that is still being estimated in the first frames only changes the newer weights.
        new_top = cv2.max(self.top, u)
        # in place, in the old maximum's plane (full-size planes: memory is the budget)
        shrink = cv2.addWeighted(self.top, 1.0 / spread, new_top, -1.0 / spread, 0.0, dst=self.top)
        _exp_weight(shrink)
        cv2.multiply(self.total, shrink, dst=self.total)
        self.top = new_top
        weight = cv2.addWeighted(u, 1.0 / spread, new_top, -1.0 / spread, 0.0, dst=shrink)
        _exp_weight(weight)
        cv2.add(self.total, weight, dst=self.total)
        return cv2.divide(weight, self.total, dst=weight)

    def retie(self, old: float, new: float) -> None:
        """The tie threshold moved from `old` to `new`: kept maxima at or below the tie level
        (or below the new one) are ties at the new level; their weights stay."""
        covered = self.top > _NONE / 2
        self.top[covered & (self.top <= max(old, new))] = new


_NONE = np.float32(-1e30)  # the statistic of a pixel a frame does not cover

# exp() of a weight's log this low is below any float32 share of a mean of weights >= 1; lower
# ones are raised to it first: cv2.exp takes 40-200 times longer on arguments under -87 (its
# result underflows), which sharp detail's rivals and uncovered pixels reach
_LOG_WEIGHT_MIN = -60.0


def _exp_weight(x: np.ndarray) -> None:
    """x = exp(x) for x a weight's log relative to the maximum (<= 0), in place. Clamped to
    _LOG_WEIGHT_MIN..0: where neither the kept maximum nor the new statistic covers a pixel,
    (_NONE - _NONE) / spread is rounding noise of 1e21 or more, whose exp would be infinite
    and the weights NaN from there on."""
    cv2.max(x, _LOG_WEIGHT_MIN, dst=x)
    cv2.min(x, 0.0, dst=x)
    cv2.exp(x, dst=x)


class TieSpread:
    """What noise alone does to a sharpness statistic, measured on the frames themselves.

    Consecutive frames of a bracket (the fusion order walks the chain) are nearly the same
    picture wherever both are out of focus, so in the blocks where their statistics differ
    least (the lowest tenth of 8x8 blocks) the difference is noise: its RMS is the `spread`
    two equally sharp frames show, and the statistic's level there is the `floor` that noise
    alone reaches. Each is the median over frame pairs: every pair of a short bracket, then
    ever sparser pairs (a bracket's noise does not change along it; this keeps the cost off
    long brackets while still sampling both sides of the reference)."""

    def __init__(self, frame_count: int | None = None):
        self.previous: np.ndarray | None = None
        self.estimates: list[tuple[float, float]] = []
        self.step = 0
        # the largest of N frames' noise grows like sqrt(2 ln N): so does the margin above the
        # floor below which a pixel counts as "no detail in any frame" (as at 9 frames, for fewer)
        n = max(9, frame_count or 9)
        self.margin = NOISE_MARGIN * math.sqrt(math.log(n) / math.log(9))
        self.spread = 0.0
        self.floor = 0.0
        self.measured = False  # True once fix() set the estimate from frame differences

    @property
    def threshold(self) -> float:
        """Statistics up to here show no detail: they tie."""
        return self.floor + self.margin * self.spread

    @property
    def temperature(self) -> float:
        """SoftSelect's spread (times FOCUS_SPREAD / DETAIL_SPREAD)."""
        return self.spread * (DIFFERENCE_SPREAD if self.measured else 1.0)

    def fix(self, spread: float, floor: float) -> None:
        """The estimate from frame differences (FrameDifferences): final, nothing more to do."""
        self.spread, self.floor, self.measured = spread, floor, True
        self.previous, self.estimates = None, []

    @staticmethod
    def _sampled(step: int) -> bool:
        """Pairs 1..8, then about every 1.5x further along the chain."""
        if step <= 8:
            return step >= 1
        return any(round(8 * 1.5**k) == step for k in range(1, 40))

    def update(self, u: np.ndarray) -> None:
        if self.measured:
            return
        if self.previous is not None and self._sampled(self.step):
            estimate = _quiet_blocks(u, self.previous)
            if estimate is not None:
                self.estimates.append(estimate)
                self.spread, self.floor = (float(v) for v in np.median(self.estimates, axis=0))
        self.step += 1
        self.previous = u if self._sampled(self.step) else None


def _quiet_blocks(a: np.ndarray, b: np.ndarray, block: int = 8) -> tuple[float, float] | None:
    h, w = (a.shape[0] // block) * block, (a.shape[1] // block) * block
    if h == 0 or w == 0:
        return None
    a, b = a[:h, :w], b[:h, :w]

    def block_mean(x):  # INTER_AREA by an integer factor: the mean of each block
        return cv2.resize(x, (w // block, h // block), interpolation=cv2.INTER_AREA)

    # one full-size float plane at a time (these run on full-size statistics)
    low = cv2.min(a, b)
    covered = cv2.compare(low, float(_NONE / 2), cv2.CMP_GT)
    outside = covered == 0
    low[outside] = 0.0
    level = block_mean(low)
    del low
    d = cv2.subtract(a, b)
    d[outside] = 0.0
    del outside
    energy = block_mean(cv2.multiply(d, d, dst=d))
    del d
    # whole blocks inside both frames; exact zeros are clipped (saturated or black) areas
    keep = (block_mean(covered) == 255) & (energy > 0)
    if keep.sum() < 16:
        return None
    energy, level = energy[keep], level[keep]
    quiet = energy <= np.percentile(energy, 10)
    return float(np.sqrt(np.mean(energy[quiet]))), float(np.median(level[quiet]))


class FrameDifferences:
    """The noise of every sharpness statistic, measured on differences of frames.

    A statistic's noise level is what it reads on a picture of pure noise. The difference of
    two neighbouring frames, scaled by 1/sqrt 2, is such a picture wherever neither frame has
    detail in focus, which is most of the picture for most pairs; where one has, the
    difference has detail and its statistic is high. So each statistic is computed on two
    independent differences of neighbouring frames (the first frames folded: in chain order,
    1st - 2nd and 3rd - 4th, unless the chain turns back to the reference between them), and
    TieSpread's quiet-block estimate on those two maps is the statistic's spread and floor.
    Measured on the frames themselves (what TieSpread does for shorter brackets), the blurred
    texture that out-of-focus frames still share reads as noise: at the coarse levels the
    floor came out up to 60 times too high on the benchmark's clean scenes, and averaging
    there blurred detail."""

    PAIRS = 2
    LOOK = 6  # frames to find the pairs in: then TieSpread's estimate stays

    def __init__(self):
        self.kept: tuple[int, np.ndarray, np.ndarray | None] | None = None
        self.first: list[tuple[np.ndarray, float]] | None = None  # the first pair's maps
        self.seen = 0
        self.blocks: list[tuple[np.ndarray, np.ndarray]] = []  # per pair: noise, brightness
        self.scale: np.ndarray | None = None  # noise_scale_table() once both pairs are in

    def observe(
        self, index: int, pixels: np.ndarray, valid: np.ndarray | None, statistics
    ) -> list[tuple[float, float] | None] | None:
        """Feed frames in fusion order (`index`: the frame's place in the bracket); returns
        each statistic's (spread, floor) once, when the second pair is complete (None for a
        statistic with too few quiet blocks). `statistics(grey difference, its valid mask)`
        yields the maps (passed in, not kept: a fuser holding this, holding its method, would
        be a reference cycle, and its frame-sized state would wait for the garbage
        collector)."""
        if self.seen >= self.LOOK:
            return None
        self.seen += 1
        if self.kept is None or abs(self.kept[0] - index) != 1:  # the first frame of a pair
            # half precision: its rounding (2.4e-4 at most) is far below any frame's noise
            self.kept = (index, _grey(pixels).astype(np.float16), valid)
            return None
        _, kept, first_valid = self.kept
        self.kept = None
        kept = kept.astype(np.float32)
        grey = _grey(pixels)
        unclipped = _unclipped(kept, grey)
        d = cv2.subtract(kept, grey)
        cv2.multiply(d, math.sqrt(0.5), dst=d)
        both = first_valid if valid is None else valid
        if first_valid is not None and valid is not None:
            both = cv2.bitwise_and(first_valid, valid)
        if unclipped is not None:
            both = unclipped if both is None else cv2.bitwise_and(both, unclipped)
        brightness = cv2.addWeighted(kept, 0.5, grey, 0.5, 0.0, dst=kept)  # in place: memory
        self.blocks.append(_noise_blocks(d, brightness, both))
        del kept, grey, brightness
        maps = statistics(d, both)  # one at a time: memory is the budget
        if self.first is None:
            self.first = [_half(u) for u in maps]
            return None
        first, self.first = self.first, None
        self.seen = self.LOOK  # done
        self.scale = noise_scale_table(self.blocks)
        self.blocks = []
        return [_quiet_blocks(_single(*h), u) for h, u in zip(first, maps, strict=True)]


CRUSHED, CLIPPED = 0.02, 0.98  # grey levels below / above which a frame's noise is cut off


def _unclipped(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """uint8 mask of the pixels where neither frame is crushed to black or clipped to white,
    or None when that is all of them or too little of the picture (under a quarter) to
    measure on. There the noise is cut off (a JPEG's shadows crushed to 0-4 of 255, a black
    vignette): blocks from there would be the quietest and set the noise of the whole frame,
    several times too low for the rest of it, which then kept one frame's noise."""
    low = cv2.compare(cv2.min(a, b), CRUSHED, cv2.CMP_GE)
    cv2.bitwise_and(low, cv2.compare(cv2.max(a, b), CLIPPED, cv2.CMP_LE), dst=low)
    inside = cv2.countNonZero(low)
    if inside == low.size or inside < low.size / 4:
        return None
    return low


def _noise_blocks(d: np.ndarray, brightness: np.ndarray, valid: np.ndarray | None, block=8):
    """The noise energy (mean square of the difference `d`) and the mean brightness of every
    8x8 block wholly inside `valid`."""
    h, w = (d.shape[0] // block) * block, (d.shape[1] // block) * block
    if h == 0 or w == 0:
        return np.empty(0, np.float32), np.empty(0, np.float32)
    size = (w // block, h // block)
    strip = 32 * block  # rows at a time: no frame-sized temporary (memory)
    d = d[:h, :w]
    energy = np.concatenate(
        [
            cv2.resize(
                cv2.multiply(rows, rows),
                (w // block, rows.shape[0] // block),
                interpolation=cv2.INTER_AREA,
            )
            for rows in (d[top : top + strip] for top in range(0, h, strip))
        ]
    )
    level = cv2.resize(brightness[:h, :w], size, interpolation=cv2.INTER_AREA)
    if valid is None:
        return energy.ravel(), level.ravel()
    inside = cv2.resize(valid[:h, :w], size, interpolation=cv2.INTER_AREA) == 255
    return energy[inside], level[inside]


NOISE_BANDS = 8  # brightness bands the noise is measured in
NOISE_BAND_BLOCKS = 64  # blocks a band needs at least
NOISE_SCALE_MIN = 1.5  # a picture whose brightest part is noisier by less: one noise level
NOISE_SCALE_MAX = 4.0


def noise_scale_table(blocks: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
    """How much noisier than in the quietest part of the picture each brightness is: a table
    of 256 factors (brightness 0..1 in steps of 1/255), or None where the noise is alike at
    every brightness. Raw sensor data and linear exports have shot noise (variance a + b x
    brightness): one noise level for the whole picture, measured where it is quietest (the
    dark parts), left a bright background with one frame's noise in the result.

    From the noise blocks of the frame differences (`_noise_blocks`): in each of 8 brightness
    bands of equal block counts, the lowest tenth of the blocks' energies (as TieSpread's
    quiet blocks), then a line fitted through the bands robustly (Theil-Sen: a band whose
    blocks all hold detail in focus in one of the frames does not move it). Shot noise
    cannot grow faster than that (its variance at most in proportion to the brightness: a
    factor of at most sqrt(brightness / the darkest band's)); detail that misregistration or
    focus leaves in the differences of bright textured parts can, so the factor is held to
    that, to the bands' own values and to NOISE_SCALE_MAX. Below NOISE_SCALE_MIN at its
    largest, the picture keeps one noise level (the synthetic benchmark scenes, with noise
    alike everywhere, read up to 1.33 from their texture alone)."""
    energy = np.concatenate([e for e, _ in blocks]) if blocks else np.empty(0)
    level = np.concatenate([b for _, b in blocks]) if blocks else np.empty(0)
    bands = min(NOISE_BANDS, energy.size // NOISE_BAND_BLOCKS)
    if bands < 3:
        return None
    order = np.argsort(level, kind="stable")
    x, y = [], []
    for part in np.array_split(order, bands):
        x.append(float(np.median(level[part])))
        y.append(float(np.percentile(energy[part], 10)))
    x, y = np.array(x), np.array(y)
    slopes = [
        (y[j] - y[i]) / (x[j] - x[i])
        for i in range(bands)
        for j in range(i + 1, bands)
        if x[j] - x[i] > 1e-3
    ]
    if not slopes:
        return None
    slope = float(np.median(slopes))
    if slope <= 0:
        return None
    offset = float(np.median(y - slope * x))
    quietest = offset + slope * x[0]
    if quietest <= 0:
        quietest = max(float(np.min(y)), 1e-12)
    grid = np.clip(np.arange(256) / 255.0, x[0], x[-1])
    # nor above the bands' own values: a camera's tone curve flattens the noise of the
    # highlights, where the line would overshoot
    fitted = np.minimum(offset + slope * grid, np.interp(grid, x, y))
    factor = np.sqrt(np.maximum(fitted, quietest) / quietest)
    if x[0] > 0:
        factor = np.minimum(factor, np.sqrt(grid / x[0]))
    factor = np.clip(factor, 1.0, NOISE_SCALE_MAX).astype(np.float32)
    return factor if factor.max() >= NOISE_SCALE_MIN else None


def _half(u: np.ndarray) -> tuple[np.ndarray, float]:
    """A statistic map kept in half precision (a quarter of a frame's size instead of half),
    scaled by a power of two (exact) so that its typical value sits where float16 is finest;
    what it does not cover becomes -inf."""
    # (from every 4th row and column: only its power of two is used)
    sample = u[::4, ::4]
    positive = sample[sample > 0]
    typical = np.median(positive) if positive.size else 1.0
    scale = 2.0 ** -round(math.log2(typical))
    with np.errstate(over="ignore"):  # _NONE: -inf is as far out of every tie
        return (u * np.float32(scale)).astype(np.float16), scale


def _single(half: np.ndarray, scale: float) -> np.ndarray:
    return half.astype(np.float32) * np.float32(1 / scale)


def _noise_aware(
    u: np.ndarray, outside: np.ndarray | None, ties: TieSpread, spread: float
) -> tuple[np.ndarray, float]:
    """The statistic and tie spread for SoftSelect: below the noise floor (plus a margin)
    no frame shows detail, so all such frames tie exactly and are averaged. `outside`: uint8
    mask of pixels the frame does not cover (None: it covers all), kept out of every tie."""
    ties.update(u)
    floor = ties.threshold
    if floor > 0:
        u = cv2.max(u, float(floor))
        if outside is not None:
            u[outside > 0] = _NONE
    return u, spread * ties.temperature


# Measured with bench/run_bench.py on synthetic brackets (noise sd 0 to 0.04) and the real
# brackets' flat areas: frames whose statistics differ by about one noise spread are averaged
# (a wider spread blurs clean detail, a narrower one leaves noise); statistics within two
# spreads of the noise floor (at 9 frames; more with more frames) count as "no detail" (below
# 2, flat real backgrounds stayed noisy; above, low-contrast detail got averaged away).
FOCUS_SPREAD = 1.0
DETAIL_SPREAD = 1.0
NOISE_MARGIN = 2.0
# the share of the next level's local energy in the finest level's contrast (_level_contrasts);
# replayed bench brackets, dB against none: 0.15 / 0.25 / 0.35 gave +0.10/+0.14/+0.16 and
# +0.03/+0.04/+0.05 on the sd 0.02 noise sets, +0.03/+0.04/+0.05 on sd 0.04, +0.5/+0.56/+0.58
# and +0.4/+0.45/+0.46 on the halo sets, +0.01..+0.03 / +0.00 / -0.02 on the clean ones (whose
# depth-edge band loses 0.00..0.04 / 0.02..0.07 / 0.04..0.11); 0.5 and more blurred clean edges
COARSE_SHARE = 0.25
# The pyramid fuser's focus weights (used from level `contrast_levels` down, halo suppression)
# are computed on the focus statistic brought down to this level rather than brought down
# after: one level down, 15-25 MB less peak memory at 3.8 MP and a quarter of the work,
# halo sets -0.004 / -0.008 dB, the other synthetic sets within 0.003 dB (bench/README, "Time
# and memory"); two levels: -0.03 / -0.02 on the halo sets; three: -0.08 / -0.05
FOCUS_WEIGHTS_LEVEL = 1
# With the estimate from frame differences (FrameDifferences), which has no blurred texture
# in it, frames within two noise spreads share a pixel: 1.5 lost 0.1-0.16 dB on the noise
# sets, 2.5 lost 0.16 dB on the clean synthetic set (replayed fusion, 600x900 synthetic
# brackets); the margin stays 2 (1.5: +0.01..+0.06 dB there, but depthmap10's flat ratio 0.85
# -> 0.89 and ring6's 0.56 -> 0.61; 3: -0.04..-0.20 dB).
DIFFERENCE_SPREAD = 2.0


class _FocusTracker:
    """Running argmax of the focus measure (depth and confidence maps) and its soft,
    noise-aware counterpart (the weights the fusers use), the latter `down` pyramid levels
    below full size (a fuser that only uses them there: memory and time)."""

    def __init__(
        self,
        shape: tuple[int, int],
        noise_aware: bool = True,
        frame_count: int | None = None,
        down: int = 0,
    ):
        self.down = down
        reduced = shape
        for _ in range(down):  # pyrDown's sizes
            reduced = ((reduced[0] + 1) // 2, (reduced[1] + 1) // 2)
        self.best = np.full(shape, -1.0, np.float32)
        self.second = np.zeros(shape, np.float32)
        # frame indices and counts: one byte a pixel while they fit (peak memory; widened to
        # uint16 in finish())
        fits_a_byte = frame_count is not None and frame_count <= 255
        self.depth = np.zeros(shape, np.uint8 if fits_a_byte else np.uint16)
        self.coverage = np.zeros_like(self.depth)
        self.updates = 0
        self.soft = SoftSelect(reduced)
        self.ties = TieSpread(frame_count) if noise_aware else None

    def update(self, index: int, f: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """Fold in one frame's focus measure `f` (from aligned_focus_measure). Returns alpha
        (float32 0..1, `down` levels below full size), this frame's share of the noise-aware
        weighted mean so far."""
        if self.depth.dtype == np.uint8 and (index > 254 or self.updates >= 255):
            # more frames than the count given: widen rather than saturate
            self.depth, self.coverage = (a.astype(np.uint16) for a in (self.depth, self.coverage))
        self.updates += 1
        cv2.add(self.coverage, 1, dst=self.coverage, mask=valid)
        wins = cv2.compare(f, self.best, cv2.CMP_GT)
        # runner-up: the old best where this frame wins, else the larger of runner-up and f
        cv2.max(self.second, f, dst=self.second)
        cv2.copyTo(self.best, wins, self.second)
        cv2.copyTo(f, wins, self.best)
        # masked OpenCV writes: numpy's boolean indexing is ten times slower where the
        # winners are scattered (noise)
        cv2.subtract(self.depth, self.depth, dst=self.depth, mask=wins)
        cv2.add(self.depth, int(index), dst=self.depth, mask=wins)  # (cv2: no numpy ints)
        if self.ties is None:
            alpha = np.multiply(wins, np.float32(1 / 255), dtype=np.float32)
            return _reduced(alpha, None, self.down)[0]
        u, outside = _reduced(*_focus_statistic(f, valid is not None), self.down)
        return self.soft.update(*_noise_aware(u, outside, self.ties, FOCUS_SPREAD))

    def confidence(self) -> np.ndarray:
        # (best - second) / (best + second + 1e-12), clipped to 0..1, in two planes
        best = np.maximum(self.best, 0)
        conf = best - self.second
        np.add(best, self.second, out=best)
        np.add(best, 1e-12, out=best)
        np.divide(conf, best, out=conf)
        return np.clip(conf, 0, 1, out=conf)


def _focus_statistic(
    f: np.ndarray, partial: bool, in_place: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """The sharpness statistic of a focus measure (aligned_focus_measure): its square root,
    which noise raises as it raises a level's RMS contrast. `partial`: the frame does not
    cover every pixel; where it does not (the measure was pushed below 0) the statistic is
    _NONE, and that uint8 mask is returned too (None otherwise). `in_place`: `f` may be
    overwritten."""
    outside = cv2.compare(f, 0.0, cv2.CMP_LT) if partial else None
    u = cv2.max(f, 0.0, dst=f if in_place else None)
    cv2.sqrt(u, dst=u)
    if outside is not None:
        u[outside > 0] = _NONE
    return u, outside


def _reduced(u: np.ndarray, outside: np.ndarray | None, down: int):
    """A statistic and its uint8 `outside` mask (None: nothing is) `down` pyramid levels
    smaller; a pixel that any outside one reaches is outside (_NONE). `u` may be
    overwritten."""
    if down == 0:
        return u, outside
    if outside is not None:
        u[outside > 0] = 0.0  # not _NONE: pyrDown would spread it over its neighbours' values
    for _ in range(down):
        u = cv2.pyrDown(u)
        outside = cv2.pyrDown(outside) if outside is not None else None
    if outside is not None:
        outside = np.where(outside > 0, np.uint8(255), np.uint8(0))  # (cv2.compare: not 1x1)
        u[outside > 0] = _NONE
    return u, outside


def _levels_for(shape: tuple[int, int], limit: int = 7) -> int:
    """Pyramid depth: stop when the coarsest level is about 16 px."""
    n = int(np.floor(np.log2(max(1, min(shape) / 16))))
    return max(1, min(limit, n))


def _laplacian_levels(img: np.ndarray, levels: int, reuse: bool = False):
    """Yield the Laplacian pyramid of `img` one level at a time, finest first, then the
    coarsest Gaussian level (levels + 1 arrays in all). `reuse`: `img` may be overwritten."""
    cur = img
    for i in range(levels):
        down = cv2.pyrDown(cur)
        if i or reuse:
            # in place, into the Gaussian level (done with once `down` exists; the caller's
            # image only when it allows): no level-sized temporary at all
            _subtract_up(cur, down)
            lap = cur
        else:
            up = cv2.pyrUp(down, dstsize=(cur.shape[1], cur.shape[0]))
            lap = cv2.subtract(cur, up, dst=up).reshape(cur.shape)
        cur = down.reshape(down.shape[0], down.shape[1], -1) if img.ndim == 3 else down
        yield lap
    yield cur


def _subtract_up(img: np.ndarray, down: np.ndarray) -> None:
    """img -= pyrUp(down) (to img's size), in place, without a full-size temporary."""
    for strip, up in _strips_up(img, down):
        cv2.subtract(strip, up, dst=strip)


def _add_up(img: np.ndarray, down: np.ndarray, share: float) -> None:
    """img += share * pyrUp(down) (to img's size), in place, without a full-size temporary."""
    for strip, up in _strips_up(img, down):
        cv2.scaleAdd(up, share, strip, dst=strip)


def _strips_up(img: np.ndarray, down: np.ndarray, rows: int = 128):
    """(strip of img, the same rows of pyrUp(down) at img's size), `rows` rows at a time: the
    same values as the whole pyrUp (each strip has the source rows its filter reaches, and a
    strip at an edge of the image keeps pyrUp's own border rule)."""
    height, width = img.shape[:2]
    h = down.shape[0]
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        # output rows 2y and 2y+1 come from source rows y-1..y+1
        s0, s1 = max(0, top // 2 - 1), min(h, (bottom + 1) // 2 + 1)
        size = height - 2 * s0 if s1 == h else 2 * (s1 - s0)
        up = cv2.pyrUp(down[s0:s1], dstsize=(width, size)).reshape((size, *img.shape[1:]))
        yield img[top:bottom], up[top - 2 * s0 : bottom - 2 * s0]


def _gaussian_levels(mask: np.ndarray, levels: int):
    """Yield the Gaussian pyramid of a single-channel mask, full size first."""
    cur = mask
    yield cur
    for _ in range(levels):
        cur = cv2.pyrDown(cur)
        yield cur


def _collapse(pyr: list[np.ndarray]) -> np.ndarray:
    cur = pyr[-1]
    for lap in reversed(pyr[:-1]):
        up = cv2.pyrUp(cur, dstsize=(lap.shape[1], lap.shape[0])).reshape(lap.shape)
        cur = cv2.add(up, lap, dst=up)  # in place: one full-size temporary, not two
    # as cv2 returns a new single-channel result: H x W
    return cur.reshape(cur.shape[:2]) if cur.ndim == 3 and cur.shape[2] == 1 else cur


# cv2.blendLinear divides by (w1 + w2 + 1e-5): weights summing to 1 would take 1e-5 off every
# value in every blend (a 16-bit frame stacked with itself came out one level darker); summing
# to 1e4, the loss is far below float precision
_BLEND_SCALE = np.float32(1e4)


def _blend_into(dst: np.ndarray, src: np.ndarray, alpha: np.ndarray) -> None:
    """dst = alpha*src + (1-alpha)*dst, in place, per-pixel alpha (H x W float32, which this
    overwrites)."""
    w1 = cv2.multiply(alpha, float(_BLEND_SCALE), dst=alpha)
    w2 = np.subtract(_BLEND_SCALE, w1)
    if dst.ndim == 3 and dst.shape[2] == 1:
        dst[..., 0] = cv2.blendLinear(src[..., 0], dst[..., 0], w1, w2)
    else:
        # in place (the fused levels are contiguous arrays of our own): a full-size level's
        # blend would otherwise need a frame-sized temporary
        cv2.blendLinear(src, dst, w1, w2, dst=dst)


class _Fuser:
    def __init__(
        self,
        shape: tuple[int, int],
        channels: int,
        window_sigma: float | None = None,
        noise_aware: bool = True,
        frame_count: int | None = None,
        focus_down: int = 0,
    ):
        """`focus_down`: the pyramid level the focus weights are computed at (the fuser's
        _fold gets them there)."""
        self.shape = shape
        self.channels = channels
        self.window_sigma = window_sigma or window_sigma_for(shape)
        self.noise_aware = noise_aware
        self.focus = _FocusTracker(shape, noise_aware, frame_count, focus_down)
        self.frames = 0
        self.differences = None
        if noise_aware and (frame_count or 0) >= 2 * FrameDifferences.PAIRS:
            self.differences = FrameDifferences()

    def add(
        self,
        index: int,
        pixels: np.ndarray,
        valid: np.ndarray | None = None,
        focus: np.ndarray | None = None,
    ) -> None:
        """Fold in one aligned frame. `valid`: uint8 mask of pixels the frame covers (None: all);
        `focus`: its aligned_focus_measure() if already computed."""
        pixels = pixels.reshape(self.shape[0], self.shape[1], self.channels)
        if focus is None:
            focus = aligned_focus_measure(pixels, valid, self.window_sigma)
        self.fold(pixels, valid, self.weigh(index, focus, valid, pixels))

    # add() in two steps, for a caller that frees the focus measure in between (memory)
    def weigh(
        self, index: int, focus: np.ndarray, valid: np.ndarray | None, pixels: np.ndarray
    ) -> np.ndarray:
        """Fold in one frame's focus measure; returns the frame's weights for fold().
        `pixels`: the frame (the first ones measure the noise, FrameDifferences)."""
        if self.differences is not None:
            estimates = self.differences.observe(index, pixels, valid, self._statistics)
            if estimates is not None:
                if self.differences.scale is not None:
                    self._scale_noise(self.differences.scale, pixels)
                for (ties, select), estimate in zip(self._noise_states(), estimates, strict=True):
                    if estimate is not None:
                        old = ties.threshold
                        ties.fix(*estimate)
                        select.retie(old, ties.threshold)
        return self.focus.update(index, focus, valid)

    def _scale_noise(self, table: np.ndarray, pixels: np.ndarray) -> None:
        """The noise grows with brightness by `table` (noise_scale_table), the brightness
        being that of `pixels` (an aligned frame): the statistics that follow are scaled by it
        where they are compared."""

    def _statistics(self, grey: np.ndarray, valid: np.ndarray | None) -> Iterator[np.ndarray]:
        """Every noise-aware statistic of a grey picture (focus measure first), as the
        fusion computes them on a frame; `_NONE` where `valid` is not wholly inside. One at a
        time (memory); `grey` may be overwritten."""
        f = aligned_focus_measure(grey.reshape(*grey.shape, 1), valid, self.window_sigma)
        yield _reduced(*_focus_statistic(f, valid is not None, True), self.focus.down)[0]

    def _noise_states(self) -> list[tuple[TieSpread, SoftSelect]]:
        """The (TieSpread, SoftSelect) of each statistic, in _statistics' order."""
        return [(self.focus.ties, self.focus.soft)]

    def fold(
        self, pixels: np.ndarray, valid: np.ndarray | None, alpha: np.ndarray, *, reuse=False
    ) -> None:
        """Fold in the frame whose weigh() returned `alpha` (which this may overwrite).
        `reuse`: the caller is done with `pixels`, which may then be overwritten too (one
        frame-sized temporary less)."""
        pixels = pixels.reshape(self.shape[0], self.shape[1], self.channels)
        # OpenCV writes in place only into contiguous arrays (a caller's view is not)
        self._fold(pixels, valid, alpha, reuse and pixels.flags.c_contiguous)
        self.frames += 1

    def finish(self) -> FusionResult:
        image = self._image().astype(np.float32, copy=False)
        return FusionResult(
            image=image,
            depth=self.focus.depth.astype(np.uint16, copy=False),
            confidence=self.focus.confidence(),
            coverage=self.focus.coverage.astype(np.uint16, copy=False),
        )


class DepthMapFuser(_Fuser):
    """Composite each frame where it is the sharpest (noise-aware: averaged where several are
    equally sharp within the noise), with a feathered mask."""

    def __init__(
        self, shape, channels, window_sigma=None, noise_aware=True, frame_count=None, feather=1.5
    ):
        super().__init__(shape, channels, window_sigma, noise_aware, frame_count)
        self.feather = feather
        self.result = np.zeros((shape[0], shape[1], channels), np.float32)

    def _fold(self, pixels, valid, alpha, reuse):
        if self.frames == 0:
            self.result[...] = pixels
            return
        cv2.GaussianBlur(alpha, (0, 0), self.feather, dst=alpha)
        if valid is not None:  # feathering must not reach past the frame's own border
            np.copyto(alpha, 0.0, where=valid == 0)
        _blend_into(self.result, pixels, alpha)

    def _image(self):
        return np.clip(self.result, 0.0, 1.0)  # 0..1, as documented (gains can overshoot)


class PyramidFuser(_Fuser):
    """Laplacian-pyramid maximum-contrast fusion with a consistency window, noise-aware ties
    and halo suppression at coarse levels."""

    def __init__(
        self,
        shape,
        channels,
        window_sigma=None,
        noise_aware: bool = True,
        frame_count: int | None = None,
        halo_suppression: bool = True,
        fine_levels: int = 3,
        consistency_sigma: float = 1.0,
    ):
        self.levels = _levels_for(shape)
        self.halo_suppression = halo_suppression
        # levels below `contrast_levels` choose by local contrast; the rest follow the
        # focus decision (halo suppression) or, without it, contrast too
        self.contrast_levels = min(fine_levels, self.levels) if halo_suppression else self.levels
        focus_down = min(FOCUS_WEIGHTS_LEVEL, self.contrast_levels)
        super().__init__(shape, channels, window_sigma, noise_aware, frame_count, focus_down)
        # window over which a level's contrast is summed before frames compete (0: classic
        # per-coefficient PMax, which turns flat areas into noise; see bench/halo.py)
        self.consistency_sigma = consistency_sigma
        self.pyr: list[np.ndarray] | None = None
        self.select: list[SoftSelect] = []
        self.ties = [TieSpread(frame_count) for _ in range(self.contrast_levels)]
        # how much noisier than in the quietest part each brightness is (None: alike
        # everywhere), and the brightness at each contrast level (uint8) that it is read at
        self.brightness: list[np.ndarray] = []
        self.noise_table: np.ndarray | None = None

    def _scale_noise(self, table, pixels):
        # each contrast level's statistic is divided by the noise factor of its pixel's
        # brightness: the same factor for every frame there, so which frame is sharpest does
        # not change, and one tie threshold and spread serve every brightness. The maxima
        # kept so far are brought to that scale. (The brightness maps exist only then: memory)
        self.noise_table = table
        self.brightness = _brightness_levels(pixels, self.contrast_levels)
        for select, bright in zip(self.select, self.brightness, strict=True):
            covered = select.top > _NONE / 2
            _divide_by_table(select.top, bright, table)
            select.top[~covered] = _NONE

    def _statistics(self, grey, valid):
        yield from super()._statistics(grey, valid)
        levels = _laplacian_levels(grey, self.contrast_levels, reuse=True)
        masks = _gaussian_levels(valid, self.contrast_levels) if valid is not None else None
        for _, u in self._level_contrasts(levels, in_place=True):
            if u is None:
                break
            if masks is not None:
                u[next(masks) < 255] = _NONE
            yield u

    def _noise_states(self):
        return super()._noise_states() + list(zip(self.ties, self.select, strict=True))

    def _contrast(self, i: int, u: np.ndarray, valid: np.ndarray | None):
        """The statistic for SoftSelect from level i's local contrast `u` (_level_contrasts),
        and the spread of it that noise explains."""
        if self.noise_table is not None:
            _divide_by_table(u, self.brightness[i], self.noise_table)
        outside = None
        if valid is not None:
            outside = cv2.compare(valid, 255, cv2.CMP_LT)
            u[outside > 0] = _NONE
        if not self.noise_aware:
            return u, 0.0
        return _noise_aware(u, outside, self.ties[i], DETAIL_SPREAD)

    def _level_contrasts(self, levels: Iterator[np.ndarray], in_place: bool = False):
        """(level, its local contrast) for each level from _laplacian_levels, finest first;
        the contrast is None past the contrast levels. The finest level's contrast also counts
        COARSE_SHARE of the next level's local energy (brought up to its size): detail in
        focus has energy in both octaves, while noise and the fringe of a defocused edge
        have most of theirs in the finest one, so which frame is sharp there is read with
        less noise (hairs against a bright background: +0.45..+0.56 dB). `in_place`: grey
        levels may be overwritten (the frame differences' pyramid, which nothing reads again)."""
        share = COARSE_SHARE if self.contrast_levels > 1 else 0.0
        first = e0 = None  # the finest level and its energy, waiting for the next level's
        for i, lap in enumerate(levels):
            if i >= self.contrast_levels:
                yield lap, None
                continue
            if i == 0 and share > 0:
                first, e0 = lap, self._local_energy(lap, in_place)
                continue
            energy = self._local_energy(lap, in_place)
            if e0 is not None:
                _add_up(e0, energy, share)
                yield first, cv2.sqrt(e0, dst=e0)
                first = e0 = None
            yield lap, cv2.sqrt(energy, dst=energy)

    def _local_energy(self, lap: np.ndarray, in_place: bool = False) -> np.ndarray:
        """Mean square of a level's luminance (the Laplacian is linear, so this is the
        Laplacian of the luminance) over a small window: its local contrast squared.
        `in_place`: a grey `lap` may be overwritten."""
        if lap.ndim == 3 and lap.shape[2] > 1:
            lum = cv2.transform(lap, _LUMA[:, : lap.shape[2]])  # a new plane
        elif in_place:
            lum = lap
        else:  # a copy: squared in place below, and a grey level is itself a view
            lum = lap.copy()
        lum = lum.reshape(lap.shape[0], lap.shape[1])
        cv2.multiply(lum, lum, dst=lum)
        if self.consistency_sigma > 0:
            cv2.GaussianBlur(lum, (0, 0), self.consistency_sigma, dst=lum)
        return lum

    def _fold(self, pixels, valid, alpha, reuse):
        # Level by level, so only one level of this frame's pyramid exists at a time.
        levels = _laplacian_levels(pixels, self.levels, reuse)
        # uint8 masks: pyrDown keeps 255 exactly where a level is wholly inside the frame
        valid_levels = _gaussian_levels(valid, self.levels) if valid is not None else None
        if self.pyr is None:
            self.pyr, contrasts = [], []
            for lap, u in self._level_contrasts(levels):
                self.pyr.append(lap)
                if u is not None:
                    contrasts.append(u)
            self.select = [SoftSelect(u.shape) for u in contrasts]
            for i, select in enumerate(self.select):
                select.update(*self._contrast(i, contrasts[i], None))
            del contrasts
            self.top_sum = None if self.halo_suppression else self.pyr[-1].copy()
            return
        alpha_levels = None
        if self.halo_suppression:
            # only the coarse levels follow the focus weights: shrink them to the first of those
            # now, so that the full-size plane is gone before the fine levels' temporaries come
            for _ in range(self.contrast_levels - self.focus.down):
                alpha = cv2.pyrDown(alpha)
            alpha_levels = _gaussian_levels(alpha, self.levels - self.contrast_levels)
        del alpha
        for i, (lap, u) in enumerate(self._level_contrasts(levels)):
            v = next(valid_levels) if valid_levels is not None else None
            if i < self.contrast_levels:
                take = self.select[i].update(*self._contrast(i, u, v))
                del u
                _blend_into(self.pyr[i], lap, take)
                del take
            elif self.halo_suppression:
                # a copy: the next Gaussian level is made from this one
                _blend_into(self.pyr[i], lap, next(alpha_levels).copy())
            elif i == self.levels:
                # classic PMax: the base level is the mean of all frames
                cv2.add(self.top_sum, lap, self.top_sum)

    def _image(self):
        if self.pyr is None:
            raise RuntimeError("no frames were added")
        if not self.halo_suppression:
            self.pyr[-1] = self.top_sum * (1.0 / self.frames)
        image = _collapse(self.pyr)
        return np.clip(image, 0.0, 1.0, out=image)  # in place (a new array): 0..1, as documented


def _brightness_levels(pixels: np.ndarray, count: int) -> list[np.ndarray]:
    """The frame's smoothed grey (0..255, uint8: a quarter of a float plane) at the size of
    each of the first `count` pyramid levels."""
    grey = cv2.GaussianBlur(_grey(pixels), (0, 0), 2.0)
    out = [np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)]
    for _ in range(count - 1):
        grey = cv2.pyrDown(grey)
        out.append(np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return out


def _divide_by_table(u: np.ndarray, brightness: np.ndarray, table: np.ndarray) -> None:
    """u /= table[brightness], in place, in strips (no frame-sized temporary)."""
    for top in range(0, u.shape[0], 256):
        rows = slice(top, top + 256)
        cv2.divide(u[rows], cv2.LUT(brightness[rows], table), dst=u[rows])


def make_fuser(
    method: str,
    shape: tuple[int, int],
    channels: int,
    *,
    halo_suppression: bool = True,
    noise_aware: bool = True,
    frame_count: int | None = None,
) -> _Fuser:
    common = dict(noise_aware=noise_aware, frame_count=frame_count)
    if method == "pyramid":
        return PyramidFuser(shape, channels, halo_suppression=halo_suppression, **common)
    if method == "depthmap":
        return DepthMapFuser(shape, channels, **common)
    raise ValueError(f"unknown fusion method {method!r}; choose from {', '.join(METHODS)}")
