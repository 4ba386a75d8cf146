"""READ step against hostile input: FIFOs, devices, sockets, symlinks, decompression bombs,
headers that claim huge sizes, file names that are not UTF-8.

Cases that hung or ate memory before the fix run in one child process, each with a deadline
and under an address-space cap, so a regression fails instead of hanging the test run or
taking the machine's memory."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from conftest import REPO_ROOT
from dng import smooth_scene, write_dng
from test_frames import asymmetric_rgb, png_bytes

from pybridge import frames
from pybridge.errors import InputError
from pybridge.frames import (
    DEFAULT_MAX_PIXELS,
    FrameInfo,
    probe_frame,
    read_frame,
    read_frame_small,
)


def jpeg_bytes(h: int = 48, w: int = 64) -> bytes:
    return cv2.imencode('.jpg', asymmetric_rgb(h, w), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def with_jpeg_size(data: bytes, h: int, w: int) -> bytes:
    """The same JPEG with its frame header (SOF0) claiming h x w."""
    out = bytearray(data)
    struct.pack_into('>HH', out, data.index(b'\xff\xc0') + 5, h, w)
    return bytes(out)


def zero_png(w: int, h: int) -> bytes:
    """A real 8-bit grey PNG of zeros (any decoder reads it), built fast: after a full flush
    deflate output repeats exactly, so one block of rows is compressed once and repeated.
    30000 x 30000 gives the 875 kB file of the bug report."""
    rows = 100
    assert h % rows == 0
    comp = zlib.compressobj(9)
    first = comp.compress(bytes((w + 1) * rows)) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(bytes((w + 1) * rows)) + comp.flush(zlib.Z_FULL_FLUSH)
    assert first[2:] == again  # first: zlib header + block
    adler = (((w + 1) * h % 65521) << 16) | 1  # Adler-32 of that many zeros
    idat = first + again * (h // rows - 1) + b'\x03\x00' + struct.pack('>I', adler)

    def chunk(kind, body):
        return (
            struct.pack('>I', len(body))
            + kind
            + body
            + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    return (
        b'\x89PNG\r\n\x1a\n'
        + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0))
        + chunk(b'IDAT', idat)
        + chunk(b'IEND', b'')
    )


def tiff_claiming(w: int, h: int) -> bytes:
    """A little-endian TIFF whose header declares w x h 8-bit grey in one 16-byte strip."""
    tags = [
        (256, 4, w),
        (257, 4, h),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 8 + 2 + 12 * 9 + 4),
        (277, 3, 1),
        (278, 4, h),
        (279, 4, 16),
    ]
    ifd = struct.pack('<H', len(tags)) + b''.join(
        struct.pack('<HHII', tag, typ, 1, value) for tag, typ, value in tags
    )
    return b'II*\x00' + struct.pack('<I', 8) + ifd + b'\x00' * 4 + bytes(range(16))


def test_file_makers_make_real_images(tmp_path):
    png = cv2.imdecode(np.frombuffer(zero_png(300, 200), np.uint8), cv2.IMREAD_UNCHANGED)
    assert png.shape == (200, 300) and not png.any()
    (tmp_path / 'small.tif').write_bytes(tiff_claiming(4, 4))
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / 'small.tif'), np.arange(16, dtype=np.uint8).reshape(4, 4)
    )
    assert cv2.imdecode(np.frombuffer(jpeg_bytes(), np.uint8), 1).shape == (48, 64, 3)


# ------------------------------------------------------------------ in a child process

_CHILD = r'''
import json, os, resource, signal, sys
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
cap = 3 << 30 if hard == resource.RLIM_INFINITY else min(3 << 30, hard)
resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
from pybridge.frames import probe_frame, read_frame, read_frame_small

def on_alarm(*_):
    raise TimeoutError('still running after 10 s')

def read_swapped(path, stand_in):
    """read_frame while os.stat reports `stand_in` for `path`: as if a FIFO replaced the
    file between the check and open()."""
    real = os.stat
    os.stat = lambda p, *a, **k: real(stand_in if os.fspath(p) == path else p, *a, **k)
    try:
        return read_frame(path)
    finally:
        os.stat = real

signal.signal(signal.SIGALRM, on_alarm)
for name, expr in json.loads(sys.argv[1]):
    signal.alarm(10)
    try:
        got = eval(expr)
        got = got[0] if isinstance(got, tuple) else got  # read_frame_small: (frame, size)
        result = 'ok ' + repr(getattr(got, 'pixels', got).shape if hasattr(got, 'pixels') else got)
    except BaseException as exc:
        result = f'{type(exc).__name__}: {exc}'
    signal.alarm(0)
    print(json.dumps([name, result]), flush=True)
'''

OPENCV_LIMIT = 10_000  # OPENCV_IO_MAX_IMAGE_PIXELS in the child


@pytest.fixture(scope='module')
def hostile(tmp_path_factory):
    """{case: 'ok <shape>' | '<ExceptionType>: <message>'} from one child process."""
    d = tmp_path_factory.mktemp('hostile')
    os.mkfifo(d / 'fifo.jpg')
    os.symlink('/dev/zero', d / 'zero.jpg')
    (d / 'bomb.png').write_bytes(zero_png(30000, 30000))
    (d / 'huge.tif').write_bytes(tiff_claiming(100_000, 100_000))
    (d / 'small.jpg').write_bytes(jpeg_bytes(96, 128))  # 12288 pixels
    cases = {
        'fifo read': f'read_frame({str(d / "fifo.jpg")!r})',
        'fifo probe': f'probe_frame({str(d / "fifo.jpg")!r})',
        'fifo small': f'read_frame_small({str(d / "fifo.jpg")!r}, 64)',
        'fifo after stat': f'read_swapped({str(d / "fifo.jpg")!r}, {str(d / "small.jpg")!r})',
        'dev zero read': f'read_frame({str(d / "zero.jpg")!r})',
        'dev zero probe': f'probe_frame({str(d / "zero.jpg")!r})',
        'bomb read': f'read_frame({str(d / "bomb.png")!r})',
        'bomb probe': f'probe_frame({str(d / "bomb.png")!r})',
        'bomb small': f'read_frame_small({str(d / "bomb.png")!r}, 100)',
        'bomb without our limit': f'read_frame({str(d / "bomb.png")!r}, max_pixels=0)',
        'huge tiff read': f'read_frame({str(d / "huge.tif")!r})',
        'huge tiff probe': f'probe_frame({str(d / "huge.tif")!r})',
        'huge tiff small': f'read_frame_small({str(d / "huge.tif")!r}, 100)',
        'over opencv limit': f'read_frame({str(d / "small.jpg")!r})',
    }
    env = {
        **os.environ,
        'OPENCV_IO_MAX_IMAGE_PIXELS': str(OPENCV_LIMIT),
        'MALLOC_ARENA_MAX': '2',
    }  # keep the address space small for the cap
    try:
        done = subprocess.run(
            [sys.executable, '-c', _CHILD, json.dumps(list(cases.items()))],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            timeout=150,
        )
        out, err, rc = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, rc = exc.stdout or b'', exc.stderr or b'', 'timeout'
    results = dict(json.loads(line) for line in out.decode().splitlines())
    died = f'no result: the child died (rc={rc}): {err.decode(errors="replace")[-500:]}'
    return {name: results.get(name, died) for name in cases}, d


@pytest.mark.parametrize('case', ['fifo read', 'fifo probe', 'fifo small', 'fifo after stat'])
def test_fifo_is_refused_without_blocking(hostile, case):
    results, d = hostile
    assert (
        results[case]
        == f'InputError: {d / "fifo.jpg"}: is not a regular file (a named pipe); give image files only'
    )


@pytest.mark.parametrize('case', ['dev zero read', 'dev zero probe'])
def test_symlink_to_dev_zero_is_refused(hostile, case):
    results, d = hostile
    assert (
        results[case]
        == f'InputError: {d / "zero.jpg"}: is not a regular file (a device); give image files only'
    )


def over_limit(path, size: str, megapixels: str, limit: str = '250') -> str:
    return (
        f'{path}: is {size} = {megapixels} megapixels, more than the limit of {limit} '
        'megapixels (raise it with --max-pixels; 0: no limit)'
    )


@pytest.mark.parametrize(
    'case, name, size, megapixels',
    [
        ('bomb read', 'bomb.png', '30000x30000', '900'),
        ('bomb probe', 'bomb.png', '30000x30000', '900'),
        ('bomb small', 'bomb.png', '30000x30000', '900'),
        ('huge tiff read', 'huge.tif', '100000x100000', '10000'),
        ('huge tiff probe', 'huge.tif', '100000x100000', '10000'),
        ('huge tiff small', 'huge.tif', '100000x100000', '10000'),
    ],
)
def test_too_many_pixels_refused_from_the_header(hostile, case, name, size, megapixels):
    results, d = hostile
    assert results[case] == 'InputError: ' + over_limit(d / name, size, megapixels)


def test_opencv_limit_is_a_clean_input_error(hostile):
    results, d = hostile
    # Without our limit OpenCV's applies: said plainly, not as an assertion or a crash.
    for case, path, size in (
        ('bomb without our limit', d / 'bomb.png', '30000x30000'),
        ('over opencv limit', d / 'small.jpg', '128x96'),
    ):
        assert results[case] == (
            f'InputError: {path}: is {size}, over the limit '
            f'OPENCV_IO_MAX_IMAGE_PIXELS={OPENCV_LIMIT} of OpenCV, which '
            'decodes it (raise it in the environment)'
        )


# ------------------------------------------------------------------ not regular files


def test_symlink_to_a_regular_file_is_fine(tmp_path):
    (tmp_path / 'real.jpg').write_bytes(jpeg_bytes())
    os.symlink(tmp_path / 'real.jpg', tmp_path / 'link.jpg')
    assert read_frame(tmp_path / 'link.jpg').pixels.shape == (48, 64, 3)
    assert probe_frame(tmp_path / 'link.jpg') == FrameInfo(48, 64, 3, 8, 'jpeg')


def test_folder_device_and_socket_are_refused(tmp_path):
    os.symlink('/dev/null', tmp_path / 'null.jpg')
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / 's.png'))
    try:
        for name, what in (('.', 'a folder'), ('null.jpg', 'a device'), ('s.png', 'a socket')):
            path = tmp_path / name
            for fn in (read_frame, probe_frame, small_read):
                with pytest.raises(InputError) as err:
                    fn(path)
                assert (
                    str(err.value)
                    == f'{path}: is not a regular file ({what}); give image files only'
                )
    finally:
        sock.close()


def test_dangling_symlink_is_no_such_file(tmp_path):
    os.symlink(tmp_path / 'gone.jpg', tmp_path / 'link.jpg')
    with pytest.raises(InputError, match='link.jpg: no such file'):
        probe_frame(tmp_path / 'link.jpg')


# ------------------------------------------------------------------ the pixel limit


def small_files(tmp_path):
    """One 48 x 64 file of each kind -> path."""
    tifffile.imwrite(tmp_path / 'f.tif', asymmetric_rgb(), photometric='rgb')
    (tmp_path / 'f.png').write_bytes(cv2.imencode('.png', asymmetric_rgb())[1].tobytes())
    (tmp_path / 'f.jpg').write_bytes(jpeg_bytes())
    write_dng(tmp_path / 'f.dng', smooth_scene(48, 64))
    return [tmp_path / name for name in ('f.jpg', 'f.png', 'f.tif', 'f.dng')]


def small_read(path, max_pixels=None):
    """read_frame_small at a third of a 64 px frame, as a Frame-like (height, width) answer."""
    frame, (height, width) = read_frame_small(path, 20, max_pixels=max_pixels)
    assert frame.pixels.shape[:2] == (15, 20)
    return FrameInfo(height, width, frame.pixels.shape[2], frame.bit_depth, frame.kind)


def test_max_pixels_is_checked_for_every_kind(tmp_path):
    for path in small_files(tmp_path):
        for fn in (read_frame, probe_frame, small_read):
            with pytest.raises(InputError) as err:
                fn(path, max_pixels=3071)
            assert str(err.value) == over_limit(path, '64x48', '0.003072', '0.003071')
            for allowed in (3072, 0, None):  # the limit itself, no limit, the default
                got = fn(path, max_pixels=allowed)
                assert (got.height, got.width) == (48, 64)


def test_none_means_the_module_default(tmp_path, monkeypatch):
    assert DEFAULT_MAX_PIXELS == 250_000_000
    (tmp_path / 'f.jpg').write_bytes(jpeg_bytes())
    monkeypatch.setattr(frames, 'DEFAULT_MAX_PIXELS', 3000)
    with pytest.raises(InputError, match='more than the limit of 0.003 megapixels'):
        read_frame(tmp_path / 'f.jpg')
    assert read_frame(tmp_path / 'f.jpg', max_pixels=0).pixels.shape == (48, 64, 3)


def test_jpeg_claiming_a_huge_size(tmp_path):
    path = tmp_path / 'huge.jpg'
    path.write_bytes(with_jpeg_size(jpeg_bytes(), 65000, 65000))
    for fn in (read_frame, probe_frame, small_read):
        with pytest.raises(
            InputError,
            match='huge.jpg: is 65000x65000 = 4225 megapixels, more '
            'than the limit of 250 megapixels',
        ):
            fn(path)
    # No limit of ours: OpenCV's own (2**30 pixels by default) still gives a clean error.
    with pytest.raises(
        InputError,
        match='huge.jpg: is 65000x65000, over the limit OPENCV_IO_MAX_IMAGE_(WIDTH|HEIGHT|PIXELS)=',
    ):
        read_frame(path, max_pixels=0)


def test_header_with_no_pixels(tmp_path):
    path = tmp_path / 'empty.png'
    path.write_bytes(
        png_bytes(np.zeros((1, 1), np.uint8), color_type=0).replace(
            struct.pack('>II', 1, 1), struct.pack('>II', 0, 1), 1
        )
    )
    for fn in (read_frame, probe_frame, small_read):
        with pytest.raises(InputError, match=r'empty.png: has no pixels \(0x1\)'):
            fn(path)


@pytest.mark.parametrize('name', ['empty.jpg', 'empty.tif', 'empty.png', 'empty.nef'])
def test_empty_file_probe(tmp_path, name):
    (tmp_path / name).write_bytes(b'')
    with pytest.raises(InputError) as err:
        probe_frame(tmp_path / name)
    assert str(err.value).startswith(f'{tmp_path / name}: ')


# ------------------------------------------------------------------ file names


def test_names_that_are_not_utf8(tmp_path):
    stem = os.fsdecode(b'frame-\xff\xfe')  # surrogates, as os.listdir gives
    files = small_files(tmp_path)
    for src in files:
        path = tmp_path / (stem + src.suffix)
        src.rename(path)
        for name in (path, os.fsencode(path)):  # str and bytes
            assert read_frame(name).pixels.shape[:2] == (48, 64)
            assert probe_frame(name).width == 64
    with pytest.raises(InputError) as err:
        read_frame(tmp_path / (stem + '.jpg.missing'))
    assert str(err.value) == f'{tmp_path / stem}.jpg.missing: no such file'
    bad = tmp_path / (stem + '.dng')
    bad.write_bytes(b'II*\x00' + bytes(100))
    with pytest.raises(InputError) as err:
        read_frame(bad)
    assert str(err.value).startswith(f'{bad}: not a readable RAW file (LibRaw: ')
    assert 'codec' not in str(err.value) and '\n' not in str(err.value)


def test_a_broken_dng_gives_our_line_only(tmp_path):
    """tifffile logs what it cannot parse in a damaged TIFF-based RAW (through `logging`,
    which prints to stderr when nothing is configured); the command says only its own line."""
    data = REPO_ROOT / 'tests' / 'data' / 'raw' / 'broken' / 'filetype_fixture-Leica-M10.dng'
    frames = [tmp_path / 'a.dng', tmp_path / 'b.dng']
    for f in frames:
        f.write_bytes(data.read_bytes())
    for args in (['stack', *frames, '-o', tmp_path / 'out.tif'], ['check', *frames]):
        done = subprocess.run(
            [sys.executable, '-m', 'pybridge', *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1
        assert done.stderr == (
            f'focusbridge: error: {frames[0]}: not a readable RAW file (LibRaw: Input/output '
            'error; the file is probably truncated)\n'
        ), args[0]
    assert sorted(os.listdir(tmp_path)) == ['a.dng', 'b.dng']
