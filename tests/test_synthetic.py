"""Tests of the synthetic scene-graph dataset generator (data_pipelines.synthetic)."""
from __future__ import annotations

import collections
import filecmp
import json
import os

import numpy as np
import pytest

from data_pipelines import synthetic as S
from data_pipelines.synthetic import spec
from data_pipelines import vg150

PRED = spec.PREDICATE_ID
NUM_VAL, NUM_TRAIN, NUM_TEST, SIZE = 4, 10, 12, 128


@pytest.fixture(scope="module")
def graphs():
    """Graph-only scenes (no rendering): cheap, for statistical properties."""
    return [S.sample_scene(S.image_rng(7, "train", k), 256)[0] for k in range(250)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "data"
    res = S.generate(out, num_train=NUM_TRAIN, num_val=NUM_VAL, num_test=NUM_TEST,
                     image_size=SIZE, seed=3, progress=False, workers=1)
    return res


def test_vocabulary():
    assert len(spec.CLASS_NAMES) >= 20 and len(spec.PREDICATE_NAMES) >= 15
    for name in ("left of", "right of", "above", "below", "near", "on", "inside",
                 "in front of", "behind", "looking at", "same colour as", "holding"):
        assert name in spec.PREDICATE_ID
    assert len(spec.APPEARANCE_PREDICATES) >= 3
    # classes differ in appearance: no two share colours, size range and shape
    from data_pipelines.synthetic.render import RENDERERS
    assert set(RENDERERS) == set(spec.CLASS_NAMES)
    sigs = {(c.colours, c.size, c.aspect) for c in spec.CLASSES}
    assert len(sigs) == len(spec.CLASSES)
    assert {t for c in spec.CLASSES for t, _ in c.textures} >= {"solid", "stripes", "dots"}


def test_make_scene_is_a_pure_function_of_the_generator():
    a_img, a = S.make_scene(np.random.default_rng(5), 128)
    b_img, b = S.make_scene(np.random.default_rng(5), 128)
    c_img, _ = S.make_scene(np.random.default_rng(6), 128)
    assert a_img.dtype == np.uint8 and a_img.shape == (128, 128, 3)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.relations, b.relations)
    assert a.region_phrases == b.region_phrases
    assert not np.array_equal(a_img, c_img)


def test_non_square_and_bad_sizes():
    img, g = S.make_scene(np.random.default_rng(0), (256, 192))
    assert img.shape == (192, 256, 3) and (g.width, g.height) == (256, 192)
    for bad in (100, 300, (256, 50), 2048):
        with pytest.raises(ValueError):
            S.make_scene(np.random.default_rng(0), bad)


def _box_checks(g: S.SceneGraph) -> None:
    """Independent loop-based check of each predicate's box definition."""
    L = max(g.width, g.height)
    tol = 0.02 * L
    b = g.boxes.astype(np.float64)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    names = [spec.CLASS_NAMES[c - 1] for c in g.labels]
    for p, i, j in np.argwhere(g.truth):
        pred = spec.PREDICATE_NAMES[p]
        bi, bj = b[i], b[j]
        h_overlap = min(bi[2], bj[2]) > max(bi[0], bj[0])
        v_overlap = min(bi[3], bj[3]) > max(bi[1], bj[1])
        assert i != j
        if pred == "left of":
            assert cx[i] < cx[j] - tol and v_overlap
        elif pred == "right of":
            assert cx[i] > cx[j] + tol and v_overlap
        elif pred == "above":
            assert bi[3] < bj[1] and h_overlap
        elif pred == "below":
            assert bi[1] > bj[3] and h_overlap
        elif pred in ("on", "sitting on", "standing on"):
            assert bi[3] == bj[1] and bj[0] <= cx[i] <= bj[2]  # bottom touches top
            if pred == "sitting on":
                assert names[i] in ("person", "dog", "cat")
            if pred == "standing on":
                assert names[i] == "bird"
        elif pred == "under":
            assert bj[3] == bi[1] and bi[0] <= cx[j] <= bi[2]
        elif pred == "riding":
            assert names[i] == "person" and names[j] == "bicycle"
            assert bj[1] < bi[3] < bj[3]
        elif pred == "inside":
            assert bj[0] <= bi[0] and bj[1] <= bi[1] and bi[2] <= bj[2] and bi[3] <= bj[3]
        elif pred == "has":
            assert bi[0] <= bj[0] and bi[1] <= bj[1] and bj[2] <= bi[2] and bj[3] <= bi[3]
        elif pred in ("in front of", "behind"):
            assert h_overlap and v_overlap
            assert (g.depth[i] > g.depth[j]) == (pred == "in front of")
        elif pred == "near":
            assert not (h_overlap and v_overlap)
            gap = max(bj[0] - bi[2], bi[0] - bj[2], bj[1] - bi[3], bi[1] - bj[3])
            assert gap <= 0.06 * L
        elif pred in ("looking at", "facing away from"):
            assert g.facing[i] != 0
            toward = g.facing[i] * (cx[j] - cx[i]) > 0
            assert toward == (pred == "looking at")
        elif pred == "same colour as":
            assert g.colours[i] == g.colours[j]
        elif pred == "holding":
            assert names[i] == "person" and g.parent[j] == i
            assert h_overlap and v_overlap  # the item touches the hand at the person's side
        elif pred == "wearing":
            assert names[i] == "person" and names[j] == "hat" and g.parent[j] == i
            assert bj[3] > bi[1] and bj[1] < bi[1]  # hat sits over the top of the head


