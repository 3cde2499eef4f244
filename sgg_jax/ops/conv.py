"""A drop-in `lax.conv_general_dilated` for NHWC / HWIO convolutions whose gradient is built
from matrix products (XLA:CPU's own convolution gradients are slow), with Winograd 3x3 convs.

Measured on this 2-core CPU (batch 2, f32; benchmarks/detector.py's R50-FPN shapes): a 1x1
conv 256 -> 64 at 128x128 takes 3.1 s forward + backward through `lax.conv_general_dilated`
under autodiff, 0.46 s here; a 3x3 conv 64 -> 64 at 128x128 2.2 s vs 1.2 s (torch/oneDNN:
1.2 s and 1.1 s). Why: XLA:CPU lowers the kernel gradient to a convolution whose "batch" is
the output channels and whose window is the whole feature map, which Eigen runs far below its
matrix-product speed.

- 1x1 kernels (any stride, no padding): forward, input gradient and kernel gradient are one
  `dot` each over the (strided) pixels.
- 3x3, stride 1, padding 1, enough channels and pixels (`_is_winograd`): Winograd
  F(4x4, 3x3) (`WINOGRAD_TILE`; F(2x2, 3x3) also available) -- input / kernel / output
  transforms as linear combinations of strided slices and 36 batched matrix products, 4x fewer
  flops than the direct conv. The input gradient is the same Winograd conv of the cotangent
  with the flipped, channel-swapped kernel; the kernel gradient is taken in the Winograd domain
  (n^2 products V^T dM, then G^T dU G). XLA:CPU's direct conv runs the FPN's 3x3 256 -> 256 at
  128x128 at ~40 GFLOP/s; this is ~3x faster there (benchmarks/conv.py has the per-layer
  table against XLA and torch/oneDNN).
- strided k x k kernels (the stem's 7x7/2, the stride-2 3x3s; `STRIDED_GRADIENT_DOTS`): XLA's
  forward; with few input channels the kernel gradient over the s x s space-to-depth input
  (ceil(k/s)^2 dots instead of k*k), otherwise the input gradient by im2col (one dot of the
  cotangent with the kernel, folded back onto the input by the transpose of the window
  slicing) and the kernel gradient as below.
- other (stride-1) k x k kernels: the forward and the input gradient stay XLA convolutions;
  the kernel gradient is k*k dots, dW[i, j] = sum over pixels of the input window shifted by (i, j)
  (outer product with) the output cotangent.
Anything else (dilation, groups, other layouts) falls back to `lax.conv_general_dilated`, and
so does everything when the default backend is not the CPU (`matmul_gradients`): GPUs and TPUs
have fast native convolutions and gradients (cuDNN, the TPU's MXU convs), which these matrix
products would only slow down.
Results equal XLA's up to float rounding (F(4x4, 3x3): ~1e-5 relative in float32, see
`WINOGRAD_TILE`).
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None):
    """`lax.conv_general_dilated` with matrix-product gradients for plain NHWC / HWIO convs."""
    plain = (matmul_gradients() and lhs.ndim == 4 and _is_nhwc(dimension_numbers) and feature_group_count == 1
             and batch_group_count == 1 and _ones(lhs_dilation) and _ones(rhs_dilation)
             and preferred_element_type is None)
    if plain and isinstance(padding, str):
        # "SAME" / "VALID" (Flax's nn.Conv default is "SAME"): the explicit pads lax would use,
        # so 1x1 and 3x3 convs declared with string padding take the fast paths too
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    if not plain:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    strides = tuple(int(s) for s in window_strides)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, strides, pads, precision)


# `nn.Conv` with this op: the conv every model layer uses (same parameters as `nn.Conv`).
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def matmul_gradients() -> bool:
    """Whether convolutions take the matrix-product paths: only on XLA:CPU (decided when the
    caller is traced, as `pallas_kernels.roi_align.resolve_impl`)."""
    return jax.default_backend() == "cpu"


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


# Winograd F(m x m, 3x3) (Lavin & Gray 2016) for stride-1, pad-1 3x3 convs: each m x m output
# tile is A^T [(G g G^T) * (B^T d B)] A of its (m + 2)^2 input tile d, so the product is
# (m + 2)^2 batched [tiles, Cin] x [Cin, Cout] matrix products: 2.25x (m = 2) or 4x (m = 4)
# fewer flops than the direct conv. The small transform matrices are applied as unrolled
# linear combinations of strided slices (no gathers, no dots with them).
_TRANSFORMS = {
    2: dict(BT=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
            G=((1, 0, 0), (.5, .5, .5), (.5, -.5, .5), (0, 0, 1)),
            AT=((1, 1, 1, 0), (0, 1, -1, -1))),
    4: dict(BT=((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
                (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
            G=((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
               (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
            AT=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0),
                (0, 1, -1, 8, -8, 1))),
}
# Output tile size m. F(4x4, 3x3) measured 1.3-1.6x faster than F(2x2, 3x3) forward and
# forward + backward on the R50-FPN layers (benchmarks/conv.py); its float32 error is larger
# (max |error| vs a float64 reference, 3x3 256 -> 256 at 32x32, outputs up to ~5: XLA's conv
# 8e-6, F(2x2) 3e-6, F(4x4) 6e-5, i.e. ~1e-5 relative), far below what training notices.
WINOGRAD_TILE = 4
# Where Winograd measured faster than XLA's conv (benchmarks/conv.py, R50-FPN layers at 512 px):
# both channel counts at least WINOGRAD_MIN_CHANNELS, and at least WINOGRAD_MIN_PIXELS_PER_CHANNEL
# output pixels (batch included) per channel of the wider side -- with fewer, the kernel
# transforms ((m + 2)^2 / 9 times the kernel, per use) outweigh the saved flops (16x16 512->512
# and 8x8 256->256 at batch 2 were slower forward + backward with F(2x2) and F(4x4)).
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_PIXELS_PER_CHANNEL = 2


def _is_winograd(x, w, strides, pads) -> bool:
    b, h, wd = x.shape[:3]
    return (w.shape[:2] == (3, 3) and strides == (1, 1) and pads == ((1, 1), (1, 1))
            and min(w.shape[2], w.shape[3]) >= WINOGRAD_MIN_CHANNELS
            and b * h * wd >= WINOGRAD_MIN_PIXELS_PER_CHANNEL * max(w.shape[2], w.shape[3]))


# Strided k x k convs (the stem's 7x7/2, the stride-2 3x3s): XLA:CPU's forward is on par with
# torch/oneDNN and stays (an im2col forward measured 1.3-3.5x slower: materialising the windows
# costs more than the dot). The gradients, split by input channels (benchmarks/conv.py and
# component timings in docs/detector.md):
# - Cin < STRIDED_FEW_CHANNELS (the 3-channel stem): each of the k*k kernel-gradient dots is
#   bound by reading the whole cotangent, so the space-to-depth form's ceil(k/s)^2 taps win
#   (7x7/2: 16 instead of 49; ~1.4x); the input gradient stays XLA's (the detector never
#   needs the image's).
# - otherwise (3x3/2 at 128-512 channels): space-to-depth's 4 taps over 4C channels do 16/9 of
#   the flops and measured 1.6x slower than the 9 strided dots, which stay; the input gradient
#   by im2col beats XLA's conv over the stride-dilated cotangent by 1.1-1.5x.
# STRIDED_GRADIENT_DOTS = False restores the plain path (XLA input gradient, k*k dots).
STRIDED_GRADIENT_DOTS = True
STRIDED_FEW_CHANNELS = 64


def _im2col(x, kh, kw, strides, pads):
    """x [B, H, W, C] -> [B, Ho, Wo, kh * kw * C]: the conv's input windows, tap-major (HWIO)."""
    b, h, wd, c = x.shape
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    return jnp.concatenate([
        jax.lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                      (1, sh, sw, 1)) for i in range(kh) for j in range(kw)], axis=-1)


