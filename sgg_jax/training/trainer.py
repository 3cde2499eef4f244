"""Staged training and evaluation: the one training system every model uses.

Flow: config -> dataset (synthetic or local VG150, through TFDS + grain) -> model -> for each
stage in `train.stage_order`: restore or start, jitted train steps over a device mesh, Orbax
checkpoints with the grain iterator state -> evaluation of every mode -> results.json.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tqdm.auto import tqdm

from sgg_jax import models as models_lib
from sgg_jax import predict as predict_lib
from sgg_jax.evaluation import DetectionEvaluator
from sgg_jax.io_utils import write_json_atomic
from sgg_jax.training import data as data_lib
from sgg_jax.training import eval_loop, mesh as mesh_lib, optim, reporting
from sgg_jax.training import pictures as pictures_lib
from sgg_jax.training.checkpointing import StageCheckpointer, abstract_like
from sgg_jax.training.steps import (ROI_LOSSES, TrainState, make_detector_train_step,
                                    make_region_train_step, make_train_step)

log = logging.getLogger("sgg_jax")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


@dataclasses.dataclass
class Experiment:
    """What training and evaluation share: config, mesh, data and the model per mode."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    data: Any  # data_pipelines.dataset.PreparedDataset
    train_mode: str
    # Non-trainable model collections (e.g. frozen batch-norm statistics of ResNet-50), fixed at
    # initialisation (or by weight import) and passed to every apply.
    model_state: dict = dataclasses.field(default_factory=dict)
    # The same for the detector (params group "detector"), when the run has one.
    detector_state: dict = dataclasses.field(default_factory=dict)

    def model(self, mode: str):
        return models_lib.build_model(
            self.config.model, num_classes=self.data.num_classes,
            num_predicates=self.data.num_predicates, statistics=self.data.statistics, mode=mode,
            num_words=len(self.data.idx_to_word))

    @property
    def uses_detector(self) -> bool:
        """A run has a detector (trained by the `detector` stage) iff it evaluates SGDet."""
        return uses_detector(self.config)

    def detector(self):
        return models_lib.build_detector(self.config.model, num_classes=self.data.num_classes)

    @property
    def uses_region_proposals(self) -> bool:
        """A run has MSDN's region RPN (params group "region_rpn") iff it trains the `regions`
        stage."""
        return REGION_STAGE in stage_names(self.config)

    def region_rpn(self):
        from sgg_jax.models.region_proposals import RegionRPN, region_rpn_config

        if "region_rpn" not in self.config.model:
            raise ValueError("the `regions` stage needs config.model.region_rpn (see "
                             "configs/msdn.py)")
        return RegionRPN(region_rpn_config(self.config.model.region_rpn),
                         self.detector().dtype)

    def checkpoint_dir(self, stage: str) -> str:
        return os.path.join(self.workdir, "checkpoints", stage)


def uses_detector(config: ml_collections.ConfigDict) -> bool:
    return "sgdet" in optim.split_list(config.eval.modes)


def stage_names(config: ml_collections.ConfigDict) -> list[str]:
    """The stages this run trains, in order: `train.stage_order`, where the `detector` stage
    runs first when eval.modes contains sgdet (added if the order omits it) and is dropped
    otherwise (no detector is needed for PredCls / SGCls). The `regions` stage (MSDN's region
    RPN on the detector's features) runs right after it when the order names it and sgdet is
    evaluated, and is dropped otherwise too."""
    names = optim.split_list(config.train.stage_order)
    for name in names:
        if name not in config.train.stages:
            raise ValueError(f"config.train.stage_order names '{name}', which is not in "
                             f"config.train.stages ({sorted(config.train.stages)})")
    rest = [n for n in names if n not in SGDET_STAGES]
    if not uses_detector(config):
        return rest
    if DETECTOR_STAGE not in config.train.stages:
        raise ValueError("config.eval.modes contains sgdet, which needs a trained detector: "
                         f"config.train.stages has no '{DETECTOR_STAGE}' stage")
    return [DETECTOR_STAGE] + ([REGION_STAGE] if REGION_STAGE in names else []) + rest


