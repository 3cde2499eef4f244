"""Results tables, results.json and TensorBoard event files (tensorboardX, no TensorFlow).

results.json layout (docs/architecture.md): `results[mode]` holds the neural-motifs protocol's
metrics of each evaluated mode (phrdet included when sgdet is evaluated), `results["msdn"][mode]`
the MSDN / F-Net protocol's, `results["detection"]` the detector's COCO mAP,
`results["detection_refined"]` that of the SGDet boxes after the relation model's box
refinement (`eval.sgdet_refine_boxes`), `results["ground_truth"]` the evaluated ground truth's
counts (and how much lay beyond the input limits), `results["partial"]` the unfinished stage an
evaluation accepted (`eval.allow_partial`), and a model's extra evaluations under their names
(`results["captions"]`: region-caption BLEU-4).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import jax

from sgg_jax.evaluation.sgg import EVAL_MODES, PROTOCOLS
from sgg_jax.io_utils import json_safe
from sgg_jax.training.charts import line_chart

# The recall families shown per protocol.
PROTOCOL_FAMILIES = {"motifs": ("R", "ngR", "mR", "ngmR", "zR", "ngzR"), "msdn": ("R", "predR")}
PROTOCOL_NOTES = {"motifs": "per-image mean", "msdn": "micro-averaged over the split"}


def parse_protocols(value: str) -> tuple[str, ...]:
    """`config.eval.protocols` ("motifs,msdn") -> validated tuple, in the given order."""
    names = tuple(dict.fromkeys(p.strip() for p in str(value).split(",") if p.strip()))
    bad = [p for p in names if p not in PROTOCOLS]
    if not names or bad:
        raise ValueError(f"config.eval.protocols={value!r}: expected a comma list of "
                         f"{', '.join(PROTOCOLS)} (at least one)")
    return names


def store_metrics(results: dict, protocol: str, mode: str, metrics: dict) -> None:
    """Puts one evaluator's `compute()` into the results.json layout (module docstring)."""
    if protocol == "motifs":
        results[mode] = metrics
    else:
        results.setdefault(protocol, {})[mode] = metrics


