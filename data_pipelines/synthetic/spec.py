"""Vocabulary and world rules of the built-in synthetic scene-graph dataset.

Everything the generator samples from lives here as plain tables, so the design can be read (and
documented in docs/synthetic_dataset.md) in one place: object classes (shape, colours, size
distribution, textures), predicates (with how salient they are to an "annotator" and how often a
chosen one is kept), scene types (which classes co-occur), and the compatibility tables saying what
may rest on, sit inside, be held by or be worn by what.
"""
from __future__ import annotations

import dataclasses

# Named colours (RGB). Names are used in region phrases and by "same colour as".
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40),
    "green": (45, 150, 55),
    "blue": (40, 80, 205),
    "yellow": (235, 205, 40),
    "orange": (240, 135, 25),
    "purple": (125, 55, 170),
    "pink": (240, 135, 185),
    "brown": (125, 80, 35),
    "black": (30, 30, 30),
    "white": (240, 240, 240),
    "gray": (130, 130, 130),
}

TEXTURES = ("solid", "stripes", "vstripes", "dots", "checker")
TEXTURE_WORDS = {"stripes": "stripes", "vstripes": "stripes", "dots": "dots",
                 "checker": "squares"}


@dataclasses.dataclass(frozen=True)
class ObjectClass:
    """One object class: how it looks and how big it is.

    size: range of the box width as a fraction of the image's long side (before perspective).
    aspect: range of height / width. textures: choices with their probabilities.
    animate: has a facing direction (drawn eye and nose/beak) and can "look at" things.
    """

    name: str
    colours: tuple[str, ...]
    size: tuple[float, float]
    aspect: tuple[float, float]
    textures: tuple[tuple[str, float], ...] = (("solid", 1.0),)
    animate: bool = False


_S = "solid"
CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("apple", ("red", "green", "yellow"), (0.045, 0.07), (1.0, 1.0),
                ((_S, 0.8), ("dots", 0.2))),
    ObjectClass("ball", ("red", "blue", "yellow", "orange", "white"), (0.05, 0.09), (1.0, 1.0),
                ((_S, 0.4), ("stripes", 0.4), ("dots", 0.2))),
    ObjectClass("bench", ("brown", "green", "gray"), (0.26, 0.38), (0.32, 0.42),
                (("stripes", 0.8), (_S, 0.2))),
    ObjectClass("bicycle", ("red", "blue", "black", "green"), (0.18, 0.26), (0.6, 0.7)),
    ObjectClass("bird", ("blue", "yellow", "black", "red"), (0.05, 0.08), (0.65, 0.8),
                animate=True),
    ObjectClass("book", ("red", "blue", "green", "purple"), (0.07, 0.11), (0.3, 0.45),
                (("vstripes", 0.7), (_S, 0.3))),
    ObjectClass("bottle", ("green", "brown", "blue", "white"), (0.035, 0.05), (2.2, 3.0)),
    ObjectClass("bowl", ("white", "blue", "orange"), (0.10, 0.15), (0.45, 0.6),
                ((_S, 0.6), ("dots", 0.4))),
    ObjectClass("box", ("brown", "orange", "gray"), (0.10, 0.2), (0.7, 1.0),
                ((_S, 0.5), ("checker", 0.3), ("vstripes", 0.2))),
    ObjectClass("building", ("gray", "brown", "red", "white"), (0.24, 0.4), (1.1, 1.6),
                (("checker", 1.0),)),
    ObjectClass("car", ("red", "blue", "white", "black", "yellow"), (0.24, 0.36), (0.42, 0.52)),
    ObjectClass("cat", ("orange", "gray", "black", "white"), (0.09, 0.13), (0.8, 0.95),
                ((_S, 0.5), ("stripes", 0.5)), animate=True),
    ObjectClass("chair", ("brown", "black", "red"), (0.11, 0.16), (0.75, 0.95)),
    ObjectClass("cup", ("white", "red", "blue", "yellow"), (0.04, 0.06), (1.0, 1.2),
                ((_S, 0.7), ("dots", 0.3))),
    ObjectClass("desk", ("gray", "brown", "black"), (0.34, 0.46), (0.4, 0.5),
                (("stripes", 0.5), (_S, 0.5))),
    ObjectClass("dog", ("brown", "black", "white", "yellow"), (0.13, 0.19), (0.6, 0.75),
                ((_S, 0.6), ("dots", 0.4)), animate=True),
    ObjectClass("flower", ("red", "pink", "yellow", "purple"), (0.04, 0.06), (1.6, 2.2)),
    ObjectClass("hat", ("black", "red", "blue", "brown"), (0.06, 0.09), (0.45, 0.6),
                ((_S, 0.7), ("stripes", 0.3))),
    ObjectClass("kite", ("red", "yellow", "orange", "pink"), (0.07, 0.11), (1.2, 1.4),
                ((_S, 0.5), ("checker", 0.5))),
    ObjectClass("lamp", ("yellow", "white", "black"), (0.06, 0.09), (1.5, 2.2)),
    ObjectClass("laptop", ("gray", "black", "white"), (0.10, 0.15), (0.6, 0.75)),
    ObjectClass("person", ("red", "blue", "green", "yellow", "purple", "orange", "black",
                           "white"), (0.08, 0.11), (2.3, 2.8),
                ((_S, 0.7), ("stripes", 0.3)), animate=True),
    ObjectClass("plate", ("white", "blue", "yellow"), (0.10, 0.14), (0.22, 0.3)),
    ObjectClass("sign", ("red", "yellow", "blue", "green"), (0.07, 0.1), (1.8, 2.4)),
    ObjectClass("table", ("brown", "white", "gray"), (0.3, 0.46), (0.36, 0.48),
                (("stripes", 0.5), (_S, 0.5))),
    ObjectClass("tree", ("green", "orange"), (0.18, 0.28), (1.4, 1.9),
                (("dots", 0.8), (_S, 0.2))),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
