"""Scene graph documents: one image's objects, relations and optional caption regions in its
original pixels, ranked, serialised (JSON, format "sgg_jax.scene_graph/1") and drawn.

Relations are ranked under the graph constraint: one predicate per ordered pair (the best
non-background one), triplet score = subject score x object score x predicate score, highest
first. Models that caption regions add their top regions, best first, with each region's
caption text (`select_regions`). `--mode predict`, `sgg_jax.load(...).predict` and the
evaluation pictures all write this one format.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from data_pipelines.errors import DataFormatError

from sgg_jax.images import ImageInput, LoadedImage, _array_to_image, read_image_file

FORMAT = "sgg_jax.scene_graph/1"



def boxes_to_original(boxes: np.ndarray, scale: float, width: int, height: int) -> np.ndarray:
    """Canvas x1y1x2y2 -> original pixels (canvas / scale), clipped to [0,W] x [0,H]."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4) / float(scale)
    return np.clip(b, 0.0, np.array([width, height, width, height], np.float64))


def rank_triplets(obj_scores: np.ndarray, rel_pairs: np.ndarray, rel_scores: np.ndarray,
                  valid: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                          np.ndarray]:
    """Graph-constrained top-K triplets of one image.

    obj_scores [N]; rel_pairs [M,2] object indices; rel_scores [M,P+1] (column 0 = no relation);
    valid [M] pairs to consider. Each valid pair keeps its best predicate p >= 1 (first on ties);
    the triplet score is obj_scores[s] * obj_scores[o] * rel_scores[p]; ties keep pair order.
    Returns (pairs [K,2], predicates [K], triplet scores [K], predicate scores [K]), best first.
    """
    idx = np.flatnonzero(np.asarray(valid, bool))
    pairs = np.asarray(rel_pairs, np.int64).reshape(-1, 2)[idx]
    fg = np.asarray(rel_scores, np.float64)[idx, 1:]
    if fg.shape[1] == 0:
        raise ValueError(f"rel_scores: expected [M, P+1] with P >= 1 predicates, got {fg.shape}")
    pred = np.argmax(fg, axis=1) + 1
    pred_score = np.take_along_axis(fg, (pred - 1)[:, None], 1)[:, 0]
    obj = np.asarray(obj_scores, np.float64)
    score = obj[pairs[:, 0]] * obj[pairs[:, 1]] * pred_score
    order = np.argsort(-score, kind="stable")[:max(int(top_k), 0)]
    return pairs[order], pred[order].astype(np.int64), score[order], pred_score[order]


def _round(x: Any, digits: int) -> np.ndarray:
    return np.round(np.asarray(x, np.float64), digits)


def caption_text(tokens: np.ndarray, idx_to_word: Sequence[str]) -> str:
    """One caption's token ids -> its words between <start> and <end> (or padding), joined."""
    from sgg_jax.evaluation.captions import tokens_to_words
    return " ".join(tokens_to_words(tokens, idx_to_word))


