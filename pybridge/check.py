"""CHECK: a fast look at a focus bracket, before (or instead of) stacking it.

The frames are read at the check size the cheap way (`frames.read_frame_small`: JPEG scaled in
the DCT domain, RAW at half size without demosaicing): half their long side, 750..1000 px, or
as they are up to 1250 px (`check_long_side`), and at least 32 px across; aligned the way the
pipeline aligns them (`ChainAligner`, one ECC pass at 320 px, `warp_frame`, bicubic) and
measured with the fusers' focus measure (`fuse.focus_measure`) in a grid of blocks (64 along
the long side). Bicubic, not bilinear: bilinear blurs each frame by what its fractional shift
decides, and the reference frame, never resampled, measured up to 0.6 (log) sharper than its
neighbours, more than a whole step of a finely stepped bracket (false gaps beside it, and a
gap that moved with the choice of reference when the order was reversed). Nothing is fused at
full size. From the blocks' focus curves (the measure of one block along the frames) it finds:

* stray frames: a frame that is not of the bracket (a shot of something else, a test shot
  before it): the alignment steps into and out of it both failed, it has detail, its
  thumbnail looks like neither neighbour's, and they line up with each other
  (_stray_frames). Everything else is then judged on the frames without it, numbered as
  given (a stray reference frame had misregistered every frame against it);
* gaps: neighbouring frames i, i+1 between which part of the scene is sharp in neither. Where a
  block is sharpest in frame b, the measure falls towards both neighbours by about the same
  factor in an evenly stepped bracket (log measure ~ parabola in focus position). For each pair
  the median fall from a block's best frame (one of the pair) to the other frame of the pair
  measures how far apart the two frames' focus lies; against the bracket's typical fall (the
  median over pairs) it gives the pair's step ratio e, its step in typical steps (with depths
  spread evenly the median fall grows as e(e + 1)/2). That fall also depends on what the
  pair's blocks show: a patch lying right at a frame's focus, with a peaked focus curve, falls
  further to both sides than the typical (mixed) content; at an end pair, whose blocks are
  only those of the inner frame, such a patch alone can make an even step look 1.6-2x
  typical (as can a busy patch mid-bracket). So a big step is checked against the same
  blocks' fall to their other neighbour: for the blocks sharpest in one frame of the pair, the
  fall across the pair over the fall to the frame on the far side (about e where depths are
  spread evenly, about 1 where the step is no bigger than the next one, whatever the blocks
  show); where that is under 1.5 it is the pair's step ratio instead (frames on the far
  side where the blocks stay as sharp, a tie within the depth of field, move the frame
  compared with further out: _side_ratio). A pair at e >= 1.6 (most of a frame's worth of
  focus travel missing) is a gap if its blocks also fall far in absolute terms (0.45 in log
  measure at full size, in proportion to the check scale: a finely stepped bracket's
  typical fall is next to nothing, and at the edge of each depth of field its blocks fall
  4-5 times that at once); its blocks whose focus lies more than half a
  typical step from both frames are the area sharp in neither (bbox, area fraction, the red
  of the coverage map). Frames wasted at the ends and pairs found to be duplicates are left
  out of this.
* wasted frames: frames at the ends of the bracket that are the sharpest (almost) nowhere
  (not counting flat ground beside the subject, where a frame focused past it measures
  highest as its blur spreads there: a block counts where its measure falls 4x towards the
  end of the bracket farther from its sharpest frame);
* focus order: frames in the order given should form a chain in which neighbours are focused
  most alike; a clearly (10 %) shorter chain in another order (spectral seriation and local
  search) means the frames are out of order, and that order is suggested. Judged on the
  frames sharp somewhere (how far apart two frames sharp almost nowhere are is unknown);
  those go to the end of the suggested order they are nearer. Frames found out of order
  after a failed alignment step are measured again, each failed step taking its frame as
  it is (_QuickAligner.restart_failed). Reversed order is fine;
  which end is near is only known from focus distances (`distances`, from EXIF);
* duplicates: neighbouring frames whose focus maps are the same (against the typical
  difference of neighbours in focus order);
* exposure jumps: neighbours whose mean level differs by more than 4 %;
* subject motion: a patch that moves between two neighbours after alignment (dense optical
  flow at half the check size, trusted only at corners and texture) by more than 4 px at the
  check size, beyond the flow the neighbouring pairs show there, scaled by the focus travel
  (breathing that differs with depth and defocus spreading across edges change smoothly along
  a bracket; a subject that moves once does not), where the pair's own flow is the larger.
  Conservative: pairs a big focus step apart (1.5x the typical one, gaps included) are not
  judged, nor frames out of order (neighbours as given are not neighbours in focus) or
  thinner than 128 px at the check size, and smaller moves, or a subject creeping steadily
  through the whole bracket, go unreported.

This module is engine-level: it takes frames (paths or arrays) and optional focus distances in
metres, and knows nothing of EXIF.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .align import (
    STRAY_LIKENESS,
    ChainAligner,
    Transform,
    _nearest_similarity,
    _rescale,
    _scale_matrix,
    likeness,
    warp_frame,
)
from .atomic import atomic_output
from .errors import Cancelled, InputError
from .frames import frame_from_array, icc_colour_space, probe_frame, read_frame_small
from .fuse import focus_measure, window_sigma_for
from .options import DEFAULT_MAX_PIXELS, StackOptions
from .pipeline import chain_order, check_before_pixels
from .write import write_image

FrameSource = str | os.PathLike | np.ndarray

CHECK_LONG_SIDE = 1000  # px: by default the check works at half the frames' long side, at
CHECK_MIN_LONG_SIDE = 750  # most this and at least this; frames up to 25 % larger than
# CHECK_LONG_SIDE are checked as they are (their findings hold at their own size)
_ALIGN_LONG_SIDE = 320  # the aligner's working size (the pipeline uses 800 on full frames;
# smaller leaves misalignment that the motion check reads as motion)
_MIN_SHORT_SIDE = 32  # px at check size: the optical flow (at half size) needs 16
_MOTION_MIN_SIDE = 128  # px at check size: on a thinner strip the flow reads moves everywhere
_READ_AHEAD = 2  # frames read at a time, ahead of the one being measured
_FLOW_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM  # the faster ones miss moves of 5 px
_BLOCKS_LONG_SIDE = 64  # focus blocks along the long side
_LUMA = (0.299, 0.587, 0.114)  # RGB -> grey, as cv2.COLOR_RGB2GRAY (the focus measure's)
_PEAKED = 4.0  # a block has a focus peak when its best measure is 4x its worst
GAP_STEP_RATIO = 1.6  # a pair this many typical steps apart is a gap
_COARSE_DROP = 0.7  # log fall per typical step past which steps are judged at half size
_SIDE_RATIO = 1.5  # ... if its step is also this much bigger than the next one (_side_ratio)
_PLATEAU = 0.25  # ... frames where the same blocks fall under this share of that are tied
_GAP_FALL = 0.45  # ... and falls this much across it, times the check scale (_gaps)
_WASTED_SHARE = 0.003  # an end frame sharpest in less than this share of blocks is wasted
_DUPLICATE_SHARE = 0.25  # neighbours this alike (vs a typical pair) are duplicates
_DUPLICATE_ABS = 0.03  # mean |log measure| difference below which neighbours are duplicates
EXPOSURE_JUMP = 0.04  # neighbours' brightness ratio beyond 1 +- this is a jump
_MOTION_SIGMA = 1.5  # px at check size: smoothing before the optical flow
_MOTION_TEXTURE = 1e-4  # corner strength (0..1 grey) below which the flow is not trusted
_MOTION_PX = 4.0  # px at check size (about 24 px of a 24 MP frame): a patch moved this far
_MOTION_AREA = (20, 0.005)  # a moved patch: at least 20 blocks and 0.5 % of them


@dataclass
class CheckResult:
    """What `focusbridge check` reports. Frame numbers are 0-based indexes into the frames
    as given; boxes are [x, y, width, height] in the frames' pixels."""

    count: int
    size: tuple[int, int]  # (width, height) of the frames
    check_size: tuple[int, int]  # (width, height) the check worked at
    stray: list[int] = field(default_factory=list)  # frames that are not of this bracket
    gaps: list[dict] = field(default_factory=list)
    wasted: list[int] = field(default_factory=list)
    order: str = "in focus order"
    suggested_order: list[int] | None = None
    duplicates: list[list[int]] = field(default_factory=list)
    exposure_jumps: list[dict] = field(default_factory=list)
    motion: list[dict] = field(default_factory=list)
    step_ratios: list[float | None] = field(default_factory=list)  # per neighbour pair
    step_mm: float | None = None  # the bracket's focus step from the focus distances
    notes: list[str] = field(default_factory=list)
    judged_all: bool = True  # False when a note says something could not be judged
    unaligned: list[int] = field(default_factory=list)  # said in a note, not a JSON key
    coverage_map: str | None = None
    seconds: float = 0.0

    def not_judged(self, note: str) -> None:
        self.notes.append(note)
        self.judged_all = False

    def to_json(self) -> dict:
        return {
            "frames": self.count,
            "size": list(self.size),
            "check_size": list(self.check_size),
            "stray": self.stray,
            "gaps": [g["between"] for g in self.gaps],
            "gap_details": self.gaps,
            "wasted": self.wasted,
            "order": self.order,
            "suggested_order": self.suggested_order,
            "duplicates": self.duplicates,
            "exposure_jumps": self.exposure_jumps,
            "motion": self.motion,
            "step_ratios": self.step_ratios,
            "step_mm": self.step_mm,
            "notes": self.notes,
            "judged_all": self.judged_all,
            "coverage_map": self.coverage_map,
            "seconds": round(self.seconds, 3),
        }

    @property
    def ok(self) -> bool:
        """No problem found (notes are not problems)."""
        return not (
            self.stray
            or self.gaps
            or self.wasted
            or self.order == "out of order"
            or self.duplicates
            or self.exposure_jumps
            or self.motion
        )

    def summary_lines(self) -> list[str]:
        w, h = self.size
        lines = [
            f"{self.count} frames of {w}x{h}, checked at {self.check_size[0]}x{self.check_size[1]}"
        ]
        for k in self.stray:
            lines.append(
                f"frame {k} does not belong to the bracket: it lines up with no frame of the "
                "bracket beside it and looks like none (left out of the other findings)"
            )
        if self.order == "out of order":
            lines.append(
                "out of focus order: in focus order they would be "
                + " ".join(map(str, self.suggested_order or []))
            )
        else:
            lines.append(f"order: {self.order}")
        if self.step_mm is not None:
            lines.append(f"focus step: {self.step_mm:.3g} mm (from the focus distances)")
        for g in self.gaps:
            i, j = g["between"]
            lines.append(
                f"gap between frames {i} and {j}: {_place(g)} is sharp in neither; the step "
                f"there is about {g['step_ratio']:.1f}x the bracket's typical step"
            )
        if self.wasted:
            lines.append(
                "wasted: frame"
                + ("s " if len(self.wasted) > 1 else " ")
                + ", ".join(map(str, self.wasted))
                + " at the end of the bracket "
                + ("are" if len(self.wasted) > 1 else "is")
                + " the sharpest nowhere"
            )
        for i, j in self.duplicates:
            lines.append(f"duplicates: frames {i} and {j} are focused alike")
        for e in self.exposure_jumps:
            i, j = e["between"]
            change = e["change"]
            how = (
                f"{1 + change:.1f} times as bright as"  # a frame was black: no percent helps
                if change >= 1
                else f"{abs(change):.1%} {'brighter' if change > 0 else 'darker'} than"
            )
            lines.append(f"exposure jump: frame {j} is {how} frame {i}")
        for m in self.motion:
            i, j = m["between"]
            lines.append(f"subject motion between frames {i} and {j}: {_place(m)}")
        lines.extend(f"note: {n}" for n in self.notes)
        if self.ok:  # the notes may say what was not judged: "no problems" would overstate
            lines.append(
                "no problems found"
                if self.judged_all
                else "no problems found in what could be judged"
            )
        if self.coverage_map:
            lines.append(f"coverage map: {self.coverage_map}")
        return lines


