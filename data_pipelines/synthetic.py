"""Built-in synthetic scene-graph dataset, written in Visual Genome's file layouts.

    python -m data_pipelines.synthetic --output DIR [--num-train N] [--num-val N] [--num-test N]
        [--image-size S | WxH] [--seed S] [--preset default|large] [--workers K] [--overwrite]

Each image is a procedurally rendered scene (kitchen, office, street, park) whose objects are
placed by simple world rules (things rest on supports, sit inside containers, are held or worn;
animals and people face a direction), drawn back to front with Pillow. The ground-truth graph is
computed from that world: every predicate has a precise definition (see `relation_truth`), and an
"annotator" writes down a sparse, class-dependent subset of the true relations, which gives VG's
long tail and missing labels. A fixed list of (subject, predicate, object) triplets is kept out of
train/val and planted in test (zero-shot). Output: VG150 (`VG-SGG.h5`, `VG-SGG-dicts.json`,
`image_data.json`, `VG_100K/<id>.jpg`), VG-MSDN json (`msdn/`), `zero_shot_triplets.json`,
`README.md`. See docs/synthetic_dataset.md.

Box exactness: image long sides divide 1024 and every box coordinate is a multiple of
`grid_step(long_side)` (2 up to 512 px, 4 at 1024 px), so the VG150 1024- and 512-scale boxes are
integers with even widths/heights: xc = x1 + w / 2 is exact and the reference loaders' decoding
returns the generated boxes exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from data_pipelines import synthetic_spec as spec
from data_pipelines.records import SceneGraphRecord
from data_pipelines.synthetic_render import DrawItem, eye_point, render

PRESETS: dict[str, dict[str, int]] = {
    "default": {"num_train": 3000, "num_val": 500, "num_test": 1000, "image_size": 256},
    "large": {"num_train": 25000, "num_val": 2000, "num_test": 5000, "image_size": 512},
}
# Bumped whenever the same seed and sizes would produce different data (cache keys may use it).
GENERATOR_VERSION = 1
SPLIT_SEED_CODE = {"train": 0, "val": 1, "test": 2}
JPEG_QUALITY = 92
NUM_PREDICATES = len(spec.PREDICATE_NAMES)
P = spec.PREDICATE_ID  # name -> 1-based id


def grid_step(long_side: int) -> int:
    """Box coordinates are multiples of this so that VG150's 1024/512-scale boxes are exact."""
    return max(2, long_side // 256)


def check_image_size(width: int, height: int) -> None:
    """Raises ValueError unless the long side divides 1024 (64..1024) and the short side >= 64."""
    long_side = max(width, height)
    if long_side < 64 or long_side > 1024 or 1024 % long_side:
        raise ValueError(f"image size {width}x{height}: the long side must divide 1024 "
                         f"(64, 128, 256, 512 or 1024), got {long_side}")
    if min(width, height) < 64:
        raise ValueError(f"image size {width}x{height}: the short side must be >= 64")
    g = grid_step(long_side)
    if width % g or height % g:
        raise ValueError(f"image size {width}x{height}: width and height must be multiples of {g}")


# --------------------------------------------------------------------------------------------
# Scene sampling (world model)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Obj:
    cls: str
    box: list[int]
    colour: str
    texture: str
    facing: int
    depth: float
    parent: int = -1
    attach: str = ""  # "", "on", "inside", "held", "worn", "riding"
    hand: tuple[int, int, int] | None = None


@dataclasses.dataclass
class SceneGraph:
    """One scene's ground truth (objects in the order written to the files).

    boxes [N,4] float32 x1y1x2y2 pixels (x2/y2 exclusive, integer valued); labels [N] int32 1-based;
    colours/textures: per-object names; depth [N] int32 draw rank (larger = nearer, drawn later);
    facing [N] int8 (+1 right, -1 left, 0 inanimate); parent [N] int32 (-1 none) with `attach`
    the kind of attachment to the parent; truth [P, N, N] bool: predicate p+1 holds for
    (subject i, object j); relations [R,3] int32 (subject, object, predicate 1-based): the
    annotated subset; region_boxes [Q,4] float32 and region_phrases: Q lists of words.
    """

    width: int
    height: int
    scene_type: str
    boxes: np.ndarray
    labels: np.ndarray
    colours: list[str]
    textures: list[str]
    depth: np.ndarray
    facing: np.ndarray
    parent: np.ndarray
    attach: list[str]
    truth: np.ndarray
    relations: np.ndarray
    region_boxes: np.ndarray
    region_phrases: list[list[str]]

    def to_record(self, image_id: int, image_path: str, split: str) -> SceneGraphRecord:
        return SceneGraphRecord(
            image_id=int(image_id), image_path=image_path, width=self.width, height=self.height,
            boxes=self.boxes.copy(), labels=self.labels.copy(), relations=self.relations.copy(),
            region_boxes=self.region_boxes.copy(),
            region_phrases=[list(p) for p in self.region_phrases], split=split)


def _choice(rng: np.random.Generator, table: Sequence[tuple[str, float]],
            allowed: Sequence[str] | None = None) -> str | None:
    """Weighted choice over (name, weight), optionally restricted to `allowed` names."""
    items = [(n, w) for n, w in table if allowed is None or n in allowed]
    if not items:
        return None
    w = np.array([x[1] for x in items], np.float64)
    return items[int(rng.choice(len(items), p=w / w.sum()))][0]


class _World:
    """Mutable state while sampling one scene: objects, image size, layout helpers."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, scene: spec.SceneType):
        self.rng, self.W, self.H, self.scene = rng, width, height, scene
        self.L = max(width, height)
        self.g = grid_step(self.L)
        self.horizon = self.q(height * rng.uniform(0.3, 0.45))
        self.objs: list[_Obj] = []
        self.counter = 0
        # classes that may appear in this scene type (at any role)
        self.allowed = ({n for n, _ in scene.ground} | {n for n, _ in scene.sky}
                        | set(scene.items))

    # ---- small helpers ----
    def q(self, v: float) -> int:
        """Round to the coordinate grid."""
        return int(self.g * round(v / self.g))

    def size(self, cls: str, scale: float) -> tuple[int, int]:
        c = spec.CLASS_BY_NAME[cls]
        w = self.rng.uniform(*c.size) * self.L * scale
        h = w * self.rng.uniform(*c.aspect)
        return max(2 * self.g, self.q(w)), max(2 * self.g, self.q(h))

    def persp(self, bottom: float) -> float:
        t = (bottom - self.horizon) / max(self.H - self.horizon, 1)
        return 0.6 + 0.6 * float(np.clip(t, 0.0, 1.0))

    def new(self, cls: str, box: list[int], depth: float, parent: int = -1,
            attach: str = "") -> int:
        c = spec.CLASS_BY_NAME[cls]
        colour = c.colours[int(self.rng.integers(len(c.colours)))]
        names = [t for t, _ in c.textures]
        pr = np.array([p for _, p in c.textures])
        texture = names[int(self.rng.choice(len(names), p=pr / pr.sum()))]
        facing = int(self.rng.choice([-1, 1])) if c.animate else 0
        self.objs.append(_Obj(cls, box, colour, texture, facing, depth, parent, attach))
        return len(self.objs) - 1

    def root_bottom(self, idx: int) -> int:
        """Bottom of the ground object that (transitively) carries `idx`: its perspective."""
        while self.objs[idx].parent >= 0:
            idx = self.objs[idx].parent
        return self.objs[idx].box[3]

    def child_depth(self, parent: int) -> float:
        self.counter += 1
        return self.objs[parent].depth + 1e-3 * self.counter

    def overlap_ok(self, box: list[int], max_frac: float = 0.5) -> bool:
        """True when `box` covers at most max_frac of any ground/sky object and vice versa."""
        for o in self.objs:
            if o.parent >= 0:
                continue
            b = o.box
            iw = min(box[2], b[2]) - max(box[0], b[0])
            ih = min(box[3], b[3]) - max(box[1], b[1])
            if iw > 0 and ih > 0:
                inter = iw * ih
                small = min((box[2] - box[0]) * (box[3] - box[1]), (b[2] - b[0]) * (b[3] - b[1]))
                if inter > max_frac * small:
                    return False
        return True

    # ---- placement ----
    def place_ground(self, cls: str, tries: int = 6, max_overlap: float = 0.5) -> int | None:
        """A ground object: foot point below the horizon, size by perspective, little overlap
        with other ground objects (buildings stand just below the horizon, far away)."""
        span = self.H - self.horizon
        for _ in range(tries):
            lo, hi = (0.0, 0.12) if cls == "building" else (0.08, 1.0)
            bottom = self.q(self.horizon + self.rng.uniform(lo, hi) * span)
            bottom = min(max(bottom, self.horizon + self.g), self.H)
            w, h = self.size(cls, self.persp(bottom))
            if h > bottom:  # too tall for the space above its foot point: shrink
                f = (bottom - self.g) / h
                w, h = max(2 * self.g, self.q(w * f)), max(2 * self.g, self.q(h * f))
            if w >= self.W or h > bottom:
                continue
            x1 = self.q(self.rng.uniform(0, self.W - w))
            x1 = min(x1, self.W - w)
            box = [x1, bottom - h, x1 + w, bottom]
            if self.overlap_ok(box, max_overlap):
                return self.new(cls, box, float(bottom))
        return None

    def place_sky(self, cls: str) -> int | None:
        """A flying object above the horizon (drawn before every ground object)."""
        for _ in range(4):
            w, h = self.size(cls, 0.8)
            if h >= self.horizon - self.g or w >= self.W:
                return None
            x1 = min(self.q(self.rng.uniform(0, self.W - w)), self.W - w)
            y1 = min(self.q(self.rng.uniform(0, self.horizon - h)), self.horizon - h)
            box = [x1, y1, x1 + w, y1 + h]
            if self.overlap_ok(box, 0.2):
                return self.new(cls, box, float(self.horizon) * 0.5)
        return None

    def _taken(self, parent: int, attach: str) -> list[tuple[int, int]]:
        return [(o.box[0], o.box[2]) for o in self.objs
                if o.parent == parent and o.attach == attach]

    def place_on(self, item: str, support: int, tries: int = 4) -> int | None:
        """`item` resting on top of `support` (or riding it, for bicycles)."""
        s = self.objs[support]
        sw = s.box[2] - s.box[0]
        riding = spec.resting_predicate(item, s.cls) == "riding"
        for _ in range(tries):
            w, h = self.size(item, self.persp(self.root_bottom(support)))
            if w > sw:
                f = sw / w
                w, h = max(2 * self.g, self.q(w * f)), max(2 * self.g, self.q(h * f))
                if w > sw:
                    return None
            if riding:
                x1 = self.q(s.box[0] + (sw - w) / 2)
                y2 = self.q(s.box[1] + (s.box[3] - s.box[1]) / 2)
            else:
                x1 = self.q(self.rng.uniform(s.box[0], s.box[2] - w))
                x1 = min(max(x1, s.box[0]), s.box[2] - w)
                y2 = s.box[1]
            y1 = y2 - h
            if y1 < 0 or x1 < 0 or x1 + w > self.W:
                continue
            if any(min(x1 + w, b) - max(x1, a) > 0 for a, b in self._taken(support, "on")):
                continue
            idx = self.new(item, [x1, y1, x1 + w, y2], self.child_depth(support), support,
                           "riding" if riding else "on")
            return idx
        return None

    def place_inside(self, item: str, container: int) -> int | None:
        """`item` strictly inside the container's box, resting low in it."""
        c = self.objs[container]
        cw, ch = c.box[2] - c.box[0], c.box[3] - c.box[1]
        w, h = self.size(item, 1.0)
        f = min(1.0, 0.62 * cw / w, 0.62 * ch / h)
        w, h = self.q(w * f), self.q(h * f)
        if w < 2 * self.g or h < 2 * self.g or w > cw - 2 * self.g or h > ch - 2 * self.g:
            return None
        x1 = min(max(self.q(self.rng.uniform(c.box[0] + self.g, c.box[2] - self.g - w)),
                     c.box[0] + self.g), c.box[2] - self.g - w)
        if c.cls == "bowl":
            y2 = self.q(c.box[1] + 0.7 * ch)
        else:
            y2 = c.box[3] - self.g
        y2 = max(y2, c.box[1] + self.g + h)
        y2 = min(y2, c.box[3] - self.g)
        return self.new(item, [x1, y2 - h, x1 + w, y2], self.child_depth(container), container,
                        "inside")

    def place_held(self, item: str, person: int) -> int | None:
        """`item` in the person's hand on the side the person faces; a hand is drawn over it."""
        p = self.objs[person]
        pw, ph = p.box[2] - p.box[0], p.box[3] - p.box[1]
        w, h = self.size(item, self.persp(self.root_bottom(person)))
        f = min(1.0, 0.45 * ph / h)
        w, h = max(2 * self.g, self.q(w * f)), max(2 * self.g, self.q(h * f))
        r = max(1, int(round(0.16 * pw)))
        hy = self.q(p.box[1] + 0.48 * ph)
        overlap = self.q(max(r, self.g))
        if p.facing > 0:
            x1 = p.box[2] - overlap
            hx = x1 + r
        else:
            x1 = p.box[0] + overlap - w
            hx = x1 + w - r
        y1 = self.q(hy - h / 2)
        if x1 < 0 or x1 + w > self.W or y1 < 0 or y1 + h > self.H:
            return None
        idx = self.new(item, [x1, y1, x1 + w, y1 + h], self.child_depth(person), person, "held")
        self.objs[idx].hand = (int(hx), int(hy), r)
        return idx

    def place_worn(self, item: str, person: int) -> int | None:
        """A hat on the person's head (its brim slightly over the head's top)."""
        p = self.objs[person]
        pw, ph = p.box[2] - p.box[0], p.box[3] - p.box[1]
        d = min(0.6 * pw, 0.28 * ph)
        w = max(2 * self.g, self.q(d * 1.3))
        h = max(2 * self.g, self.q(w * self.rng.uniform(*spec.CLASS_BY_NAME[item].aspect)))
        x1 = self.q(p.box[0] + (pw - w) / 2)
        y2 = self.q(p.box[1] + 0.3 * d)
        if y2 - h < 0 or x1 < 0 or x1 + w > self.W:
            return None
        return self.new(item, [x1, y2 - h, x1 + w, y2], self.child_depth(person), person, "worn")

    # ---- the scene ----
    def decorate(self, idx: int, depth_left: int = 2) -> None:
        """Puts items on / inside / in the hands of object `idx` by the world's rules."""
        o = self.objs[idx]
        allowed = self.allowed
        if o.cls in spec.SUPPORT_ITEMS and depth_left > 0:
            prob, most = spec.SUPPORT_PROB[o.cls]
            if self.rng.random() < prob:
                for _ in range(int(self.rng.integers(1, most + 1))):
                    item = _choice(self.rng, spec.SUPPORT_ITEMS[o.cls], sorted(allowed))
                    if item is None:
                        break
                    k = self.place_on(item, idx)
                    if k is not None:
                        self.decorate(k, depth_left - 1)
        if o.cls in spec.CONTAINER_ITEMS and depth_left > 0 and \
                self.rng.random() < spec.CONTAINER_PROB[o.cls]:
            item = _choice(self.rng, spec.CONTAINER_ITEMS[o.cls], sorted(allowed))
            if item is not None:
                self.place_inside(item, idx)
        if o.cls == "person":
            if self.rng.random() < spec.HOLD_PROB:
                item = _choice(self.rng, spec.HOLDABLE, sorted(allowed))
                if item is not None:
                    self.place_held(item, idx)
            if self.rng.random() < spec.WEAR_PROB:
                self.place_worn("hat", idx)


def _scene_for(rng: np.random.Generator, classes: Sequence[str]) -> spec.SceneType:
    """A scene type where all `classes` can appear (any scene type if none fits)."""
    fits = [s for s in spec.SCENE_TYPES
            if all(c in {n for n, _ in s.ground} | set(s.items) | {n for n, _ in s.sky}
                   for c in classes)]
    pool = fits or list(spec.SCENE_TYPES)
    return pool[int(rng.integers(len(pool)))]


def _force_triplet(world: _World, subj: str, pred: str, obj: str) -> tuple[int, int]:
    """Builds a pair (subject, object) for which `pred` holds; returns their indices."""
    if pred not in _PLANTABLE:
        raise ValueError(f"cannot plant a triplet with predicate {pred!r}; "
                         f"plantable: {sorted(_PLANTABLE)}")
    # the parent of the attachment is the object for on/inside/riding, the subject otherwise
    parent_is_obj = pred not in ("holding", "wearing")
    parent_cls, child_cls = (obj, subj) if parent_is_obj else (subj, obj)
    grounds = {n for s in spec.SCENE_TYPES for n, _ in s.ground}
    for _ in range(40):
        n_before = len(world.objs)
        if parent_cls in grounds:
            parent = world.place_ground(parent_cls, tries=3, max_overlap=1.0)
        else:  # e.g. a bowl: put it on a ground support that can carry it
            holder = next(s for s, items in spec.SUPPORT_ITEMS.items()
                          if s in grounds and any(n == parent_cls for n, _ in items))
            base = world.place_ground(holder, tries=3, max_overlap=1.0)
            parent = None if base is None else world.place_on(parent_cls, base)
        child = None
        if parent is not None:
            if pred == "inside":
                child = world.place_inside(child_cls, parent)
            elif pred == "holding":
                child = world.place_held(child_cls, parent)
            elif pred == "wearing":
                child = world.place_worn(child_cls, parent)
            else:
                child = world.place_on(child_cls, parent)
        if child is not None:
            return (child, parent) if parent_is_obj else (parent, child)
        del world.objs[n_before:]
    raise RuntimeError(f"could not plant ({subj}, {pred}, {obj}) after 40 tries")


_PLANTABLE = ("on", "sitting on", "standing on", "riding", "inside", "holding", "wearing")


# --------------------------------------------------------------------------------------------
# Relation truth and annotation
# --------------------------------------------------------------------------------------------

def relation_truth(boxes: np.ndarray, classes: Sequence[str], depth: np.ndarray,
                   facing: np.ndarray, parent: np.ndarray, attach: Sequence[str],
                   colours: Sequence[str], long_side: int) -> np.ndarray:
    """[P, N, N] bool: which predicate holds for each ordered pair (subject i, object j).

    Definitions (tol = 0.02 * long side):
      left of: centre_x(i) < centre_x(j) - tol and the boxes overlap vertically; right of: mirror.
      above: bottom(i) < top(j) and the boxes overlap horizontally; below: mirror.
      near: boxes do not intersect and their gap is <= 0.06 * long side.
      on: i rests on j (bottom(i) == top(j), centre_x(i) within j); sitting on / standing on:
        the same for people/cats/dogs and birds; riding: person on a bicycle; under: j on i.
      inside: i placed inside j (box containment); has: j inside i.
      holding / wearing: j held / worn by i (a drawn hand / hat on the head).
      in front of: boxes intersect by >= 10% of the smaller box and i is drawn after j; behind.
      looking at: i animate, j the nearest non-attached object on the side i faces whose
        vertical extent (+- tol) contains i's eye; facing away from: such j on the other side
        within 0.12 * long side.
      same colour as: same colour name.
    """
    n = len(classes)
    t = np.zeros((NUM_PREDICATES, n, n), bool)
    if n == 0:
        return t
    b = np.asarray(boxes, np.float64)
    x1, y1, x2, y2 = (b[:, k] for k in range(4))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    tol = 0.02 * long_side
    ix = np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None])
    iy = np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area = (x2 - x1) * (y2 - y1)
    eye = np.eye(n, dtype=bool)
    gap = np.maximum(np.clip(-ix, 0, None), np.clip(-iy, 0, None))

    def put(name: str, m: np.ndarray) -> None:
        t[P[name] - 1] |= m & ~eye

    put("left of", (cx[:, None] < cx[None] - tol) & (iy > 0))
    put("right of", (cx[:, None] > cx[None] + tol) & (iy > 0))
    put("above", (y2[:, None] < y1[None]) & (ix > 0))
    put("below", (y1[:, None] > y2[None]) & (ix > 0))
    put("near", (inter == 0) & (gap <= 0.06 * long_side))
    put("in front of", (inter >= 0.1 * np.minimum(area[:, None], area[None]))
        & (depth[:, None] > depth[None]))
    put("behind", (inter >= 0.1 * np.minimum(area[:, None], area[None]))
        & (depth[:, None] < depth[None]))
    same = np.array(colours)[:, None] == np.array(colours)[None]
    put("same colour as", same)

    idx = np.arange(n)
    child_of = (parent[:, None] == idx[None])  # [i, j]: i's parent is j
    att = np.array(list(attach) if n else [], dtype=object)
    rest = child_of & np.isin(att, ["on"])[:, None]
    specific = np.full((n, n), "", dtype=object)
    for i, j in np.argwhere(rest):
        specific[i, j] = spec.resting_predicate(classes[i], classes[j])
    put("on", rest)
    put("sitting on", rest & (specific == "sitting on"))
    put("standing on", rest & (specific == "standing on"))
    put("under", rest.T)
    put("riding", child_of & np.isin(att, ["riding"])[:, None])
    inside = child_of & np.isin(att, ["inside"])[:, None]
    put("inside", inside)
    put("has", inside.T)
    put("holding", (child_of & np.isin(att, ["held"])[:, None]).T)
    put("wearing", (child_of & np.isin(att, ["worn"])[:, None]).T)

    attached = child_of | child_of.T
    for i in range(n):
        if facing[i] == 0:
            continue
        ex, ey = eye_point(classes[i], tuple(int(v) for v in b[i]), int(facing[i]))
        band = (y1 - tol <= ey) & (ey <= y2 + tol) & ~attached[i] & (idx != i)
        side = facing[i] * (cx - cx[i])
        ahead = np.flatnonzero(band & (side > 0))
        if ahead.size:
            j = ahead[np.argmin(np.abs(cx[ahead] - cx[i]))]
            t[P["looking at"] - 1, i, j] = True
        t[P["facing away from"] - 1, i] = band & (side < 0) & (gap[i] <= 0.12 * long_side)
    return t


