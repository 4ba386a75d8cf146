"""READ step: real files in, exact pixels out."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import RING6, TEST_DATA
from dng import smooth_scene, write_dng

from pybridge.errors import InputError
from pybridge.frames import (
    RAW_EXTENSIONS,
    Frame,
    FrameInfo,
    frame_from_array,
    probe_frame,
    read_frame,
)
from pybridge.write import write_image

CANON_DNG = Path('raw') / 'canon_550d_magiclantern_colorchart.dng'


def bracket_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in [*RING6.iterdir(), *(root / 'brackets').glob('*/*')]
        if p.suffix.lower() in ('.jpg', '.jpeg')
    )


def cv2_reference(path: Path) -> np.ndarray:
    """Independent decode: RGB uint8 without any orientation handling."""
    bgr = cv2.imdecode(
        np.fromfile(path, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    )
    return bgr[:, :, ::-1]


def as_uint(frame: Frame, maxval: int) -> np.ndarray:
    return np.round(frame.pixels * maxval).astype(np.int64)


def asymmetric_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    """uint8 RGB with a distinct value per pixel position and channel (no symmetry)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 4) % 256, (y * 5) % 256, (x + 3 * y) % 256], -1).astype(np.uint8)


def png_bytes(rows: np.ndarray, color_type: int, bit_depth: int = 8, extra: bytes = b'') -> bytes:
    """A minimal PNG (filter 0) written by hand, for layouts cv2 cannot write."""

    def chunk(kind, body):
        return (
            struct.pack('>I', len(body))
            + kind
            + body
            + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    h, w = rows.shape[:2]
    raw = b''.join(
        b'\x00' + rows[y].astype('>u2' if bit_depth == 16 else 'u1').tobytes() for y in range(h)
    )
    return (
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, bit_depth, color_type, 0, 0, 0))
        + extra
        + chunk(b'IDAT', zlib.compress(raw))
        + chunk(b'IEND', b'')
    )


# ------------------------------------------------------------------ real brackets


def test_ring6_frames_match_an_independent_decode(test_data):
    files = sorted(RING6.glob('step*.jpg'))
    assert len(files) == 6
    for path in files:
        frame = read_frame(path)
        assert frame.kind == 'jpeg' and frame.bit_depth == 8 and frame.path == path
        assert frame.pixels.dtype == np.float32 and frame.pixels.shape == (1141, 1521, 3)
        assert frame.pixels.flags.c_contiguous
        # RGB order and exact 8-bit values: compare with cv2's own (BGR) decode.
        np.testing.assert_array_equal(as_uint(frame, 255), cv2_reference(path))


def test_every_bracket_file_reads_and_probe_agrees(test_data):
    files = bracket_files(test_data)
    assert len(files) >= 23
    for path in files:
        frame = read_frame(path)
        info = probe_frame(path)
        assert info == FrameInfo(*frame.pixels.shape, frame.bit_depth, 'jpeg'), path
        assert 0.0 <= frame.pixels.min() and frame.pixels.max() <= 1.0
        assert frame.pixels.mean() > 0.05


def test_icc_profile_from_a_real_jpeg(test_data, icc_profile):
    frame = read_frame(test_data / 'brackets' / 'depthmap10' / 'reference' / '3d.jpg')
    assert frame.icc == icc_profile


def test_real_gray_alpha_png(test_data):
    path = test_data / 'brackets' / 'depthmap10' / 'reference' / 'depth_raw.png'
    assert path.read_bytes()[25] == 4  # IHDR colour type: gray + alpha
    frame = read_frame(path)
    ref = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert frame.pixels.shape == ref.shape + (1,)
    np.testing.assert_array_equal(as_uint(frame, 255)[:, :, 0], ref)
    assert probe_frame(path) == FrameInfo(*ref.shape, 1, 8, 'png')


# ------------------------------------------------------------------ RAW


def test_canon_dng(test_data):
    path = test_data / CANON_DNG
    frame = read_frame(path)
    assert frame.kind == 'raw' and frame.bit_depth == 16 and frame.icc is None
    assert frame.pixels.dtype == np.float32
    assert frame.pixels.shape in ((1156, 1734, 3), (1734, 1156, 3))
    assert frame.pixels.min() >= 0.0 and frame.pixels.max() <= 1.0
    assert frame.pixels.mean() > 0.01
    # Really 16-bit linear: far more levels than an 8-bit decode could have.
    assert len(np.unique(frame.pixels[:, :, 1])) > 2000
    assert probe_frame(path) == FrameInfo(*frame.pixels.shape, 16, 'raw')


