"""``focusbridge meta ...`` and ``focusbridge lens ...``: ``register(subparsers)`` adds them.

Every sub-command sets ``func=<callable(args) -> int exit code>``. A failure of the whole run
is raised and reported by pybridge's command line like any other (pybridge/errors.py: one line
``focusbridge: error: <file>: <problem>``, exit 1; 130 when cancelled); per-file problems of a
batch that goes on are printed the same way.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from pathlib import Path

from pybridge.errors import EXIT_ERROR, EXIT_USAGE, print_failure, print_warning

from . import focus as _focus
from .tool import ExiftoolMissing

#: the exit status of a program that SIGPIPE ended, as a shell shows it (128 + 13)
EXIT_PIPE_CLOSED = 141

PROG = 'focusbridge'


def _err(msg: str, kind: str = 'error') -> None:
    """A per-file problem in a batch that goes on (the run's own failure is raised instead)."""
    (print_warning if kind == 'warning' else lambda m: print_failure(EXIT_ERROR, m))(msg)


def _command(func):
    """What every meta and lens command shares: a reader of its output that went away
    (``... | head -1``) ends it quietly, as it ends other programs; the exiftool install hint
    without the `stack` option ``--no-metadata``, which these commands do not have."""

    @functools.wraps(func)
    def command(args) -> int:
        try:
            code = func(args)
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return code
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for the final flush
            return EXIT_PIPE_CLOSED
        except ExiftoolMissing as e:
            raise ExiftoolMissing(e.problem.replace(' or pass --no-metadata', '')) from None

    return command


def _file_errors(rows: list[dict]) -> None:
    for r in rows:
        if 'error' in r:
            _err(f'{r["file"]}: {r["error"]}')


def _json_default(v):
    if isinstance(v, float) and math.isinf(v):
        return 'inf'
    if isinstance(v, Path):
        return str(v)
    return str(v)


def _clean(v):
    if isinstance(v, float) and math.isinf(v):
        return 'inf'
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


# ------------------------------------------------------------------------------------------------
# meta


def cmd_meta_merge(args) -> int:
    from .merge import StackInfo, merge_metadata, software_name

    sources = [Path(s) for s in args.sources]
    base = Path(args.base) if args.base else None
    if base is not None and base in sources:
        ref = sources.index(base)
    elif args.reference is not None:
        ref = args.reference
    else:
        ref = len(sources) // 2
    if not 0 <= ref < len(sources):
        _err(f'--reference {ref}: must be 0..{len(sources) - 1}')
        return EXIT_USAGE
    info = StackInfo(
        frame_count=len(sources), method=args.method, reference_index=ref, software=software_name()
    )
    report = merge_metadata(Path(args.output), sources, base, info)
    if args.json:
        print(json.dumps(_clean(vars(report)), default=_json_default))
    else:
        print(report.summary())
        for w in report.warnings:
            print(f'warning: {w}', file=sys.stderr)
        for w in report.validation_errors:
            print(f'validate error: {w}', file=sys.stderr)
    return 0


def cmd_meta_show(args) -> int:
    from .lens import format_table, show_lens

    rows = show_lens([Path(f) for f in args.files])
    _file_errors(rows)
    dists = [r.get('_distance') for r in rows]
    breaks = _focus.monotonic_breaks(dists)
    known = [d for d in dists if d is not None]
    near = min((r['_near'] for r in rows if r.get('_near') is not None), default=None)
    far = max((r['_far'] for r in rows if r.get('_far') is not None), default=None)
    if args.json:
        print(
            json.dumps(
                {
                    'frames': _clean([{k: v for k, v in r.items()} for r in rows]),
                    'near': _clean(near),
                    'far': _clean(far),
                    'non_monotonic': [rows[i]['file'] for i in breaks],
                }
            )
        )
    elif not all('error' in r for r in rows):
        for r in rows:
            if 'error' not in r:
                r['lens'] = r['lens model']
        print(format_table(rows, ['file', 'focus (m)', 'focus tag', 'lens', 'focal', 'f/']))
        if known:
            direction = ''
            if len(known) > 1 and known[0] != known[-1]:
                direction = ' (near to far)' if known[-1] > known[0] else ' (far to near)'
            print(
                f'focus range: {_focus.fmt_distance(near)} - '
                f'{_focus.fmt_distance(far)} m over {len(known)} of {len(rows)} '
                f'frames{direction}'
            )
        else:
            print('focus range: unknown (no frame carries a focus distance)')
        if breaks:
            print(
                'warning: focus order is not monotonic at '
                + ', '.join(f'frame {i + 1} ({Path(rows[i]["file"]).name})' for i in breaks)
            )
    return 1 if any('error' in r for r in rows) else 0


# ------------------------------------------------------------------------------------------------
# lens


def _spec_from_args(args):
    from .lens import lens_spec

    return lens_spec(
        args.preset,
        cli=True,
        make=args.make,
        model=args.model,
        focal_length=args.focal_length,
        aperture=args.aperture,
        lens_info=args.lens_info,
        serial=args.serial,
        canon_lens_type=args.canon_lens_type,
    )


def cmd_lens_set(args) -> int:
    from .lens import load_catalogue, set_lens
    from .undo import UndoStore

    if args.list_presets:
        for name, e in sorted(load_catalogue().items()):
            print(f'{name:22s} {e["model"]}  ({e.get("magnification", "")})')
        return 0
    if not args.files:
        _err('lens set: no files given')
        return EXIT_USAGE
    spec = _spec_from_args(args)
    store = UndoStore()
    try:
        report = set_lens(
            [Path(f) for f in args.files],
            spec,
            dry_run=args.dry_run,
            ignore_minor=args.ignore_minor_errors,
            store=store,
        )
    finally:
        _problems(store)
    for r in report.results:
        if not r.ok:
            _err(f'{r.path}: {r.error}')
            continue
        if args.dry_run:
            print(f'{r.path}: would change {len(r.changes)} tag(s)')
            for t, old, new in r.changes:
                print(f'  {t}: {"-" if old in (None, "") else old} -> {new}')
        else:
            print(
                f'{r.path}: updated ({len(r.changes)} tag(s) changed)'
                + ('' if r.undo_recorded else ', no change to undo')
            )
        if r.not_writable:
            print(
                f'  not writable (the file has no such maker-note field; exiftool never '
                f'creates them): {", ".join(r.not_writable)}'
            )
    n_bad = len(report.failed)
    if n_bad:
        print(f'{len(report.results) - n_bad} file(s) done, {n_bad} failed', file=sys.stderr)
    return 1 if n_bad else 0


def cmd_lens_show(args) -> int:
    from .lens import SHOW_COLUMNS, format_table, show_lens

    rows = show_lens([Path(f) for f in args.files])
    _file_errors(rows)
    if args.json:
        print(json.dumps(_clean(rows)))
    elif not all('error' in r for r in rows):
        print(format_table(rows, SHOW_COLUMNS))
    return 1 if any('error' in r for r in rows) else 0


def _problems(store) -> None:
    """What the undo store found left over by interrupted runs and could not settle."""
    for line in store.problems:
        _err(line, 'warning')


def cmd_lens_undo(args) -> int:
    from .lens import undo_lens
    from .undo import UndoStore

    store = UndoStore()
    bad = 0
    try:
        results = undo_lens([Path(f) for f in args.files], all_levels=args.all, store=store)
    finally:
        _problems(store)
    for r in results:
        if not r.ok:
            bad += 1
            _err(f'{r.path}: {r.error}')
        elif r.undone:
            print(f'{r.path}: restored ({r.undone} change(s) undone)')
        else:
            print(f'{r.path}: nothing to undo (no lens change recorded)')
    return 1 if bad else 0


# ------------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    """Add the ``meta`` and ``lens`` command groups to an argparse sub-parsers object."""
    meta = subparsers.add_parser(
        'meta',
        help='merged metadata on stacked images; focus per frame',
        description='Metadata of stacks and brackets.',
    )
    msub = meta.add_subparsers(dest='meta_command', metavar='{merge,show}')
    msub.required = True

    p = msub.add_parser('merge', help='write merged EXIF/XMP of the source frames onto an image')
    p.add_argument('output', metavar='OUTPUT', help='existing stacked image (TIFF, JPEG, PNG)')
    p.add_argument(
        '--sources',
        nargs='+',
        required=True,
        metavar='SRC',
        help='the original frames, in stacking order',
    )
    p.add_argument(
        '--base',
        metavar='SRC',
        help='frame whose tags are copied (default: the reference, else the middle)',
    )
    p.add_argument(
        '--reference',
        type=int,
        metavar='N',
        help='index of the alignment reference frame in --sources',
    )
    p.add_argument(
        '--method',
        default='unknown',
        help='stacking method to record (pyramid, depthmap; default unknown)',
    )
    p.add_argument('--json', action='store_true', help='print the report as JSON')
    p.set_defaults(func=_command(cmd_meta_merge))

    p = msub.add_parser('show', help="print each frame's focus distance and lens")
    p.add_argument('files', nargs='+', metavar='FILE')
    p.add_argument('--json', action='store_true')
    p.set_defaults(func=_command(cmd_meta_show))

    lens = subparsers.add_parser(
        'lens',
        help='batch lens metadata: set, show, undo',
        description='Lens metadata for manual and adapted lenses.',
    )
    lsub = lens.add_subparsers(dest='lens_command', metavar='{set,show,undo}')
    lsub.required = True

    p = lsub.add_parser('set', help='write lens metadata into many files (undoable)')
    p.add_argument('files', nargs='*', metavar='FILE')
    p.add_argument('--preset', metavar='NAME', help='lens from the catalogue (--list-presets)')
    p.add_argument('--make', help='lens make, e.g. "Venus Optics"')
    p.add_argument('--model', help='lens model, e.g. "Laowa 100mm f/2.8 2X Ultra Macro APO"')
    p.add_argument('--focal-length', metavar='MM')
    p.add_argument('--aperture', metavar='F', help='f-number used (FNumber)')
    p.add_argument(
        '--lens-info',
        metavar='SPEC',
        help='"minFocal maxFocal minF@min minF@max", e.g. "100 100 2.8 2.8"',
    )
    p.add_argument('--serial', help='lens serial number')
    p.add_argument(
        '--canon-lens-type',
        metavar='ID',
        help='Canon LensType id (only where the file has Canon maker notes)',
    )
    p.add_argument('--dry-run', action='store_true', help='print what would change, write nothing')
    p.add_argument(
        '--ignore-minor-errors',
        action='store_true',
        help="write files exiftool reports minor errors for (exiftool -m)",
    )
    p.add_argument('--list-presets', action='store_true', help='list the lens catalogue')
    p.set_defaults(func=_command(cmd_lens_set))

    p = lsub.add_parser('show', help='table of lens and focus tags')
    p.add_argument('files', nargs='+', metavar='FILE')
    p.add_argument('--json', action='store_true')
    p.set_defaults(func=_command(cmd_lens_show))

    p = lsub.add_parser('undo', help='restore the exact bytes from before `lens set`')
    p.add_argument('files', nargs='+', metavar='FILE')
    p.add_argument(
        '--all', action='store_true', help='undo every recorded rewrite, not just the last'
    )
    p.set_defaults(func=_command(cmd_lens_undo))


def main(argv=None) -> int:
    """``python -m exif meta|lens ...``: the same command line as ``focusbridge``."""
    from pybridge.cli import main as focusbridge_main

    return focusbridge_main(argv)
