"""Scene graphs for a user's own images: load, letterbox, detect + relate, map back, write.

    g = sgg_jax.load("runs/imp")            # a training workdir or a stage's checkpoint dir
    sg = g.predict("photo.jpg")              # path, PIL.Image or HxWx3 uint8 array -> SceneGraph
    sg.draw().save("photo_sg.png")
    g.predict_many(["photos/"], "out/")      # out/<stem>.json + out/<stem>.png per image

Images go through the same letterbox as the training pipeline (`data_pipelines.pipeline`): the
long side is resized to S (bilinear, content size round(original * scale)) and pasted at the
top-left of a zeroed S x S canvas; JPEG files without an EXIF rotation go through the pipeline's
own `decode_resize` (with its DCT-domain draft), so a photo sees exactly the pixels training
images saw. Boxes come back as canvas / scale, clipped to the original image (after its EXIF
orientation is applied). Relations are ranked under the graph constraint: one predicate per
ordered pair (the best non-background one), triplet score = subject score x object score x
predicate score, highest first. Models that caption regions (MSDN) add their top region
proposals, best first, with each region's caption text (`select_regions`).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from data_pipelines.errors import DataFormatError, atomic_write_bytes
from data_pipelines import pipeline
from data_pipelines.pipeline import decode_resize

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
SgdetFn = Callable[[np.ndarray, np.ndarray], dict]
FORMAT = "sgg_jax.scene_graph/1"
_EXIF_ORIENTATION = 0x0112


# --------------------------------------------------------------------------------------------
# Images in: reading and letterboxing
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class LoadedImage:
    """One input image: the model's canvas and what is needed to map results back.

    image: the original as RGB (EXIF orientation applied), for drawing.
    canvas: [S, S, 3] uint8 letterboxed model input; content_hw: (h, w) of the content on it.
    scale: S / max(width, height) of `image` (canvas pixels per original pixel).
    """

    image: Image.Image
    canvas: np.ndarray
    scale: float
    content_hw: tuple[int, int]
    path: str | None = None


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, float, int, int]:
    """RGB image -> (canvas [S,S,3] uint8, scale, content h, content w): the pipeline's own
    geometry and resize-and-pad, as `decode_resize` applies them to a decoded image."""
    scale, tw, th = pipeline.canvas_geometry(image.size, size)
    return pipeline.paste_on_canvas(image, size, tw, th), scale, th, tw


def _image_error(name: str, reason: str) -> DataFormatError:
    return DataFormatError(name, None, "an image file Pillow can read (JPEG, PNG, BMP, GIF, "
                           "TIFF, WebP, ...)", reason)


def read_image_file(path: str | os.PathLike) -> tuple[Image.Image, bytes, int]:
    """(fully decoded image, file bytes, EXIF orientation) or DataFormatError naming the file."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise _image_error(name, "no such file")
    if not os.path.isfile(name):
        raise _image_error(name, "not a regular file")
    try:
        with open(name, "rb") as f:
            data = f.read()
        im = Image.open(io.BytesIO(data))
        im.load()  # decode now: truncated / corrupt data fails here, not later
        orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except UnidentifiedImageError:
        raise _image_error(name, "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _image_error(name, f"unreadable image data ({e})") from e
    return im, data, orientation


def _array_to_image(arr: np.ndarray) -> Image.Image:
    arr = np.asarray(arr)
    ok_shape = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))
    if arr.dtype != np.uint8 or not ok_shape or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image: expected an HxWx3 (or HxW, HxWx4) uint8 array, got shape "
                         f"{arr.shape} dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(arr))


def load_image(source: ImageInput, size: int) -> LoadedImage:
    """A path, PIL image or uint8 array -> `LoadedImage` on an S x S canvas.

    RGBA / L / P / CMYK inputs become RGB (as the pipeline's convert("RGB")); EXIF orientation
    is applied (ImageOps.exif_transpose). Raises DataFormatError (a ValueError) naming the file
    for missing, unreadable or non-image files.
    """
    path = None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        im, data, orientation = read_image_file(path)
        try:
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            if orientation == 1:
                # Exactly the training pipeline's decode (incl. JPEG draft) and resize.
                canvas, scale, th, tw = decode_resize(data, size)
            else:
                canvas, scale, th, tw = letterbox(rgb, size)
        except (OSError, ValueError, SyntaxError) as e:
            raise _image_error(path, f"unreadable image data ({e})") from e
    elif isinstance(source, Image.Image):
        rgb = ImageOps.exif_transpose(source).convert("RGB")
        canvas, scale, th, tw = letterbox(rgb, size)
    elif isinstance(source, np.ndarray):
        rgb = _array_to_image(source).convert("RGB")
        canvas, scale, th, tw = letterbox(rgb, size)
    else:
        raise ValueError(f"image: expected a file path, a PIL.Image or an HxWx3 uint8 array, "
                         f"got {type(source).__name__}")
    return LoadedImage(image=rgb, canvas=canvas, scale=float(scale), content_hw=(th, tw),
                       path=path)


