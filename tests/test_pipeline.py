"""grain pipeline: round trip to Batch, determinism, sharding, flip, truncation, resumption."""
from __future__ import annotations

import io
import math

import grain
import numpy as np
import pytest
from PIL import Image

from data_pipelines import pipeline, tfds_sgg
from data_pipelines.batch import Batch
from sgg_data_fixtures import make_vg150_dir

S = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    recs = make_vg150_dir(str(root / "raw"), num_val=2, num_train=8, num_test=5)
    builder = tfds_sgg.build_dataset(root / "raw", root / "tfds",
                                     tfds_sgg.make_config(num_val_im=2))
    return recs, builder.as_data_source()


def _cfg(**kw):
    base = dict(image_size=S, max_objects=8, max_relations=16, max_regions=3, max_phrase_len=12,
                batch_size=2, shuffle=True, seed=3, num_epochs=1, flip_prob=0.0,
                read_threads=2, read_prefetch=8)
    base.update(kw)
    return pipeline.InputConfig(**base)


def _ids(loader):
    return [int(i) for b in loader for i in b.image_ids]


def test_the_training_split_evaluates_in_one_pass(data):
    """`evaluation=True`: the training split in one unshuffled, unaugmented epoch (evaluating
    a model on its training images, e.g. to save its outputs for SGP)."""
    recs, src = data
    ids = _ids(pipeline.make_loader(src["train"], _cfg(num_epochs=None, flip_prob=0.5),
                                    "train", shard_options=grain.sharding.NoSharding(),
                                    evaluation=True))
    real = [i for i in ids if i >= 0]
    assert real == [int(r.image_id) for r in recs["train"]]


def test_eval_round_trip_exact(data):
    recs, src = data
    cfg = _cfg(batch_size=2)
    batches = list(pipeline.make_loader(src["test"], cfg, "test",
                                        shard_options=grain.sharding.NoSharding()))
    assert len(batches) == math.ceil(len(recs["test"]) / 2) == 3
    flat = {int(i): (b, k) for b in batches for k, i in enumerate(b.image_ids)}
    assert batches[-1].image_ids.tolist() == [recs["test"][-1].image_id, -1]
    assert not batches[-1].box_mask[1].any() and not batches[-1].rel_mask[1].any()
    for r in recs["test"]:
        b, k = flat[r.image_id]
        assert isinstance(b, Batch) and b.images.shape == (2, S, S, 3)
        scale = np.float32(S / max(r.width, r.height))
        assert b.scales[k] == scale
        th, tw = round(r.height * S / max(r.width, r.height)), round(r.width * S / max(r.width,
                                                                                     r.height))
        assert b.image_sizes[k].tolist() == [th, tw]
        g, nr = len(r.labels), len(r.relations)
        np.testing.assert_array_equal(b.boxes[k, :g], r.boxes * scale)
        np.testing.assert_array_equal(b.boxes[k, g:], 0)
        np.testing.assert_array_equal(b.labels[k, :g], r.labels)
        assert b.box_mask[k].tolist() == [True] * g + [False] * (8 - g)
        np.testing.assert_array_equal(b.relations[k, :nr], r.relations)
        assert b.rel_mask[k].sum() == nr and b.rel_mask[k, :nr].all()
        q = min(3, len(r.region_boxes))
        np.testing.assert_array_equal(b.region_boxes[k, :q], r.region_boxes[:q] * scale)
        assert b.region_mask[k].sum() == q
        assert not b.images[k, th:].any() and not b.images[k, :, tw:].any()
        assert b.images[k, :th, :tw].any()


def test_decode_resize_close_to_full_decode():
    yy, xx = np.mgrid[0:90, 0:120]
    img = np.stack([xx * 2, yy * 2, (xx + yy)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95)
    canvas, scale, th, tw = pipeline.decode_resize(buf.getvalue(), 30)
    assert (th, tw) == (22, 30) and scale == 30 / 120
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize(
        (30, 22), Image.BILINEAR)).astype(float)
    assert np.abs(canvas[:22, :30] - ref).mean() < 3.0
    assert not canvas[22:].any()


