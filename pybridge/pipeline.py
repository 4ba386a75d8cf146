"""The stacking pipeline: read -> align -> fuse -> write, wired together here and only here.

Frames stream through one at a time in chain order (reference, reference+1 ... last,
reference-1 ... first): each is read (the next one is decoded in a background thread meanwhile),
registered to its neighbour, resampled onto the reference grid and folded into the fuser, then
dropped. Peak memory is a few frames' worth, whatever the bracket's length.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .align import INTERPOLATIONS, ChainAligner, Transform, warp_frame
from .atomic import (
    atomic_output,
    atomic_outputs,
    check_extension,
    check_no_clash,
    check_outputs,
)
from .errors import Cancelled, FocusbridgeError, InputError, StackError
from .frames import Frame, frame_from_array, icc_colour_space, probe_frame, read_frame
from .fuse import aligned_focus_measure, make_fuser, window_sigma_for
from .layers import ORA_EXTENSIONS, OraWriter
from .options import METHODS, StackOptions
from .progress import silent
from .retouch import (
    ALIGNED_ROLE,
    AlignedFrames,
    aligned_frame_names,
    aligned_frame_paths,
    check_aligned_folder,
    make_folder,
    remove_folder_if_empty,
)
from .signals import committing
from .write import (
    OUTPUT_EXTENSIONS,
    depth_map_levels,
    write_confidence_map,
    write_depth_map,
    write_image,
)

FrameSource = str | os.PathLike | np.ndarray

# share of the progress fraction taken by the per-frame work; writing and metadata get the rest
_FRAMES_SHARE = 0.94


@dataclass
class StackResult:
    image: np.ndarray  # float32 H x W x C, 0..1 (the inputs' encoding)
    depth: np.ndarray  # uint16 H x W, index of the sharpest frame
    confidence: np.ndarray  # float32 H x W, 0..1
    transforms: list[Transform]  # per frame, in input order
    reference: int
    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width) if cropped
    icc: bytes | None = None
    output: Path | None = None
    depth_map_path: Path | None = None
    confidence_map_path: Path | None = None
    aligned_frame_paths: list[Path] = field(default_factory=list)  # in bracket order
    layers_path: Path | None = None  # the OpenRaster file
    other_image: np.ndarray | None = None  # the other fusion method's result (for layers)
    metadata_written: bool = False
    warnings: list[str] = field(default_factory=list)  # one line each, naming the file
    timings: dict = field(default_factory=dict)
    left_out: list[int] = field(default_factory=list)  # shots of something else, not fused

    def report(self, sources: Sequence[str] | None = None) -> dict:
        """The JSON report: per-frame transforms and what was written."""
        from . import __version__

        return {
            "software": f"focusbridge {__version__}",
            "reference": self.reference,
            "crop": self.crop,
            "output": str(self.output) if self.output else None,
            "depth_map": str(self.depth_map_path) if self.depth_map_path else None,
            "confidence_map": str(self.confidence_map_path) if self.confidence_map_path else None,
            "aligned_frames": [str(p) for p in self.aligned_frame_paths],
            "layers": str(self.layers_path) if self.layers_path else None,
            "metadata": self.metadata_written,
            "warnings": list(self.warnings),
            "left_out": list(self.left_out),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "frames": [
                dict(index=i, source=(str(sources[i]) if sources else None), **t.to_dict())
                for i, t in enumerate(self.transforms)
            ],
        }


def side_path(output: str | os.PathLike, suffix: str) -> Path:
    """Default name of a map written beside the result: OUT_depth.tif, OUT_confidence.tif."""
    output = Path(output)
    return output.with_name(f"{output.stem}_{suffix}.tif")


def chain_order(count: int, reference: int) -> list[int]:
    """Reference first, then outwards: each frame follows the neighbour it is aligned to."""
    return [reference, *range(reference + 1, count), *range(reference - 1, -1, -1)]


def resolve_reference(reference: str | int, count: int) -> int:
    if reference in ("middle", None):
        return count // 2
    if reference == "first":
        return 0
    if reference == "last":
        return count - 1
    try:
        index = int(reference)
    except (TypeError, ValueError):
        raise StackError(
            f"reference must be 'middle', 'first', 'last' or a frame number, not {reference!r}"
        ) from None
    if index < 0:
        index += count
    if not 0 <= index < count:
        raise StackError(f"reference frame {reference} is outside the bracket (0..{count - 1})")
    return index


def _check_inputs(sources: Sequence[FrameSource], max_pixels: int) -> int:
    """Fail before any heavy work: too few frames, missing or unreadable headers, too many
    pixels, mismatched sizes. (A RAW whose header is fine but whose data is truncated fails
    later, when read.) Returns the output's channel count: colour when any frame is."""
    if len(sources) < 2:
        what = str(sources[0]) if sources and not isinstance(sources[0], np.ndarray) else "input"
        raise InputError(what, "a stack needs at least two frames")
    first = None
    channels = 1
    seen: dict[tuple[int, int], FrameSource] = {}
    for src in sources:
        if isinstance(src, np.ndarray):
            shape = _array_shape(src)
        else:
            info = probe_frame(src, max_pixels=max_pixels)
            shape = (info.height, info.width, info.channels)
            # one file twice is one frame less than it seems (a 2-frame "stack" of one frame)
            st = os.stat(src)
            twin = seen.setdefault((st.st_dev, st.st_ino), src)
            if twin is not src:
                raise InputError(_name(src), f"is given twice (also as {_name(twin)})")
        channels = max(channels, 3 if shape[2] >= 3 else 1)
        if min(shape[:2]) < MIN_SIDE:
            raise InputError(
                _name(src),
                f"is {shape[1]}x{shape[0]}: too small to stack ({MIN_SIDE} pixels a side at least)",
            )
        if first is None:
            first = (src, shape)
        elif shape[:2] != first[1][:2]:
            raise InputError(
                _name(src),
                f"is {shape[1]}x{shape[0]} but {_name(first[0])} is "
                f"{first[1][1]}x{first[1][0]}: all frames must have one size",
            )
    return channels


