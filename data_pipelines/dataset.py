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
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipelines import tfds_sgg
from data_pipelines.facts import DatasetFacts
from data_pipelines.pipeline import InputConfig, make_loader
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


class SplitGroundTruth:
    """Every ground-truth object, relation and caption region of one split's images, by image
    id, read from the stored examples: the input pipeline's limits (max_objects,
    max_relations, max_regions, max_phrase_len) do not apply. Evaluation scores against this,
    so what a model could not see counts as missed, as in neural-motifs."""

    def __init__(self, source: Any):
        self._source = source
        self._index: dict[int, int] | None = None

    def _ids(self) -> dict[int, int]:
        if self._index is None:
            self._index = {int(self._source[i]["image_id"]): i for i in range(len(self._source))}
        return self._index

    def __len__(self) -> int:
        return len(self._source)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._ids()

    def __getitem__(self, image_id: int) -> dict[str, np.ndarray]:
        """{image_id, boxes [G,4] float64 original pixels, labels [G] int64, relations [R,3]
        int64, region_boxes [Q,4] float64, region_tokens [Q,T] int32} of one image."""
        index = self._ids().get(int(image_id))
        if index is None:
            raise KeyError(f"image id {image_id} is not in this split")
        ex = self._source[index]
        return dict(image_id=int(image_id),
                    boxes=np.asarray(ex["boxes"], np.float64).reshape(-1, 4),
                    labels=np.asarray(ex["labels"], np.int64).reshape(-1),
                    relations=np.asarray(ex["relations"], np.int64).reshape(-1, 3),
                    region_boxes=np.asarray(ex["region_boxes"], np.float64).reshape(-1, 4),
                    region_tokens=np.asarray(ex["region_tokens"], np.int32))


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
        return self.facts.num_classes

    @property
    def num_predicates(self) -> int:
        """P, predicates without background."""
        return self.facts.num_predicates

    @property
    def split_sizes(self) -> dict[str, int]:
        return {s: len(src) for s, src in self.sources.items()}

    def flip_predicate_map(self) -> tuple[tuple[int, int], ...]:
        """Left/right predicate pairs of this dataset (swapped by horizontal flips)."""
        return self.facts.flip_predicate_map()

    @functools.cached_property
    def facts(self) -> DatasetFacts:
        """Vocabularies, statistics and zero-shot triplets (what a run saves with itself)."""
        return DatasetFacts(
            idx_to_label=tuple(self.idx_to_label), idx_to_predicate=tuple(self.idx_to_predicate),
            idx_to_word=tuple(self.idx_to_word), statistics=self.statistics,
            zero_shot_triplets=self.zero_shot_triplets, zero_shot_source=self.zero_shot_source,
            source=f"{self.config.name}: {self.raw_dir}")

    def ground_truth(self, split: str) -> SplitGroundTruth:
        """The split's full ground truth by image id (built once per split)."""
        if split not in self.sources:
            raise ValueError(f"split {split!r} not in this dataset ({sorted(self.sources)})")
        cache = self.__dict__.setdefault("_ground_truth", {})
        if split not in cache:
            cache[split] = SplitGroundTruth(self.sources[split])
        return cache[split]

    def loader(self, split: str, config: InputConfig, **kwargs: Any):
        """`pipeline.make_loader` for a split, with this dataset's flip map (when the config
        has none) and, for training, the config's duplicate-relation filter."""
        if split not in self.sources:
            raise ValueError(f"split {split!r} not in this dataset ({sorted(self.sources)})")
        changes: dict[str, Any] = {}
        if not config.flip_predicate_map:
            changes["flip_predicate_map"] = self.flip_predicate_map()
        if split == "train" and self.config.filter_duplicate_rels \
                and not kwargs.get("evaluation", False):
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


def raw_fingerprint(raw_dir: str, builder_config: Any) -> str:
    """A hash of everything that decides a build's content: the raw directory, the builder's
    options (source, image folder, filters) and the size and modification time of every file
    in the raw directory and its subdirectories (annotation files), with the image folder's
    modification time and entry count (adding or removing images changes them). A build is
    reused only while this is unchanged."""
    image_dir = builder_config.image_dir
    image_dir = image_dir if os.path.isabs(image_dir) else os.path.join(raw_dir, image_dir)
    image_dir = os.path.normpath(image_dir)
    files = []
    for root in [raw_dir] + sorted(os.path.join(raw_dir, d) for d in os.listdir(raw_dir)):
        if not os.path.isdir(root) or os.path.normpath(root) == image_dir:
            continue
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if os.path.isfile(path):
                st = os.stat(path)
                files.append([os.path.relpath(path, raw_dir), st.st_size, st.st_mtime_ns])
    images = None
    if os.path.isdir(image_dir):
        images = [image_dir, os.stat(image_dir).st_mtime_ns, len(os.listdir(image_dir))]
    doc = dict(raw_dir=raw_dir, config=builder_config.name, source=builder_config.source,
               image_dir=builder_config.image_dir, files=files, images=images)
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()


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
    builder_config = tfds_sgg.make_config(
        num_val_im=num_val_im, filter_empty_rels=config.filter_empty_rels,
        filter_non_overlap=config.filter_non_overlap, num_im=config.num_im,
        image_dir=image_dir, source=source)
    fingerprint = raw_fingerprint(raw_dir, builder_config)
    builder_config = dataclasses.replace(builder_config, fingerprint=fingerprint)
    if config.tfds_dir:
        tfds_dir = os.path.abspath(os.path.expanduser(config.tfds_dir))
    else:
        tfds_dir = os.path.join(_cache_root(config), "tfds",
                                f"{os.path.basename(raw_dir.rstrip(os.sep))}-{fingerprint[:12]}")
    builder = tfds_sgg.build_dataset(raw_dir, tfds_dir, builder_config)
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
