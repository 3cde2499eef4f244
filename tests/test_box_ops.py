"""Box ops and NMS: hand cases, independent NumPy loop references, round trips, jit/vmap."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.ops.boxes import (box_area, clip_boxes, decode_boxes, encode_boxes, masked_top_k,
                               pairwise_iou, union_boxes)
from sgg_jax.ops.nms import batched_nms, nms


def _random_boxes(rng, n, span=50.0, max_size=30.0):
    xy = rng.uniform(0, span, (n, 2))
    wh = rng.uniform(0, max_size, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _iou_ref(a, b, one):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]) + one)
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]) + one)
            ap = max(p[2] - p[0] + one, 0) * max(p[3] - p[1] + one, 0)
            aq = max(q[2] - q[0] + one, 0) * max(q[3] - q[1] + one, 0)
            u = ap + aq - iw * ih
            out[i, j] = iw * ih / u if u > 0 else 0.0
    return out


def test_iou_hand_cases():
    a = jnp.array([[0, 0, 10, 10]], jnp.float32)
    b = jnp.array([[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]], jnp.float32)
    np.testing.assert_allclose(np.asarray(pairwise_iou(a, b)), [[25 / 175, 0.0, 1.0]], rtol=1e-6)
    # +1 convention: 11x11 boxes, 6x6 overlap
    np.testing.assert_allclose(np.asarray(pairwise_iou(a, b, plus_one=True)),
                               [[36 / (121 + 121 - 36), 0.0, 1.0]], rtol=1e-6)
    assert float(box_area(a)[0]) == 100.0 and float(box_area(a, plus_one=True)[0]) == 121.0
    # two zero-size boxes: empty union -> 0, not NaN
    z = jnp.zeros((1, 4), jnp.float32)
    assert float(pairwise_iou(z, z)[0, 0]) == 0.0


@pytest.mark.parametrize("plus_one", [False, True])
def test_iou_matches_reference(plus_one):
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 13), _random_boxes(rng, 7)
    np.testing.assert_allclose(np.asarray(pairwise_iou(a, b, plus_one)),
                               _iou_ref(a, b, 1.0 if plus_one else 0.0), atol=1e-6)
    # batched leading axis
    batched = pairwise_iou(np.stack([a[:7], b]), np.stack([b, a[:7]]), plus_one)
    np.testing.assert_allclose(np.asarray(batched[1]), _iou_ref(b, a[:7], 1.0 if plus_one else 0.0),
                               atol=1e-6)


def test_box_coder_hand_case_and_round_trip():
    ref = np.array([[0, 0, 10, 10]], np.float32)
    tgt = np.array([[2, 4, 12, 24]], np.float32)
    # continuous: centres (5,5)->(7,14), sizes (10,10)->(10,20)
    d = np.asarray(encode_boxes(ref, tgt))
    np.testing.assert_allclose(d, [[10 * 2 / 10, 10 * 9 / 10, 0.0, 5 * math.log(2)]], rtol=1e-6)
    # +1: sizes 11 -> (11, 21), centres (5.5, 5.5) -> (7.5, 14.5)
    d1 = np.asarray(encode_boxes(ref, tgt, plus_one=True))
    np.testing.assert_allclose(d1, [[10 * 2 / 11, 10 * 9 / 11, 0.0, 5 * math.log(21 / 11)]],
                               rtol=1e-5)
    rng = np.random.default_rng(1)
    r = _random_boxes(rng, 20) + np.array([0, 0, 1, 1], np.float32)
    t = _random_boxes(rng, 20) + np.array([0, 0, 1, 1], np.float32)
    for one in (False, True):
        for w in ((10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)):
            back = decode_boxes(encode_boxes(r, t, w, one), r, w, plus_one=one)
            np.testing.assert_allclose(np.asarray(back), t, atol=2e-3)


def test_decode_clips_log_scale():
    ref = np.array([[0, 0, 16, 16]], np.float32)
    huge = np.array([[0, 0, 1e4, 1e4]], np.float32)          # dw/5 = 2000 -> clipped
    out = np.asarray(decode_boxes(huge, ref))
    side = 16 * 1000 / 16                                    # exp(log(1000/16)) * 16
    np.testing.assert_allclose(out, [[8 - side / 2, 8 - side / 2, 8 + side / 2, 8 + side / 2]],
                               rtol=1e-4)
    assert np.all(np.isfinite(out))


def test_union_and_clip():
    a = np.array([[1, 2, 5, 6], [0, 0, 1, 1]], np.float32)
    b = np.array([[3, 0, 4, 9], [2, 2, 3, 3]], np.float32)
    np.testing.assert_array_equal(np.asarray(union_boxes(a, b)), [[1, 0, 5, 9], [0, 0, 3, 3]])
    boxes = np.array([[-5, -1, 120, 30], [10, 90, 20, 200]], np.float32)
    np.testing.assert_array_equal(np.asarray(clip_boxes(boxes, 80, 100)),
                                  [[0, 0, 100, 30], [10, 80, 20, 80]])
    np.testing.assert_array_equal(np.asarray(clip_boxes(boxes, 80, 100, plus_one=True)),
                                  [[0, 0, 99, 30], [10, 79, 20, 79]])
    with pytest.raises(ValueError, match="last axis 4"):
        union_boxes(a[:, :3], b)


def test_masked_top_k():
    scores = np.array([0.5, 0.9, -np.inf, 0.9, 0.1, 0.7], np.float32)
    valid = np.array([True, False, True, True, True, False])
    vals, idx, ok = masked_top_k(scores, valid, 5)
    # valid ones by score desc (ties by index), -inf valid entry still before invalid ones
    assert np.asarray(idx)[:4].tolist() == [3, 0, 4, 2]
    assert np.asarray(ok).tolist() == [True, True, True, True, False]
    assert np.asarray(vals)[:3].tolist() == pytest.approx([0.9, 0.5, 0.1])
    assert np.asarray(vals)[4] == -np.inf
    rng = np.random.default_rng(3)
    s = rng.random((4, 30)).astype(np.float32)
    v = rng.random((4, 30)) > 0.4
    _, idx, ok = jax.vmap(lambda a, b: masked_top_k(a, b, 8))(s, v)
    for row in range(4):
        expect = [i for i in np.argsort(-s[row], kind="stable") if v[row][i]][:8]
        got = np.asarray(idx[row])[np.asarray(ok[row])].tolist()
        assert got == expect
    with pytest.raises(ValueError, match="k must be"):
        masked_top_k(s[0], v[0], 31)


def _nms_ref(boxes, scores, classes, thr, valid):
    """Textbook greedy NMS: sort by score, keep a box unless a kept box of its class overlaps it
    by IoU > thr."""
    order = [i for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)) if valid[i]]
    iou = _iou_ref(boxes, boxes, 0.0)
    kept = []
    for i in order:
        if all(classes[j] != classes[i] or iou[i, j] <= thr for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("num_classes", [1, 3])
def test_nms_matches_reference(num_classes):
    rng = np.random.default_rng(num_classes)
    n = 60
    boxes = _random_boxes(rng, n, span=40.0, max_size=25.0)
    scores = rng.random(n).astype(np.float32)
    scores[5] = scores[6]                                   # a tie
    classes = rng.integers(0, num_classes, n).astype(np.int32)
    valid = rng.random(n) > 0.2
    fn = jax.jit(lambda b, s, c, v: batched_nms(b, s, c, 0.45, 40, v))
    keep, ok = fn(boxes, scores, classes, valid)
    ref = _nms_ref(boxes, scores, classes, 0.45, valid)[:40]
    assert np.asarray(keep)[np.asarray(ok)].tolist() == ref
    assert int(ok.sum()) == len(ref)
    assert np.all(np.asarray(keep)[~np.asarray(ok)] == 0)


def test_nms_beyond_first_block_and_vmap():
    # Heavy overlap: the first block (top 64 boxes for max_output 50) keeps fewer than 50, so
    # the tiled continuation over the rest runs (checked), vs the greedy reference. Under vmap
    # the other item (spread-out boxes) is done after the first block.
    rng = np.random.default_rng(7)
    n = 250
    boxes = _random_boxes(rng, n, span=50.0, max_size=40.0)
    spread = _random_boxes(rng, n, span=2000.0, max_size=40.0)
    scores = np.round(rng.random(n), 2).astype(np.float32)     # many ties
    classes = rng.integers(0, 2, n).astype(np.int32)
    valid = rng.random(n) > 0.1
    ref = _nms_ref(boxes, scores, classes, 0.3, valid)[:50]
    order = sorted(np.flatnonzero(valid), key=lambda i: (-scores[i], i))
    rank = {i: r for r, i in enumerate(order)}
    assert len(ref) == 50 and rank[ref[-1]] >= 64
    ref2 = _nms_ref(spread, scores, classes, 0.3, valid)[:50]
    fn = jax.jit(jax.vmap(lambda b, s, c, v: batched_nms(b, s, c, 0.3, 50, v)))
    kb, okb = fn(np.stack([boxes, spread]), np.stack([scores, scores]),
                 np.stack([classes, classes]), np.stack([valid, valid]))
    assert np.asarray(kb[0])[np.asarray(okb[0])].tolist() == ref
    assert np.asarray(kb[1])[np.asarray(okb[1])].tolist() == ref2


def test_nms_hand_case_vmap_and_truncation():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]],
                     np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    keep, ok = nms(boxes, scores, 0.5, 3)
    # box 3 (0.95) suppresses 0 (IoU 0.9) and 1 (IoU ~0.62); box 2 stands alone
    assert np.asarray(keep)[np.asarray(ok)].tolist() == [3, 2]
    # different classes never suppress each other
    keep, ok = batched_nms(boxes, scores, np.array([0, 1, 0, 2]), 0.5, 4)
    assert np.asarray(keep)[np.asarray(ok)].tolist() == [3, 0, 1, 2]
    # max_output truncates to the best ones
    keep, ok = batched_nms(boxes, scores, np.array([0, 1, 0, 2]), 0.5, 2)
    assert np.asarray(keep).tolist() == [3, 0] and np.asarray(ok).all()
    # vmap over a batch equals per-item calls
    rng = np.random.default_rng(9)
    bb = np.stack([_random_boxes(rng, 25) for _ in range(3)])
    ss = rng.random((3, 25)).astype(np.float32)
    kb, okb = jax.jit(jax.vmap(lambda b, s: nms(b, s, 0.3, 10)))(bb, ss)
    for i in range(3):
        k1, o1 = nms(bb[i], ss[i], 0.3, 10)
        assert np.asarray(kb[i]).tolist() == np.asarray(k1).tolist()
        assert np.asarray(okb[i]).tolist() == np.asarray(o1).tolist()
    with pytest.raises(ValueError, match="boxes must be"):
        nms(boxes[:, :3], scores, 0.5, 2)
