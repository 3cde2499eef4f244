"""Visual Genome "VG150" (Xu et al. split) files: writer and neural-motifs-style reader.

Layout of a VG150 directory (the real one and the synthetic one alike):

- `VG-SGG.h5`, datasets over N_img images, N_obj objects, N_rel relations (dtypes as the real
  file, which was produced by scene-graph-TF-release `data_tools/vg_to_roidb.py`: labels and
  predicates come from `np.vstack` of Python ints, hence int64; everything else is int32):
    labels (N_obj, 1) int64, classes 1..C;
    boxes_1024, boxes_512 (N_obj, 4) int32, [x_center, y_center, width, height] with the image's
      long side scaled to 1024 / 512;
    img_to_first_box, img_to_last_box (N_img,) int32, inclusive range, -1 when no boxes;
    relationships (N_rel, 2) int32, GLOBAL object indices (subject, object);
    predicates (N_rel, 1) int64, 1..P;
    img_to_first_rel, img_to_last_rel (N_img,) int32, inclusive, -1 when no relations;
    split (N_img,) int32, 0 = train (validation = the first `num_val_im` of them), 2 = test.
- `VG-SGG-dicts.json`: label_to_idx, idx_to_label ("1".."C"), predicate_to_idx,
  idx_to_predicate ("1".."P"), object_count, predicate_count.
- `image_data.json`: list aligned with the h5 image axis of
  {image_id, url, width, height, coco_id, flickr_id}. The real list has 4 more entries than the
  h5 (images 1592, 1722, 4616, 4617 are corrupt and were left out of the h5); the reader drops
  them when that is what makes the lengths agree.
- `VG_100K/<image_id>.jpg`.

Box convention. Loaders (neural-motifs, SGB) convert on the int32 array:
x1 = trunc(xc - w / 2), x2 = x1 + w (same for y). The writer encodes xc = x1 + ceil(w / 2) so
that this decoding returns x1 exactly. (IMP's own converter wrote xc = x1 + floor(w / 2), so on
the real file odd-width boxes decode one unit left of IMP's intent; we read the real file exactly
as the reference loaders do.) Pixel boxes are scaled by long_side / max(width, height) and rounded
to integers, so a box is stored exactly only when its scaled coordinates are integers (the
synthetic generator guarantees this); otherwise it is rounded to the nearest 1/1024 of the long
side.
"""
from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from data_pipelines.errors import (DataFormatError, atomic_write_bytes, atomic_write_json,
                                   check_and_clip_boxes, load_json, require_file)
from data_pipelines.records import SceneGraphRecord

H5_NAME = "VG-SGG.h5"
DICTS_NAME = "VG-SGG-dicts.json"
IMAGE_DATA_NAME = "image_data.json"
BACKGROUND = "__background__"
# Images listed in the real image_data.json but absent from the real VG-SGG.h5.
CORRUPT_IMAGE_IDS = (1592, 1722, 4616, 4617)
SPLIT_CODES = {"train": 0, "val": 0, "test": 2}

# key -> (expected number of dims, expected second dim or None)
_H5_KEYS: dict[str, tuple[int, int | None]] = {
    "labels": (2, 1),
    "boxes_1024": (2, 4),
    "boxes_512": (2, 4),
    "img_to_first_box": (1, None),
    "img_to_last_box": (1, None),
    "relationships": (2, 2),
    "predicates": (2, 1),
    "img_to_first_rel": (1, None),
    "img_to_last_rel": (1, None),
    "split": (1, None),
}


# --------------------------------------------------------------------------------------------
# Dictionaries
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class VG150Dicts:
    """Class and predicate vocabularies of a VG150 directory.

    idx_to_label / idx_to_predicate have "__background__" at index 0, so position == class id.
    """

    idx_to_label: list[str]
    idx_to_predicate: list[str]
    label_to_idx: dict[str, int]
    predicate_to_idx: dict[str, int]
    object_count: dict[str, int]
    predicate_count: dict[str, int]

    @property
    def num_classes(self) -> int:
        """Number of object classes, background included."""
        return len(self.idx_to_label)

    @property
    def num_predicates(self) -> int:
        """Number of predicates, background included."""
        return len(self.idx_to_predicate)


