"""Errors and shared checks for the real-data readers (VG150, VG-MSDN, VRD / VG-DR-Net).

Every problem with a user's file surfaces as one `DataFormatError` that names the file, the field
and what was expected, so a broken download fails at load time with a readable message instead of
deep inside JAX or as a silently wrong batch.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np


class DataFormatError(ValueError):
    """A data file is missing, unreadable or does not follow its format.

    The message reads "FILE: image id N: field 'X': expected ..., got ..." (the image part is
    there when the problem concerns one image, the field part when it concerns one field).
    """

    def __init__(self, file: str | os.PathLike, field: str | None, expected: str,
                 got: Any = None, image_id: int | None = None):
        self.file = os.fspath(file)
        self.field = field
        self.expected = expected
        self.got = got
        self.image_id = None if image_id is None else int(image_id)
        where = self.file
        if self.image_id is not None:
            where += f": image id {self.image_id}"
        if field:
            where += f": field '{field}'"
        msg = f"{where}: expected {expected}"
        if got is not None:
            msg += f", got {got}"
        super().__init__(msg)

    def for_image(self, image_id: int) -> "DataFormatError":
        """This error with the image it concerns named (unchanged if it names one already)."""
        if self.image_id is not None:
            return self
        return DataFormatError(self.file, self.field, self.expected, self.got, image_id)


def require_file(path: str | os.PathLike, what: str) -> str:
    """Returns `path` as a string, raising DataFormatError if it is not an existing file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataFormatError(path, None, f"an existing {what} file", "no such file")
    return path


def load_json(path: str | os.PathLike, what: str) -> Any:
    """Reads a JSON file, turning a missing or malformed file into DataFormatError."""
    path = require_file(path, what)
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(path, None, f"valid JSON ({what})", f"parse error: {e}") from e


def as_box_array(values: Any, file: str, field: str) -> np.ndarray:
    """Converts a list of [x1, y1, x2, y2] lists to a float64 [N, 4] array or raises."""
    for i, box in enumerate(values):
        if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4:
            raise DataFormatError(file, field, "[x1, y1, x2, y2] boxes (4 numbers each)",
                                  f"box {i} = {box!r}"[:80])
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataFormatError(file, field, "numeric [x1, y1, x2, y2] boxes",
                              f"non-numeric values ({e})") from e
    if arr.size == 0:
        return np.zeros((0, 4), np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DataFormatError(file, field, "boxes of shape [N, 4]", f"shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataFormatError(file, field, "finite box coordinates", "NaN or inf")
    return arr


def check_and_clip_boxes(boxes: np.ndarray, width: Any, height: Any, file: str, field: str,
                         describe: Callable[[int], str] | None = None,
                         allow_outside: bool = False,
                         image_ids: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Validates x1y1x2y2 pixel boxes against their image and clips slight overhangs.

    `width` / `height` are scalars or per-box arrays. Raises DataFormatError for x2 <= x1,
    y2 <= y1 (an empty box has no IoU, no regression target) and for boxes lying entirely
    outside the image (those cannot be repaired). Boxes that
    only extend past the border are clipped to [0, width] x [0, height]: real VG150 boxes are
    clamped to the long side at 1024 scale, not to the image, so short-side overhangs exist in
    the real file (neural-motifs clips them too). `describe(i)` names box i in messages.
    allow_outside=True clips boxes lying entirely outside too (to a degenerate box on the
    border, as neural-motifs' training clip does) instead of raising. `image_ids` (per box)
    names the image of a bad box in the error.
    Returns the clipped boxes and how many boxes were clipped.
    """
    if boxes.shape[0] == 0:
        return boxes, 0
    name = describe or (lambda i: f"box {i}")
    image_of = (lambda i: None) if image_ids is None else (lambda i: int(image_ids[i]))  # noqa
    bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if np.any(bad):
        i = int(np.argmax(bad))
        raise DataFormatError(file, field, "boxes with x2 > x1 and y2 > y1 (a positive area)",
                              f"{name(i)} = {boxes[i].tolist()}", image_id=image_of(i))
    width = np.broadcast_to(np.asarray(width, boxes.dtype), boxes.shape[:1])
    height = np.broadcast_to(np.asarray(height, boxes.dtype), boxes.shape[:1])
    outside = ((boxes[:, 0] >= width) | (boxes[:, 1] >= height) | (boxes[:, 2] <= 0)
               | (boxes[:, 3] <= 0))
    if np.any(outside) and not allow_outside:
        i = int(np.argmax(outside))
        raise DataFormatError(file, field, "boxes inside their image",
                              f"{name(i)} = {boxes[i].tolist()} lies entirely outside the "
                              f"{width[i]:g}x{height[i]:g} image", image_id=image_of(i))
    limits = np.stack([width, height, width, height], axis=1)
    clipped = np.clip(boxes, 0, limits)
    n_clipped = int(np.sum(np.any(clipped != boxes, axis=1)))
    return clipped, n_clipped


def check_relations(relations: np.ndarray, num_boxes: int, num_predicates: int | None,
                    file: str, field: str) -> None:
    """Checks [R, 3] (subject, object, predicate) rows: indices in [0, num_boxes), predicates
    in [1, num_predicates]."""
    if relations.shape[0] == 0:
        return
    idx = relations[:, :2]
    if np.any(idx < 0) or np.any(idx >= num_boxes):
        bad = int(np.argmax(np.any((idx < 0) | (idx >= num_boxes), axis=1)))
        raise DataFormatError(file, field, f"subject/object indices in [0, {num_boxes})",
                              f"relation {bad} = {relations[bad].tolist()}")
    pred = relations[:, 2]
    hi = num_predicates if num_predicates is not None else np.iinfo(np.int64).max
    if np.any(pred < 1) or np.any(pred > hi):
        bad = int(np.argmax((pred < 1) | (pred > hi)))
        rng = f"[1, {num_predicates}]" if num_predicates is not None else ">= 1"
        raise DataFormatError(file, field, f"predicates in {rng}",
                              f"relation {bad} = {relations[bad].tolist()}")


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` via a temp file and os.replace, so no reader sees half a file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def atomic_write_json(path: str, obj: Any) -> None:
    """Writes `obj` as deterministic JSON (sorted keys, no spaces) atomically."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    atomic_write_bytes(path, text.encode("utf-8"))
