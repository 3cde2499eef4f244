"""Which (subject, object) pairs a relation model sees: training samples and evaluation pairs.

Both functions are jittable with fixed output shapes; `sample_relations` works on one image (vmap
it over the batch, or call `sample_relations_batch`).

Training (neural-motifs' ground-truth-box assignment, `proposal_assignments_gtbox`):
- foreground: the image's ground-truth relations with one predicate per ordered pair (chosen at
  random when a pair has several, as NM's `filter_duplicate_rels`), at most
  int(fg_fraction * num_rels) of them (a random subset when there are more);
- background (label 0): ordered pairs (i, j), i != j, of real boxes that carry no ground-truth
  relation (optionally only boxes that overlap, falling back to all when none do), a random
  subset filling the remaining num_rels - num_fg slots.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _take_padded(order: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
    return order[jnp.clip(k, 0, order.shape[0] - 1)]


def _intersects(boxes: jnp.ndarray) -> jnp.ndarray:
    """[O, 4] -> [O, O] bool, True where the boxes' interiors overlap (positive area)."""
    x1 = jnp.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y1 = jnp.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x2 = jnp.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y2 = jnp.minimum(boxes[:, None, 3], boxes[None, :, 3])
    return (x2 > x1) & (y2 > y1)


def sample_relations(rng: jax.Array, boxes: jnp.ndarray, box_mask: jnp.ndarray,
                     labels: jnp.ndarray, relations: jnp.ndarray, rel_mask: jnp.ndarray, *,
                     num_rels: int, fg_fraction: float = 0.25, must_overlap: bool = False
                     ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Samples `num_rels` pairs of one image for training.

    Args:
      rng: a PRNG key.
      boxes: [O, 4] x1y1x2y2; box_mask: [O] bool; labels: [O] int, 0 where padded (a box is real
        when box_mask is set and its label is positive).
      relations: [R, 3] (subject, object, predicate 1..P); rel_mask: [R] bool.
      num_rels: M, the number of output slots.
      fg_fraction: at most int(fg_fraction * M) foreground pairs.
      must_overlap: background pairs only between intersecting boxes (if any pair intersects).

    Returns:
      pairs [M, 2] int32, pair_labels [M] int32 (0 = background), pair_mask [M] bool. Real
      entries come first (foreground, then background); the rest are (0, 0) with mask False.
    """
    o = boxes.shape[0]
    r = relations.shape[0]
    if r == 0:
        raise ValueError("sample_relations: relations must have at least one (padded) row, "
                         "shape [R>=1, 3]")
    num_fg_max = int(fg_fraction * num_rels)
    k_dup, k_fg, k_bg = jax.random.split(rng, 3)
    real_box = box_mask & (labels > 0)
    subj = jnp.clip(relations[:, 0], 0, o - 1)
    obj = jnp.clip(relations[:, 1], 0, o - 1)
    valid_rel = rel_mask & real_box[subj] & real_box[obj] & (subj != obj) & (relations[:, 2] > 0)

    # One predicate per ordered pair: keep the relation with the highest random key in its pair.
    key = jax.random.uniform(k_dup, (r,))
    same_pair = (subj[:, None] == subj[None]) & (obj[:, None] == obj[None]) & valid_rel[None]
    beats = (key[None] > key[:, None]) | ((key[None] == key[:, None])
                                          & (jnp.arange(r)[None] > jnp.arange(r)[:, None]))
    kept = valid_rel & ~jnp.any(same_pair & beats, axis=1)

    # Foreground: a random subset of the kept relations.
    fg_key = jnp.where(kept, jax.random.uniform(k_fg, (r,)), 2.0)
    fg_order = jnp.argsort(fg_key)
    num_fg = jnp.minimum(kept.sum(), num_fg_max)

    fg_pairs = jnp.stack([subj[fg_order], obj[fg_order]], -1)
    has_rel = jnp.zeros((o, o), bool).at[subj, obj].max(valid_rel)
    return _fill(k_bg, boxes, real_box, has_rel, fg_pairs, relations[fg_order, 2], num_fg,
                 num_rels, must_overlap)


def sample_dense_relations(rng: jax.Array, boxes: jnp.ndarray, box_mask: jnp.ndarray,
                           predicates: jnp.ndarray, *, num_rels: int, fg_fraction: float = 0.25,
                           must_overlap: bool = False
                           ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """`sample_relations` for relations given as a dense matrix (training on detections, where
    several boxes may carry one ground-truth relation): predicates [O, O] int, the predicate of
    ordered pair (i, j), 0 = none. Foreground: a random subset (at most int(fg_fraction * M)) of
    the pairs of real boxes with a predicate; background: the rest, as there."""
    o = boxes.shape[0]
    num_fg_max = int(fg_fraction * num_rels)
    k_fg, k_bg = jax.random.split(rng)
    has_rel = (predicates > 0) & box_mask[:, None] & box_mask[None] & ~jnp.eye(o, dtype=bool)
    flat = has_rel.reshape(-1)
    fg_order = jnp.argsort(jnp.where(flat, jax.random.uniform(k_fg, (o * o,)), 2.0))
    num_fg = jnp.minimum(flat.sum(), num_fg_max)
    fg_pairs = jnp.stack([fg_order // o, fg_order % o], -1)
    return _fill(k_bg, boxes, box_mask, has_rel, fg_pairs, predicates.reshape(-1)[fg_order],
                 num_fg, num_rels, must_overlap)


def _fill(k_bg: jax.Array, boxes: jnp.ndarray, real_box: jnp.ndarray, has_rel: jnp.ndarray,
          fg_pairs: jnp.ndarray, fg_labels: jnp.ndarray, num_fg: jnp.ndarray, num_rels: int,
          must_overlap: bool) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """The M slots: the first `num_fg` foreground candidates (in the given random order), then
    a random subset of the background pairs (ordered pairs of distinct real boxes with no
    relation), then padding."""
    o = boxes.shape[0]
    cand = real_box[:, None] & real_box[None] & ~jnp.eye(o, dtype=bool) & ~has_rel
    if must_overlap:
        overlapping = cand & _intersects(boxes)
        cand = jnp.where(overlapping.any(), overlapping, cand)
    cand = cand.reshape(-1)
    bg_key = jnp.where(cand, jax.random.uniform(k_bg, (o * o,)), 2.0)
    bg_order = jnp.argsort(bg_key)
    num_bg = jnp.minimum(cand.sum(), num_rels - num_fg)

    slot = jnp.arange(num_rels)
    is_fg = slot < num_fg
    is_bg = ~is_fg & (slot - num_fg < num_bg)
    fg_slot = jnp.clip(slot, 0, fg_pairs.shape[0] - 1)
    bg_flat = _take_padded(bg_order, slot - num_fg)
    pairs = jnp.where(is_fg[:, None], fg_pairs[fg_slot],
                      jnp.stack([bg_flat // o, bg_flat % o], -1))
    pair_mask = is_fg | is_bg
    pairs = jnp.where(pair_mask[:, None], pairs, 0).astype(jnp.int32)
    pair_labels = jnp.where(is_fg, fg_labels[fg_slot], 0).astype(jnp.int32)
    return pairs, pair_labels, pair_mask


def sample_relations_batch(rng: jax.Array, boxes: jnp.ndarray, box_mask: jnp.ndarray,
                           labels: jnp.ndarray, relations: jnp.ndarray, rel_mask: jnp.ndarray, *,
                           num_rels: int, fg_fraction: float = 0.25, must_overlap: bool = False
                           ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """`sample_relations` over a batch ([B, ...] inputs, one key split per image)."""
    keys = jax.random.split(rng, boxes.shape[0])
    fn = lambda k, b, bm, l, rel, rm: sample_relations(
        k, b, bm, l, rel, rm, num_rels=num_rels, fg_fraction=fg_fraction,
        must_overlap=must_overlap)
    return jax.vmap(fn)(keys, boxes, box_mask, labels, relations, rel_mask)


def all_pairs(box_mask: jnp.ndarray, max_pairs: int | None = None
              ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """All ordered pairs (i, j), i != j, of real boxes, real pairs first, for evaluation.

    box_mask: [O] or [B, O] bool. max_pairs defaults to O * (O - 1) (every pair fits); larger
    values pad, smaller ones are rejected since pairs would be silently dropped.
    Returns pairs [..., max_pairs, 2] int32 and pair_mask [..., max_pairs] bool.
    """
    if box_mask.ndim == 2:
        return jax.vmap(lambda m: all_pairs(m, max_pairs))(box_mask)
    if box_mask.ndim != 1:
        raise ValueError(f"all_pairs: box_mask must be [O] or [B, O], got shape {box_mask.shape}")
    o = box_mask.shape[0]
    n = o * (o - 1)
    max_pairs = n if max_pairs is None else int(max_pairs)
    if max_pairs < n:
        raise ValueError(f"all_pairs: max_pairs must be >= O * (O - 1) = {n}, got {max_pairs}")
    ii, jj = np.meshgrid(np.arange(o), np.arange(o), indexing="ij")
    off = ii != jj  # static (NumPy) enumeration: shapes stay fixed under jit
    subj = jnp.asarray(ii[off])
    obj = jnp.asarray(jj[off])
    valid = box_mask[subj] & box_mask[obj]
    order = jnp.argsort(~valid, stable=True)
    pairs = jnp.stack([subj[order], obj[order]], axis=-1)
    mask = valid[order]
    pairs = jnp.where(mask[:, None], pairs, 0)
    pad = max_pairs - n
    pairs = jnp.pad(pairs, ((0, pad), (0, 0)))
    mask = jnp.pad(mask, (0, pad))
    return pairs.astype(jnp.int32), mask
