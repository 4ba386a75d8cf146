"""WRITE step: atomic outputs and exact encoded bytes, checked with independent decoders."""

from __future__ import annotations

import os
import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile

from pybridge.atomic import atomic_output, atomic_outputs
from pybridge.errors import OutputError
from pybridge.frames import read_frame
from pybridge.write import (
    depth_map_index,
    depth_map_levels,
    write_confidence_map,
    write_depth_map,
    write_image,
)


def gradient(h: int = 64, w: int = 1024) -> np.ndarray:
    """Float RGB whose 16-bit codes are all different along the ramp (65536 levels)."""
    ramp = np.arange(h * w, dtype=np.float64).reshape(h, w) % 65536 / 65535.0
    return np.stack([ramp, 1.0 - ramp, np.flipud(ramp)], -1).astype(np.float32)


def codes(pixels: np.ndarray, maxval: int) -> np.ndarray:
    return np.floor(np.clip(pixels.astype(np.float64), 0, 1) * maxval + 0.5).astype(np.int64)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes, bool]]:
    """(type, body, crc_ok) for every chunk of a PNG."""
    assert data[:8] == b'\x89PNG\r\n\x1a\n'
    out, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from('>I4s', data, pos)
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from('>I', data, pos + 8 + length)
        out.append((kind, body, crc == zlib.crc32(kind + body) & 0xFFFFFFFF))
        pos += 12 + length
    return out


def jpeg_app2_segments(data: bytes) -> list[bytes]:
    segments, pos = [], 2
    while data[pos + 1] != 0xDA:
        (length,) = struct.unpack_from('>H', data, pos + 2)
        if data[pos + 1] == 0xE2:
            segments.append(data[pos + 4 : pos + 2 + length])
        pos += 2 + length
    return segments


# ------------------------------------------------------------------ atomic_output


def test_success_renames_temp_in_same_folder(tmp_path):
    target = tmp_path / 'result.tif'
    with atomic_output(target) as temp:
        assert temp.parent == tmp_path and temp != target
        assert temp.name.startswith('.result.partial-') and temp.suffix == '.tif'
        assert not target.exists()
        temp.write_bytes(b'data')
    assert target.read_bytes() == b'data'
    assert os.listdir(tmp_path) == ['result.tif']


def test_new_file_mode_follows_umask(tmp_path):
    target = tmp_path / 'result.png'
    with atomic_output(target) as temp:
        temp.write_bytes(b'x')
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize('exc', [RuntimeError('boom'), KeyboardInterrupt()])
def test_exception_leaves_nothing(tmp_path, exc):
    target = tmp_path / 'result.tif'
    with pytest.raises(type(exc)):
        with atomic_output(target) as temp:
            temp.write_bytes(b'half written')
            raise exc
    assert os.listdir(tmp_path) == []


def test_existing_file_refused_without_overwrite(tmp_path):
    target = tmp_path / 'result.jpg'
    target.write_bytes(b'precious')
    with pytest.raises(OutputError) as err:
        with atomic_output(target):
            pytest.fail('must not get here')
    assert str(err.value) == f'{target}: exists; pass --overwrite to replace it'
    assert target.read_bytes() == b'precious' and os.listdir(tmp_path) == ['result.jpg']

    with atomic_output(target, overwrite=True) as temp:
        temp.write_bytes(b'new')
    assert target.read_bytes() == b'new' and os.listdir(tmp_path) == ['result.jpg']


def test_file_appearing_meanwhile_is_not_clobbered(tmp_path):
    target = tmp_path / 'result.tif'
    with pytest.raises(OutputError, match='exists'):
        with atomic_output(target) as temp:
            temp.write_bytes(b'ours')
            target.write_bytes(b'theirs')  # e.g. a second run finishing first
    assert target.read_bytes() == b'theirs' and os.listdir(tmp_path) == ['result.tif']


def test_missing_folder(tmp_path):
    folder = tmp_path / 'no' / 'such'
    with pytest.raises(OutputError) as err:
        with atomic_output(folder / 'out.tif'):
            pass
    assert str(err.value) == f'{folder}: folder does not exist'


def test_file_used_as_folder(tmp_path):
    # Works as root too (permission bits do not stop root; a file as parent always does).
    blocker = tmp_path / 'plain-file'
    blocker.write_bytes(b'')
    with pytest.raises(OutputError, match='plain-file: is not a folder'):
        with atomic_output(blocker / 'out.tif'):
            pass


def test_non_ascii_and_spaces(tmp_path):
    for name in ('mon résultat final.tif', 'Größe 焦点.png', 'ring stack.jpg'):
        target = tmp_path / name
        with atomic_output(target) as temp:
            write_image(temp, gradient(16, 64), icc=None)
        assert read_frame(target).pixels.shape == (16, 64, 3)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ['mon résultat final.tif', 'Größe 焦点.png', 'ring stack.jpg']
    )


