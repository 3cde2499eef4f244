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
# Scene-Graph-Benchmark.pytorch ships the same data (plus attributes) under these names.
SGB_H5_NAME = "VG-SGG-with-attri.h5"
SGB_DICTS_NAME = "VG-SGG-dicts-with-attri.json"
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
    """Pixel x1y1x2y2 -> int32 [xc, yc, w, h] at `long_side` scale (see module docstring).

    Coordinates are rounded to the nearest integer at that scale; a box narrower than one unit
    becomes one unit wide (VG150 requires w, h > 0).
    """
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
        if boxes.shape[0] != lab.size:
            raise ValueError(f"record {r.image_id}: {boxes.shape[0]} boxes but {lab.size} labels")
        if boxes.size and (np.any(boxes[:, 2:] < boxes[:, :2]) or boxes.min() < 0
                           or np.any(boxes[:, [0, 2]] > r.width)
                           or np.any(boxes[:, [1, 3]] > r.height)):
            raise ValueError(f"record {r.image_id}: boxes must satisfy 0 <= x1 <= x2 <= width "
                             f"and 0 <= y1 <= y2 <= height ({r.width}x{r.height})")
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


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------

def _read_h5(path: str) -> dict[str, np.ndarray]:
    """Reads and validates the shapes and dtypes of every VG-SGG.h5 dataset."""
    require_file(path, "VG-SGG.h5")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataFormatError(path, None, "a readable HDF5 file",
                              f"unreadable (truncated or corrupt?): {e}") from e
    out: dict[str, np.ndarray] = {}
    with f:
        for key, (ndim, second) in _H5_KEYS.items():
            if key == "boxes_512" and key not in f:
                continue  # only boxes_1024 is read by the reference loaders
            if key not in f:
                raise DataFormatError(path, key, "present", "missing")
            ds = f[key]
            if not isinstance(ds, h5py.Dataset):
                raise DataFormatError(path, key, "a dataset", type(ds).__name__)
            if ds.dtype.kind not in "iu":
                raise DataFormatError(path, key, "an integer dtype", str(ds.dtype))
            shape_ok = ds.ndim == ndim and (second is None or ds.shape[1] == second)
            if key in ("labels", "predicates") and ds.ndim == 1:
                shape_ok = True  # tolerate a flat (N,) variant
            if not shape_ok:
                want = f"(N, {second})" if second is not None else "(N,)"
                raise DataFormatError(path, key, f"shape {want}", str(ds.shape))
            try:
                arr = ds[()]
            except (OSError, RuntimeError) as e:
                raise DataFormatError(path, key, "readable data",
                                      f"read error (truncated file?): {e}") from e
            out[key] = arr.reshape(-1) if key in ("labels", "predicates") else arr
    return out


def _check_ranges(first: np.ndarray, last: np.ndarray, n_items: int, path: str,
                  names: tuple[str, str], image_ids: np.ndarray) -> None:
    """first/last: inclusive, both -1 or 0 <= first <= last < n_items."""
    empty = first < 0
    bad = (empty != (last < 0)) | (empty & ((first != -1) | (last != -1)))
    bad |= ~empty & ((first > last) | (last >= n_items))
    if np.any(bad):
        i = int(np.argmax(bad))
        raise DataFormatError(path, f"{names[0]}/{names[1]}",
                              f"inclusive ranges within [0, {n_items}) or -1/-1",
                              f"({int(first[i])}, {int(last[i])}) at image {i}",
                              image_id=image_ids[i])


def _owner(first: np.ndarray, last: np.ndarray, item: int,
           image_ids: np.ndarray) -> int | None:
    """The id of the image whose (validated) inclusive range holds row `item`, if any."""
    hit = np.flatnonzero((first >= 0) & (first <= item) & (item <= last))
    return int(image_ids[hit[0]]) if hit.size else None