DETECTOR_STAGE = "detector"
REGION_STAGE = "regions"  # MSDN's region RPN (sgg_jax/models/region_proposals.py)
SGDET_STAGES = (DETECTOR_STAGE, REGION_STAGE)  # trained only when SGDet is evaluated


def stage_seed_index(stages: list[str], name: str) -> int:
    """The index that seeds a stage's rng and data order: its position among the relation
    stages (so adding the SGDet stages leaves PredCls / SGCls training unchanged); the
    detector and regions stages get their own (100, 101)."""
    if name in SGDET_STAGES:
        return 100 + SGDET_STAGES.index(name)
    return [n for n in stages if n not in SGDET_STAGES].index(name)


def _trains_alone(stage: ml_collections.ConfigDict, loss: str, what: str) -> bool:
    """Whether a stage's losses are exactly `loss`; `loss` mixed with others is an error (its
    stage trains `what` with a step of its own)."""
    losses = optim.split_list(stage.losses)
    if loss in losses and len(losses) > 1:
        raise ValueError(f"config.train.stages.*.losses={stage.losses!r}: {loss!r} trains "
                         f"{what} and cannot be combined with other losses")
    return losses == [loss]


def is_region_stage(stage: ml_collections.ConfigDict) -> bool:
    """A stage trains MSDN's region RPN when its losses are `region_proposal` (alone)."""
    return _trains_alone(stage, "region_proposal", "the region RPN")


def is_detector_stage(stage: ml_collections.ConfigDict) -> bool:
    """A stage trains the detector when its losses are `detection` (alone)."""
    return _trains_alone(stage, "detection", "the detector")


