"""Optimizers of a stage (optax), with per-group freezing and several optimizers per stage.

A stage names the parameter groups it trains (`trainable`: top-level groups of the param tree,
e.g. `backbone`, or paths below one, e.g. `base/relation_head` for a model on top of another);
every other group gets zero updates. A stage may instead declare several optimizers
(`stages.<name>.optimizers.<opt> = {trainable, losses, learning_rate, ...}`, fields not given
taken from the stage), each with its own optax chain, schedule and state over disjoint groups,
applied together on one loss (`update_rule="joint"`) or one after the other, each on its own losses
with the parameters the previous one left (`update_rule="alternating"`, e.g. generator then
discriminator). An optimizer's state only moves when it updates: the generator's Adam moments
do not advance during the discriminator's step.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sgg_jax.config import PLATEAU_DEFAULTS

MAIN = "main"  # the name of a stage's single optimizer
UPDATES = ("joint", "alternating")
OPTIMIZERS = ("adam", "sgd")
_INHERITED = ("trainable", "losses", "learning_rate", "warmup_steps", "optimizer", "schedule",
              "num_steps")


def split_list(value: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (config lists are comma strings so they can be overridden)."""
    return [v.strip() for v in str(value).split(",") if v.strip()]


def optimizer_specs(stage: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """{optimizer name: its settings}, in order: the stage's own fields as "main", or each
    entry of `stage.optimizers` with the stage's fields filling what it leaves out."""
    declared = stage.get("optimizers", None)
    if not declared:
        return {MAIN: ml_collections.ConfigDict({k: stage[k] for k in _INHERITED})}
    out = {}
    for name, opt in declared.items():
        fields = {k: opt.get(k, stage[k]) if k != "num_steps" else stage[k] for k in _INHERITED}
        out[name] = ml_collections.ConfigDict(fields)
    return out


def update_rule(stage: ml_collections.ConfigDict) -> str:
    # `update_rule`, not `update`: ConfigDict.update is a method, so a field of that name
    # could not be set from the command line (runs saved before the rename used "update")
    key = "update_rule" if "update_rule" in stage else "update"
    rule = str((stage[key] if key in stage else "joint") or "joint")
    if rule not in UPDATES:
        raise ValueError(f"config.train.stages.*.update_rule={rule!r}: expected one of {UPDATES}")
    return rule


SCHEDULES = ("cosine", "constant", "plateau")


class PlateauState(NamedTuple):
    """ReduceLROnPlateau's state (PyTorch's, mode "max", absolute threshold), kept in the
    optimizer state so that checkpoints hold it and a resumed run continues it exactly."""

    scale: jax.Array  # the factor on the rate: 1, then factor, factor^2, ...
    best: jax.Array  # the best validation metric so far
    num_bad: jax.Array  # evaluations since it last improved
    cooldown: jax.Array  # evaluations left before bad ones count again


def scale_by_plateau() -> optax.GradientTransformation:
    """Multiplies the updates by `PlateauState.scale`, which only the host changes, after a
    validation (`plateau_step`): a stage with schedule "plateau" lowers its rate so."""

    def init(params: Any) -> PlateauState:
        del params
        return PlateauState(jnp.ones((), jnp.float32), jnp.full((), -jnp.inf, jnp.float32),
                            jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def update(updates: Any, state: PlateauState, params: Any = None):
        del params
        return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def _is_plateau(x: Any) -> bool:
    return isinstance(x, PlateauState)


def plateau_state(opt_state: Any) -> PlateauState | None:
    """The (first) PlateauState in an optimizer state tree (every optimizer of a stage holds
    the same one), or None for a stage without the plateau schedule."""
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_plateau) if _is_plateau(x)]
    return jax.device_get(found[0]) if found else None


