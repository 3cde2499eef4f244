"""The batch contract between the input pipeline and every model.

All arrays have fixed shapes (configured maxima) so that the training step compiles once; padding
is marked by masks. Coordinates are in the resized image's pixels (after `scale`), x1y1x2y2.
"""
from __future__ import annotations

import flax.struct
import numpy as np


@flax.struct.dataclass
class Batch:
    """A batch of B images, padded.

    Attributes:
      images: [B, S, S, 3] uint8, the image resized so its long side is S (or the configured
        size) and zero-padded at the bottom/right to S x S.
      image_sizes: [B, 2] int32 (height, width) of the resized content inside the padded canvas.
      scales: [B] float32, resized / original size (boxes_resized = boxes_original * scale).
      image_ids: [B] int32 dataset image ids (-1 for padding images).
      boxes: [B, O, 4] float32 ground-truth boxes x1y1x2y2 in resized pixels.
      labels: [B, O] int32 object classes 1..C; 0 where padded.
      box_mask: [B, O] bool, True for real objects.
      relations: [B, R, 3] int32 (subject index, object index, predicate 1..P); 0 where padded.
      rel_mask: [B, R] bool, True for real relations.
      region_boxes: [B, Q, 4] float32 caption-region boxes in resized pixels.
      region_tokens: [B, Q, L] int32 word ids (0 = pad, 1 = <start>, 2 = <end>).
      region_mask: [B, Q] bool.
    """

    images: np.ndarray
    image_sizes: np.ndarray
    scales: np.ndarray
    image_ids: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    box_mask: np.ndarray
    relations: np.ndarray
    rel_mask: np.ndarray
    region_boxes: np.ndarray
    region_tokens: np.ndarray
    region_mask: np.ndarray

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])
