"""A drop-in `lax.conv_general_dilated` for NHWC / HWIO convolutions whose gradient is built
from matrix products (XLA:CPU's own convolution gradients are slow).

Measured on this 2-core CPU (batch 2, f32; benchmarks/detector.py's R50-FPN shapes): a 1x1
conv 256 -> 64 at 128x128 takes 3.1 s forward + backward through `lax.conv_general_dilated`
under autodiff, 0.46 s here; a 3x3 conv 64 -> 64 at 128x128 2.2 s vs 1.2 s (torch/oneDNN:
1.2 s and 1.1 s). Why: XLA:CPU lowers the kernel gradient to a convolution whose "batch" is
the output channels and whose window is the whole feature map, which Eigen runs far below its
matrix-product speed.

- 1x1 kernels (any stride, no padding): forward, input gradient and kernel gradient are one
  `dot` each over the (strided) pixels.
- k x k kernels: the forward and the input gradient stay XLA convolutions (those run at
  matrix-product speed); the kernel gradient is k*k dots, dW[i, j] = sum over pixels of the
  input window shifted by (i, j) (outer product with) the output cotangent.
Anything else (dilation, groups, other layouts) falls back to `lax.conv_general_dilated`.
Results equal XLA's up to float summation order.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None):
    """`lax.conv_general_dilated` with matrix-product gradients for plain NHWC / HWIO convs."""
    plain = (lhs.ndim == 4 and _is_nhwc(dimension_numbers) and feature_group_count == 1
             and batch_group_count == 1 and _ones(lhs_dilation) and _ones(rhs_dilation)
             and not isinstance(padding, str) and preferred_element_type is None)
    if not plain:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    strides = tuple(int(s) for s in window_strides)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, strides, pads, precision)


def _is_nhwc(dn) -> bool:
    if dn is None or isinstance(dn, jax.lax.ConvDimensionNumbers):
        return dn is not None and tuple(dn) == tuple(
            jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC))
    return tuple(dn) == _NHWC


def _ones(d: Sequence[int] | None) -> bool:
    return d is None or all(int(v) == 1 for v in d)


def _is_pointwise(w, pads) -> bool:
    return w.shape[0] == 1 and w.shape[1] == 1 and all(p == (0, 0) for p in pads)


def _xla(x, w, strides, pads, precision):
    return jax.lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                        precision=precision)


def _subsample(x, strides):
    return x[:, ::strides[0], ::strides[1]] if strides != (1, 1) else x


# Winograd F(2x2, 3x3) (Lavin & Gray 2016) for stride-1, pad-1 3x3 convs: each 2x2 output tile
# is A^T [(G g G^T) * (B^T d B)] A of its 4x4 input tile d, so the product is 16 batched
# [tiles, Cin] x [Cin, Cout] matrix products (2.25x fewer flops than the direct conv).
# B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
# G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]], A^T = [[1, 1, 1, 0], [0, 1, -1, -1]],
# written out as adds below (no gathers, no dots with the small matrices).
# Where Winograd measured faster than XLA's conv (benchmarks/conv.py, R50-FPN layers at 512 px):
# both channel counts at least WINOGRAD_MIN_CHANNELS, and at least WINOGRAD_MIN_PIXELS_PER_CHANNEL
# output pixels (batch included) per channel of the wider side -- with fewer, the kernel
# transforms (16 / 9 of the kernel, per use) outweigh the saved flops (16x16 512->512 and
# 8x8 256->256 at batch 2 were slower forward + backward).
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_PIXELS_PER_CHANNEL = 2


def _is_winograd(x, w, strides, pads) -> bool:
    b, h, wd = x.shape[:3]
    return (w.shape[:2] == (3, 3) and strides == (1, 1) and pads == ((1, 1), (1, 1))
            and min(w.shape[2], w.shape[3]) >= WINOGRAD_MIN_CHANNELS
            and b * h * wd >= WINOGRAD_MIN_PIXELS_PER_CHANNEL * max(w.shape[2], w.shape[3]))


def _pairs(e0, o0, e1, o1):
    """B^T applied along one axis to a tile's 4 rows given as (even t, odd t, even t+1, odd t+1)."""
    return [e0 - e1, o0 + e1, e1 - o0, o0 - o1]