def find_images(specs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Comma-separated string or list of files / folders -> list of image paths.

    A folder contributes its files (not sub-folders, not hidden files) whose extension Pillow
    knows, sorted by name; a named file is always kept (a non-image or missing file then fails
    on its own, with an error naming it, instead of vanishing silently).
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [s for s in os.fspath(specs).split(",")]
    exts = {e.lower() for e in Image.registered_extensions()}
    out: list[str] = []
    for spec in specs:
        spec = os.path.expanduser(os.fspath(spec).strip())
        if not spec:
            continue
        if os.path.isdir(spec):
            names = sorted(n for n in os.listdir(spec) if not n.startswith("."))
            out.extend(os.path.join(spec, n) for n in names
                       if os.path.isfile(os.path.join(spec, n))
                       and os.path.splitext(n)[1].lower() in exts)
        else:
            out.append(spec)
    return out


# --------------------------------------------------------------------------------------------
# Results out: mapping back, ranking, the SceneGraph
# --------------------------------------------------------------------------------------------

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
    from sgg_jax.evaluation.boxes import box_iou
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
                 objects=objects, relations=relations)
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
                       image_path=d["image"].get("path"), **regions)
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
                      top_regions: int = 5, region_nms: float = 1.0) -> SceneGraph:
    """Row `b` of an SGDet output dict -> SceneGraph in `loaded`'s original pixels.

    Keeps the valid detections (box_mask), sorted by score (stable), and re-indexes the pairs;
    pairs touching an invalid detection or a self pair are ignored. When `out` has captions
    (MSDN) and `idx_to_word` is given, the top `top_regions` valid regions by score (after
    greedy NMS at IoU `region_nms`; 1 = none) come with their caption text (`select_regions`).
    """
    w, h = loaded.image.size
    mask = np.asarray(out["box_mask"][b], bool)
    det = np.flatnonzero(mask)
    scores = np.asarray(out["scores"][b], np.float64)
    order = det[np.argsort(-scores[det], kind="stable")]
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
        image_path=loaded.path, image=loaded.image, **regions)


# --------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PredictSummary:
    """What `predict_many` did: written (input, json, png) triples and (input, error) pairs."""

    written: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 if every image succeeded (and there was at least one), else 2."""
        return 2 if self.failed or not self.written else 0

    def line(self) -> str:
        return f"predict: {len(self.written)} ok, {len(self.failed)} failed"


def output_stems(paths: Sequence[str]) -> list[str]:
    """Output file stems: the input's stem, made unique (a.jpg, a.png -> a, a-2)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = os.path.splitext(os.path.basename(p.rstrip(os.sep)))[0] or "image"
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        out.append(stem if n == 1 else f"{stem}-{n}")
    return out


