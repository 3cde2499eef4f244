"""VG150 writer/reader: real-file conventions, round trip, neural-motifs options, bad input."""
from __future__ import annotations

import json
import os
import pathlib

import h5py
import numpy as np
import pytest

from data_pipelines import vg150
from data_pipelines.errors import DataFormatError
from data_pipelines.records import SceneGraphRecord

REAL_DICTS = pathlib.Path(__file__).parent / "data" / "VG-SGG-dicts-with-attri.json"
LABELS = [f"class{i}" for i in range(1, 7)]
PREDS = [f"pred{i}" for i in range(1, 5)]


def _record(image_id, split, boxes, labels, relations, width=256, height=192):
    return SceneGraphRecord(
        image_id=image_id, image_path=f"{image_id}.jpg", width=width, height=height,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int32),
        relations=np.asarray(relations, np.int32).reshape(-1, 3), split=split)


def _random_records(seed=0, n=(3, 5, 4)):
    """Records whose boxes are exactly representable at 1024 and 512 scale (integer pixels,
    long side 256 or 128)."""
    rng = np.random.default_rng(seed)
    recs = []
    image_id = 10
    for split, count in zip(("val", "train", "test"), n):
        for _ in range(count):
            w, h = (256, 192) if rng.random() < 0.5 else (96, 128)
            g = int(rng.integers(2, 6))
            x1 = rng.integers(0, w - 10, g)
            y1 = rng.integers(0, h - 10, g)
            x2 = x1 + rng.integers(1, 10, g)
            y2 = y1 + rng.integers(1, 10, g)
            r = int(rng.integers(1, 5))
            s = rng.integers(0, g, r)
            o = (s + rng.integers(1, g, r)) % g
            rels = np.stack([s, o, rng.integers(1, len(PREDS) + 1, r)], 1)
            recs.append(_record(image_id, split, np.stack([x1, y1, x2, y2], 1),
                                rng.integers(1, len(LABELS) + 1, g), rels, w, h))
            image_id += 7
    return recs


def _assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert (a.image_id, a.width, a.height, a.split) == (b.image_id, b.width, b.height, b.split)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert a.boxes.dtype == np.float32
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.relations, b.relations)


@pytest.fixture
def written(tmp_path):
    recs = _random_records()
    vg150.write_vg150(tmp_path, recs, LABELS, PREDS)
    return tmp_path, recs


# ------------------------------------------------------------------ conventions and round trip

def test_writer_keys_dtypes_shapes(written):
    d, recs = written
    n_img, n_obj = len(recs), sum(len(r.labels) for r in recs)
    n_rel = sum(len(r.relations) for r in recs)
    want = {"labels": (np.int64, (n_obj, 1)), "boxes_1024": (np.int32, (n_obj, 4)),
            "boxes_512": (np.int32, (n_obj, 4)), "img_to_first_box": (np.int32, (n_img,)),
            "img_to_last_box": (np.int32, (n_img,)), "relationships": (np.int32, (n_rel, 2)),
            "predicates": (np.int64, (n_rel, 1)), "img_to_first_rel": (np.int32, (n_img,)),
            "img_to_last_rel": (np.int32, (n_img,)), "split": (np.int32, (n_img,))}
    with h5py.File(d / vg150.H5_NAME, "r") as f:
        assert set(f.keys()) == set(want)
        for key, (dtype, shape) in want.items():
            assert f[key].dtype == dtype, key
            assert f[key].shape == shape, key
        np.testing.assert_array_equal(f["split"][:], [0] * 8 + [2] * 4)
    info = json.loads((d / vg150.IMAGE_DATA_NAME).read_text())
    assert [e["image_id"] for e in info] == [r.image_id for r in recs]
    assert set(info[0]) == {"image_id", "url", "width", "height", "coco_id", "flickr_id"}
    dicts = json.loads((d / vg150.DICTS_NAME).read_text())
    assert dicts["idx_to_label"]["1"] == "class1" and dicts["label_to_idx"]["class6"] == 6
    assert sum(dicts["object_count"].values()) == sum(len(r.labels) for r in recs)


