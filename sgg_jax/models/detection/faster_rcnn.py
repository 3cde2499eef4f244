"""The Faster R-CNN Linen module: backbone (+FPN) -> RPN -> proposals -> RoI head.

    model = FasterRCNN(config)
    variables = model.init({"params": k0, "sampling": k1}, images, image_sizes)
    losses = model.apply(variables, images, image_sizes, gt_boxes, gt_labels, gt_mask,
                         train=True, rngs={"sampling": k2, "dropout": k3})   # DetectorLosses
    dets = model.apply(variables, images, image_sizes)                      # Detections

images: uint8 [B, S, S, 3] (the backbone normalises); image_sizes [B, 2] (h, w) of the real
image inside the padded canvas; gt_boxes [B, G, 4] x1y1x2y2 pixels, gt_labels [B, G] 1..C,
gt_mask [B, G] bool. All shapes are static; everything is jittable.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sgg_jax.ops.roi import pool_rois

from sgg_jax.models.backbone import build_backbone
from sgg_jax.models.detection.anchors import level_base_anchors, multilevel_anchors
from sgg_jax.models.detection.config import DetectorConfig
from sgg_jax.models.detection.fpn import ResNet50FPN
from sgg_jax.models.detection.roi_head import BoxHead, Detections, postprocess_image, roi_losses
from sgg_jax.models.detection.rpn import RPNHead, rpn_losses, select_proposals
from sgg_jax.models.detection.targets import rpn_targets, sample_proposals


@flax.struct.dataclass
class DetectorLosses:
    """Scalar losses (total = sum of the four) and a training metric."""

    total: jnp.ndarray
    rpn_objectness: jnp.ndarray
    rpn_box: jnp.ndarray
    classifier: jnp.ndarray
    box: jnp.ndarray
    roi_accuracy: jnp.ndarray


class FasterRCNN(nn.Module):
    """Two-stage detector configured by a `DetectorConfig` (see docs/detector.md)."""

    config: DetectorConfig
    dtype: Any = jnp.float32

    def _backbone(self, images: jnp.ndarray, train: bool):
        cfg = self.config
        kwargs = dict(cfg.backbone_kwargs)
        if cfg.backbone == "resnet50_fpn":
            feats, strides = ResNet50FPN(dtype=self.dtype, name="backbone", **kwargs)(images, train)
            return list(feats), list(strides)
        feat, stride = build_backbone(cfg.backbone, self.dtype, name="backbone", **kwargs)(images, train)
        return [feat], [stride]

    @nn.compact
    def __call__(self, images: jnp.ndarray, image_sizes: jnp.ndarray,
                 gt_boxes: jnp.ndarray | None = None, gt_labels: jnp.ndarray | None = None,
                 gt_mask: jnp.ndarray | None = None, train: bool = False,
                 proposals_only: bool = False):
        """Training: `DetectorLosses`; inference: `Detections`; `proposals_only`: the RPN's
        proposals (boxes [B, N, 4], valid [B, N]; N = the test/train post-NMS top-n), e.g. as
        training RoIs for a relation model's box head (MSDN)."""
        cfg = self.config
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"FasterRCNN images: expected [B, H, W, 3], got shape {images.shape}")
        if train and (gt_boxes is None or gt_labels is None or gt_mask is None):
            raise ValueError("FasterRCNN(train=True): gt_boxes, gt_labels and gt_mask are required")
        b = images.shape[0]
        image_hw = jnp.asarray(image_sizes, jnp.float32).reshape(b, 2)
        feats, strides = self._backbone(images, train)

        bases = level_base_anchors(cfg.anchor_sizes, cfg.aspect_ratios, cfg.anchor_shapes)
        anchors_np, level_sizes = multilevel_anchors(bases, [f.shape[1:3] for f in feats], strides)
        anchors = jnp.asarray(anchors_np)
        logits, deltas = RPNHead(cfg.anchors_per_location, cfg.rpn_channels, self.dtype,
                                 name="rpn")(feats)

        roi_feats = feats[:4] if len(feats) == 5 else feats
        roi_strides = strides[:4] if len(feats) == 5 else strides
        head = BoxHead(cfg.num_classes, cfg.fc_dim, cfg.dropout, self.dtype, name="roi_head")
        if self.is_initializing():
            # Parameters only: the box head needs just the pooled shape, so `init` skips the
            # proposal / NMS / sampling graph (much less to compile). init's output is None.
            c = roi_feats[0].shape[-1]
            head(jnp.zeros((b, 1, cfg.roi_size, cfg.roi_size, c), self.dtype), False)
            return None

        pre = cfg.rpn_pre_nms_top_n_train if train else cfg.rpn_pre_nms_top_n_test
        post = cfg.rpn_post_nms_top_n_train if train else cfg.rpn_post_nms_top_n_test
        select = lambda l, d, hw: select_proposals(
            l, d, anchors, level_sizes, hw, pre_nms_top_n=pre, post_nms_top_n=post,
            nms_thresh=cfg.rpn_nms_thresh, min_size=cfg.rpn_min_size, weights=cfg.rpn_box_weights)
        proposals, _, prop_valid = jax.vmap(select)(jax.lax.stop_gradient(logits),
                                                    jax.lax.stop_gradient(deltas), image_hw)
        if proposals_only:
            return proposals, prop_valid

        if train:
            key = self.make_rng("sampling")
            k_rpn, k_roi = jax.random.split(key)
            gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
            gt_mask = jnp.asarray(gt_mask, bool)
            gt_labels = jnp.asarray(gt_labels, jnp.int32)
            at = jax.vmap(lambda g, m, hw, k: rpn_targets(
                anchors, g, m, hw, k, fg_thresh=cfg.rpn_fg_iou_thresh,
                bg_thresh=cfg.rpn_bg_iou_thresh, batch_size=cfg.rpn_batch_size_per_image,
                positive_fraction=cfg.rpn_positive_fraction, allowed_border=cfg.rpn_allowed_border,
                weights=cfg.rpn_box_weights))(gt_boxes, gt_mask, image_hw, jax.random.split(k_rpn, b))
            obj_loss, rpn_box_loss = rpn_losses(logits, deltas, at.fg, at.bg, at.deltas,
                                                cfg.smooth_l1_beta)
            rt = jax.vmap(lambda p, pm, g, gl, m, k: sample_proposals(
                p, pm, g, gl, m, k, batch_size=cfg.roi_batch_size_per_image,
                positive_fraction=cfg.roi_positive_fraction, fg_thresh=cfg.roi_fg_iou_thresh,
                bg_thresh_hi=cfg.roi_bg_iou_thresh_hi, bg_thresh_lo=cfg.roi_bg_iou_thresh_lo,
                weights=cfg.box_weights))(proposals, prop_valid, gt_boxes, gt_labels, gt_mask,
                                          jax.random.split(k_roi, b))
            pooled = pool_rois(roi_feats, roi_strides, rt.boxes, cfg.roi_size, cfg.sampling_ratio)
            cls_logits, box_deltas, _ = head(pooled, train)
            cls_loss, box_loss, acc = roi_losses(cls_logits, box_deltas, rt.labels, rt.fg, rt.valid,
                                                 rt.deltas, cfg.smooth_l1_beta)
            total = obj_loss + rpn_box_loss + cls_loss + box_loss
            return DetectorLosses(total=total, rpn_objectness=obj_loss, rpn_box=rpn_box_loss,
                                  classifier=cls_loss, box=box_loss, roi_accuracy=acc)

        pooled = pool_rois(roi_feats, roi_strides, proposals, cfg.roi_size, cfg.sampling_ratio)
        cls_logits, box_deltas, fc7 = head(pooled, train)
        post_fn = lambda l, d, r, v, hw: postprocess_image(
            l, d, r, v, hw, score_thresh=cfg.score_thresh, nms_thresh=cfg.box_nms_thresh,
            num_candidates=cfg.box_nms_candidates, detections=cfg.detections_per_image,
            weights=cfg.box_weights)
        boxes, labels, scores, dists, valid, roi = jax.vmap(post_fn)(
            cls_logits, box_deltas, proposals, prop_valid, image_hw)
        feats_out = jnp.take_along_axis(fc7, roi[..., None], axis=1) * valid[..., None]
        return Detections(boxes=boxes, labels=labels, scores=scores, class_dists=dists,
                          valid=valid, roi_index=roi, features=feats_out.astype(jnp.float32))


def init_detector(config: DetectorConfig, key: jax.Array, image_size: int = 64,
                  dtype: Any = jnp.float32) -> tuple[FasterRCNN, Any]:
    """The module and its variables, initialised on a zero batch of one `image_size` image."""
    model = FasterRCNN(config, dtype)
    images = jnp.zeros((1, image_size, image_size, 3), jnp.uint8)
    sizes = jnp.full((1, 2), image_size, jnp.float32)
    k1, k2 = jax.random.split(key)
    variables = model.init({"params": k1, "sampling": k2}, images, sizes)
    return model, variables
