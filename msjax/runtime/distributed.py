"""One training over several processes: JAX's distributed runtime and what follows from it.

A run spans several processes (one per host, or one per GPU) when `--distributed` is
given, when SLURM started it as a step of more than one task (`srun`), or when
JAX_COORDINATOR_ADDRESS is set. Every process then runs the same program on the same
shared workdir and feature cache, and the code that trains is handed a `Coordinator`
(`current()`: `JaxProcesses` once `initialize` started the runtime):

- the mesh spans every process's devices, and each process reads only its rows of
  every global batch (`local_rows`);
- process 0 (`is_main`) alone writes the run's files and prints; what only it may
  do first (take the workdir lock, write config.json, fill the feature cache) runs
  through `main_first`, and the other processes follow once it is done;
- `barrier` makes files one process wrote visible to the others before they go on.

With one process every method is a no-op or the obvious answer, so the same code
runs a laptop job and a cluster job.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from msjax.errors import MsjaxError, UsageError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Environment variables that make a run multi-process without --distributed.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
SLURM_TASKS_ENV = "SLURM_STEP_NUM_TASKS"  # set by srun for the tasks of one step
# How long the other processes wait for process 0's part of `main_first` (filling
# the feature cache of a large corpus takes hours): one week, in milliseconds.
_WAIT_MS = 7 * 24 * 3600 * 1000


class PeerError(MsjaxError):
    """Process 0 stopped on an error; the other processes stop with its exit code."""


def wanted(flag: bool | None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process joins a multi-process run.

    Args:
      flag: --distributed (True), --nodistributed (False) or neither (None: decided
        by the environment).
      environ: the environment to read.
    """
    if flag is not None:
        return flag
    if environ.get(COORDINATOR_ENV):
        return True
    tasks = environ.get(SLURM_TASKS_ENV, "1")
    return tasks.isdigit() and int(tasks) > 1


def initialize(
    flag: bool | None = None,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts JAX's distributed runtime when `wanted`; must run before any JAX
    computation. Arguments left None are found by JAX (SLURM, Open MPI, the
    JAX_COORDINATOR_ADDRESS variable). Returns whether the runtime was started.

    Raises:
      UsageError: the runtime could not start (a missing address or process id, or
        an unreachable coordinator), in one line.
    """
    if not wanted(flag) or jax.distributed.is_initialized():
        return jax.distributed.is_initialized()
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    except (ValueError, TypeError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise UsageError(
            f"--distributed: cannot start JAX's distributed runtime ({reason}); pass "
            "--coordinator_address, --num_processes and --process_id, or run under srun"
        ) from None
    if current().is_main():
        log.info("%d processes, %d devices in all", jax.process_count(), jax.device_count())
    return True


class Coordinator:
    """How the processes of one run work together; this one is a run of one process,
    where every method is a no-op or the obvious answer (`JaxProcesses` is the
    multi-process one). Every process of a run makes the same calls in the same order."""

    def process_count(self) -> int:
        """How many processes take part in the run."""
        return 1

    def is_main(self) -> bool:
        """Whether this process writes the run's files and prints (process 0)."""
        return True

    def barrier(self, name: str) -> None:
        """Waits until every process reached the barrier of the same `name`."""

    def main_first(
        self, name: str, fn: Callable[[], T], others: Callable[[], T] | None = None
    ) -> T:
        """Runs `fn` on process 0, then, once it has returned, `others` (default `fn`)
        on every other process.

        What process 0 alone may do first goes here: take a lock, write a file the
        others then compare with, fill the feature cache the others then read.

        Raises:
          what `fn` raised, on process 0; PeerError with the same exit code on the others.
        """
        return fn()

    def share(self, items: Sequence[T]) -> Sequence[T]:
        """This process's share of `items` (every process_count()-th, from its index)."""
        return items

    def all_min_max(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Element-wise minimum of `lo` and maximum of `hi` [F] over every process."""
        return lo, hi

    def local_rows(self, sharding: jax.sharding.Sharding, size: int) -> slice:
        """The rows of a [size, ...] batch split by `sharding` that live on this process's
        devices (all of them with one process).

        Raises:
          ValueError: the rows are not one contiguous range (a mesh not ordered by process).
        """
        spans = sorted(
            (index[0].start or 0, size if index[0].stop is None else index[0].stop)
            for index in sharding.addressable_devices_indices_map((size,)).values()
        )
        start, stop = spans[0][0], spans[-1][1]
        covered = sum(b - a for a, b in set(spans))
        if covered != stop - start:
            raise ValueError(f"this process's rows of the batch are not contiguous: {spans}")
        return slice(start, stop)


class JaxProcesses(Coordinator):
    """The processes of JAX's distributed runtime (`initialize`); with one process it
    answers as `Coordinator` does."""

    def __init__(self) -> None:
        self._calls = itertools.count()  # numbers each main_first, the same on every process

    def process_count(self) -> int:
        return jax.process_count()

    def is_main(self) -> bool:
        return jax.process_index() == 0

    def barrier(self, name: str) -> None:
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"msjax: {name}")

    def main_first(
        self, name: str, fn: Callable[[], T], others: Callable[[], T] | None = None
    ) -> T:
        if jax.process_count() == 1:
            return fn()
        key = f"msjax/{next(self._calls)}/{name}"
        client = _client()
        if self.is_main():
            try:
                result = fn()
            except BaseException as err:
                client.key_value_set(key, str(getattr(err, "exit_code", 1)))
                raise
            client.key_value_set(key, "0")
            return result
        try:
            code = int(client.blocking_key_value_get(key, _WAIT_MS))
        except Exception as err:  # noqa: BLE001 - the runtime's error types are not public
            reason = " ".join(str(err).split())[:200]
            raise PeerError(f"process 0 did not finish {name} ({reason})") from None
        if code:
            error = PeerError(f"process 0 stopped ({name}, exit code {code}); its error says why")
            error.exit_code = code
            raise error
        return (fn if others is None else others)()

    def share(self, items: Sequence[T]) -> Sequence[T]:
        return items[jax.process_index() :: jax.process_count()]

    def all_min_max(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if jax.process_count() == 1:
            return lo, hi
        gathered = multihost_utils.process_allgather(np.stack([lo, hi]))  # [P, 2, F]
        return gathered[:, 0].min(axis=0), gathered[:, 1].max(axis=0)


_SINGLE = Coordinator()
_processes: JaxProcesses | None = None


def current() -> Coordinator:
    """This program's coordinator: over JAX's distributed runtime once it is
    initialized (`initialize`), else the one of a single process."""
    global _processes
    if not jax.distributed.is_initialized():
        return _SINGLE
    if _processes is None:
        _processes = JaxProcesses()
    return _processes


def _client():
    """The distributed runtime's key-value client (JAX has no public accessor for it;
    orbax reaches it the same way)."""
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client
