"""The training system on the tiny preset: loss goes down on a fixed batch, data parallelism and
multi-process training are exact, resume is exact, non-finite losses stop the run, and `main`
trains and evaluates end to end.

Runs are cached per module and the persistent XLA cache (tests/conftest.py) is shared, so the
same compiled programs serve several tests; that keeps this file to a few minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from sgg_jax.training import data as data_lib
from sgg_jax.training import experiment, trainer
from training_utils import (REPO, Interrupt, RecordingWriter, flat_params, interrupted_after,
                            load_config, one_batch_forever, run_stages, two_optimizer_config)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sgg_cache"))


def tiny(cache_dir, name="imp", **overrides):
    return load_config(name, "tiny", **{"data.cache_dir": cache_dir, **overrides})


def _train(config, workdir, writer=None):
    """All stages of `config` (as train_and_evaluate, without the final evaluation)."""
    return flat_params(run_stages(config, workdir, writer)[1])


_RUNS: dict = {}


def cached_run(key, config, workdir):
    if key not in _RUNS:
        _RUNS[key] = _train(config, workdir)
    return _RUNS[key]


def assert_trees_close(a, b, exact=False):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            # Sharded runs sum gradients in another order; Adam divides by sqrt(v), so entries
            # whose gradient is ~0 move by up to a fraction of one learning-rate step.
            np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=3e-4, err_msg=k)


RELATIONS_ONLY = {"train.stage_order": "relations"}
# The data-parallel equivalence runs: 3 relation steps show the same parameters as 6 would
# (every step reduces over the devices) at half the cost of gloo steps on 2 cores.
EQUIVALENCE = {**RELATIONS_ONLY, "train.stages.relations.num_steps": 3}


def test_loss_decreases_on_a_fixed_batch(cache_dir, tmp_path, monkeypatch):
    """The trainer's own step, fed one batch over and over, drives its loss down."""
    config = tiny(cache_dir, **RELATIONS_ONLY, **{"train.data_parallel": 1,
                                                  "train.stages.relations.num_steps": 16,
                                                  "train.stages.relations.learning_rate": 3e-3,
                                                  "train.log_every": 1,
                                                  "train.checkpoint_every": 100})
    monkeypatch.setattr(data_lib, "train_loader", one_batch_forever(data_lib.train_loader))
    writer = RecordingWriter()
    _train(config, str(tmp_path / "fixed"), writer)
    losses = [v["loss"] for _, _, v in writer.rows]
    assert len(losses) == 16 and np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