def test_writer_is_deterministic(tmp_path):
    recs = _random_records(3)
    vg150.write_vg150(tmp_path / "a", recs, LABELS, PREDS)
    vg150.write_vg150(tmp_path / "b", recs, LABELS, PREDS)
    for name in (vg150.H5_NAME, vg150.DICTS_NAME, vg150.IMAGE_DATA_NAME):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _hand_built(d: pathlib.Path):
    """A VG-SGG.h5 written directly from literal arrays, in the real file's conventions.

    image 0 (train, 512x256, scale 2 at 1024): boxes px [10,20,30,50] -> 1024 [20,40,60,100]
      -> xc,yc,w,h [40,70,40,60]; px [0.5,1,3,4] -> [1,2,6,8] -> w=5 (odd), xc=4 since
      trunc(4 - 2.5) = 1; relation (1 -> 0, pred 3) stored with global indices.
    image 1 (train): no boxes, no relations (-1 ranges).
    image 2 (test, 100x200, scale 5.12): one box 1024 [xc=50, yc=60, w=20, h=40] -> x1=40,
      y1=40, x2=60, y2=80 -> px / 5.12; boxes are global 2..3, relation (3 -> 2, pred 1).
    """
    d.mkdir(parents=True, exist_ok=True)
    with h5py.File(d / vg150.H5_NAME, "w") as f:
        f["labels"] = np.array([[5], [2], [7], [1]], np.int64)
        f["boxes_1024"] = np.array([[40, 70, 40, 60], [4, 5, 5, 6], [50, 60, 20, 40],
                                    [20, 20, 10, 10]], np.int32)
        f["boxes_512"] = np.array([[20, 35, 20, 30], [2, 2, 3, 3], [25, 30, 10, 20],
                                   [10, 10, 5, 5]], np.int32)
        f["img_to_first_box"] = np.array([0, -1, 2], np.int32)
        f["img_to_last_box"] = np.array([1, -1, 3], np.int32)
        f["relationships"] = np.array([[1, 0], [3, 2]], np.int32)
        f["predicates"] = np.array([[3], [1]], np.int64)
        f["img_to_first_rel"] = np.array([0, -1, 1], np.int32)
        f["img_to_last_rel"] = np.array([0, -1, 1], np.int32)
        f["split"] = np.array([0, 0, 2], np.int32)
    (d / vg150.IMAGE_DATA_NAME).write_text(json.dumps([
        {"image_id": 101, "url": "", "width": 512, "height": 256, "coco_id": None,
         "flickr_id": None},
        {"image_id": 102, "url": "", "width": 300, "height": 300, "coco_id": None,
         "flickr_id": None},
        {"image_id": 103, "url": "", "width": 100, "height": 200, "coco_id": None,
         "flickr_id": None}]))


def test_hand_built_h5_is_read_with_real_conventions(tmp_path):
    _hand_built(tmp_path)
    train = vg150.load_vg150(tmp_path, "train", num_val_im=0)
    assert [r.image_id for r in train] == [101]  # image 102 has no boxes
    np.testing.assert_array_equal(train[0].boxes, [[10, 20, 30, 50], [0.5, 1, 3, 4]])
    np.testing.assert_array_equal(train[0].labels, [5, 2])
    np.testing.assert_array_equal(train[0].relations, [[1, 0, 3]])
    assert train[0].image_path == os.path.join(tmp_path, "VG_100K", "101.jpg")
    test = vg150.load_vg150(tmp_path, "test")
    np.testing.assert_allclose(test[0].boxes, np.array([[40, 40, 60, 80], [15, 15, 25, 25]])
                               * 200 / 1024, rtol=1e-6)
    np.testing.assert_array_equal(test[0].relations, [[1, 0, 1]])