def plateau_settings(train: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.train.plateau` with the defaults for fields it lacks (configs saved before)."""
    given = train.get("plateau", None) or {}
    return ml_collections.ConfigDict({k: given.get(k, v) for k, v in PLATEAU_DEFAULTS.items()})


def plateau_step(opt_state: Any, metric: float, plateau: ml_collections.ConfigDict
                 ) -> tuple[Any, PlateauState]:
    """One validation's update of every PlateauState in `opt_state` (PyTorch's
    ReduceLROnPlateau, mode "max", threshold_mode "abs"): a metric above best + threshold
    resets the count of bad evaluations; more than `patience` of them multiply the scale by
    `factor` and start `cooldown` evaluations in which bad ones do not count."""
    old = plateau_state(opt_state)
    if old is None:
        raise ValueError("plateau_step: the stage's optimizers have no plateau schedule")
    scale, best = float(old.scale), float(old.best)
    num_bad, cooldown = int(old.num_bad), int(old.cooldown)
    if metric > best + float(plateau.threshold):
        best, num_bad = float(metric), 0
    else:
        num_bad += 1
    if cooldown > 0:
        cooldown, num_bad = cooldown - 1, 0
    if num_bad > int(plateau.patience):
        scale, cooldown, num_bad = scale * float(plateau.factor), int(plateau.cooldown), 0
    new = PlateauState(np.float32(scale), np.float32(best), np.int32(num_bad),
                       np.int32(cooldown))
    tree = jax.tree.map(lambda x: new if _is_plateau(x) else x, opt_state, is_leaf=_is_plateau)
    return tree, new


def make_schedule(stage: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup then cosine decay (or constant) over the stage's steps; "plateau" is
    constant here, lowered by `scale_by_plateau` after validations."""
    steps, warmup, lr = int(stage.num_steps), int(stage.warmup_steps), float(stage.learning_rate)
    if stage.schedule == "cosine":
        ramp = max(warmup, 1)  # optax needs a warmup of at least one step (from lr when none)
        return optax.warmup_cosine_decay_schedule(
            0.0 if warmup else lr, lr, ramp, max(steps, ramp + 1), end_value=lr * 0.01)
    if stage.schedule in ("constant", "plateau"):
        if not warmup:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
    raise ValueError(f"config.train.stages.*.schedule={stage.schedule!r}: expected one of "
                     f"{SCHEDULES}")


def present_groups(paths: list[str], params: Any) -> list[str]:
    """The group paths ('a' or 'a/b/...') that exist in `params` (a model without a group the
    stage names simply does not train it)."""
    out = []
    for path in paths:
        node, ok = params, True
        for part in path.split("/"):
            if hasattr(node, "keys") and part in node:
                node = node[part]
            else:
                ok = False
                break
        if ok:
            out.append(path)
    return out


def path_labels(params: Any, paths: dict[str, str], default: str) -> Any:
    """A pytree like `params` whose leaves are the label of the longest path in `paths`
    ({'a/b': label}) that contains them, else `default`."""
    def label(keypath, _):
        names = [getattr(k, "key", getattr(k, "name", str(k))) for k in keypath]
        best, depth = default, -1
        for path, lab in paths.items():
            parts = path.split("/")
            if names[:len(parts)] == parts and len(parts) > depth:
                best, depth = lab, len(parts)
        return best

    return jax.tree_util.tree_map_with_path(label, params)


def freeze_except(params: Any, paths: list[str]) -> Any:
    """`params` with `stop_gradient` on every leaf outside `paths`, so XLA never computes (or
    compiles) the backward pass of frozen groups."""
    labels = path_labels(params, {p: "train" for p in paths}, "frozen")
    return jax.tree.map(lambda v, lab: v if lab == "train" else jax.lax.stop_gradient(v),
                        params, labels)


def base_optimizer(opt: ml_collections.ConfigDict, train: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
    """Clipping + Adam(W) or SGD with momentum on the optimizer's schedule."""
    schedule = make_schedule(opt)
    if opt.optimizer == "adam":
        base = optax.adamw(schedule, eps=float(train.get("adam_eps", 1e-8)),
                           weight_decay=float(train.weight_decay))
    elif opt.optimizer == "sgd":
        base = optax.chain(optax.add_decayed_weights(float(train.weight_decay)),
                           optax.sgd(schedule, momentum=0.9))
    else:
        raise ValueError(f"config.train.stages.*.optimizer={opt.optimizer!r}: expected adam or sgd")
    if opt.schedule == "plateau":
        base = optax.chain(base, scale_by_plateau())
    return optax.chain(optax.clip_by_global_norm(float(train.grad_clip_norm)), base) \
        if train.grad_clip_norm > 0 else base


def make_optimizers(stage: ml_collections.ConfigDict, train: ml_collections.ConfigDict,
                    params: Any) -> dict[str, tuple[optax.GradientTransformation, list[str]]]:
    """{name: (tx, trained group paths)} of a stage: each tx updates its own groups and gives
    the others zero updates. Empty when no optimizer has a group in `params`. Groups of two
    optimizers must not overlap."""
    out, seen = {}, {}
    for name, opt in optimizer_specs(stage).items():
        groups = present_groups(split_list(opt.trainable), params)
        for g in groups:
            for other, owner in seen.items():
                if g == other or g.startswith(other + "/") or other.startswith(g + "/"):
                    raise ValueError(f"config.train.stages.*.optimizers: '{g}' ({name}) and "
                                     f"'{other}' ({owner}) overlap; each group belongs to one "
                                     "optimizer")
            seen[g] = name
        if not groups:
            continue
        tx = optax.multi_transform(
            {"train": base_optimizer(opt, train), "frozen": optax.set_to_zero()},
            lambda p, groups=tuple(groups): path_labels(p, {g: "train" for g in groups},
                                                        "frozen"))
        out[name] = (tx, groups)
    return out
