"""exiftool through pyexiftool: one long-lived exiftool process per run.

Everything that talks to exiftool goes through :func:`open_exiftool` (one ``-stay_open``
process, our ``focusbridge.config`` loaded first) and the small helpers below.  File names are
passed as absolute paths in pyexiftool's argument list (one argument per line, never a shell).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pybridge.errors import Cancelled, PathError, one_line  # the one error model

CONFIG_FILE = Path(__file__).with_name('focusbridge.config')

#: Arguments of every command sent to the exiftool process (exiftool puts them after the
#: command's own, so they must not include options a command wants to vary: no ``-n``, no
#: ``-G``).  Read calls ask for numeric values per tag with a ``#`` suffix or pass ``-n``.
COMMON_ARGS = ['-a', '-charset', 'filename=utf8']

INSTALL_HINT = (
    'exiftool not found: install it (Debian/Ubuntu: apt-get install '
    'libimage-exiftool-perl; macOS: brew install exiftool) or pass --no-metadata'
)


class ExifError(PathError):
    """A metadata problem; ``str()`` is one line, ``<file>: <problem>`` when about a file."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(path, message)


class ExiftoolMissing(ExifError):
    """exiftool is not installed (or not runnable)."""

    def __init__(self, message: str = INSTALL_HINT):
        super().__init__(message)


class ExifCancelled(Cancelled):
    """The caller asked to stop (``should_stop``); everything already written is recorded.
    ``done``: what the run had finished by then (for ``set_lens``, the LensReport of the
    files it wrote, each undoable), or None."""

    def __init__(self, done=None):
        super().__init__()
        self.done = done


def find_exiftool() -> str | None:
    """Path of the exiftool executable, or None.  ``FOCUSBRIDGE_EXIFTOOL`` overrides PATH."""
    override = os.environ.get('FOCUSBRIDGE_EXIFTOOL')
    if override is not None:
        p = shutil.which(override) if os.sep not in override else override
        if p and os.path.isfile(p) and os.access(p, os.X_OK):
            return str(p)
        return None
    return shutil.which('exiftool')


def require_exiftool() -> str:
    """Return the exiftool path or raise :class:`ExiftoolMissing` with install instructions."""
    exe = find_exiftool()
    if exe is None:
        raise ExiftoolMissing()
    return exe


class _Eof(Exception):
    """exiftool closed its output: the process is gone."""


def _read_until(fd: int, end: bytes, block_size: int) -> bytes:
    """Read exiftool's output up to its ``{ready}`` marker.  Replaces pyexiftool's reader, which
    loops for ever at 100 % CPU once exiftool has died (a closed pipe reads b'' endlessly)."""
    chunks, tail = [], b''
    while not tail.rstrip().endswith(end):
        chunk = os.read(fd, block_size)
        if not chunk:
            raise _Eof()
        chunks.append(chunk)
        tail = (tail + chunk)[-(len(end) + 64) :]
    return b''.join(chunks)


def _stopped(et) -> ExifError:
    """The error for an exiftool that died under us, with how it ended."""
    proc = getattr(et, '_process', None)
    code = None
    if proc is not None:
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # output closed but still alive: end it
            proc.kill()
            code = proc.wait()
        _alive(et)  # lets pyexiftool notice, quietly, so it does not warn again at exit
    if code is None:
        how = 'as it started'
    elif code < 0:
        try:
            how = f'(killed by signal {signal.Signals(-code).name})'
        except ValueError:
            how = f'(killed by signal {-code})'
    else:
        how = f'(exit status {code})'
    return ExifError(f'exiftool stopped unexpectedly {how}')


def _alive(et) -> bool:
    with warnings.catch_warnings():  # pyexiftool warns (multi-line) when it finds it dead
        warnings.simplefilter('ignore')
        return bool(et.running)


def _own_session(signum: int):
    """exiftool's preexec_fn (Linux): a session of its own, so that a terminal's Ctrl-C, which
    reaches the whole foreground process group, is the bridge's to handle. exiftool sets its own
    SIGINT handler (an inherited SIG_IGN does not survive it) and exits 1 on SIGINT, which failed
    the metadata merge that a first Ctrl-C lets finish. The bridge stops it itself when it must
    (:func:`interrupt`, ``terminate``), and PR_SET_PDEATHSIG (what pyexiftool's own preexec_fn
    sets) ends it when the bridge dies, SIGKILL included: at the end of its input exiftool
    ``-stay_open`` waits for ever. Elsewhere it stays in the bridge's group (no death signal)."""
    if not sys.platform.startswith('linux'):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        os.setsid()
        prctl(1, signum)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the bridge died before the line above
            os._exit(1)

    return preexec


