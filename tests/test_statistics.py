"""Dataset statistics: a hand-computed case, a loop reference (NM's get_counts) and save/load."""
from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.records import SceneGraphRecord
from data_pipelines.statistics import DatasetStatistics, compute_statistics


def _rec(image_id, w, h, boxes, labels, rels):
    return SceneGraphRecord(
        image_id=image_id, image_path=f"{image_id}.jpg", width=w, height=h,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int32), relations=np.asarray(rels, np.int32).reshape(-1, 3))


def _hand_records():
    return [
        # 0-1 intersect; 2 is apart from both (gap of 10 px = 102 px at 1024 scale).
        _rec(1, 100, 100, [[0, 0, 50, 50], [40, 40, 90, 90], [60, 0, 100, 30]], [1, 2, 3],
             [[0, 1, 2], [0, 1, 3], [2, 0, 1]]),
        # No pair intersects: NM falls back to every ordered pair.
        _rec(2, 200, 100, [[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1], [[1, 0, 2]]),
        _rec(3, 50, 50, [[0, 0, 10, 10]], [3], []),
        # At scale 1: boxes sharing the edge x=10 intersect (+1 rule), a 1 px gap does not.
        _rec(4, 1024, 1024, [[0, 0, 10, 10], [10, 0, 20, 10], [21, 0, 30, 10]], [2, 3, 1], []),
    ]


def test_hand_case():
    st = compute_statistics(_hand_records(), num_classes=3, num_predicates=3)
    np.testing.assert_array_equal(st.object_counts, [0, 4, 2, 3])
    np.testing.assert_array_equal(st.predicate_counts, [0, 1, 2, 1])
    fg = np.zeros((4, 4, 4), np.int64)
    fg[1, 2, 2] = fg[1, 2, 3] = fg[3, 1, 1] = fg[1, 1, 2] = 1
    np.testing.assert_array_equal(st.fg_matrix, fg)
    bg = np.zeros((4, 4), np.int64)
    bg[1, 2] = bg[2, 1] = 1  # image 1
    bg[1, 1] = 2  # image 2, fallback
    bg[2, 3] = bg[3, 2] = 1  # image 4, touching
    np.testing.assert_array_equal(st.bg_matrix, bg)
    np.testing.assert_array_equal(
        st.triplet_counts(), [[1, 2, 1, 1], [1, 2, 2, 1], [1, 3, 2, 1], [3, 1, 1, 1]])
    assert st.num_images == 4 and st.num_relations == 4 and st.num_objects == 9
    assert st.idx_to_label[0] == "__background__" and len(st.idx_to_predicate) == 4
    # KERN's co-occurrence: images {1,2,3}, {1} (twice), {3}, {1,2,3}.
    co = np.zeros((4, 4), np.int64)
    for i, j in ((1, 2), (1, 3), (2, 3)):
        co[i, j] = co[j, i] = 2
    co[1, 1] = 1  # class 1 twice in image 2
    np.testing.assert_array_equal(st.cooccurrence, co)
    np.testing.assert_array_equal(st.class_images, [0, 3, 2, 3])


def _loop_reference(records, c, p):
    """Per-box loops in the style of NM get_counts and KERN's generate_knowledge (corrected
    pairing), independent of the vectorised code."""
    fg = np.zeros((c + 1, c + 1, p + 1), np.int64)
    bg = np.zeros((c + 1, c + 1), np.int64)
    co = np.zeros((c + 1, c + 1), np.int64)
    images = np.zeros(c + 1, np.int64)
    for r in records:
        present = sorted(set(int(x) for x in r.labels))
        for i in present:
            images[i] += 1
            co[i, i] += int(list(r.labels).count(i) >= 2)
            for j in present:
                co[i, j] += int(i != j)
        for s, o, pr in r.relations:
            fg[r.labels[s], r.labels[o], pr] += 1
        k = 1024.0 / max(r.width, r.height)
        b = np.round(r.boxes.astype(np.float64) * k, 3)
        g = len(b)
        pairs = [(i, j) for i in range(g) for j in range(g) if i != j
                 and min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + 1 > 0
                 and min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + 1 > 0]
        if not pairs:
            pairs = [(i, j) for i in range(g) for j in range(g) if i != j]
        for i, j in pairs:
            bg[r.labels[i], r.labels[j]] += 1
    return fg, bg, co, images


def _random_records(rng, n, c, p):
    out = []
    for i in range(n):
        w, h = int(rng.integers(40, 300)), int(rng.integers(40, 300))
        g = int(rng.integers(0, 7))
        xy = rng.uniform(0, 1, (g, 2)) * [w * 0.8, h * 0.8]
        wh = rng.uniform(2, 0.5 * min(w, h), (g, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
        nr = int(rng.integers(0, 5)) if g else 0
        rels = np.stack([rng.integers(0, g, nr), rng.integers(0, g, nr),
                         rng.integers(1, p + 1, nr)], 1) if nr else np.zeros((0, 3))
        out.append(_rec(i, w, h, boxes, rng.integers(1, c + 1, g), rels))
    return out


def test_matches_loop_reference():
    rng = np.random.default_rng(0)
    recs = _random_records(rng, 60, c=5, p=4)
    st = compute_statistics(recs, 5, 4)
    fg, bg, co, images = _loop_reference(recs, 5, 4)
    np.testing.assert_array_equal(st.fg_matrix, fg)
    np.testing.assert_array_equal(st.bg_matrix, bg)
    np.testing.assert_array_equal(st.cooccurrence, co)
    np.testing.assert_array_equal(st.class_images, images)
    assert st.predicate_counts.sum() == sum(len(r.relations) for r in recs)
    np.testing.assert_array_equal(st.fg_matrix.sum((0, 1)), st.predicate_counts)
    trip = st.triplet_counts()
    assert trip[:, 3].sum() == st.num_relations and np.all(trip[:, 3] > 0)


def test_save_load_round_trip(tmp_path):
    st = compute_statistics(_hand_records(), 3, 3, ["__background__", "a", "b", "c"],
                            ["__background__", "on", "left of", "near"])
    st.save(tmp_path / "stats")
    back = DatasetStatistics.load(tmp_path / "stats")
    for f in ("object_counts", "predicate_counts", "fg_matrix", "bg_matrix", "cooccurrence",
              "class_images"):
        np.testing.assert_array_equal(getattr(back, f), getattr(st, f))
        assert getattr(back, f).dtype == np.int64
    assert back.idx_to_label == st.idx_to_label
    assert back.idx_to_predicate == st.idx_to_predicate and back.num_images == 4
    assert not any(p.name.count(".tmp") for p in (tmp_path / "stats").iterdir())


def test_bad_input_raises(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        compute_statistics([_rec(1, 10, 10, [[0, 0, 5, 5]], [4], [])], 3, 3)
    with pytest.raises(ValueError, match="predicates"):
        compute_statistics([_rec(1, 10, 10, [[0, 0, 5, 5]] * 2, [1, 1], [[0, 1, 9]])], 3, 3)
    with pytest.raises(ValueError, match="relations"):
        compute_statistics([_rec(1, 10, 10, [[0, 0, 5, 5]], [1], [[0, 1, 1]])], 3, 3)
    with pytest.raises(FileNotFoundError):
        DatasetStatistics.load(tmp_path / "nowhere")


def test_format_versions(tmp_path):
    """Version 1 files (before the co-occurrence prior) still load, without it; a newer version
    than this library reads is refused, naming the file and field."""
    import json

    st = compute_statistics(_hand_records(), 3, 3)
    st.save(tmp_path)
    meta = json.loads((tmp_path / "statistics.json").read_text())
    assert meta["format_version"] == 2
    with np.load(tmp_path / "statistics.npz") as z:
        old = {k: z[k] for k in ("object_counts", "predicate_counts", "fg_matrix", "bg_matrix")}
    np.savez(tmp_path / "statistics.npz", **old)
    del meta["format_version"]
    (tmp_path / "statistics.json").write_text(json.dumps(meta))
    v1 = DatasetStatistics.load(tmp_path)
    assert v1.cooccurrence is None and v1.class_images is None
    np.testing.assert_array_equal(v1.fg_matrix, st.fg_matrix)
    (tmp_path / "statistics.json").write_text(json.dumps(dict(meta, format_version=3)))
    with pytest.raises(ValueError, match="format_version"):
        DatasetStatistics.load(tmp_path)
