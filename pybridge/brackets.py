"""Finding the focus brackets among a shoot's files (`focusbridge brackets`, `focusbridge batch`).

Application layer: it reads every file's metadata with one exiftool call (exif/tool.py) and
groups the files; it reads no pixels. Signals, strongest first:

1. in-camera focus bracketing, from the maker notes: Canon `FocusBracketing` (+
   `FocusBracketingImageCount`), Nikon `FocusShiftShooting` (frame N of `FocusShiftNumberShots`),
   Olympus/OM `DriveMode` (focus bracketing, shot N), Panasonic `BurstMode` = focus bracketing
   (`SequenceNumber` N), Phase One `SequenceID` / `SequenceFrameNumber`. Such frames belong
   together until the frame number starts again, the sequence or planned count changes, or
   an untagged frame comes between; the capture interval does not matter (a camera may wait
   seconds between frames). Which of these tags an exiftool decodes depends on its version
   (Canon's since 13.33).
2. capture time with sub-seconds (`SubSecDateTimeOriginal`, or `DateTimeOriginal` +
   `SubSecTimeOriginal`, or Canon's `TimeStamp`), split at gaps: with `--gap S` at every
   interval over S seconds; otherwise at intervals over max(3 x the median interval of the
   run, 2 s), applied again within each part until nothing changes, and always over 30 s.
3. everywhere: a change of camera (Model + serial number), lens, image size or orientation
   ends a bracket, and (untagged frames) so does the focus distance turning back
   (exif/focus.py: a bracket runs near to far or far to near).

`by_folder`: every folder is one bracket, its files in name order (microscopes, focus rails
that write a folder per stack, files without metadata).

Files that are one shot (RAW + JPEG: same folder, same name but the extension, same capture
time to the second) enter a bracket once, as the RAW (else TIFF, PNG, JPEG in that order); the
others are unassigned. A single frame is never a bracket. Files that cannot be in one
(exiftool cannot read them, no capture time, an in-camera composite, an image focusbridge
wrote: write.py's Software mark, read from the file's header without exiftool) are listed as
unassigned with a reason; nothing here raises for a bad file.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .errors import OptionError
from .frames import JPEG_EXTENSIONS, PNG_EXTENSIONS, RAW_EXTENSIONS, TIFF_EXTENSIONS

IMAGE_EXTENSIONS = RAW_EXTENSIONS | TIFF_EXTENSIONS | JPEG_EXTENSIONS | PNG_EXTENSIONS
# which file of one shot saved several ways enters the bracket: the first of these
PREFERENCE = (RAW_EXTENSIONS, TIFF_EXTENSIONS, PNG_EXTENSIONS, JPEG_EXTENSIONS)
# what focusbridge wrote, by the role in its Software ('focusbridge 0.1.0 (depth map)'; a
# result has none, and so do aligned frames until their writers name them: write.py)
OURS = {
    None: "a stacked result",
    "aligned frame": "an aligned frame of a stack",
    "depth map": "a depth map of a stack",
    "confidence map": "a confidence map of a stack",
    "coverage map": "a coverage map of a bracket check",
}
MIN_GAP_S = 2.0  # an interval this short never splits a bracket (unless --gap says so)
GAP_FACTOR = 3.0  # ... nor one up to this many times the run's median interval
MAX_INTERVAL_S = 30.0  # untagged frames further apart than this are never one bracket
NO_TIME = "no capture time (DateTimeOriginal); --by-folder stacks each folder as one bracket"

#: What is read of each file (`#`: the numeric value, exiftool's -n for that tag).
TAGS = [
    'SubSecDateTimeOriginal',
    'DateTimeOriginal',
    'SubSecTimeOriginal',
    'TimeStamp',
    'Model',
    'SerialNumber',
    'InternalSerialNumber',
    'LensModel',
    'LensID',
    'Lens',
    'ImageSize#',
    'Orientation#',
    'Software',
    'FocusBracketing#',
    'FocusBracketingImageCount#',
    'FocusShiftShooting#',
    'FocusShiftNumberShots#',
    'DriveMode#',
    'StackedImage#',
    'BurstMode#',
    'FocusBracket#',
    'SequenceNumber#',
    'SequenceKind',
    'SequenceID',
    'SequenceFrameNumber#',
]


@dataclass(frozen=True)
class InCamera:
    """The camera says the frame belongs to a focus bracket."""

    source: str  # 'Nikon FocusShiftShooting'
    index: int | None = None  # frame number in the bracket (from 1), when the camera says
    count: int | None = None  # frames planned
    series: str | None = None  # a sequence id (Phase One)


@dataclass
class Shot:
    """What the metadata says about one file."""

    path: Path  # as named (a folder joined with the file's name)
    folder: Path
    time: float | None = None  # capture time, seconds (local clock; only differences matter)
    camera: tuple = ()
    lens: str | None = None
    size: tuple[int, int] | None = None  # (width, height) as stored
    orientation: int | None = None
    focus: float | None = None  # metres (inf allowed)
    in_camera: InCamera | None = None
    problem: str | None = None  # why it cannot be in a bracket

    @property
    def pixels(self) -> int | None:
        return self.size[0] * self.size[1] if self.size else None


@dataclass
class Bracket:
    frames: list[Path]  # in capture order (by-folder: name order)
    reason: str
    pixels: int | None = None  # of a frame, from the metadata (None: unknown)

    def to_json(self) -> dict:
        return {"frames": [str(f) for f in self.frames], "reason": self.reason}


@dataclass
class Unassigned:
    path: Path
    reason: str

    def to_json(self) -> dict:
        return {"file": str(self.path), "reason": self.reason}


@dataclass
class Detection:
    brackets: list[Bracket] = field(default_factory=list)
    unassigned: list[Unassigned] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "brackets": [b.to_json() for b in self.brackets],
            "unassigned": [u.to_json() for u in self.unassigned],
        }


# ------------------------------------------------------------------------------ the files


def list_files(
    paths: Iterable[str | os.PathLike], exclude: Iterable[str | os.PathLike] = ()
) -> tuple[list[Shot], list[Unassigned]]:
    """The files named and the image files (RAW, TIFF, JPEG, PNG; not hidden) directly in the
    folders named, each folder's in name order; a file named twice counts once, and those in
    `exclude` (a batch's own results) not at all."""
    shots: list[Shot] = []
    bad: list[Unassigned] = []
    seen: set[str] = {os.path.realpath(p) for p in exclude}

    def add(path: Path, folder: Path) -> None:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            shots.append(Shot(path=path, folder=folder))

    for name in paths:
        p = Path(os.fsdecode(name))
        if p.is_dir():
            try:
                entries = sorted(os.scandir(p), key=lambda e: e.name)
            except OSError as exc:
                bad.append(Unassigned(p, f"cannot list this folder ({exc.strerror or exc})"))
                continue
            for e in entries:
                if (
                    not e.name.startswith('.')
                    and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS
                    and e.is_file()
                ):
                    add(p / e.name, p)
        elif p.is_file():
            add(p, p.parent)
        else:
            bad.append(Unassigned(p, "no such file or folder" if not p.exists() else "not a file"))
    return shots, bad


def read_shots(shots: list[Shot], *, required: bool = True) -> None:
    """Leave out what focusbridge wrote (from the files' headers, exiftool or not), then fill
    in each shot's facts from one exiftool call for all files. `required`: False lets a
    machine without exiftool go on with no facts (--by-folder needs none)."""
    from exif.focus import FOCUS_TAGS
    from exif.tool import ExifError, find_exiftool, fname, open_exiftool, read_json

    from .headers import may_carry_metadata, software_tags

    for s in shots:  # focusbridge writes TIFF, PNG and JPEG only: no RAW is opened here
        if s.path.suffix.lower() not in RAW_EXTENSIONS:
            s.problem = next(filter(None, map(ours, software_tags(s.path))), None)
    # files whose headers hold no EXIF and no XMP (a microscope's or a generator's TIFFs) have
    # nothing for exiftool to read: no capture time, camera or lens (their size is read later)
    shots = [s for s in shots if not s.problem and may_carry_metadata(s.path)]
    if not shots or (not required and find_exiftool() is None):
        return
    readable = []
    for s in shots:
        try:
            fname(s.path)  # a name exiftool can be given (UTF-8, no line break)
            readable.append(s)
        except ExifError as exc:
            s.problem = exc.problem
    with open_exiftool() as et:
        data, res = read_json(et, [s.path for s in readable], TAGS + FOCUS_TAGS)
    errors = res.errors_by_file()
    for s in readable:
        meta = data.get(os.path.abspath(s.path))
        if meta is None:
            why = errors.get(os.path.abspath(s.path)) or errors.get(str(s.path)) or 'no answer'
            s.problem = f"exiftool cannot read it ({why})"
        elif meta.get('ExifTool:Error'):
            s.problem = f"exiftool cannot read it ({meta['ExifTool:Error']})"
        else:
            fill_shot(s, meta)


def fill_shot(s: Shot, meta: dict) -> None:
    """A shot's facts from its metadata (exiftool -G1 JSON, `#` tags numeric)."""
    from exif.focus import focus_reading
    from exif.tool import tag

    s.time = capture_time(meta)
    serial = tag(meta, 'ExifIFD:SerialNumber', '*:SerialNumber', '*:InternalSerialNumber')
    s.camera = (str(tag(meta, 'IFD0:Model', '*:Model', default='')), str(serial or ''))
    lens = tag(meta, 'ExifIFD:LensModel', '*:LensModel', 'Composite:LensID', '*:Lens')
    s.lens = str(lens) if lens is not None else None
    s.size = _size(tag(meta, 'Composite:ImageSize'))
    orientation = tag(meta, 'IFD0:Orientation', '*:Orientation')
    s.orientation = orientation if isinstance(orientation, int) else None
    s.focus = focus_reading(meta).distance
    s.in_camera = in_camera(meta)
    made_here = ours(str(tag(meta, 'IFD0:Software', '*:Software', default='')))
    stacked = str(tag(meta, '*:StackedImage', default='')).split()
    if made_here:
        s.problem = made_here
    elif stacked[:1] == ['9']:
        count = f" of {stacked[1]} frames" if len(stacked) > 1 else ""
        s.problem = f"an in-camera focus-stacked image{count} (Olympus StackedImage), not a frame"


_OURS_RE = re.compile(r'(focusbridge\b[^(]*?)(?: \((.+)\))?$', re.IGNORECASE)


def ours(software: str) -> str | None:
    """Why a file whose Software is `software` is no frame, when focusbridge wrote it."""
    m = _OURS_RE.match(software)
    if not m:
        return None
    what = OURS.get(m.group(2), "an image focusbridge wrote")
    return f"{what} ({m.group(1)}), not a frame"


_TIME_RE = re.compile(r'^\s*(\d{4}):(\d\d):(\d\d)[ T](\d\d):(\d\d):(\d\d)(\.\d+)?')


def parse_time(text) -> float | None:
    """An EXIF date-time (`2024:05:01 10:00:00.25`, any zone suffix ignored) -> seconds, or
    None when absent or invalid (`0000:00:00 00:00:00`)."""
    m = _TIME_RE.match(str(text)) if text not in (None, '') else None
    if not m:
        return None
    try:
        when = datetime(*(int(g) for g in m.groups()[:6]))
    except ValueError:
        return None
    return (when - datetime(1970, 1, 1)).total_seconds() + float(m.group(7) or 0)


def capture_time(meta: dict) -> float | None:
    """Capture time with sub-seconds where the file has them (see the module's docstring)."""
    from exif.tool import tag

    original = parse_time(tag(meta, 'ExifIFD:DateTimeOriginal', '*:DateTimeOriginal'))
    composite = parse_time(tag(meta, 'Composite:SubSecDateTimeOriginal'))
    if composite is not None:
        return composite
    subsec = str(tag(meta, 'ExifIFD:SubSecTimeOriginal', '*:SubSecTimeOriginal', default=''))
    if original is not None and subsec.strip().isdigit():
        return original + float('0.' + subsec.strip())
    stamps = [
        parse_time(v)
        for k, v in meta.items()
        if k.endswith(':TimeStamp') and (k.startswith('Canon:') or k.startswith('Track'))
    ]
    stamps = [t for t in stamps if t is not None]
    if stamps and (original is None or abs(stamps[0] - original) < 1.0):
        return stamps[0]
    return original


def _size(value) -> tuple[int, int] | None:
    nums = re.findall(r'\d+', str(value)) if value is not None else []
    return (int(nums[0]), int(nums[1])) if len(nums) == 2 else None


def _int(value) -> int | None:
    try:
        return int(str(value).split()[0])
    except (ValueError, IndexError):
        return None


def in_camera(meta: dict) -> InCamera | None:
    """The camera's own mark of a focus bracket, if the maker notes carry one."""
    from exif.tool import tag

    if _int(tag(meta, '*:FocusBracketing')) == 1:
        count = _int(tag(meta, '*:FocusBracketingImageCount'))
        return InCamera('Canon FocusBracketing', count=count if count else None)
    shot = _int(tag(meta, '*:FocusShiftShooting'))
    if shot:
        count = _int(tag(meta, '*:FocusShiftNumberShots'))
        return InCamera('Nikon FocusShiftShooting', index=shot, count=count if count else None)
    olympus = [v for k, v in meta.items() if k.startswith('Olympus') and k.endswith(':DriveMode')]
    drive = str(olympus[0] if olympus else '').split()
    if len(drive) >= 3 and drive[0] == '5' and (_int(drive[2]) or 0) & 64:
        return InCamera('Olympus DriveMode', index=_int(drive[1]) or None)
    if _int(tag(meta, 'Panasonic:BurstMode')) == 3:
        number = _int(tag(meta, 'Panasonic:SequenceNumber'))
        return InCamera('Panasonic BurstMode', index=number if number else None)
    series = tag(meta, '*:SequenceID')
    kind = str(tag(meta, '*:SequenceKind', default='focus')).lower()
    if series not in (None, '') and 'focus' in kind:
        number = _int(tag(meta, '*:SequenceFrameNumber'))
        return InCamera('Phase One SequenceID', index=number, series=str(series))
    return None


# ------------------------------------------------------------------------------ grouping


def detect(
    paths: Iterable[str | os.PathLike],
    *,
    gap: float | None = None,
    by_folder: bool = False,
    exclude: Iterable[str | os.PathLike] = (),
) -> Detection:
    """The brackets among `paths` (files and folders); see the module's docstring.
    `exclude`: files to leave out (a batch's own results in a folder it reads)."""
    shots, bad = list_files(paths, exclude)
    read_shots(shots, required=not by_folder)
    return group(shots, gap=gap, by_folder=by_folder, unassigned=bad)


def group(
    shots: Sequence[Shot],
    *,
    gap: float | None = None,
    by_folder: bool = False,
    unassigned: Sequence[Unassigned] = (),
) -> Detection:
    if gap is not None and not 0 < gap < math.inf:
        raise OptionError("gap", f"must be a finite number of seconds > 0, not {gap!r}")
    found = Detection(unassigned=list(unassigned))
    good = []
    for s in shots:
        if s.problem:
            found.unassigned.append(Unassigned(s.path, s.problem))
        elif s.time is None and not by_folder:
            found.unassigned.append(Unassigned(s.path, NO_TIME))
        else:
            good.append(s)
    good = _one_per_shot(good, found.unassigned)
    if by_folder:
        runs: dict[Path, list[Shot]] = {}
        for s in good:
            runs.setdefault(s.folder, []).append(s)
        pieces = [
            (sorted(run, key=lambda s: s.path.name), f"one folder (--by-folder): {folder}")
            for folder, run in runs.items()
        ]
    else:
        good.sort(key=lambda s: (s.time, str(s.path)))
        pieces = [p for run in _hard_runs(good) for p in _split(run, gap)]
    for run, reason in pieces:
        if len(run) < 2:
            found.unassigned += [Unassigned(s.path, "a single frame, not a bracket") for s in run]
        else:
            sizes = [s.pixels for s in run if s.pixels]
            found.brackets.append(
                Bracket([s.path for s in run], reason, max(sizes) if sizes else None)
            )
    when = {str(s.path): s.time for s in shots if s.time is not None}
    found.unassigned.sort(
        key=lambda u: (str(u.path) not in when, when.get(str(u.path), 0.0), str(u.path))
    )
    return found


def _one_per_shot(shots: list[Shot], unassigned: list[Unassigned]) -> list[Shot]:
    """One file of each shot saved several ways (RAW + JPEG: one folder, one name but the
    extension, one capture time to the second; by folder, no time counts as one): the first
    by PREFERENCE, then name. The others go to `unassigned`. A photographer stacks the RAWs,
    and a shot counted twice would make its pace 0 s (and the median interval with it).
    A file named twice (darktable's duplicates of one image, run-job) stays twice."""
    same: dict[tuple, list[Shot]] = {}
    for s in shots:
        when = math.floor(s.time) if s.time is not None else None
        same.setdefault((s.folder, s.path.stem, when), []).append(s)
    kept: set[int] = set()
    for twins in same.values():
        best = min(twins, key=lambda s: (_preference(s.path), s.path.name)).path
        kept.update(id(t) for t in twins if t.path == best)
        unassigned += [
            Unassigned(t.path, f"the same shot as {best.name} (same name and capture time)")
            for t in twins
            if t.path != best
        ]
    return [s for s in shots if id(s) in kept]


def _preference(path: Path) -> int:
    ext = path.suffix.lower()
    return next((i for i, exts in enumerate(PREFERENCE) if ext in exts), len(PREFERENCE))


def _same_setup(a: Shot, b: Shot) -> bool:
    return (a.camera, a.lens, a.size, a.orientation) == (b.camera, b.lens, b.size, b.orientation)


def _hard_runs(shots: list[Shot]) -> list[list[Shot]]:
    """Split the capture-ordered shots where the set-up changes or an in-camera bracket
    starts or ends."""
    runs: list[list[Shot]] = []
    for s in shots:
        prev = runs[-1][-1] if runs else None
        if prev is None or not _same_setup(prev, s) or _tag_break(prev.in_camera, s.in_camera):
            runs.append([s])
        else:
            runs[-1].append(s)
    return runs


def _tag_break(a: InCamera | None, b: InCamera | None) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    if (a.source, a.series, a.count) != (b.source, b.series, b.count) or b.index == 1:
        return True
    return a.index is not None and b.index is not None and b.index <= a.index


def _split(run: list[Shot], gap: float | None) -> list[tuple[list[Shot], str]]:
    tagged = run[0].in_camera
    if tagged is not None and tagged.index is not None:
        first, last = run[0].in_camera.index, run[-1].in_camera.index
        of = f" of {tagged.count}" if tagged.count else ""
        return [(run, f"in-camera focus bracketing ({tagged.source}: frames {first}-{last}{of})")]
    pieces = _split_times(run, gap, ceiling=tagged is None)
    if tagged is not None:  # a flag without frame numbers: times, and the planned count
        size = tagged.count or len(run)
        return [
            (p[i : i + size], f"in-camera focus bracketing ({tagged.source}),{_pace(p, gap)}")
            for p in pieces
            for i in range(0, len(p), size)
        ]
    return [(q, f"capture times{_pace(q, gap)}") for p in pieces for q in _split_focus(p)]


def _intervals(run: Sequence[Shot]) -> list[float]:
    return [b.time - a.time for a, b in zip(run, run[1:], strict=False)]


def _threshold(run: Sequence[Shot], gap: float | None) -> float:
    if gap is not None:
        return gap
    steps = _intervals(run)
    return max(GAP_FACTOR * statistics.median(steps), MIN_GAP_S) if steps else MIN_GAP_S


def _split_times(run: list[Shot], gap: float | None, ceiling: bool) -> list[list[Shot]]:
    """Split at gaps; the adaptive threshold is worked out again within each part."""
    if len(run) < 2:
        return [run]
    limit = _threshold(run, gap)
    if ceiling and gap is None:
        limit = min(limit, MAX_INTERVAL_S)
    parts: list[list[Shot]] = [[run[0]]]
    for step, s in zip(_intervals(run), run[1:], strict=True):
        if step > limit:
            parts.append([s])
        else:
            parts[-1].append(s)
    if len(parts) == 1 or gap is not None:
        return parts
    return [q for p in parts for q in _split_times(p, gap, ceiling)]


def _split_focus(run: list[Shot]) -> list[list[Shot]]:
    """Split where the focus distance turns back (a new bracket starts at the near or far end
    again); the direction is found afresh in each part."""
    from exif.focus import monotonic_breaks

    breaks = monotonic_breaks([s.focus for s in run])
    if not breaks:
        return [run]
    return [run[: breaks[0]], *_split_focus(run[breaks[0] :])]


def _pace(run: Sequence[Shot], gap: float | None) -> str:
    steps = _intervals(run)
    if not steps:
        return ""
    median = statistics.median(steps)
    limit = _threshold(run, gap)
    how = " (--gap)" if gap is not None else ""
    return f" {fmt_seconds(median)} apart (median); split at pauses over {fmt_seconds(limit)}{how}"


def fmt_seconds(s: float) -> str:
    if math.isinf(s):
        return "inf"
    return f"{s:.3g} s"


# ------------------------------------------------------------------------------ the report


def format_table(found: Detection) -> str:
    """The readable report of `focusbridge brackets`."""
    n, u = len(found.brackets), len(found.unassigned)
    lines = [
        f"{n} bracket{'s' * (n != 1)}, {u} file{'s' * (u != 1)} in no bracket",
    ]
    for i, b in enumerate(found.brackets, 1):
        lines += ["", f"bracket {i}: {len(b.frames)} frames, {b.reason}"]
        lines += [f"  {f}" for f in b.frames]
    if found.unassigned:
        lines += ["", "in no bracket:"]
        width = min(max(len(printable(u.path)) for u in found.unassigned), 60)
        lines += [f"  {printable(u.path):<{width}}  {u.reason}" for u in found.unassigned]
    return "\n".join(map(printable, lines))


_CONTROL = {c: repr(chr(c))[1:-1] for c in [*range(32), 127]}


def printable(text) -> str:
    """`text` (a file name) with control characters escaped as Python writes them (`\\n`),
    so a name with a line break stays on its line of the report."""
    return str(text).translate(_CONTROL)
