"""Merged EXIF/XMP onto a stacked output (``focusbridge meta merge`` and ``focusbridge stack``).

What lands on the output (docs/metadata.md has the full list):
  * the base frame's tags, maker notes included (a second pass copies them when the first one
    silently dropped them, e.g. from a CR3);
  * structure tags that describe the new file (size, Orientation=1, no thumbnail, Software,
    ModifyDate), DateTimeOriginal and exposure tags kept from the base;
  * lens tags, EXIF and XMP;
  * the bracket's focus range: Canon FocusDistanceLower/Upper when the output carries Canon maker
    notes, and always XMP-fbstack:FocusDistanceNear/Far;
  * provenance: XMP-fbstack, XMP-xmpMM DerivedFrom/Ingredients/History, XMP-dc:Source.

All exiftool work happens on a temporary file next to the target, which replaces the target only
when every pass succeeded: a failure leaves the target as it was.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import tifffile

from pybridge.atomic import replaced
from pybridge.headers import exif, open_header, sniff

from . import focus as _focus
from .lens import file_problem, not_an_image
from .tool import ExifError, fname, maybe_exiftool, read_json, run, tag

__all__ = [
    'StackInfo',
    'MergeReport',
    'merge_metadata',
    'copy_metadata',
    'sources_have_metadata',
    'software_name',
]


@dataclass
class StackInfo:
    frame_count: int
    method: str  # 'pyramid' | 'depthmap'
    reference_index: int  # index into sources of the alignment reference (default base)
    software: str  # e.g. 'focusbridge 0.1.0'
    source_names: list[str] | None = None  # optional override of names for provenance


@dataclass
class MergeReport:
    target: Path
    base: Path
    frame_count: int
    focus_near: float | None = None  # metres, inf allowed
    focus_far: float | None = None
    focus_source: str | None = None  # tag(s) the per-frame distances came from
    frames_with_focus: int = 0
    frame_distances: list[float | None] = field(default_factory=list)
    makernotes: str | None = None  # maker-note group on the output, e.g. 'Canon'
    makernotes_second_pass: bool = False  # maker notes needed the extra -makernotes pass
    canon_focus_written: bool = False  # Canon:FocusDistanceLower/Upper set to the range
    lens_model: str | None = None
    validation: str = ''  # exiftool -validate: 'OK' or 'N Warnings (M minor)'
    validation_warnings: list[str] = field(default_factory=list)
    validation_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. sources without readable tags

    def summary(self) -> str:
        rng = (
            f'{_focus.fmt_distance(self.focus_near)}-{_focus.fmt_distance(self.focus_far)} m '
            f'({self.focus_source})'
            if self.focus_near is not None
            else 'no focus distances'
        )
        mn = self.makernotes or 'none'
        return (
            f'{self.target}: metadata from {self.base.name}, {self.frame_count} '
            f'frame{"" if self.frame_count == 1 else "s"}, '
            f'focus {rng}, maker notes {mn}, validate {self.validation or "-"}'
        )


def software_name() -> str:
    try:
        from importlib.metadata import version

        return f'focusbridge {version("focusbridge")}'
    except Exception:
        return 'focusbridge'


# tags of the base that must not land on the output: they describe the base's file structure,
# a thumbnail/preview, raw-development recipes, or document identity
_EXCLUDE = [
    '--IFD1:all',
    '--MPF:all',
    '--InteropIFD:all',
    '--CanonVRD:all',
    '--CanonDR4:all',
    '--PreviewImage',
    '--ThumbnailImage',
    '--ThumbnailTIFF',
    '--JpgFromRaw',
    '--OtherImage',
    '--PreviewTIFF',
    '--ExifIFD:ExifImageWidth',
    '--ExifIFD:ExifImageHeight',
    '--ExifIFD:ComponentsConfiguration',
    '--ExifIFD:CompressedBitsPerPixel',
    '--IFD0:Orientation',
    '--IFD0:Software',
    '--IFD0:ModifyDate',
    # raw formats that put EXIF tags into IFD0 (NEF DateTimeOriginal, RW2 ISO/CFAPattern)
    '--IFD0:DateTimeOriginal',
    '--IFD0:ISO',
    '--IFD0:CFAPattern',
    '--XMP-tiff:ImageWidth',
    '--XMP-tiff:ImageLength',
    '--XMP-tiff:BitsPerSample',
    '--XMP-tiff:Compression',
    '--XMP-tiff:PhotometricInterpretation',
    '--XMP-tiff:SamplesPerPixel',
    '--XMP-tiff:PlanarConfiguration',
    '--XMP-tiff:YCbCrSubSampling',
    '--XMP-tiff:YCbCrPositioning',
    '--XMP-tiff:Orientation',
    '--XMP-tiff:Software',
    '--XMP-tiff:DateTime',
    '--XMP-exif:PixelXDimension',
    '--XMP-exif:PixelYDimension',
    '--XMP-xmpMM:all',
    '--XMP-crs:all',
    '--XMP-crss:all',
    '--XMP-darktable:all',
    '--XMP-fbstack:all',
    '--XMP-xmp:CreatorTool',
    '--XMP-xmp:ModifyDate',
    '--XMP-xmp:MetadataDate',
]
# what IFD0 of a TIFF may hold besides the image's structure: cleared before a merge, as the
# metadata of other formats is cleared whole (exiftool cannot delete IFD0 from a TIFF)
_IFD0_DESCRIPTIVE = [
    'ImageDescription',
    'Make',
    'Model',
    'Artist',
    'Copyright',
    'HostComputer',
    'DocumentName',
    'PageName',
    'Rating',
    'RatingPercent',
    'XPTitle',
    'XPComment',
    'XPAuthor',
    'XPKeywords',
    'XPSubject',
]
# a base's metadata is damaged when exiftool reads it with such a warning (a truncated raw)
_DAMAGED = re.compile(r'truncated|bad .*director|invalid offset|error reading|corrupt', re.I)

# YCbCr layout tags only mean something in a JPEG
_EXCLUDE_NON_JPEG = [
    '--IFD0:YCbCrSubSampling',
    '--IFD0:YCbCrPositioning',
    '--IFD0:YCbCrCoefficients',
    '--IFD0:ReferenceBlackWhite',
]

_WRITABLE_OUTPUTS = {'TIFF', 'JPEG', 'PNG'}


def _struct_escape(value: str) -> str:
    """Escape a value for exiftool's serialized structure syntax ({Field=value,...})."""
    return re.sub(r'([|,\[\]{}=])', r'|\1', value)


