"""Outputs that appear whole or not at all: temp file beside the target, then rename.

Every file focusbridge writes goes through here (results, maps, reports, job status, undo
records, metadata rewrites), and so does the check that no output lands on an input.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError, one_line

# Temp files are named `.<stem>.partial-<pid>-<random><ext>` beside their target: the pid lets
# a later run into the same folder tell a SIGKILLed run's leftovers (pid gone) from a live
# run's (pid alive), and everything derived from a temp (the metadata merge's
# `..<stem>.partial-...partial-....fbmeta.tif`, exiftool's `..._exiftool_tmp`) carries its mark.
# A long stem is cut (its start) so that all of these fit wherever the target's name does.

_PARTIAL_RE = re.compile(r'^\..*\.partial-(\d+)-[0-9a-f]{8}')
_MARK_RE = re.compile(r'\.partial-\d+-[0-9a-f]{8}(?=\.|$)')
_STALE_AGE_S = 2.0  # younger leftovers may belong to a run that is just starting
_EXIFTOOL_SUFFIX = '_exiftool_tmp'  # exiftool edits a file in place through <name> + this


def shown(name) -> str:
    """A file name as a one-line message shows it: control characters escaped (`a\\nb.tif`,
    as `focusbridge brackets` prints them), quoted when empty or padded with spaces, which
    the line would lose."""
    from .brackets import printable

    text = printable(os.fsdecode(name))
    return f"'{text}'" if not text or text != text.strip() else text


def names_a_folder(name: str) -> bool:
    """'', '.', '/', 'out.tif/' name folders, whatever Path makes of them ('out.tif')."""
    return os.path.basename(name) in ('', '.', '..')


def file_path(name: str | os.PathLike) -> Path:
    """An output named by the user, as a Path; refused when the name is a folder's."""
    text = os.fsdecode(name)
    if names_a_folder(text):
        raise OutputError(shown(text), 'names a folder, not a file')
    return Path(text)


def _name_max(folder: Path) -> int:
    """The longest file name `folder` takes, in bytes."""
    try:
        return os.pathconf(folder, 'PC_NAME_MAX')
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no answer
        return 255


def check_target(path: Path, overwrite: bool) -> None:
    """Raise OutputError unless `path` can be written (used up front, before heavy work)."""
    folder = path.parent
    if '\n' in path.name or '\r' in path.name:
        raise OutputError(path, 'line breaks in output file names are not supported')
    if not folder.exists():
        raise OutputError(folder, 'folder does not exist')
    if not folder.is_dir():
        raise OutputError(folder, 'is not a folder')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(folder, 'not writable')
    if len(os.fsencode(path.name)) > _name_max(folder):
        raise OutputError(path, 'file name too long')
    if path.is_dir():
        raise OutputError(path, 'is a folder')
    if not overwrite and (path.exists() or path.is_symlink()):
        raise OutputError(path, 'exists; pass --overwrite to replace it')


def check_extension(path: Path, allowed: frozenset[str], what: str = 'output') -> None:
    """Fail up front on an output name whose extension picks no format (or that names a
    folder: say so, not that its name lacks an extension)."""
    ext = path.suffix.lower()
    if os.path.isdir(path):
        raise OutputError(shown(path), 'is a folder')
    if ext not in allowed:
        raise OutputError(
            shown(path),
            f'unsupported {what} format {ext or "(no extension)"!r} '
            f'(use {", ".join(sorted(allowed))})',
        )


