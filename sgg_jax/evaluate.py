"""Command line evaluation of a predictions file.

  python -m sgg_jax.evaluate --predictions preds.h5 --groundtruth DIR_OR_FILE \
      [--mode sgdet[,phrdet]] [--protocol motifs|msdn] [--output results.json]

The ground truth is either an HDF5 file with a `groundtruth` group (the predictions file itself
when it carries one; images matched by image id) or a VG150 dataset directory (read with
`data_pipelines.vg150.load_vg150(dir, split=...)`, matched by image id). Prints one table per mode,
labelled with its protocol, and writes JSON `{mode: {metric: value}}` atomically (NaN -> null).
Bad input exits with status 2 and a message naming the file, image and field.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Sequence

import numpy as np

from sgg_jax.evaluation.detection import DetectionEvaluator
from sgg_jax.evaluation.prediction_file import PredictionReader
from sgg_jax.evaluation.sgg import EVAL_MODES, SGGEvaluator
from sgg_jax.io_utils import write_json_atomic
from sgg_jax.evaluation.zero_shot import load_vg150_zero_shot_triplets, load_zero_shot_triplets

PROTOCOL_TITLES = {
    "motifs": "neural-motifs / Scene-Graph-Benchmark protocol (per-image recall, mean over images)",
    "msdn": "MSDN / F-Net protocol (recall micro-averaged over the dataset)",
}


def check_vocabulary(predictions: str, reader: PredictionReader, dicts: Any, where: str
                     ) -> None:
    """The predictions' class and predicate counts (and names, when the file's metadata has
    `idx_to_label` / `idx_to_predicate`) are the ground truth's; else a ValueError naming the
    file, the field and both values (a file of another dataset must not score silently)."""
    labels, predicates = list(dicts.idx_to_label), list(dicts.idx_to_predicate)
    if reader.num_predicates != len(predicates) - 1:
        raise ValueError(f"{predictions}: field 'num_predicates': {reader.num_predicates}, but "
                         f"the ground truth {where} has {len(predicates) - 1} predicates")
    if reader.num_classes and reader.num_classes != len(labels) - 1:
        raise ValueError(f"{predictions}: field 'num_classes': {reader.num_classes}, but the "
                         f"ground truth {where} has {len(labels) - 1} classes")
    for key, names in (("idx_to_label", labels), ("idx_to_predicate", predicates)):
        given = reader.metadata.get(key)
        if given is not None and list(given) != names:
            diff = next(i for i in range(max(len(given), len(names)))
                        if i >= len(given) or i >= len(names) or given[i] != names[i])
            raise ValueError(
                f"{predictions}: field 'metadata.{key}': entry {diff} is "
                f"{given[diff] if diff < len(given) else None!r}, the ground truth {where} "
                f"has {names[diff] if diff < len(names) else None!r} (another vocabulary)")


def _load_groundtruth(path: str, split: str) -> dict[int, dict[str, np.ndarray]]:
    """Ground truth by image id, from an HDF5 file's `groundtruth` group or a VG150 directory."""
    if os.path.isdir(path):
        try:
            from data_pipelines.vg150 import load_vg150  # lazy: only needed for directories
        except ImportError as e:
            raise ValueError(f"{path}: reading a dataset directory needs data_pipelines.vg150 "
                             f"({e}); pass an HDF5 file with a 'groundtruth' group instead") from e
        records = load_vg150(path, split=split)
        return {int(r.image_id): {"boxes": np.asarray(r.boxes), "labels": np.asarray(r.labels),
                                  "relations": np.asarray(r.relations)} for r in records}
    with PredictionReader(path) as r:
        if not r.has_groundtruth:
            raise ValueError(f"{path}: field 'groundtruth': this file has no ground-truth group; "
                             "give a file written with groundtruths=... or a dataset directory")
        out = {}
        for i in range(len(r)):
            image_id, _, gt = r[i]
            out[image_id] = gt
        return out


def _fmt(v: Any) -> str:
    return "   nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.2f}"


def _format_table(mode: str, protocol: str, metrics: dict[str, Any]) -> str:
    """A plain text table: metric rows grouped by prefix, K as columns."""
    lines = [f"== {mode} | {PROTOCOL_TITLES[protocol]} =="]
    groups: dict[str, dict[str, float]] = {}
    counts = []
    for key, v in metrics.items():
        if "@" in key:
            name, k = key.split("@", 1)
            suffix = ""
            if "/" in k:
                k, suffix = k.split("/", 1)
                suffix = "/" + suffix
            groups.setdefault(name + suffix, {})[k] = v
        elif key.startswith("num_"):
            counts.append(f"{key}={v}")
        elif key in ("AP", "AP50", "AP75"):
            groups.setdefault("detection", {})[key] = v
    for name, row in groups.items():
        prefix = "" if name == "detection" else "@"
        cells = "  ".join(f"{prefix}{k}: {_fmt(v)}" for k, v in row.items())
        lines.append(f"{name:>16}  {cells}")
    lines.append("  ".join(counts))
    return "\n".join(lines)