def _place(found: dict) -> str:
    """'4.7% of the picture (around x 16-1000, y 393-705)' for a gap or a moved patch."""
    x, y, w, h = found["bbox"]
    return f"{found['area_fraction']:.1%} of the picture (around x {x}-{x + w}, y {y}-{y + h})"


@dataclass
class _Measures:
    """Per-frame block measures gathered while the frames stream through."""

    fine: np.ndarray  # n x bh x bw: focus measure at check size
    coarse: np.ndarray  # n x bh x bw: focus measure at half the check size
    covered: np.ndarray  # bh x bw bool: inside every aligned frame
    valid: np.ndarray  # n x bh x bw bool: inside that aligned frame
    levels: list[float]  # per frame: its mean level as read (all channels alike)
    fallback: list[bool]  # per frame: its alignment step failed
    flows: dict  # pair i (frames i, i+1) -> block flow x, y and where it is reliable
    composite: np.ndarray | None  # the quick max-focus composite at check size (for the map)
    block: int  # block size in check pixels
    scale: float  # check size / frame size
    shape: tuple[int, int]  # (height, width) at check size
    unsharp: np.ndarray | None = None  # bh x bw bool: sharp in no frame (found by _gaps)


def check_bracket(
    frames: Sequence[FrameSource],
    *,
    distances: Sequence[float | None] | Callable[[], Sequence[float | None] | None] | None = None,
    coverage_map: str | os.PathLike | None = None,
    overwrite: bool = False,
    long_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cancel: Callable[[], bool] | None = None,
) -> CheckResult:
    """Check a focus bracket (see the module docstring). `distances`: focus distance of each
    frame in metres (None where unknown), for the step in mm and the direction; or a function
    that returns them, called after the pixel pass (so a slow read can run alongside it).
    `coverage_map`: also write the quick composite with the areas sharp in no frame tinted
    red (TIFF, PNG or JPEG, atomically). `long_side`: the size (px) the frames are checked
    at; None: check_long_side's choice for their size."""
    t0 = time.perf_counter()
    frames = list(frames)
    if len(frames) < 2:
        what = str(frames[0]) if frames and not isinstance(frames[0], np.ndarray) else "input"
        raise InputError(what, "a bracket check needs at least two frames")
    if distances is not None and not callable(distances) and len(distances) != len(frames):
        raise ValueError("distances must have one entry per frame")
    writes = [("coverage map", Path(coverage_map))] if coverage_map is not None else []
    opts = StackOptions(overwrite=overwrite, max_pixels=max_pixels)
    channels, ref = check_before_pixels(frames, writes, opts)
    full, short = _frame_sides(frames[0], max_pixels)
    if short < _MIN_SHORT_SIDE:
        raise InputError(
            _name(frames[0]), f"is {short} px across: a check needs at least {_MIN_SHORT_SIDE}"
        )
    # a thin strip is checked larger, so that it is still _MIN_SHORT_SIDE px across
    work = max(check_long_side(full, long_side), math.ceil(_MIN_SHORT_SIDE * full / short))
    work = min(work, full)
    colour = coverage_map is not None  # the composite is only wanted for the map
    measures, size, icc = _measure(frames, channels, ref, work, max_pixels, cancel, colour)
    if callable(distances):  # read alongside the pixel pass (exiftool)
        distances = distances()
        if distances is not None and len(distances) != len(frames):
            raise ValueError("distances must have one entry per frame")
    n = len(frames)
    stray = _stray_frames(frames, measures, ref, channels, work, max_pixels)
    if stray:
        # the rest is judged without them: a stray reference misregisters every frame, and
        # a stray frame anywhere reads as jumps, wasted frames or a broken order
        kept = [i for i in range(n) if i not in stray]
        rest = check_bracket(
            [frames[i] for i in kept],
            distances=None if distances is None else [distances[i] for i in kept],
            coverage_map=coverage_map,
            overwrite=overwrite,
            long_side=long_side,
            max_pixels=max_pixels,
            cancel=cancel,
        )
        result = _renumbered(rest, kept, n, stray)
        result.seconds = time.perf_counter() - t0
        return result
    judged = _order_judged(measures, size, n, distances)
    if judged[0].order == "out of order" and any(measures.fallback):
        # aligned along frames out of order, failed steps misregister the frames (see
        # _QuickAligner): measure again, each failed step taking its frame as it is, for a
        # better suggested order. Still out of order, as it must be: the first verdict
        # stands (two frames far apart swapped in a 40-frame bracket read as in order then)
        again = _measure(frames, channels, ref, work, max_pixels, cancel, colour, restart=True)
        rejudged = _order_judged(again[0], again[1], n, distances)
        if rejudged[0].order == "out of order":
            (measures, size, icc), judged = again, rejudged
    result, measure, textured, travel, robust = judged
    out_of_order = result.order == "out of order"
    if textured.sum() < 16:
        result.not_judged("too little detail to judge focus (blank or out-of-focus frames?)")
    elif out_of_order:
        result.not_judged("gaps, wasted frames and motion are not judged until the order is right")
    else:
        wasted = _wasted(measure, measures.valid)
        if wasted is None:
            result.not_judged("too few frames to judge wasted frames (it takes three)")
        # a copy of its neighbour wins no block (ties go to the first): a duplicate, not a
        # frame focused where nothing is, unless the neighbour is wasted too
        copies = {a: b for pair in result.duplicates for a, b in (pair, pair[::-1])}
        wasted = wasted or []
        result.wasted = [k for k in wasted if k not in copies or copies[k] in wasted]
        useful = [i for i in range(n) if i not in result.wasted]
        _gaps(result, measure[useful[0] : useful[-1] + 1], useful[0], measures)
    _exposure(result, measures.levels)
    # across a gap the defocus changes too much for the flow to mean motion, and so it
    # does between neighbours as given when they are out of order
    gaps = [g["between"] for g in result.gaps]
    steps = [float(travel[i, i + 1]) for i in range(n - 1)]
    flows = {} if out_of_order else measures.flows
    motion = _motion_events(flows, steps, robust, measures.block, measures.scale, size)
    result.motion = [m for m in motion if m["between"] not in gaps]
    if min(measures.shape) < _MOTION_MIN_SIDE:
        result.not_judged("the frames are too thin to judge motion")
    result.unaligned = [i for i, f in enumerate(measures.fallback) if f]
    if result.unaligned:
        result.not_judged(_unaligned_note(result.unaligned))
    _step_mm(result, distances)
    if coverage_map is not None:
        _write_map(Path(coverage_map), measures, result, icc, overwrite)
        result.coverage_map = str(coverage_map)
    result.seconds = time.perf_counter() - t0
    return result