def enable_compilation_cache(directory: str) -> None:
    """Persists compiled XLA programs, so a re-run or resume does not compile again."""
    if directory == "off":
        return
    directory = directory or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        "~", ".cache", "sgg_jax", "xla")
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def eval_protocols(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """`config.eval.protocols`, validated (runs saved before the field existed: both)."""
    return reporting.parse_protocols(config.eval.get("protocols", "motifs,msdn"))


def setup(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
    """Distributed init, compilation cache, mesh and dataset preparation."""
    eval_protocols(config)  # a bad value fails now, not after training
    enable_compilation_cache(str(config.train.compilation_cache_dir))
    d = config.distributed
    mesh_lib.maybe_initialize_distributed(d.coordinator_address, d.num_processes, d.process_id,
                                          d.initialize)
    os.makedirs(workdir, exist_ok=True)
    mesh = mesh_lib.make_mesh(config.train.data_parallel)
    data = data_lib.prepare(config)
    train_mode = "sgcls" if "sgcls" in optim.split_list(config.eval.modes) else "predcls"
    return Experiment(config=config, workdir=workdir, mesh=mesh, data=data, train_mode=train_mode)


def init_params(exp: Experiment, rng: jax.Array) -> Any:
    """Initial parameters, replicated over the mesh.

    Initialisation draws from an `rbg` key derived from `rng`: XLA compiles RngBitGenerator far
    faster than threefry on CPU (initialisation compiled ~2x faster here), and the values are
    deterministic for a seed on a given backend.
    """
    model = exp.model(exp.train_mode)
    rng = jax.random.key(int(jax.device_get(jax.random.key_data(rng))[-1]), impl="rbg")
    dummy = data_lib.dummy_batch(exp.config, exp.data)
    from sgg_jax.training.steps import model_inputs
    num_obj = dummy.boxes.shape[1]
    pairs = jnp.zeros((dummy.boxes.shape[0], num_obj, 2), jnp.int32)
    inputs = model_inputs(jax.tree.map(jnp.asarray, dummy), pairs,
                          jnp.zeros(pairs.shape[:2], bool))
    variables = jax.jit(lambda r: model.init({"params": r, "dropout": r}, inputs, train=False),
                        out_shardings=mesh_lib.replicated(exp.mesh))(rng)
    exp.model_state = {k: v for k, v in variables.items() if k != "params"}
    params = dict(variables["params"])
    if exp.uses_detector:
        detector = exp.detector()
        det_rng = jax.random.fold_in(rng, 1)
        det_vars = jax.jit(
            lambda r: detector.init({"params": r, "sampling": r, "dropout": r},
                                    jnp.asarray(dummy.images), jnp.asarray(dummy.image_sizes)),
            out_shardings=mesh_lib.replicated(exp.mesh))(det_rng)
        exp.detector_state = {k: v for k, v in det_vars.items() if k != "params"}
        params[models_lib.DETECTOR_GROUP] = det_vars["params"]
        if exp.uses_region_proposals:
            from sgg_jax.models.region_proposals import REGION_RPN_GROUP, init_region_rpn

            params[REGION_RPN_GROUP] = jax.jit(
                lambda r, p: init_region_rpn(
                    detector, exp.region_rpn().config, p, jnp.asarray(dummy.images),
                    jnp.asarray(dummy.image_sizes), r, detector_state=exp.detector_state),
                out_shardings=mesh_lib.replicated(exp.mesh))(jax.random.fold_in(rng, 2),
                                                             det_vars["params"])
    return params


def _check_finite(state: TrainState, stage: str, ckpt: StageCheckpointer) -> None:
    bad = int(jax.device_get(state.nonfinite))
    if bad:
        last = ckpt.latest_step()
        raise NonFiniteLossError(
            f"stage '{stage}': the loss became NaN/Inf ({bad} step(s), updates skipped) by step "
            f"{int(jax.device_get(state.step))}; the last good checkpoint is step {last} in "
            f"{ckpt.directory}. Lower the learning rate or enable gradient clipping "
            "(config.train.grad_clip_norm).")


def train_stage(exp: Experiment, stage_name: str, params: Any, rng: jax.Array,
                writer: reporting.MetricWriter, stage_index: int) -> Any:
    """Runs (or resumes, or skips when finished) one stage; returns its final parameters."""
    cfg = exp.config
    stage = cfg.train.stages[stage_name]
    num_steps = int(stage.num_steps)
    groups = optim.trainable_groups(stage, params)
    if not groups or num_steps <= 0:
        log.info("stage '%s': nothing to train for this model (%s); skipped", stage_name,
                 stage.trainable)
        return params
    ckpt = StageCheckpointer(exp.checkpoint_dir(stage_name), keep=cfg.train.keep_checkpoints)
    tx = optim.make_optimizer(stage, cfg.train, params)
    replicated = mesh_lib.replicated(exp.mesh)
    state = jax.jit(lambda p: TrainState.create(p, tx), out_shardings=replicated)(params)
    loader = data_lib.train_loader(cfg, exp.data, exp.mesh, seed=cfg.seed + 1000 * stage_index)
    iterator = iter(loader)
    start = ckpt.latest_step()
    if start is not None:
        state, meta = ckpt.restore(start, abstract_like(state), iterator)
        log.info("stage '%s': resumed from step %d (%s)", stage_name, start, ckpt.directory)
        if start >= num_steps:
            ckpt.close()
            return state.params
    if is_detector_stage(stage):
        step_fn = make_detector_train_step(exp.detector(), tx,
                                           detector_state=exp.detector_state)
    elif is_region_stage(stage):
        step_fn = make_region_train_step(exp.detector(), exp.region_rpn(), tx,
                                         detector_state=exp.detector_state)
    else:
        loss_names, roi_sampler = stage_roi_losses(exp, stage_name, stage)
        step_fn = make_train_step(
            exp.model(exp.train_mode), tx, loss_names=loss_names,
            edge_kind=cfg.loss.edge, obj_weight=float(cfg.loss.obj_weight),
            rel_weight=float(cfg.loss.rel_weight), num_rels=int(cfg.sampling.num_rels),
            fg_fraction=float(cfg.sampling.fg_fraction),
            must_overlap=bool(cfg.sampling.must_overlap), trainable=tuple(groups),
            model_state=exp.model_state, roi_sampler=roi_sampler)
    batch_sharding = mesh_lib.data_sharding(exp.mesh)
    train_step = jax.jit(step_fn, in_shardings=(replicated, batch_sharding, replicated),
                         out_shardings=(replicated, replicated), donate_argnums=(0,))
    step = int(jax.device_get(state.step))
    bar = tqdm(total=num_steps, initial=step, desc=f"train[{stage_name}]", unit="step",
               disable=jax.process_index() != 0, dynamic_ncols=True)
    log_every, ckpt_every = max(int(cfg.train.log_every), 1), max(int(cfg.train.checkpoint_every), 1)
    eval_every = int(cfg.train.eval_every)
    t0 = time.perf_counter()
    try:
        while step < num_steps:
            batch = mesh_lib.to_global(next(iterator), exp.mesh)
            state, metrics = train_step(state, batch, rng)
            step += 1
            bar.update(1)
            if step % log_every == 0 or step == num_steps:
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(state, stage_name, ckpt)
                host["images_per_s"] = log_every * cfg.input.batch_size / max(time.perf_counter() - t0, 1e-9)
                t0 = time.perf_counter()
                bar.set_postfix(loss=f"{host['loss']:.4f}")
                writer.scalars(step, host, prefix=f"{stage_name}/")
            if step % ckpt_every == 0 or step == num_steps:
                _check_finite(state, stage_name, ckpt)
                ckpt.save(step, state, iterator, dict(stage=stage_name, step=step))
            if eval_every and step % eval_every == 0 and step < num_steps:
                results = evaluate(exp, state.params)
                for group, vals in reporting.scalar_groups(results).items():
                    writer.scalars(step, vals, prefix=f"eval_{group}/")
    finally:
        # An interrupted run still finishes writing the checkpoint it had started (an in-flight
        # save is atomic: a killed process leaves only a *.orbax-checkpoint-tmp directory,
        # which restore ignores).
        bar.close()
        ckpt.close()
    return state.params


def stage_roi_losses(exp: Experiment, stage_name: str, stage: ml_collections.ConfigDict):
    """A relation stage's losses and, when they include MSDN's box-head losses (`region`,
    `object_box`), the sampler of its training RoIs from the frozen detector and region RPN.
    Runs without those (no sgdet in eval.modes) drop the two losses with a warning: the heads
    matter only for SGDet."""
    loss_names = tuple(optim.split_list(stage.losses))
    if not any(n in ROI_LOSSES for n in loss_names):
        return loss_names, None
    if not exp.uses_region_proposals:
        log.warning("stage '%s': losses %s skipped: they train MSDN's box heads on the "
                    "detector's and the region RPN's proposals, which only SGDet runs train",
                    stage_name, [n for n in loss_names if n in ROI_LOSSES])
        return tuple(n for n in loss_names if n not in ROI_LOSSES), None
    from sgg_jax.models.region_proposals import make_msdn_roi_sampler

    return loss_names, make_msdn_roi_sampler(
        exp.detector(), exp.region_rpn().config,
        object_rois=int(exp.config.model.get("box_refinement_rois", 16)),
        detector_state=exp.detector_state)


def make_sgdet_step(exp: Experiment):
    """The un-jitted SGDet step (params, images, image_sizes) -> predictions of this run
    (`eval_loop.make_sgdet_step` with the run's detector, relation model and eval options;
    MSDN also gets the region RPN's proposals as its caption regions)."""
    cfg = exp.config
    source = str(cfg.eval.sgdet_object_source)
    if cfg.model.name == "freq" and source != "detector":
        raise ValueError("config.eval.sgdet_object_source: FREQ looks its predicates up by the "
                         "detector's labels, so its objects must come from the 'detector' "
                         f"too (got {source!r})")
    propose_regions = None
    if cfg.model.name == "msdn":
        if not exp.uses_region_proposals:
            raise ValueError("MSDN SGDet needs region proposals: add the 'regions' stage to "
                             "config.train.stage_order (configs/msdn.py does)")
        from sgg_jax.models.region_proposals import make_region_proposal_fn

        propose_regions = make_region_proposal_fn(exp.detector(), exp.region_rpn().config,
                                                  detector_state=exp.detector_state)
    return eval_loop.make_sgdet_step(
        exp.detector(), exp.model("sgdet"), detector_state=exp.detector_state,
        model_state=exp.model_state, must_overlap=bool(cfg.eval.sgdet_must_overlap),
        object_source=source, propose_regions=propose_regions,
        refine_boxes=bool(cfg.eval.get("sgdet_refine_boxes", False)))


def evaluate(exp: Experiment, params: Any, split: str | None = None,
             num_pictures: int = 0) -> dict[str, dict]:
    """Evaluates every configured mode on a split; returns the results.json dict.

    Layout (docs/architecture.md): results[mode] = the neural-motifs protocol's metrics,
    results["msdn"][mode] = the MSDN / F-Net protocol's (per `config.eval.protocols`). With
    SGDet, the same pass (no second model run) also feeds phrase detection (results["phrdet"],
    results["msdn"]["phrdet"]) and the detector's COCO mAP (pycocotools):
    results["detection"] = {"AP", "AP50", "AP75", "num_images"} (percent).
    `num_pictures` > 0 draws the first N images of the most complete mode into
    <workdir>/pictures (`sgg_jax.training.pictures`; process 0).
    """
    cfg = exp.config
    split = split or cfg.eval.split
    protocols = eval_protocols(cfg)
    modes = optim.split_list(cfg.eval.modes)
    picture_mode = pictures_lib.picture_mode(modes) if num_pictures > 0 else None
    if jax.process_index() != 0:
        picture_mode = None
    shown: list[pictures_lib.Example] = []
    results: dict[str, Any] = {}
    for mode in modes:
        evaluators = eval_loop.make_evaluators(
            mode, protocols, exp.data.num_predicates, ks=tuple(cfg.eval.ks),
            zero_shot_triplets=exp.data.zero_shot_triplets,
            triplet_counts=data_lib.triplet_counts(exp.data))
        det_evaluator = None
        if mode == "sgdet":
            sgdet = make_sgdet_step(exp)
            score = jax.jit(lambda p, batch: sgdet(p, batch.images, batch.image_sizes))
            det_evaluator = DetectionEvaluator(exp.data.num_classes)
            refined_evaluator = (DetectionEvaluator(exp.data.num_classes)
                                 if cfg.eval.get("sgdet_refine_boxes", False) else None)
        else:
            score = jax.jit(eval_loop.make_score_step(exp.model(mode), mode, exp.model_state))
        loader = data_lib.eval_loader(cfg, exp.data, exp.mesh, split)
        seen = 0
        limit = int(cfg.eval.max_images)
        for host_batch in tqdm(loader, desc=f"eval[{mode}]", unit="batch",
                               disable=jax.process_index() != 0, dynamic_ncols=True):
            if 0 <= limit <= seen:  # every process counts the same gathered images
                break
            scored = eval_loop.gather_to_host(score(params, mesh_lib.to_global(host_batch, exp.mesh)))
            full_batch = eval_loop.gather_to_host(mesh_lib.to_global(host_batch, exp.mesh))
            for gt, pred in eval_loop.batch_to_examples(full_batch, scored):
                if 0 <= limit <= seen:
                    break
                if det_evaluator is not None:
                    det_evaluator.add(gt, dict(boxes=pred.pop("det_boxes"),
                                               labels=pred.pop("det_labels"),
                                               scores=pred.pop("det_scores")))
                    if refined_evaluator is not None:  # the boxes the scene graphs are scored on
                        refined_evaluator.add(gt, dict(boxes=pred["boxes"], labels=pred["labels"],
                                                       scores=pred["scores"]))
                for evaluator in evaluators.values():
                    evaluator.add(gt, pred)
                if mode == picture_mode and len(shown) < num_pictures:
                    shown.append(_picture_example(exp, split, len(shown), full_batch, gt, pred,
                                                  scored))
                seen += 1
        for (protocol, m), evaluator in evaluators.items():
            reporting.store_metrics(results, protocol, m, evaluator.compute())
        if det_evaluator is not None:
            results["detection"] = det_evaluator.compute()
            if refined_evaluator is not None:
                results["detection_refined"] = refined_evaluator.compute()
    if shown:
        paths = pictures_lib.write_pictures(
            os.path.join(exp.workdir, "pictures"), picture_mode, shown, exp.data.idx_to_label,
            exp.data.idx_to_predicate, int(cfg.predict.top_relations))
        log.info("%d %s prediction pictures in %s", len(paths), picture_mode,
                 os.path.dirname(paths[0]))
    if cfg.model.name == "msdn":  # region captions: see evaluate_captions below
        results["captions"] = evaluate_captions(exp, params, split)
    return results


def _picture_example(exp: Experiment, split: str, index: int, batch: Any, gt: dict,
                     pred: dict, scored: dict | None = None) -> pictures_lib.Example:
    """A picture's inputs: the evaluator's dicts and the original image (the split's record
    `index`, which the eval loader reads in order, or the canvas content scaled back). When
    the step's output `scored` has captions (MSDN SGDet), also the top
    `config.predict.top_regions` predicted regions (NMS at `config.predict.region_nms`) with
    their captions and the ground-truth caption regions with their phrases (this image's rows
    only, decoded on the host)."""
    image_id = int(gt["image_id"])
    row = int(np.flatnonzero(np.asarray(batch.image_ids) == image_id)[0])
    source = exp.data.sources[split]
    record = source[index] if index < len(source) else None
    scale = float(batch.scales[row])
    image = pictures_lib.original_image(record, image_id, batch.images[row],
                                        batch.image_sizes[row], scale)
    if scored is None or "captions" not in scored:
        return pictures_lib.Example(image_id, gt, pred, image)
    words, pcfg = exp.data.idx_to_word, exp.config.predict
    pred_regions = predict_lib.region_fields(
        scored["region_boxes"][row], scored["region_mask"][row], scored["region_scores"][row],
        scored["captions"][row], words, int(pcfg.get("top_regions", 5)), scale, image.size,
        float(pcfg.get("region_nms", 1.0)))
    gt_mask = np.asarray(batch.region_mask[row], bool)
    gt_regions = predict_lib.region_fields(  # every ground-truth region, in order (scores 1)
        batch.region_boxes[row], gt_mask, gt_mask.astype(np.float64), batch.region_tokens[row],
        words, gt_mask.shape[0], scale, image.size)
    return pictures_lib.Example(image_id, gt, pred, image, pred_regions, gt_regions)


# ----------------------------------------------------------------------------------------------
# Region captions (MSDN): a separate pass over the split, only for captioning models.


def evaluate_captions(exp: Experiment, params: Any, split: str | None = None) -> dict:
    """Greedy captions of the split's ground-truth caption regions ("given regions" protocol,
    all ordered object pairs as phrases) scored by corpus BLEU-4 against each region's phrase
    (`sgg_jax.evaluation.captions.CaptionEvaluator`)."""
    from sgg_jax import relation_sampling
    from sgg_jax.evaluation.captions import CaptionEvaluator
    from sgg_jax.training.steps import model_inputs

    cfg = exp.config
    model, state = exp.model("sgcls"), exp.model_state
    params = {k: v for k, v in params.items() if k != "detector"}

    def captions(p, batch):
        o = batch.boxes.shape[1]
        pairs, pair_mask = relation_sampling.all_pairs(batch.box_mask, o * (o - 1))
        out = model.apply({"params": p, **state}, model_inputs(batch, pairs, pair_mask),
                          train=False)
        return out.aux["captions"]

    step = jax.jit(captions)
    evaluator = CaptionEvaluator(exp.data.idx_to_word)
    seen, limit = 0, int(cfg.eval.max_images)
    for host_batch in tqdm(data_lib.eval_loader(cfg, exp.data, exp.mesh, split or cfg.eval.split),
                           desc="eval[captions]", unit="batch",
                           disable=jax.process_index() != 0, dynamic_ncols=True):
        if 0 <= limit <= seen:
            break
        batch = mesh_lib.to_global(host_batch, exp.mesh)
        caps = eval_loop.gather_to_host(step(params, batch))
        full = eval_loop.gather_to_host(batch)
        for b in range(caps.shape[0]):
            if full.image_ids[b] < 0 or 0 <= limit <= seen:
                continue
            evaluator.add(caps[b], full.region_tokens[b], full.region_mask[b])
            seen += 1
    result = evaluator.compute()
    log.info("region captions (%s): BLEU-4 %.2f over %d regions", result["setting"],
             result["BLEU-4"], result["num_regions"])
    return result


def find_final_checkpoint(config: ml_collections.ConfigDict, root: str
                          ) -> tuple[str, str, int] | None:
    """(stage, directory, step) of the last finished stage's newest checkpoint under `root` (a
    workdir, or one stage's checkpoint directory), or None. Reads only directory listings, so
    `--mode eval` can fail before it builds the data or compiles anything."""
    stages = stage_names(config)
    candidates = [(s, os.path.join(root, "checkpoints", s)) for s in reversed(stages)]
    candidates.append((os.path.basename(root.rstrip("/")), root))
    for stage_name, directory in candidates:
        if not os.path.isdir(directory):
            continue
        ckpt = StageCheckpointer(directory)
        step = ckpt.latest_step()
        ckpt.close()
        if step is not None:
            return stage_name, directory, step
    return None


def _needs_checkpoint(config: ml_collections.ConfigDict, checkpoint: str) -> bool:
    """PredCls/SGCls FREQ is the training table alone; everything else needs trained params."""
    return config.model.name != "freq" or bool(checkpoint) or uses_detector(config)


def _no_checkpoint_error(root: str) -> FileNotFoundError:
    return FileNotFoundError(f"no checkpoint found under {root!r} (expected "
                             f"{root}/checkpoints/<stage>/<step>)")


def restore_final_params(exp: Experiment, rng: jax.Array, checkpoint: str = "") -> Any:
    """Parameters of the last finished stage (from `checkpoint` or the workdir)."""
    params = init_params(exp, rng)
    root = checkpoint or exp.workdir
    found = find_final_checkpoint(exp.config, root)
    if found is None:
        if not _needs_checkpoint(exp.config, checkpoint):
            return params
        raise _no_checkpoint_error(root)
    stage_name, directory, step = found
    ckpt = StageCheckpointer(directory)
    params = ckpt.restore_params(step, abstract_like(params))
    ckpt.close()
    log.info("restored parameters of stage '%s' step %d from %s", stage_name, step, directory)
    return params


def report(exp: Experiment, results: dict[str, dict], name: str = "results.json") -> str:
    """Prints the tables (one per protocol, few-shot, detection) and writes results.json
    (process 0)."""
    path = os.path.join(exp.workdir, name)
    if jax.process_index() == 0:
        print(reporting.format_report(
            results, f"{exp.config.model.name} on {exp.config.data.name}/"
            f"{exp.config.eval.split}"))
        if "detection" in results:
            print(reporting.format_detection_table(
                results["detection"], f"detector ({exp.config.model.detector.backbone}) box mAP "
                f"on {exp.config.data.name}/{exp.config.eval.split} (COCO, %)"))
        if "detection_refined" in results:
            print(reporting.format_detection_table(
                results["detection_refined"], f"SGDet boxes after {exp.config.model.name}'s box "
                f"refinement, box mAP (COCO, %)"))
        write_json_atomic(path, results)
    return path


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the run's full config as `<workdir>/config.json` (process 0, atomic), so that
    `sgg_jax.inference.restore_for_inference` and `--mode eval` users can rebuild the run."""
    path = os.path.join(workdir, "config.json")
    if jax.process_index() == 0:
        write_json_atomic(path, json.loads(config.to_json()))
    return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
    """Runs every stage (resuming where a previous run stopped), then evaluates."""
    stages = stage_names(config)
    exp = setup(config, workdir)
    save_config(config, workdir)
    rng = jax.random.key(config.seed)
    init_rng, train_rng = jax.random.split(rng)
    params = init_params(exp, init_rng)
    writer = reporting.MetricWriter(os.path.join(workdir, "tensorboard"))
    try:
        for stage_name in stages:
            i = stage_seed_index(stages, stage_name)
            params = train_stage(exp, stage_name, params, jax.random.fold_in(train_rng, i),
                                 writer, i)
        results = evaluate(exp, params, num_pictures=int(config.eval.get("num_pictures", 0)))
        for group, vals in reporting.scalar_groups(results).items():
            writer.scalars(0, vals, prefix=f"final_{group}/")
    finally:
        writer.close()
    report(exp, results)
    return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
    """`--config.mode=eval`: evaluate the parameters of a finished run."""
    root = str(config.eval.checkpoint) or workdir
    if _needs_checkpoint(config, str(config.eval.checkpoint)) and \
            find_final_checkpoint(config, root) is None:
        raise _no_checkpoint_error(root)  # before building data or compiling anything
    exp = setup(config, workdir)
    params = restore_final_params(exp, jax.random.key(config.seed), config.eval.checkpoint)
    results = evaluate(exp, params, num_pictures=int(config.eval.get("num_pictures", 0)))
    report(exp, results)
    return results
