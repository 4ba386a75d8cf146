"""Undo store for lens rewrites: exact original bytes, kept outside the photo folders.

Layout (``$FOCUSBRIDGE_UNDO_DIR``, else ``$XDG_DATA_HOME/focusbridge/lens-undo``, else
``~/.local/share/focusbridge/lens-undo``)::

    records/<sha256(absolute path)[:32]>.json   {"path": ..., "entries": [entry, ...]}  newest last
    blobs/<id>.fbdelta                          what it takes to rebuild the original bytes
    staging/                                    hard links to originals while exiftool runs

A ``.fbdelta`` holds the original file as ``new[:prefix] + middle + new[-suffix:]``: the bytes
shared with the rewritten file at its start and end are not stored again, the differing middle
is stored zlib-compressed.  Every delta is proven exact when it is made (the original is rebuilt
from the delta and the rewritten file and its SHA-256 compared) and again before a restore.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tool import ExifError, replaced_atomically

_MAGIC = b'FBDELTA1'
_HEADER = struct.Struct('<8sQQQQ')   # magic, original size, prefix, suffix, new size


def store_dir() -> Path:
    env = os.environ.get('FOCUSBRIDGE_UNDO_DIR')
    if env:
        return Path(env)
    xdg = os.environ.get('XDG_DATA_HOME') or os.path.join(os.path.expanduser('~'), '.local', 'share')
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
    x = np.frombuffer(a, np.uint8)[len(a) - n:][::-1]
    y = np.frombuffer(b, np.uint8)[len(b) - n:][::-1]
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


def make_delta(original: bytes, new: bytes) -> bytes:
    prefix = _common_prefix(original, new)
    suffix = _common_suffix(original, new, min(len(original), len(new)) - prefix)
    middle = original[prefix:len(original) - suffix]
    level = 6 if len(middle) < (1 << 20) else 1
    return _HEADER.pack(_MAGIC, len(original), prefix, suffix, len(new)) + zlib.compress(middle, level)


def apply_delta(delta: bytes, new: bytes) -> bytes:
    if len(delta) < _HEADER.size:
        raise ValueError('undo data truncated')
    magic, osize, prefix, suffix, nsize = _HEADER.unpack_from(delta)
    if magic != _MAGIC or nsize != len(new):
        raise ValueError('undo data does not belong to this file')
    middle = zlib.decompress(delta[_HEADER.size:])
    out = new[:prefix] + middle + (new[len(new) - suffix:] if suffix else b'')
    if len(out) != osize:
        raise ValueError('undo data damaged (size)')
    return out


@dataclass
class Staged:
    path: Path            # the photo
    stage: Path           # hard link (or copy) of the original in the store
    sha256: str
    size: int
    ino: int
    st_mode: int
    atime_ns: int
    mtime_ns: int


class UndoStore:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else store_dir()
        self._cleaned = False

    # -- paths ------------------------------------------------------------------------------
    @staticmethod
    def _key(path: str | os.PathLike) -> str:
        return hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:32]

    def _record_path(self, path) -> Path:
        return self.root / 'records' / f'{self._key(path)}.json'

    def _ensure(self):
        for sub in ('records', 'blobs', 'staging'):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- records ----------------------------------------------------------------------------
    def load(self, path) -> dict | None:
        p = self._record_path(path)
        try:
            return json.loads(p.read_text('utf-8'))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ExifError(f'undo record unreadable ({p}: {e})', path) from e

    def _save(self, path, record: dict | None):
        p = self._record_path(path)
        if not record or not record.get('entries'):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            return
        tmp = p.with_name(p.name + f'.{uuid.uuid4().hex[:8]}.tmp')
        tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False), 'utf-8')
        os.replace(tmp, p)

    def find_by_content(self, path) -> tuple[Path, dict] | None:
        """A record whose newest entry wrote exactly this file's bytes (file moved/renamed)."""
        rec_dir = self.root / 'records'
        if not rec_dir.is_dir():
            return None
        digest = None
        for p in rec_dir.glob('*.json'):
            try:
                rec = json.loads(p.read_text('utf-8'))
            except (OSError, ValueError):
                continue
            if not rec.get('entries'):
                continue
            if digest is None:
                digest = sha256_file(path)
            if rec['entries'][-1].get('written_sha256') == digest:
                return Path(rec['path']), rec
        return None

    def entries(self) -> list[dict]:
        rec_dir = self.root / 'records'
        out = []
        for p in sorted(rec_dir.glob('*.json')) if rec_dir.is_dir() else []:
            try:
                out.append(json.loads(p.read_text('utf-8')))
            except (OSError, ValueError):
                pass
        return out

    # -- recording a rewrite ----------------------------------------------------------------
    def stage(self, path: Path) -> Staged:
        """Keep the original bytes reachable before exiftool replaces the file.

        A hard link costs nothing: exiftool's ``-overwrite_original`` writes a new file and
        renames it over the old name, so the linked inode keeps the original bytes.  Across
        file systems the original is copied instead."""
        self._ensure()
        if not self._cleaned:
            self._clean_stale_staging()
            self._cleaned = True
        st = os.stat(path)
        stage = self.root / 'staging' / uuid.uuid4().hex
        try:
            os.link(path, stage)
        except OSError:
            with open(path, 'rb') as src, open(stage, 'wb') as dst:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    dst.write(chunk)
        return Staged(Path(path), stage, sha256_file(stage), st.st_size, st.st_ino,
                      st.st_mode, st.st_atime_ns, st.st_mtime_ns)

    def discard(self, staged: Staged):
        try:
            staged.stage.unlink()
        except FileNotFoundError:
            pass

    def commit(self, staged: Staged, changes: dict | None = None) -> bool:
        """The file was rewritten: store a verified delta and push an undo entry.

        Returns False (and records nothing) if the file did not change."""
        try:
            new = Path(staged.path).read_bytes()
            original = staged.stage.read_bytes()
            if hashlib.sha256(original).hexdigest() != staged.sha256:
                raise ExifError('original bytes changed while staged; no undo recorded',
                                staged.path)
            new_sha = hashlib.sha256(new).hexdigest()
            if new_sha == staged.sha256:
                return False
            delta = make_delta(original, new)
            if hashlib.sha256(apply_delta(delta, new)).hexdigest() != staged.sha256:
                delta = _HEADER.pack(_MAGIC, len(original), 0, 0, len(new)) + \
                    zlib.compress(original, 1)   # cannot happen; stay exact anyway
            blob = f'{uuid.uuid4().hex}.fbdelta'
            tmp = self.root / 'blobs' / (blob + '.tmp')
            tmp.write_bytes(delta)
            os.replace(tmp, self.root / 'blobs' / blob)
            rec = self.load(staged.path) or {'path': os.path.abspath(staged.path), 'entries': []}
            rec['entries'].append({
                'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
                'original_sha256': staged.sha256, 'original_size': staged.size,
                'written_sha256': new_sha, 'written_size': len(new),
                'mode': staged.st_mode & 0o7777, 'atime_ns': staged.atime_ns,
                'mtime_ns': staged.mtime_ns, 'blob': blob, 'blob_size': len(delta),
                'changes': changes or {},
            })
            self._save(staged.path, rec)
            return True
        finally:
            self.discard(staged)

    def _clean_stale_staging(self, max_age_s: float = 86400):
        now = time.time()
        for p in (self.root / 'staging').iterdir():
            try:
                if now - p.stat().st_mtime > max_age_s and now - p.stat().st_ctime > max_age_s:
                    p.unlink()
            except OSError:
                pass

    # -- undo -------------------------------------------------------------------------------
    def undo(self, path: Path, all_levels: bool = False) -> int:
        """Restore the bytes from before the newest lens rewrite (all rewrites with
        ``all_levels``).  Returns how many rewrites were undone.  Raises ExifError."""
        path = Path(path)
        if not path.is_file():
            raise ExifError('no such file', path)
        rec = self.load(path)
        rec_path = path
        if not rec or not rec.get('entries'):
            found = self.find_by_content(path)
            if found is None:
                raise ExifError('no lens change recorded for this file (nothing to undo)', path)
            rec_path, rec = found
        undone = 0
        data = path.read_bytes()
        st = os.stat(path)
        entry = None
        popped: list[str] = []
        while rec['entries']:
            entry = rec['entries'][-1]
            if hashlib.sha256(data).hexdigest() != entry['written_sha256']:
                if undone:
                    break
                raise ExifError('file changed since the lens rewrite (content differs from what '
                                'focusbridge wrote); not restoring', path)
            try:
                delta = (self.root / 'blobs' / entry['blob']).read_bytes()
                original = apply_delta(delta, data)
            except (OSError, ValueError) as e:
                raise ExifError(f'undo data missing or damaged ({e})', path) from e
            if hashlib.sha256(original).hexdigest() != entry['original_sha256']:
                raise ExifError('undo data damaged (checksum mismatch); not restoring', path)
            data = original
            popped.append(rec['entries'].pop()['blob'])
            undone += 1
            if not all_levels:
                break
        # write the restored bytes atomically in place, with the original mode and times
        with replaced_atomically(path, 'fbundo', entry.get('mode', st.st_mode & 0o7777)) as tmp:
            with open(tmp, 'wb') as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.utime(path, ns=(entry['atime_ns'], entry['mtime_ns']))
        # forget what was undone
        if rec_path != path:
            self._save(rec_path, None)
            rec['path'] = os.path.abspath(path)
        self._save(path, rec)
        for blob in popped:
            (self.root / 'blobs' / blob).unlink(missing_ok=True)
        return undone
