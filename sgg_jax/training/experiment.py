"""One run's setup: the config checked before anything runs, the stage plan, the dataset (or
the facts a run saved), the mesh, the model and detector, parameter initialisation, and the
parameters of a finished run.

Every model is reached through its registered `ModelSpec` (sgg_jax/models/registry.py): which
parameter groups and losses its stages may name, the networks it adds (a region RPN) and
its hooks. Nothing here names a model.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from data_pipelines.facts import DatasetFacts
from sgg_jax import models as models_lib
from sgg_jax.losses import EDGE_LOSSES
from sgg_jax.models.backbone import BACKBONES
from sgg_jax.models.detection.config import BACKBONES as DETECTOR_BACKBONES
from sgg_jax.models import registry
from sgg_jax.training import data as data_lib
from sgg_jax.training import mesh as mesh_lib
from sgg_jax.training import detector_source, optim, pretrained, reporting, runs
from sgg_jax.training.checkpointing import StageCheckpointer, abstract_like

log = logging.getLogger("sgg_jax")

RELATION_KIND, DETECTOR_KIND = "relation", "detector"
DETECTION_LOSSES = ("detection",)
OBJECT_SOURCES = ("detector", "model")


# ----------------------------------------------------------------------------------------------
# The stage plan


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One stage this run trains: its config section, kind, training mode and seed index.

    kind: "relation" (the relation model), "detector" (the Faster R-CNN) or an auxiliary
      network's kind (`ModelSpec.auxiliary`, e.g. "regions" for a region RPN).
    mode: what a relation stage trains in ("predcls" | "sgcls"; `stages.<name>.mode`, default
      the run's: sgcls when eval.modes has it).
    seed_index: seeds the stage's rng and data order: its position among the relation stages
      (so adding the SGDet stages leaves PredCls / SGCls training unchanged); the detector 100,
      auxiliary networks 101, 102, ...
    """

    name: str
    config: ml_collections.ConfigDict
    kind: str
    mode: str
    seed_index: int

    @property
    def num_steps(self) -> int:
        return int(self.config.num_steps)


def uses_detector(config: ml_collections.ConfigDict) -> bool:
    """A run has a detector iff it evaluates SGDet or the detector alone ("detection")."""
    modes = optim.split_list(config.eval.modes)
    return "sgdet" in modes or registry.DETECTION_MODE in modes


def default_train_mode(config: ml_collections.ConfigDict) -> str:
    return "sgcls" if "sgcls" in optim.split_list(config.eval.modes) else "predcls"


def stage_kind(name: str, stage: ml_collections.ConfigDict, spec: registry.ModelSpec) -> str:
    """The stage's `kind`; configs saved before the field existed are read by their losses
    (detection -> detector, an auxiliary network's loss -> its kind, else relation)."""
    kind = str(stage.get("kind", "") or "")
    if kind:
        return kind
    losses = optim.split_list(stage.losses)
    if losses == list(DETECTION_LOSSES):
        return DETECTOR_KIND
    for aux in spec.auxiliary:
        if losses == list(aux.losses):
            return aux.kind
    return RELATION_KIND


