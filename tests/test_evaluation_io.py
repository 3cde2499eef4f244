"""Tests of the predictions file format (round trip, every validation error) and the CLI."""
from __future__ import annotations

import json
import os
import sys
import types

import h5py
import numpy as np
import pytest

from sgg_jax import evaluate as cli
from sgg_jax.evaluation import SGGEvaluator
from sgg_jax.evaluation.prediction_file import (PredictionFileError, read_predictions,
                                                write_predictions)

P = 4
C = 5


def make_split(seed=0, n_images=4):
    rng = np.random.default_rng(seed)
    ids, preds, gts = [], [], []
    for i in range(n_images):
        g = int(rng.integers(2, 6))
        xy = rng.integers(0, 50, (g, 2))
        boxes = np.concatenate([xy, xy + rng.integers(4, 30, (g, 2))], 1).astype(np.float32)
        labels = rng.integers(1, C + 1, g)
        r = int(rng.integers(0, 4)) if i else 0  # image 0 has no relations
        rels = np.stack([rng.integers(0, g, r), rng.integers(0, g, r),
                         rng.integers(1, P + 1, r)], 1) if r else np.zeros((0, 3), int)
        pairs = np.array([[a, b] for a in range(g) for b in range(g) if a != b])
        ids.append(1000 + 7 * i)
        preds.append({"boxes": boxes, "labels": labels,
                      "scores": rng.random(g).astype(np.float32), "rel_pairs": pairs,
                      "rel_scores": rng.random((len(pairs), P + 1)).astype(np.float32)})
        gts.append({"boxes": boxes, "labels": labels, "relations": rels})
    return ids, preds, gts


@pytest.fixture()
def split_file(tmp_path):
    ids, preds, gts = make_split()
    path = str(tmp_path / "preds.h5")
    write_predictions(path, ids, preds, gts, {"mode": "sgdet", "num_classes": C, "model": "x"})
    return path, ids, preds, gts


def test_round_trip(split_file):
    path, ids, preds, gts = split_file
    f = read_predictions(path)
    assert f.image_ids.tolist() == ids
    assert f.num_predicates == P and f.num_classes == C
    assert f.metadata == {"mode": "sgdet", "num_classes": C, "model": "x"}
    for a, b in zip(f.predictions, preds):
        for k in b:
            np.testing.assert_array_equal(a[k], b[k])
    for a, b in zip(f.groundtruths, gts):
        for k in b:
            np.testing.assert_array_equal(a[k], np.asarray(b[k]).reshape(a[k].shape))
    assert [n for n in os.listdir(os.path.dirname(path))] == ["preds.h5"]  # no temp left


def test_round_trip_without_groundtruth_and_empty_images(tmp_path):
    path = str(tmp_path / "p.h5")
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0),
             "rel_pairs": np.zeros((0, 2), int), "rel_scores": np.zeros((0, P + 1))}
    _, preds, _ = make_split(1, 2)
    write_predictions(path, [5, 6, 7], [empty, preds[0], empty], None, {})
    f = read_predictions(path)
    assert f.groundtruths is None and f.num_predicates == P
    assert f.predictions[0]["rel_scores"].shape == (0, P + 1)
    assert f.predictions[1]["rel_pairs"].shape == preds[0]["rel_pairs"].shape


def _corrupt(path, fn):
    with h5py.File(path, "r+") as h:
        fn(h)


def _replace(h, name, data):
    del h[name]
    h.create_dataset(name, data=data)


