"""The jitted train/eval steps and the fold loop, on a tiny model in-process."""

import functools
import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, cpu_env

from msjax.features.store import Entry
from msjax.models.emoboost import MSEmoBoost, dummy_batch
from msjax.train import setup
from msjax.train.loop import FoldRunner, NonFiniteLossError
from msjax.train.steps import create_state, make_mesh, make_steps

B, FRAMES, BINS, SSL_FRAMES, SSL_DIM, CLASSES = 4, 50, 200, 10, 8, 3
IMAGE = (64, 96)


def tiny_model(**kwargs) -> MSEmoBoost:
    return MSEmoBoost(
        num_classes=CLASSES, ssl_frames=SSL_FRAMES, ssl_dim=SSL_DIM, lstm_hidden=8,
        branch_dim=16, **kwargs,
    )


def random_batch(seed: int, valid: int = B) -> dict[str, np.ndarray]:
    """A stored batch (what iterate_batches yields) with `valid` real rows."""
    rng = np.random.default_rng(seed)
    return {
        "mfcc": rng.normal(size=(B, FRAMES, 40)).astype(np.float32),
        "spec": rng.uniform(-80, 0, size=(B, BINS, FRAMES)).astype(np.float32),
        "ssl": rng.normal(size=(B, SSL_FRAMES, SSL_DIM)).astype(np.float32),
        "label": rng.integers(0, CLASSES, B).astype(np.int32),
        "mask": (np.arange(B) < valid).astype(np.float32),
    }


TX = optax.adam(1e-3)


@functools.cache
def _steps(model: MSEmoBoost, compute_dtype=jnp.float32):
    # Shared across tests: each distinct model compiles once.
    return make_steps(model, TX, make_mesh(), image_size=IMAGE, compute_dtype=compute_dtype)


def fresh(model: MSEmoBoost, compute_dtype=jnp.float32):
    """(fresh state, train_step, eval_step) for `model` on all local devices."""
    params = model.init(
        jax.random.key(0), dummy_batch(model, _Features, B, IMAGE), train=False
    )["params"]
    norm = {"lo": np.full(BINS, -80.0, np.float32), "hi": np.zeros(BINS, np.float32)}
    return (create_state(params, TX, norm), *_steps(model, compute_dtype))


class _Features:
    segment_samples, segment_frames, n_mfcc = 16000, FRAMES, 40


def test_steps_trace_once_and_learn():
    state, train_step, eval_step = fresh(tiny_model())
    batch = random_batch(0)
    key = jax.random.key(0)
    losses = []
    for i in range(30):
        # Alternate a full batch with a padded last batch: the same shapes, no retrace.
        state, metrics = train_step(state, batch if i % 2 else random_batch(0, valid=2), key)
        losses.append(float(metrics["loss_sum"]) / float(metrics["count"]))
    eval_step(state, batch)
    eval_step(state, random_batch(1, valid=1))
    assert train_step._cache_size() == 1
    assert eval_step._cache_size() == 1
    assert int(state["step"]) == 30
    assert losses[-1] < 0.5 * losses[0]  # it fits four segments


def test_padding_rows_are_ignored():
    """Garbage in masked rows changes neither the update nor the metrics."""
    model = tiny_model()
    a, b = random_batch(0, valid=3), random_batch(0, valid=3)
    noise = random_batch(9)
    for name in ("mfcc", "spec", "ssl", "label"):
        b[name][3] = noise[name][3]
    key = jax.random.key(1)
    out = []
    for batch in (a, b):
        state, train_step, _ = fresh(model)
        state, metrics = train_step(state, batch, key)
        out.append((state["params"], metrics))
    jax.tree.map(np.testing.assert_array_equal, out[0], out[1])
    assert float(out[0][1]["count"]) == 3.0


def test_dropout_differs_per_step_but_is_reproducible():
    model = tiny_model(dropout=0.5)
    batch, key = random_batch(0), jax.random.key(3)

    def two_steps():
        state, train_step, _ = fresh(model)
        state, m1 = train_step(state, batch, key)
        state, m2 = train_step(state, batch, key)
        return state["params"], m1, m2

    first, again = two_steps(), two_steps()
    jax.tree.map(np.testing.assert_array_equal, first, again)


def test_bfloat16_mixed_precision_keeps_float32_master_weights():
    model = tiny_model()
    batch, key = random_batch(0), jax.random.key(0)
    f32_state, f32_step, f32_eval = fresh(model)
    bf16_state, bf16_step, bf16_eval = fresh(model, compute_dtype=jnp.bfloat16)
    f32_state, f32_metrics = f32_step(f32_state, batch, key)
    bf16_state, bf16_metrics = bf16_step(bf16_state, batch, key)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16_state["params"]))
    np.testing.assert_allclose(
        float(bf16_metrics["loss_sum"]), float(f32_metrics["loss_sum"]), rtol=2e-2
    )
    # Zero-initialised classifier: after one Adam step both predict nearly alike.
    np.testing.assert_allclose(
        bf16_eval(bf16_state, batch), f32_eval(f32_state, batch), atol=5e-2
    )


# Runs three train steps and an eval on a fixed batch of 8 and prints the results.
_PROBE = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_steps import fresh, random_batch, tiny_model
    import test_steps as t
    t.B = 8
    state, train_step, eval_step = fresh(tiny_model(dropout=0.5))
    batch = random_batch(0, valid=7)
    out = []
    for _ in range(3):
        state, m = train_step(state, batch, jax.random.key(5))
        out.append(float(m["loss_sum"]))
    logprobs = np.asarray(eval_step(state, batch)).tolist()
    print(json.dumps({{"devices": jax.device_count(), "losses": out, "logprobs": logprobs}}))
    """
)


def _probe(devices: int) -> dict:
    env = cpu_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    code = _PROBE.format(tests=str(REPO / "tests"))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_devices_match_one():
    """Data parallel over 2 host devices gives the metrics of 1 device."""
    one, two = _probe(1), _probe(2)
    assert one["devices"] == 1 and two["devices"] == 2
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(two["logprobs"], one["logprobs"], atol=1e-5)


class _ArrayStore:
    """Serves fixed per-utterance arrays the way FeatureStore.load does."""

    def __init__(self, arrays: dict[str, dict[str, np.ndarray]]):
        self.arrays = arrays

    def load(self, entry: Entry, kinds) -> dict[str, np.ndarray]:
        return self.arrays[entry.uid]


def test_non_finite_loss_names_fold_epoch_step_and_utterances():
    def train_step(state, batch, key):
        loss = np.nan if batch["label"][0] == 2 else 1.0
        return dict(state, step=state["step"] + 1), {
            "loss_sum": np.float32(loss), "correct": np.float32(0), "count": batch["mask"].sum()
        }

    entries = [Entry(f"utt{i}", label=i, num_segments=1, audio_hash=str(i)) for i in range(3)]
    store = _ArrayStore({e.uid: {"x": np.zeros((1, 2), np.float32)} for e in entries})
    runner = FoldRunner(
        store=store, kinds=["x"], train_step=train_step, eval_step=None, batch_size=1,
        eval_batch_size=1, num_epochs=1, patience=1, seed=0,
        data_sharding=setup.data_sharding(make_mesh()), num_classes=3,
    )
    with pytest.raises(NonFiniteLossError) as err:
        runner.train_epoch({"step": np.int32(10)}, entries, fold=4, epoch=2)
    message = str(err.value)
    assert "fold 4 epoch 2 step" in message and "utt2" in message
    assert "utt0" not in message and "utt1" not in message
