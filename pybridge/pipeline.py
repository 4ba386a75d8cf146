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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import __version__
from .align import INTERPOLATIONS, MODELS, ChainAligner, Transform, warp_frame
from .errors import Cancelled, InputError, StackError
from .frames import Frame, frame_from_array, icc_colour_space, probe_frame, read_frame
from .fuse import METHODS, frame_focus, make_fuser, window_sigma_for
from .progress import silent
from .signals import committing
from .write import (OUTPUT_EXTENSIONS, atomic_output, atomic_outputs,
                    check_extension, check_no_clash, check_target, write_confidence_map,
                    write_depth_map, write_image)

FrameSource = str | os.PathLike | np.ndarray

# share of the progress fraction taken by the per-frame work; writing and metadata get the rest
_FRAMES_SHARE = 0.94


@dataclass
class StackResult:
    image: np.ndarray                 # float32 H x W x C, 0..1 (the inputs' encoding)
    depth: np.ndarray                 # uint16 H x W, index of the sharpest frame
    confidence: np.ndarray            # float32 H x W, 0..1
    transforms: list[Transform]       # per frame, in input order
    reference: int
    crop: tuple[int, int, int, int] | None = None   # (top, left, height, width) if cropped
    icc: bytes | None = None
    output: Path | None = None
    depth_map_path: Path | None = None
    confidence_map_path: Path | None = None
    metadata_written: bool = False
    warnings: list[str] = field(default_factory=list)   # one line each, naming the file
    timings: dict = field(default_factory=dict)

    def report(self, sources: Sequence[str] | None = None) -> dict:
        """The JSON report: per-frame transforms and what was written."""
        return {
            "software": f"focusbridge {__version__}",
            "reference": self.reference,
            "crop": self.crop,
            "output": str(self.output) if self.output else None,
            "depth_map": str(self.depth_map_path) if self.depth_map_path else None,
            "confidence_map": str(self.confidence_map_path) if self.confidence_map_path else None,
            "metadata": self.metadata_written,
            "warnings": list(self.warnings),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "frames": [dict(index=i, source=(str(sources[i]) if sources else None), **t.to_dict())
                       for i, t in enumerate(self.transforms)],
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
        raise StackError(f"reference must be 'middle', 'first', 'last' or a frame number, not {reference!r}")
    if index < 0:
        index += count
    if not 0 <= index < count:
        raise StackError(f"reference frame {reference} is outside the bracket (0..{count - 1})")
    return index


def _check_inputs(sources: Sequence[FrameSource], max_pixels: int | None) -> int:
    """Fail before any heavy work: too few frames, missing or unreadable headers, too many
    pixels, mismatched sizes. (A RAW whose header is fine but whose data is truncated fails
    later, when read.) Returns the output's channel count: colour when any frame is."""
    if len(sources) < 2:
        what = str(sources[0]) if sources and not isinstance(sources[0], np.ndarray) else "input"
        raise InputError(what, "a stack needs at least two frames")
    first = None
    channels = 1
    for src in sources:
        if isinstance(src, np.ndarray):
            shape = _array_shape(src)
        else:
            info = probe_frame(src, max_pixels=max_pixels)
            shape = (info.height, info.width, info.channels)
        channels = max(channels, 3 if shape[2] >= 3 else 1)
        if first is None:
            first = (src, shape)
        elif shape[:2] != first[1][:2]:
            raise InputError(_name(src), f"is {shape[1]}x{shape[0]} but {_name(first[0])} is "
                                         f"{first[1][1]}x{first[1][0]}: all frames must have one size")
    return channels


def _array_shape(a: np.ndarray) -> tuple[int, int, int]:
    return (a.shape[0], a.shape[1], a.shape[2] if a.ndim == 3 else 1)


def _name(src: FrameSource) -> str:
    return "<array>" if isinstance(src, np.ndarray) else str(src)


def _load(src: FrameSource, max_pixels: int | None) -> Frame:
    return frame_from_array(src) if isinstance(src, np.ndarray) else read_frame(src, max_pixels=max_pixels)


def read_paths(frames: Sequence[FrameSource], sources=None, base=None) -> list[tuple[str, Path]]:
    """(role, path) of every file a stack reads: frames, metadata sources, metadata base."""
    reads = [("input frame", Path(f)) for f in frames if not isinstance(f, np.ndarray)]
    reads += [("metadata source", Path(s)) for s in sources or ()]
    reads += [("metadata base", Path(base))] if base else []
    return reads


def check_outputs(writes: Sequence[tuple[str, Path]], reads: Sequence[tuple[str, Path]],
                  overwrite: bool) -> None:
    """Up front, before any pixel is read: no output replaces an input or another output, and
    every output can be created (folder writable, name free unless overwrite)."""
    check_no_clash(writes, reads)
    for _, out in writes:
        check_target(out, overwrite)


def _check_metadata_sources(sources: Sequence[Path], base, count: int, explicit: bool) -> None:
    """The metadata inputs exist and can be named to exiftool, before the heavy work."""
    if explicit and len(sources) != count:
        raise StackError(f"--sources names {len(sources)} files for {count} frames")
    for role, path in [("metadata source", s) for s in sources] + \
                      ([("metadata base", Path(base))] if base else []):
        if not path.is_file():
            raise InputError(path, f"no such file ({role})" if not path.exists()
                             else f"is not a regular file ({role})")
        if "\n" in str(path) or "\r" in str(path):
            raise InputError(path, f"line breaks in file names are not supported by exiftool "
                                   f"({role}); rename it or pass --no-metadata")


def common_area(coverage: np.ndarray, count: int) -> tuple[int, int, int, int]:
    """Largest-ish axis-aligned rectangle covered by every frame: trim whichever edge holds the
    most uncovered pixels until none is left. Returns (top, left, height, width)."""
    full = coverage >= count
    top, left, bottom, right = 0, 0, full.shape[0], full.shape[1]
    while bottom - top > 1 and right - left > 1:
        box = full[top:bottom, left:right]
        if box.all():
            break
        bad = {"top": (~box[0]).mean(), "bottom": (~box[-1]).mean(),
               "left": (~box[:, 0]).mean(), "right": (~box[:, -1]).mean()}
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


def stack(frames: Sequence[FrameSource], output: str | os.PathLike | None = None, *,
          method: str = "pyramid",
          align: bool | str = True,
          reference: str | int = "middle",
          match_gain: bool = True,
          interpolation: str = "cubic",
          halo_suppression: bool = True,
          crop: bool = False,
          depth_map: str | os.PathLike | None = None,
          confidence_map: str | os.PathLike | None = None,
          bit_depth: int = 16,
          overwrite: bool = False,
          metadata: bool | None = None,
          sources: Sequence[str | os.PathLike] | None = None,
          base: str | os.PathLike | None = None,
          max_pixels: int | None = None,
          progress: Callable[..., None] = silent,
          cancel: Callable[[], bool] | None = None) -> StackResult:
    """Stack a focus bracket.

    `frames`: file paths (RAW, TIFF, JPEG, PNG) or arrays, in focus order. `output`: where to
    write the result (format by extension; None: only return it). `align`: True (similarity),
    False, or a model name from align.MODELS. `interpolation`: cubic (default), lanczos
    (sharper, slower) or linear. `metadata`: copy the sources' EXIF/XMP onto the
    output (None: when the inputs carry any). `sources`: the original files to take metadata
    from when `frames` are derived copies (darktable exports). `max_pixels`: refuse frames
    larger than this (None: frames.DEFAULT_MAX_PIXELS; 0: no limit). `cancel`: polled between
    frames; returning True stops the run, and nothing is written.
    """
    if method not in METHODS:
        raise StackError(f"unknown fusion method {method!r}; choose from {', '.join(METHODS)}")
    model = "similarity" if align is True else ("none" if align is False else align)
    if model not in MODELS:
        raise StackError(f"unknown alignment model {model!r}; choose from {', '.join(MODELS)}")
    if interpolation not in INTERPOLATIONS:
        raise StackError(f"unknown interpolation {interpolation!r}; choose from "
                         f"{', '.join(INTERPOLATIONS)}")
    if bit_depth not in (8, 16) or isinstance(bit_depth, bool):
        raise StackError(f"bit depth must be 8 or 16, not {bit_depth!r}")
    frames = list(frames)
    count = len(frames)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # -- everything checkable is checked before a pixel is read ------------------------------
    writes = [(role, Path(p)) for role, p in (("result", output), ("depth map", depth_map),
                                              ("confidence map", confidence_map)) if p is not None]
    for role, p in writes:
        check_extension(p, OUTPUT_EXTENSIONS, role)
    check_outputs(writes, read_paths(frames, sources, base), overwrite)
    explicit_sources = sources is not None
    meta_sources = [Path(s) for s in sources] if explicit_sources else \
        [Path(f) for f in frames if not isinstance(f, np.ndarray)]
    wants_metadata = output is not None and metadata is not False and \
        (explicit_sources or len(meta_sources) == count)
    if wants_metadata:
        _check_metadata_sources(meta_sources, base, count, explicit_sources)
    channels = _check_inputs(frames, max_pixels)
    ref = resolve_reference(reference, count)
    merge = None
    if wants_metadata:
        merge = _metadata_step(meta_sources, base, ref, method, count,
                               required=bool(metadata))

    # -- read, align, fuse: one frame at a time -------------------------------------------
    # A helper thread reads, registers, resamples and measures the focus of the next frame
    # while this one fuses the current one: the two halves take about as long.
    aligner = ChainAligner(model=model, match_gain=match_gain)
    transforms: list[Transform | None] = [None] * count
    order = chain_order(count, ref)
    first = {}
    warnings: list[str] = []

    def read_and_register(index: int):
        frame = _load(frames[index], max_pixels)
        warnings.extend(frame.warnings)
        pixels = frame.pixels
        if not first:
            first.update(shape=pixels.shape[:2], channels=channels)
        if pixels.shape[:2] != first["shape"]:
            h, w = first["shape"]
            raise InputError(_name(frames[index]), f"is {pixels.shape[1]}x{pixels.shape[0]} but "
                                                   f"the reference is {w}x{h}")
        if pixels.shape[2] != first["channels"]:
            pixels = _match_channels(pixels, first["channels"])
        if index == ref:
            t = aligner.set_reference(pixels)
        else:
            if index == ref - 1:
                aligner.restart()
            t = aligner.align(pixels)
        warped, valid = warp_frame(pixels, t, first["shape"],
                                   interpolation=INTERPOLATIONS[interpolation])
        icc = _usable_icc(frame, channels, warnings)
        del frame, pixels          # the unwarped frame is done with: free it before the next step
        focus = frame_focus(warped, valid, window_sigma_for(first["shape"]))
        return warped, valid, focus, t, icc

    fuser = None
    icc = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-align") as pool:
        pending = pool.submit(read_and_register, order[0])
        for step, index in enumerate(order):
            if cancel is not None and cancel():
                raise Cancelled()
            warped, valid, focus, t, frame_icc = pending.result()
            if step + 1 < count:
                pending = pool.submit(read_and_register, order[step + 1])
            if fuser is None:
                fuser = make_fuser(method, first["shape"], first["channels"],
                                   halo_suppression=halo_suppression)
            icc = icc or frame_icc
            transforms[index] = t
            progress("align", frame=index, count=count, fraction=_FRAMES_SHARE * (step + 0.5) / count)
            fuser.add(index, warped, valid, focus)
            del warped, focus
            progress("fuse", frame=index, count=count, fraction=_FRAMES_SHARE * (step + 1) / count)
    result = fuser.finish()
    timings["stack"] = time.perf_counter() - t0

    box = common_area(result.coverage, count) if crop else None
    image, depth, conf = result.image, result.depth, result.confidence
    if box is not None:
        top, left, h, w = box
        image, depth, conf = (a[top:top + h, left:left + w] for a in (image, depth, conf))

    res = StackResult(image=image, depth=depth, confidence=conf, transforms=transforms,
                      reference=ref, crop=box, icc=icc, warnings=list(dict.fromkeys(warnings)),
                      timings=timings)
    if cancel is not None and cancel():
        raise Cancelled()

    # -- write: all outputs appear together or not at all ------------------------------------
    t1 = time.perf_counter()
    if writes:
        progress("write", count=count, fraction=_FRAMES_SHARE + 0.02)
        _write_outputs(res, output, depth_map, confidence_map, bit_depth, overwrite, merge,
                       count, progress)
    timings["write"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    return res


def _usable_icc(frame: Frame, channels: int, warnings: list[str]) -> bytes | None:
    """The frame's ICC profile if it describes the result's pixels; a grey profile on a
    frame that became colour (or any mismatch) is dropped, and the user told."""
    if not frame.icc:
        return None
    space = icc_colour_space(frame.icc)
    if space == ("RGB" if channels == 3 else "GRAY"):
        return frame.icc
    warnings.append(f"{frame.path}: its {space or 'unrecognised'} ICC profile does not describe "
                    f"the {'colour' if channels == 3 else 'grey'} result; the result is written "
                    "without it")
    return None


def _match_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """A grey frame in a colour bracket (or the reverse): convert rather than refuse."""
    if channels == 3:
        return np.repeat(pixels[..., :1], 3, axis=2)
    return pixels.mean(axis=2, keepdims=True, dtype=np.float32)


def _metadata_step(sources: list[Path], base, ref: int, method: str, count: int, required: bool):
    """Prepare the metadata merge, failing early (before the heavy work) if exiftool is missing.
    Returns a callable(target) or None when there is nothing worth copying."""
    from exif.merge import StackInfo, merge_metadata, sources_have_metadata
    from exif.tool import ExifError, require_exiftool

    # "when there is some" mode: a cheap header check needs no exiftool, so a bracket without
    # metadata (synthetic, scanned) stacks on a machine that lacks it
    if not required and not sources_have_metadata(sources):
        return None
    try:
        require_exiftool()
    except ExifError as exc:
        raise StackError(str(exc)) from None
    info = StackInfo(frame_count=count, method=method, reference_index=ref,
                     software=f"focusbridge {__version__}")
    base_path = Path(base) if base else sources[ref]

    def merge(target: Path) -> None:
        try:
            merge_metadata(target, sources, base_path, info)
        except ExifError as exc:
            raise StackError(str(exc)) from None
    return merge


def _write_outputs(res: StackResult, output, depth_map, confidence_map, bit_depth, overwrite,
                   merge, count, progress) -> None:
    wanted = [(k, Path(p)) for k, p in (("output", output), ("depth", depth_map),
                                        ("confidence", confidence_map)) if p is not None]
    # from here on a signal no longer cancels half-way: the set is finished or fully removed
    with committing(), atomic_outputs([p for _, p in wanted], overwrite=overwrite) as temp_paths:
        temps = dict(zip((k for k, _ in wanted), temp_paths))
        try:
            if "output" in temps:
                ext = Path(output).suffix.lower()
                bits = 8 if ext in (".jpg", ".jpeg") else bit_depth
                write_image(temps["output"], res.image, bit_depth=bits, icc=res.icc)
                if merge is not None:
                    progress("metadata", count=count, fraction=_FRAMES_SHARE + 0.04)
                    merge(temps["output"])
                    res.metadata_written = True
            if "depth" in temps:
                write_depth_map(temps["depth"], res.depth, count)
            if "confidence" in temps:
                write_confidence_map(temps["confidence"], res.confidence)
        except (StackError, OSError) as exc:
            # name the user's file, never the hidden temp file it is being written as
            message = str(exc) if isinstance(exc, StackError) else \
                f"{exc.filename}: {exc.strerror or exc}"
            for (_, target), temp in zip(wanted, temp_paths):
                message = message.replace(str(temp), str(target))
            raise StackError(message) from None
    # all temp files were renamed into place together when the block closed
    res.output = Path(output) if output else None
    res.depth_map_path = Path(depth_map) if depth_map else None
    res.confidence_map_path = Path(confidence_map) if confidence_map else None


def write_report(res: StackResult, path: str | os.PathLike, sources=None,
                 overwrite: bool = True) -> None:
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text(json.dumps(res.report(sources), indent=2), encoding="utf-8")