def _index_list(table: Any, path: str, field: str) -> list[str]:
    """Turns {"1": name, ..., "K": name} into [background, name_1, ..., name_K] or raises."""
    if not isinstance(table, Mapping) or not table:
        raise DataFormatError(path, field, 'an object {"1": name, ...}', type(table).__name__)
    try:
        keys = sorted(int(k) for k in table)
    except (TypeError, ValueError) as e:
        raise DataFormatError(path, field, "integer string keys", list(table)[:3]) from e
    if keys != list(range(1, len(keys) + 1)):
        raise DataFormatError(path, field, f"keys 1..{len(keys)} without gaps",
                              f"keys {keys[:3]}...{keys[-3:]}")
    names = [table[str(k)] if str(k) in table else table[k] for k in keys]
    if not all(isinstance(n, str) for n in names):
        raise DataFormatError(path, field, "string names", "non-string values")
    return [BACKGROUND] + names


def load_vg150_dicts(path: str | os.PathLike) -> VG150Dicts:
    """Reads `VG-SGG-dicts.json` (or SGB's `VG-SGG-dicts-with-attri.json`)."""
    path = os.fspath(path)
    info = load_json(path, "VG150 dictionary")
    if not isinstance(info, dict):
        raise DataFormatError(path, None, "a JSON object", type(info).__name__)
    for key in ("idx_to_label", "idx_to_predicate", "label_to_idx", "predicate_to_idx"):
        if key not in info:
            raise DataFormatError(path, key, "present", "missing")
    idx_to_label = _index_list(info["idx_to_label"], path, "idx_to_label")
    idx_to_predicate = _index_list(info["idx_to_predicate"], path, "idx_to_predicate")
    for field, inv, fwd in (("label_to_idx", info["label_to_idx"], idx_to_label),
                            ("predicate_to_idx", info["predicate_to_idx"], idx_to_predicate)):
        expected = {name: i for i, name in enumerate(fwd) if i > 0}
        if {k: int(v) for k, v in inv.items() if k != BACKGROUND} != expected:
            raise DataFormatError(path, field, "the inverse of the idx_to_ table",
                                  "a mismatching mapping")
    return VG150Dicts(
        idx_to_label=idx_to_label,
        idx_to_predicate=idx_to_predicate,
        label_to_idx={BACKGROUND: 0, **{k: int(v) for k, v in info["label_to_idx"].items()}},
        predicate_to_idx={BACKGROUND: 0,
                          **{k: int(v) for k, v in info["predicate_to_idx"].items()}},
        object_count={k: int(v) for k, v in info.get("object_count", {}).items()},
        predicate_count={k: int(v) for k, v in info.get("predicate_count", {}).items()},
    )


def _names_without_background(names: Sequence[str] | Mapping[Any, str]) -> list[str]:
    """Accepts [name_1..] or [background, name_1..] or {1: name_1, ...}; returns [name_1..]."""
    if isinstance(names, Mapping):
        keys = sorted(int(k) for k in names)
        lookup = {int(k): v for k, v in names.items()}
        names = [lookup[k] for k in keys if k != 0]
    names = list(names)
    if names and names[0] == BACKGROUND:
        names = names[1:]
    return names


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------

def encode_boxes(boxes: np.ndarray, width: int, height: int, long_side: int) -> np.ndarray:
    """Pixel x1y1x2y2 -> int32 [xc, yc, w, h] at `long_side` scale (see module docstring)."""
    scale = long_side / max(width, height)
    scaled = np.rint(np.asarray(boxes, np.float64) * scale).astype(np.int64)
    wh = np.maximum(scaled[:, 2:] - scaled[:, :2], 1)
    centre = scaled[:, :2] + (wh + 1) // 2
    return np.concatenate([centre, wh], axis=1).astype(np.int32)


def decode_boxes(boxes: np.ndarray) -> np.ndarray:
    """int [xc, yc, w, h] -> int32 x1y1x2y2 at the same scale, as neural-motifs decodes them."""
    boxes = np.asarray(boxes)
    x1y1 = (boxes[:, :2] - boxes[:, 2:] / 2).astype(np.int32)  # truncation, as NM's int array
    return np.concatenate([x1y1, x1y1 + boxes[:, 2:]], axis=1).astype(np.int32)


def _ordered_for_vg150(records: Sequence[SceneGraphRecord]) -> list[SceneGraphRecord]:
    """Val records first, then train, then test (stable): VG150's val = first train images."""
    for r in records:
        if r.split not in SPLIT_CODES:
            raise ValueError(f"record {r.image_id}: split must be train/val/test, got {r.split!r}")
    order = {"val": 0, "train": 1, "test": 2}
    return sorted(records, key=lambda r: order[r.split])


