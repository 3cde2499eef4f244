"""A toy relation model registered from outside the library: what adding a model takes.

Object logits from the RoI features; predicate logits from an MLP on the subject's and the
object's RoI features. It owns the groups backbone, roi_features, obj_classifier and
relation_head, and uses the generic losses. `BAD_MODELS` are two broken variants the model
contract must reject: one mixes up pair indices, one reads the ground-truth labels in SGCls.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sgg_jax.models import registry
from sgg_jax.models.backbone import build_backbone
from sgg_jax.models.interface import ModelInputs, ModelOutputs
from sgg_jax.models.roi_features import RelationTrunk, RoIFeatures


class ToyModel(RelationTrunk):
    """The trunk's fields (backbone, RoI sizes, dtype, mode) come from the library's base
    class, which `registry.trunk_kwargs` fills."""

    num_classes: int
    num_predicates: int
    hidden_dim: int = 16
    flaw: str = ""  # "" | "pairs" | "labels" (the broken variants)

    @nn.compact
    def __call__(self, inputs: ModelInputs, train: bool = False) -> ModelOutputs:
        features, stride = build_backbone(self.backbone_name, self.dtype, name="backbone")(
            inputs.images, train)
        obj, _ = RoIFeatures(self.fc_dim, self.roi_size, self.sampling_ratio, self.dropout,
                             self.dtype, name="roi_features")(
            features, stride, inputs.boxes, inputs.box_mask, train=train)
        obj_logits = nn.Dense(self.num_classes + 1, name="obj_classifier")(obj)
        if self.flaw == "labels":  # reads the given labels whatever the mode
            obj_logits = obj_logits + 5.0 * nn.one_hot(inputs.labels, self.num_classes + 1)
        subj_idx, obj_idx = inputs.pairs[..., 0], inputs.pairs[..., 1]
        if self.flaw == "pairs":  # the subject taken by pair position, not by its index
            subj_idx = jnp.broadcast_to(jnp.arange(subj_idx.shape[1]) % obj.shape[1],
                                        subj_idx.shape)
        take = lambda i: jnp.take_along_axis(obj, i[..., None], axis=1)
        pair = jnp.concatenate([take(subj_idx), take(obj_idx)], -1)
        hidden = nn.relu(nn.Dense(self.hidden_dim, name="relation_head")(pair))
        rel_logits = nn.Dense(self.num_predicates + 1, name="rel_out")(hidden)
        return ModelOutputs(obj_logits=obj_logits, rel_logits=rel_logits)


def build(model_config: Any, ctx: registry.BuildContext, flaw: str = "") -> ToyModel:
    kwargs = registry.trunk_kwargs(model_config, ctx.mode)
    return ToyModel(num_classes=ctx.num_classes, num_predicates=ctx.num_predicates,
                    hidden_dim=int(registry.option(model_config, "hidden_dim", SPEC)),
                    flaw=flaw, **kwargs)


SPEC = registry.register(registry.ModelSpec(
    name="toy", build=build,
    param_groups=("backbone", "roi_features", "obj_classifier", "relation_head", "rel_out"),
    description="a test's toy model: an MLP on the two objects' RoI features",
    config=dict(hidden_dim=16)))

BAD_MODELS = {
    flaw: registry.ModelSpec(name=f"toy_bad_{flaw}", build=lambda c, x, f=flaw: build(c, x, f),
                             param_groups=SPEC.param_groups, config=SPEC.config)
    for flaw in ("pairs", "labels")}


class ToyWrapper(nn.Module):
    """A model on top of another: any registered base model (its params under "base") plus a
    zero-initialised linear correction of its predicate logits ("refine")."""

    base: nn.Module
    num_predicates: int

    @nn.compact
    def __call__(self, inputs: ModelInputs, train: bool = False) -> ModelOutputs:
        out = self.base(inputs, train)
        correction = nn.Dense(self.num_predicates + 1, kernel_init=nn.initializers.zeros,
                              name="refine")(nn.softmax(out.rel_logits))
        return out.replace(rel_logits=out.rel_logits + correction)


def build_wrapper(model_config: Any, ctx: registry.BuildContext) -> ToyWrapper:
    base = registry.option(model_config, "base", WRAPPER)
    if base is None:
        raise ValueError("config.model.base: the base model's config section is required")
    return ToyWrapper(base=ctx.build_model(base, ctx.mode), num_predicates=ctx.num_predicates)


WRAPPER = registry.register(registry.ModelSpec(
    name="toy_wrapper", build=build_wrapper, param_groups=("base", "refine"),
    description="a test's model on top of another model", config=dict(base=None)))