def test_writer_matches_hand_built_arrays(tmp_path):
    """Writing the records read from the literal file reproduces the literal 1024 arrays."""
    _hand_built(tmp_path / "lit")
    recs = (vg150.load_vg150(tmp_path / "lit", "train", num_val_im=0, filter_empty_rels=False)
            + vg150.load_vg150(tmp_path / "lit", "test"))
    vg150.write_vg150(tmp_path / "out", recs, LABELS + ["c7"], PREDS)
    with h5py.File(tmp_path / "lit" / vg150.H5_NAME) as a, \
            h5py.File(tmp_path / "out" / vg150.H5_NAME) as b:
        for key in ("labels", "boxes_1024", "relationships", "predicates"):
            np.testing.assert_array_equal(a[key][:], b[key][:], err_msg=key)
        # image 102 (no boxes) is dropped on reading, so the ranges are those of images 0, 2
        np.testing.assert_array_equal(b["split"][:], [0, 2])
        np.testing.assert_array_equal(b["img_to_first_box"][:], [0, 2])
        np.testing.assert_array_equal(b["img_to_last_rel"][:], [0, 1])


def test_round_trip_all_splits(written):
    d, recs = written
    n_val = sum(r.split == "val" for r in recs)
    for split in ("val", "train", "test"):
        got = vg150.load_vg150(d, split, num_val_im=n_val)
        _assert_same(got, [r for r in recs if r.split == split])


def test_round_trip_at_512(written):
    d, recs = written
    got = vg150.load_vg150(d, "test", box_scale=512)
    _assert_same(got, [r for r in recs if r.split == "test"])


def test_encode_decode_odd_and_even_widths():
    boxes = np.array([[0, 0, 5, 5], [3, 4, 10, 11], [7, 7, 8, 9]], np.float64)
    enc = vg150.encode_boxes(boxes, 1024, 512, 1024)
    np.testing.assert_array_equal(enc, [[3, 3, 5, 5], [7, 8, 7, 7], [8, 8, 1, 2]])
    np.testing.assert_array_equal(vg150.decode_boxes(enc), boxes)


# ------------------------------------------------------------------ neural-motifs options

def test_val_is_first_train_images_and_num_im(written):
    d, recs = written
    train_like = [r for r in recs if r.split in ("val", "train")]
    val = vg150.load_vg150(d, "val", num_val_im=2)
    train = vg150.load_vg150(d, "train", num_val_im=2)
    assert [r.image_id for r in val] == [r.image_id for r in train_like[:2]]
    assert [r.image_id for r in train] == [r.image_id for r in train_like[2:]]
    assert all(r.split == "train" for r in train)
    # num_im truncates the split before the val/train cut
    train = vg150.load_vg150(d, "train", num_val_im=2, num_im=5)
    assert [r.image_id for r in train] == [r.image_id for r in train_like[2:5]]


def test_empty_images_and_filter_empty_rels(tmp_path, capsys):
    recs = [_record(1, "train", [[0, 0, 4, 4], [2, 2, 8, 8]], [1, 2], [[0, 1, 1]]),
            _record(2, "train", [[0, 0, 4, 4]], [3], np.zeros((0, 3))),
            _record(3, "train", np.zeros((0, 4)), [], np.zeros((0, 3))),
            _record(4, "train", [[1, 1, 4, 4], [2, 2, 8, 8]], [1, 2], [[1, 0, 2]])]
    vg150.write_vg150(tmp_path, recs, LABELS, PREDS)
    got = vg150.load_vg150(tmp_path, "train", num_val_im=0)
    assert [r.image_id for r in got] == [1, 4]
    out = capsys.readouterr().out
    assert "dropped 1 images with no boxes" in out
    assert "dropped 1 images with no relations" in out
    got = vg150.load_vg150(tmp_path, "train", num_val_im=0, filter_empty_rels=False)
    assert [r.image_id for r in got] == [1, 2, 4]
    assert got[1].relations.shape == (0, 3)