BROKEN_RAWS = sorted(p.name for p in (TEST_DATA / 'raw' / 'broken').glob('*'))


def test_broken_raw_set_is_there(test_data):
    assert len(BROKEN_RAWS) >= 12


@pytest.mark.parametrize('name', BROKEN_RAWS)
def test_broken_raw_gives_input_error(test_data, name):
    path = test_data / 'raw' / 'broken' / name
    with pytest.raises(InputError) as err:
        read_frame(path)
    message = str(err.value)
    assert message.startswith(f'{path}: ') and 'RAW' in message
    assert '\n' not in message and "b'" not in message  # one line, no bytes repr


def test_raw_extensions_cover_libraw_formats():
    for ext in (
        '.cr2',
        '.cr3',
        '.crw',
        '.nef',
        '.nrw',
        '.arw',
        '.srf',
        '.sr2',
        '.dng',
        '.raf',
        '.orf',
        '.rw2',
        '.pef',
        '.srw',
        '.x3f',
        '.3fr',
        '.fff',
        '.iiq',
        '.mos',
        '.mrw',
        '.kdc',
        '.dcr',
        '.erf',
        '.mef',
        '.rwl',
        '.raw',
        '.gpr',
    ):
        assert ext in RAW_EXTENSIONS


def test_synthetic_dng_gives_back_the_scene(tmp_path):
    scene = smooth_scene()
    path = write_dng(tmp_path / 'scene.dng', scene, black=512, white=16383)
    frame = read_frame(path)
    assert frame.kind == 'raw' and frame.pixels.shape == scene.shape
    inner = (slice(4, -4), slice(4, -4))
    error = np.abs(frame.pixels[inner] - scene[inner] / 65535.0)
    assert error.mean() < 0.002 and error.max() < 0.01


def test_dng_brightness_does_not_depend_on_the_brightest_pixel(tmp_path):
    # LibRaw's adjust_maximum_thr would rescale a frame whose highlights exceed 75 % of the
    # white level; frames of one bracket must keep the same scale.
    scene = smooth_scene()
    dim = (scene // 2).astype(np.uint16)
    a = read_frame(write_dng(tmp_path / 'a.dng', scene, black=256, white=4095)).pixels
    b = read_frame(write_dng(tmp_path / 'b.dng', dim, black=256, white=4095)).pixels
    inner = (slice(4, -4), slice(4, -4))
    ratio = a[inner].mean() / b[inner].mean()
    assert abs(ratio - 2.0) < 0.01


@pytest.mark.parametrize(
    'orientation, turn',
    [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))],
)
def test_dng_orientation_applied_once(tmp_path, orientation, turn):
    scene = smooth_scene(64, 96)
    upright = read_frame(write_dng(tmp_path / 'up.dng', scene)).pixels
    path = write_dng(tmp_path / 'turned.dng', scene, orientation=orientation)
    frame = read_frame(path)
    np.testing.assert_array_equal(frame.pixels, turn(upright))
    assert probe_frame(path) == FrameInfo(*frame.pixels.shape, 16, 'raw')


def test_raw_with_non_ascii_name(tmp_path):
    path = write_dng(tmp_path / 'Schärfe Ébène 焦点.dng', smooth_scene(32, 48))
    assert read_frame(path).pixels.shape == (32, 48, 3)


# ------------------------------------------------------------------ orientation

# EXIF orientation -> how an upright view is made from the stored pixels.
ORIENTATIONS = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.fliplr(np.rot90(a, -1)),  # transpose
    6: lambda a: np.rot90(a, -1),  # 90 degrees clockwise
    7: lambda a: np.fliplr(np.rot90(a, 1)),  # transverse
    8: lambda a: np.rot90(a, 1),  # 90 degrees counter-clockwise
}


