"""msjax's hand-written VJPs (msjax.models.vjp) against JAX's autodiff of the same math
written plainly, in float32 and bfloat16, and the JAX releases they were timed on."""

import jax
import jax.numpy as jnp
import jaxlib.version
import numpy as np
import pytest
from jax.test_util import check_grads

from msjax.models.vjp import grouped_conv_1d, low_dot, lstm_recurrence
from msjax.runtime import settings as runtime

DENSE = (((2,), (0,)), ((), ()))  # [B, T, K] x [K, N], nn.Dense's product
BATCHED = (((2,), (2,)), ((0,), (0,)))  # [B, Q, D] x [B, K, D], attention scores

# Largest relative error measured (fixed seeds, 2-core x86 CPU, jax 0.10.2) -> bound:
# float32: low_dot 8e-8, lstm_recurrence 2e-7, grouped_conv_1d 5e-8 -> 1e-6, 1e-6, 2e-7;
# bfloat16 operands with bfloat16 outputs: low_dot 0, grouped_conv_1d 0 -> one rounding,
# 2^-8; lstm_recurrence in bfloat16 6e-3 -> 2e-2 (autodiff rounds its state gradient to
# bfloat16 at other points of the loop); low_dot of bfloat16 operands with a float32
# output 7e-3 -> 2e-2 (its backward rounds the float32 cotangent to bfloat16, on purpose).
F32, BF16 = jnp.float32, jnp.bfloat16
ONE_ROUNDING = 2.0**-8


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype, scale: float = 1.0):
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


def _rel_error(got: jax.Array, want: jax.Array) -> float:
    """max |got - want| relative to max |want|, in float64."""
    got, want = (np.asarray(v, np.float64) for v in (got, want))
    return float(np.abs(got - want).max() / np.abs(want).max())


def _compare(custom, reference, args, seed: int) -> tuple[list[float], list[float]]:
    """Relative errors of the custom function's outputs and of its gradients (one random
    cotangent) against the reference's autodiff, after checking shapes and dtypes."""
    out, custom_vjp = jax.vjp(jax.jit(custom), *args)
    ref_out, ref_vjp = jax.vjp(jax.jit(reference), *args)
    rng = np.random.default_rng(seed)
    cotangent = jax.tree.map(lambda y: _random(rng, y.shape, y.dtype), ref_out)
    pairs = [
        (jax.tree.leaves(out), jax.tree.leaves(ref_out)),
        (custom_vjp(cotangent), ref_vjp(cotangent)),
    ]
    errors = []
    for got_all, want_all in pairs:
        for got, want in zip(got_all, want_all, strict=True):
            assert (got.shape, got.dtype) == (want.shape, want.dtype)
        errors.append([_rel_error(g, w) for g, w in zip(got_all, want_all)])
    return errors[0], errors[1]


def _plain_dot(dimension_numbers, out_dtype):
    def dot(a, b):
        out = jax.lax.dot_general(a, b, dimension_numbers, preferred_element_type=jnp.float32)
        return out.astype(out_dtype)

    return dot


def _plain_recurrence(pf, pb, wh):
    """Both LSTM directions as two plain scans from zero state (gates i, f, g, o)."""

    def direction(p, w):  # p [T, B, 4H], w [H, 4H] -> hidden states [T, B, H]
        zeros = jnp.zeros((p.shape[1], w.shape[0]), jnp.float32)

        def step(carry, p_t):
            h, c = carry
            z = p_t.astype(jnp.float32) + jnp.matmul(
                h.astype(w.dtype), w, preferred_element_type=jnp.float32
            )
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        return jax.lax.scan(step, (zeros, zeros), p)[1].astype(p.dtype)

    return direction(pf, wh[0]), direction(pb[::-1], wh[1])[::-1]


def _plain_conv(pad, groups):
    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1,), (pad,), dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=groups,
        )

    return conv


def _assert_close(custom, reference, args, tol: float, seed: int = 0) -> None:
    outputs, gradients = _compare(custom, reference, args, seed)
    assert max(outputs) <= tol, ("outputs", outputs, tol)
    assert max(gradients) <= tol, ("gradients", gradients, tol)


@pytest.mark.parametrize("operands,out,tol", [
    (F32, F32, 1e-6), (BF16, BF16, ONE_ROUNDING), (BF16, F32, 2e-2),
])
@pytest.mark.parametrize("dims,lhs,rhs", [
    (DENSE, (3, 5, 16), (16, 24)),  # K a multiple of 8: x reordered by a reshape
    (DENSE, (3, 5, 12), (12, 24)),  # a plain transpose
    (BATCHED, (2, 5, 8), (2, 7, 8)),  # autodiff's own gradient products
])
def test_low_dot_matches_autodiff(operands, out, tol, dims, lhs, rhs):
    rng = np.random.default_rng(len(lhs) + lhs[-1])
    args = (_random(rng, lhs, operands), _random(rng, rhs, operands))
    _assert_close(lambda a, b: low_dot(a, b, dims, None, out), _plain_dot(dims, out), args, tol)


