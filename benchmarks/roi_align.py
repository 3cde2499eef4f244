"""RoI-align timing: the XLA path (jitted) forward and forward+backward (value and grad of the
sum w.r.t. features), with torchvision.ops.roi_align side by side in the same run when torch
is importable.

Shapes (B, C, H, W, R), 7x7 output, sampling_ratio 2, aligned=True. Prints a table and JSON
(medians in ms; ratio = torchvision time / ours, > 1 means we are faster).
Usage: python -m benchmarks.roi_align [--json out.json] [--repeats N]
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit_json, median_seconds, print_table  # noqa: E402
from pallas_kernels.roi_align import roi_align  # noqa: E402

SHAPES = [(2, 512, 37, 37, 256), (1, 256, 64, 64, 512), (8, 256, 32, 32, 1024)]
OUT, RATIO, SCALE = 7, 2, 1.0 / 16


def make_inputs(b, c, h, w, r, seed=0):
    """Features and boxes like a detector's: image coords (stride 16), sizes 16..~0.7 image."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((b, h, w, c), dtype=np.float32)
    img_w, img_h = w / SCALE, h / SCALE
    wh = rng.uniform(16, 0.7 * min(img_w, img_h), (r, 2))
    x1 = rng.uniform(0, img_w - wh[:, 0]); y1 = rng.uniform(0, img_h - wh[:, 1])
    boxes = np.stack([x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], 1).astype(np.float32)
    idx = rng.integers(0, b, r).astype(np.int32)
    return feats, boxes, idx


def bench_jax(feats, boxes, idx, repeats):
    f, bx, bi = jnp.asarray(feats), jnp.asarray(boxes), jnp.asarray(idx)
    # Boxes are arguments, not closed-over constants, so XLA cannot constant-fold the geometry.
    fwd = jax.jit(lambda f, bx, bi: roi_align(f, bx, bi, OUT, SCALE, RATIO, True, impl="xla"))
    # value_and_grad: the loss needs the forward output, so XLA cannot drop the forward (with
    # plain grad of a linear op it would, and only the backward would be timed)
    fb = jax.jit(jax.value_and_grad(lambda f, bx, bi: roi_align(f, bx, bi, OUT, SCALE, RATIO,
                                                                True, impl="xla").sum()))
    return (median_seconds(lambda: fwd(f, bx, bi), repeats=repeats) * 1e3,
            median_seconds(lambda: fb(f, bx, bi), repeats=repeats) * 1e3, fwd(f, bx, bi))


def bench_torch(feats, boxes, idx, repeats):
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    x = torch.from_numpy(np.ascontiguousarray(feats.transpose(0, 3, 1, 2)))
    rois = torch.from_numpy(np.concatenate([idx[:, None].astype(np.float32), boxes], 1))

    def fwd():
        with torch.no_grad():
            return torchvision.ops.roi_align(x, rois, OUT, SCALE, RATIO, True)

    def fb():
        xg = x.detach().requires_grad_(True)
        torchvision.ops.roi_align(xg, rois, OUT, SCALE, RATIO, True).sum().backward()
        return xg.grad

    out = fwd().numpy().transpose(0, 2, 3, 1)
    return (median_seconds(fwd, repeats=repeats) * 1e3, median_seconds(fb, repeats=repeats) * 1e3,
            out, torch.__version__, torchvision.__version__, torch.get_num_threads())


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rows, meta = [], {"jax": jax.__version__, "backend": jax.default_backend(),
                      "cpu_count": os.cpu_count(), "loadavg_1min_at_start": os.getloadavg()[0]}
    for shape in SHAPES:
        feats, boxes, idx = make_inputs(*shape)
        jf, jfb, jout = bench_jax(feats, boxes, idx, args.repeats)
        row = {"shape(B,C,H,W,R)": str(shape), "jax_fwd_ms": jf, "jax_fwd_bwd_ms": jfb}
        t = bench_torch(feats, boxes, idx, args.repeats)
        if t is not None:
            tf, tfb, tout, tv, tvv, nthreads = t
            meta.update(torch=tv, torchvision=tvv, torch_threads=nthreads)
            row.update(tv_fwd_ms=tf, tv_fwd_bwd_ms=tfb, fwd_speedup=tf / jf,
                       fwd_bwd_speedup=tfb / jfb,
                       max_abs_diff=float(np.abs(np.asarray(jout) - tout).max()))
        rows.append(row)
    cols = ["shape(B,C,H,W,R)", "jax_fwd_ms", "tv_fwd_ms", "fwd_speedup", "jax_fwd_bwd_ms",
            "tv_fwd_bwd_ms", "fwd_bwd_speedup", "max_abs_diff"]
    print_table(rows, cols, title="roi_align (XLA path, CPU) vs torchvision.ops.roi_align")
    emit_json({"benchmark": "roi_align", "meta": meta, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