def plan_stages(config: ml_collections.ConfigDict, spec: registry.ModelSpec | None = None
                ) -> list[StagePlan]:
    """The stages this run trains, in order: the detector stage first when eval.modes contains
    sgdet (added if the order omits it, dropped otherwise: PredCls / SGCls need no detector),
    then the auxiliary networks' stages the order names (also only with sgdet), then the
    relation stages in `train.stage_order` (those in mode sgdet, which train on the detector's
    boxes, also only with a detector). ("detection" in eval.modes also needs the detector.) A
    run that reuses a trained detector (`model.detector.checkpoint`) has no detector stage."""
    spec = spec or registry.spec_for(config.model)
    names = optim.split_list(config.train.stage_order)
    for name in names:
        if name not in config.train.stages:
            raise ValueError(f"config.train.stage_order names '{name}', which is not in "
                             f"config.train.stages ({sorted(config.train.stages)})")
    kinds = {n: stage_kind(n, config.train.stages[n], spec) for n in config.train.stages}
    aux_kinds = [a.kind for a in spec.auxiliary]
    known = (RELATION_KIND, DETECTOR_KIND, *aux_kinds)
    for name in names:
        if kinds[name] not in known:
            raise ValueError(f"config.train.stages.{name}.kind={kinds[name]!r}: expected one of "
                             f"{known} (model {spec.name!r})")
    relation = [n for n in names if kinds[n] == RELATION_KIND]
    if relation and not spec.relations:
        raise ValueError(f"config.train.stage_order names relation stages {relation}, but "
                         f"model {spec.name!r} has no relation model (stage_order='detector')")
    train_mode = default_train_mode(config)
    plan = []
    reused = bool(config.model.detector.get("checkpoint", ""))  # no detector stage then
    if uses_detector(config) and not reused:
        detector = [n for n in config.train.stages if kinds[n] == DETECTOR_KIND]
        if not detector:
            raise ValueError(f"config.eval.modes={config.eval.modes!r} needs a trained "
                             "detector: config.train.stages has no stage of kind 'detector'")
        name = next((n for n in names if kinds[n] == DETECTOR_KIND), detector[0])
        plan.append(StagePlan(name, config.train.stages[name], DETECTOR_KIND, "sgdet", 100))
    if uses_detector(config):
        for i, kind in enumerate(aux_kinds):
            for n in names:
                if kinds[n] == kind:
                    plan.append(StagePlan(n, config.train.stages[n], kind, "sgdet", 101 + i))
    for i, name in enumerate(relation):
        mode = str(config.train.stages[name].get("mode", "") or "") or train_mode
        if mode == "sgdet" and not uses_detector(config):
            continue  # it trains on the detector's boxes: only in runs that have one
        plan.append(StagePlan(name, config.train.stages[name], RELATION_KIND, mode, i))
    return plan


def kind_groups(spec: registry.ModelSpec, kind: str) -> tuple[str, ...]:
    """The parameter groups a stage of `kind` may train."""
    if kind == RELATION_KIND:
        return spec.param_groups
    if kind == DETECTOR_KIND:
        return (registry.DETECTOR_GROUP,)
    return tuple(a.group for a in spec.auxiliary if a.kind == kind)


def kind_losses(spec: registry.ModelSpec, kind: str) -> tuple[str, ...]:
    """The loss names a stage of `kind` may train on."""
    if kind == RELATION_KIND:
        return spec.loss_names
    if kind == DETECTOR_KIND:
        return DETECTION_LOSSES
    return tuple(n for a in spec.auxiliary if a.kind == kind for n in a.losses)


def _check_stage(plan: StagePlan, spec: registry.ModelSpec,
                 train: ml_collections.ConfigDict) -> None:
    """A stage's trainable groups, losses, optimizers and mode against what the model
    declares (a typo fails here, not as a silent zero loss after data preparation)."""
    where = f"config.train.stages.{plan.name}"
    groups, losses = kind_groups(spec, plan.kind), kind_losses(spec, plan.kind)
    for opt_name, opt in optim.optimizer_specs(plan.config).items():
        label = where if opt_name == optim.MAIN else f"{where}.optimizers.{opt_name}"
        bad = [g for g in optim.split_list(opt.trainable) if g.split("/")[0] not in groups]
        if bad:
            raise ValueError(f"{label}.trainable: unknown parameter groups {bad}; a "
                             f"'{plan.kind}' stage of model {spec.name!r} may train "
                             f"{', '.join(groups)}")
        names = optim.split_list(opt.losses)
        bad = [n for n in names if n not in losses]
        if bad or not names:
            raise ValueError(f"{label}.losses={opt.losses!r}: unknown or no loss terms "
                             f"{bad}; a '{plan.kind}' stage of model {spec.name!r} may name "
                             f"{', '.join(losses)}")
    schedules = {o.schedule for o in optim.optimizer_specs(plan.config).values()}
    bad = sorted(schedules - set(optim.SCHEDULES))
    if bad:
        raise ValueError(f"{where}.schedule={bad[0]!r}: expected one of {optim.SCHEDULES}")
    if "plateau" in schedules:
        if plan.kind != RELATION_KIND:
            raise ValueError(f"{where}.schedule='plateau': only relation stages are validated "
                             "(their recall drives it)")
        if int(optim.plateau_settings(train).every) <= 0:
            raise ValueError(f"{where}.schedule='plateau' needs config.train.plateau.every > 0 "
                             "(steps between its validations)")
    if plan.mode not in registry.MODES:
        raise ValueError(f"{where}.mode={plan.mode!r}: expected one of {registry.MODES}")


