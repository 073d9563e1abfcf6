"""Errors that msjax reports to users, each with the exit code its commands use.

Every message is meant to be shown as it is: one line that names the file (or the
flag) and says what is wrong. Layout errors are the one exception: they add the
expected directory tree below that line.
"""


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