_SALIENCE = np.array([spec.PREDICATE_TABLE[p][0] for p in spec.PREDICATE_NAMES])
_KEEP = np.array([spec.PREDICATE_TABLE[p][1] for p in spec.PREDICATE_NAMES])


def annotate(rng: np.random.Generator, truth: np.ndarray, classes: Sequence[str],
             forced: tuple[int, int, int] | None = None) -> np.ndarray:
    """Sparse VG-like annotation: [R, 3] (subject, object, predicate 1-based).

    For each ordered pair with a true predicate, the annotator names one of them (chance
    proportional to salience), writes it down with a probability that depends on the predicate
    and the two classes, rarely adds a second true predicate for the pair, and mostly skips a
    pair whose reverse was already annotated. `forced` is always annotated.
    """
    rels: list[tuple[int, int, int]] = []
    if forced is not None:
        rels.append(forced)
    any_true = truth.any(0)
    pairs = np.argwhere(any_true)
    if len(pairs) == 0:
        return np.array(rels, np.int32).reshape(-1, 3)
    order = rng.permutation(len(pairs))
    gumbel = rng.gumbel(size=(len(pairs), NUM_PREDICATES))
    u = rng.random((len(pairs), 3))
    done: set[tuple[int, int]] = {(forced[0], forced[1])} if forced is not None else set()
    ck = np.array([spec.CLASS_KEEP[c] for c in classes])
    for k in order:
        i, j = (int(v) for v in pairs[k])
        if (i, j) in done:
            continue
        score = np.where(truth[:, i, j], np.log(_SALIENCE) + gumbel[k], -np.inf)
        p = int(np.argmax(score))
        keep = _KEEP[p] * np.sqrt(ck[i] * ck[j])
        if (j, i) in done:
            keep *= 0.25
        if u[k, 0] >= keep:
            continue
        done.add((i, j))
        rels.append((i, j, p + 1))
        others = np.flatnonzero(truth[:, i, j] & (np.arange(NUM_PREDICATES) != p))
        if others.size and u[k, 1] < 0.06:
            rels.append((i, j, int(others[int(u[k, 2] * others.size)]) + 1))
    return np.array(rels, np.int32).reshape(-1, 3)


