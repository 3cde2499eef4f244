"""VRD / VG-DR-Net json reader: hand-written files in F-Net's format, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data_pipelines.errors import DataFormatError
from data_pipelines.vrd import load_vrd

OBJECTS = ["person", "sky", "building", "car"]
PREDICATES = ["on", "wear", "has", "next to"]


def _files(tmp_path, entries, name="train.json"):
    (tmp_path / "objects.json").write_text(json.dumps(OBJECTS))
    (tmp_path / "predicates.json").write_text(json.dumps(PREDICATES))
    (tmp_path / name).write_text(json.dumps(entries))
    return tmp_path / name, tmp_path / "objects.json", tmp_path / "predicates.json"


ENTRY = {"path": "3.jpg", "width": 640, "height": 480,
         "objects": [{"bbox": [10, 20, 110, 220], "class": 1},
                     {"bbox": [0, 0, 640, 100], "class": 2},
                     {"bbox": [300, 100, 500, 400], "class": 4}],
         "relationships": [{"sub_id": 0, "obj_id": 2, "predicate": 4},
                           {"sub_id": 2, "obj_id": 2, "predicate": 1},
                           {"sub_id": 1, "obj_id": 0, "predicate": 3}]}


def test_reads_one_based_ids_and_keeps_self_relations(tmp_path, capsys):
    ann, obj, pred = _files(tmp_path, [ENTRY], name="test.json")
    (rec,) = load_vrd(ann, obj, pred, image_root="/data/vrd")
    assert rec.split == "test" and rec.image_id == 0
    assert rec.image_path == "/data/vrd/3.jpg"
    assert (rec.width, rec.height) == (640, 480)
    np.testing.assert_array_equal(rec.boxes, [[10, 20, 110, 220], [0, 0, 640, 100],
                                              [300, 100, 500, 400]])
    assert rec.boxes.dtype == np.float32
    # class 1 is objects.json[0] = "person": ids are 1-based already, kept unchanged
    np.testing.assert_array_equal(rec.labels, [1, 2, 4])
    assert OBJECTS[rec.labels[0] - 1] == "person"
    np.testing.assert_array_equal(rec.relations, [[0, 2, 4], [2, 2, 1], [1, 0, 3]])
    assert "kept 1 self-relations" in capsys.readouterr().out


def _expect(tmp_path, entries, *fields):
    with pytest.raises(DataFormatError) as info:
        load_vrd(*_files(tmp_path, entries))
    for field in fields:
        assert field in str(info.value), str(info.value)


def _with(**over):
    entry = json.loads(json.dumps(ENTRY))
    entry.update(over)
    return entry


def test_bad_ids(tmp_path):
    objs = [dict(o) for o in ENTRY["objects"]]
    objs[1]["class"] = 0
    _expect(tmp_path, [_with(objects=objs)], "train.json", "objects.class", "[1, 4]")
    objs[1]["class"] = 5
    _expect(tmp_path, [_with(objects=objs)], "objects.class", "5")
    rels = [dict(r) for r in ENTRY["relationships"]]
    rels[0]["predicate"] = 5
    _expect(tmp_path, [_with(relationships=rels)], "relationships.predicate", "[1, 4]")
    rels[0] = {"sub_id": 0, "obj_id": 3, "predicate": 1}
    _expect(tmp_path, [_with(relationships=rels)], "[0].relationships", "[0, 3)")


def test_bad_boxes_and_keys(tmp_path):
    objs = [{"box": o["bbox"], "class": o["class"]} for o in ENTRY["objects"]]
    _expect(tmp_path, [_with(objects=objs)], "[0].objects.bbox", "missing")
    objs = [dict(o) for o in ENTRY["objects"]]
    objs[0]["bbox"] = [10, 220, 110, 20]
    _expect(tmp_path, [_with(objects=objs)], "[0].objects.bbox", "y2 > y1")
    objs[0]["bbox"] = [700, 20, 710, 30]
    _expect(tmp_path, [_with(objects=objs)], "[0].objects.bbox", "entirely outside")
    entry = _with()
    del entry["width"], entry["height"]
    _expect(tmp_path, [entry], "[0].width/height")


def test_missing_and_malformed_files(tmp_path):
    ann, obj, pred = _files(tmp_path, [ENTRY])
    pred.unlink()
    with pytest.raises(DataFormatError, match="predicates.json.*no such file"):
        load_vrd(ann, obj, pred)
    ann.write_text('[{"path": "1.jpg", ')
    (tmp_path / "predicates.json").write_text(json.dumps(PREDICATES))
    with pytest.raises(DataFormatError, match="train.json.*valid JSON"):
        load_vrd(ann, obj, pred)


def test_images_without_objects_dropped(tmp_path, capsys):
    ann, obj, pred = _files(tmp_path, [_with(objects=[], relationships=[]), ENTRY])
    got = load_vrd(ann, obj, pred)
    assert [r.image_id for r in got] == [1]
    assert "dropped 1 images with no object boxes" in capsys.readouterr().out
