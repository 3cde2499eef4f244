"""What `eval_loop.evaluate` / `trainer.report` make of an evaluation: both protocols and phrase
detection in results.json, the printed tables, TensorBoard groups and the prediction pictures.

No model runs: the score steps are replaced by shape-only stand-ins and each image's prediction
is made on the host from its ground truth (a seeded perturbation), so the test checks the
wiring (which evaluator gets which predictions, where each number lands, what is drawn) against
`SGGEvaluator` run independently on the very predictions the trainer saw.
"""
from __future__ import annotations

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from data_pipelines import pipeline
from sgg_jax.evaluation import SGGEvaluator
from sgg_jax.scene_graph import SceneGraph
from sgg_jax.training import eval_loop, experiment, pictures, reporting, trainer
from training_utils import load_config

MODES = ("predcls", "sgcls", "sgdet")
NUM_PICTURES = 3
# The stand-in SGDet step's caption regions (an MSDN model's, canvas pixels): 3 real regions and
# a padding row with the best score, which the pictures must not show.
REGION_BOXES = np.array([[0, 0, 40, 30], [10, 20, 90, 100], [50, 50, 127, 127], [0, 0, 9, 9]],
                        np.float32)
REGION_MASK = np.array([True, True, True, False])
REGION_SCORES = np.array([0.2, 0.9, 0.6, 1.0], np.float32)
REGION_CAPTIONS = np.array([[1, 4, 5, 2, 0], [1, 6, 2, 9, 9], [1, 7, 8, 9, 2], [1, 4, 2, 0, 0]],
                           np.int32)


def _stand_in_outputs(b: int, n: int, p: int, code: int) -> dict:
    """Shape-correct outputs of a score / SGDet step (ignored: predictions are made on host)."""
    m = n * (n - 1)
    return dict(labels=jnp.zeros((b, n), jnp.int32), scores=jnp.zeros((b, n)),
                pairs=jnp.zeros((b, m, 2), jnp.int32), pair_mask=jnp.zeros((b, m), bool),
                rel_scores=jnp.zeros((b, m, p + 1)), mode_code=jnp.full((b,), code))


def synthetic_prediction(gt: dict, mode: str, num_classes: int, num_predicates: int) -> dict:
    """A deterministic, imperfect prediction of one image: the ground-truth predicate boosted
    on most true pairs; SGCls flips some labels; SGDet shifts the boxes (by up to 40% of their
    size, so some miss IoU 0.5 alone while the pair's union box still matches) and adds a
    spurious detection."""
    rng = np.random.default_rng((int(gt["image_id"]), MODES.index(mode)))
    boxes, labels = gt["boxes"].copy(), gt["labels"].copy()
    g = labels.shape[0]
    scores = np.ones(g)
    if mode != "predcls":
        flip = rng.random(g) < 0.25
        labels = np.where(flip, rng.integers(1, num_classes + 1, g), labels)
        scores = rng.uniform(0.2, 1.0, g)
    if mode == "sgdet":
        wh = boxes[:, 2:] - boxes[:, :2]
        shift = rng.uniform(-0.4, 0.4, (g, 2)) * wh
        boxes = boxes + np.concatenate([shift, shift], 1)
        boxes = np.concatenate([boxes, [[1.0, 1.0, 9.0, 9.0]]])
        labels, scores = np.r_[labels, 1], np.r_[scores, 0.9]
    n = labels.shape[0]
    pairs = np.array([(i, j) for i in range(n) for j in range(n) if i != j],
                     np.int64).reshape(-1, 2)
    rel = rng.uniform(0.0, 1.0, (pairs.shape[0], num_predicates + 1))
    for s, o, p in gt["relations"]:
        if rng.random() < 0.7:
            rel[(pairs[:, 0] == s) & (pairs[:, 1] == o), p] += rng.uniform(0.5, 3.0)
    rel /= rel.sum(1, keepdims=True)
    pred = dict(boxes=boxes, labels=labels, scores=scores, rel_pairs=pairs, rel_scores=rel)
    if mode == "sgdet":
        pred.update(det_boxes=boxes.copy(), det_labels=labels.copy(), det_scores=scores.copy())
    return pred


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """(exp, results, {mode: [(gt, pred)]} as the evaluators received them)."""
    cache = str(tmp_path_factory.mktemp("reporting_cache"))
    workdir = str(tmp_path_factory.mktemp("reporting_run"))
    config = load_config("imp", "tiny", **{"data.cache_dir": cache, "train.data_parallel": 1,
                                           "eval.modes": ",".join(MODES)})
    exp = experiment.setup(config, workdir)
    num_p, num_c = exp.facts.num_predicates, exp.facts.num_classes
    seen: dict[str, list] = {m: [] for m in MODES}
    real = eval_loop.batch_to_examples

    def score_step(model, mode, model_state=None, logits=False):
        return lambda params, batch: _stand_in_outputs(
            batch.boxes.shape[0], batch.boxes.shape[1], num_p, MODES.index(mode))

    def sgdet_step(exp_):
        def step(params, images, image_sizes, detector_images=None, detector_image_sizes=None):
            b = images.shape[0]
            out = _stand_in_outputs(b, 2, num_p, MODES.index("sgdet"))
            tile = lambda x: jnp.tile(jnp.asarray(x)[None], (b,) + (1,) * np.ndim(x))  # noqa
            return dict(out, boxes=jnp.zeros((b, 2, 4)), det_boxes=jnp.zeros((b, 2, 4)),
                        box_mask=jnp.zeros((b, 2), bool), det_labels=out["labels"],
                        det_scores=out["scores"], region_boxes=tile(REGION_BOXES),
                        region_mask=tile(REGION_MASK), region_scores=tile(REGION_SCORES),
                        captions=tile(REGION_CAPTIONS))
        return step

    def examples(batch, scored, ground_truth, predcls=False):
        mode = MODES[int(scored["mode_code"][0])]
        for gt, _, row in real(batch, scored, ground_truth, predcls):
            pred = synthetic_prediction(gt, mode, num_c, num_p)
            seen[mode].append((gt, dict(pred)))
            yield gt, pred, row

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eval_loop, "make_score_step", score_step)
        mp.setattr(eval_loop, "make_sgdet_step", sgdet_step)
        mp.setattr(eval_loop, "batch_to_examples", examples)
        results = eval_loop.evaluate(exp, {}, num_pictures=NUM_PICTURES)
    return exp, results, seen


