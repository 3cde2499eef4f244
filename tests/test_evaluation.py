"""Tests of sgg_jax.evaluation: hand-computed cases for every metric and a loop-based reference.

The reference (`ref_*` below) is a deliberately plain re-statement of neural-motifs'
`lib/evaluation/sg_eval.py` + SGB's mean / zero-shot recall with Python loops and scalar IoU,
written independently of the vectorised code it checks.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from sgg_jax.evaluation import (DetectionEvaluator, SGGEvaluator, box_iou,
                                load_vg150_zero_shot_triplets)
from sgg_jax.evaluation.ranking import top_k_stable

P = 5  # predicates in the hand cases


def gt_dict(boxes, labels, relations):
    return {"boxes": np.asarray(boxes, float), "labels": np.asarray(labels, int),
            "relations": np.asarray(relations, int).reshape(-1, 3)}


def pred_dict(boxes, labels, scores, pairs, rel_scores):
    return {"boxes": np.asarray(boxes, float), "labels": np.asarray(labels, int),
            "scores": np.asarray(scores, float), "rel_pairs": np.asarray(pairs, int).reshape(-1, 2),
            "rel_scores": np.asarray(rel_scores, float).reshape(-1, P + 1)}


def one_hot_scores(rows):
    """rows: list of {predicate: score}; returns [M, P+1]."""
    out = np.zeros((len(rows), P + 1))
    for i, r in enumerate(rows):
        for p, s in r.items():
            out[i, p] = s
    return out


BOXES = [[0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9], [60, 0, 69, 9]]
LABELS = [1, 2, 3, 4]


def run(mode, gts, preds, ks=(1, 2, 20), **kw):
    ev = SGGEvaluator(mode, P, ks, **kw)
    for g, p in zip(gts, preds):
        ev.add(g, p)
    return ev.compute()


# --------------------------------------------------------------------------- boxes


def test_iou_conventions_hand_values():
    a = np.array([[0, 0, 9, 9]])
    b = np.array([[0, 0, 9, 4]])
    # +1 pixel: 10x10 and 10x5 boxes, intersection 50 -> exactly 0.5
    assert box_iou(a, b, "plus_one")[0, 0] == 0.5
    # continuous: 9x9 and 9x4, intersection 36 -> 36/81
    assert box_iou(a, b, "continuous")[0, 0] == pytest.approx(36 / 81)
    # disjoint and touching boxes
    assert box_iou(a, np.array([[10, 0, 19, 9]]), "plus_one")[0, 0] == 0.0
    assert box_iou(a, np.array([[9, 0, 18, 9]]), "plus_one")[0, 0] == pytest.approx(10 / 190)
    assert box_iou(a, np.array([[9, 0, 18, 9]]), "continuous")[0, 0] == 0.0


@pytest.mark.parametrize("convention,obj_box,hit", [
    ("plus_one", [20, 0, 29, 4], True),      # IoU exactly 0.5 with +1 pixels
    ("continuous", [20, 0, 29, 4], False),   # 36/81 < 0.5 in continuous coordinates
    ("continuous", [20, 0, 29, 4.5], True),  # continuous: 9 x 4.5 / 81 = 0.5 exactly
    ("plus_one", [20, 0, 29, 3], False),     # +1: 40/100
])
def test_iou_exactly_half_under_both_conventions(convention, obj_box, hit):
    gt = gt_dict(BOXES[:2], LABELS[:2], [[0, 1, 3]])
    pred = pred_dict([BOXES[0], obj_box], LABELS[:2], [1, 1], [[0, 1]], one_hot_scores([{3: 0.9}]))
    out = run("sgdet", [gt], [pred], iou_convention=convention)
    assert out["R@20"] == (100.0 if hit else 0.0)


# --------------------------------------------------------------------------- recall


def test_ranking_ties_broken_by_input_order_and_unsorted_input():
    gt1 = gt_dict(BOXES, LABELS, [[0, 1, 1]])
    # (1,0) scores 0.9 (a miss); (0,1) and (2,3) tie at 0.5, only (0,1) is a hit
    rs = one_hot_scores([{1: 0.5}, {2: 0.5}, {3: 0.9}])
    pred = pred_dict(BOXES, LABELS, [1, 1, 1, 1], [[0, 1], [2, 3], [1, 0]], rs)
    out = run("sgdet", [gt1], [pred])
    assert (out["R@1"], out["R@2"]) == (0.0, 100.0)  # the lower row wins the tie
    pred2 = pred_dict(BOXES, LABELS, [1, 1, 1, 1], [[2, 3], [0, 1], [1, 0]], rs[[1, 0, 2]])
    out2 = run("sgdet", [gt1], [pred2])
    assert (out2["R@2"], out2["R@20"]) == (0.0, 100.0)
    gt = gt_dict(BOXES, LABELS, [[0, 1, 1], [2, 3, 2]])
    # unsorted input: object scores decide the order, not the row order
    pred3 = pred_dict(BOXES, LABELS, [1, 1, 0.1, 0.1], [[2, 3], [1, 0], [0, 1]],
                      one_hot_scores([{2: 0.9}, {3: 0.8}, {1: 0.7}]))
    # scores: (2,3) 0.9*0.01, (1,0) 0.8, (0,1) 0.7 -> order (1,0), (0,1), (2,3)
    out3 = run("sgdet", [gt], [pred3])
    assert (out3["R@1"], out3["R@2"], out3["R@20"]) == (0.0, 50.0, 100.0)


def test_top_k_stable_equals_full_stable_sort():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 200).astype(float)
    for k in (1, 7, 50, 200, 500):
        want = np.argsort(-x, kind="stable")[:k]
        np.testing.assert_array_equal(top_k_stable(x, k), want)


def test_duplicate_ground_truth_is_hit_by_one_prediction():
    gt = gt_dict(BOXES, LABELS, [[0, 1, 2], [0, 1, 2], [2, 3, 4]])
    pred = pred_dict(BOXES, LABELS, [1] * 4, [[0, 1]], one_hot_scores([{2: 0.7}]))
    out = run("sgdet", [gt], [pred])
    assert out["R@1"] == pytest.approx(200 / 3)


def test_several_predicates_for_one_pair_perfect_prediction():
    # GT: pair (0,1) has predicates 1 and 2, pair (2,3) has 3. A perfect model scores every
    # true predicate 1.0; under the graph constraint pair (0,1) keeps only predicate 1.
    gt = gt_dict(BOXES, LABELS, [[0, 1, 1], [0, 1, 2], [2, 3, 3]])
    pred = pred_dict(BOXES, LABELS, [1] * 4, [[0, 1], [2, 3]],
                     one_hot_scores([{1: 1.0, 2: 1.0}, {3: 1.0}]))
    out = run("predcls", [gt], [pred])
    assert out["R@20"] == pytest.approx(200 / 3)
    assert out["ngR@20"] == 100.0
    # mR: predicate 1 -> 1, 2 -> 0, 3 -> 1, absent ones 0; over P = 5
    assert out["mR@20"] == pytest.approx(100 * 2 / 5)
    assert out["ngmR@20"] == pytest.approx(100 * 3 / 5)


@pytest.mark.parametrize("mode", ["predcls", "sgcls", "sgdet", "phrdet", "preddet"])
def test_perfect_prediction_scores_100(mode):
    rng = np.random.default_rng(1)
    gts, preds = [], []
    for _ in range(4):
        g = 6
        xy = rng.integers(0, 100, (g, 2))
        boxes = np.concatenate([xy, xy + rng.integers(5, 40, (g, 2))], 1)
        labels = rng.integers(1, 10, g)
        pairs = np.array([[a, b] for a in range(g) for b in range(g) if a != b])
        chosen = pairs[rng.choice(len(pairs), 4, replace=False)]
        rels = np.concatenate([chosen, rng.integers(1, P + 1, (4, 1))], 1)
        rs = np.zeros((len(pairs), P + 1))
        rs[:, 0] = 1.0
        for s, o, p in rels:
            row = np.flatnonzero((pairs[:, 0] == s) & (pairs[:, 1] == o))[0]
            rs[row] = 0
            rs[row, p] = 1.0
        rng.shuffle(pairs_perm := np.arange(len(pairs)))
        gts.append(gt_dict(boxes, labels, rels))
        preds.append(pred_dict(boxes, labels, np.ones(g), pairs[pairs_perm], rs[pairs_perm]))
    out = run(mode, gts, preds, ks=(20, 50, 100))
    for k in (20, 50, 100):
        assert out[f"R@{k}"] == 100.0
        assert out[f"ngR@{k}"] == 100.0


def test_images_without_ground_truth_are_skipped_and_counted():
    gt = gt_dict(BOXES, LABELS, [[0, 1, 1], [2, 3, 2]])
    empty = gt_dict(BOXES, LABELS, np.zeros((0, 3)))
    pred = pred_dict(BOXES, LABELS, [1] * 4, [[0, 1]], one_hot_scores([{1: 0.9}]))
    out = run("sgdet", [gt, empty, empty], [pred, pred, pred])
    assert out["R@20"] == 50.0  # mean over the one evaluated image, not over 3
    assert out["num_images"] == 3
    assert out["num_images_evaluated"] == 1
    assert out["num_images_skipped_no_gt_relations"] == 2
    assert out["num_gt_relations"] == 2
    # no image at all -> NaN, not 0
    assert math.isnan(run("sgdet", [empty], [pred])["R@20"])


def test_image_without_predictions_counts_as_zero():
    gt = gt_dict(BOXES, LABELS, [[0, 1, 1]])
    pred = pred_dict(BOXES, LABELS, [1] * 4, np.zeros((0, 2)), np.zeros((0, P + 1)))
    out = run("sgdet", [gt], [pred])
    assert out["R@20"] == 0.0 and out["num_images_evaluated"] == 1


def test_phrase_detection_uses_union_boxes():
    gt = gt_dict([[0, 0, 9, 9], [90, 90, 99, 99]], [1, 2], [[0, 1, 1]])
    # subject box IoU with GT = 25/100 (< 0.5) but the union boxes are identical
    pred = pred_dict([[0, 0, 4, 4], [90, 90, 99, 99], [0, 0, 99, 99]], [1, 2, 1], [1, 1, 1],
                     [[0, 1]], one_hot_scores([{1: 0.9}]))
    assert run("sgdet", [gt], [pred])["R@20"] == 0.0
    assert run("phrdet", [gt], [pred])["R@20"] == 100.0
    # union box IoU below 0.5 -> miss; labels still have to match in phrdet
    pred_far = pred_dict([[0, 0, 4, 4], [40, 40, 49, 49]], [1, 2], [1, 1], [[0, 1]],
                         one_hot_scores([{1: 0.9}]))
    assert run("phrdet", [gt], [pred_far])["R@20"] == 0.0
    pred_lab = dict(pred, labels=np.array([1, 3, 1]))
    assert run("phrdet", [gt], [pred_lab])["R@20"] == 0.0


def test_sgcls_uses_predicted_labels_and_predcls_ignores_them():
    gt = gt_dict(BOXES, LABELS, [[0, 1, 1], [2, 3, 2]])
    # label of box 3 wrong; its score low
    pred = pred_dict(BOXES, [1, 2, 3, 1], [1, 1, 1, 0.5], [[0, 1], [2, 3]],
                     one_hot_scores([{1: 0.5}, {2: 0.9}]))
    assert run("sgcls", [gt], [pred])["R@20"] == 50.0
    assert run("predcls", [gt], [pred])["R@20"] == 100.0
    # predcls: object scores are 1, so row (2,3) (0.9) outranks (0,1) (0.5) even though the
    # prediction's object score 0.5 would have put it below under sgcls (0.45 < 0.5)
    assert run("predcls", [gt], [pred])["R@1"] == 50.0
    assert run("sgcls", [gt], [pred])["R@1"] == 50.0  # (0,1) first, a hit


def test_preddet_only_ground_truth_pairs_compete():
    gt = gt_dict(BOXES, LABELS, [[0, 1, 1], [2, 3, 2]])
    # the top-scoring pair (1, 2) is not a GT pair and must not take a slot at K=1
    pred = pred_dict(BOXES, LABELS, [1] * 4, [[1, 2], [2, 3], [0, 1], [0, 1]],
                     one_hot_scores([{1: 1.0}, {2: 0.9}, {1: 0.8}, {1: 0.95}]))
    out = run("preddet", [gt], [pred])
    # GT pair (0,1) uses its FIRST prediction row (0.8); ranking: (2,3) 0.9, (0,1) 0.8
    assert out["R@1"] == 50.0 and out["R@2"] == 100.0
    # sgdet on the same input does let the non-GT pair take the first slot
    sg = run("sgdet", [gt], [pred])  # (1,2) 1.0 (miss), then (0,1) 0.95 (hit)
    assert (sg["R@1"], sg["R@2"]) == (0.0, 50.0)


def test_mean_recall_hand_computed():
    g1 = gt_dict(BOXES, LABELS, [[0, 1, 1], [1, 2, 1], [2, 3, 2]])
    g2 = gt_dict(BOXES, LABELS, [[0, 1, 1], [2, 3, 3]])
    p1 = pred_dict(BOXES, LABELS, [1] * 4, [[0, 1], [1, 2], [2, 3]],
                   one_hot_scores([{1: 0.9}, {4: 0.8}, {2: 0.7, 5: 0.1}]))
    p2 = pred_dict(BOXES, LABELS, [1] * 4, [[0, 1], [2, 3]],
                   one_hot_scores([{2: 0.9, 1: 0.8}, {3: 0.7}]))
    out = run("sgdet", [g1, g2], [p1, p2])
    # image 1 (graph constraint, K=20): pred 1 -> 1/2, pred 2 -> 1/1; image 2: pred 1 -> 0/1,
    # pred 3 -> 1/1. Per predicate: 1 -> (0.5 + 0)/2, 2 -> 1, 3 -> 1, 4, 5 -> 0 (absent).
    assert out["mR@20"] == pytest.approx(100 * (0.25 + 1 + 1) / 5)
    assert out["R@20"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    # no graph constraint: every (pair, predicate) entry is a candidate, zero scores included
    # (as in NM / SGB); with K=20 >= 15 entries every ground truth of both images is hit
    assert out["ngmR@20"] == pytest.approx(100 * 3 / 5)
    # K=2: image 1 keeps (0,1,1) .9 and (1,2,4) .8; image 2 (0,1,2) .9 and (0,1,1) .8
    assert out["ngmR@2"] == pytest.approx(100 * ((0.5 + 1) / 2) / 5)
    # K=1: image 1 keeps (0,1,1) -> pred 1: 1/2; image 2 keeps (0,1,2) -> miss
    assert out["mR@1"] == pytest.approx(100 * ((0.5 + 0) / 2) / 5)


def test_zero_shot_recall_hand_computed():
    g1 = gt_dict(BOXES, LABELS, [[0, 1, 1], [2, 3, 2]])  # triplets (1,1,2), (3,2,4)
    g2 = gt_dict(BOXES, LABELS, [[0, 1, 3]])  # (1,3,2): not zero-shot
    p1 = pred_dict(BOXES, LABELS, [1] * 4, [[0, 1], [2, 3]],
                   one_hot_scores([{1: 0.9}, {1: 0.8, 2: 0.7}]))
    p2 = pred_dict(BOXES, LABELS, [1] * 4, [[0, 1]], one_hot_scores([{3: 0.9}]))
    zs = np.array([[3, 2, 4], [9, 9, 9]])
    out = run("sgdet", [g1, g2], [p1, p2], zero_shot_triplets=zs)
    assert out["num_images_zero_shot"] == 1  # image 2 has no zero-shot triplet
    assert out["zR@20"] == 0.0  # graph constraint keeps predicate 1 for pair (2,3)
    assert out["ngzR@20"] == 100.0
    # ng ranking: (0,1,1) .9, (2,3,1) .8, (2,3,2) .7 -> the zero-shot hit comes third
    assert out["ngzR@2"] == 0.0 and out["ngzR@1"] == 0.0
    assert "zR@20" not in run("sgdet", [g1], [p1])


def test_vg150_zero_shot_list():
    z = load_vg150_zero_shot_triplets()
    assert z.shape == (5971, 3)
    assert z[:, 1].max() <= 50 and z[:, [0, 2]].max() <= 150 and z.min() >= 1
    assert np.unique(z, axis=0).shape[0] == 5971


def test_few_shot_buckets_hand_computed():
    g = gt_dict(BOXES, LABELS, [[0, 1, 1], [1, 2, 2], [2, 3, 3]])
    # triplets: (1,1,2) seen 0x, (2,2,3) seen 5x, (3,3,4) seen 50x
    counts = np.array([[2, 2, 3, 5], [3, 3, 4, 50], [7, 1, 7, 1000]])
    p = pred_dict(BOXES, LABELS, [1] * 4, [[0, 1], [1, 2], [2, 3]],
                  one_hot_scores([{1: 0.5}, {2: 0.9}, {4: 0.8}]))
    out = run("sgdet", [g], [p], triplet_counts=counts, few_shot_ks=(1, 2, 100))
    assert out["ngR@1/0-shot"] == 0.0 and out["ngR@100/0-shot"] == 100.0
    assert out["ngR@1/1-10-shot"] == 100.0
    # ng ranking (1,2,2) .9, (2,3,4) .8, (0,1,1) .5, then the zero-score entries
    assert out["ngR@2/11-100-shot"] == 0.0 and out["ngR@100/11-100-shot"] == 100.0
    assert out["ngR@2/all-shot"] == pytest.approx(100 / 3)
    assert out["num_images_11-100-shot"] == 1
    # dict form gives the same
    d = {(2, 2, 3): 5, (3, 3, 4): 50}
    out2 = run("sgdet", [g], [p], triplet_counts=d, few_shot_ks=(1, 2, 100))
    assert {k: v for k, v in out2.items() if "shot" in k} == \
        {k: v for k, v in out.items() if "shot" in k}


# --------------------------------------------------------------------------- MSDN / F-Net


def test_msdn_protocol_micro_average_and_gt_dedup():
    g1 = gt_dict(BOXES, LABELS, [[0, 1, 1]])
    # pair (0,1) listed twice: the N x N matrix keeps the last predicate (2)
    g2 = gt_dict(BOXES, LABELS, [[0, 1, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]])
    p1 = pred_dict(BOXES, LABELS, [1] * 4, [[0, 1]], one_hot_scores([{1: 0.9}]))
    p2 = pred_dict(BOXES, LABELS, [1] * 4, [[0, 1]], one_hot_scores([{2: 0.9}]))
    out = run("sgdet", [g1, g2], [p1, p2], protocol="msdn")
    assert out["protocol"] == "msdn"
    assert out["num_gt_relations"] == 4  # 1 + 3 after dedup
    assert out["R@20"] == pytest.approx(100 * 2 / 4)  # micro: 2 hits of 4
    motifs = run("sgdet", [g1, g2], [p1, p2])
    assert motifs["protocol"] == "motifs"
    assert motifs["R@20"] == pytest.approx(100 * (1 + 1 / 4) / 2)  # per-image mean


def test_msdn_top_predicates_triplet_nms_and_predicate_recall():
    gt = gt_dict(BOXES + [[0, 0, 9, 8]], LABELS + [1], [[0, 1, 1], [2, 3, 2]])
    # box 4 nearly equals box 0 (IoU 0.9 > 0.4): (4,1,pred 3) duplicates (0,1,pred 3)
    pairs = [[0, 1], [4, 1], [2, 3]]
    rs = one_hot_scores([{3: 0.9, 1: 0.5}, {3: 0.85}, {2: 0.3}])
    pred = pred_dict(BOXES + [[0, 0, 9, 8]], LABELS + [1], [1] * 5, pairs, rs)
    kw = dict(protocol="msdn", ks=(1, 2, 3, 4))
    # candidates: (0,1,3) .9, (4,1,3) .85, (0,1,1) .5, (2,3,2) .3
    no_nms = run("sgdet", [gt], [pred], triplet_nms_threshold=None, **kw)
    assert (no_nms["R@2"], no_nms["R@3"]) == (0.0, 50.0)
    nms = run("sgdet", [gt], [pred], **kw)  # (4,1,3) suppressed
    assert (nms["R@1"], nms["R@2"], nms["R@3"]) == (0.0, 50.0, 100.0)
    # argmax only (MSDN): (0,1,1) is never a candidate
    top1 = run("sgdet", [gt], [pred], top_predicates_per_pair=1, **kw)
    assert top1["R@3"] == 50.0
    # predicate recall ignores labels
    pred_bad = dict(pred, labels=np.array([2, 2, 3, 4, 1]))
    out = run("sgdet", [gt], [pred_bad], triplet_nms_threshold=None, **kw)
    # top 4: (0,1,3), (4,1,3), (0,1,1) [labels wrong], (2,3,2) [hit]
    assert out["R@4"] == 50.0 and out["predR@4"] == 100.0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("change,msg", [
    (lambda g, p: p.pop("rel_scores"), "missing field 'rel_scores'"),
    (lambda g, p: p.update(rel_scores=np.zeros((1, P))), "rel_scores"),
    (lambda g, p: p.update(rel_pairs=np.array([[0, 9]])), "rel_pairs"),
    (lambda g, p: p.update(scores=np.array([1.0, np.nan, 1, 1])), "NaN"),
    (lambda g, p: g.update(relations=np.array([[0, 1, 0]])), "relations"),
    (lambda g, p: g.update(relations=np.array([[0, 7, 1]])), "relations"),
    (lambda g, p: g.update(labels=np.array([0, 1, 2, 3])), "labels"),
    (lambda g, p: p.update(labels=np.array([1, 2])), "same length"),
    (lambda g, p: p.update(rel_pairs=[[0, 1], [2]]), "rel_pairs"),
    (lambda g, p: p.update(boxes=np.zeros((4, 4, 1))), "boxes"),
])
def test_bad_input_raises_value_error(change, msg):
    g = gt_dict(BOXES, LABELS, [[0, 1, 1]])
    p = pred_dict(BOXES, LABELS, [1] * 4, [[0, 1]], one_hot_scores([{1: 0.9}]))
    change(g, p)
    with pytest.raises(ValueError, match=msg):
        SGGEvaluator("sgdet", P).add(g, p)


def test_bad_constructor_arguments():
    for kw in (dict(mode="det"), dict(protocol="vrd"), dict(iou_convention="pixel"),
               dict(ks=(0,)), dict(zero_shot_triplets=np.zeros((3, 2), int))):
        args = dict(mode="sgdet", num_predicates=P) | kw
        with pytest.raises(ValueError):
            SGGEvaluator(**args)


# --------------------------------------------------------------------------- detection mAP


def test_detection_map_hand_computed():
    ev = DetectionEvaluator(num_classes=2)
    gt = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), "labels": np.array([1, 1])}
    ev.add(gt, {"boxes": gt["boxes"], "labels": gt["labels"], "scores": np.array([0.9, 0.8])})
    assert ev.compute()["AP"] == pytest.approx(100.0)
    ev = DetectionEvaluator(num_classes=2)
    # one of two found: precision 1 up to recall 0.5 -> 51 of COCO's 101 recall points
    ev.add(gt, {"boxes": gt["boxes"][:1], "labels": np.array([1]), "scores": np.array([0.9])})
    out = ev.compute()
    assert out["AP50"] == pytest.approx(100 * 51 / 101)
    assert out["AP"] == pytest.approx(100 * 51 / 101)
    assert "Average Precision" in ev.last_log  # captured, not printed


def test_detection_rejects_labels_out_of_range():
    ev = DetectionEvaluator(num_classes=2)
    with pytest.raises(ValueError, match="labels"):
        ev.add({"boxes": np.zeros((1, 4)), "labels": np.array([3])},
               {"boxes": np.zeros((0, 4)), "labels": np.zeros(0), "scores": np.zeros(0)})


# --------------------------------------------------------------------------- loop reference


def ref_iou(a, b, plus_one):
    off = 1.0 if plus_one else 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0]) + off
    ih = min(a[3], b[3]) - max(a[1], b[1]) + off
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = ((a[2] - a[0] + off) * (a[3] - a[1] + off) + (b[2] - b[0] + off) * (b[3] - b[1] + off)
             - inter)
    return inter / union


def ref_union(a, b):
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]


def ref_image_matches(mode, gt, pred, kmax, plus_one=True):
    """Returns {'gc': [set of GT hit by top-K for K=1..kmax], 'ng': ...} as lists of sets."""
    g_boxes, g_labels, g_rels = gt["boxes"], gt["labels"], gt["relations"]
    if mode in ("predcls", "preddet"):
        boxes, labels, scores = g_boxes, g_labels, [1.0] * len(g_labels)
    elif mode == "sgcls":
        boxes, labels, scores = g_boxes, pred["labels"], pred["scores"]
    else:
        boxes, labels, scores = pred["boxes"], pred["labels"], pred["scores"]
    pairs, rs = pred["rel_pairs"], pred["rel_scores"]
    rows = list(range(len(pairs)))
    if mode == "preddet":
        gt_pairs = {(int(s), int(o)) for s, o, _ in g_rels}
        seen, rows = set(), []
        for r in range(len(pairs)):
            key = (int(pairs[r][0]), int(pairs[r][1]))
            if key in gt_pairs and key not in seen:
                seen.add(key)
                rows.append(r)
    num_p = rs.shape[1] - 1
    gc, ng = [], []
    for r in rows:
        s, o = pairs[r]
        obj = scores[s] * scores[o]
        best = 1
        for p in range(2, num_p + 1):
            if rs[r][p] > rs[r][best]:
                best = p
        gc.append((rs[r][best] * obj, r, best))
        for p in range(1, num_p + 1):
            ng.append((rs[r][p] * obj, r, p))
    out = {}
    for name, cands in (("gc", gc), ("ng", ng)):
        cands = sorted(cands, key=lambda t: (-t[0], t[1], t[2]))[:kmax]
        hits_by_k, hit = [], set()
        for score, r, p in cands:
            s, o = pairs[r]
            for gi, (gs, go, gp) in enumerate(g_rels):
                if p != gp:
                    continue
                if mode == "preddet":
                    ok = s == gs and o == go
                elif labels[s] != g_labels[gs] or labels[o] != g_labels[go]:
                    ok = False
                elif mode == "phrdet":
                    ok = ref_iou(ref_union(boxes[s], boxes[o]),
                                 ref_union(g_boxes[gs], g_boxes[go]), plus_one) >= 0.5
                else:
                    ok = (ref_iou(boxes[s], g_boxes[gs], plus_one) >= 0.5
                          and ref_iou(boxes[o], g_boxes[go], plus_one) >= 0.5)
                if ok:
                    hit.add(gi)
            hits_by_k.append(set(hit))
        out[name] = hits_by_k
    return out


def ref_evaluate(mode, gts, preds, ks, num_p, zs, plus_one=True):
    """NM recall + SGB mean / zero-shot recall, with loops."""
    zs = {tuple(int(v) for v in t) for t in zs}
    res = {}
    per_img = {c: {k: [] for k in ks} for c in ("gc", "ng")}
    per_pred = {c: {k: {p: [] for p in range(1, num_p + 1)} for k in ks} for c in ("gc", "ng")}
    zr = {c: {k: [] for k in ks} for c in ("gc", "ng")}
    for gt, pred in zip(gts, preds):
        rels = gt["relations"]
        if len(rels) == 0:
            continue
        m = ref_image_matches(mode, gt, pred, max(ks), plus_one)
        z_idx = [i for i, (s, o, p) in enumerate(rels)
                 if (gt["labels"][s], p, gt["labels"][o]) in zs]
        for c in ("gc", "ng"):
            for k in ks:
                lst = m[c]
                hit = lst[min(k, len(lst)) - 1] if lst else set()
                per_img[c][k].append(len(hit) / len(rels))
                for p in range(1, num_p + 1):
                    idx = [i for i in range(len(rels)) if rels[i][2] == p]
                    if idx:
                        per_pred[c][k][p].append(sum(i in hit for i in idx) / len(idx))
                if z_idx:
                    zr[c][k].append(sum(i in hit for i in z_idx) / len(z_idx))
    for k in ks:
        res[f"R@{k}"] = 100 * np.mean(per_img["gc"][k])
        res[f"ngR@{k}"] = 100 * np.mean(per_img["ng"][k])
        for c, name in (("gc", "mR"), ("ng", "ngmR")):
            res[f"{name}@{k}"] = 100 * sum(np.mean(v) if v else 0.0
                                           for v in per_pred[c][k].values()) / num_p
        for c, name in (("gc", "zR"), ("ng", "ngzR")):
            res[f"{name}@{k}"] = 100 * np.mean(zr[c][k]) if zr[c][k] else math.nan
    return res


def random_scene(rng, num_p, mode):
    """A small image whose prediction is a noisy copy of its ground truth.

    Coarse coordinates and a small score alphabet make borderline IoUs and score ties common;
    pairs come shuffled and may repeat.
    """
    g = int(rng.integers(2, 6))
    xy = rng.integers(0, 6, (g, 2)) * 4
    gt_boxes = np.concatenate([xy, xy + rng.integers(1, 4, (g, 2)) * 4], 1).astype(float)
    gt_labels = rng.integers(1, 4, g)
    r = int(rng.integers(0, 6))
    rels = np.stack([rng.integers(0, g, r), rng.integers(0, g, r), rng.integers(1, num_p + 1, r)],
                    1) if r else np.zeros((0, 3), int)
    if mode in ("predcls", "sgcls", "preddet"):
        boxes = gt_boxes
    else:  # jittered copies of the ground-truth boxes plus a few extra boxes
        extra = int(rng.integers(0, 3))
        boxes = np.concatenate([gt_boxes, gt_boxes[rng.integers(0, g, extra)]], 0)
        boxes = boxes + rng.integers(-2, 3, boxes.shape)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    n = boxes.shape[0]
    labels = np.concatenate([gt_labels, rng.integers(1, 4, n - g)])
    flip = rng.random(n) < 0.2
    labels = np.where(flip, rng.integers(1, 4, n), labels)
    scores = rng.choice([0.5, 1.0], n)
    pairs = np.array([[a, b] for a in range(n) for b in range(n) if a != b]).reshape(-1, 2)
    dup = pairs[rng.integers(0, len(pairs), int(rng.integers(0, 3)))] if len(pairs) else pairs
    pairs = np.concatenate([pairs, dup])
    pairs = pairs[rng.permutation(len(pairs))]
    rel_scores = rng.choice([0.0, 0.25, 0.5], (len(pairs), num_p + 1))
    for s_, o_, p_ in rels:  # the model often believes the true predicate
        rows = np.flatnonzero((pairs[:, 0] == s_) & (pairs[:, 1] == o_))
        if len(rows) and rng.random() < 0.7:
            rel_scores[rows[0], p_] = rng.choice([0.5, 1.0])
    gt = {"boxes": gt_boxes, "labels": gt_labels, "relations": rels}
    pred = {"boxes": boxes, "labels": labels, "scores": scores, "rel_pairs": pairs,
            "rel_scores": rel_scores}
    return gt, pred


@pytest.mark.parametrize("mode", ["predcls", "sgcls", "sgdet", "phrdet", "preddet"])
@pytest.mark.parametrize("convention,ks", [
    ("plus_one", (1, 3, 10, 50)),
    ("continuous", (1, 3, 10, 50)),
    ("plus_one", (1, 2, 5)),  # K below the number of pairs: the row-pruned ng ranking is used
])
def test_matches_loop_reference_on_random_images(mode, convention, ks):
    rng = np.random.default_rng(zlib.crc32(f"{mode}/{convention}/{ks}".encode()))
    num_p = 4
    zs = np.array([[1, 1, 2], [2, 3, 1], [3, 2, 3], [1, 4, 1]])
    gts, preds = zip(*[random_scene(rng, num_p, mode) for _ in range(40)])
    ev = SGGEvaluator(mode, num_p, ks, zero_shot_triplets=zs, iou_convention=convention)
    for g, p in zip(gts, preds):
        ev.add(g, p)
    got = ev.compute()
    want = ref_evaluate(mode, gts, preds, ks, num_p, zs, plus_one=convention == "plus_one")
    for key, v in want.items():
        if math.isnan(v):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(v, abs=1e-9), key
    assert got["num_images_evaluated"] == sum(len(g["relations"]) > 0 for g in gts)


def ref_msdn(mode, gts, preds, ks, top, nms, plus_one=True):
    """MSDN / F-Net protocol with loops: N x N ground truth, top predicates per pair, greedy
    triplet NMS, hits summed over the dataset."""
    hits = {k: 0 for k in ks}
    pred_hits = {k: 0 for k in ks}
    total = 0
    for gt, pred in zip(gts, preds):
        mat = {}
        for s, o, p in gt["relations"]:
            mat[(int(s), int(o))] = int(p)  # the last predicate listed for a pair wins
        if not len(gt["relations"]):
            continue
        g_rels = [(s, o, p) for (s, o), p in mat.items()]
        total += len(g_rels)
        if mode == "sgcls":
            boxes, labels, scores = gt["boxes"], pred["labels"], pred["scores"]
        else:
            boxes, labels, scores = pred["boxes"], pred["labels"], pred["scores"]
        pairs, rs = pred["rel_pairs"], pred["rel_scores"]
        cands = []
        for r in range(len(pairs)):
            s, o = pairs[r]
            order = sorted(range(1, rs.shape[1]), key=lambda p: (-rs[r][p], p))[:top]
            for p in order:
                cands.append((rs[r][p] * (scores[s] * scores[o]), r, p))
        cands.sort(key=lambda t: (-t[0], t[1], t[2]))
        kept = []
        for c in cands:
            if len(kept) == max(ks):
                break
            s, o = pairs[c[1]]
            dropped = False
            for d in kept if nms is not None else []:
                s2, o2 = pairs[d[1]]
                if (labels[s] == labels[s2] and labels[o] == labels[o2] and c[2] == d[2]
                        and ref_iou(boxes[s], boxes[s2], plus_one) > nms
                        and ref_iou(boxes[o], boxes[o2], plus_one) > nms):
                    dropped = True
                    break
            if not dropped:
                kept.append(c)
        for k in ks:
            for gs, go, gp in g_rels:
                full = part = False
                for _, r, p in kept[:k]:
                    s, o = pairs[r]
                    if p != gp:
                        continue
                    box_ok = (ref_iou(boxes[s], gt["boxes"][gs], plus_one) >= 0.5
                              and ref_iou(boxes[o], gt["boxes"][go], plus_one) >= 0.5)
                    lab_ok = labels[s] == gt["labels"][gs] and labels[o] == gt["labels"][go]
                    part |= box_ok
                    full |= box_ok and lab_ok
                hits[k] += full
                pred_hits[k] += part
    out = {f"R@{k}": 100 * hits[k] / total for k in ks}
    out.update({f"predR@{k}": 100 * pred_hits[k] / total for k in ks})
    return out


@pytest.mark.parametrize("mode", ["sgcls", "sgdet"])
@pytest.mark.parametrize("top,nms", [(2, 0.4), (10, None), (1, 0.4)])
def test_msdn_matches_loop_reference_on_random_images(mode, top, nms):
    rng = np.random.default_rng(zlib.crc32(f"msdn/{mode}/{top}/{nms}".encode()))
    num_p, ks = 4, (1, 3, 10, 50)
    gts, preds = zip(*[random_scene(rng, num_p, mode) for _ in range(40)])
    ev = SGGEvaluator(mode, num_p, ks, protocol="msdn", top_predicates_per_pair=top,
                      triplet_nms_threshold=nms)
    for g, p in zip(gts, preds):
        ev.add(g, p)
    got = ev.compute()
    for key, v in ref_msdn(mode, gts, preds, ks, top, nms).items():
        assert got[key] == pytest.approx(v, abs=1e-9), key


def test_permuting_predicted_boxes_changes_nothing():
    """Relabelling the prediction's box indices (pairs remapped, pair rows kept) is invisible."""
    rng = np.random.default_rng(7)
    gts, preds = zip(*[random_scene(rng, 4, "sgdet") for _ in range(30)])
    permuted = []
    for p in preds:
        perm = rng.permutation(p["boxes"].shape[0])  # new index of old box i is inv[i]
        inv = np.argsort(perm)
        permuted.append(dict(p, boxes=p["boxes"][perm], labels=p["labels"][perm],
                             scores=p["scores"][perm], rel_pairs=inv[p["rel_pairs"]]))
    for mode in ("sgdet", "phrdet"):
        a = SGGEvaluator(mode, 4, (1, 3, 20), zero_shot_triplets=np.array([[1, 1, 2]]))
        b = SGGEvaluator(mode, 4, (1, 3, 20), zero_shot_triplets=np.array([[1, 1, 2]]))
        for g, p, q in zip(gts, preds, permuted):
            a.add(g, p)
            b.add(g, q)
        ra, rb = a.compute(), b.compute()
        assert ra.keys() == rb.keys()
        for k in ra:
            assert (ra[k] == rb[k]) or (ra[k] != ra[k] and rb[k] != rb[k]), k


def test_scene_graph_record_is_accepted_as_groundtruth():
    from data_pipelines.records import SceneGraphRecord

    g = gt_dict(BOXES, LABELS, [[0, 1, 1], [2, 3, 2]])
    rec = SceneGraphRecord(image_id=1, image_path="", width=80, height=20, boxes=g["boxes"],
                           labels=g["labels"], relations=g["relations"])
    p = pred_dict(BOXES, LABELS, [1] * 4, [[0, 1]], one_hot_scores([{1: 0.9}]))
    assert run("sgdet", [rec], [p]) == run("sgdet", [g], [p])
