"""Evaluation of a run over a split: jitted scoring on device, ranking and matching on host with
`sgg_jax.evaluation.SGGEvaluator`, against the split's full ground truth.

Only small arrays leave the device: per image the object labels and scores and the softmaxed
predicate scores of every ordered pair. Each image is scored against all of its ground-truth
objects and relations, read from the dataset (`PreparedDataset.ground_truth`), not from the
padded batch: objects beyond `input.max_objects` (and the relations touching them) and
relations beyond `input.max_relations` were never shown to the model in PredCls / SGCls and
count as misses, as in neural-motifs. How many there were is reported
(`results["ground_truth"]`, and in the printed table).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from data_pipelines.batch import Batch, detector_view, rescale
from sgg_jax import relation_sampling, scene_graph
from sgg_jax.evaluation import DetectionEvaluator, SGGEvaluator
from sgg_jax.evaluation.prediction_file import write_predictions
from sgg_jax.ops.np_boxes import box_iou
from sgg_jax.models import postprocess
from sgg_jax.models.interface import ModelInputs
from sgg_jax.models.registry import DETECTION_MODE, DETECTOR_GROUP
from sgg_jax.training import data as data_lib
from sgg_jax.training import mesh as mesh_lib
from sgg_jax.training import detections, optim, pictures as pictures_lib, reporting
from sgg_jax.training.steps import model_inputs

log = logging.getLogger("sgg_jax")


# ----------------------------------------------------------------------------------------------
# Jitted steps


def make_score_step(model: nn.Module, mode: str, model_state: dict | None = None,
                    logits: bool = False) -> Callable:
    """(relation params, batch) -> per-image labels, scores and predicate probabilities of all
    ordered pairs of the batch's boxes (`logits`: also the model's raw `obj_logits` and
    `rel_logits`).

    `model_state`: the model's non-trainable collections (e.g. frozen batch-norm statistics)."""
    model_state = dict(model_state or {})

    def score(params: Any, batch: Batch) -> dict[str, jax.Array]:
        num_obj = batch.boxes.shape[1]
        pairs, pair_mask = relation_sampling.all_pairs(batch.box_mask, num_obj * (num_obj - 1))
        outputs = model.apply({"params": params, **model_state},
                              model_inputs(batch, pairs, pair_mask), train=False)
        scored = postprocess.predict_scores(outputs, mode, labels=batch.labels)
        out = dict(labels=scored["obj_labels"], scores=scored["obj_scores"], pairs=pairs,
                   pair_mask=pair_mask, rel_scores=scored["rel_scores"])
        if logits:
            out.update(obj_logits=outputs.obj_logits.astype(jnp.float32),
                       rel_logits=outputs.rel_logits.astype(jnp.float32))
        return out

    return score


def detection_pairs(boxes: jax.Array, valid: jax.Array, must_overlap: bool = False
                    ) -> tuple[jax.Array, jax.Array]:
    """SGDet candidate pairs: every ordered pair (i, j), i != j, of valid detections.

    boxes [B, D, 4], valid [B, D] -> pairs [B, D*(D-1), 2], pair_mask [B, D*(D-1)], real pairs
    first (padding is (0, 0), masked). `must_overlap` keeps only pairs whose boxes intersect
    with positive area (neural-motifs' SGDet `must_overlap`); the shape stays fixed.
    """
    d = boxes.shape[1]
    pairs, mask = relation_sampling.all_pairs(valid, d * (d - 1))
    if must_overlap:
        subj = jnp.take_along_axis(boxes, pairs[..., 0:1], axis=1)
        obj = jnp.take_along_axis(boxes, pairs[..., 1:2], axis=1)
        iw = jnp.minimum(subj[..., 2], obj[..., 2]) - jnp.maximum(subj[..., 0], obj[..., 0])
        ih = jnp.minimum(subj[..., 3], obj[..., 3]) - jnp.maximum(subj[..., 1], obj[..., 1])
        mask = mask & (iw > 0) & (ih > 0)
        order = jnp.argsort(~mask, axis=-1, stable=True)
        pairs = jnp.take_along_axis(pairs, order[..., None], axis=1)
        mask = jnp.take_along_axis(mask, order, axis=1)
        pairs = jnp.where(mask[..., None], pairs, 0)
    return pairs, mask