def _unaligned_note(frames: list[int]) -> str:
    s = "s " if len(frames) > 1 else " "
    return (
        f"alignment failed for frame{s}{', '.join(map(str, frames))} (motion there is not judged)"
    )


# a stray frame has detail: its sharpest blocks reach this share of a typical frame's (a
# frame without any, black or focused on nothing, fails its alignment too, and is reported
# as what it is: exposure jumps, wasted)
_STRAY_DETAIL = 0.5


def _stray_frames(frames, measures: _Measures, ref: int, channels, long_side, max_pixels):
    """Frames that are not of the bracket (a shot of something else between two of its
    frames, a test shot before it, or two such side by side): the alignment steps into and
    out of the frame, or the pair, both failed, each has detail, each one's thumbnail looks
    like neither neighbour's, and the frames on either side line up with each other. At an
    end there is one neighbour: there the step on from that neighbour must have held."""
    n, fallback = len(frames), measures.fallback
    if n < 3:
        return []

    def failed(a: int, b: int) -> bool:
        """The alignment step between neighbours a, b failed (the chain aligns the one
        farther from the reference to the other)."""
        return fallback[a] if abs(a - ref) > abs(b - ref) else fallback[b]

    def small(i: int) -> np.ndarray:
        return _load_small(frames[i], max_pixels, long_side, channels)[0]

    detail = [float(np.percentile(f, 99)) for f in measures.fine]
    typical = float(np.median(detail))
    found: list[int] = []
    # single frames first: a pair is looked for only where no frame of it is stray alone
    # (two frames side by side from elsewhere: each one's other neighbour is the other one,
    # so neither is found alone)
    for run in (1, 2):
        for first in range(n - run + 1):
            inside = list(range(first, first + run))
            sides = [i for i in (first - 1, first + run) if 0 <= i < n]
            if any(k in found for k in inside):
                continue
            steps = [(first - 1, first), (first + run - 1, first + run)]
            if not all(failed(a, b) for a, b in steps if 0 <= a and b < n):
                continue
            if any(detail[k] < _STRAY_DETAIL * typical for k in inside):
                continue
            if len(sides) == 1:  # at an end: its neighbour must line up with the next one
                on = sides[0] + (1 if sides[0] > first else -1)
                if not 0 <= on < n or failed(sides[0], on):
                    continue
            beside = [small(i) for i in sides]
            if any(
                likeness(_grey(frame), _grey(other)) >= STRAY_LIKENESS
                for frame in map(small, inside)
                for other in beside
            ):
                continue
            if len(beside) == 2:
                aligner = _QuickAligner(
                    model="similarity", match_gain=True, work_long_side=_ALIGN_LONG_SIDE
                )
                aligner.set_reference(beside[0])
                if aligner.align(beside[1]).fallback:
                    continue
            found.extend(inside)
    return sorted(found)