def test_a_plateau_stage_lowers_its_rate_and_ends_early(cache_dir, tmp_path, monkeypatch):
    """schedule="plateau": validations on the val split in the stage's mode (every step here);
    the second does not beat the first by the (huge) threshold, so with patience 0 the rate
    drops 10x, which reaches stop_below: the stage ends at step 2 of 4, its checkpoint holds the
    lowered scale, and a second run finds it finished. Killed after its first step's checkpoint
    and resumed, it ends the same, bit for bit (the plateau state is in the checkpoint)."""
    import orbax.checkpoint as ocp

    config = tiny(cache_dir, **RELATIONS_ONLY, **{
        "train.data_parallel": 1, "eval.modes": "sgcls", "train.log_every": 1,
        "train.checkpoint_every": 1,
        "train.stages.relations.num_steps": 4, "train.stages.relations.schedule": "plateau",
        "train.plateau.every": 1, "train.plateau.patience": 0, "train.plateau.threshold": 1e9,
        "train.plateau.stop_below": 0.5})
    workdir = str(tmp_path / "plateau")
    writer = RecordingWriter()
    first = _train(config, workdir, writer)
    rows = [(step, v) for step, prefix, v in writer.rows if prefix == "relations/plateau/"]
    assert [step for step, _ in rows] == [1, 2]
    assert [v["lr_scale"] for _, v in rows] == pytest.approx([1.0, 0.1])
    assert rows[0][1]["best"] == rows[0][1]["metric"] and 0 <= rows[0][1]["metric"] <= 100
    assert len([1 for _, prefix, _ in writer.rows if prefix == "relations/"]) == 2
    stage_dir = tmp_path / "plateau" / "checkpoints" / "relations"
    assert sorted(os.listdir(stage_dir)) == ["1", "2", "finished.json"]
    state = ocp.PyTreeCheckpointer().restore(str(stage_dir / "2" / "state"))
    scales = [v for k, v in flat_params(state["opt_state"]).items() if k.endswith("['scale']")]
    assert scales and all(float(v) == pytest.approx(0.1) for v in scales)
    writer = RecordingWriter()
    assert_trees_close(first, _train(config, workdir, writer), exact=True)
    assert not writer.rows  # finished: nothing trained again

    resumed = str(tmp_path / "resumed")
    real, calls = trainer._plateau_validation, []

    def killed_at_the_second(*args, **kwargs):  # after step 1's checkpoint, during step 2
        calls.append(1)
        if len(calls) == 2:
            raise Interrupt()
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "_plateau_validation", killed_at_the_second)
    with pytest.raises(Interrupt):
        _train(config, resumed)
    monkeypatch.setattr(trainer, "_plateau_validation", real)
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints" / "relations")) == ["1"]
    writer = RecordingWriter()
    assert_trees_close(first, _train(config, resumed, writer), exact=True)
    again = [(step, v) for step, prefix, v in writer.rows if prefix == "relations/plateau/"]
    assert again == rows[1:]  # the second validation, from the restored plateau state
    bad = tiny(cache_dir, **{"train.stages.relations.schedule": "plateau"})
    with pytest.raises(ValueError, match="needs config.train.plateau.every > 0"):
        experiment.validate(bad)


@pytest.mark.slow
def test_interrupt_and_resume_is_exact(cache_dir, tmp_path, monkeypatch):
    """Both stages; killed after 5 of the second stage's 6 steps (tiny checkpoints every 4 steps: the last is 4)."""
    config = tiny(cache_dir, **{"train.data_parallel": 1})
    reference = cached_run("both1", config, str(tmp_path / "ref"))

    restore = interrupted_after(monkeypatch, config.train.stages.objects.num_steps + 5)
    with pytest.raises(Interrupt):
        _train(config, str(tmp_path / "resumed"))
    restore()
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints" / "relations")) == ["4"]
    resumed = _train(config, str(tmp_path / "resumed"))
    assert_trees_close(reference, resumed, exact=True)
    # Running again finds every stage finished and changes nothing.
    again = _train(config, str(tmp_path / "resumed"))
    assert_trees_close(reference, again, exact=True)


def test_two_optimizers_alternate_and_resume_exactly(cache_dir, tmp_path, monkeypatch):
    """A stage with two optimizers over disjoint groups, updated one after the other: each
    state advances once per step (one multi_transform applied twice would count two), each
    trains only its groups, and interrupted + resumed = uninterrupted, bit for bit."""
    import orbax.checkpoint as ocp

    config = two_optimizer_config(cache_dir)
    steps = int(config.train.stages.relations.num_steps)
    reference = _train(config, str(tmp_path / "ref"))
    state = ocp.PyTreeCheckpointer().restore(str(tmp_path / "ref" / "checkpoints" / "relations"
                                                 / str(steps) / "state"))
    counts = {n: [int(v) for k, v in flat_params(s).items() if k.endswith("['count']")]
              for n, s in state["opt_state"].items()}
    assert set(counts) == {"heads", "objects"}
    assert counts["heads"] and all(c == steps for c in counts["heads"])  # Adam: one per step
    # SGD with momentum keeps no count; its trace covers only its own groups.
    traced = [k for k in flat_params(state["opt_state"]["objects"]) if "trace" in k]
    assert traced and not any("relation_head" in k for k in traced)
    init = flat_params(experiment.init_params(experiment.setup(config, str(tmp_path / "i")),
                                              jax.random.key(config.seed)))
    moved = {k.split("]")[0] + "]" for k in init if not np.array_equal(init[k], reference[k])}
    # the backbone belongs to no optimizer; each optimizer moved its groups
    assert moved == {"['relation_head']", "['roi_features']", "['obj_classifier']"}, moved

    restore = interrupted_after(monkeypatch, 5)
    with pytest.raises(Interrupt):
        _train(config, str(tmp_path / "resumed"))
    restore()
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints" / "relations")) == ["4"]
    assert_trees_close(reference, _train(config, str(tmp_path / "resumed")), exact=True)