def _split_groups(meta: dict) -> tuple[dict, set[str]]:
    """-G0:1 keys ('MakerNotes:Canon:LensType') -> ({'Canon:LensType': v}, {'MakerNotes', ...})."""
    flat: dict = {}
    fam0: set[str] = set()
    for k, v in meta.items():
        parts = k.split(':')
        if len(parts) >= 3:
            fam0.add(parts[0])
            flat.setdefault(':'.join(parts[1:]), v)
        else:
            flat.setdefault(k, v)
    return flat, fam0


def _maker_group(meta01: dict) -> str | None:
    groups = sorted(
        {k.split(':')[1] for k in meta01 if k.startswith('MakerNotes:') and k.count(':') >= 2}
    )
    if not groups:
        return None
    for g in groups:  # the main maker-note group, not CanonCustom etc.
        if g in (
            'Canon',
            'Nikon',
            'Sony',
            'Olympus',
            'Panasonic',
            'Pentax',
            'FujiFilm',
            'Samsung',
            'Sigma',
            'Leica',
            'Minolta',
            'Ricoh',
            'Casio',
            'Kodak',
            'Apple',
            'DJI',
            'GoPro',
            'Hasselblad',
            'Phase One',
        ):
            return g
    return groups[0]


def _good_lens_name(name) -> bool:
    if not isinstance(name, str):
        return False
    s = name.strip()
    return (
        bool(s)
        and not re.match(r'^(unknown|n/a|none|-?\d+(\.\d+)?$)', s, re.I)
        and 'unknown' not in s.lower()
    )


def _lens_info(value) -> str | None:
    """Normalise a LensInfo-like value ('15 45 0 0', [18, 55, 'undef', ...]) to 4 numbers/undef."""
    if value is None:
        return None
    parts = value if isinstance(value, list) else str(value).replace(',', ' ').split()
    if len(parts) != 4:
        return None
    out = []
    for p in parts:
        try:
            f = float(p)
        except (TypeError, ValueError):
            out.append('undef')
            continue
        out.append('undef' if f <= 0 or math.isinf(f) or math.isnan(f) else f'{f:g}')
    if out[0] == 'undef':
        return None
    return ' '.join(out)