MIN_SIDE = 8  # smaller frames have no block for the noise estimate; nothing to stack either


def _array_shape(a: np.ndarray) -> tuple[int, int, int]:
    if a.ndim not in (2, 3):
        raise InputError("<array>", f"expected an H x W or H x W x C image, got shape {a.shape}")
    return (a.shape[0], a.shape[1], a.shape[2] if a.ndim == 3 else 1)


def _name(src: FrameSource) -> str:
    return "<array>" if isinstance(src, np.ndarray) else str(src)


def _load(src: FrameSource, max_pixels: int) -> Frame:
    return (
        frame_from_array(src)
        if isinstance(src, np.ndarray)
        else read_frame(src, max_pixels=max_pixels)
    )


def read_paths(frames: Sequence[FrameSource]) -> list[tuple[str, Path]]:
    """(role, path) of every frame file a stack reads."""
    return [("input frame", Path(f)) for f in frames if not isinstance(f, np.ndarray)]


def common_area(coverage: np.ndarray, count: int) -> tuple[int, int, int, int]:
    """Largest-ish axis-aligned rectangle covered by every frame: trim whichever edge holds the
    most uncovered pixels until none is left. Returns (top, left, height, width)."""
    full = coverage >= count
    top, left, bottom, right = 0, 0, full.shape[0], full.shape[1]
    while bottom - top > 1 and right - left > 1:
        box = full[top:bottom, left:right]
        if box.all():
            break
        bad = {
            "top": (~box[0]).mean(),
            "bottom": (~box[-1]).mean(),
            "left": (~box[:, 0]).mean(),
            "right": (~box[:, -1]).mean(),
        }
        side = max(bad, key=bad.get)
        if side == "top":
            top += 1
        elif side == "bottom":
            bottom -= 1
        elif side == "left":
            left += 1
        else:
            right -= 1
    return top, left, bottom - top, right - left