def recall_results(results: Mapping[str, Any]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """{protocol: {mode: metrics}} of a results dict (only protocols that are present)."""
    out: dict[str, dict[str, Mapping[str, Any]]] = {}
    motifs = {m: r for m, r in results.items() if m in EVAL_MODES}
    if motifs:
        out["motifs"] = motifs
    for protocol in PROTOCOLS:
        if protocol != "motifs" and results.get(protocol):
            out[protocol] = dict(results[protocol])
    return out


def scalar_groups(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """TensorBoard groups of a results dict: "<mode>" (motifs recalls), "<protocol>_<mode>"
    (other protocols' recalls), and each other section of numbers ("detection" mAP, a model's
    extra evaluations such as "captions" BLEU-4, "ground_truth" counts); numbers only."""
    groups: dict[str, dict[str, float]] = {}
    for protocol, modes in recall_results(results).items():
        for mode, vals in modes.items():
            name = mode if protocol == "motifs" else f"{protocol}_{mode}"
            groups[name] = {k: v for k, v in vals.items() if "@" in k}
    for key, section in results.items():
        if key in EVAL_MODES or key in PROTOCOLS or not isinstance(section, Mapping):
            continue
        numbers = {k: v for k, v in section.items() if isinstance(v, (int, float))
                   and not isinstance(v, bool) and not k.startswith("num_")}
        if numbers:
            groups[key] = numbers
    return groups


def format_ground_truth(counts: Mapping[str, int], max_objects: int, max_relations: int) -> str:
    """One line on the evaluated ground truth and what lay beyond the input limits."""
    return (f"ground truth: {counts['images']} images, {counts['objects']} objects, "
            f"{counts['relations']} relations; beyond input.max_objects={max_objects} / "
            f"max_relations={max_relations} (never shown in PredCls / SGCls, scored as misses): "
            f"{counts['objects_beyond_limits']} objects, {counts['relations_beyond_limits']} "
            f"relations ({_percent(counts['relations_beyond_limits'], counts['relations'])} of "
            f"the relations), in {counts['images_truncated']} images")


def _percent(a: int, b: int) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "-"



def format_results_table(results: Mapping[str, Mapping[str, float]], title: str = "",
                         families: Sequence[str] = ("R", "ngR", "mR", "ngmR", "zR", "ngzR")
                         ) -> str:
    """One row per mode, one column per recall metric of the given families (e.g. R@20).

    Few-shot buckets ("ngR@K/0-shot") get their own table: see `format_few_shot_table`.
    """
    modes = list(results)
    metric_names: list[str] = []
    for m in modes:
        for k, v in results[m].items():
            if (isinstance(v, (int, float)) and k.split("@")[0] in families and "/" not in k
                    and k not in metric_names):
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


def format_report(results: Mapping[str, Any], name: str, limits: tuple[int, int] | None = None
                  ) -> str:
    """The recall tables of a results dict, one per protocol (motifs first, with its few-shot
    table), titled "<name> (protocol: <p>, <how averaged>; recalls in %)", then the ground
    truth's counts (`limits` = (max_objects, max_relations)) and a partial run's stage."""
    parts = []
    for protocol, modes in recall_results(results).items():
        title = f"{name} (protocol: {protocol}, {PROTOCOL_NOTES[protocol]}; recalls in %)"
        parts.append(format_results_table(modes, title, PROTOCOL_FAMILIES[protocol]))
        if protocol == "motifs":
            few_shot = format_few_shot_table(modes)
            if few_shot:
                parts.append(few_shot)
    if "ground_truth" in results and limits is not None:
        parts.append(format_ground_truth(results["ground_truth"], *limits))
    if results.get("partial"):
        p = results["partial"]
        parts.append(f"PARTIAL: stage '{p['stage']}' had run {p['step']} of its "
                     f"{p['num_steps']} steps (eval.allow_partial)")
    return "\n\n".join(parts)


def format_few_shot_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """Knyazev et al.'s few-shot ngR@K buckets: one row per (mode, bucket), one column per K."""
    rows: dict[tuple[str, str], dict[str, float]] = {}
    ks: list[str] = []
    for mode, vals in results.items():
        for k, v in vals.items():
            if "/" in k and "@" in k:
                metric, bucket = k.split("/", 1)
                rows.setdefault((mode, bucket), {})[metric] = v
                if metric not in ks:
                    ks.append(metric)
    if not rows:
        return ""
    lines = ["few-shot (ngR@K over test triplets by training count)",
             "mode      bucket        " + "".join(f"{k:>11}" for k in ks)]
    lines.append("-" * len(lines[-1]))
    for (mode, bucket), vals in rows.items():
        cells = "".join(f"{vals[k]:>11.2f}" if isinstance(vals.get(k), (int, float))
                        and math.isfinite(vals[k]) else f"{'-':>11}" for k in ks)
        lines.append(f"{mode:<10}{bucket:<14}{cells}")
    return "\n".join(lines)


def format_per_class_ap(per_class: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """Per-class AP and AP50 of a detector, worst first (what limits its AP), with each
    class's ground-truth count; classes without ground truth last."""
    rows = sorted(per_class, key=lambda r: (r["AP"] is None, r["AP"] or 0.0))
    width = max([len(str(r.get("name", r["class"]))) for r in rows] + [5])
    lines = [title] if title else []
    header = f"{'class':<{width}}{'AP':>9}{'AP50':>9}{'gt':>7}{'missed':>8}"
    lines += [header, "-" * len(header)]
    fmt = lambda v: f"{v:>9.2f}" if v is not None else f"{'-':>9}"
    for r in rows:
        lines.append(f"{str(r.get('name', r['class'])):<{width}}{fmt(r['AP'])}{fmt(r['AP50'])}"
                     f"{r['num_gt']:>7d}{r.get('missed', 0):>8d}")
    return "\n".join(lines)


def format_confusions(confusions: Sequence[Mapping[str, Any]]) -> str:
    """The detector's most frequent class confusions (ground truth -> best overlapping
    detection of another class, IoU >= 0.5)."""
    lines = ["most frequent confusions (ground truth -> detected as, IoU >= 0.5)"]
    lines += [f"  {c['ground_truth']} -> {c['detected_as']}: {c['count']} "
              f"({100 * c['share']:.1f}% of its boxes)" for c in confusions] or ["  none"]
    return "\n".join(lines)


def format_detection_table(metrics: Mapping[str, float], title: str = "") -> str:
    """The detector's COCO box mAP (AP@[.5:.95], AP50, AP75) as a one-row table."""
    names = [k for k in ("AP", "AP50", "AP75") if k in metrics]
    lines = [title] if title else []
    header = "".join(f"{k:>10}" for k in names) + f"{'images':>10}"
    lines += [header, "-" * len(header)]
    lines.append("".join(f"{float(metrics[k]):>10.2f}" for k in names)
                 + f"{int(metrics.get('num_images', 0)):>10d}")
    return "\n".join(lines)


HISTORY_FILE = "eval_history.jsonl"


def append_history(workdir: str, stage: str, step: int, groups: Mapping[str, Any]) -> None:
    """Adds one line {stage, step, results} to <workdir>/eval_history.jsonl (process 0): the
    evaluations during training (`train.eval_every`) and the final one, e.g. a detector's AP
    against steps; redraws <workdir>/eval_history.png."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, HISTORY_FILE)
    records = [r for r in read_history(workdir) if (r["stage"], r["step"]) != (stage, int(step))]
    records.append(json_safe(dict(stage=stage, step=int(step), results=groups)))
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:  # whole or not at all; a re-run replaces its step
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)
    plot_history(workdir)


def read_history(workdir: str) -> list[dict[str, Any]]:
    """The records of <workdir>/eval_history.jsonl, oldest first ([] when there is none)."""
    path = os.path.join(workdir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


HISTORY_METRICS = {"detection": ("AP", "AP50", "AP75")}  # other groups: a mode's R@50


def history_series(records: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """{label: [(step, value)]} from eval_history records: a detector's AP / AP50 / AP75, each
    evaluated mode's R@50 (motifs protocol); labels carry the stage when there are several."""
    stages = {r["stage"] for r in records}
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for group, metrics in r["results"].items():
            if not isinstance(metrics, Mapping):
                continue
            for name in HISTORY_METRICS.get(group, ("R@50",)):
                value = metrics.get(name)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    label = name if group == "detection" else f"{group} {name}"
                    label = f"{r['stage']}: {label}" if len(stages) > 1 else label
                    series.setdefault(label, []).append((int(r["step"]), float(value)))
    return series


def plot_history(workdir: str) -> str | None:
    """<workdir>/eval_history.png: the evaluations during training against steps."""
    path = os.path.join(workdir, HISTORY_FILE)
    series = history_series(read_history(workdir))
    if not series:
        return None
    name = os.path.basename(os.path.normpath(workdir))
    return line_chart(series, f"evaluations during training (%), {name}", "step",
                      os.path.splitext(path)[0] + ".png")


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
            if isinstance(v, (int, float)) and math.isfinite(v):
                tag = f"{prefix}{k}".replace("@", "_at_")  # '@' is not a legal TB tag char
                self._writer.add_scalar(tag, float(v), int(step))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