def _im2col_input_grad(x, w, dy, strides, pads, precision):
    """dx of a strided conv: dy W^T per window position (one dot), folded back onto x by the
    transpose of the window slicing (interior pads and adds, fused by XLA)."""
    kh, kw, _, d = w.shape
    _, fold = jax.vjp(lambda xx: _im2col(xx, kh, kw, strides, pads), x)
    dcols = jnp.einsum("bhwd,kd->bhwk", dy, w.reshape(-1, d), precision=precision)
    return fold(dcols.astype(x.dtype))[0]


def _space_to_depth_kernel_grad(x, dy, kh, kw, strides, pads, precision):
    """dw of a stride-s k x k conv as a stride-1 ceil(k/s)^2-tap conv over the s x s
    space-to-depth input (s^2 C channels): one copy of the input, ceil(k/s)^2 contiguous
    windows and dots instead of k^2 strided ones (7x7/2: 16 instead of 49). Kernel tap
    (s a + p) is window a, phase p; taps past k (the zero-padded kernel) are dropped."""
    b, h, wd, c = x.shape
    (sh, sw), (ho, wo) = strides, dy.shape[1:3]
    th, tw = -(-kh // sh), -(-kw // sw)
    hp, wp = sh * (ho + th - 1), sw * (wo + tw - 1)
    xp = jnp.pad(x, ((0, 0), (pads[0][0], max(0, hp - h - pads[0][0])),
                     (pads[1][0], max(0, wp - wd - pads[1][0])), (0, 0)))[:, :hp, :wp]
    xs = xp.reshape(b, hp // sh, sh, wp // sw, sw, c).transpose(0, 1, 3, 2, 4, 5)
    xs = xs.reshape(b, hp // sh, wp // sw, sh * sw * c)
    g = jnp.stack([jnp.stack([
        _pixel_outer(xs[:, a:a + ho, e:e + wo], dy, precision).reshape(sh, sw, c, -1)
        for e in range(tw)], 1) for a in range(th)])            # [th, sh, tw, sw, c, d]
    return g.reshape(th * sh, tw * sw, c, -1)[:kh, :kw]


def _pixel_outer(x, dy, precision):
    """sum over pixels of x (outer product) dy: [B, H, W, C], [B, H, W, D] -> [C, D], the kernel
    gradient of one tap. The matrix-product kernel wants the left operand with the pixels minor,
    so XLA copies that operand to [C, P] first; the operand with fewer channels goes on the left
    (the smaller copy: a bottleneck's 256 -> 64 conv copies its 64-channel cotangent, not its
    256-channel input) and the small [D, C] result is transposed instead."""
    if dy.shape[-1] < x.shape[-1]:
        return jnp.einsum("bhwd,bhwc->dc", dy, x, precision=precision).T
    return jnp.einsum("bhwc,bhwd->cd", x, dy, precision=precision)


def _comb(coefs, xs):
    """sum_i coefs[i] * xs[i], skipping zero coefficients (coefs are Python numbers)."""
    out = None
    for c, x in zip(coefs, xs):
        if c == 0:
            continue
        term = x if c == 1 else -x if c == -1 else c * x
        out = term if out is None else out + term
    return out


def _cols(mat):
    return tuple(zip(*mat))


def _winograd_input(x, m):
    """x [B, H, W, C] -> V [n^2, B * th * tw, C] (n = m + 2): B^T d B of every n x n tile
    (stride m) of x padded by 1 (and at the bottom / right up to whole tiles). Tile row i of
    tile t is row t + i // m, phase i % m of the padded input reshaped by m; the H pass is
    materialised once so each output element reads n inputs."""
    bt = _TRANSFORMS[m]["BT"]
    n = m + 2
    b, h, w, c = x.shape
    th, tw = -(-h // m), -(-w // m)
    xp = jnp.pad(x, ((0, 0), (1, m * (th + 1) - h - 1), (1, m * (tw + 1) - w - 1), (0, 0)))
    xr = xp.reshape(b, th + 1, m, tw + 1, m, c)
    d = [xr[:, i // m:i // m + th, i % m] for i in range(n)]           # [b, th, tw+1, m, c]
    r = jnp.stack([_comb(row, d) for row in bt])                       # [n, b, th, tw+1, m, c]
    e = [r[:, :, :, j // m:j // m + tw, j % m] for j in range(n)]      # [n, b, th, tw, c]
    v = jnp.stack([_comb(row, e) for row in bt], 1)                    # [n, n, b, th, tw, c]
    return v.reshape(n * n, b * th * tw, c)


def _winograd_kernel(w, m):
    """HWIO 3x3 kernel -> U [n^2, Cin, Cout] = G g G^T (elementwise; a dot here is slow)."""
    g = _TRANSFORMS[m]["G"]
    rows = jnp.stack([_comb(row, [w[0], w[1], w[2]]) for row in g])    # [n, 3, Cin, Cout]
    u = jnp.stack([_comb(row, [rows[:, 0], rows[:, 1], rows[:, 2]]) for row in g], 1)
    return u.reshape(len(g) ** 2, *w.shape[2:])


def _winograd_kernel_t(du, m):
    """dU [n^2, Cin, Cout] -> dw [3, 3, Cin, Cout] = G^T dU G (transpose of `_winograd_kernel`)."""
    gt = _cols(_TRANSFORMS[m]["G"])
    n = m + 2
    du = du.reshape(n, n, *du.shape[1:])
    rows = jnp.stack([_comb(col, [du[a] for a in range(n)]) for col in gt])   # [3, n, Ci, Co]
    return jnp.stack([_comb(col, [rows[:, b] for b in range(n)]) for col in gt], 1)


def _winograd_output(mm, m, b, h, w):
    """M [n^2, B * th * tw, D] -> y [B, H, W, D]: A^T M A per tile, tiles interleaved, cropped."""
    at = _TRANSFORMS[m]["AT"]
    n = m + 2
    th, tw = -(-h // m), -(-w // m)
    mm = mm.reshape(n, n, b, th, tw, mm.shape[-1])
    rows = [_comb(row, [mm[a] for a in range(n)]) for row in at]      # [p] -> [n, b, th, tw, d]
    y = jnp.stack([jnp.stack([_comb(col, [r[k] for k in range(n)]) for col in at], 3)
                   for r in rows], 2)                                  # [b, th, m, tw, m, d]
    return y.reshape(b, m * th, m * tw, -1)[:, :h, :w]


def _winograd_output_t(dy, m):
    """The transpose of `_winograd_output`: dy [B, H, W, D] -> dM [n^2, B * th * tw, D]."""
    a_rows = _cols(_TRANSFORMS[m]["AT"])                               # A: n rows of m
    n = m + 2
    b, h, w, d = dy.shape
    th, tw = -(-h // m), -(-w // m)
    t = jnp.pad(dy, ((0, 0), (0, m * th - h), (0, m * tw - w), (0, 0)))
    t = t.reshape(b, th, m, tw, m, d)
    r = jnp.stack([_comb(row, [t[:, :, p] for p in range(m)]) for row in a_rows])
    v = jnp.stack([_comb(row, [r[..., q, :] for q in range(m)]) for row in a_rows], 1)
    return v.reshape(n * n, b * th * tw, d)


def _bdot(a, b, contract, precision):
    """Matrix products batched over the leading axis (the n^2 tile positions)."""
    return jax.lax.dot_general(a, b, ((contract[0], contract[1]), ((0,), (0,))),
                               precision=precision)


def _winograd(x, w, precision, m=None):
    m = m or WINOGRAD_TILE
    mm = _bdot(_winograd_input(x, m), _winograd_kernel(w, m), ((2,), (1,)), precision)
    return _winograd_output(mm, m, x.shape[0], x.shape[1], x.shape[2]).astype(x.dtype)


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
        dw = _pixel_outer(xs, dy, precision)[None, None]
        dxs = jnp.einsum("bhwd,cd->bhwc", dy, w[0, 0], precision=precision)
        # stride s: dxs goes to every s-th pixel, zeros between (an interior pad, not a scatter)
        dx = jax.lax.pad(dxs.astype(x.dtype), jnp.zeros((), x.dtype), [
            (0, 0, 0), *((0, n - 1 - (m - 1) * s, s - 1) for n, m, s in
                         zip(x.shape[1:3], dxs.shape[1:3], strides)), (0, 0, 0)])
        return dx, dw.astype(w.dtype)
    if _is_winograd(x, w, strides, pads):
        # dx: the input gradient of a stride-1 pad-1 3x3 conv is the same conv of dy with the
        # kernel flipped and its channels swapped. dw: in the Winograd domain, dU = V^T dM per
        # tile position, then dw = G^T dU G.
        m = WINOGRAD_TILE
        dx = _winograd(dy, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), precision, m)
        du = _bdot(_winograd_input(x, m), _winograd_output_t(dy, m), ((1,), (1,)), precision)
        return dx.astype(x.dtype), _winograd_kernel_t(du, m).astype(w.dtype)
    kh, kw = w.shape[:2]
    xla_dx = lambda: jax.vjp(lambda xx: _xla(xx, w, strides, pads, precision), x)[1](dy)[0]
    if strides != (1, 1) and STRIDED_GRADIENT_DOTS:
        if x.shape[3] < STRIDED_FEW_CHANNELS:
            dw = _space_to_depth_kernel_grad(x, dy, kh, kw, strides, pads, precision)
            return xla_dx(), dw.astype(w.dtype)
        dx = _im2col_input_grad(x, w, dy, strides, pads, precision)
    else:
        dx = xla_dx()
    ho, wo = dy.shape[1:3]
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))

    def window(i, j):
        return jax.lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (ho - 1) * sh + 1,
                                                 j + (wo - 1) * sw + 1, xp.shape[3]),
                             (1, sh, sw, 1))

    dw = jnp.stack([jnp.stack([_pixel_outer(window(i, j), dy, precision)
                               for j in range(kw)]) for i in range(kh)])
    return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)
