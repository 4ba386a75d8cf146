"""The `focusbridge` command line: stack, demo, run-job, and (from exif/) meta and lens."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import memory, signals
from .atomic import file_path, shown
from .errors import OutputError, describe_failure, print_failure, print_warning
from .options import StackOptions, StackOutputOptions

_STACK_EPILOG = """\
examples:
  focusbridge stack IMG_*.CR3 -o stacked.tif
  focusbridge stack frames/*.tif -o out.tif --method depthmap --depth-map --crop
  focusbridge stack exported/*.tif -o out.tif --sources originals/*.NEF

Frames are stacked in the order given (near to far or far to near, either works).
"""


def _add_stack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "frames",
        nargs="+",
        metavar="FRAME",
        help="input frames: RAW (any format LibRaw reads), TIFF (8/16-bit, float), "
        "JPEG or PNG, in focus order",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="result file; the extension picks the format: .tif/.tiff 16-bit TIFF "
        "(recommended), .png 16-bit PNG, .jpg 8-bit JPEG",
    )
    StackOptions.add_arguments(p)
    StackOutputOptions.add_arguments(p)  # --aligned-frames DIR, --layers ORA
    # what the application writes around the result: on the command line these are paths
    p.add_argument(
        "--depth-map",
        nargs="?",
        const="auto",
        metavar="PATH",
        help="also write a 16-bit depth map of which frame was sharpest: black = "
        "first frame, white = last; frame = round(value * (frames-1) / 65535). "
        "Without PATH: OUT_depth.tif",
    )
    p.add_argument(
        "--confidence-map",
        nargs="?",
        const="auto",
        metavar="PATH",
        help="also write a 16-bit confidence map (how clearly the sharpest frame "
        "won). Without PATH: OUT_confidence.tif",
    )
    p.add_argument(
        "--no-metadata",
        dest="metadata",
        action="store_false",
        default=None,
        help="don't copy EXIF/XMP from the sources onto the result (copied by "
        "default when the inputs carry metadata; needs exiftool)",
    )
    p.add_argument(
        "--sources",
        nargs="+",
        metavar="SRC",
        help="original files to take metadata from, one per frame in the same order, "
        "when the frames are derived copies (e.g. darktable's exported TIFFs of "
        "CR3/NEF originals)",
    )
    p.add_argument(
        "--base",
        metavar="SRC",
        help="file whose tags (camera, exposure, maker notes) the result inherits; "
        "default: the source of the reference frame",
    )
    p.add_argument(
        "--report",
        metavar="JSON",
        help="write a JSON report with each frame's transform (scale, rotation, "
        "shift, gain) and the outputs",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "json", "none"),
        default="auto",
        help="auto (default): a bar when run in a terminal; json: one JSON object "
        "per line on stdout (phase, frame, count, fraction) for programs",
    )


def _side_path(output: Path, value: str | None, suffix: str) -> Path | None:
    from .pipeline import side_path

    if value is None:
        return None
    if value == "auto":
        return side_path(output, suffix)
    return file_path(value)


def cmd_stack(args) -> int:
    from .app import stack
    from .pipeline import write_report
    from .progress import choose

    output = file_path(args.output)
    progress = choose(args.progress)
    report = [("--report", file_path(args.report))] if args.report else []
    outputs = StackOutputOptions.from_args(args)
    result = stack(
        args.frames,
        output,
        StackOptions.from_args(args),
        depth_map=_side_path(output, args.depth_map, "depth"),
        confidence_map=_side_path(output, args.confidence_map, "confidence"),
        aligned_frames=outputs.aligned_frames,
        layers=file_path(outputs.layers) if outputs.layers else None,
        metadata=args.metadata,
        sources=args.sources,
        base=args.base,
        also_writes=report,
        progress=progress,
    )
    if args.report:  # checked with the outputs before the stack began
        write_report(result, args.report, args.frames, overwrite=args.overwrite)
    for warning in result.warnings:
        print_warning(warning)
    progress(
        "done",
        fraction=1.0,
        output=str(result.output),
        depth_map=str(result.depth_map_path) if result.depth_map_path else None,
    )
    if args.progress != "json":
        print(f"wrote {result.output}")
    signals.note_late_cancel()
    return 0


def sample_bracket() -> list[Path]:
    folder = Path(__file__).parent / "sample" / "ring6"
    return sorted(folder.glob("step*.jpg"))


def cmd_demo(args) -> int:
    from .app import stack
    from .pipeline import write_report
    from .progress import choose

    frames = sample_bracket()
    if not args.output_dir:  # Path("") is the current folder
        raise OutputError(shown(args.output_dir), "names no folder (--output-dir)")
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(out_dir, "is not a folder (--output-dir)")
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "ring6_stacked.tif"
    depth = out_dir / "ring6_depth.tif"
    print(
        f"stacking the bundled sample bracket ({len(frames)} frames of a diamond ring, "
        f"Apache-2.0, {frames[0].parent})"
    )
    result = stack(
        frames,
        output,
        depth_map=depth,
        overwrite=True,
        metadata=False,
        progress=choose(args.progress),
    )
    write_report(result, out_dir / "ring6_report.json", [str(f) for f in frames])
    print(f"result:    {result.output.resolve()}")
    print(f"depth map: {result.depth_map_path.resolve()}")
    print(f"report:    {(out_dir / 'ring6_report.json').resolve()}")
    print(f"time:      {result.timings['total']:.2f} s")
    return 0


def cmd_retouch(args) -> int:
    from .app import retouch

    out = retouch(
        args.result,
        args.frame,
        args.mask,
        args.output,
        feather=args.feather,
        overwrite=args.overwrite,
        metadata=args.metadata,
    )
    print(f"wrote {out}")
    return 0


def _add_retouch(sub) -> None:
    p = sub.add_parser(
        "retouch",
        help="paint an aligned frame into a stacked result through a mask",
        description="Paint FRAME (an aligned frame from `stack --aligned-frames`) into RESULT "
        "where MASK is white (grey blends, black keeps RESULT exactly); all three must have "
        "one size. See docs/retouch.md.",
    )
    p.add_argument("result", metavar="RESULT", help="the stacked result")
    p.add_argument("--from", dest="frame", required=True, metavar="FRAME", help="aligned frame")
    p.add_argument("--mask", required=True, metavar="MASK", help="grey mask: white = FRAME")
    p.add_argument(
        "--feather", type=float, default=0.0, metavar="PX", help="soften the mask edge (px)"
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the retouched result")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument(
        "--no-metadata",
        dest="metadata",
        action="store_false",
        default=None,
        help="don't copy RESULT's EXIF/XMP onto OUT (copied by default; needs exiftool)",
    )
    p.set_defaults(func=cmd_retouch)


def cmd_run_job(args) -> int:
    from .job import run_job

    return run_job(Path(args.manifest))


def _gap_seconds(text: str) -> float:
    """--gap of brackets and batch: seconds, finite and over 0 (at 0 every frame is alone)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a finite number of seconds > 0 (a pause longer than this splits a "
            f"bracket), not {text!r}"
        )
    return value


class _Version(argparse.Action):
    """argparse's version action, with the version looked up only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__

        parser._print_message(f"focusbridge {__version__}\n", sys.stdout)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="focusbridge",
        description="Focus stacking for macro and microscope brackets: RAW/16-bit in, 16-bit "
        "out, metadata kept. Use `focusbridge COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "stack",
        help="stack a focus bracket into one image",
        description="Align and fuse a focus bracket into one all-in-focus image.",
        epilog=_STACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_stack_options(p)
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("demo", help="stack the bundled sample bracket and say where the result is")
    p.add_argument(
        "--output-dir",
        default="focusbridge-demo",
        help="folder for the results (default: ./focusbridge-demo)",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "json", "none"),
        default="auto",
        help="progress display, as for stack",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "run-job",
        help="run a job described by a JSON manifest (used by the "
        "darktable plugin, so no file name is on a command line)",
    )
    p.add_argument("manifest", help="path of the JSON job manifest (see docs/ARCHITECTURE.md)")
    p.set_defaults(func=cmd_run_job)
    _add_retouch(sub)

    from .batch import register as register_batch

    register_batch(sub)  # brackets, batch
    for command in ("brackets", "batch"):
        for action in sub.choices[command]._actions:
            if action.dest == "gap":
                action.type = _gap_seconds

    from .capture import register as register_capture

    register_capture(sub)  # plan, check

    try:
        from exif.cli import register
    except ImportError:  # pragma: no cover - exif is part of the same distribution
        register = None
    if register is not None:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (a parent stopping us) cleans up like Ctrl-C: temp files go, nothing half-written
    signals.install()
    # a file name that is not UTF-8 is printed with escapes rather than failing to print
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if argv is None:  # the program itself: malloc tuned for frame-sized arrays
        memory.reuse_freed_memory()
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)
        if argv is None:  # the program itself (not a caller in-process): its work is over
            signals.finished()
        return code
    except BaseException as exc:
        code, message = describe_failure(exc)
        if code is None:
            raise
        print_failure(code, message)
        if argv is None:  # decided too: a second Ctrl-C or SIGTERM while the interpreter shuts
            signals.finished()  # down would kill it, with no exit status of ours (-15, -2)
        return code


if __name__ == "__main__":
    sys.exit(main())
