"""RoI-align and RoI-pool with torchvision semantics: a fast XLA path and a Pallas kernel.

Layout: features NHWC [B, H, W, C]; boxes [R, 4] x1y1x2y2 in input-image coordinates;
box_indices [R] int32 (which image); outputs [R, out_h, out_w, C].

Sampling (torchvision `roi_align` with a fixed `sampling_ratio` g): per output bin, g x g
bilinear samples averaged. The bilinear weights are separable, so every RoI is described by
per-axis "taps": for each output row p the 2g feature rows it reads (y_low / y_high of its g
samples) with their weights, already divided by g and zeroed for samples outside [-1, extent].

XLA path (default off-accelerator): the 4 g^2 taps of every bin are gathered as whole C-vectors
(one 1-D row gather per tap, which XLA CPU runs at memory speed) and summed, in a loop over
windows of ~512 bins (`_gather_sum_chunked`; the loop is a fusion boundary that stops XLA from
fusing the index arithmetic into the gathers or the gathers into a consumer such as a sum,
10-40x slower). Its gradient is the transposed scatter-add, but not autodiff's (per-tap
scatters of whole [R*oh*ow, C] arrays, slow on CPU): a loop over windows of bins whose weighted
cotangent rows (~2 MB) are built and scattered while cache-resident (`_scatter_taps`); 10-20x
faster on CPU than autodiff or per-image dense matmuls. `multilevel_roi_align` uses the same
gather and backward.

Pallas path: one grid step per RoI; the image (or a K x K window of it, placed by
scalar-prefetched offsets) is the input block, and the bin values are two small matmuls with the
per-RoI interpolation matrices Wy [out_h, K] and Wx [out_w, K]. Pallas has no reverse mode, so
both paths are wrapped in `jax.custom_vjp` with the same pure-JAX backward. Box coordinates get
no gradient (as in torchvision).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

IMPLS = ("auto", "xla", "pallas")


# --------------------------------------------------------------------------- argument checks
def _pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(output_size, (int, np.integer)):
        out = (int(output_size), int(output_size))
    else:
        out = tuple(int(v) for v in output_size)
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"pallas_kernels/roi_align.py: output_size must be a positive int or "
                         f"(out_h, out_w), got {output_size!r}")
    return out  # type: ignore[return-value]


def _check(features, boxes, box_indices, sampling_ratio: int, impl: str) -> None:
    where = "pallas_kernels/roi_align.py"
    if features.ndim != 4:
        raise ValueError(f"{where}: features must be NHWC [B,H,W,C], got shape {features.shape}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes must be [R,4] x1y1x2y2, got shape {boxes.shape}")
    if box_indices.shape != (boxes.shape[0],):
        raise ValueError(f"{where}: box_indices must be [R]={boxes.shape[0]}, got "
                         f"{box_indices.shape}")
    if not jnp.issubdtype(box_indices.dtype, jnp.integer):
        raise ValueError(f"{where}: box_indices must be integer, got {box_indices.dtype}")
    if int(sampling_ratio) < 1:
        raise ValueError(f"{where}: sampling_ratio must be a fixed integer >= 1 (adaptive "
                         f"sampling is data-dependent and not jittable), got {sampling_ratio}")
    if impl not in IMPLS:
        raise ValueError(f"{where}: impl must be one of {IMPLS}, got {impl!r}")


# --------------------------------------------------------------------------- sampling geometry
def _axis_taps(start, length, out: int, g: int, extent) -> tuple[jax.Array, jax.Array]:
    """Per-axis taps of torchvision's bilinear sampling.

    start, length: [R] RoI start and size in feature coordinates (offset already applied).
    extent: size of the axis (scalar or [R]). Returns idx [R, out, 2g] int32 (in-range) and
    w [R, out, 2g] float32 (divided by g, zero for samples outside [-1, extent]).
    """
    start = start.astype(jnp.float32)[:, None, None]
    bin_sz = (length.astype(jnp.float32) / out)[:, None, None]
    extent = jnp.asarray(extent, jnp.float32)
    if extent.ndim == 1:
        extent = extent[:, None, None]
    p = jnp.arange(out, dtype=jnp.float32)[None, :, None]
    i = jnp.arange(g, dtype=jnp.float32)[None, None, :]
    y = start + p * bin_sz + (i + 0.5) * bin_sz / g
    valid = (y >= -1.0) & (y <= extent)
    y = jnp.maximum(y, 0.0)
    low = jnp.floor(y)
    at_end = low >= extent - 1
    low = jnp.where(at_end, extent - 1, low)
    high = jnp.where(at_end, extent - 1, low + 1)
    frac = jnp.where(at_end, 0.0, y - low)
    scale = jnp.where(valid, 1.0 / g, 0.0)
    idx = jnp.concatenate([low, high], -1).astype(jnp.int32)
    w = jnp.concatenate([(1.0 - frac) * scale, frac * scale], -1)
    return idx, w


def _roi_taps(boxes, spatial_scale, aligned: bool, out_hw: tuple[int, int], g: int, height,
              width):
    """Row taps (yi, yw) [R,out_h,2g] and column taps (xi, xw) [R,out_w,2g] of every RoI."""
    boxes = boxes.astype(jnp.float32)
    spatial_scale = jnp.asarray(spatial_scale, jnp.float32)
    offset = 0.5 if aligned else 0.0
    x1 = boxes[:, 0] * spatial_scale - offset
    y1 = boxes[:, 1] * spatial_scale - offset
    x2 = boxes[:, 2] * spatial_scale - offset
    y2 = boxes[:, 3] * spatial_scale - offset
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    yi, yw = _axis_taps(y1, roi_h, out_hw[0], g, height)
    xi, xw = _axis_taps(x1, roi_w, out_hw[1], g, width)
    return yi, yw, xi, xw


def _dense(idx, w, n: int) -> jax.Array:
    """Taps -> dense interpolation matrix [R, out, n] (duplicate indices add up)."""
    return jnp.einsum("rpk,rpkn->rpn", w, jax.nn.one_hot(idx, n, dtype=w.dtype))


def _flat_taps(row_base, yi, yw, xi, xw, width):
    """Flat row indices [R*oh*ow, T] and weights into a [N*H*W, C] table; T = (2g)^2.

    row_base: [R] index of the RoI's image first row (b*H, or level offset + b*H)."""
    r, oh, k = yi.shape
    ow = xi.shape[1]
    width = jnp.asarray(width, jnp.int32)
    if width.ndim == 1:
        width = width[:, None, None, None, None]
    idx = ((row_base[:, None, None, None, None] + yi[:, :, None, :, None]) * width
           + xi[:, None, :, None, :])
    wt = yw[:, :, None, :, None] * xw[:, None, :, None, :]
    idx = idx.reshape(r * oh * ow, k * k)
    wt = wt.reshape(r * oh * ow, k * k)
    return idx, wt


