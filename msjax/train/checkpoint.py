"""Orbax checkpoints of one fold: the latest state (for resume) and the best one.

Layout under a fold directory:
  latest/<epoch>/  train state + loop bookkeeping, rewritten every epoch
  best/<epoch>/    parameters, normalisation statistics and the metadata that
                   `bin/predict` needs to run alone (labels, feature config,
                   SSL identity, model config)

Saves are synchronous: orbax writes into a temporary directory and renames it,
so a process killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from msjax.errors import CheckpointError


def _manager(directory: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, enable_async_checkpointing=False, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(directory.absolute(), options=options)


def save_latest(fold_dir: Path, epoch: int, state: Any, loop: dict) -> None:
    """Saves the train state and the loop's JSON bookkeeping after `epoch`."""
    with _manager(fold_dir / "latest") as mngr:
        mngr.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)
            ),
        )


def restore_latest(fold_dir: Path, abstract_state: Any) -> tuple[Any, dict] | None:
    """Returns (state, loop) from the last saved epoch, or None if there is none."""
    directory = fold_dir / "latest"
    if not directory.exists():
        return None
    with _manager(directory) as mngr:
        step = mngr.latest_step()
        if step is None:
            return None
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()
            ),
        )
    return restored["state"], dict(restored["loop"])


def save_best(fold_dir: Path, epoch: int, variables: Any, metadata: dict) -> None:
    """Saves the variables that predict needs (params, norm stats) and metadata."""
    with _manager(fold_dir / "best") as mngr:
        mngr.save(
            epoch,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables),
                metadata=ocp.args.JsonSave(metadata),
            ),
        )


def load_metadata(checkpoint: Path) -> tuple[Path, dict]:
    """Finds the best checkpoint under `checkpoint` (a fold dir or its best/) and its metadata.

    Returns:
      (directory of the best checkpoint manager, metadata dict).
    """
    checkpoint = Path(checkpoint)
    candidates = [checkpoint, checkpoint / "best"]
    for directory in candidates:
        if directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir()):
            with _manager(directory) as mngr:
                step = mngr.latest_step()
                meta = mngr.restore(
                    step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
                )["metadata"]
            return directory, dict(meta)
    raise CheckpointError(
        f"{checkpoint}: no msjax checkpoint found (expected a fold directory with best/<epoch>/)"
    )


def restore_best(directory: Path, abstract_variables: Any) -> Any:
    """Restores the best variables saved under `directory` (from load_metadata)."""
    with _manager(directory) as mngr:
        step = mngr.latest_step()
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(variables=ocp.args.StandardRestore(abstract_variables)),
        )
    return restored["variables"]


def abstract_like(tree: Any) -> Any:
    """Shape/dtype structs of `tree`, the restore target orbax needs."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)

