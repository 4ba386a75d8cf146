"""Focus distance and lens facts per frame, read from whichever tag the camera wrote."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

INF = math.inf
#: How infinity is written into XMP reals (the XMP-aux:ApproximateFocusDistance convention).
XMP_INFINITY = 4294967295

#: Tags to request (numeric values) to find a frame's focus distance.
FOCUS_TAGS = [
    'FocusDistanceUpper#',
    'FocusDistanceLower#',
    'FocusDistance#',
    'FocusDistance2#',
    'SubjectDistance#',
    'ApproximateFocusDistance#',
]

_NOT_MAKERNOTE = (
    'Composite',
    'ExifIFD',
    'IFD0',
    'IFD1',
    'SubIFD',
    'GPS',
    'File',
    'System',
    'ExifTool',
    'QuickTime',
)


@dataclass
class FocusReading:
    distance: float | None = None  # representative distance of the frame, metres (inf allowed)
    near: float | None = None  # lower bound (Canon gives a range per frame)
    far: float | None = None
    source: str | None = None  # 'Canon:FocusDistanceLower/Upper', 'Nikon:FocusDistance', ...

    @property
    def known(self) -> bool:
        return self.distance is not None


def to_metres(value, group: str = '') -> float | None:
    """A focus-distance tag value -> metres, ``inf``, or None when unknown."""
    if value is None:
        return None
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ('inf', 'infinity', '\u221e'):
            return INF
        if s in ('', 'undef', 'unknown', 'n/a'):
            return None
        m = re.match(r'^([-+]?\d+(?:\.\d*)?(?:e[-+]?\d+)?)\s*(m|mm|cm)?$', s)
        if not m:
            return None
        v = float(m.group(1))
        v = v / 1000 if m.group(2) == 'mm' else v / 100 if m.group(2) == 'cm' else v
    else:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return None
    if math.isnan(v):
        return None
    if math.isinf(v) or v >= XMP_INFINITY - 1:
        return INF
    if group == 'Canon' and v >= 655.34:  # int16u/100, 65535 = infinity
        return INF
    if group == 'Panasonic' and v >= 65.534:  # int16u/1000, 65535 = infinity
        return INF
    if v <= 0:
        return INF if group == 'Olympus' and v == 0 else None
    return v


def _group(key: str) -> str:
    return key.split(':', 1)[0] if ':' in key else ''


def focus_reading(meta: dict) -> FocusReading:
    """Pick the frame's focus distance from the best tag present (see docs/metadata.md)."""
    # 1. Canon maker notes: a near/far pair per frame
    lo = to_metres(meta.get('Canon:FocusDistanceLower'), 'Canon')
    hi = to_metres(meta.get('Canon:FocusDistanceUpper'), 'Canon')
    if lo is not None or hi is not None:
        if lo is not None and hi is not None:
            lo, hi = min(lo, hi), max(lo, hi)
            dist = (lo + hi) / 2 if math.isfinite(hi) else lo
        else:
            dist = lo if lo is not None else hi
        return FocusReading(
            dist,
            lo if lo is not None else dist,
            hi if hi is not None else dist,
            'Canon:FocusDistanceLower/Upper',
        )
    # 2. other maker notes (Nikon, Olympus, Panasonic, ...): FocusDistance
    for key in sorted(meta):
        g = _group(key)
        if key.endswith(':FocusDistance') and g not in _NOT_MAKERNOTE and not g.startswith('XMP'):
            v = to_metres(meta[key], g)
            if v is not None:
                return FocusReading(v, v, v, key)
    # 3. Sony: computed by exiftool from FocusPosition(2)
    for key in ('Composite:FocusDistance2', 'Composite:FocusDistance'):
        v = to_metres(meta.get(key))
        if v is not None:
            return FocusReading(v, v, v, key)
    # 4. EXIF SubjectDistance, 5. XMP-aux ApproximateFocusDistance
    for key in (
        'ExifIFD:SubjectDistance',
        'IFD0:SubjectDistance',
        'XMP-exif:SubjectDistance',
        'XMP-aux:ApproximateFocusDistance',
    ):
        v = to_metres(meta.get(key))
        if v is not None:
            return FocusReading(v, v, v, key)
    return FocusReading()


def bracket_range(readings: list[FocusReading]) -> tuple[float | None, float | None, str | None]:
    """(near, far, sources) over the frames that carry a focus distance."""
    known = [r for r in readings if r.known]
    if not known:
        return None, None, None
    near = min(r.near for r in known)
    far = max(r.far for r in known)
    sources = '; '.join(sorted({r.source for r in known}))
    return near, far, sources


def monotonic_breaks(distances: list[float | None]) -> list[int]:
    """Indices (into ``distances``) where a known distance reverses the bracket's direction."""
    idx = [i for i, d in enumerate(distances) if d is not None]
    direction = 0
    breaks = []
    for a, b in zip(idx, idx[1:], strict=False):
        da, db = distances[a], distances[b]
        step = 0 if da == db else (1 if db > da else -1)
        if step == 0:
            continue
        if direction == 0:
            direction = step
        elif step != direction:
            breaks.append(b)
    return breaks


def fmt_distance(v: float | None) -> str:
    if v is None:
        return '-'
    if math.isinf(v):
        return 'inf'
    return f'{v:.3f}'.rstrip('0').rstrip('.') if v < 100 else f'{v:.1f}'


def xmp_distance(v: float) -> float:
    return XMP_INFINITY if math.isinf(v) else round(v, 4)