def make_sgdet_step(exp: Any) -> Callable:
    """(params, images [B,S,S,3] uint8, image_sizes [B,2], detector_images=None,
    detector_image_sizes=None) -> SGDet predictions (jittable).

    The run's detector (params["detector"]) gives D boxes per image (on `detector_images`, its
    own canvas, when given: a reused detector trained at another size; its boxes are then
    scaled to the model's canvas); they become the relation
    model's boxes (box_mask = valid detections, real ones first) and every ordered pair of them
    a candidate (`detection_pairs`, `config.eval.sgdet_must_overlap`). The relation model sees
    the detector's labels as `ModelInputs.labels` (a statistics lookup can index with them) and its
    class distributions as `ModelInputs.obj_dists`. Object labels and scores come from the
    detector (`config.eval.sgdet_object_source="detector"`) or from the relation model
    (`"model"`: its own labels, else the argmax over 1..C and its probability). The model's
    SGDet hooks (`ModelSpec.sgdet`) may add inputs (e.g. caption-region proposals) and
    outputs, and move the boxes with a box-refinement head (`config.eval.sgdet_refine_boxes`).

    Returns boxes [B,D,4] (canvas pixels), box_mask, labels, scores [B,D], pairs [B,M,2],
    pair_mask [B,M], rel_scores [B,M,P+1] (softmax, 0 = no relation), the detector's own
    det_boxes [B,D,4] / det_labels / det_scores [B,D] (for its box mAP), and what the hooks add
    (region_boxes [B,Q,4], region_mask, region_scores [B,Q], captions [B,Q,L]).
    """
    cfg = exp.config
    detector, model = exp.detector(), exp.model("sgdet")
    detector_state, model_state = dict(exp.detector_state), dict(exp.model_state)
    object_source = str(cfg.eval.get("sgdet_object_source", "detector"))
    must_overlap = bool(cfg.eval.get("sgdet_must_overlap", False))
    hooks = exp.spec.sgdet(exp) if exp.spec.sgdet is not None else None

    def step(params: Any, images: jax.Array, image_sizes: jax.Array,
             detector_images: jax.Array | None = None,
             detector_image_sizes: jax.Array | None = None) -> dict[str, jax.Array]:
        dets, (det_images, det_sizes, det_scale) = detections.detect(
            detector, detector_state, params[DETECTOR_GROUP], images, image_sizes,
            detector_images, detector_image_sizes)
        boxes, valid = dets.boxes, dets.valid
        det_labels, det_scores = dets.labels, dets.scores
        pairs, pair_mask = detection_pairs(boxes, valid, must_overlap)
        extra_inputs, extra_out = {}, {}
        if hooks is not None and hooks.extra_inputs is not None:
            extra_inputs, extra_out = hooks.extra_inputs(params, det_images, det_sizes,
                                                         det_scale)
        inputs = ModelInputs(images=images, image_sizes=image_sizes, boxes=boxes, box_mask=valid,
                             labels=det_labels, pairs=pairs, pair_mask=pair_mask,
                             obj_dists=dets.class_dists,
                             **extra_inputs)
        outputs = model.apply({"params": exp.relation_params(params), **model_state}, inputs,
                              train=False)
        scored = postprocess.predict_scores(outputs, "sgdet")
        if object_source == "detector":
            labels, scores = det_labels, det_scores
        else:
            labels = jnp.where(valid, scored["obj_labels"], 0)
            scores = jnp.where(valid, scored["obj_scores"], 0.0)
        out = dict(boxes=boxes, box_mask=valid, labels=labels, scores=scores, pairs=pairs,
                   pair_mask=pair_mask, rel_scores=scored["rel_scores"], det_boxes=boxes,
                   det_labels=det_labels, det_scores=det_scores, **extra_out)
        if hooks is not None and hooks.finish is not None:
            out = hooks.finish(out, outputs, image_sizes)
        return out

    return step


GIVEN_BOX_MODES = ("predcls", "sgcls")