def stack(
    frames: Sequence[FrameSource],
    output: str | os.PathLike | None = None,
    options: StackOptions | None = None,
    *,
    depth_map: str | os.PathLike | bool | None = None,
    confidence_map: str | os.PathLike | bool | None = None,
    aligned_frames: str | os.PathLike | None = None,
    aligned_names: Sequence[str | os.PathLike] | None = None,
    layers: str | os.PathLike | None = None,
    before_commit: Callable[[Path], None] | None = None,
    before_commit_frame: Callable[[Path, int], None] | None = None,
    also_reads: Sequence[tuple[str, Path]] = (),
    also_writes: Sequence[tuple[str, Path]] = (),
    progress: Callable[..., None] = silent,
    cancel: Callable[[], bool] | None = None,
    **option_values,
) -> StackResult:
    """Stack a focus bracket: the engine, which knows nothing of metadata.

    `frames`: file paths (RAW, TIFF, JPEG, PNG) or arrays, in focus order. `output`: where to
    write the result (format by extension; None: only return it). `depth_map`,
    `confidence_map`: paths, or True for OUT_depth.tif / OUT_confidence.tif beside the result.
    `options` (or the same names as keywords, see options.StackOptions): method, alignment,
    interpolation, ...
    `aligned_frames`: a folder (made if missing) for every frame registered onto the result,
    `<stem>_aligned.tif`, the stem from `aligned_names` (one per frame) or the frame's file
    (`frame_000` for arrays). `layers`: an OpenRaster file with the result, the other method's
    result, the depth map and the aligned frames (docs/retouch.md).
    `before_commit(temp_path)`: called with the written result's temp file before the outputs
    are renamed into place (the application layer merges metadata there, so it is part of
    the atomic write); `before_commit_frame(temp_path, index)` likewise for each aligned frame.
    `also_reads` / `also_writes`: (role, path) of other files the caller reads / will write;
    they are checked with the outputs before any pixel is read. `cancel`: polled between
    frames; returning True stops the run, and nothing is written.
    """
    opts = StackOptions.merged(options, option_values)
    frames = frame_list(frames)
    t0 = time.perf_counter()
    depth_map = _beside(output, depth_map, "depth")
    confidence_map = _beside(output, confidence_map, "confidence")
    writes = [
        (role, Path(p))
        for role, p in (
            ("result", output),
            ("depth map", depth_map),
            ("confidence map", confidence_map),
            ("layers", layers),
        )
        if p is not None
    ]
    if aligned_names is not None and len(aligned_names) != len(frames):
        raise StackError(f"{len(aligned_names)} names for the aligned frames of {len(frames)}")
    names = aligned_frame_names(frames, aligned_names)
    aligned = (
        [
            (f"aligned frame of {f'frame {i}' if isinstance(f, np.ndarray) else f}", p)
            for i, (f, p) in enumerate(
                zip(frames, aligned_frame_paths(aligned_frames, frames, aligned_names), strict=True)
            )
        ]
        if aligned_frames is not None
        else []
    )
    channels, ref = check_before_pixels(
        frames, writes, opts, also_reads, also_writes, aligned=aligned
    )
    folder = Path(os.fsdecode(aligned_frames)) if aligned_frames is not None else None
    made = False
    try:
        made = folder is not None and make_folder(folder)
        store = None
        if aligned or layers is not None:
            # full-size frames wait beside their outputs (the ORA's, without aligned frames)
            homes = (
                [p for _, p in aligned]
                if aligned
                else [Path(layers).with_name(f"{Path(layers).stem}-{n}.tif") for n in names]
            )
            store = AlignedFrames(homes)
        try:
            other = next(m for m in METHODS if m != opts.method) if layers is not None else None
            res = _align_and_fuse(frames, channels, ref, opts, progress, cancel, store, other)
            res.timings["stack"] = time.perf_counter() - t0
            if cancel is not None and cancel():
                raise Cancelled()
            t1 = time.perf_counter()
            if writes or aligned:
                progress("write", count=len(frames), fraction=_FRAMES_SHARE + 0.02)
                _write_outputs(
                    res,
                    dict((role, p) for role, p in writes),
                    opts,
                    before_commit,
                    aligned=[p for _, p in aligned],
                    store=store,
                    names=names,
                    before_commit_frame=before_commit_frame,
                    progress=progress,
                )
            res.timings["write"] = time.perf_counter() - t1
        finally:
            if store is not None:
                store.discard()
    except BaseException:
        if made:
            remove_folder_if_empty(folder)
        raise
    res.other_image = None  # only the layers needed it
    res.timings["total"] = time.perf_counter() - t0
    return res


def _beside(output, value, suffix: str):
    """A map given as True: OUT_<suffix>.tif beside the result, as on the command line."""
    if value is not True:
        return value
    if output is None:
        raise StackError(f"{suffix}_map=True names the map after the result: give an output")
    return side_path(output, suffix)


def frame_list(frames: Sequence[FrameSource]) -> list[FrameSource]:
    """The frames as a list; one path given alone is a mistake (its letters would be frames)."""
    if isinstance(frames, str | bytes | os.PathLike):
        raise InputError(os.fsdecode(frames), "frames: a list of files or arrays, not one file")
    return list(frames)


