"""The bad-data sweep (issue 20, point 4): every reader (VG150 h5 + JSON, VG-MSDN, VRD, the TFDS
build) fed each kind of damage a real download can have. Each case must end in either a
`DataFormatError` that names the file, the field and (for per-image damage) the image id, or a
documented skip whose count is printed; and whatever loads must decode end to end (no crash
later in the loader or in jit, no silently wrong example).

Every case starts from a fresh copy of one small, valid directory written by the project's
writers (tests/sgg_data_fixtures.py), damages one thing, and loads it the way training does
(`prepare_dataset`, then every example of every split through the input pipeline's decoding).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable

import grain
import h5py
import numpy as np
import pytest

from data_pipelines.dataset import DataConfig, prepare_dataset
from data_pipelines.errors import DataFormatError
from data_pipelines.pipeline import decode_resize
from data_pipelines.vrd import load_vrd
from sgg_data_fixtures import LABELS, PREDICATES, make_vg150_dir

NUM_VAL, NUM_TRAIN, NUM_TEST = 2, 5, 3


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A valid VG150 directory (VG_100K/ images) with VG-MSDN json in msdn/, and its records."""
    root = tmp_path_factory.mktemp("pristine")
    recs = make_vg150_dir(str(root), num_val=NUM_VAL, num_train=NUM_TRAIN, num_test=NUM_TEST)
    return root, recs


@dataclasses.dataclass
class Case:
    """One kind of damage. `damage(root, recs)` edits the copy and returns the image id it hit
    (None for damage to a whole file). `file`, `field`: what the error must name (file: a path
    suffix); `skip`: instead of an error, the printed count the load must report."""

    name: str
    source: str  # "vg150" or "vg_msdn"
    damage: Callable[..., int | None]
    file: str = ""
    field: str = ""
    skip: str = ""


# ------------------------------------------------------------------------------ VG150 damage

def _truncate(path: str, keep: float = 0.5) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])


def _edit_h5(root, **arrays) -> None:
    """Replaces datasets of VG-SGG.h5 (dtype and shape as given)."""
    with h5py.File(os.path.join(root, "VG-SGG.h5"), "r+") as f:
        for key, value in arrays.items():
            del f[key]
            f[key] = value


def _h5(root, key: str) -> np.ndarray:
    with h5py.File(os.path.join(root, "VG-SGG.h5"), "r") as f:
        return f[key][()]


def _train_image(recs, k: int = 1):
    """(h5 image index, record) of the k-th training image (the h5 holds val, train, test)."""
    return NUM_VAL + k, recs["train"][k]


def _first_object(root, image_index: int) -> int:
    return int(_h5(root, "img_to_first_box")[image_index])


def vg150_label_outside_vocabulary(root, recs):
    i, rec = _train_image(recs)
    labels = _h5(root, "labels")
    labels[_first_object(root, i) + 1] = len(LABELS)  # one past the last class
    _edit_h5(root, labels=labels)
    return rec.image_id


def vg150_predicate_outside_vocabulary(root, recs):
    i, rec = _train_image(recs, 2)
    preds = _h5(root, "predicates")
    preds[int(_h5(root, "img_to_first_rel")[i])] = len(PREDICATES) + 3
    _edit_h5(root, predicates=preds)
    return rec.image_id


def vg150_relation_to_missing_object(root, recs):
    i, rec = _train_image(recs, 3)
    rels = _h5(root, "relationships")
    rels[int(_h5(root, "img_to_first_rel")[i]), 1] = int(_h5(root, "img_to_last_box")[i]) + 1
    _edit_h5(root, relationships=rels)
    return rec.image_id


def vg150_zero_area_box(root, recs):
    i, rec = _train_image(recs)
    boxes = _h5(root, "boxes_1024")
    boxes[_first_object(root, i), 2] = 0  # w = 0
    _edit_h5(root, boxes_1024=boxes)
    return rec.image_id


def vg150_box_outside_image(root, recs):
    i, rec = _train_image(recs, 2)
    boxes = _h5(root, "boxes_1024")
    boxes[_first_object(root, i), :2] = [1030, 1030]  # past the far corner at any aspect
    boxes[_first_object(root, i), 2:] = [2, 2]
    _edit_h5(root, boxes_1024=boxes)
    return rec.image_id


