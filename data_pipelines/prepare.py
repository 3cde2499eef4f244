"""Demo / setup command: generate (or read) a dataset, build its TFDS files, print statistics.

    python -m data_pipelines.prepare                      # synthetic data, default preset
    python -m data_pipelines.prepare --num-train 200 --num-val 20 --num-test 50
    python -m data_pipelines.prepare --data-dir /data/vg150   # a local VG150 directory
    python -m data_pipelines.prepare --source vg_msdn --data-dir /data/vg_msdn   # VG-MSDN

Prints a table (images per split, classes, predicates, relations, most / least frequent
predicates, zero-shot triplets) and writes the same numbers as JSON (`--json`, default
`summary.json` in the built dataset's directory), atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.dataset import DataConfig, PreparedDataset, prepare_dataset


def summarize(ds: PreparedDataset, top: int = 5) -> dict[str, Any]:
    """JSON-ready summary of a prepared dataset (training statistics plus split sizes)."""
    st = ds.statistics
    pc = st.predicate_counts[1:]
    order = np.argsort(-pc, kind="stable")
    named = lambda idx: [(ds.idx_to_predicate[i + 1], int(pc[i])) for i in idx]  # noqa: E731
    nonzero = pc[pc > 0]
    zs = ds.zero_shot_triplets
    return dict(
        name=ds.config.name, raw_dir=ds.raw_dir, tfds_dir=ds.builder.data_dir,
        split_sizes=ds.split_sizes, num_classes=ds.num_classes,
        num_predicates=ds.num_predicates, train_objects=st.num_objects,
        train_relations=st.num_relations,
        train_relations_per_image=round(st.num_relations / max(st.num_images, 1), 3),
        distinct_train_triplets=int(len(st.triplet_counts())),
        top_predicates=named(order[:top]), bottom_predicates=named(order[::-1][:top]),
        predicate_head_tail_ratio=(round(float(nonzero.max() / nonzero.min()), 1)
                                   if nonzero.size else None),
        zero_shot_triplets=None if zs is None else int(len(zs)),
        zero_shot_source=ds.zero_shot_source,
        flip_predicate_pairs=[[ds.idx_to_predicate[a], ds.idx_to_predicate[b]]
                              for a, b in ds.flip_predicate_map()],
    )


def format_table(s: dict[str, Any]) -> str:
    rows = [("dataset", s["name"]), ("TFDS directory", s["tfds_dir"])]
    rows += [(f"images ({k})", str(v)) for k, v in s["split_sizes"].items()]
    rows += [("object classes", str(s["num_classes"])), ("predicates", str(s["num_predicates"])),
             ("train objects", str(s["train_objects"])),
             ("train relations", f"{s['train_relations']} ({s['train_relations_per_image']} "
                                 "per image)"),
             ("distinct train triplets", str(s["distinct_train_triplets"])),
             ("predicate head/tail ratio", str(s["predicate_head_tail_ratio"])),
             ("zero-shot triplets", f"{s['zero_shot_triplets']} ({s['zero_shot_source']})"),
             ("flip swaps", ", ".join(" <-> ".join(p) for p in s["flip_predicate_pairs"])
              or "none")]
    for title, key in (("most frequent", "top_predicates"), ("least frequent",
                                                             "bottom_predicates")):
        rows.append((title, ", ".join(f"{n} {c}" for n, c in s[key])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _atomic_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_pipelines.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="",
                   help="local VG150 or VG-MSDN directory (default: synthetic data)")
    p.add_argument("--source", choices=("vg150", "vg_msdn"), default="vg150",
                   help="what --data-dir holds")
    p.add_argument("--image-dir", default="",
                   help="images, relative to --data-dir or absolute (default VG_100K / images)")
    p.add_argument("--cache-dir", default="", help="default ~/.cache/sgg_jax")
    p.add_argument("--tfds-dir", default="")
    p.add_argument("--preset", default="default")
    p.add_argument("--num-train", type=int, default=None)
    p.add_argument("--num-val", type=int, default=None)
    p.add_argument("--num-test", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None, help="synthetic long side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-val-im", type=int, default=5000,
                   help="validation images (the first of VG150's / VG-MSDN's training split)")
    p.add_argument("--top", type=int, default=5, help="predicates listed at each end")
    p.add_argument("--json", default="", help="summary path (default: in the TFDS directory)")
    a = p.parse_args(argv)
    import tensorflow_datasets as tfds
    from absl import logging as absl_logging
    tfds.disable_progress_bar()  # the table below is the output; keep the terminal readable
    absl_logging.set_verbosity(absl_logging.ERROR)
    config = DataConfig(name=a.source if a.data_dir else "synthetic", data_dir=a.data_dir,
                        image_dir=a.image_dir,
                        cache_dir=a.cache_dir, tfds_dir=a.tfds_dir, num_train=a.num_train,
                        num_val=a.num_val, num_test=a.num_test, image_size=a.image_size,
                        seed=a.seed, preset=a.preset, num_val_im=a.num_val_im)
    try:
        ds = prepare_dataset(config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarize(ds, a.top)
    print(format_table(summary))
    out = a.json or os.path.join(ds.builder.data_dir, "summary.json")
    _atomic_json(out, summary)
    print(f"summary written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
