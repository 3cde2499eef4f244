"""Scene graphs for one's own images (sgg_jax/predict.py, sgg_jax/visualize.py).

Most tests run a fake SGDet function (known canvas boxes and scores) through the real loading,
letterboxing, mapping back, ranking, JSON and PNG code; one end-to-end test restores a tiny
trained run and runs `python -m sgg_jax.main --mode predict`.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from data_pipelines.pipeline import decode_resize
from sgg_jax import images as I
from sgg_jax import images as image_lib
from sgg_jax import predict as P
from sgg_jax import scene_graph as G
from sgg_jax import visualize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 128
CLASSES = ["__background__", "person", "horse", "hat", "tree"]
PREDICATES = ["__background__", "riding", "wearing", "near"]
# Canvas boxes the fake detector always returns (x1, y1, x2, y2), and their scores.
FAKE_BOXES = np.array([[16, 8, 64, 32], [0, 0, 128, 128], [40, 20, 100, 60]], np.float32)
FAKE_SCORES = np.array([0.5, 0.9, 0.7], np.float32)


class FakeSgdet:
    """A deterministic SGDet function with the inference contract; records what it was fed."""

    def __init__(self, rel_scores: np.ndarray | None = None):
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        d = len(FAKE_BOXES)
        self.pairs = np.array([(i, j) for i in range(d) for j in range(d) if i != j], np.int32)
        if rel_scores is None:
            rel_scores = np.random.default_rng(0).random((len(self.pairs), len(PREDICATES)))
            rel_scores /= rel_scores.sum(-1, keepdims=True)
        self.rel_scores = np.asarray(rel_scores, np.float32)

    def __call__(self, images: np.ndarray, image_sizes: np.ndarray) -> dict:
        self.calls.append((images.copy(), image_sizes.copy()))
        b, d = images.shape[0], len(FAKE_BOXES)
        return dict(boxes=np.tile(FAKE_BOXES, (b, 1, 1)), box_mask=np.ones((b, d), bool),
                    labels=np.tile(np.arange(1, d + 1, dtype=np.int32), (b, 1)),
                    scores=np.tile(FAKE_SCORES, (b, 1)),
                    rel_pairs=np.tile(self.pairs, (b, 1, 1)),
                    pair_mask=np.ones((b, len(self.pairs)), bool),
                    rel_scores=np.tile(self.rel_scores, (b, 1, 1)))


def fake_predictor(batch_size: int = 2, top_relations: int = 4) -> P.Predictor:
    return P.Predictor(FakeSgdet(), image_size=S, batch_size=batch_size, class_names=CLASSES,
                       predicate_names=PREDICATES, top_relations=top_relations)


def picture(w: int, h: int, mode: str = "RGB") -> Image.Image:
    """A non-uniform test picture (gradient + a disc), so resizing and flips are visible."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], -1).astype(np.uint8)
    im = Image.fromarray(rgb)
    ImageDraw.Draw(im).ellipse([w // 4, h // 4, w // 2, h // 2], fill=(250, 30, 30))
    return im.convert(mode)


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------
# Letterboxing and mapping back
# ------------------------------------------------------------------------------------------

def pillow_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of Pillow's BILINEAR resize along one axis, written from its documented
    algorithm: a triangle filter of support 1 stretched by the downscale factor (antialiasing;
    not stretched when upscaling), centred on (i + 0.5) * in / out, normalised per output."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    w = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - stretch + 0.5), 0)
        hi = min(int(centre + stretch + 0.5), in_size)
        x = np.arange(lo, hi)
        t = np.maximum(1.0 - np.abs((x + 0.5 - centre) / stretch), 0.0)
        w[i, lo:hi] = t / t.sum()
    return w


def numpy_resize(rgb: np.ndarray, tw: int, th: int) -> np.ndarray:
    """Independent NumPy bilinear resize of an [h, w, 3] uint8 array to [th, tw, 3]: horizontal
    pass, then vertical, each rounded to uint8 as Pillow does (equal up to 1 level: Pillow's
    weights are fixed-point)."""
    a = np.asarray(rgb, np.float64)
    h0, w0 = a.shape[:2]
    if tw != w0:
        a = np.clip(np.floor(np.einsum("ox,yxc->yoc", pillow_bilinear_weights(w0, tw), a) + 0.5),
                    0, 255)
    if th != h0:
        a = np.clip(np.floor(np.einsum("oy,yxc->oxc", pillow_bilinear_weights(h0, th), a) + 0.5),
                    0, 255)
    return a


def assert_letterboxed(canvas: np.ndarray, content: np.ndarray):
    """canvas [S, S, 3] uint8 = `content` (float, within 1 level) at the top left, zeros around."""
    th, tw = content.shape[:2]
    assert canvas.shape == (S, S, 3) and canvas.dtype == np.uint8
    diff = np.abs(canvas[:th, :tw].astype(np.float64) - content)
    assert diff.max() <= 1.0 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    assert not canvas[th:].any() and not canvas[:, tw:].any()


# (width, height) -> (scale, content height, content width) by hand: scale = 128 / long side,
# content = the sides times the scale, rounded (at least 1 pixel).
LETTERBOX_HAND = {
    (200, 100): (0.64, 64, 128),            # 100 * 0.64 = 64
    (100, 300): (128 / 300, 128, 43),       # 100 * 0.4267 = 42.67 -> 43
    (37, 37): (128 / 37, 128, 128),         # upscaled
    (640, 481): (0.2, 96, 128),             # 481 * 0.2 = 96.2 -> 96
    (1, 50): (2.56, 128, 3),                # 1 * 2.56 -> 3
}


@pytest.mark.parametrize("w,h", list(LETTERBOX_HAND))
def test_letterbox_geometry_by_hand_and_pixels_by_numpy(w, h):
    """The letterbox of a picture: hand-computed scale and content size, content pixels equal to
    an independent NumPy bilinear resize (Pillow's antialiased filter), zero padding; the same
    canvas as the training pipeline's decode of the PNG file."""
    im = picture(w, h)
    scale, th, tw = LETTERBOX_HAND[(w, h)]
    canvas, got_scale, got_th, got_tw = image_lib.letterbox(im, S)
    assert (got_th, got_tw) == (th, tw)
    assert got_scale == pytest.approx(scale, rel=1e-12)
    assert_letterboxed(canvas, numpy_resize(np.asarray(im), tw, th))
    pipeline_canvas, pipeline_scale, pth, ptw = decode_resize(encoded(im, "PNG"), S)
    np.testing.assert_array_equal(pipeline_canvas, canvas)
    assert (pipeline_scale, pth, ptw) == (got_scale, th, tw)


def test_jpeg_files_take_the_pipeline_path_exactly(tmp_path):
    """A JPEG without rotation is decoded as training images are: libjpeg's DCT-domain 1/4
    downscale (600x300 -> 150x75, the smallest of 1/2, 1/4, 1/8 still >= the 128x64 content),
    then the bilinear resize. Checked against Pillow's reduced decode resized in NumPy, and
    shown to differ from resizing the full-resolution decode (so the draft path is the one
    taken)."""
    data = encoded(picture(600, 300), "JPEG", quality=90)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    li = P.load_image(str(path), S)
    assert li.scale == pytest.approx(128 / 600, rel=1e-12)
    assert (li.content_hw, li.image.size) == ((64, 128), (600, 300))
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (128, 64))
        assert im.size == (150, 75)
        reduced = np.asarray(im.convert("RGB"))
    with Image.open(io.BytesIO(data)) as im:
        full = np.asarray(im.convert("RGB"))
    assert_letterboxed(li.canvas, numpy_resize(reduced, 128, 64))
    assert np.abs(li.canvas[:64].astype(np.float64) - numpy_resize(full, 128, 64)).max() > 4
    np.testing.assert_array_equal(np.asarray(li.image), full)  # the original, for drawing


# (width, height) -> the fake's two first canvas boxes in original pixels, by hand:
# scale = 128 / long side; box / scale, clipped to the image.
HAND = {
    (200, 100): [[25, 12.5, 100, 50], [0, 0, 200, 100]],          # scale 0.64
    (100, 300): [[37.5, 18.75, 100, 75], [0, 0, 100, 300]],       # 128/300; x2 150 -> 100
    (640, 480): [[80, 40, 320, 160], [0, 0, 640, 480]],           # scale 0.2
    (1000, 400): [[125, 62.5, 500, 250], [0, 0, 1000, 400]],      # scale 0.128
}
CONTENT_HW = {(200, 100): (64, 128), (100, 300): (128, 43), (640, 480): (96, 128),
              (1000, 400): (51, 128)}


@pytest.mark.parametrize("size", list(HAND))
def test_boxes_map_back_to_original_pixels(size):
    g = fake_predictor()
    w, h = size
    for image in (picture(w, h), np.asarray(picture(w, h))):
        sg = g.predict(image)
        assert (sg.width, sg.height) == size
        images, sizes = g.sgdet_fn.calls[-1]
        assert images.shape == (1, S, S, 3) and tuple(sizes[0]) == CONTENT_HW[size]
        by_label = {int(l): b for l, b in zip(sg.labels, sg.boxes)}
        np.testing.assert_allclose(by_label[1], HAND[size][0], atol=0.01)
        np.testing.assert_allclose(by_label[2], HAND[size][1], atol=0.01)


def test_batches_are_padded_to_a_power_of_two_bucket():
    g = fake_predictor(batch_size=6)
    assert [g.bucket_size(n) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    graphs = g.predict_batch([picture(50 + 10 * i, 40) for i in range(9)])
    assert [sg.width for sg in graphs] == [50 + 10 * i for i in range(9)]
    assert [c[0].shape[0] for c in g.sgdet_fn.calls] == [6, 4]  # 6 images, then 3 of 4 rows
    # the padding row repeats the last real image (never an empty, zero-size one)
    np.testing.assert_array_equal(g.sgdet_fn.calls[1][1][3], g.sgdet_fn.calls[1][1][2])
    np.testing.assert_array_equal(g.sgdet_fn.calls[1][0][3], g.sgdet_fn.calls[1][0][2])
    g.predict(picture(30, 20))  # one image runs at batch 1
    assert g.sgdet_fn.calls[-1][0].shape[0] == 1
    with pytest.raises(ValueError, match="1..6 images"):
        g.bucket_size(7)


# ------------------------------------------------------------------------------------------
# Ranking
# ------------------------------------------------------------------------------------------

def reference_triplets(obj_scores, pairs, rel_scores, valid, box_mask, k):
    """Loop reference: best predicate per valid pair of two real, distinct detections, score =
    s * o * predicate, highest first, ties in pair order."""
    rows = []
    for m in range(len(pairs)):
        s, o = int(pairs[m, 0]), int(pairs[m, 1])
        if not valid[m] or s == o or not box_mask[s] or not box_mask[o]:
            continue
        best, best_p = -1.0, -1
        for p in range(1, rel_scores.shape[1]):
            if rel_scores[m, p] > best:
                best, best_p = float(rel_scores[m, p]), p
        rows.append((m, s, o, best_p, float(obj_scores[s]) * float(obj_scores[o]) * best))
    rows.sort(key=lambda r: (-r[4], r[0]))
    return [(s, o, p, sc) for _, s, o, p, sc in rows[:k]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_ranking_matches_a_loop_reference(seed):
    rng = np.random.default_rng(seed)
    d, p1, b = 7, 5, 2
    pairs = np.array([(i, j) for i in range(d) for j in range(d) if i != j] + [(2, 2)], np.int32)
    m = len(pairs)
    # Coarse values make exact ties in both predicate and triplet scores.
    rel = rng.integers(1, 4, (b, m, p1)).astype(np.float32) / 4
    scores = rng.integers(1, 5, (b, d)).astype(np.float32) / 4
    box_mask = rng.random((b, d)) < 0.8
    pair_mask = rng.random((b, m)) < 0.9
    canvas_boxes = np.stack([np.arange(d) * 10.0, np.zeros(d), np.arange(d) * 10.0 + 5,
                             np.full(d, 5.0)], 1).astype(np.float32)
    out = dict(boxes=np.tile(canvas_boxes, (b, 1, 1)), box_mask=box_mask,
               labels=np.tile(np.arange(1, d + 1, dtype=np.int32), (b, 1)), scores=scores,
               rel_pairs=np.tile(pairs, (b, 1, 1)), pair_mask=pair_mask, rel_scores=rel)
    li = I.load_image(picture(128, 128), S)
    for i in range(b):
        k = 15
        sg = G.build_scene_graph(out, i, li, ["bg"] + [f"c{j}" for j in range(d)],
                                 ["bg"] + [f"p{j}" for j in range(p1 - 1)], k)
        # objects: the real detections, by score (stable)
        real = np.flatnonzero(box_mask[i])
        assert list(sg.labels - 1) == list(real[np.argsort(-scores[i, real], kind="stable")])
        det = sg.labels - 1  # labels were detection index + 1
        got = [(int(det[s]), int(det[o]), int(p), float(sc))
               for (s, o), p, sc in zip(sg.rel_pairs, sg.rel_predicates, sg.rel_scores)]
        want = reference_triplets(scores[i], pairs, rel[i], pair_mask[i], box_mask[i], k)
        assert [g[:3] for g in got] == [w[:3] for w in want]
        np.testing.assert_allclose([g[3] for g in got], [w[3] for w in want], atol=1e-6)


# ------------------------------------------------------------------------------------------
# JSON and PNG
# ------------------------------------------------------------------------------------------

def test_json_schema_and_round_trip():
    sg = fake_predictor(top_relations=4).predict(picture(300, 200))
    d = json.loads(sg.to_json())
    assert set(d) == {"format", "image", "mode", "objects", "relations", "vocab"}
    assert d["image"] == {"path": None, "width": 300, "height": 200}
    assert d["vocab"] == {"classes": CLASSES, "predicates": PREDICATES}
    assert len(d["objects"]) == 3 and len(d["relations"]) == 4
    for o in d["objects"]:
        assert set(o) == {"box", "label", "name", "score"}
        assert o["name"] == CLASSES[o["label"]] and len(o["box"]) == 4
        x1, y1, x2, y2 = o["box"]
        assert 0 <= x1 <= x2 <= 300 and 0 <= y1 <= y2 <= 200
    assert [o["score"] for o in d["objects"]] == sorted((o["score"] for o in d["objects"]),
                                                        reverse=True)
    objs = d["objects"]
    for r in d["relations"]:
        assert set(r) == {"subject", "object", "predicate", "name", "score", "predicate_score"}
        assert r["name"] == PREDICATES[r["predicate"]] and r["predicate"] >= 1
        assert r["subject"] != r["object"]
        want = objs[r["subject"]]["score"] * objs[r["object"]]["score"] * r["predicate_score"]
        assert r["score"] == pytest.approx(want, abs=1e-5)
    assert [r["score"] for r in d["relations"]] == sorted((r["score"] for r in d["relations"]),
                                                          reverse=True)
    back = G.SceneGraph.from_json(sg.to_json())
    assert back.to_dict() == sg.to_dict()
    for f in ("boxes", "labels", "scores", "rel_pairs", "rel_predicates", "rel_scores"):
        np.testing.assert_array_equal(getattr(back, f), getattr(sg, f), err_msg=f)
    assert sg.triplets[0][3] == PREDICATES[sg.triplets[0][2]]
    with pytest.raises(ValueError, match="bad.json"):
        G.SceneGraph.from_json('{"objects": []}', source="bad.json")


WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "hat", "on", "man"]


def captioned_output() -> dict:
    """One image's SGDet output with captions (MSDN's contract, B = 1, Q = 5): rows 0-3 real
    (scores 0.3, 0.8, 0.5, 0.8: a tie), row 4 padding with the highest score (must be dropped)."""
    out = {k: v[:1] for k, v in FakeSgdet()(np.zeros((1, S, S, 3), np.uint8),
                                             np.array([[S, S]])).items()}
    out["region_boxes"] = np.array([[[0, 0, 32, 32], [32, 16, 96, 64], [8, 72, 120, 124],
                                     [64, 0, 128, 40], [0, 0, 128, 128]]], np.float32)
    out["region_mask"] = np.array([[True, True, True, True, False]])
    out["region_scores"] = np.array([[0.3, 0.8, 0.5, 0.8, 0.99]], np.float32)
    out["captions"] = np.array([[[1, 4, 5, 6, 2, 0],     # "a red hat"
                                 [1, 8, 2, 7, 7, 7],     # "man" (ids after <end> ignored)
                                 [1, 6, 7, 4, 8, 0],     # "hat on a man" (ends in padding)
                                 [1, 2, 0, 0, 0, 0],     # "" (at once <end>)
                                 [1, 99, 2, 0, 0, 0]]],  # padding row: never decoded
                               np.int32)
    return out


def test_build_scene_graph_keeps_the_top_valid_regions_with_their_captions():
    loaded = I.load_image(picture(256, 128), S)  # scale 0.5: original = canvas * 2
    out = captioned_output()
    sg = G.build_scene_graph(out, 0, loaded, CLASSES, PREDICATES, 4, WORDS, top_regions=3)
    # By score, ties in row order (1 before 3), the padding row never; the top 3.
    np.testing.assert_allclose(sg.region_scores, [0.8, 0.8, 0.5], atol=1e-6)
    assert sg.region_captions == ["man", "", "hat on a man"]
    np.testing.assert_allclose(sg.region_boxes, [[64, 32, 192, 128], [128, 0, 256, 80],
                                                 [16, 128, 240, 128]])  # y clipped to h = 128
    assert len(G.build_scene_graph(out, 0, loaded, CLASSES, PREDICATES, 4, WORDS,
                                   top_regions=10).region_captions) == 4
    # Greedy NMS: rows 1 and 3 overlap with IoU 768 / 4864 = 0.158 (canvas), no other pair does.
    caps = [G.build_scene_graph(out, 0, loaded, CLASSES, PREDICATES, 4, WORDS, top_regions=10,
                                region_nms=t).region_captions for t in (0.15, 0.16)]
    assert caps == [["man", "hat on a man", "a red hat"], ["man", "", "hat on a man", "a red hat"]]
    # Without captions (or without a vocabulary) there are no regions, as before.
    assert not G.build_scene_graph(out, 0, loaded, CLASSES, PREDICATES, 4).has_regions
    plain = {k: v for k, v in out.items() if k != "captions"}
    assert G.build_scene_graph(plain, 0, loaded, CLASSES, PREDICATES, 4, WORDS).region_boxes \
        is None


def test_regions_round_trip_through_json_and_old_documents_still_load():
    sg = G.build_scene_graph(captioned_output(), 0, I.load_image(picture(256, 128), S),
                             CLASSES, PREDICATES, 4, WORDS, top_regions=3)
    text = sg.to_json()
    d = json.loads(text)
    assert list(d) == ["format", "image", "mode", "objects", "relations", "regions", "vocab"]
    assert d["format"] == G.FORMAT
    assert d["regions"][0] == {"box": [64.0, 32.0, 192.0, 128.0], "score": 0.8,
                               "caption": "man"}
    assert sum(line.lstrip().startswith('{"box"') for line in text.splitlines()) == 3 + 3
    back = G.SceneGraph.from_json(text)
    assert back.to_dict() == d and back.region_captions == sg.region_captions
    np.testing.assert_array_equal(back.region_boxes, sg.region_boxes)
    # A document without "regions" (written before regions existed) loads without regions.
    del d["regions"]
    old = G.SceneGraph.from_dict(d)
    assert not old.has_regions and "regions" not in old.to_dict()
    np.testing.assert_array_equal(old.boxes, sg.boxes)
    for bad in ([{"box": [1, 2, 3], "score": 0.5, "caption": "a"}], [{"box": [1, 2, 3, 4]}],
                [{"box": [1, 2, 3, 4], "score": 0.5, "caption": 7}], {"box": [1, 2, 3, 4]},
                ["a"]):
        with pytest.raises(P.DataFormatError, match="g.json"):
            G.SceneGraph.from_dict(dict(json.loads(text), regions=bad), source="g.json")


def test_regions_are_drawn_dashed_in_their_colour_with_a_legend():
    im = Image.new("RGB", (512, 512), (255, 255, 255))  # drawn at scale 1
    loaded = I.load_image(im, S)
    out = captioned_output()
    out["box_mask"][:] = False  # no objects or relations: only the regions are drawn
    sg = G.build_scene_graph(out, 0, loaded, CLASSES, PREDICATES, 4, WORDS, top_regions=2)
    plain = G.build_scene_graph(out, 0, loaded, CLASSES, PREDICATES, 4)
    with_regions, without = sg.draw(), plain.draw()
    assert with_regions.height > without.height and with_regions.width >= without.width
    # The image area: without regions untouched; with them, region colour along the left edge
    # of the best region (canvas [32, 16, 96, 64] -> [128, 64, 384, 256]), dashed (gaps).
    np.testing.assert_array_equal(np.asarray(without)[:512, :512], np.asarray(im))
    pix = np.asarray(with_regions)[:512, :512].astype(int)
    is_region = (np.abs(pix - np.array(visualize.REGION_COLOR)).sum(-1) == 0)
    edge = is_region[70:210, 126:131].any(1)  # above the "c1" tag at its bottom-left
    assert 0.3 < edge.mean() < 0.9
    assert not is_region[300:500, 10:500].any()  # below both regions and their tags
    # Objects drawn as before when a graph has no regions: the same pixels as with regions off.
    sg_objs = fake_predictor().predict(picture(300, 200))
    ref = visualize.draw_scene_graph(sg_objs.image, sg_objs)
    sg_objs.region_boxes, sg_objs.region_scores, sg_objs.region_captions = \
        np.zeros((0, 4)), np.zeros(0), []
    drawn = visualize.draw_scene_graph(sg_objs.image, sg_objs)
    np.testing.assert_array_equal(np.asarray(drawn)[:200], np.asarray(ref)[:200])
    assert drawn.height > ref.height  # the "Region captions: none" line


def test_png_is_the_image_with_drawings_and_a_legend(tmp_path):
    w, h = 600, 400
    im = picture(w, h)
    im.save(tmp_path / "photo.png")
    summary = fake_predictor().predict_many([str(tmp_path / "photo.png")], str(tmp_path / "out"),
                                            progress=False)
    assert summary.exit_code == 0 and len(summary.written) == 1
    png = Image.open(tmp_path / "out" / "photo.png").convert("RGB")
    assert png.width >= w and png.height > h  # legend under the image
    top = np.asarray(png)[:h, :w].astype(int)
    src = np.asarray(im).astype(int)
    # label 1 (score 0.5) box, canvas [16, 8, 64, 32] / (128 / 600) = [75, 37.5, 300, 150]
    assert np.abs(top[90:100, 74:77] - src[90:100, 74:77]).sum() > 0   # its left edge
    np.testing.assert_array_equal(top[300:390, 320:340], src[300:390, 320:340])  # nothing there
    assert visualize.draw_scale(w, h) == 1


def test_small_images_are_drawn_enlarged():
    sg = fake_predictor().predict(picture(64, 40))
    out = sg.draw()
    k = visualize.draw_scale(64, 40)
    assert k == 8 and out.width >= 64 * k and out.height > 40 * k
    assert (sg.width, sg.height) == (64, 40)  # the graph stays in original pixels


@pytest.mark.parametrize("mode,fmt", [("RGBA", "PNG"), ("L", "PNG"), ("P", "PNG"),
                                      ("L", "JPEG"), ("RGB", "GIF"), ("RGB", "BMP"),
                                      ("RGB", "WEBP")])
def test_any_mode_and_format_is_read_as_rgb(tmp_path, mode, fmt):
    im = picture(90, 60, mode)
    path = tmp_path / f"x.{fmt.lower()}"
    im.save(path, format=fmt)
    li = I.load_image(str(path), S)
    assert li.image.mode == "RGB" and li.image.size == (90, 60)
    assert li.canvas.shape == (S, S, 3) and li.content_hw == (85, 128)
    assert li.canvas[:85].any() and not li.canvas[85:].any()  # content on top, zero padding
    sg = fake_predictor().predict(str(path))
    assert (sg.width, sg.height) == (90, 60) and sg.image_path == str(path)


def test_exif_rotated_jpeg_is_upright(tmp_path):
    """Orientation 6 (rotate 90 degrees clockwise to display): a stored 200x100 photo is
    100 wide and 200 tall; boxes are in the upright image's pixels."""
    stored = picture(200, 100)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    g = fake_predictor()
    sg = g.predict(str(path))
    assert (sg.width, sg.height) == (100, 200)
    assert tuple(g.sgdet_fn.calls[-1][1][0]) == (128, 64)
    by_label = {int(l): b for l, b in zip(sg.labels, sg.boxes)}
    np.testing.assert_allclose(by_label[1], [25, 12.5, 100, 50], atol=0.01)  # scale 0.64
    upright = stored.transpose(Image.Transpose.ROTATE_270)  # what a viewer shows
    li = I.load_image(str(path), S)
    diff = np.abs(li.canvas[:128, :64].astype(int)
                  - np.asarray(upright.resize((64, 128), Image.BILINEAR)).astype(int))
    assert diff.mean() < 6  # JPEG noise only; unrotated it would be far off


# ------------------------------------------------------------------------------------------
# Files: discovery, naming, errors
# ------------------------------------------------------------------------------------------

def test_find_images_scans_folders_sorted(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for name in ("b.JPG", "a.png", "notes.txt", ".hidden.png", "c.webp"):
        (d / name).write_bytes(b"x")
    (d / "sub").mkdir()
    (d / "sub" / "z.png").write_bytes(b"x")
    extra = tmp_path / "extra.dat"
    got = I.find_images(f"{d},{extra}")
    assert got == [str(d / "a.png"), str(d / "b.JPG"), str(d / "c.webp"), str(extra)]
    assert I.find_images([str(d)]) == got[:3]


def test_output_names_are_unique_and_never_overwrite_inputs(tmp_path):
    assert P.output_stems(["x/a.jpg", "y/a.png", "b.png", "a.gif"]) == ["a", "a-2", "b", "a-3"]
    picture(20, 20).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="overwrite an input"):
        fake_predictor().predict_many([str(tmp_path / "a.png")], str(tmp_path), progress=False)


def bad_inputs(tmp_path):
    """Two good images and three bad ones: truncated JPEG, text named .jpg, missing file."""
    d = tmp_path / "in"
    d.mkdir()
    picture(120, 80).save(d / "good1.png")
    picture(90, 150).save(d / "good2.jpg")
    (d / "corrupt.jpg").write_bytes(encoded(picture(300, 200), "JPEG")[:700])
    (d / "text.jpg").write_text("this is not an image\n")
    return d, str(d / "missing.png")


def test_bad_files_are_reported_and_skipped(tmp_path):
    d, missing = bad_inputs(tmp_path)
    err = io.StringIO()
    summary = fake_predictor().predict_many(f"{d},{missing}", str(tmp_path / "out"),
                                            progress=False, stderr=err)
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 3, lines
    for name in ("corrupt.jpg", "text.jpg", "missing.png"):
        assert sum(name in ln and ln.startswith("error:") for ln in lines) == 1, (name, lines)
    assert sorted(os.path.basename(p) for p, _ in summary.failed) == \
        ["corrupt.jpg", "missing.png", "text.jpg"]
    assert summary.exit_code == 2 and summary.line() == "predict: 2 ok, 3 failed"
    assert sorted(os.listdir(tmp_path / "out")) == ["good1.json", "good1.png", "good2.json",
                                                   "good2.png"]
    assert json.loads((tmp_path / "out" / "good2.json").read_text())["image"]["width"] == 90
    with pytest.raises(ValueError, match="text.jpg"):
        I.load_image(str(d / "text.jpg"), S)
    with pytest.raises(ValueError, match="HxWx3"):
        I.load_image(np.zeros((4, 4, 3), np.float32), S)


_CLI_WITH_FAKE_MODEL = """
import sys
sys.path.insert(0, {tests!r})
import test_predict
from sgg_jax import predict
predict.load = lambda *a, **k: test_predict.fake_predictor()
from sgg_jax.main import run
sys.argv = ["sgg_jax.main"] + sys.argv[1:]
run()
"""


def test_cli_exits_2_when_an_image_fails(tmp_path):
    """`--mode predict` through sgg_jax.main (the model replaced by the fake)."""
    d, missing = bad_inputs(tmp_path)
    code = _CLI_WITH_FAKE_MODEL.format(tests=os.path.join(REPO, "tests"))
    out = subprocess.run(
        [sys.executable, "-c", code, "--config", os.path.join(REPO, "configs/imp.py:tiny"),
         "--mode", "predict", "--checkpoint", str(tmp_path / "run"),
         "--images", f"{d},{missing}", "--output", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "predict: 2 ok, 3 failed" in out.stderr
    for name in ("corrupt.jpg", "text.jpg", "missing.png"):
        assert f"error: {os.path.join(d, name) if name != 'missing.png' else missing}" \
            in out.stderr, out.stderr[-2000:]
    assert len(os.listdir(tmp_path / "out")) == 4


def test_import_sgg_jax_stays_cheap():
    code = ("import sys, sgg_jax; assert callable(sgg_jax.load); "
            "print(sorted(m for m in ('jax', 'flax', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_graph_read_back_from_json_draws_from_its_image_path(tmp_path):
    picture(300, 200).save(tmp_path / "p.png")
    sg = fake_predictor().predict(str(tmp_path / "p.png"))
    back = G.SceneGraph.from_json(sg.to_json())
    assert back.image is None and back.image_path == str(tmp_path / "p.png")
    np.testing.assert_array_equal(np.asarray(back.draw()), np.asarray(sg.draw()))


# ------------------------------------------------------------------------------------------
# End to end: a tiny trained run -> python -m sgg_jax.main --mode predict
# ------------------------------------------------------------------------------------------

def test_end_to_end_predict_on_generated_images(tiny_sgdet_run, tmp_path):
    workdir, data = tiny_sgdet_run
    src = os.path.join(data.raw_dir, "VG_100K")
    names = sorted(os.listdir(src))[:3]
    ims = [Image.open(os.path.join(src, n)).convert("RGB") for n in names]
    inputs = tmp_path / "in"
    inputs.mkdir()
    ims[0].save(inputs / "square.jpg")
    ims[1].crop((0, 0, ims[1].width, ims[1].height * 2 // 3)).convert("RGBA").save(
        inputs / "wide.png")
    ims[2].resize((ims[2].width // 2, ims[2].height)).save(inputs / "tall.bmp")
    out_dir = tmp_path / "out"
    out = subprocess.run(
        [sys.executable, "-m", "sgg_jax.main", "--config",
         os.path.join(REPO, "configs/imp.py:tiny"),
         "--mode", "predict", "--checkpoint", workdir, "--images", str(inputs),
         "--output", str(out_dir), "--config.predict.top_relations=5"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "predict: 3 ok, 0 failed" in out.stderr
    assert sorted(os.listdir(out_dir)) == sorted(f"{s}.{e}" for s in ("square", "tall", "wide")
                                                 for e in ("json", "png"))
    for stem in ("square", "tall", "wide"):
        d = json.loads((out_dir / f"{stem}.json").read_text())
        w, h = Image.open(next(inputs.glob(stem + ".*"))).size
        assert (d["image"]["width"], d["image"]["height"]) == (w, h)
        assert d["vocab"]["classes"] == list(data.idx_to_label)
        assert d["vocab"]["predicates"] == list(data.idx_to_predicate)
        n = len(d["objects"])
        assert n >= 1 and len(d["relations"]) == min(5, n * (n - 1))
        for o in d["objects"]:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            assert 1 <= o["label"] < len(data.idx_to_label) and 0 <= o["score"] <= 1
        for r in d["relations"]:
            assert 0 <= r["subject"] < len(d["objects"]) and 0 <= r["object"] < len(d["objects"])
            assert 1 <= r["predicate"] < len(data.idx_to_predicate)
        png = Image.open(out_dir / f"{stem}.png")
        k = visualize.draw_scale(w, h)
        assert png.width >= w * k and png.height > h * k


def test_a_run_directory_alone_predicts_and_unfinished_runs_are_refused(tiny_sgdet_run,
                                                                         tmp_path):
    """A run copied elsewhere predicts with its dataset gone (config.json + dataset facts +
    checkpoints suffice). A run whose stage stopped early is refused, naming the stage and the
    step, unless allow_partial; evaluated that way, results.json says it is partial."""
    import shutil

    from sgg_jax.training import runs, trainer

    workdir, data = tiny_sgdet_run
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(workdir, copy)
    image = Image.open(os.path.join(data.raw_dir, "VG_100K", sorted(os.listdir(
        os.path.join(data.raw_dir, "VG_100K")))[0])).convert("RGB")
    cache = os.path.dirname(data.raw_dir)
    away = cache + ".away"
    os.rename(cache, away)  # no dataset anywhere
    try:
        predictor = P.load(copy)
        sg = predictor.predict(image)
    finally:
        os.rename(away, cache)
    assert sg.class_names == list(data.idx_to_label)
    assert len(sg.labels) >= 1 and sg.boxes.shape[1] == 4

    # The detector stage now asks for 2 steps; its checkpoint has 1 and no finished marker.
    config = json.loads((copy / "config.json").read_text())
    config["train"]["stages"]["detector"]["num_steps"] = 2
    (copy / "config.json").write_text(json.dumps(config))
    os.remove(copy / "checkpoints" / "detector" / runs.FINISHED_FILE)
    with pytest.raises(runs.UnfinishedRunError, match=r"stage 'detector' stopped at step 1 of 2"):
        P.load(copy)
    assert P.load(copy, allow_partial=True).predict(image).boxes.shape[1] == 4
    run_config = runs.load_run_config(str(copy))
    with run_config.unlocked():
        run_config.eval.allow_partial = True
        run_config.eval.num_pictures = 0
    results = trainer.evaluate_run(run_config, str(copy))
    assert results["partial"] == {"stage": "detector", "step": 1, "num_steps": 2}
    assert json.loads((copy / "results.json").read_text())["partial"] == results["partial"]


def test_a_predict_killed_mid_write_leaves_only_whole_files(tiny_sgdet_run, tmp_path):
    """kill -9 between an output's temporary file and its rename, at a random output: every
    <stem>.json / <stem>.png then present is whole (the JSON parses, the PNG decodes), and the
    same command rerun writes them all, equal to what the killed run had finished."""
    import random
    import signal

    workdir, data = tiny_sgdet_run
    src = os.path.join(data.raw_dir, "VG_100K")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in sorted(os.listdir(src))[:4]:
        Image.open(os.path.join(src, name)).convert("RGB").save(inputs / name)
    out_dir = tmp_path / "out"
    seed = random.randrange(1 << 30)
    n = random.Random(seed).randrange(1, 2 * 4 + 1)  # 4 images, a JSON and a PNG each
    args = ["--config", os.path.join(REPO, "configs/imp.py:tiny"), "--mode", "predict",
            "--checkpoint", workdir, "--images", str(inputs), "--output", str(out_dir)]
    killed = subprocess.run([sys.executable, os.path.join(REPO, "tests", "kill_run.py"),
                             "output", str(n), "--", *args],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, f"seed {seed}: {killed.stderr[-3000:]}"
    finished = {}
    for name in sorted(os.listdir(out_dir)):
        path = out_dir / name
        if name.endswith(".json"):
            finished[name] = json.loads(path.read_text())
        elif name.endswith(".png"):
            with Image.open(path) as im:
                im.load()
            finished[name] = path.read_bytes()
        else:
            assert ".tmp." in name, name  # a temporary file, never read
    # at most the n-1 renames before the kill, plus one from another writer thread; with 4
    # writer threads up to 3 earlier renames may still be in flight when the n-th one kills
    assert max(0, n - 4) <= len(finished) <= n, (seed, sorted(finished))
    again = subprocess.run([sys.executable, "-m", "sgg_jax.main", *args], cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "predict: 4 ok, 0 failed" in again.stderr, again.stderr
    for name, before in finished.items():
        path = out_dir / name
        now = json.loads(path.read_text()) if name.endswith(".json") else path.read_bytes()
        assert now == before, (seed, name)
    assert len([f for f in os.listdir(out_dir) if f.endswith((".json", ".png"))]) == 8


# ------------------------------------------------------------------------------------------
# Boxes found elsewhere
# ------------------------------------------------------------------------------------------

def _test_image(data, k: int = 0, limit: int = 6):
    """(path, ground-truth boxes [G, 4] original pixels, labels [G]) of the k-th test image,
    its first `limit` objects (the tiny preset holds 8)."""
    gt = data.ground_truth("test")
    source = data.sources["test"]
    image_id = int(source[k]["image_id"])
    name = source[k]["file_name"]
    path = os.path.join(data.raw_dir, "VG_100K", name.decode() if isinstance(name, bytes)
                        else name)
    return path, gt[image_id]["boxes"][:limit], gt[image_id]["labels"][:limit]


def test_given_boxes_are_related_as_predcls_and_sgcls_score(tiny_sgdet_run):
    """Boxes and classes given: PredCls among exactly those boxes, in their order, with the
    relation scores of the evaluator's own PredCls step on the same canvas; permuting the
    boxes permutes the graph. Without classes: SGCls, the model's classes."""
    import jax

    import sgg_jax
    from data_pipelines.pipeline import empty_batch
    from sgg_jax.images import load_image
    from sgg_jax.training import data as data_lib
    from sgg_jax.training.eval_loop import make_score_step

    workdir, data = tiny_sgdet_run
    g = sgg_jax.load(workdir, {"predict.top_relations": 1000})
    path, boxes, labels = _test_image(data)
    n = len(labels)
    names = [data.idx_to_label[int(i)] for i in labels]
    sg = g.predict(path, boxes=boxes.tolist(), labels=names)
    assert sg.mode == "predcls" and json.loads(sg.to_json())["mode"] == "predcls"
    np.testing.assert_allclose(sg.boxes, boxes, atol=0.01)
    np.testing.assert_array_equal(sg.labels, labels)
    np.testing.assert_array_equal(sg.scores, np.ones(n))
    assert len(sg.rel_pairs) == n * (n - 1)  # graph constraint: one predicate per pair

    # the evaluator's PredCls step on a batch holding the same canvas and boxes
    from sgg_jax import inference
    exp, params = inference.restore_for_inference(workdir)
    li = load_image(path, g.image_size)
    cfg = data_lib.input_config(exp.config, exp.facts, batch_size=g.batch_size, train=False)
    batch = empty_batch(cfg, g.batch_size)
    batch.images[0] = li.canvas
    batch.image_sizes[:] = li.content_hw
    batch.boxes[0, :n] = boxes * li.scale
    batch.box_mask[0, :n] = True
    batch.labels[0, :n] = labels
    ref = jax.device_get(jax.jit(make_score_step(exp.model("predcls"), "predcls",
                                                 exp.model_state))(
        exp.relation_params(params), batch))
    by_pair = {tuple(p): ref["rel_scores"][0, m] for m, p in enumerate(ref["pairs"][0])
               if ref["pair_mask"][0, m]}
    for (s, o), p, score in zip(sg.rel_pairs, sg.rel_predicates, sg.rel_predicate_scores):
        assert score == pytest.approx(float(by_pair[(s, o)][p]), abs=2e-6)
        assert p == 1 + int(np.argmax(by_pair[(s, o)][1:]))

    perm = np.random.default_rng(0).permutation(n)
    flipped = g.predict(path, boxes=boxes[perm].tolist(), labels=labels[perm].tolist())
    # the same pairs with the same scores (an untrained model's near-ties may pick another
    # predicate of equal score: message passing sums in another order)
    moved = {(int(perm[s]), int(perm[o])): (int(p), float(ps)) for (s, o), p, ps in
             zip(flipped.rel_pairs, flipped.rel_predicates, flipped.rel_predicate_scores)}
    assert len(moved) == n * (n - 1)
    for (s, o), best in by_pair.items():
        p, score = moved[(s, o)]
        assert score == pytest.approx(float(best[p]), abs=1e-5)
        assert score == pytest.approx(float(best[1:].max()), abs=1e-5)

    sgcls = g.predict(path, boxes=boxes.tolist())
    assert sgcls.mode == "sgcls" and len(sgcls.labels) == n
    assert np.all((sgcls.labels >= 1) & (sgcls.labels < len(data.idx_to_label)))
    assert np.all((sgcls.scores > 0) & (sgcls.scores <= 1))


def test_the_cli_takes_a_boxes_file_and_names_each_bad_entry(tiny_sgdet_run, tmp_path):
    workdir, data = tiny_sgdet_run
    inputs = tmp_path / "in"
    inputs.mkdir()
    entries, names = {}, []
    for k in range(6):
        path, boxes, labels = _test_image(data, k % len(data.sources["test"]))
        name = f"im{k}.jpg"
        Image.open(path).convert("RGB").save(inputs / name)
        names.append(name)
        entries[name] = {"boxes": boxes.tolist(),
                         "labels": [data.idx_to_label[int(i)] for i in labels]}
    del entries["im1.jpg"]["labels"]                      # SGCls
    entries["im2.jpg"]["boxes"][1][2] = entries["im2.jpg"]["boxes"][1][0]  # zero width
    entries["im3.jpg"]["labels"][0] = "unicorn"          # not a class of the run
    del entries["im4.jpg"]                               # no entry
    entries["im5.jpg"]["boxes"] = entries["im5.jpg"]["boxes"] * 20  # over max_objects
    entries["im5.jpg"]["labels"] = entries["im5.jpg"]["labels"] * 20
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(entries))
    out_dir = tmp_path / "out"
    out = subprocess.run(
        [sys.executable, "-m", "sgg_jax.main", "--mode", "predict", "--checkpoint", workdir,
         "--images", str(inputs), "--output", str(out_dir), "--boxes", str(boxes_file)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "predict: 2 ok, 4 failed" in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4 and "Traceback" not in out.stderr, out.stderr[-3000:]
    text = "\n".join(errors)
    assert f"{boxes_file}: 'im2.jpg': field 'boxes': expected boxes with x2 > x1" in text
    assert "box 1 = " in text
    assert f"{boxes_file}: 'im3.jpg': field 'labels[0]'" in text and "'unicorn'" in text
    assert f"{boxes_file}: expected an entry for 'im4.jpg'" in text
    assert f"{boxes_file}: 'im5.jpg': field 'boxes': expected at most" in text
    for name, mode in (("im0", "predcls"), ("im1", "sgcls")):
        d = json.loads((out_dir / f"{name}.json").read_text())
        assert d["mode"] == mode
        np.testing.assert_allclose([o["box"] for o in d["objects"]],
                                   entries[f"{name}.jpg"]["boxes"], atol=0.01)
    assert sorted(os.listdir(out_dir)) == ["im0.json", "im0.png", "im1.json", "im1.png"]
