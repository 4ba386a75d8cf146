"""Write real CFA DNG files with tifffile, so tests can make RAW brackets that rawpy decodes.

The colour matrix is the XYZ(D65) -> linear sRGB matrix and AsShotNeutral is (1, 1, 1), so
the "camera" space is linear sRGB with a neutral white balance: LibRaw's default sRGB output
with gamma (1, 1) gives back the scene (scaled to 0..1), up to demosaicing error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

# CFA colour codes used by the DNG CFAPattern tag: 0 = red, 1 = green, 2 = blue.
_CFA_CODES = {'R': 0, 'G': 1, 'B': 2}

# XYZ (D65) -> linear sRGB, as DNG's ColorMatrix1 (XYZ -> camera).
_XYZ_TO_SRGB = (
    (3.2404542, -1.5371385, -0.4985314),
    (-0.9692660, 1.8760108, 0.0415560),
    (0.0556434, -0.2040259, 1.0572252),
)

# TIFF data types for tifffile extratags.
_BYTE, _ASCII, _SHORT, _LONG, _RATIONAL, _SRATIONAL = 1, 2, 3, 4, 5, 10


def mosaic(rgb: np.ndarray, cfa: str = 'RGGB') -> np.ndarray:
    """Sample an H x W x 3 image through a 2x2 colour filter array -> H x W."""
    codes = [_CFA_CODES[c] for c in cfa.upper()]
    out = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    for i, code in enumerate(codes):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, code]
    return out


def _rationals(values, denominator=10000):
    flat = []
    for v in values:
        flat += [int(round(v * denominator)), denominator]
    return tuple(flat)


def write_dng(
    path: str | Path,
    image: np.ndarray,
    cfa: str = 'RGGB',
    black: int = 0,
    white: int = 65535,
    orientation: int | None = None,
    make: str = 'FocusBridge',
    model: str = 'Test Sensor',
) -> Path:
    """Write `image` as a 16-bit CFA DNG (DNG 1.4) and return its path.

    `image` is the linear scene as uint16 0..65535: either H x W x 3 RGB (sampled through the
    CFA here) or an H x W mosaic already laid out in `cfa` order. It is stored as
    black + scene * (white - black) / 65535, so the decoder's black/white scaling returns
    the scene. H and W must be even. `orientation` is the TIFF/EXIF Orientation (1..8).
    """
    path = Path(path)
    image = np.asarray(image)
    if image.dtype != np.uint16:
        raise TypeError(f'expected uint16 data, got {image.dtype}')
    if image.ndim == 3:
        image = mosaic(image, cfa)
    if image.ndim != 2 or image.shape[0] % 2 or image.shape[1] % 2:
        raise ValueError(f'need an even-sized H x W mosaic or H x W x 3 image, got {image.shape}')
    if not 0 <= black < white <= 65535:
        raise ValueError('need 0 <= black < white <= 65535')
    stored = black + image.astype(np.float64) * ((white - black) / 65535.0)
    stored = np.round(stored).astype(np.uint16)

    unique_model = f'{make} {model}'
    tags = [
        (271, _ASCII, 0, make, True),  # Make
        (272, _ASCII, 0, model, True),  # Model
        (33421, _SHORT, 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, _BYTE, 4, tuple(_CFA_CODES[c] for c in cfa.upper()), True),  # CFAPattern
        (50706, _BYTE, 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, _BYTE, 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, _ASCII, 0, unique_model, True),  # UniqueCameraModel
        (50710, _BYTE, 3, (0, 1, 2), True),  # CFAPlaneColor
        (50711, _SHORT, 1, 1, True),  # CFALayout: rectangular
        (50713, _SHORT, 2, (1, 1), True),  # BlackLevelRepeatDim
        (50714, _LONG, 1, black, True),  # BlackLevel
        (50717, _LONG, 1, white, True),  # WhiteLevel
        (
            50721,
            _SRATIONAL,
            9,  # ColorMatrix1
            _rationals([v for row in _XYZ_TO_SRGB for v in row]),
            True,
        ),
        (50728, _RATIONAL, 3, _rationals((1.0, 1.0, 1.0)), True),  # AsShotNeutral
        (50778, _SHORT, 1, 21, True),  # CalibrationIlluminant1: D65
    ]
    if orientation is not None:
        tags.append((274, _SHORT, 1, int(orientation), True))
    tifffile.imwrite(
        path,
        stored,
        photometric=32803,
        subfiletype=0,
        metadata=None,
        compression=None,
        extratags=tags,
    )
    return path


def smooth_scene(height: int = 128, width: int = 192, seed: int = 0) -> np.ndarray:
    """A smooth, colourful, asymmetric test scene, uint16 H x W x 3 (easy to demosaic)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    scene = np.stack(
        [
            0.15 + 0.7 * x / width,
            0.5 + 0.3 * np.sin(2 * np.pi * y / height + phase[1]),
            0.2 + 0.6 * (y / height) * (1 - 0.5 * x / width),
        ],
        axis=-1,
    )
    return np.round(np.clip(scene, 0, 1) * 65535).astype(np.uint16)
