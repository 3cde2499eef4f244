"""End-to-end latency per image of trained runs, as real-time SGG reports it: one image at a
time (batch 1), from the file on disk to the ranked scene graph.

For each run: `sgg_jax.load(run).predict(path)` on N images after warm-up (the public call:
decode, letterbox, the jitted SGDet step, post-processing and triplet ranking), median and p90
in ms; the same images once more piece by piece for where the time goes (load = decode +
letterbox, forward = the jitted step with its device-to-host copy, post = scene graph and
ranking); the compile time of the first call apart. Each run is also exported
(`sgg_jax.export`, SGDet, batch 1) and timed the same way with the artifact in place of the
jitted step (path `jax.export`). Runs and paths are timed in turns (a, b, a, b, ...), twice,
keeping the quieter, so a change in the machine's load hits all alike; `vs_first` is each
row's ratio to the first run's jax.jit row.

  python benchmarks/latency.py --runs runs/imp,runs/msdn [--images DIR] [--num-images 50]
      [--warmup 3] [--output latency.json]

--images defaults to the test images of the first run's synthetic dataset (in the cache).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit_json, print_table  # noqa: E402


def default_images(run: str) -> str:
    """The image folder of a run's synthetic dataset (generated when it trained)."""
    from data_pipelines.dataset import DataConfig, synthetic_dir
    from sgg_jax.training import runs
    config = runs.load_run_config(run)
    if config.data.name != "synthetic":
        raise SystemExit(f"{run}: trained on {config.data.name}; pass --images DIR")
    return os.path.join(synthetic_dir(DataConfig.from_dict(config.data)), "VG_100K")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def time_run(g, images: list[str], warmup: int) -> dict:
    """ms per image (median, p90) of g.predict, and the median of each piece."""
    import numpy as np

    from sgg_jax.images import letterbox, load_image
    from sgg_jax.scene_graph import build_scene_graph

    t0 = time.perf_counter()
    g.predict(images[0])
    first = time.perf_counter() - t0
    for path in images[1:1 + warmup]:
        g.predict(path)
    total = []
    for path in images:
        t0 = time.perf_counter()
        g.predict(path)
        total.append(1e3 * (time.perf_counter() - t0))
    load, forward, post = [], [], []
    for path in images:
        t0 = time.perf_counter()
        li = load_image(path, g.image_size)
        detector = {}
        if g.detector_image_size:  # a reused detector reads its own canvas
            canvas, _, th, tw = letterbox(li.image, g.detector_image_size)
            detector = dict(detector_images=canvas[None],
                            detector_image_sizes=np.asarray([[th, tw]], np.int32))
        t1 = time.perf_counter()
        out = g.sgdet_fn(li.canvas[None], np.asarray([li.content_hw], np.int32), **detector)
        t2 = time.perf_counter()
        build_scene_graph(out, 0, li, g.class_names, g.predicate_names, g.top_relations,
                          g.idx_to_word, g.top_regions, g.region_nms)
        t3 = time.perf_counter()
        load.append(1e3 * (t1 - t0))
        forward.append(1e3 * (t2 - t1))
        post.append(1e3 * (t3 - t2))
    median = statistics.median(total)
    return dict(ms_median=median, ms_p90=percentile(total, 0.9),
                load_ms=statistics.median(load), forward_ms=statistics.median(forward),
                post_ms=statistics.median(post), compile_s=first - median / 1e3)