def test_nonfinite_loss_stops_with_clear_message(cache_dir, tmp_path, monkeypatch):
    """NaN boxes (the same shapes and config as the "rel1" run, so the compiled step is reused
    from the persistent cache) make the loss NaN: the run stops, saving nothing non-finite."""
    import dataclasses

    config = tiny(cache_dir, **EQUIVALENCE, **{"train.data_parallel": 1})
    nan_boxes = lambda b: dataclasses.replace(b, boxes=np.full_like(b.boxes, np.nan))
    monkeypatch.setattr(data_lib, "train_loader", one_batch_forever(data_lib.train_loader,
                                                                    nan_boxes))
    with pytest.raises(trainer.NonFiniteLossError, match="NaN/Inf"):
        _train(config, str(tmp_path / "nan"))
    # nothing non-finite was saved
    steps = EQUIVALENCE["train.stages.relations.num_steps"]
    assert not os.path.exists(tmp_path / "nan" / "checkpoints" / "relations" / str(steps))


def _main(args, timeout=900):
    return _run_module("sgg_jax.main", *args, timeout=timeout)


def _iou_plus_one(a, b):
    """IoU of two x1y1x2y2 boxes, +1-pixel convention (neural-motifs)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    area = lambda x: (x[2] - x[0] + 1) * (x[3] - x[1] + 1)
    return iw * ih / (area(a) + area(b) - iw * ih)


def _numpy_recall(gt, pred, k):
    """Graph-constrained R@K of one image, written from the protocol (field notes): each pair
    keeps its best predicate, triplets ranked by subject x object x predicate score, a ground
    truth triplet is hit when a top-K triplet has its labels and predicate and both boxes have
    IoU >= 0.5. None for an image without relations."""
    rels = gt["relations"]
    if len(rels) == 0:
        return None
    fg = pred["rel_scores"][:, 1:]
    predicate = fg.argmax(1) + 1
    pairs = pred["rel_pairs"]
    score = fg.max(1) * pred["scores"][pairs[:, 0]] * pred["scores"][pairs[:, 1]]
    top = np.argsort(-score, kind="stable")[:k]
    hit = np.zeros(len(rels), bool)
    for t in top:
        s, o = pairs[t]
        for r, (gs, go, gp) in enumerate(rels):
            hit[r] |= (predicate[t] == gp and pred["labels"][s] == gt["labels"][gs]
                       and pred["labels"][o] == gt["labels"][go]
                       and _iou_plus_one(pred["boxes"][s], gt["boxes"][gs]) >= 0.5
                       and _iou_plus_one(pred["boxes"][o], gt["boxes"][go]) >= 0.5)
    return hit.mean()


def _raw_truncation_counts(raw_dir, max_objects, max_relations):
    """Objects / relations of the VG-SGG.h5 test images (with relations) beyond the input
    limits, counted from the h5 arrays directly (the first objects and relations are kept)."""
    import h5py

    with h5py.File(os.path.join(raw_dir, "VG-SGG.h5"), "r") as f:
        split = f["split"][:]
        first_box, last_box = f["img_to_first_box"][:], f["img_to_last_box"][:]
        first_rel, last_rel = f["img_to_first_rel"][:], f["img_to_last_rel"][:]
        rels = f["relationships"][:]
    out = dict(objects=0, objects_beyond_limits=0, relations=0, relations_beyond_limits=0)
    for i in np.flatnonzero((split == 2) & (first_rel >= 0)):
        g = last_box[i] - first_box[i] + 1
        r = rels[first_rel[i]:last_rel[i] + 1] - first_box[i]
        kept = min(int(((r[:, 0] < max_objects) & (r[:, 1] < max_objects)).sum()), max_relations)
        out["objects"] += g
        out["objects_beyond_limits"] += max(g - max_objects, 0)
        out["relations"] += len(r)
        out["relations_beyond_limits"] += len(r) - kept
    return out


@pytest.mark.slow
def test_end_to_end_main_scores_the_full_ground_truth(cache_dir, tmp_path):
    """`main` trains the tiny preset (max_objects 8, max_relations 16: images beyond them) and
    scores PredCls / SGCls against every ground-truth object and relation: its recalls equal
    those of `python -m sgg_jax.evaluate` on the predictions it saved (ground truth read from the
    raw VG150 files) and of a NumPy count; the truncation counts equal a count on the h5 file."""
    workdir = tmp_path / "run"
    args = ["--config", os.path.join(REPO, "configs/imp.py:tiny"), "--workdir", str(workdir),
            f"--config.data.cache_dir={cache_dir}", "--config.train.data_parallel=1",
            "--config.loss.edge=dnorm", "--config.eval.save_predictions=True",
            "--config.eval.save_logits=True"]
    out = _main(args)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert set(results) == {"predcls", "sgcls", "msdn", "ground_truth"}
    config = load_config("imp", "tiny", **{"data.cache_dir": cache_dir})
    raw_dir = os.path.join(cache_dir, "synthetic-default-0-48-8-16-128")
    counts = _raw_truncation_counts(raw_dir, config.input.max_objects, config.input.max_relations)
    assert counts["relations_beyond_limits"] > 0  # the test is about images beyond the limits
    for key, value in counts.items():
        assert results["ground_truth"][key] == value, key
    assert f"{counts['relations_beyond_limits']} relations" in out.stdout

    from data_pipelines.vg150 import load_vg150
    from sgg_jax.evaluation.prediction_file import read_predictions

    gt = {int(r.image_id): dict(boxes=np.asarray(r.boxes, np.float64),
                                labels=np.asarray(r.labels), relations=np.asarray(r.relations))
          for r in load_vg150(raw_dir, "test", num_val_im=config.data.num_val_im)}
    zero_shot = tmp_path / "zero_shot.json"
    facts = json.loads((workdir / "dataset" / "facts.json").read_text())
    zero_shot.write_text(json.dumps(facts["zero_shot_triplets"]))
    for mode in ("predcls", "sgcls"):
        file = workdir / "predictions" / f"test_{mode}.h5"
        saved = read_predictions(file)
        assert sorted(int(i) for i in saved.image_ids) == sorted(gt)
        # eval.save_logits: the model's raw outputs, what SGP trains on (sgg_jax.sgp_offline)
        from sgg_jax.sgp_offline import load_saved

        offline = load_saved(str(file))
        for p, im in zip(saved.predictions, offline.images):
            seen = len(im["labels"])
            assert seen == min(len(p["labels"]), config.input.max_objects)
            if mode == "sgcls":  # the reported classes are the logits' best real class
                np.testing.assert_array_equal(p["labels"][:seen],
                                              np.argmax(im["obj_logits"][:, 1:], -1) + 1)
            assert im["rel_logits"].shape == (len(p["rel_pairs"]), offline.num_predicates + 1)
        for k in (20, 50, 100):
            per_image = [_numpy_recall(gt[int(i)], p, k)
                         for i, p in zip(saved.image_ids, saved.predictions)]
            mean = 100 * np.mean([r for r in per_image if r is not None])
            np.testing.assert_allclose(results[mode][f"R@{k}"], mean, atol=1e-9, err_msg=mode)
        cli = _run_module("sgg_jax.evaluate", "--predictions", str(file), "--groundtruth", raw_dir,
                          "--mode", mode, "--zero-shot", str(zero_shot), "--statistics",
                          str(workdir / "dataset"), "--output", str(tmp_path / f"{mode}.json"))
        assert cli.returncode == 0, cli.stderr[-2000:]
        from_file = json.loads((tmp_path / f"{mode}.json").read_text())[mode]
        compared = [m for m in results[mode] if "@" in m]
        assert len(compared) > 30
        for metric in compared:
            assert from_file[metric] == pytest.approx(results[mode][metric], abs=1e-9,
                                                      nan_ok=True), (mode, metric)

    # Pictures of the first test images after training; --mode eval of the finished run with
    # another preset's config file uses the run's own config and reproduces the numbers.
    pictures = sorted(f for f in os.listdir(workdir / "pictures") if f.endswith(".png"))
    assert len(pictures) == 4 and all(f.startswith("sgcls_") for f in pictures)
    for f in pictures:
        os.remove(workdir / "pictures" / f)
    out2 = _main(["--config", os.path.join(REPO, "configs/imp.py"), "--workdir", str(workdir),
                  "--mode", "eval"])
    assert out2.returncode == 0, out2.stderr[-3000:]
    assert json.loads((workdir / "results.json").read_text()) == results
    assert sorted(f for f in os.listdir(workdir / "pictures") if f.endswith(".png")) == pictures
    assert any(f.startswith("events") for f in os.listdir(workdir / "tensorboard"))
    # A training field on the command line that differs from the run: refused, nothing runs.
    out3 = _main(args + ["--mode", "eval", "--config.model.hidden_dim=64"])
    assert out3.returncode == 2 and "model.hidden_dim=64" in out3.stderr
    assert "Traceback" not in out3.stderr


def _run_module(module, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_unknown_config_key_is_rejected(tmp_path):
    out = _main(["--config", os.path.join(REPO, "configs/imp.py:tiny"), "--workdir",
                 str(tmp_path), "--config.model.hiden_dim=3"], timeout=300)
    assert out.returncode != 0
    assert "hiden_dim" in out.stderr


def test_overrides_without_config_are_a_clear_error(tmp_path):
    """`--config.<field>` with no `--config`: one error line saying what to add, exit 2 (absl
    alone would call the flag unknown)."""
    out = _main(["--mode", "eval", "--workdir", str(tmp_path),
                 "--config.eval.save_predictions=True"], timeout=300)
    assert out.returncode == 2
    assert out.stderr.startswith("error: --config.<field> overrides need --config")
    assert len(out.stderr.strip().splitlines()) == 1


def test_eval_without_checkpoint_is_a_clear_error(cache_dir, tmp_path):
    out = _main(["--config", os.path.join(REPO, "configs/imp.py:tiny"), "--workdir",
                 str(tmp_path / "empty"), f"--config.data.cache_dir={cache_dir}",
                 "--mode", "eval"], timeout=600)
    assert out.returncode == 2
    assert "empty: does not exist" in out.stderr and "Traceback" not in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_processes(num_processes, devices, cache_dir, workdir, *extra):
    """Starts tests/multiprocess_train.py as processes 0..n-1 of a localhost job (one plain
    process when n is 1), each with `devices` emulated CPU devices."""
    port = _free_port()
    from conftest import FAST_COMPILE

    env = dict(os.environ,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}")
    procs = []
    for pid in range(num_processes):
        cmd = [sys.executable, os.path.join(REPO, "tests", "multiprocess_train.py"),
               "--cache-dir", cache_dir, "--workdir", str(workdir),
               "--coordinator", f"127.0.0.1:{port}", "--process-id", str(pid),
               "--num-processes", str(num_processes), *extra]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def _processes(num_processes, devices, cache_dir, workdir, *extra):
    """Runs a job of `_start_processes` to the end; every process must succeed."""
    procs = _start_processes(num_processes, devices, cache_dir, workdir, *extra)
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]


def _two_processes(cache_dir, workdir, *extra):
    """Processes 0 and 1 of a localhost job, 2 CPU devices each."""
    _processes(2, 2, cache_dir, workdir, *extra)


def _one_process_evaluation(multi_dir, out_dir):
    """The 2-process run's final parameters evaluated by this (single) process."""
    from sgg_jax import inference

    one = trainer.evaluate_run(inference.run_config(str(multi_dir), {
        "distributed.coordinator_address": "", "distributed.num_processes": 0,
        "distributed.process_id": -1, "eval.num_pictures": 0}), str(out_dir), str(multi_dir))
    return json.loads(json.dumps(one, allow_nan=True).replace("NaN", "null"))


