"""Faster R-CNN throughput: our ResNet-50-FPN detector vs torchvision's, same network.

Images/s = batch / median wall time of one inference call and of one training step (forward,
backward, SGD-momentum update), both jitted on our side. torchvision's detector (when a Python
with torch + torchvision is available: this interpreter, or `--torch-python PATH`) runs in a
worker process that is driven call by call from here; only one side computes at a time.
`--order interleaved` (default) alternates the repetitions (ours, theirs, ours, ...), so a load
that comes and goes hits both; `--order blocked` runs each side's repetitions back to back, as
a training loop runs its steps. Quote the order with the ratio.

The two detectors run the same network on the same work (all printed under "settings"):
torchvision's `fasterrcnn_resnet50_fpn` as built by `torchvision.models.detection` (ResNet-50
+ FPN via `_resnet_fpn_extractor`, all 5 backbone stages trainable) with `FrozenBatchNorm2d` as
ours (torchvision's weights=None default would use training-mode BatchNorm), its transform
pinned to min_size = max_size = the image size (it would otherwise upscale to 800 px), the RPN /
RoI-head sizes set explicitly to ours (pre/post-NMS top-n, NMS thresholds, sampled anchors /
RoIs, score threshold, detections per image, C + 1 classes), and our randomly initialised
weights loaded into it (`export_weights`: `sgg_jax.weights`' torchvision mapping, an .npz,
`load_state_dict(strict=True)`). With its own random init torchvision's RPN keeps ~260
proposals per image after NMS where ours keeps 1000, so its box head would score a quarter of
our RoIs (`--torch-own-init` measures that anyway); the JSON records both sides' proposal
counts. Differences that remain: torchvision's class-wise NMS sees every (RoI, class) pair above
the score threshold while ours keeps the best `box_nms_candidates` (1000) first (fixed shapes),
and our NMS / top-k always run at their full fixed size.

Allocator (`--allocator`, recorded in the JSON): XLA:CPU allocates each call's temporaries and
outputs anew, and glibc maps and page-faults blocks above 32 MB afresh at every call (~490k
minor faults and ~1.3 s of system time per training step; more when another process churns
memory beside it: with glibc's defaults a call of ours right after a torch call took 8.4 s
instead of 6.0 s). `entry-point` (default) runs each side as its library runs it: ours with
`sgg_jax.runtime.tune_host_allocator()`, which `python -m sgg_jax.main` applies (freed memory
kept for reuse), torchvision with glibc's defaults. `default`: glibc's defaults on both sides.
`both`: the tuned allocator on both sides (the torch worker calls the same function).

  python benchmarks/detector.py [--size 512] [--batch 2] [--classes 150] [--repeats 3]
      [--torch-python /path/to/python-with-torch] [--skip-torch]
      [--allocator entry-point|default|both]
      [--order interleaved|blocked]
      [--output result.json]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import JsonLineWorker  # noqa: E402

def synthetic_batch(batch: int, size: int, num_classes: int, gt: int = 8, seed: int = 0):
    """Random uint8 images and `gt` random boxes per image (labels 1..C)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
    xy = rng.uniform(0, size * 0.6, size=(batch, gt, 2))
    wh = rng.uniform(size * 0.05, size * 0.4, size=(batch, gt, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, size - 1)], -1).astype(np.float32)
    labels = rng.integers(1, num_classes + 1, size=(batch, gt)).astype(np.int32)
    return images, boxes, labels


def detector_config(num_classes: int):
    from sgg_jax.models.detection import resnet50_fpn_config

    return resnet50_fpn_config(num_classes=num_classes)


def shared_settings(cfg, size: int) -> dict:
    """The settings both detectors are run with (torchvision's kwargs are derived from these)."""
    return {"image_size": size, "num_classes_with_background": cfg.num_classes + 1,
            "anchor_sizes": [list(s) for s in cfg.anchor_sizes],
            "aspect_ratios": list(cfg.aspect_ratios),
            "rpn_pre_nms_top_n_train": cfg.rpn_pre_nms_top_n_train,
            "rpn_pre_nms_top_n_test": cfg.rpn_pre_nms_top_n_test,
            "rpn_post_nms_top_n_train": cfg.rpn_post_nms_top_n_train,
            "rpn_post_nms_top_n_test": cfg.rpn_post_nms_top_n_test,
            "rpn_nms_thresh": cfg.rpn_nms_thresh, "rpn_fg_iou_thresh": cfg.rpn_fg_iou_thresh,
            "rpn_bg_iou_thresh": cfg.rpn_bg_iou_thresh,
            "rpn_batch_size_per_image": cfg.rpn_batch_size_per_image,
            "rpn_positive_fraction": cfg.rpn_positive_fraction,
            "box_batch_size_per_image": cfg.roi_batch_size_per_image,
            "box_positive_fraction": cfg.roi_positive_fraction,
            "box_fg_iou_thresh": cfg.roi_fg_iou_thresh, "box_bg_iou_thresh": cfg.roi_bg_iou_thresh_hi,
            "box_score_thresh": cfg.score_thresh, "box_nms_thresh": cfg.box_nms_thresh,
            "box_detections_per_img": cfg.detections_per_image,
            "roi_output_size": cfg.roi_size, "sampling_ratio": cfg.sampling_ratio,
            "representation_size": cfg.fc_dim, "norm": "frozen batch norm (both)",
            "trainable": "all parameters (both)", "optimizer": "SGD lr 1e-3 momentum 0.9",
            "ours_only": {"box_nms_candidates": cfg.box_nms_candidates,
                          "dtype": "float32"}}


