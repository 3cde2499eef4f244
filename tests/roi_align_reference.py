"""Independent NumPy loop implementations of torchvision's roi_align and roi_pool (CPU kernels as
documented: bilinear sampling with fixed sampling ratio; max pooling over rounded bins). NCHW-free:
works on one image [H, W, C] per RoI. Used only by the tests; slow by design."""
from __future__ import annotations

import math

import numpy as np


def _bilinear(img: np.ndarray, y: float, x: float) -> np.ndarray:
    h, w, _ = img.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(img.shape[2], np.float64)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * img[y0, x0] + hy * lx * img[y0, x1] + ly * hx * img[y1, x0]
            + ly * lx * img[y1, x1])


def roi_align_ref(features, boxes, box_indices, out_hw, spatial_scale, sampling_ratio,
                  aligned=True):
    """features [B,H,W,C], boxes [R,4], box_indices [R] -> [R,oh,ow,C] (float64)."""
    feats = np.asarray(features, np.float64)
    oh, ow = out_hw
    out = np.zeros((len(boxes), oh, ow, feats.shape[3]))
    off = 0.5 if aligned else 0.0
    for r, (box, b) in enumerate(zip(np.asarray(boxes, np.float64), box_indices)):
        sx, sy = box[0] * spatial_scale - off, box[1] * spatial_scale - off
        ex, ey = box[2] * spatial_scale - off, box[3] * spatial_scale - off
        rw, rh = ex - sx, ey - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / oh, rw / ow
        gh = gw = sampling_ratio if sampling_ratio > 0 else None
        if gh is None:
            gh, gw = int(math.ceil(rh / oh)), int(math.ceil(rw / ow))
        for ph in range(oh):
            for pw in range(ow):
                acc = np.zeros(feats.shape[3])
                for iy in range(gh):
                    y = sy + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = sx + pw * bw + (ix + 0.5) * bw / gw
                        acc += _bilinear(feats[int(b)], y, x)
                out[r, ph, pw] = acc / max(gh * gw, 1)
    return out


def _round(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def roi_pool_ref(features, boxes, box_indices, out_hw, spatial_scale):
    feats = np.asarray(features, np.float64)
    _, h, w, c = feats.shape
    oh, ow = out_hw
    out = np.zeros((len(boxes), oh, ow, c))
    for r, (box, b) in enumerate(zip(np.asarray(boxes, np.float64), box_indices)):
        x1, y1, x2, y2 = (_round(v * spatial_scale) for v in box)
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        bh, bw = rh / oh, rw / ow
        for ph in range(oh):
            hs = min(max(int(math.floor(ph * bh)) + y1, 0), h)
            he = min(max(int(math.ceil((ph + 1) * bh)) + y1, 0), h)
            for pw in range(ow):
                ws = min(max(int(math.floor(pw * bw)) + x1, 0), w)
                we = min(max(int(math.ceil((pw + 1) * bw)) + x1, 0), w)
                if he <= hs or we <= ws:
                    continue
                out[r, ph, pw] = feats[int(b), hs:he, ws:we].reshape(-1, c).max(0)
    return out