def _assert_same_evaluation(two, one):
    """The same numbers, to the last digits of a sum taken in another order."""
    diff = {(m, k): (two[m][k], one[m][k]) for m in ("predcls", "sgcls") for k in one[m]
            if not isinstance(one[m][k], dict)
            and two[m].get(k) != pytest.approx(one[m][k], rel=1e-12)}
    assert two["predcls"]["per_predicate"]["recall"] == pytest.approx(
        one["predcls"]["per_predicate"]["recall"], rel=1e-12)
    assert not diff and {m for m in two if m in ("predcls", "sgcls", "msdn")} == \
        {m for m in one if m in ("predcls", "sgcls", "msdn")}, diff


@pytest.mark.slow
def test_two_processes_match_single_process(cache_dir, tmp_path):
    """Data parallelism across devices and processes: 2 processes x 2 CPU devices (gloo,
    localhost coordinator; one global mesh of 4 devices) train the parameters 1 process on 1
    device trains; the same job then evaluates them across the 2 processes, with the numbers
    one process gives. (A fresh evaluation-only job: the opt-in test below.)"""
    single = cached_run("rel1", tiny(cache_dir, **EQUIVALENCE, **{"train.data_parallel": 1}),
                        str(tmp_path / "single"))
    multi_dir = tmp_path / "multi"
    _two_processes(cache_dir, multi_dir, "--output", str(tmp_path / "params0.npz"), "--steps",
                   str(EQUIVALENCE["train.stages.relations.num_steps"]), "--metrics",
                   str(tmp_path / "metrics0.json"), "--evaluate")
    multi = dict(np.load(tmp_path / "params0.npz"))
    assert_trees_close(single, multi)
    two = json.loads((tmp_path / "metrics0.json").read_text())["eval"]
    _assert_same_evaluation(two, _one_process_evaluation(multi_dir, tmp_path / "one_eval"))