def _lens_facts(base01: dict, base_print: dict) -> dict[str, str]:
    """Lens make/model/info/serial of the base, from EXIF, XMP or the maker notes."""
    b = base01
    model = tag(b, 'ExifIFD:LensModel', 'XMP-exifEX:LensModel', 'XMP-aux:Lens', 'Canon:LensModel')
    if not _good_lens_name(model):
        lid = tag(base_print, 'Composite:LensID')
        model = lid if _good_lens_name(lid) else None
    info = _lens_info(
        tag(b, 'ExifIFD:LensInfo', 'XMP-exifEX:LensInfo', 'XMP-aux:LensInfo', 'Nikon:Lens')
    )
    if info is None:
        lo, hi = tag(b, 'Canon:MinFocalLength'), tag(b, 'Canon:MaxFocalLength')
        try:
            if float(lo) > 0 and float(hi) > 0:
                info = f'{float(lo):g} {float(hi):g} undef undef'
        except (TypeError, ValueError):
            pass
    facts = {
        'make': tag(b, 'ExifIFD:LensMake', 'XMP-exifEX:LensMake'),
        'model': model,
        'info': info,
        'serial': tag(
            b, 'ExifIFD:LensSerialNumber', 'XMP-aux:LensSerialNumber', 'XMP-exifEX:LensSerialNumber'
        ),
    }
    return {k: str(v).strip() for k, v in facts.items() if v not in (None, '') and str(v).strip()}


def _lens_args(facts: dict[str, str]) -> list[str]:
    spec = {
        'make': ['ExifIFD:LensMake', 'XMP-exifEX:LensMake'],
        'model': ['ExifIFD:LensModel', 'XMP-exifEX:LensModel', 'XMP-aux:Lens'],
        'info': ['ExifIFD:LensInfo', 'XMP-exifEX:LensInfo', 'XMP-aux:LensInfo'],
        'serial': [
            'ExifIFD:LensSerialNumber',
            'XMP-exifEX:LensSerialNumber',
            'XMP-aux:LensSerialNumber',
        ],
    }
    args = []
    for key, tags in spec.items():
        if key in facts:  # not also copied: XMP-exifEX:LensInfo is a list, it would get both
            args += [f'--{t}' for t in tags] + [f'-{t}={facts[key]}' for t in tags]
    return args


def _image_size(meta: dict) -> tuple[int | None, int | None]:
    size = tag(meta, 'Composite:ImageSize')
    if size is not None:
        nums = re.findall(r'\d+', str(size))
        if len(nums) == 2:
            return int(nums[0]), int(nums[1])
    return None, None


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names: ``..``, symlinks, hard links."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


@contextmanager
def _format_free(path: Path) -> Iterator[str]:
    """``path`` as a -TagsFromFile argument.  exiftool reads %d, %f, %e... in that name as parts
    of the file being written and has no escape for '%' (``%%d`` is '%' plus the directory), so
    a name with '%' is given through a symlink in a fresh temporary folder."""
    name = fname(path)
    if '%' not in name:
        yield name
        return
    with tempfile.TemporaryDirectory(prefix='focusbridge-') as tmp:
        link = os.path.join(tmp, 'base' + ('' if '%' in path.suffix else path.suffix))
        if '%' in link:
            raise ExifError(
                "a name with '%' cannot be given to exiftool here (the temporary "
                'folder has one too)',
                path,
            )
        os.symlink(os.path.abspath(path), link)
        yield link


def merge_metadata(
    target: Path, sources: list[Path], base: Path | None, info: StackInfo, *, exiftool=None
) -> MergeReport:
    """Write the merged metadata of ``sources`` (tags of ``base``) onto the image ``target``.

    ``exiftool``: an open ExifToolHelper from :func:`exif.tool.open_exiftool` to reuse; one is
    started for this call otherwise.  Raises :class:`exif.tool.ExifError` (one line naming the
    file) and leaves ``target`` untouched on failure.
    """
    job = _inputs(Path(target), [Path(s) for s in sources], base, info)
    report = MergeReport(target=job.target, base=job.base, frame_count=info.frame_count)
    with maybe_exiftool(exiftool) as et, _format_free(job.base) as base_arg:
        tags = _read_tags(et, job)
        readings = _focus_range(tags.frames, job.sources, report)
        lens = _lens_facts(tags.base, tags.base_print)
        report.lens_model = lens.get('model')
        stamp = _now()
        args = [
            *_copy_args(tags),
            *_structure_args(tags, info.software, stamp),
            *_lens_args(lens),
            *_focus_args(report, readings),
            *_provenance_args(info, job, tags.base, stamp),
        ]
        with replaced(job.target, 'fbmeta') as tmp:
            # a copy edited in place, not exiftool's -o: that name would be a format string too
            shutil.copyfile(job.target, tmp)
            _write_tags(et, base_arg, args, tmp, tags.ftype, report)
            out = _copy_maker_notes(et, base_arg, tmp, tags.base_groups, report)
            _write_canon_focus(et, tmp, out, report)
            _validate(et, tmp, report)
    return report


