"""Stacked bidirectional LSTM over the MFCC frames (paper eq. 2).

Equivalent to `torch.nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
bidirectional=True, dropout=p)`: zero initial state, gates i, f, g, o, dropout on the
output of every layer but the last (training only), and the output
[B, T, 2 * hidden] holds the forward direction first, then the backward one.

Both directions of a layer run in one `lax.scan`, batched over a leading direction
axis, and the input projections of all timesteps are computed up front in a single
matmul; only the recurrent matmul stays inside the loop. The weights are therefore
stored fused over the gates (columns in PyTorch's row order i, f, g, o), one bias
per direction (PyTorch's b_ih + b_hh):

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
    hidden = wh.shape[1]
    xs = jnp.stack([x, x[:, ::-1]])  # [2, B, T, in]; backward direction reads reversed time
    proj = jnp.einsum("dbti,dig->tdbg", xs, wi) + bias[:, None, :]  # [T, 2, B, 4H]

    def step(carry, p):
        h, c = carry  # [2, B, H] each
        gates = p + jnp.einsum("dbh,dhg->dbg", h, wh)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((2, x.shape[0], hidden), proj.dtype)
    _, hs = jax.lax.scan(step, (zeros, zeros), proj, unroll=unroll)  # [T, 2, B, H]
    forward = hs[:, 0].transpose(1, 0, 2)
    backward = hs[::-1, 1].transpose(1, 0, 2)
    return jnp.concatenate([forward, backward], axis=-1)


class BiLSTMLayer(nn.Module):
    """One bidirectional layer; its weights are `forward` and `backward` (LSTMWeights)."""

    hidden_size: int
    unroll: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [B, T, in] to [B, T, 2 * hidden_size]."""
        weights = [LSTMWeights(self.hidden_size, name=d)(x.shape[-1]) for d in DIRECTIONS]
        wi, wh, bias = (jnp.stack(w) for w in zip(*weights, strict=True))
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
        for k in range(self.num_layers):
            if k > 0:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = BiLSTMLayer(self.hidden_size, self.unroll, name=f"layer_{k}")(x)
        return x
