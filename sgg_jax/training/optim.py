"""Optimizers and schedules from a stage's config (optax), with per-group freezing.

A stage names the parameter groups it trains (top-level keys of the param tree: `backbone`,
`roi_features`, `obj_classifier`, `relation_head`, ...); every other group gets zero updates.
"""
from __future__ import annotations

from typing import Any

import ml_collections
import optax

KNOWN_GROUPS = ("backbone", "roi_features", "obj_classifier", "relation_head", "detector",
                "rpn", "region_head", "captioner", "region_rpn")


def split_list(value: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (config lists are comma strings so they can be overridden)."""
    return [v.strip() for v in str(value).split(",") if v.strip()]


def make_schedule(stage: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup then cosine decay (or constant) over the stage's steps."""
    steps, warmup, lr = int(stage.num_steps), int(stage.warmup_steps), float(stage.learning_rate)
    if stage.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0 if warmup else lr, lr, max(warmup, 1) if warmup else 1, max(steps, warmup + 1),
            end_value=lr * 0.01)
    if stage.schedule == "constant":
        if not warmup:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
    raise ValueError(f"config.train.stages.*.schedule={stage.schedule!r}: expected cosine or constant")


def trainable_groups(stage: ml_collections.ConfigDict, params: dict[str, Any]) -> list[str]:
    """The stage's trainable groups that this model has; unknown names are an error."""
    names = split_list(stage.trainable)
    unknown = [n for n in names if n not in params and n not in KNOWN_GROUPS]
    if unknown:
        raise ValueError(f"config.train.stages.*.trainable: unknown parameter groups {unknown}; "
                         f"this model has {sorted(params)}")
    return [n for n in names if n in params]


def make_optimizer(stage: ml_collections.ConfigDict, train: ml_collections.ConfigDict,
                   params: dict[str, Any]) -> optax.GradientTransformation:
    """Clipping + the base optimizer on the trainable groups, zero updates elsewhere."""
    schedule = make_schedule(stage)
    if stage.optimizer == "adam":
        base = optax.adamw(schedule, weight_decay=float(train.weight_decay))
    elif stage.optimizer == "sgd":
        base = optax.chain(optax.add_decayed_weights(float(train.weight_decay)),
                           optax.sgd(schedule, momentum=0.9))
    else:
        raise ValueError(f"config.train.stages.*.optimizer={stage.optimizer!r}: expected adam or sgd")
    tx = optax.chain(optax.clip_by_global_norm(float(train.grad_clip_norm)), base) \
        if train.grad_clip_norm > 0 else base
    groups = set(trainable_groups(stage, params))
    labels = {k: ("train" if k in groups else "frozen") for k in params}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                 lambda p: {k: labels[k] for k in p})
