"""The synthetic scene's world model: objects placed by simple rules on a coordinate grid.

A `World` holds one scene's objects while it is sampled: ground objects stand below a horizon
(size by perspective), sky objects fly above it, and small items rest on supports, sit inside
containers, or are held or worn by people (`decorate`, by the tables in `spec`). Every box
coordinate is a multiple of `grid_step(long side)`, which keeps VG150's rescaled boxes exact
(see the package docstring). `plant_triplet` builds a pair for which a given relation holds
(zero-shot triplets in test images).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from data_pipelines.synthetic import spec


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


def as_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) from S (square) or (width, height)."""
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    w, h = image_size
    return int(w), int(h)


@dataclasses.dataclass
class WorldObject:
    """One placed object; `parent` / `attach` say what carries it and how."""

    cls: str
    box: list[int]
    colour: str
    texture: str
    facing: int
    depth: float
    parent: int = -1
    attach: str = ""  # "", "on", "inside", "held", "worn", "riding"
    hand: tuple[int, int, int] | None = None


def weighted_choice(rng: np.random.Generator, table: Sequence[tuple[str, float]],
                    allowed: Sequence[str] | None = None) -> str | None:
    """Weighted choice over (name, weight), optionally restricted to `allowed` names."""
    items = [(n, w) for n, w in table if allowed is None or n in allowed]
    if not items:
        return None
    w = np.array([x[1] for x in items], np.float64)
    return items[int(rng.choice(len(items), p=w / w.sum()))][0]


class World:
    """Mutable state while sampling one scene: objects, image size, layout helpers."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, scene: spec.SceneType):
        self.rng, self.W, self.H, self.scene = rng, width, height, scene
        self.L = max(width, height)
        self.g = grid_step(self.L)
        self.horizon = self.q(height * rng.uniform(0.3, 0.45))
        self.objs: list[WorldObject] = []
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
        self.objs.append(WorldObject(cls, box, colour, texture, facing, depth, parent, attach))
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
                    item = weighted_choice(self.rng, spec.SUPPORT_ITEMS[o.cls], sorted(allowed))
                    if item is None:
                        break
                    k = self.place_on(item, idx)
                    if k is not None:
                        self.decorate(k, depth_left - 1)
        if o.cls in spec.CONTAINER_ITEMS and depth_left > 0 and \
                self.rng.random() < spec.CONTAINER_PROB[o.cls]:
            item = weighted_choice(self.rng, spec.CONTAINER_ITEMS[o.cls], sorted(allowed))
            if item is not None:
                self.place_inside(item, idx)
        if o.cls == "person":
            if self.rng.random() < spec.HOLD_PROB:
                item = weighted_choice(self.rng, spec.HOLDABLE, sorted(allowed))
                if item is not None:
                    self.place_held(item, idx)
            if self.rng.random() < spec.WEAR_PROB:
                self.place_worn("hat", idx)


_PLANTABLE = ("on", "sitting on", "standing on", "riding", "inside", "holding", "wearing")


def scene_for(rng: np.random.Generator, classes: Sequence[str]) -> spec.SceneType:
    """A scene type where all `classes` can appear (any scene type if none fits)."""
    fits = [s for s in spec.SCENE_TYPES
            if all(c in {n for n, _ in s.ground} | set(s.items) | {n for n, _ in s.sky}
                   for c in classes)]
    pool = fits or list(spec.SCENE_TYPES)
    return pool[int(rng.integers(len(pool)))]


def plant_triplet(world: World, subj: str, pred: str, obj: str) -> tuple[int, int]:
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