def _gather_sum(table, idx, wt) -> jax.Array:
    """sum_k wt[:, k] * table[idx[:, k]]: one plain row gather per tap (fast on XLA CPU)."""
    acc = None
    for k in range(idx.shape[1]):
        term = jnp.take(table, idx[:, k], axis=0, mode="clip") * wt[:, k, None]
        acc = term if acc is None else acc + term
    return acc


# Output floats per gather step (~512 KB).
_GATHER_CHUNK_FLOATS = 1 << 17


def _steps(n: int, per: int):
    """Covers rows [0, n) with ceil(n / per) windows of `per` rows (per <= n) without padding:
    window k starts at min(k * per, n - per), so the last one may overlap the one before."""
    steps = -(-n // per)
    return steps, lambda k: jnp.minimum(k * per, n - per)


def _gather_sum_chunked(table, idx, wt, chunk_floats: int = _GATHER_CHUNK_FLOATS):
    """`_gather_sum` as a loop over fixed-size windows of bins, written into the output.

    The loop is a fusion boundary: the tap indices/weights enter it materialised and its
    output leaves materialised. Without it XLA CPU fuses the index arithmetic into the gathers
    (recomputed for every channel) or the gathers into the consumer (e.g. a sum), 10-40x
    slower; an optimization_barrier does not stop that (CPU expands barriers before fusion).
    An overlapping last window rewrites identical values."""
    n, t = idx.shape
    c = table.shape[-1]
    per = max(1, min(n, chunk_floats // c))
    steps, start = _steps(n, per)

    def body(k, out):
        s = start(k)
        rows = _gather_sum(table, jax.lax.dynamic_slice_in_dim(idx, s, per),
                           jax.lax.dynamic_slice_in_dim(wt, s, per))
        return jax.lax.dynamic_update_slice_in_dim(out, rows, s, 0)

    return jax.lax.fori_loop(0, steps, body, jnp.zeros((n, c), table.dtype))


# --------------------------------------------------------------------------- XLA forward
def _xla_forward(features, yi, yw, xi, xw, box_indices):
    b, h, w, c = features.shape
    r, oh, ow = yi.shape[0], yi.shape[1], xi.shape[1]
    idx, wt = _flat_taps(box_indices.astype(jnp.int32) * h, yi, yw, xi, xw, w)
    out = _gather_sum_chunked(features.reshape(b * h * w, c), idx, wt.astype(features.dtype))
    return out.reshape(r, oh, ow, c)


# --------------------------------------------------------------------------- backward
# Updates per scatter step (floats): ~2 MB keeps one step's weighted rows cache-resident.
_SCATTER_CHUNK_FLOATS = 1 << 19


def _scatter_taps(num_rows: int, idx, wt, dout, chunk_floats: int = _SCATTER_CHUNK_FLOATS):
    """Transpose of `_gather_sum`: [num_rows, C] float32 with row idx[n, k] receiving
    wt[n, k] * dout[n] for every bin n and tap k.

    A loop over fixed-size windows of bins (all taps of each, chunk_floats floats of weighted
    rows in all) keeps each step's materialised updates in cache; one scatter over all taps at
    once, or autodiff's per-tap scatters of whole [N, C] arrays, run 5-20x slower on XLA CPU,
    and dense per-image matmuls with the interpolation matrices waste ~16x the FLOPs on zero
    weights. Windows are sliced from the unpadded cotangent (no copy of it); rows of an
    overlapping last window that the previous window covered get weight 0."""
    n, t = idx.shape
    c = dout.shape[-1]
    per = max(1, min(n, chunk_floats // (t * c)))
    steps, start = _steps(n, per)
    # the clip keeps indices in range even for NaN boxes, which makes the in-bounds promise
    # (no per-row bounds check) safe
    idx = jnp.clip(idx, 0, num_rows - 1)
    wt = wt.astype(jnp.float32)
    dout = dout.reshape(n, c)

    def body(k, acc):
        s = start(k)
        fresh = (s + jnp.arange(per)) >= k * per
        wk = jnp.where(fresh[:, None], jax.lax.dynamic_slice_in_dim(wt, s, per), 0.0)
        dk = jax.lax.dynamic_slice_in_dim(dout, s, per).astype(jnp.float32)
        upd = (dk[:, None, :] * wk[:, :, None]).reshape(per * t, c)
        i = jax.lax.dynamic_slice_in_dim(idx, s, per).reshape(per * t)
        return acc.at[i].add(upd, mode="promise_in_bounds")

    return jax.lax.fori_loop(0, steps, body, jnp.zeros((num_rows, c), jnp.float32))


def _features_vjp(shape, dtype, yi, yw, xi, xw, box_indices, dout,
                  chunk_floats: int = _SCATTER_CHUNK_FLOATS):
    """Gradient w.r.t. features [B,H,W,C]: the transposed tap gather (`_scatter_taps`)."""
    b, h, w, c = shape
    idx, wt = _flat_taps(box_indices.astype(jnp.int32) * h, yi, yw, xi, xw, w)  # [N, T]
    grad = _scatter_taps(b * h * w, idx, wt, dout.reshape(-1, c), chunk_floats)
    return grad.reshape(shape).astype(dtype)


@jax.custom_vjp
def _gather_taps(table, idx, wt):
    """`_gather_sum` with the fast `_scatter_taps` backward (w.r.t. the table only; the taps
    are geometry, which gets no gradient, as in torchvision)."""
    return _gather_sum_chunked(table, idx, wt.astype(table.dtype))


def _gather_taps_fwd(table, idx, wt):
    proto = jnp.zeros((table.shape[0], 0), table.dtype)     # carries rows and dtype statically
    return _gather_taps(table, idx, wt), (proto, idx, wt)


def _gather_taps_bwd(res, dout):
    proto, idx, wt = res
    d_table = _scatter_taps(proto.shape[0], idx, wt, dout).astype(proto.dtype)
    return d_table, None, None


_gather_taps.defvjp(_gather_taps_fwd, _gather_taps_bwd)


# --------------------------------------------------------------------------- Pallas kernel
def _roi_kernel(bidx_ref, feat_ref, wy_ref, wx_ref, out_ref):
    """One RoI: out[p] = Wx @ (sum_h Wy[p, h] * F[h]) with F the (windowed) image block."""
    del bidx_ref  # only used by the index maps
    f = feat_ref[...].astype(jnp.float32)                    # [K_h, K_w, C]
    kh, kw, c = f.shape
    t = jnp.dot(wy_ref[...], f.reshape(kh, kw * c),
                preferred_element_type=jnp.float32)          # [oh, K_w*C]
    wx = wx_ref[...]
    for p in range(out_ref.shape[0]):
        row = t[p].reshape(kw, c)
        out_ref[p] = jnp.dot(wx, row, preferred_element_type=jnp.float32).astype(out_ref.dtype)


def _window_kernel(bidx_ref, y0_ref, x0_ref, feat_ref, wy_ref, wx_ref, out_ref):
    del y0_ref, x0_ref
    _roi_kernel(bidx_ref, feat_ref, wy_ref, wx_ref, out_ref)


def _default_interpret():
    """Off TPU/GPU: the TPU-faithful interpreter (scalar prefetch, element windows, and it raises
    on out-of-bounds block reads, which checks the window placement)."""
    if jax.default_backend() in ("tpu", "gpu"):
        return False
    from jax.experimental.pallas import tpu as pltpu
    return pltpu.InterpretParams()


def _pallas_forward(features, yi, yw, xi, xw, box_indices, window: int | None,
                    interpret: bool | None):
    """Pallas forward; returns (out [R,oh,ow,C], fits [R] bool: RoI inside its window)."""
    b, h, w, c = features.shape
    r, oh, ow = yi.shape[0], yi.shape[1], xi.shape[1]
    if interpret is None:
        interpret = _default_interpret()
    elif interpret is True:
        interpret = _default_interpret() or True
    bidx = jnp.clip(box_indices.astype(jnp.int32), 0, b - 1)
    kh = h if window is None else min(int(window), h)
    kw = w if window is None else min(int(window), w)
    out_shape = jax.ShapeDtypeStruct((r, oh, ow, c), features.dtype)
    if kh == h and kw == w:
        wy, wx = _dense(yi, yw, h), _dense(xi, xw, w)
        from jax.experimental.pallas import tpu as pltpu
        grid_spec = pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(r,),
            in_specs=[pl.BlockSpec((None, h, w, c), lambda i, bi: (bi[i], 0, 0, 0)),
                      pl.BlockSpec((None, oh, h), lambda i, bi: (i, 0, 0)),
                      pl.BlockSpec((None, ow, w), lambda i, bi: (i, 0, 0))],
            out_specs=pl.BlockSpec((None, oh, ow, c), lambda i, bi: (i, 0, 0, 0)))
        out = pl.pallas_call(_roi_kernel, out_shape=out_shape, grid_spec=grid_spec,
                             interpret=interpret)(bidx, features, wy, wx)
        return out, jnp.ones((r,), bool)
    # Windowed: a K x K window starting at the RoI's first tap (clamped into the map).
    y0 = jnp.clip(jnp.min(jnp.where(yw != 0, yi, h), axis=(1, 2)), 0, h - kh).astype(jnp.int32)
    x0 = jnp.clip(jnp.min(jnp.where(xw != 0, xi, w), axis=(1, 2)), 0, w - kw).astype(jnp.int32)
    yl, xl = yi - y0[:, None, None], xi - x0[:, None, None]
    fits = (jnp.all((yw == 0) | ((yl >= 0) & (yl < kh)), axis=(1, 2))
            & jnp.all((xw == 0) | ((xl >= 0) & (xl < kw)), axis=(1, 2)))
    wy = _dense(jnp.clip(yl, 0, kh - 1), jnp.where((yl >= 0) & (yl < kh), yw, 0.0), kh)
    wx = _dense(jnp.clip(xl, 0, kw - 1), jnp.where((xl >= 0) & (xl < kw), xw, 0.0), kw)
    from jax.experimental.pallas import tpu as pltpu
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3, grid=(r,),
        in_specs=[pl.BlockSpec((None, pl.Element(kh), pl.Element(kw), c),
                               lambda i, bi, ys, xs: (bi[i], ys[i], xs[i], 0)),
                  pl.BlockSpec((None, oh, kh), lambda i, bi, ys, xs: (i, 0, 0)),
                  pl.BlockSpec((None, ow, kw), lambda i, bi, ys, xs: (i, 0, 0))],
        out_specs=pl.BlockSpec((None, oh, ow, c), lambda i, bi, ys, xs: (i, 0, 0, 0)))
    out = pl.pallas_call(_window_kernel, out_shape=out_shape, grid_spec=grid_spec,
                         interpret=interpret)(bidx, y0, x0, features, wy, wx)
    return out, fits


# --------------------------------------------------------------------------- public ops
@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _align(features, yi, yw, xi, xw, box_indices, impl: str, window, interpret):
    if impl == "xla":
        return _xla_forward(features, yi, yw, xi, xw, box_indices)
    out, fits = _pallas_forward(features, yi, yw, xi, xw, box_indices, window, interpret)
    if window is None:
        return out
    # RoIs larger than the window: recompute them with the XLA path, only when there are any.
    return jax.lax.cond(
        jnp.all(fits), lambda: out,
        lambda: jnp.where(fits[:, None, None, None], out,
                          _xla_forward(features, yi, yw, xi, xw, box_indices)))


def _align_fwd(features, yi, yw, xi, xw, box_indices, impl, window, interpret):
    out = _align(features, yi, yw, xi, xw, box_indices, impl, window, interpret)
    return out, (jnp.zeros((0,), features.dtype), features.shape, yi, yw, xi, xw, box_indices)


def _align_bwd(impl, window, interpret, res, dout):
    proto, shape, yi, yw, xi, xw, box_indices = res
    d_feat = _features_vjp(shape, proto.dtype, yi, yw, xi, xw, box_indices, dout)
    return (d_feat, None, None, None, None, None)


_align.defvjp(_align_fwd, _align_bwd)


def resolve_impl(impl: str) -> str:
    """'auto' -> 'pallas' on TPU (where the scalar-prefetch kernel compiles natively), else 'xla'.

    The GPU lowering of this kernel is not validated (no GPU here), so GPU uses the XLA path."""
    if impl != "auto":
        return impl
    return "pallas" if jax.default_backend() == "tpu" else "xla"


def roi_align(features: jax.Array, boxes: jax.Array, box_indices: jax.Array,
              output_size: int | Sequence[int], spatial_scale: float = 1.0,
              sampling_ratio: int = 2, aligned: bool = True, impl: str = "auto", *,
              window: int | None = None, interpret: bool | None = None) -> jax.Array:
    """torchvision.ops.roi_align on NHWC features; returns [R, out_h, out_w, C].

    RoIs with box_indices outside [0, B) (e.g. -1 marking padding) give all-zero outputs.

    window: Pallas only; None copies the whole image per RoI, an int K copies a K x K window at
    the RoI (TPU design) and recomputes RoIs that do not fit with the XLA path.
    interpret: Pallas only; None interprets off TPU/GPU."""
    features, boxes, box_indices = map(jnp.asarray, (features, boxes, box_indices))
    _check(features, boxes, box_indices, sampling_ratio, impl)
    return _roi_align_jit(features, boxes, box_indices, jnp.asarray(spatial_scale, jnp.float32),
                          _pair(output_size), int(sampling_ratio), bool(aligned),
                          resolve_impl(impl), window, interpret)


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7, 8, 9))
def _roi_align_jit(features, boxes, box_indices, spatial_scale, out_hw, ratio, aligned, impl,
                   window, interpret):
    # jitted as a whole: run eagerly, the per-tap gathers would each be dispatched separately
    b, h, w, _ = features.shape
    yi, yw, xi, xw = _roi_taps(boxes, spatial_scale, aligned, out_hw, ratio, h, w)
    # RoIs whose image index is out of range (e.g. -1 for padding) give zeros
    box_indices = box_indices.astype(jnp.int32)
    in_range = (box_indices >= 0) & (box_indices < b)
    yw = jnp.where(in_range[:, None, None], yw, 0.0)
    box_indices = jnp.clip(box_indices, 0, b - 1)
    yi, yw, xi, xw = (jax.lax.stop_gradient(a) for a in (yi, yw, xi, xw))
    return _align(features, yi, yw, xi, xw, box_indices, impl, window, interpret)


def fpn_levels(boxes: jax.Array, k_min: int, k_max: int, canonical_level: int = 4,
               canonical_scale: int = 224, eps: float = 1e-6) -> jax.Array:
    """torchvision LevelMapper: level index in [0, k_max-k_min] of each box (sqrt-area rule)."""
    boxes = boxes.astype(jnp.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lvl = jnp.floor(canonical_level + jnp.log2(jnp.sqrt(area) / canonical_scale) + eps)
    return (jnp.clip(lvl, k_min, k_max) - k_min).astype(jnp.int32)


def multilevel_roi_align(features_per_level: Sequence[jax.Array], boxes: jax.Array,
                         box_indices: jax.Array, output_size: int | Sequence[int],
                         spatial_scales: Sequence[float], sampling_ratio: int = 2,
                         aligned: bool = True, canonical_level: int = 4,
                         canonical_scale: int = 224) -> jax.Array:
    """FPN RoI-align (torchvision MultiScaleRoIAlign rule) in one gather over all levels.

    The levels are stacked into one [sum_l B*H_l*W_l, C] row table; each RoI samples only its own
    level (per-RoI height, width, scale and row offset), so the cost is that of one level. The
    gradient w.r.t. the features is the same scan of scatter-adds as `roi_align`'s."""
    if len(features_per_level) != len(spatial_scales) or not features_per_level:
        raise ValueError("pallas_kernels/roi_align.py: multilevel_roi_align needs one spatial "
                         "scale per feature level")
    feats = [jnp.asarray(f) for f in features_per_level]
    boxes, box_indices = jnp.asarray(boxes), jnp.asarray(box_indices)
    for f in feats:
        _check(f, boxes, box_indices, sampling_ratio, "xla")
        if f.shape[0] != feats[0].shape[0] or f.shape[3] != feats[0].shape[3]:
            raise ValueError("pallas_kernels/roi_align.py: all levels need the same batch and "
                             f"channels, got {[x.shape for x in feats]}")
    return _multilevel_jit(tuple(feats), boxes, box_indices, _pair(output_size),
                           tuple(float(x) for x in spatial_scales), int(sampling_ratio),
                           bool(aligned), int(canonical_level), float(canonical_scale))


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8))
def _multilevel_jit(feats, boxes, box_indices, out_hw, spatial_scales, sampling_ratio, aligned,
                    canonical_level, canonical_scale):
    lv_ids = [-math.log2(s) for s in spatial_scales]
    k_min, k_max = int(round(lv_ids[0])), int(round(lv_ids[-1]))
    lvl = fpn_levels(boxes, k_min, k_max, canonical_level, canonical_scale)
    lvl = jnp.clip(lvl, 0, len(feats) - 1)
    hs = jnp.asarray([f.shape[1] for f in feats], jnp.int32)
    ws = jnp.asarray([f.shape[2] for f in feats], jnp.int32)
    scales = jnp.asarray(spatial_scales, jnp.float32)
    h_r, w_r, s_r = hs[lvl], ws[lvl], scales[lvl]
    yi, yw, xi, xw = _roi_taps(boxes, s_r, aligned, out_hw, int(sampling_ratio),
                               h_r.astype(jnp.float32), w_r.astype(jnp.float32))
    # Levels differ in width, so the table is indexed by pixel: each level's pixels start at an
    # offset, and a RoI's taps are computed with its own level's H, W and scale.
    pix_start = np.cumsum([0] + [int(np.prod(f.shape[:3])) for f in feats])[:-1]
    base = jnp.asarray(pix_start, jnp.int32)[lvl]
    row_base = box_indices.astype(jnp.int32) * h_r
    idx, wt = _flat_taps(row_base, yi, yw, xi, xw, w_r)
    idx = idx + base.repeat(out_hw[0] * out_hw[1])[:, None]
    c = feats[0].shape[3]
    table = jnp.concatenate([f.reshape(-1, c) for f in feats])
    out = _gather_taps(table, idx, jax.lax.stop_gradient(wt))
    return out.reshape(boxes.shape[0], out_hw[0], out_hw[1], c)