class OursRunner:
    """Our detector: jitted inference and training step on one fixed batch."""

    def __init__(self, images, boxes, labels, num_classes: int):
        import jax
        import jax.numpy as jnp
        import optax

        from sgg_jax.models.detection import FasterRCNN

        self.jax = jax
        model = FasterRCNN(detector_config(num_classes))
        b, s = images.shape[:2]
        imgs, sizes = jnp.asarray(images), jnp.full((b, 2), float(s))
        gtb, gtl = jnp.asarray(boxes), jnp.asarray(labels)
        gtm = gtl > 0
        t0 = time.perf_counter()
        variables = jax.jit(model.init)({"params": jax.random.PRNGKey(0)}, imgs, sizes)
        infer = jax.jit(model.apply)
        opt = optax.sgd(1e-3, momentum=0.9)
        frozen = {k: v for k, v in variables.items() if k != "params"}

        # params / optimizer state are donated: the update writes into their buffers instead of
        # fresh allocations (as a training loop would)
        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def train_step(params, state, key):
            def loss_fn(p):
                out = model.apply({**frozen, "params": p}, imgs, sizes, gtb, gtl, gtm, train=True,
                                  rngs={"sampling": key})
                return out.total
            loss, g = jax.value_and_grad(loss_fn)(params)
            upd, state = opt.update(g, state, params)
            return optax.apply_updates(params, upd), state, loss

        self.variables = variables
        self._proposals = lambda: jax.jit(functools.partial(model.apply, proposals_only=True))(
            variables, imgs, sizes)[1]
        self._infer = lambda: infer(variables, imgs, sizes)
        # a copy: the train step donates (consumes) its params, inference keeps `variables`
        self.params = jax.tree.map(jnp.copy, variables["params"])
        self.state = opt.init(self.params)
        self._train_step = train_step
        self._key = jax.random.PRNGKey(1)
        jax.block_until_ready(self._infer())
        self.compile_s_inference = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.train()
        self.compile_s_training = time.perf_counter() - t1
        self.warm = True  # both calls ran once above

    def proposals_per_image(self) -> list[int]:
        """Valid RPN proposals per image at inference (the RoIs the box head really scores)."""
        return [int(n) for n in np.asarray(self._proposals()).sum(1)]

    def infer(self) -> float:
        t = time.perf_counter()
        self.jax.block_until_ready(self._infer())
        return time.perf_counter() - t

    def train(self) -> float:
        t = time.perf_counter()
        # chain the updates as a real training loop does (params/state feed the next step)
        self.params, self.state, loss = self._train_step(self.params, self.state, self._key)
        self.jax.block_until_ready(loss)
        return time.perf_counter() - t


# ---------------------------------------------------------------------------------------------
# torchvision side: a worker process (it may be another interpreter, e.g. a venv with torch)


def export_weights(variables, path: str) -> None:
    """Our detector's parameters as a torchvision-named state dict in an .npz (no pickle), so
    torchvision's side runs the same network: with their own random init the two detectors
    would do different work (torchvision's init leaves ~260 proposals per image after its RPN
    NMS here, ours keeps all 1000, so its box head would score a quarter of our RoIs)."""
    from sgg_jax import weights as W

    W.save_npz(W.export_state_dict(variables, W.torchvision_fasterrcnn_rules()), path)