@pytest.mark.parametrize("dtype,unroll,tol", [(F32, 1, 1e-6), (F32, 3, 1e-6), (BF16, 1, 2e-2)])
def test_lstm_recurrence_matches_autodiff(dtype, unroll, tol):
    rng = np.random.default_rng(unroll)
    steps, batch, hidden = 5, 2, 4
    pf, pb = (_random(rng, (steps, batch, 4 * hidden), dtype) for _ in range(2))
    wh = _random(rng, (2, hidden, 4 * hidden), dtype, scale=0.5)
    _assert_close(
        lambda pf, pb, wh: lstm_recurrence(pf, pb, wh, unroll), _plain_recurrence,
        (pf, pb, wh), tol,
    )


@pytest.mark.parametrize("dtype,tol", [(F32, 2e-7), (BF16, ONE_ROUNDING)])
@pytest.mark.parametrize("kernel", [4, 5])  # even kernels pad one frame less on the right
def test_grouped_conv_1d_matches_autodiff(dtype, tol, kernel):
    rng = np.random.default_rng(kernel)
    groups, per_group = 4, 2
    pad = (kernel // 2, kernel // 2 - (1 - kernel % 2))
    x = _random(rng, (2, 11, groups * per_group), dtype)
    w = _random(rng, (kernel, per_group, groups * per_group), dtype)
    _assert_close(
        lambda x, w: grouped_conv_1d(x, w, pad, groups), _plain_conv(pad, groups), (x, w), tol
    )


def test_float32_gradients_match_finite_differences():
    """Independent of the plain references above: each VJP along one random direction
    against float32 central differences, which were measured within 3e-4 relative, 6e-4
    absolute, of it (eps 3e-3, 5 directions)."""

    def check(f, args):
        check_grads(jax.jit(f), args, order=1, modes=["rev"], eps=3e-3, atol=1e-4, rtol=1e-3)

    rng = np.random.default_rng(0)
    x, w = _random(rng, (2, 3, 16), F32), _random(rng, (16, 4), F32)
    check(lambda a, b: low_dot(a, b, DENSE, None, F32), (x, w))
    pf, pb = (_random(rng, (4, 2, 8), F32) for _ in range(2))
    wh = _random(rng, (2, 2, 8), F32, scale=0.5)
    check(lambda *a: lstm_recurrence(*a, 1), (pf, pb, wh))
    x, w = _random(rng, (2, 9, 4), F32), _random(rng, (4, 2, 4), F32)
    check(lambda x, w: grouped_conv_1d(x, w, (2, 1), 2), (x, w))


def _require_tested_jax(*versions: str) -> None:
    """Fails the test, in one line naming what to re-check, for a JAX release other than
    those the VJPs and XLA flags were measured on."""
    for version in versions:
        if not runtime.is_tested_jax(version):
            pytest.fail(
                f"jax {version} is outside the releases msjax's hand-written VJPs and XLA "
                f"flags were measured on ({runtime.TESTED_JAX}x): time msjax.models.vjp's "
                "low_dot, lstm_recurrence and grouped_conv_1d against plain autodiff with "
                "bench/train_step.py and bench/encoder.py, check that msjax.runtime.settings' "
                "CPU_DEFAULTS XLA flags still exist and still help (tests/test_runtime.py, "
                "bench/RESULTS.md), then widen TESTED_JAX in msjax/runtime/settings.py",
                pytrace=False,
            )


def test_installed_jax_is_a_measured_release():
    _require_tested_jax(jax.__version__, jaxlib.version.__version__)


@pytest.mark.parametrize("version", ["0.11.0", "0.9.2", "0.100.1", "1.10.0", ""])
def test_another_release_fails_naming_what_to_recheck(version):
    assert not runtime.is_tested_jax(version)
    with pytest.raises(pytest.fail.Exception) as failed:
        _require_tested_jax("0.10.2", version)
    message = str(failed.value)
    assert message.startswith(f"jax {version} is outside")
    for name in ("lstm_recurrence", "bench/train_step.py", "bench/encoder.py", "XLA flags",
                 "TESTED_JAX in msjax/runtime/settings.py"):
        assert name in message


@pytest.mark.parametrize("version", ["0.10.0", "0.10.2", "0.10.3.dev20260101"])
def test_measured_releases_pass(version):
    assert runtime.is_tested_jax(version)
    _require_tested_jax(version)
