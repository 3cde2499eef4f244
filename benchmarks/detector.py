"""Faster R-CNN throughput: our ResNet-50-FPN detector vs torchvision's, same size and classes.

Images/s = batch / median wall time of a jitted inference call and of a jitted training step
(forward, backward, SGD update). When torch and torchvision are importable, torchvision's
`fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=C+1)` runs in the same
process at the same size (its transform is pinned to min_size = max_size = the image size, so it
does not upscale to 800 px), and the table shows our / torchvision ratios.

  python benchmarks/detector.py [--size 512] [--batch 2] [--classes 150] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit_json, median_seconds, print_table  # noqa: E402


def synthetic_batch(batch: int, size: int, num_classes: int, gt: int = 8, seed: int = 0):
    """Random uint8 images and `gt` random boxes per image (labels 1..C)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
    xy = rng.uniform(0, size * 0.6, size=(batch, gt, 2))
    wh = rng.uniform(size * 0.05, size * 0.4, size=(batch, gt, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, size - 1)], -1).astype(np.float32)
    labels = rng.integers(1, num_classes + 1, size=(batch, gt)).astype(np.int32)
    return images, boxes, labels


def bench_ours(images, boxes, labels, num_classes: int, repeats: int) -> dict:
    import optax

    from sgg_jax.models.detection import FasterRCNN, resnet50_fpn_config

    cfg = resnet50_fpn_config(num_classes=num_classes)
    model = FasterRCNN(cfg)
    b, s = images.shape[:2]
    imgs = jnp.asarray(images)
    sizes = jnp.full((b, 2), float(s))
    gtb, gtl = jnp.asarray(boxes), jnp.asarray(labels)
    gtm = gtl > 0
    t0 = time.perf_counter()
    variables = jax.jit(model.init)({"params": jax.random.PRNGKey(0)}, imgs, sizes)
    infer = jax.jit(model.apply)
    opt = optax.sgd(1e-3, momentum=0.9)

    @jax.jit
    def train_step(params, state, key):
        def loss_fn(p):
            out = model.apply({**variables, "params": p}, imgs, sizes, gtb, gtl, gtm, train=True,
                              rngs={"sampling": key})
            return out.total
        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    params, state = variables["params"], opt.init(variables["params"])
    jax.block_until_ready(infer(variables, imgs, sizes))
    t_inf_compile = time.perf_counter() - t0
    t1 = time.perf_counter()
    jax.block_until_ready(train_step(params, state, jax.random.PRNGKey(1)))
    t_train_compile = time.perf_counter() - t1
    inf = median_seconds(lambda: infer(variables, imgs, sizes), repeats=repeats, warmup=1)
    trn = median_seconds(lambda: train_step(params, state, jax.random.PRNGKey(1)), repeats=repeats,
                         warmup=1)
    return {"inference_img_s": b / inf, "training_img_s": b / trn,
            "compile_s_inference": t_inf_compile, "compile_s_training": t_train_compile}


def bench_torchvision(images, boxes, labels, num_classes: int, repeats: int) -> dict | None:
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    b, s = images.shape[:2]
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes + 1, min_size=s, max_size=s)
    x = [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in images]
    targets = [{"boxes": torch.from_numpy(bx), "labels": torch.from_numpy(lb).long()}
               for bx, lb in zip(boxes, labels)]

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    model.eval()
    with torch.no_grad():
        inf = timed(lambda: model(x))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        losses = model(x, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    trn = timed(step)
    return {"inference_img_s": b / inf, "training_img_s": b / trn,
            "torch_threads": torch.get_num_threads(), "torchvision": torchvision.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--classes", type=int, default=150, help="object classes C (C + 1 logits)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--output", default="")
    args = ap.parse_args()
    images, boxes, labels = synthetic_batch(args.batch, args.size, args.classes)
    ours = bench_ours(images, boxes, labels, args.classes, args.repeats)
    peer = None if args.skip_torch else bench_torchvision(images, boxes, labels, args.classes,
                                                          args.repeats)
    rows = [{"model": "sgg_jax resnet50_fpn", "inference img/s": ours["inference_img_s"],
             "training img/s": ours["training_img_s"]}]
    if peer:
        rows.append({"model": "torchvision fasterrcnn_resnet50_fpn",
                     "inference img/s": peer["inference_img_s"], "training img/s": peer["training_img_s"]})
        rows.append({"model": "ratio ours / torchvision",
                     "inference img/s": ours["inference_img_s"] / peer["inference_img_s"],
                     "training img/s": ours["training_img_s"] / peer["training_img_s"]})
    result = {"size": args.size, "batch": args.batch, "classes": args.classes, "repeats": args.repeats,
              "device": str(jax.devices()[0]), "ours": ours, "torchvision": peer}
    emit_json(result, args.output or None)
    print_table(rows, ["model", "inference img/s", "training img/s"],
                title=f"Faster R-CNN R50-FPN, {args.size} px, batch {args.batch}, {args.classes + 1} logits")


if __name__ == "__main__":
    main()
