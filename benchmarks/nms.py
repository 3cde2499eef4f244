"""NMS timing: class-aware batched_nms of N boxes to the top K, jitted, median after warm-up;
torchvision.ops.batched_nms side by side when torch is importable (it returns all kept boxes).
Usage: python -m benchmarks.nms [--json out.json]"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit_json, median_seconds, print_table  # noqa: E402
from sgg_jax.ops.nms import batched_nms  # noqa: E402

CASES = [(2000, 300, 1), (2000, 300, 80), (6000, 1000, 1), (1000, 100, 150)]


def make_boxes(n, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 600, (n, 2)); wh = rng.uniform(10, 300, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return boxes, rng.random(n).astype(np.float32), rng.integers(0, num_classes, n)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    rows = []
    for n, k, ncls in CASES:
        boxes, scores, classes = make_boxes(n, ncls)
        b, s, c = jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(classes, jnp.int32)
        fn = jax.jit(lambda b, s, c: batched_nms(b, s, c, 0.5, k))
        row = {"N": n, "top_k": k, "classes": ncls,
               "jax_ms": median_seconds(lambda: fn(b, s, c), repeats=20) * 1e3}
        keep, ok = fn(b, s, c)
        row["kept"] = int(ok.sum())
        try:
            import torch
            import torchvision
            tb, ts, tc = map(torch.from_numpy, (boxes, scores, classes))
            row["tv_ms"] = median_seconds(
                lambda: torchvision.ops.batched_nms(tb, ts, tc, 0.5)[:k], repeats=20) * 1e3
            ref = torchvision.ops.batched_nms(tb, ts, tc, 0.5)[:k].numpy()
            row["same_as_tv"] = bool(np.array_equal(np.asarray(keep)[np.asarray(ok)], ref))
        except ImportError:
            pass
        rows.append(row)
    print_table(rows, ["N", "top_k", "classes", "jax_ms", "tv_ms", "kept", "same_as_tv"],
                title="batched_nms (jitted, CPU)")
    emit_json({"benchmark": "nms", "backend": jax.default_backend(), "rows": rows,
               "loadavg_1min_at_start": load}, args.json)


if __name__ == "__main__":
    main()
