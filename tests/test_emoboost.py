"""MS-EmoBoost: attention, shapes per variant, parameter count, dropout, a train step."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from msjax.convert.torchvision import alexnet_params
from msjax.models.alexnet import AlexNetFeatures
from msjax.models.attention import ResidualSelfAttention
from msjax.models.emoboost import (
    MSEmoBoost,
    dummy_batch,
    frame_l2_normalize,
    from_configs,
    replace_alexnet,
)

# Small stand-ins keep the tests fast: a 64x64 image gives a 1x1 AlexNet map, which
# the adaptive pooling still spreads to 6x6.
B, FRAMES, SSL_FRAMES, SSL_DIM, CLASSES = 2, 12, 5, 8, 4
# torch's random classifier init, so logits depend on every input from the start.
SMALL = dict(
    num_classes=CLASSES, ssl_frames=SSL_FRAMES, ssl_dim=SSL_DIM, lstm_hidden=8,
    zero_init_classifier=False,
)


@dataclasses.dataclass(frozen=True)
class _FeatureConfig:
    segment_samples: int = 48000
    segment_frames: int = 300
    n_mfcc: int = 40


@dataclasses.dataclass(frozen=True)
class _SSLConfig:
    """Duck-typed SSL config: wav2vec2's conv stack frame count and a width."""

    hidden_size: int = 768

    def num_frames(self, n: int) -> int:
        for kernel, stride in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2), strict=True):
            n = (n - kernel) // stride + 1
        return n


pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def small_model() -> tuple[MSEmoBoost, dict, dict]:
    """The default small model, its batch and its variables, built once."""
    model, batch = MSEmoBoost(**SMALL), _batch()
    return model, batch, model.init(jax.random.key(0), batch, train=False)


def _batch(seed: int = 0) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), 3)
    return {
        "mfcc": jax.random.normal(keys[0], (B, FRAMES, 40)),
        "image": jax.random.normal(keys[1], (B, 64, 64, 3)),
        "ssl": jax.random.normal(keys[2], (B, SSL_FRAMES, SSL_DIM)),
    }


def _torch_attention(x: torch.Tensor, weights: dict) -> torch.Tensor:
    """Paper eq. 4-10 written directly in torch."""
    q, k, v = (x @ weights[n]["kernel"] + weights[n]["bias"] for n in ("query", "key", "value"))
    scores = q @ k.transpose(1, 2) / x.shape[-1] ** 0.5
    return x + torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("shape", [(2, 300, 512), (3, 36, 256)])
def test_attention_matches_torch(shape):
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    params = ResidualSelfAttention().init(jax.random.key(0), x)["params"]
    got = ResidualSelfAttention().apply({"params": params}, x)
    weights = jax.tree.map(lambda a: torch.from_numpy(np.array(a)), params)
    want = _torch_attention(torch.from_numpy(x), weights).numpy()
    err = np.abs(np.asarray(got) - want).max()
    assert err < 1e-5, err


