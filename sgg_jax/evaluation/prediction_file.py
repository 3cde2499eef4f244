"""The on-disk format for a split's scene graph predictions (HDF5, no pickle).

Layout (format_version 1; all per-image arrays are concatenated along axis 0 and sliced by
offsets, like VG-SGG.h5):

  attrs: format = "sgg_jax.predictions", format_version = 1, num_predicates = P,
         num_classes = C (0 when unknown), metadata = JSON text (free-form dict)
  image_ids                    int64 [I]
  predictions/box_offsets      int64 [I+1]   image i owns rows box_offsets[i]:box_offsets[i+1]
  predictions/boxes            float32 [sum N, 4] x1y1x2y2 pixels
  predictions/labels           int32 [sum N]  1-based classes
  predictions/scores           float32 [sum N]
  predictions/rel_offsets      int64 [I+1]
  predictions/rel_pairs        int32 [sum M, 2] (subject, object) indices into the image's boxes
  predictions/rel_scores       float32 [sum M, P+1] column 0 = no relation
  groundtruth/ (optional) box_offsets, boxes, labels, rel_offsets,
                          relations int32 [sum R, 3] (subject, object, predicate 1-based)
  optional, all or none (`eval.save_logits`: a model's raw outputs, for models trained on top
  of saved predictions such as SGP):
  predictions/obj_logits       float32 [sum N, C+1] the relation model's object logits (rows of
                               boxes it did not see are zero; metadata "max_objects" = how many
                               first boxes it saw)
  predictions/rel_logits       float32 [sum M, P+1] its predicate logits, one row per rel_pairs
  predictions/image_sizes      float32 [I, 2] (height, width) of the image in the boxes' pixels

Files are written to a temporary name and moved into place with os.replace, so a reader never sees
a half-written file. Every problem found when reading raises `PredictionFileError` (a ValueError)
naming the file, the image and the field.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np

FORMAT = "sgg_jax.predictions"
FORMAT_VERSION = 1
PRED_FIELDS = ("boxes", "labels", "scores", "rel_pairs", "rel_scores")
GT_FIELDS = ("boxes", "labels", "relations")
LOGIT_FIELDS = ("obj_logits", "rel_logits", "image_size")  # per image; optional, all or none


class PredictionFileError(ValueError):
    """A predictions file (or the data given to write one) does not follow the format."""

    def __init__(self, file: str, message: str, image: Any = None, field: str | None = None):
        where = os.fspath(file)
        if image is not None:
            where += f": image {image}"
        if field is not None:
            where += f": field '{field}'"
        self.file, self.image, self.field = os.fspath(file), image, field
        super().__init__(f"{where}: {message}")


@dataclasses.dataclass
class PredictionFile:
    """A whole predictions file in memory (see `read_predictions`)."""

    image_ids: np.ndarray
    predictions: list[dict[str, np.ndarray]]
    groundtruths: list[dict[str, np.ndarray]] | None
    metadata: dict[str, Any]
    num_predicates: int
    num_classes: int


def _as(a: Any, dtype: Any, shape_tail: tuple[int, ...], file: str, image: Any, field: str
        ) -> np.ndarray:
    """Converts to an array of rank 1 + len(shape_tail) with that trailing shape, or raises."""
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:
        raise PredictionFileError(file, f"not a rectangular numeric array ({e})", image,
                                  field) from e
    if arr.size == 0:
        arr = arr.reshape((0,) + shape_tail)
    if arr.ndim != 1 + len(shape_tail) or tuple(arr.shape[1:]) != shape_tail:
        want = "[n" + "".join(f", {d}" for d in shape_tail) + "]"
        raise PredictionFileError(file, f"expected shape {want}, got {arr.shape}", image, field)
    if np.dtype(dtype).kind in "iu" and arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.number) or np.any(arr != np.round(arr)):
            raise PredictionFileError(file, f"expected integers, got {arr.dtype}", image, field)
    if np.dtype(dtype).kind == "f" and arr.size and not np.issubdtype(arr.dtype, np.number):
        raise PredictionFileError(file, f"expected numbers, got {arr.dtype}", image, field)
    return arr.astype(dtype)


def check_image(file: str, image: Any, pred: Mapping[str, np.ndarray] | None,
                gt: Mapping[str, np.ndarray] | None, num_predicates: int, num_classes: int
                ) -> None:
    """Checks one image's prediction / ground truth for lengths, ranges and finite values."""
    def labels_ok(labels: np.ndarray, field: str) -> None:
        hi = num_classes if num_classes > 0 else np.iinfo(np.int64).max
        if labels.size and (labels.min() < 1 or labels.max() > hi):
            rng = f"[1, {num_classes}]" if num_classes > 0 else ">= 1"
            raise PredictionFileError(file, f"labels must be in {rng}, got values "
                                      f"{labels.min()}..{labels.max()}", image, field)

    if pred is not None:
        n = pred["boxes"].shape[0]
        for f in ("labels", "scores"):
            if pred[f].shape[0] != n:
                raise PredictionFileError(file, f"has {pred[f].shape[0]} entries but "
                                          f"'predictions/boxes' has {n}", image,
                                          f"predictions/{f}")
        if pred["rel_scores"].shape[0] != pred["rel_pairs"].shape[0]:
            raise PredictionFileError(file, "must have one row per rel_pairs row", image,
                                      "predictions/rel_scores")
        if pred["rel_scores"].shape[1] != num_predicates + 1:
            raise PredictionFileError(file, f"expected {num_predicates + 1} columns "
                                      f"(P+1), got {pred['rel_scores'].shape[1]}", image,
                                      "predictions/rel_scores")
        labels_ok(pred["labels"], "predictions/labels")
        rp = pred["rel_pairs"]
        if rp.size and (rp.min() < 0 or rp.max() >= n):
            raise PredictionFileError(file, f"indices must be in [0, {n}), got "
                                      f"{rp.min()}..{rp.max()}", image, "predictions/rel_pairs")
        for f in ("boxes", "scores", "rel_scores"):
            if pred[f].size and not np.all(np.isfinite(pred[f])):
                raise PredictionFileError(file, "contains NaN or inf", image, f"predictions/{f}")
        if "obj_logits" in pred:
            want = {"obj_logits": (n, num_classes + 1),
                    "rel_logits": (pred["rel_pairs"].shape[0], num_predicates + 1)}
            for f, shape in want.items():
                if tuple(pred[f].shape) != shape:
                    raise PredictionFileError(file, f"expected shape {list(shape)} (one row per "
                                              f"{'box' if f == 'obj_logits' else 'rel_pairs row'}"
                                              f"), got {list(pred[f].shape)}", image,
                                              f"predictions/{f}")
            for f in ("obj_logits", "rel_logits", "image_size"):
                if pred[f].size and not np.all(np.isfinite(pred[f])):
                    raise PredictionFileError(file, "contains NaN or inf", image,
                                              f"predictions/{f}")
    if gt is not None:
        g = gt["boxes"].shape[0]
        if gt["labels"].shape[0] != g:
            raise PredictionFileError(file, f"has {gt['labels'].shape[0]} entries but "
                                      f"'groundtruth/boxes' has {g}", image, "groundtruth/labels")
        labels_ok(gt["labels"], "groundtruth/labels")
        rel = gt["relations"]
        if rel.size and (rel[:, :2].min() < 0 or rel[:, :2].max() >= g):
            raise PredictionFileError(file, f"box indices must be in [0, {g})", image,
                                      "groundtruth/relations")
        if rel.size and (rel[:, 2].min() < 1 or rel[:, 2].max() > num_predicates):
            raise PredictionFileError(file, f"predicates must be in [1, {num_predicates}]", image,
                                      "groundtruth/relations")
        if gt["boxes"].size and not np.all(np.isfinite(gt["boxes"])):
            raise PredictionFileError(file, "contains NaN or inf", image, "groundtruth/boxes")


