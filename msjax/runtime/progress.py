"""What a command shows while it runs: progress bars and plain log lines.

One place decides. `configure` (called once by msjax.cli.common) sets which log lines
each logger prints and whether bars draw, from the verbosity:

  --quiet (or -v -1)  only the run's record (`line`: one per epoch, one per fold) and
                      msjax's warnings; no bars
  0 (the default)     plus msjax's info lines (what is being prepared) and the bars
  1                   plus msjax's debug lines and other libraries' warnings
  2                   plus everything other libraries log

Log lines go to stderr as plain text (absl's handler would prefix each with time,
thread and file), a warning as "warning: ...". Bars are tqdm on stderr with an ETA,
drawn only when stderr is a terminal, so the logs of batch jobs hold lines only.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable

from tqdm import tqdm

RECORD = "msjax.record"
_record = logging.getLogger(RECORD)
_bars_allowed = True


def bar(items: Iterable | None = None, *, desc: str, total: float | None = None,
        unit: str = "it", unit_scale: bool = False, leave: bool = False) -> tqdm:
    """A progress bar over `items` (or a manual one, updated by `.update(n)`)."""
    return tqdm(items, desc=desc, total=total, unit=unit, unit_scale=unit_scale,
                leave=leave, disable=None if _bars_allowed else True)


def line(message: str, *args: object) -> None:
    """One line of a run's record (an epoch, a fold): printed at every verbosity."""
    _record.info(message, *args)


class _Lines(logging.Handler):
    """Writes each record as one line on stderr, above any bar being drawn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: a failed write is reported, not raised
            self.handleError(record)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not record.name.startswith("msjax"):
            text = f"{record.name}: {text}"
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return text


def configure(verbosity: int = 0, quiet: bool = False) -> None:
    """Sets up logging and bars for a command (see the module docstring)."""
    global _bars_allowed
    quiet = quiet or verbosity < 0
    _bars_allowed = not quiet
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _Lines()
    handler.setFormatter(_Format("%(message)s"))
    root.addHandler(handler)
    # Other libraries log through the root's level; Python warnings go the same way.
    logging.captureWarnings(True)
    root.setLevel({0: logging.ERROR, 1: logging.WARNING}.get(max(verbosity, 0), logging.DEBUG))
    own = logging.WARNING if quiet else logging.INFO if verbosity < 1 else logging.DEBUG
    logging.getLogger("msjax").setLevel(own)
    _record.setLevel(logging.INFO)
    # transformers and huggingface_hub print through handlers of their own, at the
    # level these variables give when they load (a user's setting wins).
    library = "error" if verbosity < 1 else "warning" if verbosity == 1 else "info"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", library)
    os.environ.setdefault("HF_HUB_VERBOSITY", library)
    # orbax reports a failed background write through absl with a traceback before
    # the save raises; the raised error is what gets reported, in one line.
    logging.getLogger("absl").setLevel(logging.CRITICAL if verbosity < 2 else logging.NOTSET)
