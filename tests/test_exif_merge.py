"""exif.merge / `meta merge` / `meta show` on the real camera files in tests/data."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import copy_camera_files
from PIL import Image, PngImagePlugin

from exif.merge import StackInfo, merge_metadata, sources_have_metadata
from exif.tool import CONFIG_FILE, ExifError, ExiftoolMissing, open_exiftool, require_exiftool

REPO = Path(__file__).resolve().parents[1]
CAMERA_FILES = [
    'Canon.jpg',
    'CanonRaw.cr2',
    'CanonRaw.cr3',
    'DNG.dng',
    'ExifTool.tif',
    'FujiFilm.raf',
    'Nikon.jpg',
    'Nikon.nef',
    'Olympus.jpg',
    'Panasonic.rw2',
    'Pentax.jpg',
    'Sony.jpg',
]
MAKERNOTES = {
    'Canon.jpg': 'Canon',
    'CanonRaw.cr2': 'Canon',
    'CanonRaw.cr3': 'Canon',
    'DNG.dng': 'Canon',
    'FujiFilm.raf': 'FujiFilm',
    'Nikon.jpg': 'Nikon',
    'Nikon.nef': 'Nikon',
    'Olympus.jpg': 'Olympus',
    'Panasonic.rw2': 'Panasonic',
    'Pentax.jpg': 'Pentax',
}
SW = 'focusbridge 0.1.0'

pytestmark = pytest.mark.skipif(shutil.which('exiftool') is None, reason='needs exiftool')


# ------------------------------------------------------------------------------------------------
# helpers


def exiftool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ['exiftool', '-config', str(CONFIG_FILE), *args], capture_output=True, text=True, timeout=60
    )


def tags(path: Path, *names: str) -> dict:
    """All tags (or ``names``) of one file, numeric, family-1 groups, duplicates kept as the
    first value."""
    done = exiftool('-j', '-G1', '-n', '-struct', *[f'-{n}' for n in names], str(path))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]


def validate(path: Path) -> tuple[str, list[str]]:
    done = exiftool('-validate', '-warning', '-error', '-a', '-s', '-G1', str(path))
    lines = done.stdout.splitlines()
    status = next((ln.split(':', 1)[1].strip() for ln in lines if 'Validate' in ln), '')
    errors = [ln for ln in lines if ln.startswith('[ExifTool]') and ' Error ' in ln]
    return status, errors


def set_focus(path: Path, lower: float, upper: float) -> None:
    done = exiftool(
        '-n',
        '-overwrite_original',
        f'-Canon:FocusDistanceLower={lower}',
        f'-Canon:FocusDistanceUpper={upper}',
        str(path),
    )
    assert done.returncode == 0 and '1 image files updated' in done.stdout, done.stderr


_RNG = np.random.default_rng(1)


def fresh_image(path: Path, rng=_RNG) -> np.ndarray:
    """A new 16-bit TIFF / 16-bit PNG / 8-bit JPEG without metadata; returns the pixels."""
    ext = path.suffix.lower()
    if ext in ('.tif', '.tiff'):
        px = (rng.random((24, 36, 3)) * 65535).astype(np.uint16)
        tifffile.imwrite(path, px, photometric='rgb')
    elif ext == '.png':
        px = (rng.random((24, 36, 3)) * 65535).astype(np.uint16)
        path.write_bytes(cv2.imencode('.png', px)[1].tobytes())
    else:
        px = np.zeros((24, 36, 3), np.uint8)
        px[:, :18] = 200
        path.write_bytes(cv2.imencode('.jpg', px)[1].tobytes())
    return px


def decode(path: Path) -> np.ndarray:
    if path.suffix.lower() in ('.tif', '.tiff'):
        return tifffile.imread(path)
    return cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.fixture()
def cam(test_data, tmp_path) -> Path:
    """The camera files copied into a writable folder whose name has a space and an umlaut."""
    return copy_camera_files(test_data, tmp_path / 'Kamera Dateien ü', CAMERA_FILES)


@pytest.fixture()
def cr3_bracket(cam) -> list[Path]:
    """Three CR3 frames whose Canon focus distances say 0.20-0.21, 0.25-0.26, 0.30-0.31 m."""
    frames = []
    for i, (lo, hi) in enumerate([(0.20, 0.21), (0.25, 0.26), (0.30, 0.31)]):
        p = cam / f'IMG {i + 1} é.CR3'
        shutil.copy(cam / 'CanonRaw.cr3', p)
        set_focus(p, lo, hi)
        frames.append(p)
    return frames


# ------------------------------------------------------------------------------------------------
# merge onto fresh TIFF / JPEG / PNG


@pytest.mark.parametrize('ext', ['.tif', '.jpg', '.png'])
def test_merge_cr3_bracket(cr3_bracket, tmp_path, ext):
    out = tmp_path / f'stacked out{ext}'
    px = fresh_image(out)
    report = merge_metadata(out, cr3_bracket, None, StackInfo(3, 'pyramid', 1, SW))

    assert report.base == cr3_bracket[1]
    assert report.makernotes == 'Canon' and report.makernotes_second_pass  # CR3: pass 2 needed
    assert (report.focus_near, report.focus_far) == (0.2, 0.31)
    assert report.canon_focus_written
    assert report.validation_errors == []

    t = tags(out)
    # base frame's tags, maker notes included
    assert t['IFD0:Make'] == 'Canon' and t['IFD0:Model'] == 'Canon EOS M50'
    assert t['ExifIFD:DateTimeOriginal'] == '2018:02:21 12:08:56'
    assert t['ExifIFD:ExposureTime'] == 0.0125 and t['ExifIFD:FNumber'] == 3.5
    assert t['ExifIFD:ISO'] == 12800 and t['ExifIFD:FocalLength'] == 15
    assert t['Canon:LensType'] == 4153
    assert t['Canon:LensModel'] == 'EF-M15-45mm f/3.5-6.3 IS STM'
    # lens tags, EXIF and XMP
    assert t['ExifIFD:LensModel'] == 'EF-M15-45mm f/3.5-6.3 IS STM'
    assert t['XMP-exifEX:LensModel'] == t['XMP-aux:Lens'] == 'EF-M15-45mm f/3.5-6.3 IS STM'
    assert str(t['ExifIFD:LensInfo']).startswith('15 45')
    # focus range: Canon pair and our XMP namespace
    assert t['Canon:FocusDistanceLower'] == 0.2 and t['Canon:FocusDistanceUpper'] == 0.31
    assert t['XMP-fbstack:FocusDistanceNear'] == 0.2 and t['XMP-fbstack:FocusDistanceFar'] == 0.31
    assert t['XMP-fbstack:FocusDistanceSource'] == 'Canon:FocusDistanceLower/Upper'
    assert t['XMP-fbstack:FrameFocusDistances'] == [0.205, 0.255, 0.305]
    # provenance
    names = [p.name for p in cr3_bracket]
    assert t['XMP-fbstack:FrameCount'] == 3 and t['XMP-fbstack:StackMethod'] == 'pyramid'
    assert t['XMP-fbstack:SourceFiles'] == names
    assert t['XMP-fbstack:ReferenceFrame'] == names[1] == t['XMP-fbstack:MetadataBase']
    assert t['XMP-fbstack:Software'] == SW == t['IFD0:Software'] == t['XMP-xmp:CreatorTool']
    assert [i['FilePath'] for i in t['XMP-xmpMM:Ingredients']] == names
    assert t['XMP-xmpMM:DerivedFrom']['FilePath'] == names[1]
    assert all(n in t['XMP-dc:Source'] for n in names)
    # structure tags describe the new file
    assert t['IFD0:Orientation'] == 1
    assert t['ExifIFD:DateTimeOriginal'] != t['IFD0:ModifyDate']
    assert not any(k.startswith('IFD1:') for k in t)
    assert not [
        k
        for k in t
        if k.split(':')[-1] in ('ThumbnailImage', 'ThumbnailOffset', 'PreviewImage', 'JpgFromRaw')
    ]
    if ext == '.tif':
        assert 'ExifIFD:ExifImageWidth' not in t and 'ExifIFD:ComponentsConfiguration' not in t
        assert 'IFD0:ImageDescription' not in t  # tifffile's {"shape": ...} note is gone
    else:
        assert (t['ExifIFD:ExifImageWidth'], t['ExifIFD:ExifImageHeight']) == (36, 24)
    status, errors = validate(out)
    assert errors == [] and status, status
    # the pixels are untouched, no temporary files are left
    assert np.array_equal(decode(out), px)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [out.name]


def test_png_output_uses_exif_and_xmp_chunks(cr3_bracket, tmp_path):
    out = tmp_path / 'out.png'
    fresh_image(out)
    merge_metadata(out, cr3_bracket, cr3_bracket[0], StackInfo(3, 'depthmap', 0, SW))
    data = out.read_bytes()
    chunks, pos = [], 8
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], 'big')
        chunks.append(data[pos + 4 : pos + 8])
        pos += 12 + n
    assert b'eXIf' in chunks and b'iTXt' in chunks
    assert chunks.index(b'eXIf') < chunks.index(b'IDAT')


@pytest.mark.parametrize('name', CAMERA_FILES)
def test_merge_each_camera(cam, tmp_path, name):
    out = tmp_path / 'out.tif'
    fresh_image(out)
    src = cam / name
    report = merge_metadata(out, [src], None, StackInfo(1, 'pyramid', 0, SW))
    base = tags(src, 'Make', 'Model', 'DateTimeOriginal')
    t = tags(out)
    assert t['IFD0:Make'] == base['IFD0:Make'] and t['IFD0:Model'] == base['IFD0:Model']
    if 'ExifIFD:DateTimeOriginal' in base:
        assert t['ExifIFD:DateTimeOriginal'] == base['ExifIFD:DateTimeOriginal']
    assert report.makernotes == MAKERNOTES.get(name)
    if name in MAKERNOTES:
        assert any(k.startswith(MAKERNOTES[name] + ':') for k in t), 'maker notes missing'
    assert t['IFD0:Orientation'] == 1 and t['XMP-fbstack:FrameCount'] == 1
    status, errors = validate(out)
    assert errors == [], (status, errors)
    assert report.validation_errors == []


def test_orientation_reset_and_thumbnail_dropped(cam, tmp_path):
    assert tags(cam / 'Pentax.jpg', 'Orientation')['IFD0:Orientation'] == 8
    out = tmp_path / 'out.jpg'
    fresh_image(out)
    merge_metadata(out, [cam / 'Pentax.jpg'], None, StackInfo(1, 'pyramid', 0, SW))
    t = tags(out)
    assert t['IFD0:Orientation'] == 1
    assert not any(k.startswith('IFD1:') for k in t)
    assert t['XMP-exifEX:LensModel'] == 'Sigma AF 10-20mm F4-5.6 EX DC'  # from Composite:LensID


def test_focus_range_from_other_tags(cam, tmp_path):
    """Nikon FocusDistance, EXIF SubjectDistance, XMP-aux ApproximateFocusDistance."""
    sony, oly = cam / 'Sony.jpg', cam / 'Olympus.jpg'
    assert (
        exiftool('-n', '-overwrite_original', '-ExifIFD:SubjectDistance=1.5', str(sony)).returncode
        == 0
    )
    assert (
        exiftool(
            '-n', '-overwrite_original', '-XMP-aux:ApproximateFocusDistance=0.8', str(oly)
        ).returncode
        == 0
    )
    out = tmp_path / 'out.tif'
    fresh_image(out)
    report = merge_metadata(
        out, [oly, sony, cam / 'Nikon.nef'], cam / 'Nikon.nef', StackInfo(3, 'pyramid', 2, SW)
    )
    assert report.focus_near == 0.8 and report.focus_far == pytest.approx(2.3714, abs=1e-3)
    assert report.focus_source == (
        'ExifIFD:SubjectDistance; Nikon:FocusDistance; XMP-aux:ApproximateFocusDistance'
    )
    assert not report.canon_focus_written  # no Canon maker notes on this output
    t = tags(out)
    assert t['XMP-fbstack:FocusDistanceNear'] == 0.8
    assert t['XMP-fbstack:FocusDistanceFar'] == pytest.approx(2.3714, abs=1e-3)
    assert 'Canon:FocusDistanceLower' not in t and 'Nikon:FocusDistance' in t
    assert t['ExifIFD:LensModel'] == 'AF-S DX Zoom-Nikkor 18-70mm f/3.5-4.5G IF-ED'
    assert t['ExifIFD:LensInfo'] == '18 70 3.5 4.5'


def test_canon_infinity(cam, tmp_path):
    """Canon.jpg says FocusDistanceUpper 655.35 (= infinity)."""
    out = tmp_path / 'out.jpg'
    fresh_image(out)
    report = merge_metadata(out, [cam / 'Canon.jpg'], None, StackInfo(1, 'pyramid', 0, SW))
    assert report.focus_near == 5.46 and report.focus_far == float('inf')
    t = tags(out, 'XMP-fbstack:all', 'Canon:FocusDistanceUpper')
    assert t['XMP-fbstack:FocusDistanceFar'] == 4294967295  # the XMP-aux convention
    assert t['Canon:FocusDistanceUpper'] == 655.35
    printed = exiftool('-s', '-XMP-fbstack:FocusDistanceFar', str(out)).stdout
    assert 'inf' in printed


def test_merge_again_replaces_provenance(cr3_bracket, tmp_path):
    out = tmp_path / 'out.tif'
    fresh_image(out)
    merge_metadata(out, cr3_bracket, None, StackInfo(3, 'pyramid', 1, SW))
    merge_metadata(out, cr3_bracket[:2], None, StackInfo(2, 'depthmap', 0, SW))
    t = tags(out)
    assert t['XMP-fbstack:SourceFiles'] == [p.name for p in cr3_bracket[:2]]
    assert t['XMP-fbstack:FrameCount'] == 2 and t['XMP-fbstack:StackMethod'] == 'depthmap'


@pytest.mark.parametrize('ext', ['.tif', '.jpg', '.png'])
def test_merge_again_with_other_sources_replaces_everything(cr3_bracket, cam, tmp_path, ext):
    """The merged tags of a Canon bracket, merged again from a Nikon file: nothing of the first
    merge is left (focus range, XMP-fbstack, lens, maker notes, IFD0 tags the Nikon lacks)."""
    done = exiftool('-q', '-overwrite_original', '-Artist=Canon Shooter', str(cr3_bracket[1]))
    assert done.returncode == 0, done.stderr
    out = tmp_path / f'out{ext}'
    fresh_image(out)
    merge_metadata(out, cr3_bracket, None, StackInfo(3, 'pyramid', 1, SW))
    assert tags(out, 'IFD0:Artist')['IFD0:Artist'] == 'Canon Shooter'
    report = merge_metadata(out, [cam / 'Nikon.jpg'], None, StackInfo(1, 'depthmap', 0, SW))
    assert report.focus_near is None and report.warnings == []
    t = tags(out)
    stale = [k for k, v in t.items() if any(s in str(v) for s in ('Canon', 'EF-M', 'IMG '))]
    assert stale == [] and 'IFD0:Artist' not in t, stale
    assert not [k for k in t if k.startswith(('XMP-fbstack:FocusDistance', 'Canon:'))]
    assert t['IFD0:Make'] == 'NIKON' and t['XMP-fbstack:SourceFiles'] in (
        'Nikon.jpg',
        ['Nikon.jpg'],
    )
    assert t['XMP-fbstack:StackMethod'] == 'depthmap' and t['XMP-fbstack:FrameCount'] == 1
    assert validate(out)[1] == []


def test_lens_info_of_the_base_is_not_doubled(cam, tmp_path):
    """A base that already has XMP-exifEX:LensInfo (a list in XMP): the output has 4 values,
    in a merge and in a copy (aligned frames)."""
    from exif.lens import lens_spec, set_lens
    from exif.merge import copy_metadata
    from exif.undo import UndoStore

    base = cam / 'CanonRaw.cr2'
    spec = lens_spec(lens_info='65 65 2.8 2.8')
    assert set_lens([base], spec, store=UndoStore(tmp_path / 'undo')).ok
    assert tags(base, 'XMP-exifEX:LensInfo')['XMP-exifEX:LensInfo'] == '65 65 2.8 2.8'
    for ext in ('.tif', '.jpg'):
        out = tmp_path / f'out{ext}'
        fresh_image(out)
        merge_metadata(out, [base], None, StackInfo(1, 'pyramid', 0, SW))
        copied = tmp_path / f'copied{ext}'
        fresh_image(copied)
        copy_metadata(copied, base, derivation='aligned')
        for p in (out, copied):
            t = tags(p, 'XMP-exifEX:LensInfo', 'ExifIFD:LensInfo')
            assert t['XMP-exifEX:LensInfo'] == '65 65 2.8 2.8' == t['ExifIFD:LensInfo'], p


def test_cli_meta_merge_bad_sources(cam, tmp_path):
    """A source exiftool reads as text, or whose base is truncated: one line naming it, exit
    status 1, the target untouched."""
    out = tmp_path / 'out.jpg'
    fresh_image(out)
    before = out.read_bytes()
    text = tmp_path / 'text.jpg'
    text.write_text('not a photo')
    truncated = tmp_path / 'truncated.cr2'
    truncated.write_bytes((cam / 'CanonRaw.cr2').read_bytes()[:5000])
    for sources in ([text], [truncated], [text, cam / 'Canon.jpg', cam / 'Sony.jpg']):
        done = run_cli('meta', 'merge', str(out), '--sources', *map(str, sources))
        assert done.returncode == 1, done.stdout
        bad = text if text in sources else truncated
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f'focusbridge: error: {bad}: '), lines
        assert out.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
            ['out.jpg', 'text.jpg', 'truncated.cr2']
        )
    done = run_cli('meta', 'merge', str(out), '--sources', str(cam / 'Canon.jpg'))
    assert done.returncode == 0 and 'Canon.jpg, 1 frame, ' in done.stdout, done.stdout


def test_source_names_override(cr3_bracket, tmp_path):
    out = tmp_path / 'out.tif'
    fresh_image(out)
    names = ['IMG_0001.CR3', 'IMG_0002.CR3', 'IMG_0003.CR3']
    merge_metadata(out, cr3_bracket, None, StackInfo(3, 'pyramid', 1, SW, source_names=names))
    t = tags(out, 'XMP-fbstack:SourceFiles', 'XMP-fbstack:ReferenceFrame')
    assert t['XMP-fbstack:SourceFiles'] == names and t['XMP-fbstack:ReferenceFrame'] == names[1]


# ------------------------------------------------------------------------------------------------
# failures: one line naming the file, target untouched, nothing left behind


def test_target_exiftool_cannot_write(cam, tmp_path):
    bad = tmp_path / 'notes.txt'
    bad.write_text('not an image')
    with pytest.raises(ExifError) as err:
        merge_metadata(bad, [cam / 'Canon.jpg'], None, StackInfo(1, 'pyramid', 0, SW))
    assert str(bad) in str(err.value) and '\n' not in str(err.value)
    assert bad.read_text() == 'not an image'
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['notes.txt', cam.name])


def test_broken_base_leaves_target_alone(cam, test_data, tmp_path):
    out = tmp_path / 'out.tif'
    fresh_image(out)
    before = out.read_bytes()
    broken = tmp_path / 'broken.txt.CR3'
    broken.write_bytes(b'\x00\x01garbage' * 10)
    with pytest.raises(ExifError) as err:
        merge_metadata(out, [broken], None, StackInfo(1, 'pyramid', 0, SW))
    assert str(broken) in str(err.value)
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if 'fbmeta' in p.name]


def test_missing_files(cam, tmp_path):
    out = tmp_path / 'out.tif'
    with pytest.raises(ExifError, match='no such file'):
        merge_metadata(out, [cam / 'Canon.jpg'], None, StackInfo(1, 'pyramid', 0, SW))
    fresh_image(out)
    with pytest.raises(ExifError, match='nope.CR3'):
        merge_metadata(out, [cam / 'nope.CR3'], None, StackInfo(1, 'pyramid', 0, SW))


def test_missing_exiftool(monkeypatch, cam, tmp_path):
    monkeypatch.setenv('FOCUSBRIDGE_EXIFTOOL', str(tmp_path / 'no-exiftool-here'))
    with pytest.raises(ExiftoolMissing) as err:
        require_exiftool()
    msg = str(err.value)
    assert msg.startswith('exiftool not found') and '\n' not in msg
    assert 'apt-get install libimage-exiftool-perl' in msg and 'brew install exiftool' in msg
    assert '--no-metadata' in msg
    out = tmp_path / 'out.tif'
    fresh_image(out)
    with pytest.raises(ExiftoolMissing):
        merge_metadata(out, [cam / 'Canon.jpg'], None, StackInfo(1, 'pyramid', 0, SW))
    env = dict(os.environ, FOCUSBRIDGE_EXIFTOOL=str(tmp_path / 'no-exiftool-here'))
    done = subprocess.run(
        [sys.executable, '-m', 'exif', 'lens', 'show', str(cam / 'Canon.jpg')],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith('focusbridge: error: exiftool not found')


def test_sources_have_metadata(cam, tmp_path):
    synth = []
    for ext in ('.png', '.tif', '.jpg'):
        p = tmp_path / f'synthetic{ext}'
        fresh_image(p)
        synth.append(p)
        assert not sources_have_metadata([p]), p
    assert not sources_have_metadata(synth)
    for name in CAMERA_FILES:
        assert sources_have_metadata([cam / name]), name
    out = tmp_path / 'merged.png'
    fresh_image(out)
    merge_metadata(out, [cam / 'Sony.jpg'], None, StackInfo(1, 'pyramid', 0, SW))
    assert sources_have_metadata([out])


def tiff_with_ifd_last(path: Path) -> Path:
    """A grey TIFF whose only IFD comes after 300 kB of pixels, with Make=Canon in it."""
    w, h = 600, 500
    value = b'Canon\x00'
    ifd = 8 + w * h
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    tags += [(271, 2, len(value), ifd + 2 + 12 * 10 + 4), (273, 4, 1, 8), (277, 3, 1, 1)]
    tags += [(278, 3, 1, h), (279, 4, 1, w * h)]
    entries = b''.join(struct.pack('<HHII', *t) for t in tags)
    header = b'II*\x00' + struct.pack('<I', ifd)
    path.write_bytes(header + bytes(w * h) + struct.pack('<H', 10) + entries + bytes(4) + value)
    return path


def test_sources_have_metadata_reads_each_place(tmp_path):
    """EXIF Make in a JPEG, DateTimeOriginal alone in a PNG's ExifIFD, XMP camera tags alone,
    a TIFF IFD past the first 256 kB; an empty Make is no metadata."""
    rgb = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    make, date, empty = Image.Exif(), Image.Exif(), Image.Exif()
    make[0x010F] = 'Canon'
    date.get_ifd(0x8769)[0x9003] = '2024:01:02 03:04:05'
    empty[0x010F] = ''
    xmp = PngImagePlugin.PngInfo()
    xmp.add_itxt('XML:com.adobe.xmp', '<x:xmpmeta><rdf:Description tiff:Make="Canon"/></x:xmpmeta>')
    rgb.save(tmp_path / 'make.jpg', exif=make)
    rgb.save(tmp_path / 'date.png', exif=date.tobytes())
    rgb.save(tmp_path / 'xmp.png', pnginfo=xmp)
    rgb.save(tmp_path / 'empty.jpg', exif=empty)
    tiff_with_ifd_last(tmp_path / 'late.tif')
    assert tifffile.imread(tmp_path / 'late.tif').shape == (500, 600)
    for name in ('make.jpg', 'date.png', 'xmp.png', 'late.tif'):
        assert sources_have_metadata([tmp_path / name]), name
    assert not sources_have_metadata([tmp_path / 'empty.jpg'])


def test_one_exiftool_process_for_many_merges(cr3_bracket, tmp_path):
    with open_exiftool() as et:
        pid = et._process.pid
        for ext in ('.tif', '.jpg'):
            out = tmp_path / f'o{ext}'
            fresh_image(out)
            merge_metadata(out, cr3_bracket, None, StackInfo(3, 'pyramid', 1, SW), exiftool=et)
            assert et._process.pid == pid


# ------------------------------------------------------------------------------------------------
# CLI: meta merge / meta show


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'exif', *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_meta_merge(cr3_bracket, tmp_path):
    out = tmp_path / 'Stapel ö.tif'
    fresh_image(out)
    done = run_cli(
        'meta',
        'merge',
        str(out),
        '--sources',
        *map(str, cr3_bracket),
        '--base',
        str(cr3_bracket[2]),
        '--method',
        'pyramid',
    )
    assert done.returncode == 0, done.stderr
    assert 'focus 0.2-0.31 m' in done.stdout
    t = tags(out, 'XMP-fbstack:all')
    assert t['XMP-fbstack:MetadataBase'] == cr3_bracket[2].name


def test_cli_meta_show_flags_order(cr3_bracket):
    order = [cr3_bracket[0], cr3_bracket[2], cr3_bracket[1]]
    done = run_cli('meta', 'show', *map(str, order))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ['file', 'focus', '(m)']
    rows = lines[2:5]
    assert [r.split('  ')[0] for r in rows] == [str(p) for p in order]
    assert '0.2-0.21' in rows[0] and '0.3-0.31' in rows[1] and 'EF-M15-45mm' in rows[0]
    assert 'focus range: 0.2 - 0.31 m over 3 of 3 frames' in done.stdout
    assert 'not monotonic' in done.stdout and f'frame 3 ({order[2].name})' in done.stdout
    done = run_cli('meta', 'show', *map(str, cr3_bracket))
    assert 'not monotonic' not in done.stdout and '(near to far)' in done.stdout


def test_cli_meta_show_json(cr3_bracket):
    done = run_cli('meta', 'show', '--json', *map(str, cr3_bracket))
    data = json.loads(done.stdout)
    assert data['near'] == 0.2 and data['far'] == 0.31 and data['non_monotonic'] == []


# ------------------------------------------------------------------------------------------------
# `focusbridge stack` end to end with metadata (the engine calls exif.merge.merge_metadata)


def _stack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'pybridge', 'stack', *args, '--progress', 'none'],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture()
def generated_bracket(cam, tmp_path) -> list[Path]:
    """A generated 3-frame JPEG bracket carrying Canon.jpg's EXIF with stepped focus distances."""
    pytest.importorskip('pybridge.pipeline')
    synthetic = pytest.importorskip('synthetic')
    br = synthetic.make_bracket(3, (96, 128), seed=5, max_blur=3.0)
    frames = []
    for i, img in enumerate(br.frames):
        p = tmp_path / f'frame {i} ä.jpg'
        synthetic.save_image(p, img)
        done = exiftool(
            '-q',
            '-n',
            '-overwrite_original',
            '-TagsFromFile',
            str(cam / 'Canon.jpg'),
            '-all:all',
            '--IFD1:all',
            str(p),
        )
        assert done.returncode == 0, done.stderr
        # maker-note fields can only be edited once the maker notes are in the file
        set_focus(p, round(0.5 + 0.1 * i, 2), round(0.55 + 0.1 * i, 2))
        frames.append(p)
    return frames