def vg150_float_boxes(root, recs):
    _edit_h5(root, boxes_1024=_h5(root, "boxes_1024").astype(np.float32))


def vg150_boxes_wrong_shape(root, recs):
    _edit_h5(root, boxes_1024=_h5(root, "boxes_1024")[:, :3])


def vg150_labels_fewer_than_boxes(root, recs):
    _edit_h5(root, labels=_h5(root, "labels")[:-2])


def vg150_truncated_h5(root, recs):
    _truncate(os.path.join(root, "VG-SGG.h5"))


def vg150_truncated_dicts(root, recs):
    _truncate(os.path.join(root, "VG-SGG-dicts.json"))


def vg150_truncated_image_data(root, recs):
    _truncate(os.path.join(root, "image_data.json"))


def _edit_image_data(root, index: int, **values) -> None:
    path = os.path.join(root, "image_data.json")
    data = json.load(open(path))
    data[index].update(values)
    with open(path, "w") as f:
        json.dump(data, f)


def vg150_image_data_wrong_type(root, recs):
    i, rec = _train_image(recs)
    _edit_image_data(root, i, width="wide")
    return None  # the column is checked as a whole: the error names the field, not an image


def vg150_image_data_zero_size(root, recs):
    i, rec = _train_image(recs, 3)
    _edit_image_data(root, i, height=0)
    return rec.image_id


def vg150_truncated_image(root, recs):
    _, rec = _train_image(recs, 2)
    _truncate(os.path.join(root, "VG_100K", f"{rec.image_id}.jpg"), 0.6)
    return rec.image_id


def vg150_not_an_image(root, recs):
    rec = recs["test"][0]
    with open(os.path.join(root, "VG_100K", f"{rec.image_id}.jpg"), "wb") as f:
        f.write(b"<html>404 Not Found</html>")
    return rec.image_id


def vg150_missing_image(root, recs):
    rec = recs["val"][1]
    os.remove(os.path.join(root, "VG_100K", f"{rec.image_id}.jpg"))
    return rec.image_id


def vg150_image_without_boxes(root, recs):
    """An image whose objects (and so relations) are all gone, as VG's own empty images: a
    counted skip, as neural-motifs drops them."""
    i, _ = _train_image(recs, 4)  # the last training image: its rows end the train block
    first_box, last_box = _h5(root, "img_to_first_box"), _h5(root, "img_to_last_box")
    first_rel, last_rel = _h5(root, "img_to_first_rel"), _h5(root, "img_to_last_rel")
    nb, nr = last_box[i] - first_box[i] + 1, last_rel[i] - first_rel[i] + 1
    keep_box = np.ones(_h5(root, "labels").shape[0], bool)
    keep_box[first_box[i]:last_box[i] + 1] = False
    keep_rel = np.ones(_h5(root, "predicates").shape[0], bool)
    keep_rel[first_rel[i]:last_rel[i] + 1] = False
    rels = _h5(root, "relationships")[keep_rel]
    rels = np.where(rels > last_box[i], rels - nb, rels)
    index = np.arange(first_box.size)

    def shift(a: np.ndarray, n: int) -> np.ndarray:
        out = np.where(index > i, a - n, a)
        out[i] = -1
        return out.astype(a.dtype)

    _edit_h5(root,
             labels=_h5(root, "labels")[keep_box], boxes_1024=_h5(root, "boxes_1024")[keep_box],
             boxes_512=_h5(root, "boxes_512")[keep_box], relationships=rels,
             predicates=_h5(root, "predicates")[keep_rel],
             img_to_first_box=shift(first_box, nb), img_to_last_box=shift(last_box, nb),
             img_to_first_rel=shift(first_rel, nr), img_to_last_rel=shift(last_rel, nr))
    return None


# ---------------------------------------------------------------------------- VG-MSDN damage

def _edit_msdn(root, name: str, edit: Callable[[list], int]) -> int:
    path = os.path.join(root, "msdn", name)
    data = json.load(open(path))
    image_id = edit(data)
    with open(path, "w") as f:
        json.dump(data, f)
    return image_id


def _msdn_train_entry(data: list, k: int = 1) -> dict:
    return data[NUM_VAL + k]


