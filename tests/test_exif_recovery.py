"""The undo store after crashes, signals, moved folders, copies and concurrent commands: an
original is never lost, and an undo never takes on changes focusbridge did not make.

A command that dies before settling is simulated exactly: a real `lens set` subprocess whose
settling step is replaced by ``os._exit`` (no handler, no ``finally`` runs, as after SIGKILL).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_camera_files
from test_exif_lens import REPO, run_cli, store_files

from exif.lens import LensSpec, set_lens, undo_lens
from exif.undo import UndoStore

pytestmark = pytest.mark.skipif(
    shutil.which('exiftool') is None or sys.platform != 'linux', reason='needs exiftool, Linux'
)

# `focusbridge` with one step of the undo store replaced, in a process of its own
PATCHED = """
import os, signal, sys
import exif.undo as u
if sys.argv[1] == 'die-before-settling':
    u.UndoStore._settle_journal = lambda *a, **k: os._exit(9)
else:  # 'ctrl-c-in-journal': the user presses Ctrl-C while the batch journal is written
    write = u._write_durably
    def _write_durably(path, data, sync_dir=True):
        if path.name.startswith('batch-'):
            os.kill(os.getpid(), signal.SIGINT)
        return write(path, data, sync_dir)
    u._write_durably = _write_durably