class Predictor:
    """Runs an SGDet function on images of any size; the result of `sgg_jax.load`.

    sgdet_fn(images uint8 [B,S,S,3], image_sizes int [B,2] (h, w)) -> dict of numpy arrays
    (boxes [B,D,4] canvas pixels, box_mask, labels, scores, rel_pairs [B,M,2], pair_mask,
    rel_scores [B,M,P+1]; captioning models also region_boxes [B,Q,4], region_mask,
    region_scores [B,Q] and captions [B,Q,L], kept when `idx_to_word`, the caption vocabulary,
    is given); batches are always padded to `batch_size` (fixed shapes, one compile).
    `io_threads`: threads that decode inputs and draw / write outputs in `predict_many`.
    """

    def __init__(self, sgdet_fn: SgdetFn, *, image_size: int, batch_size: int,
                 class_names: Sequence[str], predicate_names: Sequence[str],
                 top_relations: int = 20, max_drawn_relations: int | None = None,
                 io_threads: int = 4, idx_to_word: Sequence[str] | None = None,
                 top_regions: int = 5, region_nms: float = 1.0):
        if image_size < 1 or batch_size < 1:
            raise ValueError(f"Predictor: image_size and batch_size must be >= 1, got "
                             f"{image_size}, {batch_size}")
        self.sgdet_fn = sgdet_fn
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.class_names = list(class_names)
        self.predicate_names = list(predicate_names)
        self.top_relations = int(top_relations)
        self.max_drawn_relations = max_drawn_relations
        self.io_threads = int(io_threads)
        self.idx_to_word = list(idx_to_word) if idx_to_word else None
        self.top_regions = int(top_regions)
        self.region_nms = float(region_nms)

    def _run(self, loaded: Sequence[LoadedImage]) -> list[SceneGraph]:
        """One padded batch (the last real image repeats into the padding rows)."""
        n = len(loaded)
        rows = list(loaded) + [loaded[-1]] * (self.batch_size - n)
        images = np.stack([li.canvas for li in rows])
        sizes = np.array([li.content_hw for li in rows], np.int32)
        out = {k: np.asarray(v) for k, v in self.sgdet_fn(images, sizes).items()}
        return [build_scene_graph(out, b, loaded[b], self.class_names, self.predicate_names,
                                  self.top_relations, self.idx_to_word, self.top_regions,
                                  self.region_nms)
                for b in range(n)]

    def predict_batch(self, images: Sequence[ImageInput]) -> list[SceneGraph]:
        """Scene graphs of several images (any number; run in padded batches)."""
        loaded = [load_image(im, self.image_size) for im in images]
        out: list[SceneGraph] = []
        for i in range(0, len(loaded), self.batch_size):
            out.extend(self._run(loaded[i:i + self.batch_size]))
        return out

    def predict(self, image: ImageInput) -> SceneGraph:
        """The scene graph of one image (path, PIL.Image or HxWx3 uint8 array)."""
        return self.predict_batch([image])[0]

    def predict_many(self, paths: str | Sequence[str], output_dir: str, *,
                     progress: bool = True, stderr: Any = None) -> PredictSummary:
        """Writes <stem>.json and <stem>.png per image into `output_dir` (atomically).

        `paths`: files and/or folders (or one comma-separated string, see `find_images`).
        An image that cannot be read or written gets one "error: FILE: ..." line on stderr and
        is skipped; the others still run. Returns a `PredictSummary`.
        """
        from tqdm.auto import tqdm
        stderr = stderr or sys.stderr
        files = find_images(paths)
        summary = PredictSummary()
        if not files:
            summary.failed.append((str(paths), "no image files found"))
            print(f"error: {paths}: no image files found", file=stderr)
            return summary
        os.makedirs(output_dir, exist_ok=True)
        stems = output_stems(files)
        inputs = {os.path.realpath(f) for f in files}
        targets = {f: (os.path.join(output_dir, s + ".json"), os.path.join(output_dir, s + ".png"))
                   for f, s in zip(files, stems)}
        clash = [t for pair in targets.values() for t in pair if os.path.realpath(t) in inputs]
        if clash:
            raise ValueError(f"output directory {output_dir!r}: writing {clash[0]} would "
                             "overwrite an input image; choose another output directory")
        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress,
                   dynamic_ncols=True)

        def fail(path: str, err: BaseException) -> None:
            msg = str(err) if isinstance(err, DataFormatError) else f"{path}: {err}"
            summary.failed.append((path, msg))
            tqdm.write(f"error: {msg}", file=stderr)
            bar.update(1)

        def finish_writes(keep: int) -> None:
            """Waits for the oldest writes until at most `keep` are in flight."""
            while len(writes) > keep:
                path, fut = writes.popleft()
                try:
                    summary.written.append((path, *fut.result()))
                    bar.update(1)
                except (OSError, ValueError) as e:
                    fail(path, e)

        # Decoding the next images and drawing / PNG-encoding the last ones (Pillow and zlib
        # release the GIL) overlap the model; at most ~2 batches of images are held at once.
        ahead = self.batch_size
        writes: collections.deque = collections.deque()
        loads: collections.deque = collections.deque()
        todo = iter(files)
        pending: list[LoadedImage] = []
        try:
            with concurrent.futures.ThreadPoolExecutor(max(1, self.io_threads)) as pool:
                def submit_load() -> None:
                    path = next(todo, None)
                    if path is not None:
                        loads.append((path, pool.submit(load_image, path, self.image_size)))

                for _ in range(ahead):
                    submit_load()
                while loads or pending:
                    if loads:
                        path, fut = loads.popleft()
                        submit_load()
                        try:
                            pending.append(fut.result())
                        except ValueError as e:
                            fail(path, e)
                            continue
                    if pending and (len(pending) == self.batch_size or not loads):
                        for li, sg in zip(pending, self._run(pending)):
                            j, png = targets[li.path]
                            writes.append((li.path, pool.submit(
                                write_scene_graph, sg, j, png, self.max_drawn_relations)))
                        pending = []
                        finish_writes(keep=ahead)
                finish_writes(keep=0)
        finally:
            bar.close()
        return summary


