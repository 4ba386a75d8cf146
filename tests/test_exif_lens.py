"""exif.lens / exif.undo / `lens set|show|undo` on copies of the real camera files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import TEST_DATA, copy_camera_files

from exif.lens import LensSpec, format_lens_info, preset, set_lens, show_lens, undo_lens
from exif.tool import ExifError
from exif.undo import UndoStore, apply_delta, make_delta

REPO = Path(__file__).resolve().parents[1]
FILES = [
    'Canon.jpg',
    'CanonRaw.cr2',
    'CanonRaw.cr3',
    'Nikon.jpg',
    'Sony.jpg',
    'Olympus.jpg',
    'Pentax.jpg',
    'FujiFilm.raf',
    'Panasonic.rw2',
    'DNG.dng',
]
pytestmark = pytest.mark.skipif(shutil.which('exiftool') is None, reason='needs exiftool')


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tags(path: Path, *names: str) -> dict:
    done = subprocess.run(
        ['exiftool', '-j', '-G1', '-n', *[f'-{n}' for n in names], str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]


def run_cli(*args: str, store: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FOCUSBRIDGE_UNDO_DIR=str(store))
    return subprocess.run(
        [sys.executable, '-m', 'exif', *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def store_files(store: Path) -> list[Path]:
    return [p for p in store.rglob('*') if p.is_file()] if store.exists() else []


@pytest.fixture()
def photos(test_data, tmp_path) -> Path:
    d = copy_camera_files(test_data, tmp_path / 'Fotos mit Leerzeichen ü', FILES)
    shutil.copy(d / 'CanonRaw.cr3', d / 'Makro Käfer 001.CR3')
    return d


@pytest.fixture()
def store(tmp_path) -> UndoStore:
    return UndoStore(tmp_path / 'undo-store')


# ------------------------------------------------------------------------------------------------


def test_set_show_undo_restores_bytes(photos, store):
    files = sorted(photos.iterdir())
    before = {p: sha(p) for p in files}
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    spec = preset('canon-mp-e-65').merged(LensSpec(aperture=8, serial='SN 42'))
    report = set_lens(files, spec, store=store)
    assert report.ok, [(r.path, r.error) for r in report.failed]

    by = {r.path.name: r for r in report.results}
    for p in files:
        t = tags(p)
        assert t['ExifIFD:LensMake'] == 'Canon', p
        assert t['ExifIFD:LensModel'] == 'Canon MP-E 65mm f/2.8 1-5x Macro Photo'
        assert t['XMP-exifEX:LensModel'] == t['XMP-aux:Lens'] == t['ExifIFD:LensModel']
        assert (
            t['ExifIFD:LensInfo'] == '65 65 2.8 2.8' and t['XMP-exifEX:LensInfo'] == '65 65 2.8 2.8'
        )
        assert t['ExifIFD:LensSerialNumber'] == 'SN 42' == t['XMP-aux:LensSerialNumber']
        assert t['ExifIFD:FocalLength'] == 65 and t['ExifIFD:FNumber'] == 8
        assert sha(p) != before[p]
    # Canon maker-note fields: rewritten where present, reported where not
    for name in ('Canon.jpg', 'CanonRaw.cr2'):
        t = tags(photos / name)
        assert t['Canon:LensType'] == 124 and t['Canon:MinFocalLength'] == 65
        assert t['Canon:MaxFocalLength'] == 65 and t['Canon:FocalLength'] == 65
        assert by[name].not_writable == ['Canon:LensModel']
        assert 'Canon:LensModel' not in t
    t = tags(photos / 'CanonRaw.cr3')
    assert t['Canon:LensType'] == 124
    assert t['Canon:LensModel'] == 'Canon MP-E 65mm f/2.8 1-5x Macro Photo'
    assert by['CanonRaw.cr3'].not_writable == []
    assert by['Nikon.jpg'].not_writable == []  # Canon's fields do not apply to a Nikon file
    assert 'Canon:LensType' not in tags(photos / 'Nikon.jpg')
    # no FILE_original or temp litter next to the photos
    assert sorted(p.name for p in photos.iterdir()) == sorted(p.name for p in files)

    rows = show_lens(files)
    row = next(r for r in rows if r['file'].endswith('CanonRaw.cr3'))
    assert row['lens model'] == 'Canon MP-E 65mm f/2.8 1-5x Macro Photo'
    assert row['Canon LensType'].startswith('124 (Canon MP-E 65mm')
    assert row['focus (m)'] == '0.22-0.24'

    results = undo_lens(files, store=store)
    assert all(r.ok and r.undone == 1 for r in results), [(r.path, r.error) for r in results]
    for p in files:
        assert sha(p) == before[p], p
        assert p.stat().st_mtime_ns == mtimes[p]
    assert sorted(p.name for p in photos.iterdir()) == sorted(p.name for p in files)
    assert store_files(store.root) == []  # nothing left in the undo store either


def test_pixels_untouched(tmp_path, photos, store):
    """JPEG scan data and TIFF strips decode to the same pixels after a lens rewrite."""
    jpg = tmp_path / 'frame.jpg'
    px = (np.indices((32, 48)).sum(0) % 255).astype(np.uint8)
    jpg.write_bytes(cv2.imencode('.jpg', np.dstack([px] * 3))[1].tobytes())
    subprocess.run(
        [
            'exiftool',
            '-q',
            '-overwrite_original',
            '-TagsFromFile',
            str(photos / 'Canon.jpg'),
            '-all:all',
            str(jpg),
        ],
        check=True,
    )
    tif = tmp_path / 'frame.tif'
    px16 = (np.random.default_rng(3).random((20, 30, 3)) * 65535).astype(np.uint16)
    tifffile.imwrite(tif, px16, photometric='rgb')
    dec_before = cv2.imdecode(np.frombuffer(jpg.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert set_lens([jpg, tif], preset('laowa-100-2x'), store=store).ok
    assert np.array_equal(
        cv2.imdecode(np.frombuffer(jpg.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED), dec_before
    )
    assert np.array_equal(tifffile.imread(tif), px16)
    assert tags(tif, 'LensModel')['ExifIFD:LensModel'] == 'Laowa 100mm f/2.8 2X Ultra Macro APO'


def test_dry_run_changes_nothing(photos, store):
    files = [photos / 'CanonRaw.cr2', photos / 'Sony.jpg']
    before = [sha(p) for p in files]
    done = run_cli(
        'lens', 'set', '--dry-run', '--preset', 'canon-mp-e-65', *map(str, files), store=store.root
    )
    assert done.returncode == 0, done.stderr
    assert [sha(p) for p in files] == before
    assert store_files(store.root) == []
    out = done.stdout
    assert f'{files[0]}: would change' in out
    assert 'Canon:LensType: 65535 -> 124' in out
    assert 'ExifIFD:LensModel: - -> Canon MP-E 65mm f/2.8 1-5x Macro Photo' in out
    assert 'not writable' in out and 'Canon:LensModel' in out
    sony_part = out.split(f'{files[1]}:')[1]
    assert 'Canon:LensType: ' not in sony_part and 'not writable' not in sony_part


def test_bad_files_reported_others_done(photos, test_data, store, tmp_path):
    good = [photos / 'Canon.jpg', photos / 'Makro Käfer 001.CR3']
    text = photos / 'notes.jpg'
    text.write_text('not a jpeg')
    broken = photos / 'broken.CR3'
    shutil.copy(test_data / 'raw' / 'broken' / 'filetype_fixture.cr3', broken)
    os.chmod(broken, 0o644)
    missing = photos / 'missing.jpg'
    bad = [text, broken]
    before = {p: sha(p) for p in bad}
    names_before = sorted(p.name for p in photos.iterdir())
    done = run_cli(
        'lens',
        'set',
        '--model',
        'Mitutoyo M Plan Apo 10x/0.28',
        '--focal-length',
        '20',
        *map(str, [good[0], text, broken, missing, good[1]]),
        store=store.root,
    )
    assert done.returncode == 1
    err = done.stderr.splitlines()
    for p in bad + [missing]:
        assert any(line.startswith(f'focusbridge: error: {p}: ') for line in err), (p, err)
    assert '2 file(s) done, 3 failed' in done.stderr
    for p in good:
        assert tags(p, 'LensModel')['ExifIFD:LensModel'] == 'Mitutoyo M Plan Apo 10x/0.28'
    for p in bad:
        assert sha(p) == before[p]  # nothing half-written
    assert sorted(p.name for p in photos.iterdir()) == names_before
    # only the written files can be undone; the others have nothing to undo, which is no error
    done = run_cli('lens', 'undo', str(good[0]), str(text), store=store.root)
    assert done.returncode == 0 and done.stderr == ''
    assert f'{good[0]}: restored' in done.stdout
    assert f'{text}: nothing to undo' in done.stdout


def test_minor_errors_need_flag(photos, store):
    """Nikon.nef (image data stripped) has a minor error exiftool refuses to write past."""
    nef = photos / 'nikon.nef'
    shutil.copy(TEST_DATA / 'camera-metadata' / 'Nikon.nef', nef)
    os.chmod(nef, 0o644)
    before = sha(nef)
    r = set_lens([nef], preset('laowa-25-2.5-5x'), store=store)
    assert not r.ok and '[minor]' in r.results[0].error and sha(nef) == before
    r = set_lens([nef], preset('laowa-25-2.5-5x'), store=store, ignore_minor=True)
    assert r.ok and tags(nef, 'LensModel')['ExifIFD:LensModel'].startswith('Laowa 25mm')
    assert undo_lens([nef], store=store)[0].ok and sha(nef) == before


def test_undo_refuses_file_changed_since(photos, store):
    p = photos / 'Canon.jpg'
    assert set_lens([p], LensSpec(model='Test Lens'), store=store).ok
    subprocess.run(
        ['exiftool', '-q', '-overwrite_original', '-Artist=someone else', str(p)], check=True
    )
    changed = sha(p)
    res = undo_lens([p], store=store)[0]
    assert not res.ok and 'changed since the lens rewrite' in res.error
    assert sha(p) == changed


def test_undo_levels_and_renamed_file(photos, store):
    p = photos / 'CanonRaw.cr2'
    original = sha(p)
    assert set_lens([p], preset('laowa-60-2x'), store=store).ok
    first = sha(p)
    assert set_lens([p], preset('laowa-90-2x'), store=store).ok
    assert undo_lens([p], store=store)[0].undone == 1 and sha(p) == first
    assert set_lens([p], preset('laowa-90-2x'), store=store).ok
    moved = photos / 'renamed.cr2'
    p.rename(moved)  # found by content hash
    res = undo_lens([moved], all_levels=True, store=store)[0]
    assert res.ok and res.undone == 2 and sha(moved) == original
    assert store_files(store.root) == []


def test_cli_show_and_presets(photos, store):
    done = run_cli(
        'lens', 'show', str(photos / 'CanonRaw.cr3'), str(photos / 'Nikon.jpg'), store=store.root
    )
    assert done.returncode == 0, done.stderr
    head, rule, *rows = done.stdout.splitlines()
    assert head.split()[:3] == ['file', 'lens', 'make'] and set(rule) <= {'-', ' '}
    assert 'EF-M15-45mm f/3.5-6.3 IS STM' in rows[0] and '4153 (Canon EF-M 15-45mm' in rows[0]
    assert 'Canon:FocusDistanceLower/Upper' in rows[0]
    done = run_cli('lens', 'set', '--list-presets', store=store.root)
    assert 'canon-mp-e-65' in done.stdout and 'mitutoyo-10x' in done.stdout
    done = run_cli(
        'lens', 'set', '--preset', 'no-such-lens', str(photos / 'Sony.jpg'), store=store.root
    )
    assert done.returncode == 1 and "unknown lens preset 'no-such-lens'" in done.stderr


def test_cli_set_and_undo_exit_codes(photos, store):
    p = photos / 'Makro Käfer 001.CR3'
    before = sha(p)
    done = run_cli(
        'lens',
        'set',
        '--make',
        'Venus Optics',
        '--model',
        'Laowa 100mm',
        '--lens-info',
        '100 2.8',
        str(p),
        store=store.root,
    )
    assert done.returncode == 0, done.stderr
    assert tags(p, 'LensInfo')['ExifIFD:LensInfo'] == '100 100 2.8 2.8'
    done = run_cli('lens', 'undo', str(p), store=store.root)
    assert done.returncode == 0 and sha(p) == before
    done = run_cli('lens', 'set', str(p), store=store.root)
    assert done.returncode == 1 and 'nothing to write' in done.stderr


def test_lens_info_parsing():
    assert format_lens_info('100 2.8') == '100 100 2.8 2.8'
    assert format_lens_info('18-55 3.5-5.6') == '18 55 3.5 5.6'
    assert format_lens_info('18 55') == '18 55 undef undef'
    assert format_lens_info([65, 65, 2.8, 2.8]) == '65 65 2.8 2.8'
    with pytest.raises(ExifError):
        format_lens_info('wide')


def test_delta_is_exact():
    rng = np.random.default_rng(0)
    orig = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    for new in (
        orig[:1000] + b'new metadata block' + orig[1500:],  # shrink in the middle
        b'X' + orig,  # shift everything
        orig + b'trailer',
        b'',
        orig,
    ):
        d = make_delta(orig, new)
        assert apply_delta(d, new) == orig
    d = make_delta(orig, orig[:1000] + b'meta' + orig[1010:])
    assert len(d) < 200  # only the changed middle is stored
