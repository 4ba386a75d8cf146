"""Batch lens rewriting with dry-run and undo (``focusbridge lens set|show|undo``).

One exiftool process for the batch: a read call for every file, write calls of up to
:data:`BATCH` files that get the same arguments, a read-back call to verify.  exiftool edits
copies of the files in the undo store (:mod:`exif.undo`), which then writes the edited bytes
into each photo in place (no ``FILE_original`` or temporary file beside it; symlinks and hard
links keep pointing at it), journalled first, so an interrupted run never loses an original.
Only metadata is written: pixel data is never touched.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from . import focus as _focus
from .tool import (
    ExifCancelled,
    ExifError,
    check_arg,
    fname,
    interrupt,
    maybe_exiftool,
    one_line,
    read_json,
    run,
    tag,
)
from .undo import Run, UndoStore

CATALOGUE = Path(__file__).with_name('lenses.json')

#: files per exiftool write call: a cancel waits for at most one batch, and at most one batch of
#: originals is copied into the undo store at a time
BATCH = 16

#: what `lens set` takes, smallest and largest: focal lengths in mm (a 200x microscope objective
#: on a 200 mm tube lens is 1 mm; telescopes reach metres), f-numbers (0.5 is the limit of a lens
#: in air; pinholes reach the thousands)
FOCAL_RANGE = (0.1, 100000.0)
APERTURE_RANGE = (0.5, 10000.0)
CANON_LENS_TYPE_RANGE = (0, 65535)  # an int16u in the maker notes


@dataclass
class LensSpec:
    make: str | None = None
    model: str | None = None
    focal_length: float | None = None  # mm, written as FocalLength
    aperture: float | None = None  # f-number, written as FNumber
    lens_info: str | None = None  # 'minFL maxFL minFN@minFL minFN@maxFL' (undef allowed)
    serial: str | None = None
    canon_lens_type: int | None = None  # Canon LensType id (maker notes only)

    def is_empty(self) -> bool:
        return all(v is None for v in vars(self).values())

    def merged(self, other: LensSpec) -> LensSpec:
        """``other``'s set fields override this spec's."""
        return LensSpec(
            **{k: (v if v is not None else getattr(self, k)) for k, v in vars(other).items()}
        )


# ------------------------------------------------------------------------------------------------
# catalogue


def load_catalogue() -> dict[str, dict]:
    return json.loads(CATALOGUE.read_text('utf-8'))['lenses']


def preset(name: str) -> LensSpec:
    cat = load_catalogue()
    key = name.strip().lower()
    if key not in cat:
        raise ExifError(f'unknown lens preset {name!r}; known presets: ' + ', '.join(sorted(cat)))
    e = cat[key]
    return LensSpec(
        make=e.get('make'),
        model=e.get('model'),
        focal_length=e.get('focal_length'),
        aperture=e.get('aperture'),
        lens_info=format_lens_info(e['lens_info']) if e.get('lens_info') else None,
        canon_lens_type=e.get('canon_lens_type'),
    )


def lens_spec(preset_name: str | None = None, *, cli: bool = False, **fields) -> LensSpec:
    """What `lens set` writes, from a catalogue preset and/or single fields (the command line
    and run-job both come here, so one input writes the same tags). `lens_info` may be text
    or a list; without it a focal length gives LensInfo 'f f undef undef' (a prime).  Numbers
    may be given as text.  Every value is checked here, before anything is written: an
    ExifError names the field (as its command-line option with ``cli``)."""
    spec = preset(preset_name) if preset_name else LensSpec()
    given = {k: v for k, v in fields.items() if v not in (None, '')}

    def name(key: str) -> str:
        return '--' + key.replace('_', '-') if cli else key

    if 'focal_length' in given:
        given['focal_length'] = _number(
            name('focal_length'), given['focal_length'], FOCAL_RANGE, 'a focal length in mm'
        )
    if 'aperture' in given:
        given['aperture'] = _number(
            name('aperture'), given['aperture'], APERTURE_RANGE, 'an f-number'
        )
    if 'canon_lens_type' in given:
        what = 'a Canon LensType id (a whole number)'
        lens_type = _number(
            name('canon_lens_type'), given['canon_lens_type'], CANON_LENS_TYPE_RANGE, what
        )
        if lens_type != int(lens_type):
            raise ExifError(
                f'{name("canon_lens_type")} {given["canon_lens_type"]}: expected {what}'
            )
        given['canon_lens_type'] = int(lens_type)
    if 'lens_info' in given:
        given['lens_info'] = format_lens_info(given['lens_info'], name('lens_info'))
    spec = spec.merged(LensSpec(**given))
    if spec.lens_info is None and spec.focal_length is not None:
        spec.lens_info = format_lens_info([spec.focal_length, spec.focal_length, 'undef', 'undef'])
    return spec


def _number(name: str, value, limits: tuple[float, float], what: str) -> float:
    """``value`` (a number or its text) as a float within ``limits``, else ExifError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    low, high = limits
    if isinstance(value, bool) or not low <= v <= high:  # NaN fails too
        raise ExifError(f'{name} {value}: expected {what} from {low:g} to {high:g}')
    return v