def _independent(exp, mode, protocol, examples):
    motifs = protocol == "motifs"
    ev = SGGEvaluator(mode, exp.facts.num_predicates, ks=tuple(exp.config.eval.ks),
                      protocol=protocol,
                      zero_shot_triplets=exp.facts.zero_shot_triplets if motifs else None,
                      triplet_counts=exp.facts.triplet_counts() if motifs else None)
    for gt, pred in examples:
        ev.add(gt, pred)
    out = ev.compute()
    if motifs:  # each predicate's recall at K=50, by name
        names = exp.facts.idx_to_predicate[1:]
        out["per_predicate"] = {"K": 50, "recall": dict(zip(names, ev.per_predicate_recall(50)))}
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (_same(a[k], b[k]) if isinstance(a[k], dict) else a[k] == b[k])
        or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_results_hold_both_protocols_and_phrase_detection(evaluated):
    exp, results, seen = evaluated
    n_test = len(exp.data.sources["test"])
    assert set(results) == {"predcls", "sgcls", "sgdet", "phrdet", "detection", "msdn",
                            "ground_truth"}
    assert set(results["msdn"]) == {"predcls", "sgcls", "sgdet", "phrdet"}
    # One pass per mode: phrase detection reused the SGDet predictions.
    assert all(len(seen[m]) == n_test for m in MODES)
    for mode in ("predcls", "sgcls", "sgdet", "phrdet"):
        examples = seen["sgdet" if mode == "phrdet" else mode]
        for protocol, got in (("motifs", results[mode]), ("msdn", results["msdn"][mode])):
            assert got["protocol"] == protocol and got["mode"] == mode
            assert _same(got, _independent(exp, mode, protocol, examples)), (protocol, mode)
    # The data are informative: neither protocol is trivial, and phrase detection (union boxes)
    # forgives the shifted boxes that SGDet's per-box IoU rejects.
    assert 0 < results["sgdet"]["R@100"] < results["phrdet"]["R@100"] <= 100
    assert 0 < results["msdn"]["sgdet"]["R@100"] < results["msdn"]["phrdet"]["R@100"]
    assert results["msdn"]["predcls"]["R@50"] != results["predcls"]["R@50"]
    assert results["detection"]["num_images"] == n_test


