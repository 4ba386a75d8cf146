"""The `focusbridge` command line: stack, demo, run-job, and (from exif/) meta and lens."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__, signals
from .errors import Cancelled, StackError, one_line

EXIT_ERROR = 1
EXIT_CANCELLED = 130

_STACK_EPILOG = """\
examples:
  focusbridge stack IMG_*.CR3 -o stacked.tif
  focusbridge stack frames/*.tif -o out.tif --method depthmap --depth-map --crop
  focusbridge stack exported/*.tif -o out.tif --sources originals/*.NEF

Frames are stacked in the order given (near to far or far to near, either works).
"""


def _add_stack_options(p: argparse.ArgumentParser) -> None:
    from .frames import DEFAULT_MAX_PIXELS
    p.add_argument("frames", nargs="+", metavar="FRAME",
                   help="input frames: RAW (any format LibRaw reads), TIFF (8/16-bit, float), "
                        "JPEG or PNG, in focus order")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="result file; the extension picks the format: .tif/.tiff 16-bit TIFF "
                        "(recommended), .png 16-bit PNG, .jpg 8-bit JPEG")
    p.add_argument("--method", choices=("pyramid", "depthmap"), default="pyramid",
                   help="fusion method. pyramid (default): Laplacian-pyramid maximum-contrast "
                        "fusion, best for fine detail (hair, bristles, crossing structures). "
                        "depthmap: pick the sharpest frame per region with feathered seams, "
                        "best for smooth surfaces and colour fidelity, and faster")
    p.add_argument("--no-align", dest="align", action="store_false",
                   help="skip alignment, for stacks that are already registered (microscope "
                        "focus knob, previously aligned exports)")
    p.add_argument("--align-model", choices=("similarity", "affine", "homography", "translation"),
                   default="similarity",
                   help="alignment model. similarity (default): shift, rotation and scale, "
                        "which covers focus breathing; affine/homography: also shear/"
                        "perspective, for tilted rails; translation: shift only")
    p.add_argument("--interpolation", choices=("cubic", "lanczos", "linear"), default="cubic",
                   help="how frames are resampled onto the reference: cubic (default), "
                        "lanczos (keeps more of the finest texture, about 30 %% slower), "
                        "linear (fastest, softest)")
    p.add_argument("--reference", default="middle", metavar="REF",
                   help="frame the others are aligned to: middle (default), first, last, or a "
                        "frame number counted from 0 (negative counts from the end)")
    p.add_argument("--no-gain", dest="match_gain", action="store_false",
                   help="don't match brightness and colour between frames (on by default: it "
                        "removes flicker from flash or LED light)")
    p.add_argument("--no-halo-suppression", dest="halo_suppression", action="store_false",
                   help="pyramid method only: let coarse pyramid levels choose by contrast too "
                        "(classic PMax). Default is on, which avoids bright/dark halos around "
                        "foreground edges")
    p.add_argument("--crop", action="store_true",
                   help="crop to the area every frame covers; default keeps the reference "
                        "frame's size, filling the borders from the frames that reach them")
    p.add_argument("--depth-map", nargs="?", const="auto", metavar="PATH",
                   help="also write a 16-bit depth map of which frame was sharpest: black = "
                        "first frame, white = last; frame = round(value * (frames-1) / 65535). "
                        "Without PATH: OUT_depth.tif")
    p.add_argument("--confidence-map", nargs="?", const="auto", metavar="PATH",
                   help="also write a 16-bit confidence map (how clearly the sharpest frame "
                        "won). Without PATH: OUT_confidence.tif")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=16,
                   help="bits per sample of TIFF/PNG output (default 16; JPEG is always 8)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--max-pixels", type=_megapixels, default=None, metavar="MP",
                   help="refuse frames larger than MP megapixels, checked from the file header "
                        "before decoding (default %d; 0: no limit)" % (DEFAULT_MAX_PIXELS // 10**6))
    p.add_argument("--no-metadata", dest="metadata", action="store_false", default=None,
                   help="don't copy EXIF/XMP from the sources onto the result (copied by "
                        "default when the inputs carry metadata; needs exiftool)")
    p.add_argument("--sources", nargs="+", metavar="SRC",
                   help="original files to take metadata from, one per frame in the same order, "
                        "when the frames are derived copies (e.g. darktable's exported TIFFs of "
                        "CR3/NEF originals)")
    p.add_argument("--base", metavar="SRC",
                   help="file whose tags (camera, exposure, maker notes) the result inherits; "
                        "default: the source of the reference frame")
    p.add_argument("--report", metavar="JSON",
                   help="write a JSON report with each frame's transform (scale, rotation, "
                        "shift, gain) and the outputs")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto",
                   help="auto (default): a bar when run in a terminal; json: one JSON object "
                        "per line on stdout (phase, frame, count, fraction) for programs")


def _megapixels(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of megapixels, not {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of megapixels >= 0, not {text!r}")
    return int(value * 10**6)


def _side_path(output: Path, value: str | None, suffix: str) -> Path | None:
    from .pipeline import side_path
    if value is None:
        return None
    if value == "auto":
        return side_path(output, suffix)
    return Path(value)


def cmd_stack(args) -> int:
    from .pipeline import check_outputs, read_paths, stack, write_report
    from .progress import choose

    output = Path(args.output)
    progress = choose(args.progress)
    depth_map = _side_path(output, args.depth_map, "depth")
    confidence_map = _side_path(output, args.confidence_map, "confidence")
    if args.report:
        # the report is written after the stack: check it now against everything else
        writes = [(role, p) for role, p in (("result", output), ("depth map", depth_map),
                                            ("confidence map", confidence_map),
                                            ("--report", Path(args.report))) if p is not None]
        check_outputs(writes, read_paths(args.frames, args.sources, args.base), args.overwrite)
    result = stack(
        args.frames, output, method=args.method,
        align=args.align_model if args.align else False, reference=args.reference,
        match_gain=args.match_gain, interpolation=args.interpolation,
        halo_suppression=args.halo_suppression, crop=args.crop,
        depth_map=depth_map, confidence_map=confidence_map,
        bit_depth=args.bit_depth, overwrite=args.overwrite, metadata=args.metadata,
        sources=args.sources, base=args.base, max_pixels=args.max_pixels, progress=progress)
    if args.report:
        write_report(result, args.report, args.frames, overwrite=args.overwrite)
    for warning in result.warnings:
        print(f"focusbridge: warning: {warning}", file=sys.stderr)
    progress("done", fraction=1.0, output=str(result.output),
             depth_map=str(result.depth_map_path) if result.depth_map_path else None)
    if args.progress != "json":
        print(f"wrote {result.output}")
    note_late_cancel()
    return 0


def note_late_cancel() -> None:
    if signals.cancel_held():
        print("focusbridge: the cancel came while the result was being written; it was "
              "finished instead", file=sys.stderr)


def sample_bracket() -> list[Path]:
    folder = Path(__file__).parent / "sample" / "ring6"
    return sorted(folder.glob("step*.jpg"))


def cmd_demo(args) -> int:
    from .pipeline import stack, write_report
    from .progress import choose

    frames = sample_bracket()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "ring6_stacked.tif"
    depth = out_dir / "ring6_depth.tif"
    print(f"stacking the bundled sample bracket ({len(frames)} frames of a diamond ring, "
          f"Apache-2.0, {frames[0].parent})")
    result = stack(frames, output, depth_map=depth, overwrite=True, metadata=False,
                   progress=choose(args.progress))
    write_report(result, out_dir / "ring6_report.json", [str(f) for f in frames])
    print(f"result:    {result.output.resolve()}")
    print(f"depth map: {result.depth_map_path.resolve()}")
    print(f"report:    {(out_dir / 'ring6_report.json').resolve()}")
    print(f"time:      {result.timings['total']:.2f} s")
    return 0


def cmd_run_job(args) -> int:
    from .job import run_job
    return run_job(Path(args.manifest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="focusbridge",
        description="Focus stacking for macro and microscope brackets: RAW/16-bit in, 16-bit "
                    "out, metadata kept. Use `focusbridge COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"focusbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stack", help="stack a focus bracket into one image",
                       description="Align and fuse a focus bracket into one all-in-focus image.",
                       epilog=_STACK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_stack_options(p)
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("demo", help="stack the bundled sample bracket and say where the result is")
    p.add_argument("--output-dir", default="focusbridge-demo",
                   help="folder for the results (default: ./focusbridge-demo)")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto",
                   help="progress display, as for stack")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run-job", help="run a job described by a JSON manifest (used by the "
                                       "darktable plugin, so no file name is on a command line)")
    p.add_argument("manifest", help="path of the JSON job manifest (see docs/ARCHITECTURE.md)")
    p.set_defaults(func=cmd_run_job)

    try:
        from exif.cli import register
    except ImportError:  # pragma: no cover - exif is part of the same distribution
        register = None
    if register is not None:
        register(sub)
    return parser


def describe_failure(exc: BaseException) -> tuple[int | None, str]:
    """Exit status and one-line message for anything that ends a run; (None, '') for what
    should propagate (SystemExit, or any error when FOCUSBRIDGE_DEBUG is set)."""
    if isinstance(exc, (Cancelled, KeyboardInterrupt)):
        return EXIT_CANCELLED, "cancelled"
    if isinstance(exc, StackError):
        return EXIT_ERROR, str(exc)
    if isinstance(exc, OSError):  # disk full, permissions changed under us...
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_ERROR, f"{where}{one_line(exc.strerror or exc)}"
    if isinstance(exc, Exception) and not os.environ.get("FOCUSBRIDGE_DEBUG"):
        # a bug: still one line; FOCUSBRIDGE_DEBUG=1 shows the traceback
        return EXIT_ERROR, (f"internal error: {type(exc).__name__}: {one_line(exc)} "
                            f"(set FOCUSBRIDGE_DEBUG=1 for details)")
    return None, ""


def print_failure(code: int, message: str) -> None:
    kind = "" if code == EXIT_CANCELLED else "error: "
    print(f"focusbridge: {kind}{message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (a parent stopping us) cleans up like Ctrl-C: temp files go, nothing half-written
    signals.install()
    # a file name that is not UTF-8 is printed with escapes rather than failing to print
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BaseException as exc:
        code, message = describe_failure(exc)
        if code is None:
            raise
        print_failure(code, message)
        return code


if __name__ == "__main__":
    sys.exit(main())
