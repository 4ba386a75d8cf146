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
import struct
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pybridge.atomic import replaced

from . import focus as _focus
from .tool import ExifError, fname, maybe_exiftool, read_json, run, tag

__all__ = ['StackInfo', 'MergeReport', 'merge_metadata', 'sources_have_metadata', 'software_name']


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
            f'{self.target}: metadata from {self.base.name}, {self.frame_count} frames, '
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
        if key in facts:
            args += [f'-{t}={facts[key]}' for t in tags]
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
    target = Path(target)
    sources = [Path(s) for s in sources]
    if not target.is_file():
        raise ExifError('no such file', target)
    if not sources:
        raise ExifError('no source files given for the metadata', target)
    for s in sources:
        if not s.is_file():
            raise ExifError('no such file (metadata source)', s)
    if base is None:
        idx = (
            info.reference_index if 0 <= info.reference_index < len(sources) else len(sources) // 2
        )
        base = sources[idx]
    base = Path(base)
    if not base.is_file():
        raise ExifError('no such file (metadata base)', base)
    for src in [*sources, base]:  # never rewrite a camera original
        if _same_file(target, src):
            raise ExifError(f'the output is also a metadata source ({src}); not writing it', target)
    names = list(info.source_names) if info.source_names else [s.name for s in sources]
    if len(names) != len(sources):
        raise ExifError(f'{len(names)} source names for {len(sources)} sources', target)
    ref_idx = info.reference_index if 0 <= info.reference_index < len(sources) else None
    ref_name = names[ref_idx] if ref_idx is not None else base.name
    base_name = names[sources.index(base)] if base in sources else base.name
    report = MergeReport(target=target, base=base, frame_count=info.frame_count)

    with maybe_exiftool(exiftool) as et, _format_free(base) as base_arg:
        # -- read: every frame's focus distance, the base in full, the target's structure ----
        frame_files = sources + ([base] if base not in sources else [])
        frames, fres = read_json(et, frame_files, _focus.FOCUS_TAGS + ['LensID', 'Make'])
        base_key = os.path.abspath(base)
        if base_key not in frames or 'ExifTool:Error' in frames[base_key]:
            msg = (
                frames.get(base_key, {}).get('ExifTool:Error')
                or fres.errors_by_file().get(base_key)
                or 'exiftool cannot read its metadata'
            )
            raise ExifError(msg, base)
        base_raw, _ = read_json(et, [base], extra=['-n'], groups='-G0:1')
        base01 = base_raw.get(base_key, {})
        base_flat, base_fam0 = _split_groups(base01)
        tgt_key = os.path.abspath(target)
        tmeta, tres = read_json(
            et, [target], ['FileType', 'ImageSize', 'ProfileDescription', 'IFD0:ImageDescription']
        )
        t = tmeta.get(tgt_key, {})
        if not t or 'ExifTool:Error' in t:
            msg = (
                t.get('ExifTool:Error')
                or tres.errors_by_file().get(tgt_key)
                or 'exiftool cannot read this file'
            )
            raise ExifError(msg, target)
        ftype = str(tag(t, 'File:FileType', default='')).upper()
        if ftype not in _WRITABLE_OUTPUTS:
            raise ExifError(
                f'cannot write merged metadata into a {ftype or "unknown"} file '
                '(TIFF, JPEG and PNG are supported)',
                target,
            )
        width, height = _image_size(t)

        # -- focus range ----------------------------------------------------------------------
        readings = []
        for s in sources:
            m = frames.get(os.path.abspath(s))
            if m is None or 'ExifTool:Error' in m:
                report.warnings.append(f'{s}: no readable metadata, focus distance unknown')
                readings.append(_focus.FocusReading())
            else:
                readings.append(_focus.focus_reading(m))
        near, far, fsrc = _focus.bracket_range(readings)
        report.focus_near, report.focus_far, report.focus_source = near, far, fsrc
        report.frames_with_focus = sum(r.known for r in readings)
        report.frame_distances = [r.distance for r in readings]

        # -- pass 1: copy the base, fix structure tags, add lens, focus and provenance ------------
        now = _dt.datetime.now().astimezone().replace(microsecond=0)
        off = now.strftime('%z')
        off = f'{off[:3]}:{off[3:]}' if off else '+00:00'
        exif_now = now.strftime('%Y:%m:%d %H:%M:%S')
        sw = info.software
        copy = ['-all:all', '-unsafe']
        if not tag(t, 'ICC_Profile:ProfileDescription') and 'ICC_Profile' in base_fam0:
            copy.append('-icc_profile')  # the pixels are in the frames' own encoding
        excl = list(_EXCLUDE) + ([] if ftype == 'JPEG' else _EXCLUDE_NON_JPEG)
        gps = [k for k in base_flat if k.startswith('GPS:')]
        if gps and all(k == 'GPS:GPSVersionID' for k in gps):
            excl.append('--GPS:all')  # an empty GPS IFD: validate complains, nothing lost
        assign = [
            '-IFD0:Orientation=1',
            '-XMP-tiff:Orientation=',
            f'-IFD0:Software={sw}',
            f'-IFD0:ModifyDate={exif_now}',
            f'-ExifIFD:OffsetTime={off}',
            f'-XMP-xmp:ModifyDate={exif_now}{off}',
            f'-XMP-xmp:MetadataDate={exif_now}{off}',
            f'-XMP-xmp:CreatorTool={sw}',
        ]
        assign.append('-ExifIFD:SubSecTime=')  # belonged to the base's ModifyDate
        ver = str(tag(base_flat, 'ExifIFD:ExifVersion', default='') or '')
        if not ver.isdigit() or ver < '0231':  # we write OffsetTime (2.31), LensModel (2.3)
            assign.append('-ExifIFD:ExifVersion=0231')
        if ftype != 'JPEG':  # exiftool adds it to every new ExifIFD; it describes JPEG data
            assign.append('-ExifIFD:ComponentsConfiguration=')
        if ftype == 'TIFF':
            assign += ['-ExifIFD:ExifImageWidth=', '-ExifIFD:ExifImageHeight=']
        elif width and height:
            assign += [f'-ExifIFD:ExifImageWidth={width}', f'-ExifIFD:ExifImageHeight={height}']
        desc = tag(t, 'IFD0:ImageDescription')
        if (
            isinstance(desc, str)
            and desc.startswith('{"shape"')
            and not base_flat.get('IFD0:ImageDescription')
        ):
            assign.append('-IFD0:ImageDescription=')  # tifffile's private shape note
        prof = tag(t, 'ICC_Profile:ProfileDescription')
        if prof and 'srgb' not in str(prof).lower():
            assign.append('-ExifIFD:ColorSpace=65535')  # uncalibrated: the ICC profile rules

        lens = _lens_facts(base_flat, frames[base_key])
        report.lens_model = lens.get('model')
        assign += _lens_args(lens)

        if near is not None:
            assign += [
                f'-XMP-fbstack:FocusDistanceNear={_focus.xmp_distance(near)}',
                f'-XMP-fbstack:FocusDistanceFar={_focus.xmp_distance(far)}',
                f'-XMP-fbstack:FocusDistanceSource={fsrc}',
            ]
            assign += [
                f'-XMP-fbstack:FrameFocusDistances='
                f'{_focus.xmp_distance(r.distance) if r.known else 0}'
                for r in readings
            ]
        else:
            assign += ['-XMP-fbstack:FrameFocusDistances=']
        assign += [
            f'-XMP-fbstack:FrameCount={int(info.frame_count)}',
            f'-XMP-fbstack:StackMethod={info.method}',
            f'-XMP-fbstack:ReferenceFrame={ref_name}',
            f'-XMP-fbstack:MetadataBase={base_name}',
            f'-XMP-fbstack:Software={sw}',
        ]
        assign += [f'-XMP-fbstack:SourceFiles={n}' for n in names]
        # xmpMM: a new document derived from the base, made of the frames
        doc = tag(base_flat, 'XMP-xmpMM:DocumentID')
        orig_doc = tag(base_flat, 'XMP-xmpMM:OriginalDocumentID') or doc
        derived = f'FilePath={_struct_escape(base_name)}'
        if doc:
            derived += f',DocumentID={_struct_escape(str(doc))}'
        inst = tag(base_flat, 'XMP-xmpMM:InstanceID')
        if inst:
            derived += f',InstanceID={_struct_escape(str(inst))}'
        new_iid = f'xmp.iid:{uuid.uuid4()}'
        assign += [
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
            assign.append(f'-XMP-xmpMM:OriginalDocumentID={orig_doc}')

        with replaced(target, 'fbmeta') as tmp:
            # a copy edited in place, not exiftool's -o: that name would be a format string too
            shutil.copyfile(target, tmp)
            res = run(
                et,
                [
                    '-n',
                    '-TagsFromFile',
                    base_arg,
                    *copy,
                    *excl,
                    *assign,
                    '-overwrite_original',
                    fname(tmp),
                ],
            )
            if res.status != 0 or res.counts.get('updated', 0) != 1:
                err = res.errors_by_file()
                msg = (
                    err.get(fname(tmp))
                    or next(iter(err.values()), None)
                    or (res.stderr.strip() or 'exiftool could not write the file')
                )
                raise ExifError(f'writing metadata failed: {msg}', target)
            report.warnings += [f'{w}' for w in res.warnings_by_file().values()]

            # -- pass 2: maker notes that the one-pass copy dropped (CR3 bases) --------------------
            out01, _ = read_json(et, [tmp], ['MakerNotes:all'], extra=['-n'], groups='-G0:1')
            out = out01.get(os.path.abspath(tmp), {})
            if 'MakerNotes' in base_fam0 and _maker_group(out) is None:
                res = run(
                    et,
                    [
                        '-n',
                        '-TagsFromFile',
                        base_arg,
                        '-makernotes',
                        '-overwrite_original',
                        fname(tmp),
                    ],
                )
                if res.status != 0 or res.counts.get('updated', 0) != 1:
                    report.warnings.append(
                        f'{base}: maker notes could not be copied '
                        f'({(res.stderr or "").strip() or "no change"})'
                    )
                else:
                    report.makernotes_second_pass = True
                out01, _ = read_json(et, [tmp], ['MakerNotes:all'], extra=['-n'], groups='-G0:1')
                out = out01.get(os.path.abspath(tmp), {})
            report.makernotes = _maker_group(out)

            # -- pass 3: the focus range into Canon's own pair -------------------------------------
            has_canon_focus = any(k.endswith(':Canon:FocusDistanceUpper') for k in out)
            if near is not None and has_canon_focus:
                lo = min(near, 655.35)
                hi = 655.35 if math.isinf(far) else min(far, 655.35)
                res = run(
                    et,
                    [
                        '-n',
                        f'-Canon:FocusDistanceLower={lo:.2f}',
                        f'-Canon:FocusDistanceUpper={hi:.2f}',
                        '-overwrite_original',
                        fname(tmp),
                    ],
                )
                if res.status == 0 and res.counts.get('updated', 0) == 1:
                    chk, _ = read_json(
                        et, [tmp], ['Canon:FocusDistanceLower#', 'Canon:FocusDistanceUpper#']
                    )
                    c = chk.get(os.path.abspath(tmp), {})
                    report.canon_focus_written = (
                        abs(float(c.get('Canon:FocusDistanceLower', -1)) - round(lo, 2)) < 0.006
                        and abs(float(c.get('Canon:FocusDistanceUpper', -1)) - round(hi, 2)) < 0.006
                    )
                if not report.canon_focus_written:
                    report.warnings.append(f'{target}: Canon FocusDistanceLower/Upper not written')

            # -- validate, then replace the target ----------------------------------------------------
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
    return report


# ------------------------------------------------------------------------------------------------
# sources_have_metadata: a cheap header sniff, no exiftool needed

_TIFF_MAKE, _TIFF_MODEL, _TIFF_EXIF, _TIFF_XMP, _TIFF_DTO = 0x010F, 0x0110, 0x8769, 0x02BC, 0x9003
_XMP_HINTS = (
    b'tiff:Make',
    b'exif:DateTimeOriginal',
    b'photoshop:DateCreated',
    b'aux:Lens',
    b'exifEX:LensModel',
    b'xmp:CreateDate',
)


def _tiff_has_metadata(buf: bytes) -> bool:
    """Make / Model / ExifIFD DateTimeOriginal in a TIFF structure (file or EXIF block)."""
    if len(buf) < 8 or buf[:2] not in (b'II', b'MM'):
        return False
    e = '<' if buf[:2] == b'II' else '>'
    magic = struct.unpack(e + 'H', buf[2:4])[0]
    if magic == 43:  # BigTIFF: not produced by cameras; look for the strings instead
        return False

    def entries(off):
        if off + 2 > len(buf):
            return []
        n = struct.unpack(e + 'H', buf[off : off + 2])[0]
        out = []
        for i in range(min(n, 512)):
            p = off + 2 + 12 * i
            if p + 12 > len(buf):
                break
            t, typ, cnt = struct.unpack(e + 'HHI', buf[p : p + 8])
            out.append((t, typ, cnt, buf[p + 8 : p + 12]))
        return out

    ifd0 = struct.unpack(e + 'I', buf[4:8])[0]
    for t, _type, cnt, val in entries(ifd0):
        if t in (_TIFF_MAKE, _TIFF_MODEL) and cnt > 1:
            return True
        if t == _TIFF_XMP and cnt > 0:
            return True
        if t == _TIFF_EXIF:
            exif_off = struct.unpack(e + 'I', val)[0]
            if any(tt == _TIFF_DTO for tt, *_ in entries(exif_off)):
                return True
    return False


def _file_has_metadata(path: Path) -> bool:
    try:
        with open(path, 'rb') as f:
            head = f.read(1 << 18)
    except OSError:
        return False
    if head[:8] == b'\x89PNG\r\n\x1a\n':
        pos = 8
        while pos + 8 <= len(head):
            n, ctype = struct.unpack('>I4s', head[pos : pos + 8])
            data = head[pos + 8 : pos + 8 + n]
            if ctype == b'eXIf' and _tiff_has_metadata(data):
                return True
            if ctype in (b'iTXt', b'tEXt', b'zTXt') and (
                data.startswith(b'XML:com.adobe.xmp')
                and any(h in data for h in _XMP_HINTS)
                or data.startswith(b'Raw profile type exif')
            ):
                return True
            if ctype == b'IDAT':
                break
            pos += 12 + n
        return False
    if head[:2] == b'\xff\xd8':
        pos = 2
        while pos + 4 <= len(head) and head[pos] == 0xFF:
            marker = head[pos + 1]
            if marker in (0xD9, 0xDA):
                break
            n = struct.unpack('>H', head[pos + 2 : pos + 4])[0]
            data = head[pos + 4 : pos + 2 + n]
            if marker == 0xE1 and data.startswith(b'Exif\x00\x00') and _tiff_has_metadata(data[6:]):
                return True
            if (
                marker == 0xE1
                and data.startswith(b'http://ns.adobe.com/xap/1.0/')
                and any(h in data for h in _XMP_HINTS)
            ):
                return True
            pos += 2 + n
        return False
    if head[:2] in (b'II', b'MM'):
        if head[2:4] in (b'RO', b'U\x00'):  # Olympus ORF, Panasonic RW2: camera raw
            return True
        return _tiff_has_metadata(head) or (len(head) >= 8 and _tiff_has_metadata_full(path))
    if head[4:8] == b'ftyp' or head[:8] == b'FUJIFILM' or head[:4] in (b'FOVb', b'\x00MRM'):
        return True  # CR3/HEIF, RAF, X3F, MRW: camera files always carry EXIF
    return False


def _tiff_has_metadata_full(path: Path) -> bool:
    """IFD0 beyond the first 256 KiB (tifffile may write the IFD after the pixels)."""
    try:
        size = os.path.getsize(path)
        if size > (1 << 18) and size < (1 << 31):
            with open(path, 'rb') as f:
                hdr = f.read(8)
                e = '<' if hdr[:2] == b'II' else '>'
                off = struct.unpack(e + 'I', hdr[4:8])[0]
                if off + 2 > size:
                    return False
                f.seek(off)
                chunk = f.read(2 + 12 * 512 + 4)
                n = struct.unpack(e + 'H', chunk[:2])[0]
                for i in range(min(n, 512)):
                    t = struct.unpack(e + 'H', chunk[2 + 12 * i : 4 + 12 * i])[0]
                    if t in (_TIFF_MAKE, _TIFF_MODEL, _TIFF_EXIF, _TIFF_XMP):
                        return True
    except (OSError, struct.error):
        return False
    return False


def sources_have_metadata(sources) -> bool:
    """Do the inputs carry EXIF/XMP worth copying (Make, Model, DateTimeOriginal, XMP camera
    tags)?  A header sniff in pure Python: works without exiftool, so a bracket of synthetic
    PNGs can be stacked on a machine without exiftool."""
    return any(_file_has_metadata(Path(s)) for s in sources)