# --------------------------------------------------------------------------------------------
# Region descriptions
# --------------------------------------------------------------------------------------------

def _size_word(cls: str, box: np.ndarray, long_side: int) -> str | None:
    c = spec.CLASS_BY_NAME[cls]
    ratio = float(box[2] - box[0]) / (0.5 * (c.size[0] + c.size[1]) * long_side)
    if ratio < 0.72:
        return "small"
    if ratio > 1.08:
        return "large"
    return None


def region_phrases(rng: np.random.Generator, boxes: np.ndarray, classes: Sequence[str],
                   colours: Sequence[str], textures: Sequence[str], relations: np.ndarray,
                   long_side: int) -> tuple[np.ndarray, list[list[str]]]:
    """Region boxes and phrases of 3..8 words (MSDN keeps 5 <= len + 2 (<start>, <end>) < 11).

    One region per annotated relation (union box, "[size] colour subject predicate colour object")
    and some single objects ("a [size] colour class [with texture]").
    """
    out_boxes, phrases = [], []
    seen = set()
    for s, o, p in relations:
        if (s, o, p) in seen:
            continue
        seen.add((s, o, p))
        words = []
        size = _size_word(classes[s], boxes[s], long_side)
        if size:
            words.append(size)
        words += [colours[s], classes[s], *spec.PREDICATE_NAMES[p - 1].split(),
                  colours[o], classes[o]]
        bs, bo = boxes[s], boxes[o]
        out_boxes.append([min(bs[0], bo[0]), min(bs[1], bo[1]), max(bs[2], bo[2]),
                          max(bs[3], bo[3])])
        phrases.append(words)
    for i in range(len(classes)):
        if rng.random() >= 0.3:
            continue
        words = ["a"]
        size = _size_word(classes[i], boxes[i], long_side)
        if size:
            words.append(size)
        words += [colours[i], classes[i]]
        if textures[i] in spec.TEXTURE_WORDS:
            words += ["with", spec.TEXTURE_WORDS[textures[i]]]
        out_boxes.append(list(boxes[i]))
        phrases.append(words)
    return np.array(out_boxes, np.float32).reshape(-1, 4), phrases


