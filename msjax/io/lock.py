"""One writer per run directory: an exclusive lock file holding the writer's pid and host.

A whole run locks its workdir and, while it trains a fold, that fold's directory;
a `--fold=k` job locks only fold k's directory (so fold jobs run side by side) and
is refused while a whole run holds the workdir. A lock left by a process that died
on this host is taken over. Besides, every job on a workdir holds a shared flock on
its USERS_NAME file (`share`), so a job can tell whether it is the only one there.

The lock file appears complete or not at all (written aside, then hard-linked into
place, which fails when the name is taken). Deciding that a lock is stale and
replacing it happens under an flock on a guard file beside it, which the kernel
releases when its holder dies: of processes racing for one lock, fresh or stale,
exactly one gets it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from msjax.errors import UsageError, writing
from msjax.io.files import write_once

log = logging.getLogger(__name__)

T = TypeVar("T")

LOCK_NAME = ".lock"
GUARD_NAME = ".lock.guard"
USERS_NAME = ".lock.users"
# An unreadable lock file younger than this may still be in writing (by an older
# msjax that wrote it in place), so it counts as held.
_YOUNG_S = 10.0


class LockedError(UsageError):
    """Another live process writes the same directory."""


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def holder(directory: Path) -> dict | None:
    """The live {"pid", "host"} holding `directory`'s lock, or None (no lock, or a
    stale one). An unreadable lock younger than _YOUNG_S gives {"pid": None, "host": None}."""
    path = Path(directory) / LOCK_NAME
    try:
        data = path.read_bytes()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    return _live_holder(data, age)


def _live_holder(data: bytes, age: float) -> dict | None:
    """The live holder named by a lock file's bytes, None when the lock is stale."""
    try:
        held = json.loads(data)
        pid, host = int(held["pid"]), str(held["host"])
    except (ValueError, KeyError, TypeError):
        return {"pid": None, "host": None} if age < _YOUNG_S else None
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
    path = Path(directory) / LOCK_NAME
    if held["pid"] is None:
        return LockedError(f"{directory}: in use (its lock file {path} is being written)")
    return LockedError(
        f"{directory}: in use by pid {held['pid']} on {held['host']} "
        f"(lock file {path}; delete it if that process is gone)"
    )


def check_free(directory: Path) -> None:
    """Raises LockedError when another live process holds `directory`'s lock."""
    held = holder(directory)
    if held is not None and held != _me():
        raise _refuse(directory, held)


@contextlib.contextmanager
def _guard(directory: Path) -> Iterator[None]:
    """Serialises the lock decisions of all processes on `directory` for the block."""
    fd = os.open(directory / GUARD_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _acquire(directory: Path, me: dict) -> None:
    """Publishes `me` as `directory`'s lock, replacing a stale one (under the guard)."""
    path = directory / LOCK_NAME
    data = json.dumps(me).encode()
    while (existing := write_once(path, data, "the lock file")) is not None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            continue  # released meanwhile
        held = _live_holder(existing, age)
        if held is not None:
            raise _refuse(directory, held)
        log.warning("%s: taking over a stale lock", path)
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def share(directory: Path, setup: Callable[[bool], T]) -> Iterator[T]:
    """Counts this process among the jobs using `directory` for the block (whole runs,
    fold jobs, every process of a multi-process run): a shared flock on its USERS_NAME
    file, which the kernel releases when the process dies.

    On entry, under the guard, `setup(alone)` runs and the block gets its result;
    `alone` says whether no other live job uses the directory, so a job that is alone
    may replace what another would compare against.
    """
    directory = Path(directory)
    with writing(directory / USERS_NAME, "the lock file"):
        fd = os.open(directory / USERS_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with _guard(directory):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            result = setup(alone)
            # Under the guard: no other job decides while this one turns exclusive to shared.
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield result
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def hold(directory: Path) -> Iterator[None]:
    """Holds `directory`'s lock for the block.

    Raises:
      LockedError: another live process holds it.
    """
    directory = Path(directory)
    path = directory / LOCK_NAME
    me = _me()
    with writing(path, "the lock file"):
        directory.mkdir(parents=True, exist_ok=True)
        with _guard(directory):
            _acquire(directory, me)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError), _guard(directory):
            if json.loads(path.read_text()) == me:
                path.unlink()
