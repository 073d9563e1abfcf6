"""Atomic file writes: readers see the old file, the new one, or none; never a part.

`write_json` and `write_text` write a whole file so; JSON is strict (non-finite floats
become null) and numpy values, tuples and paths are converted.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

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
        tmp = _complete_temporary(path, write)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_once(path: Path, data: bytes, what: str) -> bytes | None:
    """Creates `path` holding `data` unless it exists; returns None, or what is there.

    The complete file is hard-linked into place, which fails when the name is taken:
    of several processes creating one file at once exactly one succeeds, and no reader
    ever sees a partial file. The filesystem must support hard links (POSIX ones do).

    Raises:
      WriteError: as `atomic_write`.
    """
    path = Path(path)
    with writing(path, what):
        tmp = _complete_temporary(path, lambda f: f.write(data))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes()
        finally:
            tmp.unlink(missing_ok=True)
    return None


def _complete_temporary(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """A fsynced hidden file beside `path` (a unique name per writer) holding what
    `write(f)` wrote; removed again when writing fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_json(obj: Any, path: Path) -> None:
    """Writes `obj` as indented JSON, atomically.

    numpy scalars and arrays, tuples and paths are converted; non-finite floats
    become null, so the file is strict JSON.
    """
    atomic_write(path, lambda f: f.write(json_bytes(obj)), "the file")


def write_text(text: str, path: Path) -> None:
    """Writes `text` to `path`, atomically."""
    atomic_write(path, lambda f: f.write(text.encode()), "the file")


def json_bytes(obj: Any) -> bytes:
    """The bytes `write_json` writes for `obj`."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False)
    return (text + "\n").encode()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
