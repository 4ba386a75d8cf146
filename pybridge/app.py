"""The application layer: the engine (pipeline.stack) composed with the metadata side (exif/).

The command line, run-job (the darktable plugin) and the Python API's `pybridge.stack` all come
here, so a stack means the same thing whichever way it is asked for. The engine never imports
exif/: metadata reaches the result through the engine's `before_commit` hook, inside the atomic
write, so the result appears with its metadata or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import shown
from .errors import FocusbridgeError, InputError, PathError, StackError
from .frames import check_regular
from .options import StackOptions
from .pipeline import FrameSource, StackResult, frame_list, resolve_reference
from .pipeline import stack as run_engine
from .progress import silent
from .retouch import ALIGNED_ROLE
from .write import software


@contextmanager
def _names_shown():
    """A failure names its file as `shown` writes it: a line break in the name came out as a
    space (every message is one line), a blank name as nothing at all."""
    try:
        yield
    except PathError as exc:
        if exc.path is not None and shown(exc.path) != str(exc.path):
            exc.args = (f"{shown(exc.path)}: {exc.problem}",)  # what str(exc) says
        raise


@_names_shown()
def stack(
    frames: Sequence[FrameSource],
    output: str | os.PathLike | None = None,
    options: StackOptions | None = None,
    *,
    depth_map: str | os.PathLike | bool | None = None,
    confidence_map: str | os.PathLike | bool | None = None,
    aligned_frames: str | os.PathLike | None = None,
    layers: str | os.PathLike | None = None,
    metadata: bool | None = None,
    sources: Sequence[str | os.PathLike] | None = None,
    base: str | os.PathLike | None = None,
    also_writes: Sequence[tuple[str, Path]] = (),
    progress: Callable[..., None] = silent,
    cancel: Callable[[], bool] | None = None,
    **option_values,
) -> StackResult:
    """Stack a focus bracket and give the result its sources' metadata.

    `frames`, `output`, `options` (or their names as keywords), `depth_map`, `confidence_map`,
    `layers`, `progress`, `cancel`: as pipeline.stack. `aligned_frames`: a folder for every
    frame registered onto the result, each named after its source and carrying its source's
    metadata (docs/retouch.md). `metadata`: copy the sources' EXIF/XMP onto the output and the
    aligned frames (None: when the inputs carry any; needs exiftool). `sources`: the original
    files to take metadata (and the aligned frames' names) from when `frames` are derived
    copies (darktable's exports), one per frame. `base`: the file whose tags the result
    inherits (default: the reference frame's source). `also_writes`: (role, path) of files the
    caller will write after the stack (a report), checked up front with the outputs.
    """
    opts = StackOptions.merged(options, option_values)
    frames = frame_list(frames)
    explicit = sources is not None
    meta_sources = (
        [Path(s) for s in sources]
        if explicit
        else [Path(f) for f in frames if not isinstance(f, np.ndarray)]
    )
    reads = [("metadata source", s) for s in meta_sources if explicit]
    reads += [("metadata base", Path(base))] if base else []
    merge = frame_merge = None
    with ExitStack() as cleanup:
        if (
            (output is not None or aligned_frames is not None)
            and metadata is not False
            and (explicit or len(meta_sources) == len(frames))
        ):
            _check_metadata_sources(meta_sources, base, len(frames), explicit)
            if _copy_wanted(meta_sources, bool(metadata)):
                if output is not None:
                    merge = _metadata_hook(meta_sources, base, opts, len(frames), progress)
                if aligned_frames is not None:
                    frame_merge = _frame_metadata_hook(meta_sources, cleanup)
        result = run_engine(
            frames,
            output,
            opts,
            depth_map=depth_map,
            confidence_map=confidence_map,
            aligned_frames=aligned_frames,
            aligned_names=meta_sources if explicit else None,
            layers=layers,
            before_commit=merge,
            before_commit_frame=frame_merge,
            also_reads=reads,
            also_writes=also_writes,
            progress=progress,
            cancel=cancel,
        )
    result.metadata_written = merge is not None  # the result's (aligned frames: their own)
    return result


def _check_metadata_sources(sources: Sequence[Path], base, count: int, explicit: bool) -> None:
    """The metadata inputs exist and can be named to exiftool, before the heavy work. Without
    `explicit` sources the frames are their own: a frame that is no file is said as the
    reader says it (no role: it is a frame, as with --no-metadata)."""
    if explicit and len(sources) != count:
        raise StackError(f"--sources names {len(sources)} files for {count} frames")
    for role, path in [("metadata source" if explicit else "frame", s) for s in sources] + (
        [("metadata base", Path(base))] if base else []
    ):
        if role == "frame":
            check_regular(path)
        elif not path.is_file():
            raise InputError(
                path,
                f"no such file ({role})"
                if not path.exists()
                else f"is not a regular file ({role})",
            )
        if "\n" in str(path) or "\r" in str(path):
            raise InputError(
                path,
                f"line breaks in file names are not supported by exiftool "
                f"({role}); rename it or pass --no-metadata",
            )


def _copy_wanted(sources: Sequence[Path], required: bool) -> bool:
    """Is there metadata to copy? Fails now (before the heavy work) if exiftool is needed and
    missing. In "when there is some" mode a cheap header check needs no exiftool, so a
    bracket without metadata (synthetic, scanned) stacks on a machine that lacks it."""
    from exif.merge import sources_have_metadata
    from exif.tool import require_exiftool

    if not required and not sources_have_metadata(sources):
        return False
    require_exiftool()
    return True


def _metadata_hook(
    sources: list[Path], base, opts: StackOptions, count: int, progress
) -> Callable[[Path], None]:
    """The merge the engine runs on the written result before committing it."""
    from exif.merge import StackInfo, merge_metadata

    ref = resolve_reference(opts.reference, count)
    info = StackInfo(
        frame_count=count,
        method=opts.method,
        reference_index=ref,
        software=f"focusbridge {__version__}",
    )
    base_path = Path(base) if base else sources[ref]

    def merge(temp_result: Path) -> None:
        progress("metadata", count=count, fraction=0.98)
        merge_metadata(temp_result, sources, base_path, info)

    return merge


def _frame_metadata_hook(sources: list[Path], cleanup: ExitStack) -> Callable[[Path, int], None]:
    """Each aligned frame gets its own source's tags (one exiftool process for all of them,
    started with the first and ended by `cleanup`)."""
    from exif.merge import copy_metadata
    from exif.tool import open_exiftool

    tool = []

    def merge(temp_frame: Path, index: int) -> None:
        if not tool:
            tool.append(cleanup.enter_context(open_exiftool()))
        copy_metadata(
            temp_frame,
            sources[index],
            derivation="registered and resampled onto the reference frame of a focus stack",
            software=software(ALIGNED_ROLE),
            exiftool=tool[0],
        )

    return merge


@_names_shown()
def retouch(
    result: str | os.PathLike,
    frame: str | os.PathLike,
    mask: str | os.PathLike,
    output: str | os.PathLike,
    *,
    feather: float = 0.0,
    overwrite: bool = False,
    metadata: bool | None = None,
) -> Path:
    """Paint an aligned `frame` into `result` through `mask` (pybridge.retouch.retouch) and
    keep the result's metadata on `output` (None: when it carries any; needs exiftool)."""
    from .retouch import retouch as paint_in

    hook = None
    if metadata is not False and _copy_wanted([Path(result)], bool(metadata)):
        from exif.merge import copy_metadata

        def hook(temp: Path) -> None:
            copy_metadata(
                temp,
                Path(result),
                derivation=f"retouched: {Path(frame).name} painted in through {Path(mask).name}",
                software=f"focusbridge {__version__}",
                keep_provenance=True,
            )

    return paint_in(
        result, frame, mask, output, feather=feather, overwrite=overwrite, before_commit=hook
    )


__all__ = ["stack", "retouch", "StackResult", "StackOptions", "FocusbridgeError"]
