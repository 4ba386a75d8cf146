"""pybridge.headers: what a file declares before its pixels, answered by Pillow (JPEG, PNG) with
a little byte-level code where no library does the job."""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from test_frames import asymmetric_rgb, png_bytes
from test_frames_hostile import zero_png

from pybridge import frames as frames_module
from pybridge.errors import InputError
from pybridge.frames import FrameInfo, probe_frame, read_frame
from pybridge.headers import Header, jpeg_png_header, png_with_chunks, sniff


def pillow_bytes(img: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def test_sniff_names_every_kind():
    for head, kind in (
        (b'\xff\xd8\xff\xe0\x00\x10JFIF\x00', 'jpeg'),
        (b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR', 'png'),
        (b'II*\x00\x08\x00\x00\x00', 'tiff'),
        (b'MM\x00*\x00\x00\x00\x08', 'tiff'),
        (b'II+\x00\x08\x00\x00\x00', 'tiff'),  # BigTIFF
        (b'\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01', 'raw'),  # CR3
        (b'FUJIFILMCCD-RAW ', 'raw'),
        (b'IIRO\x08\x00\x00\x00', 'raw'),  # ORF
        (b'IIU\x00\x18\x00\x00\x00', 'raw'),  # RW2
        (b'II\x1a\x00\x00\x00HEAPCCDR', 'raw'),  # CRW
        (b'\x00MRM\x00\x00', 'raw'),
        (b'FOVb\x00\x00', 'raw'),  # X3F
        (b'hello, world', None),
        (b'', None),
    ):
        assert sniff(head) == kind, head


def test_png_header_from_pillow():
    rgb16 = asymmetric_rgb().astype(np.uint16) * 257
    png16 = cv2.imencode('.png', rgb16[:, :, ::-1])[1].tobytes()
    assert jpeg_png_header('x.png', png16, 'png') == Header(48, 64, 3, 16)  # Pillow: mode RGB
    gray_alpha = png_bytes(np.dstack([asymmetric_rgb()[:, :, :1]] * 2), color_type=4)
    assert jpeg_png_header('x.png', gray_alpha, 'png') == Header(48, 64, 1, 8)
    gray16 = cv2.imencode('.png', rgb16[:, :, 0])[1].tobytes()
    assert jpeg_png_header('x.png', gray16, 'png') == Header(48, 64, 1, 16)
    palette = pillow_bytes(Image.fromarray(asymmetric_rgb()).convert('P'), 'PNG')
    assert jpeg_png_header('x.png', palette, 'png') == Header(48, 64, 3, 8)


def test_jpeg_header_orientation_and_icc_from_pillow(icc_profile):
    exif = Image.Exif()
    exif[274] = 6
    jpeg = pillow_bytes(
        Image.fromarray(asymmetric_rgb()), 'JPEG', exif=exif.tobytes(), icc_profile=icc_profile
    )
    assert jpeg_png_header('x.jpg', jpeg, 'jpeg') == Header(48, 64, 3, 8, 6, icc_profile)
    gray = pillow_bytes(Image.fromarray(asymmetric_rgb()[:, :, 0]), 'JPEG')
    assert jpeg_png_header('x.jpg', gray, 'jpeg') == Header(48, 64, 1, 8)


@pytest.mark.parametrize('value', [0, 9, 65535])
def test_orientation_out_of_range_is_ignored(value):
    exif = Image.Exif()
    exif[274] = value
    png = pillow_bytes(Image.fromarray(asymmetric_rgb()), 'PNG', exif=exif.tobytes())
    assert jpeg_png_header('x.png', png, 'png').orientation == 1


def test_damaged_exif_keeps_the_image_readable(tmp_path):
    jpeg = pillow_bytes(Image.fromarray(asymmetric_rgb()), 'JPEG', exif=b'Exif\x00\x00II*\x00')
    (tmp_path / 'f.jpg').write_bytes(jpeg)
    assert read_frame(tmp_path / 'f.jpg').pixels.shape == (48, 64, 3)


def test_png_with_chunks_is_read_back(icc_profile):
    rgb16 = asymmetric_rgb().astype(np.uint16) * 257
    png = cv2.imencode('.png', rgb16[:, :, ::-1])[1].tobytes()
    out = png_with_chunks(png, icc_profile, 'depth map: 3 frames, é')
    im = PngImagePlugin.PngImageFile(io.BytesIO(out))
    assert im.info['icc_profile'] == icc_profile
    assert im.info['Description'] == 'depth map: 3 frames, é'
    im.verify()  # every checksum right, IEND there
    decoded = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded[:, :, ::-1], rgb16)
    assert png_with_chunks(png, None, None) == png


def test_truncated_png_is_refused_by_probe_too(tmp_path):
    png = cv2.imencode('.png', asymmetric_rgb())[1].tobytes()
    (tmp_path / 'cut.png').write_bytes(png[:-12])  # IEND gone
    for fn in (probe_frame, read_frame):
        with pytest.raises(InputError, match='cut.png: corrupt or truncated PNG file'):
            fn(tmp_path / 'cut.png')


def test_a_png_with_a_damaged_chunk_is_refused_when_read(tmp_path):
    png = bytearray(cv2.imencode('.png', asymmetric_rgb())[1].tobytes())
    idat = png.find(b'IDAT')
    png[idat + 40] ^= 0xFF  # one byte of the compressed pixels
    (tmp_path / 'bit.png').write_bytes(bytes(png))
    # the probe follows the chunks by their lengths (their layout is intact) without reading
    # the pixels; the read checks every checksum
    assert probe_frame(tmp_path / 'bit.png').width == 64
    with pytest.raises(
        InputError,
        match=f'bit.png: corrupt or truncated PNG file .chunk IDAT at byte {idat - 4} has a wrong checksum',
    ):
        read_frame(tmp_path / 'bit.png')
    for cut in (idat + 100, idat - 4 + 6):  # inside IDAT's data; inside its length and type
        (tmp_path / 'cut.png').write_bytes(bytes(png[:cut]))
        for fn in (probe_frame, read_frame):
            with pytest.raises(InputError, match='cut.png: corrupt or truncated PNG file'):
                fn(tmp_path / 'cut.png')
    (tmp_path / 'cut.png').write_bytes(bytes(png[: idat + 100]))
    with pytest.raises(InputError, match='chunk IDAT at byte .* runs past the end of the file'):
        probe_frame(tmp_path / 'cut.png')


def test_a_png_probe_reads_only_its_head(tmp_path, monkeypatch):
    # pixels past the first IDAT are never read by a probe: scramble them and it still passes
    noise = np.random.default_rng(0).integers(0, 65535, (300, 400, 3), dtype=np.uint16)
    png = bytearray(cv2.imencode('.png', noise)[1].tobytes())  # 720 KB, in 8 KB IDAT chunks
    idat = png.find(b'IDAT')
    png[idat + 8 : idat + 200] = bytes(192)
    (tmp_path / 'big.png').write_bytes(bytes(png))
    reads = []  # bytes asked for, by pread or by the frame reader's whole-file read
    real = os.pread
    monkeypatch.setattr(os, 'pread', lambda fd, n, at: reads.append(n) or real(fd, n, at))
    whole = frames_module._read

    def counted(*args, **kwargs):
        data = whole(*args, **kwargs)
        reads.append(len(data))
        return data

    monkeypatch.setattr(frames_module, '_read', counted)
    info = probe_frame(tmp_path / 'big.png')
    assert (info.width, info.height, info.channels, info.bit_depth) == (400, 300, 3, 16)
    assert sum(reads) < 10_000 < len(png)
    (tmp_path / 'tail.png').write_bytes(bytes(png) + b'data after IEND, which libpng ignores')
    assert probe_frame(tmp_path / 'tail.png').width == 400


def test_pillow_keeps_its_own_bomb_limit(tmp_path):
    # Our callers apply max_pixels; Pillow's process-wide limit stays as it was for programs
    # that import focusbridge and open their own images with Pillow.
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)
    path = tmp_path / 'big.png'
    path.write_bytes(zero_png(20000, 10000))  # over twice Pillow's limit: Image.open refuses it
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    assert probe_frame(path, max_pixels=0) == FrameInfo(10000, 20000, 1, 8, 'png')
    with pytest.raises(InputError, match='more than the limit of 100 megapixels'):
        probe_frame(path, max_pixels=100_000_000)
