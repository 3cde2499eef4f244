"""One synthetic scene: sample a world, compute and annotate its graph, render it.

`sample_scene` builds a `World` (world.py), puts the objects into a random file order, computes
the true relations and the sparse annotation (annotate.py) and returns the graph with what the
renderer draws; `make_scene` also draws the image (render.py). Both are pure functions of the
random generator they are given, whose draws happen in a fixed order (the same seed gives the
same bytes).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from data_pipelines.records import SceneGraphRecord
from data_pipelines.synthetic import spec
from data_pipelines.synthetic.annotate import annotate, region_phrases, relation_truth
from data_pipelines.synthetic.render import DrawItem, render
from data_pipelines.synthetic.world import (World, WorldObject, as_size, check_image_size,
                                            plant_triplet, scene_for, weighted_choice)


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
        """The graph as the record the VG150 / VG-MSDN writers take (arrays copied)."""
        return SceneGraphRecord(
            image_id=int(image_id), image_path=image_path, width=self.width, height=self.height,
            boxes=self.boxes.copy(), labels=self.labels.copy(), relations=self.relations.copy(),
            region_boxes=self.region_boxes.copy(),
            region_phrases=[list(p) for p in self.region_phrases], split=split)


def _pick_scene(rng: np.random.Generator, scene_type: str | None,
                force_triplet: tuple[str, str, str] | None) -> spec.SceneType:
    """The scene type: one where the planted triplet's classes fit, else the requested one,
    else a draw by SCENE_TYPE_WEIGHTS."""
    if force_triplet is not None:
        return scene_for(rng, (force_triplet[0], force_triplet[2]))
    if scene_type is not None:
        if scene_type not in spec.SCENE_BY_NAME:
            raise ValueError(f"scene_type must be one of {sorted(spec.SCENE_BY_NAME)}, "
                             f"got {scene_type!r}")
        return spec.SCENE_BY_NAME[scene_type]
    return spec.SCENE_TYPES[int(rng.choice(len(spec.SCENE_TYPES),
                                           p=np.array(spec.SCENE_TYPE_WEIGHTS)))]


def _populate(world: World) -> None:
    """Sky objects, ground objects and what the ground objects carry; at least one object."""
    rng, scene = world.rng, world.scene
    n_ground = int(rng.integers(scene.num_ground[0], scene.num_ground[1] + 1))
    n_sky = int(rng.integers(scene.num_sky[0], scene.num_sky[1] + 1))
    for _ in range(n_sky):
        cls = weighted_choice(rng, scene.sky)
        if cls is not None:
            world.place_sky(cls)
    grounds = []
    for _ in range(n_ground):
        k = world.place_ground(weighted_choice(rng, scene.ground))
        if k is not None:
            grounds.append(k)
    for k in grounds:
        world.decorate(k)
    if not world.objs:
        k = world.place_ground("person", tries=20, max_overlap=1.0)
        if k is None:
            raise RuntimeError("could not place any object")


def _drop_triplets(rels: np.ndarray, labels: np.ndarray,
                   exclude_triplets: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """`rels` without the relations whose (subject class, predicate, object class) is listed."""
    if not (len(exclude_triplets) and len(rels)):
        return rels
    ex = {tuple(int(v) for v in t) for t in exclude_triplets}
    keep = [(int(labels[s]), int(p), int(labels[o])) not in ex for s, o, p in rels]
    return rels[np.array(keep, bool)]


def _draw_items(rng: np.random.Generator, objs: Sequence[WorldObject],
                draw_order: Sequence[int]) -> list[DrawItem]:
    """What the renderer draws, back to front; each colour jittered a little."""
    items = []
    for k in draw_order:
        o = objs[k]
        rgb = np.clip(np.array(spec.COLOURS[o.colour]) + rng.integers(-10, 11, 3), 0, 255)
        items.append(DrawItem(o.cls, tuple(o.box), tuple(int(c) for c in rgb), o.texture,
                              o.facing, o.hand))
    return items


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
    width, height = as_size(image_size)
    check_image_size(width, height)
    scene = _pick_scene(rng, scene_type, force_triplet)
    world = World(rng, width, height, scene)
    forced_pair = None
    if force_triplet is not None:
        forced_pair = plant_triplet(world, *force_triplet)
    _populate(world)

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
    rels = _drop_triplets(annotate(rng, truth, classes, forced), labels, exclude_triplets)
    rboxes, phrases = region_phrases(rng, boxes, classes, colours, textures, rels, L)
    graph = SceneGraph(width=width, height=height, scene_type=scene.name, boxes=boxes,
                       labels=labels, colours=colours, textures=textures, depth=depth,
                       facing=facing, parent=parent, attach=attach, truth=truth,
                       relations=rels.astype(np.int32).reshape(-1, 3), region_boxes=rboxes,
                       region_phrases=phrases)
    items = _draw_items(rng, objs, draw_order)
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