def test_shuffle_deterministic_by_seed(data):
    _, src = data
    a = list(pipeline.make_loader(src["train"], _cfg(), "train"))
    b = list(pipeline.make_loader(src["train"], _cfg(), "train"))
    assert [x.image_ids.tolist() for x in a] == [x.image_ids.tolist() for x in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.images, y.images)
    ids = [_ids(pipeline.make_loader(src["train"], _cfg(seed=s), "train")) for s in range(4)]
    assert all(sorted(i) == sorted(ids[0]) for i in ids)  # each epoch is a permutation
    assert len({tuple(i) for i in ids}) > 1
    unshuffled = _ids(pipeline.make_loader(src["train"], _cfg(shuffle=False), "train"))
    assert unshuffled == sorted(unshuffled)


def test_sharding_two_processes(data):
    _, src = data
    shards = [_ids(pipeline.make_loader(src["train"], _cfg(), "train",
                                        shard_options=grain.sharding.ShardOptions(i, 2, True)))
              for i in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(int(src["train"][i]["image_id"])
                                                   for i in range(8))
    evals = [pipeline.make_loader(src["test"], _cfg(), "test",
                                  shard_options=grain.sharding.ShardOptions(i, 2))
             for i in range(2)]
    assert len(evals[0]) == len(evals[1])  # same batch count on every process
    got = [[b.image_ids.tolist() for b in e] for e in evals]
    assert len(got[0]) == len(got[1]) == 2
    real = sorted(i for g in got for b in g for i in b if i >= 0)
    assert real == sorted(int(src["test"][i]["image_id"]) for i in range(5))


def _example():
    ex = dict(
        images=np.zeros((8, 8, 3), np.uint8),
        image_sizes=np.array([6, 5], np.int32),
        boxes=np.array([[0, 1, 2, 3], [1.5, 0, 5, 6], [0, 0, 0, 0]], np.float32),
        box_mask=np.array([True, True, False]),
        region_boxes=np.array([[1, 1, 4, 2]], np.float32), region_mask=np.array([True]),
        relations=np.array([[0, 1, 2], [1, 0, 3], [1, 0, 1], [0, 0, 0]], np.int32),
        rel_mask=np.array([True, True, True, False]))
    ex["images"][0, 0] = 255  # top-left content pixel
    ex["images"][7, 7] = 9  # padding area: must not move
    return ex


def test_flip_by_hand_and_involution():
    ex = _example()
    perm = pipeline.predicate_permutation(((2, 3),))
    f = pipeline.flip_example(ex, perm)
    np.testing.assert_array_equal(f["boxes"], [[3, 1, 5, 3], [0, 0, 3.5, 6], [0, 0, 0, 0]])
    np.testing.assert_array_equal(f["region_boxes"], [[1, 1, 4, 2]])
    np.testing.assert_array_equal(f["relations"][:, 2], [3, 2, 1, 0])
    assert f["images"][0, 4, 0] == 255 and f["images"][0, 0, 0] == 0
    assert f["images"][7, 7, 0] == 9
    ff = pipeline.flip_example(f, perm)
    for k in ex:
        np.testing.assert_allclose(ff[k], ex[k], atol=1e-5)
    with pytest.raises(ValueError):
        pipeline.predicate_permutation(((2, 2),))


def test_flip_in_loader(data):
    _, src = data
    pairs = ((2, 3),)
    plain = list(pipeline.make_loader(src["train"], _cfg(flip_prob=0.0), "train"))
    flipped = list(pipeline.make_loader(
        src["train"], _cfg(flip_prob=1.0, flip_predicate_map=pairs), "train"))
    perm = pipeline.predicate_permutation(pairs)
    for a, b in zip(plain, flipped):
        assert a.image_ids.tolist() == b.image_ids.tolist()
        for k in range(a.batch_size):
            ex = {f: getattr(a, f)[k] for f in ("images", "image_sizes", "boxes", "box_mask",
                                                  "region_boxes", "region_mask", "relations",
                                                  "rel_mask")}
            want = pipeline.flip_example(ex, perm)
            for f, v in want.items():
                np.testing.assert_allclose(getattr(b, f)[k], v, atol=1e-5)


def test_truncation_and_tokens():
    labels = np.array([1, 2, 3, 4, 5])
    rels = np.array([[0, 1, 1], [3, 0, 2], [2, 1, 3], [1, 4, 4], [0, 2, 5]])
    g, kept, d_obj, d_rel = pipeline.truncate_graph(labels, rels, 3, 10)
    assert (g, d_obj, d_rel) == (3, 2, 2)
    np.testing.assert_array_equal(kept, [[0, 1, 1], [2, 1, 3], [0, 2, 5]])
    g, kept, _, d_rel = pipeline.truncate_graph(labels, rels, 3, 2)
    np.testing.assert_array_equal(kept, [[0, 1, 1], [2, 1, 3]])
    assert d_rel == 3
    toks = np.array([[1, 7, 8, 9, 2], [1, 7, 2, 0, 0]])
    np.testing.assert_array_equal(pipeline.fit_tokens(toks, 3, 4),
                                  [[1, 7, 8, 2], [1, 7, 2, 0], [0, 0, 0, 0]])


def test_truncation_in_loader(data):
    _, src = data
    cfg = _cfg(max_objects=2, max_relations=2, max_regions=1, shuffle=False)
    b = next(iter(pipeline.make_loader(src["train"], cfg, "train")))
    assert b.boxes.shape == (2, 2, 4) and b.relations.shape == (2, 2, 3)
    assert b.region_tokens.shape == (2, 1, 12)
    assert np.all(b.relations[b.rel_mask][:, :2] < 2)
    counts = pipeline.count_truncation(src["train"], cfg)
    assert counts["images"] == 8 and counts["objects_dropped"] > 0


def test_duplicate_relation_filter():
    ex = _example()
    ex["relations"] = np.array([[0, 1, 2], [0, 1, 3], [1, 0, 1], [0, 1, 4]], np.int32)
    ex["rel_mask"] = np.ones(4, bool)
    seen = set()
    for seed in range(20):
        out = pipeline.one_predicate_per_pair(ex, np.random.default_rng(seed))
        kept = out["relations"][out["rel_mask"]]
        assert sorted(map(tuple, kept[:, :2].tolist())) == [(0, 1), (1, 0)]
        seen.add(int(kept[kept[:, 0] == 0][0, 2]))
    assert seen == {2, 3, 4}  # any of the duplicates can be kept


def test_checkpointed_state_resumes_exactly(data):
    _, src = data
    cfg = _cfg(num_epochs=None, flip_prob=0.5, flip_predicate_map=((2, 3),))
    it = iter(pipeline.make_loader(src["train"], cfg, "train"))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]  # crosses an epoch boundary (4 batches/epoch)
    it2 = iter(pipeline.make_loader(src["train"], cfg, "train"))
    it2.set_state(state)
    for want in expected:
        got = next(it2)
        for f in ("images", "image_ids", "boxes", "relations", "region_boxes"):
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f))