def make_given_boxes_step(exp: Any, mode: str) -> Callable:
    """(params, images, image_sizes, boxes [B,G,4] canvas pixels, box_mask [B,G], labels [B,G]
    (PredCls: the given classes; SGCls: ignored, the model classifies), detector_images=None,
    detector_image_sizes=None) -> the `make_sgdet_step` outputs for boxes someone else found
    (jittable). Every ordered pair of given boxes is a candidate; the boxes come back as given
    (a box-refinement head does not move them). A model whose SGDet hooks add inputs (caption
    regions proposed from the image) gets them here too; the detector group is needed then."""
    if mode not in GIVEN_BOX_MODES:
        raise ValueError(f"given boxes: mode must be one of {GIVEN_BOX_MODES}, got {mode!r}")
    model, model_state = exp.model(mode), dict(exp.model_state)
    hooks = exp.spec.sgdet(exp) if exp.spec.sgdet is not None else None

    def step(params: Any, images: jax.Array, image_sizes: jax.Array, boxes: jax.Array,
             box_mask: jax.Array, labels: jax.Array, detector_images: jax.Array | None = None,
             detector_image_sizes: jax.Array | None = None) -> dict[str, jax.Array]:
        num_obj = boxes.shape[1]
        pairs, pair_mask = relation_sampling.all_pairs(box_mask, num_obj * (num_obj - 1))
        labels = jnp.where(box_mask, labels, 0).astype(jnp.int32)
        extra_inputs, extra_out = {}, {}
        if hooks is not None and hooks.extra_inputs is not None:
            det_images, det_sizes, det_scale = detector_view(
                images, image_sizes, detector_images, detector_image_sizes)
            extra_inputs, extra_out = hooks.extra_inputs(params, det_images, det_sizes,
                                                         det_scale)
        inputs = ModelInputs(images=images, image_sizes=image_sizes, boxes=boxes,
                             box_mask=box_mask,
                             labels=labels if mode == "predcls" else jnp.zeros_like(labels),
                             pairs=pairs, pair_mask=pair_mask, **extra_inputs)
        outputs = model.apply({"params": exp.relation_params(params), **model_state}, inputs,
                              train=False)
        scored = postprocess.predict_scores(outputs, mode, labels=labels)
        out = dict(boxes=boxes, box_mask=box_mask,
                   labels=jnp.where(box_mask, scored["obj_labels"], 0),
                   scores=jnp.where(box_mask, scored["obj_scores"], 0.0), pairs=pairs,
                   pair_mask=pair_mask, rel_scores=scored["rel_scores"], **extra_out)
        if hooks is not None and hooks.finish is not None:
            out = hooks.finish(out, outputs, image_sizes)
        out["boxes"] = boxes  # as given
        return out

    return step


# ----------------------------------------------------------------------------------------------
# Host side: ground truth, predictions, counts


def make_evaluators(mode: str, protocols: Sequence[str], num_predicates: int, *,
                    ks: tuple[int, ...], zero_shot_triplets: np.ndarray | None = None,
                    triplet_counts: np.ndarray | None = None
                    ) -> dict[tuple[str, str], SGGEvaluator]:
    """{(protocol, mode): SGGEvaluator} for one evaluated mode, all fed the same predictions.

    SGDet adds phrase detection ("phrdet": a triplet matches when its subject-object union box
    has IoU >= 0.5 with the ground truth's), scored from the same SGDet predictions. Zero- and
    few-shot recall exist only in the motifs protocol, so only its evaluators get the tables.
    """
    scored_modes = (mode, "phrdet") if mode == "sgdet" else (mode,)
    out = {}
    for m in scored_modes:
        for protocol in protocols:
            motifs = protocol == "motifs"
            out[(protocol, m)] = SGGEvaluator(
                m, num_predicates, ks=ks, protocol=protocol,
                zero_shot_triplets=zero_shot_triplets if motifs else None,
                triplet_counts=triplet_counts if motifs else None)
    return out