def _renumbered(rest: CheckResult, kept: list[int], n: int, stray: list[int]) -> CheckResult:
    """The findings `rest` of the frames `kept` (indexes into the n frames given), numbered
    as given, with the `stray` frames left out of them."""

    def pair(p):
        return [kept[p[0]], kept[p[1]]]

    rest.count = n
    rest.stray = sorted(stray + [kept[k] for k in rest.stray])
    for found in (*rest.gaps, *rest.exposure_jumps, *rest.motion):
        found["between"] = pair(found["between"])
    rest.wasted = [kept[k] for k in rest.wasted]
    if rest.suggested_order is not None:
        rest.suggested_order = [kept[k] for k in rest.suggested_order]
    rest.duplicates = [pair(d) for d in rest.duplicates]
    ratios: list[float | None] = [None] * (n - 1)  # None for a pair with a stray frame
    for k, ratio in enumerate(rest.step_ratios):
        if kept[k + 1] == kept[k] + 1:
            ratios[kept[k]] = ratio
    rest.step_ratios = ratios
    if rest.unaligned:
        at = rest.notes.index(_unaligned_note(rest.unaligned))
        rest.unaligned = [kept[k] for k in rest.unaligned]
        rest.notes[at] = _unaligned_note(rest.unaligned)
    return rest


def _order_judged(measures: _Measures, size, n: int, distances):
    """The findings that come first: order (with the order suggested) and duplicates."""
    h, w = measures.shape
    result = CheckResult(count=n, size=size, check_size=(w, h))
    measure = _measure_for_steps(measures)
    logs = np.log(np.maximum(measure, 1e-12))
    textured = _peaked(measure) & measures.covered
    travel, placed, robust = _distances(logs, textured)
    _order(result, travel, placed, textured, distances)
    _duplicates(result, logs, measures.covered)
    return result, measure, textured, travel, robust


# ---------------------------------------------------------------------- streaming pass


def check_long_side(full: int, long_side: int | None = None) -> int:
    """The long side (px) frames of `full` px are checked at. By default frames up to 1250 px
    are checked as they are, larger ones at half their size (rounded up: what a JPEG decoder
    gives), 750..1000 px: the check's work grows with its size, the stack's with the frames'.
    A `long_side` is taken as it is, except that a frame at most 25 % larger is checked whole."""
    if long_side is None:
        if full <= 1.25 * CHECK_LONG_SIDE:
            return full
        return min(CHECK_LONG_SIDE, max(CHECK_MIN_LONG_SIDE, math.ceil(full / 2)))
    return full if long_side >= 0.8 * full else long_side


def _frame_sides(src: FrameSource, max_pixels: int) -> tuple[int, int]:
    """(long side, short side) of a frame, px."""
    if isinstance(src, np.ndarray):
        h, w = src.shape[:2]
    else:
        info = probe_frame(src, max_pixels=max_pixels)
        h, w = info.height, info.width
    return max(h, w), min(h, w)


def _load_small(src: FrameSource, max_pixels: int, long_side: int, channels: int):
    """One frame at the check size (the long side `long_side`), decoded the cheap way
    (frames.read_frame_small); with the frame's full (width, height) and usable ICC profile."""
    if isinstance(src, np.ndarray):
        frame = frame_from_array(src)
        h, w = frame.pixels.shape[:2]
        pixels = frame.pixels
        if long_side < max(h, w):
            f = long_side / max(h, w)
            size = (max(1, round(w * f)), max(1, round(h * f)))
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA).reshape(
                size[1], size[0], -1
            )
    else:
        frame, (h, w) = read_frame_small(src, long_side, max_pixels=max_pixels)
        pixels = frame.pixels
    if pixels.shape[2] != channels:
        pixels = (
            np.repeat(pixels[..., :1], 3, axis=2)
            if channels == 3
            else pixels.mean(axis=2, keepdims=True, dtype=np.float32)
        )
    icc = (
        frame.icc
        if frame.icc and icc_colour_space(frame.icc) == ("RGB" if channels == 3 else "GRAY")
        else None
    )
    return np.ascontiguousarray(pixels, dtype=np.float32), (w, h), icc


def _block_mean(a: np.ndarray, block: int, bh: int, bw: int) -> np.ndarray:
    return cv2.resize(a[: bh * block, : bw * block], (bw, bh), interpolation=cv2.INTER_AREA)


def _grey(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., 0] if pixels.shape[2] == 1 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)