@pytest.mark.parametrize("shape", [(2, 300, 512), (3, 36, 256)])  # folded scores, then direct
def test_attention_gradients_match_torch(shape):
    """Gradients of every parameter and the input, against torch autograd, 1e-4 of scale."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape, dtype=np.float32)
    cotangent = rng.standard_normal(shape, dtype=np.float32)
    params = ResidualSelfAttention().init(jax.random.key(0), x)["params"]

    def loss(params, x):
        return jnp.sum(ResidualSelfAttention().apply({"params": params}, x) * cotangent)

    got_params, got_x = jax.grad(loss, argnums=(0, 1))(params, x)
    weights = jax.tree.map(lambda a: torch.from_numpy(np.array(a)).requires_grad_(), params)
    x_t = torch.from_numpy(x).requires_grad_()
    (_torch_attention(x_t, weights) * torch.from_numpy(cotangent)).sum().backward()
    want = {"x": x_t.grad.numpy()} | {
        f"{n}/{k}": weights[n][k].grad.numpy() for n in weights for k in weights[n]
    }
    got = {"x": np.asarray(got_x)} | {
        f"{n}/{k}": np.asarray(got_params[n][k]) for n in got_params for k in got_params[n]
    }
    for name in want:
        # The key bias gets no gradient in exact arithmetic (softmax ignores it); torch's
        # is rounding noise, so it is held to the kernel's scale.
        scale = np.abs(want["key/kernel" if name == "key/bias" else name]).max()
        err = np.abs(got[name] - want[name]).max()
        assert err < 1e-4 * scale, (name, err, scale)


def test_frame_l2_normalize():
    x = np.random.default_rng(0).standard_normal((2, 6, 40), dtype=np.float32)
    x[:, 4:] = 0.0  # zero-padded frames
    got = np.asarray(frame_l2_normalize(x))
    want = torch.nn.functional.normalize(torch.from_numpy(x), p=2, dim=2).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.all(got[:, 4:] == 0.0)
    grad = jax.grad(lambda v: frame_l2_normalize(v).sum())(jnp.asarray(x))
    assert np.isfinite(np.asarray(grad)).all()


def test_full_model_parameter_count():
    model = from_configs(7, _FeatureConfig(), _SSLConfig())
    assert (model.ssl_frames, model.ssl_dim) == (149, 768)
    batch = dummy_batch(model, _FeatureConfig())
    assert batch["image"].shape == (1, 256, 384, 3) and batch["mfcc"].shape == (1, 300, 40)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))

    def linear(n_in, n_out):
        return n_in * n_out + n_out

    def conv(k, c_in, c_out):
        return k * k * c_in * c_out + c_out

    alexnet = (
        conv(11, 3, 64) + conv(5, 64, 192) + conv(3, 192, 384) + conv(3, 384, 256)
        + conv(3, 256, 256)
    )
    # Per direction: fused input and recurrent kernels [in+H, 4H] and one bias [4H].
    lstm = 2 * (linear(40 + 256, 4 * 256) + linear(512 + 256, 4 * 256))
    attention = 3 * linear(512, 512) + 3 * linear(256, 256)
    head = (
        linear(300 * 512, 128) + linear(6 * 6 * 256, 128) + linear(256, 149) + linear(768, 7)
    )
    count = sum(x.size for x in jax.tree.leaves(shapes))
    assert count == alexnet + lstm + attention + head == 26_522_588


def test_full_size_forward():
    model = from_configs(7, _FeatureConfig(), _SSLConfig())
    batch = dummy_batch(model, _FeatureConfig(), batch_size=2)
    variables = jax.jit(lambda b: model.init(jax.random.key(0), b, train=False))(batch)
    logits = jax.jit(lambda v, b: model.apply(v, b, train=False))(variables, batch)
    assert logits.shape == (2, 7) and np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize(
    "variant, top_level",
    [
        (
            {},
            {"alexnet", "spec_attention", "spec_linear", "lstm", "mfcc_attention",
             "mfcc_linear", "enhance", "classifier"},
        ),
        (
            {"use_attention": False},
            {"alexnet", "spec_linear", "lstm", "mfcc_linear", "enhance", "classifier"},
        ),
        (
            {"use_spectrogram": False},
            {"lstm", "mfcc_attention", "mfcc_linear", "enhance", "classifier"},
        ),
        (
            {"use_mfcc": False},
            {"alexnet", "spec_attention", "spec_linear", "enhance", "classifier"},
        ),
        (
            {"spec_tokens": "channel"},
            {"alexnet", "spec_attention", "spec_linear", "lstm", "mfcc_attention",
             "mfcc_linear", "enhance", "classifier"},
        ),
        ({"baseline": True}, {"classifier"}),
    ],
)
def test_variants(variant, top_level):
    model = MSEmoBoost(**SMALL, **variant)
    batch = _batch()
    params = model.init(jax.random.key(0), batch, train=False)["params"]
    assert set(params) == top_level
    branches = (not model.baseline) * (model.use_mfcc + model.use_spectrogram)
    if branches:
        assert params["enhance"]["kernel"].shape == (128 * branches, SSL_FRAMES)
    logits, feats = model.apply({"params": params}, batch, train=False, return_features=True)
    assert logits.shape == (B, CLASSES)
    assert feats["mean_pooled"].shape == (B, SSL_DIM)
    if not model.baseline:
        assert feats["enhanced"].shape == (B, SSL_DIM)
        assert feats["enhancement"].shape == (B, SSL_FRAMES)
        pooled = jnp.einsum("bf,bfd->bd", feats["enhancement"], batch["ssl"])
        np.testing.assert_allclose(feats["enhanced"], pooled, rtol=1e-6)
    if "spec_attention" in params:
        width = 36 if model.spec_tokens == "channel" else 256
        assert params["spec_attention"]["query"]["kernel"].shape == (width, width)


def test_classifier_starts_at_zero_by_default():
    """Default init: uniform logits, while the branches and X_enh are random (not dead)."""
    model = MSEmoBoost(**{**SMALL, "zero_init_classifier": True})
    batch = _batch()
    params = model.init(jax.random.key(0), batch, train=False)["params"]
    assert not np.any(np.asarray(params["classifier"]["kernel"]))
    assert not np.any(np.asarray(params["classifier"]["bias"]))
    logits, feats = model.apply({"params": params}, batch, train=False, return_features=True)
    np.testing.assert_array_equal(logits, 0.0)
    assert 0.1 < float(jnp.mean(feats["enhancement"] > 0)) < 0.9


def test_spectrogram_flatten_is_nchw():
    """Without attention, the spectrogram head is torch's Linear on the NCHW flatten."""
    model = MSEmoBoost(**SMALL, use_mfcc=False, use_attention=False)
    batch = _batch()
    params = model.init(jax.random.key(0), batch, train=False)["params"]
    pooled = AlexNetFeatures().apply({"params": params["alexnet"]}, batch["image"])
    flat = np.asarray(pooled).transpose(0, 3, 1, 2).reshape(B, -1)  # NCHW flatten
    dense = {k: {n: np.asarray(a) for n, a in v.items()} for k, v in params.items()}
    spec = np.maximum(flat @ dense["spec_linear"]["kernel"] + dense["spec_linear"]["bias"], 0)
    weights = np.maximum(spec @ dense["enhance"]["kernel"] + dense["enhance"]["bias"], 0)
    enhanced = np.einsum("bf,bfd->bd", weights, np.asarray(batch["ssl"]))
    want = enhanced @ dense["classifier"]["kernel"] + dense["classifier"]["bias"]
    got = model.apply({"params": params}, batch, train=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_dropout_only_when_training(small_model):
    model, batch, variables = small_model

    def run(train, seed):
        return np.asarray(
            model.apply(variables, batch, train=train, rngs={"dropout": jax.random.key(seed)})
        )

    np.testing.assert_array_equal(run(False, 1), run(False, 2))
    np.testing.assert_array_equal(run(False, 1), model.apply(variables, batch, train=False))
    assert np.abs(run(True, 1) - run(False, 1)).max() > 1e-6
    assert np.abs(run(True, 1) - run(True, 2)).max() > 1e-6


def test_ssl_shape_is_checked():
    model = MSEmoBoost(**SMALL)
    batch = {**_batch(), "ssl": jnp.zeros((B, SSL_FRAMES + 1, SSL_DIM))}
    with pytest.raises(ValueError, match="from_configs"):
        model.init(jax.random.key(0), batch, train=False)


def test_jitted_train_step(small_model):
    model, batch, variables = small_model
    params, labels = variables["params"], jnp.array([0, 3])
    tx = optax.adam(1e-3)

    @jax.jit
    def step(params, opt_state, rng):
        def loss_fn(p):
            logits = model.apply({"params": p}, batch, train=True, rngs={"dropout": rng})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    new_params, _, loss = step(params, tx.init(params), jax.random.key(1))
    assert np.isfinite(float(loss))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new_params)
    # Attention key biases shift all scores of a query equally, which softmax ignores:
    # their gradient is zero (rounding noise at most), so they need not move.
    for branch in ("spec_attention", "mfcc_attention"):
        moved[branch]["key"].pop("bias")
    assert all(jax.tree.leaves(moved))


