"""AlexNet features and adaptive pooling against torchvision; the weight porter."""

import copy
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from conftest import ok, run

from msjax.convert.torchvision import (
    alexnet_params,
    load_alexnet_params,
    port_pth,
    port_state_dict,
    save_params,
)
from msjax.errors import CheckpointError
from msjax.models.alexnet import AlexNetFeatures, adaptive_avg_pool


@pytest.fixture(scope="module")
def torch_alexnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.alexnet(weights=None).eval()


@pytest.mark.parametrize("size", [(256, 384), (300, 200)])
def test_matches_torchvision(torch_alexnet, size):
    # 300x200 ends in an 8x5 map, so pooling to 6x6 repeats inputs (upsampling bins).
    x = np.random.default_rng(0).standard_normal((2, 3, *size), dtype=np.float32)
    with torch.no_grad():
        want = torch_alexnet.avgpool(torch_alexnet.features(torch.from_numpy(x))).numpy()
    params = port_state_dict(torch_alexnet.state_dict())
    got = AlexNetFeatures().apply({"params": params}, x.transpose(0, 2, 3, 1))
    assert got.shape == (2, 6, 6, 256)
    err = np.abs(np.asarray(got).transpose(0, 3, 1, 2) - want).max()
    assert err < 1e-4, err


def test_gradients_match_torchvision(torch_alexnet):
    """Backward parity for every parameter, in float64.

    In float32 the two differ by up to 3% in the first two layers' gradients, and that
    is not an error of either: ReLU and max pooling route each gradient by comparisons,
    and pre-activations or window maxima that differ by a rounding error flip between
    the two implementations. In float64 no comparison flips and they agree to 1e-7
    (the limit is adaptive pooling's float32 averaging weights).
    """
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 256, 384))
    probe = rng.standard_normal((2, 256, 6, 6))
    net = copy.deepcopy(torch_alexnet).double()
    out = net.avgpool(net.features(torch.from_numpy(x)))
    (out * torch.from_numpy(probe)).sum().backward()
    # The porter's float32 holds the weights exactly (they are float32 in torch_alexnet).
    want = port_state_dict({f"features.{n}": p.grad for n, p in net.features.named_parameters()})
    with jax.enable_x64():
        params = jax.tree.map(jnp.float64, port_state_dict(torch_alexnet.state_dict()))

        def loss(params):
            out = AlexNetFeatures().apply({"params": params}, x.transpose(0, 2, 3, 1))
            return jnp.sum(out * probe.transpose(0, 2, 3, 1))

        got = jax.jit(jax.grad(loss))(params)
    for layer, grads in want.items():
        for name, expected in grads.items():
            scale = float(np.abs(expected).max())
            assert scale > 0, (layer, name)
            err = np.abs(np.asarray(got[layer][name], np.float64) - expected).max() / scale
            assert err < 1e-6, (layer, name, err)


def test_conv_map_shape():
    params = alexnet_params(None, jax.random.key(0))
    x = np.zeros((1, 256, 384, 3), np.float32)
    out = AlexNetFeatures(pool_size=None).apply({"params": params}, x)
    assert out.shape == (1, 7, 11, 256)


@pytest.mark.parametrize("hw", [(7, 11), (8, 5), (6, 6), (13, 3), (1, 1)])
def test_adaptive_pool_matches_torch(hw):
    x = np.random.default_rng(1).standard_normal((2, 4, *hw), dtype=np.float32)
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (6, 6)).numpy()
    got = np.asarray(adaptive_avg_pool(x.transpose(0, 2, 3, 1), (6, 6))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_pth_round_trip_through_script(torch_alexnet, tmp_path):
    pth, out = tmp_path / "alexnet.pth", tmp_path / "params" / "alexnet.npz"
    torch.save(torch_alexnet.state_dict(), pth)
    done = ok(run("port_alexnet", f"--pth={pth}", f"--out={out}"))
    assert done.stdout.startswith(f"wrote {out}: 5 conv layers")
    loaded = load_alexnet_params(out)
    want = torch_alexnet.state_dict()
    np.testing.assert_array_equal(
        loaded["features_3"]["kernel"], want["features.3.weight"].numpy().transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(loaded["features_10"]["bias"], want["features.10.bias"].numpy())
    assert alexnet_params(out)["features_0"]["kernel"].shape == (11, 11, 3, 64)


class _RunsCode:
    """A .pth entry that runs `touch marker` when plain pickle loads it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "args,code,message",
    [
        (
            ["--pth={tmp}/bad.pth", "--out={tmp}/out.npz"], 3,
            "bad.pth: refused to unpickle posix.system (only tensors, storages and plain",
        ),
        (["--pth={tmp}/absent.pth", "--out={tmp}/out.npz"], 3, "absent.pth: no such file"),
        (["--out={tmp}/out.npz"], 2, "--pth"),
        (["--pth={tmp}/bad.pth", "--out={tmp}/out.npz", "extra"], 2, "unexpected arguments"),
    ],
)
def test_port_script_errors_are_one_line(tmp_path, args, code, message):
    """A downloaded .pth may come from anyone: one that would run code is refused too."""
    marker = tmp_path / "marker"
    evil = {"features.0.weight": _RunsCode(marker)}
    (tmp_path / "bad.pth").write_bytes(pickle.dumps(evil, protocol=2))
    done = run("port_alexnet", *[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out.npz").exists() and not marker.exists()


def test_port_pth_errors(tmp_path):
    with pytest.raises(CheckpointError, match="alexnet-owt-7be5be79.pth"):
        port_pth(tmp_path / "absent.pth", tmp_path / "out.npz")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        port_pth(bad, tmp_path / "out.npz")


def test_port_is_strict(torch_alexnet):
    state = dict(torch_alexnet.state_dict())
    missing = {k: v for k, v in state.items() if k != "features.6.bias"}
    with pytest.raises(CheckpointError, match=r"missing: features\.6\.bias"):
        port_state_dict(missing)
    with pytest.raises(CheckpointError, match=r"unexpected: features\.12\.weight"):
        port_state_dict({**state, "features.12.weight": state["features.10.weight"]})
    with pytest.raises(CheckpointError, match="features_8/kernel"):
        port_state_dict({**state, "features.8.weight": state["features.10.weight"]})


def test_load_errors(tmp_path):
    path = tmp_path / "alexnet.npz"
    with pytest.raises(CheckpointError, match="bin/port_alexnet --pth=alexnet-owt-7be5be79.pth"):
        load_alexnet_params(path)
    params = alexnet_params(None, jax.random.key(0))
    save_params({**params, "extra": {"kernel": np.zeros(3)}}, path)
    with pytest.raises(CheckpointError, match="unexpected: extra/kernel"):
        load_alexnet_params(path)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_alexnet_params(path)