def _identity(path: Path) -> tuple:
    """What makes two names one file: the resolved path, and (device, inode) when it exists
    (hard links, bind mounts and case-insensitive file systems all resolve to it)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        return (real, (st.st_dev, st.st_ino))
    except OSError:
        return (real, None)


def same_file(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def check_no_clash(writes: Sequence[tuple[str, Path]], reads: Sequence[tuple[str, Path]]) -> None:
    """Every path a command writes must be none of the paths it reads and none of its other
    outputs (after resolving `..`, symlinks and hard links). `writes`/`reads` are
    (role, path) pairs; the role names the clash in the message ("input frame", "--report")."""
    read_ids = [(role, p, _identity(p)) for role, p in reads]
    seen: list[tuple[str, Path, tuple]] = []
    for role, p in writes:
        ident = _identity(p)
        for other_role, other, other_id in read_ids:
            if same_file(ident, other_id):
                raise OutputError(
                    p, f'the {role} would replace the {other_role} {other}; choose another name'
                )
        for other_role, _other, other_id in seen:
            if same_file(ident, other_id):
                raise OutputError(p, f'is named for both the {other_role} and the {role}')
        seen.append((role, p, ident))


def check_outputs(
    writes: Sequence[tuple[str, Path]], reads: Sequence[tuple[str, Path]], overwrite: bool
) -> None:
    """Up front, before any pixel is read: no output replaces an input or another output, and
    every output can be created (folder writable, name free unless overwrite)."""
    check_no_clash(writes, reads)
    for _, out in writes:
        check_target(out, overwrite)


def clean_stale_partials(folder: Path) -> list[Path]:
    """Remove temp files left in `folder` by runs that were killed (SIGKILL, power loss):
    ours by name, whose process no longer exists. Returns what was removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        m = _PARTIAL_RE.match(name)
        if not m or _alive(int(m.group(1))):
            continue
        p = Path(folder) / name
        try:
            if now - os.lstat(p).st_mtime < _STALE_AGE_S or not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            os.unlink(p)
            removed.append(p)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def _temp_name(path: Path, mark: str) -> str:
    """`.<stem><mark><ext>`, the start of the stem cut off (at a character) so that the name,
    and exiftool's `<name>_exiftool_tmp`, fit in the folder. Its end stays: a temp made from
    a temp (the metadata merge's) keeps the first one's mark, which cleaning looks for."""
    room = _name_max(path.parent) - len(_EXIFTOOL_SUFFIX)
    room -= len(os.fsencode(f'.{mark}{path.suffix}'))
    stem = os.fsencode(path.stem)
    if len(stem) > room:
        stem = stem[len(stem) - max(room, 0) :]
        while stem and 0x80 <= stem[0] < 0xC0:  # a UTF-8 continuation byte: half a character
            stem = stem[1:]
    return f'.{os.fsdecode(stem)}{mark}{path.suffix}'


def _make_temp(path: Path, role: str = '') -> Path:
    """Create `.<stem>.partial-<pid>-<random>[.role]<ext>` beside `path` (same extension:
    writers and exiftool pick the format from it). Mode 0o666 minus umask, like any new file."""
    for _ in range(100):
        temp = path.with_name(
            _temp_name(path, f'.partial-{os.getpid()}-{secrets.token_hex(4)}{role}')
        )
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except PermissionError:
            raise OutputError(path.parent, 'not writable') from None
        except OSError as exc:
            raise OutputError(
                path.parent, f'cannot create a file here ({one_line(exc.strerror or exc)})'
            ) from None
        os.close(fd)
        return temp
    raise OutputError(path.parent, 'cannot create a temporary file')


def scratch_file(path: Path, role: str = '') -> Path:
    """A new empty temp file beside `path`, for data on its way to that output (a frame kept
    full size until the stack's crop is known). Named like every temp here, so a killed run's
    leftover is cleaned by the next run into that folder; the caller removes it."""
    return _make_temp(Path(path), f'.{role}' if role else '')


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_derived(temp: Path) -> None:
    """Remove `temp` and the files made from its name beside it (the metadata merge's temp
    of it, exiftool's `..._exiftool_tmp`), which may appear after a cancel interrupted them:
    their names hold temp's mark `.partial-<pid>-<random>`."""
    _remove(temp)
    marks = _MARK_RE.findall(temp.name)  # its own is the last (a temp of a temp has two)
    if not marks:
        return
    try:
        for name in os.listdir(temp.parent):
            if name.startswith('.') and marks[-1] in name:
                _remove(temp.parent / name)
    except OSError:
        pass