# --------------------------------------------------------------------------------------------
# One scene
# --------------------------------------------------------------------------------------------

def _as_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    w, h = image_size
    return int(w), int(h)


def sample_scene(rng: np.random.Generator, image_size: int | tuple[int, int] = 256, *,
                 scene_type: str | None = None,
                 force_triplet: tuple[str, str, str] | None = None,
                 exclude_triplets: Sequence[tuple[int, int, int]] = ()
                 ) -> tuple[SceneGraph, list[DrawItem], int, tuple]:
    """Samples one scene's world and graph without drawing it.

    Returns (graph, draw items back to front, horizon, background colours). `force_triplet`
    (names) plants and annotates that relation; `exclude_triplets` (1-based class, predicate,
    class ids) are removed from the annotation (zero-shot triplets in train/val).
    """
    width, height = _as_size(image_size)
    check_image_size(width, height)
    if force_triplet is not None:
        scene = _scene_for(rng, (force_triplet[0], force_triplet[2]))
    elif scene_type is not None:
        if scene_type not in spec.SCENE_BY_NAME:
            raise ValueError(f"scene_type must be one of {sorted(spec.SCENE_BY_NAME)}, "
                             f"got {scene_type!r}")
        scene = spec.SCENE_BY_NAME[scene_type]
    else:
        scene = spec.SCENE_TYPES[int(rng.choice(len(spec.SCENE_TYPES),
                                                p=np.array(spec.SCENE_TYPE_WEIGHTS)))]
    world = _World(rng, width, height, scene)
    forced_pair = None
    if force_triplet is not None:
        forced_pair = _force_triplet(world, *force_triplet)
    n_ground = int(rng.integers(scene.num_ground[0], scene.num_ground[1] + 1))
    n_sky = int(rng.integers(scene.num_sky[0], scene.num_sky[1] + 1))
    for _ in range(n_sky):
        cls = _choice(rng, scene.sky)
        if cls is not None:
            world.place_sky(cls)
    grounds = []
    for _ in range(n_ground):
        k = world.place_ground(_choice(rng, scene.ground))
        if k is not None:
            grounds.append(k)
    for k in grounds:
        world.decorate(k)
    if not world.objs:  # always at least one object
        k = world.place_ground("person", tries=20, max_overlap=1.0)
        if k is None:
            raise RuntimeError("could not place any object")

    # draw order (back to front) and a random order for the written files
    objs = world.objs
    n = len(objs)
    draw_order = sorted(range(n), key=lambda k: (objs[k].depth, k))
    rank = np.empty(n, np.int32)
    rank[draw_order] = np.arange(n)
    perm = rng.permutation(n)  # file position -> world index
    inv = np.empty(n, np.int64)
    inv[perm] = np.arange(n)
    classes = [objs[k].cls for k in perm]
    boxes = np.array([objs[k].box for k in perm], np.float32).reshape(-1, 4)
    colours = [objs[k].colour for k in perm]
    textures = [objs[k].texture for k in perm]
    facing = np.array([objs[k].facing for k in perm], np.int8)
    parent = np.array([inv[objs[k].parent] if objs[k].parent >= 0 else -1 for k in perm],
                      np.int32)
    attach = [objs[k].attach for k in perm]
    depth = rank[perm]
    L = max(width, height)
    truth = relation_truth(boxes, classes, depth, facing, parent, attach, colours, L)
    forced = None
    if forced_pair is not None:
        forced = (int(inv[forced_pair[0]]), int(inv[forced_pair[1]]),
                  spec.PREDICATE_ID[force_triplet[1]])
        if not truth[forced[2] - 1, forced[0], forced[1]]:
            raise RuntimeError(f"planted {force_triplet} does not hold")  # a bug
    labels = np.array([spec.CLASS_ID[c] for c in classes], np.int32)
    rels = annotate(rng, truth, classes, forced)
    if len(exclude_triplets) and len(rels):
        ex = {tuple(int(v) for v in t) for t in exclude_triplets}
        keep = [(int(labels[s]), int(p), int(labels[o])) not in ex for s, o, p in rels]
        rels = rels[np.array(keep, bool)]
    rboxes, phrases = region_phrases(rng, boxes, classes, colours, textures, rels, L)
    graph = SceneGraph(width=width, height=height, scene_type=scene.name, boxes=boxes,
                       labels=labels, colours=colours, textures=textures, depth=depth,
                       facing=facing, parent=parent, attach=attach, truth=truth,
                       relations=rels.astype(np.int32).reshape(-1, 3), region_boxes=rboxes,
                       region_phrases=phrases)
    items = []
    for k in draw_order:
        o = objs[k]
        rgb = np.clip(np.array(spec.COLOURS[o.colour]) + rng.integers(-10, 11, 3), 0, 255)
        items.append(DrawItem(o.cls, tuple(o.box), tuple(int(c) for c in rgb), o.texture,
                              o.facing, o.hand))
    return graph, items, world.horizon, scene.background


