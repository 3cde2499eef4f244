"""Writing results: JSON that is valid (no NaN) and written whole or not at all."""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

from data_pipelines.errors import atomic_write_bytes


def json_safe(obj: Any) -> Any:
    """NaN/Inf (e.g. recall of an empty few-shot bucket) -> None, numpy scalars -> Python."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON through a temp file and os.replace."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))
