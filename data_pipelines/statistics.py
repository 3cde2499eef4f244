"""Training-set statistics: class / predicate counts and the FREQ / KERN frequency tables.

Computed once when a dataset is built and stored beside it (`statistics.npz` + `statistics.json`),
so models (Motifs' FREQ bias, KERN's priors) and the evaluator (zero- / few-shot splits) read the
same numbers without touching the images again.

Conventions follow neural-motifs `lib/get_dataset_counts.py get_counts` (the table FREQ uses):
- `fg_matrix[s, o, p]` counts training relations with subject class s, object class o and
  predicate p (duplicates included: NM counts on data loaded with `filter_duplicate_rels=False`).
- `cooccurrence[i, j]` (KERN's object knowledge, `generate_knowledge.py`, with the corrected
  pairing): for each training image, the set of classes present adds one to every ordered pair
  of distinct classes (i, j) of the set, and one to [k, k] when class k appears at least twice;
  `class_images[i]` counts the images containing class i (KERN divides row i by it).
- `bg_matrix[s, o]` counts ordered pairs (i, j), i != j, of training boxes that intersect, with NM's
  "+1 pixel" rule evaluated at the 1024 long-side scale: min(x2) - max(x1) + 1 > 0 and likewise in
  y (so touching boxes count). If no pair in an image intersects, every ordered pair of that image
  is counted instead. Like NM, pairs that do carry a relation are counted too (NM's comment says
  "background" but its code counts all overlapping pairs); FREQ then uses `bg_matrix` as the
  predicate-0 column of the table.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Sequence

import numpy as np

from data_pipelines.errors import atomic_write_bytes
from data_pipelines.records import SceneGraphRecord

STATS_NPZ = "statistics.npz"
STATS_JSON = "statistics.json"
# 2: cooccurrence and class_images added. Version 1 files load without them (None).
FORMAT_VERSION = 2
_BOX_SCALE = 1024.0  # NM evaluates overlaps on boxes whose long side is 1024 pixels.


@dataclasses.dataclass
class DatasetStatistics:
    """Counts over the training split.

    Attributes:
      object_counts: [C+1] int64, training boxes per class (index 0 = background, always 0).
      predicate_counts: [P+1] int64, training relations per predicate (index 0 always 0).
      fg_matrix: [C+1, C+1, P+1] int64, relation counts by (subject class, object class, predicate).
      bg_matrix: [C+1, C+1] int64, intersecting ordered box pairs by (subject class, object class).
      idx_to_label: C+1 names, index 0 "__background__".
      idx_to_predicate: P+1 names, index 0 "__background__".
      num_images: training images counted.
      cooccurrence: [C+1, C+1] int64 class co-occurrence over images (module docstring), or
        None in statistics written before format version 2.
      class_images: [C+1] int64 training images containing each class (or None, as above).
    """

    object_counts: np.ndarray
    predicate_counts: np.ndarray
    fg_matrix: np.ndarray
    bg_matrix: np.ndarray
    idx_to_label: list[str]
    idx_to_predicate: list[str]
    num_images: int
    cooccurrence: np.ndarray | None = None
    class_images: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        """C, the number of object classes without background."""
        return int(self.object_counts.shape[0] - 1)

    @property
    def num_predicates(self) -> int:
        """P, the number of predicates without background."""
        return int(self.predicate_counts.shape[0] - 1)

    @property
    def num_relations(self) -> int:
        return int(self.predicate_counts.sum())

    @property
    def num_objects(self) -> int:
        return int(self.object_counts.sum())

    def triplet_counts(self) -> np.ndarray:
        """[Z, 4] int64 rows (subject class, predicate, object class, count) of every training
        triplet seen at least once, sorted by (subject, predicate, object).

        A test triplet absent here is zero-shot; count <= k gives BK's k-shot split.
        """
        spo = np.transpose(self.fg_matrix, (0, 2, 1))  # [s, p, o]
        s, p, o = np.nonzero(spo)
        return np.stack([s, p, o, spo[s, p, o]], axis=1).astype(np.int64)

    def save(self, directory: str | os.PathLike) -> None:
        """Writes `statistics.npz` (arrays, no pickle) and `statistics.json` (names) atomically.

        The json is written last, so a reader that finds it also finds a complete npz.
        """
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        buf = io.BytesIO()
        priors = {k: getattr(self, k) for k in OPTIONAL_ARRAYS if getattr(self, k) is not None}
        np.savez_compressed(buf, object_counts=self.object_counts,
                            predicate_counts=self.predicate_counts,
                            fg_matrix=self.fg_matrix, bg_matrix=self.bg_matrix, **priors)
        atomic_write_bytes(os.path.join(directory, STATS_NPZ), buf.getvalue())
        meta = dict(format_version=FORMAT_VERSION, idx_to_label=list(self.idx_to_label),
                    idx_to_predicate=list(self.idx_to_predicate),
                    num_images=int(self.num_images), num_classes=self.num_classes,
                    num_predicates=self.num_predicates, num_relations=self.num_relations,
                    num_objects=self.num_objects)
        atomic_write_bytes(os.path.join(directory, STATS_JSON),
                      json.dumps(meta, indent=1, sort_keys=True).encode("utf-8"))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "DatasetStatistics":
        """Reads what `save` wrote; raises ValueError naming the file if it is missing or bad."""
        directory = os.fspath(directory)
        npz_path = os.path.join(directory, STATS_NPZ)
        json_path = os.path.join(directory, STATS_JSON)
        for p in (npz_path, json_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p}: dataset statistics file missing")
        try:
            with open(json_path, "r", encoding="utf-8") as f:
                meta = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_path}: expected valid JSON statistics ({e})") from e
        version = int(meta.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise ValueError(f"{json_path}: field 'format_version': {version} is newer than this "
                             f"sgg_jax reads ({FORMAT_VERSION}); update sgg_jax or rebuild")
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in
                      ("object_counts", "predicate_counts", "fg_matrix", "bg_matrix")
                      + OPTIONAL_ARRAYS if k in z.files}
        missing = {"object_counts", "predicate_counts", "fg_matrix", "bg_matrix"} - set(arrays)
        if missing:
            raise ValueError(f"{npz_path}: missing arrays {sorted(missing)}")
        for key in ("idx_to_label", "idx_to_predicate", "num_images"):
            if key not in meta:
                raise ValueError(f"{json_path}: field '{key}' missing")
        stats = cls(idx_to_label=list(meta["idx_to_label"]),
                    idx_to_predicate=list(meta["idx_to_predicate"]),
                    num_images=int(meta["num_images"]), **arrays)
        _check_shapes(stats, npz_path)
        return stats


# Priors added after version 1 (None when a file predates them).
OPTIONAL_ARRAYS = ("cooccurrence", "class_images")


def _check_shapes(stats: DatasetStatistics, where: str) -> None:
    c1, p1 = stats.object_counts.shape[0], stats.predicate_counts.shape[0]
    expected = {"fg_matrix": (c1, c1, p1), "bg_matrix": (c1, c1), "cooccurrence": (c1, c1),
                "class_images": (c1,)}
    for name, shape in expected.items():
        if getattr(stats, name) is None:
            continue
        got = getattr(stats, name).shape
        if got != shape:
            raise ValueError(f"{where}: field '{name}': expected shape {shape}, got {got}")
    if len(stats.idx_to_label) != c1 or len(stats.idx_to_predicate) != p1:
        raise ValueError(f"{where}: idx_to_label / idx_to_predicate lengths "
                         f"({len(stats.idx_to_label)}, {len(stats.idx_to_predicate)}) do not "
                         f"match the counts ({c1}, {p1})")


def _default_names(n: int, prefix: str) -> list[str]:
    return ["__background__"] + [f"{prefix}{i}" for i in range(1, n + 1)]


def intersecting_pairs(boxes: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """[N, G, G] bool: NM's pair rule for N images with G boxes each (boxes [N, G, 4] pixels).

    True where boxes i != j intersect under the +1 convention at the 1024 long-side scale; an
    image with no intersecting pair gets all i != j pairs instead (NM `box_filter`).
    """
    n, g = boxes.shape[:2]
    scale = _BOX_SCALE / np.maximum(np.maximum(width, height), 1).astype(np.float64)
    b = np.round(boxes.astype(np.float64) * scale[:, None, None], 3)  # undo float noise
    iw = np.minimum(b[:, :, None, 2], b[:, None, :, 2]) - np.maximum(b[:, :, None, 0],
                                                                     b[:, None, :, 0]) + 1
    ih = np.minimum(b[:, :, None, 3], b[:, None, :, 3]) - np.maximum(b[:, :, None, 1],
                                                                     b[:, None, :, 1]) + 1
    off_diag = ~np.eye(g, dtype=bool)[None]
    overlap = (iw > 0) & (ih > 0) & off_diag
    none = ~overlap.any(axis=(1, 2))
    return np.where(none[:, None, None], off_diag, overlap)


def compute_statistics(records: Sequence[SceneGraphRecord], num_classes: int,
                       num_predicates: int, idx_to_label: Sequence[str] | None = None,
                       idx_to_predicate: Sequence[str] | None = None) -> DatasetStatistics:
    """Counts over `records` (pass the training split, as loaded for training).

    Relations are counted by one `bincount` over all images; box pairs for `bg_matrix` are
    evaluated per group of images with the same box count, as one [N, G, G] array operation.
    Raises ValueError when a label or predicate is outside 1..C / 1..P or a relation index is out
    of range.
    """
    c1, p1 = num_classes + 1, num_predicates + 1
    idx_to_label = list(idx_to_label) if idx_to_label is not None else _default_names(
        num_classes, "class_")
    idx_to_predicate = list(idx_to_predicate) if idx_to_predicate is not None else (
        _default_names(num_predicates, "predicate_"))
    n_boxes = np.array([len(r.labels) for r in records], np.int64)
    labels = np.concatenate([np.asarray(r.labels, np.int64).reshape(-1) for r in records]
                            + [np.zeros(0, np.int64)])
    if labels.size and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"compute_statistics: labels must lie in [1, {num_classes}], got "
                         f"[{labels.min()}, {labels.max()}]")
    rels = [np.asarray(r.relations, np.int64).reshape(-1, 3) for r in records]
    n_rels = np.array([len(x) for x in rels], np.int64)
    rels_all = np.concatenate(rels + [np.zeros((0, 3), np.int64)])
    rel_img = np.repeat(np.arange(len(records)), n_rels)
    if rels_all.size:
        local = rels_all[:, :2]
        if local.min() < 0 or np.any(local >= n_boxes[rel_img][:, None]):
            bad = int(rel_img[np.argmax(np.any((local < 0) | (local >= n_boxes[rel_img][:, None]),
                                               axis=1))])
            raise ValueError(f"compute_statistics: image {records[bad].image_id}: field "
                             f"'relations' indexes outside its {n_boxes[bad]} boxes")
        pred = rels_all[:, 2]
        if pred.min() < 1 or pred.max() > num_predicates:
            raise ValueError(f"compute_statistics: predicates must lie in [1, {num_predicates}],"
                             f" got [{pred.min()}, {pred.max()}]")
    offsets = np.concatenate([[0], np.cumsum(n_boxes)[:-1]]).astype(np.int64)
    glob = rels_all[:, :2] + offsets[rel_img][:, None]
    subj, obj = labels[glob[:, 0]], labels[glob[:, 1]]
    fg = np.bincount((subj * c1 + obj) * p1 + rels_all[:, 2], minlength=c1 * c1 * p1)
    fg = fg.reshape(c1, c1, p1).astype(np.int64)

    bg = np.zeros(c1 * c1, np.int64)
    for g in np.unique(n_boxes):
        if g < 2:
            continue
        idx = np.nonzero(n_boxes == g)[0]
        boxes = np.stack([np.asarray(records[i].boxes, np.float64).reshape(g, 4) for i in idx])
        lab = np.stack([np.asarray(records[i].labels, np.int64).reshape(g) for i in idx])
        wh = np.array([(records[i].width, records[i].height) for i in idx], np.float64)
        pairs = intersecting_pairs(boxes, wh[:, 0], wh[:, 1])
        pair_index = lab[:, :, None] * c1 + lab[:, None, :]  # [N, G, G]
        bg += np.bincount(pair_index[pairs], minlength=c1 * c1)
    cooccurrence, class_images = class_cooccurrence(labels, n_boxes, c1)
    return DatasetStatistics(
        object_counts=np.bincount(labels, minlength=c1).astype(np.int64),
        predicate_counts=np.bincount(rels_all[:, 2], minlength=p1).astype(np.int64),
        fg_matrix=fg, bg_matrix=bg.reshape(c1, c1), idx_to_label=idx_to_label,
        idx_to_predicate=idx_to_predicate, num_images=len(records),
        cooccurrence=cooccurrence, class_images=class_images)


def class_cooccurrence(labels: np.ndarray, n_boxes: np.ndarray, c1: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(cooccurrence [c1, c1], class_images [c1]) from the concatenated labels of images with
    `n_boxes` boxes each (module docstring): one matrix product of the images' class counts."""
    image = np.repeat(np.arange(len(n_boxes)), n_boxes)
    counts = np.zeros((len(n_boxes), c1), np.int64)
    np.add.at(counts, (image, labels), 1)
    present = (counts > 0).astype(np.int64)
    mat = present.T @ present
    np.fill_diagonal(mat, (counts >= 2).sum(axis=0))
    return mat.astype(np.int64), present.sum(axis=0).astype(np.int64)
