"""One detector for every head: a detector-only run (configs/detector.py) reports its box AP,
and a relation run reuses its parameters (model.detector.checkpoint) instead of training a
detector; checkpoints that do not fit are refused before anything compiles, naming what
differs. The comparison runner (python -m sgg_jax.compare) over models and seeds."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from sgg_jax.models import DETECTOR_GROUP
from sgg_jax.training import detector_source, eval_loop, experiment, runs
from training_utils import REPO, finished_run, flat_params, load_config, run_stages


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory):
    """(workdir, exp, params) of a finished tiny detector-only run."""
    cache = str(tmp_path_factory.mktemp("shared_cache"))
    workdir = str(tmp_path_factory.mktemp("detector_run"))
    config = load_config("detector", "tiny", **{"data.cache_dir": cache,
                                                 "train.data_parallel": 1,
                                                 "model.detector.score_thresh": 0.0})
    exp, params = run_stages(config, workdir)
    return workdir, exp, params, cache


def test_the_detector_alone_is_evaluated_by_box_ap(detector_run):
    """eval.modes="detection": the detector's COCO AP and per-class AP against the full ground
    truth; the plan is the detector stage alone and the params are its group alone."""
    _, exp, params, _ = detector_run
    assert [p.name for p in exp.stages] == ["detector"] and set(params) == {DETECTOR_GROUP}
    results = eval_loop.evaluate(exp, params)
    det = results["detection"]
    assert set(results) == {"detection"}
    assert det["num_images"] == len(exp.data.sources["test"])
    per_class = {r["name"]: r for r in det["per_class"]}
    assert len(per_class) == exp.facts.num_classes
    ground_truth = exp.data.ground_truth("test")
    counts = np.bincount(np.concatenate([ground_truth[int(exp.data.sources["test"][i][
        "image_id"])]["labels"] for i in range(len(exp.data.sources["test"]))]),
        minlength=exp.facts.num_classes + 1)
    for c, name in enumerate(exp.facts.idx_to_label[1:], start=1):
        assert per_class[name]["num_gt"] == counts[c]
        assert (per_class[name]["AP"] is None) == (counts[c] == 0)
    aps = [r["AP"] for r in det["per_class"] if r["AP"] is not None]
    assert det["AP"] == pytest.approx(np.mean(aps), abs=1e-6)  # COCO's mean over classes
    assert all(0 <= r["missed"] <= r["num_gt"] for r in det["per_class"])
    assert all(c["ground_truth"] != c["detected_as"] for c in det["confusions"])


@pytest.mark.slow
def test_a_relation_run_reuses_the_detector_at_its_own_canvas(detector_run, tmp_path):
    """A 96 px relation run reuses the 128 px detector: no detector stage, the detector's
    parameters as they were, and the detector reads 128 px canvases whose boxes come back
    scaled by 96 / 128 into the model's canvas (in SGDet and in its evaluation)."""
    from sgg_jax.training import data as data_lib

    workdir, _, det_params, cache = detector_run
    config = load_config("imp", "tiny", **{
        "data.cache_dir": cache, "train.data_parallel": 1, "eval.modes": "sgdet",
        "train.stage_order": "relations", "model.detector.checkpoint": workdir,
        "model.detector.backbone_stride": 8, "input.image_size": 96,
        "model.detector.score_thresh": 0.0})
    exp = experiment.setup(config, str(tmp_path / "imp"))
    assert [p.name for p in exp.stages] == ["relations"]  # no detector stage of its own
    assert exp.config.input.detector_image_size == 128  # kept in the run's saved config
    params = experiment.init_params(exp, jax.random.key(0))
    a, b = flat_params(det_params[DETECTOR_GROUP]), flat_params(params[DETECTOR_GROUP])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    batch = next(iter(data_lib.eval_loader(exp.config, exp.data, exp.mesh, "test")))
    assert batch.images.shape[1] == 96 and batch.detector_images.shape[1] == 128
    out = jax.device_get(jax.jit(eval_loop.make_sgdet_step(exp))(
        params, batch.images, batch.image_sizes, batch.detector_images,
        batch.detector_image_sizes))
    dets = jax.device_get(exp.detector().apply(
        {"params": params[DETECTOR_GROUP], **exp.detector_state}, batch.detector_images,
        batch.detector_image_sizes))
    for i in range(batch.images.shape[0]):
        real = np.asarray(dets.valid[i])
        assert real.sum() == out["box_mask"][i].sum() > 0
        np.testing.assert_allclose(out["det_boxes"][i][:real.sum()],
                                   np.asarray(dets.boxes[i])[real] * 96 / 128, rtol=1e-6)
    results = eval_loop.evaluate(exp, params)
    assert results["detection"]["num_images"] == len(exp.data.sources["test"])

    # From the run directory alone, predict letterboxes each image at both sizes.
    from PIL import Image

    from sgg_jax import predict

    finished_run(config, tmp_path / "finished")
    predictor = predict.load(tmp_path / "finished")
    assert predictor.detector_image_size == 128 and predictor.image_size == 96
    image = Image.open(os.path.join(exp.data.raw_dir, "VG_100K", sorted(os.listdir(
        os.path.join(exp.data.raw_dir, "VG_100K")))[0])).convert("RGB")
    assert predictor.predict(image).boxes.shape[1] == 4