from pybridge.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_patched(how: str, *args: str, store: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FOCUSBRIDGE_UNDO_DIR=str(store))
    return subprocess.run(
        [sys.executable, '-c', PATCHED, how, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copies(test_data: Path, folder: Path, name: str, n: int) -> list[Path]:
    copy_camera_files(test_data, folder, [name])
    out = []
    for i in range(n):
        p = folder / f'IMG_{i}{Path(name).suffix}'
        shutil.copy(folder / name, p)
        out.append(p)
    (folder / name).unlink()
    return out


def staged(store: Path) -> list[bytes]:
    """The contents of every file in the store's staging folder."""
    return [p.read_bytes() for p in store_files(store) if 'staging' in p.parts]


@pytest.mark.parametrize('how', ['moved', 'copied elsewhere'])
def test_crash_then_moved_folder_keeps_every_original(test_data, tmp_path, how):
    """SIGKILL during `lens set`, then the folder is moved (same inodes) or copied elsewhere and
    deleted (new inodes): a lens command on other files keeps the journalled originals and names
    them; a lens command on the files at their new place settles and undoes them."""
    files = copies(test_data, tmp_path / 'shoot1', 'CanonRaw.cr2', 3)
    files += copies(test_data, tmp_path / 'shoot1b', 'Canon.jpg', 2)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in files}
    store = tmp_path / 'undo'
    done = run_patched('die-before-settling', 'lens', 'set', '--model', 'M', *map(str, files),
                       store=store)  # fmt: skip
    assert done.returncode == 9, done.stderr
    assert all(p.read_bytes() != before[p.relative_to(tmp_path)] for p in files)
    for old in ('shoot1', 'shoot1b'):
        if how == 'moved':
            (tmp_path / old).rename(tmp_path / f'{old}-moved')
        else:
            shutil.copytree(tmp_path / old, tmp_path / f'{old}-moved')
            shutil.rmtree(tmp_path / old)

    other = copy_camera_files(test_data, tmp_path / 'other', ['Sony.jpg']) / 'Sony.jpg'
    done = run_cli('lens', 'undo', str(other), store=store)
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.splitlines()
    assert len(warnings) == len(files), done.stderr
    for p in files:
        assert any(w.startswith(f'focusbridge: warning: {p}: ') for w in warnings), warnings
    kept = staged(store)
    assert all(b in kept for b in before.values())  # nothing deleted

    moved = [tmp_path / f'{p.parent.name}-moved' / p.name for p in files]
    done = run_cli('lens', 'undo', *map(str, moved), store=store)
    assert done.returncode == 0 and done.stderr == '', done.stderr
    assert done.stdout.count('restored (1 change(s) undone)') == len(files), done.stdout
    for p, m in zip(files, moved, strict=True):
        assert m.read_bytes() == before[p.relative_to(tmp_path)], m
    assert store_files(store) == []


def test_ctrl_c_while_the_journal_is_written(test_data, tmp_path):
    """Ctrl-C arrives while the batch journal is written (signals are held there): the batch is
    settled before the exit, so a later edit by another program is never undone."""
    files = copies(test_data, tmp_path / 'shoot', 'Canon.jpg', 3)
    store = tmp_path / 'undo'
    done = run_patched('ctrl-c-in-journal', 'lens', 'set', '--model', 'M', *map(str, files),
                       store=store)  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == 'focusbridge: cancelled', done.stderr
    assert not [p for p in store_files(store) if p.name.startswith('batch-')]
    subprocess.run(
        ['exiftool', '-q', '-overwrite_original', '-Artist=X', str(files[0])], check=True
    )
    edited = files[0].read_bytes()
    done = run_cli('lens', 'undo', *map(str, files), store=store)
    assert done.returncode == 0, done.stderr
    assert files[0].read_bytes() == edited  # the other program's edit stays
    assert store_files(store) == []


def test_an_edit_after_a_crash_is_never_undone(test_data, tmp_path):
    """A run dies before settling; another program then edits one of its files. The next lens
    command records no undo entry for those bytes (they are not what focusbridge wrote): the
    edit stays, the camera's bytes stay in staging and the file is named in a warning."""
    files = copies(test_data, tmp_path / 'shoot', 'Canon.jpg', 3)
    before = {p: p.read_bytes() for p in files}
    store = tmp_path / 'undo'
    done = run_patched('die-before-settling', 'lens', 'set', '--model', 'M', *map(str, files),
                       store=store)  # fmt: skip
    assert done.returncode == 9, done.stderr
    subprocess.run(
        ['exiftool', '-q', '-overwrite_original', '-Artist=X', str(files[0])], check=True
    )
    edited = files[0].read_bytes()
    done = run_cli('lens', 'undo', *map(str, files), store=store)
    assert files[0].read_bytes() == edited
    assert [p for p in files[1:] if p.read_bytes() != before[p]] == []
    assert done.stderr.startswith(f'focusbridge: warning: {files[0]}: '), done.stderr
    assert len(done.stderr.splitlines()) == 1 and 'another program' in done.stderr
    assert before[files[0]] in staged(store)


def test_undo_of_a_copy_leaves_the_rewritten_file_its_record(test_data, tmp_path):
    store = UndoStore(tmp_path / 'undo')
    (p,) = copies(test_data, tmp_path / 'shoot', 'CanonRaw.cr2', 1)
    original = p.read_bytes()
    assert set_lens([p], LensSpec(model='X'), store=store).ok
    backup = p.with_name('backup.cr2')
    shutil.copy2(p, backup)
    written = p.read_bytes()
    r = undo_lens([backup], store=store)[0]
    assert r.ok and r.undone == 0 and backup.read_bytes() == written
    r = undo_lens([p], store=store)[0]
    assert r.ok and r.undone == 1 and p.read_bytes() == original

    # identical copies: a renamed one takes its own record, never another file's
    same = copies(test_data, tmp_path / 'same', 'Canon.jpg', 8)
    assert set_lens(same, LensSpec(model='X'), store=store).ok
    renamed = same[3].with_name('renamed.jpg')
    same[3].rename(renamed)
    assert undo_lens([renamed], store=store)[0].undone == 1
    rest = same[:3] + same[4:]
    assert all(store.load(q) for q in rest)
    assert [r.undone for r in undo_lens(rest, store=store)] == [1] * len(rest)
    assert store_files(store.root) == []


def test_concurrent_lens_commands(test_data, tmp_path):
    """A lens command refuses to run while another holds the undo store (one line, nothing
    written); two started at once leave every file undoable and the store empty after."""
    files = copies(test_data, tmp_path / 'shoot', 'Canon.jpg', 20)
    before = {p: p.read_bytes() for p in files}
    store = UndoStore(tmp_path / 'undo')
    with store.session():
        done = run_cli('lens', 'set', '--model', 'M', str(files[0]), store=store.root)
        assert done.returncode == 1
        assert done.stderr.startswith(f'focusbridge: error: {store.root}: ')
        assert 'in use by another lens command' in done.stderr
        assert len(done.stderr.splitlines()) == 1
        assert files[0].read_bytes() == before[files[0]]
    env = dict(os.environ, FOCUSBRIDGE_UNDO_DIR=str(store.root))
    procs = [
        subprocess.Popen(
            [sys.executable, '-m', 'exif', 'lens', 'set', '--model', model, *map(str, files)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for model in ('AAA', 'BBB')
    ]
    for proc in procs:
        err = proc.communicate(timeout=120)[1]
        assert proc.returncode == 0 or 'in use by another lens command' in err, err
    done = run_cli('lens', 'undo', '--all', *map(str, files), store=store.root)
    assert done.returncode == 0, done.stderr
    assert [p for p in files if p.read_bytes() != before[p]] == []
    assert store_files(store.root) == []


def test_undo_restores_access_and_modification_times(test_data, tmp_path):
    store = UndoStore(tmp_path / 'undo')
    (p,) = copies(test_data, tmp_path / 'shoot', 'Sony.jpg', 1)
    times = (1_000_000_000_123_456_789, 1_100_000_000_987_654_321)  # atime < mtime: relatime
    os.utime(p, ns=times)
    assert set_lens([p], LensSpec(model='X'), store=store).ok
    assert undo_lens([p], store=store)[0].undone == 1
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == times
