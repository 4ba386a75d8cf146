"""Retouching material and retouching (docs/retouch.md).

A focus stack sometimes needs a hand where no fusion rule can know better: a bristle that
should stay in front, a transparent edge, a moving leg. The usual cure is to paint one frame
into the result through a mask. Two things make that possible here:

* aligned frames (`stack(..., aligned_frames=DIR)`): every frame registered and resampled
  onto the result's grid, brightness matched as the fusion saw it, cropped like the result;
  `AlignedFrames` keeps them full size on disk while the bracket streams (the crop box is
  known only after the last frame) and hands them back one at a time, so memory stays flat in
  the number of frames;
* `paint` / `retouch`: an aligned frame painted into the result through a grey mask (white =
  take the frame), optionally feathered; pixels where the (feathered) mask is zero are the
  result's, bit for bit.

Engine code: no metadata here (the application layer copies tags through the hooks).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile

from .atomic import atomic_output, check_extension, check_outputs, file_path, scratch_file
from .errors import FocusbridgeError, InputError, OutputError, StackError
from .frames import Frame, probe_frame, read_frame
from .write import OUTPUT_EXTENSIONS, write_image

ALIGNED_SUFFIX = "_aligned.tif"
ALIGNED_ROLE = "aligned frame"  # in their Software: finding brackets leaves them out


# ---------------------------------------------------------------------------- aligned frames


def aligned_frame_names(frames: Sequence, names: Sequence[str | os.PathLike] | None = None):
    """What each aligned frame is named after: its file's stem (`names`, e.g. the original
    camera files darktable exported the frames from, when given), `frame_000` for arrays."""
    if names is not None:
        return [Path(os.fsdecode(n)).stem for n in names]
    return [
        f"frame_{i:03d}" if isinstance(f, np.ndarray) else Path(os.fsdecode(f)).stem
        for i, f in enumerate(frames)
    ]


def aligned_frame_paths(
    folder: str | os.PathLike, frames: Sequence, names: Sequence | None = None
) -> list[Path]:
    """DIR/<stem>_aligned.tif for each frame, in bracket order."""
    folder = Path(os.fsdecode(folder))
    return [folder / f"{stem}{ALIGNED_SUFFIX}" for stem in aligned_frame_names(frames, names)]


def check_aligned_folder(folder: Path) -> bool:
    """Up front: the aligned frames' folder is a folder, or can be made (its parent exists and
    is writable). Returns whether it exists already."""
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise OutputError(folder, "is not a folder (--aligned-frames names a folder)")
        return True
    parent = folder.parent
    if not parent.is_dir():
        raise OutputError(
            parent, "folder does not exist (the aligned frames' folder is made in it)"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(parent, "not writable (the aligned frames' folder is made in it)")
    return False


class AlignedFrames:
    """The aligned frames of one stack on their way to the outputs.

    `keep` (called from the pipeline's read-ahead thread) writes each warped frame full size
    as a 16-bit TIFF temp file beside its final place (`homes[i]`); `read` gives one back,
    cropped; `take` moves one onto an output's temp file when no crop is needed; `discard`
    removes whatever is left (always called, success or not)."""

    def __init__(self, homes: Sequence[Path]):
        self.homes = [Path(h) for h in homes]
        self.temps: list[Path | None] = [None] * len(self.homes)
        self.icc: list[bytes | None] = [None] * len(self.homes)

    def keep(self, index: int, pixels: np.ndarray, icc: bytes | None) -> None:
        self.temps[index] = temp = scratch_file(self.homes[index], "frame")
        self.icc[index] = icc
        try:
            write_image(temp, pixels, bit_depth=16, icc=icc, role=ALIGNED_ROLE)
        except FocusbridgeError as exc:  # disk full: name the user's file, not the temp
            raise OutputError(
                self.homes[index].parent, str(exc).replace(f"{temp}: ", "", 1)
            ) from None

    def read(self, index: int, box: tuple[int, int, int, int] | None) -> np.ndarray:
        """uint16 H x W x C (C in 1, 3), cropped to `box` (top, left, height, width)."""
        data = tifffile.imread(self.temps[index])
        if data.ndim == 2:
            data = data[:, :, None]
        if box is not None:
            top, left, h, w = box
            data = data[top : top + h, left : left + w]
        return data

    def take(self, index: int, target: Path) -> None:
        os.replace(self.temps[index], target)
        self.temps[index] = None

    def drop(self, index: int) -> None:
        temp, self.temps[index] = self.temps[index], None
        if temp is not None:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass

    def discard(self) -> None:
        for i in range(len(self.temps)):
            self.drop(i)


def make_folder(folder: Path) -> bool:
    """Create the aligned frames' folder if missing; True when this call made it (so a run
    that fails removes it again)."""
    if folder.is_dir():
        return False
    try:
        folder.mkdir()
    except FileExistsError:
        if folder.is_dir():
            return False
        raise OutputError(folder, "is not a folder (--aligned-frames names a folder)") from None
    except OSError as exc:
        raise OutputError(folder, f"cannot create the folder ({exc.strerror or exc})") from None
    return True


def remove_folder_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (the user's files), or gone


# ---------------------------------------------------------------------------- painting


def mask_weights(mask: np.ndarray, feather: float = 0.0) -> np.ndarray:
    """Grey mask (float 0..1, H x W or H x W x C) -> float32 H x W weights of the frame:
    colour masks count by their mean, a feather is a Gaussian blur of that sigma in pixels
    (zero stays exactly zero beyond the blur's reach)."""
    m = np.asarray(mask, np.float32)
    if m.ndim == 3:
        m = m.mean(axis=2, dtype=np.float32) if m.shape[2] > 1 else m[:, :, 0]
    m = np.clip(m, 0.0, 1.0)
    if feather > 0:
        m = np.clip(_gaussian(m, float(feather)), 0.0, 1.0)
    return np.ascontiguousarray(m, dtype=np.float32)


# A Gaussian of sigma s costs O(s) a pixel (its kernel is 8 s wide). Wider feathers blur a copy
# reduced by s / 8 (area average), at sigma 8, and scale it back up (linear): the same smooth
# curve, to within a few thousandths, at a fixed cost; it reaches about 4.25 s instead of 4 s.
_DIRECT_SIGMA = 16.0
_REDUCED_SIGMA = 8.0


def _gaussian(m: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= _DIRECT_SIGMA:
        return cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    h, w = m.shape
    k = sigma / _REDUCED_SIGMA
    small_w, small_h = max(1, round(w / k)), max(1, round(h / k))
    small = cv2.resize(m, (small_w, small_h), interpolation=cv2.INTER_AREA)
    sigma_x, sigma_y = sigma * small_w / w, sigma * small_h / h  # each axis's own reduction
    small = cv2.GaussianBlur(
        small, (0, 0), sigma_x, sigmaY=sigma_y, borderType=cv2.BORDER_REPLICATE
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def feather_limit(height: int, width: int) -> int:
    """The widest feather, in px: the image's diagonal (the mask is nearly flat by then)."""
    return math.ceil(math.hypot(height, width))


def paint(result: np.ndarray, frame: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """result where the weight is 0, frame where it is 1, blended between; exact at both ends."""
    w = weights[:, :, None]
    out = result + w * (frame - result)
    np.copyto(out, result, where=w <= 0)
    np.copyto(out, frame, where=w >= 1)
    return out.astype(np.float32, copy=False)


def _same_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    if pixels.shape[2] == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    return pixels.mean(axis=2, keepdims=True, dtype=np.float32)


def _size(f: Frame) -> str:
    return f"{f.width}x{f.height}"


def retouch(
    result: str | os.PathLike,
    frame: str | os.PathLike,
    mask: str | os.PathLike,
    output: str | os.PathLike,
    *,
    feather: float = 0.0,
    overwrite: bool = False,
    bit_depth: int | None = None,
    before_commit: Callable[[Path], None] | None = None,
    max_pixels: int | None = None,
) -> Path:
    """Paint `frame` (an aligned frame) into `result` through the grey `mask` (white = take the
    frame), feathered by a Gaussian of `feather` pixels, and write `output` atomically.

    All three images must have one size. `bit_depth`: of the output (default 16 unless both
    images are 8-bit; JPEG is always 8). The result's ICC profile is kept.
    `before_commit(temp)`: called with the written temp file before it takes its name (the
    application layer copies the result's metadata there)."""
    output = file_path(output)
    result, frame, mask = (Path(os.fsdecode(p)) for p in (result, frame, mask))
    if not feather >= 0 or feather == float("inf"):
        raise StackError(f"--feather must be a number of pixels >= 0, not {feather}")
    check_extension(output, OUTPUT_EXTENSIONS, "output")
    check_outputs(
        [("retouched result", output)],
        [("result", result), ("frame", frame), ("mask", mask)],
        overwrite,
    )
    size = probe_frame(result, max_pixels=max_pixels)
    limit = feather_limit(size.height, size.width)
    if feather > limit:
        raise StackError(
            f"--feather {feather:g} is more than the result's diagonal, {limit} px, the most "
            "a feather can soften"
        )
    base = read_frame(result, max_pixels=max_pixels)
    src = read_frame(frame, max_pixels=max_pixels)
    drawn = read_frame(mask, max_pixels=max_pixels)
    for other, what in ((src, "frame"), (drawn, "mask")):
        if (other.height, other.width) != (base.height, base.width):
            raise InputError(
                other.path,
                f"is {_size(other)} but the result {result} is {_size(base)}: the {what} must "
                "have the result's size (a frame written by --aligned-frames with the same "
                "--crop, a mask drawn on the result)",
            )
    weights = mask_weights(drawn.pixels, feather)
    del drawn
    if bit_depth is None:
        bit_depth = 8 if max(base.bit_depth, src.bit_depth) <= 8 else 16
    pixels = paint(base.pixels, _same_channels(src.pixels, base.channels), weights)
    del src, weights
    jpeg = output.suffix.lower() in (".jpg", ".jpeg")
    temp = None
    try:
        with atomic_output(output, overwrite=overwrite) as temp:
            write_image(temp, pixels, bit_depth=8 if jpeg else bit_depth, icc=base.icc)
            if before_commit is not None:
                before_commit(temp)
    except FocusbridgeError as exc:
        if temp is None or str(temp) not in str(exc):
            raise
        # name the user's file, never the hidden temp file it is being written as
        raise StackError(str(exc).replace(str(temp), str(output))) from None
    return output
