"""Errors that msjax reports to users, each with the exit code its commands use.

Every message is meant to be shown as it is: one line that names the file (or the
flag) and says what is wrong. Layout errors are the one exception: they add the
expected directory tree below that line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


class MsjaxError(Exception):
    """Base class; `exit_code` is what `bin/` commands exit with."""

    exit_code = 1


class UsageError(MsjaxError):
    """Bad flags or arguments (exit code 2)."""

    exit_code = 2


class DataError(MsjaxError):
    """Bad input data: audio, labels, dataset layouts, caches (exit code 3)."""

    exit_code = 3


class AudioError(DataError):
    """An audio file that cannot be used (unreadable, empty, NaN/Inf)."""


class LayoutError(DataError):
    """A dataset directory that does not have the expected layout."""


class LabelError(DataError):
    """An unknown emotion code or an unparseable label line."""


class CheckpointError(DataError):
    """A checkpoint or weights file that is missing, incomplete or mismatched."""


class WriteError(DataError):
    """A file or directory that cannot be written (read-only or full disk, permissions)."""


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turns an OSError raised inside into a one-line WriteError naming `path` and `what`."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err)
        raise WriteError(f"{path}: cannot write {what}: {reason}") from err


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (msjax.runtime.interrupts); exit code 128 + the signal's number.

    A KeyboardInterrupt, so that no `except Exception` swallows it and code that
    cleans up after Ctrl-C does so after SIGTERM too.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum
