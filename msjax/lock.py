"""One writer per run directory: an exclusive lock file holding the writer's pid and host.

A whole run locks its workdir and, while it trains a fold, that fold's directory;
a `--fold=k` job locks only fold k's directory (so fold jobs run side by side) and
is refused while a whole run holds the workdir. A lock left by a process that died
on this host is taken over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from msjax.errors import UsageError, writing
from msjax.files import write_once

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class LockedError(UsageError):
    """Another live process writes the same directory."""


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def holder(directory: Path) -> dict | None:
    """The live {"pid", "host"} holding `directory`'s lock, or None (no lock, or a stale one)."""
    path = Path(directory) / LOCK_NAME
    try:
        held = json.loads(path.read_text())
        pid, host = int(held["pid"]), str(held["host"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # a lock cut short by a crash while being written
    if host == socket.gethostname() and not _alive(pid):
        return None
    return {"pid": pid, "host": host}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refuse(directory: Path, held: dict) -> LockedError:
    return LockedError(
        f"{directory}: in use by pid {held['pid']} on {held['host']} "
        f"(lock file {Path(directory) / LOCK_NAME}; delete it if that process is gone)"
    )


def check_free(directory: Path) -> None:
    """Raises LockedError when another live process holds `directory`'s lock."""
    held = holder(directory)
    if held is not None and held != _me():
        raise _refuse(directory, held)


@contextlib.contextmanager
def hold(directory: Path) -> Iterator[None]:
    """Holds `directory`'s lock for the block.

    Raises:
      LockedError: another live process holds it.
    """
    directory = Path(directory)
    path = directory / LOCK_NAME
    me = _me()
    # Created whole or not at all (`write_once`): a reader never sees a half-written lock.
    while write_once(path, json.dumps(me).encode(), "the lock file") is not None:
        held = holder(directory)
        if held is not None:
            raise _refuse(directory, held)
        log.warning("%s: taking over a stale lock", path)
        with writing(path, "the lock file"):
            path.unlink(missing_ok=True)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()) == me:
                path.unlink()
