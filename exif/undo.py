"""Undo store for lens rewrites: exact original bytes, kept outside the photo folders.

Layout (``$FOCUSBRIDGE_UNDO_DIR``, else ``$XDG_DATA_HOME/focusbridge/lens-undo``, else
``~/.local/share/focusbridge/lens-undo``)::

    records/<sha256(resolved path)[:32]>.json  {"path": ..., "entries": [entry, ...]}  newest last
    blobs/<id>.fbdelta                         what it takes to rebuild the original bytes
    staging/<run>.lock                         locked while that lens command runs
    staging/<run>/batch-<n>.json               journal of the files of one exiftool batch
    staging/<run>/<id>                         a full copy of each of their original bytes

Files are rewritten in place (symlinks and hard links keep seeing them), so while exiftool works
the photo folder holds nothing of the original.  Hence before a batch goes to exiftool a full copy
of each file and a journal naming them are on disk (fsync).  Afterwards each file is *settled*:
if its bytes differ from the copy, an undo entry (a compact delta) is pushed onto its record; then
the journal and copies go.  A run that dies (any signal, a crash) leaves its journal behind and
the next ``lens set`` or ``lens undo`` settles it the same way: every file that changed can be
undone.  ``lens undo`` journals the bytes it restores the same way, so a restore cut short is
finished or undoable.

A record is keyed by the file's resolved path (symlinks followed): two links to one file are one
file.  A ``.fbdelta`` holds the original file as ``new[:prefix] + middle + new[-suffix:]``: the
bytes shared with the rewritten file at its start and end are not stored again, the differing
middle is stored zlib-compressed.  Every delta is proven exact when it is made (the original is
rebuilt from the delta and the rewritten file and its SHA-256 compared) and again before a restore.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pybridge.atomic import fsync_folder, replaced

from .tool import ExifError, one_line

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

_MAGIC = b'FBDELTA1'
_HEADER = struct.Struct('<8sQQQQ')  # magic, original size, prefix, suffix, new size


def store_dir() -> Path:
    env = os.environ.get('FOCUSBRIDGE_UNDO_DIR')
    if env:
        return Path(env)
    xdg = os.environ.get('XDG_DATA_HOME') or os.path.join(
        os.path.expanduser('~'), '.local', 'share'
    )
    return Path(xdg) / 'focusbridge' / 'lens-undo'


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.frombuffer(a, np.uint8, n)
    y = np.frombuffer(b, np.uint8, n)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    n = min(limit, len(a), len(b))
    if n <= 0:
        return 0
    x = np.frombuffer(a, np.uint8)[len(a) - n :][::-1]
    y = np.frombuffer(b, np.uint8)[len(b) - n :][::-1]
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


def make_delta(original: bytes, new: bytes) -> bytes:
    prefix = _common_prefix(original, new)
    suffix = _common_suffix(original, new, min(len(original), len(new)) - prefix)
    middle = original[prefix : len(original) - suffix]
    level = 6 if len(middle) < (1 << 20) else 1
    return _HEADER.pack(_MAGIC, len(original), prefix, suffix, len(new)) + zlib.compress(
        middle, level
    )


def apply_delta(delta: bytes, new: bytes) -> bytes:
    if len(delta) < _HEADER.size:
        raise ValueError('undo data truncated')
    magic, osize, prefix, suffix, nsize = _HEADER.unpack_from(delta)
    if magic != _MAGIC or nsize != len(new):
        raise ValueError('undo data does not belong to this file')
    try:
        middle = zlib.decompress(delta[_HEADER.size :])
    except zlib.error as e:  # truncated or overwritten blob
        raise ValueError(f'undo data damaged ({e})') from None
    out = new[:prefix] + middle + (new[len(new) - suffix :] if suffix else b'')
    if len(out) != osize:
        raise ValueError('undo data damaged (size)')
    return out


def _exact_delta(original: bytes, new: bytes) -> bytes:
    delta = make_delta(original, new)
    if _sha(apply_delta(delta, new)) != _sha(original):  # cannot happen; stay exact anyway
        delta = _HEADER.pack(_MAGIC, len(original), 0, 0, len(new)) + zlib.compress(original, 1)
    return delta


# ------------------------------------------------------------------------------------------------
# durability helpers


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, so bookkeeping is never cut in half (a
    signal that arrived meanwhile is delivered, by whatever handler is installed, at the end)."""
    if not hasattr(signal, 'pthread_sigmask'):  # Windows
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _write_durably(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """``path`` holds ``data`` whole, on disk, or is as it was (its name on disk too unless
    ``sync_dir`` is False: then the caller syncs the folder)."""
    with replaced(path, durable=False) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    if sync_dir:
        fsync_folder(path.parent)


def _lock(path: Path) -> int | None:
    """An exclusive lock on ``path`` (an fd: close it to release), or None when another live
    process holds it (the OS drops the lock of a process that died, however it died)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        os.close(fd)
        return None
    return fd


# ------------------------------------------------------------------------------------------------
# records

_SHA256 = re.compile(r'[0-9a-f]{64}')
_BLOB = re.compile(r'[0-9a-f]{32}\.fbdelta')  # never a path: a record cannot point elsewhere
_ENTRY_FIELDS = {
    'original_sha256': _SHA256,
    'written_sha256': _SHA256,
    'blob': _BLOB,
    'mode': int,
    'atime_ns': int,
    'mtime_ns': int,
}


def _check_record(rec) -> dict:
    """``rec`` as loaded from JSON if every field the store uses has the right type, else
    ValueError saying what is wrong."""
    if not (
        isinstance(rec, dict)
        and isinstance(rec.get('path'), str)
        and isinstance(rec.get('entries'), list)
    ):
        raise ValueError('expected {"path": "...", "entries": [...]}')
    for n, entry in enumerate(rec['entries'], 1):
        for name, want in _ENTRY_FIELDS.items():
            v = entry.get(name) if isinstance(entry, dict) else None
            if isinstance(want, re.Pattern):
                ok = isinstance(v, str) and want.fullmatch(v) is not None
            else:
                ok = isinstance(v, int) and not isinstance(v, bool)
            if not ok:
                raise ValueError(f'entry {n}: missing or bad {name!r}')
    return rec


class UndoStore:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else store_dir()
        #: one line each: files of interrupted runs whose undo entry could not be settled
        self.problems: list[str] = []

    # -- paths ------------------------------------------------------------------------------
    @staticmethod
    def key(path: str | os.PathLike) -> str:
        return hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()[:32]

    def _record_path(self, key: str) -> Path:
        return self.root / 'records' / f'{key}.json'

    def _ensure(self):
        for sub in ('records', 'blobs', 'staging'):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- records ----------------------------------------------------------------------------
    def _load_key(self, key: str, path) -> dict | None:
        p = self._record_path(key)
        try:
            return _check_record(json.loads(p.read_text('utf-8')))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ExifError(
                f'undo record damaged ({p}: {one_line(e)}); move it away to start a new one', path
            ) from e

    def load(self, path) -> dict | None:
        """The record of ``path`` (validated), None if there is none; ExifError if damaged."""
        return self._load_key(self.key(path), path)

    def _save(self, key: str, record: dict, sync_dir: bool = True):
        p = self._record_path(key)
        if not record['entries']:
            p.unlink(missing_ok=True)
            return
        # ensure_ascii: a name that is not UTF-8 (surrogate escapes) still round-trips
        _write_durably(p, json.dumps(record, indent=1).encode('ascii'), sync_dir)

    def find_by_content(self, path) -> tuple[str, dict] | None:
        """(key, record) whose newest entry wrote exactly this file's bytes (file moved/renamed);
        damaged records are skipped here (they are reported for their own file)."""
        digest = None
        for p in sorted((self.root / 'records').glob('*.json')):
            try:
                rec = _check_record(json.loads(p.read_text('utf-8')))
            except (OSError, ValueError):
                continue
            if not rec['entries']:
                continue
            if digest is None:
                digest = sha256_file(path)
            if rec['entries'][-1]['written_sha256'] == digest:
                return p.stem, rec
        return None

    # -- runs -------------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Run]:
        """One lens command: first settles what interrupted commands left, then stages into a
        folder of its own that is removed when everything in it is settled."""
        self._ensure()
        self.recover()
        run = Run(self)
        try:
            yield run
        finally:
            run.close()

    def recover(self) -> None:
        """Settle the journals of lens commands that died (their lock is free)."""
        for run_dir in sorted((self.root / 'staging').iterdir()):
            if not run_dir.is_dir():
                continue
            lock = _lock(run_dir.with_suffix('.lock'))
            if lock is None:
                continue  # still running
            try:
                for journal in sorted(run_dir.glob('batch-*.json')):
                    for outcome in self._settle_journal(journal, clean_tmp=True).values():
                        if isinstance(outcome, ExifError):
                            self.problems.append(
                                f'{outcome} (interrupted lens command; its '
                                f'original bytes stay in {run_dir})'
                            )
            finally:
                _release(run_dir, lock)

    def _settle_journal(
        self, journal: Path, clean_tmp: bool = False
    ) -> dict[str, bool | ExifError]:
        """Settle every file of a journal: {path: True if it got an undo entry, False if it did
        not change, or the ExifError that kept it from being settled (it stays journaled)}."""
        try:
            items = json.loads(journal.read_text('utf-8'))['items']
        except (OSError, ValueError, KeyError, TypeError) as e:
            return {str(journal): ExifError(f'undo journal unreadable ({one_line(e)})', journal)}
        out: dict[str, bool | ExifError] = {}
        left = []
        for item in items:
            try:
                with signals_held():
                    out[item['path']] = self._settle(journal.parent, item, clean_tmp)
            except (ExifError, OSError, ValueError) as e:
                if not isinstance(e, ExifError):
                    e = ExifError(f'undo entry could not be saved ({one_line(e)})', item['path'])
                out[item['path']] = e
                left.append(item)
        for sub in ('records', 'blobs'):  # the new names, before the journal can go
            fsync_folder(self.root / sub)
        if left:
            _write_durably(journal, json.dumps({'items': left}).encode('ascii'))
        else:
            journal.unlink()
        for item in items:
            if item not in left:
                (journal.parent / item['copy']).unlink(missing_ok=True)
        return out

    def _settle(self, run_dir: Path, item: dict, clean_tmp: bool) -> bool:
        """Make the record say what happened to one journaled file; True if it now has an undo
        entry for it.  Running it twice changes nothing (a run may die while settling)."""
        path, key, target = item['path'], item['record'], item['original_sha256']
        rec = self._load_key(key, path) or {'path': path, 'entries': []}
        entries, pops = rec['entries'], item['pops']
        changed = False
        if pops and [e['blob'] for e in entries[::-1][: len(pops)]] == pops:
            del entries[-len(pops) :]  # an undo: forget the entries it restored
            changed = True
        try:
            now = Path(path).read_bytes()
            now_sha = _sha(now)
        except FileNotFoundError:  # deleted meanwhile: nothing to undo onto
            now, now_sha = b'', target
        pushed = now_sha != target
        top = entries[-1] if entries else None
        if pushed and not (
            top and top['written_sha256'] == now_sha and top['original_sha256'] == target
        ):
            entries.append(self._entry(run_dir / item['copy'], now, now_sha, item))
            changed = True
        if changed:
            self._save(key, rec, sync_dir=False)  # _settle_journal syncs the folders
        kept = {e['blob'] for e in entries}
        for blob in pops:
            if blob not in kept:
                (self.root / 'blobs' / blob).unlink(missing_ok=True)
        if clean_tmp:  # exiftool killed mid-write leaves its temporary file beside the photo
            Path(path + '_exiftool_tmp').unlink(missing_ok=True)
        return pushed

    def _entry(self, copy: Path, now: bytes, now_sha: str, item: dict) -> dict:
        original = copy.read_bytes()
        if _sha(original) != item['original_sha256']:
            raise ExifError(
                'the copy of the original in the undo store is damaged; no undo entry recorded',
                item['path'],
            )
        delta = _exact_delta(original, now)
        blob = f'{uuid.uuid4().hex}.fbdelta'
        _write_durably(self.root / 'blobs' / blob, delta, sync_dir=False)
        return {
            'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
            'original_sha256': item['original_sha256'],
            'original_size': len(original),
            'written_sha256': now_sha,
            'written_size': len(now),
            'mode': item['mode'],
            'atime_ns': item['atime_ns'],
            'mtime_ns': item['mtime_ns'],
            'blob': blob,
            'blob_size': len(delta),
            'changes': item['changes'],
        }


def _release(run_dir: Path, lock: int) -> None:
    """End a run folder's lock; the folder and lock go once nothing in it awaits settling."""
    if not any(run_dir.glob('batch-*.json')):
        shutil.rmtree(run_dir, ignore_errors=True)
    os.close(lock)
    if not run_dir.exists():
        run_dir.with_suffix('.lock').unlink(missing_ok=True)


class Run:
    """The staging folder of one lens command, locked while it runs (see the module doc)."""

    def __init__(self, store: UndoStore):
        self.store = store
        self.dir = store.root / 'staging' / uuid.uuid4().hex
        # locked before the folder exists: recover() never finds it unlocked
        self._lock = _lock(self.dir.with_suffix('.lock'))
        if self._lock is None:
            raise ExifError(f'cannot lock {self.dir}.lock (does this file system support locks?)')
        self.dir.mkdir()
        fsync_folder(self.dir.parent)
        self._batches = 0

    def close(self):
        _release(self.dir, self._lock)

    @staticmethod
    def _item(
        real: str, key: str, copy: Path, sha: str, meta: dict, changes: dict, pops: list[str]
    ) -> dict:
        """A journal entry: which file, its record, the copy of the bytes to get back to."""
        return {
            'path': real,
            'record': key,
            'copy': copy.name,
            'original_sha256': sha,
            'mode': meta['mode'],
            'atime_ns': meta['atime_ns'],
            'mtime_ns': meta['mtime_ns'],
            'changes': changes,
            'pops': pops,
        }

    def keep(self, path, changes: dict) -> dict:
        """Copy a file's bytes before it is rewritten (journal() makes it count).  A damaged
        record raises here, before the file is touched."""
        real = os.path.realpath(path)
        key = self.store.key(real)
        self.store._load_key(key, path)
        st = os.stat(real)
        copy = self.dir / uuid.uuid4().hex
        h = hashlib.sha256()
        with open(real, 'rb') as src, open(copy, 'wb') as dst:
            for chunk in iter(lambda: src.read(1 << 20), b''):
                h.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        meta = {'mode': st.st_mode & 0o7777, 'atime_ns': st.st_atime_ns, 'mtime_ns': st.st_mtime_ns}
        return self._item(real, key, copy, h.hexdigest(), meta, changes, [])

    def journal(self, items: list[dict]) -> Path:
        """Put the batch on disk: from here on its files may change, whatever happens next."""
        self._batches += 1
        journal = self.dir / f'batch-{self._batches:06d}.json'
        with signals_held():
            _write_durably(journal, json.dumps({'items': items}).encode('ascii'))
        return journal

    def settle(self, journal: Path, clean_tmp: bool = False) -> dict[str, bool | ExifError]:
        return self.store._settle_journal(journal, clean_tmp)

    def undo(self, path, all_levels: bool = False) -> int:
        """Restore the bytes from before the newest lens rewrite (all rewrites with
        ``all_levels``), in place: links and hard links see them too.  Returns how many
        rewrites were undone, 0 if none is recorded.  Raises ExifError or OSError."""
        store = self.store
        real = os.path.realpath(path)
        if not os.path.isfile(real):
            raise ExifError('no such file', path)
        key = store.key(real)
        rec = store._load_key(key, path)
        if not rec or not rec['entries']:
            found = store.find_by_content(real)
            if found is None:
                return 0
            old_key, rec = found
            rec['path'] = real
            with signals_held():  # the file was moved or renamed: its record follows it
                store._save(key, rec)
                store._record_path(old_key).unlink(missing_ok=True)
        data = Path(real).read_bytes()
        popped: list[str] = []
        entry = None
        while rec['entries']:
            entry = rec['entries'][-1]
            if _sha(data) != entry['written_sha256']:
                if popped:
                    break
                raise ExifError(
                    'file changed since the lens rewrite (content differs from what '
                    'focusbridge wrote); not restoring',
                    path,
                )
            try:
                original = apply_delta((store.root / 'blobs' / entry['blob']).read_bytes(), data)
            except (OSError, ValueError) as e:
                raise ExifError(
                    f'undo data missing or damaged ({one_line(e)}); not restoring', path
                ) from e
            if _sha(original) != entry['original_sha256']:
                raise ExifError('undo data damaged (checksum mismatch); not restoring', path)
            data = original
            popped.append(rec['entries'].pop()['blob'])
            if not all_levels:
                break
        # journal the bytes being restored first: a restore cut short is settled like a rewrite
        copy = self.dir / uuid.uuid4().hex
        _write_durably(copy, data)
        journal = self.journal([self._item(real, key, copy, _sha(data), entry, {}, popped)])
        try:
            with open(real, 'r+b') as f:
                f.write(data)
                f.truncate()
                f.flush()
                os.fsync(f.fileno())
            if os.stat(real).st_mode & 0o7777 != entry['mode']:
                os.chmod(real, entry['mode'])
            os.utime(real, ns=(entry['atime_ns'], entry['mtime_ns']))
        finally:
            outcome = self.settle(journal)[real]
        if isinstance(outcome, ExifError):
            raise outcome
        return len(popped)