assert list(CLASS_NAMES) == sorted(CLASS_NAMES), "classes are alphabetical, as in VG150"
CLASS_BY_NAME = {c.name: c for c in CLASSES}
CLASS_ID = {n: i + 1 for i, n in enumerate(CLASS_NAMES)}  # 1-based, 0 = background

# Predicates, alphabetical as in VG150. Per predicate: (salience, keep).
# salience: relative chance that an annotator who looks at a pair names this predicate among the
#   ones that are true for it; keep: chance that the chosen one is written down at all.
# Together with how often each predicate is true, they make the long tail (see the docs).
PREDICATE_TABLE: dict[str, tuple[float, float]] = {
    "above": (0.5, 0.07),
    "behind": (0.5, 0.22),
    "below": (0.25, 0.04),
    "facing away from": (0.025, 0.10),
    "has": (1.5, 0.45),
    "holding": (6.0, 0.90),
    "in front of": (0.8, 0.4),
    "inside": (3.0, 0.80),
    "left of": (0.35, 0.05),
    "looking at": (1.2, 0.6),
    "near": (0.35, 0.18),
    "on": (2.0, 0.95),
    "riding": (6.0, 0.85),
    "right of": (0.3, 0.04),
    "same colour as": (0.03, 0.015),
    "sitting on": (4.0, 0.80),
    "standing on": (3.0, 0.60),
    "under": (0.25, 0.30),
    "wearing": (6.0, 0.90),
}
PREDICATE_NAMES: tuple[str, ...] = tuple(PREDICATE_TABLE)
assert list(PREDICATE_NAMES) == sorted(PREDICATE_NAMES)
PREDICATE_ID = {n: i + 1 for i, n in enumerate(PREDICATE_NAMES)}  # 1-based

# Predicates whose truth needs more than the two boxes (drawn evidence: eye/nose direction,
# colour, a hand in contact).
APPEARANCE_PREDICATES = ("looking at", "facing away from", "same colour as", "holding")

