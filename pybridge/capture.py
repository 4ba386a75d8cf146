"""`focusbridge plan` and `focusbridge check`: capture planning and the check of a shot bracket.

The application layer of `plan.py` (optics arithmetic) and `check.py` (the engine's quick
look at a bracket): their command lines, and for `check` the frames' focus distances, read
with exiftool (exif/focus.py) when it is installed and some frame has metadata to read (a
header look: EXIF, XMP, text chunks, a camera RAW), alongside the check's pixel pass.
`register(subparsers)` adds both commands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .errors import OptionError, print_warning
from .plan import PlanOptions

_PLAN_EPILOG = """\
examples:
  focusbridge plan --magnification 1 --aperture 16 --coc 0.03
  focusbridge plan --magnification 2 --aperture 8 --sensor aps-c --depth-mm 4
  focusbridge plan --magnification 2 --aperture 22 --effective-aperture --depth-mm 4 --csv
  focusbridge plan --magnification 10 --na 0.28 --depth-mm 0.5 --json

effective aperture N_eff = N (1 + m/P) (or m / (2 NA)); depth of field, wave optics
4 lambda N_eff^2 / m^2 (= lambda / NA^2), classic 2 c N_eff / m^2; step = (1 - overlap) x
wave-optics DOF; frames = ceil(depth / step) + 1. See docs/capture.md.
"""

_CHECK_EPILOG = """\
examples:
  focusbridge check IMG_*.CR3
  focusbridge check exported/*.tif --map coverage.png
  focusbridge check frames/*.jpg --json

Frame numbers are counted from 0 in the order given. The check works on frames scaled to
half their size, 750 to 1000 px (frames up to 1250 px as they are; --long-side), so it sees
gaps of at least a few pixels' blur at that size.
See docs/capture.md.
"""


_CSV_HELP = (
    "print the rail positions in µm, one a line from 0, for a rail controller (needs --depth-mm)"
)
_MAP_HELP = (
    "also write a quick stacked preview with the areas sharp in no frame tinted red "
    "(.png, .tif or .jpg)"
)


def _command(subparsers, name, func, summary, description, epilog):
    p = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def register(subparsers) -> None:
    p = _command(
        subparsers,
        "plan",
        cmd_plan,
        "depth of field, focus step and frame count for a macro or microscope bracket",
        "Plan a focus bracket: effective aperture, depth of field (wave optics and "
        "classic), the focus step, the number of frames and the rail positions, and where "
        "diffraction starts to cost resolution.",
        _PLAN_EPILOG,
    )
    PlanOptions.add_arguments(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the plan as JSON")
    out.add_argument("--csv", action="store_true", help=_CSV_HELP)

    p = _command(
        subparsers,
        "check",
        cmd_check,
        "check a shot bracket for gaps, wasted frames, order, duplicates, exposure jumps "
        "and subject motion",
        "A quick look at a focus bracket before stacking it: where part of the scene is "
        "sharp in no frame (a gap between two frames), frames that are the sharpest "
        "nowhere, frames out of focus order, duplicates, exposure jumps and subject motion.",
        _CHECK_EPILOG,
    )
    p.add_argument("frames", nargs="+", metavar="FRAME", help="the bracket's frames, in order")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--map", metavar="PATH", help=_MAP_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --map file")
    p.add_argument(
        "--long-side",
        type=int,
        default=None,
        metavar="PX",
        help="size the frames are checked at (default: frames up to 1250 px as they are, "
        "larger ones at half size, 750..1000; larger sees smaller gaps, slower)",
    )


def cmd_plan(args) -> int:
    from .plan import make_plan, rail_csv

    plan = make_plan(PlanOptions.from_args(args))
    if args.json:  # allow_nan=False: JSON, never Infinity (the ranges keep numbers finite)
        print(json.dumps(plan.to_json(), indent=2, ensure_ascii=False, allow_nan=False))
        return 0
    if args.csv:
        sys.stdout.write(rail_csv(plan))
    else:
        for line in plan.summary_lines():
            print(line)
    for warning in plan.warnings:
        print_warning(warning)
    return 0


def cmd_check(args) -> int:
    if args.long_side is not None and not 64 <= args.long_side <= 20000:
        raise OptionError("--long-side", f"must be 64..20000 px, not {args.long_side}")
    result = check_with_distances(
        args.frames,
        coverage_map=args.map,
        overwrite=args.overwrite,
        long_side=args.long_side,
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        for line in result.summary_lines():
            print(line)
    return 0


def check_with_distances(frames, sources=None, **options):
    """check.check_bracket(frames, **options) with the focus distances of `sources` (default:
    the frames) read by exiftool alongside the pixel pass, and its note when they cannot be."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="check-exif") as pool:
        reading = pool.submit(focus_distances, list(sources or frames))
        from .check import check_bracket  # the engine loads while exiftool starts

        result = check_bracket(frames, distances=lambda: reading.result()[0], **options)
        note = reading.result()[1]
    if note:
        result.notes.append(note)
    return result


def focus_distances(frames: list[str]) -> tuple[list[float | None] | None, str | None]:
    """Each frame's focus distance in metres (None where the file has none) from its EXIF or
    maker notes, and a note when they could not be read at all. Frames without metadata
    (exported or generated TIFF, PNG or JPEG files) carry none: exiftool is not asked about
    those (nor about what is no regular file: a named pipe would block it)."""
    from .headers import may_carry_metadata

    asked = [f for f in frames if may_carry_metadata(f)]
    if not asked:
        return None, None
    try:
        from exif.focus import FOCUS_TAGS, focus_reading
        from exif.tool import ExifError, find_exiftool, open_exiftool, read_json
    except ImportError:  # pragma: no cover - exif is part of the same distribution
        return None, None
    if not find_exiftool():
        return None, "exiftool is not installed, so focus distances were not read"
    try:
        with open_exiftool() as et:
            data, _ = read_json(et, asked, FOCUS_TAGS)
    except ExifError as exc:
        return None, f"focus distances not read ({exc})"
    readings = [focus_reading(data.get(os.path.abspath(f)) or {}) for f in frames]
    distances = [r.distance if r.known and math.isfinite(r.distance) else None for r in readings]
    return (distances if any(d is not None for d in distances) else None), None