def test_predicates_are_true_of_the_boxes(graphs):
    for g in graphs[:120]:
        _box_checks(g)
        # every annotated relation is true in the world
        for s, o, p in g.relations:
            assert g.truth[p - 1, s, o]
    # looking at: at most one target per animate object
    for g in graphs:
        assert (g.truth[PRED["looking at"] - 1].sum(1) <= 1).all()


def test_boxes_on_grid_and_exact_in_vg150_scales():
    for size in (128, 256, 512, (256, 192)):
        rng = np.random.default_rng(1)
        for _ in range(5):
            g = S.sample_scene(rng, size)[0]
            L = max(g.width, g.height)
            step = S.grid_step(L)
            assert (g.boxes % step == 0).all()
            assert (g.boxes[:, :2] >= 0).all() and (g.boxes[:, 2] <= g.width).all() \
                and (g.boxes[:, 3] <= g.height).all()
            assert (g.boxes[:, 2:] > g.boxes[:, :2]).all()
            for scale in (1024, 512):
                enc = vg150.encode_boxes(g.boxes, g.width, g.height, scale)
                assert (enc[:, 2:] % 2 == 0).all()  # even width/height: exact centres
                back = vg150.decode_boxes(enc) * (L / scale)
                np.testing.assert_array_equal(back, g.boxes)


def test_rendered_pixels_show_object_colour_and_eyes():
    """Appearance evidence: an unoccluded object's box contains its colour; eyes are drawn."""
    checked = collections.Counter()
    for k in range(12):
        img, g = S.make_scene(np.random.default_rng(100 + k), 256)
        img = img.astype(np.int32)
        for i in range(len(g.labels)):
            b = g.boxes[i].astype(int)
            nearer = [j for j in range(len(g.labels)) if g.depth[j] > g.depth[i]
                      and min(b[2], g.boxes[j, 2]) > max(b[0], g.boxes[j, 0])
                      and min(b[3], g.boxes[j, 3]) > max(b[1], g.boxes[j, 1])]
            if nearer:
                continue
            cls = spec.CLASS_NAMES[g.labels[i] - 1]
            crop = img[b[1]:b[3], b[0]:b[2]].reshape(-1, 3)
            ref = np.array(spec.COLOURS[g.colours[i]])
            close = np.abs(crop - ref).sum(1) < 75
            assert close.mean() > 0.05, (cls, g.colours[i], close.mean())
            checked[cls] += 1
            if g.facing[i] != 0:  # the pupil: a dark pixel at the eye point
                from data_pipelines.synthetic.render import eye_point
                ex, ey = eye_point(cls, tuple(b), int(g.facing[i]))
                assert img[int(round(ey)), int(round(ex))].sum() < 200, cls
                mirror_x = b[0] + b[2] - ex  # the eye is on the facing side only
                if cls != "person":
                    assert img[int(round(ey)), int(round(mirror_x))].sum() > 120
    assert len(checked) >= 12


def test_holding_draws_a_hand():
    from data_pipelines.synthetic.render import SKIN, render
    found = 0
    for k in range(30):
        rng = np.random.default_rng(k)
        graph, items, horizon, bg = S.sample_scene(rng, 256)
        hands = [it for it in items if it.hand is not None]
        if not hands:
            continue
        img = render(rng, graph.width, graph.height, horizon, graph.scene_type, bg, items)
        for it in hands:
            hx, hy, _ = it.hand
            assert np.abs(img[hy, hx].astype(int) - SKIN).sum() < 40
            found += 1
    assert found >= 3


