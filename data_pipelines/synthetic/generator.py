"""Dataset generation: many scenes, rendered in parallel, written in VG150 and VG-MSDN layouts.

    python -m data_pipelines.synthetic --output DIR [--num-train N] [--num-val N] [--num-test N]
        [--image-size S | WxH] [--seed S] [--preset default|large] [--workers K] [--overwrite]

`generate` runs one job per image (its own random generator, `image_rng`, so images are
independent and the output is the same for any number of workers), plants the zero-shot
triplets in test images and removes them from train/val, then writes `VG-SGG.h5`,
`VG-SGG-dicts.json`, `image_data.json`, `VG_100K/<id>.jpg`, `msdn/`, `zero_shot_triplets.json` and
`README.md` into a temporary directory that is renamed at the end. `main` is the command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from data_pipelines.records import SceneGraphRecord
from data_pipelines.synthetic import spec
from data_pipelines.synthetic.scene import make_scene
from data_pipelines.synthetic.world import as_size, check_image_size

PRESETS: dict[str, dict[str, int]] = {
    "default": {"num_train": 3000, "num_val": 500, "num_test": 1000, "image_size": 256},
    "large": {"num_train": 25000, "num_val": 2000, "num_test": 5000, "image_size": 512},
}
# Bumped whenever the same seed and sizes would produce different data (cache keys may use it).
GENERATOR_VERSION = 1
SPLIT_SEED_CODE = {"train": 0, "val": 1, "test": 2}
JPEG_QUALITY = 92


@dataclasses.dataclass
class GenerationResult:
    """What `generate` wrote. Records are in file order (val, train, test), boxes in pixels.

    idx_to_label / idx_to_predicate have "__background__" at index 0 (position == id);
    zero_shot_triplets is [Z, 3] int32 (subject class, predicate, object class), 1-based, in
    that column order (note: SGB's file uses subject, object, predicate).
    """

    output_dir: str
    records: list[SceneGraphRecord]
    idx_to_label: list[str]
    idx_to_predicate: list[str]
    zero_shot_triplets: np.ndarray
    vg150_h5: str
    vg150_dicts: str
    image_data: str
    image_dir: str
    msdn_dir: str
    zero_shot_path: str
    readme_path: str
    seconds: float
    scene_types: list[str]


def zero_shot_ids() -> np.ndarray:
    """[Z, 3] int32 ids (subject class, predicate, object class) of spec.ZERO_SHOT_TRIPLETS."""
    return np.array([(spec.CLASS_ID[s], spec.PREDICATE_ID[p], spec.CLASS_ID[o])
                     for s, p, o in spec.ZERO_SHOT_TRIPLETS], np.int32).reshape(-1, 3)


def planted_triplet(split: str, k: int) -> tuple[str, str, str] | None:
    """The zero-shot triplet planted in the k-th test image (the first Z, then every 8th)."""
    z = len(spec.ZERO_SHOT_TRIPLETS)
    if split != "test" or z == 0 or not (k < z or k % spec.ZERO_SHOT_EVERY == 0):
        return None
    return spec.ZERO_SHOT_TRIPLETS[k % z]


def image_rng(seed: int, split: str, k: int) -> np.random.Generator:
    """The generator of the k-th image of a split: independent of every other image."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_SEED_CODE[split], k]))


@dataclasses.dataclass(frozen=True)
class _Job:
    """One image to generate: which split and index (its random stream), id, size, where to."""

    seed: int
    split: str
    k: int
    image_id: int
    size: tuple[int, int]
    write_dir: str   # where the JPEG is written now (inside the temporary directory)
    final_dir: str   # where it lives after the rename (record.image_path)


def _run_job(job: _Job) -> tuple[SceneGraphRecord, str]:
    """Generates, renders and saves one image; returns its record and scene type."""
    rng = image_rng(job.seed, job.split, job.k)
    exclude = zero_shot_ids() if job.split != "test" else ()
    image, graph = make_scene(rng, job.size, force_triplet=planted_triplet(job.split, job.k),
                              exclude_triplets=exclude)
    name = f"{job.image_id}.jpg"
    Image.fromarray(image).save(os.path.join(job.write_dir, name), format="JPEG",
                                quality=JPEG_QUALITY, subsampling=0)
    return graph.to_record(job.image_id, os.path.join(job.final_dir, name), job.split), \
        graph.scene_type


def _triplet_counts(records: Sequence[SceneGraphRecord], triplets: np.ndarray,
                    splits: Sequence[str]) -> np.ndarray:
    """How often each (subject class, predicate, object class) occurs in the given splits."""
    index = {tuple(int(v) for v in t): i for i, t in enumerate(triplets)}
    counts = np.zeros(len(triplets), np.int64)
    for r in records:
        if r.split not in splits:
            continue
        for s, o, p in np.asarray(r.relations).reshape(-1, 3):
            i = index.get((int(r.labels[s]), int(p), int(r.labels[o])))
            if i is not None:
                counts[i] += 1
    return counts


def _json_rows(obj: dict) -> str:
    """JSON with one line per top-level key and one line per list row (readable, stable)."""
    parts = []
    for k, v in obj.items():
        if isinstance(v, list) and v and isinstance(v[0], list):
            rows = ",\n  ".join(json.dumps(r) for r in v)
            parts.append(f"{json.dumps(k)}: [\n  {rows}\n ]")
        else:
            parts.append(f"{json.dumps(k)}: {json.dumps(v)}")
    return "{\n " + ",\n ".join(parts) + "\n}\n"


def _readme(seed: int, size: tuple[int, int], counts: dict[str, int], preset: str,
            n_obj: int, n_rel: int) -> str:
    """The dataset's README.md: what it is, its sizes and the command that regenerates it."""
    w, h = size
    return f"""# sgg_jax synthetic scene-graph dataset

Procedurally rendered scenes (kitchen, office, street, park) with ground-truth scene graphs,
generated by `python -m data_pipelines.synthetic` (sgg_jax). See docs/synthetic_dataset.md in the
sgg_jax repository for the classes, predicates, long-tail and zero-shot design.

- seed: {seed}
- preset: {preset}
- generator version: {GENERATOR_VERSION}
- image size: {w} x {h} pixels (width x height)
- images: {counts['val']} val, {counts['train']} train, {counts['test']} test
- objects: {n_obj}, annotated relations: {n_rel}

Regenerate exactly: `python -m data_pipelines.synthetic --output DIR --seed {seed} \\
--num-train {counts['train']} --num-val {counts['val']} --num-test {counts['test']} \\
--image-size {w}x{h}`

Layout (the real datasets' layouts):
- `VG-SGG.h5`, `VG-SGG-dicts.json`, `image_data.json`, `VG_100K/<image_id>.jpg`: VG150
  (split 0 = train, whose first {counts['val']} images are the validation set; 2 = test).
- `msdn/`: VG-MSDN json (train.json = val + train, test.json, categories.json, dict.json,
  inverse_weight.json) with region descriptions.
- `zero_shot_triplets.json`: (subject, predicate, object) triplets absent from train/val and
  present in test.
"""


def _stats_table(records: Sequence[SceneGraphRecord], idx_to_predicate: Sequence[str],
                 zs: np.ndarray, zs_test: np.ndarray, seconds: float) -> str:
    """The statistics printed after generation: sizes per split, the predicate long tail."""
    lines = [f"{'split':6s} {'images':>7s} {'objects':>8s} {'relations':>10s} {'regions':>8s}"]
    for split in ("val", "train", "test"):
        rs = [r for r in records if r.split == split]
        lines.append(f"{split:6s} {len(rs):7d} {sum(len(r.labels) for r in rs):8d} "
                     f"{sum(len(r.relations) for r in rs):10d} "
                     f"{sum(len(r.region_phrases) for r in rs):8d}")
    preds = np.concatenate([np.asarray(r.relations).reshape(-1, 3)[:, 2] for r in records]
                           + [np.zeros(0, np.int64)])
    counts = np.bincount(preds.astype(np.int64), minlength=len(idx_to_predicate))[1:]
    order = np.argsort(-counts, kind="stable")
    fmt = lambda ks: ", ".join(f"{idx_to_predicate[k + 1]} {counts[k]}" for k in ks)  # noqa: E731
    lines.append(f"predicates, head: {fmt(order[:5])}")
    lines.append(f"predicates, tail: {fmt(order[-5:])}")
    nonzero = counts[counts > 0]
    if nonzero.size:
        lines.append(f"head / tail ratio: {counts.max() / nonzero.min():.0f} (over predicates "
                     f"that occur; {int((counts == 0).sum())} do not occur)")
    lines.append(f"zero-shot triplets: {len(zs)} (absent from train/val; test occurrences "
                 f"{int(zs_test.sum())})")
    n = len(records)
    lines.append(f"time: {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} images/s)")
    return "\n".join(lines)


def generate(output_dir: str | os.PathLike, num_train: int | None = None,
             num_val: int | None = None, num_test: int | None = None,
             image_size: int | tuple[int, int] | None = None, seed: int = 0,
             preset: str = "default", progress: bool = True, workers: int | None = None,
             overwrite: bool = False) -> GenerationResult:
    """Generates the synthetic dataset into `output_dir` (atomically) and returns its records.

    Sizes default to the preset's ("default": 3000/500/1000 images at 256 px, "large":
    25000/2000/5000 at 512 px). `image_size` is S or (width, height); the long side must divide
    1024. Everything is a pure function of `seed`: the same call writes the same bytes. The data
    is written into `<output_dir>.tmp-XXXX` and renamed to `output_dir` at the end; an existing
    `output_dir` is replaced only with `overwrite=True`.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = PRESETS[preset]
    num_train = cfg["num_train"] if num_train is None else int(num_train)
    num_val = cfg["num_val"] if num_val is None else int(num_val)
    num_test = cfg["num_test"] if num_test is None else int(num_test)
    size = as_size(cfg["image_size"] if image_size is None else image_size)
    check_image_size(*size)
    if min(num_train, num_val, num_test) < 0 or num_train + num_val + num_test == 0:
        raise ValueError(f"image counts must be >= 0 and not all 0, got train={num_train} "
                         f"val={num_val} test={num_test}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.exists(output_dir) and not overwrite:
        raise ValueError(f"{output_dir} already exists; pass overwrite=True (--overwrite) "
                         "to replace it")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(output_dir) + ".tmp-", dir=parent)
    start = time.perf_counter()
    try:
        image_tmp = os.path.join(tmp, "VG_100K")
        image_final = os.path.join(output_dir, "VG_100K")
        os.makedirs(image_tmp)
        jobs, image_id = [], 1
        for split, n in (("val", num_val), ("train", num_train), ("test", num_test)):
            for k in range(n):
                jobs.append(_Job(seed, split, k, image_id, size, image_tmp, image_final))
                image_id += 1
        if workers is None:
            workers = min(2, os.cpu_count() or 1) if len(jobs) >= 200 else 1
        results = _run_jobs(jobs, workers, progress)
        records = [r for r, _ in results]
        scene_types = [s for _, s in results]
        result = _write_outputs(tmp, output_dir, records, scene_types, seed, size, preset,
                                start)
        if os.path.exists(output_dir):
            old = tempfile.mkdtemp(prefix=os.path.basename(output_dir) + ".old-", dir=parent)
            os.replace(output_dir, os.path.join(old, "d"))
            os.replace(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.seconds = time.perf_counter() - start
    if progress:
        zs_test = _triplet_counts(records, result.zero_shot_triplets, ("test",))
        print(_stats_table(records, result.idx_to_predicate, result.zero_shot_triplets,
                           zs_test, result.seconds))
    return result


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> list[tuple]:
    """Runs the jobs in order, in `workers` processes (spawned: safe after JAX is imported)."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="img", desc="synthetic", disable=not progress,
               file=sys.stdout)
    out = []
    try:
        if workers <= 1:
            for job in jobs:
                out.append(_run_job(job))
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers) as pool:
                for res in pool.imap(_run_job, jobs, chunksize=16):
                    out.append(res)
                    bar.update(1)
    finally:
        bar.close()
    return out