def _ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (first, last) ranges for consecutive blocks of `counts`, -1 for empty blocks."""
    ends = np.cumsum(counts)
    first = (ends - counts).astype(np.int32)
    last = (ends - 1).astype(np.int32)
    empty = counts == 0
    first[empty] = -1
    last[empty] = -1
    return first, last


def write_vg150(out_dir: str | os.PathLike, records: Sequence[SceneGraphRecord],
                idx_to_label: Sequence[str] | Mapping[Any, str],
                idx_to_predicate: Sequence[str] | Mapping[Any, str]) -> None:
    """Writes VG-SGG.h5, VG-SGG-dicts.json and image_data.json for `records` into `out_dir`.

    `idx_to_label` / `idx_to_predicate` list the names of classes 1.. (a leading
    "__background__" or a {id: name} mapping are accepted too). Records are reordered val, train,
    test (stable); val and train get split 0, test split 2, so `load_vg150(num_val_im=#val)`
    returns the same partition. Images are not written (they live in `out_dir/VG_100K`).
    Every file is written to a temporary name and moved into place with os.replace.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    labels_names = _names_without_background(idx_to_label)
    pred_names = _names_without_background(idx_to_predicate)
    records = _ordered_for_vg150(records)

    n_box = np.array([len(r.labels) for r in records], np.int64)
    n_rel = np.array([len(r.relations) for r in records], np.int64)
    first_box, last_box = _ranges(n_box)
    first_rel, last_rel = _ranges(n_rel)

    labels, b1024, b512, rels, preds = [], [], [], [], []
    for r, fb in zip(records, np.cumsum(n_box) - n_box):
        lab = np.asarray(r.labels, np.int64).reshape(-1)
        if lab.size and (lab.min() < 1 or lab.max() > len(labels_names)):
            raise ValueError(f"record {r.image_id}: labels must be in [1, {len(labels_names)}]")
        rel = np.asarray(r.relations, np.int64).reshape(-1, 3)
        if rel.size and (rel[:, :2].min() < 0 or rel[:, :2].max() >= lab.size
                         or rel[:, 2].min() < 1 or rel[:, 2].max() > len(pred_names)):
            raise ValueError(f"record {r.image_id}: relations out of range")
        boxes = np.asarray(r.boxes, np.float64).reshape(-1, 4)
        labels.append(lab)
        b1024.append(encode_boxes(boxes, r.width, r.height, 1024))
        b512.append(encode_boxes(boxes, r.width, r.height, 512))
        rels.append(rel[:, :2] + fb)
        preds.append(rel[:, 2])

    def cat(parts: list[np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return (np.concatenate(parts).reshape(shape).astype(dtype) if parts
                else np.zeros(shape, dtype))

    arrays = {
        "labels": cat(labels, (-1, 1) if labels else (0, 1), np.int64),
        "boxes_1024": cat(b1024, (-1, 4) if b1024 else (0, 4), np.int32),
        "boxes_512": cat(b512, (-1, 4) if b512 else (0, 4), np.int32),
        "img_to_first_box": first_box,
        "img_to_last_box": last_box,
        "relationships": cat(rels, (-1, 2) if rels else (0, 2), np.int32),
        "predicates": cat(preds, (-1, 1) if preds else (0, 1), np.int64),
        "img_to_first_rel": first_rel,
        "img_to_last_rel": last_rel,
        "split": np.array([SPLIT_CODES[r.split] for r in records], np.int32),
    }
    buf = io.BytesIO()
    with h5py.File(buf, "w", track_order=False) as f:
        for key in _H5_KEYS:  # fixed order for deterministic bytes
            f.create_dataset(key, data=arrays[key], track_times=False)
    atomic_write_bytes(os.path.join(out_dir, H5_NAME), buf.getvalue())

    all_labels = arrays["labels"][:, 0]
    all_preds = arrays["predicates"][:, 0]
    obj_counts = np.bincount(all_labels, minlength=len(labels_names) + 1)
    pred_counts = np.bincount(all_preds, minlength=len(pred_names) + 1)
    dicts = {
        "label_to_idx": {n: i + 1 for i, n in enumerate(labels_names)},
        "idx_to_label": {str(i + 1): n for i, n in enumerate(labels_names)},
        "predicate_to_idx": {n: i + 1 for i, n in enumerate(pred_names)},
        "idx_to_predicate": {str(i + 1): n for i, n in enumerate(pred_names)},
        "object_count": {n: int(obj_counts[i + 1]) for i, n in enumerate(labels_names)},
        "predicate_count": {n: int(pred_counts[i + 1]) for i, n in enumerate(pred_names)},
    }
    atomic_write_json(os.path.join(out_dir, DICTS_NAME), dicts)

    image_data = [{
        "image_id": int(r.image_id),
        "url": f"VG_100K/{int(r.image_id)}.jpg",
        "width": int(r.width),
        "height": int(r.height),
        "coco_id": None,
        "flickr_id": None,
    } for r in records]
    atomic_write_json(os.path.join(out_dir, IMAGE_DATA_NAME), image_data)