def test_phrases_have_msdn_lengths(graphs):
    n = 0
    for g in graphs:
        assert len(g.region_phrases) == len(g.region_boxes)
        for words, box in zip(g.region_phrases, g.region_boxes):
            assert 5 <= len(words) + 2 < 11  # MSDN: with <start>/<end>, 5 <= len < 11
            assert all(w and " " not in w for w in words)
            assert box[0] >= 0 and box[2] <= g.width and box[2] > box[0]
            n += 1
        for s, o, p in g.relations:  # the relation's words appear in some phrase
            assert any(spec.CLASS_NAMES[g.labels[s] - 1] in w and
                       spec.PREDICATE_NAMES[p - 1].split()[0] in w for w in g.region_phrases)
    assert n > len(graphs)


def test_long_tail_and_sparse_annotation(graphs):
    expected = S.expected_annotation_counts(graphs)
    assert (expected > 0).all()
    assert expected.max() / expected.min() >= 100  # two orders of magnitude
    observed = np.zeros(len(spec.PREDICATE_NAMES))
    for g in graphs:
        np.add.at(observed, g.relations[:, 2] - 1, 1)
    # the sampled annotation follows its closed form (loosely: the model ignores 2 small terms)
    head = np.argsort(-expected)[:5]
    assert np.all(np.abs(observed[head] - expected[head]) < 0.35 * expected[head])
    # sparse: far fewer annotated pairs than pairs with some true predicate
    true_pairs = sum(int(g.truth.any(0).sum()) for g in graphs)
    annotated = sum(len({(s, o) for s, o, _ in g.relations}) for g in graphs)
    assert annotated < 0.4 * true_pairs


def test_frequency_prior_helps_but_does_not_suffice(graphs):
    table = collections.defaultdict(collections.Counter)
    total = 0
    for g in graphs:
        for s, o, p in g.relations:
            table[(g.labels[s], g.labels[o])][p] += 1
            total += 1
    freq_acc = sum(c.most_common(1)[0][1] for c in table.values()) / total
    overall = collections.Counter(p for c in table.values() for p, n in c.items()
                                  for _ in range(n))
    majority = overall.most_common(1)[0][1] / total
    assert majority < freq_acc < 0.8, (majority, freq_acc)


def test_scene_types_govern_classes(graphs):
    by_scene = collections.defaultdict(collections.Counter)
    for g in graphs:
        st = spec.SCENE_BY_NAME[g.scene_type]
        allowed = {n for n, _ in st.ground} | {n for n, _ in st.sky} | set(st.items)
        names = {spec.CLASS_NAMES[c - 1] for c in g.labels}
        assert names <= allowed, (g.scene_type, names - allowed)
        by_scene[g.scene_type].update(names)
    assert by_scene["street"]["car"] > 0 and by_scene["kitchen"]["car"] == 0
    assert by_scene["office"]["laptop"] > 0 and by_scene["park"]["laptop"] == 0


def test_zero_shot_split(dataset):
    zs = dataset.zero_shot_triplets
    with open(dataset.zero_shot_path) as f:
        info = json.load(f)
    assert info["triplets"] == zs.tolist() and len(zs) == len(spec.ZERO_SHOT_TRIPLETS)
    assert info["names"] == [list(t) for t in spec.ZERO_SHOT_TRIPLETS]
    seen = collections.Counter()
    for r in dataset.records:
        for s, o, p in r.relations:
            seen[(r.split, int(r.labels[s]), int(p), int(r.labels[o]))] += 1
    for s, p, o in zs:
        assert seen[("train", s, p, o)] == 0 and seen[("val", s, p, o)] == 0
        assert seen[("test", s, p, o)] >= 1
    # and they would occur in training without the filter (plausible compositions)
    ids = {tuple(t) for t in zs.tolist()}
    natural = 0
    for k in range(150):
        g = S.sample_scene(S.image_rng(11, "train", k), 256)[0]
        natural += sum((int(g.labels[i]), int(p) + 1, int(g.labels[j])) in ids
                       for p, i, j in np.argwhere(g.truth))
    assert natural > 0