def _round_half_away(x):
    return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def roi_pool(features: jax.Array, boxes: jax.Array, box_indices: jax.Array,
             output_size: int | Sequence[int], spatial_scale: float = 1.0,
             impl: str = "auto") -> jax.Array:
    """torchvision.ops.roi_pool (max pooling) on NHWC features; returns [R, out_h, out_w, C].

    Box corners are rounded (half away from zero), bins are [floor(p*bin), ceil((p+1)*bin))
    clipped to the map, empty bins give 0. Any bin max is the max of 4 overlapping power-of-two
    blocks read from a 2-D sparse table of block maxima (fixed shapes, 4 gathers per bin).
    Only an XLA implementation exists; every impl value runs it."""
    features, boxes, box_indices = map(jnp.asarray, (features, boxes, box_indices))
    _check(features, boxes, box_indices, 1, impl)
    return _roi_pool_jit(features, boxes, box_indices, _pair(output_size), float(spatial_scale))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _roi_pool_jit(features, boxes, box_indices, out_hw, spatial_scale):
    oh, ow = out_hw
    b, h, w, c = features.shape
    r = boxes.shape[0]
    sb = _round_half_away(boxes.astype(jnp.float32) * jnp.float32(spatial_scale))
    x1, y1, x2, y2 = sb[:, 0], sb[:, 1], sb[:, 2], sb[:, 3]

    def bins(start, end, out, extent):
        # floor(p*size/out), ceil((p+1)*size/out) in exact integer arithmetic (float32 with
        # XLA's division-by-constant rewrite can land one past an integer bin edge)
        start, end = start.astype(jnp.int32), end.astype(jnp.int32)
        size = jnp.maximum(end - start + 1, 1)[:, None]
        p = jnp.arange(out, dtype=jnp.int32)[None]
        lo = jnp.clip((p * size) // out + start[:, None], 0, extent)
        hi = jnp.clip(-((-(p + 1) * size) // out) + start[:, None], 0, extent)
        return lo, hi

    hs, he = bins(y1, y2, oh, h)
    ws_, we = bins(x1, x2, ow, w)
    ly, lx = max(1, int(h).bit_length()), max(1, int(w).bit_length())
    neg = jnp.array(-jnp.inf, features.dtype)
    # table[ky][kx][b, y, x] = max over rows [y, y+2^ky) and cols [x, x+2^kx)
    rows_levels = [features]
    for k in range(1, ly):
        prev, s = rows_levels[-1], 1 << (k - 1)
        shifted = jnp.pad(prev[:, s:], ((0, 0), (0, s), (0, 0), (0, 0)), constant_values=neg)
        rows_levels.append(jnp.maximum(prev, shifted))
    levels = []
    for base in rows_levels:
        cols = [base]
        for k in range(1, lx):
            prev, s = cols[-1], 1 << (k - 1)
            shifted = jnp.pad(prev[:, :, s:], ((0, 0), (0, 0), (0, s), (0, 0)),
                              constant_values=neg)
            cols.append(jnp.maximum(prev, shifted))
        levels.append(jnp.stack(cols))
    table = jnp.stack(levels).reshape(-1, c)          # [(ky, kx, b, y, x), C]

    def log2_floor(n):
        return jnp.floor(jnp.log2(jnp.maximum(n, 1).astype(jnp.float32))).astype(jnp.int32)

    ny, nx = he - hs, we - ws_                          # [R, oh], [R, ow]
    ky, kx = log2_floor(ny), log2_floor(nx)
    ya, yb = hs, jnp.maximum(he - (1 << ky), hs)
    xa, xb = ws_, jnp.maximum(we - (1 << kx), ws_)
    bi = jnp.clip(box_indices.astype(jnp.int32), 0, b - 1)[:, None, None]
    lvl = (ky[:, :, None] * lx + kx[:, None, :]) * b + bi          # [R, oh, ow]
    ya, yb = jnp.clip(ya, 0, h - 1)[:, :, None], jnp.clip(yb, 0, h - 1)[:, :, None]
    xa, xb = jnp.clip(xa, 0, w - 1)[:, None, :], jnp.clip(xb, 0, w - 1)[:, None, :]
    out = None
    for yy in (ya, yb):
        for xx in (xa, xb):
            v = jnp.take(table, ((lvl * h + yy) * w + xx).reshape(-1), axis=0, mode="clip")
            out = v if out is None else jnp.maximum(out, v)
    empty = ((ny <= 0)[:, :, None] | (nx <= 0)[:, None, :]).reshape(-1, 1)
    out = jnp.where(empty, jnp.zeros((), features.dtype), out)
    return out.reshape(r, oh, ow, c)