@pytest.mark.parametrize('orientation', sorted(ORIENTATIONS))
def test_jpeg_exif_orientation(tmp_path, exiftool, orientation):
    path = tmp_path / 'turned.jpg'
    write_image(path, asymmetric_rgb() / 255.0, bit_depth=8)
    stored = read_frame(path).pixels  # no EXIF yet: stored order
    exiftool(f'-Orientation#={orientation}', '-overwrite_original', path)
    assert exiftool('-Orientation#', '-s3', path).strip() == str(orientation)
    frame = read_frame(path)
    np.testing.assert_array_equal(frame.pixels, ORIENTATIONS[orientation](stored))
    assert probe_frame(path) == FrameInfo(*frame.pixels.shape, 8, 'jpeg')


def test_png_exif_orientation(tmp_path, exiftool):
    path = tmp_path / 'turned.png'
    rgb = asymmetric_rgb()
    write_image(path, rgb / 255.0, bit_depth=8)
    exiftool('-Orientation#=6', '-overwrite_original', path)
    assert b'eXIf' in path.read_bytes()
    frame = read_frame(path)
    np.testing.assert_array_equal(as_uint(frame, 255), np.rot90(rgb, -1))
    assert probe_frame(path) == FrameInfo(64, 48, 3, 8, 'png')


def test_tiff_orientation_tag(tmp_path):
    rgb = asymmetric_rgb().astype(np.uint16) * 257
    path = tmp_path / 'turned.tif'
    tifffile.imwrite(path, rgb, photometric='rgb', extratags=[(274, 'H', 1, 8, True)])
    frame = read_frame(path)
    np.testing.assert_array_equal(as_uint(frame, 65535), np.rot90(rgb, 1))
    assert probe_frame(path) == FrameInfo(64, 48, 3, 16, 'tiff')


# ------------------------------------------------------------------ TIFF layouts


def gradient16(h: int = 64, w: int = 1024) -> np.ndarray:
    ramp = np.linspace(0, 65535, h * w).round().astype(np.uint16).reshape(h, w)
    return np.stack([ramp, ramp[::-1], np.flipud(ramp)], -1)


def test_16bit_tiff_keeps_every_level(tmp_path):
    rgb = gradient16()
    path = tmp_path / 'gradient.tif'
    tifffile.imwrite(path, rgb, photometric='rgb')
    frame = read_frame(path)
    assert frame.bit_depth == 16 and frame.kind == 'tiff'
    got = as_uint(frame, 65535)
    np.testing.assert_array_equal(got, rgb)
    assert len(np.unique(got[:, :, 0])) > 60000


def test_8bit_grayscale_and_planar_and_compressed_tiffs(tmp_path):
    rgb = asymmetric_rgb()
    gray = rgb[:, :, 0]
    tifffile.imwrite(tmp_path / 'gray.tif', gray, photometric='minisblack')
    tifffile.imwrite(
        tmp_path / 'planar.tif', np.moveaxis(rgb, -1, 0), photometric='rgb', planarconfig='separate'
    )
    tifffile.imwrite(tmp_path / 'zlib.tif', rgb, photometric='rgb', compression='zlib')
    tifffile.imwrite(tmp_path / 'white.tif', gray, photometric='miniswhite')

    g = read_frame(tmp_path / 'gray.tif')
    assert g.pixels.shape == (48, 64, 1) and g.bit_depth == 8
    np.testing.assert_array_equal(as_uint(g, 255)[:, :, 0], gray)
    assert probe_frame(tmp_path / 'gray.tif') == FrameInfo(48, 64, 1, 8, 'tiff')
    for name in ('planar.tif', 'zlib.tif'):
        np.testing.assert_array_equal(as_uint(read_frame(tmp_path / name), 255), rgb)
        assert probe_frame(tmp_path / name) == FrameInfo(48, 64, 3, 8, 'tiff')
    white = read_frame(tmp_path / 'white.tif')
    np.testing.assert_array_equal(as_uint(white, 255)[:, :, 0], 255 - gray)


def test_lzw_tiff_without_imagecodecs(tmp_path):
    # OpenCV writes LZW TIFFs; tifffile alone cannot decode LZW, the reader falls back.
    rgb16 = gradient16(32, 256)
    ok, buf = cv2.imencode('.tif', np.ascontiguousarray(rgb16[:, :, ::-1]))
    path = tmp_path / 'lzw.tif'
    path.write_bytes(buf.tobytes())
    assert tifffile.TiffFile(path).pages.first.compression == 5  # really LZW
    frame = read_frame(path)
    assert frame.bit_depth == 16
    np.testing.assert_array_equal(as_uint(frame, 65535), rgb16)


