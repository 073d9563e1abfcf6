"""--config.optim.class_weights=balanced: the weights, the loss against torch, and the
train step reading them from the state."""

import jax
import numpy as np
import pytest
import torch
from test_steps import IMAGE, TX, fresh, random_batch, tiny_model

from msjax.data.folds import Fold, class_weights
from msjax.errors import UsageError
from msjax.train.steps import (
    create_state,
    make_mesh,
    make_steps,
    masked_cross_entropy,
    row_weights,
)


def fold_with(train_counts: dict) -> Fold:
    return Fold(0, ("a",), ("b",), ("c",), (), (), class_counts={"train": train_counts})


def test_balanced_weights_are_inverse_training_frequency():
    weights = class_weights(fold_with({"ang": 6, "hap": 2, "sad": 0, "neu": 4}), "balanced")
    np.testing.assert_allclose(weights, [12 / 18, 12 / 6, 0.0, 12 / 12], rtol=1e-6)
    assert weights.dtype == np.float32
    assert class_weights(fold_with({"ang": 6}), "") is None
    with pytest.raises(UsageError, match="class_weights='inverse': choose balanced"):
        class_weights(fold_with({"ang": 6}), "inverse")


def test_weighted_loss_matches_torch_cross_entropy_with_weight():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 4)).astype(np.float32)
    labels = np.array([0, 1, 1, 3, 2, 0, 3], np.int32)
    mask = np.array([1, 1, 1, 1, 1, 1, 0], np.float32)  # the last row is padding
    weights = np.array([0.5, 2.0, 1.5, 0.25], np.float32)
    rows = row_weights(labels, mask, weights)
    ours = masked_cross_entropy(logits, labels, rows) / rows.sum()
    ref = torch.nn.functional.cross_entropy(
        torch.tensor(logits[:6]), torch.tensor(labels[:6]).long(), weight=torch.tensor(weights)
    )
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)


@pytest.mark.slow  # two compilations of the tiny model's train step: ~35 s on 2 CPU cores
def test_train_step_weights_rows_by_their_class():
    """One-hot class weights train exactly as masking every other class out."""
    model = tiny_model()
    batch = random_batch(0)
    k = int(batch["label"][0])
    key = jax.random.key(2)

    state = fresh(model)[0]
    # Steps of its own: the weighted state is another signature, which must not show up
    # in the cached steps whose traces test_steps counts.
    train_step, _ = make_steps(model, TX, make_mesh(), image_size=IMAGE)
    host = jax.device_get(state)  # the step donates its state: the two runs need their own
    weighted = create_state(
        host["params"], TX, host["norm"], class_weights=np.eye(3, dtype=np.float32)[k]
    )
    weighted, metrics = train_step(weighted, batch, key)

    only_k = dict(batch, mask=batch["mask"] * (batch["label"] == k))
    plain, plain_metrics = train_step(state, only_k, key)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        weighted["params"], plain["params"],
    )
    np.testing.assert_allclose(metrics["loss_sum"], plain_metrics["loss_sum"], rtol=1e-6)