def test_filter_duplicate_rels(tmp_path):
    rels = [[0, 1, 1], [1, 0, 3], [0, 1, 2], [0, 2, 4], [0, 1, 1]]
    recs = [_record(1, "train", [[0, 0, 4, 4], [2, 2, 8, 8], [5, 5, 9, 9]], [1, 2, 3], rels)]
    vg150.write_vg150(tmp_path, recs, LABELS, PREDS)
    chosen = []
    for seed in range(40):
        got = vg150.load_vg150(tmp_path, "train", num_val_im=0, filter_duplicate_rels=True,
                               seed=seed)[0].relations
        np.testing.assert_array_equal(got[:, :2], [[0, 1], [1, 0], [0, 2]])
        np.testing.assert_array_equal(got[1:, 2], [3, 4])
        chosen.append(int(got[0, 2]))
    assert set(chosen) == {1, 2}  # both annotated predicates of pair (0, 1) get drawn
    again = vg150.load_vg150(tmp_path, "train", num_val_im=0, filter_duplicate_rels=True, seed=7)
    first = vg150.load_vg150(tmp_path, "train", num_val_im=0, filter_duplicate_rels=True, seed=7)
    np.testing.assert_array_equal(again[0].relations, first[0].relations)
    # not applied outside training
    val = vg150.load_vg150(tmp_path, "val", num_val_im=1, filter_duplicate_rels=True)
    np.testing.assert_array_equal(val[0].relations, rels)


def test_filter_non_overlap(tmp_path, capsys):
    # width 256 -> 1024 scale factor 4. Boxes 0 and 1 overlap; 0 and 2 are disjoint; 2 and 3
    # touch (x2 of 2 == x1 of 3), which neural-motifs' inclusive-pixel rule counts as overlap.
    boxes = [[0, 0, 10, 10], [5, 5, 20, 20], [40, 40, 50, 50], [50, 40, 60, 50]]
    recs = [_record(1, "train", boxes, [1, 2, 3, 4], [[0, 1, 1], [0, 2, 2], [2, 3, 3]]),
            _record(2, "train", boxes, [1, 2, 3, 4], [[0, 2, 2], [3, 0, 1]]),
            _record(3, "train", boxes[1:], [2, 3, 4], [[2, 1, 4], [0, 1, 2], [2, 1, 1]])]
    vg150.write_vg150(tmp_path, recs, LABELS, PREDS)
    got = vg150.load_vg150(tmp_path, "train", num_val_im=0, filter_non_overlap=True)
    assert [r.image_id for r in got] == [1, 3]
    np.testing.assert_array_equal(got[0].relations, [[0, 1, 1], [2, 3, 3]])
    np.testing.assert_array_equal(got[1].relations, [[2, 1, 4], [2, 1, 1]])
    np.testing.assert_array_equal(got[1].boxes, boxes[1:])
    both = vg150.load_vg150(tmp_path, "train", num_val_im=0, filter_non_overlap=True,
                            filter_duplicate_rels=True)
    np.testing.assert_array_equal(both[0].relations, [[0, 1, 1], [2, 3, 3]])
    assert both[1].relations.shape == (1, 3) and both[1].relations[0, 2] in (1, 4)
    assert "dropped 1 images whose relations all join non-overlapping" in capsys.readouterr().out
    val = vg150.load_vg150(tmp_path, "val", num_val_im=3, filter_non_overlap=True)
    assert len(val) == 3 and len(val[1].relations) == 2


# ------------------------------------------------------------------ dictionaries

def test_load_dicts_real_file():
    d = vg150.load_vg150_dicts(REAL_DICTS)
    assert d.num_classes == 151 and d.num_predicates == 51
    assert d.idx_to_label[0] == "__background__" and d.idx_to_label[1] == "airplane"
    assert d.idx_to_predicate[0] == "__background__"
    assert all(d.label_to_idx[name] == i for i, name in enumerate(d.idx_to_label))
    assert all(d.predicate_to_idx[name] == i for i, name in enumerate(d.idx_to_predicate))
    assert d.predicate_count["on"] == 712409
    assert max(d.predicate_count, key=d.predicate_count.get) == "on"


def test_load_dicts_written_file(written):
    d, _ = written
    dicts = vg150.load_vg150_dicts(d / vg150.DICTS_NAME)
    assert dicts.idx_to_label == ["__background__"] + LABELS
    assert dicts.idx_to_predicate == ["__background__"] + PREDS


def test_dicts_bad_input(tmp_path):
    p = tmp_path / "dicts.json"
    p.write_text(json.dumps({"idx_to_label": {"1": "a", "3": "b"}, "label_to_idx": {},
                             "idx_to_predicate": {"1": "on"}, "predicate_to_idx": {"on": 1}}))
    with pytest.raises(DataFormatError, match="idx_to_label"):
        vg150.load_vg150_dicts(p)
    p.write_text("{not json")
    with pytest.raises(DataFormatError, match="dicts.json"):
        vg150.load_vg150_dicts(p)