def test_rgba_tiff_drops_alpha_and_multipage_uses_first(tmp_path):
    rgb = asymmetric_rgb()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    path = tmp_path / 'rgba.tif'
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgba, photometric='rgb', extrasamples=['unassalpha'])
        tif.write(np.zeros_like(rgba), photometric='rgb', extrasamples=['unassalpha'])
    frame = read_frame(path)
    assert frame.pixels.shape == (48, 64, 3)
    np.testing.assert_array_equal(as_uint(frame, 255), rgb)
    assert probe_frame(path).channels == 3


def test_palette_tiff(tmp_path):
    index = (np.arange(48 * 64).reshape(48, 64) % 4).astype(np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :4] = [[0, 65535, 0, 13107], [0, 0, 65535, 26214], [0, 0, 0, 39321]]
    path = tmp_path / 'palette.tif'
    tifffile.imwrite(path, index, photometric='palette', colormap=colormap)
    frame = read_frame(path)
    np.testing.assert_array_equal(as_uint(frame, 65535), colormap[:, index].transpose(1, 2, 0))


@pytest.mark.parametrize('dtype', [np.float16, np.float32, np.float64])
def test_float_tiff_keeps_values_and_removes_nan(tmp_path, dtype):
    data = np.linspace(0, 1.5, 48 * 64 * 3).reshape(48, 64, 3).astype(dtype)
    data[0, 0, 0] = np.nan
    data[0, 1, 0] = np.inf
    path = tmp_path / 'float.tif'
    tifffile.imwrite(path, data, photometric='rgb')
    frame = read_frame(path)
    assert frame.bit_depth == 32 and frame.pixels.dtype == np.float32
    assert np.isfinite(frame.pixels).all()
    assert frame.pixels[0, 0, 0] == 0.0 and frame.pixels[0, 1, 0] == 1.0
    np.testing.assert_allclose(frame.pixels[1:], data[1:].astype(np.float32), rtol=1e-3)
    assert frame.pixels.max() > 1.4  # headroom kept, not clipped
    assert probe_frame(path) == FrameInfo(48, 64, 3, 32, 'tiff')


def test_tiff_icc_is_read(tmp_path, icc_profile):
    path = tmp_path / 'icc.tif'
    tifffile.imwrite(
        path,
        asymmetric_rgb(),
        photometric='rgb',
        extratags=[(34675, 'B', len(icc_profile), icc_profile, True)],
    )
    assert read_frame(path).icc == icc_profile


# ------------------------------------------------------------------ PNG layouts


def test_rgba_png_drops_alpha_in_rgb_order(tmp_path):
    rgb = asymmetric_rgb()
    bgra = np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 9, np.uint8)])
    path = tmp_path / 'rgba.png'
    path.write_bytes(cv2.imencode('.png', bgra)[1].tobytes())
    frame = read_frame(path)
    assert frame.pixels.shape == (48, 64, 3) and frame.kind == 'png'
    np.testing.assert_array_equal(as_uint(frame, 255), rgb)


def test_gray_alpha_png_stays_gray(tmp_path):
    gray = asymmetric_rgb()[:, :, 0]
    path = tmp_path / 'ga.png'
    path.write_bytes(png_bytes(np.dstack([gray, np.full_like(gray, 200)]), color_type=4))
    frame = read_frame(path)
    assert frame.pixels.shape == (48, 64, 1)
    np.testing.assert_array_equal(as_uint(frame, 255)[:, :, 0], gray)
    assert probe_frame(path) == FrameInfo(48, 64, 1, 8, 'png')


def test_16bit_png_and_iccp(tmp_path, icc_profile):
    rgb = gradient16(16, 512)
    iccp = b'sRGB\x00\x00' + zlib.compress(icc_profile)
    chunk = (
        struct.pack('>I', len(iccp))
        + b'iCCP'
        + iccp
        + struct.pack('>I', zlib.crc32(b'iCCP' + iccp) & 0xFFFFFFFF)
    )
    path = tmp_path / 'deep.png'
    path.write_bytes(png_bytes(rgb, color_type=2, bit_depth=16, extra=chunk))
    frame = read_frame(path)
    assert frame.bit_depth == 16 and frame.icc == icc_profile
    np.testing.assert_array_equal(as_uint(frame, 65535), rgb)


