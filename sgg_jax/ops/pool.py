"""Max pooling (NHWC) whose gradient is elementwise work over the window taps.

`nn.max_pool`'s gradient is a select-and-scatter, which XLA:CPU expands into a variadic
reduce-window over iota index arrays plus a scatter: for ResNet's stem pool (3x3/2 over
2 x 256 x 256 x 64) that is ~0.3 s of a ~6.5 s R50-FPN training step on this 2-core CPU. Here
the gradient is, per window tap (kh * kw of them, in row-major order), "is this input the
window's maximum and no earlier tap was": the cotangent goes to that input by the transpose of
the tap's strided slice (an interior pad, fused by XLA). The first maximal tap wins, as
select-and-scatter's, so ties (the zeros after a ReLU) give the same gradient as `nn.max_pool`.
Off the CPU (GPU, TPU) the plain reduce-window and its native select-and-scatter gradient are
used, as `sgg_jax.ops.conv.matmul_gradients` decides for the convolutions.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from sgg_jax.ops.conv import matmul_gradients


def max_pool(x: jnp.ndarray, window: Sequence[int], strides: Sequence[int],
             padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0))) -> jnp.ndarray:
    """`flax.linen.max_pool(x, window, strides, padding)` for NHWC `x` with explicit padding."""
    if not matmul_gradients():
        return _reduce_max(x, tuple(window), tuple(strides), tuple(padding))
    return _max_pool(x, tuple(int(k) for k in window), tuple(int(s) for s in strides),
                     tuple((int(lo), int(hi)) for lo, hi in padding))


def _taps(xp, window, strides, out_hw):
    """The input seen by each window tap: [kh * kw] slices of the padded input, [B, Ho, Wo, C]."""
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    b, c = xp.shape[0], xp.shape[3]
    return [jax.lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                          (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]


def _pad(x, padding):
    return jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)


def _reduce_max(x, window, strides, padding):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1),
                                 ((0, 0), *padding, (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
    return _reduce_max(x, window, strides, padding)


def _max_pool_fwd(x, window, strides, padding):
    y = _max_pool(x, window, strides, padding)
    return y, (x, y)


def _max_pool_bwd(window, strides, padding, res, dy):
    x, y = res
    xp = _pad(x, padding)
    out_hw = y.shape[1:3]
    _, unslice = jax.vjp(lambda z: tuple(_taps(z, window, strides, out_hw)), xp)
    taken = jnp.zeros(y.shape, bool)
    parts = []
    for tap in _taps(xp, window, strides, out_hw):
        hit = (tap == y) & ~taken
        taken = taken | hit
        parts.append(jnp.where(hit, dy, jnp.zeros((), dy.dtype)))
    dxp = unslice(tuple(parts))[0]
    (lo_h, hi_h), (lo_w, hi_w) = padding
    return (dxp[:, lo_h:dxp.shape[1] - hi_h, lo_w:dxp.shape[2] - hi_w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
