"""The jitted training and evaluation steps.

`train_step(state, batch, rng)` (relation stages) is pure: it samples relations per image on
device, runs the model, computes the stage's losses and applies one optimizer update. A non-finite loss leaves the state
unchanged and raises a flag the host checks at log and checkpoint time, so the last good state
is what gets saved. `make_detector_train_step` is the `detector` stage's step (Faster R-CNN
losses on the ground-truth boxes), `make_region_train_step` the `regions` stage's (MSDN's
region RPN on the caption-region boxes); all share `apply_update`.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from data_pipelines.batch import Batch
from sgg_jax import losses as losses_lib
from sgg_jax import relation_sampling
from sgg_jax.models import DETECTOR_GROUP, relation_params
from sgg_jax.models.interface import ModelInputs, ModelOutputs


@flax.struct.dataclass
class TrainState:
    """Everything a stage checkpoints besides the data iterator."""

    step: jax.Array
    params: Any
    opt_state: Any
    nonfinite: jax.Array  # count of steps whose loss was NaN/Inf (update skipped)

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   nonfinite=jnp.zeros((), jnp.int32))


def model_inputs(batch: Batch, pairs: jax.Array, pair_mask: jax.Array) -> ModelInputs:
    """The model's view of a batch, with the given candidate pairs."""
    return ModelInputs(images=batch.images, image_sizes=batch.image_sizes, boxes=batch.boxes,
                       box_mask=batch.box_mask, labels=batch.labels, pairs=pairs,
                       pair_mask=pair_mask, region_boxes=batch.region_boxes,
                       region_tokens=batch.region_tokens, region_mask=batch.region_mask)


def sample_training_pairs(rng: jax.Array, batch: Batch, *, num_rels: int, fg_fraction: float,
                          must_overlap: bool):
    """Per-image relation sampling (neural-motifs style), vmapped over the batch."""
    keys = jax.random.split(rng, batch.boxes.shape[0])
    sample = lambda k, b, m, l, r, rm: relation_sampling.sample_relations(
        k, b, m, l, r, rm, num_rels=num_rels, fg_fraction=fg_fraction, must_overlap=must_overlap)
    return jax.vmap(sample)(keys, batch.boxes, batch.box_mask, batch.labels, batch.relations,
                            batch.rel_mask)


ROI_LOSSES = ("region", "object_box")  # need MSDN's training RoIs (`roi_sampler`)


def compute_losses(outputs: ModelOutputs, batch: Batch, pair_labels: jax.Array,
                   pair_mask: jax.Array, *, loss_names: tuple[str, ...], edge_kind: str,
                   obj_weight: float, rel_weight: float, inputs: ModelInputs | None = None,
                   rois: Any = None) -> tuple[jax.Array, dict]:
    """The stage's weighted total loss and its parts. With `rois` (MSDN's sampled training
    RoIs, `models.region_proposals.MSDNTrainingRoIs`) the caption loss runs over the sampled
    fg regions of `inputs`, and the `region` / `object_box` losses are available."""
    parts = {}
    missing = [n for n in loss_names if n in ROI_LOSSES] if rois is None else []
    if missing:
        raise ValueError(f"losses {missing} need MSDN's training RoIs (a model with region "
                         "and box heads, and the detector + region RPN of an SGDet run)")
    if "object" in loss_names:
        parts["object_loss"] = obj_weight * losses_lib.object_loss(
            outputs.obj_logits, batch.labels, batch.box_mask)
    if "relation" in loss_names:
        parts["relation_loss"] = rel_weight * losses_lib.edge_loss(
            outputs.rel_logits, pair_labels, pair_mask, kind=edge_kind)
    if "caption" in loss_names:  # region captioning (MSDN): outputs.aux["caption_logits"]
        if "caption_logits" not in outputs.aux:
            raise ValueError("loss 'caption': this model has no aux['caption_logits'] (only "
                             "captioning models such as msdn can train it)")
        if rois is None:
            tokens, regions = batch.region_tokens, batch.region_mask
        else:
            tokens = inputs.region_tokens
            regions = rois.region_fg[:, :tokens.shape[1]]
        parts["caption_loss"] = losses_lib.caption_loss(outputs.aux["caption_logits"], tokens,
                                                        regions)
    if "region" in loss_names:
        objectness, box = losses_lib.region_losses(
            outputs.aux["region_scores"], outputs.aux["region_deltas"], rois.region_fg,
            inputs.region_mask, rois.region_deltas)
        parts["region_objectness_loss"], parts["region_box_loss"] = objectness, box
    if "object_box" in loss_names:
        parts["object_box_loss"] = losses_lib.box_refinement_loss(
            outputs.aux["proposal_box_deltas"], rois.proposal_labels, rois.proposal_deltas)
    total = sum(parts.values()) if parts else jnp.zeros(())
    return total, parts


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    loss_names: tuple[str, ...], edge_kind: str, obj_weight: float,
                    rel_weight: float, num_rels: int, fg_fraction: float,
                    must_overlap: bool, trainable: tuple[str, ...] | None = None,
                    model_state: dict | None = None,
                    roi_sampler: Callable | None = None) -> Callable:
    """Builds the (un-jitted) pure train step for one stage.

    `roi_sampler(params, batch, key) -> MSDNTrainingRoIs` (MSDN with a trained detector and
    region RPN: `models.region_proposals.make_msdn_roi_sampler`) replaces the batch's caption
    regions by sampled region RoIs and adds object RoIs for the box head, on device.

    `trainable` names the parameter groups this stage trains; the others are wrapped in
    `stop_gradient`, so XLA never computes (or compiles) their backward pass, e.g. a frozen
    backbone costs only its forward pass. None = all groups. `model_state` holds the model's
    non-trainable collections (e.g. frozen batch-norm statistics), passed to every apply.
    """
    model_state = dict(model_state or {})

    def train_step(state: TrainState, batch: Batch, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        sample_rng, dropout_rng = jax.random.split(rng)
        pairs, pair_labels, pair_mask = sample_training_pairs(
            sample_rng, batch, num_rels=num_rels, fg_fraction=fg_fraction,
            must_overlap=must_overlap)
        inputs = model_inputs(batch, pairs, pair_mask)
        rois = None
        if roi_sampler is not None:
            rois = roi_sampler(state.params, batch, jax.random.fold_in(rng, 1))
            inputs = inputs.replace(**rois.inputs)

        def loss_fn(params):
            params = relation_params(params)  # the frozen detector plays no part here
            if trainable is not None:
                params = {k: (v if k in trainable else jax.lax.stop_gradient(v))
                          for k, v in params.items()}
            outputs = model.apply({"params": params, **model_state}, inputs, train=True,
                                  rngs={"dropout": dropout_rng})
            return compute_losses(outputs, batch, pair_labels, pair_mask,
                                  loss_names=loss_names, edge_kind=edge_kind,
                                  obj_weight=obj_weight, rel_weight=rel_weight,
                                  inputs=inputs, rois=rois)

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state = apply_update(state, tx, loss, grads)
        metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads),
                       fg_pairs=jnp.sum(pair_mask & (pair_labels > 0)) / batch.boxes.shape[0],
                       **parts)
        return new_state, metrics

    return train_step


