"""Batch lens rewriting with dry-run and undo (``focusbridge lens set|show|undo``).

One exiftool process for the batch: a read call for every file, write calls of up to
:data:`BATCH` files that get the same arguments, a read-back call to verify.  Files are written
with ``-overwrite_original_in_place`` (exiftool writes a temporary file and copies it over the
original: no ``FILE_original`` litter, and symlinks and hard links keep pointing at the photo);
the original bytes are journaled in the undo store (:mod:`exif.undo`) before each write call, so
an interrupted run never loses an original.  Only metadata is written: pixel data is never touched.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
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


def lens_spec(preset_name: str | None = None, **fields) -> LensSpec:
    """What `lens set` writes, from a catalogue preset and/or single fields (the command line
    and run-job both come here, so one input writes the same tags). `lens_info` may be text
    or a list; without it a focal length gives LensInfo 'f f undef undef' (a prime)."""
    spec = preset(preset_name) if preset_name else LensSpec()
    if fields.get('lens_info') not in (None, ''):
        fields['lens_info'] = format_lens_info(fields['lens_info'])
    spec = spec.merged(LensSpec(**{k: v for k, v in fields.items() if v not in (None, '')}))
    if spec.lens_info is None and spec.focal_length is not None:
        spec.lens_info = format_lens_info([spec.focal_length, spec.focal_length, 'undef', 'undef'])
    return spec


def format_lens_info(values) -> str:
    """[100, 100, 2.8, 2.8] / '100 2.8' / '18-55 3.5-5.6' -> EXIF LensInfo '100 100 2.8 2.8'.

    Two numbers: 'focal f-number' for a prime when the second is smaller ('100 2.8'), else a
    zoom's focal range without apertures ('18 55')."""
    if isinstance(values, str):
        parts = (
            values.replace(',', ' ').replace('f/', ' ').replace('mm', ' ').replace('-', ' ').split()
        )
    else:
        parts = list(values)
    nums: list[float | None] = []
    for p in parts:
        if str(p).lower() in ('undef', '?'):
            nums.append(None)
            continue
        try:
            v = float(p)
        except (TypeError, ValueError):
            raise ExifError(
                f'lens info {values!r}: expected numbers like "100 100 2.8 2.8"'
            ) from None
        nums.append(v if v > 0 and math.isfinite(v) else None)
    if len(nums) == 1:
        nums = [nums[0], nums[0], None, None]
    elif len(nums) == 2:
        a, b = nums
        nums = [a, a, b, b] if a is not None and b is not None and b < a else [a, b, None, None]
    elif len(nums) == 3:
        nums = [nums[0], nums[1], nums[2], nums[2]]
    if len(nums) != 4 or nums[0] is None or nums[1] is None:
        raise ExifError(f'lens info {values!r}: expected "minFocal maxFocal minF@min minF@max"')
    return ' '.join('undef' if v is None else f'{v:g}' for v in nums)


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


