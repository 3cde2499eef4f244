"""Staged training and evaluation: the one training system every model uses.

Flow: config (checked first: `experiment.validate`) -> dataset (synthetic or local VG150 /
VG-MSDN, through TFDS + grain) -> model (its registered spec) -> for each planned stage:
restore or start, jitted train steps over a device mesh, Orbax checkpoints with the grain
iterator state, a `finished.json` marker after the last step -> evaluation of every mode
against the full ground truth -> results.json. `evaluate_run` evaluates a finished run
directory with the config it was trained with.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from sgg_jax.io_utils import write_json_atomic
from sgg_jax.training import data as data_lib
from sgg_jax.training import detector_source
from sgg_jax.training import detections, eval_loop, experiment, optim, preemption, reporting, runs
from sgg_jax.training import mesh as mesh_lib
from sgg_jax.training.checkpointing import CheckpointError, StageCheckpointer, abstract_like
from sgg_jax.training.experiment import (DETECTOR_KIND, RELATION_KIND, Experiment, StagePlan,
                                         init_params, setup)
from sgg_jax.training.steps import (Optimizers, TrainState, detector_loss, make_loss_step,
                                    make_relation_step)

log = logging.getLogger("sgg_jax")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


def _check_finite(state: TrainState, stage: str, ckpt: StageCheckpointer) -> None:
    bad = int(jax.device_get(state.nonfinite))
    if bad:
        last = ckpt.latest_step()
        raise NonFiniteLossError(
            f"stage '{stage}': the loss became NaN/Inf ({bad} step(s), updates skipped) by step "
            f"{int(jax.device_get(state.step))}; the last good checkpoint is step {last} in "
            f"{ckpt.directory}. Lower the learning rate or enable gradient clipping "
            "(config.train.grad_clip_norm).")


def make_stage_step(exp: Experiment, plan: StagePlan, optimizers: Optimizers):
    """The pure train step of a stage, by its kind."""
    if plan.kind == DETECTOR_KIND:
        return make_loss_step(detector_loss(exp.detector(), exp.detector_state), optimizers)
    if plan.kind != RELATION_KIND:
        aux = next(a for a in exp.auxiliary if a.kind == plan.kind)
        return make_loss_step(aux.make_loss(exp), optimizers)
    specs = optim.optimizer_specs(plan.config)
    names = tuple(dict.fromkeys(n for o in specs.values() for n in optim.split_list(o.losses)))
    extras, kept = None, names
    if exp.spec.train_extras is not None:
        extras, kept = exp.spec.train_extras(exp, plan.name, names)
    opt_losses = {n: tuple(x for x in optim.split_list(specs[n].losses) if x in kept)
                  for n in optimizers}
    on_detections = None
    if plan.mode == "sgdet":  # the model trains on the frozen detector's boxes
        hooks = exp.spec.sgdet(exp) if exp.spec.sgdet is not None else None
        sampling = exp.config.sampling
        on_detections = detections.make_training_detections(
            exp.detector(), exp.detector_state, num_rels=int(sampling.num_rels),
            fg_fraction=float(sampling.fg_fraction), must_overlap=bool(sampling.must_overlap),
            extra_inputs=hooks.extra_inputs if hooks is not None else None)
    return make_relation_step(
        exp.model(plan.mode), optimizers, opt_losses, config=exp.config,
        model_losses=exp.spec.losses, relation_params=exp.relation_params,
        update=optim.update_rule(plan.config), model_state=exp.model_state, extras=extras,
        detections=on_detections)


def restore_from(exp: Experiment, plan: StagePlan, params: Any) -> Any:
    """A fresh stage's `restore_from`: parameters of another run (its final checkpoint) or of
    one stage directory, loaded into `restore_into` (a group of this run, "" = the top level);
    `restore_groups` (comma list, "" = every group both have) says which groups are taken.
    Shapes must match exactly (an error names the first that does not)."""
    source = str(plan.config.get("restore_from", "") or "")
    if not source:
        return params
    into = str(plan.config.get("restore_into", "") or "")
    groups = optim.split_list(plan.config.get("restore_groups", ""))
    raw = load_run_params(source)
    target = params[into] if into else params
    if into and into not in params:
        raise ValueError(f"config.train.stages.{plan.name}.restore_into={into!r}: this run has "
                         f"no such group ({sorted(params)})")
    names = groups or [g for g in raw if g in target]
    missing = [g for g in names if g not in raw or g not in target]
    if missing or not names:
        raise ValueError(f"config.train.stages.{plan.name}.restore_from={source!r}: groups "
                         f"{missing or names} are not in both the source ({sorted(raw)}) and "
                         f"this run's {'params' if not into else into} ({sorted(target)})")
    loaded = {}
    for g in names:
        loaded[g] = _graft(target[g], raw[g], f"{source}: {g}")
    new_target = {**target, **loaded}
    log.info("stage '%s': groups %s restored from %s%s", plan.name, names, source,
             f" into '{into}'" if into else "")
    return {**params, into: new_target} if into else new_target


def _graft(like: Any, value: Any, where: str) -> Any:
    """`value` (NumPy tree) placed like `like` (same structure and shapes, same sharding)."""
    flat_like, tree = jax.tree_util.tree_flatten_with_path(like)
    flat_val = dict(jax.tree_util.tree_flatten_with_path(value)[0])
    out = []
    for path, leaf in flat_like:
        if path not in flat_val:
            raise ValueError(f"{where}: {jax.tree_util.keystr(path)} is missing in the source")
        v = np.asarray(flat_val[path])
        if v.shape != leaf.shape:
            raise ValueError(f"{where}: {jax.tree_util.keystr(path)} has shape {v.shape} there "
                             f"and {leaf.shape} here")
        out.append(jax.device_put(v.astype(leaf.dtype), leaf.sharding))
    return jax.tree_util.tree_unflatten(tree, out)


def load_run_params(path: str) -> dict:
    """The parameters (NumPy) of a finished run's last finished stage, or of one stage's
    checkpoint directory (its final step), without building that run's model."""
    path = os.path.abspath(os.path.expanduser(path))
    steps = runs.checkpoint_steps(path)
    if steps:
        directory = path
    else:
        workdir, _ = runs.find_run(path)
        config = runs.load_run_config(workdir)
        order = list(config.train.stages) if "stages" in config.train else []
        done = [s for s in order if runs.finished_step(runs.stage_dir(workdir, s)) is not None]
        if not done:
            raise runs.UnfinishedRunError(f"{path}: no finished stage to load parameters from")
        # the stage that finished last holds every group trained before it
        directory = max((runs.stage_dir(workdir, s) for s in done),
                        key=lambda d: os.path.getmtime(os.path.join(d, runs.FINISHED_FILE)))
        steps = runs.checkpoint_steps(directory)
    step = runs.finished_step(directory) or steps[-1]
    ckpt = StageCheckpointer(directory)
    try:
        return ckpt.restore_raw_params(step)
    finally:
        ckpt.close()