# N processes x M devices against 1 process x N*M devices for IMP and MSDN: minutes each on a
# 2-core machine (gloo collectives among 4 processes: ~10 s per tiny step there), so opt-in;
# the 2-process test above runs always.
MULTIPROCESS_ENV = "SGG_TEST_MULTIPROCESS"
multiprocess_opt_in = pytest.mark.skipif(
    os.environ.get(MULTIPROCESS_ENV) != "1",
    reason=f"minutes on a small machine: set {MULTIPROCESS_ENV}=1 to run")


@pytest.mark.slow
@multiprocess_opt_in
def test_a_fresh_two_process_evaluation_matches_one_process(cache_dir, tmp_path):
    """A finished run evaluated by a fresh 2-process job (distributed initialisation before
    anything touches the backend) gives the numbers of 1 process."""
    multi_dir = tmp_path / "multi"
    _two_processes(cache_dir, multi_dir, "--output", str(tmp_path / "params0.npz"), "--steps",
                   str(EQUIVALENCE["train.stages.relations.num_steps"]))
    _two_processes(cache_dir, multi_dir, "--eval")
    two = json.loads((multi_dir / "results.json").read_text())
    _assert_same_evaluation(two, _one_process_evaluation(multi_dir, tmp_path / "one_eval"))


def _job(cache_dir, workdir, num_processes, devices, model, out_dir):
    """(final parameters, logged training scalars) of the tiny `model`'s relations stage (4
    steps) trained by `num_processes` x `devices`, global batch = all the devices."""
    name = f"{model}-{num_processes}x{devices}"
    _processes(num_processes, devices, cache_dir, workdir, "--model", model,
               "--data-parallel", "-1", "--batch-size", str(num_processes * devices),
               "--steps", "4", "--output", str(out_dir / f"{name}.npz"),
               "--metrics", str(out_dir / f"{name}.json"))
    rows = json.loads((out_dir / f"{name}.json").read_text())["train"]
    return dict(np.load(out_dir / f"{name}.npz")), [
        (step, prefix, {k: v for k, v in vals.items() if k != "images_per_s"})
        for step, prefix, vals in rows]


