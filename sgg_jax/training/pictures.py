"""Prediction pictures of an evaluation: the first N images of the split, predicted scene graph
next to the ground truth, for a quick look at what a run learned.

`eval_loop.evaluate(..., num_pictures=N)` keeps the first N (groundtruth, prediction) pairs of the
most complete mode it evaluates (`picture_mode`: sgdet, else sgcls, else predcls) as the
evaluator receives them (original pixels) and `write_pictures` writes, per image,
`<dir>/<mode>_<image_id>.json` (the prediction as a `sgg_jax.scene_graph.SceneGraph` document,
its top relations ranked as `--mode predict` ranks them; in PredCls / SGCls the objects keep the
ground truth's order, so both drawings give an object the same number and colour),
`<dir>/<mode>_<image_id>_gt.json` (the ground truth in the same format, scores 1) and
`<dir>/<mode>_<image_id>.png`: both graphs drawn by `sgg_jax.visualize.draw_scene_graph` from
exactly those documents, prediction on the left and ground truth on the right (`compose`).
For models that caption regions (in SGDet) the prediction also carries its top region proposals with
their captions and the ground truth its caption regions with their phrases (`Example.pred_regions`
/ `gt_regions`, built by `scene_graph.region_fields` for the pictured images only).
Files are written atomically.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines.errors import atomic_write_bytes
from sgg_jax import scene_graph, visualize

MODE_ORDER = ("sgdet", "sgcls", "predcls", "detection")  # most complete first
GAP = 16  # white pixels between the two drawings


@dataclasses.dataclass
class Example:
    """One picture's inputs: the evaluator's dicts (original pixels) and the image; for
    captioning models also the predicted and ground-truth caption regions
    (`scene_graph.region_fields`)."""

    image_id: int
    groundtruth: Mapping[str, np.ndarray]
    prediction: Mapping[str, np.ndarray]
    image: Image.Image
    pred_regions: Mapping[str, Any] | None = None
    gt_regions: Mapping[str, Any] | None = None


def picture_mode(modes: Sequence[str]) -> str | None:
    """The most complete of the evaluated modes (sgdet > sgcls > predcls > detection: the
    detector's boxes alone), or None."""
    return next((m for m in MODE_ORDER if m in modes), None)


def original_image(record: Mapping[str, Any] | None, image_id: int, canvas: np.ndarray,
                   content_hw: Sequence[int], scale: float) -> Image.Image:
    """The image in original pixels: decoded from its dataset record when the record is this
    image's, else the model's canvas content resized back by 1 / scale."""
    if record is not None and int(record.get("image_id", -1)) == int(image_id):
        with Image.open(io.BytesIO(record["image"])) as im:
            return im.convert("RGB")
    h, w = int(content_hw[0]), int(content_hw[1])
    crop = Image.fromarray(np.asarray(canvas, np.uint8)[:h, :w])
    return crop.resize((max(1, round(w / scale)), max(1, round(h / scale))), Image.BILINEAR)


def prediction_graph(prediction: Mapping[str, np.ndarray], image: Image.Image,
                     class_names: Sequence[str], predicate_names: Sequence[str],
                     top_relations: int, keep_order: bool = False,
                     regions: Mapping[str, Any] | None = None) -> scene_graph.SceneGraph:
    """The evaluator's prediction dict (boxes in original pixels, every scored pair) as a
    SceneGraph: relations ranked by `scene_graph.rank_triplets` (graph constraint, as `--mode
    predict`), the top `top_relations`; objects sorted by score, or in their own order with
    `keep_order` (PredCls / SGCls: the ground truth's order, so both drawings share colours);
    `regions`: caption-region fields (`scene_graph.region_fields`), kept as given."""
    scores = np.asarray(prediction["scores"], np.float64).reshape(-1)
    n = scores.shape[0]
    order = np.arange(n) if keep_order else np.argsort(-scores, kind="stable")
    new_index = np.empty(n, np.int64)
    new_index[order] = np.arange(n)
    pairs = np.asarray(prediction["rel_pairs"], np.int64).reshape(-1, 2)
    rp, pred, tscore, pscore = scene_graph.rank_triplets(
        scores, pairs, prediction["rel_scores"], pairs[:, 0] != pairs[:, 1], top_relations)
    boxes = np.asarray(prediction["boxes"], np.float64).reshape(n, 4)[order]
    return scene_graph.SceneGraph(
        width=image.size[0], height=image.size[1], boxes=np.round(boxes, 2),
        labels=np.asarray(prediction["labels"], np.int64)[order],
        scores=np.round(scores[order], 6), rel_pairs=new_index[rp].reshape(-1, 2),
        rel_predicates=pred, rel_scores=np.round(tscore, 6),
        rel_predicate_scores=np.round(pscore, 6), class_names=list(class_names),
        predicate_names=list(predicate_names), image=image, **(regions or {}))


def groundtruth_graph(groundtruth: Mapping[str, np.ndarray], image: Image.Image,
                      class_names: Sequence[str], predicate_names: Sequence[str],
                      regions: Mapping[str, Any] | None = None) -> scene_graph.SceneGraph:
    """The ground truth as a SceneGraph (objects in their order, every relation, scores 1;
    `regions`: its caption regions, as `prediction_graph`'s)."""
    rels = np.asarray(groundtruth["relations"], np.int64).reshape(-1, 3)
    n, r = len(groundtruth["labels"]), len(rels)
    return scene_graph.SceneGraph(
        width=image.size[0], height=image.size[1],
        boxes=np.round(np.asarray(groundtruth["boxes"], np.float64).reshape(n, 4), 2),
        labels=np.asarray(groundtruth["labels"], np.int64), scores=np.ones(n),
        rel_pairs=rels[:, :2], rel_predicates=rels[:, 2], rel_scores=np.ones(r),
        rel_predicate_scores=np.ones(r), class_names=list(class_names),
        predicate_names=list(predicate_names), image=image, **(regions or {}))


def compose(left: Image.Image, right: Image.Image, titles: tuple[str, str]) -> Image.Image:
    """Two drawings side by side (tops aligned, GAP apart) under a one-line title each."""
    f = visualize.font(16)
    title_h = 24
    w = left.size[0] + GAP + right.size[0]
    h = title_h + max(left.size[1], right.size[1])
    out = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(out)
    for x, im, title in ((0, left, titles[0]), (left.size[0] + GAP, right, titles[1])):
        d.text((x + 4, 4), title, fill=(0, 0, 0), font=f)
        out.paste(im, (x, title_h))
    return out


def render(pred: scene_graph.SceneGraph, gt: scene_graph.SceneGraph, image: Image.Image,
           mode: str) -> Image.Image:
    """The picture of one image: prediction (left) and ground truth (right) drawn on `image`."""
    return compose(pred.draw(image), gt.draw(image),
                   (f"prediction ({mode})", "ground truth"))


def write_pictures(directory: str, mode: str, examples: Sequence[Example],
                   class_names: Sequence[str], predicate_names: Sequence[str],
                   top_relations: int = 20) -> list[str]:
    """Writes each example's <mode>_<id>.json, _gt.json and .png (module docstring); returns
    the PNG paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for ex in examples:
        stem = os.path.join(directory, f"{mode}_{ex.image_id}")
        pred = prediction_graph(ex.prediction, ex.image, class_names, predicate_names,
                                top_relations, keep_order=mode not in ("sgdet", "detection"),
                                regions=ex.pred_regions)
        gt = groundtruth_graph(ex.groundtruth, ex.image, class_names, predicate_names,
                               regions=ex.gt_regions)
        atomic_write_bytes(stem + ".json", (pred.to_json() + "\n").encode("utf-8"))
        atomic_write_bytes(stem + "_gt.json", (gt.to_json() + "\n").encode("utf-8"))
        buf = io.BytesIO()
        render(pred, gt, ex.image, mode).save(buf, format="PNG", compress_level=1)
        atomic_write_bytes(stem + ".png", buf.getvalue())
        paths.append(stem + ".png")
    return paths
