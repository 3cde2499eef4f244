"""TFDS builder for scene graph datasets in the VG150 layout (real Visual Genome or synthetic).

No TensorFlow: every feature is a `tfds.features.Tensor` or a scalar, the file format is
array_record, and images are stored as their encoded bytes (decoded later with Pillow).

Local files only: the raw directory is passed as `manual_dir` (see `build_dataset`). Two sources
(`SggBuilderConfig.source`):
- "vg150": read with `vg150.load_vg150` (so the synthetic data, which is written in the VG150
  layout, goes through the same code path as the real data); region boxes and phrases come from
  VG-MSDN json files next to it when present (the synthetic generator writes them).
- "vg_msdn": a VG-MSDN directory (MSDN's own 150 / 50 split): objects, relations and regions all
  from its train.json / test.json (`vg_msdn.load_vg_msdn_splits`; validation = the first
  num_val_im images of train.json), classes and predicates from categories.json.
Either way the caption vocabulary is built from the training phrases (`build_vocabulary`), not
read from VG-MSDN's dict.json, so one data set gives the same word ids through both sources.

What the build writes into the dataset directory (`<tfds_dir>/scene_graph_dataset/<config>/1.0.0`):
the array_record shards per split, TFDS' own `dataset_info.json` / `features.json`, and ours:
`sgg_metadata.json` (class / predicate / word vocabularies, options, source directory, split
sizes, zero-shot triplets) and `statistics.npz` + `statistics.json` (training-set counts, see
`statistics.py`). TFDS writes into a temporary directory and renames it when done, so all of it
appears at once or not at all.

Features per example (one image):
  image_id int64; image (bytes, the encoded file); file_name str; width, height int32 (original
  pixels); boxes [G, 4] float32 x1y1x2y2 original pixels; labels [G] int32 1..C; relations [R, 3]
  int32 (subject index, object index, predicate 1..P); region_boxes [Q, 4] float32;
  region_tokens [Q, T] int32 (<start> words <end>, 0-padded; ids in `sgg_metadata.json`
  idx_to_word: 0 <pad>, 1 <start>, 2 <end>, 3 <unk>).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from google.protobuf import json_format
from PIL import Image

from data_pipelines.errors import DataFormatError, atomic_write_json, load_json
from data_pipelines.records import SceneGraphRecord
from data_pipelines.statistics import compute_statistics

METADATA_NAME = "sgg_metadata.json"
FILES_NAME = "sgg_files.json"  # every file of the finished build and its size
ZERO_SHOT_NAME = "zero_shot_triplets.json"
SPLITS = ("train", "val", "test")
PAD, START, END, UNK = 0, 1, 2, 3
SPECIAL_WORDS = ("<pad>", "<start>", "<end>", "<unk>")


@dataclasses.dataclass(eq=False)
class SggBuilderConfig(tfds.core.BuilderConfig):
    """Loader options (neural-motifs semantics, see `vg150.load_vg150`) baked into a build.

    Duplicate relations are always kept in the stored data (statistics count them, as NM's
    `get_counts` does); the input pipeline can drop them per example at training time.
    """

    num_val_im: int = 5000
    filter_empty_rels: bool = True
    filter_non_overlap: bool = False
    num_im: int = -1
    image_dir: str = "VG_100K"
    source: str = "vg150"
    # `dataset.raw_fingerprint` of the raw files this build reads (stored in its metadata).
    fingerprint: str = ""


SOURCES = ("vg150", "vg_msdn")
# Image folder relative to the raw directory (or absolute): VG150's VG_100K/, F-Net's images/.
DEFAULT_IMAGE_DIRS = {"vg150": "VG_100K", "vg_msdn": "images"}


def make_config(num_val_im: int = 5000, filter_empty_rels: bool = True,
                filter_non_overlap: bool = False, num_im: int = -1,
                image_dir: str = "", source: str = "vg150") -> SggBuilderConfig:
    """A builder config whose name encodes its options (one directory per option set).

    image_dir "" means the source's default (`DEFAULT_IMAGE_DIRS`).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "vg_msdn" and filter_non_overlap:
        raise ValueError("filter_non_overlap is implemented for source 'vg150' only")
    name = (f"val{num_val_im}-empty{int(filter_empty_rels)}-overlap{int(filter_non_overlap)}"
            f"-n{num_im if num_im >= 0 else 'all'}")
    if source != "vg150":  # vg150 keeps its historical names (existing builds stay valid)
        name = f"{source}-{name}"
    return SggBuilderConfig(name=name, version="1.0.0", num_val_im=num_val_im,
                            filter_empty_rels=filter_empty_rels,
                            filter_non_overlap=filter_non_overlap, num_im=num_im,
                            image_dir=image_dir or DEFAULT_IMAGE_DIRS[source], source=source)


