"""Ctrl-C (SIGINT) and SIGTERM: one line saying what was kept, exit 130 / 143.

`install` (called once by msjax.cli.common) makes both signals raise `Interrupted` in
the main thread, where Python runs signal handlers; the code on the way out releases
locks and closes files, and the command prints `line()` in place of a traceback.
Work a signal must not cut in half (a checkpoint and its manifest, an output row) runs
under `deferred()`: the signal is held until the block is done, then raised.

What a rerun keeps is reported as work is saved (`kept`): the feature cache's entries,
each epoch's checkpoint, each finished fold, each predicted file's row.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from msjax.errors import Interrupted

RESUME = "rerun the same command to resume"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_kept = "before any work was saved"
_then = RESUME
_deferring = 0
_pending: int | None = None


def install() -> None:
    """SIGINT and SIGTERM raise `Interrupted` (main thread only, as Python allows)."""
    for signum in _SIGNALS:
        signal.signal(signum, _handle)


def uninstall() -> None:
    """Both signals back to the system's default: end the process, silently."""
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def _handle(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _deferring:
        _pending = _pending or signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Holds SIGINT and SIGTERM back for the block; one that arrived meanwhile is
    raised once the block completes. Only the main thread receives signals, so in
    other threads this does nothing."""
    global _deferring, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)


def kept(what: str, then: str = RESUME) -> None:
    """Records the work saved so far, as the interrupt line says it ("after fold 0 epoch
    2"), and what a user does next."""
    global _kept, _then
    _kept, _then = what, then


def line() -> str:
    """The one line an interrupted command prints."""
    return f"interrupted {_kept}; {_then}"


def exit_code(err: KeyboardInterrupt) -> int:
    """128 + the signal's number, as shells report it: 130 for SIGINT, 143 for SIGTERM."""
    return getattr(err, "exit_code", 128 + signal.SIGINT)