def train_stage(exp: Experiment, plan: StagePlan, params: Any, rng: jax.Array,
                writer: reporting.MetricWriter,
                stop: preemption.StopRequest | None = None) -> Any:
    """Runs (or resumes, or skips when finished) one stage; returns its final parameters. On
    a SIGTERM / SIGINT (`stop`, the run's; else the stage's own) it checkpoints the step it
    finished and raises `preemption.Preempted`."""
    cfg = exp.config
    num_steps = plan.num_steps
    optimizers = optim.make_optimizers(plan.config, cfg.train, params)
    if not optimizers or num_steps <= 0:
        if plan.config.get("restore_from", ""):  # a restore-only stage: loads, trains nothing
            return restore_from(exp, plan, params)
        log.info("stage '%s': nothing to train for this model (%s); skipped", plan.name,
                 plan.config.trainable)
        return params
    ckpt = StageCheckpointer(exp.checkpoint_dir(plan.name), keep=cfg.train.keep_checkpoints)
    replicated = mesh_lib.replicated(exp.mesh)
    loader = data_lib.train_loader(cfg, exp.data, exp.mesh,
                                   seed=cfg.seed + 1000 * plan.seed_index)
    iterator = iter(loader)
    fresh = ckpt.latest_step() is None
    if fresh:
        params = restore_from(exp, plan, params)
    frozen = exp.frozen_collections()
    state = jax.jit(lambda p, f: TrainState.create(p, optimizers, f),
                    out_shardings=replicated)(params, frozen)
    restored = None if fresh else ckpt.restore_latest(
        abstract_like(state), iterator, bool(cfg.train.get("restore_fallback", False)))
    if restored is None and not fresh:
        raise CheckpointError(f"{ckpt.directory}: no checkpoint of this stage restores (all "
                              "were moved aside); move the directory away to train it afresh")
    start = restored[0] if restored else None
    if restored is not None:
        state = restored[1]
        log.info("stage '%s': resumed from step %d (%s)", plan.name, start, ckpt.directory)
        finished = runs.finished_step(ckpt.directory)
        if finished is not None and start < finished and jax.process_index() == 0:
            os.remove(os.path.join(ckpt.directory, runs.FINISHED_FILE))  # fell back below it
        if start >= num_steps or (finished is not None and start >= finished):
            if runs.finished_step(ckpt.directory) is None and jax.process_index() == 0:
                runs.mark_finished(ckpt.directory, plan.name, start, num_steps)
            ckpt.close()  # done (a plateau stage may have ended before num_steps)
            return state.params
    step_fn = make_stage_step(exp, plan, optimizers)
    batch_sharding = mesh_lib.data_sharding(exp.mesh)
    train_step = jax.jit(step_fn, in_shardings=(replicated, batch_sharding, replicated),
                         out_shardings=(replicated, replicated), donate_argnums=(0,))
    step = int(jax.device_get(state.step))
    bar = tqdm(total=num_steps, initial=step, desc=f"train[{plan.name}]", unit="step",
               disable=jax.process_index() != 0, dynamic_ncols=True)
    log_every, ckpt_every = max(int(cfg.train.log_every), 1), max(int(cfg.train.checkpoint_every), 1)
    eval_every = int(cfg.train.eval_every)
    plateau = optim.plateau_settings(cfg.train)
    validate_every = int(plateau.every) if optim.plateau_state(state.opt_state) else 0
    t0 = time.perf_counter()
    saved = start

    def save() -> None:
        _check_finite(state, plan.name, ckpt)
        ckpt.save(step, state, iterator, dict(stage=plan.name, step=step, num_steps=num_steps))

    try:
        with contextlib.ExitStack() as stack:
            if stop is None:
                stop = stack.enter_context(preemption.StopRequest(sync_every=log_every))
            while step < num_steps:
                batch = mesh_lib.to_global(next(iterator), exp.mesh)
                state, metrics = train_step(state, batch, rng)
                step += 1
                bar.update(1)
                if step % log_every == 0 or step == num_steps:
                    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    _check_finite(state, plan.name, ckpt)
                    host["images_per_s"] = log_every * cfg.input.batch_size / max(
                        time.perf_counter() - t0, 1e-9)
                    t0 = time.perf_counter()
                    bar.set_postfix(loss=f"{host['loss']:.4f}")
                    writer.scalars(step, host, prefix=f"{plan.name}/")
                ended = False
                if validate_every and step % validate_every == 0 and step < num_steps:
                    # before the checkpoint of this step, which then holds the new rate
                    state, ended = _plateau_validation(exp, plan, state, step, plateau, writer)
                if step % ckpt_every == 0 or step == num_steps or ended:
                    save()
                    saved = step
                if ended:
                    break
                if stop.should_stop(step) and step < num_steps:
                    if saved != step:
                        save()
                    ckpt.wait()
                    raise preemption.Preempted(stop.signal_name, plan.name, step, num_steps,
                                               ckpt.directory)
                if eval_every and step % eval_every == 0 and step < num_steps:
                    results = eval_loop.evaluate(exp, state.params)
                    groups = reporting.scalar_groups(results)
                    for group, vals in groups.items():
                        writer.scalars(step, vals, prefix=f"eval_{group}/")
                    reporting.append_history(exp.workdir, plan.name, step, groups)
        ckpt.wait()
        if jax.process_index() == 0:
            runs.mark_finished(ckpt.directory, plan.name, step, num_steps)
    finally:
        # An interrupted run still finishes writing the checkpoint it had started (an in-flight
        # save is atomic: a killed process leaves only a *.orbax-checkpoint-tmp directory,
        # which restore ignores).
        bar.close()
        ckpt.close()
    return state.params


