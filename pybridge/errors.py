"""User-facing errors and exit codes: the one place a failure becomes a message and a status.

Every message is one line and names the file it is about. The command line (stack, run-job,
meta, lens) reports every failure through `describe_failure` / `print_failure`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse's own status for a bad command line
EXIT_CANCELLED = 130  # what a shell reports for Ctrl-C


def one_line(text: object) -> str:
    """Collapse any message (bytes from LibRaw, multi-line library text) to one tidy line."""
    if isinstance(text, bytes):
        text = text.decode('utf-8', 'replace')
    return ' '.join(str(text).split())


class FocusbridgeError(Exception):
    """Base class for every error focusbridge reports to the user (one line)."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class PathError(FocusbridgeError):
    """A problem with one file: ``str()`` is ``<file>: <problem>``."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = Path(path) if path is not None else None
        self.problem = one_line(problem)
        super().__init__(f'{path}: {self.problem}' if path is not None else self.problem)


class InputError(PathError):
    """An input file is missing, unreadable or of an unsupported kind."""


class OutputError(PathError):
    """An output cannot be written (folder missing or read-only, file exists, bad format)."""


class ManifestError(PathError):
    """A job manifest is unreadable or asks for something invalid."""


class OptionError(FocusbridgeError):
    """An option has a value of the wrong type or outside its choices."""

    def __init__(self, name: str, problem: str):
        self.name = name
        super().__init__(f"option '{name}' {problem}")


class StackError(FocusbridgeError):
    """The bracket cannot be stacked as asked (reference outside it, sources miscounted)."""


class Cancelled(FocusbridgeError):
    """The user cancelled the run (cancel file, Ctrl-C, SIGTERM)."""

    def __init__(self, message: str = 'cancelled'):
        super().__init__(message)


def describe_failure(exc: BaseException) -> tuple[int | None, str]:
    """Exit status and one-line message for anything that ends a run; (None, '') for what
    should propagate (SystemExit, or any error when FOCUSBRIDGE_DEBUG is set)."""
    if isinstance(exc, (Cancelled, KeyboardInterrupt)):
        return EXIT_CANCELLED, 'cancelled'
    if isinstance(exc, FocusbridgeError):
        return EXIT_ERROR, str(exc)
    if isinstance(exc, OSError):  # disk full, permissions changed under us...
        where = f'{exc.filename}: ' if exc.filename else ''
        return EXIT_ERROR, f'{where}{one_line(exc.strerror or exc)}'
    if isinstance(exc, MemoryError):
        return EXIT_ERROR, 'not enough memory (a smaller --max-pixels or fewer frames at once)'
    if isinstance(exc, Exception) and not os.environ.get('FOCUSBRIDGE_DEBUG'):
        # a bug: still one line; FOCUSBRIDGE_DEBUG=1 shows the traceback
        return EXIT_ERROR, (
            f'internal error: {type(exc).__name__}: {one_line(exc)} '
            f'(set FOCUSBRIDGE_DEBUG=1 for details)'
        )
    return None, ''


def print_failure(code: int, message: str) -> None:
    kind = '' if code == EXIT_CANCELLED else 'error: '
    print(f'focusbridge: {kind}{one_line(message)}', file=sys.stderr)


def print_warning(message: str) -> None:
    print(f'focusbridge: warning: {one_line(message)}', file=sys.stderr)
