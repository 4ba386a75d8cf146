"""FUSE step: fold aligned frames, one at a time, into one all-in-focus image.

Both fusers keep a fixed amount of state (a few full-size arrays, or one pyramid), whatever the
number of frames, so a 300-frame bracket needs the memory of a 15-frame one.

* `DepthMapFuser` ("depthmap", DMap-like): a per-pixel focus measure (smoothed energy of the
  Laplacian of Gaussian) picks the sharpest frame; each frame is composited where it wins, with
  a feathered mask, so the selection follows smooth regions rather than single noisy pixels.
* `PyramidFuser` ("pyramid", PMax-like): Laplacian-pyramid fusion; at fine levels each
  coefficient comes from the frame with the highest *local* contrast (activity summed over a
  small window: the consistency step that keeps flat areas from turning into noise). With halo
  suppression (default) the coarse levels do not pick by contrast, which is what spreads a
  defocused foreground's blur into a halo; they follow the full-resolution focus decision,
  blended through a Gaussian pyramid of its mask.

Both track the depth map (index of the sharpest frame) and a confidence map.
"""

from __future__ import annotations

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


def focus_measure(pixels: np.ndarray, window_sigma: float) -> np.ndarray:
    """Local sharpness: squared Laplacian of the (slightly smoothed) grey image, averaged over a
    Gaussian window. The pre-smoothing keeps sensor noise from reading as detail."""
    grey = pixels[..., 0] if pixels.shape[2] == 1 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey, (0, 0), 1.0)
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