def _plateau_validation(exp: Experiment, plan: StagePlan, state: TrainState, step: int,
                        plateau: Any, writer: reporting.MetricWriter) -> tuple[TrainState, bool]:
    """A plateau stage's validation: the stage's mode on `plateau.split`, its metric into the
    plateau state (`optim.plateau_step`); returns the new state and whether the stage ends
    (an optimizer's rate at most `stop_below` x the stage's learning rate)."""
    results = eval_loop.evaluate(exp, state.params, split=str(plateau.split), modes=(plan.mode,))
    if str(plateau.metric) not in results.get(plan.mode, {}):
        raise ValueError(f"config.train.plateau.metric={plateau.metric!r}: not among the "
                         f"{plan.mode} results of the neural-motifs protocol (eval.protocols "
                         f"must include motifs; metrics: {sorted(results.get(plan.mode, {}))})")
    metric = float(results[plan.mode][str(plateau.metric)])
    opt_state, new = optim.plateau_step(jax.device_get(state.opt_state), metric, plateau)
    state = state.replace(opt_state=jax.device_put(opt_state, mesh_lib.replicated(exp.mesh)))
    writer.scalars(step, {"metric": metric, "best": float(new.best),
                          "lr_scale": float(new.scale)}, prefix=f"{plan.name}/plateau/")
    rates = [float(o.learning_rate) for o in optim.optimizer_specs(plan.config).values()]
    floor = float(plateau.stop_below) * float(plan.config.learning_rate)
    ended = min(rates) * float(new.scale) <= floor
    log.info("stage '%s' step %d: %s %s %s = %.2f (best %.2f), rate x %g%s", plan.name,
             step, plateau.split, plan.mode, plateau.metric, metric, float(new.best),
             float(new.scale), "; the rate reached train.plateau.stop_below: the stage ends"
             if ended else "")
    return state, ended


