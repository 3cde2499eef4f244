"""`DetectionEvaluator`: COCO-style box mAP of the detector stage, computed by pycocotools.

Ground truth and detections are gathered per image, turned into in-memory COCO structures and
scored by `pycocotools.cocoeval.COCOeval` (bbox). pycocotools' console output is captured so that
evaluation stays quiet; it is available afterwards as `last_log`.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Mapping

import numpy as np


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """x1y1x2y2 -> COCO's x, y, width, height (continuous coordinates)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


class DetectionEvaluator:
    """Accumulates detections and reports COCO AP (IoU 0.50:0.95), AP50 and AP75 in percent.

    Args:
      num_classes: C, object classes are 1..C.
      max_detections: detections per image kept by COCOeval (COCO uses 100).
    """

    def __init__(self, num_classes: int, max_detections: int = 100):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.max_detections = int(max_detections)
        self.last_log = ""
        self.reset()

    def reset(self) -> None:
        self._images: list[dict] = []
        self._gt: list[dict] = []
        self._dets: list[list[float]] = []

    def add(self, groundtruth: Mapping[str, Any], prediction: Mapping[str, Any]) -> None:
        """Adds one image: groundtruth {boxes [G,4], labels [G]}, prediction {boxes, labels, scores}."""
        img = len(self._images) + 1
        where = f"image {img - 1}"
        gb = np.asarray(groundtruth["boxes"], np.float64).reshape(-1, 4)
        gl = np.asarray(groundtruth["labels"]).reshape(-1).astype(np.int64)
        pb = np.asarray(prediction["boxes"], np.float64).reshape(-1, 4)
        pl = np.asarray(prediction["labels"]).reshape(-1).astype(np.int64)
        ps = np.asarray(prediction["scores"], np.float64).reshape(-1)
        if gl.shape[0] != gb.shape[0]:
            raise ValueError(f"{where} groundtruth: 'labels' and 'boxes' differ in length")
        if not pl.shape[0] == ps.shape[0] == pb.shape[0]:
            raise ValueError(f"{where} prediction: 'boxes', 'labels', 'scores' differ in length")
        for name, lab in (("groundtruth", gl), ("prediction", pl)):
            if lab.size and (lab.min() < 1 or lab.max() > self.num_classes):
                raise ValueError(f"{where} {name}: field 'labels' outside [1, {self.num_classes}]")
        self._images.append({"id": img})
        for box, lab in zip(_xywh(gb), gl):
            self._gt.append({"id": len(self._gt) + 1, "image_id": img, "category_id": int(lab),
                             "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": 0})
        for box, lab, s in zip(_xywh(pb), pl, ps):
            self._dets.append([img, *box.tolist(), float(s), int(lab)])

    def compute(self) -> dict[str, Any]:
        """Runs COCOeval; returns {"AP", "AP50", "AP75", "num_images", "per_class"} in percent
        (0 when there are no detections): per_class[c - 1] = {"class": c, "AP", "AP50",
        "num_gt"} for every class c = 1..C (AP None for a class without ground truth)."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if not self._images:
            raise ValueError("DetectionEvaluator.compute: no images were added")
        num_gt = np.bincount([a["category_id"] for a in self._gt],
                             minlength=self.num_classes + 1).astype(int)
        if not self._dets or not self._gt:
            per_class = [{"class": c, "AP": 0.0 if num_gt[c] else None,
                          "AP50": 0.0 if num_gt[c] else None, "num_gt": int(num_gt[c])}
                         for c in range(1, self.num_classes + 1)]
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "num_images": len(self._images),
                    "per_class": per_class}
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            gt = COCO()
            gt.dataset = {"images": self._images, "annotations": self._gt,
                          "categories": [{"id": c} for c in range(1, self.num_classes + 1)]}
            gt.createIndex()
            dt = gt.loadRes(np.asarray(self._dets, np.float64))
            ev = COCOeval(gt, dt, iouType="bbox")
            ev.params.maxDets = [1, 10, self.max_detections]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        self.last_log = log.getvalue()
        s = ev.stats
        clean = lambda v: float(100.0 * max(v, 0.0))  # COCOeval reports -1 for "no data"
        return {"AP": clean(s[0]), "AP50": clean(s[1]), "AP75": clean(s[2]),
                "num_images": len(self._images),
                "per_class": per_class_ap(ev.eval["precision"], num_gt)}


def per_class_ap(precision: np.ndarray, num_gt: np.ndarray) -> list[dict]:
    """Per-class AP (IoU 0.50:0.95) and AP50 in percent from COCOeval's accumulated precision
    [T, R, K, A, M] (all areas, the largest maxDets), as COCOeval's summary averages them: over
    the IoU thresholds and recall points that have a value. None for a class without ground
    truth."""
    out = []
    for k in range(precision.shape[2]):
        p = precision[:, :, k, 0, -1]
        valid = p > -1
        ap = float(100.0 * p[valid].mean()) if valid.any() else None
        ap50 = float(100.0 * p[0][valid[0]].mean()) if valid[0].any() else None
        has_gt = bool(num_gt[k + 1])
        out.append({"class": k + 1, "AP": ap if has_gt else None,
                    "AP50": ap50 if has_gt else None, "num_gt": int(num_gt[k + 1])})
    return out
