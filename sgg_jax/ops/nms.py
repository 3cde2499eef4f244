"""Greedy non-maximum suppression with fixed-size output (jittable, vmap-able)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sgg_jax.ops.boxes import box_area


def batched_nms(boxes: jax.Array, scores: jax.Array, classes: jax.Array | None,
                iou_threshold: float, max_output: int, valid: jax.Array | None = None,
                plus_one: bool = False) -> tuple[jax.Array, jax.Array]:
    """Class-aware greedy NMS (boxes of different classes never suppress each other).

    boxes [N,4] x1y1x2y2, scores [N], classes [N] int (None: class-agnostic), valid [N] bool
    (padding / score threshold). Returns (keep [max_output] int32 indices into the input, in
    descending score order (ties: lower index first); keep_valid [max_output] bool). Unused
    slots hold index 0 and keep_valid False. A box is suppressed when IoU > iou_threshold
    (torchvision's rule). For batches use jax.vmap.

    Greedy NMS in score order keeps a box unless a kept box of its class overlaps it by
    IoU > threshold. Computed blockwise (exact, same kept set and order): after one sort, the
    top P = min(ceil(max_output / 64) * 64, 512) boxes are solved as one block by a fixed-point
    iteration over their [P, P] suppression matrix (`_greedy_block`); only when fewer than
    max_output survive and more valid boxes remain, the rest is processed in score order in
    tiles of 64, each suppressed by the kept boxes so far ([64, max_output]) and then solved
    inside. 3-8x faster on CPU than a one-box-per-iteration loop."""
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    n = boxes.shape[0]
    if boxes.shape != (n, 4) or scores.shape != (n,):
        raise ValueError(f"sgg_jax/ops/nms.py: boxes must be [N,4] and scores [N], got "
                         f"{boxes.shape} and {scores.shape}")
    if max_output < 1:
        raise ValueError(f"sgg_jax/ops/nms.py: max_output must be >= 1, got {max_output}")
    classes = jnp.zeros((n,), jnp.int32) if classes is None else jnp.asarray(classes, jnp.int32)
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    if classes.shape != (n,) or valid.shape != (n,):
        raise ValueError(f"sgg_jax/ops/nms.py: classes and valid must be [N]={n}, got "
                         f"{classes.shape} and {valid.shape}")
    return _batched_nms_jit(boxes, scores, classes, valid, jnp.float32(iou_threshold),
                            int(max_output), bool(plus_one))


_TILE = 64
_FIRST_BLOCK_MAX = 512


def _sort_key(scores: jax.Array, valid: jax.Array) -> jax.Array:
    """int32 key whose descending order is score-descending, invalid boxes last.

    Float bits are mapped monotonically to int32 (so top_k orders ties by lower index first, as
    the greedy reference does); invalid boxes get INT32_MIN, below every valid score (even -inf).
    """
    bits = jax.lax.bitcast_convert_type(scores, jnp.int32)
    key = bits ^ ((bits >> 31) & jnp.int32(0x7FFFFFFF))
    return jnp.where(valid, key, jnp.iinfo(jnp.int32).min)


def _coords(boxes: jax.Array, plus_one: bool) -> tuple[jax.Array, ...]:
    """Boxes as separate coordinate vectors plus area (struct of arrays: the pairwise IoU then
    broadcasts contiguous vectors, which XLA CPU vectorises; [N,4] rows it does not)."""
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    return x1, y1, x2, y2, box_area(boxes, plus_one)


def _suppress(a, b, ca, cb, iou_threshold, plus_one: bool) -> jax.Array:
    """[Ta, Tb] bool: IoU(a_i, b_j) > threshold and same class (a, b from `_coords`)."""
    one = 1.0 if plus_one else 0.0
    iw = jnp.maximum(jnp.minimum(a[2][:, None], b[2][None]) - jnp.maximum(a[0][:, None], b[0][None])
                     + one, 0.0)
    ih = jnp.maximum(jnp.minimum(a[3][:, None], b[3][None]) - jnp.maximum(a[1][:, None], b[1][None])
                     + one, 0.0)
    inter = iw * ih
    union = a[4][:, None] + b[4][None] - inter
    iou = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
    return (iou > iou_threshold) & (ca[:, None] == cb[None])


def _greedy_block(coords, cls, alive, iou_threshold, plus_one: bool) -> jax.Array:
    """Greedy NMS inside one block of score-sorted boxes: the fixed point of
    kept_i = alive_i & not any(kept_j & suppresses(j, i) for j < i).

    Position i of the iterate is final once positions < i are, so the iteration reaches the
    (unique) fixed point, which is the greedy result, after at most block-size steps; in
    practice 1-4 (each a [T] x [T, T] product)."""
    t = cls.shape[0]
    ti = jnp.arange(t, dtype=jnp.int32)
    m = (_suppress(coords, coords, cls, cls, iou_threshold, plus_one)
         & (ti[:, None] < ti[None, :])).astype(jnp.float32)

    def step(kept):
        return alive & ~(jnp.dot(kept.astype(jnp.float32), m) > 0)

    _, kept = jax.lax.while_loop(lambda s: jnp.any(s[0] != s[1]), lambda s: (s[1], step(s[1])),
                                 (alive, step(alive)))
    return kept


@functools.partial(jax.jit, static_argnums=(5, 6))
def _batched_nms_jit(boxes, scores, classes, valid, iou_threshold, max_output, plus_one):
    n = boxes.shape[0]
    valid = valid & ~jnp.isnan(scores)
    key = _sort_key(scores, valid)
    t = min(_TILE, n)
    n_tiles = -(-n // t)
    # tiles in the first block: enough for max_output boxes, at most 512 boxes (its [P, P]
    # matrix and fixed-point steps grow as P^2; 64-box tiles are cheaper beyond that)
    first = min(n_tiles, -(-max_output // t), _FIRST_BLOCK_MAX // t)
    slots = jnp.arange(max_output, dtype=jnp.int32)

    def append(state, idx, kept):
        """Appends the kept boxes of a block (score order) to the output buffers."""
        count, keep, kb, kc = state
        pos = count + jnp.cumsum(kept.astype(jnp.int32)) - 1
        dst = jnp.where(kept, pos, max_output)
        keep = keep.at[dst].set(idx, mode="drop")
        kb = kb.at[dst].set(boxes[idx], mode="drop")
        kc = kc.at[dst].set(classes[idx], mode="drop")
        return count + jnp.sum(kept, dtype=jnp.int32), keep, kb, kc

    # One sort (top_k over all boxes: XLA CPU sorts fully whatever k, so a partial top-k for
    # the first block would not be cheaper). The first block, the top `first * t` boxes,
    # typically already yields max_output boxes or holds all valid ones.
    _, order = jax.lax.top_k(key, n)
    order = jnp.pad(order.astype(jnp.int32), (0, n_tiles * t - n))
    p = min(first * t, n)
    top = order[:p]
    alive = valid[top]
    kept = _greedy_block(_coords(boxes[top], plus_one), classes[top], alive, iou_threshold,
                         plus_one)
    state = append((jnp.int32(0), jnp.zeros((max_output,), jnp.int32),
                    jnp.zeros((max_output, 4), jnp.float32), jnp.zeros((max_output,), jnp.int32)),
                   top, kept)

    def rest(state):
        """Remaining tiles in score order: each is first suppressed by the boxes kept so far
        (a [T, max_output] block), then solved greedily inside; stops at max_output kept."""
        in_range = jnp.arange(n_tiles * t) < n

        def cond(st):
            k, count = st[0], st[1]
            nxt = jnp.minimum(k * t, n - 1)
            return (k < n_tiles) & (count < max_output) & valid[order[nxt]]

        def body(st):
            k, count, keep, kb, kc = st
            idx = jax.lax.dynamic_slice_in_dim(order, k * t, t)
            ok = valid[idx] & jax.lax.dynamic_slice_in_dim(in_range, k * t, t)
            coords, cls = _coords(boxes[idx], plus_one), classes[idx]
            prev = (_suppress(coords, _coords(kb, plus_one), cls, kc, iou_threshold, plus_one)
                    & (slots < count)[None, :])
            kept = _greedy_block(coords, cls, ok & ~jnp.any(prev, axis=1), iou_threshold,
                                 plus_one)
            return (k + 1, *append((count, keep, kb, kc), idx, kept))

        return jax.lax.while_loop(cond, body, (jnp.int32(first), *state))[1:]

    more = (state[0] < max_output) & (jnp.sum(valid) > p)
    count, keep, _, _ = jax.lax.cond(more, rest, lambda st: st, state)
    keep_valid = slots < count
    return jnp.where(keep_valid, keep, 0).astype(jnp.int32), keep_valid


def nms(boxes: jax.Array, scores: jax.Array, iou_threshold: float, max_output: int,
        valid: jax.Array | None = None, plus_one: bool = False):
    """Class-agnostic greedy NMS; see `batched_nms`."""
    return batched_nms(boxes, scores, None, iou_threshold, max_output, valid, plus_one)