def report(exp: Experiment, results: dict[str, Any], name: str = "results.json") -> str:
    """Prints the tables (one per protocol, few-shot, detection, ground-truth counts) and
    writes results.json (process 0)."""
    path = os.path.join(exp.workdir, name)
    if jax.process_index() == 0:
        title = f"{exp.config.model.name} on {exp.config.data.name}/{exp.config.eval.split}"
        limits = (int(exp.config.input.max_objects), int(exp.config.input.max_relations))
        print(reporting.format_report(results, title, limits))
        if "detection" in results:
            print(reporting.format_detection_table(
                results["detection"], f"detector ({exp.config.model.detector.backbone}) box mAP "
                f"on {exp.config.data.name}/{exp.config.eval.split} (COCO, %)"))
            if not exp.spec.relations and results["detection"].get("per_class"):
                print(reporting.format_per_class_ap(
                    results["detection"]["per_class"], "per-class AP (%), worst first; missed = "
                    "ground-truth boxes no detection overlaps at IoU 0.5"))
                print(reporting.format_confusions(results["detection"].get("confusions", [])))
        if "evaluated_with" in results:
            print("parameters per mode (the last stage refined the model on detections): " +
                  ", ".join(f"{m} <- stage '{st}'" for m, st in results["evaluated_with"].items()))
        if "detection_refined" in results:
            print(reporting.format_detection_table(
                results["detection_refined"], f"SGDet boxes after {exp.config.model.name}'s box "
                f"refinement, box mAP (COCO, %)"))
        write_json_atomic(path, results)
    return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       explicit: Sequence[str] = ()) -> dict[str, Any]:
    """Runs every stage (resuming where a previous run stopped), then evaluates. A reused
    detector's architecture is taken from its run except for the dotted keys in `explicit`
    (those the user set, which must then agree with it)."""
    experiment.complete_config(config)  # may name the detector to reuse (a base run's)
    adopted = detector_source.adopt_architecture(config, explicit)
    if adopted:
        logging.info("model.detector.%s taken from the reused detector %s",
                     ", ".join(adopted), config.model.detector.checkpoint)
    exp = setup(config, workdir)
    with _lock(workdir):
        return _train_and_evaluate(exp)


