"""`SGGEvaluator`: the field's scene graph recall metrics, one image at a time.

Two protocols:

* ``"motifs"`` (default): neural-motifs `lib/evaluation/sg_eval.py` / Scene-Graph-Benchmark
  `sgg_eval.py`. Per-image recall averaged over images: R@K (graph constraint), ngR@K (no graph
  constraint), mR@K / ngmR@K (SGB mean recall over predicates), zR@K / ngzR@K (zero-shot), and
  Knyazev et al.'s few-shot buckets as ngR@K.
* ``"msdn"``: MSDN / F-Net. One predicate per ordered ground-truth pair, the top
  `top_predicates_per_pair` predicates per predicted pair, triplet NMS, and recall micro-averaged
  over the dataset (total hits / total ground truth). Also F-Net's predicate recall predR@K.

See docs/evaluation.md for the definitions.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from sgg_jax.evaluation.ranking import (best_predicates, first_hit_ranks, rank_graph_constrained,
                                        rank_no_graph_constraint, triplet_nms_keep)

# What the evaluator scores: the three task modes (sgg_jax.models.registry.MODES) plus phrase
# detection and predicate detection.
EVAL_MODES = ("predcls", "sgcls", "sgdet", "phrdet", "preddet")
PROTOCOLS = ("motifs", "msdn")
# Knyazev et al. (BMVC 2020) test subsets by the triplet's training count: (name, lo, hi).
FEW_SHOT_BUCKETS = (("0-shot", 0, 0), ("1-10-shot", 1, 10), ("11-100-shot", 11, 100),
                    ("all-shot", 0, None))
FEW_SHOT_KS = (20, 50, 100, 200, 300)  # the K values of Knyazev et al.'s evaluator

_SHIFT = 21  # bits per field when encoding a (subject, predicate, object) triplet as one int64


def encode_triplets(triplets: np.ndarray) -> np.ndarray:
    """Encodes [T, 3] non-negative (subject class, predicate, object class) rows as int64 keys."""
    t = np.asarray(triplets, np.int64).reshape(-1, 3)
    if t.size and (t.min() < 0 or t.max() >= (1 << _SHIFT)):
        raise ValueError(f"triplet classes and predicates must lie in [0, {1 << _SHIFT})")
    return (t[:, 0] << (2 * _SHIFT)) | (t[:, 1] << _SHIFT) | t[:, 2]


def _member(keys: np.ndarray, sorted_table: np.ndarray) -> np.ndarray:
    """keys in sorted_table (a sorted unique int64 array), by binary search."""
    if sorted_table.shape[0] == 0:
        return np.zeros(keys.shape, bool)
    pos = np.minimum(np.searchsorted(sorted_table, keys), sorted_table.shape[0] - 1)
    return sorted_table[pos] == keys


@dataclasses.dataclass(frozen=True)
class ImageInputs:
    """One image's arrays after mode resolution (what the ranking sees)."""

    gt_boxes: np.ndarray  # [G, 4] float64
    gt_labels: np.ndarray  # [G] int64
    gt_rels: np.ndarray  # [R, 3] int64
    boxes: np.ndarray  # [N, 4] float64, the prediction's boxes
    labels: np.ndarray  # [N] int64
    scores: np.ndarray  # [N] float64
    rel_pairs: np.ndarray  # [M, 2] int64
    rel_scores: np.ndarray  # [M, P+1]


def _array(d: Mapping[str, Any], key: str, where: str, ndim: int, last: int | None,
           kind: str) -> np.ndarray:
    """Fetches d[key] as an array of the given rank / last dimension / kind or raises ValueError."""
    if key not in d or d[key] is None:
        raise ValueError(f"{where}: missing field '{key}'")
    try:
        a = np.asarray(d[key])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: field '{key}' is not a rectangular numeric array ({e})") from e
    if a.size == 0 and a.ndim != ndim:
        a = a.reshape((0,) + ((last,) if ndim == 2 else ()))
    if a.ndim != ndim or (last is not None and a.shape[-1] != last):
        want = "[n]" if ndim == 1 else f"[n, {last}]"
        raise ValueError(f"{where}: field '{key}' must have shape {want}, got {a.shape}")
    if kind == "int":
        if a.size and not np.issubdtype(a.dtype, np.integer):
            if not np.issubdtype(a.dtype, np.floating) or np.any(a != np.round(a)):
                raise ValueError(f"{where}: field '{key}' must hold integers, got {a.dtype}")
        return a.astype(np.int64)
    if a.size and not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{where}: field '{key}' must be numeric, got {a.dtype}")
    # one cheap pass: the sum is finite unless some entry is NaN / inf (or it overflows)
    if a.size and not np.isfinite(a.sum()) and not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: field '{key}' contains NaN or inf")
    return a


