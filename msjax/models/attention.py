"""Residual self-attention of MS-EmoBoost (paper eq. 4-10), and its linear layer.

    X' = X + softmax(Q K^T / sqrt(d)) V,   Q, K, V = X W + b,   d = width of X

A single head, no output projection and no normalisation, as in the paper. It runs
on the Bi-LSTM output [B, 300, 512] and on the pooled AlexNet map as 36 tokens of
width 256. `Linear` is nn.Dense with PyTorch's default initialisation; the whole
MS-EmoBoost head uses it because the paper trained from that initialisation.

When the batch holds more tokens than the width (training batches), the scores are
computed with one projection instead of two. Softmax over keys ignores any term that
is the same for every key, so with Q = X Wq + bq and K = X Wk + bk,

    softmax(Q K^T / sqrt(d)) = softmax((X A + u) X^T),   A = Wq Wk^T / sqrt(d),
                                                          u = Wk bq / sqrt(d),

and bk drops out (its gradient is zero either way). A costs d^3 multiply-adds once
per step, the key projection it replaces B N d^2 (timings: bench/RESULTS.md). The
parameters are the paper's Q, K, V layers.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from msjax.models.products import einsum, matmul


def _linear_params(
    module: nn.Module, in_features: int, features: int, zero_init: bool
) -> tuple[jax.Array, jax.Array]:
    """Declares 'kernel' [in, out] and 'bias' [out] on `module`, torch.nn.Linear's init.

    Both are uniform(+-1/sqrt(in)), which is what PyTorch's kaiming_uniform(a=sqrt(5))
    default amounts to; `zero_init` starts both at zero.
    """
    bound = 1.0 / math.sqrt(in_features)

    def init(key, shape, dtype=jnp.float32):
        if zero_init:
            return jnp.zeros(shape, dtype)
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    kernel = module.param("kernel", init, (in_features, features))
    bias = module.param("bias", init, (features,))
    return kernel, bias


class Linear(nn.Module):
    """Dense layer (params 'kernel' [in, out], 'bias' [out]) initialised like torch.nn.Linear.

    `zero_init` starts kernel and bias at zero.
    """

    features: int
    zero_init: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [..., in] to [..., features]."""
        kernel, bias = _linear_params(self, x.shape[-1], self.features, self.zero_init)
        return matmul(x, kernel) + bias


class LinearWeights(nn.Module):
    """A `Linear`'s parameters, returned instead of applied (same names and init)."""

    features: int

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        """Returns (kernel [in_features, features], bias [features])."""
        return _linear_params(self, in_features, self.features, zero_init=False)


class ResidualSelfAttention(nn.Module):
    """X + softmax(Q K^T / sqrt(d)) V over the token axis.

    Params: 'query', 'key', 'value', each a Linear(d -> d) with bias.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Attends over tokens.

        Args:
            x: [B, N, d] (N tokens of width d).

        Returns:
            [B, N, d].
        """
        batch, tokens, width = x.shape
        wq, bq = LinearWeights(width, name="query")(width)
        wk, bk = LinearWeights(width, name="key")(width)
        v = Linear(width, name="value")(x)
        scale = 1.0 / math.sqrt(width)
        if batch * tokens > width:  # one [d, d] product beats a second projection
            a = matmul(wq, wk.T) * scale  # [d, d]
            u = matmul(wk, bq) * scale  # [d]
            scores = einsum("bnd,bmd->bnm", matmul(x, a) + u, x)  # [B, N, N]
        else:
            q, k = matmul(x, wq) + bq, matmul(x, wk) + bk
            scores = einsum("bnd,bmd->bnm", q, k) * scale
        return x + einsum("bnm,bmd->bnd", jax.nn.softmax(scores, axis=-1), v)