def train_stages(exp: Experiment, params: Any, rng: jax.Array,
                 writer: reporting.MetricWriter) -> Any:
    """Every planned stage in order (each resumed where it stopped, a finished one skipped);
    returns the final parameters. A SIGTERM / SIGINT while they train checkpoints the step
    and raises `preemption.Preempted` (docs/architecture.md, "Failure and recovery"); the
    evaluation after them runs with the default handlers."""
    with preemption.StopRequest(sync_every=int(exp.config.train.log_every)) as stop:
        for plan in exp.stages:
            params = train_stage(exp, plan, params, jax.random.fold_in(rng, plan.seed_index),
                                 writer, stop)
            if stop.should_stop(force=True):  # signalled during the stage's last step
                raise preemption.Preempted(stop.signal_name, plan.name, plan.num_steps,
                                           plan.num_steps, exp.checkpoint_dir(plan.name))
    return params


def _lock(workdir: str) -> contextlib.AbstractContextManager:
    """The workdir's lock, held by process 0 (the one that writes the run's files)."""
    return runs.workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()


def _train_and_evaluate(exp: Experiment) -> dict[str, Any]:
    config, workdir = exp.config, exp.workdir
    experiment.save_run_files(exp)
    rng = jax.random.key(config.seed)
    init_rng, train_rng = jax.random.split(rng)
    params = init_params(exp, init_rng)
    writer = reporting.MetricWriter(os.path.join(workdir, "tensorboard"))
    try:
        params = train_stages(exp, params, train_rng, writer)
        by_mode, stages = experiment.mode_params(exp, params)
        results = eval_loop.evaluate(exp, params,
                                     num_pictures=int(config.eval.get("num_pictures", 0)),
                                     mode_params=by_mode, evaluated_with=stages)
        groups = reporting.scalar_groups(results)
        for group, vals in groups.items():
            writer.scalars(0, vals, prefix=f"final_{group}/")
        if int(config.train.eval_every) and exp.stages:  # the history ends at the final numbers
            last = exp.stages[-1]
            reporting.append_history(workdir, last.name, int(last.num_steps), groups)
    finally:
        writer.close()
    report(exp, results)
    return results


def evaluate_run(config: ml_collections.ConfigDict, workdir: str,
                 checkpoint: str = "") -> dict[str, Any]:
    """Evaluates a run's parameters (`checkpoint`: a workdir or stage directory, default
    `workdir`) with `config`, which must be the run's own (`runs.resolve_run_config`). An
    unfinished run is an error naming the stage and step unless `config.eval.allow_partial`,
    in which case results.json says `"partial": {stage, step, num_steps}`."""
    experiment.initialize_runtime(config)  # before anything touches a JAX backend
    exp = setup(config, workdir, training=False)
    with _lock(workdir):
        return _evaluate_run(exp, checkpoint)


def _evaluate_run(exp: Experiment, checkpoint: str) -> dict[str, Any]:
    config, workdir = exp.config, exp.workdir
    allow = bool(config.eval.get("allow_partial", False))
    if experiment.needs_checkpoint(exp) or checkpoint:
        # an unfinished or missing checkpoint fails before anything compiles
        found = experiment.find_final_checkpoint(exp, checkpoint or workdir, allow)
        if found is None:
            raise FileNotFoundError(f"no checkpoint found under {checkpoint or workdir!r} "
                                    "(expected <workdir>/checkpoints/<stage>/<step>)")
    params, partial = experiment.restore_final_params(exp, jax.random.key(config.seed),
                                                      checkpoint, allow)
    by_mode, stages = {}, {}
    if not partial and not runs.checkpoint_steps(checkpoint or workdir):  # a run, not a stage
        by_mode, stages = experiment.mode_params(exp, params, checkpoint)
    results = eval_loop.evaluate(exp, params, num_pictures=int(config.eval.get("num_pictures", 0)),
                                 mode_params=by_mode, evaluated_with=stages)
    if partial:
        results["partial"] = partial
    report(exp, results)
    return results