def _torch_worker(size: int, batch: int, classes: int, weights: str = "",
                  tune_allocator: bool = False) -> None:
    """Builds torchvision's detector (with `weights`, an .npz state dict, loaded strictly when
    given), then runs one `infer` / `train` per stdin line and answers each with its wall time
    (JSON lines on stdout). `tune_allocator`: our entry point's allocator settings here too."""
    if tune_allocator:
        from sgg_jax import runtime
        runtime.tune_host_allocator()
    import torch
    import torchvision
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    images, boxes, labels = synthetic_batch(batch, size, classes)
    s = json.loads(sys.stdin.readline())
    torch.manual_seed(0)
    body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 5)   # all stages trainable, as ours
    model = FasterRCNN(
        backbone, num_classes=s["num_classes_with_background"], min_size=size, max_size=size,
        rpn_pre_nms_top_n_train=s["rpn_pre_nms_top_n_train"],
        rpn_pre_nms_top_n_test=s["rpn_pre_nms_top_n_test"],
        rpn_post_nms_top_n_train=s["rpn_post_nms_top_n_train"],
        rpn_post_nms_top_n_test=s["rpn_post_nms_top_n_test"],
        rpn_nms_thresh=s["rpn_nms_thresh"], rpn_fg_iou_thresh=s["rpn_fg_iou_thresh"],
        rpn_bg_iou_thresh=s["rpn_bg_iou_thresh"],
        rpn_batch_size_per_image=s["rpn_batch_size_per_image"],
        rpn_positive_fraction=s["rpn_positive_fraction"],
        box_batch_size_per_image=s["box_batch_size_per_image"],
        box_positive_fraction=s["box_positive_fraction"],
        box_fg_iou_thresh=s["box_fg_iou_thresh"], box_bg_iou_thresh=s["box_bg_iou_thresh"],
        box_score_thresh=s["box_score_thresh"], box_nms_thresh=s["box_nms_thresh"],
        box_detections_per_img=s["box_detections_per_img"])
    anchor_gen = model.rpn.anchor_generator
    assert [list(x) for x in anchor_gen.sizes] == s["anchor_sizes"], anchor_gen.sizes
    assert list(anchor_gen.aspect_ratios[0]) == s["aspect_ratios"]
    pooler = model.roi_heads.box_roi_pool
    assert pooler.output_size == (s["roi_output_size"],) * 2 and pooler.sampling_ratio == s["sampling_ratio"]
    if weights:
        with np.load(weights) as f:
            model.load_state_dict({k: torch.from_numpy(f[k]) for k in f.files}, strict=True)
    x = [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in images]
    model.eval()
    with torch.no_grad():
        image_list, _ = model.transform(x)
        proposals, _ = model.rpn(image_list, model.backbone(image_list.tensors))
    targets = [{"boxes": torch.from_numpy(bx), "labels": torch.from_numpy(lb).long()}
               for bx, lb in zip(boxes, labels)]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def infer():
        model.eval()
        with torch.no_grad():
            model(x)

    def train():
        model.train()
        losses = model(x, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    print(json.dumps({"ready": True, "torch": torch.__version__, "torchvision": torchvision.__version__,
                      "torch_threads": torch.get_num_threads(),
                      "weights": weights or "torchvision's random init",
                      "proposals_per_image": [len(p) for p in proposals]}), flush=True)
    for line in sys.stdin:
        fn = {"infer": infer, "train": train}[line.strip()]
        t = time.perf_counter()
        fn()
        print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)


class TorchRunner(JsonLineWorker):
    """Drives a `_torch_worker` process (torchvision's side, in the torch interpreter)."""

    def __init__(self, python: str, size: int, batch: int, classes: int, settings: dict,
                 weights: str = "", tune_allocator: bool = False):
        super().__init__([python, os.path.abspath(__file__), "--torch-worker", "--size",
                          str(size), "--batch", str(batch), "--classes", str(classes),
                          "--weights", weights] + (["--tune-allocator"] if tune_allocator else []),
                         "benchmarks/detector.py torchvision worker", json.dumps(settings))

    def infer(self) -> float:
        return self.seconds("infer")

    def train(self) -> float:
        return self.seconds("train")