def select_regions(boxes: np.ndarray, mask: np.ndarray, scores: np.ndarray, tokens: np.ndarray,
                   idx_to_word: Sequence[str], top_k: int, nms_iou: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One image's caption regions -> the top `top_k` valid ones, best first (stable on ties).

    boxes [Q,4] (any coordinates; returned as given), mask [Q] bool, scores [Q],
    tokens [Q,L] caption ids. `nms_iou` < 1: a region whose IoU with a better kept one exceeds
    it is skipped (greedy NMS, as dense captioning shows its regions; MSDN's refined proposals
    often converge on one object). Returns (boxes [R,4], scores [R], caption texts), R <= top_k.
    """
    from sgg_jax.ops.np_boxes import box_iou
    valid = np.flatnonzero(np.asarray(mask, bool).reshape(-1))
    sc = np.asarray(scores, np.float64).reshape(-1)
    bx = np.asarray(boxes, np.float64).reshape(-1, 4)
    ranked = valid[np.argsort(-sc[valid], kind="stable")]
    if nms_iou < 1.0:
        iou = box_iou(bx[ranked], bx[ranked], convention="continuous")
        keep: list[int] = []
        for j in range(len(ranked)):
            if len(keep) >= top_k:
                break
            if not keep or iou[j, keep].max() <= nms_iou:
                keep.append(j)
        ranked = ranked[keep]
    order = ranked[:max(int(top_k), 0)]
    toks = np.asarray(tokens).reshape(sc.shape[0], -1)
    return bx[order], sc[order], [caption_text(toks[q], idx_to_word) for q in order]


def region_fields(boxes: np.ndarray, mask: np.ndarray, scores: np.ndarray, tokens: np.ndarray,
                  idx_to_word: Sequence[str], top_k: int, scale: float,
                  size: tuple[int, int], nms_iou: float = 1.0) -> dict[str, Any]:
    """`select_regions` on canvas boxes -> the SceneGraph region fields: region_boxes in
    original pixels (`boxes_to_original`, clipped to size = (width, height)), region_scores,
    region_captions."""
    rb, rs, rc = select_regions(boxes, mask, scores, tokens, idx_to_word, top_k, nms_iou)
    return dict(region_boxes=_round(boxes_to_original(rb, scale, *size), 2),
                region_scores=_round(rs, 6), region_captions=rc)


@dataclasses.dataclass
class SceneGraph:
    """One image's scene graph in its original pixel coordinates.

    boxes [N,4] x1y1x2y2 float (original pixels, 0.01 px), labels [N] 1-based class ids,
    scores [N] (objects sorted by score, best first); relations as parallel arrays, best first:
    rel_pairs [K,2] (subject, object) indices into the objects, rel_predicates [K] 1-based,
    rel_scores [K] = subject x object x predicate score, rel_predicate_scores [K].
    class_names / predicate_names: the vocabularies (index 0 = background).
    `image` (not serialised) is the original RGB image, used by `draw()`.
    Caption regions (models that caption, MSDN; None otherwise), best first: region_boxes
    [R,4] x1y1x2y2 original pixels, region_scores [R], region_captions (R strings).
    mode: "sgdet" (the run's detector found the objects), "sgcls" (boxes were given, the
    model classified them) or "predcls" (boxes and classes were given); with given boxes the
    objects keep the given order.
    """

    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    rel_pairs: np.ndarray
    rel_predicates: np.ndarray
    rel_scores: np.ndarray
    rel_predicate_scores: np.ndarray
    class_names: list[str]
    predicate_names: list[str]
    image_path: str | None = None
    image: Image.Image | None = dataclasses.field(default=None, repr=False, compare=False)
    region_boxes: np.ndarray | None = None
    region_scores: np.ndarray | None = None
    region_captions: list[str] | None = None
    mode: str = "sgdet"

    @property
    def has_regions(self) -> bool:
        """Whether this graph carries caption regions (possibly none kept)."""
        return self.region_boxes is not None

    @property
    def names(self) -> list[str]:
        """Class name of each object."""
        return [self.class_names[int(i)] for i in self.labels]

    @property
    def triplets(self) -> list[tuple[int, int, int, str, float]]:
        """(subject index, object index, predicate id, predicate name, score), best first."""
        return [(int(s), int(o), int(p), self.predicate_names[int(p)], float(sc))
                for (s, o), p, sc in zip(self.rel_pairs, self.rel_predicates, self.rel_scores)]

    def to_dict(self) -> dict:
        """The JSON document (see `to_json`)."""
        objects = [dict(box=[float(v) for v in b], label=int(l), name=self.class_names[int(l)],
                        score=float(s)) for b, l, s in zip(self.boxes, self.labels, self.scores)]
        relations = [dict(subject=int(s), object=int(o), predicate=int(p),
                          name=self.predicate_names[int(p)], score=float(sc),
                          predicate_score=float(ps))
                     for (s, o), p, sc, ps in zip(self.rel_pairs, self.rel_predicates,
                                                  self.rel_scores, self.rel_predicate_scores)]
        d = dict(format=FORMAT,
                 image=dict(path=self.image_path, width=int(self.width),
                            height=int(self.height)),
                 mode=self.mode, objects=objects, relations=relations)
        if self.has_regions:
            d["regions"] = [dict(box=[float(v) for v in b], score=float(s), caption=str(c))
                            for b, s, c in zip(np.asarray(self.region_boxes).reshape(-1, 4),
                                               np.asarray(self.region_scores).reshape(-1),
                                               self.region_captions or [])]
        d["vocab"] = dict(classes=list(self.class_names), predicates=list(self.predicate_names))
        return d

    def to_json(self) -> str:
        """JSON text: {format, image {path, width, height}, objects [{box, label, name,
        score}], relations [{subject, object, predicate, name, score, predicate_score}],
        regions [{box, score, caption}] (only for models that caption regions), vocab
        {classes, predicates}}; subject/object index `objects`. One object, relation or region
        per line."""
        d = self.to_dict()
        one = lambda x: json.dumps(x, allow_nan=False, ensure_ascii=False)  # noqa: E731

        def value(key: str, v: Any) -> str:
            if key in ("objects", "relations", "regions") and v:
                return "[\n" + ",\n".join(f"    {one(x)}" for x in v) + "\n  ]"
            if isinstance(v, dict):
                return "{\n" + ",\n".join(f"    {one(k)}: {one(x)}" for k, x in v.items()) + \
                    "\n  }"
            return one(v)

        return "{\n" + ",\n".join(f"  {one(k)}: {value(k, v)}" for k, v in d.items()) + "\n}"

    @classmethod
    def from_dict(cls, d: dict, source: str = "scene graph") -> "SceneGraph":
        """Inverse of `to_dict`; a malformed document raises DataFormatError naming `source`."""
        try:
            objs, rels = d["objects"], d["relations"]
            n = len(objs)
            boxes = np.asarray([o["box"] for o in objs], np.float64).reshape(n, 4)
            pairs = np.asarray([[r["subject"], r["object"]] for r in rels],
                               np.int64).reshape(len(rels), 2)
            if n and (pairs.min(initial=0) < 0 or pairs.max(initial=0) >= n):
                raise ValueError("relation subject/object outside the objects list")
            regions: dict[str, Any] = {}
            if d.get("regions") is not None:
                regs = d["regions"]
                if not isinstance(regs, list):
                    raise ValueError(f"regions: expected a list, got {type(regs).__name__}")
                captions = [r["caption"] for r in regs]
                if not all(isinstance(c, str) for c in captions):
                    raise ValueError("regions: every caption must be a string")
                regions = dict(
                    region_boxes=np.asarray([r["box"] for r in regs],
                                            np.float64).reshape(len(regs), 4),
                    region_scores=np.asarray([r["score"] for r in regs],
                                             np.float64).reshape(len(regs)),
                    region_captions=captions)
            return cls(width=int(d["image"]["width"]), height=int(d["image"]["height"]),
                       boxes=boxes, labels=np.asarray([o["label"] for o in objs], np.int64),
                       scores=np.asarray([o["score"] for o in objs], np.float64),
                       rel_pairs=pairs,
                       rel_predicates=np.asarray([r["predicate"] for r in rels], np.int64),
                       rel_scores=np.asarray([r["score"] for r in rels], np.float64),
                       rel_predicate_scores=np.asarray(
                           [r.get("predicate_score", r["score"]) for r in rels], np.float64),
                       class_names=list(d["vocab"]["classes"]),
                       predicate_names=list(d["vocab"]["predicates"]),
                       image_path=d["image"].get("path"), mode=str(d.get("mode", "sgdet")),
                       **regions)
        except (KeyError, TypeError, ValueError) as e:
            raise DataFormatError(source, None, f"a {FORMAT} document", repr(e)) from e

    @classmethod
    def from_json(cls, text: str, source: str = "scene graph") -> "SceneGraph":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(source, None, "valid JSON", str(e)) from e
        return cls.from_dict(d, source)

    def draw(self, image: ImageInput | None = None, max_relations: int | None = None,
             max_objects: int | None = None) -> Image.Image:
        """The image with boxes, names and the top relations, plus a legend under it (PIL).

        `image` defaults to the one predicted on (or `image_path` for a graph read from JSON).
        See `sgg_jax.visualize.draw_scene_graph` for the layout.
        """
        from sgg_jax import visualize
        if image is None:
            image = self.image if self.image is not None else self.image_path
        if image is None:
            raise ValueError("SceneGraph.draw: no image kept with this graph; pass image=")
        if isinstance(image, (str, os.PathLike)):
            image = ImageOps.exif_transpose(read_image_file(image)[0]).convert("RGB")
        elif isinstance(image, np.ndarray):
            image = _array_to_image(image)
        return visualize.draw_scene_graph(image, self, max_relations=max_relations,
                                          max_objects=max_objects)


def build_scene_graph(out: dict[str, np.ndarray], b: int, loaded: LoadedImage,
                      class_names: Sequence[str], predicate_names: Sequence[str],
                      top_k: int, idx_to_word: Sequence[str] | None = None,
                      top_regions: int = 5, region_nms: float = 1.0, mode: str = "sgdet"
                      ) -> SceneGraph:
    """Row `b` of an SGDet output dict -> SceneGraph in `loaded`'s original pixels.

    Keeps the valid detections (box_mask), sorted by score (stable; given boxes, `mode`
    "predcls" / "sgcls", keep their order), and re-indexes the pairs;
    pairs touching an invalid detection or a self pair are ignored. When `out` has captions
    (MSDN) and `idx_to_word` is given, the top `top_regions` valid regions by score (after
    greedy NMS at IoU `region_nms`; 1 = none) come with their caption text (`select_regions`).
    """
    w, h = loaded.image.size
    mask = np.asarray(out["box_mask"][b], bool)
    det = np.flatnonzero(mask)
    scores = np.asarray(out["scores"][b], np.float64)
    order = det if mode != "sgdet" else det[np.argsort(-scores[det], kind="stable")]
    new_index = np.full(mask.shape[0], -1, np.int64)
    new_index[order] = np.arange(len(order))
    boxes = boxes_to_original(np.asarray(out["boxes"][b])[order], loaded.scale, w, h)
    pairs = np.asarray(out["rel_pairs"][b], np.int64).reshape(-1, 2)
    inside = (pairs >= 0) & (pairs < mask.shape[0])
    safe = np.where(inside, pairs, 0)
    valid = (np.asarray(out["pair_mask"][b], bool) & inside.all(1) & mask[safe].all(1)
             & (safe[:, 0] != safe[:, 1]))
    rp, pred, tscore, pscore = rank_triplets(scores, safe, out["rel_scores"][b], valid, top_k)
    regions: dict[str, Any] = {}
    if "captions" in out and idx_to_word is not None:
        regions = region_fields(out["region_boxes"][b], out["region_mask"][b],
                                out["region_scores"][b], out["captions"][b], idx_to_word,
                                top_regions, loaded.scale, (w, h), region_nms)
    return SceneGraph(
        width=w, height=h, boxes=_round(boxes, 2),
        labels=np.asarray(out["labels"][b], np.int64)[order], scores=_round(scores[order], 6),
        rel_pairs=new_index[rp].reshape(-1, 2), rel_predicates=pred,
        rel_scores=_round(tscore, 6), rel_predicate_scores=_round(pscore, 6),
        class_names=list(class_names), predicate_names=list(predicate_names),
        image_path=loaded.path, image=loaded.image, mode=mode, **regions)


