"""Atomic file writes: readers see the old file, the new one, or none; never a part."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from msjax.errors import writing


def atomic_write(path: Path, write: Callable[[BinaryIO], None], what: str) -> None:
    """Calls `write(f)` on a fsynced temporary file beside `path`, then renames it over.

    A unique hidden name per writer: two writers of one path never share a temporary
    file, and the last rename wins with a complete file.

    Raises:
      WriteError: the disk is full or read-only, or the folder not writable (names
        `path` and `what`); the temporary file is removed.
    """
    path = Path(path)
    with writing(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_once(path: Path, data: bytes, what: str) -> bytes | None:
    """Creates `path` holding `data` unless it exists; returns None, or what is there.

    The complete file is hard-linked into place, which fails when the name is taken:
    of several processes creating one file at once exactly one succeeds, and no reader
    ever sees a partial file.

    Raises:
      WriteError: as `atomic_write`.
    """
    path = Path(path)
    with writing(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes()
        finally:
            Path(tmp).unlink(missing_ok=True)
    return None
