"""Jittable box operations and fixed-size NMS."""
from sgg_jax.ops.boxes import (box_area, clip_boxes, decode_boxes, encode_boxes, masked_top_k,
                               pairwise_iou, union_boxes)
from sgg_jax.ops.nms import batched_nms, nms

__all__ = ["box_area", "clip_boxes", "decode_boxes", "encode_boxes", "masked_top_k",
           "pairwise_iou", "union_boxes", "batched_nms", "nms"]