@contextmanager
def open_exiftool(executable: str | None = None) -> Iterator[ExifToolHelper]:  # noqa: F821
    """One long-lived exiftool process (pyexiftool ``ExifToolHelper``) for the whole run.

    The process is started with ``-config exif/focusbridge.config`` (which must come first on
    exiftool's command line, hence ``config_file=``) and :data:`COMMON_ARGS`.  An exiftool that
    dies (at start or later) raises a one-line ExifError instead of hanging the run.
    """
    exe = executable or require_exiftool()
    try:
        import exiftool.exiftool as pyexiftool
        from exiftool import ExifToolHelper
    except ImportError as e:  # pragma: no cover - pyexiftool is a dependency
        raise ExifError(f'pyexiftool is not installed ({e})') from e
    pyexiftool._read_fd_endswith = _read_until  # pyexiftool 0.5 reads through this function
    pyexiftool._set_pdeathsig = _own_session  # and makes its Popen's preexec_fn with this one
    et = ExifToolHelper(
        executable=exe,
        common_args=list(COMMON_ARGS),
        config_file=CONFIG_FILE,
        encoding='utf-8',
        check_execute=False,
        check_tag_names=False,
    )
    from exiftool.exceptions import ExifToolNotRunning

    try:
        with warnings.catch_warnings():  # pyexiftool warns (multi-line) when it finds it dead
            warnings.simplefilter('ignore')
            et.run()
    # started, then died: at the version request, or before it (then pyexiftool finds it dead)
    except (_Eof, BrokenPipeError, RuntimeError, ExifToolNotRunning) as e:
        raise _stopped(et) from e
    except OSError as e:  # not there, not executable
        raise ExiftoolMissing(f'{INSTALL_HINT} ({exe}: {one_line(e)})') from e
    except Exception as e:  # ExifToolVersionError: something that is not exiftool
        if _alive(et):
            et.terminate()
        raise ExifError(f'{exe} does not work as exiftool ({one_line(e)})') from e
    try:
        yield et
    finally:
        if _alive(et):
            try:
                et.terminate()
            except Exception:  # pragma: no cover - best effort at shutdown
                pass


def interrupt(et) -> None:
    """Stop exiftool and wait for it: it defers SIGINT while it replaces a file, so it stops
    between files, never half-way through one."""
    proc = getattr(et, '_process', None)
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def maybe_exiftool(et=None):
    """Use the caller's exiftool process when given; else this thread's kept one once
    :func:`keep_exiftool` was called in this process; else start one for this block."""
    if et is not None:
        yield et
    elif _kept.wanted:
        yield from _kept_exiftool()
    else:
        with open_exiftool() as new:
            yield new


class _Kept(threading.local):
    wanted = False  # class attribute: set for every thread by keep_exiftool()
    stack: ExitStack | None = None
    et = None


_kept = _Kept()


def keep_exiftool() -> None:
    """From now on, calls without an exiftool of their own share one per thread, kept between
    calls, in this process: for batch and Dask workers, which merge bracket after bracket.
    Starting exiftool and compiling its writers costs more CPU than a merge's own work (on
    8 x 2 MP TIFFs, 0.68 s a merge with a fresh exiftool, 0.30 s with a kept one). A kept
    exiftool ends at interpreter exit (:func:`end_kept_exiftool`: a process pool's worker, which
    skips atexit, calls it itself) or with its thread or process (PR_SET_PDEATHSIG,
    :func:`_own_session`); one that died meanwhile is started again."""
    if not _Kept.wanted:
        _Kept.wanted = True
        atexit.register(end_kept_exiftool)


@contextmanager
def exiftool_kept():
    """:func:`keep_exiftool` for this block, in this thread only (a queue of stacks run one
    after another, as darktable's batch job): the kept exiftool ends with the block."""
    if _kept.wanted:  # kept already (a pool or Dask worker)
        yield
        return
    _kept.wanted = True  # this thread's own attribute, over the class's default
    try:
        yield
    finally:
        del _kept.wanted
        end_kept_exiftool()


def _kept_exiftool():
    if _kept.et is not None and not _alive(_kept.et):
        end_kept_exiftool()
    if _kept.et is None:
        stack = ExitStack()
        _kept.et = stack.enter_context(open_exiftool())
        _kept.stack = stack
    try:
        yield _kept.et
    except BaseException:
        end_kept_exiftool()  # a failed call may leave it mid-command: never reuse it
        raise


def end_kept_exiftool() -> None:
    """End this thread's kept exiftool, if any."""
    stack, _kept.stack, _kept.et = _kept.stack, None, None
    if stack is not None:
        stack.close()