def make_scene(rng: np.random.Generator, image_size: int | tuple[int, int] = 256, *,
               scene_type: str | None = None,
               force_triplet: tuple[str, str, str] | None = None,
               exclude_triplets: Sequence[tuple[int, int, int]] = ()
               ) -> tuple[np.ndarray, SceneGraph]:
    """One rendered scene: (uint8 [H, W, 3] image, its SceneGraph). Pure given `rng`.

    `image_size` is S (square) or (width, height); the long side must divide 1024.
    """
    graph, items, horizon, background = sample_scene(
        rng, image_size, scene_type=scene_type, force_triplet=force_triplet,
        exclude_triplets=exclude_triplets)
    image = render(rng, graph.width, graph.height, horizon, graph.scene_type, background, items)
    return image, graph


def expected_annotation_counts(graphs: Sequence[SceneGraph]) -> np.ndarray:
    """[P] expected number of annotations per predicate over `graphs`' truth tensors.

    The annotation model in closed form (ignoring the rare second predicate and the reverse-pair
    damping): a pair with true predicates T names p with probability salience_p / sum_T salience
    and keeps it with probability keep_p * sqrt(class_keep_i * class_keep_j). Used to check the
    long tail from the sampling distribution without large generations.
    """
    total = np.zeros(NUM_PREDICATES)
    for g in graphs:
        t = g.truth.astype(np.float64)
        if t.size == 0:
            continue
        classes = [spec.CLASS_NAMES[int(c) - 1] for c in g.labels]
        ck = np.sqrt(np.outer([spec.CLASS_KEEP[c] for c in classes],
                              [spec.CLASS_KEEP[c] for c in classes]))
        w = t * _SALIENCE[:, None, None]
        norm = w.sum(0)
        choose = np.divide(w, norm, out=np.zeros_like(w), where=norm > 0)
        total += (choose * _KEEP[:, None, None] * ck[None]).sum((1, 2))
    return total


