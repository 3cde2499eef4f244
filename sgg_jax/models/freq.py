"""Motifs' FREQ baseline: predicate logits from training-set triplet frequencies.

rel_logits[pair] = log p(predicate | subject class, object class) from the training counts
`fg_matrix[s, o, p]` (a constant, not a parameter). As in neural-motifs' `FrequencyBias`, the
background column 0 is replaced by the count of overlapping pairs without a relation plus one
(`bg_matrix + 1`; when no bg_matrix is given, by 1, i.e. add-one smoothing of background only),
each row is normalised to a distribution and `log(p + eps)` with eps = 1e-3 is taken.

The class labels come from the ground truth in PredCls, from the detector in SGDet (passed as
`ModelInputs.labels`), and from the argmax over classes 1..C of an object classifier
(backbone + RoI features + linear, the only trained part) in SGCls.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from sgg_jax.models.backbone import build_backbone
from sgg_jax.models.interface import ModelInputs, ModelOutputs
from sgg_jax.models.roi_features import RoIFeatures

MODES = ("predcls", "sgcls", "sgdet")


def frequency_log_table(fg_matrix: np.ndarray, bg_matrix: np.ndarray | None = None,
                        eps: float = 1e-3) -> np.ndarray:
    """[C+1, C+1, P+1] counts -> log(normalised counts + eps), background column as Motifs."""
    fg = np.asarray(fg_matrix, dtype=np.float64)
    if fg.ndim != 3 or fg.shape[0] != fg.shape[1]:
        raise ValueError("statistics.fg_matrix: expected counts of shape [C+1, C+1, P+1], got "
                         f"{fg.shape}")
    if np.any(fg < 0):
        raise ValueError("statistics.fg_matrix: counts must be non-negative")
    fg = fg.copy()
    if bg_matrix is None:
        fg[:, :, 0] = 1.0
    else:
        bg = np.asarray(bg_matrix, dtype=np.float64)
        if bg.shape != fg.shape[:2]:
            raise ValueError(f"statistics.bg_matrix: expected shape {fg.shape[:2]}, got {bg.shape}")
        fg[:, :, 0] = bg + 1.0
    dist = fg / fg.sum(axis=2, keepdims=True)
    return np.log(dist + eps).astype(np.float32)


def lookup_frequency(table: jnp.ndarray, labels: jnp.ndarray, pairs: jnp.ndarray) -> jnp.ndarray:
    """table [C+1, C+1, P+1], labels [B, O], pairs [B, M, 2] -> [B, M, P+1]."""
    subj = jnp.take_along_axis(labels, pairs[..., 0], axis=1)
    obj = jnp.take_along_axis(labels, pairs[..., 1], axis=1)
    return table[subj, obj]


@dataclasses.dataclass(frozen=True, eq=False)
class ConstantTable:
    """A NumPy constant held by a module: hashable by identity, so the module stays hashable
    (jit static arguments, Flax module caching) without hashing a large array."""

    value: np.ndarray

    def __repr__(self) -> str:
        return f"ConstantTable(shape={self.value.shape}, dtype={self.value.dtype})"


class FrequencyBias(nn.Module):
    """Looks up the constant log-frequency table (no parameters)."""

    table: ConstantTable  # [C+1, C+1, P+1] float32 from `frequency_log_table`

    def __call__(self, labels: jnp.ndarray, pairs: jnp.ndarray) -> jnp.ndarray:
        return lookup_frequency(jnp.asarray(self.table.value), labels, pairs)


def predicted_labels(obj_logits: jnp.ndarray) -> jnp.ndarray:
    """Argmax over the foreground classes 1..C (background column 0 excluded)."""
    return jnp.argmax(obj_logits[..., 1:], axis=-1).astype(jnp.int32) + 1


class FreqModel(nn.Module):
    """FREQ: object classifier (trained) + frequency-table predicate logits (constant).

    Attributes:
      num_classes: C object classes (logits have C + 1 columns).
      table: the log-frequency table [C+1, C+1, P+1] (`ConstantTable`).
      mode: "predcls" (GT labels index the table) | "sgcls" | "sgdet" (predicted labels).
    """

    num_classes: int
    table: ConstantTable
    mode: str = "predcls"
    backbone_name: str = "small_resnet"
    fc_dim: int = 256
    roi_size: int = 7
    sampling_ratio: int = 2
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: ModelInputs, train: bool = False) -> ModelOutputs:
        if self.mode not in MODES:
            raise ValueError(f"FreqModel.mode: expected one of {MODES}, got {self.mode!r}")
        features, stride = build_backbone(self.backbone_name, self.dtype, name="backbone")(
            inputs.images, train)
        obj_feats, _ = RoIFeatures(self.fc_dim, self.roi_size, self.sampling_ratio, self.dropout,
                                   self.dtype, name="roi_features")(
            features, stride, inputs.boxes, inputs.box_mask, train=train)
        obj_logits = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="obj_classifier")(
            obj_feats).astype(jnp.float32)
        # PredCls: ground-truth labels; SGDet: the detector's labels (ModelInputs.labels carries
        # them there, as neural-motifs' FREQ uses its detector's classes); SGCls: predicted.
        labels = inputs.labels if self.mode in ("predcls", "sgdet") else predicted_labels(obj_logits)
        rel_logits = FrequencyBias(self.table, name="relation_head")(labels, inputs.pairs)
        return ModelOutputs(obj_logits=obj_logits, rel_logits=rel_logits)
