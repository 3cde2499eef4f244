"""Detector configuration (one frozen dataclass, documented field by field in docs/detector.md)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

BACKBONES = ("small_resnet", "vgg16", "resnet50", "resnet50_fpn")


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Every knob of the Faster R-CNN detector; defaults follow torchvision / neural-motifs.

    Anchors: `anchor_sizes[l]` (pixels, square root of the area) times `aspect_ratios` (h / w) at
    level l; or, when `anchor_shapes` is given (e.g. from `kmeans_anchors`), explicit (w, h) pairs
    per level. Single-level backbones have one level at stride 16; resnet50_fpn has P2..P6.
    """

    num_classes: int = 150                 # C object classes; logits have C + 1 (0 = background)
    backbone: str = "small_resnet"          # one of BACKBONES
    backbone_kwargs: tuple = ()             # extra (key, value) pairs for the backbone module
    # anchors
    anchor_sizes: tuple = ((32.0, 64.0, 128.0, 256.0),)
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    anchor_shapes: tuple | None = None      # per level: tuple of (w, h); overrides sizes x ratios
    # RPN
    rpn_channels: int = 256
    rpn_pre_nms_top_n_train: int = 2000     # per level
    rpn_pre_nms_top_n_test: int = 1000      # per level
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 1e-3
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_allowed_border: float = -1.0        # < 0: keep anchors crossing the image border
    rpn_box_weights: tuple = (1.0, 1.0, 1.0, 1.0)
    # RoI head
    roi_size: int = 7
    sampling_ratio: int = 2
    fc_dim: int = 1024
    roi_batch_size_per_image: int = 512
    roi_positive_fraction: float = 0.25
    roi_fg_iou_thresh: float = 0.5
    roi_bg_iou_thresh_hi: float = 0.5
    roi_bg_iou_thresh_lo: float = 0.0
    box_weights: tuple = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 1.0 / 9.0
    # post-processing
    score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_nms_candidates: int = 1000          # (roi, class) pairs kept by score before class NMS
    detections_per_image: int = 64          # neural-motifs 64, SGB 80
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"detector.backbone: expected one of {BACKBONES}, got {self.backbone!r}")
        if self.num_classes < 1:
            raise ValueError(f"detector.num_classes: expected >= 1, got {self.num_classes}")
        if self.anchor_shapes is not None and len(self.anchor_shapes) != len(self.anchor_sizes):
            raise ValueError("detector.anchor_shapes: expected one tuple of (w, h) per level "
                             f"({len(self.anchor_sizes)} levels), got {len(self.anchor_shapes)}")
        if self.backbone == "resnet50_fpn" and len(self.anchor_sizes) != 5:
            raise ValueError("detector.anchor_sizes: resnet50_fpn needs 5 levels (P2..P6), got "
                             f"{len(self.anchor_sizes)}")
        if self.backbone != "resnet50_fpn" and len(self.anchor_sizes) != 1:
            raise ValueError(f"detector.anchor_sizes: backbone {self.backbone!r} has one level, got "
                             f"{len(self.anchor_sizes)}")
        for name in ("rpn_positive_fraction", "roi_positive_fraction"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"detector.{name}: expected in (0, 1], got {getattr(self, name)}")

    @property
    def num_levels(self) -> int:
        return len(self.anchor_sizes)

    @property
    def anchors_per_location(self) -> int:
        if self.anchor_shapes is not None:
            counts = {len(s) for s in self.anchor_shapes}
        else:
            counts = {len(s) * len(self.aspect_ratios) for s in self.anchor_sizes}
        if len(counts) != 1:
            raise ValueError("detector anchors: every level needs the same number of anchors per "
                             f"location (shared RPN head), got {sorted(counts)}")
        return counts.pop()

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> "DetectorConfig":
        """From a dict / ConfigDict; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        items = dict(m.items()) if hasattr(m, "items") else dict(m)
        unknown = sorted(set(items) - names)
        if unknown:
            raise ValueError(f"detector config: unknown fields {unknown}; expected some of {sorted(names)}")
        fixed = {k: _tupled(v) for k, v in items.items()}
        return cls(**fixed)


def _tupled(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_tupled(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted(v.items()))
    return v


def vgg16_config(num_classes: int = 150, **overrides: Any) -> DetectorConfig:
    """neural-motifs-style VGG16 detector: stride 16, 4096-d fc head, 64 detections per image."""
    base = dict(num_classes=num_classes, backbone="vgg16", anchor_sizes=((32.0, 64.0, 128.0, 256.0, 512.0),),
                aspect_ratios=(0.5, 1.0, 2.0), rpn_channels=512, fc_dim=4096,
                rpn_pre_nms_top_n_train=12000, rpn_pre_nms_top_n_test=6000,
                rpn_post_nms_top_n_train=2000, rpn_post_nms_top_n_test=1000,
                detections_per_image=64)
    base.update(overrides)
    return DetectorConfig(**base)


def resnet50_fpn_config(num_classes: int = 150, **overrides: Any) -> DetectorConfig:
    """torchvision `fasterrcnn_resnet50_fpn` settings (P2..P6, one size per level, 3 ratios)."""
    base = dict(num_classes=num_classes, backbone="resnet50_fpn",
                anchor_sizes=((32.0,), (64.0,), (128.0,), (256.0,), (512.0,)),
                aspect_ratios=(0.5, 1.0, 2.0), rpn_channels=256, fc_dim=1024,
                detections_per_image=80)
    base.update(overrides)
    return DetectorConfig(**base)


def tiny_config(num_classes: int = 5, **overrides: Any) -> DetectorConfig:
    """A CPU-test-sized detector (small ResNet, few anchors and samples)."""
    base = dict(num_classes=num_classes, backbone="small_resnet",
                backbone_kwargs=(("widths", (8, 16, 16, 32)),),
                anchor_sizes=((16.0, 32.0),), aspect_ratios=(0.5, 1.0, 2.0), rpn_channels=32,
                rpn_pre_nms_top_n_train=96, rpn_pre_nms_top_n_test=96,
                rpn_post_nms_top_n_train=48, rpn_post_nms_top_n_test=48,
                rpn_batch_size_per_image=64, roi_batch_size_per_image=32, fc_dim=64,
                box_nms_candidates=96, detections_per_image=10, sampling_ratio=2)
    base.update(overrides)
    return DetectorConfig(**base)