def copy_metadata(
    target: Path,
    source: Path,
    *,
    derivation: str,
    software: str | None = None,
    keep_provenance: bool = False,
    exiftool=None,
) -> MergeReport:
    """The tags of one ``source`` onto ``target``, an image made from it alone: an aligned
    frame (its frame's tags), a retouched result (the result's tags).

    What merge_metadata does with a base, without the bracket: everything but _EXCLUDE, maker
    notes included (second pass), structure tags that describe the new file, lens tags; then
    XMP-xmpMM says ``target`` is a new instance derived from ``source`` by ``derivation``
    (History gains that step). ``keep_provenance``: keep the source's XMP-fbstack and xmpMM
    (a retouched result stays the focus stack it was); otherwise ``target`` is a new document.
    Raises ExifError (one line naming the file) and leaves ``target`` untouched on failure."""
    target, source = Path(target), Path(source)
    sw = software or software_name()
    job = _inputs(target, [source], source, StackInfo(1, 'copy', 0, sw))
    report = MergeReport(target=job.target, base=job.base, frame_count=1)
    with maybe_exiftool(exiftool) as et, _format_free(job.base) as base_arg:
        tags = _read_tags(et, job)
        stamp = _now()
        keep = {'--XMP-fbstack:all', '--XMP-xmpMM:all'} if keep_provenance else set()
        args = [
            *(a for a in _copy_args(tags) if a not in keep),
            # rewritten whole below: copied too, the lists would hold the old entries twice
            *(['--XMP-xmpMM:History', '--XMP-xmpMM:DerivedFrom'] if keep_provenance else []),
            *_structure_args(tags, sw, stamp),
            *_lens_args(_lens_facts(tags.base, tags.base_print)),
            *_derived_args(job.base_name, tags.base, sw, derivation, stamp, keep_provenance),
        ]
        with replaced(job.target, 'fbmeta') as tmp:
            shutil.copyfile(job.target, tmp)
            _write_tags(et, base_arg, args, tmp, tags.ftype, report)
            _copy_maker_notes(et, base_arg, tmp, tags.base_groups, report)
    return report


def _struct(entry: dict) -> str:
    """A flat XMP structure ({'Action': 'derived', ...}) in exiftool's serialized syntax."""
    return '{' + ','.join(f'{k}={_struct_escape(str(v))}' for k, v in entry.items()) + '}'


def _derived_args(
    name: str, base: dict, sw: str, derivation: str, stamp: tuple[str, str], keep: bool
) -> list[str]:
    """XMP-xmpMM: a new instance (and, unless ``keep``, a new document) derived from ``name``,
    with one more History step."""
    exif_now, off = stamp
    doc, inst = tag(base, 'XMP-xmpMM:DocumentID'), tag(base, 'XMP-xmpMM:InstanceID')
    derived = {'FilePath': name, **({'DocumentID': doc} if doc else {})}
    derived.update({'InstanceID': inst} if inst else {})
    new_iid = f'xmp.iid:{uuid.uuid4()}'
    history = base.get('XMP-xmpMM:History') if keep else None
    history = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
    history.append(
        {
            'Action': 'derived',
            'Parameters': derivation,
            'SoftwareAgent': sw,
            'InstanceID': new_iid,
            'When': f'{exif_now}{off}',
        }
    )
    args = [
        f'-XMP-xmpMM:InstanceID={new_iid}',
        f'-XMP-xmpMM:DerivedFrom={_struct(derived)}',
        '-XMP-xmpMM:History=[' + ','.join(_struct(h) for h in history) + ']',
    ]
    if not keep:
        args.append(f'-XMP-xmpMM:DocumentID=xmp.did:{uuid.uuid4()}')
        orig = tag(base, 'XMP-xmpMM:OriginalDocumentID') or doc
        if orig:
            args.append(f'-XMP-xmpMM:OriginalDocumentID={orig}')
    return args