@dataclasses.dataclass
class GroundTruthCounts:
    """How much of the evaluated images' ground truth lay beyond the input limits (never shown
    to the model in PredCls / SGCls, scored as misses)."""

    images: int = 0
    images_truncated: int = 0
    objects: int = 0
    objects_beyond_limits: int = 0
    relations: int = 0
    relations_beyond_limits: int = 0

    def add(self, gt: dict, objects_seen: int, relations_seen: int) -> None:
        g, r = len(gt["labels"]), len(gt["relations"])
        self.images += 1
        self.objects += g
        self.relations += r
        self.objects_beyond_limits += g - objects_seen
        self.relations_beyond_limits += r - relations_seen
        self.images_truncated += int(g > objects_seen or r > relations_seen)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def batch_to_examples(batch: Batch, scored: dict[str, np.ndarray], ground_truth: Any,
                      predcls: bool = False) -> Iterable[tuple[dict, dict, int]]:
    """Yields (groundtruth, prediction, row) for the real images of a host-side batch.

    The ground truth is the image's full annotation (`ground_truth[image_id]`, original pixels).
    PredCls / SGCls (`predcls`:
    PredCls) predictions are on the ground-truth boxes: the model saw the image's first
    objects, and those beyond the limits get score 0 and no pair; SGDet's (`scored` has "boxes" and "box_mask") on the detections, whose real entries
    come first so that pair indices hold, mapped back to original pixels (canvas / scale).
    """
    for b in range(batch.images.shape[0]):
        if batch.image_ids[b] < 0:
            continue
        gt = ground_truth[int(batch.image_ids[b])]
        seen = int(np.asarray(batch.box_mask[b], bool).sum())
        if not np.array_equal(gt["labels"][:seen], np.asarray(batch.labels[b][:seen])):
            raise ValueError(f"image {int(batch.image_ids[b])}: the batch's objects are not the "
                             "first objects of its ground truth (dataset and loader disagree)")
        scale = float(batch.scales[b])
        pm = np.asarray(scored["pair_mask"][b], bool)
        if "boxes" in scored:
            obj = np.asarray(scored["box_mask"][b], bool)
            pred_boxes = np.asarray(scored["boxes"][b][obj], np.float64) / scale
            labels = np.asarray(scored["labels"][b][obj], np.int64)
            scores = np.asarray(scored["scores"][b][obj], np.float64)
        else:
            # The evaluator takes one prediction per ground-truth box; the objects beyond the
            # limits were not predicted: score 0, in no pair (their label, the ground truth's
            # in PredCls and 1 in SGCls, is a placeholder that no triplet reads).
            obj = np.arange(batch.box_mask.shape[1]) < seen
            unseen = len(gt["labels"]) - seen
            pred_boxes = gt["boxes"]
            labels = np.concatenate([np.asarray(scored["labels"][b][obj], np.int64),
                                     gt["labels"][seen:] if predcls else np.ones(unseen,
                                                                                 np.int64)])
            scores = np.concatenate([np.asarray(scored["scores"][b][obj], np.float64),
                                     np.zeros(unseen)])
        pred = dict(boxes=pred_boxes, labels=labels, scores=scores,
                    rel_pairs=np.asarray(scored["pairs"][b][pm], np.int64),
                    rel_scores=np.asarray(scored["rel_scores"][b][pm], np.float64))
        if "obj_logits" in scored and "boxes" not in scored:  # raw outputs (eval.save_logits)
            seen_logits = np.asarray(scored["obj_logits"][b][obj], np.float32)
            pred["obj_logits"] = np.concatenate(
                [seen_logits, np.zeros((len(gt["labels"]) - seen, seen_logits.shape[1]),
                                       np.float32)])
            pred["rel_logits"] = np.asarray(scored["rel_logits"][b][pm], np.float32)
            pred["image_size"] = np.asarray(batch.image_sizes[b], np.float32) / scale
        if "det_labels" in scored:
            pred["det_boxes"] = np.asarray(scored["det_boxes"][b][obj], np.float64) / scale
            pred["det_labels"] = np.asarray(scored["det_labels"][b][obj], np.int64)
            pred["det_scores"] = np.asarray(scored["det_scores"][b][obj], np.float64)
        yield gt, pred, b


