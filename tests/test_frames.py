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

from pybridge import frames
from pybridge.errors import InputError
from pybridge.frames import (
    RAW_EXTENSIONS,
    Frame,
    FrameInfo,
    frame_from_array,
    probe_frame,
    read_frame,
    read_frame_small,
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


def test_16_bit_gray_alpha_png_reads_as_gray(tmp_path):
    """Pillow opens a 16-bit grey + alpha PNG as RGBA; the file's own colour type decides."""
    grey = (np.arange(12 * 9, dtype=np.uint32).reshape(9, 12) * 601 % 65536).astype(np.uint16)
    alpha = np.full_like(grey, 65535)
    path = tmp_path / 'la16.png'
    path.write_bytes(png_bytes(np.stack([grey, alpha], -1), 4, 16))
    frame = read_frame(path)
    assert frame.pixels.shape == (9, 12, 1) and frame.bit_depth == 16
    np.testing.assert_array_equal(as_uint(frame, 65535)[:, :, 0], grey)
    assert probe_frame(path) == FrameInfo(9, 12, 1, 16, 'png')


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
def test_float_tiff_keeps_values_and_says_when_they_go_over_1(tmp_path, dtype):
    data = np.linspace(0, 1.5, 48 * 64 * 3).reshape(48, 64, 3).astype(dtype)
    path = tmp_path / 'float.tif'
    tifffile.imwrite(path, data, photometric='rgb')
    frame = read_frame(path)
    assert frame.bit_depth == 32 and frame.pixels.dtype == np.float32
    np.testing.assert_allclose(frame.pixels, data.astype(np.float32), rtol=1e-3)
    assert frame.pixels.max() > 1.4  # headroom kept for the fusion, not clipped here
    over = int((data.astype(np.float32) > 1 + 0.5 / 65535).sum())
    assert frame.warnings == [
        f'{path}: {over} samples are above 1.0 (up to 1.5); the result clips them to 1'
    ]
    assert probe_frame(path) == FrameInfo(48, 64, 3, 32, 'tiff')
    tifffile.imwrite(path, np.clip(data, 0, 1), photometric='rgb')
    assert read_frame(path).warnings == []  # 0..1: nothing to say


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_float_samples_that_are_not_numbers_are_refused(tmp_path, bad):
    """No number stands in for NaN or infinity: a 0 in every frame is a black patch that
    wins the fusion (and captures the alignment). The frame is refused, naming the count."""
    data = np.full((48, 64, 3), 0.5, np.float32)
    data[10:20, 30:40] = bad
    path = tmp_path / 'float.tif'
    tifffile.imwrite(path, data, photometric='rgb')
    with pytest.raises(InputError) as err:
        read_frame(path)
    assert str(err.value) == f'{path}: 300 samples are not numbers (NaN/Inf); fix the export'
    with pytest.raises(InputError) as err:
        read_frame_small(path, 16)
    assert str(err.value) == f'{path}: 300 samples are not numbers (NaN/Inf); fix the export'
    with pytest.raises(InputError) as err:
        frame_from_array(data)
    assert str(err.value) == '<array>: 300 samples are not numbers (NaN/Inf)'


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


# ------------------------------------------------------------------ reduced reads


def area_reference(path: Path, long_side: int) -> tuple[Frame, np.ndarray]:
    """read_frame, and its pixels averaged (INTER_AREA) to the size read_frame_small gives."""
    full = read_frame(path)
    h, w = full.pixels.shape[:2]
    f = long_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    small = cv2.resize(full.pixels, size, interpolation=cv2.INTER_AREA)
    return full, small.reshape(size[1], size[0], -1)


def textured(h: int, w: int, seed: int = 0, blur: float = 1.5) -> np.ndarray:
    """float RGB 0..1 with detail at several scales (what a focus check looks at)."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((h, w, 3), dtype=np.float32), (0, 0), blur)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.stack([x / w, y / h, (x + y) / (w + h)], -1)
    return np.clip(0.5 * ramp + (noise - 0.5) * 3 + 0.25, 0, 1).astype(np.float32)


def small_cases(tmp_path: Path) -> dict[str, Path]:
    """One file of every layout the reduced read handles its own way."""
    img = textured(120, 160)
    out = {}
    out['jpeg'] = RING6 / 'step0.jpg'
    soft = np.uint8(textured(120, 160, blur=3.0) * 255)
    out['jpeg colour'] = tmp_path / 'colour.jpg'
    out['jpeg colour'].write_bytes(cv2.imencode('.jpg', soft[..., ::-1])[1].tobytes())
    out['jpeg grey'] = tmp_path / 'grey.jpg'
    out['jpeg grey'].write_bytes(cv2.imencode('.jpg', soft[..., 1])[1].tobytes())
    out['tiff 16'] = tmp_path / 'deep.tif'
    tifffile.imwrite(out['tiff 16'], np.uint16(img * 65535), photometric='rgb')
    out['tiff grey 8'] = tmp_path / 'grey.tif'
    tifffile.imwrite(out['tiff grey 8'], np.uint8(img[..., 0] * 255), photometric='minisblack')
    out['tiff planar'] = tmp_path / 'planar.tif'
    tifffile.imwrite(
        out['tiff planar'],
        np.moveaxis(np.uint8(img * 255), -1, 0),
        photometric='rgb',
        planarconfig='separate',
    )
    out['tiff float'] = tmp_path / 'float.tif'
    tifffile.imwrite(out['tiff float'], img * 1.5, photometric='rgb')
    out['tiff palette'] = tmp_path / 'palette.tif'
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :4] = [[0, 65535, 0, 13107], [0, 0, 65535, 26214], [0, 0, 0, 39321]]
    index = (np.arange(120 * 160).reshape(120, 160) // 7 % 4).astype(np.uint8)
    tifffile.imwrite(out['tiff palette'], index, photometric='palette', colormap=colormap)
    out['tiff rgba'] = tmp_path / 'rgba.tif'
    rgba = np.dstack([np.uint8(img * 255), np.full((120, 160), 9, np.uint8)])
    tifffile.imwrite(out['tiff rgba'], rgba, photometric='rgb', extrasamples=['unassalpha'])
    out['png 16'] = tmp_path / 'deep.png'
    out['png 16'].write_bytes(cv2.imencode('.png', np.uint16(img[..., ::-1] * 65535))[1].tobytes())
    out['png rgba'] = tmp_path / 'rgba.png'
    bgra = np.dstack([np.uint8(img[..., ::-1] * 255), np.full((120, 160), 9, np.uint8)])
    out['png rgba'].write_bytes(cv2.imencode('.png', bgra)[1].tobytes())
    out['png grey alpha'] = tmp_path / 'ga.png'
    grey = np.uint8(img[..., 1] * 255)
    out['png grey alpha'].write_bytes(
        png_bytes(np.dstack([grey, np.full_like(grey, 200)]), color_type=4)
    )
    out['dng'] = write_dng(tmp_path / 'scene.dng', smooth_scene(120, 160))
    return out


# mean and 99th percentile of |small read - area-averaged read_frame|: exact but for rounding
# where the samples are averaged as integers. JPEG's DCT-domain scaling filters differently
# (most at sharp edges), RAW's half-size decode takes one pixel per colour filter block
# without demosaicing.
_CLOSE = {'jpeg': (0.015, 0.15), 'dng': (0.004, 0.01)}


@pytest.mark.parametrize('long_side', [100, 57, 13])
def test_small_read_is_the_frame_averaged_down(tmp_path, long_side):
    for name, path in small_cases(tmp_path).items():
        side = long_side if name != 'jpeg' else long_side * 9  # ring6 is 1521 px wide
        full, expected = area_reference(path, side)
        frame, size = read_frame_small(path, side)
        assert size == full.pixels.shape[:2], name
        assert frame.pixels.shape == expected.shape, name
        assert frame.pixels.dtype == np.float32 and frame.pixels.flags.c_contiguous, name
        assert (frame.kind, frame.bit_depth, frame.icc, frame.path, frame.warnings) == (
            full.kind,
            full.bit_depth,
            full.icc,
            full.path,
            full.warnings,
        ), name
        assert np.isfinite(frame.pixels).all(), name
        error = np.abs(frame.pixels - expected)
        mean, p99 = _CLOSE.get(name.split()[0], (2e-3, 5e-3))
        assert error.mean() < mean and np.percentile(error, 99) < p99, (name, error.mean())


def test_small_read_of_a_frame_no_larger_is_read_frame(tmp_path):
    for name, path in small_cases(tmp_path).items():
        full = read_frame(path)
        h, w = full.pixels.shape[:2]
        for side in (max(h, w), 5000):
            frame, size = read_frame_small(path, side)
            assert size == (h, w), name
            np.testing.assert_array_equal(frame.pixels, full.pixels, err_msg=name)
            assert (frame.bit_depth, frame.icc, frame.kind) == (full.bit_depth, full.icc, full.kind)


def test_jpeg_is_decoded_at_a_reduced_size(monkeypatch):
    seen = []
    decode = frames._decode_cv2
    monkeypatch.setattr(
        frames, '_decode_cv2', lambda *a: seen.append(a[5] if len(a) > 5 else None) or decode(*a)
    )
    path = RING6 / 'step0.jpg'  # 1521 x 1141
    for side, reduced, shape in (
        (761, (2, 3), (571, 761)),  # half: exactly the decoder's 1/2 (rounded up)
        (400, (2, 3), (300, 400)),
        (380, (4, 3), (285, 380)),
        (100, (8, 3), (75, 100)),
        (1000, None, (750, 1000)),  # more than half: decoded whole, then averaged down
    ):
        seen.clear()
        frame, size = read_frame_small(path, side)
        assert seen == [reduced] and frame.pixels.shape == (*shape, 3), side
        assert size == (1141, 1521)


def test_small_read_turns_the_frame_upright(tmp_path, exiftool):
    img = np.uint8(textured(96, 128) * 255)
    jpeg = tmp_path / 'turned.jpg'
    jpeg.write_bytes(cv2.imencode('.jpg', img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])[1])
    exiftool('-Orientation#=6', '-overwrite_original', jpeg)
    tiff = tmp_path / 'turned.tif'
    tifffile.imwrite(tiff, img, photometric='rgb', extratags=[(274, 'H', 1, 8, True)])
    dng = write_dng(tmp_path / 'turned.dng', smooth_scene(96, 128), orientation=6)
    for path, close in ((jpeg, 0.02), (tiff, 2e-3), (dng, 0.004)):
        full, expected = area_reference(path, 40)
        assert full.pixels.shape[:2] == (128, 96)  # upright: the frame is turned
        frame, size = read_frame_small(path, 40)
        assert size == (128, 96) and frame.pixels.shape == expected.shape == (40, 30, 3), path
        assert np.abs(frame.pixels - expected).mean() < close, path


def test_small_read_keeps_the_icc_profile(tmp_path, test_data, icc_profile):
    path = tmp_path / 'icc.tif'
    tifffile.imwrite(
        path,
        np.uint8(textured(120, 160) * 255),
        photometric='rgb',
        extratags=[(34675, 'B', len(icc_profile), icc_profile, True)],
    )
    assert read_frame_small(path, 40)[0].icc == icc_profile
    jpeg = test_data / 'brackets' / 'depthmap10' / 'reference' / '3d.jpg'
    assert read_frame_small(jpeg, 64)[0].icc == icc_profile


def test_small_read_errors_name_the_file(tmp_path):
    with pytest.raises(InputError) as err:
        read_frame_small(tmp_path / 'nope.jpg', 100)
    assert str(err.value) == f'{tmp_path / "nope.jpg"}: no such file'
    with pytest.raises(InputError, match='is not a regular file \\(a folder\\)'):
        read_frame_small(tmp_path, 100)
    jpeg = (RING6 / 'step0.jpg').read_bytes()
    (tmp_path / 'cut.jpg').write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(InputError, match='cut.jpg: .*(truncated|corrupt)') as err:
        read_frame_small(tmp_path / 'cut.jpg', 200)
    assert '\n' not in str(err.value)
    with pytest.raises(InputError, match='more than the limit of 1 megapixels'):
        read_frame_small(RING6 / 'step0.jpg', 200, max_pixels=1_000_000)
    with pytest.raises(ValueError):
        read_frame_small(RING6 / 'step0.jpg', 0)
