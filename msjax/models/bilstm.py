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
- The recurrence has a hand-written backward pass (`msjax.models.vjp.lstm_recurrence`):
  a reverse scan that carries only the state gradients and emits the gate gradients,
  after which the recurrent kernels' gradients are one matmul over all timesteps,
  instead of autodiff's per-step accumulation into a carried [2, H, 4H] buffer. The
  loop multiplies by the recurrent kernels transposed once, before it starts.
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

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from msjax.models.vjp import lstm_recurrence

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


def _layer_time_major(
    x: jax.Array, wi: jax.Array, wh: jax.Array, bias: jax.Array, unroll: int
) -> jax.Array:
    """One bidirectional layer, time-major: [T, B, in] -> [T, B, 2H]."""
    steps, batch, features = x.shape
    flat = x.reshape(steps * batch, features)
    pf, pb = ((flat @ wi[d] + bias[d]).reshape(steps, batch, -1) for d in range(2))
    hf, hb = lstm_recurrence(pf, pb, wh, unroll)
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
