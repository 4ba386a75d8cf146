"""`lens set` cut short by real signals (and a dying exiftool): no original is ever lost.

Each run rewrites copies of a camera JPEG in a `python -m exif lens set` subprocess; the test
waits until the first file's bytes change, then interrupts. Afterwards `lens undo` on every file
must bring back every byte, and leave neither the photo folder nor the undo store holding litter.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_exif_lens import REPO, run_cli, store_files

from exif.lens import BATCH, LensSpec, set_lens, undo_lens
from exif.tool import ExifCancelled, ExifError
from exif.undo import UndoStore
from pybridge.errors import Cancelled

N = 24  # files per run: two exiftool batches

pytestmark = pytest.mark.skipif(
    shutil.which('exiftool') is None or sys.platform != 'linux',
    reason='needs exiftool and Linux (/proc, process groups)',
)


@pytest.fixture()
def bracket(test_data, tmp_path) -> tuple[list[Path], dict[Path, bytes]]:
    folder = tmp_path / 'Serie ä'
    folder.mkdir()
    files = []
    for i in range(N):
        p = folder / f'IMG_{i:03d}.jpg'
        shutil.copyfile(test_data / 'camera-metadata' / 'Canon.jpg', p)
        files.append(p)
    return files, {p: p.read_bytes() for p in files}


@pytest.fixture()
def spawn_set():
    """start(files, store): `lens set` in the background, in its own process group like a shell
    job; whatever is still running when the test ends is killed."""
    procs = []

    def start(files: list[Path], store: Path) -> subprocess.Popen:
        env = dict(os.environ, FOCUSBRIDGE_UNDO_DIR=str(store))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    '-m',
                    'exif',
                    'lens',
                    'set',
                    '--make',
                    'Venus Optics',
                    '--model',
                    'Laowa 100mm f/2.8',
                    *map(str, files),
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def wait_for_first_change(proc: subprocess.Popen, before: dict[Path, bytes]) -> None:
    deadline = time.monotonic() + 60
    while not any(p.read_bytes() != b for p, b in before.items()):
        assert proc.poll() is None, f'finished before any file changed: {proc.communicate()}'
        assert time.monotonic() < deadline, 'no file changed within 60 s'
        time.sleep(0.003)


def exiftool_child(pid: int) -> int:
    """The pid of the exiftool process that ``pid`` started."""
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
            cmdline = (stat.parent / 'cmdline').read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b'exiftool' in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f'no exiftool child of {pid}')


def assert_all_restored(
    files: list[Path], before: dict[Path, bytes], store: Path, *options: str
) -> None:
    folder = files[0].parent
    done = run_cli('lens', 'undo', *options, *map(str, files), store=store)
    assert done.returncode == 0, done.stderr
    assert 'Traceback' not in done.stderr and done.stderr == ''
    changed = [p for p in files if f'{p}: restored' in done.stdout]
    assert changed, done.stdout
    for p in files:
        assert p.read_bytes() == before[p], p
        if p not in changed:
            assert f'{p}: nothing to undo' in done.stdout
    assert sorted(folder.iterdir()) == sorted(files)  # no exiftool temp files left
    assert store_files(store) == []  # every journal settled, every blob gone


@pytest.mark.parametrize(
    'how', ['SIGINT to the group', 'SIGTERM', 'SIGTERM to the group later', 'SIGKILL']
)
def test_signal_during_lens_set_loses_nothing(bracket, spawn_set, tmp_path, how):
    """Ctrl-C (the terminal signals exiftool too), SIGTERM at once or at a random later point,
    SIGKILL (no handler runs at all): every file that changed can be undone byte-exactly.
    After SIGKILL the next `lens set` settles what the dead run left, and its own rewrite stacks
    on it: `lens undo --all` goes back to the camera's bytes."""
    files, before = bracket
    store = tmp_path / 'undo'
    proc = spawn_set(files, store)
    wait_for_first_change(proc, before)
    if how == 'SIGINT to the group':
        os.killpg(proc.pid, signal.SIGINT)
    elif how == 'SIGTERM':
        proc.send_signal(signal.SIGTERM)
    elif how == 'SIGTERM to the group later':
        delay = random.uniform(0.05, 1.0)
        print(f'SIGTERM {delay:.3f} s after the first change')  # shown if the test fails
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGTERM)  # exiftool dies abruptly, maybe mid-file
    else:
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    if how == 'SIGKILL':
        assert proc.returncode == -signal.SIGKILL
        done = run_cli('lens', 'set', '--model', 'Mitutoyo 10x', *map(str, files), store=store)
        assert done.returncode == 0, done.stderr
        assert_all_restored(files, before, store, '--all')
        return
    if proc.returncode != 0:  # a late signal may find the run already done
        assert proc.returncode == 130, err
        assert err.strip().splitlines()[-1] == 'focusbridge: cancelled', err
        assert 'Traceback' not in err
    assert_all_restored(files, before, store)


