"""Evaluation of a relation model over a split: jitted scoring on device, ranking and matching on
host with `sgg_jax.evaluation.SGGEvaluator`.

Only small arrays leave the device: per image the object labels and scores and the softmaxed
predicate scores of every ordered pair. Ground truth is taken from the batch (original pixels =
canvas pixels / scale); objects beyond `input.max_objects` were dropped by the pipeline and are
counted in its statistics.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from data_pipelines.batch import Batch
from sgg_jax import relation_sampling
from sgg_jax.evaluation import SGGEvaluator
from sgg_jax.models import DETECTOR_GROUP, postprocess, relation_params
from sgg_jax.models.interface import ModelInputs
from sgg_jax.training.steps import model_inputs

OBJECT_SOURCES = ("detector", "model")


def make_score_step(model: nn.Module, mode: str, model_state: dict | None = None) -> Callable:
    """params, batch -> per-image labels, scores and predicate probabilities of all pairs.

    `model_state`: the model's non-trainable collections (e.g. frozen batch-norm statistics)."""
    model_state = dict(model_state or {})

    def score(params: Any, batch: Batch) -> dict[str, jax.Array]:
        num_obj = batch.boxes.shape[1]
        pairs, pair_mask = relation_sampling.all_pairs(batch.box_mask, num_obj * (num_obj - 1))
        outputs = model.apply({"params": relation_params(params), **model_state},
                              model_inputs(batch, pairs, pair_mask), train=False)
        scored = postprocess.predict_scores(outputs, mode, labels=batch.labels)
        return dict(labels=scored["obj_labels"], scores=scored["obj_scores"], pairs=pairs,
                    pair_mask=pair_mask, rel_scores=scored["rel_scores"])

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


def _real_first(valid: jax.Array) -> jax.Array:
    """Permutation [B, D] that moves valid entries first, keeping their order."""
    return jnp.argsort(~valid, axis=-1, stable=True)


def make_sgdet_step(detector: nn.Module, model: nn.Module, *, detector_state: dict | None = None,
                    model_state: dict | None = None, must_overlap: bool = False,
                    object_source: str = "detector",
                    propose_regions: Callable | None = None,
                    refine_boxes: bool = False) -> Callable:
    """(params, images [B,S,S,3] uint8, image_sizes [B,2]) -> SGDet predictions (jittable).

    The detector (params["detector"]) gives D boxes per image; they become the relation
    model's boxes (box_mask = valid detections, real ones first) and every ordered pair of them
    a candidate (`detection_pairs`). The relation model sees the detector's labels as
    `ModelInputs.labels` (FREQ indexes its table with them). Object labels and scores come
    from the detector (`object_source="detector"`) or from the relation model's object
    classifier on the detected boxes (`"model"`, argmax over 1..C and its probability).
    `propose_regions(params, images, image_sizes) -> (boxes [B,Q,4], scores [B,Q], valid [B,Q])`
    (MSDN's region RPN, `models.region_proposals.make_region_proposal_fn`) supplies the
    caption regions (`ModelInputs.region_boxes / region_mask`) of models that read them.
    `refine_boxes`: the returned object boxes are moved by the model's class-specific box
    head (aux["obj_box_deltas"], for each box's returned label) and the regions by its region
    box head (aux["region_deltas"]), and region scores become the model's region objectness
    (MSDN's heads; `models.msdn.refine_boxes`). Pairs and the model's features stay those of
    the boxes it was given.

    Returns boxes [B,D,4] (canvas pixels), box_mask, labels, scores [B,D], pairs [B,M,2],
    pair_mask [B,M], rel_scores [B,M,P+1] (softmax, 0 = no relation), and the detector's own
    det_boxes [B,D,4] / det_labels / det_scores [B,D] (for its box mAP). With `propose_regions` also region_boxes
    [B,Q,4], region_mask, region_scores [B,Q] and, when the model captions them, captions
    [B,Q,L] (token ids).
    """
    if object_source not in OBJECT_SOURCES:
        raise ValueError(f"config.eval.sgdet_object_source={object_source!r}: expected one of "
                         f"{OBJECT_SOURCES}")
    detector_state = dict(detector_state or {})
    model_state = dict(model_state or {})

    def step(params: Any, images: jax.Array, image_sizes: jax.Array) -> dict[str, jax.Array]:
        dets = detector.apply({"params": params[DETECTOR_GROUP], **detector_state}, images,
                              image_sizes)
        order = _real_first(dets.valid)
        take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)),
                                             axis=1)
        boxes, valid = take(dets.boxes), take(dets.valid)
        det_boxes = boxes  # the detector's own (for its box mAP), before any refinement
        det_labels = jnp.where(valid, take(dets.labels), 0).astype(jnp.int32)
        det_scores = jnp.where(valid, take(dets.scores), 0.0)
        pairs, pair_mask = detection_pairs(boxes, valid, must_overlap)
        regions = {}
        if propose_regions is not None:
            region_boxes, region_scores, region_mask = propose_regions(params, images,
                                                                       image_sizes)
            regions = dict(region_boxes=region_boxes, region_mask=region_mask)
        inputs = ModelInputs(images=images, image_sizes=image_sizes, boxes=boxes, box_mask=valid,
                             labels=det_labels, pairs=pairs, pair_mask=pair_mask, **regions)
        outputs = model.apply({"params": relation_params(params), **model_state}, inputs,
                              train=False)
        scored = postprocess.predict_scores(outputs, "sgdet")
        if object_source == "detector":
            labels, scores = det_labels, det_scores
        else:
            labels = jnp.where(valid, scored["obj_labels"], 0)
            scores = jnp.where(valid, scored["obj_scores"], 0.0)
        if refine_boxes:
            from sgg_jax.models.msdn import refine_boxes as refine

            if "obj_box_deltas" not in outputs.aux:
                raise ValueError("config.eval.sgdet_refine_boxes: this model has no box-"
                                 "refinement head (aux['obj_box_deltas']; MSDN has one)")
            boxes = jnp.where(valid[..., None], refine(boxes, outputs.aux["obj_box_deltas"],
                                                       image_sizes, labels), 0.0)
            if regions:
                region_boxes = jnp.where(region_mask[..., None], refine(
                    region_boxes, outputs.aux["region_deltas"], image_sizes), 0.0)
                region_scores = jnp.where(region_mask,
                                          jax.nn.sigmoid(outputs.aux["region_scores"]), 0.0)
                regions = dict(region_boxes=region_boxes, region_mask=region_mask)
        out = dict(boxes=boxes, box_mask=valid, labels=labels, scores=scores, pairs=pairs,
                   pair_mask=pair_mask, rel_scores=scored["rel_scores"],
                   det_boxes=det_boxes, det_labels=det_labels, det_scores=det_scores)
        if regions:
            out.update(regions, region_scores=region_scores)
            if "captions" in outputs.aux:
                out["captions"] = outputs.aux["captions"]
        return out

    return step


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


