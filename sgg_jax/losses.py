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

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

EDGE_LOSSES = ("baseline", "dnorm", "dnorm-fgbg")


@flax.struct.dataclass
class LossTargets:
    """What a loss term may read besides the model's outputs, in a relation-stage step.

    batch: the `data_pipelines.batch.Batch` (ground-truth boxes, labels, regions).
    inputs: the `ModelInputs` the model was called with (sampled pairs, and whatever a model's
      train extras replaced, e.g. MSDN's sampled region RoIs).
    pair_labels: [B, M] predicate of each sampled pair (0 = no relation); pair_mask: [B, M].
    extras: the model's own per-step targets (`ModelSpec.train_extras`), or None.
    """

    batch: Any
    inputs: Any
    pair_labels: jax.Array
    pair_mask: jax.Array
    extras: Any = None


# A loss term: (outputs, targets, config) -> {logged part name: weighted scalar}.
LossFn = Callable[[Any, LossTargets, Any], dict]


def object_term(outputs: Any, targets: LossTargets, config: Any) -> dict:
    """`loss.obj_weight` x object cross-entropy on the batch's boxes."""
    b = targets.batch
    return {"object_loss": float(config.loss.obj_weight) * object_loss(
        outputs.obj_logits, b.labels, b.box_mask)}


def relation_term(outputs: Any, targets: LossTargets, config: Any) -> dict:
    """`loss.rel_weight` x the edge loss of kind `loss.edge` on the sampled pairs."""
    return {"relation_loss": float(config.loss.rel_weight) * edge_loss(
        outputs.rel_logits, targets.pair_labels, targets.pair_mask, kind=str(config.loss.edge))}


# Loss terms every relation model has; models add their own (ModelSpec.losses).
GENERIC_LOSSES: dict[str, LossFn] = {"object": object_term, "relation": relation_term}


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
