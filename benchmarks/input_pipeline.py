"""Input pipeline throughput: images/s of decode + resize + pad + batch, and of the generator.

    python benchmarks/input_pipeline.py [--images 400] [--repeats 3] [--out results.json]

Cases (synthetic data built through the real path: generator -> VG150 files -> TFDS -> grain):
  - 256 px output from 256 px JPEGs (the default training size, no resize);
  - 256 px output from 512 px JPEGs (JPEG draft decoding at 1/2 scale);
  - 592 px output from 512 px JPEGs (upscaled; the field's usual 592 px input);
each with worker_count 0 and 2. Peer in the same run: the per-image decode+resize with Pillow's
draft mode against plain full decode + resize on the same bytes. Medians over `repeats` runs,
printed as a table and written as JSON. Target: >= 300 images/s at 256 px on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipelines import pipeline, synthetic  # noqa: E402
from data_pipelines.dataset import DataConfig, prepare_dataset  # noqa: E402


def _cpu_seconds() -> float:
    """CPU time of this process and its live children (grain workers)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def time_loader(source, config: pipeline.InputConfig, num_images: int) -> tuple[float, float]:
    """(images/s wall, images per CPU-second) of the train loader over `num_images`, after its
    first batch (start-up). The CPU figure does not depend on what else the machine runs."""
    it = iter(pipeline.make_loader(source, config, "train"))
    next(it)
    n_batches = max(1, num_images // config.batch_size)
    c0, t0 = _cpu_seconds(), time.perf_counter()
    for _ in range(n_batches):
        b = next(it)
        assert b.images.shape[1] == config.image_size
    dt, dc = time.perf_counter() - t0, _cpu_seconds() - c0
    del it
    n = n_batches * config.batch_size
    return n / dt, n / dc


def naive_decode_resize(data: bytes, size: int) -> np.ndarray:
    """Peer: full-resolution decode then bilinear resize (no draft), same canvas."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    s = size / max(w, h)
    im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    canvas = np.zeros((size, size, 3), np.uint8)
    a = np.asarray(im)
    canvas[:a.shape[0], :a.shape[1]] = a
    return canvas


def decode_rate(blobs: list[bytes], size: int, fn) -> float:
    t0 = time.perf_counter()
    for b in blobs:
        fn(b, size)
    return len(blobs) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400, help="images timed per case")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gen-images", type=int, default=100, help="images for the generator rate")
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "sgg_bench"))
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    datasets, flip_map = {}, ()
    for src_size, n in ((256, 200), (512, 100)):
        cfg = DataConfig(name="synthetic", cache_dir=a.cache_dir, num_train=n, num_val=0,
                         num_test=10, image_size=src_size, seed=0)
        ds = prepare_dataset(cfg, progress=False)
        datasets[src_size], flip_map = ds.sources["train"], ds.flip_predicate_map()

    base = pipeline.InputConfig(image_size=256, max_objects=32, max_relations=64,
                                max_regions=8, max_phrase_len=12, batch_size=16, shuffle=True,
                                seed=0, num_epochs=None, flip_prob=0.5,
                                flip_predicate_map=flip_map)
    rows = []
    for src_size, out_size in ((256, 256), (512, 256), (512, 592)):
        for workers in (0, 2):
            cfg = dataclasses.replace(base, image_size=out_size, worker_count=workers)
            runs = [time_loader(datasets[src_size], cfg, a.images) for _ in range(a.repeats)]
            rows.append(dict(case=f"pipeline {src_size}px jpeg -> {out_size}px",
                             workers=workers,
                             images_per_s=round(statistics.median(r[0] for r in runs), 1),
                             images_per_cpu_s=round(statistics.median(r[1] for r in runs), 1),
                             runs=[round(r[0], 1) for r in runs]))

    blobs = [datasets[512][i]["image"] for i in range(min(100, len(datasets[512])))]
    for out_size in (256, 592):
        draft = statistics.median(decode_rate(blobs, out_size, pipeline.decode_resize)
                                  for _ in range(a.repeats))
        naive = statistics.median(decode_rate(blobs, out_size, naive_decode_resize)
                                  for _ in range(a.repeats))
        rows.append(dict(case=f"decode+resize 512px -> {out_size}px, draft vs full decode",
                         workers=0, images_per_s=round(draft, 1),
                         peer_images_per_s=round(naive, 1), ratio=round(draft / naive, 2)))

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        synthetic.generate(os.path.join(tmp, "gen"), a.gen_images, 0, 0, image_size=256,
                           seed=0, progress=False, workers=2)
        gen_rate = a.gen_images / (time.perf_counter() - t0)
    rows.append(dict(case="synthetic generator 256px (files written)", workers=2,
                     images_per_s=round(gen_rate, 1)))

    result = dict(cpu_count=os.cpu_count(), load_average_1min=round(os.getloadavg()[0], 2),
                  images_per_case=a.images, repeats=a.repeats,
                  batch_size=base.batch_size, rows=rows,
                  target_256px_images_per_s=300)
    text = json.dumps(result, indent=1)
    print(text)
    print()
    print(f"{'case':58s} {'workers':>7s} {'img/s':>8s} {'img/cpu-s':>9s} {'peer':>8s} "
          f"{'ratio':>6s}")
    for r in rows:
        peer = f"{r['peer_images_per_s']:8.1f}" if "peer_images_per_s" in r else f"{'-':>8s}"
        ratio = f"{r['ratio']:6.2f}" if "ratio" in r else f"{'-':>6s}"
        cpu = f"{r['images_per_cpu_s']:9.1f}" if "images_per_cpu_s" in r else f"{'-':>9s}"
        print(f"{r['case']:58s} {r['workers']:7d} {r['images_per_s']:8.1f} {cpu} {peer} {ratio}")
    print(f"(load average {result['load_average_1min']} on {result['cpu_count']} cores)")
    if a.out:
        tmp_out = f"{a.out}.tmp.{os.getpid()}"
        with open(tmp_out, "w") as f:
            f.write(text)
        os.replace(tmp_out, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
