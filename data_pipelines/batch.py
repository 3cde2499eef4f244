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
      detector_images, detector_image_sizes: the same images letterboxed at the detector's own
        canvas size Sd ([B, Sd, Sd, 3] uint8, [B, 2]) when it differs from S (a reused detector
        trained at another size, `InputConfig.detector_image_size`); None otherwise. Boxes stay
        in the S canvas: a detector box times S / Sd is in it (`detector_view`).
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
    detector_images: np.ndarray | None = None
    detector_image_sizes: np.ndarray | None = None

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    def detector_view(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(images, image_sizes, scale) the detector reads: its own canvas when the batch has
        one, else the model's; `scale` = model-canvas pixels per detector-canvas pixel."""
        return detector_view(self.images, self.image_sizes, self.detector_images,
                             self.detector_image_sizes)


def rescale(x, scale: float):
    """`x * scale`, or `x` itself when scale is 1 (no op added to a traced program)."""
    return x if scale == 1.0 else x * scale


def detector_view(images, image_sizes, detector_images=None, detector_image_sizes=None):
    """(images, image_sizes, scale) for a detector: `detector_images` when given (scale =
    S / Sd, static), else the model's images (scale 1)."""
    if detector_images is None:
        return images, image_sizes, 1.0
    return detector_images, detector_image_sizes, images.shape[1] / detector_images.shape[1]
