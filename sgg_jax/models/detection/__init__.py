"""Faster R-CNN in Flax Linen: anchors, RPN, proposal / RoI targets, RoI head, FPN, the model.

Public API:
  DetectorConfig, vgg16_config, resnet50_fpn_config, tiny_config   (config)
  FasterRCNN, init_detector, DetectorLosses, Detections            (model and outputs)
  kmeans_anchors                                                   (F-Net k-means anchors)
See docs/detector.md.
"""
from sgg_jax.models.detection.anchors import kmeans_anchors
from sgg_jax.models.detection.config import (DetectorConfig, resnet50_fpn_config, tiny_config,
                                             vgg16_config)
from sgg_jax.models.detection.faster_rcnn import DetectorLosses, FasterRCNN, init_detector
from sgg_jax.models.detection.roi_head import Detections

__all__ = ["DetectorConfig", "vgg16_config", "resnet50_fpn_config", "tiny_config", "FasterRCNN",
           "init_detector", "DetectorLosses", "Detections", "kmeans_anchors"]
