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
  file name works.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import tifffile

from .errors import OutputError, one_line

TIFF_EXTENSIONS = frozenset({'.tif', '.tiff'})
JPEG_EXTENSIONS = frozenset({'.jpg', '.jpeg'})
PNG_EXTENSIONS = frozenset({'.png'})
OUTPUT_EXTENSIONS = TIFF_EXTENSIONS | JPEG_EXTENSIONS | PNG_EXTENSIONS

_ICC_TAG = 34675
_ICC_SEGMENT_MAX = 65535 - 2 - 14  # APP2 length field counts itself; 14-byte header


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


def _jpeg_with_icc(jpeg: bytes, icc: bytes) -> bytes:
    """Insert ICC_PROFILE APP2 segments after SOI and a leading APP0 (JFIF)."""
    chunks = [icc[i : i + _ICC_SEGMENT_MAX] for i in range(0, len(icc), _ICC_SEGMENT_MAX)]
    if len(chunks) > 255:
        raise ValueError('ICC profile too large for JPEG')
    segments = b''.join(
        b'\xff\xe2'
        + struct.pack('>H', 2 + 14 + len(c))
        + b'ICC_PROFILE\x00'
        + bytes((n, len(chunks)))
        + c
        for n, c in enumerate(chunks, 1)
    )
    pos = 2
    if jpeg[2:4] == b'\xff\xe0':
        pos = 4 + struct.unpack_from('>H', jpeg, 4)[0]
    return jpeg[:pos] + segments + jpeg[pos:]


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return (
        struct.pack('>I', len(body))
        + ctype
        + body
        + struct.pack('>I', zlib.crc32(ctype + body) & 0xFFFFFFFF)
    )


def _png_insert(png: bytes, chunks: bytes) -> bytes:
    """Insert ready-made chunks right after IHDR (before PLTE and IDAT, as iCCP needs)."""
    ihdr_end = 8 + 12 + struct.unpack_from('>I', png, 8)[0]
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def _iccp_chunk(icc: bytes) -> bytes:
    return _png_chunk(b'iCCP', b'ICC profile\x00\x00' + zlib.compress(icc))


def _text_chunk(keyword: str, text: str) -> bytes:
    return _png_chunk(
        b'tEXt', keyword.encode('latin-1') + b'\x00' + text.encode('latin-1', 'replace')
    )


def _encode_cv2(path: Path, ext: str, img: np.ndarray, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, _to_bgr(img), params)
    if not ok:
        raise OutputError(path, f'the {ext[1:].upper()} encoder failed')
    return buf.tobytes()


def _write_tiff(path: Path, img: np.ndarray, icc: bytes | None, description: str | None):
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
) -> None:
    """Write float RGB/gray 0..1 pixels; the format comes from the extension.

    TIFF: 8 or 16 bit (32 writes float32 as is); PNG: 8 or 16 bit; JPEG: always 8 bit.
    `icc` is embedded in all three. `description` goes to TIFF ImageDescription / PNG tEXt.
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
        _write_tiff(path, data, icc, description)
        return
    if ext in JPEG_EXTENSIONS:
        params = [
            cv2.IMWRITE_JPEG_QUALITY,
            int(jpeg_quality),
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
        ]
        out = _encode_cv2(path, '.jpg', _quantize(img, 255, np.uint8), params)
        if icc:
            out = _jpeg_with_icc(out, icc)
    else:
        data = _quantize(img, 255, np.uint8) if bit_depth <= 8 else _quantize(img, 65535, np.uint16)
        out = _encode_cv2(path, '.png', data, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        extra = (_iccp_chunk(icc) if icc else b'') + (
            _text_chunk('Description', description) if description else b''
        )
        if extra:
            out = _png_insert(out, extra)
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
        write_image(path, index.astype(np.float32) / max(count - 1, 1), bit_depth=8)
        return
    if ext not in TIFF_EXTENSIONS | PNG_EXTENSIONS:
        raise OutputError(
            path, f'unsupported depth map format {ext or "(no extension)"!r} (use .tif or .png)'
        )
    data = np.ascontiguousarray(depth_map_levels(index, count))
    if ext in TIFF_EXTENSIONS:
        _write_tiff(path, data, None, description)
    else:
        out = _encode_cv2(path, '.png', data, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        _write_bytes(path, _png_insert(out, _text_chunk('Description', description)))


def write_confidence_map(path: str | Path, conf: np.ndarray) -> None:
    """Per-pixel confidence 0..1 as 16-bit grayscale (8-bit for JPEG)."""
    conf = np.asarray(conf, dtype=np.float32)
    if conf.ndim == 3 and conf.shape[2] == 1:
        conf = conf[:, :, 0]
    if conf.ndim != 2:
        raise OutputError(path, f'confidence map must be 2-D, got shape {conf.shape}')
    write_image(path, conf, bit_depth=16, description='focusbridge confidence map: 0..1')
