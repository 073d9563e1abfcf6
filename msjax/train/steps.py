"""Pure, jitted training and evaluation steps.

The train state is a plain dict (what orbax saves and restores as it is):
  step      int32 scalar
  params    the model's parameters (float32 master weights)
  opt_state optax state
  norm      {"lo": [200], "hi": [200]}: per-bin spectrogram min-max fitted on
            the training fold; constant, carried so checkpoints can predict alone
  class_weights  [C], only with --config.optim.class_weights=balanced: the loss
            weight of each class, from the training fold's counts

Steps return sums and counts, never means: the host divides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from msjax import inference

State = dict[str, Any]
Batch = dict[str, jax.Array]


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum over valid rows of the softmax cross-entropy. [B, C], [B], [B] -> []"""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.sum(losses * mask)


def row_weights(
    labels: jax.Array, mask: jax.Array, class_weights: jax.Array | None = None
) -> jax.Array:
    """Each row's weight in the loss: its mask, times its class's weight when given. [B]"""
    return mask if class_weights is None else mask * class_weights[labels]


def make_steps(
    model: nn.Module,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    image_size: tuple[int, int],
    normalize_wav: Callable | None = None,
    compute_dtype: jnp.dtype = jnp.float32,
) -> tuple[Callable, Callable]:
    """Builds `train_step(state, batch, rng)` and `eval_step(state, batch)`.

    Both run the model through `msjax.inference` (`normalize_wav` from its
    `wav_normalizer`); `eval_step` gives segment log-probabilities [B, C].

    Both are jitted once; batches are sharded over the mesh's "data" axis and
    the state is replicated, so the same code runs on one device or many.
    `compute_dtype=bfloat16` gives mixed precision: params and inputs are cast
    inside the step, an encoder inside the model computes in it too, and
    gradients flow back to the float32 master weights.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    model = inference.with_compute_dtype(model, compute_dtype)

    inputs = dict(image_size=image_size, normalize_wav=normalize_wav, compute_dtype=compute_dtype)

    def train_step(state: State, batch: Batch, rng: jax.Array) -> tuple[State, dict]:
        # One loop key, folded with the step: no key is ever reused.
        step_rng = jax.random.fold_in(rng, state["step"])

        def loss_fn(params):
            logits = inference.forward(
                model, params, batch, state["norm"], train=True, rng=step_rng, **inputs
            )
            # Weighted mean, as torch's cross_entropy(weight=...) takes it.
            weights = row_weights(batch["label"], batch["mask"], state.get("class_weights"))
            total = jnp.sum(weights)
            count = jnp.where(total > 0, total, 1.0)
            loss_sum = masked_cross_entropy(logits, batch["label"], weights)
            return loss_sum / count, (loss_sum, logits)

        grads, (loss_sum, logits) = jax.grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * batch["mask"])
        metrics = {"loss_sum": loss_sum, "correct": correct, "count": jnp.sum(batch["mask"])}
        new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    def eval_step(state: State, batch: Batch) -> jax.Array:
        """Segment log-probabilities [B, C]."""
        return inference.log_probs(model, state["params"], batch, state["norm"], **inputs)

    train_jit = jax.jit(
        train_step,
        in_shardings=(replicated, sharded, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    eval_jit = jax.jit(eval_step, in_shardings=(replicated, sharded), out_shardings=replicated)
    return train_jit, eval_jit


def make_mesh() -> Mesh:
    """A one-axis ("data") mesh over every device of every process (ordered by process,
    so each process holds one contiguous range of a batch's rows)."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(devices, ("data",))


def create_state(
    params: Any,
    tx: optax.GradientTransformation,
    norm: dict,
    mesh: Mesh | None = None,
    class_weights: Any = None,
) -> State:
    """A fresh train state at step 0, replicated over `mesh` (every device by default).

    `class_weights` [C], when given, weights each row's loss by its class (stored in the
    state as "class_weights", so the steps compile once for every fold).

    Placing it as the steps' outputs are placed means the first step and every later
    one hit the same compiled executable.
    """
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "norm": {"lo": jnp.asarray(norm["lo"]), "hi": jnp.asarray(norm["hi"])},
    }
    if class_weights is not None:
        state["class_weights"] = jnp.asarray(class_weights, jnp.float32)
    mesh = make_mesh() if mesh is None else mesh
    return jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
