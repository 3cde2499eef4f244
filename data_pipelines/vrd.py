"""VRD and VG-DR-Net annotation json (Factorizable Net's format): reader.

Files: `objects.json` and `predicates.json` (lists of names), and an annotation file
`<split>.json`: a list of {path, objects: [{bbox: [x1, y1, x2, y2], class: int}],
relationships: [{sub_id, obj_id, predicate: int}]} (optionally width / height / id), boxes in
original pixels, sub_id / obj_id 0-based indices into `objects`.

Indexing, verified in yikang-li/FactorizableNet: `class` and `predicate` integers are already
1-based (scripts/voc_converter.py names a class `objects[class - 1]`; lib/datasets/VRD_loader.py
prepends "__background__" to both name lists and stores `predicate` in a relation matrix where 0
means "no relation"), so they map to our 1-based ids unchanged; 0 or values past the list are
rejected.

VG-DR-Net contains self-relations (sub_id == obj_id, "A rel A"); they are kept as annotated, so
models and evaluators must not assume subject != object for this dataset.

Image sizes come from the entry's width / height when present, otherwise from the image header
under `image_root` (Pillow reads only the header).
"""
from __future__ import annotations

import os
from typing import Any

from data_pipelines.errors import DataFormatError, load_json
from data_pipelines.records import SceneGraphRecord
from data_pipelines.vg_msdn import image_id_of, parse_graph_entry


def _load_names(path: str, what: str) -> list[str]:
    names = load_json(path, what)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataFormatError(path, None, "a JSON list of names", type(names).__name__)
    return names


def _int_lookup(n: int, path: str):
    def lookup(value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n:
            raise DataFormatError(path, field, f"an integer id in [1, {n}] (1-based)",
                                  repr(value))
        return value
    return lookup


def load_vrd(annotation_path: str | os.PathLike, objects_path: str | os.PathLike,
             predicates_path: str | os.PathLike,
             image_root: str | None = None) -> list[SceneGraphRecord]:
    """Reads a VRD / VG-DR-Net annotation file into records (split from the file name:
    "test" for test*, else "train"). Images without objects are dropped (count printed);
    boxes overhanging their image are clipped (count printed); bad values raise
    DataFormatError naming the file and field."""
    annotation_path = os.fspath(annotation_path)
    objects = _load_names(os.fspath(objects_path), "VRD objects.json")
    predicates = _load_names(os.fspath(predicates_path), "VRD predicates.json")
    data = load_json(annotation_path, "VRD annotation")
    if not isinstance(data, list):
        raise DataFormatError(annotation_path, None, "a list of image entries",
                              type(data).__name__)
    split = "test" if os.path.basename(annotation_path).startswith("test") else "train"
    class_of = _int_lookup(len(objects), annotation_path)
    predicate_of = _int_lookup(len(predicates), annotation_path)
    records, clipped, no_boxes, self_rels = [], 0, 0, 0
    for i, entry in enumerate(data):
        image_id = image_id_of(entry, i, annotation_path)
        try:
            rec, n = parse_graph_entry(entry, path=annotation_path, field=f"[{i}]",
                                       box_key="bbox", class_of=class_of,
                                       predicate_of=predicate_of,
                                       num_predicates=len(predicates), image_root=image_root,
                                       image_id=image_id, split=split)
        except DataFormatError as e:
            raise e.for_image(image_id) from e
        clipped += n
        if rec.labels.size == 0:
            no_boxes += 1
            continue
        self_rels += int((rec.relations[:, 0] == rec.relations[:, 1]).sum())
        records.append(rec)
    if no_boxes:
        print(f"{annotation_path}: dropped {no_boxes} images with no object boxes")
    if clipped:
        print(f"{annotation_path}: clipped {clipped} boxes that extended past their image border")
    if self_rels:
        print(f"{annotation_path}: kept {self_rels} self-relations (subject == object), as "
              "annotated in VG-DR-Net")
    return records