# Class-dependent annotation keep rate: salient classes get their relations written down more
# often (as VG annotators favour people and animals over furniture).
CLASS_KEEP: dict[str, float] = {n: 0.8 for n in CLASS_NAMES}
CLASS_KEEP.update({"person": 1.0, "dog": 1.0, "cat": 1.0, "bird": 0.95, "car": 0.9, "hat": 0.95,
                   "kite": 0.9, "building": 0.55, "tree": 0.6, "table": 0.7, "desk": 0.7,
                   "flower": 0.7})


@dataclasses.dataclass(frozen=True)
class SceneType:
    """A scene type: classes that stand on the ground, fly in the sky, and may appear as small
    items (on supports, inside containers, held), each with a relative weight."""

    name: str
    ground: tuple[tuple[str, float], ...]
    sky: tuple[tuple[str, float], ...]
    items: tuple[str, ...]
    num_ground: tuple[int, int]  # inclusive range
    num_sky: tuple[int, int]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # (upper, lower) colour


SCENE_TYPES: tuple[SceneType, ...] = (
    SceneType("kitchen",
              ground=(("table", 4.0), ("chair", 2.5), ("person", 2.5), ("cat", 1.2),
                      ("box", 1.0), ("lamp", 0.4)),
              sky=(),
              items=("apple", "bottle", "bowl", "cup", "plate", "box", "flower", "cat", "book",
                     "lamp", "ball", "laptop", "hat"),
              num_ground=(3, 5), num_sky=(0, 0),
              background=((232, 222, 196), (176, 150, 118))),
    SceneType("office",
              ground=(("desk", 4.0), ("chair", 2.5), ("person", 2.5), ("box", 1.2),
                      ("lamp", 0.8), ("cat", 0.6)),
              sky=(),
              items=("laptop", "book", "cup", "lamp", "box", "bottle", "plate", "apple", "cat",
                     "flower", "hat"),
              num_ground=(3, 5), num_sky=(0, 0),
              background=((196, 208, 220), (104, 104, 116))),
    SceneType("street",
              ground=(("car", 3.0), ("person", 3.0), ("building", 1.6), ("sign", 1.5),
                      ("bicycle", 1.5), ("dog", 1.2), ("tree", 0.8), ("bench", 0.6),
                      ("box", 0.4)),
              sky=(("bird", 1.0), ("kite", 0.2)),
              items=("bird", "box", "hat", "cat", "bottle", "ball", "cup", "book"),
              num_ground=(3, 6), num_sky=(0, 2),
              background=((150, 190, 232), (92, 92, 98))),
    SceneType("park",
              ground=(("tree", 2.5), ("person", 3.0), ("bench", 2.0), ("dog", 1.6),
                      ("bicycle", 0.8), ("flower", 1.0), ("ball", 0.8), ("sign", 0.4)),
              sky=(("bird", 1.0), ("kite", 0.9)),
              items=("bird", "ball", "bottle", "apple", "book", "hat", "cup", "dog", "cat",
                     "flower", "kite"),
              num_ground=(3, 6), num_sky=(0, 2),
              background=((160, 200, 238), (88, 156, 72))),
)
SCENE_TYPE_WEIGHTS = (0.27, 0.23, 0.26, 0.24)
SCENE_BY_NAME = {s.name: s for s in SCENE_TYPES}