def format_lens_info(values, name: str = 'lens info') -> str:
    """[100, 100, 2.8, 2.8] / '100 2.8' / '18-55 3.5-5.6' -> EXIF LensInfo '100 100 2.8 2.8'.

    Two numbers: 'focal f-number' for a prime when the second is smaller ('100 2.8'), else a
    zoom's focal range without apertures ('18 55').  An f-number may be 'undef' ('?', or 0, as
    cameras write it).  ExifError naming ``name`` for anything else."""
    text = values if isinstance(values, str) else ' '.join(map(str, values))
    parts = []
    for word in text.lower().replace(',', ' ').replace('mm', ' ').replace('f/', ' ').split():
        lo, dash, hi = word.partition('-')
        parts += [lo, hi] if dash and lo and hi else [word]  # '18-55' is a range, '-5' is not
    try:
        nums = [None if p in ('undef', '?') else float(p) for p in parts]
    except ValueError:
        raise ExifError(f'{name} {text}: expected numbers like "100 100 2.8 2.8"') from None
    if len(nums) == 1:
        nums = [nums[0], nums[0], None, None]
    elif len(nums) == 2:
        a, b = nums
        nums = [a, a, b, b] if a is not None and b is not None and b < a else [a, b, None, None]
    elif len(nums) == 3:
        nums = [nums[0], nums[1], nums[2], nums[2]]
    if len(nums) != 4 or nums[0] is None or nums[1] is None:
        raise ExifError(f'{name} {text}: expected "minFocal maxFocal minF@minFocal minF@maxFocal"')
    focal, fnum = nums[:2], [None if v == 0 else v for v in nums[2:]]
    if not (
        all(FOCAL_RANGE[0] <= v <= FOCAL_RANGE[1] for v in focal)
        and all(v is None or APERTURE_RANGE[0] <= v <= APERTURE_RANGE[1] for v in fnum)
    ):
        raise ExifError(
            f'{name} {text}: expected focal lengths from {FOCAL_RANGE[0]:g} to '
            f'{FOCAL_RANGE[1]:g} mm and f-numbers from {APERTURE_RANGE[0]:g} to '
            f'{APERTURE_RANGE[1]:g} (or undef)'
        )
    if focal[0] > focal[1]:
        raise ExifError(f'{name} {text}: the shorter focal length comes first')
    return ' '.join('undef' if v is None else f'{v:g}' for v in focal + fnum)


# ------------------------------------------------------------------------------------------------
# input files (merge.py checks its own with these too)

_NOT_REGULAR = {
    stat.S_IFIFO: 'a named pipe',
    stat.S_IFSOCK: 'a socket',
    stat.S_IFCHR: 'a device',
    stat.S_IFBLK: 'a device',
}


