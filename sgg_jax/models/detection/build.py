"""The detector of a run from its config: `config.model.detector` -> `DetectorConfig` -> FasterRCNN.

The detector's parameters are the top-level group "detector" of a run's params
(`registry.DETECTOR_GROUP`): the `detector` stage trains it, relation stages keep it frozen,
SGDet runs it.
"""
from __future__ import annotations

from typing import Any

from sgg_jax.models import registry

_DETECTOR_FIELDS = {  # config.model.detector field -> DetectorConfig field
    "backbone": "backbone", "aspect_ratios": "aspect_ratios", "rpn_channels": "rpn_channels",
    "rpn_pre_nms_top_n_train": "rpn_pre_nms_top_n_train",
    "rpn_pre_nms_top_n_test": "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_train": "rpn_post_nms_top_n_train",
    "rpn_post_nms_top_n_test": "rpn_post_nms_top_n_test",
    "rpn_batch_size_per_image": "rpn_batch_size_per_image",
    "roi_batch_size_per_image": "roi_batch_size_per_image", "fc_dim": "fc_dim",
    "score_thresh": "score_thresh", "nms": "box_nms_thresh",
    "box_nms_candidates": "box_nms_candidates", "detections_per_image": "detections_per_image",
    "dropout": "dropout",
}
# config.model.detector fields that are not DetectorConfig's: where its weights come from (the
# files read by sgg_jax/training/pretrained.py, a trained detector's checkpoint).
DETECTOR_WEIGHT_FIELDS = ("weights", "backbone_weights", "checkpoint")
# The fields that shape the detector's parameters (a reused checkpoint must agree on them).
DETECTOR_ARCHITECTURE_FIELDS = ("backbone", "backbone_widths", "backbone_stride", "anchor_sizes",
                                "aspect_ratios", "rpn_channels", "fc_dim")


def detector_config(detector_cfg: Any, num_classes: int):
    """`config.model.detector` (a ConfigDict / mapping) -> `DetectorConfig` for C classes.

    `anchor_sizes` is one flat list: all sizes share the single stride-16 level of
    small_resnet / vgg16 / resnet50, and resnet50_fpn takes one size per level (5).
    `backbone_widths` (small_resnet only; empty = default) and `backbone_stride` (small_resnet:
    16, or 8 for small objects) become `backbone_kwargs`.
    `DETECTOR_WEIGHT_FIELDS` are accepted and ignored (weight files, not architecture).
    Unknown fields are an error naming them.
    """
    from sgg_jax.models.detection import DetectorConfig

    items = dict(detector_cfg.items()) if hasattr(detector_cfg, "items") else dict(detector_cfg)
    known = set(_DETECTOR_FIELDS) | {"anchor_sizes", "backbone_widths", "backbone_stride",
                                     *DETECTOR_WEIGHT_FIELDS}
    unknown = sorted(set(items) - known)
    if unknown:
        raise ValueError(f"config.model.detector: unknown fields {unknown}; expected some of "
                         f"{sorted(known)}")
    kwargs = {dst: items[src] for src, dst in _DETECTOR_FIELDS.items() if src in items}
    sizes = tuple(float(s) for s in items.get("anchor_sizes", (32.0, 64.0, 128.0, 256.0)))
    backbone = kwargs.get("backbone", "small_resnet")
    kwargs["anchor_sizes"] = tuple((s,) for s in sizes) if backbone == "resnet50_fpn" else (sizes,)
    widths = tuple(int(w) for w in items.get("backbone_widths", ()) or ())
    stride = int(items.get("backbone_stride", 16) or 16)
    extra = ((("widths", widths),) if widths else ()) + ((("stride", stride),)
                                                         if stride != 16 else ())
    if extra:
        if backbone != "small_resnet":
            raise ValueError("config.model.detector.backbone_widths / backbone_stride: only for "
                             f"backbone small_resnet, got backbone {backbone!r}")
        kwargs["backbone_kwargs"] = extra
    kwargs["aspect_ratios"] = tuple(float(r) for r in kwargs.get("aspect_ratios", (0.5, 1.0, 2.0)))
    return DetectorConfig.from_mapping(dict(num_classes=int(num_classes), **kwargs))


def build_detector(model_config: Any, *, num_classes: int):
    """The FasterRCNN module of `model_config.detector` (compute dtype = `model_config.dtype`)."""
    from sgg_jax.models.detection import FasterRCNN

    return FasterRCNN(detector_config(registry.field(model_config, "detector"), num_classes),
                      dtype=registry.dtype_of(model_config))