# ------------------------------------------------------------------ bad input

def _rewrite(d, key, value):
    with h5py.File(d / vg150.H5_NAME, "r+") as f:
        del f[key]
        if value is not None:
            f[key] = value


def _expect_error(d, *fields, split="train"):
    with pytest.raises(DataFormatError) as info:
        vg150.load_vg150(d, split, num_val_im=0)
    msg = str(info.value)
    for field in fields:
        assert field in msg, msg
    return info.value


def test_missing_files(written):
    d, _ = written
    os.remove(d / vg150.IMAGE_DATA_NAME)
    err = _expect_error(d, vg150.IMAGE_DATA_NAME, "no such file")
    assert err.file.endswith(vg150.IMAGE_DATA_NAME)
    os.remove(d / vg150.H5_NAME)
    _expect_error(d, vg150.H5_NAME, "no such file")


def test_truncated_h5(written):
    d, _ = written
    data = (d / vg150.H5_NAME).read_bytes()
    (d / vg150.H5_NAME).write_bytes(data[: len(data) // 2])
    _expect_error(d, vg150.H5_NAME, "HDF5")


def test_missing_key(written):
    d, _ = written
    _rewrite(d, "img_to_last_rel", None)
    _expect_error(d, vg150.H5_NAME, "'img_to_last_rel'", "missing")


def test_float_boxes_rejected(written):
    d, _ = written
    with h5py.File(d / vg150.H5_NAME, "r") as f:
        boxes = f["boxes_1024"][:].astype(np.float32)
    _rewrite(d, "boxes_1024", boxes)
    _expect_error(d, "'boxes_1024'", "integer dtype", "float32")


def test_wrong_shape_rejected(written):
    d, _ = written
    with h5py.File(d / vg150.H5_NAME, "r") as f:
        rel = f["relationships"][:]
    _rewrite(d, "relationships", rel[:, :1])
    _expect_error(d, "'relationships'", "shape")


def test_relation_outside_its_image(written):
    d, _ = written
    with h5py.File(d / vg150.H5_NAME, "r") as f:
        rel = f["relationships"][:]
        last = f["img_to_last_box"][:]
    rel[0, 1] = last[0] + 1  # first box of the next image: a valid global index, wrong image
    _rewrite(d, "relationships", rel)
    _expect_error(d, "'relationships'", "relation 0", "of image index 0", "image id 10")


def test_nonpositive_box_size(written):
    d, _ = written
    with h5py.File(d / vg150.H5_NAME, "r") as f:
        boxes = f["boxes_1024"][:]
    boxes[3, 2] = -4  # w < 0, i.e. x2 < x1
    _rewrite(d, "boxes_1024", boxes)
    _expect_error(d, "'boxes_1024'", "object 3")


def test_box_outside_image(written):
    d, _ = written
    with h5py.File(d / vg150.H5_NAME, "r") as f:
        boxes = f["boxes_1024"][:]
    # x1 = y1 = 995 at 1024 scale: beyond the short side of every (non-square) test image
    boxes[0] = [1000, 1000, 10, 10]
    _rewrite(d, "boxes_1024", boxes)
    _expect_error(d, vg150.H5_NAME, "'boxes_1024'", "entirely outside", "object 0 of image 0",
                  split="val")
    got = vg150.load_vg150(d, "val", num_val_im=0, outside_boxes="clip")
    w, h = got[0].width, got[0].height
    b = got[0].boxes[0]  # clipped onto the border: inside the image and degenerate
    assert 0 <= b[0] <= b[2] <= w and 0 <= b[1] <= b[3] <= h
    assert b[0] == b[2] == w or b[1] == b[3] == h


def test_overhanging_box_is_clipped(tmp_path, capsys):
    recs = [_record(1, "train", [[0, 0, 4, 4], [200, 150, 256, 192]], [1, 2], [[0, 1, 1]])]
    vg150.write_vg150(tmp_path, recs, LABELS, PREDS)
    info = json.loads((tmp_path / vg150.IMAGE_DATA_NAME).read_text())
    info[0]["height"] = 180  # long side unchanged; box 1 now overhangs the bottom by 12 px
    (tmp_path / vg150.IMAGE_DATA_NAME).write_text(json.dumps(info))
    got = vg150.load_vg150(tmp_path, "train", num_val_im=0)
    np.testing.assert_array_equal(got[0].boxes, [[0, 0, 4, 4], [200, 150, 256, 180]])
    assert "clipped 1 boxes" in capsys.readouterr().out


def test_relations_of_image_without_boxes(written):
    d, _ = written
    with h5py.File(d / vg150.H5_NAME, "r") as f:
        first, last = f["img_to_first_box"][:], f["img_to_last_box"][:]
    first[0] = last[0] = -1
    _rewrite(d, "img_to_first_box", first)
    _rewrite(d, "img_to_last_box", last)
    _expect_error(d, "'relationships'", "of image index 0")


def test_bad_ranges_and_labels(written):
    d, _ = written
    with h5py.File(d / vg150.H5_NAME, "r") as f:
        last, labels = f["img_to_last_box"][:], f["labels"][:]
    bad_last = last.copy()
    bad_last[-1] = 10_000
    _rewrite(d, "img_to_last_box", bad_last)
    _expect_error(d, "img_to_first_box/img_to_last_box", "image 11")
    _rewrite(d, "img_to_last_box", last)
    labels[2, 0] = len(LABELS) + 1  # outside the dictionary
    _rewrite(d, "labels", labels)
    _expect_error(d, "'labels'", f"[1, {len(LABELS)}]")


def test_image_data_mismatch_and_corrupt_ids(written):
    d, recs = written
    info = json.loads((d / vg150.IMAGE_DATA_NAME).read_text())
    (d / vg150.IMAGE_DATA_NAME).write_text(json.dumps(info[:-1]))
    _expect_error(d, vg150.IMAGE_DATA_NAME, "entries")
    # the real list carries 4 corrupt images that the h5 left out: they are skipped
    extra = [dict(info[0], image_id=i) for i in vg150.CORRUPT_IMAGE_IDS]
    (d / vg150.IMAGE_DATA_NAME).write_text(json.dumps(extra[:2] + info + extra[2:]))
    got = vg150.load_vg150(d, "test")
    _assert_same(got, [r for r in recs if r.split == "test"])
    del info[3]["width"]
    (d / vg150.IMAGE_DATA_NAME).write_text(json.dumps(info))
    _expect_error(d, vg150.IMAGE_DATA_NAME, "[3].width'", "image id 31")


def test_sgb_file_names_are_accepted(written):
    d, recs = written
    os.rename(d / vg150.H5_NAME, d / vg150.SGB_H5_NAME)
    os.rename(d / vg150.DICTS_NAME, d / vg150.SGB_DICTS_NAME)
    with h5py.File(d / vg150.SGB_H5_NAME, "r+") as f:  # SGB's extra dataset is ignored
        f["attributes"] = np.zeros((f["labels"].shape[0], 10), np.int64)
    _assert_same(vg150.load_vg150(d, "test"), [r for r in recs if r.split == "test"])


def test_writer_leaves_no_temporary_files(written):
    d, _ = written
    assert sorted(os.listdir(d)) == sorted([vg150.H5_NAME, vg150.DICTS_NAME,
                                            vg150.IMAGE_DATA_NAME])


def test_writer_rejects_inconsistent_records(tmp_path):
    bad_box = _record(1, "train", [[0, 0, 300, 10]], [1], np.zeros((0, 3)))  # x2 > width 256
    with pytest.raises(ValueError, match="0 <= x1 <= x2 <= width"):
        vg150.write_vg150(tmp_path, [bad_box], LABELS, PREDS)
    bad_rel = _record(1, "train", [[0, 0, 3, 10]], [1], [[0, 1, 1]])
    with pytest.raises(ValueError, match="relations out of range"):
        vg150.write_vg150(tmp_path, [bad_rel], LABELS, PREDS)
    assert not os.listdir(tmp_path)  # nothing half-written
