"""Stacked bidirectional LSTM over the MFCC frames (paper eq. 2).

Equivalent to `torch.nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
bidirectional=True, dropout=p)`: zero initial state, gates i, f, g, o, dropout on the
output of every layer but the last (training only), and the output
[B, T, 2 * hidden] holds the forward direction first, then the backward one.

How it is computed (the layer is latency bound on a CPU, so layout matters):

- The stack works time-major ([T, B, features]) inside, so that every large matmul
  is a plain 2-D product over contiguous memory, with no transposes around it.
- The input projections of all timesteps are computed up front, one matmul per
  direction; only the small recurrent matmul stays inside the loop.
- Both directions run in one `lax.scan`, batched over a leading direction axis: step
  s advances the forward direction at time s and the backward one at time T-1-s,
  reading their projections in place instead of a time-reversed copy.
- The recurrence has a hand-written backward pass (`_recurrence`): a reverse scan
  that carries only the state gradients and emits the gate gradients, after which
  the recurrent kernels' gradients are one matmul over all timesteps, instead of
  autodiff's per-step accumulation into a carried [2, H, 4H] buffer. The loop
  multiplies by the recurrent kernels transposed once, before it starts.
- The loops write in place: the forward one turns the projections into the gates,
  the backward one the gates into their gradients, in the same [T, B, 4H] buffers,
  instead of filling fresh zeroed outputs (timings: bench/RESULTS.md).
- State and gates are float32; under bf16 mixed precision only the matmuls run in
  bf16.

The weights are stored fused over the gates (columns in PyTorch's row order i, f,
g, o), one bias per direction (PyTorch's b_ih + b_hh):

    layer_{k}/forward/input_kernel   [in_k, 4H]   (in_0 = input width, else 2H)
    layer_{k}/forward/hidden_kernel  [H, 4H]
    layer_{k}/forward/bias           [4H]
    layer_{k}/backward/...           the same for the reversed direction

msjax/convert/lstm.py maps a torch.nn.LSTM state dict onto this tree.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

DIRECTIONS = ("forward", "backward")


def _uniform(bound: float) -> nn.initializers.Initializer:
    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _summed_uniform(bound: float) -> nn.initializers.Initializer:
    """Distribution of PyTorch's b_ih + b_hh, both uniform(+-bound)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        k1, k2 = jax.random.split(key)
        return _uniform(bound)(k1, shape, dtype) + _uniform(bound)(k2, shape, dtype)

    return init


class LSTMWeights(nn.Module):
    """One direction's fused LSTM weights, PyTorch-initialised (uniform +-1/sqrt(H))."""

    hidden_size: int

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns (input_kernel [in, 4H], hidden_kernel [H, 4H], bias [4H])."""
        gates = 4 * self.hidden_size
        bound = 1.0 / math.sqrt(self.hidden_size)
        wi = self.param("input_kernel", _uniform(bound), (in_features, gates))
        wh = self.param("hidden_kernel", _uniform(bound), (self.hidden_size, gates))
        bias = self.param("bias", _summed_uniform(bound), (gates,))
        return wi, wh, bias


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
    d_hf, d_hb = d_out
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
def _recurrence(
    pf: jax.Array, pb: jax.Array, wh: jax.Array, unroll: int
) -> tuple[jax.Array, jax.Array]:
    """LSTM recurrence of both directions from zero state.

    Args:
        pf: forward direction's input projections plus bias, time-major [T, B, 4H].
        pb: the same for the backward direction, in input time order.
        wh: recurrent kernels [2, H, 4H] (forward, backward).
        unroll: timesteps per scan iteration.

    Returns:
        hidden states (forward [T, B, H], backward [T, B, H]), both in input time order.
    """
    return _recurrence_fwd(pf, pb, wh, unroll)[0]


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _layer_time_major(
    x: jax.Array, wi: jax.Array, wh: jax.Array, bias: jax.Array, unroll: int
) -> jax.Array:
    """One bidirectional layer, time-major: [T, B, in] -> [T, B, 2H]."""
    steps, batch, features = x.shape
    flat = x.reshape(steps * batch, features)
    pf, pb = ((flat @ wi[d] + bias[d]).reshape(steps, batch, -1) for d in range(2))
    hf, hb = _recurrence(pf, pb, wh, unroll)
    return jnp.concatenate([hf, hb], axis=-1)


def bidirectional_scan(
    x: jax.Array, wi: jax.Array, wh: jax.Array, bias: jax.Array, unroll: int = 1
) -> jax.Array:
    """Runs both LSTM directions over time with zero initial state.

    Args:
        x: inputs [B, T, in].
        wi: input kernels [2, in, 4H] (forward, backward).
        wh: recurrent kernels [2, H, 4H].
        bias: biases [2, 4H].
        unroll: timesteps per scan iteration.

    Returns:
        [B, T, 2H]: forward outputs, then backward outputs, both in input time order.
    """
    out = _layer_time_major(x.transpose(1, 0, 2), wi, wh, bias, unroll)
    return out.transpose(1, 0, 2)


class BiLSTMLayer(nn.Module):
    """One bidirectional layer; its weights are `forward` and `backward` (LSTMWeights).

    Attributes:
        hidden_size: H, units per direction.
        unroll: timesteps per scan iteration.
        time_major: inputs and outputs are [T, B, ...] instead of [B, T, ...].
    """

    hidden_size: int
    unroll: int = 1
    time_major: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [B, T, in] (or [T, B, in]) to [B, T, 2 * hidden_size] (or [T, B, ...])."""
        weights = [LSTMWeights(self.hidden_size, name=d)(x.shape[-1]) for d in DIRECTIONS]
        wi, wh, bias = (jnp.stack(w) for w in zip(*weights, strict=True))
        if self.time_major:
            return _layer_time_major(x, wi, wh, bias, self.unroll)
        return bidirectional_scan(x, wi, wh, bias, self.unroll)


class BiLSTM(nn.Module):
    """Stacked bidirectional LSTM, batch-major.

    Attributes:
        hidden_size: H, units per direction (256 in the paper).
        num_layers: stacked layers (2).
        dropout_rate: dropout between layers, applied only when training (0.5).
        unroll: timesteps per scan iteration (speed only; results are identical).
    """

    hidden_size: int = 256
    num_layers: int = 2
    dropout_rate: float = 0.5
    unroll: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Runs the stack.

        Args:
            x: [B, T, in].
            train: enables the between-layer dropout (needs the 'dropout' rng).

        Returns:
            [B, T, 2 * hidden_size].
        """
        x = x.transpose(1, 0, 2)  # time-major between layers: one transpose in, one out
        for k in range(self.num_layers):
            if k > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = BiLSTMLayer(self.hidden_size, self.unroll, time_major=True, name=f"layer_{k}")(x)
        return x.transpose(1, 0, 2)