def test_protocols_option(tmp_path):
    assert reporting.parse_protocols("msdn, motifs") == ("msdn", "motifs")
    for bad in ("", "motif", "motifs,vrd"):
        with pytest.raises(ValueError, match="eval.protocols"):
            reporting.parse_protocols(bad)
    config = load_config("imp", "tiny", **{"eval.protocols": "motifs,sgb"})
    with pytest.raises(ValueError, match="eval.protocols"):
        experiment.setup(config, str(tmp_path))


def test_report_tables_json_and_tensorboard_groups(evaluated, capsys):
    exp, results, _ = evaluated
    path = trainer.report(exp, results, name="results_test.json")
    text = capsys.readouterr().out
    motifs, _, msdn = text.partition("protocol: msdn")
    assert "protocol: motifs" in motifs and "few-shot" in motifs
    for mode in ("predcls", "sgcls", "sgdet", "phrdet"):
        row = next(line for line in motifs.splitlines() if line.startswith(mode + " "))
        assert f"{results[mode]['R@50']:.2f}" in row.split()
        row = next(line for line in msdn.splitlines() if line.startswith(mode + " "))
        assert f"{results['msdn'][mode]['predR@50']:.2f}" in row.split()
    assert "predR@50" in msdn.splitlines()[1] and "ngR@50" not in msdn
    with open(path) as f:
        assert _same(json.load(f)["msdn"]["phrdet"], results["msdn"]["phrdet"])
    groups = reporting.scalar_groups(results)
    assert set(groups) == {"predcls", "sgcls", "sgdet", "phrdet", "msdn_predcls", "msdn_sgcls",
                           "msdn_sgdet", "msdn_phrdet", "detection", "ground_truth"}
    assert groups["msdn_phrdet"]["R@50"] == results["msdn"]["phrdet"]["R@50"]
    assert "protocol" not in groups["sgdet"] and "AP50" in groups["detection"]


def test_pictures_draw_the_first_images_prediction_and_ground_truth(evaluated):
    exp, _, seen = evaluated
    directory = os.path.join(exp.workdir, "pictures")
    first = seen["sgdet"][:NUM_PICTURES]
    ids = [int(gt["image_id"]) for gt, _ in first]
    assert sorted(os.listdir(directory)) == sorted(
        f"sgdet_{i}{suffix}" for i in ids for suffix in (".png", ".json", "_gt.json"))
    source = exp.data.sources["test"]
    for k, (gt, pred) in enumerate(first):
        stem = os.path.join(directory, f"sgdet_{ids[k]}")
        with open(stem + ".json") as f:
            sg = SceneGraph.from_json(f.read())
        with open(stem + "_gt.json") as f:
            sg_gt = SceneGraph.from_json(f.read())
        # The drawn objects are the prediction's; the top relation is its best triplet.
        assert sorted(map(tuple, sg.boxes.tolist())) == sorted(
            map(tuple, np.round(pred["boxes"], 2).tolist()))
        assert sorted(sg.labels.tolist()) == sorted(pred["labels"].tolist())
        assert sg.names == [exp.data.idx_to_label[i] for i in sg.labels]
        fg = pred["rel_scores"][:, 1:]
        score = pred["scores"][pred["rel_pairs"]].prod(1) * fg.max(1)
        best = int(np.argmax(score))
        s, o = sg.rel_pairs[0]
        best_sub, best_obj = pred["rel_pairs"][best]
        np.testing.assert_allclose(sg.boxes[s], np.round(pred["boxes"][best_sub], 2))
        np.testing.assert_allclose(sg.boxes[o], np.round(pred["boxes"][best_obj], 2))
        assert sg.rel_predicates[0] == int(np.argmax(fg[best])) + 1
        assert len(sg.rel_scores) == min(exp.config.predict.top_relations, len(score))
        assert sg_gt.labels.tolist() == gt["labels"].tolist()
        assert np.c_[sg_gt.rel_pairs, sg_gt.rel_predicates].tolist() == gt["relations"].tolist()
        # The prediction's caption regions: the real ones by score, in original pixels, with
        # their decoded captions; the ground truth's: its caption regions and their phrases.
        words = exp.data.idx_to_word
        scale = pipeline.canvas_geometry((sg.width, sg.height), exp.config.input.image_size)[0]
        np.testing.assert_allclose(sg.region_scores, [0.9, 0.6, 0.2], atol=1e-6)
        np.testing.assert_allclose(sg.region_boxes, np.clip(
            REGION_BOXES[[1, 2, 0]] / scale, 0, [sg.width, sg.height] * 2), atol=0.01)
        assert sg.region_captions == [words[6], f"{words[7]} {words[8]} {words[9]}",
                                      f"{words[4]} {words[5]}"]
        record = source[k]
        reference = [(" ".join(words[t] for t in toks if t > 2), box)
                     for toks, box in zip(record["region_tokens"], record["region_boxes"])]
        # The regions the model was given: the first input.max_regions, in order, whole phrases.
        n_gt = min(len(reference), exp.config.input.max_regions)
        assert sg_gt.has_regions and len(sg_gt.region_captions) == n_gt > 0
        assert np.all(sg_gt.region_scores == 1)
        for caption, box, (c, b) in zip(sg_gt.region_captions, sg_gt.region_boxes, reference):
            assert caption == c and np.allclose(box, b, atol=0.02)
        # The PNG is the two graphs drawn on the original image, exactly as their JSON says.
        assert int(record["image_id"]) == ids[k]
        image = pictures.original_image(record, ids[k], None, None, 1.0)
        assert image.size == (sg.width, sg.height)
        with Image.open(stem + ".png") as png:
            assert png.format == "PNG"
            expected = pictures.render(sg, sg_gt, image, "sgdet")
            assert png.size == expected.size
            assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(expected))
        left = pictures.prediction_graph(pred, image, exp.data.idx_to_label,
                                         exp.data.idx_to_predicate, 20)
        assert left.draw(image).size[0] + pictures.GAP + sg_gt.draw(image).size[0] == \
            expected.size[0]