def resolve_inputs(mode: str, groundtruth: Mapping[str, Any], prediction: Mapping[str, Any],
                   num_predicates: int, where: str = "image") -> ImageInputs:
    """Validates one image's dicts and applies the mode's conventions (as NM does).

    `groundtruth` may also be a `data_pipelines.records.SceneGraphRecord`.

    PredCls / PredDet: boxes and labels are the ground truth's, object scores 1.
    SGCls: boxes are the ground truth's; labels and scores come from the prediction.
    SGDet / PhrDet: everything comes from the prediction.
    """
    if not isinstance(groundtruth, Mapping) and hasattr(groundtruth, "relations"):
        # a data_pipelines.records.SceneGraphRecord (or any object with these attributes)
        groundtruth = {k: getattr(groundtruth, k) for k in ("boxes", "labels", "relations")}
    gt_boxes = _array(groundtruth, "boxes", f"{where} groundtruth", 2, 4, "float")
    gt_labels = _array(groundtruth, "labels", f"{where} groundtruth", 1, None, "int")
    gt_rels = _array(groundtruth, "relations", f"{where} groundtruth", 2, 3, "int")
    g = gt_boxes.shape[0]
    if gt_labels.shape[0] != g:
        raise ValueError(f"{where} groundtruth: 'labels' has {gt_labels.shape[0]} entries but "
                         f"'boxes' has {g}")
    if gt_labels.size and gt_labels.min() < 1:
        raise ValueError(f"{where} groundtruth: field 'labels' must be 1-based (>= 1)")
    if gt_rels.size:
        if gt_rels[:, :2].min() < 0 or gt_rels[:, :2].max() >= g:
            raise ValueError(f"{where} groundtruth: field 'relations' has box indices outside "
                             f"[0, {g})")
        if gt_rels[:, 2].min() < 1 or gt_rels[:, 2].max() > num_predicates:
            raise ValueError(f"{where} groundtruth: field 'relations' has predicates outside "
                             f"[1, {num_predicates}]")

    pw = f"{where} prediction"
    rel_pairs = _array(prediction, "rel_pairs", pw, 2, 2, "int")
    rel_scores = _array(prediction, "rel_scores", pw, 2, num_predicates + 1, "float")
    if rel_scores.shape[0] != rel_pairs.shape[0]:
        raise ValueError(f"{pw}: 'rel_scores' has {rel_scores.shape[0]} rows but 'rel_pairs' "
                         f"has {rel_pairs.shape[0]}")
    if mode in ("predcls", "preddet"):
        if "boxes" in prediction and prediction["boxes"] is not None:
            nb = np.asarray(prediction["boxes"]).reshape(-1, 4).shape[0]
            if nb != g:
                raise ValueError(f"{pw}: in {mode} 'boxes' must be the {g} ground-truth boxes "
                                 f"in the same order, got {nb}")
        boxes, labels, scores = gt_boxes, gt_labels, np.ones((g,), np.float64)
    elif mode == "sgcls":
        labels = _array(prediction, "labels", pw, 1, None, "int")
        scores = _array(prediction, "scores", pw, 1, None, "float")
        if labels.shape[0] != g or scores.shape[0] != g:
            raise ValueError(f"{pw}: in sgcls 'labels' and 'scores' must have one entry per "
                             f"ground-truth box ({g}), got {labels.shape[0]} and {scores.shape[0]}")
        boxes = gt_boxes
    else:
        boxes = _array(prediction, "boxes", pw, 2, 4, "float")
        labels = _array(prediction, "labels", pw, 1, None, "int")
        scores = _array(prediction, "scores", pw, 1, None, "float")
        if not labels.shape[0] == scores.shape[0] == boxes.shape[0]:
            raise ValueError(f"{pw}: 'boxes', 'labels' and 'scores' must have the same length, "
                             f"got {boxes.shape[0]}, {labels.shape[0]}, {scores.shape[0]}")
    n = boxes.shape[0]
    if rel_pairs.size and (rel_pairs.min() < 0 or rel_pairs.max() >= n):
        raise ValueError(f"{pw}: field 'rel_pairs' has box indices outside [0, {n})")
    return ImageInputs(gt_boxes.astype(np.float64), gt_labels, gt_rels,
                       np.asarray(boxes, np.float64), labels, np.asarray(scores, np.float64),
                       rel_pairs, rel_scores)


