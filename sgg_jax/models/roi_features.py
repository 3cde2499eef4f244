"""RoI features for objects and for the union box of each (subject, object) pair.

Object boxes [B, O, 4] are flattened to R = B * O RoIs with `box_indices` (fixed shapes, padding
included), pooled with RoI-align (`pallas_kernels.roi_align`), flattened and passed through two
fully connected layers (the fc6/fc7 head of Faster R-CNN, sized by `fc_dim`). Pairs get the union
box of their two boxes, pooled the same way through a second fc6/fc7 head. Rows of padded boxes
or pairs are zeroed so that padding never leaks into real outputs.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sgg_jax.ops.roi import pool_rois


def union_boxes(boxes: jnp.ndarray, pairs: jnp.ndarray) -> jnp.ndarray:
    """Union box of each pair. boxes [B, O, 4] x1y1x2y2, pairs [B, M, 2] -> [B, M, 4]."""
    subj = jnp.take_along_axis(boxes, pairs[..., 0:1], axis=1)
    obj = jnp.take_along_axis(boxes, pairs[..., 1:2], axis=1)
    return jnp.concatenate([jnp.minimum(subj[..., :2], obj[..., :2]),
                            jnp.maximum(subj[..., 2:], obj[..., 2:])], axis=-1)


def pool_boxes(features: jnp.ndarray, boxes: jnp.ndarray, stride: int, roi_size: int,
               sampling_ratio: int) -> jnp.ndarray:
    """RoI-align every box of every image. features [B,H,W,C], boxes [B,N,4] -> [B,N,s,s,C]."""
    return pool_rois([features], [stride], boxes, roi_size, sampling_ratio)


def pair_masks(boxes: jnp.ndarray, pairs: jnp.ndarray, size: int) -> jnp.ndarray:
    """Where the subject and the object lie inside their union box: [B, M, size, size, 2].

    Channel 0 (1) is 1 at the grid cells of the union box whose centre falls inside the subject
    (object) box. This is the two-box spatial mask that Scene-Graph-Benchmark's union-feature
    extractor gives every relation model (IMP included): it states the pair's geometry (left of,
    above, inside, ...) directly instead of leaving the CNN to infer it from pixels.
    """
    subj = jnp.take_along_axis(boxes, pairs[..., 0:1], axis=1)
    obj = jnp.take_along_axis(boxes, pairs[..., 1:2], axis=1)
    union = union_boxes(boxes, pairs)
    t = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
    xs = union[..., 0:1] + t * (union[..., 2:3] - union[..., 0:1])  # [B, M, size]
    ys = union[..., 1:2] + t * (union[..., 3:4] - union[..., 1:2])

    def inside(box):
        in_x = (xs >= box[..., 0:1]) & (xs <= box[..., 2:3])
        in_y = (ys >= box[..., 1:2]) & (ys <= box[..., 3:4])
        return (in_y[..., :, None] & in_x[..., None, :]).astype(jnp.float32)

    return jnp.stack([inside(subj), inside(obj)], axis=-1)


class FCHead(nn.Module):
    """Flatten -> Dense -> ReLU -> Dropout -> Dense -> ReLU -> Dropout (fc6 / fc7)."""

    fc_dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = x.reshape(x.shape[:2] + (-1,)).astype(self.dtype)
        for name in ("fc6", "fc7"):
            x = nn.relu(nn.Dense(self.fc_dim, dtype=self.dtype, name=name)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return x


class RoIFeatures(nn.Module):
    """Object features [B, O, fc_dim] and (optionally) union-box features [B, M, fc_dim].

    Attributes:
      fc_dim: width of the fc6/fc7 layers (4096 in VGG16 detectors).
      roi_size: RoI-align output size (7).
      sampling_ratio: RoI-align samples per bin and axis (fixed, jit-friendly; 2).
      dropout: dropout rate after fc6 and fc7 in training.
      spatial_masks: append the two boxes' masks in the union frame (`pair_masks`) to the
        pooled union features before fc6, as Scene-Graph-Benchmark's union features do.
    """

    fc_dim: int = 256
    roi_size: int = 7
    sampling_ratio: int = 2
    dropout: float = 0.0
    dtype: Any = jnp.float32
    spatial_masks: bool = True

    @nn.compact
    def __call__(self, features: jnp.ndarray, stride: int, boxes: jnp.ndarray,
                 box_mask: jnp.ndarray, pairs: jnp.ndarray | None = None,
                 pair_mask: jnp.ndarray | None = None, train: bool = False
                 ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        pooled = pool_boxes(features, boxes, stride, self.roi_size, self.sampling_ratio)
        obj = FCHead(self.fc_dim, self.dropout, self.dtype, name="obj_fc")(pooled, train)
        obj = obj * box_mask[..., None].astype(obj.dtype)
        if pairs is None:
            return obj, None
        if pair_mask is None:
            raise ValueError("RoIFeatures: pair_mask is required when pairs are given")
        ubox = union_boxes(boxes, pairs)
        upooled = pool_boxes(features, ubox, stride, self.roi_size, self.sampling_ratio)
        if self.spatial_masks:
            masks = pair_masks(boxes, pairs, self.roi_size).astype(upooled.dtype)
            upooled = jnp.concatenate([upooled, masks], axis=-1)
        union = FCHead(self.fc_dim, self.dropout, self.dtype, name="union_fc")(upooled, train)
        union = union * pair_mask[..., None].astype(union.dtype)
        return obj, union


class RelationTrunk(nn.Module, kw_only=True):
    """The fields of the trunk every built-in relation model starts from
    (`registry.trunk_kwargs` fills them; `trunk_features` reads them, MSDN its own three RoI
    branches): a base class, keyword-only so that a model's own required fields may follow."""

    mode: str = "predcls"
    backbone_name: str = "small_resnet"
    fc_dim: int = 256
    roi_size: int = 7
    sampling_ratio: int = 2
    dropout: float = 0.0
    dtype: Any = jnp.float32


def trunk_features(model: RelationTrunk, inputs: Any, train: bool, pairs: bool = True
                   ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    """The backbone and RoI features the built-in relation models start from, created in the
    calling module's scope (call it inside its compact method), so their parameters are its
    `backbone` and `roi_features` groups. Returns (object features [B, O, F], union-box features [B, M, F], or None without
    `pairs`)."""
    from sgg_jax.models.backbone import build_backbone

    features, stride = build_backbone(model.backbone_name, model.dtype, name="backbone")(
        inputs.images, train)
    roi = RoIFeatures(model.fc_dim, model.roi_size, model.sampling_ratio, model.dropout,
                      model.dtype, name="roi_features")
    if not pairs:
        return roi(features, stride, inputs.boxes, inputs.box_mask, train=train)
    return roi(features, stride, inputs.boxes, inputs.box_mask, inputs.pairs, inputs.pair_mask,
               train=train)
