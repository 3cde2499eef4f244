"""The jitted training steps, one builder per stage kind.

Every step is pure, `step(state, batch, rng) -> (state, metrics)`:
- relation stages (`make_relation_step`): samples relations per image on device, runs the
  relation model, sums the stage's loss terms (looked up by name: the generic ones of
  sgg_jax/losses.py and the model's own, `ModelSpec.losses`, plus terms the model returns in
  `ModelOutputs.losses`) and applies the stage's optimizer(s);
- the detector stage (`make_detector_step`): Faster R-CNN losses on the ground-truth boxes;
- an auxiliary network's stage (`make_loss_step`): the network's own loss function
  (`AuxiliaryNetwork.make_loss`).
A non-finite loss leaves the state unchanged and raises a flag the host checks at log and
checkpoint time, so the last good state is what gets saved. All share `apply_update`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from data_pipelines.batch import Batch, rescale
from sgg_jax import losses as losses_lib
from sgg_jax import relation_sampling
from sgg_jax.models.interface import ModelInputs
from sgg_jax.models.registry import DETECTOR_GROUP
from sgg_jax.training.optim import freeze_except, path_labels

# {optimizer name: (optax transformation, the group paths it trains)}
Optimizers = Mapping[str, tuple[optax.GradientTransformation, list[str]]]


@flax.struct.dataclass
class TrainState:
    """Everything a stage checkpoints besides the data iterator: one optimizer state per
    optimizer of the stage (`opt_state[name]`), and the models' non-trainable collections
    (`frozen`: {"model": ..., "detector": ...}, e.g. ImageNet batch-norm statistics), so a run
    restores from its checkpoints alone."""

    step: jax.Array
    params: Any
    opt_state: dict
    nonfinite: jax.Array  # count of steps whose loss was NaN/Inf (update skipped)
    frozen: dict = flax.struct.field(default_factory=dict)

    @classmethod
    def create(cls, params: Any, optimizers: Optimizers | optax.GradientTransformation,
               frozen: dict | None = None) -> "TrainState":
        if isinstance(optimizers, optax.GradientTransformation):
            optimizers = {"main": (optimizers, [])}
        return cls(step=jnp.zeros((), jnp.int32), params=params,
                   opt_state={n: tx.init(params) for n, (tx, _) in optimizers.items()},
                   nonfinite=jnp.zeros((), jnp.int32), frozen=dict(frozen or {}))


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


def loss_terms(names: tuple[str, ...], model_losses: Mapping[str, Callable | None]
               ) -> dict[str, Callable | None]:
    """{name: loss function} for a stage's loss names: the generic terms and the model's own;
    None marks a term the model returns itself (`ModelOutputs.losses`)."""
    table = {**losses_lib.GENERIC_LOSSES, **model_losses}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"losses {unknown}: not terms of this model (it has {sorted(table)})")
    return {n: table[n] for n in names}


def compute_losses(outputs: Any, targets: losses_lib.LossTargets,
                   terms: Mapping[str, Callable | None], config: Any
                   ) -> tuple[jax.Array, dict]:
    """The weighted total of the named loss terms and each logged part."""
    parts = {}
    weights = config.loss.get("weights", None) or {}
    for name, fn in terms.items():
        if fn is None:
            if name not in outputs.losses:
                raise ValueError(f"loss {name!r}: the model returned no such term in "
                                 f"ModelOutputs.losses (it returned {sorted(outputs.losses)})")
            parts[f"{name}_loss"] = float(weights.get(name, 1.0)) * outputs.losses[name]
        else:
            parts.update(fn(outputs, targets, config))
    total = sum(parts.values()) if parts else jnp.zeros(())
    return total, parts


def apply_update(state: TrainState, name: str, tx: optax.GradientTransformation,
                 loss: jax.Array, grads: Any) -> TrainState:
    """One update of optimizer `name`, skipped (state kept, `nonfinite` counted, step not
    advanced) when the loss or any gradient is NaN/Inf. Other optimizers' states are
    untouched."""
    updates, new_opt = tx.update(grads, state.opt_state[name], state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    return state.replace(params=keep(new_params, state.params),
                         opt_state={**state.opt_state, name: keep(new_opt, state.opt_state[name])},
                         nonfinite=state.nonfinite + (~finite).astype(jnp.int32))


def _trained_norm(grads: Any, paths: list[str]) -> jax.Array:
    """Global norm of the gradients of the trained groups."""
    labels = path_labels(grads, {p: "t" for p in paths}, "f")
    leaves = [g for g, lab in zip(jax.tree.leaves(grads), jax.tree.leaves(labels)) if lab == "t"]
    return optax.tree.norm(leaves) if leaves else jnp.zeros(())


def make_relation_step(model: nn.Module, optimizers: Optimizers, opt_losses: Mapping[str, tuple],
                       *, config: Any, model_losses: Mapping[str, Callable | None],
                       relation_params: Callable[[Any], Any], update: str = "joint",
                       model_state: dict | None = None,
                       extras: Callable | None = None,
                       detections: Callable | None = None) -> Callable:
    """The (un-jitted) pure step of a relation stage.

    optimizers: {name: (tx, group paths)}; opt_losses: {name: loss names}. With one optimizer
    (or `update_rule="joint"`) one loss (the sum of every optimizer's terms, each counted once) is
    differentiated once and each optimizer updates its groups; with `update_rule="alternating"` the
    optimizers run in order, each differentiating its own terms at the parameters the previous
    one left. `relation_params(params)` picks the relation model's groups (the frozen detector
    and auxiliary networks take no part). `extras(params, batch, key)` (the model's
    `train_extras`, e.g. sampled box-head RoIs) replaces inputs and feeds the loss terms.
    `detections(params, batch, key)` (a stage in mode sgdet:
    `sgg_jax.training.detections.make_training_detections`) puts the model on the frozen
    detector's boxes: its objects, targets and sampled pairs replace the ground truth's.
    Groups no optimizer trains are wrapped in `stop_gradient`, so their backward pass is never
    built (a frozen backbone costs only its forward pass).
    """
    model_state = dict(model_state or {})
    sampling = config.sampling

    def forward_loss(params, batch, inputs, targets, names, trained, dropout_rng):
        params = freeze_except(relation_params(params), trained)
        outputs = model.apply({"params": params, **model_state}, inputs, train=True,
                              rngs={"dropout": dropout_rng})
        return compute_losses(outputs, targets, loss_terms(names, model_losses), config)

    def step(state: TrainState, batch: Batch, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        sample_rng, dropout_rng = jax.random.split(rng)
        seen = batch  # the objects the model sees: the ground truth's, or the detector's
        if detections is None:
            pairs, pair_labels, pair_mask = sample_training_pairs(
                sample_rng, batch, num_rels=int(sampling.num_rels),
                fg_fraction=float(sampling.fg_fraction),
                must_overlap=bool(sampling.must_overlap))
            inputs = model_inputs(batch, pairs, pair_mask)
        else:
            on_dets = detections(state.params, batch, sample_rng)
            seen, pairs = on_dets.batch, on_dets.pairs
            pair_labels, pair_mask = on_dets.pair_labels, on_dets.pair_mask
            inputs = model_inputs(seen, pairs, pair_mask).replace(**on_dets.inputs)
        extra = None
        if extras is not None:  # sampled against the ground truth
            extra = extras(state.params, batch, jax.random.fold_in(rng, 1))
            inputs = inputs.replace(**extra.inputs)
        targets = losses_lib.LossTargets(batch=seen, inputs=inputs, pair_labels=pair_labels,
                                         pair_mask=pair_mask, extras=extra)
        metrics: dict = {}
        if update == "joint" or len(optimizers) == 1:
            names = tuple(dict.fromkeys(n for o in optimizers for n in opt_losses[o]))
            trained = [g for _, groups in optimizers.values() for g in groups]
            (loss, parts), grads = jax.value_and_grad(forward_loss, has_aux=True)(
                state.params, batch, inputs, targets, names, trained, dropout_rng)
            for name, (tx, _) in optimizers.items():
                state = apply_update(state, name, tx, loss, grads)
            metrics.update(loss=loss, grad_norm=_trained_norm(grads, trained), **parts)
        else:
            total = jnp.zeros(())
            for name, (tx, groups) in optimizers.items():
                (loss, parts), grads = jax.value_and_grad(forward_loss, has_aux=True)(
                    state.params, batch, inputs, targets, tuple(opt_losses[name]), groups,
                    dropout_rng)
                state = apply_update(state, name, tx, loss, grads)
                total = total + loss
                metrics.update({f"{name}/loss": loss,
                                f"{name}/grad_norm": _trained_norm(grads, groups), **parts})
            metrics["loss"] = total
        metrics["fg_pairs"] = jnp.sum(pair_mask & (pair_labels > 0)) / batch.boxes.shape[0]
        return state.replace(step=state.step + 1), metrics

    return step


def make_loss_step(loss_fn: Callable, optimizers: Optimizers) -> Callable:
    """The (un-jitted) pure step of a stage whose loss is one function
    `loss_fn(params, batch, rng) -> (total, metrics)` (the detector, auxiliary networks)."""
    (name, (tx, groups)), = optimizers.items()

    def step(state: TrainState, batch: Batch, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch,
                                                                          rng)
        state = apply_update(state, name, tx, loss, grads)
        metrics = dict(loss=loss, grad_norm=_trained_norm(grads, groups), **parts)
        return state.replace(step=state.step + 1), metrics

    return step


def detector_loss(detector: nn.Module, detector_state: dict | None = None) -> Callable:
    """The detector stage's loss: Faster R-CNN (RPN objectness + RPN box + RoI classifier + RoI
    box, `DetectorLosses.total`) of params["detector"] on the batch's ground-truth boxes."""
    detector_state = dict(detector_state or {})

    def loss(params: Any, batch: Batch, rng: jax.Array):
        sample_rng, dropout_rng = jax.random.split(rng)
        gt_mask = batch.box_mask & (batch.labels > 0)
        images, sizes, scale = batch.detector_view()  # its own canvas, when it has one
        losses = detector.apply({"params": params[DETECTOR_GROUP], **detector_state},
                                images, sizes, rescale(batch.boxes, 1.0 / scale), batch.labels,
                                gt_mask, train=True,
                                rngs={"sampling": sample_rng, "dropout": dropout_rng})
        return losses.total, dict(rpn_objectness=losses.rpn_objectness, rpn_box=losses.rpn_box,
                                  classifier=losses.classifier, box=losses.box,
                                  roi_accuracy=losses.roi_accuracy)

    return loss
