"""Shared benchmark helpers: median timing of a jitted call, JSON + table output."""
from __future__ import annotations

import json
import statistics
import time
from typing import Callable, Sequence

import jax


def median_seconds(fn: Callable[[], object], *, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of `fn()` (outputs blocked on), after warm-up calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(rows: Sequence[dict], columns: Sequence[str], title: str = "") -> None:
    """A plain fixed-width table of `columns` from `rows`."""
    if title:
        print(title)
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def emit_json(obj: dict, path: str | None = None) -> None:
    """Prints the JSON result (and writes it when a path is given)."""
    text = json.dumps(obj, indent=2, sort_keys=True)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
