"""Vectorised per-image ranking and matching of predicted triplets (NumPy).

These are the building blocks of `SGGEvaluator`. They follow neural-motifs'
`lib/evaluation/sg_eval.py` (also used by Scene-Graph-Benchmark), with one difference made on
purpose: the reference evaluator expects the model to have sorted its relations already; here the
evaluator ranks by itself, so callers may pass pairs in any order. Ties in score are broken by
input order (lower pair row first, then lower predicate index), which makes results deterministic.

Instead of NM's list-of-lists `pred_to_gt`, a match is summarised as the rank of the first
candidate that hits each ground-truth triplet; a ground truth is recalled at K exactly when that
rank is < K. This gives all K values (and mean / zero-shot recall) from one matching pass.
"""
from __future__ import annotations

import numpy as np

from sgg_jax.ops.np_boxes import box_iou, paired_iou, union_boxes

NO_HIT = np.iinfo(np.int64).max  # first-hit rank of a ground truth that no candidate hits


def top_k_stable(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of a 1-D array, by score descending, ties by index.

    Uses a partition to find the k-th value, then sorts only entries at or above it, so the cost
    is O(n + k log k) while staying exactly equal to a full stable sort's first k entries.
    """
    n = scores.shape[0]
    if k <= 0 or n == 0:
        return np.zeros((0,), np.int64)
    if k < n:
        kth = np.partition(scores, n - k)[n - k]
        cand = np.flatnonzero(scores >= kth)
    else:
        cand = np.arange(n)
    order = np.lexsort((cand, -scores[cand]))
    return cand[order[:k]].astype(np.int64)


def best_predicates(rel_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best foreground predicate (1-based; ties: lowest) and its score (float64)."""
    fg = rel_scores[:, 1:]
    if fg.shape[0] == 0 or fg.shape[1] == 0:
        return np.zeros((fg.shape[0],), np.int64), np.zeros((fg.shape[0],), np.float64)
    pred = fg.argmax(axis=1)
    return pred.astype(np.int64) + 1, fg[np.arange(fg.shape[0]), pred].astype(np.float64)


def rank_graph_constrained(rel_scores: np.ndarray, pair_obj_scores: np.ndarray, k: int,
                           best: tuple[np.ndarray, np.ndarray] | None = None
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k triplets with one predicate per pair (the "graph constraint").

    Args:
      rel_scores: [M, P+1], column 0 = no relation (ignored).
      pair_obj_scores: [M] subject score x object score.
      k: how many to keep.
      best: `best_predicates(rel_scores)` if already computed.
    Returns (rows [k'], predicates [k'] 1-based, scores [k']) sorted by score descending, where
    score = max_{p>=1} rel_scores[p] * (subject score * object score) (argmax ties: lowest p).
    """
    pred, top = best if best is not None else best_predicates(rel_scores)
    score = top * pair_obj_scores
    rows = top_k_stable(score, k)
    return rows, pred[rows], score[rows]


def rank_no_graph_constraint(rel_scores: np.ndarray, pair_obj_scores: np.ndarray, k: int,
                             per_pair: int | None = None,
                             best: tuple[np.ndarray, np.ndarray] | None = None
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k (pair, predicate) entries over all pairs ("no graph constraint", NM multiple_preds).

    Every foreground predicate of every pair is a candidate scored
    rel_scores[p] * (subject score * object score), zero scores included (as in NM / SGB). With
    `per_pair` set, only each pair's `per_pair` best predicates are candidates (F-Net keeps 10).
    Ties: lower pair row first, then lower predicate.
    Speed: an entry can only be in the top k if its row's best entry is among the k best rows
    (k rows scoring strictly more would each beat it), so only those rows are expanded; the
    result equals ranking all M x P entries.
    Returns (rows, predicates 1-based, scores), sorted by score descending.
    """
    m, p = rel_scores.shape[0], rel_scores.shape[1] - 1
    if m == 0 or p <= 0 or k <= 0:
        z = np.zeros((0,), np.int64)
        return z, z, np.zeros((0,), np.float64)
    if per_pair is not None and per_pair < p:
        k = min(k, m * per_pair)
    rows_keep = np.arange(m)
    if m > k and np.all(pair_obj_scores >= 0):
        _, top = best if best is not None else best_predicates(rel_scores)
        row_score = top * pair_obj_scores
        kth = np.partition(row_score, m - k)[m - k]
        rows_keep = np.flatnonzero(row_score >= kth)
    fg = rel_scores[rows_keep, 1:].astype(np.float64)
    scores = fg * pair_obj_scores[rows_keep, None]
    if per_pair is not None and per_pair < p:
        # keep each row's `per_pair` best predicates (ties: lower predicate index first)
        order = np.argsort(-fg, axis=1, kind="stable")[:, :per_pair]
        keep = np.zeros_like(scores, dtype=bool)
        np.put_along_axis(keep, order, True, axis=1)
        scores = np.where(keep, scores, -np.inf)
    flat = top_k_stable(scores.ravel(), k)  # row-major over sorted rows = global (row, p) order
    local_row, pred = np.divmod(flat, p)
    return rows_keep[local_row], pred + 1, scores.ravel()[flat]


def first_hit_ranks(cand_sub: np.ndarray, cand_obj: np.ndarray, cand_pred: np.ndarray,
                    pred_boxes: np.ndarray, pred_labels: np.ndarray,
                    gt_boxes: np.ndarray, gt_labels: np.ndarray, gt_rels: np.ndarray, *,
                    iou_threshold: float, convention: str, phrase: bool = False,
                    by_index: bool = False, ignore_labels: bool = False) -> np.ndarray:
    """For each ground-truth triplet, the rank of the first candidate that hits it (NO_HIT if none).

    Candidates are (subject index, object index, predicate) rows into the prediction's boxes, in
    rank order. A candidate hits a ground truth when predicate, subject label and object label are
    equal and both boxes have IoU >= iou_threshold (`phrase`: instead the union boxes of the two
    pairs do). No one-to-one assignment, as in NM: one candidate may hit several duplicates.
    `by_index` (PredDet): indices and predicate must be equal (boxes are the ground truth's).
    `ignore_labels` (F-Net "predicate recall"): object labels are not compared.
    """
    num_gt = gt_rels.shape[0]
    if num_gt == 0 or cand_sub.shape[0] == 0:
        return np.full((num_gt,), NO_HIT, np.int64)
    gs, go, gp = gt_rels[:, 0], gt_rels[:, 1], gt_rels[:, 2]
    hit = cand_pred[:, None] == gp[None, :]
    if by_index:
        hit &= (cand_sub[:, None] == gs[None, :]) & (cand_obj[:, None] == go[None, :])
    else:
        if not ignore_labels:
            hit &= pred_labels[cand_sub][:, None] == gt_labels[gs][None, :]
            hit &= pred_labels[cand_obj][:, None] == gt_labels[go][None, :]
        if phrase:
            cu = union_boxes(pred_boxes[cand_sub], pred_boxes[cand_obj])
            gu = union_boxes(gt_boxes[gs], gt_boxes[go])
            hit &= box_iou(cu, gu, convention) >= iou_threshold
        else:
            iou = box_iou(pred_boxes, gt_boxes, convention) >= iou_threshold  # [N, G]
            hit &= iou[cand_sub][:, gs] & iou[cand_obj][:, go]
    any_hit = hit.any(axis=0)
    return np.where(any_hit, hit.argmax(axis=0), NO_HIT).astype(np.int64)


def same_key_pairs(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j), i < j, with key[i] == key[j] (by one stable sort, not an n x n
    comparison): each position is paired with the earlier positions of its key."""
    order = np.argsort(key, kind="stable")
    sk = key[order]
    n = sk.shape[0]
    new_group = np.r_[True, sk[1:] != sk[:-1]] if n else np.zeros((0,), bool)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    rank = np.arange(n) - group_start  # earlier members of the same key
    total = int(rank.sum())
    if total == 0:
        return np.zeros((0,), np.int64), np.zeros((0,), np.int64)
    later = np.repeat(np.arange(n), rank)
    first = np.repeat(np.cumsum(rank) - rank, rank)
    earlier = group_start[later] + (np.arange(total) - first)
    return order[earlier], order[later]


def triplet_nms_keep(order_sub: np.ndarray, order_obj: np.ndarray, order_pred: np.ndarray,
                     boxes: np.ndarray, labels: np.ndarray, threshold: float, limit: int,
                     convention: str = "plus_one") -> np.ndarray:
    """Greedy triplet NMS (F-Net) over candidates already in rank order; returns kept positions.

    A later candidate is suppressed by a kept one when subject label, object label and predicate
    are equal and both the subject IoU and the object IoU exceed `threshold` (strictly). Stops once
    `limit` candidates are kept.
    """
    n = order_sub.shape[0]
    if n == 0:
        return np.zeros((0,), np.int64)
    # Only candidates with the same (subject label, object label, predicate) interact, so the
    # IoU tests run over those pairs alone (few), and the greedy pass visits only candidates
    # that some earlier one could suppress. Greedy NMS within each key is independent of the
    # other keys, so the kept set truncated to `limit` equals the sequential algorithm's.
    sl, ol, pr = (np.asarray(x, np.int64) for x in (labels[order_sub], labels[order_obj],
                                                      order_pred))
    sl, ol, pr = sl - sl.min(), ol - ol.min(), pr - pr.min()
    key = (sl * (int(ol.max()) + 1) + ol) * (int(pr.max()) + 1) + pr
    earlier, later = same_key_pairs(key)
    removed = np.zeros((n,), bool)
    if earlier.size:
        subj, obj = order_sub, order_obj
        sup = ((paired_iou(boxes[subj[earlier]], boxes[subj[later]], convention) > threshold)
               & (paired_iou(boxes[obj[earlier]], boxes[obj[later]], convention) > threshold))
        earlier, later = earlier[sup], later[sup]
        by_later = np.argsort(later, kind="stable")
        # In order of the suppressed candidate: its suppressors come before it, so their own
        # fate is already final when it is decided.
        gone = removed.tolist()
        for e, j in zip(earlier[by_later].tolist(), later[by_later].tolist()):
            if not gone[e]:
                gone[j] = True
        removed = np.asarray(gone, bool)
    return np.flatnonzero(~removed)[:limit].astype(np.int64)