def test_atomic_outputs_all_or_nothing(tmp_path):
    result, depth = tmp_path / 'stack.tif', tmp_path / 'stack_depth.png'
    with pytest.raises(ValueError):
        with atomic_outputs([result, depth]) as (t1, t2):
            t1.write_bytes(b'1')
            t2.write_bytes(b'2')
            raise ValueError
    assert os.listdir(tmp_path) == []

    depth.write_bytes(b'old')  # second target exists: nothing is started
    with pytest.raises(OutputError, match='stack_depth.png: exists'):
        with atomic_outputs([result, depth]):
            pytest.fail('must not get here')
    assert os.listdir(tmp_path) == ['stack_depth.png']

    depth.unlink()
    with atomic_outputs([result, depth]) as (t1, t2):
        t1.write_bytes(b'1')
        t2.write_bytes(b'2')
    assert result.read_bytes() == b'1' and depth.read_bytes() == b'2'
    assert sorted(os.listdir(tmp_path)) == ['stack.tif', 'stack_depth.png']


# ------------------------------------------------------------------ write_image


def test_16bit_tiff_exact_levels(tmp_path, icc_profile):
    pixels = gradient()
    path = tmp_path / 'out.tif'
    write_image(path, pixels, icc=icc_profile)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        data = page.asarray()
        assert page.photometric == 2 and page.compression == 1
        assert page.tags[34675].value == icc_profile
    assert data.dtype == np.uint16
    np.testing.assert_array_equal(data, codes(pixels, 65535))
    assert len(np.unique(data[:, :, 0])) == 65536
    back = read_frame(path)  # and our reader gives the same numbers
    assert back.icc == icc_profile and back.bit_depth == 16
    np.testing.assert_array_equal(codes(back.pixels, 65535), data)


def test_8bit_and_gray_tiff(tmp_path):
    pixels = gradient(8, 256)
    write_image(tmp_path / 'rgb8.tif', pixels, bit_depth=8)
    data = tifffile.imread(tmp_path / 'rgb8.tif')
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, codes(pixels, 255))
    for gray in (pixels[:, :, 0], pixels[:, :, :1]):
        write_image(tmp_path / 'gray.tif', gray)
        with tifffile.TiffFile(tmp_path / 'gray.tif') as tif:
            assert tif.pages.first.photometric == 1
            np.testing.assert_array_equal(tif.asarray(), codes(pixels[:, :, 0], 65535))


def test_float_tiff(tmp_path):
    pixels = gradient(8, 64) * 1.5
    write_image(tmp_path / 'f.tif', pixels, bit_depth=32)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / 'f.tif'), pixels)


def test_clipping_rounding_and_nan(tmp_path):
    pixels = np.array(
        [
            [[-0.5, 0.0, np.nan], [1.0, 1.7, 0.5 / 65535]],
            [[0.49 / 65535, 0.51 / 65535, 0.5], [1 - 0.4 / 65535, 1e-9, 0.25]],
        ],
        np.float32,
    )
    write_image(tmp_path / 'c.tif', pixels)
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / 'c.tif'),
        [[[0, 0, 0], [65535, 65535, 1]], [[0, 1, 32768], [65535, 0, 16384]]],
    )


def test_png_16bit_rgb_order_and_iccp(tmp_path, icc_profile):
    pixels = gradient(16, 512)
    path = tmp_path / 'out.png'
    write_image(path, pixels, icc=icc_profile)
    decoded = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded[:, :, ::-1], codes(pixels, 65535))
    chunks = png_chunks(path.read_bytes())
    kinds = [k for k, _, _ in chunks]
    assert all(ok for _, _, ok in chunks)  # every CRC is right
    assert kinds.index(b'iCCP') < kinds.index(b'IDAT')
    body = dict((k, b) for k, b, _ in chunks)[b'iCCP']
    name, rest = body.split(b'\x00', 1)
    assert 1 <= len(name) <= 79 and rest[0] == 0
    assert zlib.decompress(rest[1:]) == icc_profile
    assert read_frame(path).icc == icc_profile


