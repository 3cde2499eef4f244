"""The detector stage and SGDet on the tiny preset: the detector trains, checkpoints and resumes
exactly like the relation stages; SGDet evaluation runs end to end with COCO mAP (IMP), FREQ
reads the detector's labels;
the SGDet pair construction matches a NumPy reference; `sgg_jax.inference` restores a run and
predicts fixed-shape scene graphs.

One detector run is trained per module and reused (the persistent XLA cache of
tests/conftest.py serves the same compiled step to the resumed and fixed-batch runs).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax import inference
from sgg_jax.models import DETECTOR_GROUP, detector_config
from sgg_jax.training import data as data_lib
from sgg_jax.training import eval_loop, experiment, trainer
from training_utils import (Interrupt, RecordingWriter, flat_params, interrupted_after,
                            load_config, make_facts, one_batch_forever, run_stages)

DET_STEPS = 8


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sgdet_cache"))


def det_config(cache_dir, name="imp", **overrides):
    """Tiny preset, SGDet evaluation, the detector stage only (8 steps, checkpoint every 4)."""
    return load_config(name, "tiny", **{
        "data.cache_dir": cache_dir, "train.data_parallel": 1, "eval.modes": "sgdet",
        "train.stage_order": "detector", "train.stages.detector.num_steps": DET_STEPS,
        "train.stages.detector.learning_rate": 3e-3, "train.log_every": 1, **overrides})


@pytest.fixture(scope="module")
def trained(cache_dir, tmp_path_factory):
    """(exp, params, writer, workdir) of an uninterrupted detector run."""
    workdir = str(tmp_path_factory.mktemp("det_ref"))
    writer = RecordingWriter()
    exp, params = run_stages(det_config(cache_dir), workdir, writer)
    return exp, params, writer, workdir


def _names(config):
    return [p.name for p in experiment.plan_stages(config)]


def test_stage_names_put_the_detector_first_only_for_sgdet():
    base = load_config("imp", "default")
    assert _names(base) == ["detector", "objects", "relations"]
    no_det = load_config("imp", "default", **{"eval.modes": "predcls,sgcls"})
    assert _names(no_det) == ["objects", "relations"]
    prepended = load_config("freq", "default", **{"train.stage_order": "objects"})
    assert _names(prepended) == ["detector", "objects"]
    # Relation stages keep their seeds whether or not the detector stage runs.
    seeds = lambda c: {p.name: p.seed_index for p in experiment.plan_stages(c)}
    with_det, without = seeds(base), seeds(no_det)
    for name in without:
        assert with_det[name] == without[name]
    assert with_det["detector"] not in (0, 1)
    bad = load_config("imp", "default", **{"train.stage_order": "objects,detection"})
    with pytest.raises(ValueError, match="detection"):
        experiment.plan_stages(bad)


def test_detector_config_mapping():
    c = load_config("imp", "default")
    d = detector_config(c.model.detector, 7)
    assert d.num_classes == 7 and d.detections_per_image == c.model.detector.detections_per_image
    assert d.anchor_sizes == (tuple(c.model.detector.anchor_sizes),)  # one stride-16 level
    assert d.box_nms_thresh == c.model.detector.nms
    fpn = dict(c.model.detector, backbone="resnet50_fpn", backbone_widths=(), backbone_stride=16,
               anchor_sizes=(32, 64, 128, 256, 512))
    assert detector_config(fpn, 7).anchor_sizes == ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    with pytest.raises(ValueError, match="nms_iou"):
        detector_config(dict(c.model.detector, nms_iou=0.3), 7)


def test_detector_stage_checkpoints_and_leaves_relation_groups(trained):
    exp, params, writer, workdir = trained
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "detector"))) == ["4", "8", "finished.json"]
    init = experiment.init_params(exp, jax.random.key(exp.config.seed))
    a, b = flat_params(init), flat_params(params)
    moved = {k for k in a if not np.array_equal(a[k], b[k])}
    assert moved and all(k.startswith(f"['{DETECTOR_GROUP}']") for k in moved), sorted(moved)[:5]
    rows = [v for _, prefix, v in writer.rows if prefix == "detector/"]
    assert len(rows) == DET_STEPS
    assert all(np.isfinite(r["loss"]) and "rpn_objectness" in r for r in rows)


def test_detector_loss_decreases_on_a_fixed_batch(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(data_lib, "train_loader", one_batch_forever(data_lib.train_loader))
    writer = RecordingWriter()
    run_stages(det_config(cache_dir), str(tmp_path / "fixed"), writer)
    losses = [v["loss"] for _, prefix, v in writer.rows if prefix == "detector/"]
    assert len(losses) == DET_STEPS and np.all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.85 * np.mean(losses[:2]), losses


def test_detector_interrupt_and_resume_is_exact(cache_dir, trained, tmp_path, monkeypatch):
    _, reference, _, _ = trained
    workdir = str(tmp_path / "resumed")
    restore = interrupted_after(monkeypatch, 6)
    with pytest.raises(Interrupt):
        run_stages(det_config(cache_dir), workdir)
    restore()
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "detector"))) == ["4"]
    _, resumed = run_stages(det_config(cache_dir), workdir)
    ref, res = flat_params(reference), flat_params(resumed)
    assert ref.keys() == res.keys()
    for k in ref:
        np.testing.assert_array_equal(ref[k], res[k], err_msg=k)


def test_detector_nan_stops_with_clear_message(cache_dir, tmp_path, monkeypatch):
    """A batch with NaN boxes makes the detection loss NaN: the update is skipped, the run stops
    with the trainer's message and nothing is saved (the same compiled step as the other runs)."""
    nan_boxes = lambda b: b.replace(boxes=np.full_like(np.asarray(b.boxes), np.nan))
    monkeypatch.setattr(data_lib, "train_loader", one_batch_forever(data_lib.train_loader,
                                                                    nan_boxes))
    with pytest.raises(trainer.NonFiniteLossError, match="NaN/Inf"):
        run_stages(det_config(cache_dir), str(tmp_path / "nan"))
    saved = os.listdir(tmp_path / "nan" / "checkpoints" / "detector")
    assert not [f for f in saved if f.isdigit()], saved


