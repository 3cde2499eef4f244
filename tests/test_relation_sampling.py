"""Properties of training relation sampling and of the evaluation pair enumeration."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.relation_sampling import all_pairs, sample_relations, sample_relations_batch

O, R = 6, 8


def _image(n_boxes=5, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (O, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (O, 2))], -1).astype(np.float32)
    box_mask = np.arange(O) < n_boxes
    labels = np.where(box_mask, rng.integers(1, 4, O), 0).astype(np.int32)
    # (0,1) has two predicates (duplicate pair), plus (1,2), (3,0), (2,4); padding after.
    rels = np.zeros((R, 3), np.int32)
    rels[:5] = [[0, 1, 2], [0, 1, 5], [1, 2, 1], [3, 0, 4], [2, 4, 3]]
    rel_mask = np.arange(R) < 5
    return boxes, box_mask, labels, rels, rel_mask


_sample = jax.jit(sample_relations, static_argnames=("num_rels", "fg_fraction", "must_overlap"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_relations_properties(seed):
    boxes, box_mask, labels, rels, rel_mask = _image()
    pairs, plabels, pmask = map(np.asarray, _sample(jax.random.PRNGKey(seed), boxes, box_mask,
                                                    labels, rels, rel_mask, num_rels=12,
                                                    fg_fraction=0.25))
    assert pairs.shape == (12, 2) and plabels.shape == (12,) and pmask.shape == (12,)
    real = pairs[pmask]
    # 5 real boxes: 20 ordered pairs, 4 distinct GT pairs -> 16 bg candidates; fg cap int(3).
    fg = pmask & (plabels > 0)
    assert fg.sum() == 3
    assert (pmask & (plabels == 0)).sum() == 9
    assert pmask.sum() == 12
    assert np.all(real[:, 0] != real[:, 1])
    assert np.all(box_mask[real])
    assert len({tuple(p) for p in real}) == len(real)  # no pair twice (one predicate per pair)
    gt = {}
    for s, o, p in rels[rel_mask]:
        gt.setdefault((s, o), set()).add(p)
    for (s, o), lab in zip(real, plabels[pmask]):
        if lab > 0:
            assert lab in gt[(s, o)]
        else:
            assert (s, o) not in gt
    assert np.all(pairs[~pmask] == 0) and np.all(plabels[~pmask] == 0)


def test_sample_relations_all_fg_when_room_and_padding():
    boxes, box_mask, labels, rels, rel_mask = _image()
    # num_rels 40, fg cap 10 >= 4 distinct GT pairs; only 16 bg candidates -> 20 real slots.
    pairs, plabels, pmask = map(np.asarray, _sample(jax.random.PRNGKey(0), boxes, box_mask, labels,
                                                    rels, rel_mask, num_rels=40))
    assert pmask.sum() == 20
    assert (plabels[pmask] > 0).sum() == 4
    assert np.all(pmask[:20]) and not np.any(pmask[20:])  # real entries first
    # The duplicate pair (0,1) gets one of its two predicates, and both get chosen over seeds.
    chosen = set()
    for seed in range(12):
        p, l, m = map(np.asarray, _sample(jax.random.PRNGKey(seed), boxes, box_mask, labels, rels,
                                          rel_mask, num_rels=40))
        hit = m & (p[:, 0] == 0) & (p[:, 1] == 1)
        assert hit.sum() == 1
        chosen.add(int(l[hit][0]))
    assert chosen == {2, 5}


def test_sample_relations_must_overlap():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [40, 40, 50, 50], [60, 0, 70, 10],
                      [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    box_mask = np.arange(O) < 4
    labels = np.where(box_mask, 1, 0).astype(np.int32)
    rels = np.zeros((R, 3), np.int32)
    rels[0] = [2, 3, 1]
    rel_mask = np.arange(R) < 1
    pairs, plabels, pmask = map(np.asarray, _sample(jax.random.PRNGKey(0), boxes, box_mask, labels,
                                                    rels, rel_mask, num_rels=8, must_overlap=True))
    bg = {tuple(p) for p, l, m in zip(pairs, plabels, pmask) if m and l == 0}
    assert bg == {(0, 1), (1, 0)}  # the only intersecting pairs


def test_sample_relations_batch_vmaps():
    imgs = [_image(5, 0), _image(3, 1)]
    stack = [np.stack(x) for x in zip(*imgs)]
    stack[3][1, 2:] = 0  # image 1 has 3 boxes: drop relations touching boxes >= 3 by mask
    stack[4][1] = np.arange(R) < 2
    stack[3][1, :2] = [[0, 1, 2], [1, 2, 3]]
    pairs, plabels, pmask = jax.jit(lambda k, *a: sample_relations_batch(k, *a, num_rels=10))(
        jax.random.PRNGKey(0), *stack)
    assert pairs.shape == (2, 10, 2)
    assert int(pmask[1].sum()) == 6  # 3 boxes: 6 ordered pairs in all, 2 fg + 4 bg
    assert int((np.asarray(plabels[1]) > 0).sum()) == 2


def test_all_pairs():
    mask = np.array([[True, True, True, False], [True, False, False, False]])
    pairs, pmask = map(np.asarray, jax.jit(all_pairs)(jnp.asarray(mask)))
    assert pairs.shape == (2, 12, 2)
    assert pmask[0].sum() == 6 and pmask[1].sum() == 0
    assert {tuple(p) for p in pairs[0][pmask[0]]} == {(i, j) for i in range(3) for j in range(3)
                                                      if i != j}
    assert np.all(pmask[0][:6])
    p2, m2 = all_pairs(jnp.asarray(mask[0]), max_pairs=15)
    assert p2.shape == (15, 2) and int(m2.sum()) == 6
    with pytest.raises(ValueError, match="max_pairs"):
        all_pairs(jnp.asarray(mask[0]), max_pairs=5)