@multiprocess_opt_in
@pytest.mark.parametrize("model, processes, devices", [("imp", 4, 2), ("msdn", 2, 2)])
def test_processes_match_one_process_with_all_devices(cache_dir, tmp_path, model, processes,
                                                      devices):
    """N processes x M CPU devices (gloo) train the same parameters and log the same training
    metrics (loss and every loss term, steps 2 and 4) as 1 process x N*M devices: the same
    global batches (each process reads its rows of them), gradients averaged over all devices.
    (Evaluation across processes: test_two_processes_match_single_process.)"""
    one_params, one_rows = _job(cache_dir, tmp_path / "one", 1, processes * devices, model,
                                tmp_path)
    multi_params, multi_rows = _job(cache_dir, tmp_path / "multi", processes, devices, model,
                                    tmp_path)
    assert_trees_close(one_params, multi_params)
    assert [r[:2] for r in one_rows] == [r[:2] for r in multi_rows] == [
        (2, "relations/"), (4, "relations/")]
    for (step, _, a), (_, _, b) in zip(one_rows, multi_rows):
        assert len(a) > 1 and a.keys() == b.keys(), (a.keys(), b.keys())
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (step, k)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_lost_process_stops_the_others_with_an_error(cache_dir, tmp_path, how):
    """A process killed mid-run (its sockets close) or stopped (a hung or unreachable host: no
    heartbeats, connections left open) makes the other exit with JAX's distributed-service
    error within seconds (config.distributed.heartbeat_timeout_s=5) instead of waiting in the
    next collective for ever."""
    import signal
    import time

    workdir = tmp_path / "run"
    procs = _start_processes(2, 2, cache_dir, workdir, "--data-parallel", "-1",
                             "--steps", "1000", "--heartbeat", "5",
                             "--output", str(tmp_path / "p.npz"))
    try:
        # the run is set up (its config.json written, after jax.distributed.initialize and
        # the data) and compiling or training: killing earlier than a few steps in saves the
        # compile of both processes, and the survivor's coordination client reacts the same
        first = workdir / "config.json"
        deadline = time.monotonic() + 600
        while not first.exists() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), procs[0].communicate()[0][-3000:]
            time.sleep(0.5)
        assert first.exists()
        os.kill(procs[1].pid, getattr(signal, how))
        start = time.monotonic()
        out = procs[0].communicate(timeout=120)[0]
        elapsed = time.monotonic() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode != 0
    assert elapsed < 5 + 30, elapsed  # the heartbeat timeout and a margin for a busy machine
    assert "another task died" in out or "Connection reset by peer" in out, out[-3000:]
    if how == "SIGSTOP":
        assert "stopped sending heartbeats" in out, out[-3000:]
    assert not (workdir / "checkpoints" / "relations" / "1000").exists()