def _normalise(file: str, image: Any, d: Mapping[str, Any], fields: Sequence[str],
               group: str, num_predicates: int | None) -> dict[str, np.ndarray]:
    spec = {"boxes": (np.float32, (4,)), "labels": (np.int32, ()), "scores": (np.float32, ()),
            "rel_pairs": (np.int32, (2,)), "relations": (np.int32, (3,))}
    out = {}
    for f in fields:
        if f not in d or d[f] is None:
            raise PredictionFileError(file, "missing", image, f"{group}/{f}")
        if f in ("rel_scores", "obj_logits", "rel_logits"):
            arr = np.asarray(d[f])
            cols = arr.shape[1] if arr.ndim == 2 else (num_predicates or 0) + 1
            out[f] = _as(arr, np.float32, (cols,), file, image, f"{group}/{f}")
        elif f == "image_size":
            arr = np.asarray(d[f], np.float32).reshape(-1)
            if arr.shape != (2,):
                raise PredictionFileError(file, f"expected (height, width), got shape "
                                          f"{arr.shape}", image, f"{group}/image_sizes")
            out[f] = arr
        else:
            dtype, tail = spec[f]
            out[f] = _as(d[f], dtype, tail, file, image, f"{group}/{f}")
    return out


def write_predictions(path: str | os.PathLike, image_ids: Sequence[int],
                      predictions: Sequence[Mapping[str, Any]],
                      groundtruths: Sequence[Mapping[str, Any]] | None = None,
                      metadata: Mapping[str, Any] | None = None, *,
                      compression: str | None = None) -> None:
    """Writes a split's predictions (and optionally its ground truth) to an HDF5 file atomically.

    Args:
      path: output file (.h5).
      image_ids: one id per image (unique).
      predictions: per image {boxes [N,4], labels [N], scores [N], rel_pairs [M,2],
        rel_scores [M,P+1]}.
      groundtruths: optional, per image {boxes [G,4], labels [G], relations [R,3]}.
      metadata: JSON-serialisable dict; "num_predicates" and "num_classes" are used for checks
        when present (otherwise P comes from rel_scores and C stays unknown), "mode" is the CLI's
        default mode.
      compression: h5py compression for the large arrays (e.g. "gzip"), None for speed.
    The data are checked with the same rules as `read_predictions`; bad input raises
    PredictionFileError and leaves no file behind.
    """
    path = os.fspath(path)
    meta = dict(metadata or {})
    try:
        meta_text = json.dumps(meta, sort_keys=True)
    except TypeError as e:
        raise PredictionFileError(path, f"metadata must be JSON-serialisable: {e}") from e
    ids = np.asarray(image_ids, np.int64).reshape(-1)
    if ids.shape[0] != len(predictions):
        raise PredictionFileError(path, f"{ids.shape[0]} image ids but {len(predictions)} "
                                  "predictions", field="image_ids")
    if np.unique(ids).shape[0] != ids.shape[0]:
        raise PredictionFileError(path, "image ids must be unique", field="image_ids")
    if groundtruths is not None and len(groundtruths) != len(predictions):
        raise PredictionFileError(path, f"{len(groundtruths)} ground truths but "
                                  f"{len(predictions)} predictions", field="groundtruth")
    num_predicates = meta.get("num_predicates")
    if num_predicates is None:
        for p in predictions:
            rs = np.asarray(p.get("rel_scores", []))
            if rs.ndim == 2 and rs.shape[1] > 1:
                num_predicates = rs.shape[1] - 1
                break
    with_logits = [all(f in p for f in LOGIT_FIELDS) for p in predictions]
    if any(with_logits) and not all(with_logits):
        i = with_logits.index(False)
        raise PredictionFileError(path, f"has no {'/'.join(LOGIT_FIELDS)} while other images "
                                  "do (all or none)", int(ids[i]), "predictions")
    fields = PRED_FIELDS + (LOGIT_FIELDS if with_logits and all(with_logits) else ())
    preds = [_normalise(path, int(ids[i]), p, fields, "predictions", num_predicates)
             for i, p in enumerate(predictions)]
    if num_predicates is None or int(num_predicates) < 1:
        raise PredictionFileError(path, "cannot tell the number of predicates: give "
                                  "metadata['num_predicates']", field="num_predicates")
    num_predicates = int(num_predicates)
    num_classes = int(meta.get("num_classes", 0) or 0)
    logits = fields != PRED_FIELDS
    if logits and num_classes < 1:
        raise PredictionFileError(path, "object logits need metadata['num_classes']",
                                  field="num_classes")
    gts = None
    if groundtruths is not None:
        gts = [_normalise(path, int(ids[i]), g, GT_FIELDS, "groundtruth", None)
               for i, g in enumerate(groundtruths)]
    for i in range(len(preds)):
        check_image(path, int(ids[i]), preds[i], gts[i] if gts else None, num_predicates,
                    num_classes)

    def cat(items: list[dict], f: str, tail: tuple[int, ...], dtype: Any) -> np.ndarray:
        if not items:
            return np.zeros((0,) + tail, dtype)
        return np.concatenate([it[f].reshape((-1,) + tail) for it in items]).astype(dtype)

    def offsets(items: list[dict], f: str) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([it[f].shape[0] for it in items])]).astype(np.int64)

    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as h:
            h.attrs["format"] = FORMAT
            h.attrs["format_version"] = FORMAT_VERSION
            h.attrs["num_predicates"] = num_predicates
            h.attrs["num_classes"] = num_classes
            h.attrs["metadata"] = meta_text
            h.create_dataset("image_ids", data=ids)
            g = h.create_group("predictions")
            g.create_dataset("box_offsets", data=offsets(preds, "boxes"))
            g.create_dataset("boxes", data=cat(preds, "boxes", (4,), np.float32))
            g.create_dataset("labels", data=cat(preds, "labels", (), np.int32))
            g.create_dataset("scores", data=cat(preds, "scores", (), np.float32))
            g.create_dataset("rel_offsets", data=offsets(preds, "rel_pairs"))
            g.create_dataset("rel_pairs", data=cat(preds, "rel_pairs", (2,), np.int32),
                             compression=compression)
            g.create_dataset("rel_scores",
                             data=cat(preds, "rel_scores", (num_predicates + 1,), np.float32),
                             compression=compression)
            if logits:
                g.create_dataset("obj_logits",
                                 data=cat(preds, "obj_logits", (num_classes + 1,), np.float32))
                g.create_dataset("rel_logits",
                                 data=cat(preds, "rel_logits", (num_predicates + 1,),
                                          np.float32), compression=compression)
                g.create_dataset("image_sizes", data=np.stack(
                    [p["image_size"] for p in preds]).astype(np.float32).reshape(-1, 2))
            if gts is not None:
                t = h.create_group("groundtruth")
                t.create_dataset("box_offsets", data=offsets(gts, "boxes"))
                t.create_dataset("boxes", data=cat(gts, "boxes", (4,), np.float32))
                t.create_dataset("labels", data=cat(gts, "labels", (), np.int32))
                t.create_dataset("rel_offsets", data=offsets(gts, "relations"))
                t.create_dataset("relations", data=cat(gts, "relations", (3,), np.int32))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class PredictionReader:
    """Opens a predictions file, checks its structure, and yields images one at a time.

    Use as a context manager; `reader[i]` returns (image_id, prediction, groundtruth or None),
    each checked (indices, labels, shapes). Memory stays at one image at a time.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise PredictionFileError(self.path, "no such file")
        try:
            self._h = h5py.File(self.path, "r")
        except OSError as e:
            raise PredictionFileError(self.path, f"not a readable HDF5 file ({e})") from e
        try:
            self._check_structure()
        except Exception:
            self._h.close()
            raise

    def _check_structure(self) -> None:
        h, p = self._h, self.path
        if h.attrs.get("format") != FORMAT:
            raise PredictionFileError(p, f"expected attribute format={FORMAT!r}, got "
                                      f"{h.attrs.get('format')!r}", field="format")
        version = int(h.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise PredictionFileError(p, f"unsupported format_version {version}",
                                      field="format_version")
        self.num_predicates = int(h.attrs.get("num_predicates", 0))
        if self.num_predicates < 1:
            raise PredictionFileError(p, "must be >= 1", field="num_predicates")
        self.num_classes = int(h.attrs.get("num_classes", 0))
        try:
            self.metadata = json.loads(h.attrs.get("metadata", "{}"))
        except json.JSONDecodeError as e:
            raise PredictionFileError(p, f"not valid JSON ({e})", field="metadata") from e
        if "image_ids" not in h:
            raise PredictionFileError(p, "missing", field="image_ids")
        self.image_ids = np.asarray(h["image_ids"][()], np.int64).reshape(-1)
        n_img = self.image_ids.shape[0]
        if np.unique(self.image_ids).shape[0] != n_img:
            raise PredictionFileError(p, "image ids must be unique", field="image_ids")
        self.has_groundtruth = "groundtruth" in h
        present = [f for f in ("obj_logits", "rel_logits", "image_sizes")
                   if f"predictions/{f}" in h]
        if present and len(present) != 3:
            raise PredictionFileError(p, "obj_logits, rel_logits and image_sizes come together; "
                                      f"only {present} are present", field="predictions")
        self.has_logits = bool(present)
        if self.has_logits and self.num_classes < 1:
            raise PredictionFileError(p, "object logits need num_classes >= 1",
                                      field="num_classes")
        tails = {"boxes": (4,), "labels": (), "scores": (), "rel_pairs": (2,),
                 "rel_scores": (self.num_predicates + 1,), "relations": (3,),
                 "obj_logits": (self.num_classes + 1,),
                 "rel_logits": (self.num_predicates + 1,)}
        self._pred_fields = PRED_FIELDS + (("obj_logits", "rel_logits") if self.has_logits
                                           else ())
        groups = [("predictions", self._pred_fields)]
        if self.has_groundtruth:
            groups.append(("groundtruth", GT_FIELDS))
        self._offsets: dict[tuple[str, str], np.ndarray] = {}
        for group, fields in groups:
            for f in fields + ("box_offsets", "rel_offsets"):
                if f"{group}/{f}" not in h:
                    raise PredictionFileError(p, "missing", field=f"{group}/{f}")
            for f in fields:
                ds = h[f"{group}/{f}"]
                if tuple(ds.shape[1:]) != tails[f] or ds.ndim != 1 + len(tails[f]):
                    want = "[n" + "".join(f", {d}" for d in tails[f]) + "]"
                    raise PredictionFileError(p, f"expected shape {want}, got {ds.shape}",
                                              field=f"{group}/{f}")
            for off_name, owners in (("box_offsets", ("boxes", "labels", "scores",
                                                      "obj_logits")),
                                     ("rel_offsets", ("rel_pairs", "rel_scores", "relations",
                                                      "rel_logits"))):
                off = np.asarray(h[f"{group}/{off_name}"][()], np.int64).reshape(-1)
                owners = [o for o in owners if o in fields]
                total = h[f"{group}/{owners[0]}"].shape[0]
                if (off.shape[0] != n_img + 1 or off[0] != 0 or np.any(np.diff(off) < 0)
                        or off[-1] != total):
                    raise PredictionFileError(
                        p, f"expected {n_img + 1} non-decreasing offsets from 0 to {total}",
                        field=f"{group}/{off_name}")
                for o in owners[1:]:
                    if h[f"{group}/{o}"].shape[0] != total:
                        raise PredictionFileError(
                            p, f"has {h[f'{group}/{o}'].shape[0]} rows, expected {total}",
                            field=f"{group}/{o}")
                self._offsets[(group, off_name)] = off
        if self.has_logits:
            sizes = h["predictions/image_sizes"]
            if tuple(sizes.shape) != (n_img, 2):
                raise PredictionFileError(p, f"expected shape [{n_img}, 2], got {sizes.shape}",
                                          field="predictions/image_sizes")
            self._image_sizes = np.asarray(sizes[()], np.float32)

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])

    def _slice(self, group: str, fields: Sequence[str], i: int) -> dict[str, np.ndarray]:
        out = {}
        for f in fields:
            off = self._offsets[(group, "rel_offsets" if f in ("rel_pairs", "rel_scores",
                                                               "relations", "rel_logits")
                                 else "box_offsets")]
            out[f] = self._h[f"{group}/{f}"][off[i]:off[i + 1]]
        return out

    def __getitem__(self, i: int) -> tuple[int, dict[str, np.ndarray], dict | None]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        pred = self._slice("predictions", self._pred_fields, i)
        if self.has_logits:
            pred["image_size"] = self._image_sizes[i]
        gt = self._slice("groundtruth", GT_FIELDS, i) if self.has_groundtruth else None
        image_id = int(self.image_ids[i])
        check_image(self.path, image_id, pred, gt, self.num_predicates, self.num_classes)
        return image_id, pred, gt

    def __iter__(self) -> Iterator[tuple[int, dict[str, np.ndarray], dict | None]]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        self._h.close()

    def __enter__(self) -> "PredictionReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_predictions(path: str | os.PathLike) -> PredictionFile:
    """Reads and checks a whole predictions file (see the module docstring for the layout)."""
    with PredictionReader(path) as r:
        preds, gts = [], []
        for _, p, g in r:
            preds.append(p)
            gts.append(g)
        return PredictionFile(image_ids=r.image_ids.copy(), predictions=preds,
                              groundtruths=gts if r.has_groundtruth else None,
                              metadata=r.metadata, num_predicates=r.num_predicates,
                              num_classes=r.num_classes)
