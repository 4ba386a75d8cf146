"""READ step: any input file -> Frame (float32 RGB 0..1, orientation applied once, ICC kept).

Decisions worth knowing:
- Alpha channels are dropped everywhere: focus stacking works on the colour only and the
  outputs carry no alpha.
- Integer samples are scaled by 2**BitsPerSample - 1 as the file declares it, so 16-bit files
  holding 12-bit values (BitsPerSample=16) stay dark-ish, exactly as every other reader shows
  them, while packed 12-bit TIFFs (BitsPerSample=12) come out full range.
- Float TIFFs keep their values (linear data may have headroom above 1; Frame.warnings says
  so, as the result clips it). NaN and infinities refuse the frame: any number standing in
  for them (a 0) is a patch of the same value in every frame, which wins the fusion.
- RAW is decoded linear with the camera white balance in LibRaw's default output space
  (sRGB primaries, gamma 1); bit_depth is 16. What LibRaw prints itself (from C, on fd 2)
  goes into our one-line error instead of beside it.
- Only regular files are read (symlinks followed): a FIFO would block forever, /dev/zero
  never ends. Every file is opened once and the libraries read that open file, so what
  was checked is what is decoded, and any file name works (LibRaw wants UTF-8 names).
- Frames larger than max_pixels are refused from the header, before anything is decoded:
  an 875 kB PNG can declare 30000 x 30000 pixels.
- An ICC profile that does not describe the pixels as read (a CMYK JPEG decodes to RGB) is
  dropped, with a line in Frame.warnings.
- read_frame_small (a quick look, `focusbridge check`) decodes only what a downscaled copy
  needs where the format allows it: JPEG in the DCT domain (1/2, 1/4, 1/8), RAW at half size
  without demosaicing; TIFF and PNG are decoded whole and averaged down in their integer type
  before the float conversion. Every check of read_frame holds (regular files, the pixel limit
  from the header, one-line errors, orientation, ICC).
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import tifffile

from .errors import InputError, one_line
from .headers import ORIENTATION_TAG, jpeg_png_header, png_head, sniff
from .options import DEFAULT_MAX_PIXELS  # largest frame read unless the caller says otherwise

# Every extension LibRaw reads (its documented camera list and dcraw's heritage).
RAW_EXTENSIONS = frozenset(
    {
        '.3fr',
        '.ari',
        '.arw',
        '.bay',
        '.braw',
        '.cap',
        '.cr2',
        '.cr3',
        '.crw',
        '.cs1',
        '.dcr',
        '.dcs',
        '.dng',
        '.drf',
        '.eip',
        '.erf',
        '.fff',
        '.gpr',
        '.iiq',
        '.k25',
        '.kc2',
        '.kdc',
        '.mdc',
        '.mef',
        '.mos',
        '.mrw',
        '.nef',
        '.nrw',
        '.obm',
        '.orf',
        '.ori',
        '.pef',
        '.ptx',
        '.pxn',
        '.qtk',
        '.r3d',
        '.raf',
        '.raw',
        '.rdc',
        '.rw2',
        '.rwl',
        '.rwz',
        '.sr2',
        '.srf',
        '.srw',
        '.sti',
        '.x3f',
    }
)
TIFF_EXTENSIONS = frozenset({'.tif', '.tiff'})
JPEG_EXTENSIONS = frozenset({'.jpg', '.jpeg', '.jpe', '.jfif'})
PNG_EXTENSIONS = frozenset({'.png'})


@dataclass
class Frame:
    pixels: np.ndarray  # float32, H x W x C, C in {1, 3}, RGB order, 0..1 in file encoding
    path: Path | None  # None for arrays passed to the API
    bit_depth: int  # bits per sample of the source: 8, 16 or 32 (float)
    icc: bytes | None  # embedded ICC profile, travels to the output
    kind: str  # 'raw' | 'tiff' | 'jpeg' | 'png' | 'array'
    warnings: list[str] = field(default_factory=list)  # one line each, naming the file

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]


@dataclass(frozen=True)
class FrameInfo:
    height: int
    width: int
    channels: int
    bit_depth: int
    kind: str


# ---------------------------------------------------------------------------- public API


def read_frame(path: str | os.PathLike, *, max_pixels: int | None = None) -> Frame:
    """Decode one input file into a Frame; every failure is an InputError naming the file.

    `max_pixels`: refuse larger frames, checked from the header before decoding (None:
    DEFAULT_MAX_PIXELS; 0: no limit).
    """
    return _decode(path, max_pixels, probe=False)


def read_frame_small(
    path: str | os.PathLike, long_side: int, *, max_pixels: int | None = None
) -> tuple[Frame, tuple[int, int]]:
    """Decode one input file scaled down (area average) so its long side is `long_side` px, the
    cheap way where the format has one (see the module docstring); a frame whose long side is
    no longer than that comes back whole, as read_frame gives it. Returns the frame and the
    full frame's (height, width) after orientation. Failures as read_frame's.
    """
    if long_side < 1:
        raise ValueError(f'long_side must be at least 1, not {long_side}')
    frame, full = _decode(path, max_pixels, probe=False, small=long_side)
    target = _small_size(*full, long_side)
    if target is not None and frame.pixels.shape[:2] != target:  # a route that could not
        frame.pixels = _area(frame.pixels, target)  # reduce on the way (e.g. via OpenCV)
    return frame, full


def probe_frame(path: str | os.PathLike, *, max_pixels: int | None = None) -> FrameInfo:
    """Size, channels and bit depth after orientation, without decoding pixels where possible;
    refuses what read_frame would refuse for its size.

    A successful probe does not promise that read_frame will succeed: a RAW whose header is
    intact but whose image data is truncated probes fine and fails to read.
    """
    return _decode(path, max_pixels, probe=True)


def icc_colour_space(icc: bytes | None) -> str | None:
    """The colour space an ICC profile describes, from its header: 'RGB', 'GRAY', 'CMYK',
    'Lab', ...; None when the bytes are not an ICC profile."""
    if not icc or len(icc) < 128 or icc[36:40] != b'acsp':
        return None
    space = icc[16:20].decode('latin-1').strip()
    return space if space.isascii() and space.isalnum() else None


def _decode(path: str | os.PathLike, max_pixels: int | None, probe: bool, small: int = 0):
    """Run the handler for the file's kind, turning any library failure into one InputError
    line that names the file. `small`: read_frame_small's long side; the handler then
    returns (Frame, (full height, full width))."""
    path = Path(os.fsdecode(path))  # bytes names too (undecodable bytes: surrogates)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    with _open_regular(path) as fh:
        kind = _kind_of(path, fh)
        try:
            if small:
                return _HANDLERS[kind](path, fh, limit, probe, small=small)
            return _HANDLERS[kind](path, fh, limit, probe)
        except InputError:
            raise
        except MemoryError:
            raise InputError(path, 'not enough memory to decode this image') from None
        except Exception as exc:  # library errors on corrupt files come in many types
            raise _decode_error(path, kind, exc) from exc


def frame_from_array(arr: np.ndarray, bit_depth: int | None = None) -> Frame:
    """Wrap an array from the Python API: uint8/uint16/float, H x W or H x W x 1/2/3/4.

    For integer arrays `bit_depth` says how many bits are significant (a uint16 array holding
    12-bit values: bit_depth=12, scaled by 4095); for float arrays it only sets the reported
    bit depth (default 32). The array is copied, never modified.
    """
    arr = np.asarray(arr)
    label = '<array>'
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise InputError(label, f'expected an H x W or H x W x 1/3/4 image, got shape {arr.shape}')
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(label, f'empty image, shape {arr.shape}')
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
        bit_depth = bit_depth or 1
    if arr.dtype.kind == 'u':
        bits = bit_depth or arr.dtype.itemsize * 8
        pixels = _scale_int(arr, (1 << bits) - 1)
        depth = 8 if bits <= 8 else 16
    elif arr.dtype.kind == 'f':
        pixels = _floats(label, np.array(arr, dtype=np.float32, copy=True), '')
        depth = bit_depth or 32
    else:
        raise InputError(label, f'unsupported sample type {arr.dtype} (use uint8, uint16 or float)')
    warnings = _headroom(label, pixels) if arr.dtype.kind == 'f' else []
    return Frame(_to_rgb_or_gray(pixels), None, depth, None, 'array', warnings)


# ------------------------------------------------------------------ file kind, errors


def _describe(exc: BaseException) -> str:
    return one_line(exc.args[0] if len(exc.args) == 1 else exc) or type(exc).__name__


def _decode_error(path: Path, kind: str, exc: Exception, said: str = '') -> InputError:
    """`said`: what LibRaw printed itself (data corrupted at ...)."""
    detail = _describe(exc)
    if kind == 'raw':
        detail = f'LibRaw: {detail}' + (f'; {said}' if said else '')
        if type(exc).__name__ == 'LibRawIOError':  # LibRaw's word for "ran out of data"
            detail += '; the file is probably truncated'
    return InputError(path, f'not a readable {kind.upper()} file ({detail})')


_FILE_TYPES = {
    stat.S_IFDIR: 'a folder',
    stat.S_IFIFO: 'a named pipe',
    stat.S_IFSOCK: 'a socket',
    stat.S_IFCHR: 'a device',
    stat.S_IFBLK: 'a device',
}


def _require_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        what = _FILE_TYPES.get(stat.S_IFMT(mode), 'a special file')
        raise InputError(path, f'is not a regular file ({what}); give image files only')


def _os_error(path: Path, exc: OSError) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return InputError(path, 'no such file')
    if isinstance(exc, PermissionError):
        return InputError(path, 'permission denied')
    return InputError(path, f'cannot read ({one_line(exc.strerror or exc)})')


_O_NONBLOCK = getattr(os, 'O_NONBLOCK', 0)  # not on Windows, which has no FIFOs to fear


def _open_regular(path: Path):
    """The file opened for reading, if it is a regular file once symlinks are followed."""
    try:
        _require_regular(path, os.stat(path).st_mode)
        # O_NONBLOCK: a FIFO swapped in after the stat must not block open() waiting for a
        # writer; the fstat below refuses it. Reads of regular files ignore the flag.
        fh = open(path, 'rb', opener=lambda p, flags: os.open(p, flags | _O_NONBLOCK))
    except OSError as exc:
        raise _os_error(path, exc) from None
    try:
        _require_regular(path, os.fstat(fh.fileno()).st_mode)
    except BaseException:
        fh.close()
        raise
    return fh


def check_regular(path: str | os.PathLike) -> None:
    """Raise the InputError read_frame would raise for a path that is no regular file
    (missing, a folder, a FIFO, a device), without reading it."""
    path = Path(os.fsdecode(path))
    try:
        _require_regular(path, os.stat(path).st_mode)
    except OSError as exc:
        raise _os_error(path, exc) from None


def _read(path: Path, fh, size: int = -1) -> bytes:
    """`size` bytes (default: all) from the start of the file, left at its start for the
    next reader."""
    try:
        fh.seek(0)
        data = fh.read(size)
        fh.seek(0)
        return data
    except OSError as exc:
        raise _os_error(path, exc) from None


def _kind_of(path: Path, fh) -> str:
    """'raw' | 'tiff' | 'jpeg' | 'png' from the extension, else from the magic bytes."""
    head = _read(path, fh, 16)
    ext = path.suffix.lower()
    if ext in RAW_EXTENSIONS:  # most RAWs are TIFF inside: the extension decides
        return 'raw'
    if not head:
        raise InputError(path, 'empty file')
    sniffed = sniff(head)
    if sniffed:
        return sniffed
    for kind, exts in (
        ('tiff', TIFF_EXTENSIONS),
        ('jpeg', JPEG_EXTENSIONS),
        ('png', PNG_EXTENSIONS),
    ):
        if ext in exts:
            return kind  # the reader will say what is wrong with it
    raise InputError(path, 'unsupported file type (not JPEG, PNG, TIFF or a camera RAW)')


def _check_size(path: Path, info: FrameInfo, limit: int) -> FrameInfo:
    """Refuse, from the header, frames with no pixels or more than `limit` (0: no limit)."""
    pixels = info.height * info.width
    if not pixels:
        raise InputError(path, f'has no pixels ({info.width}x{info.height})')
    if limit and pixels > limit:
        raise InputError(
            path,
            f'is {info.width}x{info.height} = {pixels / 1e6:.6g} megapixels, '
            f'more than the limit of {limit / 1e6:.6g} megapixels (raise it '
            'with --max-pixels; 0: no limit)',
        )
    return info


def _oriented(height: int, width: int, orientation: int) -> tuple[int, int]:
    return (width, height) if _swaps_axes(orientation) else (height, width)


def _small_size(height: int, width: int, long_side: int) -> tuple[int, int] | None:
    """(height, width) scaled so the long side is `long_side`; None when that is no smaller."""
    f = long_side / max(height, width)
    if f >= 1.0:
        return None
    return max(1, round(height * f)), max(1, round(width * f))


def _stored_target(info: FrameInfo, small: int, orientation: int) -> tuple[int, int] | None:
    """read_frame_small's size in the file's stored orientation (None: whole)."""
    target = _small_size(info.height, info.width, small)
    if target is not None and _swaps_axes(orientation):
        target = target[::-1]
    return target


def _area(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`img` averaged down to (height, width); keeps a channel axis of 1. (Shrinking by less
    than a quarter, where an area average is a linear interpolation in all but name, OpenCV's
    linear resize does it in half the time.)"""
    if img.shape[:2] == size:
        return img
    near = img.shape[0] < 1.25 * size[0] and img.shape[1] < 1.25 * size[1]
    how = cv2.INTER_LINEAR if near else cv2.INTER_AREA
    out = cv2.resize(np.ascontiguousarray(img), size[::-1], interpolation=how)
    return out.reshape(*size, img.shape[2]) if img.ndim == 3 else out