def _preddet_rows(rel_pairs: np.ndarray, gt_rels: np.ndarray, num_boxes: int) -> np.ndarray:
    """Rows of the prediction whose pair is a ground-truth pair (first row per distinct pair)."""
    if rel_pairs.shape[0] == 0 or gt_rels.shape[0] == 0:
        return np.zeros((0,), np.int64)
    pair_key = rel_pairs[:, 0] * num_boxes + rel_pairs[:, 1]
    gt_key = np.unique(gt_rels[:, 0] * num_boxes + gt_rels[:, 1])
    in_gt = np.isin(pair_key, gt_key)
    _, first = np.unique(np.where(in_gt, pair_key, -1), return_index=True)
    rows = first[in_gt[first]]
    return np.sort(rows)


@dataclasses.dataclass(frozen=True)
class ImageRanks:
    """First-hit ranks of one image's ground-truth triplets under both constraints."""

    gc: np.ndarray  # [R] graph constraint
    ng: np.ndarray  # [R] no graph constraint
    triplets: np.ndarray  # [R, 3] ground-truth (subject class, predicate, object class)


def motifs_image_ranks(x: ImageInputs, mode: str, kmax: int, iou_threshold: float,
                       convention: str) -> ImageRanks:
    """Ranks the image's predictions (both constraints) and matches them to its ground truth."""
    pairs, rel_scores = x.rel_pairs, x.rel_scores
    by_index = mode == "preddet"
    if by_index:
        rows = _preddet_rows(pairs, x.gt_rels, x.gt_boxes.shape[0])
        pairs, rel_scores = pairs[rows], rel_scores[rows]
    pair_obj = x.scores[pairs[:, 0]] * x.scores[pairs[:, 1]] if pairs.size else np.zeros((0,))
    best = best_predicates(rel_scores)
    out = {}
    for name, ranker in (("gc", rank_graph_constrained), ("ng", rank_no_graph_constraint)):
        rows, pred, _ = ranker(rel_scores, pair_obj, kmax, best=best)
        out[name] = first_hit_ranks(
            pairs[rows, 0], pairs[rows, 1], pred, x.boxes, x.labels, x.gt_boxes, x.gt_labels,
            x.gt_rels, iou_threshold=iou_threshold, convention=convention,
            phrase=mode == "phrdet", by_index=by_index)
    triplets = np.stack([x.gt_labels[x.gt_rels[:, 0]], x.gt_rels[:, 2],
                         x.gt_labels[x.gt_rels[:, 1]]], axis=1)
    return ImageRanks(out["gc"], out["ng"], triplets)


