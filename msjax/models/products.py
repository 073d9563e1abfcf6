"""Products that accumulate in float32 whatever their operands' dtype.

`dot_general` has `jax.lax.dot_general`'s signature, so it serves as nn.Dense's
`dot_general` and jnp.einsum's `_dot_general`; `matmul` and `einsum` wrap it for the
head's layers. For float32 operands it is lax.dot_general itself; for bfloat16 (mixed
precision) it accumulates in float32 and its gradient products take bfloat16 operands too.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp


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
    more slowly there. Its gradient dots take bfloat16 operands too (`_low_dot`).
    """
    dtype = jnp.result_type(lhs, rhs)
    if dtype == jnp.float32:
        return jax.lax.dot_general(
            lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type
        )
    out_dtype = jnp.dtype(preferred_element_type or dtype)
    return _low_dot(lhs, rhs, dimension_numbers, precision, out_dtype)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b for a [..., K] and b [K] or [K, N], through `dot_general`."""
    return dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())))


def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """jnp.einsum of two operands through `dot_general`."""
    return jnp.einsum(spec, a, b, _dot_general=dot_general)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _low_dot(
    lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, precision: Any, out_dtype: Any
) -> jax.Array:
    """A low-precision dot with float32 accumulation whose backward stays low-precision.

    Differentiating the float32-accumulating dot directly would give a float32
    cotangent, and autodiff would upcast both gradient dots to float32: the backward
    pass, two thirds of the work, would not be mixed precision. Here the cotangent is
    cast to the operands' dtype first.
    """
    out = jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision, preferred_element_type=jnp.float32
    )
    return out.astype(out_dtype)


def _low_dot_fwd(lhs, rhs, dimension_numbers, precision, out_dtype):
    return _low_dot(lhs, rhs, dimension_numbers, precision, out_dtype), (lhs, rhs)


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


_low_dot.defvjp(_low_dot_fwd, _low_dot_bwd)


# What `compute_dtype` may be, by name (configs, bin/predict's --compute_dtype).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
