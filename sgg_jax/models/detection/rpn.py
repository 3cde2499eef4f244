"""Region proposal network: the shared head, fixed-shape proposal selection and its losses."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgg_jax.ops import boxes as box_ops
from sgg_jax.ops import nms

from sgg_jax.ops.conv import Conv


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 objectness (A logits) and 1x1 deltas (A * 4) per location.

    Shared by all feature levels. Outputs are flattened in (level, y, x, a) order, matching
    `anchors.multilevel_anchors`; delta channels are anchor-major (a * 4 + k), as torchvision.
    """

    num_anchors: int
    channels: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
        init = nn.initializers.normal(0.01)
        conv = Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), kernel_init=init,
                    dtype=self.dtype, name="conv")
        cls = Conv(self.num_anchors, (1, 1), kernel_init=init, dtype=self.dtype, name="cls_logits")
        box = Conv(self.num_anchors * 4, (1, 1), kernel_init=init, dtype=self.dtype,
                   name="bbox_pred")
        logits, deltas = [], []
        for f in features:
            t = nn.relu(conv(f))
            b = f.shape[0]
            logits.append(cls(t).reshape(b, -1).astype(jnp.float32))
            deltas.append(box(t).reshape(b, -1, 4).astype(jnp.float32))
        return jnp.concatenate(logits, axis=1), jnp.concatenate(deltas, axis=1)


def select_proposals(logits: jnp.ndarray, deltas: jnp.ndarray, anchors: jnp.ndarray,
                     level_sizes: Sequence[int], image_hw: jnp.ndarray, *, pre_nms_top_n: int,
                     post_nms_top_n: int, nms_thresh: float, min_size: float,
                     weights: tuple = (1.0, 1.0, 1.0, 1.0)
                     ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Proposals of one image: boxes [P, 4], objectness probabilities [P], valid mask [P].

    Per level the `pre_nms_top_n` best anchors are decoded, clipped to the image and those
    smaller than `min_size` dropped; NMS runs per level (a level never suppresses another, as
    torchvision), and the `post_nms_top_n` best survivors over all levels are returned.
    """
    idx, lvl, start = [], [], 0
    for level, n in enumerate(level_sizes):  # static loop over feature levels
        k = min(pre_nms_top_n, n)
        _, i = jax.lax.top_k(logits[start:start + n], k)
        idx.append(i + start)
        lvl.append(jnp.full((k,), level, jnp.int32))
        start += n
    idx = jnp.concatenate(idx)
    lvl = jnp.concatenate(lvl)
    scores = logits[idx]
    boxes = box_ops.clip_boxes(box_ops.decode_boxes(deltas[idx], anchors[idx], weights),
                               image_hw[..., 0], image_hw[..., 1])
    ok = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    ok = ok & jnp.isfinite(scores)
    keep, valid = nms.batched_nms(boxes, scores, lvl, nms_thresh, post_nms_top_n, valid=ok)
    return boxes[keep], jax.nn.sigmoid(scores[keep]) * valid, valid


def smooth_l1(x: jnp.ndarray, beta: float) -> jnp.ndarray:
    """Elementwise smooth-L1 (Huber / beta); beta = 0 gives L1."""
    ax = jnp.abs(x)
    if beta <= 0:
        return ax
    return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def rpn_losses(logits: jnp.ndarray, deltas: jnp.ndarray, fg: jnp.ndarray, bg: jnp.ndarray,
               target_deltas: jnp.ndarray, beta: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(objectness BCE, box loss), both averaged over the sampled anchors of the batch.

    logits [B, A], deltas / target_deltas [B, A, 4], fg / bg [B, A] sampled masks.
    """
    sampled = (fg | bg).astype(jnp.float32)
    n = jnp.maximum(jnp.sum(sampled), 1.0)
    bce = optax_sigmoid_bce(logits, fg.astype(jnp.float32))
    obj = jnp.sum(bce * sampled) / n
    box = jnp.sum(smooth_l1(deltas - target_deltas, beta).sum(-1) * fg) / n
    return obj, box


def optax_sigmoid_bce(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Numerically stable elementwise binary cross-entropy with logits."""
    import optax

    return optax.sigmoid_binary_cross_entropy(logits, labels)
