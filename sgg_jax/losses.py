"""Object and predicate (edge) losses, including Knyazev et al.'s density-aware edge loss.

Edge losses follow bknyaz/sgg `edge_losses` (BMVC 2020, "Graph Density-Aware Losses"): per-edge
cross-entropy, weighted and summed over all the real sampled edges of the batch (the reference
concatenates the edges of all images of a batch, so normalisation is per batch):

- "baseline":   sum_e CE_e / M                              (mean over the M real edges)
- "dnorm":      sum_e CE_e / M_FG                           (= CE_mean * M / M_FG)
- "dnorm-fgbg": sum_fg CE_e / M_FG + sum_bg CE_e / M_BG

Guard: when M_FG = 0 the reference leaves those weights at 1 (plain sums); here every count is
clamped at 1, which gives the same values (for "dnorm" the background edges are then summed,
exactly as in the reference). With no real edges at all the loss is 0.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax

EDGE_LOSSES = ("baseline", "dnorm", "dnorm-fgbg")


def _masked_ce(logits: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                         labels.astype(jnp.int32))
    return jnp.where(mask, ce, 0.0)


def object_loss(obj_logits: jnp.ndarray, labels: jnp.ndarray, box_mask: jnp.ndarray) -> jnp.ndarray:
    """Mean cross-entropy over the real boxes of the batch. obj_logits [B,O,C+1], labels [B,O]."""
    ce = _masked_ce(obj_logits, labels, box_mask)
    return ce.sum() / jnp.maximum(box_mask.sum(), 1)


def edge_loss(rel_logits: jnp.ndarray, pair_labels: jnp.ndarray, pair_mask: jnp.ndarray,
              kind: str = "baseline") -> jnp.ndarray:
    """Predicate loss over the real sampled edges of the batch.

    Args:
      rel_logits: [B, M, P+1]; pair_labels: [B, M] (0 = background); pair_mask: [B, M] bool.
      kind: "baseline" | "dnorm" | "dnorm-fgbg" (see the module docstring).
    """
    if kind not in EDGE_LOSSES:
        raise ValueError(f"loss.edge: expected one of {EDGE_LOSSES}, got {kind!r}")
    ce = _masked_ce(rel_logits, pair_labels, pair_mask)
    fg = pair_mask & (pair_labels > 0)
    bg = pair_mask & (pair_labels == 0)
    m = jnp.maximum(pair_mask.sum(), 1)
    m_fg = jnp.maximum(fg.sum(), 1)
    m_bg = jnp.maximum(bg.sum(), 1)
    if kind == "baseline":
        return ce.sum() / m
    if kind == "dnorm":
        return ce.sum() / m_fg
    return jnp.where(fg, ce, 0.0).sum() / m_fg + jnp.where(bg, ce, 0.0).sum() / m_bg


def caption_loss(caption_logits: jnp.ndarray, tokens: jnp.ndarray,
                 region_mask: jnp.ndarray) -> jnp.ndarray:
    """Mean word cross-entropy of a region captioner under teacher forcing (MSDN).

    caption_logits: [B, Q, L, V], position t predicting tokens[..., t]; tokens: [B, Q, L]
    (<start>=1 first, <end>=2, 0 = padding); region_mask: [B, Q]. Averaged over the real tokens
    after <start> (words and <end>) of the real regions; 0 when there are none.
    """
    if caption_logits.shape[:3] != tokens.shape:
        raise ValueError(f"caption_loss: logits {caption_logits.shape} do not match tokens "
                         f"{tokens.shape} ([B, Q, L, V] vs [B, Q, L])")
    mask = (tokens > 0) & region_mask[..., None]
    mask = mask.at[..., 0].set(False)  # <start> is given, not predicted
    ce = _masked_ce(caption_logits, tokens, mask)
    return ce.sum() / jnp.maximum(mask.sum(), 1)


def region_losses(region_scores: jnp.ndarray, region_deltas: jnp.ndarray, fg: jnp.ndarray,
                  valid: jnp.ndarray, target_deltas: jnp.ndarray,
                  beta: float = 1.0 / 9.0) -> tuple[jnp.ndarray, jnp.ndarray]:
    """MSDN's region heads on sampled region RoIs: (objectness BCE, box smooth-L1), each
    averaged over the sampled (valid) RoIs of the batch, the box term counting fg RoIs only.

    region_scores [B, Q] logits; region_deltas / target_deltas [B, Q, 4]; fg, valid [B, Q].
    """
    from sgg_jax.models.detection.rpn import rpn_losses

    return rpn_losses(region_scores, region_deltas, fg & valid, valid & ~fg, target_deltas, beta)


def box_refinement_loss(box_deltas: jnp.ndarray, labels: jnp.ndarray, target_deltas: jnp.ndarray,
                        beta: float = 1.0 / 9.0) -> jnp.ndarray:
    """Class-specific box regression (Fast R-CNN): smooth-L1 between the deltas of each RoI's
    class and its targets, summed over the 4 coordinates and averaged over the RoIs with a
    class (labels > 0); 0 when there are none.

    box_deltas [B, R, C+1, 4]; labels [B, R] (0 = no target); target_deltas [B, R, 4].
    """
    from sgg_jax.models.detection.rpn import smooth_l1

    picked = jnp.take_along_axis(box_deltas, labels[..., None, None].astype(jnp.int32),
                                 axis=-2)[..., 0, :]
    fg = labels > 0
    per_roi = smooth_l1(picked.astype(jnp.float32) - target_deltas, beta).sum(-1)
    return jnp.where(fg, per_roi, 0.0).sum() / jnp.maximum(fg.sum(), 1)
