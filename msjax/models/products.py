"""Products that accumulate in float32 whatever their operands' dtype.

`dot_general` has `jax.lax.dot_general`'s signature, so it serves as nn.Dense's
`dot_general` and jnp.einsum's `_dot_general`; `matmul` and `einsum` wrap it for the
head's layers. For float32 operands it is lax.dot_general itself; for bfloat16 (mixed
precision) it accumulates in float32 and its gradient products take bfloat16 operands too.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from msjax.models.vjp import low_dot


def dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """lax.dot_general accumulating in float32, returning `preferred_element_type` or
    else the inputs' dtype.

    A no-op change for float32. For bfloat16 it is what GPUs do anyway, and on CPUs with
    bfloat16 matrix units it lets XLA use them: a bfloat16-output dot is computed far
    more slowly there. Its gradient dots take bfloat16 operands too (`msjax.models.vjp.low_dot`).
    """
    dtype = jnp.result_type(lhs, rhs)
    if dtype == jnp.float32:
        return jax.lax.dot_general(
            lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type
        )
    out_dtype = jnp.dtype(preferred_element_type or dtype)
    return low_dot(lhs, rhs, dimension_numbers, precision, out_dtype)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b for a [..., K] and b [K] or [K, N], through `dot_general`."""
    return dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())))


def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """jnp.einsum of two operands through `dot_general`."""
    return jnp.einsum(spec, a, b, _dot_general=dot_general)


# What `compute_dtype` may be, by name (configs, bin/predict's --compute_dtype).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
