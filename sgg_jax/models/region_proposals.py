"""MSDN's second RPN: caption-region proposals on the frozen detector's backbone features.

MSDN (Li et al. 2017) proposes object boxes and caption-region boxes with two RPNs on one trunk.
Here the object RPN is the detector's own (sgg_jax/models/detection); the region RPN is this
module, a separate head (`RPNHead` with its own anchors, parameter group `region_rpn`) trained by
the `regions` stage on the dataset's caption-region boxes while the detector stays frozen. It
reads the detector's backbone features, so the stage costs one cheap forward pass of that trunk
per step and SGDet needs no second backbone (in one jitted step XLA shares the trunk with the
detector's own forward pass: same computation on the same inputs).

    trunk = DetectorTrunk(detector.config, detector.dtype)        # the detector's backbone only
    rpn = RegionRPN(region_rpn_config(config.model.region_rpn))
    feats = trunk.apply({"params": params["detector"], **state}, images)
    losses = rpn.apply({"params": params["region_rpn"]}, feats, image_sizes, gt_boxes, gt_mask,
                       train=True, rngs={"sampling": key})        # RegionRPNLosses
    boxes, scores, valid = rpn.apply({"params": params["region_rpn"]}, feats, image_sizes)

Test-time selection is fixed-shape (detection.rpn.select_proposals): the `pre_nms_top_n` best
anchors, decoded and clipped, NMS at `nms`, the `num_proposals` best survivors, real first.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from data_pipelines.batch import rescale
from sgg_jax.models.captioning import PAD
from sgg_jax.models.detection import FasterRCNN
from sgg_jax.models.detection.anchors import level_base_anchors, multilevel_anchors
from sgg_jax.models.detection.rpn import RPNHead, rpn_losses, select_proposals
from sgg_jax.models.detection.targets import rpn_targets, sample_proposals
from sgg_jax.models.registry import DETECTOR_GROUP

# The region RPN's parameters: a top-level group of the run's params, trained by the `regions`
# stage, run in SGDet for the caption regions.
REGION_RPN_GROUP = "region_rpn"
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # box coder of MSDN's object and region heads (Fast R-CNN's)


@dataclasses.dataclass(frozen=True)
class RegionRPNConfig:
    """The region RPN's knobs (config.model.region_rpn; docs/models.md, MSDN)."""

    anchor_sizes: tuple = (24.0, 48.0, 96.0)   # sqrt(area) in canvas pixels, one level
    aspect_ratios: tuple = (0.5, 1.0, 2.0)     # h / w
    channels: int = 64                        # the head's 3x3 conv width
    pre_nms_top_n: int = 300                  # anchors decoded before NMS (test)
    num_proposals: int = 16                   # Q: region boxes MSDN gets in SGDet
    nms: float = 0.7                          # IoU of proposal NMS
    min_size: float = 2.0                     # smaller proposals are dropped (pixels)
    fg_iou: float = 0.7                       # anchor labels for training (Faster R-CNN's)
    bg_iou: float = 0.3
    batch_size_per_image: int = 128           # sampled anchors per image
    positive_fraction: float = 0.5
    smooth_l1_beta: float = 1.0 / 9.0
    # Training MSDN's region branch (`make_msdn_roi_sampler`): the frozen region RPN proposes
    # `train_proposals` boxes (+ the caption regions), of which `train_rois` are sampled: at most
    # `train_fg_fraction` fg (IoU >= train_fg_iou with a caption region), the rest bg.
    train_proposals: int = 48
    train_rois: int = 16
    train_fg_fraction: float = 0.5
    train_fg_iou: float = 0.5

    def __post_init__(self) -> None:
        if not self.anchor_sizes or any(float(s) <= 0 for s in self.anchor_sizes):
            raise ValueError(f"config.model.region_rpn.anchor_sizes: expected positive sizes, got "
                             f"{self.anchor_sizes}")
        for name in ("num_proposals", "train_proposals"):
            if not 1 <= getattr(self, name) <= self.pre_nms_top_n:
                raise ValueError(f"config.model.region_rpn: expected 1 <= {name} <= "
                                 f"pre_nms_top_n, got {getattr(self, name)}, {self.pre_nms_top_n}")
        if self.train_rois < 1 or not 0.0 < self.train_fg_fraction <= 1.0:
            raise ValueError("config.model.region_rpn: expected train_rois >= 1 and 0 < "
                             f"train_fg_fraction <= 1, got {self.train_rois}, "
                             f"{self.train_fg_fraction}")

    @property
    def anchors_per_location(self) -> int:
        return len(self.anchor_sizes) * len(self.aspect_ratios)


