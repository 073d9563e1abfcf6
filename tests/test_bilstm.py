"""Bi-LSTM against torch.nn.LSTM, and the LSTM porter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from msjax.convert.lstm import port_lstm
from msjax.errors import CheckpointError
from msjax.models.bilstm import BiLSTM


@pytest.fixture(scope="module")
def torch_lstm() -> torch.nn.LSTM:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(40, 256, num_layers=2, batch_first=True, bidirectional=True, dropout=0.5)
    return lstm.eval()


@pytest.mark.parametrize("shape", [(2, 300, 40), (3, 5, 40)])
def test_matches_torch(torch_lstm, shape):
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    with torch.no_grad():
        want, _ = torch_lstm(torch.from_numpy(x))
    params = port_lstm(torch_lstm.state_dict())
    got = BiLSTM().apply({"params": params}, x, train=False)
    assert got.shape == (shape[0], shape[1], 512)
    err = np.abs(np.asarray(got) - want.numpy()).max()
    assert err < 1e-5, err


def test_gradients_match_torch(torch_lstm):
    """Backward parity of the hand-written recurrence: every weight and the input."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 50, 40), dtype=np.float32)
    probe = rng.standard_normal((3, 50, 512), dtype=np.float32)
    torch_lstm.zero_grad()
    x_torch = torch.from_numpy(x).requires_grad_()
    out, _ = torch_lstm(x_torch)  # eval mode: no dropout, as train=False below
    (out * torch.from_numpy(probe)).sum().backward()
    # msjax keeps one bias, b_ih + b_hh, whose gradient is that of either torch bias.
    grads = {
        name: torch.zeros_like(p) if name.startswith("bias_hh") else p.grad
        for name, p in torch_lstm.named_parameters()
    }
    want = port_lstm(grads)

    def loss(params, x):
        return jnp.sum(BiLSTM().apply({"params": params}, x, train=False) * probe)

    got, got_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(port_lstm(torch_lstm.state_dict()), x)
    for (path, expected), actual in zip(
        jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), strict=True
    ):
        scale = float(np.abs(expected).max())
        assert scale > 0, path
        assert np.abs(np.asarray(actual) - expected).max() / scale < 1e-4, path
    want_x = x_torch.grad.numpy()
    assert np.abs(np.asarray(got_x) - want_x).max() / np.abs(want_x).max() < 1e-4


def test_param_tree_and_unroll():
    x = jnp.ones((2, 7, 40))
    model = BiLSTM(hidden_size=8)
    params = model.init(jax.random.key(0), x, train=False)["params"]
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes["layer_0"]["backward"] == {
        "input_kernel": (40, 32),
        "hidden_kernel": (8, 32),
        "bias": (32,),
    }
    assert shapes["layer_1"]["forward"]["input_kernel"] == (16, 32)
    unrolled = BiLSTM(hidden_size=8, unroll=4).apply({"params": params}, x, train=False)
    np.testing.assert_allclose(unrolled, model.apply({"params": params}, x, train=False))


def test_dropout_only_when_training():
    x = jax.random.normal(jax.random.key(0), (2, 6, 40))
    model = BiLSTM(hidden_size=8)
    params = model.init(jax.random.key(1), x, train=False)
    eval_out = model.apply(params, x, train=False)
    rngs = {"dropout": jax.random.key(2)}
    np.testing.assert_array_equal(eval_out, model.apply(params, x, train=False, rngs=rngs))
    train_out = model.apply(params, x, train=True, rngs=rngs)
    assert np.abs(np.asarray(train_out) - np.asarray(eval_out)).max() > 1e-3


def test_port_prefix_and_strictness(torch_lstm):
    state = {f"lstm_mfcc.{k}": v for k, v in torch_lstm.state_dict().items()}
    state["post_mfcc_layer.weight"] = torch.zeros(128, 3)
    params = port_lstm(state, prefix="lstm_mfcc.")
    assert params["layer_1"]["backward"]["hidden_kernel"].shape == (256, 1024)
    sd = torch_lstm.state_dict()
    np.testing.assert_array_equal(
        params["layer_0"]["forward"]["bias"], (sd["bias_ih_l0"] + sd["bias_hh_l0"]).numpy()
    )
    with pytest.raises(CheckpointError, match="missing: weight_hh_l1_reverse"):
        port_lstm({k: v for k, v in sd.items() if k != "weight_hh_l1_reverse"})
    with pytest.raises(CheckpointError, match="unexpected: weight_ih_l2"):
        port_lstm({**sd, "weight_ih_l2": sd["weight_ih_l1"]})
    with pytest.raises(CheckpointError, match="shapes"):
        port_lstm({**sd, "bias_hh_l0": sd["bias_hh_l0"][:10]})
