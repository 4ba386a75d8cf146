"""WRITE step: atomic 16-bit TIFF / JPEG / PNG outputs, depth and confidence maps.

Decisions worth knowing:
- TIFF is written uncompressed (64-row strips): the fastest to write and to read back, and
  noisy 16-bit photographs gain little from deflate while costing seconds per image.
- JPEG is 8-bit, 4:4:4 chroma (a stacked detail image should not lose colour resolution).
- PNG uses zlib level 1: PNG must be compressed, level 1 is the fast end.
- Quantisation is round-to-nearest without dithering: clip(x, 0, 1) * max + 0.5.
- Depth maps store the raw frame index (0..count-1) as 16-bit grayscale in TIFF/PNG: exact
  and machine-readable (looks black in a viewer; stretch it for display). A description
  (TIFF ImageDescription / PNG tEXt) says so. JPEG depth maps are a scaled 8-bit preview.
- Every encoder writes through a Python file object or bytes, never cv2.imwrite, so any
  file name works. JPEG is Pillow's (it embeds the ICC profile); PNG is OpenCV's, which
  writes 16-bit RGB, with the ICC profile and description chunks added after (headers.py).
- Every image says focusbridge wrote it: Software = `focusbridge VERSION`, with what it is
  when it is not a result (`focusbridge 0.1.0 (depth map)`), in TIFF tag 305, a PNG tEXt
  chunk or a JPEG's EXIF, so that finding brackets (brackets.py) never takes it for a frame,
  with or without the metadata merge (which writes the same Software: exif/merge.py).
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from .errors import OutputError, one_line
from .headers import SOFTWARE_TAG, png_with_chunks

TIFF_EXTENSIONS = frozenset({'.tif', '.tiff'})
JPEG_EXTENSIONS = frozenset({'.jpg', '.jpeg'})
PNG_EXTENSIONS = frozenset({'.png'})
OUTPUT_EXTENSIONS = TIFF_EXTENSIONS | JPEG_EXTENSIONS | PNG_EXTENSIONS

_ICC_TAG = 34675


# ---------------------------------------------------------------------------- encoders


def _quantize(pixels: np.ndarray, maxval: int, dtype) -> np.ndarray:
    q = np.clip(pixels, 0.0, 1.0).astype(np.float32, copy=False)
    np.nan_to_num(q, copy=False, nan=0.0)
    q *= maxval
    q += 0.5
    return q.astype(dtype)


def _as_image(path: Path, pixels: np.ndarray) -> np.ndarray:
    """H x W, H x W x 1 or H x W x 3 (RGB) -> H x W or H x W x 3; ints scaled to 0..1."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise OutputError(path, f'cannot write an image of shape {pixels.shape}')
    if pixels.dtype.kind in 'ub':
        pixels = pixels.astype(np.float32) / float(
            np.iinfo(pixels.dtype).max if pixels.dtype.kind == 'u' else 1
        )
    return pixels


def _to_bgr(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[:, :, ::-1]) if img.ndim == 3 else img


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        with open(path, 'wb') as fh:
            fh.write(data)
    except OSError as exc:
        raise OutputError(path, f'cannot write ({one_line(exc.strerror or exc)})') from None


def software(role: str | None = None) -> str:
    """The Software every image written here carries: 'focusbridge 0.1.0' for a result (what
    the metadata merge writes too), 'focusbridge 0.1.0 (depth map)' for other images."""
    from . import __version__

    return f'focusbridge {__version__}' + (f' ({role})' if role else '')


