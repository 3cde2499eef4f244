"""VG-MSDN json files (MSDN / Factorizable Net "top_150_50"): writer and reader.

Directory layout:
- `train.json`, `test.json`: one entry per image
  {path, width, height, id, objects: [{box: [x1, y1, x2, y2], class: name}],
   relationships: [{sub_id, obj_id, predicate: name}], regions: [{box, phrase: [words]}]}
  with boxes in original pixels and sub_id / obj_id 0-based indices into `objects`; `path` is
  the image file relative to the image folder (MSDN / F-Net: `<VG image id>.jpg` under
  `images/`); `id` may be absent (then the number in `path`, see `image_id_of`).
  (MSDN has no validation file: our writer puts val records into train.json, val first.)
- `categories.json` {object: [names], predicate: [names]}: class k (1-based) is name k-1.
- `dict.json` {idx2word: [words], word2idx: {word: index}} over the region phrases (0-based; the
  reference loader appends <unknown>, <start>, <end> after them).
- `inverse_weight.json` {object: {name: w}, predicate: {name: w}}: inverse frequencies
  (total / count, count clipped to 1); F-Net divides them by their minimum.

Region phrases are kept as MSDN keeps them: the phrase wrapped in <start>/<end> must have
min_phrase_len <= len < max_phrase_len tokens (defaults 5 and 11, i.e. 3 to 8 words).
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data_pipelines.errors import (DataFormatError, as_box_array, atomic_write_json,
                                   check_and_clip_boxes, check_relations, load_json)
from data_pipelines.records import SceneGraphRecord
from data_pipelines.vg150 import _names_without_background

CATEGORIES_NAME = "categories.json"
DICT_NAME = "dict.json"
INVERSE_WEIGHT_NAME = "inverse_weight.json"


def _box_list(boxes: np.ndarray) -> list[list[float | int]]:
    """Boxes as JSON lists, integers written as ints (as the real files) and others as floats."""
    out = []
    for row in np.asarray(boxes, np.float64).reshape(-1, 4):
        out.append([int(v) if float(v).is_integer() else float(v) for v in row])
    return out


def _entry(r: SceneGraphRecord, labels: list[str], preds: list[str]) -> dict[str, Any]:
    """One image's MSDN json entry."""
    rels = np.asarray(r.relations, np.int64).reshape(-1, 3)
    if len(r.region_phrases) != np.asarray(r.region_boxes).reshape(-1, 4).shape[0]:
        raise ValueError(f"record {r.image_id}: {len(r.region_phrases)} region phrases but "
                         f"{np.asarray(r.region_boxes).reshape(-1, 4).shape[0]} region boxes")
    return {
        "path": os.path.basename(r.image_path) or f"{r.image_id}.jpg",
        "width": int(r.width),
        "height": int(r.height),
        "id": int(r.image_id),
        "objects": [{"box": b, "class": labels[int(c) - 1]}
                    for b, c in zip(_box_list(r.boxes), np.asarray(r.labels).reshape(-1))],
        "relationships": [{"sub_id": int(s), "obj_id": int(o), "predicate": preds[int(p) - 1]}
                          for s, o, p in rels],
        "regions": [{"box": b, "phrase": list(ph)}
                    for b, ph in zip(_box_list(r.region_boxes), r.region_phrases)],
    }


def _inverse_weights(counts: Counter, names: list[str]) -> dict[str, float]:
    total = max(sum(counts[n] for n in names), 1)
    return {n: total / max(counts[n], 1) for n in names}