def test_input_config_from_dict():
    c = pipeline.InputConfig.from_dict(dict(image_size=32, batch_size=4, eval_batch_size=8,
                                            flip_predicate_map=[[1, 2]]), seed=5)
    assert (c.image_size, c.batch_size, c.seed, c.flip_predicate_map) == (32, 4, 5, ((1, 2),))


def test_batch_larger_than_shard_is_an_error(data):
    _, src = data
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.make_loader(src["train"], _cfg(batch_size=5), "train",
                             shard_options=grain.sharding.ShardOptions(0, 2, True))


def test_decode_png_and_grayscale():
    gray = (np.arange(40 * 20) % 251).astype(np.uint8).reshape(20, 40)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    canvas, scale, th, tw = pipeline.decode_resize(buf.getvalue(), 80)
    assert (th, tw, scale) == (40, 80, 2.0) and canvas.shape == (80, 80, 3)
    np.testing.assert_array_equal(canvas[:40, :80, 0], canvas[:40, :80, 2])  # gray -> RGB
    assert not canvas[40:].any()


def test_decode_in_read_threads_or_as_map_op_same_batches(data):
    _, src = data
    kw = dict(flip_prob=0.5, flip_predicate_map=((2, 3),), num_epochs=2)
    a = list(pipeline.make_loader(src["train"], _cfg(decode_in_read_threads=True, **kw)))
    b = list(pipeline.make_loader(src["train"], _cfg(decode_in_read_threads=False, **kw)))
    assert len(a) == len(b) == 8
    for x, y in zip(a, b):
        for f in ("images", "image_ids", "boxes", "relations", "rel_mask", "region_tokens"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