def _same(old, new) -> bool:
    if old is None:
        return False
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
) -> LensReport:
    """Write ``spec`` into every file; files that fail are reported, the others still done.

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

    with maybe_exiftool(exiftool) as et:
        readable = []
        for key in order:
            r = results[key]
            if not os.path.isfile(key):
                r.ok, r.error = False, 'no such file'
            elif not os.access(key, os.W_OK) or not os.access(os.path.dirname(key), os.W_OK):
                r.ok, r.error = False, 'not writable (permission denied)'
            else:
                try:
                    fname(key)
                    readable.append(key)
                except ExifError as e:  # a name exiftool cannot be given
                    r.ok, r.error = False, e.problem
        meta, res = read_json(et, readable, _READ_TAGS, extra=['-n'])
        errs = res.errors_by_file()
        groups: dict[tuple, list[str]] = {}
        for key in readable:
            r = results[key]
            m = meta.get(key)
            if m is None or 'ExifTool:Error' in m:
                r.ok = False
                r.error = (
                    (m or {}).get('ExifTool:Error')
                    or errs.get(key)
                    or 'exiftool cannot read this file'
                )
                continue
            args = []
            for t, v in std:
                args.append(f'-{t}={v}')
                if not _same(m.get(t), v):
                    r.changes.append((t, m.get(t), v))
            for t, v in mkn:
                if t in m:
                    args.append(f'-{t}={v}')
                    if not _same(m.get(t), v):
                        r.changes.append((t, m.get(t), v))
                else:
                    r.not_writable.append(t)
            groups.setdefault(tuple(args), []).append(key)

        if dry_run:
            return LensReport([results[k] for k in order], dry_run=True)

        with store.session() as session:
            for args, keys in groups.items():
                for i in range(0, len(keys), BATCH):
                    if should_stop is not None and should_stop():
                        raise ExifCancelled()
                    batch = {k: results[k] for k in keys[i : i + BATCH]}
                    _write_batch(et, session, [*(['-m'] if ignore_minor else []), *args], batch)

        # read back: what the files now say
        written = [k for k in order if results[k].ok]
        back, _ = read_json(et, written, [t for t, _ in std + mkn], extra=['-n'])
        for key in written:
            r, m = results[key], back.get(key, {})
            for t, v in std + mkn:
                if t in r.not_writable:
                    continue
                if not _same(m.get(t), v):
                    r.ok = False
                    r.error = f'{t} did not take the value {v!r} (reads {m.get(t)!r})'
                    break
    return LensReport([results[k] for k in order])


def _write_batch(et, session: Run, args: list[str], batch: dict[str, FileResult]) -> None:
    """One exiftool write call.  The originals are journaled first; whatever stops the call (a
    signal, a dead exiftool), exiftool is stopped and the files settled before it propagates."""
    items = []
    for key, r in batch.items():
        try:
            items.append(session.keep(key, {t: v for t, _, v in r.changes}))
        except ExifError as e:  # e.g. a damaged undo record: fail before writing
            r.ok, r.error = False, f'{e.problem}; not written'
        except OSError as e:
            r.ok = False
            r.error = f'cannot copy the original for undo ({e.strerror or e}); not written'
    if not items:
        return
    journal = session.journal(items)
    try:
        res = run(
            et,
            ['-n', '-overwrite_original_in_place', *args, *[fname(item['path']) for item in items]],
        )
    except BaseException:
        interrupt(et)  # nothing may write once we look at the files
        session.settle(journal, clean_tmp=True)
        raise
    errs = res.errors_by_file()
    for key, outcome in session.settle(journal).items():
        r = batch[key]
        if isinstance(outcome, ExifError):
            r.ok = False
            r.error = f'written, but {outcome.problem} (kept for the next lens command)'
            continue
        r.undo_recorded = outcome
        # in place, an unwritten file keeps its bytes: only its content says whether it changed
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
            if not f.is_file():
                continue
            try:
                existing.append(fname(f))
            except ExifError as e:  # a name exiftool cannot be given
                errs[os.path.abspath(f)] = e.problem
        num, res = read_json(
            et, existing, _READ_TAGS + [t for t in _focus.FOCUS_TAGS], extra=['-n']
        )
        prt, _ = read_json(et, existing, ['Canon:LensType', 'LensInfo', 'LensID'])
        errs.update(res.errors_by_file())
        for f in files:
            key = os.path.abspath(f)
            m = num.get(key)
            if m is None or 'ExifTool:Error' in m:
                err = (
                    'no such file'
                    if not f.is_file()
                    else (m or {}).get('ExifTool:Error') or errs.get(key) or 'unreadable'
                )
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
    cells = [[str(c) for c in columns]]
    for r in rows:
        if 'error' in r:
            cells.append([r['file'], f'error: {r["error"]}'] + [''] * (len(columns) - 2))
        else:
            cells.append([str(r.get(c, '-')) for c in columns])
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
    with store.session() as session:
        for f in files:
            try:
                out.append(UndoResult(Path(f), True, session.undo(Path(f), all_levels=all_levels)))
            except ExifError as e:
                out.append(UndoResult(Path(f), False, 0, e.problem))
            except OSError as e:
                out.append(UndoResult(Path(f), False, 0, f'{e.strerror or e}'))
    return out