def evaluate_file(predictions: str, groundtruth: str, modes: Sequence[str], *,
                  protocol: str = "motifs", iou_convention: str = "plus_one",
                  iou_threshold: float = 0.5, ks: Sequence[int] = (20, 50, 100),
                  zero_shot: str = "none", statistics: str | None = None, split: str = "test",
                  detection: bool = False, allow_partial: bool = False
                  ) -> dict[str, dict[str, Any]]:
    """Evaluates a predictions file in each mode; returns {mode: {metric: value}}."""
    zs = None
    if zero_shot == "vg150":
        zs = load_vg150_zero_shot_triplets()
    elif zero_shot not in ("none", ""):
        zs = load_zero_shot_triplets(zero_shot)
    counts = None
    if statistics:
        from data_pipelines.statistics import DatasetStatistics  # lazy: optional
        counts = DatasetStatistics.load(statistics).triplet_counts()
    with PredictionReader(predictions) as reader:
        if os.path.abspath(groundtruth) == os.path.abspath(predictions):
            gt_by_id = None  # read alongside each image
            if not reader.has_groundtruth:
                raise ValueError(f"{predictions}: field 'groundtruth': the file has no "
                                 "ground-truth group")
        else:
            if os.path.isdir(groundtruth):
                # lazy: only needed for directories
                from data_pipelines.vg150 import find_dicts_file, load_vg150_dicts
                dicts = load_vg150_dicts(find_dicts_file(groundtruth))
                check_vocabulary(predictions, reader, dicts, groundtruth)
            gt_by_id = _load_groundtruth(groundtruth, split)
            missing = [int(i) for i in reader.image_ids if int(i) not in gt_by_id]
            if missing:
                raise ValueError(f"{predictions}: field 'image_ids': {len(missing)} image ids are "
                                 f"not in the ground truth {groundtruth} (first: {missing[0]})")
            unpredicted = len(set(gt_by_id) - {int(i) for i in reader.image_ids})
            if unpredicted and not allow_partial:
                raise ValueError(f"{predictions}: field 'image_ids': {unpredicted} ground-truth "
                                 f"images of {groundtruth} have no prediction (use "
                                 "--allow-partial to evaluate only the predicted ones)")
        evaluators = {m: SGGEvaluator(m, reader.num_predicates, tuple(ks), zs, iou_threshold,
                                      iou_convention=iou_convention, protocol=protocol,
                                      triplet_counts=counts) for m in modes}
        det = None
        if detection:
            if reader.num_classes < 1:
                raise ValueError(f"{predictions}: field 'num_classes': needed for --detection")
            det = DetectionEvaluator(reader.num_classes)
        for image_id, pred, gt in reader:
            if gt_by_id is not None:
                gt = gt_by_id[image_id]
            for ev in evaluators.values():
                ev.add(gt, pred)
            if det is not None:
                det.add(gt, pred)
        results = {m: ev.compute() for m, ev in evaluators.items()}
        if det is not None:
            ap = det.compute()
            for m in results:
                if m in ("sgdet", "phrdet"):
                    results[m].update({k: ap[k] for k in ("AP", "AP50", "AP75")})
        return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgg_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", required=True, help="predictions HDF5 file")
    parser.add_argument("--groundtruth", required=True,
                        help="HDF5 file with a groundtruth group, or a VG150 dataset directory")
    parser.add_argument("--mode", default=None,
                        help=f"comma-separated modes from {EVAL_MODES} (default: metadata 'mode')")
    parser.add_argument("--protocol", choices=("motifs", "msdn"), default="motifs")
    parser.add_argument("--iou-convention", choices=("plus_one", "continuous"),
                        default="plus_one")
    parser.add_argument("--iou-threshold", type=float, default=0.5)
    parser.add_argument("--ks", default="20,50,100", help="comma-separated K values")
    parser.add_argument("--zero-shot", default="none",
                        help="'none', 'vg150' (the shipped SGB list) or a JSON file")
    parser.add_argument("--statistics", default=None,
                        help="training statistics directory (data_pipelines.statistics) for "
                             "few-shot ngR@K buckets")
    parser.add_argument("--split", default="test", help="split read from a dataset directory")
    parser.add_argument("--detection", action="store_true",
                        help="also report COCO AP / AP50 (pycocotools) for sgdet / phrdet")
    parser.add_argument("--allow-partial", action="store_true",
                        help="evaluate even if some ground-truth images have no prediction")
    parser.add_argument("--output", default=None, help="write {mode: {metric: value}} JSON here")
    args = parser.parse_args(argv)
    try:
        ks = [int(k) for k in args.ks.split(",") if k.strip()]
        modes = args.mode
        if modes is None:
            with PredictionReader(args.predictions) as r:
                modes = r.metadata.get("mode")
            if not modes:
                raise ValueError(f"{args.predictions}: field 'metadata.mode': absent; pass --mode")
        modes = [m.strip() for m in str(modes).split(",") if m.strip()]
        for m in modes:
            if m not in EVAL_MODES:
                raise ValueError(f"--mode: expected one of {EVAL_MODES}, got {m!r}")
        results = evaluate_file(args.predictions, args.groundtruth, modes,
                                protocol=args.protocol, iou_convention=args.iou_convention,
                                iou_threshold=args.iou_threshold, ks=ks,
                                zero_shot=args.zero_shot, statistics=args.statistics,
                                split=args.split, detection=args.detection,
                                allow_partial=args.allow_partial)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for m, metrics in results.items():
        print(_format_table(m, args.protocol, metrics))
    if args.output:
        write_json_atomic(args.output, results)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