def gather_to_host(tree: Any) -> Any:
    """Global (possibly multi-process) arrays -> full numpy arrays on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def _batches(exp: Any, split: str, desc: str) -> Iterable[tuple[Any, Batch]]:
    """(global batch on the mesh, the same batch gathered on the host) over a split."""
    for host_batch in tqdm(data_lib.eval_loader(exp.config, exp.data, exp.mesh, split),
                           desc=desc, unit="batch", disable=jax.process_index() != 0,
                           dynamic_ncols=True):
        batch = mesh_lib.to_global(host_batch, exp.mesh)
        yield batch, gather_to_host(batch)


# ----------------------------------------------------------------------------------------------
# The evaluation of a run


def evaluate(exp: Any, params: Any, split: str | None = None, num_pictures: int = 0,
             mode_params: Mapping[str, Any] | None = None,
             evaluated_with: Mapping[str, str] | None = None,
             modes: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluates every configured mode on a split; returns the results.json dict.

    Layout (docs/architecture.md): results[mode] = the neural-motifs protocol's metrics,
    results["msdn"][mode] = the MSDN / F-Net protocol's (per `config.eval.protocols`). With
    SGDet, the same pass (no second model run) also feeds phrase detection (results["phrdet"],
    results["msdn"]["phrdet"]) and the detector's COCO mAP (pycocotools):
    results["detection"] = {"AP", "AP50", "AP75", "num_images"} (percent).
    results["ground_truth"]: the evaluated images' ground-truth counts and how many objects and
    relations lay beyond the input limits (`GroundTruthCounts`). The model's extra evaluations
    (`ModelSpec.evaluations`, e.g. "captions") are stored under their names.
    `num_pictures` > 0 draws the first N images of the most complete mode into
    <workdir>/pictures (process 0). With `config.eval.save_predictions` each mode's predictions
    are also written to <workdir>/predictions/<split>_<mode>.h5 (sgg_jax.evaluation
    .prediction_file; `python -m sgg_jax.evaluate` reads them).
    `mode_params` gives some modes other parameters (PredCls / SGCls of a run whose last stage
    refined the model on detections: `experiment.mode_params`); `evaluated_with` ({mode: stage
    name}) is stored as results["evaluated_with"]. `modes` evaluates only those (a plateau
    stage's validation), without the model's extra evaluations.
    """
    cfg = exp.config
    split = split or cfg.eval.split
    protocols = reporting.parse_protocols(cfg.eval.get("protocols", "motifs,msdn"))
    extras = exp.spec.evaluations if modes is None else ()
    modes = list(modes) if modes is not None else optim.split_list(cfg.eval.modes)
    picture_mode = pictures_lib.picture_mode(modes) if num_pictures > 0 else None
    if jax.process_index() != 0:
        picture_mode = None
    ground_truth = exp.data.ground_truth(split)
    limit = int(cfg.eval.max_images)
    save = bool(cfg.eval.get("save_predictions", False)) and jax.process_index() == 0
    save_logits = bool(cfg.eval.get("save_logits", False))
    shown: list[pictures_lib.Example] = []
    results: dict[str, Any] = {}
    counts = None
    for mode in modes:
        if mode == DETECTION_MODE:
            results["detection"] = evaluate_detector(
                exp, params, split, shown if mode == picture_mode else None, num_pictures)
            continue
        evaluators = make_evaluators(
            mode, protocols, exp.facts.num_predicates, ks=tuple(cfg.eval.ks),
            zero_shot_triplets=exp.facts.zero_shot_triplets,
            triplet_counts=exp.facts.triplet_counts())
        det_evaluator = refined_evaluator = None
        if mode == "sgdet":
            sgdet = make_sgdet_step(exp)
            score = jax.jit(lambda p, batch: sgdet(p, batch.images, batch.image_sizes,
                                                   batch.detector_images,
                                                   batch.detector_image_sizes))
            det_evaluator = DetectionEvaluator(exp.facts.num_classes)
            if cfg.eval.get("sgdet_refine_boxes", False):
                refined_evaluator = DetectionEvaluator(exp.facts.num_classes)
        else:
            step = jax.jit(make_score_step(exp.model(mode), mode, exp.model_state,
                                           logits=save and save_logits))
            score = lambda p, batch, step=step: step(exp.relation_params(p), batch)
        mode_counts = GroundTruthCounts()
        written: list[tuple[int, dict]] = []
        seen = 0
        these = (mode_params or {}).get(mode, params)
        for batch, full_batch in _batches(exp, split, f"eval[{mode}]"):
            if 0 <= limit <= seen:  # every process counts the same gathered images
                break
            scored = gather_to_host(score(these, batch))
            for gt, pred, row in batch_to_examples(full_batch, scored, ground_truth,
                                                   mode == "predcls"):
                if 0 <= limit <= seen:
                    break
                mode_counts.add(gt, int(np.asarray(full_batch.box_mask[row], bool).sum()),
                                int(np.asarray(full_batch.rel_mask[row], bool).sum()))
                if det_evaluator is not None:
                    det_evaluator.add(gt, dict(boxes=pred.pop("det_boxes"),
                                               labels=pred.pop("det_labels"),
                                               scores=pred.pop("det_scores")))
                    if refined_evaluator is not None:  # the boxes the scene graphs are scored on
                        refined_evaluator.add(gt, dict(boxes=pred["boxes"], labels=pred["labels"],
                                                       scores=pred["scores"]))
                for evaluator in evaluators.values():
                    evaluator.add(gt, pred)
                if save:
                    written.append((gt, pred))
                if mode == picture_mode and len(shown) < num_pictures:
                    shown.append(_picture_example(exp, split, len(shown), full_batch, row, gt,
                                                  pred, scored))
                seen += 1
        for (protocol, m), evaluator in evaluators.items():
            metrics = evaluator.compute()
            if protocol == "motifs":  # each predicate's recall (what mR@K averages)
                k = 50 if 50 in evaluator.ks else evaluator.ks[len(evaluator.ks) // 2]
                recall = evaluator.per_predicate_recall(k)
                metrics["per_predicate"] = {"K": k, "recall": {
                    name: float(r) for name, r in zip(exp.facts.idx_to_predicate[1:], recall)}}
            reporting.store_metrics(results, protocol, m, metrics)
        if det_evaluator is not None:
            results["detection"] = det_evaluator.compute()
            if refined_evaluator is not None:
                results["detection_refined"] = refined_evaluator.compute()
        if counts is None:
            counts = mode_counts
        if save:
            _save_predictions(exp, split, mode, written)
    if counts is not None:
        results["ground_truth"] = counts.as_dict()
    if shown:
        paths = pictures_lib.write_pictures(
            os.path.join(exp.workdir, "pictures"), picture_mode, shown, exp.facts.idx_to_label,
            exp.facts.idx_to_predicate, int(cfg.predict.top_relations))
        log.info("%d %s prediction pictures in %s", len(paths), picture_mode,
                 os.path.dirname(paths[0]))
    for name in extras:
        results[name] = EXTRA_EVALUATIONS[name](exp, params, split)
    if evaluated_with and len(set(evaluated_with.values())) > 1:
        results["evaluated_with"] = dict(evaluated_with)
    return results


def evaluate_detector(exp: Any, params: Any, split: str,
                      shown: list | None = None, num_pictures: int = 0) -> dict:
    """The detector alone ("detection" mode): COCO box AP / AP50 / AP75 and per-class AP
    (pycocotools) of its detections against each image's full ground truth; with `shown`,
    the first `num_pictures` images' detections are kept for pictures."""
    cfg = exp.config
    detector, state = exp.detector(), dict(exp.detector_state)
    def detect(p, b):
        images, sizes, scale = b.detector_view()
        dets = detector.apply({"params": p[DETECTOR_GROUP], **state}, images, sizes)
        return dets.replace(boxes=rescale(dets.boxes, scale))  # the model's canvas, as the batch

    detect = jax.jit(detect)
    ground_truth = exp.data.ground_truth(split)
    evaluator = DetectionEvaluator(exp.facts.num_classes)
    confusion = np.zeros((exp.facts.num_classes + 1,) * 2, np.int64)
    seen, limit = 0, int(cfg.eval.max_images)
    empty_pairs = np.zeros((0, 2), np.int64)
    empty_scores = np.zeros((0, exp.facts.num_predicates + 1))
    for batch, full in _batches(exp, split, f"eval[{DETECTION_MODE}]"):
        if 0 <= limit <= seen:
            break
        dets = gather_to_host(detect(params, batch))
        for b in range(full.images.shape[0]):
            if full.image_ids[b] < 0 or 0 <= limit <= seen:
                continue
            gt = ground_truth[int(full.image_ids[b])]
            valid = np.asarray(dets.valid[b], bool)
            pred = dict(boxes=np.asarray(dets.boxes[b][valid], np.float64) / float(full.scales[b]),
                        labels=np.asarray(dets.labels[b][valid], np.int64),
                        scores=np.asarray(dets.scores[b][valid], np.float64))
            evaluator.add(gt, pred)
            confusion += detection_confusion(gt, pred, exp.facts.num_classes)
            if shown is not None and len(shown) < num_pictures:
                shown.append(_picture_example(exp, split, len(shown), full, b, gt, dict(
                    pred, rel_pairs=empty_pairs, rel_scores=empty_scores), {}))
            seen += 1
    result = evaluator.compute()
    names = exp.facts.idx_to_label
    for row in result["per_class"]:
        row["name"] = names[row["class"]]
        row["missed"] = int(confusion[row["class"], 0])
    result["confusions"] = top_confusions(confusion, names)
    return result


def detection_confusion(gt: dict, pred: dict, num_classes: int, iou: float = 0.5
                        ) -> np.ndarray:
    """[C+1, C+1] counts of one image: for each ground-truth box (row = its class), the class of
    the best-scoring detection overlapping it at IoU >= `iou` (column), or 0 when none does."""
    out = np.zeros((num_classes + 1,) * 2, np.int64)
    if len(gt["labels"]) == 0:
        return out
    overlap = box_iou(gt["boxes"], pred["boxes"], convention="continuous") >= iou \
        if len(pred["labels"]) else np.zeros((len(gt["labels"]), 0), bool)
    scores = np.where(overlap, pred["scores"][None, :], -np.inf)
    for g, label in enumerate(gt["labels"]):
        found = overlap[g].any()
        out[label, int(pred["labels"][scores[g].argmax()]) if found else 0] += 1
    return out


def top_confusions(confusion: np.ndarray, names: Sequence[str], top: int = 10) -> list[dict]:
    """The most frequent (ground truth, detected as) class pairs of different classes, with
    their share of that class's ground-truth boxes."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    off[:, 0] = 0  # misses are reported per class
    rows = []
    for flat in np.argsort(-off, axis=None, kind="stable")[:top]:
        g, d = np.unravel_index(flat, off.shape)
        if off[g, d] == 0:
            break
        rows.append({"ground_truth": names[g], "detected_as": names[d], "count": int(off[g, d]),
                     "share": float(off[g, d] / max(confusion[g].sum(), 1))})
    return rows


def _save_predictions(exp: Any, split: str, mode: str, written: list[tuple[dict, dict]]) -> str:
    """The split's predictions with their ground truth (and, `eval.save_logits`, the model's
    raw outputs) in one file."""
    path = os.path.join(exp.workdir, "predictions", f"{split}_{mode}.h5")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    gts = [{k: gt[k] for k in ("boxes", "labels", "relations")} for gt, _ in written]
    write_predictions(path, [int(gt["image_id"]) for gt, _ in written],
                      [p for _, p in written], gts, metadata=dict(
        mode=mode, split=split, num_predicates=exp.facts.num_predicates,
        num_classes=exp.facts.num_classes, idx_to_label=list(exp.facts.idx_to_label),
        idx_to_predicate=list(exp.facts.idx_to_predicate), model=exp.config.model.name,
        max_objects=int(exp.config.input.max_objects), dataset=exp.config.data.name))
    log.info("%s predictions of %d images in %s", mode, len(written), path)
    return path


def _picture_example(exp: Any, split: str, index: int, batch: Any, row: int, gt: dict,
                     pred: dict, scored: dict) -> pictures_lib.Example:
    """A picture's inputs: the evaluator's dicts and the original image (the split's record
    `index`, which the eval loader reads in order, or the canvas content scaled back). When the
    step's output has region captions, also the top `config.predict.top_regions` predicted
    regions (NMS at `config.predict.region_nms`) with their captions and the ground-truth
    caption regions the model was given with their phrases (this image's rows only, decoded on
    the host)."""
    image_id = int(gt["image_id"])
    source = exp.data.sources[split]
    record = source[index] if index < len(source) else None
    scale = float(batch.scales[row])
    image = pictures_lib.original_image(record, image_id, batch.images[row],
                                        batch.image_sizes[row], scale)
    if "captions" not in scored:
        return pictures_lib.Example(image_id, gt, pred, image)
    words, pcfg = exp.facts.idx_to_word, exp.config.predict
    pred_regions = scene_graph.region_fields(
        scored["region_boxes"][row], scored["region_mask"][row], scored["region_scores"][row],
        scored["captions"][row], words, int(pcfg.get("top_regions", 5)), scale, image.size,
        float(pcfg.get("region_nms", 1.0)))
    # The ground-truth regions the model was given (the first input.max_regions), in order,
    # with their full phrases (scores 1).
    q = int(np.asarray(batch.region_mask[row], bool).sum())
    gt_regions = scene_graph.region_fields(
        gt["region_boxes"][:q] * scale, np.ones(q, bool), np.ones(q), gt["region_tokens"][:q],
        words, q, scale, image.size)
    return pictures_lib.Example(image_id, gt, pred, image, pred_regions, gt_regions)


# ----------------------------------------------------------------------------------------------
# Region captions: a separate pass, for models that declare the "captions" evaluation


def evaluate_captions(exp: Any, params: Any, split: str | None = None) -> dict:
    """Captions of the split's ground-truth caption regions ("given regions" protocol, all
    ordered object pairs as phrases) scored by corpus BLEU-4 against each region's full phrase
    (`sgg_jax.evaluation.captions.CaptionEvaluator`). Regions beyond `input.max_regions` are
    not given to the model, so they are not scored: `regions_beyond_limit` counts them."""
    from sgg_jax.evaluation.captions import CaptionEvaluator

    cfg = exp.config
    split = split or cfg.eval.split
    model, state = exp.model("sgcls"), exp.model_state
    ground_truth = exp.data.ground_truth(split)

    def captions(p, batch):
        o = batch.boxes.shape[1]
        pairs, pair_mask = relation_sampling.all_pairs(batch.box_mask, o * (o - 1))
        out = model.apply({"params": p, **state}, model_inputs(batch, pairs, pair_mask),
                          train=False)
        return out.aux["captions"]

    step = jax.jit(captions)
    evaluator = CaptionEvaluator(exp.facts.idx_to_word)
    seen, limit, beyond = 0, int(cfg.eval.max_images), 0
    relation_params = exp.relation_params(params)
    for batch, full in _batches(exp, split, "eval[captions]"):
        if 0 <= limit <= seen:
            break
        caps = gather_to_host(step(relation_params, batch))
        for b in range(caps.shape[0]):
            if full.image_ids[b] < 0 or 0 <= limit <= seen:
                continue
            gt = ground_truth[int(full.image_ids[b])]
            mask = np.asarray(full.region_mask[b], bool)
            q = int(mask.sum())
            beyond += len(gt["region_tokens"]) - q
            tokens = np.asarray(gt["region_tokens"], np.int32).reshape(len(gt["region_tokens"]),
                                                                       -1)[:q]
            evaluator.add(caps[b][:q], tokens, np.ones(q, bool))
            seen += 1
    result = evaluator.compute()
    result["regions_beyond_limit"] = beyond
    log.info("region captions (%s): BLEU-4 %.2f over %d regions (%d beyond input.max_regions, "
             "not scored)", result["setting"], result["BLEU-4"], result["num_regions"], beyond)
    return result


# Evaluations a model may declare in `ModelSpec.evaluations`.
EXTRA_EVALUATIONS: dict[str, Callable[[Any, Any, str | None], dict]] = {
    "captions": evaluate_captions,
}
