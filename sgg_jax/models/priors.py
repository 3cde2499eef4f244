"""Dataset priors as constants of a model: Motifs' frequency table and its lookup.

`frequency_log_table` turns the training counts `fg_matrix[s, o, p]` (data_pipelines.statistics)
into log p(predicate | subject class, object class) as neural-motifs' `FrequencyBias` does: the
background column 0 is replaced by the count of overlapping pairs without a relation plus one
(`bg_matrix + 1`; when no bg_matrix is given, by 1, i.e. add-one smoothing of background only),
each row is normalised to a distribution and `log(p + eps)` with eps = 1e-3 is taken. FREQ is
this table alone; IMP (and Motifs, KERN) add it to their predicate logits.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def predicate_distribution(fg_matrix: np.ndarray, bg_matrix: np.ndarray | None = None
                           ) -> np.ndarray:
    """[C+1, C+1, P+1] counts -> p(predicate | subject class, object class), the background
    column being the intersecting pairs + 1 (Motifs' table before its log; KERN's relation
    prior as is). Every row sums to 1, also for classes never seen in training."""
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
    return fg / fg.sum(axis=2, keepdims=True)


def frequency_log_table(fg_matrix: np.ndarray, bg_matrix: np.ndarray | None = None,
                        eps: float = 1e-3) -> np.ndarray:
    """[C+1, C+1, P+1] counts -> log(normalised counts + eps), background column as Motifs."""
    return np.log(predicate_distribution(fg_matrix, bg_matrix) + eps).astype(np.float32)


def cooccurrence_prior(cooccurrence: np.ndarray, class_images: np.ndarray) -> np.ndarray:
    """KERN's object knowledge: row i of the class co-occurrence counts divided by the number
    of training images holding class i (~ p(class j present | class i present)); classes in no
    image divide by 1, so every entry is finite."""
    co = np.asarray(cooccurrence, np.float64)
    images = np.asarray(class_images, np.float64).reshape(-1)
    if co.ndim != 2 or co.shape[0] != co.shape[1] or images.shape[0] != co.shape[0]:
        raise ValueError(f"statistics.cooccurrence / class_images: expected [C+1, C+1] and "
                         f"[C+1], got {co.shape} and {images.shape}")
    return (co / np.maximum(images, 1.0)[:, None]).astype(np.float32)


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


def frequency_table(statistics: Any, num_classes: int, num_predicates: int) -> ConstantTable:
    """The dataset's log-frequency table [C+1, C+1, P+1] as a module constant."""
    fg = getattr(statistics, "fg_matrix", None)
    if fg is None:
        raise ValueError("a frequency table needs training statistics with a fg_matrix "
                         "[C+1, C+1, P+1]")
    table = frequency_log_table(fg, getattr(statistics, "bg_matrix", None))
    want = (num_classes + 1, num_classes + 1, num_predicates + 1)
    if table.shape != want:
        raise ValueError(f"statistics.fg_matrix: expected shape {want}, got {table.shape}")
    return ConstantTable(table)