def write_vg_msdn(out_dir: str | os.PathLike, records: Sequence[SceneGraphRecord],
                  idx_to_label: Sequence[str] | Mapping[Any, str],
                  idx_to_predicate: Sequence[str] | Mapping[Any, str]) -> None:
    """Writes train.json (val then train records), test.json, categories.json, dict.json and
    inverse_weight.json into `out_dir`, each atomically. Names as in `vg150.write_vg150`."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    labels = _names_without_background(idx_to_label)
    preds = _names_without_background(idx_to_predicate)
    groups: dict[str, list[SceneGraphRecord]] = {"val": [], "train": [], "test": []}
    for r in records:
        if r.split not in groups:
            raise ValueError(f"record {r.image_id}: split must be train/val/test, got {r.split!r}")
        groups[r.split].append(r)
    train = [_entry(r, labels, preds) for r in groups["val"] + groups["train"]]
    test = [_entry(r, labels, preds) for r in groups["test"]]
    atomic_write_json(os.path.join(out_dir, "train.json"), train)
    atomic_write_json(os.path.join(out_dir, "test.json"), test)
    atomic_write_json(os.path.join(out_dir, CATEGORIES_NAME),
                      {"object": labels, "predicate": preds})
    words = sorted({w for r in records for ph in r.region_phrases for w in ph})
    atomic_write_json(os.path.join(out_dir, DICT_NAME),
                      {"idx2word": words, "word2idx": {w: i for i, w in enumerate(words)}})
    obj_counts = Counter(o["class"] for e in train for o in e["objects"])
    pred_counts = Counter(x["predicate"] for e in train for x in e["relationships"])
    atomic_write_json(os.path.join(out_dir, INVERSE_WEIGHT_NAME),
                      {"object": _inverse_weights(obj_counts, labels),
                       "predicate": _inverse_weights(pred_counts, preds)})


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------

def _split_from_name(path: str) -> str:
    base = os.path.basename(path)
    return "test" if base.startswith("test") else "train"


def _image_size(entry: Mapping[str, Any], image_path: str, path: str,
                field: str) -> tuple[int, int]:
    """(width, height) from the entry, else from the image header, else DataFormatError."""
    w, h = entry.get("width"), entry.get("height")
    if w is not None and h is not None:
        if not (isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0):
            raise DataFormatError(path, f"{field}.width/height", "positive numbers", (w, h))
        return int(w), int(h)
    if os.path.isfile(image_path):
        from PIL import Image  # header only: Image.open does not decode pixels
        with Image.open(image_path) as im:
            return im.size
    raise DataFormatError(path, f"{field}.width/height",
                          "image sizes in the entry, or image_root pointing at the images",
                          f"neither (looked for {image_path})")


def _require(entry: Mapping[str, Any], key: str, path: str, field: str) -> Any:
    if not isinstance(entry, Mapping) or key not in entry:
        raise DataFormatError(path, f"{field}.{key}", "present", "missing")
    return entry[key]


def parse_graph_entry(entry: Mapping[str, Any], *, path: str, field: str, box_key: str,
                      class_of: Any, predicate_of: Any, num_predicates: int,
                      image_root: str | None, image_id: int,
                      split: str) -> tuple[SceneGraphRecord, int]:
    """Shared MSDN / VRD parsing of one image entry into a record (regions left empty).

    `class_of(value, field) -> int` and `predicate_of(value, field) -> int` map the json's
    class / predicate values to 1-based ids (raising DataFormatError). Returns the record and
    how many boxes were clipped to the image.
    """
    rel_path = _require(entry, "path", path, field)
    image_path = os.path.join(image_root, rel_path) if image_root else rel_path
    width, height = _image_size(entry, image_path, path, field)
    objects = _require(entry, "objects", path, field)
    relationships = _require(entry, "relationships", path, field)
    if not isinstance(objects, list) or not isinstance(relationships, list):
        raise DataFormatError(path, f"{field}.objects/relationships", "lists",
                              (type(objects).__name__, type(relationships).__name__))
    boxes = as_box_array([_require(o, box_key, path, f"{field}.objects") for o in objects],
                         path, f"{field}.objects.{box_key}")
    labels = np.array([class_of(_require(o, "class", path, f"{field}.objects"),
                                f"{field}.objects.class") for o in objects], np.int32)
    rels = np.array([[_require(r, "sub_id", path, f"{field}.relationships"),
                      _require(r, "obj_id", path, f"{field}.relationships"),
                      predicate_of(_require(r, "predicate", path, f"{field}.relationships"),
                                   f"{field}.relationships.predicate")]
                     for r in relationships], dtype=object).reshape(-1, 3)
    if rels.size and not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                             for v in rels[:, :2].ravel()):
        raise DataFormatError(path, f"{field}.relationships.sub_id/obj_id", "integers",
                              rels[:3, :2].tolist())
    rels = rels.astype(np.int64)
    check_relations(rels, len(objects), num_predicates, path, f"{field}.relationships")
    boxes, n_clipped = check_and_clip_boxes(boxes, width, height, path,
                                            f"{field}.objects.{box_key}")
    record = SceneGraphRecord(
        image_id=int(image_id), image_path=image_path, width=int(width), height=int(height),
        boxes=boxes.astype(np.float32), labels=labels, relations=rels.astype(np.int32),
        split=split)
    return record, n_clipped


def image_id_of(entry: Any, i: int, path: str, from_file_name: bool = False) -> int:
    """The entry's "id" (or "image_id"); else, with from_file_name, the number its image file
    is named by (MSDN's json names VG images `<image_id>.jpg` and may carry no id); else its
    position in the file."""
    if not isinstance(entry, Mapping):
        raise DataFormatError(path, f"[{i}]", "an object per image", type(entry).__name__)
    fallback = i
    stem = os.path.splitext(os.path.basename(str(entry.get("path", ""))))[0]
    if from_file_name and stem.isdigit():
        fallback = int(stem)
    value = entry.get("id", entry.get("image_id", fallback))
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataFormatError(path, f"[{i}].id", "an integer image id", repr(value))
    return value


def _name_lookup(names: list[str], path: str):
    table = {n: i + 1 for i, n in enumerate(names)}

    def lookup(value: Any, field: str) -> int:
        if value not in table:
            raise DataFormatError(path, field, f"one of the {len(names)} category names",
                                  repr(value))
        return table[value]
    return lookup


def load_categories(path: str | os.PathLike) -> dict[str, list[str]]:
    """categories.json {object: [names], predicate: [names]} (class k, 1-based, is name k-1)."""
    path = os.fspath(path)
    cats = load_json(path, "VG-MSDN categories")
    for key in ("object", "predicate"):
        if not isinstance(cats, dict) or not isinstance(cats.get(key), list):
            raise DataFormatError(path, key, "a list of names",
                                  "missing" if isinstance(cats, dict) else type(cats).__name__)
    return cats


def _parse_msdn_entry(entry: Mapping[str, Any], *, json_path: str, field: str,
                      cats: dict[str, list[str]], class_of: Any, predicate_of: Any,
                      image_root: str | None, image_id: int, split: str,
                      phrase_lengths: tuple[int, int]
                      ) -> tuple[SceneGraphRecord | None, int, int]:
    """One VG-MSDN entry -> (record, or None for an image without objects; boxes clipped;
    regions dropped for their phrase length)."""
    rec, clipped = parse_graph_entry(entry, path=json_path, field=field, box_key="box",
                                     class_of=class_of, predicate_of=predicate_of,
                                     num_predicates=len(cats["predicate"]),
                                     image_root=image_root, image_id=image_id, split=split)
    if rec.labels.size == 0:
        return None, clipped, 0
    regions = entry.get("regions", [])
    if not isinstance(regions, list):
        raise DataFormatError(json_path, f"{field}.regions", "a list", type(regions).__name__)
    keep = []
    for reg in regions:
        phrase = _require(reg, "phrase", json_path, f"{field}.regions")
        if not isinstance(phrase, list) or not all(isinstance(w, str) for w in phrase):
            raise DataFormatError(json_path, f"{field}.regions.phrase", "a list of words",
                                  repr(phrase)[:60])
        if phrase_lengths[0] <= len(phrase) + 2 < phrase_lengths[1]:
            keep.append(reg)
    rboxes = as_box_array([_require(r, "box", json_path, f"{field}.regions") for r in keep],
                          json_path, f"{field}.regions.box")
    rboxes, n = check_and_clip_boxes(rboxes, rec.width, rec.height, json_path,
                                     f"{field}.regions.box")
    rec.region_boxes = rboxes.astype(np.float32)
    rec.region_phrases = [list(r["phrase"]) for r in keep]
    return rec, clipped + n, len(regions) - len(keep)


def load_vg_msdn(json_path: str | os.PathLike, categories_path: str | os.PathLike | None = None,
                 *, image_root: str | None = None, min_phrase_len: int = 5,
                 max_phrase_len: int = 11) -> list[SceneGraphRecord]:
    """Reads a VG-MSDN annotation file (train.json / test.json / *_small / *_fat).

    Class and predicate names are mapped to 1-based ids through `categories_path` (default:
    categories.json next to the annotation file). The split is "test" for files named test*,
    "train" otherwise. Regions whose <start>/<end>-wrapped phrase length is outside
    [min_phrase_len, max_phrase_len) are dropped, as MSDN does, and images without objects are
    dropped (as neural-motifs drops box-less VG150 images); both counts are printed.
    """
    json_path = os.fspath(json_path)
    if categories_path is None:
        categories_path = os.path.join(os.path.dirname(json_path), CATEGORIES_NAME)
    cats = load_categories(categories_path)
    data = load_json(json_path, "VG-MSDN annotation")
    if not isinstance(data, list):
        raise DataFormatError(json_path, None, "a list of image entries", type(data).__name__)
    class_of = _name_lookup(cats["object"], json_path)
    predicate_of = _name_lookup(cats["predicate"], json_path)
    split = _split_from_name(json_path)
    records, clipped, dropped_regions, no_boxes = [], 0, 0, 0
    for i, entry in enumerate(data):
        field = f"[{i}]"
        image_id = image_id_of(entry, i, json_path, from_file_name=True)
        try:
            rec, n_clipped, n_dropped = _parse_msdn_entry(
                entry, json_path=json_path, field=field, cats=cats, class_of=class_of,
                predicate_of=predicate_of, image_root=image_root, image_id=image_id,
                split=split, phrase_lengths=(min_phrase_len, max_phrase_len))
        except DataFormatError as e:
            raise e.for_image(image_id) from e
        clipped += n_clipped
        if rec is None:
            no_boxes += 1
            continue
        dropped_regions += n_dropped
        records.append(rec)
    if clipped:
        print(f"{json_path}: clipped {clipped} boxes that extended past their image border")
    if no_boxes:
        print(f"{json_path}: dropped {no_boxes} images with no object boxes")
    if dropped_regions:
        print(f"{json_path}: dropped {dropped_regions} regions whose phrase length (with "
              f"<start>/<end>) is outside [{min_phrase_len}, {max_phrase_len}) as MSDN does")
    return records


def load_vg_msdn_splits(data_dir: str | os.PathLike, *, num_val_im: int = 5000,
                        filter_empty_rels: bool = True, num_im: int = -1,
                        image_dir: str = "images") -> dict[str, list[SceneGraphRecord]]:
    """{"train", "val", "test": records} of a VG-MSDN directory, cut as `vg150.load_vg150`
    cuts VG150's splits; each json file is read once.

    MSDN has no validation file, so "val" is the first `num_val_im` images of train.json (our
    writer puts the val records there first; empty when num_val_im <= 0) and "train" the rest;
    "test" is test.json. Images without relations are dropped when filter_empty_rels; `num_im`
    > -1 truncates each file before the val/train cut (neural-motifs' order). Image files are
    `<data_dir>/<image_dir>/<entry path>` (`image_dir` may be absolute; F-Net's layout keeps
    them in `images/`), and each must exist.
    """
    data_dir = os.fspath(data_dir)
    image_root = os.path.join(data_dir, image_dir)
    out: dict[str, list[SceneGraphRecord]] = {}
    for name in ("train", "test"):
        json_path = os.path.join(data_dir, f"{name}.json")
        records = load_vg_msdn(json_path, image_root=image_root)
        if filter_empty_rels:
            kept = [r for r in records if np.asarray(r.relations).size]
            if len(kept) < len(records):
                print(f"{json_path}: dropped {len(records) - len(kept)} images with no "
                      "relations (filter_empty_rels)")
            records = kept
        if num_im > -1:
            records = records[:num_im]
        for r in records:
            if not os.path.isfile(r.image_path):
                raise DataFormatError(json_path, "path", f"an image file under {image_root} "
                                      f"(image_dir={image_dir!r})", f"no such file {r.image_path}",
                                      image_id=r.image_id)
        if name == "test":
            out["test"] = records
        else:
            n_val = max(num_val_im, 0)
            out["val"], out["train"] = records[:n_val], records[n_val:]
            for r in out["val"]:
                r.split = "val"
    return out