def check_before_pixels(
    frames: Sequence[FrameSource],
    writes: Sequence[tuple[str, Path]],
    opts: StackOptions,
    also_reads: Sequence[tuple[str, Path]] = (),
    also_writes: Sequence[tuple[str, Path]] = (),
    *,
    aligned: Sequence[tuple[str, Path]] = (),
) -> tuple[int, int]:
    """Everything that can be known before a pixel is read: output names and folders, no
    output on an input (nor two outputs on one file: aligned frames of two frames with one
    stem), frame headers (kind, size, pixel limit). `aligned`: (role, path) of the aligned
    frames, all in one folder, which may not exist yet. Returns (channels of the result,
    reference frame index)."""
    for role, p in writes:
        check_extension(p, ORA_EXTENSIONS if role == "layers" else OUTPUT_EXTENSIONS, role)
    reads = read_paths(frames) + list(also_reads)
    folder_exists = check_aligned_folder(aligned[0][1].parent) if aligned else True
    check_outputs(
        [*writes, *also_writes, *(aligned if folder_exists else [])], reads, opts.overwrite
    )
    if not folder_exists:  # nothing there to replace; but two frames may share a name
        check_no_clash([*writes, *also_writes, *aligned], reads)
    channels = _check_inputs(frames, opts.max_pixels)
    return channels, resolve_reference(opts.reference, len(frames))


