"""TFDS builder: records -> array_record -> data source round trip, statistics and metadata."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import tfds_sgg
from data_pipelines.statistics import DatasetStatistics, compute_statistics
from sgg_data_fixtures import LABELS, PREDICATES, make_vg150_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    recs = make_vg150_dir(str(root / "raw"), num_val=2, num_train=6, num_test=3)
    builder = tfds_sgg.build_dataset(root / "raw", root / "tfds",
                                     tfds_sgg.make_config(num_val_im=2))
    return root, recs, builder


# Run in a fresh interpreter: any `import tensorflow` (even one guarded by try / except) is
# recorded and fails; probes that only ask whether TensorFlow exists (importlib.util.find_spec,
# as etils does) are told it does not. Then a dataset is built, read and decoded.
NO_TENSORFLOW_SCRIPT = r"""
import importlib.abc, json, sys, traceback

attempts = []


class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] != "tensorflow":
            return None
        if any(f.name == "_find_and_load" for f in traceback.extract_stack()):  # an import
            attempts.append("".join(traceback.format_stack(limit=6)))
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)",
                                      name=name)
        return None  # an existence probe: absent


sys.meta_path.insert(0, NoTensorFlow())
{probe}
from data_pipelines import tfds_sgg
from sgg_data_fixtures import make_vg150_dir

root = sys.argv[1]
make_vg150_dir(root + "/raw", num_val=1, num_train=3, num_test=1)
builder = tfds_sgg.build_dataset(root + "/raw", root + "/tfds",
                                 tfds_sgg.make_config(num_val_im=1))
example = builder.as_data_source()["train"][0]
print(json.dumps(dict(attempts=attempts, file_format=str(builder.info.file_format),
                      image_id=int(example["image_id"]), boxes=len(example["boxes"]),
                      tf_modules=sorted(m for m in sys.modules
                                        if m.split(".")[0] == "tensorflow"))))
