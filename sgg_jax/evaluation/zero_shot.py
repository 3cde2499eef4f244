"""The standard VG150 zero-shot triplet list (Scene-Graph-Benchmark.pytorch, MIT licence).

SGB ships `zeroshot_triplet.pytorch` (5,971 triplets that occur in VG150 test but never in train),
stored in (subject, object, predicate) column order. The copy in `sgg_jax/resources` was converted
to JSON and reordered to (subject class, predicate, object class), 1-based as in VG-SGG.h5, which is
the order `SGGEvaluator(zero_shot_triplets=...)` expects.
"""
from __future__ import annotations

import json
import os

import numpy as np

_RESOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "resources", "vg150_zeroshot_triplets.json")
_ORDER = ["subject_class", "predicate", "object_class"]


def load_zero_shot_triplets(path: str) -> np.ndarray:
    """Reads a zero-shot list JSON ({"order": [...], "triplets": [[s, p, o], ...]} or a bare list).

    Returns int64 [Z, 3] (subject class, predicate, object class). Raises ValueError naming the file
    when the structure is not that.
    """
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read zero-shot triplet JSON: {e}") from e
    if isinstance(data, dict):
        order = data.get("order", _ORDER)
        if list(order) != _ORDER:
            raise ValueError(f"{path}: field 'order': expected {_ORDER}, got {order}")
        rows = data.get("triplets")
    else:
        rows = data
    arr = np.asarray(rows if rows is not None else [], dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"{path}: field 'triplets': expected a non-empty [Z, 3] list of "
                         f"(subject class, predicate, object class), got shape {arr.shape}")
    if isinstance(data, dict) and "count" in data and int(data["count"]) != arr.shape[0]:
        raise ValueError(f"{path}: field 'count' says {data['count']} but 'triplets' has "
                         f"{arr.shape[0]} rows")
    return arr


def load_vg150_zero_shot_triplets() -> np.ndarray:
    """The 5,971 VG150 zero-shot triplets used by SGB for zR@K: int64 [5971, 3] (s, p, o)."""
    return load_zero_shot_triplets(_RESOURCE)
