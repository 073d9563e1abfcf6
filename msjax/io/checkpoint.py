"""Orbax checkpoints of one fold: the latest state (for resume) and the best one.

Layout under a fold directory:
  latest/<epoch>/  train state + loop bookkeeping, rewritten every epoch
  best/<epoch>/    parameters, normalisation statistics and the metadata that
                   `bin/predict` needs to run alone (labels, feature config,
                   SSL identity, model config)

Saves are synchronous: orbax writes into a temporary directory and renames it,
so a process killed mid-save leaves the previous checkpoint intact; SIGINT and
SIGTERM wait for the save and its manifest to be complete. Once the
data is in place, `<epoch>/sha256.json` (written atomically) records a SHA-256 of
every file; loading checks each file against it and refuses a damaged one. The manifest
detects damage, not tampering: for a checkpoint from someone else, loading also checks
the metadata's fields and that its arrays are not far larger than their files (orbax
fills missing chunks, so a small checkpoint could declare arrays of any size).
In a multi-process run (msjax.runtime.distributed) every process saves and restores its
part through orbax, and process 0 writes the manifest once all parts are in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from msjax.errors import CheckpointError, WriteError, writing
from msjax.io.files import write_json
from msjax.io.rundir import FoldRunDir, best_step_dir
from msjax.runtime import distributed, interrupts
from msjax.runtime.distributed import Coordinator

log = logging.getLogger(__name__)

MANIFEST = "sha256.json"
# The metadata fields that predict reads, with their JSON types.
_METADATA_FIELDS = {
    "labels": list, "features": dict, "image_size": list, "model": dict, "ssl": dict,
}
_SSL_FIELDS = {
    "name": str, "identity": str, "normalize": bool, "finetune": bool, "seed": int,
    "config": dict,
}
_CHUNK = 1 << 20
# A checkpoint's arrays may take this many times the bytes of their files, plus _SLACK:
# orbax compresses them (trained weights hardly: 0.9) and fills chunks that are missing.
_EXPANSION, _SLACK = 16, 64 << 20
# How long a failed save's temporary directories must stay gone before its
# cleanup ends (writes that tensorstore still had in flight may recreate them).
_SETTLE_S = 1.0


def _manager(directory: Path) -> ocp.CheckpointManager:
    _quiet_abandoned_writes()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, enable_async_checkpointing=False, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


# Directories whose save is under way or failed: a write that fails there with
# nobody awaiting it belongs to a save whose own error the caller reports.
_saving: set[str] = set()


class _AbandonedWriteFilter(logging.Filter):
    """Drops asyncio's "<Task or future> exception was never retrieved" reports of
    writes that a save abandoned: exceptions raised in orbax's code, and those that
    name a directory being saved (tensorstore completes its futures from its own
    threads, so their exceptions carry no Python frames, only the path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in record.getMessage() or not record.exc_info:
            return True
        frames = traceback.extract_tb(record.exc_info[2])
        if any("orbax" in Path(frame.filename).parts for frame in frames):
            return False
        message = str(record.exc_info[1])
        return not any(directory in message for directory in _saving)


def _quiet_abandoned_writes() -> None:
    """Stops Python printing a traceback for each write that a failed save abandoned.

    When one write fails (a full disk), orbax stops waiting for the others: their
    failures are never retrieved, and asyncio logs each task's traceback when the task
    is collected. Orbax also closes its event loop while tensorstore still completes
    writes in its own threads; each completion then finds the loop closed and is
    reported as an unraisable "Event loop is closed" error. The save's own error is
    what the caller reports; every other report goes through.
    """
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _AbandonedWriteFilter) for f in asyncio_log.filters):
        asyncio_log.addFilter(_AbandonedWriteFilter())
    if getattr(sys.unraisablehook, "drops_closed_loop_reports", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        err = unraisable.exc_value
        if not (
            isinstance(err, RuntimeError)
            and str(err) == "Event loop is closed"
            and threading.current_thread() is not threading.main_thread()
        ):
            previous(unraisable)

    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook


def _remove_temporaries(directory: Path) -> None:
    """Removes the `*-tmp*` directories of a failed save, until none has reappeared
    for _SETTLE_S (at most 10 times that): orbax raises on the first failed write
    while tensorstore may still be finishing others into them."""
    start = quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < _SETTLE_S and time.monotonic() - start < 10 * _SETTLE_S:
        temporaries = list(directory.glob("*-tmp*"))
        for tmp in temporaries:
            shutil.rmtree(tmp, ignore_errors=True)
        if temporaries:
            quiet_since = time.monotonic()
        time.sleep(0.05)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def verify(step_dir: Path, *, required: bool = True) -> None:
    """Checks every file of a saved step against its SHA-256 manifest.

    Raises:
      CheckpointError: a missing or unreadable manifest (when `required`), or a
        file that is missing or whose bytes differ; the message names the file.
    """
    path = step_dir / MANIFEST
    if not path.is_file():
        if required:
            raise CheckpointError(
                f"{path}: missing, so the checkpoint's files cannot be checked (saved before "
                "msjax wrote SHA-256 manifests, or its save was cut short); train again, or "
                "pass --allow_unverified to bin/predict to load it unchecked"
            )
        log.warning("%s: no %s, files not checked (saved before manifests, or its save "
                    "was cut short)", step_dir, MANIFEST)
        return
    try:
        files = json.loads(path.read_text())["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
    except (ValueError, KeyError, TypeError, RecursionError) as err:  # nested too deep
        raise CheckpointError(f"{path}: unreadable checkpoint manifest ({err})") from None
    for name, digest in files.items():
        file = step_dir / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing from the checkpoint")
        if _sha256(file) != digest:
            raise CheckpointError(f"{file}: damaged (its SHA-256 differs from {MANIFEST})")


def _check_space(directory: Path, tree: Any, what: str) -> None:
    """Refuses a save that cannot fit before orbax starts one (whose background
    writers would fail noisily, one by one)."""
    needed = sum(leaf.nbytes for leaf in jax.tree.leaves(tree)) + (1 << 20)
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise WriteError(
            f"{directory}: cannot write {what}: No space left on device "
            f"({needed / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free)"
        )


def _save(directory: Path, step: int, args: ocp.args.Composite, tree: Any, what: str,
          coordinator: Coordinator | None) -> None:
    """Saves `args` (holding the arrays of `tree`) as `directory/<step>` plus its
    manifest; cleans up after a failure. SIGINT and SIGTERM wait until both are
    written (msjax.runtime.interrupts)."""
    with interrupts.deferred():
        _save_now(directory, step, args, tree, what, coordinator or distributed.current())


def _save_now(directory: Path, step: int, args: ocp.args.Composite, tree: Any,
              what: str, coordinator: Coordinator) -> None:
    step_dir = directory / str(step)
    main = coordinator.is_main()
    saving = str(directory.absolute()) + os.sep
    _saving.add(saving)
    try:
        with writing(directory, what):
            _check_space(directory.absolute(), tree, what)
            # A resumed epoch redoes a save cut short before its manifest.
            if main and step_dir.exists():
                shutil.rmtree(step_dir)
            coordinator.barrier(f"before saving {step_dir}")
            with _manager(directory) as mngr:  # every process writes its shards
                mngr.save(step, args=args)
            if main:
                hashes = {str(p.relative_to(step_dir)): _sha256(p) for p in _files(step_dir)}
                write_json({"files": hashes}, step_dir / MANIFEST)
            coordinator.barrier(f"saved {step_dir}")
        _saving.discard(saving)
    except BaseException as err:
        # The writes orbax had not started are coroutines it drops; Python would warn
        # about each as it is collected, after the save's own error is reported.
        warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)
        if main:
            _remove_temporaries(directory)
        # tensorstore reports a failed write as ValueError("... [os_error_code='28']").
        code = re.search(r"os_error_code='(\d+)'", str(err))
        if code and not isinstance(err, OSError):
            raise WriteError(
                f"{directory}: cannot write {what}: {os.strerror(int(code.group(1)))}"
            ) from None
        raise


def _restore(step_dir: Path, args: ocp.args.Composite) -> Any:
    """Restores one step; any orbax failure becomes a one-line CheckpointError."""
    try:
        with _manager(step_dir.parent) as mngr:
            return mngr.restore(int(step_dir.name), args=args)
    except Exception as err:  # noqa: BLE001 - orbax raises many types for damaged files
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"{step_dir}: cannot be restored ({type(err).__name__}: {reason})"
        ) from None