def test_detector_checkpoints_that_do_not_fit_are_refused(detector_run, tmp_path):
    workdir, _, _, cache = detector_run

    def refused(match, path=workdir, **overrides):
        config = load_config("imp", "tiny", **{
            "data.cache_dir": cache, "train.data_parallel": 1, "eval.modes": "sgdet",
            "model.detector.checkpoint": str(path), "model.detector.backbone_stride": 8,
            **overrides})
        with pytest.raises(detector_source.DetectorSourceError, match=match):
            experiment.setup(config, str(tmp_path / "run"))

    refused("nosuch.*does not exist", path=tmp_path / "nosuch")
    refused(r"model.detector.fc_dim 32 there, 64 here", **{"model.detector.fc_dim": 64})
    refused(r"input.image_size 128 there, input.detector_image_size 96 here",
            **{"input.detector_image_size": 96})
    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    facts = json.loads((other / "dataset" / "facts.json").read_text())
    facts["idx_to_label"][1] = "unicorn"
    (other / "dataset" / "facts.json").write_text(json.dumps(facts))
    refused("another class list", path=other)
    os.remove(other / "checkpoints" / "detector" / runs.FINISHED_FILE)
    refused("has not finished", path=other)
    nodet = tmp_path / "nodet"  # a finished run whose stages trained no detector
    shutil.copytree(workdir, nodet)
    saved = json.loads((nodet / "config.json").read_text())
    saved["train"]["stages"]["detector"].update(kind="relation", losses=["object"])
    (nodet / "config.json").write_text(json.dumps(saved))
    refused("has no detector stage", path=nodet)


