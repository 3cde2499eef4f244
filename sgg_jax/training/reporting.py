"""Results tables, results.json and TensorBoard event files (tensorboardX, no TensorFlow)."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping

import jax


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes JSON whole or not at all (temp file in the same directory, then rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def format_results_table(results: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    """One row per mode, one column per recall metric (counts and notes left out)."""
    modes = list(results)
    metric_names: list[str] = []
    for m in modes:
        for k, v in results[m].items():
            if isinstance(v, (int, float)) and "@" in k and k not in metric_names:
                metric_names.append(k)
    width = max([len(m) for m in modes] + [6])
    lines = [title] if title else []
    header = "mode".ljust(width) + "".join(f"{k:>10}" for k in metric_names)
    lines += [header, "-" * len(header)]
    for m in modes:
        row = m.ljust(width)
        for k in metric_names:
            v = results[m].get(k)
            row += f"{v:>10.2f}" if isinstance(v, (int, float)) else f"{'-':>10}"
        lines.append(row)
    return "\n".join(lines)


class MetricWriter:
    """TensorBoard scalars from process 0 only (tensorboardX writes event files without TF)."""

    def __init__(self, logdir: str):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(logdir)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        if self._writer is None:
            return
        for k, v in values.items():
            self._writer.add_scalar(f"{prefix}{k}", float(v), int(step))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
