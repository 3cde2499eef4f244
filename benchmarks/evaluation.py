"""Benchmark of SGGEvaluator on SGDet-sized inputs.

Default workload (issue 3): 5,000 images, 64 predicted boxes each, all 4,032 ordered pairs,
51 predicate columns (50 + no relation), mode sgdet, graph constraint and no graph constraint,
mean recall and zero-shot recall (the shipped VG150 list) all computed by one evaluator.

Peer: a straightforward NM-style evaluation of the same images (full argsort of every score,
per-ground-truth Python loop for the box matching, one union of matches per K), timed on a subset
(--peer-images) in the same run; the table reports the per-image time ratio.

Prints a table and one JSON line; `--json FILE` also writes the JSON (atomically).
  python benchmarks/evaluation.py [--num-images 5000] [--peer-images 100]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from functools import reduce

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sgg_jax.evaluation import SGGEvaluator, load_vg150_zero_shot_triplets  # noqa: E402

NUM_BOXES = 64
NUM_PREDICATES = 50
NUM_CLASSES = 150


def make_pool(pool: int, seed: int = 0) -> list[tuple[dict, dict]]:
    """`pool` synthetic (groundtruth, prediction) images; the benchmark cycles through them."""
    rng = np.random.default_rng(seed)
    pairs = np.array([[a, b] for a in range(NUM_BOXES) for b in range(NUM_BOXES) if a != b])
    out = []
    for _ in range(pool):
        g = int(rng.integers(10, 25))
        xy = rng.uniform(0, 500, (g, 2))
        gt_boxes = np.concatenate([xy, xy + rng.uniform(20, 300, (g, 2))], 1).round()
        gt_labels = rng.integers(1, NUM_CLASSES + 1, g)
        r = int(rng.integers(5, 20))
        rels = np.stack([rng.integers(0, g, r), rng.integers(0, g, r),
                         rng.integers(1, NUM_PREDICATES + 1, r)], 1)
        # detections: jittered ground-truth boxes (labels mostly right) plus random boxes
        src = np.concatenate([np.arange(g), rng.integers(0, g, NUM_BOXES - g)])
        boxes = gt_boxes[src] + rng.normal(0, 10, (NUM_BOXES, 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = np.where(rng.random(NUM_BOXES) < 0.7, gt_labels[src],
                          rng.integers(1, NUM_CLASSES + 1, NUM_BOXES))
        logits = rng.normal(0, 1, (len(pairs), NUM_PREDICATES + 1)).astype(np.float32)
        for a, b, p in rels:  # a model that often believes the true predicate of a true pair
            if a != b and rng.random() < 0.6:
                row = a * (NUM_BOXES - 1) + (b - (b > a))  # detection a/b is a copy of GT a/b
                logits[row, p] += 4.0
        rel_scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        pred = {"boxes": boxes.astype(np.float32), "labels": labels,
                "scores": rng.uniform(0.2, 1.0, NUM_BOXES).astype(np.float32),
                "rel_pairs": pairs, "rel_scores": rel_scores}
        out.append(({"boxes": gt_boxes, "labels": gt_labels, "relations": rels}, pred))
    return out


def _iou_plus_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + 1
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area(box) + area(boxes) - inter)


def peer_image(gt: dict, pred: dict, ks=(20, 50, 100)) -> dict:
    """NM-style evaluation of one image (graph constraint and not): full sorts, per-GT loops."""
    out = {}
    s = pred["scores"][pred["rel_pairs"]].prod(1)
    fg = pred["rel_scores"][:, 1:]
    variants = {}
    best = fg.argmax(1)
    order = np.argsort(-(fg.max(1) * s))
    variants["gc"] = (pred["rel_pairs"][order], best[order] + 1)
    flat = np.argsort(-(fg * s[:, None]).ravel())[:max(ks)]
    rows, cols = np.unravel_index(flat, fg.shape)
    variants["ng"] = (pred["rel_pairs"][rows], cols + 1)
    gt_rels, gl, gb = gt["relations"], gt["labels"], gt["boxes"]
    for name, (pp, pr) in variants.items():
        pp, pr = pp[:max(ks)], pr[:max(ks)]
        trip = np.stack([pred["labels"][pp[:, 0]], pr, pred["labels"][pp[:, 1]]], 1)
        pred_to_gt = [[] for _ in range(len(pr))]
        for gi, (a, b, p) in enumerate(gt_rels):
            same = np.flatnonzero((trip == [gl[a], p, gl[b]]).all(1))
            if same.size == 0:
                continue
            ok = ((_iou_plus_one(gb[a], pred["boxes"][pp[same, 0]]) >= 0.5)
                  & (_iou_plus_one(gb[b], pred["boxes"][pp[same, 1]]) >= 0.5))
            for i in same[ok]:
                pred_to_gt[i].append(gi)
        for k in ks:
            out[f"{name}@{k}"] = len(reduce(np.union1d, pred_to_gt[:k], [])) / len(gt_rels)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-images", type=int, default=5000)
    ap.add_argument("--peer-images", type=int, default=100)
    ap.add_argument("--pool", type=int, default=16, help="distinct synthetic images cycled")
    ap.add_argument("--json", default=None, help="also write the JSON result here")
    args = ap.parse_args()

    pool = make_pool(args.pool)
    zs = load_vg150_zero_shot_triplets()
    ev = SGGEvaluator("sgdet", NUM_PREDICATES, (20, 50, 100), zero_shot_triplets=zs)
    per_image = []
    t0 = time.perf_counter()
    for i in range(args.num_images):
        gt, pred = pool[i % len(pool)]
        t = time.perf_counter()
        ev.add(gt, pred)
        per_image.append(time.perf_counter() - t)
    metrics = ev.compute()
    total = time.perf_counter() - t0

    peer_times = []
    agree = True
    for i in range(args.peer_images):
        gt, pred = pool[i % len(pool)]
        t = time.perf_counter()
        ref = peer_image(gt, pred)
        peer_times.append(time.perf_counter() - t)
        if i < len(pool):  # the peer must agree with the evaluator on every image it times
            one = SGGEvaluator("sgdet", NUM_PREDICATES)
            one.add(gt, pred)
            got = one.compute()
            for k in (20, 50, 100):
                agree &= abs(got[f"R@{k}"] - 100 * ref[f"gc@{k}"]) < 1e-9
                agree &= abs(got[f"ngR@{k}"] - 100 * ref[f"ng@{k}"]) < 1e-9

    med = statistics.median(per_image)
    peer_med = statistics.median(peer_times) if peer_times else float("nan")
    result = {
        "benchmark": "evaluation.sgdet",
        "num_images": args.num_images, "boxes": NUM_BOXES,
        "pairs": NUM_BOXES * (NUM_BOXES - 1), "predicate_columns": NUM_PREDICATES + 1,
        "metrics_computed": "R, ngR, mR, ngmR, zR, ngzR @20/50/100",
        "total_s": round(total, 3), "median_ms_per_image": round(1e3 * med, 3),
        "mean_ms_per_image": round(1e3 * total / max(args.num_images, 1), 3),
        "peer_images": args.peer_images, "peer_median_ms_per_image": round(1e3 * peer_med, 3),
        "speedup_vs_peer_median": round(peer_med / med, 2) if peer_times else None,
        "peer_agrees": bool(agree), "target_total_s": 60.0,
        **{k: round(metrics[k], 3) for k in ("R@20", "R@100", "ngR@100", "mR@100", "zR@100")},
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, numpy {np.__version__}",
    }
    print(f"{'what':<34}{'value':>14}")
    for key in ("num_images", "total_s", "median_ms_per_image", "mean_ms_per_image",
                "peer_median_ms_per_image", "speedup_vs_peer_median", "peer_agrees",
                "target_total_s"):
        print(f"{key:<34}{str(result[key]):>14}")
    print(json.dumps(result))
    if args.json:
        tmp = f"{args.json}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
