"""Damaged undo records and blobs: one line naming the file, never another file's undo lost.

A record that cannot be appended to fails its file *before* the file is rewritten (the record is
left where it is, for the user to look at or move away); the other files are done as usual.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import copy_camera_files
from test_exif_lens import run_cli

from exif.undo import UndoStore

pytestmark = pytest.mark.skipif(shutil.which('exiftool') is None, reason='needs exiftool')

BAD_RECORDS = {
    'entries is an object': lambda path: json.dumps({'path': path, 'entries': {}}),
    'truncated JSON': lambda path: json.dumps({'path': path, 'entries': []})[:20],
    'entry without a blob': lambda path: json.dumps({'path': path, 'entries': [{'mode': 420}]}),
    'blob outside the store': lambda path: json.dumps(
        {
            'path': path,
            'entries': [
                {
                    'original_sha256': '0' * 64,
                    'written_sha256': '0' * 64,
                    'blob': '../../etc/passwd',
                    'mode': 420,
                    'atime_ns': 0,
                    'mtime_ns': 0,
                }
            ],
        }
    ),
    'not an object': lambda path: '[1, 2]',
}


@pytest.fixture()
def photos(test_data, tmp_path):
    """Two good files and one per kind of damage, copies of a camera JPEG."""
    folder = copy_camera_files(test_data, tmp_path / 'Fotos', ['Canon.jpg'])
    names = ['good 1', 'good 2', *BAD_RECORDS, 'blob truncated', 'blob overwritten', 'blob missing']
    for name in names:
        shutil.copy(folder / 'Canon.jpg', folder / f'{name}.jpg')
    (folder / 'Canon.jpg').unlink()
    return {name: folder / f'{name}.jpg' for name in names}


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_damaged_records_and_blobs_one_line_each(photos, tmp_path):
    store = UndoStore(tmp_path / 'undo')
    files = list(photos.values())
    before = {p: p.read_bytes() for p in files}
    records = {}
    for damage, make in BAD_RECORDS.items():
        p = photos[damage]
        records[p] = store.root / 'records' / f'{store.key(p)}.json'
        records[p].parent.mkdir(parents=True, exist_ok=True)
        records[p].write_text(make(str(p)))

    # a record that cannot take an entry fails its file before the file is written
    done = run_cli('lens', 'set', '--model', 'Test Lens', *map(str, files), store=store.root)
    assert done.returncode == 1
    assert 'Traceback' not in done.stderr and 'internal error' not in done.stderr
    errors = [ln for ln in lines(done.stderr) if ln.startswith('focusbridge: error:')]
    assert len(errors) == len(records), done.stderr
    for p, record in records.items():
        line = next(ln for ln in errors if ln.startswith(f'focusbridge: error: {p}: '))
        assert line.startswith(f'focusbridge: error: {p}: undo record damaged ({record}')
        assert line.endswith('not written')
        assert p.read_bytes() == before[p]  # never rewritten
    for p in set(files) - set(records):
        assert p.read_bytes() != before[p]  # the others are done
    written = {p: p.read_bytes() for p in files}

    # damaged blobs: the file stays as it is
    blobs = {d: photos[f'blob {d}'] for d in ('truncated', 'overwritten', 'missing')}
    for damage, p in blobs.items():
        blob = store.root / 'blobs' / store.load(p)['entries'][-1]['blob']
        if damage == 'truncated':
            blob.write_bytes(blob.read_bytes()[:-5])
        elif damage == 'overwritten':
            blob.write_bytes(blob.read_bytes()[:40] + b'\0' * 40)
        else:
            blob.unlink()

    done = run_cli('lens', 'undo', *map(str, files), store=store.root)
    assert done.returncode == 1
    assert 'Traceback' not in done.stderr and 'internal error' not in done.stderr
    expected = [ln.rsplit(';', 1)[0] for ln in errors] + [
        f'focusbridge: error: {p}: undo data missing or damaged' for p in blobs.values()
    ]
    got = lines(done.stderr)
    assert len(got) == len(expected), done.stderr
    assert all(any(g.startswith(e) for g in got) for e in expected), (expected, got)
    for p in files:  # restored, or left as it was
        assert p.read_bytes() == (written[p] if p in blobs.values() else before[p]), p
    assert all(record.exists() for record in records.values())  # left for the user to inspect