def test_the_cli_refuses_a_missing_detector_in_one_line(tmp_path):
    """From the command line: exit 2 and one error line naming the path, before any data."""
    missing = tmp_path / "no_such_run"
    out = subprocess.run([sys.executable, "-m", "sgg_jax.main", "--config", "configs/imp.py:tiny",
                          "--workdir", str(tmp_path / "run"),
                          f"--config.data.cache_dir={tmp_path / 'cache'}",
                          "--config.eval.modes=sgdet",
                          f"--config.model.detector.checkpoint={missing}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0] and "does not exist" in errors[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "cache").exists()  # refused before any data was generated


def test_the_checkpoints_architecture_is_adopted_unless_set_explicitly(detector_run, tmp_path):
    """`--config.model.detector.checkpoint` alone suffices: the fields the run left at its
    preset's values (here the stride, 16 in the relation preset) are taken from the detector's
    run; a field the user set explicitly is kept, and refused when it disagrees."""
    workdir, exp_det, _, cache = detector_run
    overrides = {"data.cache_dir": cache, "train.data_parallel": 1, "eval.modes": "sgdet",
                 "model.detector.checkpoint": workdir}
    config = load_config("imp", "tiny", **overrides)
    assert config.model.detector.backbone_stride == 16
    assert exp_det.config.model.detector.backbone_stride == 8
    assert "backbone_stride" in detector_source.adopt_architecture(config)
    for field in detector_source.DETECTOR_ARCHITECTURE_FIELDS + detector_source.PROPOSAL_FIELDS:
        assert runs.flatten({field: config.model.detector[field]}) == runs.flatten(
            {field: exp_det.config.model.detector[field]})
    assert detector_source.adopt_architecture(config) == []  # idempotent
    experiment.setup(config, str(tmp_path / "adopted"))
    explicit = load_config("imp", "tiny", **overrides)
    assert detector_source.adopt_architecture(
        explicit, ["model.detector.backbone_stride"]) == []
    with pytest.raises(detector_source.DetectorSourceError,
                       match="backbone_stride 8 there, 16 here"):
        experiment.setup(explicit, str(tmp_path / "explicit"))


@pytest.mark.slow
def test_the_comparison_runner(tmp_path):
    """Two seeds of the tiny IMP, and an entry that fails: the table holds mean and sample std
    of the runs' own results.json, the failure is reported and the others go on (exit 2);
    run again, nothing finished is redone."""
    root = tmp_path / "compare"
    args = ["--configs", "configs/imp.py,configs/nosuch.py", "--preset", "tiny", "--seeds",
            "2", "--workdir", str(root), "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "train.data_parallel=1", "--set", "eval.num_pictures=0"]
    run = lambda: subprocess.run([sys.executable, "-m", "sgg_jax.compare", *args], cwd=REPO,
                                 capture_output=True, text=True, timeout=900)
    out = run()
    assert out.returncode == 2, out.stderr[-3000:]
    report = json.loads((root / "comparison.json").read_text())
    assert set(report["failed"]) == {"nosuch-tiny"}
    assert "nosuch" in report["failed"]["nosuch-tiny"]
    per_seed = [json.loads((root / "imp-tiny" / f"seed{s}" / "results.json").read_text())
                for s in (0, 1)]
    table = (root / "comparison.md").read_text()
    for mode in ("predcls", "sgcls"):
        for metric in ("R@50", "mR@50"):
            values = [r[mode][metric] for r in per_seed]
            stats = report["summary"]["imp-tiny"]["motifs"][mode][metric]
            assert stats["mean"] == pytest.approx(np.mean(values), abs=1e-9)
            assert stats["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-9)
            assert f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" in table
    # the seeds train different models (so the std is not vacuously 0)
    assert any(per_seed[0]["predcls"][k] != per_seed[1]["predcls"][k]
               for k in ("R@50", "R@100", "ngR@50", "mR@50"))
    assert (root / "per_predicate_imp-tiny.png").stat().st_size > 0
    logs = [root / "imp-tiny" / f"seed{s}" / "compare.log" for s in (0, 1)]
    stamps = [p.stat().st_mtime_ns for p in logs]
    again = run()
    assert again.returncode == 2
    assert [p.stat().st_mtime_ns for p in logs] == stamps  # finished runs were not redone


def test_compare_overrides_go_to_their_entry_with_the_seed_filled_in():
    from sgg_jax.compare import entry_overrides

    names = ["imp", "sgp-imp"]
    sets = ["eval.modes=predcls,sgcls", "sgp-imp:model.base_run=/r/imp/seed{seed}",
            "data.data_dir=C:/vg"]
    assert entry_overrides(sets, "imp", names, 2) == ["eval.modes=predcls,sgcls",
                                                      "data.data_dir=C:/vg"]
    assert entry_overrides(sets, "sgp-imp", names, 1) == [
        "eval.modes=predcls,sgcls", "model.base_run=/r/imp/seed1", "data.data_dir=C:/vg"]
    with pytest.raises(ValueError, match="no entry 'sgp-x' \\(entries: imp, sgp-imp\\)"):
        entry_overrides(["sgp-x:a=1"], "imp", names, 0)
    with pytest.raises(ValueError, match=r"expected \[ENTRY:\]KEY=VALUE"):
        entry_overrides(["novalue"], "imp", names, 0)


def test_detection_confusions_by_hand():
    """Each ground-truth box counts once: the class of the best-scoring detection overlapping
    it at IoU >= 0.5, or a miss; the report lists confusions of different classes only."""
    gt = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float),
          "labels": np.array([1, 2, 2])}
    pred = {"boxes": np.array([[0, 0, 10, 10], [0, 0, 9, 10], [20, 20, 30, 31],
                               [80, 80, 90, 90]], float),
            "labels": np.array([3, 1, 2, 1]), "scores": np.array([0.9, 0.5, 0.7, 0.99])}
    got = eval_loop.detection_confusion(gt, pred, 3)
    want = np.zeros((4, 4), np.int64)
    want[1, 3] = 1  # the "a" box: its best overlapping detection (0.9) says "c"
    want[2, 2] = 1  # the first "b" box: found
    want[2, 0] = 1  # the second "b" box: no detection overlaps it
    np.testing.assert_array_equal(got, want)
    assert eval_loop.top_confusions(got, ["bg", "a", "b", "c"]) == [
        {"ground_truth": "a", "detected_as": "c", "count": 1, "share": 1.0}]
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0)}
    assert eval_loop.detection_confusion(gt, empty, 3)[:, 0].tolist() == [0, 1, 2, 0]
