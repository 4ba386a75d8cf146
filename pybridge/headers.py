"""What an image file declares before its pixels, for reading (frames), writing (write) and the
metadata merge (exif.merge).

The libraries answer: Pillow reads a JPEG or PNG header lazily (size, mode, ICC profile, EXIF,
XMP, PNG text; no pixels are decoded) and parses EXIF blocks; tifffile reads TIFF tags (callers
use it directly; software_tags here). Pillow's plugin classes are used rather than Image.open,
whose decompression bomb limit is process-wide: our callers apply their own limit, with their
own message, and a program that imports focusbridge keeps Pillow's limit for its own images.

Byte-level code is kept only where no library does the job:
- sniff: the kind of a file from its first bytes, camera RAW containers included;
- the JPEG end-of-image check: Pillow stops reading at the first scan;
- the size a PNG declares when Pillow refuses it for a zero width or height;
- iCCP and tEXt chunks added to a PNG that OpenCV encoded (Pillow cannot write 16-bit RGB PNGs).

tifffile logs what it cannot parse in a damaged file (a truncated DNG: one line per bad tag)
through `logging`, which prints to stderr when the program configured no logging, before our
own one-line error. A NullHandler on its logger stops that fallback; a program that configures
logging still receives the records. Set here, where every header reader (frames, write,
exif.merge, capture) imports from.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import struct
import zlib
from dataclasses import dataclass

import tifffile
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin

from .errors import InputError, one_line

logging.getLogger('tifffile').addHandler(logging.NullHandler())

ORIENTATION_TAG = 274
SOFTWARE_TAG = 305
_OPENERS = {'jpeg': JpegImagePlugin.JpegImageFile, 'png': PngImagePlugin.PngImageFile}


def sniff(head: bytes) -> str | None:
    """'jpeg' | 'png' | 'tiff' | 'raw' from the first 16 bytes of a file; None if unknown."""
    if head.startswith(b'\xff\xd8\xff'):
        return 'jpeg'
    if head.startswith(b'\x89PNG\r\n\x1a\n'):
        return 'png'
    if head[:4] in (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+'):
        return 'tiff'
    # RAW formats that are not plain TIFF: CR3 (ISO BMFF), RAF, ORF, RW2, CRW, MRW, X3F.
    if head[4:12] == b'ftypcrx ' or head.startswith(
        (b'FUJIFILM', b'IIRO', b'IIRS', b'MMOR', b'IIU\x00', b'\x00MRM', b'FOVb')
    ):
        return 'raw'
    if head[6:14] == b'HEAPCCDR':
        return 'raw'
    return None


def open_header(fh, kind: str) -> ImageFile.ImageFile:
    """Pillow's lazy view of the JPEG or PNG in the binary file `fh`, read from its start: size,
    mode, `info` (icc_profile, exif, xmp, PNG text); nothing is decoded."""
    fh.seek(0)
    return _OPENERS[kind](fh)


def exif(info: dict) -> Image.Exif:
    """The EXIF block in Pillow's `info` of a JPEG (APP1) or PNG (eXIf), parsed (empty when
    there is none); damaged EXIF raises here or when a tag is read."""
    parsed = Image.Exif()
    parsed.load(info.get('exif') or b'')
    return parsed


@dataclass(frozen=True)
class Header:
    height: int  # as stored
    width: int
    channels: int  # 1 (grey) or 3 (colour), alpha not counted
    bit_depth: int  # 8 or 16
    orientation: int = 1  # EXIF Orientation 1..8
    icc: bytes | None = None


def jpeg_png_header(path, data: bytes, kind: str, *, whole: bool = True) -> Header:
    """The header of the JPEG or PNG `data`; InputError naming `path` when it is damaged or the
    file is truncated (a JPEG without its end marker, a PNG without IEND or with a wrong
    checksum). `whole=False`: `data` is a PNG's head from png_head, which checked the layout."""
    fh = io.BytesIO(data)
    try:
        im = open_header(fh, kind)
    except Exception as exc:  # Pillow says what is wrong in several exception types
        declared = _png_declared_size(data) if kind == 'png' else None
        if declared and 0 in declared:  # Pillow refuses these; the caller says "no pixels"
            return Header(*declared, 1, 8)
        raise _damaged(path, kind, exc) from exc
    if kind == 'jpeg':
        # Entropy-coded data cannot contain FF D9, so no end marker after the header (where
        # Pillow stopped reading) means truncation.
        if not im.tile or data.find(b'\xff\xd9', fh.tell()) < 0:
            raise InputError(path, 'truncated JPEG file (no end-of-image marker)')
        bit_depth = 8  # Pillow opens 8-bit JPEGs only
    else:
        bit_depth = 16 if ';16' in im.tile[0][3] else 8  # 16-bit RGB opens as mode RGB
    channels = 1 if Image.getmodebase(im.mode) == 'L' else 3
    if kind == 'png' and data[12:16] == b'IHDR' and len(data) > 25:
        # the file's colour type decides: Pillow opens 16-bit grey + alpha as RGBA
        channels = 1 if data[25] in (0, 4) else 3
    header = Header(
        im.height,
        im.width,
        channels,
        bit_depth,
        _orientation(im.info),
        im.info.get('icc_profile') or None,
    )
    if kind == 'png' and whole:
        problem = _png_damage(data)
        if problem:
            raise InputError(path, f'corrupt or truncated PNG file ({problem})')
    return header