def _winograd_input(x):
    """x [B, H, W, C] -> V [16, B * th * tw, C], the B^T d B of every 4x4 tile (stride 2) of x
    padded by 1 (plus 1 more at the bottom / right for odd H / W). Slices of an even/odd
    reshape, no gathers; the H pass is materialised once so each output reads 4 inputs."""
    b, h, w, c = x.shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    xp = jnp.pad(x, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
    xr = xp.reshape(b, th + 1, 2, tw + 1, 2, c)
    r = jnp.stack(_pairs(xr[:, :th, 0], xr[:, :th, 1], xr[:, 1:, 0], xr[:, 1:, 1]))
    v = jnp.stack(_pairs(r[:, :, :, :tw, 0], r[:, :, :, :tw, 1], r[:, :, :, 1:, 0],
                         r[:, :, :, 1:, 1]), 1)                      # [4, 4, b, th, tw, c]
    return v.reshape(16, b * th * tw, c)


def _g_rows(g0, g1, g2):
    """G applied along one axis to 3 kernel rows."""
    return [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2]


def _g_t_rows(u0, u1, u2, u3):
    """G^T applied along one axis to 4 Winograd-domain rows (the transpose of `_g_rows`)."""
    return [u0 + 0.5 * (u1 + u2), 0.5 * (u1 - u2), 0.5 * (u1 + u2) + u3]


def _winograd_kernel(w):
    """HWIO 3x3 kernel -> U [16, Cin, Cout] = G g G^T (elementwise; a dot here is slow)."""
    rows = _g_rows(w[0], w[1], w[2])                           # [a] -> [3 (j), Cin, Cout]
    return jnp.stack([jnp.stack(_g_rows(r[0], r[1], r[2])) for r in rows]).reshape(
        16, *w.shape[2:])


def _winograd_kernel_t(du):
    """dU [16, Cin, Cout] -> dw [3, 3, Cin, Cout] = G^T dU G (the transpose of `_winograd_kernel`)."""
    du = du.reshape(4, 4, *du.shape[1:])
    r = _g_t_rows(du[0], du[1], du[2], du[3])                  # [i] -> [4 (b), Cin, Cout]
    return jnp.stack([jnp.stack(_g_t_rows(ri[0], ri[1], ri[2], ri[3])) for ri in r])


def _winograd_output(m, b, h, w):
    """M [16, B * th * tw, D] -> y [B, H, W, D]: A^T M A per tile, tiles interleaved, cropped."""
    th, tw = (h + 1) // 2, (w + 1) // 2
    m = m.reshape(4, 4, b, th, tw, m.shape[-1])
    rows = [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
    y = jnp.stack([jnp.stack([r[0] + r[1] + r[2], r[1] - r[2] - r[3]], 3) for r in rows], 2)
    return y.reshape(b, 2 * th, 2 * tw, -1)[:, :h, :w]


def _winograd_output_t(dy):
    """The transpose of `_winograd_output`: dy [B, H, W, D] -> dM [16, B * th * tw, D]."""
    b, h, w, d = dy.shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    t = jnp.pad(dy, ((0, 0), (0, 2 * th - h), (0, 2 * tw - w), (0, 0)))
    t = t.reshape(b, th, 2, tw, 2, d)
    a = lambda y0, y1: [y0, y0 + y1, y0 - y1, -y1]                 # A (4x2) applied to a pair
    r = jnp.stack(a(t[:, :, 0], t[:, :, 1]))                        # [4, b, th, tw, 2, d]
    return jnp.stack(a(r[..., 0, :], r[..., 1, :]), 1).reshape(16, b * th * tw, d)


def _bdot(a, b, contract, precision):
    """16 matrix products batched over the leading axis."""
    return jax.lax.dot_general(a, b, ((contract[0], contract[1]), ((0,), (0,))),
                               precision=precision)


def _winograd(x, w, precision):
    m = _bdot(_winograd_input(x), _winograd_kernel(w), ((2,), (1,)), precision)
    return _winograd_output(m, x.shape[0], x.shape[1], x.shape[2]).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, precision):
    if _is_pointwise(w, pads):
        return jnp.einsum("bhwc,cd->bhwd", _subsample(x, strides), w[0, 0], precision=precision)
    if _is_winograd(x, w, strides, pads):
        return _winograd(x, w, precision)
    return _xla(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision):
    return _conv(x, w, strides, pads, precision), (x, w)


def _conv_bwd(strides, pads, precision, res, dy):
    x, w = res
    if _is_pointwise(w, pads):
        xs = _subsample(x, strides)
        dw = jnp.einsum("bhwc,bhwd->cd", xs, dy, precision=precision)[None, None]
        dxs = jnp.einsum("bhwd,cd->bhwc", dy, w[0, 0], precision=precision)
        if strides != (1, 1):
            dx = jnp.zeros_like(x).at[:, ::strides[0], ::strides[1]].set(dxs.astype(x.dtype))
        else:
            dx = dxs.astype(x.dtype)
        return dx, dw.astype(w.dtype)
    if _is_winograd(x, w, strides, pads):
        # dx: the input gradient of a stride-1 pad-1 3x3 conv is the same conv of dy with the
        # kernel flipped and its channels swapped. dw: in the Winograd domain, dU = V^T dM per
        # tile position, then dw = G^T dU G.
        dx = _winograd(dy, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), precision)
        du = _bdot(_winograd_input(x), _winograd_output_t(dy), ((1,), (1,)), precision)
        dw = _winograd_kernel_t(du)
        return dx.astype(x.dtype), dw.astype(w.dtype)
    kh, kw = w.shape[:2]
    ho, wo = dy.shape[1:3]
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))

    def window(i, j):
        return jax.lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (ho - 1) * sh + 1,
                                                 j + (wo - 1) * sw + 1, xp.shape[3]),
                             (1, sh, sw, 1))

    dw = jnp.stack([jnp.stack([jnp.einsum("bhwc,bhwd->cd", window(i, j), dy, precision=precision)
                               for j in range(kw)]) for i in range(kh)])
    _, vjp_x = jax.vjp(lambda xx: _xla(xx, w, strides, pads, precision), x)
    (dx,) = vjp_x(dy)
    return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)