def _pairs_reference(boxes, valid, must_overlap):
    out = set()
    for i in range(len(valid)):
        for j in range(len(valid)):
            if i == j or not (valid[i] and valid[j]):
                continue
            if must_overlap:
                iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                if not (iw > 0 and ih > 0):
                    continue
            out.add((i, j))
    return out


@pytest.mark.parametrize("must_overlap", [False, True])
def test_detection_pairs_match_numpy_reference(must_overlap):
    rng = np.random.default_rng(3)
    b, d = 5, 7
    xy = rng.uniform(0, 60, (b, d, 2))
    wh = rng.uniform(2, 30, (b, d, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    valid = rng.random((b, d)) < 0.7
    valid[0] = False  # an image without detections
    valid[1] = True
    pairs, mask = jax.jit(eval_loop.detection_pairs, static_argnums=2)(
        jnp.asarray(boxes), jnp.asarray(valid), must_overlap)
    pairs, mask = np.asarray(pairs), np.asarray(mask)
    assert pairs.shape == (b, d * (d - 1), 2) and mask.shape == (b, d * (d - 1))
    for i in range(b):
        n = int(mask[i].sum())
        assert mask[i, :n].all() and not mask[i, n:].any()  # real pairs first
        real = [tuple(p) for p in pairs[i, :n]]
        assert len(set(real)) == n  # no duplicates
        assert set(real) == _pairs_reference(boxes[i], valid[i], must_overlap)
        assert (pairs[i, n:] == 0).all()  # masked padding


def test_detection_pairs_by_hand():
    boxes = jnp.asarray([[[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 1, 1]]],
                        jnp.float32)
    valid = jnp.asarray([[True, True, True, False]])
    pairs, mask = eval_loop.detection_pairs(boxes, valid, must_overlap=True)
    assert np.asarray(mask).sum() == 2
    assert {tuple(p) for p in np.asarray(pairs)[0, :2]} == {(0, 1), (1, 0)}
    pairs, mask = eval_loop.detection_pairs(boxes, valid)
    assert np.asarray(mask).sum() == 6


def _check_sgdet_arrays(out, b, d, num_classes, num_predicates):
    m = d * (d - 1)
    assert out["boxes"].shape == (b, d, 4) and out["boxes"].dtype == np.float32
    assert out["box_mask"].shape == (b, d) and out["box_mask"].dtype == bool
    assert out["labels"].shape == (b, d) and out["scores"].shape == (b, d)
    assert out["rel_pairs"].shape == (b, m, 2) and out["pair_mask"].shape == (b, m)
    assert out["rel_scores"].shape == (b, m, num_predicates + 1)
    for i in range(b):
        bm = out["box_mask"][i]
        n = int(bm.sum())
        assert bm[:n].all() and not bm[n:].any()  # real detections first
        assert ((out["labels"][i][bm] >= 1) & (out["labels"][i][bm] <= num_classes)).all()
        assert (out["labels"][i][~bm] == 0).all()
        pm = out["pair_mask"][i]
        assert int(pm.sum()) == n * (n - 1)  # all ordered pairs of real detections
        p = out["rel_pairs"][i][pm]
        assert (p[:, 0] != p[:, 1]).all() and (p < n).all()
        np.testing.assert_allclose(out["rel_scores"][i][pm].sum(-1), 1.0, rtol=1e-5)


def test_make_sgdet_fn_restores_the_run_and_predicts(trained):
    exp, params, _, workdir = trained
    exp2, restored = inference.restore_for_inference(os.path.join(workdir, "checkpoints",
                                                                  "detector"))
    a, b = flat_params(params), flat_params(restored)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # A low score threshold so that the barely trained detector yields detections.
    with exp2.config.unlocked():
        exp2.config.model.detector.score_thresh = 0.0
    assert exp2.data is None  # restored from the run directory alone (config + dataset facts)
    assert exp2.facts.idx_to_predicate == exp.facts.idx_to_predicate
    predict = inference.make_sgdet_fn(exp2, restored)
    batch = next(iter(data_lib.eval_loader(exp.config, exp.data, exp.mesh, "test")))
    out = predict(np.asarray(batch.images)[:2], np.asarray(batch.image_sizes)[:2])
    d = int(exp2.config.model.detector.detections_per_image)
    _check_sgdet_arrays(out, 2, d, exp2.facts.num_classes, exp2.facts.num_predicates)
    assert out["box_mask"].any()
    with pytest.raises(ValueError, match="uint8"):
        predict(np.asarray(batch.images)[:2].astype(np.float32), np.asarray(batch.image_sizes)[:2])


def test_sgdet_evaluation_end_to_end(cache_dir, trained, tmp_path):
    """IMP SGDet on the tiny test split with the detector trained above: R@K and box mAP."""
    _, det_params, _, _ = trained
    config = det_config(cache_dir, **{"model.detector.score_thresh": 0.0})
    exp = experiment.setup(config, str(tmp_path / "imp"))
    params = experiment.init_params(exp, jax.random.key(0))
    params[DETECTOR_GROUP] = det_params[DETECTOR_GROUP]
    results = eval_loop.evaluate(exp, params)
    assert set(results) == {"sgdet", "phrdet", "detection", "msdn", "ground_truth"}
    assert set(results["msdn"]) == {"sgdet", "phrdet"}
    for r in (results["sgdet"], results["phrdet"], *results["msdn"].values()):
        for k in (20, 50, 100):
            assert 0.0 <= r[f"R@{k}"] <= 100.0
        assert r["R@20"] <= r["R@50"] <= r["R@100"]
    det = results["detection"]
    assert det["num_images"] == len(exp.data.sources["test"])
    assert 0.0 <= det["AP"] <= det["AP50"] <= 100.0


def test_freq_sgdet_reads_the_detector_labels():
    """FREQ in SGDet indexes its table with ModelInputs.labels (the detector's), not with its
    own object classifier (which decides SGCls)."""
    import ml_collections

    from sgg_jax.models import ModelInputs, build_model
    from sgg_jax.models.priors import frequency_log_table

    c, p, o = 4, 3, 3
    fg = np.random.default_rng(0).integers(0, 6, (c + 1, c + 1, p + 1)).astype(np.float64)
    facts = make_facts(c, p, fg_matrix=fg)
    cfg = ml_collections.ConfigDict(dict(name="freq", backbone="small_resnet", hidden_dim=8,
                                         num_iterations=1, roi_size=2, sampling_ratio=1,
                                         fc_dim=8, dtype="float32", dropout=0.0))
    labels = np.array([[2, 4, 1]], np.int32)
    pairs = np.array([[[0, 1], [1, 2], [2, 0], [0, 2]]], np.int32)
    inputs = ModelInputs(images=jnp.zeros((1, 32, 32, 3), jnp.uint8),
                         image_sizes=jnp.full((1, 2), 32, jnp.int32),
                         boxes=jnp.asarray([[[0, 0, 8, 8], [4, 4, 20, 20], [10, 2, 30, 9]]],
                                           jnp.float32),
                         box_mask=jnp.ones((1, o), bool), labels=jnp.asarray(labels),
                         pairs=jnp.asarray(pairs), pair_mask=jnp.ones((1, 4), bool))
    table = frequency_log_table(fg, np.zeros((c + 1, c + 1)))
    outs = {}
    for mode in ("sgdet", "sgcls"):
        model = build_model(cfg, facts, mode)
        shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, False), inputs)
        variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        # The object classifier says class 3 everywhere (bias only).
        variables["params"]["obj_classifier"]["bias"] = jnp.asarray([0.0, 0, 0, 5, 0])
        outs[mode] = np.asarray(model.apply(variables, inputs, False).rel_logits)
    np.testing.assert_allclose(outs["sgdet"][0], table[labels[0, pairs[0, :, 0]],
                                                       labels[0, pairs[0, :, 1]]], rtol=1e-6)
    np.testing.assert_allclose(outs["sgcls"][0], np.broadcast_to(table[3, 3], (4, p + 1)),
                               rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Relation stages on detections (mode="sgdet")


def test_assign_ground_truth_by_hand():
    """Object targets: the class of the ground-truth box overlapped most (IoU >= 0.5, any
    label); pair predicates: only when both detections overlap the relation's boxes *and* carry
    their classes (neural-motifs' SGDet assignment); one of several predicates per pair."""
    from sgg_jax.training.detections import assign_ground_truth

    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30], [0, 0, 0, 0]], np.float32)
    gt_labels = np.array([1, 2, 3, 0], np.int32)
    gt_mask = np.array([True, True, True, False])
    rels = np.array([[0, 1, 4], [1, 2, 5], [0, 2, 6], [0, 2, 7], [3, 0, 2]], np.int32)
    rel_mask = np.array([True, True, True, True, True])  # the last names the padded box
    dets = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [20, 0, 30, 10], [0, 20, 10, 30],
                     [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    labels = np.array([1, 1, 3, 3, 1, 1], np.int32)
    valid = np.array([True, True, True, True, True, False])
    seen = set()
    for seed in range(8):
        targets, preds = jax.device_get(assign_ground_truth(
            jax.random.key(seed), dets, valid, labels, gt, gt_labels, gt_mask, rels, rel_mask))
        np.testing.assert_array_equal(targets, [1, 1, 2, 3, 0, 0])
        expect = np.zeros((6, 6), np.int32)
        expect[0, 3] = expect[1, 3] = preds[0, 3]  # A -> C: predicate 6 or 7, d0 and d1 both A
        np.testing.assert_array_equal(preds, expect)
        assert preds[0, 3] in (6, 7)
        seen.add(int(preds[0, 3]))
    assert seen == {6, 7}


def test_dense_sampling_against_numpy():
    """sample_dense_relations: foreground = pairs with a predicate (capped, each once, with its
    predicate), background = other ordered pairs of real boxes, real slots first."""
    from sgg_jax.relation_sampling import sample_dense_relations

    rng = np.random.default_rng(0)
    o, m = 7, 16
    for seed in range(5):
        boxes = np.sort(rng.uniform(0, 50, (o, 4)).astype(np.float32).reshape(o, 2, 2),
                        axis=1).transpose(0, 2, 1).reshape(o, 4)
        mask = rng.random(o) < 0.8
        preds = np.where(rng.random((o, o)) < 0.3, rng.integers(1, 5, (o, o)), 0).astype(np.int32)
        pairs, labels, pm = jax.device_get(sample_dense_relations(
            jax.random.key(seed), boxes, mask, preds, num_rels=m, fg_fraction=0.25))
        real = mask[:, None] & mask[None] & ~np.eye(o, dtype=bool)
        fg_all = {(i, j) for i, j in zip(*np.nonzero(real & (preds > 0)))}
        n = int(pm.sum())
        assert pm[:n].all() and not pm[n:].any()
        got = [tuple(p) for p in pairs[:n]]
        assert len(set(got)) == n and all(real[i, j] for i, j in got)
        fg = [(p, lab) for p, lab in zip(got, labels[:n]) if lab > 0]
        assert len(fg) == min(len(fg_all), m // 4)
        assert all(p in fg_all and lab == preds[p] for p, lab in fg)
        bg = [p for p, lab in zip(got, labels[:n]) if lab == 0]
        assert not set(bg) & fg_all
        assert n == min(m, len(fg) + int(real.sum()) - len(fg_all))


def test_training_detections_on_ground_truth_boxes_recover_the_ground_truth(cache_dir, trained):
    """make_training_detections with a stand-in detector that returns the batch's own boxes and
    classes: the object targets are the labels and every sampled foreground pair is a ground-truth
    relation with its predicate; the model sees the detector's labels and class distributions."""
    from sgg_jax.models.detection.roi_head import Detections
    from sgg_jax.training import mesh as mesh_lib
    from sgg_jax.training.detections import make_training_detections

    exp = trained[0]
    batch = jax.device_get(mesh_lib.to_global(next(iter(data_lib.train_loader(
        exp.config, exp.data, exp.mesh, seed=0))), exp.mesh))
    c1 = exp.facts.num_classes + 1

    class GroundTruth:  # a "detector" whose detections are the ground truth
        def apply(self, variables, images, sizes):
            valid = jnp.asarray(batch.box_mask & (batch.labels > 0))
            return Detections(boxes=jnp.asarray(batch.boxes), labels=jnp.asarray(batch.labels),
                              scores=valid.astype(jnp.float32),
                              class_dists=jax.nn.one_hot(batch.labels, c1), valid=valid,
                              roi_index=jnp.zeros(valid.shape, jnp.int32),
                              features=jnp.zeros(valid.shape + (1,)))

    fn = jax.jit(make_training_detections(GroundTruth(), {}, num_rels=32, fg_fraction=0.5,
                                          must_overlap=False))
    out = jax.device_get(fn({DETECTOR_GROUP: {}}, batch, jax.random.key(0)))
    real = batch.box_mask & (batch.labels > 0)
    total_fg = 0
    for b in range(batch.images.shape[0]):
        order = np.argsort(~real[b], kind="stable")  # detections come valid first
        np.testing.assert_array_equal(out.batch.labels[b], np.where(real[b], batch.labels[b],
                                                                    0)[order])
        np.testing.assert_array_equal(out.inputs["labels"][b], out.batch.labels[b])
        truth = {(int(order.tolist().index(s)), int(order.tolist().index(o))): set()
                 for s, o, _ in batch.relations[b][batch.rel_mask[b]]}
        for s, o, p in batch.relations[b][batch.rel_mask[b]]:
            truth[(order.tolist().index(s), order.tolist().index(o))].add(int(p))
        pm, labels = out.pair_mask[b], out.pair_labels[b]
        fg = [(tuple(int(x) for x in q), int(lab))
              for q, lab, v in zip(out.pairs[b], labels, pm) if v and lab > 0]
        assert all(q in truth and lab in truth[q] for q, lab in fg)
        assert len(fg) == min(len(truth), 16)
        total_fg += len(fg)
    assert total_fg > 0


def test_a_relation_stage_trains_on_detections(cache_dir, trained, tmp_path, monkeypatch):
    """A relation stage in mode sgdet (the SGDet refinement phase, after a stage on ground-truth
    boxes) trains the relation model on the frozen detector's boxes: finite losses, the
    detector unchanged, the model moved. PredCls / SGCls are then evaluated with the
    ground-truth-box stage's parameters, SGDet with the refined ones. A run without a detector
    does not plan the stage (as its detector stage)."""
    from training_utils import RecordingWriter, finished_run

    _, det_params, _, _ = trained
    config = det_config(cache_dir, **{
        "model.detector.score_thresh": 0.0, "eval.modes": "sgcls,sgdet",
        "train.stage_order": "detector,objects,relations", "train.stages.objects.num_steps": 1,
        "train.stages.relations.mode": "sgdet", "train.stages.relations.num_steps": 2})
    # The ground-truth-box stage: its initial parameters as its finished checkpoint.
    saved = finished_run(config, tmp_path / "refine", stage="objects")
    exp = experiment.setup(config, str(tmp_path / "refine"))
    assert [(p.name, p.mode) for p in exp.stages] == [
        ("detector", "sgdet"), ("objects", "sgcls"), ("relations", "sgdet")]
    experiment.init_params(exp, jax.random.key(0))
    gt_params = dict(saved, **{DETECTOR_GROUP: det_params[DETECTOR_GROUP]})
    writer = RecordingWriter()
    out = trainer.train_stage(exp, exp.stages[2], gt_params, jax.random.key(2), writer)
    rows = [v for _, prefix, v in writer.rows if prefix == "relations/"]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)
    a, b = flat_params(gt_params), flat_params(out)
    moved = {k for k in a if not np.array_equal(a[k], b[k])}
    assert moved and not any(k.startswith(f"['{DETECTOR_GROUP}']") for k in moved)

    assert experiment.given_box_stage(exp).name == "objects"
    by_mode, stages = experiment.mode_params(exp, out)
    assert stages == {"sgcls": "objects", "sgdet": "relations"} and set(by_mode) == {"sgcls"}
    c, d = flat_params(by_mode["sgcls"]), flat_params(saved)
    assert c.keys() == d.keys() and all(np.array_equal(c[k], d[k]) for k in d)

    # Killed after its first step (checkpointed) and resumed: the same parameters, bit for bit.
    import shutil

    shutil.rmtree(exp.checkpoint_dir("relations"))
    with exp.config.unlocked():
        exp.config.train.checkpoint_every = 1
    restore = interrupted_after(monkeypatch, 1)
    with pytest.raises(Interrupt):
        trainer.train_stage(exp, exp.stages[2], gt_params, jax.random.key(2), RecordingWriter())
    restore()
    resumed = trainer.train_stage(exp, exp.stages[2], gt_params, jax.random.key(2),
                                  RecordingWriter())
    e = flat_params(resumed)
    assert all(np.array_equal(b[k], e[k]) for k in b)

    no_detector = load_config("imp", "tiny", **{"eval.modes": "sgcls",
                                                "train.stages.relations.mode": "sgdet"})
    assert [p.name for p in experiment.plan_stages(no_detector)] == ["objects"]