def test_non_trainable_collections_reach_the_model():
    """Frozen statistics (a `batch_stats` collection, as ResNet-50's frozen BN) are passed to
    apply by both the train step and the evaluation step."""
    import flax.errors
    import flax.linen as nn
    import jax.numpy as jnp
    import optax

    from data_pipelines.batch import Batch
    from sgg_jax.models.interface import ModelOutputs
    from sgg_jax.training.eval_loop import make_score_step
    from sgg_jax.training.steps import TrainState, make_relation_step

    class Scaled(nn.Module):
        @nn.compact
        def __call__(self, inputs, train=False):
            shift = self.variable("batch_stats", "shift", lambda: jnp.zeros(())).value
            w = self.param("w", nn.initializers.ones, ())
            b, o = inputs.boxes.shape[:2]
            m = inputs.pairs.shape[1]
            obj = jnp.zeros((b, o, 3)) + w + shift
            rel = jnp.zeros((b, m, 4)).at[..., 1].set(w + shift)
            return ModelOutputs(obj_logits=obj, rel_logits=rel)

    b, o, r = 2, 3, 2
    batch = Batch(images=jnp.zeros((b, 8, 8, 3), jnp.uint8), image_sizes=jnp.full((b, 2), 8),
                  scales=jnp.ones((b,)), image_ids=jnp.arange(b),
                  boxes=jnp.tile(jnp.array([0.0, 0.0, 4.0, 4.0]), (b, o, 1)),
                  labels=jnp.ones((b, o), jnp.int32), box_mask=jnp.ones((b, o), bool),
                  relations=jnp.tile(jnp.array([0, 1, 1]), (b, r, 1)),
                  rel_mask=jnp.ones((b, r), bool), region_boxes=jnp.zeros((b, 1, 4)),
                  region_tokens=jnp.zeros((b, 1, 2), jnp.int32),
                  region_mask=jnp.zeros((b, 1), bool))
    model = Scaled()
    state_vars = {"batch_stats": {"shift": jnp.asarray(5.0)}}
    scored = make_score_step(model, "sgcls", state_vars)({"w": jnp.asarray(1.0)}, batch)
    rel = np.asarray(scored["rel_scores"])[0, 0]
    expected = np.exp([0.0, 6.0, 0.0, 0.0])  # logit of predicate 1 is w + shift = 6
    np.testing.assert_allclose(rel, expected / expected.sum(), rtol=1e-5)
    optimizers = {"main": (optax.sgd(0.1), ["w"])}
    config = load_config("imp", "tiny", **{"loss.edge": "baseline", "sampling.num_rels": 4,
                                           "sampling.fg_fraction": 0.5})
    step = make_relation_step(model, optimizers, {"main": ("relation",)}, config=config,
                              model_losses={}, relation_params=lambda p: p,
                              model_state=state_vars)
    _, metrics = step(TrainState.create({"w": jnp.asarray(1.0)}, optimizers), batch,
                      jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    # Without the collection the model cannot run: flax's error for an absent collection.
    with pytest.raises(flax.errors.ScopeCollectionNotFound,
                       match='Tried to access "shift" from collection "batch_stats"'):
        make_score_step(model, "sgcls")({"w": jnp.asarray(1.0)}, batch)


def test_restore_params_takes_a_subset_whatever_the_optimizer(tmp_path):
    """Evaluation restores only the parameters its model has (an eval without SGDet skips the
    saved detector) and does not depend on the optimizer state that was saved with them."""
    import optax

    from sgg_jax.training.checkpointing import StageCheckpointer, abstract_like
    from sgg_jax.training.steps import TrainState

    rng = np.random.default_rng(0)
    params = {"detector": {"w": jax.numpy.asarray(rng.normal(size=(3, 4)), jax.numpy.float32)},
              "head": {"w": jax.numpy.asarray(rng.normal(size=(4, 2)), jax.numpy.float32),
                       "b": jax.numpy.asarray(rng.normal(size=(2,)), jax.numpy.float32)}}
    ckpt = StageCheckpointer(str(tmp_path / "stage"))
    ckpt.save(7, TrainState.create(params, optax.adam(1e-3)), None, dict(step=7))
    ckpt.wait()
    wanted = {"head": jax.tree.map(jax.numpy.zeros_like, params["head"])}
    got = ckpt.restore_params(7, abstract_like(wanted))
    assert set(got) == {"head"}
    for k in ("w", "b"):
        np.testing.assert_array_equal(np.asarray(got["head"][k]), np.asarray(params["head"][k]))
    with pytest.raises(ValueError, match=str(tmp_path / "stage")):
        ckpt.restore_params(7, abstract_like({"other": params["head"]}))
    with pytest.raises(ValueError, match="do not match"):  # another size
        ckpt.restore_params(7, abstract_like({"head": {"w": params["head"]["w"][:3]}}))
    ckpt.close()
