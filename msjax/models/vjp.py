"""msjax's hand-written reverse-mode derivatives (jax.custom_vjp), one per function.

Each function's forward pass is plain JAX code; only its backward pass is written by
hand, because JAX's own derivative of that code is slow on a CPU or runs in the wrong
precision. The gradients are autodiff's up to rounding (tests/test_vjp.py).

- `low_dot`, the bfloat16 path of msjax.models.products.dot_general: a dot accumulating
  in float32 whose backward keeps bfloat16 operands. Autodiff would carry a float32
  cotangent into both gradient products and run them in float32, so the backward pass,
  two thirds of the work, would not be mixed precision. The dense layers' kernel
  gradient x^T dy also moves x into [K, rows] order: left as autodiff's transpose, it ran
  at float32 speed in XLA's CPU bfloat16 kernels (8.6 ms per encoder layer against 2.2
  ms for the other products, bench/RESULTS.md).
- `lstm_recurrence`, the Bi-LSTM's loop over time: a reverse scan that carries only the
  state gradients and overwrites the gates with their gradients in place; the recurrent
  kernels' gradient is then one matmul over all timesteps, instead of autodiff's
  accumulation into a carried [2, H, 4H] buffer at every step.
- `grouped_conv_1d`, the encoder's positional convolution: JAX's weight gradient of a
  grouped convolution is a `batch_group_count` convolution, which XLA's CPU backend took
  1.3 s per wav2vec2-base step at batch 4; written as an ordinary grouped convolution it
  takes 0.08 s (bench/RESULTS.md).

All three were timed against autodiff on the JAX releases msjax.runtime.TESTED_JAX names
(the range its XLA flags were measured on too), with bench/train_step.py and
bench/encoder.py. A later JAX may make autodiff as fast, so tests/test_vjp.py fails on
any other release until they are timed again.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

# low_dot


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def low_dot(
    lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, precision: Any, out_dtype: Any
) -> jax.Array:
    """A low-precision dot with float32 accumulation whose backward stays low-precision.

    `lax.dot_general(..., preferred_element_type=float32)` cast to `out_dtype`. Its
    backward casts the cotangent to the operands' dtype first, so both gradient products
    take low-precision operands (and accumulate in float32).
    """
    out = jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision, preferred_element_type=jnp.float32
    )
    return out.astype(out_dtype)


def _low_dot_fwd(lhs, rhs, dimension_numbers, precision, out_dtype):
    return low_dot(lhs, rhs, dimension_numbers, precision, out_dtype), (lhs, rhs)


def _low_dot_bwd(dimension_numbers, precision, out_dtype, residuals, cotangent):
    del out_dtype
    lhs, rhs = residuals
    cotangent = cotangent.astype(jnp.result_type(lhs, rhs))
    (contract_lhs, contract_rhs), (batch_lhs, _) = dimension_numbers
    if (rhs.ndim == 2 and tuple(contract_lhs) == (lhs.ndim - 1,)
            and tuple(contract_rhs) == (0,) and not batch_lhs):  # nn.Dense's product
        return _dense_grads(lhs, rhs, cotangent, precision)
    _, vjp = jax.vjp(
        lambda a, b: jax.lax.dot_general(a, b, dimension_numbers, precision), lhs, rhs
    )
    return vjp(cotangent)


def _dense_grads(
    x: jax.Array, w: jax.Array, dy: jax.Array, precision: Any
) -> tuple[jax.Array, jax.Array]:
    """Gradients of y = x w (x [..., K], w [K, N], dy [..., N]) with float32 accumulation.

    Both products accumulate in float32 and are cast after. The kernel gradient x^T dy
    contracts over x's rows: XLA's CPU bfloat16 kernels are several times slower when
    the left operand's contracted dimension is its major one, and a plain transpose only
    changes x's layout, so x is moved into [K, rows] order through a reshape that no
    layout change can express.
    """
    k, n = w.shape
    x2, dy2 = x.reshape(-1, k), dy.reshape(-1, n)
    rows = x2.shape[0]

    def dot(a, b, contract):
        return jax.lax.dot_general(
            a, b, (contract, ((), ())), precision, preferred_element_type=jnp.float32
        )

    dx = dot(dy2, w, ((1,), (1,)))
    if k % 8 == 0:
        xt = x2.reshape(rows, k // 8, 8).transpose(1, 2, 0).reshape(k, rows)
    else:
        xt = x2.T
    dw = dot(xt, dy2, ((1,), (0,)))
    return dx.reshape(x.shape).astype(x.dtype), dw.astype(w.dtype)


low_dot.defvjp(_low_dot_fwd, _low_dot_bwd)


# lstm_recurrence


def _matmul(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
    """2-D matmul contracting a's axis contract[0] with b's contract[1], float32 result."""
    dims = (((contract[0],), (contract[1],)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _recurrent(h: jax.Array, wh: jax.Array) -> jax.Array:
    """[2, B, H] x [2, H, 4H] -> [2, B, 4H] (float32), one matmul per direction."""
    return jnp.einsum("dbh,dhg->dbg", h.astype(wh.dtype), wh, preferred_element_type=jnp.float32)


def _recurrence_fwd(
    pf: jax.Array, pb: jax.Array, wh: jax.Array, unroll: int
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, ...]]:
    """Forward scan; also returns what the backward pass needs.

    Each timestep overwrites its input projections with its activated gates, in the
    same [T, B, 4H] buffers (in place: XLA aliases a loop-carried buffer), so the
    gates need no zero-filled output buffer of their own.
    """
    steps, batch, _ = pf.shape
    zeros = jnp.zeros((2, batch, wh.shape[1]), jnp.float32)  # [2, B, H]
    gf, gb = pf.astype(jnp.float32), pb.astype(jnp.float32)  # projections, then gates

    def step(carry, s):
        h, c, gf, gb = carry
        r = steps - 1 - s  # the backward direction's timestep
        proj = jnp.stack([gf[s], gb[r]])  # [2, B, 4H]
        i, f, g, o = jnp.split(proj + _recurrent(h, wh), 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c = f * c + i * g
        tanh_c = jnp.tanh(c)
        h = o * tanh_c
        gates = jnp.concatenate([i, f, g, o], axis=-1)
        gf = jax.lax.dynamic_update_index_in_dim(gf, gates[0], s, 0)
        gb = jax.lax.dynamic_update_index_in_dim(gb, gates[1], r, 0)
        return (h, c, gf, gb), (h[0], h[1], c, tanh_c)

    (_, _, gf, gb), (hf, hb, cs, tanh_cs) = jax.lax.scan(
        step, (zeros, zeros, gf, gb), jnp.arange(steps), unroll=unroll
    )
    hb = hb[::-1]  # input time order
    outputs = (hf.astype(pf.dtype), hb.astype(pb.dtype))
    return outputs, (hf, hb, gf, gb, cs, tanh_cs, wh)


def _recurrence_bwd(
    unroll: int, residuals: tuple[jax.Array, ...], d_out: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Reverse scan over the gate gradients, then the kernel gradients in one matmul each.

    Residuals: hidden states hf, hb [T, B, H] and gates gf, gb [T, B, 4H] in input time
    order; cell states and their tanh [T, 2, B, H] in scan order. The gate gradients
    overwrite the gates in place, timestep by timestep.
    """
    hf, hb, gf, gb, cs, tanh_cs, wh = residuals
    d_hf, d_hb = map(jnp.asarray, d_out)  # jax.vjp's callers may pass NumPy cotangents
    steps, batch, hidden = hf.shape
    zeros = jnp.zeros((2, batch, hidden), jnp.float32)
    c_prev = jnp.concatenate([zeros[None], cs[:-1]])  # c before each step
    # Transposed once here: contracting the stored [H, 4H] kernel on its last axis
    # inside the loop re-packs it every timestep (that product took 1.5x as long).
    wh_t = jnp.swapaxes(wh, 1, 2)  # [2, 4H, H]

    def step(carry, xs):
        dh_next, dc_next, gf, gb = carry
        s, c_before, tanh_c = xs
        r = steps - 1 - s
        dh = jnp.stack([d_hf[s], d_hb[r]]).astype(jnp.float32) + dh_next
        i, f, g, o = jnp.split(jnp.stack([gf[s], gb[r]]), 4, axis=-1)
        dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
        d_pre = jnp.concatenate(
            [
                dc * g * i * (1.0 - i),  # input gate (sigmoid)
                dc * c_before * f * (1.0 - f),  # forget gate (sigmoid)
                dc * i * (1.0 - g * g),  # cell candidate (tanh)
                dh * tanh_c * o * (1.0 - o),  # output gate (sigmoid)
            ],
            axis=-1,
        )  # [2, B, 4H]
        dh_prev = jnp.einsum(
            "dbg,dgh->dbh", d_pre.astype(wh.dtype), wh_t, preferred_element_type=jnp.float32
        )
        gf = jax.lax.dynamic_update_index_in_dim(gf, d_pre[0], s, 0)
        gb = jax.lax.dynamic_update_index_in_dim(gb, d_pre[1], r, 0)
        return (dh_prev, dc * f, gf, gb), None

    xs = (jnp.arange(steps), c_prev, tanh_cs)
    (_, _, d_pf, d_pb), _ = jax.lax.scan(
        step, (zeros, zeros, gf, gb), xs, reverse=True, unroll=unroll
    )
    d_pf, d_pb = d_pf.astype(wh.dtype), d_pb.astype(wh.dtype)
    # The state each timestep started from: the previous one forward, the next one
    # (in time) for the backward direction.
    hf_prev = jnp.concatenate([zeros[:1], hf[:-1]])
    hb_prev = jnp.concatenate([hb[1:], zeros[:1]])
    d_wh = [
        _matmul(
            h.astype(wh.dtype).reshape(steps * batch, hidden),
            d_pre.reshape(steps * batch, -1),
            (0, 0),
        )
        for h, d_pre in ((hf_prev, d_pf), (hb_prev, d_pb))
    ]
    return d_pf, d_pb, jnp.stack(d_wh).astype(wh.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def lstm_recurrence(
    pf: jax.Array, pb: jax.Array, wh: jax.Array, unroll: int
) -> tuple[jax.Array, jax.Array]:
    """LSTM recurrence of both directions from zero state (gates i, f, g, o).

    Args:
        pf: forward direction's input projections plus bias, time-major [T, B, 4H].
        pb: the same for the backward direction, in input time order.
        wh: recurrent kernels [2, H, 4H] (forward, backward).
        unroll: timesteps per scan iteration.

    Returns:
        hidden states (forward [T, B, H], backward [T, B, H]), both in input time order.
    """
    return _recurrence_fwd(pf, pb, wh, unroll)[0]


lstm_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


# grouped_conv_1d


def _conv_1d(x: jax.Array, w: jax.Array, pad: tuple[int, int], groups: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(1,), padding=(pad,),
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def grouped_conv_1d(x: jax.Array, w: jax.Array, pad: tuple[int, int], groups: int) -> jax.Array:
    """Grouped stride-1 convolution over time with a fast weight gradient.

    Args:
        x: [B, T, D] input.
        w: [K, D/groups, D] kernel (Flax "WIO" layout, output channels by group).
        pad: (left, right) zero padding, with T + left + right - K + 1 output frames.
        groups: the feature group count.

    Returns:
        [B, T', D], the same as `lax.conv_general_dilated` with `feature_group_count`.
    """
    return _conv_1d(x, w, pad, groups)


def _grouped_conv_fwd(x, w, pad, groups):
    return _conv_1d(x, w, pad, groups), (x, w)


def _grouped_conv_bwd(pad, groups, residuals, dy):
    x, w = residuals
    # The convolution is linear in x: its transpose gives dx without a forward pass.
    (dx,) = jax.linear_transpose(lambda x_: _conv_1d(x_, w, pad, groups), x)(dy)
    # dW[k, i, (g, o)] = sum_{b, t} x_pad[b, t + k, (g, i)] dy[b, t, (g, o)]: a grouped
    # convolution over time whose "batch" is the input channel i, whose contracted
    # features are the batch b (per group) and whose window is the T' output frames.
    batch, _, dim = x.shape
    per_group = w.shape[1]
    frames = dy.shape[1]
    x_pad = jnp.pad(x, ((0, 0), pad, (0, 0)))
    lhs = x_pad.reshape(batch, -1, groups, per_group).transpose(3, 1, 2, 0)
    lhs = lhs.reshape(per_group, -1, groups * batch)  # [i, T_pad, (g, b)]
    rhs = dy.reshape(batch, frames, groups, dim // groups).transpose(1, 0, 2, 3)
    rhs = rhs.reshape(frames, batch, dim)  # [t, b, (g, o)]
    dw = _conv_1d(lhs, rhs, (0, 0), groups)  # [i, k, (g, o)]
    return dx, dw.transpose(1, 0, 2).astype(w.dtype)


grouped_conv_1d.defvjp(_grouped_conv_fwd, _grouped_conv_bwd)
