"""Motifs' FREQ baseline: predicate logits from training-set triplet frequencies.

rel_logits[pair] = log p(predicate | subject class, object class) from the training counts
`fg_matrix[s, o, p]` (a constant, not a parameter; `sgg_jax.models.priors`).

The class labels come from the ground truth in PredCls, from the detector in SGDet (passed as
`ModelInputs.labels`), and from the argmax over classes 1..C of an object classifier
(backbone + RoI features + linear, the only trained part) in SGCls.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sgg_jax.models import registry
from sgg_jax.models.interface import ModelInputs, ModelOutputs
from sgg_jax.models.priors import (ConstantTable, FrequencyBias, frequency_log_table,
                                   frequency_table, lookup_frequency, predicted_labels)
from sgg_jax.models.roi_features import RelationTrunk, trunk_features


class FreqModel(RelationTrunk):
    """FREQ: object classifier (trained) + frequency-table predicate logits (constant).

    Attributes:
      num_classes: C object classes (logits have C + 1 columns).
      table: the log-frequency table [C+1, C+1, P+1] (`ConstantTable`).
      mode: "predcls" (GT labels index the table) | "sgcls" | "sgdet" (predicted labels).
    """

    num_classes: int
    table: ConstantTable

    @nn.compact
    def __call__(self, inputs: ModelInputs, train: bool = False) -> ModelOutputs:
        obj_feats, _ = trunk_features(self, inputs, train, pairs=False)
        obj_logits = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="obj_classifier")(
            obj_feats).astype(jnp.float32)
        # PredCls: ground-truth labels; SGDet: the detector's labels (ModelInputs.labels carries
        # them there, as neural-motifs' FREQ uses its detector's classes); SGCls: predicted.
        labels = inputs.labels if self.mode in ("predcls", "sgdet") else predicted_labels(obj_logits)
        rel_logits = FrequencyBias(self.table, name="relation_head")(labels, inputs.pairs)
        return ModelOutputs(obj_logits=obj_logits, rel_logits=rel_logits)


def build(model_config: Any, ctx: registry.BuildContext) -> FreqModel:
    return FreqModel(num_classes=ctx.num_classes,
                     table=frequency_table(ctx.facts.statistics, ctx.num_classes,
                                           ctx.num_predicates),
                     **registry.trunk_kwargs(model_config, ctx.mode))


SPEC = registry.register(registry.ModelSpec(
    name="freq", build=build, param_groups=("backbone", "roi_features", "obj_classifier"),
    description="Motifs' frequency baseline: predicates from training triplet counts; only the "
                "object classifier trains",
    requires=("fg_matrix",), needs_training=False, sgdet_reads_labels=True))

__all__ = ["FreqModel", "SPEC", "ConstantTable", "FrequencyBias", "frequency_log_table",
           "lookup_frequency", "predicted_labels"]