def test_png_8bit(tmp_path):
    pixels = gradient(8, 256)
    write_image(tmp_path / 'o.png', pixels, bit_depth=8)
    decoded = cv2.imdecode(np.fromfile(tmp_path / 'o.png', np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded[:, :, ::-1], codes(pixels, 255))


def test_jpeg_quality_rgb_order_and_icc(tmp_path, icc_profile, exiftool):
    rng = np.random.default_rng(3)
    pixels = np.clip(gradient(64, 256) + rng.normal(0, 0.02, (64, 256, 3)), 0, 1)
    write_image(tmp_path / 'q95.jpg', pixels, icc=icc_profile)
    write_image(tmp_path / 'q50.jpg', pixels, icc=icc_profile, jpeg_quality=50)
    assert (tmp_path / 'q50.jpg').stat().st_size < 0.7 * (tmp_path / 'q95.jpg').stat().st_size
    back = read_frame(tmp_path / 'q95.jpg')
    assert back.bit_depth == 8 and back.icc == icc_profile
    assert np.abs(back.pixels - pixels).mean() < 0.02  # close, and not BGR-swapped
    assert 'sRGB' in exiftool('-ICC_Profile:ProfileDescription', '-s3', tmp_path / 'q95.jpg')


def test_jpeg_large_icc_is_split(tmp_path, large_icc_profile):
    path = tmp_path / 'big.jpg'
    write_image(path, gradient(8, 64), icc=large_icc_profile)
    data = path.read_bytes()
    segments = [s for s in jpeg_app2_segments(data) if s.startswith(b'ICC_PROFILE\x00')]
    assert len(segments) == 3
    assert [(s[12], s[13]) for s in segments] == [(1, 3), (2, 3), (3, 3)]
    assert b''.join(s[14:] for s in segments) == large_icc_profile
    assert read_frame(path).icc == large_icc_profile
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (8, 64, 3)


def test_unsupported_extension_and_shape(tmp_path):
    with pytest.raises(OutputError, match=r'out.webp: unsupported output format'):
        write_image(tmp_path / 'out.webp', gradient(4, 4))
    with pytest.raises(OutputError, match='shape'):
        write_image(tmp_path / 'out.tif', np.zeros((4, 4, 2), np.float32))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ maps


@pytest.mark.parametrize('ext', ['.tif', '.png'])
def test_depth_map_holds_frame_indices(tmp_path, ext):
    index = (np.arange(40 * 60).reshape(40, 60) // 7) % 300
    path = tmp_path / f'depth{ext}'
    write_depth_map(path, index, 300)
    data = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    assert data.dtype == np.uint16 and data.shape == (40, 60)
    # spread over the full range (visible), and exactly invertible
    assert data.min() == 0 and data.max() == 65535
    np.testing.assert_array_equal(depth_map_index(data, 300), index)
    assert b'depth map of 300 frames' in path.read_bytes()  # self-describing


def test_depth_map_levels_are_exact_for_any_frame_count():
    for count in (2, 3, 7, 300, 4097, 65536):
        index = np.arange(count)
        np.testing.assert_array_equal(depth_map_index(depth_map_levels(index, count), count), index)


def test_depth_map_rejects_bad_indices(tmp_path):
    with pytest.raises(OutputError, match='outside 0..4'):
        write_depth_map(tmp_path / 'd.tif', np.array([[0, 5]]), 5)
    with pytest.raises(OutputError, match='integer'):
        write_depth_map(tmp_path / 'd.tif', np.zeros((2, 2), np.float32), 5)
    assert os.listdir(tmp_path) == []


def test_depth_map_jpeg_is_a_scaled_preview(tmp_path):
    index = np.repeat(np.arange(5), 16).reshape(1, 80).repeat(16, 0)
    write_depth_map(tmp_path / 'd.jpg', index, 5)
    data = cv2.imdecode(np.fromfile(tmp_path / 'd.jpg', np.uint8), cv2.IMREAD_UNCHANGED)
    assert abs(int(data[8, 4]) - 0) <= 3 and abs(int(data[8, 76]) - 255) <= 3


def test_confidence_map_is_16bit(tmp_path):
    conf = np.linspace(0, 1, 50 * 70, dtype=np.float32).reshape(50, 70)
    write_confidence_map(tmp_path / 'conf.tif', conf)
    data = tifffile.imread(tmp_path / 'conf.tif')
    assert data.dtype == np.uint16 and data[0, 0] == 0 and data[-1, -1] == 65535
    # float32 arithmetic may round a value sitting on .5 the other way: at most 1 code off
    assert np.abs(data.astype(np.int64) - codes(conf, 65535)).max() <= 1
    assert (np.diff(data.ravel().astype(np.int64)) > 0).all()  # 3500 distinct levels


# ------------------------------------------------------------------ the focusbridge marker


def _software(exiftool, path) -> list[str]:
    """Every Software tag exiftool finds in the file (TIFF IFD0, PNG text, JPEG EXIF)."""
    out = exiftool('-a', '-G1', '-s', '-Software', path)
    return [line.split(': ', 1)[1] for line in out.splitlines()]


@pytest.mark.parametrize('ext', ['.tif', '.png', '.jpg'])
def test_every_image_written_says_focusbridge_wrote_it(tmp_path, ext, exiftool):
    """Results, depth and confidence maps carry Software = focusbridge VERSION (with what
    they are, for the maps), written here, not by the metadata merge: detection leaves them
    out of brackets (pybridge/brackets.py)."""
    from pybridge import __version__, headers

    ours = f'focusbridge {__version__}'
    index = np.arange(20 * 30).reshape(20, 30) % 3
    write_image(tmp_path / f'result{ext}', gradient(20, 30))
    write_depth_map(tmp_path / f'depth{ext}', index, 3)
    write_confidence_map(tmp_path / f'confidence{ext}', index / 2.0)
    for name, expected in [
        ('result', ours),
        ('depth', f'{ours} (depth map)'),
        ('confidence', f'{ours} (confidence map)'),
    ]:
        path = tmp_path / f'{name}{ext}'
        assert _software(exiftool, path) == [expected], name
        assert headers.software_tags(path) == [expected], name