@pytest.mark.parametrize("fn,field", [
    (lambda h: h.__delitem__("predictions/rel_scores"), "predictions/rel_scores"),
    (lambda h: h.__delitem__("image_ids"), "image_ids"),
    (lambda h: _replace(h, "predictions/rel_scores",
                        h["predictions/rel_scores"][:, :P]), "predictions/rel_scores"),
    (lambda h: _replace(h, "predictions/boxes", h["predictions/boxes"][:, :3]),
     "predictions/boxes"),
    (lambda h: _replace(h, "predictions/labels", h["predictions/labels"][:-1]),
     "predictions/labels"),
    (lambda h: _replace(h, "predictions/box_offsets", h["predictions/box_offsets"][()][::-1]),
     "predictions/box_offsets"),
    (lambda h: _replace(h, "predictions/rel_pairs",
                        np.full_like(h["predictions/rel_pairs"][()], 9)), "predictions/rel_pairs"),
    (lambda h: _replace(h, "predictions/labels",
                        np.full_like(h["predictions/labels"][()], C + 1)), "predictions/labels"),
    (lambda h: _replace(h, "predictions/labels",
                        np.zeros_like(h["predictions/labels"][()])), "predictions/labels"),
    (lambda h: _replace(h, "predictions/scores",
                        np.full_like(h["predictions/scores"][()], np.nan)), "predictions/scores"),
    (lambda h: _replace(h, "groundtruth/relations",
                        np.full_like(h["groundtruth/relations"][()], 99)),
     "groundtruth/relations"),
    (lambda h: h.attrs.__setitem__("format", "other"), "format"),
    (lambda h: h.attrs.__setitem__("metadata", "{not json"), "metadata"),
])
def test_corrupt_file_raises_naming_the_field(split_file, fn, field):
    path = split_file[0]
    _corrupt(path, fn)
    with pytest.raises(PredictionFileError) as e:
        read_predictions(path)
    assert path in str(e.value) and f"'{field}'" in str(e.value)


def test_error_names_the_image(split_file):
    path, ids, _, _ = split_file

    def bad_pair_in_image_2(h):
        off = h["predictions/rel_offsets"][()]
        rp = h["predictions/rel_pairs"][()]
        rp[off[2]] = [0, 50]
        _replace(h, "predictions/rel_pairs", rp)

    _corrupt(path, bad_pair_in_image_2)
    with pytest.raises(ValueError, match=f"image {ids[2]}: field 'predictions/rel_pairs'"):
        read_predictions(path)


