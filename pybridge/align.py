"""ALIGN step: register every frame of a bracket onto a reference frame.

Frames are registered to their *neighbour* (which looks alike: similar blur, similar
magnification) and the transforms are chained back to the reference, as the C++ focus-stack
does. The pipeline feeds frames in the order reference, reference+1 ... last, then
reference-1 ... first, so each frame is read once and only the previous neighbour's small
working copy is kept: memory does not grow with the bracket.

Registration is ECC (OpenCV) coarse to fine on downscaled grey images. The model is a
similarity (translation, rotation, scale: focus breathing) by default, fitted as an affine and
projected onto the nearest similarity so defocus can't buy shear; `homography` is available for
tilted set-ups. A neighbour step that fails or looks implausible (heavily defocused end frames)
falls back to the previous step's motion, which is how breathing behaves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .options import ALIGN_MODELS

MODELS = (*ALIGN_MODELS, "none")
# resampling onto the reference grid: cubic is the speed/quality default; Lanczos keeps more
# fine texture (+0.8 dB on the benchmark's synthetic scenes) for ~70 ms more per 4 MP frame
INTERPOLATIONS = {
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}
_WORK_LONG_SIDE = 800  # alignment resolution: ~0.1 px accuracy at 24 MP, and fast
_COARSE_LONG_SIDE = 256  # first ECC pass, catches shifts of tens of pixels


def likeness(a: np.ndarray, b: np.ndarray, width: int = 32) -> float:
    """Correlation of two grey pictures' thumbnails (zero mean, unit norm): how alike what
    they show is, whatever their focus and exposure."""

    def thumb(g):
        t = cv2.resize(
            g, (width, max(2, round(g.shape[0] * width / g.shape[1]))), interpolation=cv2.INTER_AREA
        )
        t = t - t.mean()
        return t / (np.linalg.norm(t) + 1e-12)

    return float(np.sum(thumb(a) * thumb(b)))


# the most failed frames a step around spans (further apart, frames of a bracket differ by
# more than a registration's plausible motion allows, and every step would cost two)
_MAX_STEP_AROUND = 2

# a frame of another picture: its thumbnail's likeness to a frame of the bracket stays under
# this. Frames of one scene focused far apart, whose alignment fails as well (a frame moved or
# swapped far, a shuffled bracket), are 0.46-0.98 alike on depthmap10 and synthetic brackets;
# other scenes -0.31..0.01
STRAY_LIKENESS = 0.3


@dataclass
class Transform:
    """Where frame pixels come from: `matrix` maps reference coordinates to frame coordinates
    (the inverse map that cv2.warp* wants); `gain` multiplies the frame's channels so its
    brightness matches the reference (flicker)."""

    matrix: np.ndarray = field(default_factory=lambda: np.eye(3))
    gain: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    correlation: float = 1.0  # ECC correlation of the neighbour step (1.0 for the reference)
    fallback: bool = False  # True when the neighbour step failed and motion was predicted

    @property
    def scale(self) -> float:
        """Magnification of the frame relative to the reference (1.016 = 1.6 % bigger)."""
        a = self.matrix[:2, :2]
        return float(math.sqrt(abs(np.linalg.det(a))))

    @property
    def rotation_deg(self) -> float:
        return float(math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0])))

    def frame_to_reference(self) -> np.ndarray:
        return np.linalg.inv(self.matrix)

    def to_dict(self) -> dict:
        f2r = self.frame_to_reference()
        return {
            "scale": round(self.scale, 6),
            "rotation_deg": round(self.rotation_deg, 5),
            "shift_px": [round(float(self.matrix[0, 2]), 3), round(float(self.matrix[1, 2]), 3)],
            "reference_to_frame": self.matrix.round(8).tolist(),
            "frame_to_reference": f2r.round(8).tolist(),
            "gain": [round(float(g), 5) for g in self.gain],
            "correlation": round(self.correlation, 5),
            "fallback": self.fallback,
        }


def _scale_matrix(f: float) -> np.ndarray:
    """Full-resolution -> scaled coordinates, pixel centres kept (as cv2.resize does)."""
    return np.array([[f, 0, 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5], [0, 0, 1.0]])


def _rescale(m: np.ndarray, f: float) -> np.ndarray:
    """Express a transform given in full-resolution pixels in pixels scaled by f."""
    s = _scale_matrix(f)
    return s @ m @ np.linalg.inv(s)


def _nearest_similarity(m: np.ndarray) -> np.ndarray:
    a = 0.5 * (m[0, 0] + m[1, 1])
    b = 0.5 * (m[1, 0] - m[0, 1])
    out = np.eye(3)
    out[:2, :2] = [[a, -b], [b, a]]
    out[:2, 2] = m[:2, 2]
    return out


class _Small:
    """The working copy of one frame used for registration."""

    def __init__(self, pixels: np.ndarray, long_side: int):
        h, w = pixels.shape[:2]
        self.f = min(1.0, long_side / max(h, w))
        size = (max(8, round(w * self.f)), max(8, round(h * self.f)))
        small = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA) if self.f < 1 else pixels
        self.colour = small.reshape(small.shape[0], small.shape[1], -1).astype(np.float32)
        grey = (
            self.colour[..., 0]
            if self.colour.shape[2] == 1
            else cv2.cvtColor(self.colour, cv2.COLOR_RGB2GRAY)
        )
        # ECC correlates zero-mean normalised patches, but very dark/bright frames still do
        # better on a contrast-normalised image
        self.grey = cv2.normalize(grey, None, 0, 1, cv2.NORM_MINMAX).astype(np.float32)
        cf = min(1.0, _COARSE_LONG_SIDE / max(self.grey.shape))
        self.coarse_f = cf
        csize = (max(8, round(self.grey.shape[1] * cf)), max(8, round(self.grey.shape[0] * cf)))
        self.coarse = (
            cv2.resize(self.grey, csize, interpolation=cv2.INTER_AREA) if cf < 1 else self.grey
        )
        self.coarse_colour = (
            cv2.resize(self.colour, csize, interpolation=cv2.INTER_AREA).reshape(
                csize[1], csize[0], -1
            )
            if cf < 1
            else self.colour
        )


class ChainAligner:
    """Registers frames fed in chain order and returns each one's Transform to the reference.

    Usage: `set_reference(pixels)`, then `align(pixels)` for reference+1, +2, ...;
    `restart()` and `align(pixels)` for reference-1, -2, ...
    """

    # after two failed steps in a row, try the frame before the failed one (False: the
    # check, which judges the failed steps themselves)
    step_around = True

    def __init__(
        self,
        model: str = "similarity",
        match_gain: bool = True,
        work_long_side: int = _WORK_LONG_SIDE,
    ):
        if model not in MODELS:
            raise ValueError(f"unknown alignment model {model!r}; choose from {', '.join(MODELS)}")
        self.model = model
        self.match_gain = match_gain
        self.work_long_side = work_long_side
        self._ref: tuple[_Small, Transform] | None = None
        self._prev: tuple[_Small, Transform] | None = None
        self._good: tuple[_Small, Transform] | None = None  # the last frame whose step held
        self._since_good = 0  # frames aligned since then (their steps failed)
        self._last_step: np.ndarray = np.eye(3)  # previous neighbour step, in full-res pixels
        # the last align() passed a stray: the frame before it failed its own step, this one
        # lines up with the frame before that instead, and the stray looks like neither
        self.passed_stray = False
        # the last frame aligned failed its step and looks unlike the frame it was aligned to,
        # whose own step to the frame before it held (at the end of a bracket: a shot of
        # something else; next to the reference nothing tells which of the two is)
        self.looks_foreign = False

    def set_reference(self, pixels: np.ndarray) -> Transform:
        t = Transform()
        self._ref = self._prev = self._good = (_Small(pixels, self.work_long_side), t)
        self._since_good = 0
        self._last_step = np.eye(3)
        self.passed_stray = self.looks_foreign = False
        return t

    def restart(self) -> None:
        """Start a new chain direction from the reference."""
        self._prev = self._good = self._ref
        self._since_good = 0
        self._last_step = np.eye(3)
        self.passed_stray = self.looks_foreign = False

    def align(self, pixels: np.ndarray) -> Transform:
        if self._prev is None:
            raise RuntimeError("set_reference() first")
        prev_small, prev_t = self._prev
        cur = _Small(pixels, self.work_long_side)
        self.passed_stray = False
        if self.model == "none":
            step, corr, fallback = np.eye(3), 1.0, False
        else:
            step, corr, fallback = self._register(prev_small, cur)
        self.looks_foreign = (
            fallback
            and self.step_around  # (the stack's question; the check asks its own)
            and self._since_good == 0  # (its neighbour's own step held)
            and self._prev is not self._ref  # (which of the two is foreign, if only those?)
            and likeness(prev_small.grey, cur.grey) < STRAY_LIKENESS
        )
        around = False
        if fallback and self.step_around and 0 < self._since_good <= _MAX_STEP_AROUND:
            # the previous frame failed its own step too: if it is a shot of something else,
            # this frame lines up with the one before it, and the chain goes on from there
            # (not from the place guessed for the stray)
            good_small, good_t = self._good
            two, two_corr, two_failed = self._register(good_small, cur, self._since_good + 1)
            if not two_failed:
                # a stray where one frame stood between (with more, the step between them
                # failed too, and which of them are of the bracket is not known)
                self.passed_stray = self._since_good == 1 and (
                    max(likeness(prev_small.grey, other.grey) for other in (good_small, cur))
                    < STRAY_LIKENESS
                )
                prev_small, prev_t = good_small, good_t
                step, corr, fallback, around = two, two_corr, False, True
        if not around:  # (a step over several frames is no guess for the next one)
            self._last_step = step
        # step maps previous-frame coords -> current-frame coords; chain back to the reference
        matrix = step @ prev_t.matrix
        gain = (
            prev_t.gain * self._gain_step(prev_small, cur, step) if self.match_gain else prev_t.gain
        )
        t = Transform(
            matrix=matrix, gain=gain.astype(np.float32), correlation=corr, fallback=fallback
        )
        self._prev = (cur, t)
        if fallback:
            self._since_good += 1
        else:
            self._good, self._since_good = self._prev, 0
        return t

    # -- one neighbour step ---------------------------------------------------------------
    def _register(
        self, prev: _Small, cur: _Small, steps: int = 1
    ) -> tuple[np.ndarray, float, bool]:
        """One registration of `cur` onto `prev`, `steps` bracket steps before it."""
        motion = {
            "similarity": cv2.MOTION_AFFINE,
            "affine": cv2.MOTION_AFFINE,
            "homography": cv2.MOTION_HOMOGRAPHY,
            "translation": cv2.MOTION_TRANSLATION,
        }[self.model]
        f = prev.f
        guess = np.linalg.matrix_power(self._last_step, steps)  # breathing goes on alike
        try:
            # coarse: start from the predicted motion, add a phase-correlation shift estimate
            cf = f * prev.coarse_f
            w = _rescale(guess, cf)
            w = self._ecc(prev.coarse, cur.coarse, w, motion, iterations=60, eps=1e-4, blur=3)
            # fine, at the working resolution
            w = _rescale(
                np.linalg.inv(_scale_matrix(cf)) @ w @ _scale_matrix(cf), f
            )  # back to full, then to work
            w, corr = self._ecc(
                prev.grey, cur.grey, w, motion, iterations=80, eps=1e-5, blur=5, want_corr=True
            )
        except cv2.error:
            return guess, 0.0, True
        full = np.linalg.inv(_scale_matrix(f)) @ w @ _scale_matrix(f)
        if self.model == "similarity":
            full = _nearest_similarity(full)
        if not self._plausible(full, prev.grey.shape, f, steps) or corr < 0.2:
            return guess, float(corr), True
        return full, float(corr), False

    @staticmethod
    def _ecc(template, image, w3, motion, iterations, eps, blur, want_corr=False):
        warp = (w3 if motion == cv2.MOTION_HOMOGRAPHY else w3[:2]).astype(np.float32)
        if motion == cv2.MOTION_TRANSLATION:
            warp = np.float32([[1, 0, w3[0, 2]], [0, 1, w3[1, 2]]])
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, eps)
        corr, warp = cv2.findTransformECC(template, image, warp, motion, criteria, None, blur)
        out = np.eye(3)
        out[: warp.shape[0]] = warp
        return (out, corr) if want_corr else out

    @staticmethod
    def _plausible(m: np.ndarray, shape_small, f, steps: int = 1) -> bool:
        """Neighbour frames differ by a few per cent at most (breathing up to ~2 % a frame),
        frames `steps` apart by that many times; reject wild ECC results, which happen on
        heavily defocused, low-detail frames."""
        s = math.sqrt(abs(np.linalg.det(m[:2, :2])))
        rot = abs(math.degrees(math.atan2(m[1, 0], m[0, 0])))
        h, w = shape_small[0] / f, shape_small[1] / f
        shift = math.hypot(m[0, 2] - (s - 1) * w / 2, m[1, 2] - (s - 1) * h / 2)
        persp = abs(m[2, 0]) * w + abs(m[2, 1]) * h
        return (
            0.97**steps < s < 1.03**steps
            and rot < 3 * steps
            and shift < 0.1 * steps * max(h, w)
            and persp < 0.02 * steps
        )

    def _gain_step(self, prev: _Small, cur: _Small, step: np.ndarray) -> np.ndarray:
        """Per-channel gain that makes `cur` match `prev` over their overlap, measured on the
        coarse copies: blurred, so the two frames' different focus doesn't bias it."""
        f = prev.f * prev.coarse_f
        w = _rescale(step, f)
        h, wd = prev.coarse_colour.shape[:2]
        warped = cv2.warpPerspective(
            cur.coarse_colour,
            w,
            (wd, h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        inside = cv2.warpPerspective(
            np.full((h, wd), 255, np.uint8),
            w,
            (wd, h),
            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
        )
        inside = cv2.erode(inside, np.ones((5, 5), np.uint8))
        if cv2.countNonZero(inside) < 100:
            return np.ones(prev.colour.shape[2], np.float32)
        n = prev.colour.shape[2]
        a = np.array(cv2.mean(prev.coarse_colour, inside)[:n])
        b = np.array(cv2.mean(warped, inside)[:n])
        g = np.where(b > 1e-9, a / np.maximum(b, 1e-9), 1.0)
        return np.clip(g, 0.5, 2.0).astype(np.float32)


def warp_frame(
    pixels: np.ndarray,
    t: Transform,
    shape: tuple[int, int],
    *,
    interpolation: int = cv2.INTER_CUBIC,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample a frame onto the reference grid and apply its gain.

    Returns (warped, valid) where valid is a uint8 mask of pixels that came from inside the
    frame (None when the frame covers the whole grid, the common case for the reference).
    """
    h, w = shape
    identity = np.allclose(t.matrix, np.eye(3), atol=1e-9)
    if identity and pixels.shape[:2] == (h, w):
        out = pixels
        valid = None
    else:
        warp = (
            cv2.warpPerspective
            if abs(t.matrix[2, 0]) + abs(t.matrix[2, 1]) > 1e-12
            else cv2.warpAffine
        )
        m = t.matrix if warp is cv2.warpPerspective else t.matrix[:2]
        flags = interpolation | cv2.WARP_INVERSE_MAP
        out = warp(pixels, m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        ones = np.full(pixels.shape[:2], 255, np.uint8)
        valid = warp(
            ones,
            m,
            (w, h),
            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        if valid.min() == 255:
            valid = None
    out = out.reshape(h, w, -1)
    if not np.allclose(t.gain, 1.0):
        gain = t.gain if out.shape[2] == 3 else t.gain.mean(keepdims=True)
        scalar = tuple(float(g) for g in gain) + (0.0,) * (4 - len(gain))
        # in place when `out` is ours (a warped copy), never on the caller's array
        dst = out if out is not pixels else None
        out = cv2.multiply(out, scalar, dst=dst).reshape(h, w, -1)
    return out, valid