def msdn_image_ranks(x: ImageInputs, mode: str, kmax: int, iou_threshold: float,
                     convention: str, top_predicates: int, nms_threshold: float | None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """MSDN / F-Net: first-hit ranks of the deduplicated ground truth (full match, predicate only).

    Ground truth is an N x N matrix in MSDN / F-Net, so each ordered pair keeps one predicate (the
    last one listed). Candidates: each pair's `top_predicates` best predicates scored
    predicate x subject x object score, sorted, then greedy triplet NMS, first `kmax` kept.
    """
    gt_rels = x.gt_rels
    g = x.gt_boxes.shape[0]
    if gt_rels.shape[0]:
        key = gt_rels[:, 0] * g + gt_rels[:, 1]
        _, last_rev = np.unique(key[::-1], return_index=True)
        gt_rels = gt_rels[np.sort(gt_rels.shape[0] - 1 - last_rev)]
    pairs, rel_scores = x.rel_pairs, x.rel_scores
    if mode == "preddet":
        rows = _preddet_rows(pairs, gt_rels, g)
        pairs, rel_scores = pairs[rows], rel_scores[rows]
    pair_obj = x.scores[pairs[:, 0]] * x.scores[pairs[:, 1]] if pairs.size else np.zeros((0,))
    total = pairs.shape[0] * min(top_predicates, max(rel_scores.shape[1] - 1, 0))
    take = kmax if nms_threshold is None else min(total, 4 * kmax)
    while True:
        rows, pred, _ = rank_no_graph_constraint(rel_scores, pair_obj, take, per_pair=top_predicates)
        sub, obj = pairs[rows, 0], pairs[rows, 1]
        if nms_threshold is None:
            break
        keep = triplet_nms_keep(sub, obj, pred, x.boxes, x.labels, nms_threshold, kmax,
                                convention)
        if keep.shape[0] >= kmax or take >= total:
            sub, obj, pred = sub[keep], obj[keep], pred[keep]
            break
        take = min(total, take * 4)
    kw = dict(iou_threshold=iou_threshold, convention=convention, phrase=mode == "phrdet",
              by_index=mode == "preddet")
    full = first_hit_ranks(sub, obj, pred, x.boxes, x.labels, x.gt_boxes, x.gt_labels, gt_rels,
                           **kw)
    pred_only = first_hit_ranks(sub, obj, pred, x.boxes, x.labels, x.gt_boxes, x.gt_labels,
                                gt_rels, ignore_labels=True, **kw)
    return full, pred_only


def _triplet_count_table(triplet_counts: Any) -> tuple[np.ndarray, np.ndarray]:
    """Normalises training triplet counts ([Z,4] array or {(s,p,o): n} dict) to sorted keys/counts."""
    if isinstance(triplet_counts, Mapping):
        items = list(triplet_counts.items())
        trip = np.asarray([k for k, _ in items], np.int64).reshape(-1, 3)
        cnt = np.asarray([v for _, v in items], np.int64).reshape(-1)
    else:
        arr = np.asarray(triplet_counts)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError("triplet_counts: expected a [Z, 4] array of (subject class, "
                             f"predicate, object class, count) or a dict, got shape {arr.shape}")
        arr = arr.astype(np.int64)
        trip, cnt = arr[:, :3], arr[:, 3]
    if trip.size and (trip.min() < 0 or cnt.min() < 0):
        raise ValueError("triplet_counts: classes, predicates and counts must be >= 0")
    keys = encode_triplets(trip)
    order = np.argsort(keys, kind="stable")
    keys, cnt = keys[order], cnt[order]
    if keys.size and np.any(keys[1:] == keys[:-1]):
        raise ValueError("triplet_counts: a (subject, predicate, object) triplet appears twice")
    return keys, cnt


class SGGEvaluator:
    """Accumulates scene graph recall over a split, one `add(groundtruth, prediction)` per image.

    Args:
      mode: "predcls" | "sgcls" | "sgdet" | "phrdet" | "preddet".
      num_predicates: P, the number of foreground predicates (rel_scores has P + 1 columns).
      ks: the K of R@K.
      zero_shot_triplets: int [Z, 3] (subject class, predicate, object class) never seen in
        training; enables zR@K / ngzR@K. See `load_vg150_zero_shot_triplets()`.
      iou_threshold: box IoU needed for a match (0.5 in the field).
      iou_convention: "plus_one" (NM / SGB, default) or "continuous".
      protocol: "motifs" (NM / SGB, per-image mean) or "msdn" (MSDN / F-Net, micro-averaged).
      triplet_counts: training counts of triplets ([Z, 4] (s, p, o, count) or {(s, p, o): count});
        enables Knyazev et al.'s few-shot ngR@K for triplets seen 0, 1-10, 11-100 times, and all.
      few_shot_ks: the K values reported for the few-shot buckets.
      top_predicates_per_pair: msdn protocol only: predicates kept per pair (F-Net 10; MSDN's
        argmax is 1).
      triplet_nms_threshold: msdn protocol only: triplet NMS IoU (F-Net 0.4; None = off).
    """

    def __init__(self, mode: str, num_predicates: int, ks: tuple[int, ...] = (20, 50, 100),
                 zero_shot_triplets: np.ndarray | None = None, iou_threshold: float = 0.5, *,
                 iou_convention: str = "plus_one", protocol: str = "motifs",
                 triplet_counts: Any = None, few_shot_ks: tuple[int, ...] = FEW_SHOT_KS,
                 top_predicates_per_pair: int = 10,
                 triplet_nms_threshold: float | None = 0.4):
        if mode not in EVAL_MODES:
            raise ValueError(f"mode: expected one of {EVAL_MODES}, got {mode!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
        if iou_convention not in ("plus_one", "continuous"):
            raise ValueError("iou_convention: expected 'plus_one' or 'continuous', got "
                             f"{iou_convention!r}")
        if int(num_predicates) < 1:
            raise ValueError(f"num_predicates: expected >= 1, got {num_predicates}")
        ks = tuple(sorted({int(k) for k in ks}))
        if not ks or ks[0] < 1:
            raise ValueError(f"ks: expected positive integers, got {ks}")
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold: expected a value in (0, 1], got {iou_threshold}")
        if int(top_predicates_per_pair) < 1:
            raise ValueError("top_predicates_per_pair: expected >= 1")
        self.mode = mode
        self.num_predicates = int(num_predicates)
        self.ks = ks
        self.iou_threshold = float(iou_threshold)
        self.iou_convention = iou_convention
        self.protocol = protocol
        self.top_predicates_per_pair = int(top_predicates_per_pair)
        self.triplet_nms_threshold = triplet_nms_threshold
        self._zs_keys = None
        if zero_shot_triplets is not None:
            z = np.asarray(zero_shot_triplets)
            if z.ndim != 2 or z.shape[1] != 3 or (z.size and z.min() < 0):
                raise ValueError("zero_shot_triplets: expected an int [Z, 3] array of "
                                 f"(subject class, predicate, object class), got shape {z.shape}")
            self._zs_keys = np.unique(encode_triplets(z))
        self._fs = None
        self.few_shot_ks = tuple(sorted({int(k) for k in few_shot_ks}))
        if triplet_counts is not None:
            self._fs = _triplet_count_table(triplet_counts)
        kmax = max(ks)
        if self._fs is not None:
            kmax = max(kmax, max(self.few_shot_ks))
        self._kmax = kmax
        self.reset()

    def reset(self) -> None:
        """Forgets all images added so far."""
        self._num_images = 0
        self._skipped_no_gt = 0
        self._num_gt = 0
        self._zs_images = 0
        # per-image recall sums: {"gc"/"ng": [len(ks)]}
        self._rsum = {c: np.zeros(len(self.ks)) for c in ("gc", "ng")}
        self._zsum = {c: np.zeros(len(self.ks)) for c in ("gc", "ng")}
        # SGB mean recall: per predicate, sum of per-image recalls and number of images
        self._msum = {c: np.zeros((len(self.ks), self.num_predicates + 1)) for c in ("gc", "ng")}
        self._mcnt = np.zeros(self.num_predicates + 1)
        self._fsum = np.zeros((len(FEW_SHOT_BUCKETS), len(self.few_shot_ks)))
        self._fcnt = np.zeros(len(FEW_SHOT_BUCKETS))
        # MSDN micro-averaged totals
        self._hits = np.zeros(len(self.ks))
        self._pred_hits = np.zeros(len(self.ks))

    def add(self, groundtruth: Mapping[str, Any], prediction: Mapping[str, Any]) -> None:
        """Evaluates one image. Images without ground-truth relations are skipped and counted."""
        where = f"image {self._num_images}"
        x = resolve_inputs(self.mode, groundtruth, prediction, self.num_predicates, where)
        self._num_images += 1
        if x.gt_rels.shape[0] == 0:
            self._skipped_no_gt += 1
            return
        ks = np.asarray(self.ks)
        if self.protocol == "msdn":
            full, pred_only = msdn_image_ranks(
                x, self.mode, self._kmax, self.iou_threshold, self.iou_convention,
                self.top_predicates_per_pair, self.triplet_nms_threshold)
            self._num_gt += full.shape[0]
            self._hits += (full[None, :] < ks[:, None]).sum(1)
            self._pred_hits += (pred_only[None, :] < ks[:, None]).sum(1)
            return
        r = motifs_image_ranks(x, self.mode, self._kmax, self.iou_threshold, self.iou_convention)
        num_gt = r.gc.shape[0]
        self._num_gt += num_gt
        preds = x.gt_rels[:, 2]
        pcount = np.bincount(preds, minlength=self.num_predicates + 1)
        present = pcount > 0
        self._mcnt += present
        zs = None
        if self._zs_keys is not None:
            zs = _member(encode_triplets(r.triplets), self._zs_keys)
            if zs.any():
                self._zs_images += 1
        for c, ranks in (("gc", r.gc), ("ng", r.ng)):
            hit = ranks[None, :] < ks[:, None]  # [len(ks), R]
            self._rsum[c] += hit.sum(1) / num_gt
            for i in range(len(ks)):
                phit = np.bincount(preds, weights=hit[i], minlength=self.num_predicates + 1)
                self._msum[c][i, present] += phit[present] / pcount[present]
            if zs is not None and zs.any():
                self._zsum[c] += hit[:, zs].sum(1) / zs.sum()
        if self._fs is not None:
            keys, counts = self._fs
            q = encode_triplets(r.triplets)
            pos = np.clip(np.searchsorted(keys, q), 0, max(keys.shape[0] - 1, 0))
            found = keys.shape[0] > 0
            tc = np.where(found & (keys[pos] == q), counts[pos], 0) if found else np.zeros_like(q)
            fks = np.asarray(self.few_shot_ks)
            fhit = r.ng[None, :] < fks[:, None]
            for b, (_, lo, hi) in enumerate(FEW_SHOT_BUCKETS):
                sel = (tc >= lo) & ((tc <= hi) if hi is not None else True)
                if sel.any():
                    self._fcnt[b] += 1
                    self._fsum[b] += fhit[:, sel].sum(1) / sel.sum()

    def compute(self) -> dict[str, Any]:
        """Returns the metrics as percentages (NaN where no image qualifies) plus counts.

        Keys (motifs protocol): "R@K", "ngR@K", "mR@K", "ngmR@K", with a zero-shot list
        "zR@K", "ngzR@K", with triplet counts "ngR@K/0-shot", "ngR@K/1-10-shot",
        "ngR@K/11-100-shot", "ngR@K/all-shot". msdn protocol: "R@K" (micro-averaged) and
        "predR@K". Always: "protocol", "mode", "num_images", "num_images_evaluated",
        "num_images_skipped_no_gt_relations", "num_gt_relations" (and "num_images_zero_shot").
        """
        n = self._num_images - self._skipped_no_gt
        out: dict[str, Any] = {"protocol": self.protocol, "mode": self.mode}

        def mean(total: float, count: float) -> float:
            return float(100.0 * total / count) if count > 0 else math.nan

        if self.protocol == "msdn":
            for i, k in enumerate(self.ks):
                out[f"R@{k}"] = mean(self._hits[i], self._num_gt)
            for i, k in enumerate(self.ks):
                out[f"predR@{k}"] = mean(self._pred_hits[i], self._num_gt)
        else:
            for i, k in enumerate(self.ks):
                out[f"R@{k}"] = mean(self._rsum["gc"][i], n)
            for i, k in enumerate(self.ks):
                out[f"ngR@{k}"] = mean(self._rsum["ng"][i], n)
            for c, name in (("gc", "mR"), ("ng", "ngmR")):
                for i, k in enumerate(self.ks):
                    per_pred = np.where(self._mcnt > 0,
                                        self._msum[c][i] / np.maximum(self._mcnt, 1), 0.0)[1:]
                    out[f"{name}@{k}"] = float(100.0 * per_pred.mean()) if n > 0 else math.nan
            if self._zs_keys is not None:
                for c, name in (("gc", "zR"), ("ng", "ngzR")):
                    for i, k in enumerate(self.ks):
                        out[f"{name}@{k}"] = mean(self._zsum[c][i], self._zs_images)
            if self._fs is not None:
                for b, (bname, _, _) in enumerate(FEW_SHOT_BUCKETS):
                    for j, k in enumerate(self.few_shot_ks):
                        out[f"ngR@{k}/{bname}"] = mean(self._fsum[b, j], self._fcnt[b])
        out["num_images"] = self._num_images
        out["num_images_evaluated"] = n
        out["num_images_skipped_no_gt_relations"] = self._skipped_no_gt
        out["num_gt_relations"] = int(self._num_gt)
        if self._zs_keys is not None:
            out["num_images_zero_shot"] = self._zs_images
        if self._fs is not None:
            for b, (bname, _, _) in enumerate(FEW_SHOT_BUCKETS):
                out[f"num_images_{bname}"] = int(self._fcnt[b])
        return out

    def per_predicate_recall(self, k: int, graph_constraint: bool = True) -> np.ndarray:
        """[P] per-predicate recall in percent at K (SGB's mean-recall list; 0 where absent)."""
        i = self.ks.index(int(k))
        c = "gc" if graph_constraint else "ng"
        per = np.where(self._mcnt > 0, self._msum[c][i] / np.maximum(self._mcnt, 1), 0.0)
        return 100.0 * per[1:]
