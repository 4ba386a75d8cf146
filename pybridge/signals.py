"""Ctrl-C and SIGTERM: a run stops at a safe point, never between committing its outputs.

Before the outputs are written a signal cancels at once (temp files go, nothing is left).
Once writing has begun, the first signal is held back and the run finishes: the result,
its maps and its metadata are committed together and the run says "done". A second signal
while still writing forces the cancel, and every temp file is removed. After the commit the
run is finished and signals no longer change its outcome; once a cancel is under way, further
signals are ignored too, so they cannot interrupt the clean-up (or the wait for the reading
thread, which OpenCV would answer with an abort at exit).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_CANCELLABLE, _COMMITTING, _CANCELLING, _FINISHED = (
    'cancellable',
    'committing',
    'cancelling',
    'finished',
)
_state = {'phase': _CANCELLABLE, 'held': False}


def install() -> None:
    """Route SIGINT and SIGTERM through this module (the command line does this once)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)
    _state.update(phase=_CANCELLABLE, held=False)


def _on_signal(signum, frame) -> None:
    phase = _state['phase']
    if phase == _CANCELLING:
        return  # cleaning up already; interrupting that would leave files
    if phase == _CANCELLABLE or (phase == _COMMITTING and _state['held']):
        _state['phase'] = _CANCELLING
        # KeyboardInterrupt, not an Exception: no library's `except Exception` swallows it
        raise KeyboardInterrupt(f'cancelled by signal {signum}')
    _state['held'] = True


def note_late_cancel() -> None:
    """Say so when a cancel came too late to stop the run (it finished instead)."""
    if _state['held']:
        print(
            "focusbridge: the cancel came while the result was being written; it was "
            "finished instead",
            file=sys.stderr,
        )


@contextmanager
def committing() -> Iterator[None]:
    """The write-and-commit phase: hold back the first signal, finish when it succeeds."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only delivered to the main thread
        return
    previous = _state['phase']
    _state['phase'] = _COMMITTING
    try:
        yield
    except BaseException:
        if _state['phase'] == _COMMITTING:
            _state['phase'] = previous
        raise
    finished()


def finished() -> None:
    """The outcome is decided: from now on, interpreter shutdown included (which would put
    back the default handlers, and a signal would then kill the process with no exit code of
    ours), signals are ignored."""
    _state['phase'] = _FINISHED
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, signal.SIG_IGN)