def write_scene_graph(sg: SceneGraph, json_path: str, png_path: str,
                      max_relations: int | None = None) -> tuple[str, str]:
    """Writes the JSON and the drawn PNG, each through a temp file and os.replace."""
    atomic_write_bytes(json_path, (sg.to_json() + "\n").encode("utf-8"))
    buf = io.BytesIO()
    # zlib level 1: ~1.7x faster than the default 6 on photos, files ~1.5x larger.
    sg.draw(max_relations=max_relations).save(buf, format="PNG", compress_level=1)
    atomic_write_bytes(png_path, buf.getvalue())
    return json_path, png_path


# --------------------------------------------------------------------------------------------
# From a trained run
# --------------------------------------------------------------------------------------------

def _restore(checkpoint: str, config: Any) -> tuple[Any, Any]:
    """`sgg_jax.inference.restore_for_inference`, passing `config` when it takes one."""
    import inspect

    from sgg_jax import inference
    fn = inference.restore_for_inference
    if config is not None and "config" in inspect.signature(fn).parameters:
        return fn(checkpoint, config=config)
    return fn(checkpoint)


def load(checkpoint: str | os.PathLike, config: Any = None, *,
         top_relations: int | None = None, batch_size: int | None = None,
         top_regions: int | None = None, region_nms: float | None = None) -> Predictor:
    """A `Predictor` from a training workdir or a stage's checkpoint directory.

    `config`: the run's ml_collections config (optional when the run saved its own);
    top_relations / batch_size / top_regions / region_nms default to
    config.predict.top_relations, config.input.eval_batch_size, config.predict.top_regions and
    config.predict.region_nms. Runs with a caption vocabulary (MSDN: `exp.data.idx_to_word`)
    also give their top regions' captions.
    """
    from sgg_jax import inference
    exp, params = _restore(os.fspath(checkpoint), config)
    cfg = exp.config
    if top_regions is None:
        top_regions = int(cfg.predict.get("top_regions", 5))
    if region_nms is None:
        region_nms = float(cfg.predict.get("region_nms", 1.0))
    return Predictor(
        inference.make_sgdet_fn(exp, params), image_size=int(cfg.input.image_size),
        batch_size=int(batch_size or cfg.input.eval_batch_size),
        class_names=list(exp.data.idx_to_label), predicate_names=list(exp.data.idx_to_predicate),
        top_relations=int(top_relations if top_relations is not None
                          else cfg.predict.top_relations),
        idx_to_word=getattr(exp.data, "idx_to_word", None), top_regions=int(top_regions),
        region_nms=float(region_nms))


def run_cli(config: Any, checkpoint: str, images: str, output: str) -> int:
    """`--mode predict`: returns the exit code (0, or 2 when any image failed)."""
    if not checkpoint:
        raise ValueError("--checkpoint: expected a training workdir or a stage's checkpoint "
                         "directory")
    if not images:
        raise ValueError("--images (or config.predict.images): expected comma-separated image "
                         "files or folders")
    if not output:
        raise ValueError("--output (or config.predict.output): expected a directory for the "
                         "<stem>.json / <stem>.png results")
    # The run's own config (saved with it) fixes the model and canvas; the command line's
    # config chooses how many relations to keep and the batch size.
    predictor = load(checkpoint, config, top_relations=int(config.predict.top_relations),
                     batch_size=int(config.input.eval_batch_size),
                     top_regions=int(config.predict.get("top_regions", 5)),
                     region_nms=float(config.predict.get("region_nms", 1.0)))
    summary = predictor.predict_many(images, output)
    print(f"{summary.line()} -> {output}", file=sys.stderr)
    return summary.exit_code
