"""Residual self-attention of MS-EmoBoost (paper eq. 4-10), and its linear layer.

    X' = X + softmax(Q K^T / sqrt(d)) V,   Q, K, V = X W + b,   d = width of X

A single head, no output projection and no normalisation, as in the paper. It runs
on the Bi-LSTM output [B, 300, 512] and on the pooled AlexNet map as 36 tokens of
width 256. `Linear` is nn.Dense with PyTorch's default initialisation; the whole
MS-EmoBoost head uses it because the paper trained from that initialisation.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


class Linear(nn.Module):
    """Dense layer (params 'kernel' [in, out], 'bias' [out]) initialised like torch.nn.Linear.

    Kernel and bias are uniform(+-1/sqrt(in)), which is what PyTorch's
    kaiming_uniform(a=sqrt(5)) default amounts to; `zero_init` starts both at zero.
    """

    features: int
    zero_init: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [..., in] to [..., features]."""
        bound = 1.0 / math.sqrt(x.shape[-1])

        def init(key, shape, dtype=jnp.float32):
            if self.zero_init:
                return jnp.zeros(shape, dtype)
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        kernel = self.param("kernel", init, (x.shape[-1], self.features))
        bias = self.param("bias", init, (self.features,))
        return x @ kernel + bias


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
        width = x.shape[-1]
        q = Linear(width, name="query")(x)
        k = Linear(width, name="key")(x)
        v = Linear(width, name="value")(x)
        scores = jnp.einsum("bnd,bmd->bnm", q, k) / math.sqrt(width)  # [B, N, N]
        return x + jnp.einsum("bnm,bmd->bnd", jax.nn.softmax(scores, axis=-1), v)