def _torch_python(arg: str) -> str | None:
    """The interpreter for torchvision's side: `--torch-python`, else this one if it has torch."""
    if arg:
        return arg
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(runners: dict, what: str, repeats: int, order: str = "interleaved",
            warmup: int = 1) -> dict:
    """Median seconds of `what` per runner. `order="interleaved"`: repetitions alternate
    between the runners (ours, theirs, ours, ...), so a load that comes and goes hits both;
    `"blocked"`: each runner's repetitions back to back, as a training loop runs its steps.
    Runners that already ran `what` once (ours: while compiling) get no extra warm-up call."""
    for r in runners.values():
        for _ in range(0 if getattr(r, "warm", False) else warmup):
            getattr(r, what)()
    times = {k: [] for k in runners}
    if order == "blocked":
        for k, r in runners.items():
            times[k] = [getattr(r, what)() for _ in range(repeats)]
    else:
        for _ in range(repeats):
            for k, r in runners.items():
                times[k].append(getattr(r, what)())
    return {k: {"median_s": statistics.median(v), "all_s": [round(t, 3) for t in v]}
            for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--classes", type=int, default=150, help="object classes C (C + 1 logits)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON", ""),
                    help="python with torch + torchvision for the peer (default: $TORCH_PYTHON, "
                         "else this interpreter when it has torch)")
    ap.add_argument("--only", choices=("both", "inference", "training"), default="both")
    ap.add_argument("--order", choices=("interleaved", "blocked"), default="interleaved",
                    help="interleaved: ours, theirs, ours, ... (robust to a changing load); "
                         "blocked: each side's repetitions back to back (a training loop's "
                         "steady state; see the module docstring)")
    ap.add_argument("--allocator", choices=("entry-point", "default", "both"),
                    default="entry-point",
                    help="entry-point: ours with sgg_jax.runtime's tuned allocator (as "
                         "python -m sgg_jax.main runs), torchvision with glibc's defaults; "
                         "default: glibc's defaults on both sides; both: tuned on both sides")
    ap.add_argument("--torch-own-init", action="store_true",
                    help="torchvision keeps its own random init instead of our weights (the "
                         "two detectors then do different amounts of work)")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights", default="", help=argparse.SUPPRESS)
    ap.add_argument("--tune-allocator", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--output", default="")
    args = ap.parse_args()
    if args.torch_worker:
        _torch_worker(args.size, args.batch, args.classes, args.weights, args.tune_allocator)
        return
    from sgg_jax import runtime
    tuned = {"ours": args.allocator != "default" and runtime.tune_host_allocator(),
             "torchvision": args.allocator == "both"}

    import jax

    from benchmarks.common import emit_json, print_table

    settings = shared_settings(detector_config(args.classes), args.size)
    images, boxes, labels = synthetic_batch(args.batch, args.size, args.classes)
    load_start = _loadavg()
    runners = {"ours": OursRunner(images, boxes, labels, args.classes)}
    python = None if args.skip_torch else _torch_python(args.torch_python)
    if python:
        weights = ""
        if not args.torch_own_init:
            tmp = tempfile.mkdtemp(prefix="sgg_jax_bench_")
            weights = os.path.join(tmp, "ours_as_torchvision.npz")
            export_weights(runners["ours"].variables, weights)
        runners["torchvision"] = TorchRunner(python, args.size, args.batch, args.classes, settings,
                                             weights, tuned["torchvision"])
        if weights:
            shutil.rmtree(os.path.dirname(weights), ignore_errors=True)
    result = {"size": args.size, "batch": args.batch, "classes": args.classes,
              "repeats": args.repeats, "order": args.order, "device": str(jax.devices()[0]),
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "settings": settings,
              "allocator": args.allocator, "allocator_tuned": tuned,
              "malloc_env": {k: v for k, v in os.environ.items()
                             if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"},
              "compile_s": {"inference": runners["ours"].compile_s_inference,
                            "training": runners["ours"].compile_s_training},
              "torchvision": runners["torchvision"].info if python else None,
              "ours_proposals_per_image": runners["ours"].proposals_per_image(),
              "loadavg_start": load_start}
    kinds = ("inference", "training") if args.only == "both" else (args.only,)
    for kind in kinds:
        result[kind] = measure(runners, "infer" if kind == "inference" else "train", args.repeats,
                               args.order)
    result["loadavg_end"] = _loadavg()
    if python:
        runners["torchvision"].close()
    rows = []
    for name, label in (("ours", "sgg_jax resnet50_fpn"),
                        ("torchvision", "torchvision fasterrcnn_resnet50_fpn")):
        if name in runners:
            rows.append({"model": label, **{f"{k} img/s": args.batch / result[k][name]["median_s"]
                                            for k in kinds}})
    if python:
        rows.append({"model": "ratio ours / torchvision",
                     **{f"{k} img/s": result[k]["torchvision"]["median_s"] / result[k]["ours"]["median_s"]
                        for k in kinds}})
    emit_json(result, args.output or None)
    print_table(rows, ["model"] + [f"{k} img/s" for k in kinds],
                title=f"Faster R-CNN R50-FPN, {args.size} px, batch {args.batch}, "
                      f"{args.classes + 1} logits, {args.order}, allocator {args.allocator}; load average {load_start} -> {result['loadavg_end']}")


if __name__ == "__main__":
    main()
