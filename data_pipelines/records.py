"""The canonical per-image scene graph record that every reader returns.

Readers for VG150 (h5), VG-MSDN json, VRD / VG-DR-Net json and the synthetic generator all meet
here: one `SceneGraphRecord` per image, in the original image's pixel coordinates, so the TFDS
builder and the evaluator see one format whatever the source.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class SceneGraphRecord:
    """Ground truth for one image.

    Attributes:
      image_id: dataset image id (VG image_id, or the synthetic index).
      image_path: path of the encoded image file on disk.
      width, height: original image size in pixels.
      boxes: [G, 4] float32, x1y1x2y2 in original-image pixels.
      labels: [G] int32 object classes, 1-based (0 is background and never stored).
      relations: [R, 3] int32 (subject index, object index, predicate), indices into `boxes`,
        predicate 1-based.
      region_boxes: [Q, 4] float32 x1y1x2y2 pixels of caption regions (MSDN); may be empty.
      region_phrases: Q phrases, each a list of word tokens.
      split: "train", "val" or "test".
    """

    image_id: int
    image_path: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    relations: np.ndarray
    region_boxes: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 4), np.float32))
    region_phrases: list[list[str]] = dataclasses.field(default_factory=list)
    split: str = "train"