def _area_int(img: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Integer samples (H x W or H x W x C) averaged down before the float conversion, alpha
    and extra samples dropped first (as _to_rgb_or_gray drops them later)."""
    if size is None or img.dtype not in (np.uint8, np.uint16):
        return img
    if img.ndim == 3 and img.shape[2] == 2:
        img = img[:, :, :1]
    elif img.ndim == 3 and img.shape[2] > 4:
        img = img[:, :, :3]
    return _area(img, size)


def _frame_with_icc(
    path: Path, pixels: np.ndarray, depth: int, icc: bytes | None, kind: str
) -> Frame:
    """A Frame that keeps its ICC profile only if the profile describes the pixels as read:
    a CMYK JPEG decodes to RGB, and its CMYK profile would mislabel the result."""
    warnings = []
    read_as = 'RGB' if pixels.shape[2] == 3 else 'GRAY'
    space = icc_colour_space(icc) if icc else read_as
    if space != read_as:
        warnings.append(
            f'{path}: {space or "unrecognised"} ICC profile dropped: the pixels '
            f'read are {"RGB" if read_as == "RGB" else "grey"}, which it does not '
            'describe; the frame is used without a profile'
        )
        icc = None
    return Frame(pixels, path, depth, icc or None, kind, warnings)


# ------------------------------------------------------------------ pixel helpers


def _scale_int(arr: np.ndarray, maxval: int) -> np.ndarray:
    out = arr.astype(np.float32)
    out *= np.float32(1.0 / maxval)
    return out


def _floats(path, arr: np.ndarray, advice: str = '; fix the export') -> np.ndarray:
    """float32 samples, refused when any is NaN or infinite: no value can stand in for them."""
    arr = arr.astype(np.float32, copy=False)
    bad = arr.size - np.count_nonzero(np.isfinite(arr))
    if bad:
        raise InputError(path, f'{bad} samples are not numbers (NaN/Inf){advice}')
    return arr


# above this a sample rounds to a 16-bit level the clip to 1 would not give
_HEADROOM = 1 + 0.5 / 65535


def _headroom(path, pixels: np.ndarray) -> list[str]:
    """A warning when float samples go over 1 (scene-linear exports): the fusion keeps them,
    the result (0..1, integer formats) clips them."""
    over = np.count_nonzero(pixels > _HEADROOM)
    if not over:
        return []
    top = float(pixels.max())
    return [f'{path}: {over} samples are above 1.0 (up to {top:.3g}); the result clips them to 1']


def _to_rgb_or_gray(pixels: np.ndarray) -> np.ndarray:
    """H x W x C (C from 1..4, RGB order) -> H x W x 1 or H x W x 3; alpha dropped."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    c = pixels.shape[2]
    if c == 2:  # gray + alpha
        pixels = pixels[:, :, :1]
    elif c >= 4:  # RGB + alpha (or extra samples)
        pixels = pixels[:, :, :3]
    return np.ascontiguousarray(pixels, dtype=np.float32)


def _bgr_to_rgb(img: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) samples in RGB order, alpha dropped. Done before scaling to float:
    cvtColor on the stored integers is several times faster than indexing float planes."""
    if img.ndim != 3 or img.shape[2] < 3:
        return img
    if img.shape[2] in (3, 4) and img.dtype in (np.uint8, np.uint16, np.float32):
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return img[:, :, [2, 1, 0]]


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn pixels stored with EXIF/TIFF Orientation 1..8 upright (like exif_transpose)."""
    if orientation == 2:
        img = img[:, ::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    elif orientation == 4:
        img = img[::-1]
    elif orientation == 5:
        img = img.swapaxes(0, 1)
    elif orientation == 6:
        img = img.swapaxes(0, 1)[:, ::-1]  # 90 degrees clockwise
    elif orientation == 7:
        img = img[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        img = img.swapaxes(0, 1)[::-1]  # 90 degrees counter-clockwise
    else:
        return img
    return np.ascontiguousarray(img)


def _swaps_axes(orientation: int) -> bool:
    return orientation in (5, 6, 7, 8)


# LibRaw/dcraw `flip` (bit 4: transpose, bit 2: flip rows, bit 1: flip columns) as EXIF
# orientation: 3 = 180 degrees, 5 = 90 CCW, 6 = 90 CW.
_LIBRAW_FLIP_TO_EXIF = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


# ------------------------------------------------------------------ RAW


def _rawpy():
    import rawpy  # imported lazily: only RAW inputs pay for it

    return rawpy


# LibRaw prints complaints from C straight to fd 2 ("unknown file: data corrupted at 1378"):
# while any LibRaw call runs, fd 2 points at a temp file (one redirect for every thread).
_fd2_lock = threading.Lock()
_fd2 = {'users': 0, 'saved': -1, 'sink': None, 'taken': 0}


@contextmanager
def _stderr_caught(said: bytearray):
    """What reaches fd 2 meanwhile: on failure into `said` (for our one line); on success back
    to the real stderr, so another thread's output (the progress bar) is late, never lost.
    (Not on Windows, where LibRaw's C runtime may not share our fd 2: it prints as it did.)"""
    if os.name == 'nt':
        yield
        return
    with _fd2_lock:
        if not _fd2['users']:
            sys.stderr.flush()
            _fd2.update(sink=tempfile.TemporaryFile(), saved=os.dup(2), taken=0)
            os.dup2(_fd2['sink'].fileno(), 2)
        _fd2['users'] += 1
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        with _fd2_lock:
            sink = _fd2['sink'].fileno()
            end = os.lseek(sink, 0, os.SEEK_END)
            text = os.pread(sink, end - _fd2['taken'], _fd2['taken'])
            _fd2['taken'] = end
            if failed:
                said += text
            elif text:
                os.write(_fd2['saved'], text)
            _fd2['users'] -= 1
            if not _fd2['users']:
                os.dup2(_fd2['saved'], 2)
                os.close(_fd2['saved'])
                _fd2['sink'].close()


def _raw(path: Path, fh, limit: int, probe: bool, small: int = 0):
    said = bytearray()
    try:
        with _stderr_caught(said):
            return _raw_decode(path, fh, limit, probe, small)
    except (InputError, MemoryError):
        raise
    except Exception as exc:
        raise _decode_error(path, 'raw', exc, _libraw_said(path, said)) from exc


def _libraw_said(path: Path, said: bytes) -> str:
    """LibRaw's lines as one, without the name it puts first ('unknown file' for an open
    file): our message names the file. (Two threads decoding at once share the catch, so a
    line may be the other file's: said once.)"""
    lines = said.decode(errors='replace').splitlines()
    lines = [line.removeprefix('unknown file: ').removeprefix(f'{path}: ') for line in lines]
    return '; '.join(dict.fromkeys(filter(None, map(one_line, lines))))


def _raw_decode(path: Path, fh, limit: int, probe: bool, small: int = 0):
    # The open file, not the name: LibRaw decodes what was checked, and it cannot open names
    # that are not UTF-8. But rawpy reads a file object whole, so a probe of a UTF-8 name
    # lets LibRaw open it by name and read the header only (a 100-frame bracket of 60 MB
    # RAWs on a network share would otherwise be read twice).
    source = fh
    if probe:
        try:
            source = os.fsencode(path).decode('utf-8')
        except UnicodeDecodeError:
            pass
    with _rawpy().imread(source) as raw:
        info = _check_size(path, _raw_info(raw), limit)
        if probe:
            return info
        flip = raw.sizes.flip
        orientation = _LIBRAW_FLIP_TO_EXIF.get(flip, 1)
        target = _stored_target(info, small, orientation) if small else None
        rgb = raw.postprocess(
            output_bps=16,
            gamma=(1, 1),
            no_auto_bright=True,
            use_camera_wb=True,
            user_flip=0,
            # LibRaw would otherwise rescale each file by its own
            # brightest pixel when that exceeds 75 % of the white level,
            # so frames of one bracket could differ in brightness.
            adjust_maximum_thr=0.0,
            # a small copy at most half the size: one pixel per 2 x 2 block of the
            # colour filter array, no demosaicing
            half_size=target is not None and 2 * max(target) <= max(info.height, info.width),
        )
    rgb = _area_int(rgb, target) if small else rgb
    pixels = _scale_int(rgb, 65535)
    del rgb
    pixels = apply_orientation(pixels, orientation)
    frame = Frame(_to_rgb_or_gray(pixels), path, 16, None, 'raw')
    return (frame, (info.height, info.width)) if small else frame


def _raw_info(raw) -> FrameInfo:
    s = raw.sizes
    height, width = s.height, s.width
    if s.pixel_aspect and abs(s.pixel_aspect - 1) > 1e-6:  # LibRaw stretches these
        if s.pixel_aspect < 1:
            height = int(height / s.pixel_aspect + 0.5)
        else:
            width = int(width * s.pixel_aspect + 0.5)
    height, width = _oriented(height, width, _LIBRAW_FLIP_TO_EXIF.get(s.flip, 1))
    return FrameInfo(height, width, 1 if raw.num_colors == 1 else 3, 16, 'raw')


# ------------------------------------------------------------------ TIFF


def _tiff_page(tif: tifffile.TiffFile):
    """The main image: the first page that is not a reduced-resolution preview."""
    for page in tif.pages:
        if not (getattr(page, 'subfiletype', 0) & 1):
            return page
    return tif.pages.first


def _tiff_check(path: Path, page) -> None:
    photometric = int(page.photometric)
    if photometric not in (0, 1, 2, 3, 6):  # miniswhite, minisblack, rgb, palette, ycbcr
        name = getattr(page.photometric, 'name', photometric)
        raise InputError(path, f'unsupported TIFF colour model {name} (need RGB or grayscale)')
    if page.dtype is None or page.dtype.kind not in 'uf?':
        raise InputError(path, f'unsupported TIFF sample type {page.dtype}')


def _tiff_orientation(page) -> int:
    try:
        return int(page.tags.valueof(ORIENTATION_TAG, 1))
    except (TypeError, ValueError):
        return 1


def _tiff_channels(page) -> int:
    if int(page.photometric) == 3:  # palette -> RGB
        return 3
    samples = page.samplesperpixel
    return 1 if samples <= 2 else 3


def _tiff_bits(page) -> int:
    bps = page.bitspersample
    return bps if isinstance(bps, int) else int(max(bps))


def _tiff(path: Path, fh, limit: int, probe: bool, small: int = 0):
    with tifffile.TiffFile(fh) as tif:
        page = _tiff_page(tif)
        _tiff_check(path, page)
        orientation = _tiff_orientation(page)
        depth = 32 if page.dtype.kind == 'f' else (8 if _tiff_bits(page) <= 8 else 16)
        info = _check_size(
            path,
            FrameInfo(
                *_oriented(page.imagelength, page.imagewidth, orientation),
                _tiff_channels(page),
                depth,
                'tiff',
            ),
            limit,
        )
        if probe:
            return info
        try:
            data = page.asarray()
        except (KeyError, ValueError, ImportError) as exc:
            # tifffile needs the optional imagecodecs for LZW, PackBits and JPEG; OpenCV's
            # libtiff decodes those, so let it (tags still come from tifffile below).
            if 'imagecodecs' not in str(exc):
                raise
            data = None
        icc = page.iccprofile
        photometric = int(page.photometric)
        bits = _tiff_bits(page)
        colormap = page.colormap if photometric == 3 else None
        separate = int(page.planarconfig) == 2 and page.samplesperpixel > 1
        stored = (page.imagelength, page.imagewidth)

    target = _stored_target(info, small, orientation) if small else None
    if data is None:
        pixels, depth = _tiff_via_cv2(path, _read(path, fh), *stored)
    else:
        pixels, depth = _tiff_pixels(path, data, photometric, bits, colormap, separate, target)
        del data
    pixels = _to_rgb_or_gray(pixels)
    pixels = apply_orientation(pixels, orientation)
    frame = _frame_with_icc(path, pixels, depth, icc, 'tiff')
    if depth == 32:
        frame.warnings += _headroom(path, pixels)
    return (frame, (info.height, info.width)) if small else frame


def _tiff_pixels(path, data, photometric, bits, colormap, separate, target=None):
    """`target`: (height, width) to average integer samples down to (read_frame_small); the
    other sample types are left to read_frame_small's float pass."""
    if separate and data.ndim == 3:  # planes first -> samples last
        data = np.moveaxis(data, 0, -1)
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim not in (2, 3):
        raise InputError(path, f'unsupported TIFF layout, shape {data.shape}')
    if photometric != 3:  # palette indexes are no samples to average
        data = _area_int(data, target)

    if photometric == 3:  # palette: look colours up (16-bit table)
        if colormap is None:
            raise InputError(path, 'palette TIFF without a colour map')
        pixels = _scale_int(np.moveaxis(colormap, 0, -1)[data], 65535)
        depth = 8 if bits <= 8 else 16
    elif data.dtype.kind == 'f':
        pixels = _floats(path, data)
        depth = 32
    else:
        data = data.astype(np.uint8) if data.dtype == np.bool_ else data
        bits = min(bits, data.dtype.itemsize * 8)
        pixels = _scale_int(data, (1 << bits) - 1)
        depth = 8 if bits <= 8 else 16
    if photometric == 0:  # MinIsWhite: 0 is white
        pixels = 1.0 - pixels
    return pixels, depth


def _tiff_via_cv2(path: Path, data: bytes, height: int, width: int) -> tuple[np.ndarray, int]:
    img = _decode_cv2(path, data, 'tiff', height, width)
    img = _bgr_to_rgb(img)
    if img.dtype == np.uint8:
        return _scale_int(img, 255), 8
    if img.dtype == np.uint16:
        return _scale_int(img, 65535), 16
    if img.dtype.kind == 'f':
        return _floats(path, img), 32
    raise InputError(path, f'unsupported TIFF sample type {img.dtype}')


# ------------------------------------------------------------------ JPEG / PNG

# OpenCV refuses images over these (environment variable, default) with an assertion message.
_CV2_LIMITS = (
    ('OPENCV_IO_MAX_IMAGE_WIDTH', 1 << 20),
    ('OPENCV_IO_MAX_IMAGE_HEIGHT', 1 << 20),
    ('OPENCV_IO_MAX_IMAGE_PIXELS', 1 << 30),
)


_JPEG_REDUCED = {
    (2, 3): cv2.IMREAD_REDUCED_COLOR_2,
    (4, 3): cv2.IMREAD_REDUCED_COLOR_4,
    (8, 3): cv2.IMREAD_REDUCED_COLOR_8,
    (2, 1): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    (4, 1): cv2.IMREAD_REDUCED_GRAYSCALE_4,
    (8, 1): cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def _decode_cv2(
    path: Path, data: bytes, kind: str, height: int, width: int, reduced: tuple | None = None
) -> np.ndarray:
    """Decode with OpenCV (`height` x `width` as stored), whose own size limits are said
    plainly rather than as an assertion failure. `reduced`: a key of _JPEG_REDUCED's flags
    (JPEG only): decoded at 1/2, 1/4 or 1/8 of the size in the DCT domain."""
    for (name, default), value in zip(_CV2_LIMITS, (width, height, width * height), strict=True):
        try:
            cv2_limit = int(os.environ.get(name, default))
        except ValueError:  # a form OpenCV reads and int() does not ('1 GB'): OpenCV judges
            continue
        if value > cv2_limit:
            raise InputError(
                path,
                f'is {width}x{height}, over the limit {name}={cv2_limit} of '
                'OpenCV, which decodes it (raise it in the environment)',
            )
    # np.frombuffer + imdecode instead of imread: works for any file name (non-ASCII too).
    flags = _JPEG_REDUCED[reduced] if reduced else cv2.IMREAD_UNCHANGED
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise InputError(path, f'not a readable {kind.upper()} file (corrupt or truncated)')
    return img


def _jpeg_reduction(header, target: tuple[int, int] | None) -> int:
    """The largest DCT-domain reduction (1, 2, 4, 8) that still decodes at least `target`."""
    k = 1
    while (
        target is not None
        and k < 8
        and -(-header.height // (2 * k)) >= target[0]
        and -(-header.width // (2 * k)) >= target[1]
    ):
        k *= 2
    return k


def _jpeg_png(path: Path, fh, limit: int, probe: bool, kind: str, small: int = 0):
    if probe and kind == 'png':  # the head is enough (a 12 MP 16-bit PNG is 59 MB)
        try:
            head = png_head(path, fh)
        except OSError as exc:
            raise _os_error(path, exc) from None
        header = jpeg_png_header(path, head, kind, whole=False)
    else:
        data = _read(path, fh)
        header = jpeg_png_header(path, data, kind)
    info = _check_size(
        path,
        FrameInfo(
            *_oriented(header.height, header.width, header.orientation),
            header.channels,
            header.bit_depth,
            kind,
        ),
        limit,
    )
    if probe:
        return info
    target = _stored_target(info, small, header.orientation) if small else None
    k = _jpeg_reduction(header, target) if kind == 'jpeg' else 1
    reduced = (k, 1 if header.channels == 1 else 3) if k > 1 else None
    img = _decode_cv2(path, data, kind, header.height, header.width, reduced)
    del data
    if small:  # averaged down while the samples are still integers
        img = _area_int(img, target)
    img = _bgr_to_rgb(img)
    if img.dtype == np.uint8:
        pixels, depth = _scale_int(img, 255), 8
    elif img.dtype == np.uint16:
        pixels, depth = _scale_int(img, 65535), 16
    else:
        raise InputError(path, f'unsupported sample type {img.dtype}')
    del img
    if header.channels == 1 and pixels.ndim == 3 and pixels.shape[2] >= 3:
        pixels = pixels[:, :, :1]  # gray+alpha PNG decodes as BGRA: keep gray
    pixels = _to_rgb_or_gray(pixels)
    pixels = apply_orientation(pixels, header.orientation)
    frame = _frame_with_icc(path, pixels, depth, header.icc, kind)
    return (frame, (info.height, info.width)) if small else frame


_HANDLERS = {
    'raw': _raw,
    'tiff': _tiff,
    'jpeg': partial(_jpeg_png, kind='jpeg'),
    'png': partial(_jpeg_png, kind='png'),
}