class _FocusTracker:
    """Running argmax of the focus measure, plus what the confidence map needs."""

    def __init__(self, shape: tuple[int, int]):
        self.best = np.full(shape, -1.0, np.float32)
        self.second = np.zeros(shape, np.float32)
        self.depth = np.zeros(shape, np.uint16)
        self.coverage = np.zeros(shape, np.uint16)

    def update(self, index: int, f: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """Fold in one frame's focus measure `f` (from aligned_focus_measure). Returns the uint8 mask
        (0/255) of pixels where this frame is the sharpest so far."""
        if valid is not None:
            cv2.add(self.coverage, 1, dst=self.coverage, mask=valid, dtype=cv2.CV_16U)
        else:
            cv2.add(self.coverage, 1, dst=self.coverage, dtype=cv2.CV_16U)
        wins = cv2.compare(f, self.best, cv2.CMP_GT)
        # runner-up: the old best where this frame wins, else the larger of runner-up and f
        cv2.max(self.second, f, dst=self.second)
        cv2.copyTo(self.best, wins, self.second)
        cv2.copyTo(f, wins, self.best)
        self.depth[wins > 0] = index
        return wins

    def confidence(self) -> np.ndarray:
        best = np.maximum(self.best, 0)
        conf = (best - self.second) / (best + self.second + 1e-12)
        return np.clip(conf, 0, 1).astype(np.float32)


def _levels_for(shape: tuple[int, int], limit: int = 7) -> int:
    """Pyramid depth: stop when the coarsest level is about 16 px."""
    n = int(np.floor(np.log2(max(1, min(shape) / 16))))
    return max(1, min(limit, n))


def _laplacian_levels(img: np.ndarray, levels: int):
    """Yield the Laplacian pyramid of `img` one level at a time, finest first, then the
    coarsest Gaussian level (levels + 1 arrays in all)."""
    cur = img
    for _ in range(levels):
        down = cv2.pyrDown(cur)
        up = cv2.pyrUp(down, dstsize=(cur.shape[1], cur.shape[0]))
        lap = cv2.subtract(cur, up, dst=up).reshape(cur.shape)  # in place: saves a frame
        cur = down.reshape(down.shape[0], down.shape[1], -1) if img.ndim == 3 else down
        yield lap
    yield cur


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
        cur = cv2.add(up, lap)
    return cur


def _blend_into(dst: np.ndarray, src: np.ndarray, alpha: np.ndarray) -> None:
    """dst = alpha*src + (1-alpha)*dst, in place, per-pixel alpha (H x W float32)."""
    if dst.ndim == 3 and dst.shape[2] == 1:
        dst[..., 0] = cv2.blendLinear(src[..., 0], dst[..., 0], alpha, 1.0 - alpha)
    else:
        dst[...] = cv2.blendLinear(src, dst, alpha, 1.0 - alpha).reshape(dst.shape)


class _Fuser:
    def __init__(self, shape: tuple[int, int], channels: int, window_sigma: float | None = None):
        self.shape = shape
        self.channels = channels
        self.window_sigma = window_sigma or window_sigma_for(shape)
        self.focus = _FocusTracker(shape)
        self.frames = 0

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
        wins = self.focus.update(index, focus, valid)
        self._fold(pixels, valid, wins)
        self.frames += 1

    def finish(self) -> FusionResult:
        image = np.clip(self._image(), 0.0, None).astype(np.float32, copy=False)
        return FusionResult(
            image=image,
            depth=self.focus.depth,
            confidence=self.focus.confidence(),
            coverage=self.focus.coverage,
        )


class DepthMapFuser(_Fuser):
    """Composite each frame where it is the sharpest so far, with a feathered mask."""

    def __init__(self, shape, channels, window_sigma=None, feather: float = 1.5):
        super().__init__(shape, channels, window_sigma)
        self.feather = feather
        self.result = np.zeros((shape[0], shape[1], channels), np.float32)

    def _fold(self, pixels, valid, wins):
        if self.frames == 0:
            self.result[...] = pixels
            return
        alpha = np.multiply(wins, np.float32(1 / 255), dtype=np.float32)
        cv2.GaussianBlur(alpha, (0, 0), self.feather, dst=alpha)
        if valid is not None:  # feathering must not reach past the frame's own border
            np.copyto(alpha, 0.0, where=valid == 0)
        _blend_into(self.result, pixels, alpha)

    def _image(self):
        return self.result


class PyramidFuser(_Fuser):
    """Laplacian-pyramid maximum-contrast fusion with a consistency window and halo
    suppression at coarse levels."""

    def __init__(
        self,
        shape,
        channels,
        window_sigma=None,
        halo_suppression: bool = True,
        fine_levels: int = 3,
        consistency_sigma: float = 1.0,
    ):
        super().__init__(shape, channels, window_sigma)
        # window over which a level's contrast is summed before frames compete (0: classic
        # per-coefficient PMax, which turns flat areas into noise; see bench/halo.py)
        self.consistency_sigma = consistency_sigma
        self.levels = _levels_for(shape)
        self.halo_suppression = halo_suppression
        # levels below `contrast_levels` choose by local contrast; the rest follow the
        # focus decision (halo suppression) or, without it, contrast too
        self.contrast_levels = min(fine_levels, self.levels) if halo_suppression else self.levels
        self.pyr: list[np.ndarray] | None = None
        self.activity: list[np.ndarray] = []

    def _activity(self, lap: np.ndarray) -> np.ndarray:
        """Local contrast of a pyramid level: energy of its luminance (the Laplacian is linear,
        so this is the Laplacian of the luminance) over a small window."""
        if lap.ndim == 3 and lap.shape[2] > 1:
            lum = cv2.transform(lap, _LUMA[:, : lap.shape[2]])
        else:
            lum = lap
        lum = lum.reshape(lap.shape[0], lap.shape[1])
        if lum is lap or lum.base is lap:
            lum = lum.copy()
        cv2.multiply(lum, lum, dst=lum)
        if self.consistency_sigma <= 0:
            return lum
        return cv2.GaussianBlur(lum, (0, 0), self.consistency_sigma, dst=lum)

    def _fold(self, pixels, valid, wins):
        # Level by level, so only one level of this frame's pyramid exists at a time.
        levels = _laplacian_levels(pixels, self.levels)
        # uint8 masks: pyrDown keeps 255 exactly where a level is wholly inside the frame
        valid_levels = _gaussian_levels(valid, self.levels) if valid is not None else None
        if self.pyr is None:
            self.pyr = list(levels)
            self.activity = [self._activity(self.pyr[i]) for i in range(self.contrast_levels)]
            self.top_sum = None if self.halo_suppression else self.pyr[-1].copy()
            return
        mask_levels = None
        if self.halo_suppression:
            mask = wins if valid is None else cv2.bitwise_and(wins, valid)
            mask_levels = _gaussian_levels(
                np.multiply(mask, np.float32(1 / 255), dtype=np.float32), self.levels
            )
        for i, lap in enumerate(levels):
            v = next(valid_levels) if valid_levels is not None else None
            m = next(mask_levels) if mask_levels is not None else None
            if i < self.contrast_levels:
                act = self._activity(lap)
                if v is not None:
                    np.copyto(act, -1.0, where=v < 255)
                take = cv2.compare(act, self.activity[i], cv2.CMP_GT)
                cv2.copyTo(lap, take, self.pyr[i])
                cv2.copyTo(act, take, self.activity[i])
            elif self.halo_suppression:
                _blend_into(self.pyr[i], lap, m)
            elif i == self.levels:
                # classic PMax: the base level is the mean of all frames
                cv2.add(self.top_sum, lap, self.top_sum)

    def _image(self):
        if self.pyr is None:
            raise RuntimeError("no frames were added")
        if not self.halo_suppression:
            self.pyr[-1] = self.top_sum * (1.0 / self.frames)
        return _collapse(self.pyr)


def make_fuser(
    method: str, shape: tuple[int, int], channels: int, *, halo_suppression: bool = True
) -> _Fuser:
    if method == "pyramid":
        return PyramidFuser(shape, channels, halo_suppression=halo_suppression)
    if method == "depthmap":
        return DepthMapFuser(shape, channels)
    raise ValueError(f"unknown fusion method {method!r}; choose from {', '.join(METHODS)}")