# ------------------------------------------------------------------ errors


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match='no such file') as err:
        read_frame(tmp_path / 'nope.jpg')
    assert str(err.value) == f'{tmp_path / "nope.jpg"}: no such file'
    with pytest.raises(InputError, match='folder'):
        read_frame(tmp_path)
    with pytest.raises(InputError, match='no such file'):
        probe_frame(tmp_path / 'nope.tif')


@pytest.mark.parametrize('name', ['empty.jpg', 'empty.tif', 'empty.png', 'empty.nef'])
def test_empty_files(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b'')
    with pytest.raises(InputError) as err:
        read_frame(path)
    assert str(err.value).startswith(f'{path}: ')


def test_truncated_jpeg_tiff_png(test_data, tmp_path):
    jpeg = (RING6 / 'step0.jpg').read_bytes()
    for cut in (100, len(jpeg) // 2, len(jpeg) - 2):  # -2: only the end marker is gone
        (tmp_path / 'cut.jpg').write_bytes(jpeg[:cut])
        with pytest.raises(InputError, match='cut.jpg: .*(truncated|corrupt)'):
            read_frame(tmp_path / 'cut.jpg')
    tifffile.imwrite(tmp_path / 'whole.tif', gradient16(64, 256), photometric='rgb')
    tiff = (tmp_path / 'whole.tif').read_bytes()
    for cut in (6, 100, len(tiff) // 2):
        (tmp_path / 'cut.tif').write_bytes(tiff[:cut])
        with pytest.raises(InputError, match='cut.tif: '):
            read_frame(tmp_path / 'cut.tif')
    png = cv2.imencode('.png', asymmetric_rgb())[1].tobytes()
    (tmp_path / 'cut.png').write_bytes(png[: len(png) // 2])
    with pytest.raises(InputError, match='cut.png: .*truncated'):
        read_frame(tmp_path / 'cut.png')


def test_unknown_extension_sniffed_or_refused(tmp_path):
    rgb = asymmetric_rgb()
    (tmp_path / 'image.dat').write_bytes(cv2.imencode('.png', rgb[:, :, ::-1])[1].tobytes())
    frame = read_frame(tmp_path / 'image.dat')
    assert frame.kind == 'png'
    np.testing.assert_array_equal(as_uint(frame, 255), rgb)
    (tmp_path / 'notes.txt').write_text('hello')
    with pytest.raises(InputError, match='notes.txt: unsupported file type'):
        read_frame(tmp_path / 'notes.txt')


def test_non_ascii_jpeg_name(test_data, tmp_path):
    path = tmp_path / 'Größe 焦点 ring.jpg'
    shutil.copy(RING6 / 'step3.jpg', path)
    assert read_frame(path).pixels.shape == (1141, 1521, 3)
    assert probe_frame(path).width == 1521


# ------------------------------------------------------------------ arrays


def test_frame_from_array():
    rgb = asymmetric_rgb()
    f8 = frame_from_array(rgb)
    assert f8.kind == 'array' and f8.path is None and f8.bit_depth == 8
    np.testing.assert_array_equal(as_uint(f8, 255), rgb)

    f16 = frame_from_array(rgb.astype(np.uint16) * 257)
    assert f16.bit_depth == 16
    np.testing.assert_array_equal(as_uint(f16, 65535), rgb.astype(np.uint16) * 257)

    twelve = frame_from_array(np.full((4, 4), 4095, np.uint16), bit_depth=12)
    assert twelve.pixels.shape == (4, 4, 1) and twelve.pixels.max() == 1.0

    floats = np.random.default_rng(1).random((8, 8, 4))
    ff = frame_from_array(floats)
    assert ff.bit_depth == 32 and ff.pixels.shape == (8, 8, 3)
    ff.pixels[:] = 0
    assert floats.max() > 0  # the caller's array is untouched

    with pytest.raises(InputError, match='shape'):
        frame_from_array(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(InputError, match='sample type'):
        frame_from_array(np.zeros((4, 4), np.int32))
