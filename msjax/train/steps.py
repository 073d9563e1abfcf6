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

from msjax.image import spec_to_image

State = dict[str, Any]
Batch = dict[str, jax.Array]


def model_inputs(
    batch: Batch, norm: dict, image_size: tuple[int, int], normalize_wav: Callable | None
) -> Batch:
    """Turns a stored batch into the model's inputs (image transform on device).

    Args:
      batch: mfcc [B, 300, 40], spec [B, 200, 300], ssl [B, F, D] or wav [B, N].
      norm: training-fold spectrogram statistics {"lo", "hi"}, each [200].
      image_size: (height, width) of the AlexNet image.
      normalize_wav: the checkpoint's waveform normalisation, or None.
    """
    inputs = {"mfcc": batch["mfcc"]}
    inputs["image"] = spec_to_image(batch["spec"], norm["lo"], norm["hi"], size=image_size)
    if "ssl" in batch:
        inputs["ssl"] = batch["ssl"]
    if "wav" in batch:
        inputs["wav"] = normalize_wav(batch["wav"]) if normalize_wav else batch["wav"]
    return inputs


def _cast(tree: Any, dtype: jnp.dtype) -> Any:
    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


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

    Both are jitted once; batches are sharded over the mesh's "data" axis and
    the state is replicated, so the same code runs on one device or many.
    `compute_dtype=bfloat16` gives mixed precision: params and inputs are cast
    inside the step, an encoder inside the model computes in it too, and
    gradients flow back to the float32 master weights.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    encoder = getattr(model, "encoder", None)
    if encoder is not None and encoder.dtype != compute_dtype:
        # The encoder computes in its module's dtype whatever its params are cast to:
        # a float32 module would cast bf16 params back up in every dense layer.
        model = model.clone(encoder=encoder.clone(dtype=compute_dtype))

    def forward(params, batch, norm, *, train, rng=None):
        inputs = model_inputs(batch, norm, image_size, normalize_wav)
        if compute_dtype != jnp.float32:
            params, inputs = _cast(params, compute_dtype), _cast(inputs, compute_dtype)
        rngs = {"dropout": rng} if train else {}
        logits = model.apply({"params": params}, inputs, train=train, rngs=rngs)
        return logits.astype(jnp.float32)

    def train_step(state: State, batch: Batch, rng: jax.Array) -> tuple[State, dict]:
        # One loop key, folded with the step: no key is ever reused.
        step_rng = jax.random.fold_in(rng, state["step"])

        def loss_fn(params):
            logits = forward(params, batch, state["norm"], train=True, rng=step_rng)
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
        logits = forward(state["params"], batch, state["norm"], train=False)
        return jax.nn.log_softmax(logits)

    train_jit = jax.jit(
        train_step,
        in_shardings=(replicated, sharded, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    eval_jit = jax.jit(eval_step, in_shardings=(replicated, sharded), out_shardings=replicated)
    return train_jit, eval_jit


def make_mesh() -> Mesh:
    """A one-axis ("data") mesh over all local devices."""
    return Mesh(jax.local_devices(), ("data",))


def create_state(
    params: Any,
    tx: optax.GradientTransformation,
    norm: dict,
    mesh: Mesh | None = None,
    class_weights: Any = None,
) -> State:
    """A fresh train state at step 0, replicated over `mesh` (all local devices by default).

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
