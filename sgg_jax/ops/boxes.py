"""Jittable box operations on x1y1x2y2 boxes (last axis 4), any leading batch shape.

Two size conventions exist in the field: continuous (torchvision; width = x2 - x1) and the
"+1 pixel" one of the original Faster R-CNN / maskrcnn-benchmark code used by neural-motifs
(width = x2 - x1 + 1). Functions that depend on it take `plus_one`.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

DEFAULT_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _check_boxes(boxes: jax.Array, name: str = "boxes") -> None:
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"sgg_jax/ops/boxes.py: {name} must have last axis 4 (x1,y1,x2,y2), got "
                         f"shape {boxes.shape}")


def box_area(boxes: jax.Array, plus_one: bool = False) -> jax.Array:
    """Area [...]; negative extents count as 0."""
    boxes = jnp.asarray(boxes)
    _check_boxes(boxes)
    one = 1.0 if plus_one else 0.0
    w = jnp.maximum(boxes[..., 2] - boxes[..., 0] + one, 0.0)
    h = jnp.maximum(boxes[..., 3] - boxes[..., 1] + one, 0.0)
    return w * h


def pairwise_iou(a: jax.Array, b: jax.Array, plus_one: bool = False) -> jax.Array:
    """IoU matrix [..., N, M] of a [..., N, 4] and b [..., M, 4]; 0 where the union is empty."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    one = 1.0 if plus_one else 0.0
    lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.maximum(rb - lt + one, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a, plus_one)[..., :, None] + box_area(b, plus_one)[..., None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def encode_boxes(reference: jax.Array, target: jax.Array,
                 weights: Sequence[float] = DEFAULT_WEIGHTS, plus_one: bool = False) -> jax.Array:
    """Faster R-CNN regression targets (dx, dy, dw, dh) of `target` w.r.t. `reference` boxes."""
    reference, target = jnp.asarray(reference, jnp.float32), jnp.asarray(target, jnp.float32)
    _check_boxes(reference, "reference")
    _check_boxes(target, "target")
    one = 1.0 if plus_one else 0.0
    wx, wy, ww, wh = weights
    rw = reference[..., 2] - reference[..., 0] + one
    rh = reference[..., 3] - reference[..., 1] + one
    rx, ry = reference[..., 0] + 0.5 * rw, reference[..., 1] + 0.5 * rh
    tw = target[..., 2] - target[..., 0] + one
    th = target[..., 3] - target[..., 1] + one
    tx, ty = target[..., 0] + 0.5 * tw, target[..., 1] + 0.5 * th
    return jnp.stack([wx * (tx - rx) / rw, wy * (ty - ry) / rh, ww * jnp.log(tw / rw),
                      wh * jnp.log(th / rh)], axis=-1)


def decode_boxes(deltas: jax.Array, reference: jax.Array,
                 weights: Sequence[float] = DEFAULT_WEIGHTS, clip: float = BBOX_XFORM_CLIP,
                 plus_one: bool = False) -> jax.Array:
    """Inverse of `encode_boxes`; dw, dh (after dividing by their weights) are clipped at `clip`
    so exp() cannot overflow."""
    deltas, reference = jnp.asarray(deltas, jnp.float32), jnp.asarray(reference, jnp.float32)
    _check_boxes(deltas, "deltas")
    _check_boxes(reference, "reference")
    one = 1.0 if plus_one else 0.0
    wx, wy, ww, wh = weights
    rw = reference[..., 2] - reference[..., 0] + one
    rh = reference[..., 3] - reference[..., 1] + one
    rx, ry = reference[..., 0] + 0.5 * rw, reference[..., 1] + 0.5 * rh
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = jnp.minimum(deltas[..., 2] / ww, clip)
    dh = jnp.minimum(deltas[..., 3] / wh, clip)
    cx, cy = dx * rw + rx, dy * rh + ry
    w, h = jnp.exp(dw) * rw, jnp.exp(dh) * rh
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w - one, cy + 0.5 * h - one], -1)


def union_boxes(a: jax.Array, b: jax.Array) -> jax.Array:
    """Smallest box enclosing a and b (elementwise; broadcasting), e.g. subject-object pairs."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    return jnp.concatenate([jnp.minimum(a[..., :2], b[..., :2]),
                            jnp.maximum(a[..., 2:], b[..., 2:])], -1)


def clip_boxes(boxes: jax.Array, height, width, plus_one: bool = False) -> jax.Array:
    """Clamps x to [0, width] and y to [0, height] ([0, size-1] with plus_one).
    height/width may be scalars or arrays broadcastable to boxes[..., 0]."""
    boxes = jnp.asarray(boxes)
    _check_boxes(boxes)
    one = 1.0 if plus_one else 0.0
    xmax = jnp.asarray(width, boxes.dtype) - one
    ymax = jnp.asarray(height, boxes.dtype) - one
    x = jnp.clip(boxes[..., 0::2], 0.0, jnp.expand_dims(xmax, -1))
    y = jnp.clip(boxes[..., 1::2], 0.0, jnp.expand_dims(ymax, -1))
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)


def refine_boxes(boxes: jax.Array, deltas: jax.Array, image_sizes: jax.Array,
                 weights: Sequence[float], labels: jax.Array | None = None) -> jax.Array:
    """Applies a box head's deltas (box coder `weights`) and clips to the image.

    boxes [B, N, 4]; deltas [B, N, 4] (class-agnostic) or [B, N, C+1, 4] with `labels` [B, N]
    picking each box's class; image_sizes [B, 2] (h, w) -> refined boxes [B, N, 4].
    """
    if deltas.ndim == 4:
        if labels is None:
            raise ValueError("refine_boxes: class-specific deltas [B, N, C+1, 4] need labels")
        deltas = jnp.take_along_axis(deltas, labels[..., None, None].astype(jnp.int32),
                                     axis=2)[..., 0, :]
    refined = decode_boxes(jnp.asarray(deltas, jnp.float32), jnp.asarray(boxes, jnp.float32),
                           weights)
    hw = jnp.asarray(image_sizes, jnp.float32)[:, None, :]
    return clip_boxes(refined, hw[..., 0], hw[..., 1])


def masked_top_k(scores: jax.Array, valid: jax.Array, k: int):
    """Top-k of the valid entries of scores [..., N] (score descending, ties by lower index).

    Returns (values [..., k], indices [..., k] int32, valid [..., k]); slots beyond the number of
    valid entries have valid=False, value -inf and the indices of invalid entries. Valid entries
    always precede invalid ones, whatever their scores (even -inf)."""
    scores, valid = jnp.asarray(scores), jnp.asarray(valid, bool)
    if scores.shape != valid.shape:
        raise ValueError(f"sgg_jax/ops/boxes.py: masked_top_k scores {scores.shape} and valid "
                         f"{valid.shape} must have the same shape")
    n = scores.shape[-1]
    if not 0 < k <= n:
        raise ValueError(f"sgg_jax/ops/boxes.py: masked_top_k k must be in [1, {n}], got {k}")
    iota = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), scores.shape)
    # sort keys: invalid last, then descending score, then index (stable order for ties)
    _, _, idx = jax.lax.sort((~valid, -scores.astype(jnp.float32), iota), dimension=-1,
                             num_keys=2, is_stable=True)
    idx = idx[..., :k]
    ok = jnp.take_along_axis(valid, idx, -1)
    vals = jnp.where(ok, jnp.take_along_axis(scores, idx, -1), -jnp.inf)
    return vals, idx, ok