def _expand_ranges(first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner image, item index) for every item covered by the inclusive ranges, vectorised."""
    counts = np.where(first >= 0, last - first + 1, 0).astype(np.int64)
    owner = np.repeat(np.arange(first.size), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, np.repeat(first.astype(np.int64), counts) + offsets


def _validate(h5: dict[str, np.ndarray], path: str, num_classes: int | None,
              num_predicates: int | None, box_key: str, image_ids: np.ndarray) -> None:
    """Cross-checks counts, ranges, labels, boxes and relations of the whole file (vectorised);
    an error names the image that holds the bad row (`image_ids`: image_data.json's)."""
    n_obj, n_rel, n_img = h5["labels"].shape[0], h5["predicates"].shape[0], h5["split"].shape[0]
    for key in ("boxes_1024", "boxes_512"):
        if key in h5 and h5[key].shape[0] != n_obj:
            raise DataFormatError(path, key, f"{n_obj} rows (as labels)", h5[key].shape[0])
    if h5["relationships"].shape[0] != n_rel:
        raise DataFormatError(path, "relationships", f"{n_rel} rows (as predicates)",
                              h5["relationships"].shape[0])
    for key in ("img_to_first_box", "img_to_last_box", "img_to_first_rel", "img_to_last_rel"):
        if h5[key].shape[0] != n_img:
            raise DataFormatError(path, key, f"{n_img} entries (as split)", h5[key].shape[0])
    bad_split = ~np.isin(h5["split"], (0, 1, 2))
    if np.any(bad_split):
        raise DataFormatError(path, "split", "values 0 (train), 1 (val) or 2 (test)",
                              int(h5["split"][np.argmax(bad_split)]))
    _check_ranges(h5["img_to_first_box"], h5["img_to_last_box"], n_obj, path,
                  ("img_to_first_box", "img_to_last_box"), image_ids)
    _check_ranges(h5["img_to_first_rel"], h5["img_to_last_rel"], n_rel, path,
                  ("img_to_first_rel", "img_to_last_rel"), image_ids)
    box_owner = lambda i: _owner(h5["img_to_first_box"], h5["img_to_last_box"], i,  # noqa: E731
                                 image_ids)
    rel_owner = lambda i: _owner(h5["img_to_first_rel"], h5["img_to_last_rel"], i,  # noqa: E731
                                 image_ids)
    hi = num_classes - 1 if num_classes else np.iinfo(np.int64).max
    bad = (h5["labels"] < 1) | (h5["labels"] > hi)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise DataFormatError(path, "labels", f"classes in [1, {hi}]",
                              f"{int(h5['labels'][i])} at object {i}", image_id=box_owner(i))
    hi = num_predicates - 1 if num_predicates else np.iinfo(np.int64).max
    bad = (h5["predicates"] < 1) | (h5["predicates"] > hi)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise DataFormatError(path, "predicates", f"predicates in [1, {hi}]",
                              f"{int(h5['predicates'][i])} at relation {i}",
                              image_id=rel_owner(i))
    boxes = h5[box_key]
    bad = np.any(boxes[:, :2] < 0, axis=1) | np.any(boxes[:, 2:] <= 0, axis=1)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise DataFormatError(path, box_key, "xc, yc >= 0 and w, h > 0 (so x2 > x1, y2 > y1)",
                              f"object {i} = {boxes[i].tolist()}", image_id=box_owner(i))
    # every relation must point into the boxes of the image that owns it
    owner, rel_idx = _expand_ranges(h5["img_to_first_rel"], h5["img_to_last_rel"])
    rel = h5["relationships"][rel_idx]
    lo = h5["img_to_first_box"][owner][:, None]
    hi_box = h5["img_to_last_box"][owner][:, None]
    bad = np.any((rel < lo) | (rel > hi_box), axis=1) | (lo[:, 0] < 0)
    if np.any(bad):
        j = int(np.argmax(bad))
        raise DataFormatError(
            path, "relationships",
            "global object indices inside their image's img_to_first_box..img_to_last_box",
            f"relation {int(rel_idx[j])} = {rel[j].tolist()} of image index {int(owner[j])} whose "
            f"boxes are {int(lo[j, 0])}..{int(hi_box[j, 0])}", image_id=image_ids[owner[j]])


def _read_image_data(path: str, n_img: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """image_id, width, height arrays aligned with the h5 image axis."""
    data = load_json(path, "image_data.json")
    if not isinstance(data, list):
        raise DataFormatError(path, None, "a list of image entries", type(data).__name__)
    if len(data) != n_img:
        kept = [d for d in data
                if not (isinstance(d, Mapping) and d.get("image_id") in CORRUPT_IMAGE_IDS)]
        if len(kept) != n_img:
            raise DataFormatError(path, None, f"{n_img} entries (the h5 image count, after "
                                  f"dropping the 4 known-corrupt VG images)", len(data))
        data = kept
    cols = []
    for key in ("image_id", "width", "height"):
        values = [d.get(key) if isinstance(d, Mapping) else None for d in data]
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != round(v) or (
                    key != "image_id" and v <= 0):
                image_id = int(cols[0][i]) if cols else None
                raise DataFormatError(path, f"[{i}].{key}", "positive integers"
                                      if key != "image_id" else "integers", repr(v),
                                      image_id=image_id)
        cols.append(np.asarray(values, np.float64).astype(np.int64))
    return cols[0], cols[1], cols[2]


def _select_images(h5: dict[str, np.ndarray], split: str, num_val_im: int,
                   filter_empty_rels: bool, num_im: int) -> np.ndarray:
    """Image indices of `split` after neural-motifs' filters (boxes, empty rels, num_im, val)."""
    mask = h5["split"] == (2 if split == "test" else 0)
    n_split = int(mask.sum())
    mask &= h5["img_to_first_box"] >= 0
    n_no_box = n_split - int(mask.sum())
    part = "test (h5 split 2)" if split == "test" else "train + val (h5 split 0)"
    if n_no_box:
        print(f"VG150 {part}: dropped {n_no_box} images with no boxes")
    if filter_empty_rels:
        before = int(mask.sum())
        mask &= h5["img_to_first_rel"] >= 0
        if before - int(mask.sum()):
            print(f"VG150 {part}: dropped {before - int(mask.sum())} images with no relations "
                  "(filter_empty_rels)")
    index = np.flatnonzero(mask)
    if num_im > -1:
        index = index[:num_im]
    if num_val_im > 0:
        if split == "val":
            index = index[:num_val_im]
        elif split == "train":
            index = index[num_val_im:]
    return index


def _one_predicate_per_pair(pairs: np.ndarray, rng: np.random.Generator
                            ) -> tuple[np.ndarray, np.ndarray]:
    """One relation per (subject, object) pair of GLOBAL box indices, the predicate drawn
    uniformly among the pair's annotations (NM's np.random.choice over the list).

    Returns (first, pick): row indices of each pair's first occurrence, in file order, and of the
    row whose predicate is kept. Vectorised over the whole split (global indices never collide
    across images).
    """
    if pairs.shape[0] == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    keys = pairs[:, 0].astype(np.int64) * (int(pairs.max()) + 1) + pairs[:, 1]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    members = np.argsort(inverse, kind="stable")
    starts = np.cumsum(counts) - counts
    pick = members[starts + rng.integers(0, counts)]
    first = members[starts]
    order = np.argsort(first)
    return first[order], pick[order]


def find_dicts_file(data_dir: str | os.PathLike) -> str:
    """The vocabulary file of a VG150 directory (VG-SGG-dicts.json or SGB's name for it)."""
    return _first_existing(os.fspath(data_dir), DICTS_NAME, SGB_DICTS_NAME)


def _first_existing(data_dir: str, name: str, alternative: str) -> str:
    """data_dir/name, or data_dir/alternative when only that exists (SGB's file names)."""
    path = os.path.join(data_dir, name)
    alt = os.path.join(data_dir, alternative)
    return alt if not os.path.exists(path) and os.path.exists(alt) else path


def load_vg150(data_dir: str | os.PathLike, split: str, *, num_val_im: int = 5000,
               filter_empty_rels: bool = True, filter_duplicate_rels: bool = False,
               filter_non_overlap: bool = False, num_im: int = -1, box_scale: int = 1024,
               image_dir: str = "VG_100K", seed: int = 0,
               outside_boxes: str = "error") -> list[SceneGraphRecord]:
    """Reads one split of a VG150 directory into records, with neural-motifs' loader semantics.

    split: "train" (split 0 minus its first `num_val_im` images), "val" (those first images)
      or "test" (split 2); images without boxes are dropped, and without relations when
      filter_empty_rels; `num_im` > -1 truncates before the val/train cut, as NM does.
    filter_duplicate_rels (train only): one predicate per ordered pair, drawn with `seed` (NM
      redraws every epoch; we draw once per load).
    filter_non_overlap (train only, for SGDet training): keep relations whose boxes intersect
      (at box_scale, NM's inclusive-pixel rule); images left without relations are dropped.
    Boxes: [xc, yc, w, h] at box_scale -> x1 = trunc(xc - w/2), x2 = x1 + w, then divided by
      box_scale / max(width, height) to original pixels and clipped to the image (count printed;
      boxes entirely outside raise unless outside_boxes="clip", which clips them onto the
      border as neural-motifs' training clip does).
    The whole file is validated first, vectorised; problems raise DataFormatError.
    SGB's VG-SGG-with-attri.h5 / VG-SGG-dicts-with-attri.json are used when the plain names are
    absent (their extra `attributes` are ignored). Sizes are taken from image_data.json as is
    (SGB corrects a few wrong VG sizes from the image files; we do not open images here).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if outside_boxes not in ("error", "clip"):
        raise ValueError(f"outside_boxes must be 'error' or 'clip', got {outside_boxes!r}")
    if box_scale not in (512, 1024):
        raise ValueError(f"box_scale must be 512 or 1024, got {box_scale}")
    data_dir = os.fspath(data_dir)
    h5_path = _first_existing(data_dir, H5_NAME, SGB_H5_NAME)
    dicts_path = _first_existing(data_dir, DICTS_NAME, SGB_DICTS_NAME)
    box_key = f"boxes_{box_scale}"
    h5 = _read_h5(h5_path)
    if box_key not in h5:
        raise DataFormatError(h5_path, box_key, "present", "missing")
    dicts = load_vg150_dicts(dicts_path) if os.path.isfile(dicts_path) else None
    image_ids, widths, heights = _read_image_data(os.path.join(data_dir, IMAGE_DATA_NAME),
                                                  h5["split"].shape[0])
    _validate(h5, h5_path, dicts.num_classes if dicts else None,
              dicts.num_predicates if dicts else None, box_key, image_ids)

    index = _select_images(h5, split, num_val_im, filter_empty_rels, num_im)
    is_train = split == "train"
    first_box = h5["img_to_first_box"][index].astype(np.int64)
    n_box = h5["img_to_last_box"][index].astype(np.int64) - first_box + 1
    box_owner, box_rows = _expand_ranges(h5["img_to_first_box"][index],
                                         h5["img_to_last_box"][index])
    rel_owner, rel_rows = _expand_ranges(h5["img_to_first_rel"][index],
                                         h5["img_to_last_rel"][index])
    boxes = decode_boxes(h5[box_key][box_rows])
    pairs = h5["relationships"][rel_rows].astype(np.int64)  # global box indices
    preds = h5["predicates"][rel_rows].astype(np.int64)
    # position of each relation's boxes among the gathered boxes
    box_start = np.cumsum(n_box) - n_box
    local = pairs - first_box[rel_owner][:, None]

    keep_image = np.ones(index.size, bool)
    if filter_non_overlap and is_train:
        pos = local + box_start[rel_owner][:, None]
        a, b = boxes[pos[:, 0]], boxes[pos[:, 1]]
        iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1
        ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1
        overlap = (iw > 0) & (ih > 0)
        pairs, preds, local, rel_owner = (pairs[overlap], preds[overlap], local[overlap],
                                          rel_owner[overlap])
        keep_image = np.bincount(rel_owner, minlength=index.size) > 0
        if np.sum(~keep_image):
            print(f"VG150 {split}: dropped {int(np.sum(~keep_image))} images whose relations "
                  "all join non-overlapping boxes (filter_non_overlap)")
    if filter_duplicate_rels and is_train:
        first, pick = _one_predicate_per_pair(pairs, np.random.default_rng(seed))
        local, rel_owner, preds = local[first], rel_owner[first], preds[pick]

    size = np.maximum(widths, heights)[index].astype(np.float64)
    pix = boxes.astype(np.float64) * (size / box_scale)[box_owner][:, None]
    w_img = widths[index][box_owner].astype(np.float64)
    h_img = heights[index][box_owner].astype(np.float64)

    def describe(i: int) -> str:
        img = int(index[box_owner[i]])
        return f"object {int(box_rows[i])} of image {img} (id {int(image_ids[img])})"

    try:
        pix, n_clipped = check_and_clip_boxes(pix, w_img, h_img, h5_path, box_key,
                                              describe=describe,
                                              allow_outside=outside_boxes == "clip",
                                              image_ids=image_ids[index][box_owner])
    except DataFormatError as e:
        e.args = (e.args[0] + " (image_data.json may give a wrong size for this image; "
                  "outside_boxes='clip' clips such boxes as neural-motifs does)",)
        raise
    if n_clipped:
        print(f"VG150 {split}: clipped {n_clipped} boxes that extended past their image border")

    rels = np.column_stack([local, preds]).astype(np.int32)
    n_rel = np.bincount(rel_owner, minlength=index.size)
    box_split = np.split(pix.astype(np.float32), np.cumsum(n_box)[:-1])
    label_split = np.split(h5["labels"][box_rows].astype(np.int32), np.cumsum(n_box)[:-1])
    rel_split = np.split(rels, np.cumsum(n_rel)[:-1])
    image_root = os.path.join(data_dir, image_dir)
    records: list[SceneGraphRecord] = []
    for j, i in enumerate(index.tolist()):
        if not keep_image[j]:
            continue
        image_id = int(image_ids[i])
        records.append(SceneGraphRecord(
            image_id=image_id, image_path=f"{image_root}{os.sep}{image_id}.jpg",
            width=int(widths[i]), height=int(heights[i]), boxes=box_split[j],
            labels=label_split[j], relations=rel_split[j], split=split))
    return records