def msdn_unknown_class(root, recs):
    def edit(data):
        e = _msdn_train_entry(data)
        e["objects"][0]["class"] = "unicorn"
        return e["id"]
    return _edit_msdn(root, "train.json", edit)


def msdn_unknown_predicate(root, recs):
    def edit(data):
        e = data[1]
        e["relationships"][0]["predicate"] = "eats"
        return e["id"]
    return _edit_msdn(root, "test.json", edit)


def msdn_relation_to_missing_object(root, recs):
    def edit(data):
        e = _msdn_train_entry(data, 2)
        e["relationships"][-1]["obj_id"] = len(e["objects"])
        return e["id"]
    return _edit_msdn(root, "train.json", edit)


def msdn_box_outside_image(root, recs):
    def edit(data):
        e = _msdn_train_entry(data, 3)
        e["objects"][1]["box"] = [e["width"] + 5, 0, e["width"] + 9, 4]
        return e["id"]
    return _edit_msdn(root, "train.json", edit)


def msdn_zero_area_box(root, recs):
    def edit(data):
        e = _msdn_train_entry(data)
        x1, y1, _, y2 = e["objects"][0]["box"]
        e["objects"][0]["box"] = [x1, y1, x1, y2]
        return e["id"]
    return _edit_msdn(root, "train.json", edit)


def msdn_zero_area_region(root, recs):
    def edit(data):
        e = next(e for e in data[NUM_VAL:] if e["regions"])
        x1, y1, x2, _ = e["regions"][0]["box"]
        e["regions"][0]["box"] = [x1, y1, x2, y1]
        return e["id"]
    return _edit_msdn(root, "train.json", edit)


def msdn_box_wrong_shape(root, recs):
    def edit(data):
        e = _msdn_train_entry(data, 4)
        e["objects"][0]["box"] = e["objects"][0]["box"][:3]
        return e["id"]
    return _edit_msdn(root, "train.json", edit)


def msdn_box_not_numbers(root, recs):
    def edit(data):
        e = data[0]
        e["objects"][0]["box"] = ["a", "b", "c", "d"]
        return e["id"]
    return _edit_msdn(root, "test.json", edit)


def msdn_relation_index_not_an_integer(root, recs):
    def edit(data):
        e = _msdn_train_entry(data)
        e["relationships"][0]["sub_id"] = 0.5
        return e["id"]
    return _edit_msdn(root, "train.json", edit)


def msdn_missing_objects_key(root, recs):
    def edit(data):
        e = _msdn_train_entry(data, 2)
        del e["objects"]
        return e["id"]
    return _edit_msdn(root, "train.json", edit)


def msdn_truncated_json(root, recs):
    _truncate(os.path.join(root, "msdn", "train.json"))


def msdn_truncated_categories(root, recs):
    _truncate(os.path.join(root, "msdn", "categories.json"))


def msdn_truncated_image(root, recs):
    rec = recs["test"][1]
    _truncate(os.path.join(root, "VG_100K", f"{rec.image_id}.jpg"), 0.5)
    return rec.image_id


def msdn_missing_image(root, recs):
    _, rec = _train_image(recs, 3)
    os.remove(os.path.join(root, "VG_100K", f"{rec.image_id}.jpg"))
    return rec.image_id


def msdn_image_without_objects(root, recs):
    """Objects and relations removed from one image: a counted skip, as for VG150."""
    def edit(data):
        e = _msdn_train_entry(data, 1)
        e["objects"], e["relationships"], e["regions"] = [], [], []
        return None
    return _edit_msdn(root, "train.json", edit)