# --------------------------------------------------------------------------------------------
# Dataset generation
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class GenerationResult:
    """What `generate` wrote. Records are in file order (val, train, test), boxes in pixels.

    idx_to_label / idx_to_predicate have "__background__" at index 0 (position == id);
    zero_shot_triplets is [Z, 3] int32 (subject class, predicate, object class), 1-based, in
    that column order (note: SGB's file uses subject, object, predicate).
    """

    output_dir: str
    records: list[SceneGraphRecord]
    idx_to_label: list[str]
    idx_to_predicate: list[str]
    zero_shot_triplets: np.ndarray
    vg150_h5: str
    vg150_dicts: str
    image_data: str
    image_dir: str
    msdn_dir: str
    zero_shot_path: str
    readme_path: str
    seconds: float
    scene_types: list[str]


def zero_shot_ids() -> np.ndarray:
    """[Z, 3] int32 ids (subject class, predicate, object class) of spec.ZERO_SHOT_TRIPLETS."""
    return np.array([(spec.CLASS_ID[s], spec.PREDICATE_ID[p], spec.CLASS_ID[o])
                     for s, p, o in spec.ZERO_SHOT_TRIPLETS], np.int32).reshape(-1, 3)


def planted_triplet(split: str, k: int) -> tuple[str, str, str] | None:
    """The zero-shot triplet planted in the k-th test image (the first Z, then every 8th)."""
    z = len(spec.ZERO_SHOT_TRIPLETS)
    if split != "test" or z == 0 or not (k < z or k % spec.ZERO_SHOT_EVERY == 0):
        return None
    return spec.ZERO_SHOT_TRIPLETS[k % z]