def _align_and_fuse(
    frames: Sequence[FrameSource],
    channels: int,
    ref: int,
    opts: StackOptions,
    progress,
    cancel,
    store: AlignedFrames | None = None,
    other_method: str | None = None,
) -> StackResult:
    """Stream the frames through read -> align -> fuse, one at a time, in chain order.

    A helper thread reads, registers, resamples and measures the focus of the next frame
    while this one fuses the current one: the two halves take about as long. `store`: where
    the helper thread also puts each aligned frame (as fused: resampled, gain applied).
    `other_method`: a second fuser of that method sees the same frames (the layers file holds
    both results)."""
    count = len(frames)
    aligner = ChainAligner(model=opts.model, match_gain=opts.match_gain)
    transforms: list[Transform | None] = [None] * count
    order = chain_order(count, ref)
    first = {}
    warnings: list[str] = []

    def read_and_register(index: int):
        frame = _load(frames[index], opts.max_pixels)
        warnings.extend(frame.warnings)
        pixels = frame.pixels
        if not first:
            first.update(shape=pixels.shape[:2])
        if pixels.shape[:2] != first["shape"]:
            h, w = first["shape"]
            raise InputError(
                _name(frames[index]),
                f"is {pixels.shape[1]}x{pixels.shape[0]} but the reference is {w}x{h}",
            )
        if pixels.shape[2] != channels:
            pixels = _match_channels(pixels, channels)
        if index == ref:
            t = aligner.set_reference(pixels)
        else:
            if index == ref - 1:
                aligner.restart()
            t = aligner.align(pixels)
        warped, valid = warp_frame(
            pixels, t, first["shape"], interpolation=INTERPOLATIONS[opts.interpolation]
        )
        icc = _usable_icc(frame, channels, warnings)
        del frame, pixels  # the unwarped frame is done with: free it before the next step
        if store is not None:
            store.keep(index, warped, icc)
        measure = aligned_focus_measure(warped, valid, window_sigma_for(first["shape"]))
        # (set_reference clears both flags)
        return warped, valid, measure, t, icc, aligner.passed_stray, aligner.looks_foreign

    fuser = None
    fusers = []
    icc = None
    # a frame whose alignment step failed waits for the next one: if that lines up with the
    # frame before it instead, and it looks like neither, it is a shot of something else and
    # is left out (fused, its detail would stand in the result where its place was guessed)
    held: tuple | None = None  # (index, step, [warped, valid, measure], its ICC profile)
    left_out: list[int] = []

    def done(index: int, step: int) -> None:
        progress("fuse", frame=index, count=count, fraction=_FRAMES_SHARE * (step + 1) / count)

    def fold(fusers: list, index: int, step: int, frame: list) -> None:
        warped, valid, measure = frame
        frame.clear()
        # add() in two steps: the focus measure is freed before the fold's temporaries come;
        # only the last fuser may overwrite the frame (none changes its mask)
        weights = [f.weigh(index, measure, valid, warped) for f in fusers]
        del measure
        for f in fusers:
            # popped, not iterated: the fold frees each weights plane as soon as it can
            f.fold(warped, valid, weights.pop(0), reuse=f is fusers[-1])
        del warped
        done(index, step)

    def leave_out(index: int, step: int, frame: list) -> None:
        left_out.append(index)
        frame.clear()
        done(index, step)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-align") as pool:
        pending = pool.submit(read_and_register, order[0])
        for step, index in enumerate(order):
            if cancel is not None and cancel():
                raise Cancelled()
            warped, valid, measure, t, frame_icc, passed_stray, foreign = pending.result()
            frame = [warped, valid, measure]
            del warped, valid, measure
            if step + 1 < count:
                pending = pool.submit(read_and_register, order[step + 1])
            if fuser is None:
                fusers = [
                    make_fuser(
                        method,
                        first["shape"],
                        channels,
                        halo_suppression=opts.halo_suppression,
                        noise_aware=opts.noise_averaging,
                        frame_count=count,
                    )
                    for method in [opts.method, *([other_method] if other_method else [])]
                ]
                fuser = fusers[0]
            transforms[index] = t
            if held is not None:  # (first: its progress comes before this frame's)
                held_index, held_step, held_frame, held_icc = held
                held = None
                if passed_stray:
                    leave_out(held_index, held_step, held_frame)
                else:
                    icc = icc or held_icc
                    fold(fusers, held_index, held_step, held_frame)
            progress(
                "align", frame=index, count=count, fraction=_FRAMES_SHARE * (step + 0.5) / count
            )
            outwards = 1 if index > ref else -1
            if t.fallback and 0 <= index + outwards < count:  # the next frame goes on from it
                held = (index, step, frame, frame_icc)
                continue
            if t.fallback and foreign:  # at an end: a test shot before the bracket, or after
                leave_out(index, step, frame)
                continue
            icc = icc or frame_icc
            fold(fusers, index, step, frame)
    for index, t in enumerate(transforms):
        if index in left_out and 0 < index < count - 1:
            warnings.append(
                f"{_name(frames[index])}: left out: it lines up with neither "
                f"{_name(frames[index - 1])} nor {_name(frames[index + 1])}, which line up with "
                "each other, and looks like neither (a shot of something else?)"
            )
        elif index in left_out:
            neighbour = index + 1 if index == 0 else index - 1
            warnings.append(
                f"{_name(frames[index])}: left out: it does not line up with "
                f"{_name(frames[neighbour])}, the frame beside it at the end of the bracket, and "
                "looks nothing like it (a shot of something else?)"
            )
        elif t.fallback:  # silent before: a stray frame from another shot was fused as it came
            neighbour = index - 1 if index > ref else index + 1  # the one it is aligned to
            warnings.append(
                f"{_name(frames[index])}: could not be aligned to {_name(frames[neighbour])}; "
                "its place is predicted from the frames before it (is one of the two from "
                "another shot, or without detail?)"
            )
    fused = fuser.finish()
    other = fusers[1].finish().image if len(fusers) > 1 else None
    del fuser, fusers  # their state: only the maps in `fused` are still needed

    box = common_area(fused.coverage, count - len(left_out)) if opts.crop else None
    image, depth, conf = fused.image, fused.depth, fused.confidence
    if box is not None:
        top, left, h, w = box
        image, depth, conf = (a[top : top + h, left : left + w] for a in (image, depth, conf))
        if other is not None:
            other = other[top : top + h, left : left + w]
    return StackResult(
        other_image=other,
        image=image,
        depth=depth,
        confidence=conf,
        transforms=transforms,
        reference=ref,
        crop=box,
        icc=icc,
        warnings=list(dict.fromkeys(warnings)),
        left_out=sorted(left_out),
    )


def _usable_icc(frame: Frame, channels: int, warnings: list[str]) -> bytes | None:
    """The frame's ICC profile if it describes the result's pixels; a grey profile on a
    frame that became colour (or any mismatch) is dropped, and the user told."""
    if not frame.icc:
        return None
    space = icc_colour_space(frame.icc)
    if space == ("RGB" if channels == 3 else "GRAY"):
        return frame.icc
    warnings.append(
        f"{frame.path}: its {space or 'unrecognised'} ICC profile does not describe "
        f"the {'colour' if channels == 3 else 'grey'} result; the result is written "
        "without it"
    )
    return None


def _match_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """A grey frame in a colour bracket (or the reverse): convert rather than refuse."""
    if channels == 3:
        return np.repeat(pixels[..., :1], 3, axis=2)
    return pixels.mean(axis=2, keepdims=True, dtype=np.float32)