CASES = [
    Case("vg150 truncated h5", "vg150", vg150_truncated_h5, "VG-SGG.h5"),
    Case("vg150 truncated dicts json", "vg150", vg150_truncated_dicts, "VG-SGG-dicts.json"),
    Case("vg150 truncated image_data json", "vg150", vg150_truncated_image_data,
         "image_data.json"),
    Case("vg150 float boxes", "vg150", vg150_float_boxes, "VG-SGG.h5", "boxes_1024"),
    Case("vg150 boxes of shape [N, 3]", "vg150", vg150_boxes_wrong_shape, "VG-SGG.h5",
         "boxes_1024"),
    Case("vg150 fewer labels than boxes", "vg150", vg150_labels_fewer_than_boxes, "VG-SGG.h5",
         "boxes_1024"),
    Case("vg150 label outside the vocabulary", "vg150", vg150_label_outside_vocabulary,
         "VG-SGG.h5", "labels"),
    Case("vg150 predicate outside the vocabulary", "vg150",
         vg150_predicate_outside_vocabulary, "VG-SGG.h5", "predicates"),
    Case("vg150 relation to a missing object", "vg150", vg150_relation_to_missing_object,
         "VG-SGG.h5", "relationships"),
    Case("vg150 zero-area box", "vg150", vg150_zero_area_box, "VG-SGG.h5", "boxes_1024"),
    Case("vg150 box outside its image", "vg150", vg150_box_outside_image, "VG-SGG.h5",
         "boxes_1024"),
    Case("vg150 non-numeric image width", "vg150", vg150_image_data_wrong_type,
         "image_data.json", "width"),
    Case("vg150 zero image height", "vg150", vg150_image_data_zero_size, "image_data.json",
         "height"),
    Case("vg150 truncated jpeg", "vg150", vg150_truncated_image, ".jpg", "image"),
    Case("vg150 html saved as jpeg", "vg150", vg150_not_an_image, ".jpg", "image"),
    Case("vg150 missing image file", "vg150", vg150_missing_image, ".jpg", "image"),
    Case("vg150 image without boxes", "vg150", vg150_image_without_boxes,
         skip="dropped 1 images with no boxes"),
    Case("msdn truncated json", "vg_msdn", msdn_truncated_json, "train.json"),
    Case("msdn truncated categories", "vg_msdn", msdn_truncated_categories, "categories.json"),
    Case("msdn unknown class", "vg_msdn", msdn_unknown_class, "train.json", "objects.class"),
    Case("msdn unknown predicate", "vg_msdn", msdn_unknown_predicate, "test.json",
         "relationships.predicate"),
    Case("msdn relation to a missing object", "vg_msdn", msdn_relation_to_missing_object,
         "train.json", "relationships"),
    Case("msdn box outside its image", "vg_msdn", msdn_box_outside_image, "train.json",
         "objects.box"),
    Case("msdn zero-area box", "vg_msdn", msdn_zero_area_box, "train.json", "objects.box"),
    Case("msdn zero-area region", "vg_msdn", msdn_zero_area_region, "train.json",
         "regions.box"),
    Case("msdn box of 3 numbers", "vg_msdn", msdn_box_wrong_shape, "train.json", "objects.box"),
    Case("msdn box of strings", "vg_msdn", msdn_box_not_numbers, "test.json", "objects.box"),
    Case("msdn fractional relation index", "vg_msdn", msdn_relation_index_not_an_integer,
         "train.json", "sub_id"),
    Case("msdn entry without objects", "vg_msdn", msdn_missing_objects_key, "train.json",
         "objects"),
    Case("msdn truncated jpeg", "vg_msdn", msdn_truncated_image, ".jpg", "image"),
    Case("msdn missing image file", "vg_msdn", msdn_missing_image, "train.json", "path"),
    Case("msdn image without objects", "vg_msdn", msdn_image_without_objects,
         skip="dropped 1 images with no object boxes"),
]


def _load_everything(root, source: str, cache: str) -> int:
    """Loads the directory as training does and decodes every example of every split; returns
    how many examples were read."""
    config = DataConfig(name=source, data_dir=str(root) if source == "vg150"
                        else os.path.join(root, "msdn"),
                        image_dir="" if source == "vg150" else os.path.join(root, "VG_100K"),
                        cache_dir=cache, num_val_im=NUM_VAL)
    data = prepare_dataset(config, progress=False)
    n = 0
    for split, src in data.sources.items():
        for i in range(len(src)):
            decode_resize(src[i]["image"], 32)
            n += 1
    return n


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_data_is_named_or_counted(case, pristine, tmp_path, capsys):
    src_root, recs = pristine
    root = tmp_path / "raw"
    shutil.copytree(src_root, root)
    image_id = case.damage(str(root), recs)
    if case.skip:
        n = _load_everything(root, case.source, str(tmp_path / "cache"))
        assert case.skip in capsys.readouterr().out
        assert n == NUM_VAL + NUM_TRAIN + NUM_TEST - 1
        return
    with pytest.raises(DataFormatError) as info:
        _load_everything(root, case.source, str(tmp_path / "cache"))
    err, message = info.value, str(info.value)
    assert err.file.endswith(case.file), message
    assert os.path.isabs(err.file) or err.file.startswith(str(root)), message
    if case.field:
        assert case.field in (err.field or ""), message
    if image_id is not None:
        assert err.image_id == image_id and f"image id {image_id}" in message, message
    assert "\n" not in message and "Traceback" not in message