def _keep_previous(path: Path) -> Path | None:
    """Before replacing `path`, keep its current file under a temp name (a hard link, so no
    copy), so a failed commit of a set can put the old files back. None if nothing is there."""
    if not path.exists():
        return None
    backup = _make_temp(path, '.previous')
    _remove(backup)
    try:
        os.link(path, backup)
    except OSError:  # no hard links here (FAT): copy instead
        shutil.copy2(path, backup)
    return backup


def _commit(temp: Path, path: Path, overwrite: bool) -> None:
    """Move temp onto path. Without overwrite use link+unlink, which refuses to replace a
    file that appeared meanwhile; file systems without hard links (FAT) fall back to replace."""
    try:
        if not overwrite:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise OutputError(path, 'exists; pass --overwrite to replace it') from None
            except OSError:
                if path.exists():
                    raise OutputError(path, 'exists; pass --overwrite to replace it') from None
                os.replace(temp, path)
                return
            os.unlink(temp)
        else:
            os.replace(temp, path)
    except OSError as exc:
        raise OutputError(path, f'cannot write ({one_line(exc.strerror or exc)})') from None


@contextmanager
def atomic_outputs(paths: Sequence[str | Path], overwrite: bool = False) -> Iterator[list[Path]]:
    """Several outputs (result + depth map) that appear together or not at all.

    Every target is checked before anything is created, and stale temp files of killed runs
    in the target folders are removed. Yields temp paths (same folder, same extension); on
    success they are renamed onto their targets, on any exception (Ctrl-C included) all temps
    are removed and the targets are left as they were: new ones removed, replaced ones put
    back.
    """
    paths = [Path(p) for p in paths]
    check_no_clash([('output', p) for p in paths], [])
    for p in paths:
        check_target(p, overwrite)
    for folder in dict.fromkeys(p.parent for p in paths):
        clean_stale_partials(folder)
    temps: list[Path] = []
    committed: list[tuple[Path, Path | None]] = []  # (target, its previous file kept aside)
    try:
        for p in paths:
            temps.append(_make_temp(p))
        yield list(temps)
        for temp, p in zip(temps, paths, strict=True):
            previous = _keep_previous(p) if overwrite else None
            try:
                _commit(temp, p, overwrite)
            except BaseException:
                if previous is not None:  # the target still holds the previous file
                    _remove(previous)
                raise
            committed.append((p, previous))
    except BaseException:
        for temp in temps:
            _remove_derived(temp)
        for p, previous in reversed(committed):  # partial commit of a set: take it back
            if previous is not None:
                os.replace(previous, p)
            else:
                _remove(p)
        raise
    for _, previous in committed:
        if previous is not None:
            _remove(previous)


@contextmanager
def replaced(
    target: str | Path, role: str = '', mode: int | None = None, durable: bool = False
) -> Iterator[Path]:
    """Rewrite an existing file (or write a small one) whole or not at all.

    Yields a temp path beside `target` (same extension, so exiftool knows the format; named
    like every temp here, so a killed run's leftover is cleaned). When the block succeeds the
    temp file takes `target`'s place with `mode` (default: the target's current permissions);
    on any error it is removed and `target` is untouched. `durable`: the new bytes and name are
    on disk (fsync) before this returns, for records that must survive a power cut."""
    target = Path(target)
    temp = _make_temp(target, f'.{role}' if role else '')
    try:
        yield temp
        if durable:
            with open(temp, 'rb+') as f:
                os.fsync(f.fileno())
        try:
            os.chmod(temp, mode if mode is not None else os.stat(target).st_mode & 0o7777)
        except OSError:
            pass
        os.replace(temp, target)
    except BaseException:
        _remove_derived(temp)
        raise
    if durable:
        fsync_folder(target.parent)


def fsync_folder(path: Path) -> None:
    """Make new names in `path` durable (Windows has no folder fsync)."""
    if os.name == 'nt':
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` on success, remove it on error.

    Raises OutputError when the folder is missing or not writable, or when `path` exists and
    overwrite is False.
    """
    with atomic_outputs([path], overwrite) as (temp,):
        yield temp