def test_not_a_file_and_not_hdf5(tmp_path):
    with pytest.raises(PredictionFileError, match="no such file"):
        read_predictions(str(tmp_path / "missing.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(PredictionFileError, match="HDF5"):
        read_predictions(str(junk))


@pytest.mark.parametrize("change,field", [
    (lambda p, g: p[1].pop("rel_scores"), "predictions/rel_scores"),
    (lambda p, g: p[1].update(rel_pairs=np.array([[0, 1, 2]])), "predictions/rel_pairs"),
    (lambda p, g: p[1].update(rel_pairs=p[1]["rel_pairs"] + 100), "predictions/rel_pairs"),
    (lambda p, g: g[2].update(relations=np.array([[0, 1, P + 1]])), "groundtruth/relations"),
    (lambda p, g: g[2].update(labels=np.array([1])), "groundtruth/labels"),
])
def test_writer_rejects_bad_data_and_leaves_no_file(tmp_path, change, field):
    ids, preds, gts = make_split()
    change(preds, gts)
    path = str(tmp_path / "bad.h5")
    with pytest.raises(PredictionFileError, match=field):
        write_predictions(path, ids, preds, gts, {"num_classes": C})
    assert os.listdir(tmp_path) == []


def test_writer_rejects_duplicate_ids_and_bad_metadata(tmp_path):
    ids, preds, gts = make_split()
    with pytest.raises(PredictionFileError, match="unique"):
        write_predictions(str(tmp_path / "a.h5"), [1] * len(ids), preds)
    with pytest.raises(PredictionFileError, match="JSON"):
        write_predictions(str(tmp_path / "a.h5"), ids, preds, None, {"x": object()})


def _direct_results(ids, preds, gts, mode):
    ev = SGGEvaluator(mode, P)
    for p, g in zip(preds, gts):
        ev.add(g, p)
    return ev.compute()


def test_cli_with_groundtruth_in_the_file(split_file, tmp_path, capsys):
    path, ids, preds, gts = split_file
    out = str(tmp_path / "results.json")
    rc = cli.main(["--predictions", path, "--groundtruth", path, "--mode", "sgdet,sgcls",
                   "--output", out])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "neural-motifs / Scene-Graph-Benchmark protocol" in printed and "sgcls" in printed
    res = json.load(open(out))
    assert set(res) == {"sgdet", "sgcls"}
    want = _direct_results(ids, preds, gts, "sgdet")
    assert set(res["sgdet"]) == set(want)
    for k, v in want.items():
        if isinstance(v, float):
            assert res["sgdet"][k] == pytest.approx(v), k
        else:
            assert res["sgdet"][k] == v, k
    assert res["sgdet"]["num_images_skipped_no_gt_relations"] == \
        sum(len(g["relations"]) == 0 for g in gts) >= 1
    assert res["sgdet"]["protocol"] == "motifs"


def test_cli_msdn_protocol_and_detection(split_file, tmp_path, capsys):
    path = split_file[0]
    out = str(tmp_path / "r.json")
    assert cli.main(["--predictions", path, "--groundtruth", path, "--protocol", "msdn",
                     "--detection", "--output", out]) == 0  # mode from metadata
    assert "MSDN / F-Net protocol" in capsys.readouterr().out
    res = json.load(open(out))["sgdet"]
    assert res["protocol"] == "msdn" and "predR@50" in res and res["AP50"] == pytest.approx(100)


def test_cli_separate_groundtruth_file_matched_by_id(split_file, tmp_path):
    path, ids, preds, gts = split_file
    gt_path = str(tmp_path / "gt.h5")
    order = [2, 0, 3, 1]  # the ground-truth file lists images in another order
    write_predictions(gt_path, [ids[i] for i in order], [preds[i] for i in order],
                      [gts[i] for i in order], {})
    out = str(tmp_path / "r.json")
    assert cli.main(["--predictions", path, "--groundtruth", gt_path, "--mode", "predcls",
                     "--output", out]) == 0
    want = _direct_results(ids, preds, gts, "predcls")
    assert json.load(open(out))["predcls"]["R@50"] == pytest.approx(want["R@50"])


def test_cli_dataset_directory_uses_load_vg150(split_file, tmp_path, monkeypatch):
    path, ids, preds, gts = split_file
    from data_pipelines.records import SceneGraphRecord

    calls = []

    def fake_load_vg150(data_dir, split):
        calls.append((data_dir, split))
        return [SceneGraphRecord(image_id=i, image_path="", width=100, height=100,
                                 boxes=g["boxes"], labels=g["labels"], relations=g["relations"])
                for i, g in zip(ids, gts)]

    dicts = types.SimpleNamespace(idx_to_label=["__background__"] + [f"c{i}" for i in range(C)],
                                  idx_to_predicate=["__background__"]
                                  + [f"p{i}" for i in range(P)])
    monkeypatch.setitem(sys.modules, "data_pipelines.vg150", types.SimpleNamespace(
        load_vg150=fake_load_vg150, find_dicts_file=lambda d: d,
        load_vg150_dicts=lambda path: dicts))
    out = str(tmp_path / "r.json")
    assert cli.main(["--predictions", path, "--groundtruth", str(tmp_path), "--mode", "sgdet",
                     "--output", out]) == 0
    assert calls == [(str(tmp_path), "test")]
    want = _direct_results(ids, preds, gts, "sgdet")
    assert json.load(open(out))["sgdet"]["R@100"] == pytest.approx(want["R@100"])


def test_cli_bad_input_exits_nonzero_with_message(split_file, tmp_path, capsys):
    path, ids, preds, gts = split_file
    assert cli.main(["--predictions", str(tmp_path / "nope.h5"), "--groundtruth", path]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["--predictions", path, "--groundtruth", path, "--mode", "det"]) == 2
    assert "--mode" in capsys.readouterr().err
    nogt = str(tmp_path / "nogt.h5")
    write_predictions(nogt, ids, preds, None, {})
    assert cli.main(["--predictions", nogt, "--groundtruth", nogt, "--mode", "sgdet"]) == 2
    assert "groundtruth" in capsys.readouterr().err
    # ground truth lacking some predicted image ids
    gt_path = str(tmp_path / "gt.h5")
    write_predictions(gt_path, ids[:2], preds[:2], gts[:2], {})
    assert cli.main(["--predictions", path, "--groundtruth", gt_path, "--mode", "sgdet"]) == 2
    assert "not in the ground truth" in capsys.readouterr().err
    # predictions missing some ground-truth images: refused unless --allow-partial
    small = str(tmp_path / "small.h5")
    write_predictions(small, ids[:2], preds[:2], None, {})
    assert cli.main(["--predictions", small, "--groundtruth", path, "--mode", "sgdet"]) == 2
    assert "--allow-partial" in capsys.readouterr().err
    assert cli.main(["--predictions", small, "--groundtruth", path, "--mode", "sgdet",
                     "--allow-partial"]) == 0


def test_cli_real_vg150_directory_end_to_end(tmp_path):
    """A VG150 directory written by data_pipelines.vg150 is read back as the ground truth."""
    vg150 = pytest.importorskip("data_pipelines.vg150")
    from data_pipelines.records import SceneGraphRecord

    rng = np.random.default_rng(3)
    records, preds = [], []
    for i, split in enumerate(["train", "test", "test", "test"]):
        g = 4
        x1 = rng.integers(0, 200, g)
        y1 = rng.integers(0, 150, g)
        boxes = np.stack([x1, y1, x1 + rng.integers(5, 40, g), y1 + rng.integers(5, 40, g)], 1)
        labels = rng.integers(1, C + 1, g)
        rels = np.array([[0, 1, 1 + i % P], [2, 3, 1]])
        records.append(SceneGraphRecord(image_id=100 + i, image_path=f"{100 + i}.jpg",
                                        width=256, height=192,
                                        boxes=boxes.astype(np.float32),
                                        labels=labels.astype(np.int32),
                                        relations=rels.astype(np.int32), split=split))
        pairs = np.array([[a, b] for a in range(g) for b in range(g) if a != b])
        rs = rng.random((len(pairs), P + 1)) * 0.1
        rs[0, 1 + i % P] = 1.0  # pair (0, 1) gets its true predicate
        preds.append({"boxes": boxes, "labels": labels, "scores": np.ones(g),
                      "rel_pairs": pairs, "rel_scores": rs})
    vg_dir = tmp_path / "vg"
    vg150.write_vg150(vg_dir, records, [f"c{i}" for i in range(1, C + 1)],
                      [f"p{i}" for i in range(1, P + 1)])
    pred_path = str(tmp_path / "p.h5")
    write_predictions(pred_path, [101, 102, 103], preds[1:], None, {"num_classes": C})
    out = str(tmp_path / "r.json")
    assert cli.main(["--predictions", pred_path, "--groundtruth", str(vg_dir), "--mode",
                     "predcls", "--ks", "1,20", "--output", out]) == 0
    res = json.load(open(out))["predcls"]
    assert res["num_images_evaluated"] == 3
    assert res["R@1"] == pytest.approx(50.0)  # (0,1) ranked first and hit in every image
    want = _direct_results([101, 102, 103], preds[1:],
                           [{"boxes": r.boxes, "labels": r.labels, "relations": r.relations}
                            for r in records[1:]], "predcls")
    assert res["R@20"] == pytest.approx(want["R@20"])


def test_cli_refuses_predictions_of_another_vocabulary(tmp_path, capsys):
    """Predictions with another predicate or class count, or other names in their metadata,
    are not scored against a VG150 directory: exit 2 naming the file, the field and both."""
    vg150 = pytest.importorskip("data_pipelines.vg150")
    from data_pipelines.records import SceneGraphRecord

    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
    records = [SceneGraphRecord(image_id=7, image_path="7.jpg", width=64, height=64, boxes=boxes,
                                labels=np.array([1, 2], np.int32),
                                relations=np.array([[0, 1, 1]], np.int32), split=split)
               for split in ("train", "test")]
    records[0].image_id = 6
    vg_dir = tmp_path / "vg"
    classes, predicates = [f"c{i}" for i in range(1, C + 1)], [f"p{i}" for i in range(1, P + 1)]
    vg150.write_vg150(vg_dir, records, classes, predicates)

    def run(num_predicates, metadata):
        pred = {"boxes": boxes, "labels": np.array([1, 2]), "scores": np.ones(2),
                "rel_pairs": np.array([[0, 1]]),
                "rel_scores": np.full((1, num_predicates + 1), 1.0 / (num_predicates + 1))}
        path = str(tmp_path / "p.h5")
        write_predictions(path, [7], [pred], None, metadata)
        code = cli.main(["--predictions", path, "--groundtruth", str(vg_dir), "--mode",
                         "predcls"])
        return code, capsys.readouterr().err

    names = dict(idx_to_label=["__background__"] + classes,
                 idx_to_predicate=["__background__"] + predicates)
    assert run(P, {"num_classes": C, **names})[0] == 0
    code, err = run(P + 1, {})
    assert code == 2 and "num_predicates" in err and f"has {P} predicates" in err
    code, err = run(P, {"num_classes": C + 2})
    assert code == 2 and "num_classes" in err and f"has {C} classes" in err
    other = dict(names, idx_to_predicate=["__background__", "on"] + predicates[1:])
    code, err = run(P, {"num_classes": C, **other})
    assert code == 2 and "metadata.idx_to_predicate" in err and "'on'" in err and "'p1'" in err