def time_exported(g, fn, meta: dict, images: list[str], warmup: int) -> dict:
    """The same end to end with the `jax.export` artifact in place of the jitted step
    (decode and letterbox, exported call, scene graph and ranking)."""
    import numpy as np

    from sgg_jax.images import letterbox, load_image
    from sgg_jax.inference import _host_outputs
    from sgg_jax.scene_graph import build_scene_graph
    names = [o["name"] for o in meta["outputs"]]
    extra = [i["name"] for i in meta["inputs"][2:]]

    def predict(path: str):
        li = load_image(path, g.image_size)
        args = [li.canvas[None], np.asarray([li.content_hw], np.int32)]
        if extra:  # a reused detector's own canvas
            canvas, _, th, tw = letterbox(li.image, g.detector_image_size)
            args += [canvas[None], np.asarray([[th, tw]], np.int32)]
        out = _host_outputs(dict(zip(names, fn.call(*args))))
        return build_scene_graph(out, 0, li, g.class_names, g.predicate_names,
                                 g.top_relations, g.idx_to_word, g.top_regions, g.region_nms)

    t0 = time.perf_counter()
    predict(images[0])
    first = time.perf_counter() - t0
    for path in images[1:1 + warmup]:
        predict(path)
    total = []
    for path in images:
        t0 = time.perf_counter()
        predict(path)
        total.append(1e3 * (time.perf_counter() - t0))
    median = statistics.median(total)
    return dict(ms_median=median, ms_p90=percentile(total, 0.9), compile_s=first - median / 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", required=True, help="comma-separated trained run directories")
    ap.add_argument("--images", default="", help="a folder of images (default: the first "
                    "run's synthetic test images)")
    ap.add_argument("--num-images", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--output", default="")
    args = ap.parse_args()
    import jax

    import sgg_jax
    from sgg_jax import export
    from sgg_jax.images import find_images
    from sgg_jax.training import runs as runs_lib

    run_dirs = [r for r in args.runs.split(",") if r]
    folder = args.images or default_images(run_dirs[0])
    images = find_images(folder)[-args.num_images:]  # the synthetic test images come last
    if len(images) < args.num_images:
        raise SystemExit(f"{folder}: {len(images)} images, fewer than --num-images")
    predictors = {r: sgg_jax.load(r) for r in run_dirs}
    tmp = tempfile.mkdtemp(prefix="sgg_latency_")
    artifacts = {}
    for i, r in enumerate(run_dirs):
        path = os.path.join(tmp, f"{i}.sggx")
        export.export_run(r, "sgdet", path, batch=1)
        artifacts[r] = export.load_exported(path)
    rows: dict[tuple[str, str], dict] = {}
    for turn in range(2):  # in turns: every run and path, then all again; keep the quieter
        for r, g in predictors.items():
            for path_name, measure in (
                    ("jax.jit", lambda: time_run(g, images, args.warmup if turn == 0 else 0)),
                    ("jax.export", lambda: time_exported(g, *artifacts[r], images,
                                                         args.warmup if turn == 0 else 0))):
                row = measure()
                old = rows.get((r, path_name))
                if old is None:
                    rows[(r, path_name)] = row
                else:
                    for k in row:
                        if k != "compile_s":
                            old[k] = min(old[k], row[k])
    table = []
    first = rows[(run_dirs[0], "jax.jit")]["ms_median"]
    for (r, path_name), row in rows.items():
        config = runs_lib.load_run_config(r)
        table.append(dict(run=r, model=config.model.name, batch=1,
                          image_size=int(config.input.image_size),
                          detector_px=int(config.input.get("detector_image_size", 0)
                                          or config.input.image_size),
                          detections=int(config.model.detector.detections_per_image),
                          path=path_name, vs_first=row["ms_median"] / first, **row))
    print_table(table, ["model", "path", "image_size", "detector_px", "detections", "batch",
                        "ms_median",
                        "ms_p90", "load_ms", "forward_ms", "post_ms", "compile_s", "vs_first"],
                title=f"latency per image, end to end, {len(images)} images "
                      f"({jax.default_backend()}, {os.cpu_count()} cores)")
    emit_json(dict(backend=jax.default_backend(), devices=jax.device_count(),
                   loadavg=list(os.getloadavg()), images=folder, num_images=len(images),
                   rows=table), args.output or None)


if __name__ == "__main__":
    main()
