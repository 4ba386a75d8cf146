"""READ step: an ICC profile travels only when it describes the pixels as read."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile
from test_frames import as_uint, asymmetric_rgb, png_bytes

from pybridge.frames import FrameInfo, icc_colour_space, probe_frame, read_frame

CMYK_JPEG = Path(__file__).parent / 'data' / 'cmyk.jpg'  # made by ImageMagick, see README


def with_space(icc: bytes, space: bytes) -> bytes:
    """The same profile with another colour space in its header (readers never parse ICC)."""
    return icc[:16] + space + icc[20:]


def iccp(icc: bytes) -> bytes:
    body = b'p\x00\x00' + zlib.compress(icc)
    return (
        struct.pack('>I', len(body))
        + b'iCCP'
        + body
        + struct.pack('>I', zlib.crc32(b'iCCP' + body) & 0xFFFFFFFF)
    )


def cmyk_profile() -> bytes:
    data = CMYK_JPEG.read_bytes()
    start = data.index(b'ICC_PROFILE\x00\x01\x01') + 14
    (length,) = struct.unpack_from('>H', data, start - 16)
    return data[start : start - 16 + length]


def test_icc_colour_space(icc_profile):
    assert icc_colour_space(icc_profile) == 'RGB'
    assert icc_colour_space(with_space(icc_profile, b'GRAY')) == 'GRAY'
    assert icc_colour_space(with_space(icc_profile, b'Lab ')) == 'Lab'
    assert icc_colour_space(cmyk_profile()) == 'CMYK'
    for junk in (None, b'', icc_profile[:100], b'x' * 200, with_space(icc_profile, b'\0\0\0\0')):
        assert icc_colour_space(junk) is None


def test_cmyk_jpeg_drops_its_cmyk_profile_and_says_so():
    data = CMYK_JPEG.read_bytes()
    assert data[data.index(b'\xff\xc0') + 9] == 4 and b'Adobe' in data  # 4 components
    frame = read_frame(CMYK_JPEG)
    assert frame.icc is None
    assert frame.warnings == [
        f'{CMYK_JPEG}: CMYK ICC profile dropped: the pixels read are RGB, '
        'which it does not describe; the frame is used without a profile'
    ]
    # The pixels themselves are converted to RGB: red, green, blue, white patches.
    patches = as_uint(frame, 255)[4, 4::8]
    np.testing.assert_allclose(
        patches, [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], atol=3
    )
    assert probe_frame(CMYK_JPEG) == FrameInfo(8, 32, 3, 8, 'jpeg')


def test_grey_frame_keeps_a_grey_profile_and_drops_an_rgb_one(tmp_path, icc_profile):
    gray = asymmetric_rgb()[:, :, 0]
    gray_icc = with_space(icc_profile, b'GRAY')
    for name, icc, kept in (('g.png', gray_icc, True), ('rgb.png', icc_profile, False)):
        path = tmp_path / name
        path.write_bytes(png_bytes(gray, color_type=0, extra=iccp(icc)))
        frame = read_frame(path)
        assert frame.pixels.shape == (48, 64, 1)
        if kept:
            assert frame.icc == icc and frame.warnings == []
        else:
            assert frame.icc is None and frame.warnings == [
                f'{path}: RGB ICC profile dropped: the pixels read are grey, which it does not '
                'describe; the frame is used without a profile'
            ]


def test_rgb_tiff_keeps_rgb_profile_and_drops_others(tmp_path, icc_profile):
    for name, icc, warning in (
        ('rgb.tif', icc_profile, None),
        ('gray.tif', with_space(icc_profile, b'GRAY'), 'GRAY'),
        ('junk.tif', b'not a profile', 'unrecognised'),
    ):
        path = tmp_path / name
        tifffile.imwrite(
            path, asymmetric_rgb(), photometric='rgb', extratags=[(34675, 'B', len(icc), icc, True)]
        )
        frame = read_frame(path)
        if warning is None:
            assert frame.icc == icc and frame.warnings == []
        else:
            assert frame.icc is None and len(frame.warnings) == 1
            assert frame.warnings[0].startswith(
                f'{path}: {warning} ICC profile dropped: the pixels read are RGB'
            )