# --------------------------------------------------------------------------------------------
# running commands


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str
    counts: dict = field(default_factory=dict)

    def errors_by_file(self) -> dict[str, str]:
        return messages_by_file(self.stderr, 'Error')

    def warnings_by_file(self) -> dict[str, str]:
        return messages_by_file(self.stderr, 'Warning')


_COUNT_RE = re.compile(r'^\s*(\d+) (image files|files|directories) ([a-z \']+?)\s*$', re.M)


def parse_counts(stdout: str) -> dict[str, int]:
    """exiftool's summary lines -> {'updated': n, 'unchanged': n, 'created': n, 'errors': n, ...}."""
    counts: dict[str, int] = {}
    for m in _COUNT_RE.finditer(stdout or ''):
        n, what = int(m.group(1)), m.group(3)
        if what.startswith("weren't updated due to errors") or what.startswith('weren\'t created'):
            counts['errors'] = counts.get('errors', 0) + n
        else:
            counts[what.split()[0]] = counts.get(what.split()[0], 0) + n
    return counts


def messages_by_file(stderr: str, kind: str) -> dict[str, str]:
    """``Error: <msg> - <file>`` lines -> {file: msg} (the last message per file wins)."""
    out: dict[str, str] = {}
    for line in (stderr or '').splitlines():
        if not line.startswith(kind + ':'):
            continue
        body = line[len(kind) + 1 :].strip()
        if ' - ' in body:
            msg, _, fname = body.rpartition(' - ')
            out[fname] = msg.strip()
        else:
            out.setdefault('', body)
    return out


def check_arg(arg: str, path: object = None) -> str:
    if '\n' in arg or '\r' in arg:
        raise ExifError('file names and values with line breaks are not supported', path)
    try:
        arg.encode('utf-8')
    except UnicodeEncodeError:  # bytes that are not UTF-8 in a name (surrogateescape)
        if path is None:
            raise ExifError(f'{arg!r} is not valid UTF-8, which exiftool cannot be given') from None
        raise ExifError(
            'file name is not valid UTF-8, which exiftool cannot be given; rename the file', path
        ) from None
    return arg


def fname(path: str | os.PathLike) -> str:
    """Absolute file name as an exiftool argument (never starts with '-' or '#')."""
    return check_arg(os.path.abspath(os.fspath(path)), path)


def run(et, args: Iterable[str]) -> Result:
    args = [check_arg(a) for a in args]
    try:
        stdout = et.execute(*args)
    except UnicodeDecodeError as e:
        raise ExifError(f'exiftool printed text that is not UTF-8 ({e})') from e
    except (_Eof, BrokenPipeError) as e:
        raise _stopped(et) from e
    status = et.last_status if et.last_status is not None else 0
    stderr = et.last_stderr or ''
    return Result(int(status), stdout or '', stderr, parse_counts(stdout))


def read_json(
    et,
    files: list[str | os.PathLike],
    tags: Iterable[str] = (),
    extra: Iterable[str] = (),
    groups: str = '-G1',
) -> tuple[dict[str, dict], Result]:
    """Read ``tags`` (e.g. ``'FocusDistanceUpper#'``) of many files in one exiftool call.

    Returns ({absolute path: {'Group:Tag': value}}, result); files exiftool could not read are
    missing from the dict (their messages are in ``result.errors_by_file()``) or carry an
    ``ExifTool:Error`` key.
    """
    names = [fname(f) for f in files]
    if not names:
        return {}, Result(0, '', '')
    tags = list(tags)
    if tags:
        tags.append('Error')  # exiftool reports unreadable files through this tag
    args = ['-j', '-struct', groups, *extra, *[f'-{t}' for t in tags], *names]
    res = run(et, args)
    data: dict[str, dict] = {}
    if res.stdout.strip():
        try:
            items = json.loads(res.stdout)
        except json.JSONDecodeError as e:
            raise ExifError(f'could not parse exiftool output ({e})') from e
        for item in items:
            src = item.pop('SourceFile', None)
            if src is not None:
                data[os.path.abspath(src)] = item
    return data, res


def tag(meta: dict, *names: str, default=None):
    """First present value among ``'Group:Tag'`` names (``'*:Tag'`` matches any group)."""
    for name in names:
        if name.startswith('*:'):
            suffix = name[1:]
            for k, v in meta.items():
                if k.endswith(suffix) and k.count(':') == suffix.count(':'):
                    if v not in (None, ''):
                        return v
        elif meta.get(name) not in (None, ''):
            return meta[name]
    return default