def png_head(path, fh) -> bytes:
    """The bytes of the PNG open in `fh` up to its first IDAT chunk: all its header needs.
    A truncated file is refused here (InputError naming `path`) without reading its pixels:
    it does not end with IEND (then its chunks are followed by their lengths to say where it
    breaks). Checksums are checked when the whole file is read: a probe that read all of a
    12 MP 16-bit PNG (59 MB) and summed them took 0.08 s, and the decode does it again."""
    fd = fh.fileno()
    size = os.fstat(fd).st_size
    try:
        if os.pread(fd, 12, max(size - 12, 0)) != _IEND:  # cut short, or data after IEND
            for _ in _file_layout(fh):
                pass
        for pos, _, kind in _file_layout(fh):
            if kind == 'IDAT':
                return os.pread(fd, pos + 8, 0)
    except _PngDamage as exc:
        raise InputError(path, f'corrupt or truncated PNG file ({exc})') from None
    return os.pread(fd, size, 0)  # no IDAT: for Pillow to say what is wrong


_IEND = b'\x00\x00\x00\x00IEND\xaeB`\x82'  # the last chunk: no data, its checksum


def _file_layout(fh):
    """_png_layout of the PNG open in `fh`, reading only its chunks' heads."""
    fd = fh.fileno()
    return _png_layout(lambda at: os.pread(fd, 8, at), os.fstat(fd).st_size)


class _PngDamage(Exception):
    pass


def _png_layout(head_at, end: int):
    """(position, end, type) of each chunk of a PNG of `end` bytes, from the signature to
    IEND, following the lengths; `head_at(position)` gives the 8 bytes of a chunk's length
    and type. _PngDamage where a chunk runs past the end or the file ends before IEND."""
    pos = 8
    while pos + 12 <= end:
        length, kind = struct.unpack('>I4s', head_at(pos))
        kind = kind.decode('latin-1')
        after = pos + 12 + length
        if after > end:
            raise _PngDamage(f'chunk {kind} at byte {pos} runs past the end of the file')
        yield pos, after, kind
        if kind == 'IEND':
            return
        pos = after
    raise _PngDamage('no IEND chunk: the file ends early')


def _png_damage(data: bytes) -> str | None:
    """What is wrong with the PNG's chunks, or None when every chunk up to IEND is there with
    the right checksum. (What Pillow's verify() checks, in a third of its time on a 12 MP
    16-bit PNG: 0.036 s instead of 0.092; libpng checks them too, but writes its complaints
    to stderr.)"""
    view = memoryview(data)
    try:
        for pos, after, kind in _png_layout(lambda at: data[at : at + 8], len(data)):
            (stored,) = struct.unpack_from('>I', data, after - 4)
            if zlib.crc32(view[pos + 4 : after - 4]) != stored:
                return f'chunk {kind} at byte {pos} has a wrong checksum'
    except _PngDamage as exc:
        return str(exc)
    return None


def _damaged(path, kind: str, exc: Exception) -> InputError:
    detail = one_line(exc) or type(exc).__name__
    return InputError(path, f'corrupt or truncated {kind.upper()} file ({detail})')