# --------------------------------------------------------------------------------------------
# Regions and vocabulary
# --------------------------------------------------------------------------------------------

def find_msdn_files(raw_dir: str) -> list[str]:
    """VG-MSDN annotation files (train.json, test.json) in raw_dir or a subdirectory of it."""
    found = []
    for d in [raw_dir] + sorted(glob.glob(os.path.join(raw_dir, "*", ""))):
        if os.path.isfile(os.path.join(d, "categories.json")):
            found += [os.path.join(d, f"{s}.json") for s in ("train", "test")
                      if os.path.isfile(os.path.join(d, f"{s}.json"))]
            if found:
                break
    return found


def load_regions(raw_dir: str) -> dict[int, tuple[np.ndarray, list[list[str]]]]:
    """image_id -> (region boxes [Q, 4] original pixels, phrases) from VG-MSDN json, if any."""
    from data_pipelines.vg_msdn import load_vg_msdn  # local: only needed when regions exist
    out: dict[int, tuple[np.ndarray, list[list[str]]]] = {}
    for path in find_msdn_files(raw_dir):
        for r in load_vg_msdn(path):
            out[int(r.image_id)] = (np.asarray(r.region_boxes, np.float32).reshape(-1, 4),
                                    [list(p) for p in r.region_phrases])
    return out


def build_vocabulary(records: Sequence[SceneGraphRecord]) -> list[str]:
    """idx_to_word from the training phrases: specials, then words by count (ties by name)."""
    counts = Counter(w for r in records for p in r.region_phrases for w in p)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    return list(SPECIAL_WORDS) + [w for w in words if w not in SPECIAL_WORDS]


def encode_phrases(phrases: Sequence[Sequence[str]], word_to_idx: dict[str, int]) -> np.ndarray:
    """[Q, T] int32: <start> word ids <end>, zero-padded to the longest phrase."""
    if not phrases:
        return np.zeros((0, 2), np.int32)
    t = max(len(p) for p in phrases) + 2
    out = np.zeros((len(phrases), t), np.int32)
    for i, p in enumerate(phrases):
        ids = [START] + [word_to_idx.get(w, UNK) for w in p] + [END]
        out[i, :len(ids)] = ids
    return out


def unseen_test_triplets(train: Sequence[SceneGraphRecord],
                              test: Sequence[SceneGraphRecord]) -> list[list[int]]:
    """(subject class, predicate, object class) triplets in test but never in train, sorted."""
    def triplets(recs):
        out = set()
        for r in recs:
            rel = np.asarray(r.relations, np.int64).reshape(-1, 3)
            lab = np.asarray(r.labels, np.int64)
            out.update(zip(lab[rel[:, 0]].tolist(), rel[:, 2].tolist(), lab[rel[:, 1]].tolist()))
        return out
    return sorted([list(t) for t in triplets(test) - triplets(train)])


def read_zero_shot_file(path: str) -> list[list[int]]:
    """Reads [[subject, predicate, object], ...] (or {"triplets": [...]}) class-id triplets."""
    with open(path, "r", encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):
        data = data.get("triplets", data.get("zero_shot_triplets"))
    try:
        arr = np.asarray(data, np.int64).reshape(-1, 3)
    except (TypeError, ValueError) as e:
        raise DataFormatError(path, "triplets", "a list of [subject, predicate, object] ids",
                              repr(data)[:80]) from e
    return arr.tolist()


