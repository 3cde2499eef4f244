"""RoI head: pooled features -> fc6 / fc7 -> class logits (C + 1) and class-specific deltas;
its losses, and inference post-processing to a fixed number of detections per image."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sgg_jax.ops import boxes as box_ops
from sgg_jax.ops import nms
import optax

from sgg_jax.models.detection.rpn import smooth_l1


class BoxHead(nn.Module):
    """Flatten (H, W, C order) -> fc6 -> ReLU -> fc7 -> ReLU -> cls_score, bbox_pred.

    bbox_pred has (C + 1) * 4 outputs, class-major (torchvision's FastRCNNPredictor layout).
    Returns (class logits [B, S, C+1], deltas [B, S, C+1, 4], fc7 features [B, S, fc_dim]).
    """

    num_classes: int
    fc_dim: int = 1024
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pooled: jnp.ndarray, train: bool = False):
        b, s = pooled.shape[:2]
        x = pooled.reshape(b, s, -1).astype(self.dtype)
        for name in ("fc6", "fc7"):
            x = nn.relu(nn.Dense(self.fc_dim, dtype=self.dtype, name=name)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        n = self.num_classes + 1
        logits = nn.Dense(n, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                          name="cls_score")(x).astype(jnp.float32)
        deltas = nn.Dense(n * 4, kernel_init=nn.initializers.normal(0.001), dtype=self.dtype,
                          name="bbox_pred")(x).astype(jnp.float32)
        return logits, deltas.reshape(b, s, n, 4), x


def roi_losses(logits: jnp.ndarray, deltas: jnp.ndarray, labels: jnp.ndarray, fg: jnp.ndarray,
               valid: jnp.ndarray, target_deltas: jnp.ndarray, beta: float
               ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(classification CE, box loss, accuracy) over the valid sampled RoIs of the batch.

    The box loss uses the deltas of the ground-truth class only, on fg RoIs, divided by the
    number of sampled RoIs (torchvision's normalisation).
    """
    v = valid.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(v), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    cls = jnp.sum(ce * v) / n
    picked = jnp.take_along_axis(deltas, labels[..., None, None], axis=-2)[..., 0, :]
    box = jnp.sum(smooth_l1(picked - target_deltas, beta).sum(-1) * fg) / n
    acc = jnp.sum((jnp.argmax(logits, -1) == labels) * v) / n
    return cls, box, acc


@flax.struct.dataclass
class Detections:
    """Fixed-size detections per image (D = detections_per_image); padded rows have valid False.

    boxes [B, D, 4] x1y1x2y2 image pixels; labels [B, D] int32 1..C; scores [B, D];
    class_dists [B, D, C+1] softmax of the RoI each detection came from (for SGCls-style
    relation models); valid [B, D]; roi_index [B, D] index of that RoI among the proposals;
    features [B, D, fc_dim] its fc7 feature.
    """

    boxes: jnp.ndarray
    labels: jnp.ndarray
    scores: jnp.ndarray
    class_dists: jnp.ndarray
    valid: jnp.ndarray
    roi_index: jnp.ndarray
    features: jnp.ndarray


def postprocess_image(logits: jnp.ndarray, deltas: jnp.ndarray, rois: jnp.ndarray,
                      roi_valid: jnp.ndarray, image_hw: jnp.ndarray, *, score_thresh: float,
                      nms_thresh: float, num_candidates: int, detections: int,
                      weights: tuple = (10.0, 10.0, 5.0, 5.0), min_size: float = 1e-2):
    """One image: per-class decode and clip, score threshold, class-wise NMS, top detections.

    logits [S, C+1], deltas [S, C+1, 4], rois [S, 4], roi_valid [S]. Returns boxes [D, 4],
    labels [D], scores [D], class_dists [D, C+1], valid [D], roi_index [D].
    """
    logits, deltas = jnp.asarray(logits, jnp.float32), jnp.asarray(deltas, jnp.float32)
    rois, roi_valid = jnp.asarray(rois, jnp.float32), jnp.asarray(roi_valid, bool)
    s, n = logits.shape
    c = n - 1
    probs = jax.nn.softmax(logits, axis=-1)
    ref = jnp.broadcast_to(rois[:, None, :], (s, c, 4)).reshape(-1, 4)
    boxes = box_ops.clip_boxes(box_ops.decode_boxes(deltas[:, 1:].reshape(-1, 4), ref, weights),
                               image_hw[..., 0], image_hw[..., 1])
    scores = probs[:, 1:].reshape(-1)
    ok = (jnp.repeat(roi_valid, c) & (scores > score_thresh)
          & ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size))
    k = min(num_candidates, s * c)
    cand_scores, cand = jax.lax.top_k(jnp.where(ok, scores, -1.0), k)
    cand_ok = ok[cand]
    cand_cls = (cand % c).astype(jnp.int32)
    cand_boxes = boxes[cand]
    keep, valid = nms.batched_nms(cand_boxes, cand_scores, cand_cls, nms_thresh, detections,
                                  valid=cand_ok)
    roi = (cand[keep] // c).astype(jnp.int32)
    vf = valid.astype(jnp.float32)
    return (cand_boxes[keep] * vf[:, None], jnp.where(valid, cand_cls[keep] + 1, 0),
            cand_scores[keep] * vf, probs[roi] * vf[:, None], valid, roi)
