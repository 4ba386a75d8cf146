"""Undo store for lens rewrites: exact original bytes, kept outside the photo folders.

Layout (``$FOCUSBRIDGE_UNDO_DIR``, else ``$XDG_DATA_HOME/focusbridge/lens-undo``, else
``~/.local/share/focusbridge/lens-undo``), locked (``flock``) by the one lens command using it::

    records/<sha256(resolved path)[:32]>.json  {"path": ..., "entries": [entry, ...]}  newest last
    blobs/<id>.fbdelta                         what it takes to rebuild the original bytes
    staging/<run>/batch-<n>.json               journal of the files of one batch
    staging/<run>/<id>, <id>.new<ext>          each file's bytes before, and the bytes written

exiftool edits copies here, never the photos: focusbridge itself writes the edited bytes into
each photo, in place (symlinks and hard links keep seeing it), once a journal naming both copies
is on disk (fsync).  Afterwards each file is *settled*: if its bytes differ from the copy from
before, an undo entry (a compact delta) is pushed onto its record; then the journal and copies
go.  A run that dies (any signal, a crash) leaves its journal behind and the next ``lens set`` or
``lens undo`` settles it the same way: every file that changed can be undone.  Settling records
only bytes focusbridge wrote (whole, or cut short): a file changed by another program meanwhile,
or gone, keeps its copies in staging and is named in a warning.  ``lens undo`` journals the
bytes it restores the same way, so a restore cut short is finished or undoable.

A record is keyed by the file's resolved path (symlinks followed): two links to one file are one
file.  A ``.fbdelta`` holds the original file as ``new[:prefix] + middle + new[-suffix:]``: the
bytes shared with the rewritten file at its start and end are not stored again, the differing
middle is stored zlib-compressed.  Every delta is proven exact when it is made (the original is
rebuilt from the delta and the rewritten file and its SHA-256 compared) and again before a restore.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import stat
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


def _partly(now: bytes, a: bytes, b: bytes) -> bool:
    """Could ``now`` be ``a`` overwritten in place by ``b`` and stopped anywhere (a crash), or
    the reverse?  Then each of its bytes is one of theirs at its offset and its size lies
    between theirs; anything else was changed by another program."""
    if not min(len(a), len(b)) <= len(now) <= max(len(a), len(b)):
        return False
    x = np.frombuffer(now, np.uint8)
    ours = np.zeros(len(now), bool)
    for v in (a, b):
        y = np.frombuffer(v, np.uint8)[: len(now)]
        ours[: len(y)] |= x[: len(y)] == y
    return bool(ours.all())


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


def _copy(src: str, dsts: list[Path]) -> str:
    """New files ``dsts`` holding ``src``'s bytes, on disk; the SHA-256 of those bytes."""
    h = hashlib.sha256()
    outs = [open(d, 'wb') for d in dsts]
    try:
        with open(src, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                h.update(chunk)
                for out in outs:
                    out.write(chunk)
        for out in outs:
            out.flush()
            os.fsync(out.fileno())
    finally:
        for out in outs:
            out.close()
    return h.hexdigest()


def _synced_sha(path: Path) -> str:
    """The SHA-256 of a file exiftool wrote (it does not fsync), now on disk."""
    with open(path, 'r+b') as f:
        os.fsync(f.fileno())
    return sha256_file(path)


def _copy_into(src: Path, dst: str) -> None:
    """``src``'s bytes into the existing file ``dst``, in place: it keeps its inode, so
    symlinks and hard links see them."""
    with open(src, 'rb') as f, open(dst, 'r+b') as out:
        shutil.copyfileobj(f, out, 1 << 20)
        out.truncate()
        out.flush()
        os.fsync(out.fileno())


def _lock(folder: Path) -> int | None:
    """An exclusive lock on ``folder`` (an fd: close it to release), None while another process
    holds it (the OS drops the lock of a process that died, however it died).  The folder
    itself is locked, so nothing is left behind; Windows cannot lock a folder: a file in it."""
    if fcntl is None:
        fd = os.open(folder / 'lock', os.O_RDWR | os.O_CREAT, 0o600)
    else:
        fd = os.open(folder, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        os.close(fd)
        return None
    return fd


def _drop_if_settled(run_dir: Path) -> None:
    """A run's staging folder goes once nothing in it awaits settling."""
    if not any(run_dir.glob('batch-*.json')):
        shutil.rmtree(run_dir, ignore_errors=True)


def _another_holds(path: str, real: str, digest: str) -> bool:
    """Is ``path`` another file than ``real`` (not a link to it) holding the bytes ``digest``?"""
    try:
        return not os.path.samefile(path, real) and sha256_file(path) == digest
    except OSError:  # gone
        return False


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

    def _move_record(self, old: str, new: str, real: str) -> dict | None:
        """The record under key ``old``, now the record of ``real`` (key ``new``): the file
        was moved or renamed."""
        rec = self._load_key(old, real)
        if rec is None:
            return None
        if (self._load_key(new, real) or {}).get('entries'):
            raise ExifError(
                'has undo records under an old name and its own; not joining them', real
            )
        rec['path'] = real
        with signals_held():
            self._save(new, rec)
            self._record_path(old).unlink(missing_ok=True)
        return rec

    def find(self, real: str) -> tuple[str, dict | None]:
        """(key, record) of the file ``real``: by its path; else, if it was moved or renamed,
        the record whose newest entry wrote exactly its bytes and whose own path no longer
        holds them (a copy of a rewritten file is not that file).  The record follows the file
        to its new name.  Damaged records of other files are skipped here (they are reported
        for their own file)."""
        key = self.key(real)
        rec = self._load_key(key, real)
        if rec and rec['entries']:
            return key, rec
        digest = sha256_file(real)
        for p in sorted((self.root / 'records').glob('*.json')):
            try:
                other = _check_record(json.loads(p.read_text('utf-8')))
            except (OSError, ValueError):
                continue
            entries = other['entries']
            if (
                entries
                and entries[-1]['written_sha256'] == digest
                and not _another_holds(other['path'], real, digest)
            ):
                return key, self._move_record(p.stem, key, real)
        return key, None

    # -- runs -------------------------------------------------------------------------------
    @contextmanager
    def session(self, files=()) -> Iterator[Run]:
        """One lens command, alone on the store (another is refused while it runs): first
        settles what interrupted commands left, looking for their files that were moved among
        ``files``, then stages into a folder of its own, removed when all in it is settled."""
        try:
            for sub in ('records', 'blobs', 'staging'):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
                if not os.access(self.root / sub, os.W_OK | os.X_OK):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            lock = _lock(self.root)
        except OSError as e:
            raise ExifError(
                f'undo store not usable ({one_line(e.strerror or e)}); set '
                'FOCUSBRIDGE_UNDO_DIR to a writable folder',
                self.root,
            ) from e
        if lock is None:
            raise ExifError(
                'undo store in use by another lens command; run this one when it has finished',
                self.root,
            )
        try:
            self.recover(files)
            run = Run(self)
            try:
                yield run
            finally:
                _drop_if_settled(run.dir)
        finally:
            os.close(lock)

    def recover(self, files=()) -> None:
        """Settle the journals of lens commands that died (the store's lock says none runs).
        Files still at their journalled place go first, so that those moved are only looked
        for among ``files`` that are nobody else's."""
        for found in (None, _Found(self, files)):
            for run_dir in sorted((self.root / 'staging').iterdir()):
                for journal in sorted(run_dir.glob('batch-*.json')):
                    for outcome in self._settle_journal(journal, found).values():
                        if found is not None and isinstance(outcome, ExifError):
                            self.problems.append(f'{outcome} (left by an interrupted lens command)')
                if run_dir.is_dir():
                    _drop_if_settled(run_dir)

    def _settle_journal(
        self, journal: Path, found: _Found | None = None
    ) -> dict[str, bool | ExifError]:
        """Settle every file of a journal: {path: True if it got an undo entry, False if it did
        not change, or the ExifError that kept it from being settled (it stays journalled)}."""
        try:
            items = json.loads(journal.read_text('utf-8'))['items']
        except (OSError, ValueError, KeyError, TypeError) as e:
            return {str(journal): ExifError(f'undo journal unreadable ({one_line(e)})', journal)}
        out: dict[str, bool | ExifError] = {}
        left = []
        for item in items:
            path = item['path']
            try:
                with signals_held():
                    out[path] = self._settle(journal.parent, item, found)
            except (ExifError, OSError, ValueError, KeyError) as e:
                if not isinstance(e, ExifError):
                    e = ExifError(f'undo entry could not be saved ({one_line(e)})', path)
                out[path] = e
                left.append(item)
        for sub in ('records', 'blobs'):  # the new names, before the journal can go
            fsync_folder(self.root / sub)
        if left:
            _write_durably(journal, json.dumps({'items': left}).encode('ascii'))
        else:
            journal.unlink()
        for item in items:
            if item not in left:
                for name in (item['before'], item['written']):
                    (journal.parent / name).unlink(missing_ok=True)
        return out

    def _settle(self, run_dir: Path, item: dict, found: _Found | None) -> bool:
        """Make the record say what happened to one journalled file; True if it now has an undo
        entry for it.  Running it twice changes nothing (a run may die while settling)."""
        restore = bool(item['pops'])  # an undo leads on to what it writes, a rewrite back
        before, written = (self._kept(run_dir, item, k) for k in ('before', 'written'))
        path, now = self._locate(
            item, found, before, written, run_dir / item['written' if restore else 'before']
        )
        target = written if restore else before
        rec = self._load_key(item['record'], path) or {'path': path, 'entries': []}
        entries, pops = rec['entries'], item['pops']
        changed = False
        if pops and [e['blob'] for e in entries[::-1][: len(pops)]] == pops:
            del entries[-len(pops) :]  # an undo: forget the entries it restored
            changed = True
        now_sha, target_sha = _sha(now), _sha(target)
        pushed = now_sha != target_sha
        top = entries[-1] if entries else None
        if pushed and not (
            top and top['written_sha256'] == now_sha and top['original_sha256'] == target_sha
        ):
            entries.append(self._entry(target, now, now_sha, item))
            changed = True
        if changed:
            self._save(item['record'], rec, sync_dir=False)  # _settle_journal syncs the folders
        kept_blobs = {e['blob'] for e in entries}
        for blob in pops:
            if blob not in kept_blobs:
                (self.root / 'blobs' / blob).unlink(missing_ok=True)
        return pushed

    def _locate(
        self, item: dict, found: _Found | None, before: bytes, written: bytes, kept: Path
    ) -> tuple[str, bytes]:
        """A journalled file and its bytes, which must be focusbridge's doing (``before`` being
        overwritten by ``written``, whole or cut short): at its path, else (moved since) among
        this command's files ``found``; the item and the file's record follow it there."""
        path = item['path']
        if os.path.exists(path):
            now = Path(path).read_bytes()
            if not _partly(now, before, written):
                raise ExifError(
                    'changed by another program since focusbridge wrote it, so it gets no undo '
                    f'entry; the bytes to go back to are kept in {kept}',
                    path,
                )
            return path, now
        for real in found.candidates(item) if found is not None else ():
            now = Path(real).read_bytes()
            if _partly(now, before, written):  # not just a reused inode
                found.claim(real)
                key = self.key(real)
                if key != item['record']:
                    self._move_record(item['record'], key, real)
                item['path'], item['record'] = real, key
                return real, now
        raise ExifError(
            f'not there any more (moved or deleted?); the bytes to go back to are kept in {kept} '
            'until a lens command names the file at its new place',
            path,
        )

    @staticmethod
    def _kept(run_dir: Path, item: dict, which: str) -> bytes:
        data = (run_dir / item[which]).read_bytes()
        if _sha(data) != item[f'{which}_sha256']:
            raise ExifError(
                'its copy in the undo store is damaged; no undo entry recorded', item['path']
            )
        return data

    def _entry(self, original: bytes, now: bytes, now_sha: str, item: dict) -> dict:
        delta = _exact_delta(original, now)
        blob = f'{uuid.uuid4().hex}.fbdelta'
        _write_durably(self.root / 'blobs' / blob, delta, sync_dir=False)
        return {
            'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
            'original_sha256': _sha(original),
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


class _Found:
    """The files a lens command names, where a journalled file that was moved is looked for:
    the same inode (moved on its file system), else, among files with no undo record of their
    own, one holding exactly the bytes focusbridge wrote into it (copied elsewhere).  A file is
    claimed by one journalled file at most."""

    def __init__(self, store: UndoStore, files):
        self.store = store
        self.files = [os.path.realpath(f) for f in files]
        self.ids: dict[str, tuple[int, int]] | None = None
        self.shas: dict[str, str] = {}

    def candidates(self, item: dict) -> Iterator[str]:
        if self.ids is None:
            self.ids = {}
            for f in self.files:
                try:
                    st = os.stat(f)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    self.ids[f] = (st.st_dev, st.st_ino)
        ident = (item.get('dev'), item.get('ino'))
        yield from [f for f, i in self.ids.items() if i == ident]
        for f in list(self.ids):
            if not self.store._record_path(self.store.key(f)).exists():
                self.shas.setdefault(f, sha256_file(f))
                if self.shas[f] == item['written_sha256']:
                    yield f

    def claim(self, f: str) -> None:
        del self.ids[f]


class Run:
    """The staging folder of one lens command (see the module doc)."""

    def __init__(self, store: UndoStore):
        self.store = store
        self.dir = store.root / 'staging' / uuid.uuid4().hex
        self.dir.mkdir()
        fsync_folder(self.dir.parent)
        self._batches = 0

    def keep(self, path, changes: dict, new: bytes | None = None, st=None) -> dict:
        """Copy a file's bytes before it is rewritten ("before"), and the bytes :meth:`write`
        puts in their place ("written"): ``new``, else a second copy for exiftool to edit.
        ``st``: its ``os.stat`` from before anything read it (reading sets its access time).
        A damaged record raises here, before the file is touched."""
        real = os.path.realpath(path)
        key = self.store.key(real)
        self.store._load_key(key, path)
        st = st or os.stat(real)
        name = uuid.uuid4().hex
        ext = os.path.splitext(real)[1]  # exiftool goes by the type the name says too
        written = name + '.new' + (ext if re.fullmatch(r'\.[A-Za-z0-9]{1,8}', ext) else '')
        sha = _copy(real, [self.dir / name] + ([self.dir / written] if new is None else []))
        if new is not None:
            _write_durably(self.dir / written, new, sync_dir=False)
        return {
            'path': real,
            'record': key,
            'dev': st.st_dev,
            'ino': st.st_ino,
            'before': name,
            'before_sha256': sha,
            'written': written,
            'mode': st.st_mode & 0o7777,
            'atime_ns': st.st_atime_ns,
            'mtime_ns': st.st_mtime_ns,
            'changes': changes,
            'pops': [],
        }

    def write(self, items: list[dict]) -> dict[str, bool | ExifError]:
        """Put each kept file's "written" bytes in place (links see them too) and settle:
        {path: True if it got an undo entry, False if unchanged, or the ExifError that kept it
        from being settled}.  The journal is on disk first and settled whatever stops this
        (a signal waits while a file is written), or after SIGKILL by the next lens command."""
        out: dict[str, bool | ExifError] = {}
        todo = []
        for item in items:
            item['written_sha256'] = _synced_sha(self.dir / item['written'])
            if item['written_sha256'] != item['before_sha256']:
                todo.append(item)
                continue
            out[item['path']] = False  # nothing to write
            for name in (item['before'], item['written']):
                (self.dir / name).unlink()
        if not todo:
            return out
        self._batches += 1
        journal = self.dir / f'batch-{self._batches:06d}.json'
        try:
            with signals_held():
                _write_durably(journal, json.dumps({'items': todo}).encode('ascii'))
            for item in todo:
                with signals_held():
                    _copy_into(self.dir / item['written'], item['path'])
        finally:
            if journal.exists():
                out.update(self.store._settle_journal(journal))
        return out

    def undo(self, path, all_levels: bool = False) -> int:
        """Restore the bytes from before the newest lens rewrite (all rewrites with
        ``all_levels``), in place: links and hard links see them too.  Returns how many
        rewrites were undone, 0 if none is recorded.  Raises ExifError or OSError."""
        real = os.path.realpath(path)
        _, rec = self.store.find(real)
        if rec is None:
            return 0
        data = Path(real).read_bytes()
        popped: list[str] = []
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
                blob = (self.store.root / 'blobs' / entry['blob']).read_bytes()
                original = apply_delta(blob, data)
            except (OSError, ValueError) as e:
                raise ExifError(
                    f'undo data missing or damaged ({one_line(e)}); not restoring', path
                ) from e
            if _sha(original) != entry['original_sha256']:
                raise ExifError('undo data damaged (checksum mismatch); not restoring', path)
            data = original
            popped.append(rec['entries'].pop()['blob'])
            last = entry
            if not all_levels:
                break
        item = self.keep(real, {}, data)
        item.update(pops=popped, **{k: last[k] for k in ('mode', 'atime_ns', 'mtime_ns')})
        outcome = self.write([item])[real]
        if isinstance(outcome, ExifError):
            raise outcome
        if os.stat(real).st_mode & 0o7777 != last['mode']:
            os.chmod(real, last['mode'])
        os.utime(real, ns=(last['atime_ns'], last['mtime_ns']))  # last: settling read the file
        return len(popped)