def _orientation(info: dict) -> int:
    try:
        value = int(exif(info).get(ORIENTATION_TAG, 1))
    except Exception:  # damaged EXIF must not make the image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def _png_declared_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from IHDR, the first chunk, at a fixed place."""
    if data[12:16] != b'IHDR' or len(data) < 24:
        return None
    width, height = struct.unpack_from('>II', data, 16)
    return height, width


def software_tags(path) -> list[str]:
    """The Software values a TIFF, PNG or JPEG declares: TIFF tag 305 of the first page, a PNG's
    tEXt/iTXt Software and EXIF Software, a JPEG's EXIF Software. Empty for other files and for
    what cannot be read."""
    try:
        with open(path, 'rb') as fh:
            kind = sniff(fh.read(16))
            if kind == 'tiff':
                fh.seek(0)
                with tifffile.TiffFile(fh) as tif:
                    values = [tif.pages.first.tags.valueof(SOFTWARE_TAG)]
            elif kind in ('jpeg', 'png'):
                info = open_header(fh, kind).info
                values = [info.get('Software'), exif(info).get(SOFTWARE_TAG)]
            else:
                return []
    except Exception:  # damaged: the readers say what is wrong when the file is used
        return []
    return [v.strip('\x00 ') for v in values if isinstance(v, str)]


def png_with_chunks(
    png: bytes, icc: bytes | None, description: str | None, software: str | None = None
) -> bytes:
    """`png` with an iCCP chunk holding `icc` and tEXt Description and Software, right after
    IHDR (before PLTE and IDAT, as iCCP needs)."""
    bodies = []
    if icc:
        bodies.append((b'iCCP', b'ICC profile\x00\x00' + zlib.compress(icc)))
    for key, text in ((b'Description', description), (b'Software', software)):
        if text:
            bodies.append((b'tEXt', key + b'\x00' + text.encode('latin-1', 'replace')))
    chunks = b''.join(
        struct.pack('>I', len(body)) + ctype + body + struct.pack('>I', zlib.crc32(ctype + body))
        for ctype, body in bodies
    )
    ihdr_end = 8 + 12 + struct.unpack_from('>I', png, 8)[0]
    return png[:ihdr_end] + chunks + png[ihdr_end:]


# Where exiftool finds focus distances: EXIF (maker notes included) or XMP. TIFF tags: XMP,
# ExifIFD, SubjectDistance, MakerNote, DNGVersion; PNG chunks: EXIF, and the text chunks
# that hold XMP and ImageMagick's raw EXIF profiles.
_TIFF_METADATA_TAGS = (700, 34665, 37382, 37500, 50706)
_PNG_METADATA_CHUNKS = {"eXIf", "iTXt", "tEXt", "zTXt"}


def may_carry_metadata(path) -> bool:
    """Might exiftool find camera facts in the file (capture time, focus distance, maker
    notes)? False only when its header says it has no EXIF and no XMP: then exiftool need not
    be asked (check's focus distances, bracket detection). A camera RAW always has them; an
    unreadable file is exiftool's to judge."""
    from .frames import RAW_EXTENSIONS  # here: frames reads headers through this module

    try:  # a named pipe or device would block whoever opens it; the frame reader refuses it
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
    except OSError:
        return True
    if os.path.splitext(path)[1].lower() in RAW_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as fh:
            kind = sniff(fh.read(16))
            if kind == "jpeg":
                info = open_header(fh, kind).info
                return bool(info.get("exif") or info.get("xmp"))
            if kind == "png":
                return bool(_png_chunks(fh) & _PNG_METADATA_CHUNKS)
            if kind == "tiff":
                fh.seek(0)
                with tifffile.TiffFile(fh) as tif:
                    return any(tag in tif.pages.first.tags for tag in _TIFF_METADATA_TAGS)
    except Exception:  # damaged or unreadable: let exiftool say what it finds
        return True
    return True


def _png_chunks(fh) -> set[str]:
    """The chunk types of a PNG (lengths followed from chunk to chunk; data not read);
    _PngDamage when they do not lead to IEND."""
    return {kind for _, _, kind in _file_layout(fh)}