def _write_outputs(
    res: StackResult,
    paths: dict[str, Path],
    opts: StackOptions,
    before_commit: Callable[[Path], None] | None,
    *,
    aligned: Sequence[Path] = (),
    store: AlignedFrames | None = None,
    names: Sequence[str] = (),
    before_commit_frame: Callable[[Path, int], None] | None = None,
    progress: Callable[..., None] = silent,
) -> None:
    """All outputs appear together or not at all; from the first byte written on, a signal no
    longer cancels half-way (see signals.py): the set is finished or fully removed.

    Aligned frames and layers come first, one frame at a time (each read back from the store,
    cropped, written, given its metadata, added to the layers file), then the result and its
    maps: the progress fraction only grows."""
    count = len(res.transforms)
    roles = list(paths)
    targets = [*paths.values(), *aligned]
    with committing(), atomic_outputs(targets, overwrite=opts.overwrite) as temps:
        temp = dict(zip(roles, temps, strict=False))
        aligned_temps = temps[len(roles) :]
        try:
            if store is not None:
                _write_aligned(
                    res,
                    paths,
                    opts,
                    temp,
                    aligned_temps,
                    store,
                    names,
                    count,
                    before_commit_frame,
                    progress,
                )
            if "result" in temp:
                jpeg = paths["result"].suffix.lower() in (".jpg", ".jpeg")
                write_image(
                    temp["result"], res.image, bit_depth=8 if jpeg else opts.bit_depth, icc=res.icc
                )
                if before_commit is not None:
                    before_commit(temp["result"])
            if "depth map" in temp:
                write_depth_map(temp["depth map"], res.depth, count)
            if "confidence map" in temp:
                write_confidence_map(temp["confidence map"], res.confidence)
        except (FocusbridgeError, OSError) as exc:
            # name the user's file, never the hidden temp file it is being written as
            message = (
                str(exc)
                if isinstance(exc, FocusbridgeError)
                else f"{exc.filename}: {exc.strerror or exc}"
            )
            for t, target in zip(temps, targets, strict=True):
                message = message.replace(str(t), str(target))
            raise StackError(message) from None
    # all temp files were renamed into place together when the block closed
    res.output = paths.get("result")
    res.depth_map_path = paths.get("depth map")
    res.confidence_map_path = paths.get("confidence map")
    res.layers_path = paths.get("layers")
    res.aligned_frame_paths = list(aligned)


def _write_aligned(
    res: StackResult,
    paths: dict[str, Path],
    opts: StackOptions,
    temp: dict[str, Path],
    aligned_temps: Sequence[Path],
    store: AlignedFrames,
    names: Sequence[str],
    count: int,
    before_commit_frame,
    progress,
) -> None:
    """The aligned frames and the layers file, one frame in memory at a time."""
    colour = res.image.ndim == 3 and res.image.shape[2] == 3
    ora = None
    if "layers" in temp:
        h, w = res.image.shape[:2]
        ora = OraWriter(temp["layers"], w, h)
        other = next(m for m in METHODS if m != opts.method)
        ora.add_layer(f"stacked ({opts.method})", res.image, icc=res.icc if colour else None)
        ora.add_layer(
            f"stacked ({other})", res.other_image, visible=False, icc=res.icc if colour else None
        )
        ora.add_layer("depth map", depth_map_levels(res.depth, count), visible=False)
    try:
        for i in range(count):
            icc = store.icc[i]
            if aligned_temps and ora is None and res.crop is None:
                store.take(i, aligned_temps[i])  # already the file wanted: just move it
            else:
                pixels = store.read(i, res.crop)
                if aligned_temps:
                    write_image(aligned_temps[i], pixels, bit_depth=16, icc=icc, role=ALIGNED_ROLE)
                if ora is not None:
                    # two frames of one name (a/f.tif, b/f.tif): the layers say which is which
                    which = f", frame {i}" if names.count(names[i]) > 1 else ""
                    ora.add_layer(
                        f"{names[i]} (aligned{which})",
                        pixels,
                        visible=False,
                        icc=icc if colour else None,
                    )
                del pixels
                store.drop(i)
            if aligned_temps and before_commit_frame is not None:
                before_commit_frame(aligned_temps[i], i)
            progress(
                "write",
                frame=i,
                count=count,
                fraction=_FRAMES_SHARE + 0.02 + 0.015 * (i + 1) / count,
            )
        if ora is not None:
            ora.finish(res.image, icc=res.icc if colour else None)
    finally:
        if ora is not None:
            ora.close()


def write_report(
    res: StackResult, path: str | os.PathLike, sources=None, overwrite: bool = True
) -> None:
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text(json.dumps(res.report(sources), indent=2), encoding="utf-8")
