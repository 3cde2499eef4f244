"""Training targets with fixed shapes: RPN anchor labels and RoI-head proposal sampling.

Both samplers draw a random permutation through uniform random keys and `lax.top_k`: the
candidates of a kind (fg / bg) with the largest keys are the sample, so every shape is static and
no Python loop runs over boxes. Functions here handle one image; vmap them over the batch.
"""
from __future__ import annotations


import flax
import jax
import jax.numpy as jnp

from sgg_jax.ops import boxes as box_ops



def _sample(candidates: jnp.ndarray, limit: jnp.ndarray, k: int, key: jax.Array) -> jnp.ndarray:
    """Bool mask: a uniformly random subset of `candidates` of size min(count, limit) (limit <= k)."""
    k = min(k, candidates.shape[0])
    keys = jnp.where(candidates, jax.random.uniform(key, candidates.shape), -1.0)
    vals, idx = jax.lax.top_k(keys, k)
    take = (vals >= 0.0) & (jnp.arange(k) < limit)
    return jnp.zeros(candidates.shape, bool).at[idx].max(take)


@flax.struct.dataclass
class AnchorTargets:
    """Per anchor: sampled fg / bg masks, regression targets (meaningful where fg)."""

    fg: jnp.ndarray        # [A] bool
    bg: jnp.ndarray        # [A] bool
    deltas: jnp.ndarray    # [A, 4]
    matched_gt: jnp.ndarray  # [A] int32 index of the matched gt box