def region_rpn_config(cfg: Mapping[str, Any]) -> RegionRPNConfig:
    """config.model.region_rpn (ConfigDict / mapping) -> RegionRPNConfig; unknown fields are an
    error naming them."""
    items = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
    names = {f.name for f in dataclasses.fields(RegionRPNConfig)}
    unknown = sorted(set(items) - names)
    if unknown:
        raise ValueError(f"config.model.region_rpn: unknown fields {unknown}; expected some of "
                         f"{sorted(names)}")
    fix = lambda v: tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else v
    return RegionRPNConfig(**{k: fix(v) for k, v in items.items()})


class DetectorTrunk(FasterRCNN):
    """The detector's backbone alone (same parameter names as `FasterRCNN`, so it applies to
    the run's params["detector"]): images -> (feature maps, strides), inference mode."""

    @nn.compact
    def __call__(self, images: jnp.ndarray):
        return self._backbone(images, False)


@flax.struct.dataclass
class RegionRPNLosses:
    total: jnp.ndarray       # objectness + box
    objectness: jnp.ndarray
    box: jnp.ndarray


class RegionRPN(nn.Module):
    """The region proposal head on given feature maps (see the module docstring)."""

    config: RegionRPNConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, image_sizes: jnp.ndarray, gt_boxes: jnp.ndarray | None = None,
                 gt_mask: jnp.ndarray | None = None, train: bool = False,
                 num_proposals: int | None = None):
        """train: `RegionRPNLosses`; else (boxes [B,N,4], scores [B,N], valid [B,N]) with
        N = `num_proposals` (default config.num_proposals), real proposals first."""
        cfg = self.config
        feats, strides = features
        feats, strides = list(feats), list(strides)
        b = feats[0].shape[0]
        image_hw = jnp.asarray(image_sizes, jnp.float32).reshape(b, 2)
        # One anchor set on every level the trunk gives (a single level for the non-FPN trunks).
        bases = level_base_anchors([cfg.anchor_sizes] * len(feats), cfg.aspect_ratios)
        anchors_np, level_sizes = multilevel_anchors(bases, [f.shape[1:3] for f in feats], strides)
        anchors = jnp.asarray(anchors_np)
        logits, deltas = RPNHead(cfg.anchors_per_location, cfg.channels, self.dtype,
                                 name="rpn")(feats)
        if train:
            if gt_boxes is None or gt_mask is None:
                raise ValueError("RegionRPN(train=True): gt_boxes and gt_mask (the caption "
                                 "regions) are required")
            keys = jax.random.split(self.make_rng("sampling"), b)
            at = jax.vmap(lambda g, m, hw, k: rpn_targets(
                anchors, g, m, hw, k, fg_thresh=cfg.fg_iou, bg_thresh=cfg.bg_iou,
                batch_size=cfg.batch_size_per_image, positive_fraction=cfg.positive_fraction))(
                jnp.asarray(gt_boxes, jnp.float32), jnp.asarray(gt_mask, bool), image_hw, keys)
            obj, box = rpn_losses(logits, deltas, at.fg, at.bg, at.deltas, cfg.smooth_l1_beta)
            return RegionRPNLosses(total=obj + box, objectness=obj, box=box)
        select = lambda l, d, hw: select_proposals(
            l, d, anchors, level_sizes, hw, pre_nms_top_n=cfg.pre_nms_top_n,
            post_nms_top_n=num_proposals or cfg.num_proposals, nms_thresh=cfg.nms,
            min_size=cfg.min_size)
        boxes, scores, valid = jax.vmap(select)(logits, deltas, image_hw)
        order = jnp.argsort(~valid, axis=-1, stable=True)  # real proposals first
        take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)),
                                             axis=1)
        valid = take(valid)
        return (jnp.where(valid[..., None], take(boxes), 0.0),
                jnp.where(valid, take(scores), 0.0), valid)