def save_latest(fold_dir: Path, epoch: int, state: Any, loop: dict,
                coordinator: Coordinator | None = None) -> None:
    """Saves the train state and the loop's JSON bookkeeping after `epoch`; every
    process of `coordinator`'s run (default: this program's) takes part."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop))
    _save(FoldRunDir(fold_dir).latest, epoch, args, state, "the resume checkpoint", coordinator)


def restore_latest(fold_dir: Path, abstract_state: Any) -> tuple[Any, dict] | None:
    """Returns (state, loop) from the last saved epoch, or None if there is none."""
    directory = FoldRunDir(fold_dir).latest
    if not directory.exists():
        return None
    with _manager(directory) as mngr:
        step = mngr.latest_step()
    if step is None:
        return None
    step_dir = directory / str(step)
    verify(step_dir, required=False)
    restored = _restore(
        step_dir,
        ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], dict(restored["loop"])


def save_best(fold_dir: Path, epoch: int, variables: Any, metadata: dict,
              coordinator: Coordinator | None = None) -> None:
    """Saves the variables that predict needs (params, norm stats) and metadata; every
    process of `coordinator`'s run (default: this program's) takes part."""
    args = ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), metadata=ocp.args.JsonSave(metadata)
    )
    _save(FoldRunDir(fold_dir).best, epoch, args, variables, "the best checkpoint", coordinator)


def load_metadata(checkpoint: Path, allow_unverified: bool = False) -> tuple[Path, dict]:
    """Finds and verifies the best checkpoint under `checkpoint` and reads its metadata.

    `allow_unverified` accepts one without a manifest (with a warning); a manifest
    that is there is always checked.

    Returns:
      (its best/<epoch> directory, metadata dict).
    """
    step_dir = best_step_dir(checkpoint)
    verify(step_dir, required=not allow_unverified)
    meta = _restore(step_dir, ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]
    if not isinstance(meta, dict) or "labels" not in meta:
        raise CheckpointError(f"{step_dir}: its metadata is not an msjax checkpoint's")
    wrong = _wrong_metadata(meta)
    if wrong:
        raise CheckpointError(f"{step_dir}: its metadata has wrong fields: {', '.join(wrong)}")
    return step_dir, dict(meta)


def _wrong_metadata(meta: dict) -> list[str]:
    """The metadata fields that predict reads and that have the wrong JSON type or value."""
    wrong = [k for k, kind in _METADATA_FIELDS.items() if not isinstance(meta.get(k), kind)]
    ssl = meta.get("ssl") if isinstance(meta.get("ssl"), dict) else {}
    wrong += [f"ssl.{k}" for k, kind in _SSL_FIELDS.items() if not isinstance(ssl.get(k), kind)]
    labels, size = meta.get("labels"), meta.get("image_size")
    if isinstance(labels, list) and not (
        labels and all(isinstance(x, str) for x in labels) and len(set(labels)) == len(labels)
    ):
        wrong.append("labels")
    if isinstance(size, list) and not (len(size) == 2 and all(type(n) is int for n in size)):
        wrong.append("image_size")
    return wrong


def restore_best(step_dir: Path, abstract_variables: Any) -> Any:
    """Restores the variables of a verified best/<epoch> (from load_metadata).

    Raises:
      CheckpointError: unreadable, holding arrays far larger than its files, or
        non-finite parameters.
    """
    _check_sizes(step_dir / "variables")
    variables = _restore(
        step_dir,
        ocp.args.Composite(variables=ocp.args.StandardRestore(abstract_variables)),
    )["variables"]
    if not all_finite(variables):
        raise CheckpointError(f"{step_dir}: holds non-finite (NaN or Inf) parameters")
    return variables


def _check_sizes(directory: Path) -> None:
    """Refuses arrays whose bytes would be far more than the files holding them, before
    any is allocated."""
    try:
        tree = ocp.StandardCheckpointHandler().metadata(directory.absolute()).tree
    except Exception as err:  # noqa: BLE001 - orbax raises many types for damaged files
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"{directory}: unreadable array metadata ({type(err).__name__}: {reason})"
        ) from None
    declared = sum(
        math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape")
    )
    stored = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    if declared > _EXPANSION * stored + _SLACK:
        raise CheckpointError(
            f"{directory}: declares {declared} bytes of arrays in {stored} bytes of files; "
            "not restored"
        )


def all_finite(tree: Any) -> bool:
    """Whether every array of `tree` holds only finite values (one host sync)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
    return bool(jax.device_get(jnp.stack(leaves).all())) if leaves else True


def abstract_like(tree: Any) -> Any:
    """Shape/dtype structs of `tree`, the restore target orbax needs."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
