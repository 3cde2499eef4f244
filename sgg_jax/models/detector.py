"""The detector alone as a registered model: runs of `configs/detector.py` train the Faster
R-CNN (params group "detector") and report its box AP (`eval.modes="detection"`), with no
relation model. Their checkpoints give other runs their detector
(`config.model.detector.checkpoint`), so every relation head is compared on the same boxes.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sgg_jax.models import registry
from sgg_jax.models.interface import ModelInputs, ModelOutputs


class NoRelations(nn.Module):
    """No parameters, zero logits: the place of the relation model in a detector-only run."""

    num_classes: int
    num_predicates: int

    def __call__(self, inputs: ModelInputs, train: bool = False) -> ModelOutputs:
        b, o = inputs.boxes.shape[:2]
        m = inputs.pairs.shape[1]
        return ModelOutputs(obj_logits=jnp.zeros((b, o, self.num_classes + 1)),
                            rel_logits=jnp.zeros((b, m, self.num_predicates + 1)))


def build(model_config: Any, ctx: registry.BuildContext) -> NoRelations:
    return NoRelations(ctx.num_classes, ctx.num_predicates)


SPEC = registry.register(registry.ModelSpec(
    name="detector", build=build, param_groups=(),
    description="the Faster R-CNN alone (configs/detector.py): box AP; its runs give other runs "
                "their detector",
    relations=False))