def make_region_proposal_fn(detector: FasterRCNN, config: RegionRPNConfig, *,
                            detector_state: dict | None = None):
    """(params, images, image_sizes) -> (boxes [B,Q,4] canvas pixels, scores [B,Q], valid [B,Q])
    from a run's params["detector"] (trunk) and params["region_rpn"] (head); jittable."""
    trunk = DetectorTrunk(detector.config, detector.dtype)
    rpn = RegionRPN(config, detector.dtype)
    detector_state = dict(detector_state or {})

    def propose(params: Any, images: jnp.ndarray, image_sizes: jnp.ndarray):
        if REGION_RPN_GROUP not in params:
            raise ValueError(f"region proposals: the run's params have no '{REGION_RPN_GROUP}' "
                             "group (train the 'regions' stage: it runs when eval.modes has sgdet "
                             "and train.stage_order names it)")
        feats = trunk.apply({"params": params[DETECTOR_GROUP], **detector_state}, images)
        return rpn.apply({"params": params[REGION_RPN_GROUP]}, feats, image_sizes)

    return propose


@flax.struct.dataclass
class MSDNTrainingRoIs:
    """What `make_msdn_roi_sampler` adds to a training step (all stop-gradient, [B, ...]).

    `inputs` are `ModelInputs` fields: region_boxes / region_mask (sampled region RoIs, fg
    first), region_tokens [B, max_fg, L] (captions of the first max_fg = train_rois *
    train_fg_fraction RoIs; non-fg rows all pad) and proposal_boxes (object RoIs for the box
    head). The rest are the targets of the `region` and `object_box` losses.
    """

    inputs: dict
    region_fg: jnp.ndarray        # [B, Qt] bool
    region_deltas: jnp.ndarray    # [B, Qt, 4] targets (BOX_WEIGHTS), 0 where not fg
    proposal_labels: jnp.ndarray  # [B, R] int32 class of the matched gt object (0: not fg)
    proposal_deltas: jnp.ndarray  # [B, R, 4] targets for that class, 0 where not fg