@pytest.mark.slow
def test_stack_end_to_end_with_metadata(generated_bracket, cr3_bracket, tmp_path):
    frames = generated_bracket
    out = tmp_path / 'stacked.tif'
    done = _stack(*map(str, frames), '-o', str(out))
    assert done.returncode == 0, done.stderr
    t = tags(out)
    assert t['IFD0:Make'] == 'Canon' and t['IFD0:Model'] == 'Canon EOS DIGITAL REBEL'
    assert t['ExifIFD:DateTimeOriginal'] == '2003:12:04 06:46:52'
    assert t['Canon:FocusDistanceLower'] == 0.5 and t['Canon:FocusDistanceUpper'] == 0.75
    assert t['XMP-fbstack:FocusDistanceNear'] == 0.5 and t['XMP-fbstack:FocusDistanceFar'] == 0.75
    assert t['XMP-fbstack:FrameCount'] == 3 and t['XMP-fbstack:StackMethod'] == 'pyramid'
    assert t['XMP-fbstack:SourceFiles'] == [p.name for p in frames]
    assert t['IFD0:BitsPerSample'] == '16 16 16' and t['IFD0:Orientation'] == 1
    assert validate(out)[1] == []
    # --sources: pixels from the JPEGs, metadata from CR3 originals
    out2 = tmp_path / 'stacked2.tif'
    done = _stack(*map(str, frames), '-o', str(out2), '--sources', *map(str, cr3_bracket))
    assert done.returncode == 0, done.stderr
    t = tags(out2)
    assert t['IFD0:Model'] == 'Canon EOS M50' and t['Canon:LensType'] == 4153
    assert t['XMP-fbstack:FocusDistanceNear'] == 0.2 and t['XMP-fbstack:FocusDistanceFar'] == 0.31
    # --no-metadata: nothing copied
    out3 = tmp_path / 'plain.tif'
    done = _stack(*map(str, frames), '-o', str(out3), '--no-metadata')
    assert done.returncode == 0, done.stderr
    assert 'IFD0:Make' not in tags(out3)


