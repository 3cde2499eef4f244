"""The one place the detector calls the shared box ops and RoI-align (so their APIs meet here).

Box ops come from `sgg_jax.ops.boxes` / `sgg_jax.ops.nms`, RoI-align from `pallas_kernels.roi_align`; both are
imported lazily so this package imports on its own.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


def _boxes():
    from sgg_jax.ops import boxes

    return boxes


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """IoU [N, M] of x1y1x2y2 boxes, continuous convention (area = w * h)."""
    return _boxes().pairwise_iou(a, b)


def encode(targets: jnp.ndarray, reference: jnp.ndarray, weights: tuple) -> jnp.ndarray:
    """Faster R-CNN deltas (dx, dy, dw, dh) of `targets` relative to `reference`."""
    return _boxes().encode_boxes(reference, targets, weights)


def decode(deltas: jnp.ndarray, reference: jnp.ndarray, weights: tuple) -> jnp.ndarray:
    """Inverse of `encode` (dw, dh clipped at log(1000 / 16))."""
    return _boxes().decode_boxes(deltas, reference, weights)


def clip(boxes: jnp.ndarray, image_hw: jnp.ndarray) -> jnp.ndarray:
    """Clip x1y1x2y2 boxes to [0, w] x [0, h]."""
    return _boxes().clip_boxes(boxes, image_hw[..., 0], image_hw[..., 1])


def batched_nms(boxes: jnp.ndarray, scores: jnp.ndarray, classes: jnp.ndarray, valid: jnp.ndarray,
                iou_thresh: float, max_output: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Class-aware NMS: (indices [max_output] by decreasing score, valid mask [max_output])."""
    from sgg_jax.ops import nms

    return nms.batched_nms(boxes, scores, classes, iou_thresh, max_output, valid=valid)


def pool_rois(features: Sequence[jnp.ndarray], strides: Sequence[int], boxes: jnp.ndarray,
              output_size: int, sampling_ratio: int) -> jnp.ndarray:
    """RoI-align [B, R, 4] boxes from one level or several (FPN level rule) -> [B, R, s, s, C]."""
    from pallas_kernels import roi_align as ra

    b, r = boxes.shape[:2]
    flat = boxes.reshape(b * r, 4).astype(jnp.float32)
    idx = jnp.repeat(jnp.arange(b, dtype=jnp.int32), r)
    if len(features) == 1:
        out = ra.roi_align(features[0], flat, idx, (output_size, output_size), 1.0 / strides[0],
                           sampling_ratio, aligned=True)
    else:
        out = ra.multilevel_roi_align(list(features), flat, idx, (output_size, output_size),
                                      [1.0 / s for s in strides], sampling_ratio)
    return out.reshape((b, r) + out.shape[1:])