# --------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------

def _image_size(path: str, image_id: int) -> tuple[int, int]:
    """The image file's (width, height), after decoding it whole: a truncated or damaged file
    fails here, naming the file and image, not later in the training loader. JPEGs decode
    at 1/8 scale (libjpeg's draft mode still reads every byte), so this costs ~1 ms."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.draft("RGB", (max(size[0] // 8, 1), max(size[1] // 8, 1)))
            im.load()
            return size
    except FileNotFoundError as e:
        raise DataFormatError(path, "image", "an existing image file", "no such file",
                              image_id=image_id) from e
    except (OSError, SyntaxError, ValueError) as e:  # what Pillow raises for a bad file
        raise DataFormatError(path, "image", "an image file Pillow can decode",
                              " ".join(str(e).split()), image_id=image_id) from e


class SceneGraphDataset(tfds.core.GeneratorBasedBuilder):
    """Scene graphs (VG150 or VG-MSDN) as array_record; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [make_config()]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass a VG150 directory (VG-SGG.h5, VG-SGG-dicts.json, image_data.json, VG_100K/) or a "
        "VG-MSDN one (train.json, test.json, categories.json, images/) as manual_dir, e.g. "
        "through data_pipelines.tfds_sgg.build_dataset(raw_dir, tfds_dir, config).")
    # TFDS 4.9.10 derives this from the package with `importlib_resources`, which newer etils no
    # longer installs; the module's own path is what it would compute.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        t = tfds.features.Tensor
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image_id": np.int64,
                "image": t(shape=(), dtype=np.object_),
                "file_name": t(shape=(), dtype=np.str_),
                "width": np.int32,
                "height": np.int32,
                "boxes": t(shape=(None, 4), dtype=np.float32, encoding="zlib"),
                "labels": t(shape=(None,), dtype=np.int32, encoding="zlib"),
                "relations": t(shape=(None, 3), dtype=np.int32, encoding="zlib"),
                "region_boxes": t(shape=(None, 4), dtype=np.float32, encoding="zlib"),
                "region_tokens": t(shape=(None, None), dtype=np.int32, encoding="zlib"),
            }),
            disable_shuffling=True,  # keep the reader's order: eval order = file order
            homepage="https://visualgenome.org",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        raw_dir = os.fspath(dl_manager.manual_dir)
        cfg: SggBuilderConfig = self.builder_config
        records, idx_to_label, idx_to_predicate = load_source(raw_dir, cfg)
        if not records["train"]:
            raise DataFormatError(raw_dir, "split", "at least one training image", "none")
        num_regions_images = sum(len(r.region_phrases) > 0 for rs in records.values()
                                 for r in rs)
        idx_to_word = build_vocabulary(records["train"])
        zs_path = os.path.join(raw_dir, ZERO_SHOT_NAME)
        if os.path.isfile(zs_path):
            zero_shot, zs_source = read_zero_shot_file(zs_path), ZERO_SHOT_NAME
        else:
            zero_shot = unseen_test_triplets(records["train"], records["test"])
            zs_source = "test minus train"
        # The name lists include background; statistics take C and P without it.
        stats = compute_statistics(records["train"], len(idx_to_label) - 1,
                                   len(idx_to_predicate) - 1, idx_to_label, idx_to_predicate)
        # data_path is TFDS' temporary directory here; it is renamed with the shards at the end.
        os.makedirs(self.data_path, exist_ok=True)
        stats.save(self.data_path)
        meta = dict(
            raw_dir=os.path.abspath(raw_dir), config=self.builder_config.name,
            source=cfg.source, idx_to_label=idx_to_label, idx_to_predicate=idx_to_predicate,
            idx_to_word=idx_to_word, zero_shot_triplets=zero_shot,
            zero_shot_source=zs_source, num_regions_images=num_regions_images,
            split_sizes={s: len(r) for s, r in records.items()}, fingerprint=cfg.fingerprint,
            options=dict(num_val_im=cfg.num_val_im, filter_empty_rels=cfg.filter_empty_rels,
                         filter_non_overlap=cfg.filter_non_overlap, num_im=cfg.num_im))
        with open(os.path.join(self.data_path, METADATA_NAME), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        word_to_idx = {w: i for i, w in enumerate(idx_to_word)}
        # TFDS refuses empty splits: a split with no images (e.g. num_val_im=0) is left out.
        return {s: self._generate_examples(recs, word_to_idx)
                for s, recs in records.items() if recs}

    def _generate_examples(self, records: Sequence[SceneGraphRecord] = (),
                           word_to_idx: dict[str, int] | None = None
                           ) -> Iterator[tuple[str, dict[str, Any]]]:
        corrected = []
        for r in records:
            ex = record_to_example(r, word_to_idx or {})
            if (ex["width"], ex["height"]) != (int(r.width), int(r.height)):
                corrected.append(r.image_id)
            yield str(r.image_id), ex
        if corrected:
            print(f"{len(corrected)} images have an annotated size that differs from their file "
                  f"(e.g. image ids {corrected[:5]}); their boxes were rescaled to the file")


def load_source(raw_dir: str, cfg: SggBuilderConfig
                ) -> tuple[dict[str, list[SceneGraphRecord]], list[str], list[str]]:
    """Records per split (val empty when num_val_im <= 0), idx_to_label, idx_to_predicate
    (background first) of `raw_dir` read as `cfg.source`."""
    from data_pipelines import vg150, vg_msdn
    opts = dict(num_val_im=cfg.num_val_im, filter_empty_rels=cfg.filter_empty_rels,
                num_im=cfg.num_im, image_dir=cfg.image_dir)
    if cfg.source == "vg_msdn":
        records = vg_msdn.load_vg_msdn_splits(raw_dir, **opts)
        cats = vg_msdn.load_categories(os.path.join(raw_dir, vg_msdn.CATEGORIES_NAME))
        labels = [vg150.BACKGROUND, *cats["object"]]
        predicates = [vg150.BACKGROUND, *cats["predicate"]]
    else:
        records = {s: vg150.load_vg150(raw_dir, s, filter_duplicate_rels=False,
                                       filter_non_overlap=cfg.filter_non_overlap, **opts)
                   for s in SPLITS if s != "val" or cfg.num_val_im > 0}
        dicts = vg150.load_vg150_dicts(os.path.join(raw_dir, vg150.DICTS_NAME))
        labels, predicates = list(dicts.idx_to_label), list(dicts.idx_to_predicate)
        regions = load_regions(raw_dir)
        for recs in records.values():
            for r in recs:
                if int(r.image_id) in regions:
                    r.region_boxes, r.region_phrases = regions[int(r.image_id)]
    records.setdefault("val", [])  # num_val_im <= 0: no validation split
    return records, labels, predicates


def record_to_example(r: SceneGraphRecord, word_to_idx: dict[str, int]) -> dict[str, Any]:
    """One TFDS example from a record; reads the image bytes and checks the stored size.

    When the image file's size differs from the annotated width/height (a few real VG entries are
    wrong), boxes are rescaled to the file's size (the builder prints how many).
    """
    w, h = _image_size(r.image_path, int(r.image_id))
    boxes = np.asarray(r.boxes, np.float32).reshape(-1, 4)
    region_boxes = np.asarray(r.region_boxes, np.float32).reshape(-1, 4)
    if (w, h) != (int(r.width), int(r.height)):
        k = np.array([w / r.width, h / r.height, w / r.width, h / r.height], np.float32)
        boxes, region_boxes = boxes * k, region_boxes * k
    with open(r.image_path, "rb") as f:
        data = f.read()
    return {
        "image_id": int(r.image_id),
        "image": data,
        "file_name": os.path.basename(r.image_path),
        "width": w,
        "height": h,
        "boxes": boxes,
        "labels": np.asarray(r.labels, np.int32).reshape(-1),
        "relations": np.asarray(r.relations, np.int32).reshape(-1, 3),
        "region_boxes": region_boxes,
        "region_tokens": encode_phrases(r.region_phrases, word_to_idx),
    }


def get_builder(tfds_dir: str | os.PathLike, config: SggBuilderConfig | None = None
                ) -> SceneGraphDataset:
    """The builder for `config` under `tfds_dir` (built or not; see `is_built`)."""
    return SceneGraphDataset(data_dir=os.fspath(tfds_dir), config=config or make_config(),
                             file_format="array_record")


def is_built(builder: tfds.core.DatasetBuilder) -> bool:
    return os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json")) and \
        os.path.isfile(os.path.join(builder.data_dir, METADATA_NAME))


def build_dataset(raw_dir: str | os.PathLike, tfds_dir: str | os.PathLike,
                  config: SggBuilderConfig | None = None) -> SceneGraphDataset:
    """Builds (once) the array_record dataset of a VG150 or VG-MSDN directory (config.source);
    returns the builder.

    The config's `fingerprint` (`dataset.raw_fingerprint`: raw files' sizes and times, options)
    is stored in the build's metadata. Raises ValueError if `tfds_dir` already holds this config
    built from another raw directory, or from raw files whose fingerprint differs (edited
    since).
    """
    raw_dir = os.path.abspath(os.fspath(raw_dir))
    if not os.path.isdir(raw_dir):
        raise DataFormatError(raw_dir, None, "an existing data directory", "no such directory")
    config = config or make_config()
    build_dir = os.path.join(os.fspath(tfds_dir), SceneGraphDataset.name, config.name,
                             str(SceneGraphDataset.VERSION))
    try:
        builder = get_builder(tfds_dir, config)
    except json_format.ParseError as e:  # TFDS reading a damaged dataset_info.json
        raise _damaged(DataFormatError(os.path.join(build_dir, "dataset_info.json"), None,
                                       "valid JSON", " ".join(str(e).split())), build_dir) from e
    if is_built(builder):
        try:
            meta = read_metadata(builder)
            check_build_files(builder)
        except DataFormatError as e:
            raise _damaged(e, builder.data_dir) from e
        if os.path.abspath(meta["raw_dir"]) != raw_dir:
            raise ValueError(
                f"{builder.data_dir} was built from {meta['raw_dir']}, not {raw_dir}; use another"
                " tfds_dir (or delete it to rebuild)")
        fingerprint = config.fingerprint
        if fingerprint and meta.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{builder.data_dir} was built from {raw_dir} as it was then; its files (or the "
                "image folder) have changed since. Delete that directory to rebuild, or use "
                "another tfds_dir")
        return builder
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=raw_dir))
    check_build_files(builder)
    return builder