def batch_to_examples(batch: Batch, scored: dict[str, np.ndarray]) -> Iterable[tuple[dict, dict]]:
    """Yields (groundtruth, prediction) dicts for the real images of a host-side batch.

    Boxes go back to original pixels (canvas / scale) for ground truth and predictions alike;
    the ground truth also carries its `image_id`.
    PredCls / SGCls predict on the ground-truth boxes; SGDet (`scored` has "boxes" and
    "box_mask") on the detections, whose real entries come first so that pair indices hold.
    """
    for b in range(batch.images.shape[0]):
        if batch.image_ids[b] < 0:
            continue
        scale = float(batch.scales[b])
        obj = np.asarray(batch.box_mask[b], bool)
        boxes = np.asarray(batch.boxes[b][obj], np.float64) / scale
        rel = np.asarray(batch.relations[b][np.asarray(batch.rel_mask[b], bool)], np.int64)
        gt = dict(boxes=boxes, labels=np.asarray(batch.labels[b][obj], np.int64), relations=rel,
                  image_id=int(batch.image_ids[b]))
        pm = np.asarray(scored["pair_mask"][b], bool)
        if "boxes" in scored:
            obj = np.asarray(scored["box_mask"][b], bool)
            pred_boxes = np.asarray(scored["boxes"][b][obj], np.float64) / scale
        else:
            pred_boxes = boxes
        pred = dict(boxes=pred_boxes, labels=np.asarray(scored["labels"][b][obj], np.int64),
                    scores=np.asarray(scored["scores"][b][obj], np.float64),
                    rel_pairs=np.asarray(scored["pairs"][b][pm], np.int64),
                    rel_scores=np.asarray(scored["rel_scores"][b][pm], np.float64))
        if "det_labels" in scored:
            pred["det_boxes"] = np.asarray(scored["det_boxes"][b][obj], np.float64) / scale
            pred["det_labels"] = np.asarray(scored["det_labels"][b][obj], np.int64)
            pred["det_scores"] = np.asarray(scored["det_scores"][b][obj], np.float64)
        yield gt, pred


def gather_to_host(tree: Any) -> Any:
    """Global (possibly multi-process) arrays -> full numpy arrays on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
