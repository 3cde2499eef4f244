"""The synthetic scene's graph: which relations hold, which an "annotator" writes down, and
region captions.

`relation_truth` computes every predicate for every ordered pair from the world (boxes, depth,
facing, attachments, colours) by precise definitions; `annotate` samples a sparse, class- and
predicate-dependent subset of the true relations, which gives VG's long tail and missing labels;
`expected_annotation_counts` is that model in closed form (tests check the long tail with it);
`region_phrases` writes MSDN-style region captions.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from data_pipelines.synthetic import spec
from data_pipelines.synthetic.render import eye_point

if TYPE_CHECKING:
    from data_pipelines.synthetic.scene import SceneGraph

NUM_PREDICATES = len(spec.PREDICATE_NAMES)
P = spec.PREDICATE_ID  # name -> 1-based id
_SALIENCE = np.array([spec.PREDICATE_TABLE[p][0] for p in spec.PREDICATE_NAMES])
_KEEP = np.array([spec.PREDICATE_TABLE[p][1] for p in spec.PREDICATE_NAMES])


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
    cx = (x1 + x2) / 2
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


def _size_word(cls: str, box: np.ndarray, long_side: int) -> str | None:
    """The word "small" / "large" for a box much narrower / wider than its class's mean."""
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