def test_exiftool_killed_mid_run(test_data, spawn_set, tmp_path):
    """exiftool dies under a running `lens set` while it edits the second batch (it edits copies
    in the undo store): one line, no hang; the first batch is written and undoable, the second
    untouched. Raws of 3.9 MB keep exiftool busy long enough to be caught at it."""
    folder = tmp_path / 'Serie'
    folder.mkdir()
    files = []
    for i in range(BATCH + 4):
        files.append(folder / f'IMG_{i:03d}.dng')
        shutil.copyfile(test_data / 'raw' / 'canon_550d_magiclantern_colorchart.dng', files[-1])
    before = {p: p.read_bytes() for p in files}
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    store = tmp_path / 'undo'
    proc = spawn_set(files, store)
    deadline = time.monotonic() + 60
    exiftool = None
    while not (exiftool and any(p.stat().st_mtime_ns != mtimes[p] for p in files)):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        try:
            exiftool = exiftool or exiftool_child(proc.pid)
        except AssertionError:
            pass
        time.sleep(0.002)
    fds = Path(f'/proc/{exiftool}/fd')
    while not any(str(store / 'staging') in os.path.realpath(fd) for fd in fds.iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.001)  # the first batch is written: wait for exiftool to edit the second
    os.kill(exiftool, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)  # used to spin at 100 % CPU for ever
    assert proc.returncode == 1, err
    assert err.strip() == (
        'focusbridge: error: exiftool stopped unexpectedly (killed by signal SIGKILL)'
    ), err
    changed = [p for p in files if p.read_bytes() != before[p]]
    assert changed == files[:BATCH]
    assert_all_restored(files, before, store)


def test_should_stop_between_batches(bracket, tmp_path):
    """The bridge's cancel file: set_lens stops after the batch in progress, raises
    ExifCancelled, and every file written so far can be undone."""
    files, before = bracket
    store = UndoStore(tmp_path / 'undo')
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 1  # cancel after the first batch

    with pytest.raises(ExifCancelled) as err:
        set_lens(files, LensSpec(model='Test Lens'), store=store, should_stop=should_stop)
    assert str(err.value) == 'cancelled' and isinstance(err.value, Cancelled)
    changed = [p for p in files if p.read_bytes() != before[p]]
    assert len(changed) == BATCH
    # the error says which files were written: the caller (darktable) can undo just those
    assert sorted(r.path for r in err.value.done.results if r.changes) == sorted(changed)
    results = undo_lens(files, store=store)
    assert all(r.ok for r in results)
    assert sorted(r.path for r in results if r.undone == 1) == sorted(changed)
    assert all(p.read_bytes() == before[p] for p in files)
    assert store_files(store.root) == []


def test_a_dead_commands_journal_is_settled_by_the_next(bracket, tmp_path, monkeypatch):
    """While a lens command runs, no other can use the undo store. One that died with a
    journal and a half-written file behind: the next lens command settles it and restores."""
    files, before = bracket
    p = files[0]
    store = UndoStore(tmp_path / 'undo')
    with store.session() as run:
        item = run.keep(p, {})
        written = b'rewritten ' + before[p]
        (run.dir / item['written']).write_bytes(written)
        with pytest.raises(ExifError, match='in use by another lens command'):
            with UndoStore(store.root).session():
                pass
        monkeypatch.setattr(store, '_settle_journal', lambda journal: {})  # it dies here
        run.write([item])
        half = len(written) // 2
        p.write_bytes(written[:half] + before[p][half:])  # cut short while writing
    assert [f.name for f in store_files(store.root) if f.name.startswith('batch-')]
    assert undo_lens([p], store=UndoStore(store.root))[0].undone == 1
    assert p.read_bytes() == before[p] and store_files(store.root) == []


def test_a_cancelled_lens_job_reports_the_files_it_changed(bracket, tmp_path, monkeypatch):
    """run-job's lens kind (the darktable module): a cancel after the first batch gives a
    status that names the files written (outcome "updated"), and an undo job of just those
    files restores them all."""
    from pybridge.job import _run_lens

    files, before = bracket
    monkeypatch.setenv('FOCUSBRIDGE_UNDO_DIR', str(tmp_path / 'undo'))
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) > 1

    manifest = {'kind': 'lens', 'files': [str(f) for f in files], 'fields': {'model': 'L'}}
    status = _run_lens(manifest, tmp_path / 'job.json', lambda *a, **k: None, cancel)
    changed = sorted(str(p) for p in files if p.read_bytes() != before[p])
    assert status['cancelled'] and not status['ok']
    assert len(changed) == BATCH
    assert sorted(r['file'] for r in status['results'] if r['outcome'] == 'updated') == changed
    assert status['error'] == f'cancelled after changing {BATCH} of {len(files)} files'
    undo = {'kind': 'lens', 'action': 'undo', 'files': changed}
    status = _run_lens(undo, tmp_path / 'job.json', lambda *a, **k: None, None)
    assert status['ok'] and {r['outcome'] for r in status['results']} == {'restored'}
    assert all(p.read_bytes() == before[p] for p in files)


def test_a_lens_job_reports_progress_as_files_are_done(bracket, tmp_path, monkeypatch):
    """The darktable plugin gives up on a job that reports nothing for 30 minutes: a lens
    job on thousands of files reports after every batch (set) and every file (undo)."""
    from pybridge.job import _run_lens

    files, _ = bracket
    monkeypatch.setenv('FOCUSBRIDGE_UNDO_DIR', str(tmp_path / 'undo'))
    for action in ('set', 'undo'):
        seen = []
        manifest = {'kind': 'lens', 'action': action, 'files': [str(f) for f in files]}
        if action == 'set':
            manifest['fields'] = {'model': 'L'}
        status = _run_lens(
            manifest, tmp_path / 'job.json', lambda *a, _s=seen, **k: _s.append(k), None
        )
        assert status['ok'], status
        fractions = [k['fraction'] for k in seen]
        steps = -(-len(files) // BATCH) if action == 'set' else len(files)
        assert len(fractions) == 1 + steps, (action, fractions)
        assert fractions == sorted(fractions) and fractions[-1] >= 0.9