def apply_update(state: TrainState, tx: optax.GradientTransformation, loss: jax.Array,
                 grads: Any) -> TrainState:
    """One optimizer update, skipped (state kept, `nonfinite` counted) when the loss or any
    gradient is NaN/Inf. Shared by every kind of stage."""
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    return TrainState(step=state.step + 1, params=keep(new_params, state.params),
                      opt_state=keep(new_opt_state, state.opt_state),
                      nonfinite=state.nonfinite + (~finite).astype(jnp.int32))


def make_detector_train_step(detector: nn.Module, tx: optax.GradientTransformation, *,
                             detector_state: dict | None = None) -> Callable:
    """The (un-jitted) pure train step of the `detector` stage.

    Trains the Faster R-CNN under the run's top-level params group "detector" on the batch's
    ground-truth boxes and labels with `DetectorLosses.total` (RPN objectness + RPN box +
    RoI classifier + RoI box). Other groups are not used (zero gradients, frozen by the
    optimizer). `detector_state`: the detector's non-trainable collections (frozen BN).
    """
    detector_state = dict(detector_state or {})

    def train_step(state: TrainState, batch: Batch, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        sample_rng, dropout_rng = jax.random.split(rng)
        gt_mask = batch.box_mask & (batch.labels > 0)

        def loss_fn(params):
            losses = detector.apply({"params": params[DETECTOR_GROUP], **detector_state},
                                    batch.images, batch.image_sizes, batch.boxes, batch.labels,
                                    gt_mask, train=True,
                                    rngs={"sampling": sample_rng, "dropout": dropout_rng})
            return losses.total, losses

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state = apply_update(state, tx, loss, grads)
        metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads[DETECTOR_GROUP]),
                       rpn_objectness=parts.rpn_objectness, rpn_box=parts.rpn_box,
                       classifier=parts.classifier, box=parts.box,
                       roi_accuracy=parts.roi_accuracy)
        return new_state, metrics

    return train_step


def make_region_train_step(detector: nn.Module, region_rpn: nn.Module,
                           tx: optax.GradientTransformation, *,
                           detector_state: dict | None = None) -> Callable:
    """The (un-jitted) pure train step of the `regions` stage (MSDN's region RPN).

    The frozen detector's backbone (params["detector"], forward only, no gradient) gives the
    features; the region head (params["region_rpn"], `models.region_proposals.RegionRPN`) is
    trained on the batch's caption-region boxes with RPN objectness + box losses.
    """
    from sgg_jax.models.region_proposals import REGION_RPN_GROUP, DetectorTrunk

    trunk = DetectorTrunk(detector.config, detector.dtype)
    detector_state = dict(detector_state or {})

    def train_step(state: TrainState, batch: Batch, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        # Outside loss_fn: the trunk is frozen and its backward pass is never built.
        feats = trunk.apply({"params": state.params[DETECTOR_GROUP], **detector_state},
                            batch.images)

        def loss_fn(params):
            losses = region_rpn.apply({"params": params[REGION_RPN_GROUP]}, feats,
                                      batch.image_sizes, batch.region_boxes, batch.region_mask,
                                      train=True, rngs={"sampling": rng})
            return losses.total, losses

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state = apply_update(state, tx, loss, grads)
        metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads[REGION_RPN_GROUP]),
                       region_objectness=parts.objectness, region_box=parts.box)
        return new_state, metrics

    return train_step