def _measure(frames, channels, ref, long_side, max_pixels, cancel, colour, restart=False):
    """One pass in the pipeline's chain order: read (ahead, in threads), scale, align, warp,
    measure; keep only block measures, the composite (`colour`: for the map) and the
    neighbours for motion. Without the composite only the grey image is warped: the luma of
    the frame with its gain applied, which is what the focus measure and the flow see of the
    warped colour frame (resampling is linear). `restart`: _QuickAligner.restart_failed."""
    n = len(frames)
    aligner = _QuickAligner(model="similarity", match_gain=True, work_long_side=_ALIGN_LONG_SIDE)
    aligner.restart_failed = restart
    order = chain_order(n, ref)
    fine: list = [None] * n
    coarse: list = [None] * n
    valid_blocks_all: list = [None] * n
    levels: list = [None] * n
    fallback = [False] * n
    flow_jobs: dict = {}  # pair (i, i+1) -> the Future of its _flow
    state: dict = {}

    def load(step: int):
        return pool.submit(_load_small, frames[order[step]], max_pixels, long_side, channels)

    # reading (decoding) is most of the work on large frames: two frames are read at a time;
    # the optical flow of each pair (a third of the rest) runs beside the next frame's
    # alignment, in one thread of its own (which alone uses its DIS flow object)
    with (
        ThreadPoolExecutor(max_workers=_READ_AHEAD, thread_name_prefix="check-read") as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="check-flow") as flow_pool,
    ):
        pending = deque(load(step) for step in range(min(_READ_AHEAD, n)))
        for step, index in enumerate(order):
            if cancel is not None and cancel():
                raise Cancelled()
            pixels, size, icc = pending.popleft().result()
            if step + _READ_AHEAD < n:
                pending.append(load(step + _READ_AHEAD))
            if not state:
                shape = pixels.shape[:2]
                # a thin strip keeps four rows of blocks (its long side alone gave it one)
                block = 2 * max(
                    2, min(round(max(shape) / (2 * _BLOCKS_LONG_SIDE)), min(shape) // 8)
                )
                bh, bw = shape[0] // block, shape[1] // block
                state.update(
                    shape=shape,
                    block=block,
                    bh=bh,
                    bw=bw,
                    size=size,
                    icc=icc,
                    sigma=window_sigma_for(shape),
                    sigma_half=window_sigma_for((shape[0] // 2, shape[1] // 2)),
                    best=np.full(shape, -1.0, np.float32) if colour else None,
                    composite=pixels.copy() if colour else None,
                    scale=max(shape) / max(size),
                )
            elif pixels.shape[:2] != state["shape"]:
                raise InputError(_name(frames[index]), "is not the size of the other frames")
            if index == ref - 1:  # the chain turns back from the reference
                aligner.restart()
            t = aligner.set_reference(pixels) if index == ref else aligner.align(pixels)
            fallback[index] = t.fallback
            warped, valid = _warp(pixels, t, state["shape"], colour)
            valid_blocks = _fold(state, index, warped, valid, fine, coarse)
            # as read: no gain in it (cv2.mean sums in double, at a quarter of numpy's time)
            levels[index] = float(np.mean(cv2.mean(pixels)[: pixels.shape[2]]))
            valid_blocks_all[index] = valid_blocks
            small = _motion_image(state, warped, valid)
            if index == ref:
                state["ref_small"] = small
            else:
                other = index + (1 if index < ref else -1)  # the neighbour it was aligned to
                if not (t.fallback or fallback[other] or min(shape) < _MOTION_MIN_SIDE):
                    neighbour = state["ref_small"] if other == ref else state["prev_small"]
                    first, second = (neighbour, small) if other < index else (small, neighbour)
                    flow_jobs[min(index, other)] = flow_pool.submit(_flow, state, first, second)
            state["prev_small"] = small
        # pair (i, i+1) -> block flow x, y and where it is reliable
        flows = {pair: job.result() for pair, job in flow_jobs.items()}
    return (
        _Measures(
            fine=np.stack(fine),
            coarse=np.stack(coarse),
            covered=np.logical_and.reduce(valid_blocks_all),
            valid=np.stack(valid_blocks_all),
            levels=levels,
            fallback=fallback,
            flows=flows,
            composite=state["composite"],
            block=state["block"],
            scale=state["scale"],
            shape=state["shape"],
        ),
        state["size"],
        state["icc"],
    )


class _QuickAligner(ChainAligner):
    """The pipeline's chain alignment with one ECC pass per neighbour step, at the working
    size (320 px; the coarse pass at 256 px before it changes next to nothing this close,
    from the previous step's motion); a step that pass cannot do plausibly gets the full
    coarse-to-fine registration. At most 20 iterations: the findings were those of 40 on
    every real and synthetic bracket of bench_check --findings, in 10 % less time.

    `restart_failed`: a step it cannot do takes the frame as it is (the reference's
    geometry) and the chain goes on from there, instead of continuing the last step. For
    frames out of focus order: neighbours as given are then far apart in focus, most steps
    fail (74 of 100 in a shuffled 100-frame bracket), and continued steps piled up into
    frames misregistered by tens of pixels."""

    restart_failed = False
    step_around = False  # the check judges every failed step as it is

    def align(self, pixels: np.ndarray) -> Transform:
        t = super().align(pixels)
        if self.restart_failed and t.fallback:
            t = Transform(matrix=np.eye(3), gain=t.gain, correlation=t.correlation, fallback=True)
            self._prev = (self._prev[0], t)
        return t

    def _register(self, prev, cur, steps=1):  # (one step at a time: no step_around)
        f = prev.f
        try:
            w, corr = self._ecc(
                prev.grey,
                cur.grey,
                _rescale(self._last_step, f),
                cv2.MOTION_AFFINE,
                iterations=20,
                eps=1e-4,
                blur=5,
                want_corr=True,
            )
        except cv2.error:
            return super()._register(prev, cur)
        full = _nearest_similarity(np.linalg.inv(_scale_matrix(f)) @ w @ _scale_matrix(f))
        if corr < 0.2 or not self._plausible(full, prev.grey.shape, f):
            return super()._register(prev, cur)
        return full, float(corr), False


def _name(src: FrameSource) -> str:
    return "<array>" if isinstance(src, np.ndarray) else str(src)


def _warp(pixels: np.ndarray, t: Transform, shape, colour: bool):
    """The frame on the reference grid with its gain (warp_frame, bicubic: see the module
    docstring); without `colour` only its luma (RGB -> grey weights times the gain, then
    warped: the same values)."""
    if colour or pixels.shape[2] == 1:
        return warp_frame(pixels, t, shape, interpolation=cv2.INTER_CUBIC)
    weights = np.float32([_LUMA]) * t.gain.astype(np.float32)
    grey = cv2.transform(pixels, weights)
    plain = Transform(matrix=t.matrix, gain=np.ones(1, np.float32))
    return warp_frame(grey, plain, shape, interpolation=cv2.INTER_CUBIC)


def _fold(state, index, warped, valid, fine, coarse) -> np.ndarray:
    """Block focus measures at two scales and the max-focus composite; returns the blocks
    wholly inside the aligned frame."""
    block, bh, bw = state["block"], state["bh"], state["bw"]
    measure = focus_measure(warped, state["sigma"])
    fine[index] = _block_mean(measure, block, bh, bw)
    h, w = state["shape"]
    half = cv2.resize(warped, (w // 2, h // 2), interpolation=cv2.INTER_AREA).reshape(
        h // 2, w // 2, -1
    )
    coarse[index] = _block_mean(focus_measure(half, state["sigma_half"]), block // 2, bh, bw)
    inside = np.ones((bh, bw), bool)
    if valid is not None:
        inner = cv2.erode(valid, np.ones((5, 5), np.uint8))
        inside = _block_mean(inner, block, bh, bw) == 255
        measure[inner == 0] = -1.0
    if state["composite"] is not None:
        wins = cv2.compare(measure, state["best"], cv2.CMP_GT)
        cv2.copyTo(measure, wins, state["best"])
        cv2.copyTo(warped, wins, state["composite"])
    return inside


def _motion_image(state, warped, valid):
    """What motion is judged on: the lightly smoothed grey frame at half the check size,
    scaled by the reference's bright level, its corner strength, and its coverage."""
    grey = cv2.GaussianBlur(_grey(warped), (0, 0), _MOTION_SIGMA)
    h, w = grey.shape
    half = cv2.resize(grey, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    if "level" not in state:  # the 99th percentile (as np.percentile, without numpy.ma)
        flat = half.ravel()
        k = 0.99 * (flat.size - 1)
        lo, hi = int(k), min(int(k) + 1, flat.size - 1)
        top = np.partition(flat, [lo, hi])
        state["level"] = max(float(top[lo] + (k - lo) * (top[hi] - top[lo])), 1e-6)
    half = np.clip(half / state["level"], 0.0, 1.0)
    # the smaller eigenvalue of the structure tensor: flow is only trusted at corners and
    # texture, never along a single edge or in blur (the aperture problem)
    corners = cv2.cornerMinEigenVal(half, 7)
    return (half * 255).astype(np.uint8), corners, valid


def _flow(state, a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense optical flow from neighbour a to b after alignment, averaged per block (in check
    pixels; a vector mean, so the symmetric spread of defocus cancels), and the blocks where
    it can be trusted."""
    (img_a, corners_a, valid_a), (img_b, corners_b, valid_b) = a, b
    block, bh, bw = state["block"], state["bh"], state["bw"]
    if "dis" not in state:
        state["dis"] = cv2.DISOpticalFlow_create(_FLOW_PRESET)
    flow = state["dis"].calc(img_a, img_b, None)
    fx = 2.0 * _block_mean(np.ascontiguousarray(flow[..., 0]), block // 2, bh, bw)
    fy = 2.0 * _block_mean(np.ascontiguousarray(flow[..., 1]), block // 2, bh, bw)
    corners = _block_mean(np.minimum(corners_a, corners_b), block // 2, bh, bw)
    reliable = corners > _MOTION_TEXTURE
    for valid in (valid_a, valid_b):
        if valid is not None:
            reliable &= _block_mean(valid, block, bh, bw) == 255
    return fx, fy, reliable


def _motion_events(flows: dict, steps, robust, block: int, scale: float, size) -> list[dict]:
    """Pairs whose flow, beyond what the neighbouring pairs show at the same place, moves a
    patch of the picture by more than _MOTION_PX. Focus breathing that differs with depth and
    defocus spreading across edges move things too, but smoothly along the bracket and in
    proportion to the focus travel: a neighbour pair's flow counts scaled by how much further
    (`steps`: focus distance between each pair's frames) this pair's frames are apart.
    `robust`: each pair's step as the median over all blocks with detail."""
    events = []
    typical = _median(steps) if len(steps) else 0.0
    usual = _median(robust) if len(robust) else 0.0
    for i in sorted(flows):
        # a big focus step: defocus changes too much for flow to mean motion. Big by both
        # measures: a moved patch where the two frames are sharp raises the mean over those
        # blocks (`steps`) like a focus step; the median over all blocks hardly moves
        if steps[i] > 1.5 * typical and robust[i] > 1.5 * usual:
            continue
        fx, fy, reliable = flows[i]
        others = []
        for k in (i - 1, i + 1):
            if k in flows:
                grow = float(np.clip(steps[i] / max(steps[k], 1e-6), 1.0, 4.0))
                others.append((flows[k][0] * grow, flows[k][1] * grow))
        # moved against each neighbour pair, not just the quieter one: where defocus turns to
        # focus (text on a tilted board coming sharp) the flow is erratic in the pairs on
        # both sides, and against the quieter alone it read as a move (tests/data pcb7, [4, 5]).
        # And the pair's own flow the larger: where only the neighbour's moved (an end pair
        # beside the move has no other neighbour) the difference is that move, mirrored
        moved = reliable.copy()
        for ox, oy in others or [(0.0, 0.0)]:
            moved &= np.hypot(fx - ox, fy - oy) > _MOTION_PX
            moved &= np.hypot(fx, fy) > np.hypot(ox, oy)
        moved = moved.astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(moved, connectivity=8)
        if count < 2:
            continue
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        found = _area(labels == largest, block, scale, size, _MOTION_AREA)
        if found is not None:
            events.append({"between": [i, i + 1], **found})
    return events


def _area(mask: np.ndarray, block: int, scale: float, size, least=(4, 0.003)) -> dict | None:
    """Share of the blocks and bounding box (frame pixels) of `mask`; None below `least`
    (blocks, share of all blocks)."""
    count = int(mask.sum())
    if count < max(least[0], least[1] * mask.size):
        return None
    ys, xs = np.nonzero(mask)
    f = block / scale  # block -> frame pixels
    x0, y0 = int(xs.min() * f), int(ys.min() * f)
    x1 = min(size[0], int(math.ceil((xs.max() + 1) * f)))
    y1 = min(size[1], int(math.ceil((ys.max() + 1) * f)))
    return {"area_fraction": round(count / mask.size, 4), "bbox": [x0, y0, x1 - x0, y1 - y0]}


# ---------------------------------------------------------------------- analysis


def _median(values) -> float:
    """np.median of the values (as it computes it), without the numpy.ma import that
    np.median costs on its first use (start-up counts: the check is meant to be quick); NaN
    for no values (a bracket without detail)."""
    a = np.asarray(values).ravel()
    if a.size == 0:
        return math.nan
    lo, hi = (a.size - 1) // 2, a.size // 2
    return float(np.partition(a, [lo, hi])[[lo, hi]].mean())


def _peaked(measure: np.ndarray) -> np.ndarray:
    """Blocks with a focus peak: best measure well above the most defocused one."""
    return measure.max(axis=0) > _PEAKED * np.maximum(measure.min(axis=0), 1e-12)


def _measure_for_steps(measures: _Measures) -> np.ndarray:
    """The block measure whose fall over one typical step is moderate: the check-size one, or
    the half-size one where steps are so big (against the check size) that one typical step
    halves the finer measure (_COARSE_DROP). Then a missing frame's double step reads short:
    the finer measure nears its floor, and its fall flattens before the step grows
    (bench/check_scenes.py: 52 of 71 removals found instead of 48 with a switch at a fall of
    1.0; 0.5-0.7 alike; below 0.5 ring6's real gap is lost)."""
    drops = _pair_drops(measures.fine, _peaked(measures.fine) & measures.covered)
    if np.isfinite(drops).any() and _median(drops[np.isfinite(drops)]) > _COARSE_DROP:
        return measures.coarse
    return measures.fine


def _pair_drops(measure: np.ndarray, textured: np.ndarray) -> np.ndarray:
    """Per neighbour pair (i, i+1): the median fall of the log measure from a block's best frame
    (one of the two, not an end of the bracket) to the other frame of the pair; NaN where too
    few blocks peak there."""
    n = len(measure)
    logs = np.log(np.maximum(measure, 1e-12))
    best = measure.argmax(axis=0)
    usable = textured & (best > 0) & (best < n - 1)
    least = _least(textured)
    out = np.full(max(0, n - 1), np.nan)
    for i in range(n - 1):
        falls = np.concatenate(
            [
                (logs[i] - logs[i + 1])[usable & (best == i)],
                (logs[i + 1] - logs[i])[usable & (best == i + 1)],
            ]
        )
        if falls.size >= least:
            out[i] = _median(falls)
    return out


def _least(textured: np.ndarray) -> float:
    """Blocks it takes to judge a neighbour pair."""
    return max(12, 0.004 * textured.size)


def _side_ratio(
    logs: np.ndarray, best: np.ndarray, usable: np.ndarray, i: int, least_fall: float
) -> float | None:
    """The step of pair (i, i+1) against the step on the far side, as the same blocks see it:
    over the blocks sharpest in frame i (i + 1), the median fall to i + 1 (i) over the median
    fall to i - 1 (i + 2). Same blocks, so neither their texture nor where their depths lie
    between the frames tells: about e for a step e times the next one, about 1 for an even
    step. The larger ratio of the pair's two frames (not an end of the bracket) that hold
    enough blocks (twice a pair's least, a quarter of the pair's): a frame between two gaps
    says 1. None when neither holds enough.

    A zone judges only if its blocks see the step (fall least_fall across it), and frames on
    the far side where they stay as sharp (falling under _PLATEAU of least_fall: a tie
    within the depth of field, as when the blur step is well under the check's pixel) widen
    the comparison: with p such frames the blocks' focus may lie up to p frames beyond, so
    the frame that mirrors the pair's other frame is 2p + 1 away. Without that a finely
    stepped bracket, whose blocks fall nothing to one side and a little to the other, reads
    a gap at every edge of a depth of field. A zone whose mirror frame lies past the end
    of the bracket says nothing."""
    n = len(logs)
    zones = ((i, i + 1, -1), (i + 1, i, +1))  # (frame, across the pair, towards the far side)
    masks = [usable & (best == b) if 0 < b < n - 1 else None for b, _, _ in zones]
    total = sum(int(m.sum()) for m in masks if m is not None)
    found = []
    for (b, across, away), mask in zip(zones, masks, strict=True):
        if mask is None or mask.sum() < max(2 * _least(usable), total / 4):
            continue
        fall = _median((logs[b] - logs[across])[mask])
        if fall < least_fall:  # these blocks hardly see the step: a ratio of two noises
            continue
        tied = 0
        while 0 <= b + away * (tied + 1) < n:
            if _median((logs[b] - logs[b + away * (tied + 1)])[mask]) >= _PLATEAU * least_fall:
                break
            tied += 1
        mirror = b + away * (2 * tied + 1)
        if 0 <= mirror < n:
            far = _median((logs[b] - logs[mirror])[mask])
            found.append(fall / max(far, 1e-6))
    return max(found) if found else None


def _gaps(result: CheckResult, measure: np.ndarray, offset: int, measures: _Measures) -> None:
    """Gaps within the useful stretch `measure` (frames offset, offset + 1, ...)."""
    n = len(measure)
    result.step_ratios = [None] * (result.count - 1)
    textured = _peaked(measure) & measures.covered
    drops = _pair_drops(measure, textured)
    for i, _ in result.duplicates:  # no focus step: not part of what is typical
        if 0 <= i - offset < n - 1:
            drops[i - offset] = np.nan
    judged = np.isfinite(drops)
    if n < 4 or judged.sum() < 3:
        result.not_judged("too few frames with detail in focus to judge gaps")
        return
    typical = _median(drops[judged])
    # a step e typical steps wide: median fall ~ e(e + 1)/2 typical falls
    ratio = np.maximum(np.where(judged, drops / typical, 1.0), 0.0)
    steps = np.maximum((-1 + np.sqrt(1 + 8 * ratio)) / 2, 1.0)
    logs = np.log(np.maximum(measure, 1e-12))
    best = measure.argmax(axis=0)
    usable = textured & (best > 0) & (best < n - 1)
    unsharp = np.zeros(textured.shape, bool)
    least_fall = _GAP_FALL * measures.scale
    for i in range(n - 1):
        if not judged[i]:
            continue
        e: float | None = float(steps[i])
        if e >= GAP_STEP_RATIO:  # big against the typical step; against the next one too?
            side = _side_ratio(logs, best, usable, i, least_fall)
            if side is None:
                e = None  # too few blocks to tell
            elif side < _SIDE_RATIO:
                e = max(side, 1.0)  # no bigger than the next step: the blocks fall far anyway
        result.step_ratios[offset + i] = None if e is None else round(e, 2)
        # Also big in absolute terms: in a finely stepped bracket (28-40 frames, a blur step
        # well under a pixel) the typical fall is close to nothing and content alone (what
        # the pair's blocks show) makes a pair fall 2-3 typical steps: 0.10-0.21 on
        # supersampled make_bracket brackets at full size. Real gaps of bench/check_scenes.py
        # fall 0.43 and more at full size; the fall of a blur in frame pixels shrinks with
        # the check size (1/3: 0.13-0.24), hence the scale.
        if e is None or e < GAP_STEP_RATIO or drops[i] < least_fall:
            continue
        # blocks whose focus lies more than half a typical step from both frames
        between = textured & ((best == i) | (best == i + 1))
        middle = between & (np.abs(logs[i] - logs[i + 1]) < typical * e * (e - 1))
        found = _area(middle, measures.block, measures.scale, result.size)
        if found is None:
            continue
        unsharp |= middle
        result.gaps.append(
            {
                "between": [offset + i, offset + i + 1],
                **found,
                "step_ratio": round(e, 2),
                "severity": round(e - 1, 1),
            }
        )
    measures.unsharp = unsharp


def _wasted(measure: np.ndarray, valid: np.ndarray) -> list[int] | None:
    """Frames at the ends of the bracket that are the sharpest in (almost) no block, counting
    every block a frame covers (the ends of a breathing bracket lose the borders). None: not
    judged, when no block with a focus peak is seen by three frames (two frames never are)."""
    n = len(measure)
    inside = np.where(valid, measure, np.nan)
    seen = valid.sum(axis=0) >= max(3, n // 2)
    top = np.nanmax(np.where(seen, inside, 1.0), axis=0)
    low = np.nanmin(np.where(seen, inside, 1.0), axis=0)
    best = np.where(valid, measure, -1.0).argmax(axis=0)
    # a frame focused past the subject measures highest on flat ground beside it, where the
    # subject's blur spreads (more the blurrier): such a block's measure rises towards the
    # other end of the bracket too. Focus falls off towards the end farther from it.
    far = np.where(best < n / 2, inside[-1], inside[0])
    spill = np.isfinite(far) & (top <= _PEAKED * far)
    peaked = seen & (top > _PEAKED * np.maximum(low, 1e-12)) & ~spill
    best = best[peaked]
    if not best.size:  # every frame would be the sharpest nowhere
        return None
    share = np.bincount(best, minlength=n) / max(1, best.size)
    wasted = []
    for k in range(n - 1):
        if share[k] >= _WASTED_SHARE:
            break
        wasted.append(k)
    for k in range(n - 1, wasted[-1] + 1 if wasted else 0, -1):
        if share[k] >= _WASTED_SHARE:
            break
        wasted.append(k)
    return sorted(wasted)


def _distances(logs, textured) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How far apart every two frames are focused: the mean |log measure| difference over the
    blocks with detail that are near their sharpest (within 2x) in one of the two. (Over all
    blocks, frames at the two ends would look alike: both blurred in the middle.) Also which
    frames are near their sharpest in enough blocks to be placed (a frame sharp almost nowhere,
    focused before or after the subject, is not), and each neighbour pair's step as the median
    difference over all those blocks (which a moved patch hardly changes)."""
    flat = logs[:, textured]
    near = flat >= flat.max(axis=0) - math.log(2.0)
    n = len(logs)
    total = np.zeros((n, n))
    count = np.zeros((n, n))
    for i in range(n):
        either = near | near[i]
        total[i] = (np.abs(flat - flat[i]) * either).sum(axis=1)
        count[i] = either.sum(axis=1)
    # Two frames sharp almost nowhere (blurred ends of a padded bracket) share no such block:
    # their distance is unknown, not 0 (they would be taken for neighbours, and the bracket
    # for out of order). So each distance is drawn towards the farthest one seen with the
    # weight of `least` blocks: all the way for a pair that shares none, a few per cent for
    # one that shares hundreds.
    least = max(12.0, 0.005 * flat.shape[1])
    seen = count >= least
    far = float((total[seen] / count[seen]).max()) if seen.any() else 0.0
    d = (total + least * far) / (count + least)
    np.fill_diagonal(d, 0.0)
    steps = np.array([_median(np.abs(flat[i] - flat[i + 1])) for i in range(n - 1)])
    return d, near.sum(axis=1) >= least, steps


def _path(d: np.ndarray, order: Sequence[int]) -> float:
    order = np.asarray(order)
    return float(d[order[:-1], order[1:]].sum())


def _shortened(d: np.ndarray, order: list[int]) -> list[int]:
    """Local search for a shorter chain: reverse a stretch (2-opt), or move one frame elsewhere
    (or-opt), while either shortens it. Each change is costed from the few links it alters, for
    all changes at one position at once (numpy), and the best one there is made: a pass is
    O(n^2), and a pass that changes nothing proves that no single change shortens the chain."""
    n = len(order)
    # A dummy frame n, at distance 0 from every frame, stands before the first and after the
    # last: the chain's end links cost 0, so the ends need no special cases.
    pad = np.zeros((n + 1, n + 1))
    pad[:n, :n] = d
    q = np.array([n, *order, n])  # frames at positions 1..n
    improved = True
    while improved:
        improved = False
        for i in range(1, n + 1):
            links = pad[q[:-1], q[1:]]  # links[k]: position k to k + 1
            x = q[i]
            # 2-opt, reverse positions i..j (all j > i): links i-1|i and j|j+1 become i-1|j
            # and i|j+1
            rev = pad[q[i - 1], q[i + 1 : -1]] + pad[x, q[i + 2 :]] - links[i - 1] - links[i + 1 :]
            # or-opt, move frame x into link g|g+1 (all g): its two links go and its neighbours
            # join; g|g+1 goes, g|x and x|g+1 come. Its own two links are no move.
            to = pad[x, q]
            move = pad[q[i - 1], q[i + 1]] - links[i - 1] - links[i] + to[:-1] + to[1:] - links
            move[i - 1 : i + 1] = np.inf
            if rev.min(initial=np.inf) < min(move.min(), -1e-9):
                j = i + 1 + int(np.argmin(rev))
                q[i : j + 1] = q[i : j + 1][::-1].copy()
                improved = True
            elif move.min() < -1e-9:
                g = int(np.argmin(move))
                q = np.insert(np.delete(q, i), g + 1 if g < i else g, x)
                improved = True
    return [int(f) for f in q[1:-1]]


def _seriate(d: np.ndarray) -> list[int]:
    """The order in which neighbours are most alike: spectral seriation and the order given,
    each shortened by local search; the shorter chain wins."""
    n = len(d)
    near = np.sort(d + np.eye(n) * 1e9, axis=1)[:, 0]
    s = _median(near) or 1.0
    w = np.exp(-d / s)
    lap = np.diag(w.sum(axis=1)) - w
    _, vectors = np.linalg.eigh(lap)
    starts = ([int(i) for i in np.argsort(vectors[:, 1])], list(range(n)))
    found = [_shortened(d, start) for start in starts]
    return min(found, key=lambda order: _path(d, order))


def _order(result: CheckResult, travel, placed, textured, distances) -> None:
    """In focus order (near to far or far to near, when the distances tell), or out of order
    with the order the frames' focus suggests. `travel`, `placed`: _distances()."""
    n = len(travel)
    direction = _direction(distances)
    result.order = direction or "in focus order"
    found = _better_order(travel, placed) if n >= 3 and textured.sum() >= 16 else None
    if found is None:
        if direction is None:
            result.notes.append("which end is near is unknown without focus distances")
        return
    # of the chain's two directions, the one nearer the order given
    if sum(abs(a - b) for a, b in enumerate(found[::-1])) < sum(
        abs(a - b) for a, b in enumerate(found)
    ):
        found = found[::-1]
    result.order = "out of order"
    result.suggested_order = found


def _better_order(d, placed) -> list[int] | None:
    """An order of the frames whose chain is clearly (10 %) shorter than the order given, or
    None when the order given (or its reverse) is as good. Judged on the frames that can be
    `placed` alone: how far apart two frames sharp almost nowhere are is not known (two
    blurred frames at one end of a bracket are neighbours, at its two ends they are not, and
    their distances look alike), so either guess made padded brackets out of order. Those
    frames go to the end of the suggested order whose frame they are nearer, the nearest
    next to it."""
    keep = [int(i) for i in np.flatnonzero(placed)]
    if len(keep) < 3:
        return None
    sub = d[np.ix_(keep, keep)]
    m = len(keep)
    found = _seriate(sub)
    if found in (list(range(m)), list(range(m - 1, -1, -1))):
        return None
    if _path(sub, found) >= 0.9 * _path(sub, range(m)):
        return None
    chain = [keep[k] for k in found]
    rest = [i for i in range(len(d)) if i not in keep]
    first = sorted(
        (i for i in rest if d[i, chain[0]] <= d[i, chain[-1]]), key=lambda i: -d[i, chain[0]]
    )
    last = sorted(
        (i for i in rest if d[i, chain[0]] > d[i, chain[-1]]), key=lambda i: d[i, chain[-1]]
    )
    return first + chain + last


def _direction(distances) -> str | None:
    if distances is None:
        return None
    known = [d for d in distances if d is not None and math.isfinite(d)]
    if len(known) < 2 or known[0] == known[-1]:
        return None
    return "near to far" if known[-1] > known[0] else "far to near"


def _step_mm(result: CheckResult, distances) -> None:
    """The focus step in mm from the frames' focus distances: the span between the first and
    the last frame that carry one, over the frames between them (cameras round the distance,
    so neighbours often read alike)."""
    if distances is None:
        return
    known = [(i, d) for i, d in enumerate(distances) if d is not None and math.isfinite(d)]
    if len(known) >= 2 and known[-1][1] != known[0][1]:
        (i0, d0), (i1, d1) = known[0], known[-1]
        result.step_mm = round(abs(d1 - d0) * 1000.0 / (i1 - i0), 4)


def _duplicates(result: CheckResult, logs, covered) -> None:
    """Neighbours whose focus maps are the same over the more detailed half of the blocks:
    alike in absolute terms, or (with enough pairs to say what is typical) far more alike
    than neighbours usually are. Usually: along the focus order (the suggested one when out
    of order; neighbours as given are then often far apart, and true neighbours looked alike
    beside them)."""
    n = len(logs)
    top = logs.max(axis=0)
    detail = covered & (top > _median(top[covered])) if covered.any() else covered
    if detail.sum() < 16:
        return
    flat = logs[:, detail]
    diffs = np.array([np.abs(flat[i] - flat[i + 1]).mean() for i in range(n - 1)])
    usual = diffs
    if result.suggested_order:  # out of order: the neighbours in the order it suggests
        chain = result.suggested_order
        usual = [np.abs(flat[a] - flat[b]).mean() for a, b in zip(chain, chain[1:], strict=False)]
    alike = _DUPLICATE_SHARE * _median(usual) if n >= 4 else 0.0
    for i, d in enumerate(diffs):
        if d < max(_DUPLICATE_ABS, alike):
            result.duplicates.append([i, i + 1])


def _exposure(result: CheckResult, levels: list[float]) -> None:
    """Neighbours' mean levels as read: not the aligner's gain, which is held within 0.5-2
    for the stack's sake (a black frame read 50 % darker, and the jump back was lost)."""
    for i in range(len(levels) - 1):
        # black counts as 1e-3 of white
        change = max(levels[i + 1], 1e-3) / max(levels[i], 1e-3) - 1.0
        if abs(change) > EXPOSURE_JUMP:
            result.exposure_jumps.append({"between": [i, i + 1], "change": round(change, 4)})


# ---------------------------------------------------------------------- coverage map


def _write_map(path: Path, measures: _Measures, result: CheckResult, icc, overwrite) -> None:
    """The quick composite with the areas sharp in no frame tinted red."""
    image = np.clip(measures.composite, 0.0, 1.0)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
        icc = None
    unsharp = measures.unsharp
    if unsharp is not None and unsharp.any():
        h, w = image.shape[:2]
        block = measures.block
        mask = cv2.resize(
            unsharp.astype(np.float32),
            (unsharp.shape[1] * block, unsharp.shape[0] * block),
            interpolation=cv2.INTER_NEAREST,
        )
        full = np.zeros((h, w), np.float32)
        full[: mask.shape[0], : mask.shape[1]] = mask
        full = cv2.GaussianBlur(full, (0, 0), block / 4)[..., None] * 0.6
        red = np.array([1.0, 0.0, 0.0], np.float32)
        image = image * (1.0 - full) + red * full
    bits = 16 if path.suffix.lower() in (".tif", ".tiff") else 8
    with atomic_output(path, overwrite=overwrite) as temp:
        write_image(
            temp,
            image,
            bit_depth=bits,
            icc=icc,
            description="focusbridge check",
            role="coverage map",
        )