def _file_sizes(data_dir: str) -> dict[str, int]:
    return {name: os.path.getsize(os.path.join(data_dir, name))
            for name in sorted(os.listdir(data_dir)) if name != FILES_NAME
            and os.path.isfile(os.path.join(data_dir, name))}


def check_build_files(builder: tfds.core.DatasetBuilder) -> None:
    """Checks that every file of a finished build is there with the size it was written with
    (`sgg_files.json`, recorded on first use), so a truncated or deleted shard is an error
    naming the file and how to rebuild, not garbage examples or a decoder's traceback
    mid-training. Contents are not hashed (a build holds every image)."""
    data_dir = builder.data_dir
    manifest = os.path.join(data_dir, FILES_NAME)
    if not os.path.isfile(manifest):
        atomic_write_json(manifest, _file_sizes(data_dir))
        return
    want = load_json(manifest, "dataset build file list")
    have = _file_sizes(data_dir)
    for name, size in want.items():
        if have.get(name) != size:
            got = "no such file" if name not in have else f"{have[name]} bytes"
            raise DataFormatError(os.path.join(data_dir, name), None,
                                  f"the {size} bytes the dataset build wrote", got)


def _damaged(error: DataFormatError, build_dir: str) -> DataFormatError:
    """`error` (about one file of a finished build) with what to do about it."""
    error.args = (f"{error.args[0]} (the built dataset was damaged after it was written: "
                  f"delete {build_dir} to rebuild it)",)
    return error


def read_metadata(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
    return load_json(os.path.join(builder.data_dir, METADATA_NAME), "dataset build metadata")