def test_picture_mode_prefers_the_most_complete_mode():
    assert pictures.picture_mode(["predcls", "sgcls", "sgdet"]) == "sgdet"
    assert pictures.picture_mode(["predcls", "sgcls"]) == "sgcls"
    assert pictures.picture_mode(["predcls"]) == "predcls"
    assert pictures.picture_mode(["phrdet"]) is None


def test_max_images_stops_running_the_model(tmp_path):
    """eval.max_images bounds both what is scored and how many batches go through the model."""
    config = load_config("imp", "tiny", **{
        "data.cache_dir": str(tmp_path / "cache"), "train.data_parallel": 1,
        "eval.modes": "predcls", "eval.max_images": 5})
    exp = experiment.setup(config, str(tmp_path / "run"))
    num_p, num_c = exp.facts.num_predicates, exp.facts.num_classes
    batches, scored_ids = [], []
    real = eval_loop.batch_to_examples

    class Recording(eval_loop.SGGEvaluator):
        def add(self, gt, pred):
            if self.protocol == "motifs":
                scored_ids.append(int(gt["image_id"]))
            return super().add(gt, pred)

    def score_step(model, mode, model_state=None, logits=False):
        return lambda params, batch: _stand_in_outputs(
            batch.boxes.shape[0], batch.boxes.shape[1], num_p, 0)

    def examples(batch, scored, ground_truth, predcls=False):
        batches.append(1)  # host side: once per batch the model ran on
        for gt, _, row in real(batch, scored, ground_truth, predcls):
            yield gt, synthetic_prediction(gt, "predcls", num_c, num_p), row

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eval_loop, "make_score_step", score_step)
        mp.setattr(eval_loop, "batch_to_examples", examples)
        mp.setattr(eval_loop, "SGGEvaluator", Recording)
        results = eval_loop.evaluate(exp, {})
    per_batch = int(config.input.eval_batch_size)
    assert len(batches) == -(-5 // per_batch) < -(-len(exp.data.sources["test"]) // per_batch)
    # Exactly the first five test images (file order), and nothing else, reached the evaluator.
    first = [int(exp.data.sources["test"][i]["image_id"]) for i in range(5)]
    assert scored_ids == first
    assert results["ground_truth"]["images"] == 5
    # The reported metrics are an evaluator's on exactly those five images: ground truth from
    # the split's annotations, predictions made again (they depend on the image id only).
    ground_truth = exp.data.ground_truth("test")
    examples = [(ground_truth[i], synthetic_prediction(ground_truth[i], "predcls", num_c, num_p))
                for i in first]
    for protocol, got in (("motifs", results["predcls"]), ("msdn", results["msdn"]["predcls"])):
        assert _same(got, _independent(exp, "predcls", protocol, examples)), protocol
        assert got["num_images"] == 5, protocol