# ------------------------------------------------------------------------------ VRD (reader only)

VRD_ENTRY = {"path": "3.jpg", "id": 3, "width": 64, "height": 48,
             "objects": [{"bbox": [1, 2, 30, 40], "class": 1},
                         {"bbox": [5, 5, 60, 20], "class": 2}],
             "relationships": [{"sub_id": 0, "obj_id": 1, "predicate": 2}]}


def _vrd(tmp_path, edit: Callable[[dict], None]):
    second = json.loads(json.dumps(VRD_ENTRY))
    second["id"] = 7
    edit(second)
    (tmp_path / "objects.json").write_text(json.dumps(LABELS[1:]))
    (tmp_path / "predicates.json").write_text(json.dumps(PREDICATES[1:]))
    (tmp_path / "train.json").write_text(json.dumps([VRD_ENTRY, second]))
    return load_vrd(tmp_path / "train.json", tmp_path / "objects.json",
                    tmp_path / "predicates.json")


VRD_CASES = {
    "class outside the vocabulary": (lambda e: e["objects"][0].update({"class": 99}),
                                     "objects.class"),
    "class zero (0-based file)": (lambda e: e["objects"][1].update({"class": 0}),
                                  "objects.class"),
    "predicate outside the vocabulary": (
        lambda e: e["relationships"][0].update({"predicate": 99}), "relationships.predicate"),
    "relation to a missing object": (lambda e: e["relationships"][0].update({"obj_id": 2}),
                                     "relationships"),
    "negative relation index": (lambda e: e["relationships"][0].update({"sub_id": -1}),
                                "relationships"),
    "box outside its image": (lambda e: e["objects"][1].update({"bbox": [70, 50, 80, 60]}),
                              "objects.bbox"),
    "zero-area box": (lambda e: e["objects"][0].update({"bbox": [1, 2, 30, 2]}),
                      "objects.bbox"),
    "inverted box": (lambda e: e["objects"][0].update({"bbox": [30, 2, 1, 40]}),
                     "objects.bbox"),
    "box of 5 numbers": (lambda e: e["objects"][0].update({"bbox": [1, 2, 3, 4, 5]}),
                         "objects.bbox"),
    "NaN in a box": (lambda e: e["objects"][0].update({"bbox": [1, 2, float("nan"), 4]}),
                     "objects.bbox"),
    "negative width": (lambda e: e.update({"width": -64}), "width"),
    "no relationships key": (lambda e: e.pop("relationships"), "relationships"),
}


@pytest.mark.parametrize("name", list(VRD_CASES))
def test_bad_vrd_entries_are_named(name, tmp_path):
    edit, field = VRD_CASES[name]
    with pytest.raises(DataFormatError) as info:
        _vrd(tmp_path, edit)
    err = info.value
    assert err.file == str(tmp_path / "train.json") and field in err.field, str(err)
    assert err.image_id == 7 and "image id 7" in str(err), str(err)


def test_vrd_truncated_file_and_image_without_objects(tmp_path, capsys):
    assert len(_vrd(tmp_path, lambda e: e.update(objects=[], relationships=[]))) == 1
    assert "dropped 1 images with no object boxes" in capsys.readouterr().out
    _truncate(str(tmp_path / "train.json"))
    with pytest.raises(DataFormatError, match="train.json: expected valid JSON"):
        load_vrd(tmp_path / "train.json", tmp_path / "objects.json",
                 tmp_path / "predicates.json")


# ------------------------------------------------------------------ the TFDS build, damaged later

@pytest.fixture(scope="module")
def build(pristine, tmp_path_factory):
    """A finished build of the pristine directory, to be copied and damaged."""
    from data_pipelines import tfds_sgg
    tfds_dir = tmp_path_factory.mktemp("build")
    builder = tfds_sgg.build_dataset(pristine[0], tfds_dir, tfds_sgg.make_config(num_val_im=2))
    return str(tfds_dir), os.path.relpath(builder.data_dir, tfds_dir), sorted(
        os.listdir(builder.data_dir))


