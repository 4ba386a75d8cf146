"""`lens set` / `lens undo` through symlinks and hard links: written and restored in place.

A symlink is written through to its target and stays a symlink; hard links keep sharing one
inode; undo restores the bytes in place, so every name sees the original again. The undo record
is keyed by the resolved target: two links to one file are one file.
"""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import copy_camera_files
from test_exif_lens import run_cli, store_files

pytestmark = pytest.mark.skipif(shutil.which('exiftool') is None, reason='needs exiftool')


def test_links_written_through_and_restored_in_place(test_data, tmp_path):
    photos = copy_camera_files(
        test_data, tmp_path / 'Fotos', ['Canon.jpg', 'Sony.jpg', 'Nikon.jpg']
    )
    rel_target, abs_target, hard = photos / 'Canon.jpg', photos / 'Sony.jpg', photos / 'Nikon.jpg'
    links = tmp_path / 'Links'
    links.mkdir()
    rel = links / 'rel.jpg'
    rel.symlink_to(os.path.join('..', 'Fotos', 'Canon.jpg'))  # relative
    absolute = links / 'abs.jpg'
    absolute.symlink_to(abs_target)
    hard2 = links / 'hard.jpg'
    os.link(hard, hard2)
    before = {p: p.read_bytes() for p in (rel_target, abs_target, hard)}
    inode = hard.stat().st_ino
    store = tmp_path / 'undo'

    # a link and its own target in one command are one file: written once
    done = run_cli(
        'lens',
        'set',
        '--model',
        'Test Lens',
        str(rel),
        str(absolute),
        str(hard2),
        str(rel_target),
        store=store,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(': updated') == 3
    assert os.readlink(rel) == os.path.join('..', 'Fotos', 'Canon.jpg')
    assert os.readlink(absolute) == str(abs_target)
    assert hard.stat().st_ino == hard2.stat().st_ino == inode and hard.stat().st_nlink == 2
    for p in before:
        assert p.read_bytes() != before[p]
    assert not [p for p in store_files(store) if p.is_symlink()]
    assert sorted(p.name for p in links.iterdir()) == ['abs.jpg', 'hard.jpg', 'rel.jpg']

    # undo through any name: the target's record
    done = run_cli('lens', 'undo', str(rel_target), str(absolute), str(hard), store=store)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('restored (1 change(s) undone)') == 3
    for p in before:
        assert p.read_bytes() == before[p]
    assert rel.is_symlink() and absolute.is_symlink() and rel.read_bytes() == before[rel_target]
    assert hard2.read_bytes() == before[hard] and hard2.stat().st_ino == inode
    assert store_files(store) == []