def test_zero_shot_list_with_a_small_test_split(tmp_path, capsys):
    res = S.generate(tmp_path / "z", num_train=2, num_val=0, num_test=3, image_size=128,
                     progress=False)
    # the planted triplets (test images 0, 1, 2) are listed; the others only if they happen to
    # occur in these 3 test images
    listed = {tuple(t) for t in res.zero_shot_triplets.tolist()}
    assert {tuple(t) for t in S.zero_shot_ids()[:3].tolist()} <= listed
    assert len(listed) < len(spec.ZERO_SHOT_TRIPLETS)
    in_test = {(int(r.labels[s]), int(p), int(r.labels[o]))
               for r in res.records if r.split == "test" for s, o, p in r.relations}
    assert listed <= in_test
    assert "left out" in capsys.readouterr().out
    from sgg_jax.evaluation import load_zero_shot_triplets
    np.testing.assert_array_equal(load_zero_shot_triplets(res.zero_shot_path),
                                  res.zero_shot_triplets)


def test_output_layout_and_readers_round_trip(dataset):
    d = dataset.output_dir
    for name in ("VG-SGG.h5", "VG-SGG-dicts.json", "image_data.json", "zero_shot_triplets.json",
                 "README.md", "msdn/train.json", "msdn/test.json", "msdn/categories.json",
                 "msdn/dict.json"):
        assert os.path.isfile(os.path.join(d, name)), name
    assert len(os.listdir(os.path.join(d, "VG_100K"))) == NUM_VAL + NUM_TRAIN + NUM_TEST
    assert not [p for p in os.listdir(os.path.dirname(d)) if ".tmp-" in p]
    recs = dataset.records
    assert [r.split for r in recs] == ["val"] * NUM_VAL + ["train"] * NUM_TRAIN + \
        ["test"] * NUM_TEST
    assert [r.image_id for r in recs] == list(range(1, len(recs) + 1))
    from PIL import Image
    with Image.open(recs[0].image_path) as im:
        assert im.size == (SIZE, SIZE)
    for split in ("val", "train", "test"):
        want = [r for r in recs if r.split == split]
        got = vg150.load_vg150(d, split, num_val_im=NUM_VAL, filter_empty_rels=False)
        assert [r.image_id for r in got] == [r.image_id for r in want]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.boxes, b.boxes)  # exact
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.relations, b.relations)
            assert (a.width, a.height) == (b.width, b.height)
            assert os.path.samefile(a.image_path, b.image_path)
    from data_pipelines import vg_msdn
    got = vg_msdn.load_vg_msdn(os.path.join(d, "msdn", "test.json"))
    want = [r for r in recs if r.split == "test"]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.relations, b.relations)
        np.testing.assert_array_equal(a.region_boxes, b.region_boxes)
        assert a.region_phrases == b.region_phrases


def test_same_seed_same_bytes(dataset, tmp_path):
    again = S.generate(tmp_path / "again", num_train=NUM_TRAIN, num_val=NUM_VAL,
                       num_test=NUM_TEST, image_size=SIZE, seed=3, progress=False, workers=2)
    a, b = dataset.output_dir, again.output_dir
    files = []
    for root, _, names in os.walk(a):
        files += [os.path.relpath(os.path.join(root, n), a) for n in names]
    assert len(files) > NUM_VAL + NUM_TRAIN + NUM_TEST
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors
    other = S.generate(tmp_path / "other", num_train=2, num_val=0, num_test=0, image_size=SIZE,
                       seed=4, progress=False)
    assert not filecmp.cmp(os.path.join(a, "VG_100K", "5.jpg"),
                           os.path.join(other.output_dir, "VG_100K", "1.jpg"), shallow=False)


def test_existing_output_and_bad_arguments(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    with pytest.raises(ValueError, match="exists"):
        S.generate(out, num_train=1, num_val=0, num_test=0, image_size=128, progress=False)
    with pytest.raises(ValueError, match="divide 1024"):
        S.generate(tmp_path / "e", num_train=1, num_val=0, num_test=0, image_size=200,
                   progress=False)
    with pytest.raises(ValueError, match="preset"):
        S.generate(tmp_path / "e", preset="huge", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["d"]  # nothing half-written
    res = S.generate(out, num_train=2, num_val=1, num_test=0, image_size=128, progress=False,
                     overwrite=True)
    assert len(res.records) == 3 and sorted(os.listdir(tmp_path)) == ["d"]


def test_cli(tmp_path, capsys):
    rc = S.main(["--output", str(tmp_path / "c"), "--num-train", "3", "--num-val", "1",
                 "--num-test", "2", "--image-size", "128x64", "--seed", "9"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "zero-shot triplets" in out and "train" in out
    readme = (tmp_path / "c" / "README.md").read_text()
    assert "seed: 9" in readme and "128 x 64" in readme
    assert S.main(["--output", str(tmp_path / "c"), "--num-train", "1"]) == 2  # exists