# Numeric fields and the values that make sense: (dotted key, smallest value, what to say).
POSITIVE = 1
RANGES = (
    ("input.batch_size", POSITIVE), ("input.eval_batch_size", POSITIVE),
    ("input.image_size", POSITIVE), ("input.max_objects", POSITIVE),
    ("input.max_relations", POSITIVE), ("input.max_regions", 0), ("input.max_phrase_len", 0),
    ("input.detector_image_size", 0), ("input.worker_count", 0), ("input.flip_prob", 0),
    ("data.image_size", POSITIVE), ("data.num_train", POSITIVE), ("data.num_val", 0),
    ("data.num_test", POSITIVE), ("train.checkpoint_every", POSITIVE),
    ("train.log_every", POSITIVE), ("train.eval_every", 0), ("train.keep_checkpoints", POSITIVE),
    ("eval.num_pictures", 0), ("model.detector.detections_per_image", POSITIVE),
    ("distributed.heartbeat_timeout_s", POSITIVE), ("train.weight_decay", 0),
    ("train.grad_clip_norm", 0),
    ("model.detector.score_thresh", 0), ("model.detector.nms", 0),
)
STAGE_RANGES = (("num_steps", 0), ("warmup_steps", 0), ("learning_rate", 0))


def _field(config: ml_collections.ConfigDict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            return None
        node = node[part]
    return node


def check_ranges(config: ml_collections.ConfigDict) -> None:
    """Sizes, counts and rates out of range are refused, naming the field and what it takes
    (before they reach a shape, a division or a data loader deep inside)."""
    checks = [(key, low) for key, low in RANGES] + [
        (f"train.stages.{name}.{field}", low) for name in config.train.stages
        for field, low in STAGE_RANGES]
    for key, low in checks:
        value = _field(config, key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value < low:
            want = "a positive number" if low == POSITIVE else "zero or more"
            raise ValueError(f"config.{key}={value!r}: expected {want}")
    for key in ("input.flip_prob", "model.detector.score_thresh", "model.detector.nms"):
        value = _field(config, key)
        if isinstance(value, (int, float)) and not 0 <= value <= 1:
            raise ValueError(f"config.{key}={value!r}: expected a value in [0, 1]")
    eps = _field(config, "train.adam_eps")
    if isinstance(eps, (int, float)) and not eps > 0:
        raise ValueError(f"config.train.adam_eps={eps!r}: expected a positive number")
    ks = _field(config, "eval.ks")
    if ks is not None and (not ks or any(int(k) <= 0 for k in ks)):
        raise ValueError(f"config.eval.ks={tuple(ks)!r}: expected positive K values, e.g. "
                         "(20, 50, 100)")


def check_choices(config: ml_collections.ConfigDict) -> None:
    """Fields that take one of a few names, checked before any data is generated (a typo in
    a field the run does not use, such as the detector's backbone without SGDet, included)."""
    choices = [("model.backbone", BACKBONES), ("model.detector.backbone", DETECTOR_BACKBONES),
               ("loss.edge", EDGE_LOSSES), ("model.dtype", tuple(registry.DTYPES))]
    for name, stage in config.train.stages.items():
        choices.append((f"train.stages.{name}.optimizer", optim.OPTIMIZERS))
        for sub, opt in (stage.get("optimizers") or {}).items():
            if "optimizer" in opt:
                choices.append((f"train.stages.{name}.optimizers.{sub}.optimizer",
                                optim.OPTIMIZERS))
        optim.update_rule(stage)
    for key, allowed in choices:
        value = _field(config, key)
        if value is not None and value not in allowed:
            raise ValueError(f"config.{key}={value!r}: expected one of {', '.join(allowed)}")


def validate(config: ml_collections.ConfigDict, training: bool = True) -> registry.ModelSpec:
    """Everything about a config that can be checked before data is generated or anything
    compiles: the model is registered and its requirements are declared, the stages name groups
    and losses the model has, evaluation options are valid, and (`training`) the pretrained
    weight files exist. Returns the model's spec."""
    check_ranges(config)
    check_choices(config)
    spec = registry.spec_for(config.model)
    for key, allowed in spec.choices.items():
        value = registry.option(config.model, key, spec)
        if value not in allowed:
            raise ValueError(f"config.model.{key}={value!r}: expected one of "
                             f"{', '.join(allowed)} (model {spec.name!r})")
    modes = optim.split_list(config.eval.modes)
    allowed = registry.MODES + (registry.DETECTION_MODE,) if spec.relations else (
        registry.DETECTION_MODE,)
    bad = [m for m in modes if m not in allowed]
    if bad or not modes:
        raise ValueError(f"config.eval.modes={config.eval.modes!r}: expected a comma list of "
                         f"{', '.join(allowed)} (model {spec.name!r})")
    reporting.parse_protocols(config.eval.get("protocols", "motifs,msdn"))
    source = str(config.eval.get("sgdet_object_source", "detector"))
    if source not in OBJECT_SOURCES:
        raise ValueError(f"config.eval.sgdet_object_source={source!r}: expected one of "
                         f"{OBJECT_SOURCES}")
    if spec.sgdet_reads_labels and source != "detector":
        raise ValueError(f"config.eval.sgdet_object_source: model {spec.name!r} looks its "
                         "predicates up by the detector's labels, so its objects must come from "
                         f"the 'detector' too (got {source!r})")
    if config.eval.get("sgdet_refine_boxes", False) and not spec.sgdet_refines_boxes:
        raise ValueError(f"config.eval.sgdet_refine_boxes: model {spec.name!r} has no "
                         "box-refinement head")
    for plan in plan_stages(config, spec):
        _check_stage(plan, spec, config.train)
    if training:
        pretrained.check_pretrained(config)
        if uses_detector(config):
            detector_source.check_config(config)
    return spec


# ----------------------------------------------------------------------------------------------
# The experiment


@dataclasses.dataclass
class Experiment:
    """What training and evaluation share: config, mesh, dataset facts (and the data when the
    run reads it), the model's spec, the stage plan and the non-trainable model collections."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    facts: DatasetFacts
    spec: registry.ModelSpec
    stages: list[StagePlan]
    data: Any = None  # data_pipelines.dataset.PreparedDataset, None for inference alone
    # Non-trainable collections (e.g. frozen batch-norm statistics of ResNet-50), fixed at
    # initialisation (or by weight import) and passed to every apply.
    model_state: dict = dataclasses.field(default_factory=dict)
    detector_state: dict = dataclasses.field(default_factory=dict)
    # The top-level parameter groups of this run's params (set by init_params).
    groups: tuple[str, ...] = ()
    # A trained detector this run reuses (model.detector.checkpoint), or None.
    detector_source: Any = None

    def model(self, mode: str):
        return registry.build_model(self.config.model, self.facts, mode)

    @property
    def uses_detector(self) -> bool:
        return uses_detector(self.config)

    def detector(self):
        return models_lib.build_detector(self.config.model, num_classes=self.facts.num_classes)

    @property
    def auxiliary(self) -> list[registry.AuxiliaryNetwork]:
        """The model's auxiliary networks this run trains (their stage is in the plan)."""
        kinds = {p.kind for p in self.stages}
        return [a for a in self.spec.auxiliary if a.kind in kinds]

    def frozen_collections(self) -> dict:
        """The non-empty non-trainable collections, as checkpoints keep them."""
        return {k: v for k, v in (("model", self.model_state),
                                  ("detector", self.detector_state)) if v}

    @property
    def declared_groups(self) -> tuple[str, ...]:
        """The top-level groups of this run's params: after initialisation the real ones, before
        it those the spec declares (plus the detector and auxiliary networks with SGDet)."""
        if self.groups:
            return self.groups
        extra = ((registry.DETECTOR_GROUP,) + tuple(a.group for a in self.auxiliary)
                 if self.uses_detector else ())
        return tuple(self.spec.param_groups) + extra

    def checkpoint_dir(self, stage: str) -> str:
        return runs.stage_dir(self.workdir, stage)

    def relation_params(self, params: Any) -> Any:
        """The relation model's groups of the run's params (not the detector's or the
        auxiliary networks')."""
        other = {registry.DETECTOR_GROUP} | {a.group for a in self.spec.auxiliary}
        return {k: v for k, v in params.items() if k not in other}


def enable_compilation_cache(directory: str) -> None:
    """Persists compiled XLA programs, so a re-run or resume does not compile again."""
    if directory == "off":
        return
    directory = directory or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        "~", ".cache", "sgg_jax", "xla")
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def initialize_runtime(config: ml_collections.ConfigDict) -> None:
    """The first thing every entry path does: `jax.distributed.initialize` for multi-host runs
    (before anything touches a JAX backend, Orbax included) and the compilation cache."""
    d = config.distributed
    mesh_lib.maybe_initialize_distributed(d.coordinator_address, d.num_processes, d.process_id,
                                          d.initialize, int(d.get("heartbeat_timeout_s", 100)))
    enable_compilation_cache(str(config.train.compilation_cache_dir))


def complete_config(config: ml_collections.ConfigDict) -> None:
    """The model's `complete_config` hook, if it has one (see registry.ModelSpec)."""
    spec = registry.spec_for(config.model)
    if spec.complete_config is not None:
        with config.unlocked():
            spec.complete_config(config)


def setup(config: ml_collections.ConfigDict, workdir: str, *,
          facts: DatasetFacts | None = None, training: bool = True) -> Experiment:
    """Checks the config, initialises the runtime, makes the mesh and prepares the dataset
    (or, given `facts`, reads no data at all: inference from a run directory). `training=False`
    (evaluating or predicting a trained run) skips what only initialisation reads (pretrained
    weight files)."""
    if training:
        complete_config(config)
    spec = validate(config, training)
    initialize_runtime(config)
    os.makedirs(workdir, exist_ok=True)
    mesh = mesh_lib.make_mesh(config.train.data_parallel)
    data = None
    if facts is None:
        data = data_lib.prepare(config)
        facts = data.facts
    registry.check_requirements(spec, facts)
    source = detector_source.check_config(config) if training and uses_detector(config) \
        else None
    if source is not None:
        detector_source.check_classes(source, facts)
        # the run's saved config keeps the detector's canvas (the source may not travel)
        config.input.detector_image_size = detector_source.canvas_size(config)
    return Experiment(config=config, workdir=workdir, mesh=mesh, facts=facts, spec=spec,
                      stages=plan_stages(config, spec), data=data, detector_source=source)


def _rbg_key(rng: jax.Array) -> jax.Array:
    """An `rbg` key from `rng`: XLA compiles RngBitGenerator far faster than threefry on CPU
    (initialisation compiled ~2x faster here); values are deterministic per seed and backend."""
    return jax.random.key(int(jax.device_get(jax.random.key_data(rng))[-1]), impl="rbg")


def init_params(exp: Experiment, rng: jax.Array, load_pretrained: bool = True) -> Any:
    """Initial parameters of the relation model, the detector (runs with SGDet) and the
    auxiliary networks this run trains, replicated over the mesh; pretrained weights given in
    the config are imported (sgg_jax/training/pretrained.py) unless `load_pretrained` is False
    (the parameters are about to be restored from a checkpoint)."""
    from sgg_jax.training.steps import model_inputs

    model = exp.model(default_train_mode(exp.config))
    rng = _rbg_key(rng)
    dummy = data_lib.dummy_batch(exp.config, exp.facts)
    num_obj = dummy.boxes.shape[1]
    pairs = jnp.zeros((dummy.boxes.shape[0], num_obj, 2), jnp.int32)
    inputs = model_inputs(jax.tree.map(jnp.asarray, dummy), pairs,
                          jnp.zeros(pairs.shape[:2], bool))
    replicated = mesh_lib.replicated(exp.mesh)
    variables = jax.jit(lambda r: model.init({"params": r, "dropout": r}, inputs, train=False),
                        out_shardings=replicated)(rng)
    exp.model_state = {k: v for k, v in variables.items() if k != "params"}
    params = dict(variables.get("params", {}))
    if exp.uses_detector:
        detector = exp.detector()
        images, sizes = jnp.asarray(dummy.images), jnp.asarray(dummy.image_sizes)
        det_vars = jax.jit(
            lambda r: detector.init({"params": r, "sampling": r, "dropout": r}, images, sizes),
            out_shardings=replicated)(jax.random.fold_in(rng, 1))
        exp.detector_state = {k: v for k, v in det_vars.items() if k != "params"}
        params[registry.DETECTOR_GROUP] = det_vars["params"]
        if load_pretrained and exp.detector_source is not None:
            params[registry.DETECTOR_GROUP], exp.detector_state = detector_source.load(
                exp.detector_source, det_vars["params"], exp.detector_state)
            det_vars = dict(det_vars, params=params[registry.DETECTOR_GROUP])
            log.info("detector: %s step %d (model.detector.checkpoint)",
                     exp.detector_source.directory, exp.detector_source.step)
        for i, aux in enumerate(exp.auxiliary):
            params[aux.group] = jax.jit(
                lambda r, p, aux=aux: aux.init(exp, r, p, images, sizes),
                out_shardings=replicated)(jax.random.fold_in(rng, 2 + i), det_vars["params"])
    if load_pretrained:
        params, exp.model_state, exp.detector_state = pretrained.apply_pretrained(
            exp.config, params, exp.model_state, exp.detector_state)
    exp.groups = tuple(params)
    return params


# ----------------------------------------------------------------------------------------------
# Finished runs


def _trains_something(plan: StagePlan, exp: Experiment) -> bool:
    """Whether a stage has anything to train in this run (else it is skipped, no checkpoint)."""
    groups = {g.split("/")[0] for o in optim.optimizer_specs(plan.config).values()
              for g in optim.split_list(o.trainable)}
    return plan.num_steps > 0 and bool(groups & set(exp.declared_groups))


def stage_progress(plan: StagePlan, directory: str) -> tuple[int | None, bool]:
    """(latest committed step or None, finished) of a stage's checkpoint directory. Runs saved
    before stages recorded `finished.json` count as finished at their configured last step."""
    steps = runs.checkpoint_steps(directory)
    latest = steps[-1] if steps else None
    finished = runs.finished_step(directory) is not None or (
        latest is not None and latest >= plan.num_steps)
    return latest, finished


@dataclasses.dataclass(frozen=True)
class FinalCheckpoint:
    """Where a run's parameters are restored from; `partial` describes an unfinished stage
    whose parameters were accepted (`{stage, step, num_steps}`), else None."""

    stage: str
    directory: str
    step: int
    partial: dict | None = None


def find_final_checkpoint(exp: Experiment, root: str, allow_partial: bool = False
                          ) -> FinalCheckpoint | None:
    """The checkpoint a finished run is evaluated with, under `root` (a workdir, or one
    stage's checkpoint directory), from directory listings only.

    Every stage of the plan that trains something must have finished; the last one's final
    checkpoint is returned. An unfinished stage raises `runs.UnfinishedRunError` naming the stage
    and its step, unless `allow_partial`, in which case the newest checkpoint of the last stage
    that has one is returned with `partial` set. None when there is no checkpoint at all.
    """
    root = os.path.abspath(root)
    plans = {p.name: p for p in exp.stages}
    if runs.checkpoint_steps(root) and os.path.basename(root) in plans:  # one stage's directory
        order = [plans[os.path.basename(root)]]
        dirs = {order[0].name: root}
    else:
        order = [p for p in exp.stages if _trains_something(p, exp)]
        dirs = {p.name: runs.stage_dir(root, p.name) for p in order}
    last, partial = None, None
    for plan in order:
        latest, finished = stage_progress(plan, dirs[plan.name])
        if not finished:
            if not allow_partial:
                where = (f"at step {latest} of {plan.num_steps}" if latest is not None
                         else "before its first checkpoint")
                raise runs.UnfinishedRunError(
                    f"{root}: stage '{plan.name}' stopped {where} ({dirs[plan.name]}); run the "
                    "same training command again to finish it, or pass "
                    "--config.eval.allow_partial=True to evaluate it as it is (results.json "
                    "then says so)")
            if latest is not None:
                last = FinalCheckpoint(plan.name, dirs[plan.name], latest)
                partial = dict(stage=plan.name, step=latest, num_steps=plan.num_steps)
            break
        last = FinalCheckpoint(plan.name, dirs[plan.name], latest)
    if last is None:
        return None
    return dataclasses.replace(last, partial=partial)


def needs_checkpoint(exp: Experiment) -> bool:
    """Whether evaluation needs trained parameters: any model with a detector, and every model
    but those that work from their initial parameters (`ModelSpec.needs_training` False, e.g. a
    pure statistics lookup in PredCls / SGCls)."""
    return exp.spec.needs_training or exp.uses_detector


def restore_final_params(exp: Experiment, rng: jax.Array, checkpoint: str = "",
                         allow_partial: bool = False) -> tuple[Any, dict | None]:
    """(parameters of the finished run from `checkpoint` or the workdir, partial info or
    None). Only the groups this run's model has are read (evaluation without SGDet skips a
    saved detector)."""
    params = init_params(exp, rng, load_pretrained=False)
    root = checkpoint or exp.workdir
    found = find_final_checkpoint(exp, root, allow_partial)
    if found is None:
        if not needs_checkpoint(exp) and not checkpoint:
            return params, None
        raise FileNotFoundError(f"no checkpoint found under {root!r} (expected "
                                f"{root}/checkpoints/<stage>/<step>)")
    ckpt = StageCheckpointer(found.directory)
    params, frozen = ckpt.restore_params(found.step, abstract_like(params),
                                         exp.frozen_collections())
    ckpt.close()
    exp.model_state = dict(frozen.get("model", exp.model_state))
    exp.detector_state = dict(frozen.get("detector", exp.detector_state))
    log.info("restored parameters of stage '%s' step %d from %s%s", found.stage, found.step,
             found.directory, " (UNFINISHED: partial)" if found.partial else "")
    return params, found.partial


def given_box_stage(exp: Experiment) -> StagePlan | None:
    """When the run's last relation stage trains on detections (mode sgdet: neural-motifs' and
    KERN's SGDet refinement), the last relation stage before it on ground-truth boxes: PredCls
    and SGCls are evaluated with that stage's parameters, as both codebases do (the refined
    checkpoint serves SGDet). None otherwise (one checkpoint serves every mode)."""
    trained = [p for p in exp.stages if p.kind == RELATION_KIND and _trains_something(p, exp)]
    if not trained or trained[-1].mode != "sgdet":
        return None
    before = [p for p in trained if p.mode != "sgdet"]
    return before[-1] if before else None


def restore_stage_params(exp: Experiment, plan: StagePlan, like: Any, root: str = "") -> Any:
    """The final parameters of one finished stage of the run under `root` (default the
    workdir), placed like `like`; an unfinished stage raises `runs.UnfinishedRunError`."""
    directory = runs.stage_dir(root or exp.workdir, plan.name)
    latest, finished = stage_progress(plan, directory)
    if not finished:
        raise runs.UnfinishedRunError(f"{directory}: stage '{plan.name}' has not finished "
                                      "(its parameters serve PredCls and SGCls)")
    ckpt = StageCheckpointer(directory)
    try:
        params, _ = ckpt.restore_params(runs.finished_step(directory) or latest,
                                        abstract_like(like), exp.frozen_collections())
    finally:
        ckpt.close()
    return params


def mode_params(exp: Experiment, params: Any, root: str = "") -> tuple[dict, dict]:
    """({mode: parameters} for the modes not evaluated with `params`, {mode: stage name} of
    every evaluated relation mode) for `eval_loop.evaluate`: see `given_box_stage`."""
    modes = [m for m in optim.split_list(exp.config.eval.modes) if m in registry.MODES]
    gt_stage = given_box_stage(exp)
    last = [p for p in exp.stages if p.kind == RELATION_KIND and _trains_something(p, exp)]
    if gt_stage is None:
        return {}, ({m: last[-1].name for m in modes} if last else {})
    gt_params = restore_stage_params(exp, gt_stage, params, root)
    given = {m: gt_params for m in modes if m != "sgdet"}
    return given, {m: (gt_stage.name if m in given else last[-1].name) for m in modes}


def save_run_files(exp: Experiment) -> None:
    """config.json and the dataset facts into the run directory (process 0), so the run can be
    evaluated and used for prediction from its directory alone."""
    if jax.process_index() == 0:
        runs.save_config(exp.config, exp.workdir)
        exp.facts.save(runs.facts_dir(exp.workdir))


__all__ = ["Experiment", "StagePlan", "setup", "validate", "plan_stages", "init_params",
           "given_box_stage", "restore_stage_params", "mode_params",
           "initialize_runtime", "find_final_checkpoint", "restore_final_params",
           "save_run_files", "uses_detector", "FinalCheckpoint"]
