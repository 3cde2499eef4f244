"""One call from a data config to ready-to-read data: `prepare_dataset(DataConfig(...))`.

name="synthetic": generates the built-in synthetic data (VG150 + VG-MSDN layout) into
  `<cache_dir>/synthetic-<preset>-<seed>-<train>-<val>-<test>-<size>` unless it is already there,
  then builds its TFDS (array_record) dataset and statistics once.
name="vg150": builds the TFDS dataset of a local VG150 directory (`data_dir`); region captions
  come from VG-MSDN json files next to it when present.
name="vg_msdn": builds it from a local VG-MSDN directory (`data_dir`: train.json, test.json,
  categories.json; images under `image_dir`, default `images/`), MSDN's own 150 / 50 split with
  objects, relations and regions all from its json (the published MSDN setup).
All go through the same TFDS builder (tfds_sgg); later calls reuse what is on disk.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipelines import tfds_sgg
from data_pipelines.pipeline import InputConfig, flip_predicate_pairs, make_loader
from data_pipelines.statistics import DatasetStatistics

DEFAULT_CACHE = os.path.join("~", ".cache", "sgg_jax")


@dataclasses.dataclass
class DataConfig:
    """What to read. Empty strings mean "default" (so an ml_collections config can hold them).

    name: "synthetic", "vg150" or "vg_msdn".
    data_dir: the local VG150 (name="vg150") or VG-MSDN (name="vg_msdn") directory.
    image_dir: the image folder, relative to data_dir or absolute; "" = the source's default
      (VG150: VG_100K/; VG-MSDN: images/, as F-Net lays it out; VG-MSDN entries' `path` is the
      file name under it). Ignored for synthetic data.
    cache_dir: root for generated data and default TFDS dirs (default ~/.cache/sgg_jax).
    tfds_dir: where the array_record dataset is built (default <cache_dir>/tfds/<dataset>).
    num_train, num_val, num_test, image_size, preset, seed: synthetic generation (None = the
      preset's value); the synthetic validation split is its `num_val` images.
    num_val_im, filter_empty_rels, filter_non_overlap, num_im: VG150 / VG-MSDN loader options
      (neural-motifs semantics; see vg150.load_vg150). VG-MSDN has no validation file: its val
      split is the first num_val_im images of train.json (vg_msdn.load_vg_msdn_splits);
      filter_non_overlap is VG150-only.
    filter_duplicate_rels: one predicate per pair at training time; stored data keeps every
      relation (statistics count them all, as NM does) and the train loader samples per example.
    """

    name: str = "synthetic"
    data_dir: str = ""
    image_dir: str = ""
    cache_dir: str = ""
    tfds_dir: str = ""
    num_train: int | None = None
    num_val: int | None = None
    num_test: int | None = None
    image_size: int | None = None
    seed: int = 0
    preset: str = "default"
    num_val_im: int = 5000
    filter_empty_rels: bool = True
    filter_duplicate_rels: bool = False
    filter_non_overlap: bool = False
    num_im: int = -1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "DataConfig":
        """From a mapping (e.g. ml_collections ConfigDict); unknown keys raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = dict(d.items()) if hasattr(d, "items") else dict(d)
        kw.update(overrides)
        unknown = set(kw) - names
        if unknown:
            raise ValueError(f"DataConfig: unknown fields {sorted(unknown)}; valid: "
                             f"{sorted(names)}")
        return cls(**kw)


@dataclasses.dataclass
class PreparedDataset:
    """A built dataset: data sources per split plus everything models / evaluators need."""

    config: DataConfig
    builder: tfds_sgg.SceneGraphDataset
    sources: dict[str, Any]
    statistics: DatasetStatistics
    idx_to_label: list[str]
    idx_to_predicate: list[str]
    idx_to_word: list[str]
    zero_shot_triplets: np.ndarray | None  # [Z, 3] (subject, predicate, object), 1-based
    zero_shot_source: str
    raw_dir: str
    tfds_dir: str

    @property
    def num_classes(self) -> int:
        """C, object classes without background."""
        return len(self.idx_to_label) - 1

    @property
    def num_predicates(self) -> int:
        """P, predicates without background."""
        return len(self.idx_to_predicate) - 1

    @property
    def split_sizes(self) -> dict[str, int]:
        return {s: len(src) for s, src in self.sources.items()}

    def flip_predicate_map(self) -> tuple[tuple[int, int], ...]:
        """Left/right predicate pairs of this dataset (swapped by horizontal flips)."""
        return flip_predicate_pairs(self.idx_to_predicate)

    def loader(self, split: str, config: InputConfig, **kwargs: Any):
        """`pipeline.make_loader` for a split, with this dataset's flip map (when the config
        has none) and, for training, the config's duplicate-relation filter."""
        if split not in self.sources:
            raise ValueError(f"split {split!r} not in this dataset ({sorted(self.sources)})")
        changes: dict[str, Any] = {}
        if not config.flip_predicate_map:
            changes["flip_predicate_map"] = self.flip_predicate_map()
        if split == "train" and self.config.filter_duplicate_rels:
            changes["filter_duplicate_rels"] = True
        return make_loader(self.sources[split], dataclasses.replace(config, **changes), split,
                           **kwargs)


def _cache_root(config: DataConfig) -> str:
    return os.path.abspath(os.path.expanduser(config.cache_dir or DEFAULT_CACHE))


def synthetic_sizes(config: DataConfig) -> tuple[int, int, int, int]:
    """(num_train, num_val, num_test, image_size) with the preset filling unset values."""
    from data_pipelines.synthetic import PRESETS
    if config.preset not in PRESETS:
        raise ValueError(f"DataConfig.preset must be one of {sorted(PRESETS)}, "
                         f"got {config.preset!r}")
    p = PRESETS[config.preset]
    pick = lambda v, k: int(p[k]) if v is None else int(v)  # noqa: E731
    return (pick(config.num_train, "num_train"), pick(config.num_val, "num_val"),
            pick(config.num_test, "num_test"), pick(config.image_size, "image_size"))


def synthetic_dir(config: DataConfig) -> str:
    """Where the synthetic data for this config lives (one directory per seed and sizes)."""
    ntr, nv, nte, size = synthetic_sizes(config)
    name = f"synthetic-{config.preset}-{config.seed}-{ntr}-{nv}-{nte}-{size}"
    return os.path.join(_cache_root(config), name)


def ensure_synthetic(config: DataConfig, progress: bool = True) -> str:
    """Generates the synthetic data unless present (generation is atomic); returns its dir."""
    from data_pipelines import synthetic
    out = synthetic_dir(config)
    if not os.path.isdir(out):
        ntr, nv, nte, size = synthetic_sizes(config)
        synthetic.generate(out, ntr, nv, nte, image_size=size, seed=config.seed,
                           preset=config.preset, progress=progress)
    return out


_REAL_SOURCES = {  # name -> what its data_dir holds (for the error when it is unset)
    "vg150": "VG-SGG.h5, VG-SGG-dicts.json, image_data.json, VG_100K/",
    "vg_msdn": "train.json, test.json, categories.json, images/",
}


def prepare_dataset(config: DataConfig | Mapping[str, Any], progress: bool = True
                    ) -> PreparedDataset:
    """Generates (synthetic) and builds (TFDS + statistics) as needed, then opens the dataset."""
    if not isinstance(config, DataConfig):
        config = DataConfig.from_dict(config)
    source, image_dir = "vg150", config.image_dir
    if config.name == "synthetic":
        raw_dir = ensure_synthetic(config, progress)
        num_val_im, image_dir = synthetic_sizes(config)[1], ""
    elif config.name in _REAL_SOURCES:
        if not config.data_dir:
            raise ValueError(f"DataConfig.data_dir: expected the local {config.name} directory "
                             f"({_REAL_SOURCES[config.name]})")
        raw_dir = os.path.abspath(os.path.expanduser(config.data_dir))
        num_val_im, source = config.num_val_im, config.name
    else:
        raise ValueError(f"DataConfig.name: expected 'synthetic', 'vg150' or 'vg_msdn', got "
                         f"{config.name!r}")
    if config.tfds_dir:
        tfds_dir = os.path.abspath(os.path.expanduser(config.tfds_dir))
    else:
        tag = hashlib.sha1(raw_dir.encode()).hexdigest()[:8]
        tfds_dir = os.path.join(_cache_root(config), "tfds",
                                f"{os.path.basename(raw_dir.rstrip(os.sep))}-{tag}")
    builder = tfds_sgg.build_dataset(raw_dir, tfds_dir, tfds_sgg.make_config(
        num_val_im=num_val_im, filter_empty_rels=config.filter_empty_rels,
        filter_non_overlap=config.filter_non_overlap, num_im=config.num_im,
        image_dir=image_dir, source=source))
    meta = tfds_sgg.read_metadata(builder)
    zs = meta.get("zero_shot_triplets")
    return PreparedDataset(
        config=config, builder=builder, sources=dict(builder.as_data_source()),
        statistics=DatasetStatistics.load(builder.data_dir),
        idx_to_label=list(meta["idx_to_label"]), idx_to_predicate=list(meta["idx_to_predicate"]),
        idx_to_word=list(meta["idx_to_word"]),
        zero_shot_triplets=None if zs is None else np.asarray(zs, np.int64).reshape(-1, 3),
        zero_shot_source=str(meta.get("zero_shot_source", "")), raw_dir=raw_dir,
        tfds_dir=tfds_dir)
