"""Anchor boxes: per-level base shapes, the grid over a feature map, and k-means anchor shapes.

Conventions (torchvision's, so imported RPN weights see the anchors they were trained with):
base anchors are centred on 0 with w = size / sqrt(r), h = size * sqrt(r) for aspect ratio
r = h / w, rounded to whole pixels; the anchor of feature cell (y, x) is shifted by
(x * stride, y * stride). Anchors are flattened in (y, x, a) order with a = ratio-major,
size-minor, which is the order of the RPN head's output channels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def base_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float],
                 round_to_int: bool = True) -> np.ndarray:
    """[len(ratios) * len(sizes), 4] x1y1x2y2 anchors centred on the origin."""
    sizes = np.asarray(sizes, np.float64)
    ratios = np.asarray(aspect_ratios, np.float64)
    if np.any(sizes <= 0) or np.any(ratios <= 0):
        raise ValueError(f"anchors: sizes and aspect ratios must be > 0, got {sizes}, {ratios}")
    h_ratio = np.sqrt(ratios)
    ws = (sizes[None, :] / h_ratio[:, None]).reshape(-1)
    hs = (sizes[None, :] * h_ratio[:, None]).reshape(-1)
    return shapes_to_base_anchors(np.stack([ws, hs], axis=1), round_to_int)


def shapes_to_base_anchors(shapes: np.ndarray, round_to_int: bool = True) -> np.ndarray:
    """(w, h) pairs [A, 2] -> [A, 4] anchors centred on the origin."""
    shapes = np.asarray(shapes, np.float64)
    if shapes.ndim != 2 or shapes.shape[1] != 2 or np.any(shapes <= 0):
        raise ValueError(f"anchor shapes: expected positive (w, h) pairs [A, 2], got {shapes.shape}")
    half = shapes / 2.0
    out = np.concatenate([-half, half], axis=1)
    return np.round(out) if round_to_int else out


def grid_anchors(base: np.ndarray, feature_hw: tuple[int, int], stride: float) -> np.ndarray:
    """All anchors of a feature map: [H * W * A, 4] in (y, x, a) order, image coordinates."""
    h, w = feature_hw
    ys = np.arange(h, dtype=np.float64) * stride
    xs = np.arange(w, dtype=np.float64) * stride
    sy, sx = np.meshgrid(ys, xs, indexing="ij")
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
    return (shifts + np.asarray(base, np.float64)[None]).reshape(-1, 4).astype(np.float32)


def level_base_anchors(anchor_sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float],
                       anchor_shapes: Sequence[Sequence[Sequence[float]]] | None = None
                       ) -> list[np.ndarray]:
    """Base anchors for every level, from sizes x ratios or from explicit (w, h) shapes."""
    if anchor_shapes is not None:
        return [shapes_to_base_anchors(np.asarray(s, np.float64)) for s in anchor_shapes]
    return [base_anchors(s, aspect_ratios) for s in anchor_sizes]


def multilevel_anchors(bases: Sequence[np.ndarray], feature_hws: Sequence[tuple[int, int]],
                       strides: Sequence[float]) -> tuple[np.ndarray, list[int]]:
    """Concatenated anchors of all levels [N, 4] and the anchor count per level."""
    if not (len(bases) == len(feature_hws) == len(strides)):
        raise ValueError(f"anchors: {len(bases)} anchor levels but {len(feature_hws)} feature maps")
    per = [grid_anchors(b, hw, s) for b, hw, s in zip(bases, feature_hws, strides)]
    return np.concatenate(per, axis=0), [a.shape[0] for a in per]


# ----------------------------------------------------------------------------------------------
# k-means anchors (F-Net: cluster the training boxes' (w, h) with 1 - IoU as the distance)


def shape_iou(shapes: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """IoU of (w, h) pairs aligned at a common corner: [N, 2] x [K, 2] -> [N, K]."""
    inter = (np.minimum(shapes[:, None, 0], centroids[None, :, 0])
             * np.minimum(shapes[:, None, 1], centroids[None, :, 1]))
    area_s = shapes[:, 0] * shapes[:, 1]
    area_c = centroids[:, 0] * centroids[:, 1]
    return inter / (area_s[:, None] + area_c[None, :] - inter)


def kmeans_anchors(box_shapes: np.ndarray, k: int, *, seed: int = 0,
                   max_iter: int = 300) -> np.ndarray:
    """k anchor (w, h) shapes from training box sizes, sorted by area (host-side NumPy).

    Lloyd iterations with distance 1 - IoU and mean centroids, from a k-means++ start (each
    next centroid drawn with probability proportional to its squared distance) seeded by `seed`,
    so the result is deterministic. An empty cluster keeps its centroid.
    """
    shapes = np.asarray(box_shapes, np.float64)
    if shapes.ndim != 2 or shapes.shape[1] != 2:
        raise ValueError(f"kmeans_anchors: expected box (w, h) pairs [N, 2], got shape {shapes.shape}")
    shapes = shapes[np.all(shapes > 0, axis=1)]
    if shapes.shape[0] < k or k < 1:
        raise ValueError(f"kmeans_anchors: need at least k={k} boxes with positive size, got {shapes.shape[0]}")
    rng = np.random.default_rng(seed)
    centroids = shapes[[rng.integers(shapes.shape[0])]]
    for _ in range(1, k):
        d2 = np.min(1.0 - shape_iou(shapes, centroids), axis=1) ** 2
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(d2), 1.0 / len(d2))
        centroids = np.concatenate([centroids, shapes[[rng.choice(len(shapes), p=p)]]])
    assign = np.full(shapes.shape[0], -1)
    for _ in range(max_iter):
        new = np.argmax(shape_iou(shapes, centroids), axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = shapes[assign == j]
            if len(members):
                centroids[j] = members.mean(axis=0)
    return centroids[np.argsort(centroids[:, 0] * centroids[:, 1])]


def box_shapes_from_boxes(boxes: np.ndarray) -> np.ndarray:
    """x1y1x2y2 boxes [N, 4] -> (w, h) [N, 2] (continuous convention)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