BUILD_FILES = ["dataset_info.json", "features.json", "sgg_metadata.json", "sgg_files.json",
               "statistics.json", "statistics.npz",
               "scene_graph_dataset-train.array_record-00000-of-00001"]


@pytest.mark.parametrize("how", ["truncated", "deleted"])
@pytest.mark.parametrize("name", BUILD_FILES)
def test_a_damaged_build_is_named_with_how_to_rebuild(name, how, build, pristine, tmp_path):
    from data_pipelines import tfds_sgg
    tfds_dir, rel, files = build
    assert name in files  # the list above must follow what a build holds
    copy = tmp_path / "build"
    shutil.copytree(tfds_dir, copy)
    data_dir = os.path.join(copy, rel)
    if how == "deleted":
        if name in ("dataset_info.json", "sgg_metadata.json"):
            pytest.skip("without it the build counts as unfinished and is built again")
        os.remove(os.path.join(data_dir, name))
        if name == "sgg_files.json":  # a build from before the list existed: listed anew
            tfds_sgg.build_dataset(pristine[0], copy, tfds_sgg.make_config(num_val_im=2))
            assert json.load(open(os.path.join(data_dir, name))) == json.load(
                open(os.path.join(tfds_dir, rel, name)))
            return
    else:
        _truncate(os.path.join(data_dir, name))
    with pytest.raises(DataFormatError) as info:
        builder = tfds_sgg.build_dataset(pristine[0], copy, tfds_sgg.make_config(num_val_im=2))
        for src in builder.as_data_source().values():  # what a damage that slipped by breaks
            [src[i] for i in range(len(src))]
    err = info.value
    assert err.file == os.path.join(data_dir, name), str(err)
    assert f"delete {data_dir} to rebuild it" in str(err)


def test_undecodable_stored_bytes_name_the_image_in_the_loader(build, tmp_path):
    """Image bytes damaged inside a build (its files keep their sizes) fail in the loader as a
    DataFormatError naming the image, through grain's read threads."""
    from data_pipelines import tfds_sgg
    from data_pipelines.pipeline import InputConfig, make_loader
    tfds_dir, _, _ = build
    source = tfds_sgg.get_builder(tfds_dir, tfds_sgg.make_config(num_val_im=2)
                                  ).as_data_source()["train"]
    examples = [dict(source[i]) for i in range(len(source))]
    bad = examples[2]
    bad["image"] = bad["image"][:len(bad["image"]) // 3]
    config = InputConfig(batch_size=len(examples), image_size=32, worker_count=0,
                         flip_prob=0.0)
    one_shard = grain.sharding.ShardOptions(0, 1)
    for split in ("train", "test"):  # grain's DataLoader, and the evaluation loader
        with pytest.raises(DataFormatError) as info:
            next(iter(make_loader(examples, config, split, shard_options=one_shard)))
        assert info.value.image_id == int(bad["image_id"]) and info.value.field == "image"
        assert info.value.file == bad["file_name"].decode() and "delete the build" in str(
            info.value)


def test_the_cli_reports_bad_data_in_one_line(pristine, tmp_path):
    """Through `python -m sgg_jax.main`: one `error:` line naming file, image and field, exit 2,
    no traceback, before anything trains."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = tmp_path / "raw"
    shutil.copytree(pristine[0], root)
    image_id = vg150_relation_to_missing_object(str(root), pristine[1])
    out = subprocess.run(
        [sys.executable, "-m", "sgg_jax.main", "--config", "configs/imp.py:tiny",
         "--workdir", str(tmp_path / "run"), "--config.data.name=vg150",
         f"--config.data.data_dir={root}", "--config.data.num_val_im=2",
         f"--config.data.cache_dir={tmp_path / 'cache'}"],
        cwd=repo, capture_output=True, text=True, timeout=300)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-2000:]
    assert errors[0].startswith(f"error: {root / 'VG-SGG.h5'}: image id {image_id}: field "
                                "'relationships'"), errors[0]
    assert "Traceback" not in out.stderr