def _encode_png(
    path: Path, img: np.ndarray, icc: bytes | None, description: str | None, role: str | None
) -> bytes:
    ok, buf = cv2.imencode('.png', _to_bgr(img), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OutputError(path, 'the PNG encoder failed')
    return png_with_chunks(buf.tobytes(), icc, description, software(role))


def _encode_jpeg(
    path: Path, img: np.ndarray, quality: int, icc: bytes | None, role: str | None
) -> bytes:
    marker = Image.Exif()
    marker[SOFTWARE_TAG] = software(role)
    out = io.BytesIO()
    try:  # subsampling=0: 4:4:4
        Image.fromarray(img).save(
            out, 'JPEG', quality=quality, subsampling=0, icc_profile=icc, exif=marker.tobytes()
        )
    except (OSError, ValueError) as exc:  # over 65500 pixels wide, ICC profile too large
        raise OutputError(path, f'the JPEG encoder failed ({one_line(exc)})') from None
    return out.getvalue()


def _write_tiff(
    path: Path, img: np.ndarray, icc: bytes | None, description: str | None, role: str | None
):
    extratags = [(_ICC_TAG, 'B', len(icc), icc, True)] if icc else []
    try:
        with open(path, 'wb') as fh:
            tifffile.imwrite(
                fh,
                img,
                photometric='rgb' if img.ndim == 3 else 'minisblack',
                planarconfig='contig',
                compression=None,
                rowsperstrip=64,
                description=description,
                software=software(role),
                metadata=None,
                extratags=extratags,
            )
    except OSError as exc:
        raise OutputError(path, f'cannot write ({one_line(exc.strerror or exc)})') from None


def write_image(
    path: str | Path,
    pixels: np.ndarray,
    bit_depth: int = 16,
    icc: bytes | None = None,
    jpeg_quality: int = 95,
    *,
    description: str | None = None,
    role: str | None = None,
) -> None:
    """Write float RGB/gray 0..1 pixels; the format comes from the extension.

    TIFF: 8 or 16 bit (32 writes float32 as is); PNG: 8 or 16 bit; JPEG: always 8 bit.
    `icc` is embedded in all three. `description` goes to TIFF ImageDescription / PNG tEXt.
    `role`: what the image is when it is not a result, in its Software ('depth map').
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in OUTPUT_EXTENSIONS:
        raise OutputError(
            path, f'unsupported output format {ext or "(no extension)"!r} (use .tif, .jpg or .png)'
        )
    img = _as_image(path, pixels)
    icc = bytes(icc) if icc else None
    if ext in TIFF_EXTENSIONS:
        if bit_depth == 32:
            data = np.ascontiguousarray(img, dtype=np.float32)
        elif bit_depth <= 8:
            data = _quantize(img, 255, np.uint8)
        else:
            data = _quantize(img, 65535, np.uint16)
        _write_tiff(path, data, icc, description, role)
        return
    if ext in JPEG_EXTENSIONS:
        out = _encode_jpeg(path, _quantize(img, 255, np.uint8), int(jpeg_quality), icc, role)
    else:
        data = _quantize(img, 255, np.uint8) if bit_depth <= 8 else _quantize(img, 65535, np.uint16)
        out = _encode_png(path, data, icc, description, role)
    _write_bytes(path, out)


def depth_map_levels(index: np.ndarray, count: int) -> np.ndarray:
    """Frame index -> 16-bit level spread over the full range (index * 65535 / (count - 1)),
    so the map is visible in any viewer (darktable imports it into the stack's group) and
    still exact: index = round(level * (count - 1) / 65535) for up to 65536 frames."""
    scale = 65535 / max(count - 1, 1)
    return np.round(np.asarray(index, np.float64) * scale).astype(np.uint16)


def depth_map_index(levels: np.ndarray, count: int) -> np.ndarray:
    """Inverse of depth_map_levels: the frame index of each pixel of a written depth map."""
    return np.round(np.asarray(levels, np.float64) * (max(count - 1, 1) / 65535)).astype(np.int64)


def write_depth_map(path: str | Path, index: np.ndarray, count: int) -> None:
    """Frame index per pixel (0..count-1) as 16-bit greyscale, black = first frame, white =
    last (see depth_map_levels); the frame count is in the file's description."""
    path = Path(path)
    index = np.asarray(index)
    if index.ndim != 2 or index.dtype.kind not in 'iu':
        raise OutputError(
            path, f'depth map must be a 2-D integer array, got {index.dtype} {index.shape}'
        )
    if not 1 <= count <= 65536:
        raise OutputError(path, f'frame count {count} does not fit a 16-bit depth map')
    if index.size and (index.min() < 0 or index.max() >= count):
        raise OutputError(path, f'depth map holds indices outside 0..{count - 1}')
    ext = path.suffix.lower()
    description = (
        f'focusbridge depth map of {count} frames: pixel value = index of the '
        f'sharpest frame (0..{count - 1}, in the order given) * 65535 / {max(count - 1, 1)}'
    )
    if ext in JPEG_EXTENSIONS:  # 8-bit lossy cannot hold indices exactly: a preview
        write_image(
            path, index.astype(np.float32) / max(count - 1, 1), bit_depth=8, role='depth map'
        )
        return
    if ext not in TIFF_EXTENSIONS | PNG_EXTENSIONS:
        raise OutputError(
            path, f'unsupported depth map format {ext or "(no extension)"!r} (use .tif or .png)'
        )
    data = np.ascontiguousarray(depth_map_levels(index, count))
    if ext in TIFF_EXTENSIONS:
        _write_tiff(path, data, None, description, 'depth map')
    else:
        _write_bytes(path, _encode_png(path, data, None, description, 'depth map'))


def write_confidence_map(path: str | Path, conf: np.ndarray) -> None:
    """Per-pixel confidence 0..1 as 16-bit grayscale (8-bit for JPEG)."""
    conf = np.asarray(conf, dtype=np.float32)
    if conf.ndim == 3 and conf.shape[2] == 1:
        conf = conf[:, :, 0]
    if conf.ndim != 2:
        raise OutputError(path, f'confidence map must be 2-D, got shape {conf.shape}')
    write_image(
        path,
        conf,
        bit_depth=16,
        description='focusbridge confidence map: 0..1',
        role='confidence map',
    )