def image_rng(seed: int, split: str, k: int) -> np.random.Generator:
    """The generator of the k-th image of a split: independent of every other image."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_SEED_CODE[split], k]))


@dataclasses.dataclass(frozen=True)
class _Job:
    seed: int
    split: str
    k: int
    image_id: int
    size: tuple[int, int]
    write_dir: str   # where the JPEG is written now (inside the temporary directory)
    final_dir: str   # where it lives after the rename (record.image_path)


def _run_job(job: _Job) -> tuple[SceneGraphRecord, str]:
    """Generates, renders and saves one image; returns its record and scene type."""
    rng = image_rng(job.seed, job.split, job.k)
    exclude = zero_shot_ids() if job.split != "test" else ()
    image, graph = make_scene(rng, job.size, force_triplet=planted_triplet(job.split, job.k),
                              exclude_triplets=exclude)
    name = f"{job.image_id}.jpg"
    Image.fromarray(image).save(os.path.join(job.write_dir, name), format="JPEG",
                                quality=JPEG_QUALITY, subsampling=0)
    return graph.to_record(job.image_id, os.path.join(job.final_dir, name), job.split), \
        graph.scene_type


def _triplet_counts(records: Sequence[SceneGraphRecord], triplets: np.ndarray,
                    splits: Sequence[str]) -> np.ndarray:
    """How often each (subject class, predicate, object class) occurs in the given splits."""
    index = {tuple(int(v) for v in t): i for i, t in enumerate(triplets)}
    counts = np.zeros(len(triplets), np.int64)
    for r in records:
        if r.split not in splits:
            continue
        for s, o, p in np.asarray(r.relations).reshape(-1, 3):
            i = index.get((int(r.labels[s]), int(p), int(r.labels[o])))
            if i is not None:
                counts[i] += 1
    return counts


def _json_rows(obj: dict) -> str:
    """JSON with one line per top-level key and one line per list row (readable, stable)."""
    parts = []
    for k, v in obj.items():
        if isinstance(v, list) and v and isinstance(v[0], list):
            rows = ",\n  ".join(json.dumps(r) for r in v)
            parts.append(f"{json.dumps(k)}: [\n  {rows}\n ]")
        else:
            parts.append(f"{json.dumps(k)}: {json.dumps(v)}")
    return "{\n " + ",\n ".join(parts) + "\n}\n"


def _readme(seed: int, size: tuple[int, int], counts: dict[str, int], preset: str,
            n_obj: int, n_rel: int) -> str:
    w, h = size
    return f"""# sgg_jax synthetic scene-graph dataset

Procedurally rendered scenes (kitchen, office, street, park) with ground-truth scene graphs,
generated by `python -m data_pipelines.synthetic` (sgg_jax). See docs/synthetic_dataset.md in the
sgg_jax repository for the classes, predicates, long-tail and zero-shot design.

- seed: {seed}
- preset: {preset}
- generator version: {GENERATOR_VERSION}
- image size: {w} x {h} pixels (width x height)
- images: {counts['val']} val, {counts['train']} train, {counts['test']} test
- objects: {n_obj}, annotated relations: {n_rel}

Regenerate exactly: `python -m data_pipelines.synthetic --output DIR --seed {seed} \\
--num-train {counts['train']} --num-val {counts['val']} --num-test {counts['test']} \\
--image-size {w}x{h}`

