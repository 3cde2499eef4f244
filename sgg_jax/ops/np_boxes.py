"""Box overlap helpers on the host (NumPy, float64), for the evaluators and result documents;
their jittable counterparts are `sgg_jax.ops.boxes` (continuous areas by default there).

The field's scene graph numbers (neural-motifs, Scene-Graph-Benchmark, MSDN, F-Net) all use the
"+1 pixel" convention inherited from py-faster-rcnn: a box [x1, y1, x2, y2] covers
x2 - x1 + 1 pixels in width. Published recalls depend on it, so it is the default here;
`"continuous"` gives the usual area of the real-valued rectangle (COCO style).
"""
from __future__ import annotations

import numpy as np

IOU_CONVENTIONS = ("plus_one", "continuous")


def _offset(convention: str) -> float:
    if convention == "plus_one":
        return 1.0
    if convention == "continuous":
        return 0.0
    raise ValueError(f"iou_convention: expected one of {IOU_CONVENTIONS}, got {convention!r}")


def box_iou(a: np.ndarray, b: np.ndarray, convention: str = "plus_one") -> np.ndarray:
    """Pairwise IoU of x1y1x2y2 boxes a [A, 4] and b [B, 4] -> [A, B] float64.

    Boxes that do not overlap (or a zero union) give 0.
    """
    off = _offset(convention)
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0] + off) * (a[:, 3] - a[:, 1] + off)
    area_b = (b[:, 2] - b[:, 0] + off) * (b[:, 3] - b[:, 1] + off)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + off
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + off
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def paired_iou(a: np.ndarray, b: np.ndarray, convention: str = "plus_one") -> np.ndarray:
    """Element-wise IoU of broadcastable box arrays a [..., 4] and b [..., 4] -> [...]."""
    off = _offset(convention)
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    area_a = (a[..., 2] - a[..., 0] + off) * (a[..., 3] - a[..., 1] + off)
    area_b = (b[..., 2] - b[..., 0] + off) * (b[..., 3] - b[..., 1] + off)
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + off
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + off
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def union_boxes(sub: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """The smallest box enclosing each subject/object pair: [..., 4] x2 -> [..., 4]."""
    return np.concatenate([np.minimum(sub[..., :2], obj[..., :2]),
                           np.maximum(sub[..., 2:], obj[..., 2:])], axis=-1)