def _write_outputs(tmp: str, output_dir: str, records: list[SceneGraphRecord],
                   scene_types: list[str], seed: int, size: tuple[int, int], preset: str,
                   start: float) -> GenerationResult:
    """Writes the VG150 and VG-MSDN files, the zero-shot list and the README into `tmp`."""
    from data_pipelines import vg150, vg_msdn

    idx_to_label = [vg150.BACKGROUND, *spec.CLASS_NAMES]
    idx_to_predicate = [vg150.BACKGROUND, *spec.PREDICATE_NAMES]
    zs = zero_shot_ids()
    seen = _triplet_counts(records, zs, ("train", "val"))
    if seen.any():  # the generator removes them; this would be a bug
        raise RuntimeError(f"zero-shot triplets found in train/val: {zs[seen > 0].tolist()}")
    in_test = _triplet_counts(records, zs, ("test",))
    if (in_test == 0).any() and any(r.split == "test" for r in records):
        missing = [spec.ZERO_SHOT_TRIPLETS[i] for i in np.flatnonzero(in_test == 0)]
        print(f"note: {len(missing)} zero-shot triplets do not occur in this small test split "
              f"and are left out of zero_shot_triplets.json: {missing}")
    keep = in_test > 0
    zs, in_test = zs[keep], in_test[keep]
    vg150.write_vg150(tmp, records, idx_to_label, idx_to_predicate)
    vg_msdn.write_vg_msdn(os.path.join(tmp, "msdn"), records, idx_to_label, idx_to_predicate)
    zs_json = {
        "description": "(subject class, predicate, object class) triplets that never occur in "
                       "the train/val graphs and occur in the test graphs. ids are 1-based "
                       "(VG-SGG-dicts.json); column order subject, predicate, object.",
        "order": ["subject_class", "predicate", "object_class"],
        "count": int(len(zs)),
        "triplets": zs.tolist(),
        "names": [[idx_to_label[s], idx_to_predicate[p], idx_to_label[o]] for s, p, o in zs],
        "test_counts": in_test.tolist(),
    }
    zs_path = os.path.join(tmp, "zero_shot_triplets.json")
    with open(zs_path, "w", encoding="utf-8") as f:
        f.write(_json_rows(zs_json))
    counts = {s: sum(r.split == s for r in records) for s in ("val", "train", "test")}
    readme = _readme(seed, size, counts, preset, sum(len(r.labels) for r in records),
                     sum(len(r.relations) for r in records))
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme)
    j = lambda *p: os.path.join(output_dir, *p)  # noqa: E731
    return GenerationResult(
        output_dir=output_dir, records=records, idx_to_label=idx_to_label,
        idx_to_predicate=idx_to_predicate, zero_shot_triplets=zs,
        vg150_h5=j(vg150.H5_NAME), vg150_dicts=j(vg150.DICTS_NAME),
        image_data=j(vg150.IMAGE_DATA_NAME), image_dir=j("VG_100K"), msdn_dir=j("msdn"),
        zero_shot_path=j("zero_shot_triplets.json"), readme_path=j("README.md"),
        seconds=time.perf_counter() - start, scene_types=scene_types)


def _parse_size(text: str) -> int | tuple[int, int]:
    """--image-size: S or WxH."""
    try:
        if "x" in text.lower():
            w, h = text.lower().split("x")
            return int(w), int(h)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image-size: expected S or WxH, got {text!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (`python -m data_pipelines.synthetic`); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m data_pipelines.synthetic",
        description="Generate the synthetic scene-graph dataset in VG150 / VG-MSDN layouts.")
    parser.add_argument("--output", required=True, help="output directory (created atomically)")
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--num-val", type=int, default=None)
    parser.add_argument("--num-test", type=int, default=None)
    parser.add_argument("--image-size", type=_parse_size, default=None,
                        help="S (square) or WxH; the long side must divide 1024")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or statistics")
    args = parser.parse_args(argv)
    try:
        res = generate(args.output, num_train=args.num_train, num_val=args.num_val,
                       num_test=args.num_test, image_size=args.image_size, seed=args.seed,
                       preset=args.preset, progress=not args.quiet, workers=args.workers,
                       overwrite=args.overwrite)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"wrote {res.output_dir}")
    return 0
