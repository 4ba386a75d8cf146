"""User-facing errors: every message is one line and names the file it is about."""

from __future__ import annotations

from pathlib import Path


def one_line(text: object) -> str:
    """Collapse any message (bytes from LibRaw, multi-line library text) to one tidy line."""
    if isinstance(text, bytes):
        text = text.decode('utf-8', 'replace')
    return ' '.join(str(text).split())


class StackError(Exception):
    """Base class for every error focusbridge reports to the user."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class _PathError(StackError):
    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path) if path is not None else None
        self.problem = one_line(problem)
        super().__init__(f'{path}: {self.problem}')


class InputError(_PathError):
    """An input file is missing, unreadable or of an unsupported kind."""


class OutputError(_PathError):
    """An output cannot be written (folder missing or read-only, file exists, bad format)."""


class Cancelled(StackError):
    """The user cancelled the run (cancel file, Ctrl-C)."""

    def __init__(self, message: str = 'cancelled'):
        super().__init__(message)
