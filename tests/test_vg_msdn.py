"""VG-MSDN json writer/reader: round trip, MSDN's phrase-length rule, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_pipelines import vg_msdn
from data_pipelines.errors import DataFormatError
from data_pipelines.records import SceneGraphRecord

LABELS = ["ball", "box", "cat"]
PREDS = ["on", "near"]


def _record(image_id, split, phrases=(("a", "red", "ball"),)):
    return SceneGraphRecord(
        image_id=image_id, image_path=f"VG_100K/{image_id}.jpg", width=200, height=100,
        boxes=np.array([[0, 0, 10.5, 20], [5, 5, 50, 60], [100, 10, 199, 99]], np.float32),
        labels=np.array([1, 3, 2], np.int32),
        relations=np.array([[0, 1, 2], [2, 0, 1]], np.int32),
        region_boxes=np.array([[1, 2, 30, 40]] * len(phrases), np.float32).reshape(-1, 4),
        region_phrases=[list(p) for p in phrases], split=split)


def _same(a, b):
    assert (a.image_id, a.width, a.height, a.split) == (b.image_id, b.width, b.height, b.split)
    for field in ("boxes", "labels", "relations", "region_boxes"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert a.region_phrases == b.region_phrases


def test_round_trip(tmp_path):
    recs = [_record(3, "train"), _record(1, "val"), _record(2, "test")]
    vg_msdn.write_vg_msdn(tmp_path, recs, LABELS, PREDS)
    train = vg_msdn.load_vg_msdn(tmp_path / "train.json", image_root=str(tmp_path / "imgs"))
    test = vg_msdn.load_vg_msdn(tmp_path / "test.json")
    assert [r.image_id for r in train] == [1, 3]  # val first, all under "train" as MSDN
    for got, want in zip(train + test, [recs[1], recs[0], recs[2]]):
        want.split = "test" if want.split == "test" else "train"
        _same(got, want)
    assert train[0].image_path == str(tmp_path / "imgs" / "1.jpg")
    cats = json.loads((tmp_path / "categories.json").read_text())
    assert cats == {"object": LABELS, "predicate": PREDS}
    words = json.loads((tmp_path / "dict.json").read_text())
    assert words["idx2word"] == ["a", "ball", "red"]
    assert words["word2idx"] == {"a": 0, "ball": 1, "red": 2}
    weights = json.loads((tmp_path / "inverse_weight.json").read_text())
    # training objects: 2 images x (ball, cat, box) -> each class 2 of 6 -> weight 3
    assert weights["object"] == {"ball": 3.0, "box": 3.0, "cat": 3.0}
    assert weights["predicate"] == {"on": 2.0, "near": 2.0}


def test_phrase_length_rule(tmp_path, capsys):
    phrases = [["w"] * n for n in (2, 3, 8, 9)]  # wrapped lengths 4, 5, 10, 11
    vg_msdn.write_vg_msdn(tmp_path, [_record(1, "test", phrases)], LABELS, PREDS)
    got = vg_msdn.load_vg_msdn(tmp_path / "test.json")[0]
    assert [len(p) for p in got.region_phrases] == [3, 8]
    assert got.region_boxes.shape == (2, 4)
    assert "dropped 2 regions" in capsys.readouterr().out


def _entry(**over):
    entry = {"path": "1.jpg", "width": 200, "height": 100, "id": 1,
             "objects": [{"box": [0, 0, 10, 10], "class": "ball"},
                         {"box": [5, 5, 50, 60], "class": "cat"}],
             "relationships": [{"sub_id": 0, "obj_id": 1, "predicate": "on"}],
             "regions": []}
    entry.update(over)
    return entry


def _write(tmp_path, entries, name="train.json"):
    (tmp_path / "categories.json").write_text(json.dumps({"object": LABELS,
                                                          "predicate": PREDS}))
    (tmp_path / name).write_text(json.dumps(entries))
    return tmp_path / name


def _expect(path, *fields, **kw):
    with pytest.raises(DataFormatError) as info:
        vg_msdn.load_vg_msdn(path, **kw)
    for field in fields:
        assert field in str(info.value), str(info.value)


def test_missing_files(tmp_path):
    _expect(tmp_path / "train.json", "categories.json", "no such file")
    p = _write(tmp_path, [_entry()])
    p.unlink()
    _expect(p, "train.json", "no such file")


def test_bad_entries(tmp_path):
    _expect(_write(tmp_path, [_entry(objects=[{"box": [0, 0, 5, 5], "class": "dog"}])]),
            "train.json", "[0].objects.class", "'dog'")
    _expect(_write(tmp_path, [_entry(relationships=[{"sub_id": 0, "obj_id": 5,
                                                      "predicate": "on"}])]),
            "[0].relationships", "[0, 2)")
    _expect(_write(tmp_path, [_entry(relationships=[{"sub_id": 0, "obj_id": 1,
                                                      "predicate": "under"}])]),
            "relationships.predicate", "'under'")
    entry = _entry()
    del entry["objects"]
    _expect(_write(tmp_path, [_entry(), entry]), "[1].objects", "missing")
    _expect(_write(tmp_path, [_entry(objects=[{"box": [9, 0, 5, 5], "class": "ball"}] * 2)]),
            "[0].objects.box", "x2 > x1")
    _expect(_write(tmp_path, [_entry(objects=[{"box": [300, 0, 305, 5], "class": "ball"}] * 2)]),
            "[0].objects.box", "entirely outside")
    _expect(_write(tmp_path, [_entry(objects=[{"box": [0, 0, "x", 5], "class": "ball"}] * 2)]),
            "[0].objects.box", "numeric")
    _expect(_write(tmp_path, {"not": "a list"}), "train.json", "list of image entries")


def test_images_without_boxes_dropped_and_overhang_clipped(tmp_path, capsys):
    p = _write(tmp_path, [_entry(objects=[], relationships=[]),
                          _entry(objects=[{"box": [150, 0, 230, 50], "class": "box"}],
                                 relationships=[])])
    got = vg_msdn.load_vg_msdn(p)
    assert len(got) == 1
    np.testing.assert_array_equal(got[0].boxes, [[150, 0, 200, 50]])
    out = capsys.readouterr().out
    assert "dropped 1 images with no object boxes" in out and "clipped 1 boxes" in out


def test_image_size_from_image_or_error(tmp_path):
    entry = _entry()
    del entry["width"], entry["height"]
    p = _write(tmp_path, [entry])
    _expect(p, "[0].width/height", "image_root")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (120, 70)).save(tmp_path / "imgs" / "1.jpg")
    got = vg_msdn.load_vg_msdn(p, image_root=str(tmp_path / "imgs"))
    assert (got[0].width, got[0].height) == (120, 70)


def test_image_id_from_the_file_name_when_the_entry_has_none(tmp_path):
    entries = [_entry(path="VG_100K/2343728.jpg"), _entry(path="x.jpg")]
    for e in entries:
        del e["id"]
    got = vg_msdn.load_vg_msdn(_write(tmp_path, entries))
    assert [r.image_id for r in got] == [2343728, 1]  # the number in the name, else position