# support -> (item, weight): what may rest on top of what (bottom of item on top of support).
SUPPORT_ITEMS: dict[str, tuple[tuple[str, float], ...]] = {
    "table": (("cup", 3.0), ("plate", 3.0), ("bottle", 2.0), ("bowl", 2.0), ("apple", 1.0),
              ("laptop", 0.8), ("book", 0.8), ("flower", 0.8), ("lamp", 0.6), ("box", 0.6),
              ("cat", 0.8), ("hat", 0.3), ("ball", 0.3)),
    "desk": (("laptop", 3.0), ("book", 2.5), ("cup", 2.0), ("lamp", 2.0), ("bottle", 0.8),
             ("box", 0.8), ("apple", 0.4), ("plate", 0.4), ("cat", 0.6), ("flower", 0.4)),
    "bench": (("person", 3.0), ("bird", 1.2), ("dog", 1.0), ("cat", 0.6), ("bottle", 0.8),
              ("book", 0.8), ("ball", 0.5), ("hat", 0.5), ("cup", 0.4), ("box", 0.3)),
    "chair": (("person", 3.0), ("cat", 1.2), ("box", 0.6), ("hat", 0.4), ("book", 0.6),
              ("dog", 0.3)),
    "car": (("bird", 2.0), ("cat", 1.0), ("box", 0.8), ("ball", 0.3)),
    "box": (("cup", 1.5), ("book", 1.5), ("apple", 0.8), ("cat", 1.5), ("lamp", 0.5),
            ("bird", 0.5), ("bottle", 0.6), ("box", 0.5)),
    "building": (("bird", 1.0),),
    "sign": (("bird", 1.0),),
    "tree": (("bird", 1.0),),
    "plate": (("apple", 3.0), ("cup", 1.0)),
    "book": (("cup", 1.0), ("laptop", 0.5), ("book", 0.8)),
    "bicycle": (("person", 1.0),),
}
# Probability that a support gets items on top at all, and the range of how many.
SUPPORT_PROB: dict[str, tuple[float, int]] = {
    "table": (0.9, 3), "desk": (0.9, 3), "bench": (0.6, 2), "chair": (0.45, 1),
    "car": (0.25, 1), "box": (0.25, 1), "building": (0.2, 1), "sign": (0.15, 1),
    "tree": (0.25, 1), "plate": (0.4, 1), "book": (0.12, 1), "bicycle": (0.3, 1),
}

# container -> (content, weight): content box strictly inside the container box.
CONTAINER_ITEMS: dict[str, tuple[tuple[str, float], ...]] = {
    "bowl": (("apple", 3.0), ("ball", 1.0)),
    "box": (("ball", 1.5), ("book", 1.0), ("apple", 1.0), ("bottle", 1.0), ("cat", 0.6)),
}
CONTAINER_PROB: dict[str, float] = {"bowl": 0.5, "box": 0.4}

# What a person may hold (drawn as a hand, a skin-coloured disc, on the item).
HOLDABLE: tuple[tuple[str, float], ...] = (
    ("cup", 2.0), ("bottle", 1.5), ("ball", 1.5), ("book", 1.5), ("apple", 1.0),
    ("flower", 0.8), ("hat", 0.4), ("box", 0.4), ("plate", 0.4), ("kite", 0.5))
HOLD_PROB = 0.35
WEAR_PROB = 0.25   # person wearing hat (hat on the head)

# Zero-shot triplets (subject, predicate, object): compositions whose parts are common in training
# (e.g. cats sit on benches, people sit on chairs) but which never occur in train/val graphs.
# The generator removes them from training annotations and plants each in the test split.
ZERO_SHOT_TRIPLETS: tuple[tuple[str, str, str], ...] = (
    ("cat", "sitting on", "chair"),
    ("dog", "sitting on", "bench"),
    ("person", "holding", "apple"),
    ("bird", "standing on", "car"),
    ("apple", "inside", "box"),
    ("book", "on", "chair"),
    ("cup", "on", "desk"),
    ("ball", "inside", "bowl"),
    ("laptop", "on", "table"),
    ("bottle", "on", "bench"),
)
# One test image in ZERO_SHOT_EVERY gets a planted zero-shot triplet (plus the first Z images).
ZERO_SHOT_EVERY = 8


def resting_predicate(item: str, support: str) -> str:
    """The specific name of "item rests on support" (VG-like: people sit, birds stand)."""
    if support == "bicycle":
        return "riding"
    if item in ("person", "dog", "cat"):
        return "sitting on"
    if item == "bird":
        return "standing on"
    return "on"
