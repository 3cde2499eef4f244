"""Faster R-CNN pieces: target assignment vs a NumPy reference, proposal selection, post-processing
with hand-made logits, a few training steps, and the whole-detector weight mappings."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sgg_jax import weights as W
from sgg_jax.models.detection import FasterRCNN, tiny_config, vgg16_config, resnet50_fpn_config
from sgg_jax.models.detection.roi_head import postprocess_image
from sgg_jax.models.detection.rpn import select_proposals
from sgg_jax.models.detection.targets import anchor_labels, rpn_targets, sample_proposals


def key(seed: int) -> jax.Array:
    """An rbg key: threefry takes ~10 s to compile on this CPU, rbg ~1 s (same statistics use)."""
    return jax.random.key(seed, impl="rbg")


def np_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def np_anchor_labels(anchors, gt, gt_mask, fg_t, bg_t):
    """Loop reference of the RPN labelling rule (1 fg, 0 bg, -1 ignore)."""
    gt = gt[gt_mask]
    iou = np_iou(anchors, gt)
    labels = np.full(len(anchors), -1)
    for i in range(len(anchors)):
        m = iou[i].max()
        if m < bg_t:
            labels[i] = 0
        if m >= fg_t:
            labels[i] = 1
    for j in range(len(gt)):
        best = iou[:, j].max()
        if best > 0:
            for i in range(len(anchors)):
                if iou[i, j] == best:
                    labels[i] = 1
    return labels


def random_boxes(rng, n, size=64.0, lo=4.0, hi=40.0):
    xy = rng.uniform(0, size - hi, size=(n, 2))
    wh = rng.uniform(lo, hi, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_anchor_labels_and_sampling_match_numpy_reference():
    rng = np.random.default_rng(0)
    anchors = random_boxes(rng, 300)
    gt = np.concatenate([random_boxes(rng, 4), np.zeros((2, 4), np.float32)])
    gt_mask = np.array([True] * 4 + [False] * 2)
    gt[1] = anchors[7] + 0.5  # some anchor surely above 0.7
    labels, _ = jax.jit(anchor_labels, static_argnums=(3, 4))(anchors, gt, gt_mask, 0.7, 0.3)
    ref = np_anchor_labels(anchors, gt, gt_mask, 0.7, 0.3)
    np.testing.assert_array_equal(np.asarray(labels), ref)

    n_fg, n_bg = int((ref == 1).sum()), int((ref == 0).sum())
    assert n_fg >= 4 and n_bg > 20
    targets = jax.jit(lambda k: rpn_targets(jnp.asarray(anchors), gt, gt_mask, jnp.array([64.0, 64.0]),
                                            k, batch_size=16, positive_fraction=0.25))
    t = targets(key(3))
    fg, bg = np.asarray(t.fg), np.asarray(t.bg)
    assert fg.sum() == min(n_fg, 4) and bg.sum() == 16 - fg.sum()
    assert np.all(ref[fg] == 1) and np.all(ref[bg] == 0)
    # regression targets decode back to the matched gt box
    from sgg_jax.ops.boxes import decode_boxes
    dec = decode_boxes(t.deltas[fg], jnp.asarray(anchors[fg]), (1.0, 1.0, 1.0, 1.0))
    np.testing.assert_allclose(dec, gt[np.asarray(t.matched_gt)[fg]], atol=1e-3)
    # a different key draws a different sample of the same sizes
    t2 = targets(key(4))
    assert int(t2.bg.sum()) == int(bg.sum()) and not np.array_equal(np.asarray(t2.bg), bg)


def test_sample_proposals_labels_and_order():
    rng = np.random.default_rng(1)
    props = random_boxes(rng, 40)
    pmask = np.ones(40, bool)
    pmask[-5:] = False
    gt = np.concatenate([random_boxes(rng, 3), np.zeros((1, 4), np.float32)])
    gt_lab = np.array([2, 5, 1, 0], np.int32)
    gt_mask = gt_lab > 0
    rt = jax.jit(lambda k: sample_proposals(props, pmask, gt, gt_lab, gt_mask, k, batch_size=16,
                                            positive_fraction=0.25))(key(0))
    boxes, labels, fg, valid = map(np.asarray, (rt.boxes, rt.labels, rt.fg, rt.valid))
    cands = np.concatenate([props[pmask], gt[gt_mask]])
    iou = np_iou(cands, gt[gt_mask])
    n_fg = int((iou.max(1) >= 0.5).sum())
    assert n_fg >= 3  # the gt boxes themselves
    assert fg.sum() == min(n_fg, 4) and valid.sum() == min(16, len(cands))
    assert np.all(fg[:fg.sum()]) and not fg[fg.sum():].any()  # fg first
    for b, lab, f, v in zip(boxes, labels, fg, valid):
        if not v:
            continue
        i = np_iou(b[None], gt[gt_mask])[0]
        assert (i.max() >= 0.5) == f
        assert lab == (gt_lab[gt_mask][i.argmax()] if f else 0)
        assert any(np.allclose(b, c) for c in cands)  # padded proposals are never sampled


def np_decode(deltas, anchors):
    """Faster R-CNN box decoding, weights (1, 1, 1, 1), continuous widths (x2 - x1), dw / dh
    clipped at log(1000 / 16)."""
    clip = np.log(1000.0 / 16)
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + 0.5 * w + deltas[:, 0] * w, anchors[:, 1] + 0.5 * h + deltas[:, 1] * h
    pw = np.exp(np.minimum(deltas[:, 2], clip)) * w
    ph = np.exp(np.minimum(deltas[:, 3], clip)) * h
    return np.stack([cx - 0.5 * pw, cy - 0.5 * ph, cx + 0.5 * pw, cy + 0.5 * ph], 1)


def np_select_proposals(logits, deltas, anchors, level_sizes, hw, pre_nms_top_n,
                        post_nms_top_n, nms_thresh, min_size):
    """Loop reference of the RPN's proposal selection, from its definition: per level the
    pre_nms_top_n best anchors, decoded, clipped to the image, small ones dropped, greedy NMS
    within the level (suppress IoU > thresh); the survivors of all levels by score, the best
    post_nms_top_n. Returns (boxes, sigmoid scores, level) of the kept proposals."""
    kept, start = [], 0
    for level, n in enumerate(level_sizes):
        idx = start + np.argsort(-logits[start:start + n], kind="stable")[:pre_nms_top_n]
        start += n
        boxes = np_decode(deltas[idx].astype(np.float64), anchors[idx].astype(np.float64))
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, hw[1])
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, hw[0])
        ok = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
        survivors = []
        for k in range(len(idx)):  # idx is sorted by decreasing score
            if ok[k] and all(np_iou(boxes[k:k + 1], boxes[j:j + 1])[0, 0] <= nms_thresh
                             for j in survivors):
                survivors.append(k)
        kept += [(logits[idx[k]], boxes[k], level) for k in survivors]
    kept.sort(key=lambda t: -t[0])
    kept = kept[:post_nms_top_n]
    return (np.array([b for _, b, _ in kept]), 1 / (1 + np.exp(-np.array([s for s, _, _ in kept]))),
            np.array([lv for _, _, lv in kept]))


def test_select_proposals_shapes_and_nms():
    rng = np.random.default_rng(2)
    anchors = random_boxes(rng, 200, size=64)
    logits = rng.normal(size=200).astype(np.float32)
    deltas = (0.1 * rng.normal(size=(200, 4))).astype(np.float32)
    # The best anchor of each level lies right of the 60-px-wide image: clipped to zero width,
    # it must be dropped (min_size), not proposed.
    anchors[[7, 150]] = [[70.0, 10.0, 90.0, 30.0], [64.0, 0.0, 80.0, 20.0]]
    logits[[7, 150]] = 5.0
    fn = jax.jit(lambda l, d, a, hw: select_proposals(
        l, d, a, [120, 80], hw, pre_nms_top_n=50, post_nms_top_n=30, nms_thresh=0.5, min_size=1.0))
    boxes, scores, valid = map(np.asarray, fn(logits, deltas, anchors, jnp.array([50.0, 60.0])))
    assert boxes.shape == (30, 4) and scores.shape == (30,) and valid.shape == (30,)
    # Same proposals, scores and order as the loop reference; padding after the real ones.
    ref_boxes, ref_scores, ref_level = np_select_proposals(
        logits, deltas, anchors, [120, 80], (50.0, 60.0), 50, 30, 0.5, 1.0)
    n = len(ref_boxes)
    assert 5 < n and valid.tolist() == [True] * n + [False] * (30 - n)
    np.testing.assert_allclose(boxes[:n], ref_boxes, atol=1e-4)
    np.testing.assert_allclose(scores[:n], ref_scores, rtol=1e-5)
    assert not scores[n:].any()
    b = boxes[valid]
    assert np.all(b[:, 0] >= 0) and np.all(b[:, 2] <= 60) and np.all(b[:, 3] <= 50)
    assert np.all(b[:, 2] - b[:, 0] >= 1.0) and np.all(b[:, 3] - b[:, 1] >= 1.0)
    assert scores[0] < 1 / (1 + np.exp(-5.0)) - 1e-3  # the two clipped-away anchors are gone
    assert np.all(np.diff(scores[valid]) <= 1e-6)
    # Within a level no two kept proposals overlap above the threshold; across levels they may
    # (a level never suppresses another), and in this draw some do.
    iou = np_iou(b, b) - np.eye(len(b))
    same = ref_level[:, None] == ref_level[None, :]
    assert set(ref_level.tolist()) == {0, 1}
    assert iou[same].max() <= 0.5 + 1e-5
    assert iou[~same].max() > 0.5


def test_postprocess_hand_made_logits():
    # 4 RoIs, C = 2. RoI 0 and 1 overlap (IoU 0.81) and both say class 1; RoI 2 says class 2;
    # RoI 3 is padding; zero deltas keep the RoI boxes.
    rois = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 40], [0, 0, 5, 5]], np.float32)
    valid = np.array([True, True, True, False])
    logits = np.array([[0.0, 4.0, 0.0], [0.0, 3.0, 0.0], [0.0, -2.0, 5.0], [0.0, 9.0, 0.0]], np.float32)
    deltas = np.zeros((4, 3, 4), np.float32)
    out = jax.jit(lambda *a: postprocess_image(*a, score_thresh=0.05, nms_thresh=0.5, num_candidates=8,
                                               detections=5))(logits, deltas, rois, valid,
                                                              jnp.array([50.0, 50.0]))
    boxes, labels, scores, dists, ok, roi = map(np.asarray, out)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # candidates above 0.05: (0,c1) .965, (1,c1) .910, (2,c2) .997; (0,c2)/(1,c2) = .018/.045 no
    assert ok.tolist() == [True, True, False, False, False]
    assert labels[:2].tolist() == [2, 1] and roi[:2].tolist() == [2, 0]
    np.testing.assert_allclose(scores[:2], [p[2, 2], p[0, 1]], rtol=1e-5)
    np.testing.assert_allclose(boxes[:2], rois[[2, 0]], atol=1e-4)
    np.testing.assert_allclose(dists[:2], p[[2, 0]], rtol=1e-5)
    assert np.all(scores[2:] == 0) and np.all(labels[2:] == 0)

    # COCO AP of these detections against matching ground truth is perfect.
    from sgg_jax.evaluation import DetectionEvaluator

    ev = DetectionEvaluator(num_classes=2)
    ev.add({"boxes": rois[[0, 2]], "labels": [1, 2]},
           {"boxes": boxes[ok], "labels": labels[ok], "scores": scores[ok]})
    assert ev.compute()["AP"] == pytest.approx(100.0)


def _tiny_batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, size=(2, 64, 64, 3)).astype(np.uint8)
    gtb = np.array([[[6, 6, 30, 30], [34, 20, 60, 52], [0, 0, 0, 0]],
                    [[10, 12, 42, 28], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    gtl = np.array([[1, 3, 0], [2, 0, 0]], np.int32)
    for i in range(2):  # paint the objects so they are learnable
        for b, l in zip(gtb[i], gtl[i]):
            if l:
                x1, y1, x2, y2 = b.astype(int)
                images[i, y1:y2, x1:x2] = (80 * l) % 256
    sizes = np.array([[64, 64], [56, 64]], np.float32)
    return jnp.asarray(images), jnp.asarray(sizes), jnp.asarray(gtb), jnp.asarray(gtl), jnp.asarray(gtl > 0)


def test_training_steps_reduce_loss_and_inference_shapes():
    cfg = tiny_config(num_classes=3)
    model = FasterRCNN(cfg)
    images, sizes, gtb, gtl, gtm = _tiny_batch()
    variables = jax.jit(model.init)({"params": key(0)}, images, sizes)
    opt = optax.adam(3e-3)
    k_sample = key(1)  # fixed sampling key: the same loss function every step

    def loss_fn(params):
        out = model.apply({**variables, "params": params}, images, sizes, gtb, gtl, gtm, train=True,
                          rngs={"sampling": k_sample})
        return out.total, out

    @jax.jit
    def step(params, state):
        (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, aux

    params, state = variables["params"], opt.init(variables["params"])
    losses = []
    for _ in range(6):
        params, state, aux = step(params, state)
        losses.append(float(aux.total))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses

    det = jax.jit(model.apply)({**variables, "params": params}, images, sizes)
    d = cfg.detections_per_image
    assert det.boxes.shape == (2, d, 4) and det.labels.shape == (2, d)
    assert det.class_dists.shape == (2, d, 4) and det.valid.shape == (2, d)
    v = np.asarray(det.valid)
    lab = np.asarray(det.labels)
    assert np.all((lab[v] >= 1) & (lab[v] <= 3)) and np.all(lab[~v] == 0)
    np.testing.assert_allclose(np.asarray(det.class_dists).sum(-1)[v], 1.0, rtol=1e-5)
    b = np.asarray(det.boxes)
    assert np.all(b[1][v[1]][:, 3] <= 56.0 + 1e-4)  # clipped to the second image's height


def test_train_needs_ground_truth():
    cfg = tiny_config(num_classes=3)
    images, sizes, *_ = _tiny_batch()
    with pytest.raises(ValueError, match="gt_boxes"):
        FasterRCNN(cfg).init({"params": key(0)}, images, sizes, train=True)


# ----------------------------------------------------------------------------------------------
# whole-detector weight mappings (shapes only: jax.eval_shape, no compute)


def _shapes(model, size=64):
    return jax.eval_shape(lambda: model.init({"params": key(0)},
                                             jnp.zeros((1, size, size, 3), jnp.uint8),
                                             jnp.full((1, 2), float(size))))


def test_torchvision_fasterrcnn_mapping_covers_every_leaf():
    from tests.test_weights import fake_resnet50

    mult, c, ncls = 1 / 16, 16, 5
    cfg = resnet50_fpn_config(num_classes=ncls, fc_dim=12, rpn_channels=c,
                              backbone_kwargs=(("width_multiplier", mult), ("channels", c)))
    variables = _shapes(FasterRCNN(cfg))
    rng = np.random.default_rng(0)
    sd = fake_resnet50(mult, layers=4, prefix="backbone.body.")
    r = lambda *s: rng.normal(size=s).astype(np.float32)
    for i, cin in enumerate((16, 32, 64, 128)):
        sd[f"backbone.fpn.inner_blocks.{i}.0.weight"] = r(c, cin, 1, 1)
        sd[f"backbone.fpn.inner_blocks.{i}.0.bias"] = r(c)
        sd[f"backbone.fpn.layer_blocks.{i}.0.weight"] = r(c, c, 3, 3)
        sd[f"backbone.fpn.layer_blocks.{i}.0.bias"] = r(c)
    sd.update({"rpn.head.conv.0.0.weight": r(c, c, 3, 3), "rpn.head.conv.0.0.bias": r(c),
               "rpn.head.cls_logits.weight": r(3, c, 1, 1), "rpn.head.cls_logits.bias": r(3),
               "rpn.head.bbox_pred.weight": r(12, c, 1, 1), "rpn.head.bbox_pred.bias": r(12),
               "roi_heads.box_head.fc6.weight": r(12, c * 49), "roi_heads.box_head.fc6.bias": r(12),
               "roi_heads.box_head.fc7.weight": r(12, 12), "roi_heads.box_head.fc7.bias": r(12),
               "roi_heads.box_predictor.cls_score.weight": r(ncls + 1, 12),
               "roi_heads.box_predictor.cls_score.bias": r(ncls + 1),
               "roi_heads.box_predictor.bbox_pred.weight": r(4 * ncls + 4, 12),
               "roi_heads.box_predictor.bbox_pred.bias": r(4 * ncls + 4)})
    new, rep = W.import_weights(variables, sd, W.torchvision_fasterrcnn_rules(fpn_channels=c))
    assert rep.unassigned_targets == []
    assert all(k.endswith("num_batches_tracked") for k in rep.unused_sources)
    np.testing.assert_array_equal(new["params"]["rpn"]["bbox_pred"]["kernel"][0, 0],
                                  sd["rpn.head.bbox_pred.weight"][:, :, 0, 0].T)


def test_neural_motifs_mapping_covers_every_leaf():
    from tests.test_weights import fake_vgg16

    mult, ncls, fc = 1 / 16, 4, 16
    cfg = vgg16_config(num_classes=ncls, fc_dim=fc, rpn_channels=32,
                       backbone_kwargs=(("width_multiplier", mult),))
    variables = _shapes(FasterRCNN(cfg))
    a = cfg.anchors_per_location
    rng = np.random.default_rng(0)
    r = lambda *s: rng.normal(size=s).astype(np.float32)
    sd = {f"detector.{k.replace('classifier', 'roi_fmap')}": v
          for k, v in fake_vgg16(mult, classifier=fc).items() if not k.startswith("classifier.6")}
    sd.update({"detector.score_fc.weight": r(ncls + 1, fc), "detector.score_fc.bias": r(ncls + 1),
               "detector.bbox_fc.weight": r(4 * ncls + 4, fc), "detector.bbox_fc.bias": r(4 * ncls + 4),
               "detector.rpn_head.conv.0.weight": r(32, 32, 3, 3), "detector.rpn_head.conv.0.bias": r(32),
               "detector.rpn_head.conv.2.weight": r(6 * a, 32, 1, 1),
               "detector.rpn_head.conv.2.bias": r(6 * a)})
    new, rep = W.import_weights(variables, sd, W.neural_motifs_detector_rules("detector.", fc_channels=32))
    assert rep.unassigned_targets == [] and rep.unused_sources == []