def make_msdn_roi_sampler(detector: FasterRCNN, config: RegionRPNConfig, *,
                          object_rois: int = 16, object_fg_iou: float = 0.5,
                          detector_state: dict | None = None):
    """(params, batch, key) -> `MSDNTrainingRoIs`: MSDN's training RoIs from the frozen
    proposal networks (params["detector"], params["region_rpn"]; no gradient flows).

    Regions: the region RPN's `train_proposals` best boxes plus the caption regions, sampled
    to `train_rois` (fg first: IoU >= train_fg_iou with a caption region, which gives its tokens
    and box target; bg: IoU below it). Objects: the detector's RPN proposals plus the
    ground-truth boxes, `object_rois` fg ones sampled (IoU >= object_fg_iou; class and box
    target of the matched object), for the object box head only.
    """
    trunk = DetectorTrunk(detector.config, detector.dtype)
    rpn = RegionRPN(config, detector.dtype)
    detector_state = dict(detector_state or {})

    def sample(params: Any, batch: Any, key: jax.Array) -> MSDNTrainingRoIs:
        params = jax.lax.stop_gradient({k: params[k] for k in (DETECTOR_GROUP, REGION_RPN_GROUP)})
        det_vars = {"params": params[DETECTOR_GROUP], **detector_state}
        b = batch.images.shape[0]
        images, sizes, scale = batch.detector_view()  # the detector's canvas
        feats = trunk.apply(det_vars, images)
        reg_boxes, _, reg_valid = rpn.apply({"params": params[REGION_RPN_GROUP]}, feats,
                                            sizes, num_proposals=config.train_proposals)
        reg_boxes = rescale(reg_boxes, scale)  # back in the model's canvas, as the batch
        k_reg, k_obj = jax.random.split(key)
        rt = jax.vmap(lambda p, pm, g, gm, k: sample_proposals(
            p, pm, g, gm.astype(jnp.int32), gm, k, batch_size=config.train_rois,
            positive_fraction=config.train_fg_fraction, fg_thresh=config.train_fg_iou,
            bg_thresh_hi=config.train_fg_iou, bg_thresh_lo=0.0, weights=BOX_WEIGHTS))(
            reg_boxes, reg_valid, batch.region_boxes, batch.region_mask,
            jax.random.split(k_reg, b))
        tokens = jnp.take_along_axis(batch.region_tokens, rt.matched_gt[..., None], axis=1)
        # fg RoIs come first and there are at most max_fg: only those rows get caption targets
        # (the captioner runs on them alone).
        max_fg = int(config.train_rois * config.train_fg_fraction)
        tokens = jnp.where(rt.fg[..., None], tokens, PAD)[:, :max_fg]

        # The detector re-runs the same trunk on the same inputs: XLA computes it once in the
        # jitted step (measured: the whole sampler 64 ms/step; trunk 39 ms, object proposals
        # 62 ms, region proposals 58 ms when jitted apart).
        props, prop_valid = detector.apply(det_vars, images, sizes, proposals_only=True)
        props = rescale(props, scale)
        gt_mask = batch.box_mask & (batch.labels > 0)
        ot = jax.vmap(lambda p, pm, g, gl, gm, k: sample_proposals(
            p, pm, g, gl, gm, k, batch_size=object_rois, positive_fraction=1.0,
            fg_thresh=object_fg_iou, bg_thresh_hi=object_fg_iou, bg_thresh_lo=0.0,
            weights=BOX_WEIGHTS))(props, prop_valid, batch.boxes, batch.labels, gt_mask,
                                  jax.random.split(k_obj, b))
        inputs = dict(region_boxes=jnp.where(rt.valid[..., None], rt.boxes, 0.0),
                      region_mask=rt.valid, region_tokens=tokens.astype(jnp.int32),
                      proposal_boxes=jnp.where(ot.fg[..., None], ot.boxes, 0.0))
        return MSDNTrainingRoIs(inputs=inputs, region_fg=rt.fg, region_deltas=rt.deltas,
                                proposal_labels=jnp.where(ot.fg, ot.labels, 0),
                                proposal_deltas=ot.deltas)

    return sample


def init_region_rpn(detector: FasterRCNN, config: RegionRPNConfig, detector_params: Any,
                    images: jnp.ndarray, image_sizes: jnp.ndarray, key: jax.Array, *,
                    detector_state: dict | None = None) -> Any:
    """Initial params of the region head for the trunk's feature shapes (the trunk runs only
    abstractly, via eval_shape)."""
    trunk = DetectorTrunk(detector.config, detector.dtype)
    strides = []

    def feature_maps(p):
        maps, level_strides = trunk.apply({"params": p, **dict(detector_state or {})}, images)
        strides.extend(level_strides)  # static Python ints, read while tracing
        return maps

    shapes = jax.eval_shape(feature_maps, detector_params)
    feats = ([jnp.zeros(s.shape, s.dtype) for s in shapes], strides)
    return RegionRPN(config, detector.dtype).init({"params": key}, feats, image_sizes)["params"]


__all__ = ["REGION_RPN_GROUP", "RegionRPNConfig", "region_rpn_config", "DetectorTrunk",
           "RegionRPN", "RegionRPNLosses", "make_region_proposal_fn", "init_region_rpn",
           "MSDNTrainingRoIs", "make_msdn_roi_sampler"]
