"""RoI pooling of batched boxes: RoI-align (`pallas_kernels.roi_align`: the Pallas kernel on
accelerators, the XLA path on CPU) from one feature level or several (FPN's level rule)."""
from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from pallas_kernels import roi_align as ra


def pool_rois(features: Sequence[jnp.ndarray], strides: Sequence[int], boxes: jnp.ndarray,
              output_size: int, sampling_ratio: int) -> jnp.ndarray:
    """RoI-align boxes [B, R, 4] (x1y1x2y2, image pixels) of every image from features [B, H, W,
    C] at `strides` -> [B, R, s, s, C] (aligned=True, a fixed sampling ratio)."""
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