"""


def _run_without_tensorflow(tmp_path, probe: str = "") -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
    script = NO_TENSORFLOW_SCRIPT.replace("{probe}", probe)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_build_and_read_never_import_tensorflow(built, tmp_path):
    """The builder needs no TensorFlow: building, reading and decoding a dataset with every
    `import tensorflow` blocked and recorded succeeds, attempts none, and stores array_record."""
    result = _run_without_tensorflow(tmp_path / "a")
    assert result["attempts"] == [] and result["tf_modules"] == []
    assert result["file_format"] == "FileFormat.ARRAY_RECORD"
    assert result["boxes"] > 0
    # The check itself works: a guarded import is caught and recorded.
    caught = _run_without_tensorflow(tmp_path / "b", probe=(
        "try:\n    import tensorflow\nexcept ImportError:\n    pass"))
    assert len(caught["attempts"]) == 1 and caught["tf_modules"] == []
    # The module's own build: one array_record shard file per split, and no TensorFlow here.
    _, _, builder = built
    shards = sorted(os.listdir(builder.data_dir))
    assert [f.split("-")[1] for f in shards if ".array_record-" in f] == [
        "test.array_record", "train.array_record", "val.array_record"], shards
    assert not any("tfrecord" in f for f in shards)
    assert "tensorflow" not in sys.modules


def test_round_trip_every_split(built):
    _, recs, builder = built
    meta = tfds_sgg.read_metadata(builder)
    idx_to_word = meta["idx_to_word"]
    sources = builder.as_data_source()
    for split in ("train", "val", "test"):
        src = sources[split]
        assert len(src) == len(recs[split])
        for i, r in enumerate(recs[split]):  # disable_shuffling keeps the reader's order
            ex = src[i]
            assert ex["image_id"] == r.image_id
            assert (ex["width"], ex["height"]) == (r.width, r.height)
            with open(r.image_path, "rb") as f:
                assert ex["image"] == f.read()
            assert ex["file_name"] == os.path.basename(r.image_path).encode()
            np.testing.assert_array_equal(ex["boxes"], r.boxes)
            np.testing.assert_array_equal(ex["labels"], r.labels)
            np.testing.assert_array_equal(ex["relations"], r.relations)
            np.testing.assert_array_equal(ex["region_boxes"], r.region_boxes.reshape(-1, 4))
            words = [[idx_to_word[t] for t in row if t > 2] for row in ex["region_tokens"]]
            if split == "train":  # vocabulary is built from training phrases
                assert words == r.region_phrases
            assert all(row[0] == 1 for row in ex["region_tokens"])
            assert [int((row == 2).sum()) for row in ex["region_tokens"]] == [1] * len(words)


def test_statistics_and_metadata_stored(built):
    _, recs, builder = built
    meta = tfds_sgg.read_metadata(builder)
    assert meta["idx_to_label"] == LABELS and meta["idx_to_predicate"] == PREDICATES
    assert meta["split_sizes"] == {"train": 6, "val": 2, "test": 3}
    stats = DatasetStatistics.load(builder.data_dir)
    ref = compute_statistics(recs["train"], len(LABELS) - 1, len(PREDICATES) - 1)
    np.testing.assert_array_equal(stats.fg_matrix, ref.fg_matrix)
    np.testing.assert_array_equal(stats.bg_matrix, ref.bg_matrix)
    np.testing.assert_array_equal(stats.object_counts, ref.object_counts)

    def trip(rs):
        return {(int(r.labels[s]), int(p), int(r.labels[o])) for r in rs for s, o, p in
                r.relations}
    expected = sorted(map(list, trip(recs["test"]) - trip(recs["train"])))
    assert meta["zero_shot_triplets"] == expected and meta["zero_shot_source"] != ""


def test_existing_build_is_reused_and_guarded(built, tmp_path):
    root, _, builder = built
    mtime = os.path.getmtime(os.path.join(builder.data_dir, "dataset_info.json"))
    again = tfds_sgg.build_dataset(root / "raw", root / "tfds", tfds_sgg.make_config(num_val_im=2))
    assert os.path.getmtime(os.path.join(again.data_dir, "dataset_info.json")) == mtime
    other = tmp_path / "other"
    make_vg150_dir(str(other), num_val=2, num_train=3, num_test=1, with_msdn=False)
    with pytest.raises(ValueError, match="built from"):
        tfds_sgg.build_dataset(other, root / "tfds", tfds_sgg.make_config(num_val_im=2))


def test_zero_shot_file_and_missing_dir(tmp_path):
    raw = tmp_path / "raw"
    make_vg150_dir(str(raw), num_val=0, num_train=3, num_test=2, with_msdn=False)
    with open(raw / tfds_sgg.ZERO_SHOT_NAME, "w") as f:
        json.dump([[1, 2, 3], [4, 5, 1]], f)
    b = tfds_sgg.build_dataset(raw, tmp_path / "tfds", tfds_sgg.make_config(num_val_im=0))
    meta = tfds_sgg.read_metadata(b)
    assert meta["zero_shot_triplets"] == [[1, 2, 3], [4, 5, 1]]
    assert set(b.as_data_source()) == {"train", "test"}  # the empty val split is left out
    with pytest.raises(ValueError, match="no such directory"):
        tfds_sgg.build_dataset(tmp_path / "nowhere", tmp_path / "tfds2")


def test_encode_phrases_and_vocabulary():
    from data_pipelines.records import SceneGraphRecord
    r = SceneGraphRecord(1, "x.jpg", 4, 4, np.zeros((0, 4)), np.zeros(0), np.zeros((0, 3)),
                         region_phrases=[["a", "b"], ["b"]])
    vocab = tfds_sgg.build_vocabulary([r])
    assert vocab == ["<pad>", "<start>", "<end>", "<unk>", "b", "a"]
    w2i = {w: i for i, w in enumerate(vocab)}
    np.testing.assert_array_equal(tfds_sgg.encode_phrases([["a", "zz"], ["b"]], w2i),
                                  [[1, 5, 3, 2], [1, 4, 2, 0]])


def test_prepare_synthetic_and_cli(tmp_path, capsys):
    from data_pipelines import prepare
    from data_pipelines.dataset import DataConfig, prepare_dataset
    cfg = DataConfig(name="synthetic", cache_dir=str(tmp_path), num_train=10, num_val=3,
                     num_test=5, image_size=128, seed=1)
    ds = prepare_dataset(cfg, progress=False)
    assert os.path.basename(ds.raw_dir) == "synthetic-default-1-10-3-5-128"
    assert ds.num_classes == ds.statistics.num_classes >= 20
    assert ds.num_predicates == ds.statistics.num_predicates >= 15
    assert set(ds.sources) == {"train", "val", "test"} and ds.split_sizes["val"] == 3
    lr = ds.flip_predicate_map()
    assert [tuple(ds.idx_to_predicate[i] for i in p) for p in lr] == [("left of", "right of")]
    with open(os.path.join(ds.raw_dir, tfds_sgg.ZERO_SHOT_NAME)) as f:
        assert ds.zero_shot_triplets.tolist() == json.load(f)["triplets"]
    out = tmp_path / "summary.json"
    rc = prepare.main(["--cache-dir", str(tmp_path), "--num-train", "10", "--num-val", "3",
                       "--num-test", "5", "--image-size", "128", "--seed", "1",
                       "--json", str(out)])
    assert rc == 0 and "left of <-> right of" in capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert summary["split_sizes"] == ds.split_sizes
    assert summary["train_relations"] == ds.statistics.num_relations > 0
    with pytest.raises(ValueError, match="name"):
        prepare_dataset(DataConfig(name="coco"))
    with pytest.raises(ValueError, match="unknown"):
        DataConfig.from_dict({"name": "synthetic", "bogus": 1})


def test_wrong_annotated_size_rescales_boxes(tmp_path):
    from PIL import Image
    raw = tmp_path / "raw"
    recs = make_vg150_dir(str(raw), num_val=0, num_train=3, num_test=1, with_msdn=False)
    r = recs["train"][1]
    Image.new("RGB", (r.width * 2, r.height * 2), (9, 9, 9)).save(r.image_path)
    b = tfds_sgg.build_dataset(raw, tmp_path / "tfds", tfds_sgg.make_config(num_val_im=0))
    ex = b.as_data_source()["train"][1]
    assert ex["image_id"] == r.image_id
    assert (ex["width"], ex["height"]) == (r.width * 2, r.height * 2)
    np.testing.assert_array_equal(ex["boxes"], r.boxes * 2)
    np.testing.assert_array_equal(b.as_data_source()["train"][0]["boxes"], recs["train"][0].boxes)


# --- data.name="vg_msdn": the same data read from its VG-MSDN copy ---------------------------

def _msdn_config(**kw):
    # The fixture's VG-MSDN copy sits in raw/msdn with the images in raw/VG_100K.
    return tfds_sgg.make_config(num_val_im=2, image_dir="../VG_100K", source="vg_msdn", **kw)


def test_vg_msdn_source_matches_the_vg150_build(built):
    """The VG-MSDN json and the VG150 h5 are independent encodings of the fixture's records:
    both builds must hold the same images, graphs, regions, vocabularies and statistics."""
    root, recs, vg150_builder = built
    msdn = tfds_sgg.build_dataset(root / "raw" / "msdn", root / "tfds_msdn", _msdn_config())
    a, b = tfds_sgg.read_metadata(vg150_builder), tfds_sgg.read_metadata(msdn)
    assert b["source"] == "vg_msdn" and a["source"] == "vg150"
    for key in ("idx_to_label", "idx_to_predicate", "idx_to_word", "split_sizes",
                "zero_shot_triplets"):
        assert a[key] == b[key], key
    assert b["idx_to_label"] == LABELS and b["split_sizes"] == {"train": 6, "val": 2, "test": 3}
    src_a, src_b = vg150_builder.as_data_source(), msdn.as_data_source()
    for split in ("train", "val", "test"):
        by_id = {int(src_a[split][i]["image_id"]): src_a[split][i]
                 for i in range(len(src_a[split]))}
        got = [src_b[split][i] for i in range(len(src_b[split]))]
        assert sorted(int(e["image_id"]) for e in got) == sorted(by_id)
        assert [int(e["image_id"]) for e in got] == [r.image_id for r in recs[split]]
        for e in got:
            ref = by_id[int(e["image_id"])]
            assert set(e) == set(ref)
            for k in e:
                np.testing.assert_array_equal(e[k], ref[k], err_msg=f"{split} {k}")
    sa, sb = DatasetStatistics.load(vg150_builder.data_dir), DatasetStatistics.load(msdn.data_dir)
    np.testing.assert_array_equal(sa.fg_matrix, sb.fg_matrix)
    np.testing.assert_array_equal(sa.bg_matrix, sb.bg_matrix)


def test_vg_msdn_source_errors_name_the_file(built, tmp_path):
    import shutil

    from data_pipelines.dataset import DataConfig, prepare_dataset
    from data_pipelines.errors import DataFormatError
    from data_pipelines.vg_msdn import load_vg_msdn_splits
    root = built[0]
    msdn = tmp_path / "msdn"
    shutil.copytree(root / "raw" / "msdn", msdn)
    with pytest.raises(DataFormatError) as e:  # default image_dir: msdn/images, not there
        load_vg_msdn_splits(msdn, num_val_im=2)
    assert e.value.file == str(msdn / "train.json") and e.value.field.startswith("path")
    assert str(msdn / "images" / "1.jpg") in str(e.value)
    os.remove(msdn / "test.json")
    with pytest.raises(DataFormatError, match="test.json"):
        load_vg_msdn_splits(msdn, image_dir=str(root / "raw" / "VG_100K"))
    with pytest.raises(ValueError, match="train.json, test.json, categories.json"):
        prepare_dataset(DataConfig(name="vg_msdn"))
    with pytest.raises(ValueError, match="vg150"):
        _msdn_config(filter_non_overlap=True)


def test_msdn_vg_preset_reads_a_vg_msdn_copy(built, tmp_path):
    """configs/msdn.py:vg (data.name="vg_msdn") -> prepare_dataset -> one training batch."""
    from sgg_jax.training import data as data_lib
    from sgg_jax.training import mesh as mesh_lib
    from training_utils import load_config
    root, recs = built[0], built[1]
    config = load_config("msdn", "vg", **{
        "data.data_dir": str(root / "raw" / "msdn"), "data.image_dir": "../VG_100K",
        "data.cache_dir": str(tmp_path), "input.batch_size": 2,
        "input.worker_count": 0, "input.image_size": 64, "input.flip_prob": 0.0})
    assert config.data.name == "vg_msdn"
    data = data_lib.prepare(config)
    # MSDN trains on all of train.json (the fixture's val images first, then its train images).
    assert data.split_sizes == {"train": 8, "test": 3}
    batch = next(iter(data_lib.train_loader(config, data, mesh_lib.make_mesh(1), seed=0)))
    assert batch.images.shape == (2, 64, 64, 3)
    by_id = {r.image_id: r for r in recs["val"] + recs["train"]}
    for b, image_id in enumerate(np.asarray(batch.image_ids).tolist()):
        r = by_id[image_id]  # a training image, with all its objects and regions
        assert int(np.asarray(batch.box_mask[b]).sum()) == len(r.labels)
        assert int(np.asarray(batch.region_mask[b]).sum()) == len(r.region_phrases)
        np.testing.assert_allclose(np.asarray(batch.boxes[b])[:len(r.labels)],
                                   r.boxes * np.asarray(batch.scales)[b], rtol=1e-5)