def file_problem(path) -> str | None:
    """Why ``path`` is no file whose metadata can be read or written, None if it is one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return 'no such file'
    except OSError as e:
        return one_line(e.strerror or e)
    if stat.S_ISDIR(mode):
        return 'is a directory'
    if not stat.S_ISREG(mode):
        return f'not a regular file ({_NOT_REGULAR.get(stat.S_IFMT(mode), "a special file")})'
    return None


def not_an_image(meta: dict | None, error: str | None) -> str | None:
    """Why exiftool's reading of a file (``meta`` with File:FileType and File:MIMEType, or
    None; ``error``: what it said about the file) shows no image, None if it is one."""
    if meta is None or 'ExifTool:Error' in meta:
        return (meta or {}).get('ExifTool:Error') or error or 'exiftool cannot read this file'
    if not str(meta.get('File:MIMEType', '')).startswith('image/'):
        return f'not an image (exiftool reads it as {meta.get("File:FileType", "unknown")})'
    return None


# ------------------------------------------------------------------------------------------------
# what gets written


def standard_tags(spec: LensSpec) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if spec.make:
        out += [('ExifIFD:LensMake', spec.make), ('XMP-exifEX:LensMake', spec.make)]
    if spec.model:
        out += [
            ('ExifIFD:LensModel', spec.model),
            ('XMP-exifEX:LensModel', spec.model),
            ('XMP-aux:Lens', spec.model),
        ]
    if spec.lens_info:
        out += [
            ('ExifIFD:LensInfo', spec.lens_info),
            ('XMP-exifEX:LensInfo', spec.lens_info),
            ('XMP-aux:LensInfo', spec.lens_info),
        ]
    if spec.serial:
        out += [
            ('ExifIFD:LensSerialNumber', spec.serial),
            ('XMP-exifEX:LensSerialNumber', spec.serial),
            ('XMP-aux:LensSerialNumber', spec.serial),
        ]
    if spec.focal_length is not None:
        out += [('ExifIFD:FocalLength', f'{spec.focal_length:g}')]
    if spec.aperture is not None:
        out += [('ExifIFD:FNumber', f'{spec.aperture:g}')]
    return out


def makernote_tags(spec: LensSpec) -> list[tuple[str, str]]:
    """Canon maker-note lens fields (written only where the file already has them)."""
    out: list[tuple[str, str]] = []
    if spec.canon_lens_type is not None:
        out.append(('Canon:LensType', str(int(spec.canon_lens_type))))
    if spec.model:
        out.append(('Canon:LensModel', spec.model))
    if spec.lens_info:
        parts = spec.lens_info.split()
        out += [('Canon:MinFocalLength', parts[0]), ('Canon:MaxFocalLength', parts[1])]
    if spec.focal_length is not None:
        out.append(('Canon:FocalLength', f'{spec.focal_length:g}'))
    return out


_READ_TAGS = [
    'FileType',
    'MIMEType',
    'Make',
    'Model',
    'LensID',
    'Canon:LensType',
    'Canon:LensModel',
    'Canon:MinFocalLength',
    'Canon:MaxFocalLength',
    'Canon:FocalLength',
    'ExifIFD:LensMake',
    'ExifIFD:LensModel',
    'ExifIFD:LensInfo',
    'ExifIFD:LensSerialNumber',
    'ExifIFD:FocalLength',
    'ExifIFD:FNumber',
    'XMP-exifEX:LensMake',
    'XMP-exifEX:LensModel',
    'XMP-exifEX:LensInfo',
    'XMP-exifEX:LensSerialNumber',
    'XMP-aux:Lens',
    'XMP-aux:LensInfo',
    'XMP-aux:LensSerialNumber',
] + [t.rstrip('#') for t in _focus.FOCUS_TAGS]


#: tags compared as numbers when read back (LensInfo is four); the others hold text
_NUMERIC = {'LensInfo', 'FocalLength', 'FNumber', 'LensType', 'MinFocalLength', 'MaxFocalLength'}


def _same(tag_name: str, old, new: str) -> bool:
    """Does the value exiftool read back (``-n``, JSON) say ``new``?"""
    if old is None:
        return False
    if tag_name.split(':')[-1] not in _NUMERIC:
        if isinstance(old, (int, float)):  # exiftool's JSON printed the text as a number
            try:
                return float(new) == old
            except ValueError:
                return False
        return str(old).strip() == new.strip()
    try:
        a = [float(x) for x in str(old).split()]
        b = [float(x) if x != 'undef' else 0.0 for x in str(new).split()]
        a = [0.0 if (math.isnan(x) or math.isinf(x)) else x for x in a]
        return len(a) == len(b) and all(abs(x - y) < 1e-3 for x, y in zip(a, b, strict=True))
    except ValueError:
        return str(old).strip() == str(new).strip()


@dataclass
class FileResult:
    path: Path
    ok: bool = True
    error: str | None = None
    changes: list[tuple[str, object, str]] = field(default_factory=list)  # tag, old, new
    not_writable: list[str] = field(default_factory=list)  # maker-note fields the file lacks
    undo_recorded: bool = False


@dataclass
class LensReport:
    results: list[FileResult]
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if not r.ok]


def set_lens(
    files: list[Path],
    spec: LensSpec,
    *,
    dry_run: bool = False,
    exiftool=None,
    store: UndoStore | None = None,
    ignore_minor: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> LensReport:
    """Write ``spec`` into every file; files that fail are reported, the others still done.
    ``on_batch(files written so far, files to write)`` is called after each batch.

    ``ignore_minor`` passes exiftool's ``-m`` (write despite minor errors such as
    "[minor] Undersized IFD0 StripByteCounts").  ``should_stop`` is asked before each batch of
    :data:`BATCH` files; when it says True the run stops there and raises ExifCancelled (every
    file written so far keeps its undo entry).  A symlink is written through to its target and
    two names of one file (links) are one file, reported under the first name given."""
    if spec.is_empty():
        raise ExifError(
            'nothing to write: give --preset or at least one of --make, --model, '
            '--focal-length, --aperture, --lens-info, --serial'
        )
    store = store or UndoStore()
    results: dict[str, FileResult] = {}  # resolved path -> result
    inodes: dict[tuple[int, int], str] = {}
    for f in files:
        key = os.path.realpath(f)
        try:
            st = os.stat(key)
            key = inodes.setdefault((st.st_dev, st.st_ino), key)  # hard links: one file
        except OSError:
            pass
        results.setdefault(key, FileResult(Path(f)))
    order = list(results)
    std = standard_tags(spec)
    mkn = makernote_tags(spec)
    for _, v in std + mkn:
        check_arg(v)  # a value exiftool cannot take fails the run before anything is written

    # the undo store first: busy, or settling what an interrupted run left, before any reading
    staging = nullcontext() if dry_run else store.session(order)
    with maybe_exiftool(exiftool) as et, staging as session:
        readable = []
        stats = {}  # before exiftool reads them: undo restores their access times too
        for key in order:
            r = results[key]
            problem = file_problem(key)
            if problem is None and not os.access(key, os.W_OK):
                problem = 'not writable (permission denied)'
            if problem is None:
                try:
                    fname(key)
                except ExifError as e:  # a name exiftool cannot be given
                    problem = e.problem
            if problem is None:
                readable.append(key)
                stats[key] = os.stat(key)
            else:
                r.ok, r.error = False, problem
        meta, res = read_json(et, readable, _READ_TAGS, extra=['-n'])
        errs = res.errors_by_file()
        groups: dict[tuple, list[str]] = {}
        for key in readable:
            r = results[key]
            m = meta.get(key)
            problem = not_an_image(m, errs.get(key))
            if problem is not None:
                r.ok, r.error = False, problem
                continue
            args = []
            for t, v in std:
                args.append(f'-{t}={v}')
                if not _same(t, m.get(t), v):
                    r.changes.append((t, m.get(t), v))
            canon = any(k.startswith('Canon:') for k in m)  # other makers' fields do not apply
            for t, v in mkn:
                if t in m:
                    args.append(f'-{t}={v}')
                    if not _same(t, m.get(t), v):
                        r.changes.append((t, m.get(t), v))
                elif canon:
                    r.not_writable.append(t)
            groups.setdefault(tuple(args), []).append(key)

        if dry_run:
            return LensReport([results[k] for k in order], dry_run=True)

        attempted: set[str] = set()
        to_write = sum(map(len, groups.values()))
        for args, keys in groups.items():
            for i in range(0, len(keys), BATCH):
                if should_stop is not None and should_stop():
                    # the files written so far (and those that failed): the caller can say
                    # which ones to undo
                    done = [results[k] for k in order if k in attempted or not results[k].ok]
                    raise ExifCancelled(LensReport(done))
                batch = {k: results[k] for k in keys[i : i + BATCH]}
                minor = ['-m'] if ignore_minor else []
                _write_batch(et, session, [*minor, *args], batch, stats)
                attempted.update(batch)
                if on_batch is not None:
                    on_batch(len(attempted), to_write)

        # read back: what the files now say
        written = [k for k in order if results[k].ok]
        back, _ = read_json(et, written, [t for t, _ in std + mkn], extra=['-n'])
        for key in written:
            r, m = results[key], back.get(key, {})
            for t, v in std + [(t, v) for t, v in mkn if t in meta[key]]:
                if not _same(t, m.get(t), v):
                    r.ok = False
                    r.error = f'{t} did not take the value {v!r} (reads {m.get(t)!r})'
                    break
    return LensReport([results[k] for k in order])


def _write_batch(
    et, session: Run, args: list[str], batch: dict[str, FileResult], stats: dict
) -> None:
    """One exiftool call edits copies of the batch's files in the undo store; the store then
    writes the edited bytes into the photos, journalled first and settled whatever stops it."""
    items = []
    for key, r in batch.items():
        try:
            items.append(session.keep(key, {t: v for t, _, v in r.changes}, st=stats[key]))
        except ExifError as e:  # e.g. a damaged undo record: fail before writing
            r.ok, r.error = False, f'{e.problem}; not written'
        except OSError as e:
            r.ok = False
            r.error = (
                f'cannot copy it into the undo store {session.dir} ({e.strerror or e}); not written'
            )
    if not items:
        return
    copies = {fname(session.dir / item['written']): item['path'] for item in items}
    try:
        res = run(et, ['-n', '-overwrite_original', *args, *copies])
    except BaseException:
        interrupt(et)  # it edits copies only, but is stopped before they are removed
        raise
    errs = {copies.get(f, f): msg for f, msg in res.errors_by_file().items()}
    for key, outcome in session.write(items).items():
        r = batch[key]
        if isinstance(outcome, ExifError):
            r.ok = False
            r.error = f'written, but {outcome.problem} (kept for the next lens command)'
            continue
        r.undo_recorded = outcome
        # only its content says whether exiftool changed it
        if key in errs or (r.changes and not outcome):
            r.ok = False
            r.error = errs.get(key) or one_line(res.stderr) or 'exiftool did not write it'


# ------------------------------------------------------------------------------------------------
# show

SHOW_COLUMNS = [
    'file',
    'lens make',
    'lens model',
    'lens info',
    'focal',
    'f/',
    'serial',
    'Canon LensType',
    'focus (m)',
    'focus tag',
]


def show_lens(files: list[Path], *, exiftool=None) -> list[dict]:
    """Lens and focus tags per file (rows for :func:`format_table`)."""
    files = [Path(f) for f in files]
    rows = []
    with maybe_exiftool(exiftool) as et:
        errs: dict[str, str] = {}
        existing = []
        for f in files:
            try:
                problem = file_problem(f)
                if problem is None:
                    existing.append(fname(f))
            except ExifError as e:  # a name exiftool cannot be given
                problem = e.problem
            if problem is not None:
                errs[os.path.abspath(f)] = problem
        num, res = read_json(
            et, existing, _READ_TAGS + [t for t in _focus.FOCUS_TAGS], extra=['-n']
        )
        prt, _ = read_json(et, existing, ['Canon:LensType', 'LensInfo', 'LensID'])
        errs = {**res.errors_by_file(), **errs}
        for f in files:
            key = os.path.abspath(f)
            m = num.get(key)
            err = errs.get(key) if key not in existing else not_an_image(m, errs.get(key))
            if err is not None:
                rows.append({'file': str(f), 'error': err})
                continue
            p = prt.get(key, {})
            fr = _focus.focus_reading(m)
            lt = m.get('Canon:LensType')
            rows.append(
                {
                    'file': str(f),
                    'lens make': tag(m, 'ExifIFD:LensMake', 'XMP-exifEX:LensMake', default='-'),
                    'lens model': tag(
                        m,
                        'ExifIFD:LensModel',
                        'XMP-exifEX:LensModel',
                        'XMP-aux:Lens',
                        'Canon:LensModel',
                        default=None,
                    )
                    or (p.get('Composite:LensID') if p.get('Composite:LensID') else '-'),
                    'lens info': tag(
                        p,
                        'ExifIFD:LensInfo',
                        'XMP-exifEX:LensInfo',
                        'XMP-aux:LensInfo',
                        default='-',
                    ),
                    'focal': _num(tag(m, 'ExifIFD:FocalLength', '*:FocalLength')),
                    'f/': _num(tag(m, 'ExifIFD:FNumber', '*:FNumber')),
                    'serial': tag(
                        m,
                        'ExifIFD:LensSerialNumber',
                        'XMP-exifEX:LensSerialNumber',
                        'XMP-aux:LensSerialNumber',
                        default='-',
                    ),
                    'Canon LensType': '-'
                    if lt is None
                    else f'{lt} ({p.get("Canon:LensType", "?")})',
                    'focus (m)': _focus_text(fr),
                    'focus tag': fr.source or '-',
                    '_distance': fr.distance,
                    '_near': fr.near,
                    '_far': fr.far,
                }
            )
    return rows


def _printable(text: str) -> str:
    return ''.join(c if c.isprintable() else c.encode('unicode_escape').decode() for c in text)


def _num(v) -> str:
    try:
        return f'{float(v):g}'
    except (TypeError, ValueError):
        return '-'


def _focus_text(fr: _focus.FocusReading) -> str:
    if not fr.known:
        return '-'
    if fr.near is not None and fr.far is not None and fr.near != fr.far:
        return f'{_focus.fmt_distance(fr.near)}-{_focus.fmt_distance(fr.far)}'
    return _focus.fmt_distance(fr.distance)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """The rows without an error (those are for stderr), one line each: characters that are
    not printable (a line break or a terminal escape in a name or a tag) shown escaped."""
    cells = [[str(c) for c in columns]]
    for r in rows:
        if 'error' not in r:
            cells.append([_printable(str(r.get(c, '-'))) for c in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(cells):
        lines.append('  '.join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append('  '.join('-' * w for w in widths))
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------
# undo


@dataclass
class UndoResult:
    path: Path
    ok: bool
    undone: int = 0
    error: str | None = None


def undo_lens(
    files: list[Path], *, all_levels: bool = False, store: UndoStore | None = None
) -> list[UndoResult]:
    """Restore each file; a file with no recorded change is ok with ``undone == 0``."""
    store = store or UndoStore()
    out = []
    with store.session(files) as session:
        for f in files:
            try:
                problem = file_problem(f)
                if problem is not None:
                    raise ExifError(problem, f)
                out.append(UndoResult(Path(f), True, session.undo(Path(f), all_levels=all_levels)))
            except ExifError as e:
                out.append(UndoResult(Path(f), False, 0, e.problem))
            except OSError as e:
                out.append(UndoResult(Path(f), False, 0, f'{e.strerror or e}'))
    return out