class _FrameEncoder(nn.Module):
    """Stand-in SSL encoder: non-overlapping frames of the waveform, projected."""

    frame: int = 4

    @nn.compact
    def __call__(self, wav, *, train=False):
        frames = wav.reshape(wav.shape[0], -1, self.frame)
        return {"last_hidden_state": nn.Dense(SSL_DIM, name="proj")(frames)}


def test_encoder_inside_keeps_head_names():
    encoder = _FrameEncoder()
    inside = MSEmoBoost(**SMALL, encoder=encoder)
    batch = _batch()
    wav = jax.random.normal(jax.random.key(5), (B, SSL_FRAMES * encoder.frame))
    params = inside.init(jax.random.key(0), {**batch, "wav": wav}, train=False)["params"]
    head = MSEmoBoost(**SMALL).init(jax.random.key(0), batch, train=False)["params"]
    assert set(params) == set(head) | {"encoder"}
    assert jax.tree.map(jnp.shape, {k: params[k] for k in head}) == jax.tree.map(jnp.shape, head)
    ssl = encoder.apply({"params": params["encoder"]}, wav)["last_hidden_state"]
    head_params = {k: params[k] for k in head}
    np.testing.assert_allclose(
        inside.apply({"params": params}, {**batch, "wav": wav}, train=False),
        MSEmoBoost(**SMALL).apply({"params": head_params}, {**batch, "ssl": ssl}, train=False),
        rtol=1e-6,
    )


def test_replace_alexnet(small_model):
    params = small_model[2]["params"]
    ported = alexnet_params(None, jax.random.key(9))
    new = replace_alexnet(params, ported)
    got, want = new["alexnet"]["features_6"]["kernel"], ported["features_6"]["kernel"]
    np.testing.assert_array_equal(got, want)
    assert new["lstm"] is params["lstm"]
    with pytest.raises(ValueError, match="do not match"):
        replace_alexnet(params, {"features_0": ported["features_0"]})
    baseline = MSEmoBoost(**SMALL, baseline=True)
    base_params = baseline.init(jax.random.key(0), _batch(), train=False)["params"]
    assert replace_alexnet(base_params, ported).keys() == base_params.keys()
