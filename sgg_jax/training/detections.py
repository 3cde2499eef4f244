"""The run's detector as the relation model's source of boxes: SGDet evaluation and relation
stages that train on detections (`config.train.stages.<name>.mode="sgdet"`, neural-motifs' and
KERN's SGDet refinement phase).

`detect` runs the (frozen) detector and returns its detections in the model's canvas, real ones
first. For training, `assign_ground_truth` labels them from the image's ground truth as
neural-motifs' SGDet assignment does: a detection's object target is the class of the
ground-truth box it overlaps most with IoU >= `fg_iou` (else 0, background); a pair of
detections carries a ground-truth relation when each overlaps that relation's subject / object
box with IoU >= `fg_iou` *and has its class* (one predicate per pair, at random when several
fit). `make_training_detections` puts both together for the relation step.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from data_pipelines.batch import Batch, detector_view, rescale
from sgg_jax import relation_sampling
from sgg_jax.models.registry import DETECTOR_GROUP
from sgg_jax.ops.boxes import pairwise_iou

# neural-motifs' foreground IoU for SGDet training pairs (`rel_assignments`, FG_THRESH).
FG_IOU = 0.5


@flax.struct.dataclass
class ModelDetections:
    """D detections per image in the relation model's canvas, valid ones first.

    boxes [B, D, 4]; valid [B, D]; labels [B, D] (0 where not valid); scores [B, D];
    class_dists [B, D, C+1] (0 where not valid)."""

    boxes: jax.Array
    valid: jax.Array
    labels: jax.Array
    scores: jax.Array
    class_dists: jax.Array


def real_first(valid: jax.Array) -> jax.Array:
    """Permutation [B, D] that moves valid entries first, keeping their order."""
    return jnp.argsort(~valid, axis=-1, stable=True)


def detect(detector: Any, detector_state: dict, detector_params: Any, images: jax.Array,
           image_sizes: jax.Array, detector_images: jax.Array | None = None,
           detector_image_sizes: jax.Array | None = None
           ) -> tuple[ModelDetections, tuple[jax.Array, jax.Array, float]]:
    """(detections in the model's canvas, (the detector's images, sizes, canvas scale))."""
    det_images, det_sizes, det_scale = detector_view(images, image_sizes, detector_images,
                                                     detector_image_sizes)
    dets = detector.apply({"params": detector_params, **detector_state}, det_images, det_sizes)
    order = real_first(dets.valid)
    take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)),
                                         axis=1)
    valid = take(dets.valid)
    out = ModelDetections(
        boxes=rescale(take(dets.boxes), det_scale), valid=valid,
        labels=jnp.where(valid, take(dets.labels), 0).astype(jnp.int32),
        scores=jnp.where(valid, take(dets.scores), 0.0),
        class_dists=jnp.where(valid[..., None], take(dets.class_dists), 0.0))
    return out, (det_images, det_sizes, det_scale)


def assign_ground_truth(rng: jax.Array, boxes: jax.Array, valid: jax.Array, labels: jax.Array,
                        gt_boxes: jax.Array, gt_labels: jax.Array, gt_mask: jax.Array,
                        relations: jax.Array, rel_mask: jax.Array, fg_iou: float = FG_IOU
                        ) -> tuple[jax.Array, jax.Array]:
    """One image: detections boxes [D, 4] / valid [D] / labels [D] against the ground truth
    (gt_boxes [G, 4], gt_labels [G], gt_mask [G], relations [R, 3], rel_mask [R]) ->
    (object targets [D] int32, predicates [D, D] int32 of each ordered detection pair, 0 = none).
    """
    d = boxes.shape[0]
    g = gt_boxes.shape[0]
    gt_real = gt_mask & (gt_labels > 0)
    iou = jnp.where(valid[:, None] & gt_real[None], pairwise_iou(boxes, gt_boxes), -1.0)
    best = jnp.argmax(iou, axis=1)
    targets = jnp.where(jnp.max(iou, axis=1) >= fg_iou, gt_labels[best], 0).astype(jnp.int32)
    same = (iou >= fg_iou) & (labels[:, None] == gt_labels[None])  # [D, G]
    subj = jnp.clip(relations[:, 0], 0, g - 1)
    obj = jnp.clip(relations[:, 1], 0, g - 1)
    rel_ok = rel_mask & gt_real[subj] & gt_real[obj] & (subj != obj) & (relations[:, 2] > 0)
    hit = (same[:, subj].T[:, :, None] & same[:, obj].T[:, None, :]
           & rel_ok[:, None, None] & ~jnp.eye(d, dtype=bool)[None])  # [R, D, D]
    key = jax.random.uniform(rng, (relations.shape[0],))
    pick = jnp.argmax(jnp.where(hit, key[:, None, None], -1.0), axis=0)
    predicates = jnp.where(hit.any(axis=0), relations[pick, 2], 0).astype(jnp.int32)
    return targets, predicates


@flax.struct.dataclass
class TrainingDetections:
    """A relation step's batch on detections: `batch` holds them as its objects (boxes,
    box_mask = valid, labels = object targets); `inputs` the ModelInputs fields that differ
    from the batch's (labels = the detector's, obj_dists, a model's SGDet inputs); the sampled
    pairs with their predicates."""

    batch: Batch
    inputs: dict
    pairs: jax.Array
    pair_labels: jax.Array
    pair_mask: jax.Array


def make_training_detections(detector: Any, detector_state: dict, *, num_rels: int,
                             fg_fraction: float, must_overlap: bool,
                             extra_inputs: Callable | None = None) -> Callable:
    """(params, batch, rng) -> TrainingDetections (jittable; the detector takes no gradient).
    `extra_inputs` is a model's SGDet hook (`SGDetHooks.extra_inputs`)."""
    detector_state = dict(detector_state)

    def fn(params: Any, batch: Batch, rng: jax.Array) -> TrainingDetections:
        det_params = jax.lax.stop_gradient(params[DETECTOR_GROUP])
        dets, (det_images, det_sizes, det_scale) = detect(
            detector, detector_state, det_params, batch.images, batch.image_sizes,
            batch.detector_images, batch.detector_image_sizes)
        k_assign, k_sample = jax.random.split(rng)
        b = dets.boxes.shape[0]
        targets, predicates = jax.vmap(assign_ground_truth)(
            jax.random.split(k_assign, b), dets.boxes, dets.valid, dets.labels, batch.boxes,
            batch.labels, batch.box_mask, batch.relations, batch.rel_mask)
        sample = lambda k, bx, m, p: relation_sampling.sample_dense_relations(
            k, bx, m, p, num_rels=num_rels, fg_fraction=fg_fraction, must_overlap=must_overlap)
        pairs, pair_labels, pair_mask = jax.vmap(sample)(
            jax.random.split(k_sample, b), dets.boxes, dets.valid, predicates)
        inputs = dict(labels=dets.labels, obj_dists=dets.class_dists)
        if extra_inputs is not None:
            inputs.update(extra_inputs(params, det_images, det_sizes, det_scale)[0])
        on_dets = batch.replace(boxes=dets.boxes, box_mask=dets.valid, labels=targets)
        return TrainingDetections(batch=on_dets, inputs=inputs, pairs=pairs,
                                  pair_labels=pair_labels, pair_mask=pair_mask)

    return fn


__all__ = ["FG_IOU", "ModelDetections", "TrainingDetections", "detect", "real_first",
           "assign_ground_truth", "make_training_detections"]