def anchor_labels(anchors: jnp.ndarray, gt_boxes: jnp.ndarray, gt_mask: jnp.ndarray,
                  fg_thresh: float, bg_thresh: float,
                  inside: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Unsampled RPN labels: 1 fg, 0 bg, -1 ignore [A], and the matched gt index [A].

    fg: IoU >= fg_thresh with some valid gt, or an anchor with the highest IoU (> 0) for some gt
    (ties included, as torchvision); bg: max IoU < bg_thresh; anchors outside `inside` are ignored.
    """
    iou = box_ops.pairwise_iou(anchors, gt_boxes)
    iou = jnp.where(gt_mask[None, :], iou, -1.0)
    max_iou = jnp.max(iou, axis=1)
    matched = jnp.argmax(iou, axis=1).astype(jnp.int32)
    labels = jnp.full(anchors.shape[0], -1, jnp.int32)
    labels = jnp.where(max_iou < bg_thresh, 0, labels)
    if inside is not None:
        col_iou = jnp.where(inside[:, None], iou, -1.0)
    else:
        col_iou = iou
    best_per_gt = jnp.max(col_iou, axis=0)
    is_best = jnp.any((col_iou == best_per_gt[None, :]) & (best_per_gt[None, :] > 0.0)
                      & gt_mask[None, :], axis=1)
    labels = jnp.where((max_iou >= fg_thresh) | is_best, 1, labels)
    labels = jnp.where(jnp.any(gt_mask), labels, jnp.zeros_like(labels))
    if inside is not None:
        labels = jnp.where(inside, labels, -1)
    return labels, matched


def rpn_targets(anchors: jnp.ndarray, gt_boxes: jnp.ndarray, gt_mask: jnp.ndarray,
                image_hw: jnp.ndarray, key: jax.Array, *, fg_thresh: float = 0.7,
                bg_thresh: float = 0.3, batch_size: int = 256, positive_fraction: float = 0.5,
                allowed_border: float = -1.0,
                weights: tuple = (1.0, 1.0, 1.0, 1.0)) -> AnchorTargets:
    """Samples `batch_size` anchors (at most positive_fraction fg) for one image."""
    anchors, gt_boxes = jnp.asarray(anchors, jnp.float32), jnp.asarray(gt_boxes, jnp.float32)
    gt_mask, image_hw = jnp.asarray(gt_mask, bool), jnp.asarray(image_hw, jnp.float32)
    inside = None
    if allowed_border >= 0:
        h, w = image_hw[0], image_hw[1]
        inside = ((anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border)
                  & (anchors[:, 2] < w + allowed_border) & (anchors[:, 3] < h + allowed_border))
    labels, matched = anchor_labels(anchors, gt_boxes, gt_mask, fg_thresh, bg_thresh, inside)
    k_fg, k_bg = jax.random.split(key)
    max_fg = int(batch_size * positive_fraction)
    fg = _sample(labels == 1, max_fg, max_fg, k_fg)
    n_bg = batch_size - jnp.sum(fg)
    bg = _sample(labels == 0, n_bg, batch_size, k_bg)
    deltas = box_ops.encode_boxes(anchors, gt_boxes[matched], weights)
    return AnchorTargets(fg=fg, bg=bg, deltas=jnp.where(fg[:, None], deltas, 0.0), matched_gt=matched)


@flax.struct.dataclass
class RoITargets:
    """The sampled RoIs of one image and their targets (fixed size S)."""

    boxes: jnp.ndarray     # [S, 4]
    labels: jnp.ndarray    # [S] int32, 0 = background, 1..C classes
    deltas: jnp.ndarray    # [S, 4] regression targets for the label's class (0 for bg)
    fg: jnp.ndarray        # [S] bool
    valid: jnp.ndarray     # [S] bool (fg or sampled bg; False = padding)
    matched_gt: jnp.ndarray  # [S] int32 index of the gt box with the highest IoU (meaningful where fg)


def sample_proposals(proposals: jnp.ndarray, proposal_mask: jnp.ndarray, gt_boxes: jnp.ndarray,
                     gt_labels: jnp.ndarray, gt_mask: jnp.ndarray, key: jax.Array, *,
                     batch_size: int = 512, positive_fraction: float = 0.25,
                     fg_thresh: float = 0.5, bg_thresh_hi: float = 0.5, bg_thresh_lo: float = 0.0,
                     weights: tuple = (10.0, 10.0, 5.0, 5.0)) -> RoITargets:
    """Proposal-target sampling for the RoI head (gt boxes appended to the proposals).

    fg: IoU >= fg_thresh with a valid gt (label = that gt's class); bg: IoU in
    [bg_thresh_lo, bg_thresh_hi). fg come first in the output, then bg, then padding.
    """
    proposals, gt_boxes = jnp.asarray(proposals, jnp.float32), jnp.asarray(gt_boxes, jnp.float32)
    proposal_mask, gt_mask = jnp.asarray(proposal_mask, bool), jnp.asarray(gt_mask, bool)
    gt_labels = jnp.asarray(gt_labels, jnp.int32)
    boxes = jnp.concatenate([proposals, gt_boxes], axis=0)
    mask = jnp.concatenate([proposal_mask, gt_mask], axis=0)
    iou = jnp.where(gt_mask[None, :], box_ops.pairwise_iou(boxes, gt_boxes), -1.0)
    max_iou = jnp.max(iou, axis=1)
    matched = jnp.argmax(iou, axis=1)
    has_gt = jnp.any(gt_mask)
    is_fg = mask & has_gt & (max_iou >= fg_thresh)
    is_bg = mask & ~is_fg & (jnp.where(has_gt, max_iou, 0.0) < bg_thresh_hi) & \
        (jnp.where(has_gt, max_iou, 0.0) >= bg_thresh_lo)
    k_fg, k_bg = jax.random.split(key)
    max_fg = int(batch_size * positive_fraction)
    fg = _sample(is_fg, max_fg, max_fg, k_fg)
    bg = _sample(is_bg, batch_size - jnp.sum(fg), batch_size, k_bg)
    # fg first, then bg, then the rest (padding): a stable sort on the rank.
    rank = jnp.where(fg, 0, jnp.where(bg, 1, 2))
    order = jnp.argsort(rank, stable=True)[:batch_size]
    if order.shape[0] < batch_size:  # fewer candidates than slots: pad with the last index
        order = jnp.pad(order, (0, batch_size - order.shape[0]), mode="edge")
        pad = jnp.arange(batch_size) >= boxes.shape[0]
    else:
        pad = jnp.zeros(batch_size, bool)
    sel_fg = fg[order] & ~pad
    sel_valid = (fg[order] | bg[order]) & ~pad
    sel_boxes = boxes[order]
    sel_gt = matched[order]
    labels = jnp.where(sel_fg, gt_labels[sel_gt], 0).astype(jnp.int32)
    deltas = box_ops.encode_boxes(sel_boxes, gt_boxes[sel_gt], weights)
    return RoITargets(boxes=sel_boxes, labels=labels, deltas=jnp.where(sel_fg[:, None], deltas, 0.0),
                      fg=sel_fg, valid=sel_valid, matched_gt=sel_gt.astype(jnp.int32))