Layout (the real datasets' layouts):
- `VG-SGG.h5`, `VG-SGG-dicts.json`, `image_data.json`, `VG_100K/<image_id>.jpg`: VG150
  (split 0 = train, whose first {counts['val']} images are the validation set; 2 = test).
- `msdn/`: VG-MSDN json (train.json = val + train, test.json, categories.json, dict.json,
  inverse_weight.json) with region descriptions.
- `zero_shot_triplets.json`: (subject, predicate, object) triplets absent from train/val and
  present in test.
"""


def _stats_table(records: Sequence[SceneGraphRecord], idx_to_predicate: Sequence[str],
                 zs: np.ndarray, zs_test: np.ndarray, seconds: float) -> str:
    lines = [f"{'split':6s} {'images':>7s} {'objects':>8s} {'relations':>10s} {'regions':>8s}"]
    for split in ("val", "train", "test"):
        rs = [r for r in records if r.split == split]
        lines.append(f"{split:6s} {len(rs):7d} {sum(len(r.labels) for r in rs):8d} "
                     f"{sum(len(r.relations) for r in rs):10d} "
                     f"{sum(len(r.region_phrases) for r in rs):8d}")
    preds = np.concatenate([np.asarray(r.relations).reshape(-1, 3)[:, 2] for r in records]
                           + [np.zeros(0, np.int64)])
    counts = np.bincount(preds.astype(np.int64), minlength=len(idx_to_predicate))[1:]
    order = np.argsort(-counts, kind="stable")
    fmt = lambda ks: ", ".join(f"{idx_to_predicate[k + 1]} {counts[k]}" for k in ks)  # noqa: E731
    lines.append(f"predicates, head: {fmt(order[:5])}")
    lines.append(f"predicates, tail: {fmt(order[-5:])}")
    nonzero = counts[counts > 0]
    if nonzero.size:
        lines.append(f"head / tail ratio: {counts.max() / nonzero.min():.0f} (over predicates "
                     f"that occur; {int((counts == 0).sum())} do not occur)")
    lines.append(f"zero-shot triplets: {len(zs)} (absent from train/val; test occurrences "
                 f"{int(zs_test.sum())})")
    n = len(records)
    lines.append(f"time: {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} images/s)")
    return "\n".join(lines)


def generate(output_dir: str | os.PathLike, num_train: int | None = None,
             num_val: int | None = None, num_test: int | None = None,
             image_size: int | tuple[int, int] | None = None, seed: int = 0,
             preset: str = "default", progress: bool = True, workers: int | None = None,
             overwrite: bool = False) -> GenerationResult:
    """Generates the synthetic dataset into `output_dir` (atomically) and returns its records.

    Sizes default to the preset's ("default": 3000/500/1000 images at 256 px, "large":
    25000/2000/5000 at 512 px). `image_size` is S or (width, height); the long side must divide
    1024. Everything is a pure function of `seed`: the same call writes the same bytes. The data
    is written into `<output_dir>.tmp-XXXX` and renamed to `output_dir` at the end; an existing
    `output_dir` is replaced only with `overwrite=True`.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = PRESETS[preset]
    num_train = cfg["num_train"] if num_train is None else int(num_train)
    num_val = cfg["num_val"] if num_val is None else int(num_val)
    num_test = cfg["num_test"] if num_test is None else int(num_test)
    size = _as_size(cfg["image_size"] if image_size is None else image_size)
    check_image_size(*size)
    if min(num_train, num_val, num_test) < 0 or num_train + num_val + num_test == 0:
        raise ValueError(f"image counts must be >= 0 and not all 0, got train={num_train} "
                         f"val={num_val} test={num_test}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.exists(output_dir) and not overwrite:
        raise ValueError(f"{output_dir} already exists; pass overwrite=True (--overwrite) "
                         "to replace it")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(output_dir) + ".tmp-", dir=parent)
    start = time.perf_counter()
    try:
        image_tmp = os.path.join(tmp, "VG_100K")
        image_final = os.path.join(output_dir, "VG_100K")
        os.makedirs(image_tmp)
        jobs, image_id = [], 1
        for split, n in (("val", num_val), ("train", num_train), ("test", num_test)):
            for k in range(n):
                jobs.append(_Job(seed, split, k, image_id, size, image_tmp, image_final))
                image_id += 1
        if workers is None:
            workers = min(2, os.cpu_count() or 1) if len(jobs) >= 200 else 1
        results = _run_jobs(jobs, workers, progress)
        records = [r for r, _ in results]
        scene_types = [s for _, s in results]
        result = _write_outputs(tmp, output_dir, records, scene_types, seed, size, preset,
                                start)
        if os.path.exists(output_dir):
            old = tempfile.mkdtemp(prefix=os.path.basename(output_dir) + ".old-", dir=parent)
            os.replace(output_dir, os.path.join(old, "d"))
            os.replace(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.seconds = time.perf_counter() - start
    if progress:
        zs_test = _triplet_counts(records, result.zero_shot_triplets, ("test",))
        print(_stats_table(records, result.idx_to_predicate, result.zero_shot_triplets,
                           zs_test, result.seconds))
    return result


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> list[tuple]:
    """Runs the jobs in order, in `workers` processes (spawned: safe after JAX is imported)."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="img", desc="synthetic", disable=not progress,
               file=sys.stdout)
    out = []
    try:
        if workers <= 1:
            for job in jobs:
                out.append(_run_job(job))
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers) as pool:
                for res in pool.imap(_run_job, jobs, chunksize=16):
                    out.append(res)
                    bar.update(1)
    finally:
        bar.close()
    return out


def _write_outputs(tmp: str, output_dir: str, records: list[SceneGraphRecord],
                   scene_types: list[str], seed: int, size: tuple[int, int], preset: str,
                   start: float) -> GenerationResult:
    """Writes the VG150 and VG-MSDN files, the zero-shot list and the README into `tmp`."""
    from data_pipelines import vg150, vg_msdn

    idx_to_label = [vg150.BACKGROUND, *spec.CLASS_NAMES]
    idx_to_predicate = [vg150.BACKGROUND, *spec.PREDICATE_NAMES]
    zs = zero_shot_ids()
    seen = _triplet_counts(records, zs, ("train", "val"))
    if seen.any():  # the generator removes them; this would be a bug
        raise RuntimeError(f"zero-shot triplets found in train/val: {zs[seen > 0].tolist()}")
    in_test = _triplet_counts(records, zs, ("test",))
    if (in_test == 0).any() and any(r.split == "test" for r in records):
        missing = [spec.ZERO_SHOT_TRIPLETS[i] for i in np.flatnonzero(in_test == 0)]
        print(f"note: {len(missing)} zero-shot triplets do not occur in this small test split "
              f"and are left out of zero_shot_triplets.json: {missing}")
    keep = in_test > 0
    zs, in_test = zs[keep], in_test[keep]
    vg150.write_vg150(tmp, records, idx_to_label, idx_to_predicate)
    vg_msdn.write_vg_msdn(os.path.join(tmp, "msdn"), records, idx_to_label, idx_to_predicate)
    zs_json = {
        "description": "(subject class, predicate, object class) triplets that never occur in "
                       "the train/val graphs and occur in the test graphs. ids are 1-based "
                       "(VG-SGG-dicts.json); column order subject, predicate, object.",
        "order": ["subject_class", "predicate", "object_class"],
        "count": int(len(zs)),
        "triplets": zs.tolist(),
        "names": [[idx_to_label[s], idx_to_predicate[p], idx_to_label[o]] for s, p, o in zs],
        "test_counts": in_test.tolist(),
    }
    zs_path = os.path.join(tmp, "zero_shot_triplets.json")
    with open(zs_path, "w", encoding="utf-8") as f:
        f.write(_json_rows(zs_json))
    counts = {s: sum(r.split == s for r in records) for s in ("val", "train", "test")}
    readme = _readme(seed, size, counts, preset, sum(len(r.labels) for r in records),
                     sum(len(r.relations) for r in records))
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme)
    j = lambda *p: os.path.join(output_dir, *p)  # noqa: E731
    return GenerationResult(
        output_dir=output_dir, records=records, idx_to_label=idx_to_label,
        idx_to_predicate=idx_to_predicate, zero_shot_triplets=zs,
        vg150_h5=j(vg150.H5_NAME), vg150_dicts=j(vg150.DICTS_NAME),
        image_data=j(vg150.IMAGE_DATA_NAME), image_dir=j("VG_100K"), msdn_dir=j("msdn"),
        zero_shot_path=j("zero_shot_triplets.json"), readme_path=j("README.md"),
        seconds=time.perf_counter() - start, scene_types=scene_types)


def _parse_size(text: str) -> int | tuple[int, int]:
    try:
        if "x" in text.lower():
            w, h = text.lower().split("x")
            return int(w), int(h)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image-size: expected S or WxH, got {text!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipelines.synthetic",
        description="Generate the synthetic scene-graph dataset in VG150 / VG-MSDN layouts.")
    parser.add_argument("--output", required=True, help="output directory (created atomically)")
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--num-val", type=int, default=None)
    parser.add_argument("--num-test", type=int, default=None)
    parser.add_argument("--image-size", type=_parse_size, default=None,
                        help="S (square) or WxH; the long side must divide 1024")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or statistics")
    args = parser.parse_args(argv)
    try:
        res = generate(args.output, num_train=args.num_train, num_val=args.num_val,
                       num_test=args.num_test, image_size=args.image_size, seed=args.seed,
                       preset=args.preset, progress=not args.quiet, workers=args.workers,
                       overwrite=args.overwrite)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"wrote {res.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