# ------------------------------------------------------------------------------------------------
# merge_metadata's steps


@dataclass
class _Inputs:
    target: Path
    sources: list[Path]
    base: Path
    names: list[str]  # the sources' names for provenance
    ref_name: str  # name of the alignment reference
    base_name: str  # name of the metadata base


def _inputs(target: Path, sources: list[Path], base: Path | None, info: StackInfo) -> _Inputs:
    """The files checked (all there, the output none of the sources) and the base chosen."""
    problem = file_problem(target)
    if problem:
        raise ExifError(problem, target)
    if not sources:
        raise ExifError('no source files given for the metadata', target)
    ref = info.reference_index if 0 <= info.reference_index < len(sources) else None
    base = Path(base) if base is not None else sources[len(sources) // 2 if ref is None else ref]
    for role, path in [('metadata source', s) for s in sources] + [('metadata base', base)]:
        problem = file_problem(path)
        if problem:
            raise ExifError(f'{problem} ({role})', path)
    for src in [*sources, base]:  # never rewrite a camera original
        if _same_file(target, src):
            raise ExifError(f'the output is also a metadata source ({src}); not writing it', target)
    names = list(info.source_names) if info.source_names else [s.name for s in sources]
    if len(names) != len(sources):
        raise ExifError(f'{len(names)} source names for {len(sources)} sources', target)
    ref_name = names[ref] if ref is not None else base.name
    base_name = names[sources.index(base)] if base in sources else base.name
    return _Inputs(target, sources, base, names, ref_name, base_name)


@dataclass
class _Tags:
    frames: dict[str, dict]  # absolute path -> focus tags, LensID, Make of every frame and the base
    base_print: dict  # those of the base
    base: dict  # the base's tags in full, numeric, 'Group1:Tag' keys
    base_groups: set[str]  # the base's family-0 groups: MakerNotes, ICC_Profile, ...
    target: dict  # the target's FileType, ImageSize, ProfileDescription
    ftype: str  # the target's type: TIFF, JPEG or PNG


def _readable(meta: dict | None, res, path: Path, fallback: str) -> dict:
    """``meta`` as read_json gave it for ``path``, or ExifError saying why exiftool could not
    read the file."""
    if meta is None or 'ExifTool:Error' in meta:
        msg = (meta or {}).get('ExifTool:Error') or res.errors_by_file().get(os.path.abspath(path))
        raise ExifError(msg or fallback, path)
    return meta


def _read_tags(et, job: _Inputs) -> _Tags:
    """Every frame's focus distance, the base in full, the target's structure."""
    frame_files = job.sources + ([job.base] if job.base not in job.sources else [])
    frames, res = read_json(
        et, frame_files, _focus.FOCUS_TAGS + ['LensID', 'Make', 'FileType', 'MIMEType', 'Warning']
    )
    errs = res.errors_by_file()
    for f in frame_files:  # every source an image exiftool reads, the base whole
        meta = frames.get(os.path.abspath(f))
        problem = not_an_image(meta, errs.get(os.path.abspath(f)))
        if problem is not None:
            raise ExifError(f'{problem} (metadata source)', f)
        warning = str(meta.get('ExifTool:Warning', ''))
        if f == job.base and _DAMAGED.search(warning):
            raise ExifError(f'metadata damaged: {warning} (metadata base; choose another)', f)
    base_key = os.path.abspath(job.base)
    base_print = frames[base_key]
    base_raw, _ = read_json(et, [job.base], extra=['-n'], groups='-G0:1')
    base_flat, base_groups = _split_groups(base_raw.get(base_key, {}))
    tmeta, res = read_json(et, [job.target], ['FileType', 'ImageSize', 'ProfileDescription'])
    t = tmeta.get(os.path.abspath(job.target)) or None
    t = _readable(t, res, job.target, 'exiftool cannot read this file')
    ftype = str(tag(t, 'File:FileType', default='')).upper()
    if ftype not in _WRITABLE_OUTPUTS:
        raise ExifError(
            f'cannot write merged metadata into a {ftype or "unknown"} file '
            '(TIFF, JPEG and PNG are supported)',
            job.target,
        )
    return _Tags(frames, base_print, base_flat, base_groups, t, ftype)


def _focus_range(
    frames: dict, sources: list[Path], report: MergeReport
) -> list[_focus.FocusReading]:
    """Every frame's focus distance and the bracket's range, into the report."""
    readings = [_focus.focus_reading(frames[os.path.abspath(s)]) for s in sources]
    report.focus_near, report.focus_far, report.focus_source = _focus.bracket_range(readings)
    report.frames_with_focus = sum(r.known for r in readings)
    report.frame_distances = [r.distance for r in readings]
    return readings


def _now() -> tuple[str, str]:
    """Local time now as EXIF writes it, and its UTC offset ('+02:00')."""
    now = _dt.datetime.now().astimezone().replace(microsecond=0)
    off = now.strftime('%z')
    return now.strftime('%Y:%m:%d %H:%M:%S'), f'{off[:3]}:{off[3:]}' if off else '+00:00'


def _clear_args(ftype: str) -> list[str]:
    """The target's own metadata, deleted before pass 1 copies (exiftool does this first), so
    that nothing of an earlier merge stays: all of it but its ICC profile; in a TIFF, whose IFD0
    holds the image's structure too, only the descriptive tags there (tifffile's shape note)."""
    if ftype != 'TIFF':
        return ['-all=', '--ICC_Profile:all']
    return ['-all=', '--ICC_Profile:all', '--IFD0:all', *(f'-IFD0:{t}=' for t in _IFD0_DESCRIPTIVE)]


def _copy_args(tags: _Tags) -> list[str]:
    """What pass 1 copies from the base: all of it but _EXCLUDE, its ICC profile if need be."""
    args = ['-all:all', '-unsafe']
    if not tag(tags.target, 'ICC_Profile:ProfileDescription') and 'ICC_Profile' in tags.base_groups:
        args.append('-icc_profile')  # the pixels are in the frames' own encoding
    args += _EXCLUDE + ([] if tags.ftype == 'JPEG' else _EXCLUDE_NON_JPEG)
    gps = [k for k in tags.base if k.startswith('GPS:')]
    if gps and all(k == 'GPS:GPSVersionID' for k in gps):
        args.append('--GPS:all')  # an empty GPS IFD: validate complains, nothing lost
    return args


def _structure_args(tags: _Tags, sw: str, stamp: tuple[str, str]) -> list[str]:
    """Tags that describe the new file: orientation, software, dates, size, colour space."""
    exif_now, off = stamp
    args = [
        '-IFD0:Orientation=1',
        '-XMP-tiff:Orientation=',
        f'-IFD0:Software={sw}',
        f'-IFD0:ModifyDate={exif_now}',
        f'-ExifIFD:OffsetTime={off}',
        f'-XMP-xmp:ModifyDate={exif_now}{off}',
        f'-XMP-xmp:MetadataDate={exif_now}{off}',
        f'-XMP-xmp:CreatorTool={sw}',
        '-ExifIFD:SubSecTime=',  # belonged to the base's ModifyDate
    ]
    ver = str(tag(tags.base, 'ExifIFD:ExifVersion', default='') or '')
    if not ver.isdigit() or ver < '0231':  # we write OffsetTime (2.31), LensModel (2.3)
        args.append('-ExifIFD:ExifVersion=0231')
    if tags.ftype != 'JPEG':  # exiftool adds it to every new ExifIFD; it describes JPEG data
        args.append('-ExifIFD:ComponentsConfiguration=')
    width, height = _image_size(tags.target)
    if tags.ftype == 'TIFF':
        args += ['-ExifIFD:ExifImageWidth=', '-ExifIFD:ExifImageHeight=']
    elif width and height:
        args += [f'-ExifIFD:ExifImageWidth={width}', f'-ExifIFD:ExifImageHeight={height}']
    prof = tag(tags.target, 'ICC_Profile:ProfileDescription')
    if prof and 'srgb' not in str(prof).lower():
        args.append('-ExifIFD:ColorSpace=65535')  # uncalibrated: the ICC profile rules
    return args


def _focus_args(report: MergeReport, readings: list[_focus.FocusReading]) -> list[str]:
    """The bracket's focus range and every frame's distance, in XMP-fbstack."""
    if report.focus_near is None:
        return []
    return [
        f'-XMP-fbstack:FocusDistanceNear={_focus.xmp_distance(report.focus_near)}',
        f'-XMP-fbstack:FocusDistanceFar={_focus.xmp_distance(report.focus_far)}',
        f'-XMP-fbstack:FocusDistanceSource={report.focus_source}',
        *(
            f'-XMP-fbstack:FrameFocusDistances={_focus.xmp_distance(r.distance) if r.known else 0}'
            for r in readings
        ),
    ]


def _provenance_args(info: StackInfo, job: _Inputs, base: dict, stamp: tuple[str, str]):
    """Where the output comes from: XMP-fbstack, XMP-xmpMM (a new document derived from the
    base, made of the frames), XMP-dc:Source."""
    sw, names = info.software, job.names
    args = [
        f'-XMP-fbstack:FrameCount={int(info.frame_count)}',
        f'-XMP-fbstack:StackMethod={info.method}',
        f'-XMP-fbstack:ReferenceFrame={job.ref_name}',
        f'-XMP-fbstack:MetadataBase={job.base_name}',
        f'-XMP-fbstack:Software={sw}',
        *(f'-XMP-fbstack:SourceFiles={n}' for n in names),
    ]
    doc = tag(base, 'XMP-xmpMM:DocumentID')
    orig_doc = tag(base, 'XMP-xmpMM:OriginalDocumentID') or doc
    derived = f'FilePath={_struct_escape(job.base_name)}'
    if doc:
        derived += f',DocumentID={_struct_escape(str(doc))}'
    inst = tag(base, 'XMP-xmpMM:InstanceID')
    if inst:
        derived += f',InstanceID={_struct_escape(str(inst))}'
    new_iid = f'xmp.iid:{uuid.uuid4()}'
    exif_now, off = stamp
    args += [
        f'-XMP-xmpMM:DocumentID=xmp.did:{uuid.uuid4()}',
        f'-XMP-xmpMM:InstanceID={new_iid}',
        f'-XMP-xmpMM:DerivedFrom={{{derived}}}',
        '-XMP-xmpMM:Ingredients=['
        + ','.join(f'{{FilePath={_struct_escape(n)}}}' for n in names)
        + ']',
        '-XMP-xmpMM:History=[{Action=derived,'
        f'Parameters={_struct_escape(f"focus stack of {info.frame_count} frames ({info.method})")},'
        f'SoftwareAgent={_struct_escape(sw)},InstanceID={_struct_escape(new_iid)},'
        f'When={exif_now}{_struct_escape(off)}}}]',
        f'-XMP-dc:Source=focus stack of {info.frame_count} frames: ' + ', '.join(names),
    ]
    if orig_doc:
        args.append(f'-XMP-xmpMM:OriginalDocumentID={orig_doc}')
    return args


def _edit(et, tmp: Path, args: list[str]):
    """exiftool ``args`` on ``tmp`` in place: the result, and whether it updated the file."""
    res = run(et, [*args, '-overwrite_original', fname(tmp)])
    return res, res.status == 0 and res.counts.get('updated', 0) == 1


def _write_tags(
    et, base_arg: str, args: list[str], tmp: Path, ftype: str, report: MergeReport
) -> None:
    """Pass 1: the copy ``tmp`` cleared of its metadata, then the base's tags and ``args``."""
    res, ok = _edit(et, tmp, ['-n', *_clear_args(ftype), '-TagsFromFile', base_arg, *args])
    if not ok:
        err = res.errors_by_file()
        msg = (
            err.get(fname(tmp))
            or next(iter(err.values()), None)
            or (res.stderr.strip() or 'exiftool could not write the file')
        )
        raise ExifError(f'writing metadata failed: {msg}', report.target)
    report.warnings += [f'{w}' for w in res.warnings_by_file().values()]


def _maker_notes(et, tmp: Path) -> dict:
    out, _ = read_json(et, [tmp], ['MakerNotes:all'], extra=['-n'], groups='-G0:1')
    return out.get(os.path.abspath(tmp), {})


def _copy_maker_notes(
    et, base_arg: str, tmp: Path, base_groups: set[str], report: MergeReport
) -> dict:
    """Pass 2: the maker notes that pass 1 dropped (CR3 bases); the output's maker notes."""
    out = _maker_notes(et, tmp)
    if 'MakerNotes' in base_groups and _maker_group(out) is None:
        res, ok = _edit(et, tmp, ['-n', '-TagsFromFile', base_arg, '-makernotes'])
        if not ok:
            report.warnings.append(
                f'{report.base}: maker notes could not be copied '
                f'({(res.stderr or "").strip() or "no change"})'
            )
        else:
            report.makernotes_second_pass = True
        out = _maker_notes(et, tmp)
    report.makernotes = _maker_group(out)
    return out


def _write_canon_focus(et, tmp: Path, out: dict, report: MergeReport) -> None:
    """Pass 3: the focus range into Canon's own FocusDistanceLower/Upper, where the output's
    maker notes have them."""
    near, far = report.focus_near, report.focus_far
    if near is None or not any(k.endswith(':Canon:FocusDistanceUpper') for k in out):
        return
    lo = min(near, 655.35)
    hi = 655.35 if math.isinf(far) else min(far, 655.35)
    lower, upper = f'-Canon:FocusDistanceLower={lo:.2f}', f'-Canon:FocusDistanceUpper={hi:.2f}'
    if _edit(et, tmp, ['-n', lower, upper])[1]:
        chk, _ = read_json(et, [tmp], ['Canon:FocusDistanceLower#', 'Canon:FocusDistanceUpper#'])
        c = chk.get(os.path.abspath(tmp), {})
        report.canon_focus_written = (
            abs(float(c.get('Canon:FocusDistanceLower', -1)) - round(lo, 2)) < 0.006
            and abs(float(c.get('Canon:FocusDistanceUpper', -1)) - round(hi, 2)) < 0.006
        )
    if not report.canon_focus_written:
        report.warnings.append(f'{report.target}: Canon FocusDistanceLower/Upper not written')


def _validate(et, tmp: Path, report: MergeReport) -> None:
    """exiftool -validate on the result, into the report."""
    res = run(et, ['-validate', '-warning', '-error', '-a', '-s', fname(tmp)])
    for line in res.stdout.splitlines():
        key, _, val = line.partition(':')
        key, val = key.strip(), val.strip()
        if key.endswith('Validate'):
            report.validation = val
        elif key.endswith('Warning'):
            report.validation_warnings.append(val)
        elif key.endswith('Error'):
            report.validation_errors.append(val)


# ------------------------------------------------------------------------------------------------
# sources_have_metadata: a cheap header check, no exiftool needed

_CAMERA_TAGS = (0x010F, 0x0110, 0x02BC)  # Make, Model, XMP in IFD0
_DATE_ORIGINAL, _EXIF_IFD = 0x9003, 0x8769
_XMP_HINTS = (
    b'tiff:Make',
    b'exif:DateTimeOriginal',
    b'photoshop:DateCreated',
    b'aux:Lens',
    b'exifEX:LensModel',
    b'xmp:CreateDate',
)


def _file_has_metadata(path: Path) -> bool:
    """Make, Model or XMP in IFD0, DateTimeOriginal in the ExifIFD (of a TIFF or the EXIF block
    of a JPEG or PNG), XMP with camera tags, or a camera RAW container."""
    try:
        with open(path, 'rb') as fh:
            kind = sniff(fh.read(16))
            if kind == 'raw':
                return True  # CR3, RAF, ORF, RW2, CRW, MRW, X3F: camera files always carry EXIF
            if kind == 'tiff':
                fh.seek(0)
                with tifffile.TiffFile(fh) as tif:
                    tags = tif.pages.first.tags
                    exif_ifd = tags.valueof(_EXIF_IFD) or {}  # tifffile: a dict by tag name
                    return any(map(tags.valueof, _CAMERA_TAGS)) or 'DateTimeOriginal' in exif_ifd
            if kind not in ('jpeg', 'png'):
                return False
            info = open_header(fh, kind).info
            tags = exif(info)
            if any(map(tags.get, _CAMERA_TAGS)) or _DATE_ORIGINAL in tags.get_ifd(_EXIF_IFD):
                return True
            xmp = info.get('xmp') or info.get('XML:com.adobe.xmp') or b''  # APP1, iTXt, tEXt
            xmp = xmp.encode('utf-8', 'replace') if isinstance(xmp, str) else xmp
            return any(h in xmp for h in _XMP_HINTS) or 'Raw profile type exif' in info
    except Exception:  # unreadable here: nothing worth copying
        return False


def sources_have_metadata(sources) -> bool:
    """Do the inputs carry EXIF/XMP worth copying (Make, Model, DateTimeOriginal, XMP camera
    tags)?  A header check in pure Python: works without exiftool, so a bracket of synthetic
    PNGs can be stacked on a machine without exiftool."""
    return any(_file_has_metadata(Path(s)) for s in sources)