KEPT_SCRIPT = '''
import json, os, signal, sys
from pathlib import Path
from exif.merge import StackInfo, merge_metadata
from exif.tool import ExifError, _kept, keep_exiftool
sources, out = [Path(p) for p in sys.argv[1:-1]], Path(sys.argv[-1])
info = StackInfo(3, 'pyramid', 1, 'focusbridge test')
keep_exiftool()
pids = []
for _ in range(2):
    merge_metadata(out, sources, None, info)
    pids.append(_kept.et._process.pid)
os.kill(pids[-1], signal.SIGKILL)  # dies between brackets: the next merge starts another
os.waitpid(pids[-1], 0)
merge_metadata(out, sources, None, info)
pids.append(_kept.et._process.pid)
broken = out.with_name('broken.CR3')
broken.write_bytes(b'not a raw file' * 100)
try:  # a failed merge drops its exiftool (it may be mid-command)
    merge_metadata(out, sources, broken, info)
except ExifError:
    pids.append(None if _kept.et is None else _kept.et._process.pid)
merge_metadata(out, sources, None, info)
pids.append(_kept.et._process.pid)
print(json.dumps(pids))
'''


def test_a_kept_exiftool_serves_merge_after_merge(cr3_bracket, tmp_path):
    """keep_exiftool (batch and Dask workers): one exiftool for every merge of the process,
    replaced when it died or a merge failed, and gone with the process."""
    import json

    out = tmp_path / 'o.tif'
    fresh_image(out)
    done = subprocess.run(
        [sys.executable, '-c', KEPT_SCRIPT, *map(str, cr3_bracket), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    first, again, after_kill, after_failure, last = json.loads(done.stdout)
    assert first == again  # kept between merges
    assert after_kill != again  # the dead one replaced
    assert after_failure is None  # dropped after the failed merge
    assert last not in (first, after_kill)
    for pid in (first, after_kill, last):  # none outlives the process
        assert not Path(f'/proc/{pid}').exists() or 'Z' in Path(f'/proc/{pid}/stat').read_text()
    t = tags(out, 'XMP-fbstack:all')
    assert t, 'the last merge wrote the stack tags'
