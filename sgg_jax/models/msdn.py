"""MSDN: Multi-level Scene Description Network (Li et al., ICCV 2017).

"Scene Graph Generation from Objects, Phrases and Region Captions". Three RoI branches on a shared
backbone (objects, phrases = union box of a candidate (subject, object) pair, caption regions)
are refined jointly by rounds of gated message passing over a dynamic graph, then read by an
object classifier, a predicate classifier, region objectness and box heads and an LSTM region
captioner; an object box-refinement head reads the object branch.

The dynamic graph (fixed shapes, masks; no Python loops over boxes):
- each phrase is linked to its subject and its object (`pairs`);
- each phrase is linked to every region that covers it: intersection(region, phrase) /
  area(phrase) > 0.8 (MSDN's `bbox_intersections` with PHRASE_REGION_OVERLAP_THRESH = 0.8;
  continuous areas here, without the reference's +1 pixel), see `phrase_region_links`.

One refinement round (all messages from the states at the start of the round, as the reference):
- gate(t, s) = mean_k sigmoid(W [relu(t), relu(s)] + b)_k, a scalar per (target, source) link
  (MSDN's `Message_Passing_Unit_v1`, width `gate_width`); a message is gate * source and a
  target averages the messages of its links (zero when it has none);
- object   <- (mean over phrases where it is subject + mean over phrases where it is object) / 2
- phrase   <- (subject + object + mean over linked regions) / 3
- region   <- mean over linked phrases
- residual update h <- h + W_x relu(message) + W_h relu(h) (MSDN's update unit).

Parameter groups (top-level submodules): `backbone`; `roi_features` (the three fc6/fc7 heads
and the object box regressor); `relation_head` (state projections, message passing, predicate
classifier, region objectness and box); `obj_classifier`; `captioner` (the 2-layer LSTM).

Box heads (training: `models.region_proposals.make_msdn_roi_sampler`, losses `region` and
`object_box`): regions are trained as MSDN on sampled region-RPN proposals (fg: IoU >= 0.5 with
a caption region, whose caption they learn; bg otherwise) with objectness and box regression,
read from the refined region states. The object box regressor reads the object branch's fc7
*before* message passing (deviation: MSDN reads the refined states); it is trained on the
detector's RPN proposals matched to ground-truth objects (`ModelInputs.proposal_boxes`), which
take no part in the graph, so train and test read the same kind of feature. Relation training
keeps neural-motifs' ground-truth object boxes and sampled pairs.

Outputs: `obj_logits [B, O, C+1]`, `rel_logits [B, M, P+1]` and in `aux`:
`region_scores [B, Q]` (objectness logits), `region_deltas [B, Q, 4]`, `obj_box_deltas
[B, O, C+1, 4]` (class-specific; `BOX_WEIGHTS`; `refine_boxes` applies them),
`proposal_box_deltas [B, R, C+1, 4]` when `inputs.proposal_boxes` is given,
`caption_logits [B, Qc, L, V]` (teacher forcing with `region_tokens` [B, Qc, L], which may
cover only the first Qc <= Q regions; position t predicts token
t, position 0 is the image step and carries no loss) and, when `train=False`, `captions
[B, Q, L]` (greedy decoding: <start>, words, <end>, then 0).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from data_pipelines.batch import rescale
from sgg_jax import losses as losses_lib
from sgg_jax.models import region_proposals, registry
from sgg_jax.models.backbone import build_backbone
from sgg_jax.models.captioning import PAD, RegionCaptioner
from sgg_jax.models.detection.rpn import rpn_losses, smooth_l1
from sgg_jax.models.interface import ModelInputs, ModelOutputs
from sgg_jax.models.region_proposals import BOX_WEIGHTS, REGION_RPN_GROUP
from sgg_jax.models.roi_features import (FCHead, RelationTrunk, pair_masks, pool_boxes,
                                         union_boxes)
from sgg_jax.ops import boxes as box_ops

log = logging.getLogger("sgg_jax")

PHRASE_REGION_OVERLAP = 0.8  # MSDN cfg.PHRASE_REGION_OVERLAP_THRESH


# ----------------------------------------------------------------------------------------------
# The dynamic graph


def covered_fraction(regions: jnp.ndarray, phrases: jnp.ndarray) -> jnp.ndarray:
    """Fraction of each phrase box inside each region box.

    regions [..., Q, 4], phrases [..., M, 4] (x1y1x2y2) -> [..., M, Q] =
    area(phrase ∩ region) / area(phrase) (0 for an empty phrase box).
    """
    p = phrases[..., :, None, :]
    r = regions[..., None, :, :]
    iw = jnp.clip(jnp.minimum(p[..., 2], r[..., 2]) - jnp.maximum(p[..., 0], r[..., 0]), 0.0)
    ih = jnp.clip(jnp.minimum(p[..., 3], r[..., 3]) - jnp.maximum(p[..., 1], r[..., 1]), 0.0)
    area = jnp.clip(p[..., 2] - p[..., 0], 0.0) * jnp.clip(p[..., 3] - p[..., 1], 0.0)
    return jnp.where(area > 0, iw * ih / jnp.where(area > 0, area, 1.0), 0.0)


def phrase_region_links(phrase_boxes: jnp.ndarray, pair_mask: jnp.ndarray,
                        region_boxes: jnp.ndarray, region_mask: jnp.ndarray,
                        threshold: float = PHRASE_REGION_OVERLAP) -> jnp.ndarray:
    """[B, M, Q] bool: real phrase m is linked to real region q when the region covers more than
    `threshold` of the phrase box (MSDN's rule)."""
    cover = covered_fraction(region_boxes, phrase_boxes)
    return (cover > threshold) & pair_mask[..., :, None] & region_mask[..., None, :]


def refine_boxes(boxes: jnp.ndarray, deltas: jnp.ndarray, image_sizes: jnp.ndarray,
                 labels: jnp.ndarray | None = None) -> jnp.ndarray:
    """MSDN's box heads' deltas (`BOX_WEIGHTS`) applied to boxes, clipped to the image
    (`sgg_jax.ops.boxes.refine_boxes`)."""
    return box_ops.refine_boxes(boxes, deltas, image_sizes, BOX_WEIGHTS, labels)


def _gather(states: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """states [B, N, H], index [B, M] -> [B, M, H]."""
    return jnp.take_along_axis(states, index[..., None], axis=1)


def _segment_mean(values: jnp.ndarray, index: jnp.ndarray, weight: jnp.ndarray,
                  num: int) -> jnp.ndarray:
    """Per image, the weighted rows values [B, M, H] averaged into index [B, M] -> [B, num, H]
    (mean over the rows with weight 1; zero where none)."""
    seg = jax.vmap(lambda v, i: jax.ops.segment_sum(v, i, num_segments=num))
    total = seg(values * weight[..., None], index)
    count = seg(weight[..., None], index)
    return total / jnp.maximum(count, 1.0)


# ----------------------------------------------------------------------------------------------
# Modules


class MessageGate(nn.Module):
    """MSDN's gate: mean_k sigmoid(W [relu(target), relu(source)] + b)_k, a scalar per link.

    `aligned(t [.., N, H], s [.., N, H]) -> [.., N]` gates row-aligned links;
    `pairwise(t [.., T, H], s [.., S, H]) -> [.., T, S]` gates all target x source links
    (the concatenation is split into W_t relu(t) + W_s relu(s), so it costs T*S*width).
    """

    width: int = 128
    dtype: Any = jnp.float32

    def setup(self):
        self.w_target = nn.Dense(self.width, dtype=self.dtype)
        self.w_source = nn.Dense(self.width, use_bias=False, dtype=self.dtype)

    def aligned(self, target: jnp.ndarray, source: jnp.ndarray) -> jnp.ndarray:
        z = self.w_target(nn.relu(target)) + self.w_source(nn.relu(source))
        return jnp.mean(nn.sigmoid(z), axis=-1)

    def pairwise(self, target: jnp.ndarray, source: jnp.ndarray) -> jnp.ndarray:
        zt = self.w_target(nn.relu(target))[..., :, None, :]
        zs = self.w_source(nn.relu(source))[..., None, :, :]
        return jnp.mean(nn.sigmoid(zt + zs), axis=-1)

    def __call__(self, target: jnp.ndarray, source: jnp.ndarray) -> jnp.ndarray:
        return self.aligned(target, source)


class UpdateUnit(nn.Module):
    """MSDN's residual update: h + W_x relu(message) + W_h relu(h)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, message: jnp.ndarray, h: jnp.ndarray) -> jnp.ndarray:
        return h + (nn.Dense(self.features, dtype=self.dtype, name="w_input")(nn.relu(message))
                    + nn.Dense(self.features, dtype=self.dtype, name="w_hidden")(nn.relu(h)))


class MSDNRoIFeatures(nn.Module):
    """fc7 features of the three branches: objects, phrases (union box + two-box spatial
    masks, as `roi_features.RoIFeatures`), regions. Padded rows are zeroed.

    Also MSDN's object box refinement: class-specific deltas [.., C+1, 4] (`BOX_WEIGHTS`) read
    from the object branch's fc7, for the object boxes and for `proposal_boxes` (extra object
    RoIs that only train this head; they share the object branch's fc layers)."""

    num_classes: int
    fc_dim: int = 256
    roi_size: int = 7
    sampling_ratio: int = 2
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, stride, boxes, box_mask, pairs, pair_mask, region_boxes,
                 region_mask, proposal_boxes=None, train: bool = False):
        pool = lambda b: pool_boxes(features, b, stride, self.roi_size, self.sampling_ratio)
        head = lambda name: FCHead(self.fc_dim, self.dropout, self.dtype, name=name)
        mask = lambda x, m: x * m[..., None].astype(x.dtype)
        obj_fc = head("obj_fc")
        box_head = nn.Dense(4 * (self.num_classes + 1), dtype=self.dtype, name="obj_box")
        deltas = lambda f: box_head(f).reshape(f.shape[:-1] + (self.num_classes + 1, 4))
        n_obj = boxes.shape[1]
        if proposal_boxes is not None:  # one pass of the object branch over both box sets
            both = obj_fc(pool(jnp.concatenate([boxes, proposal_boxes], axis=1)), train)
            obj_fc7, prop_fc7 = both[:, :n_obj], both[:, n_obj:]
            proposal_deltas = deltas(prop_fc7)
        else:
            obj_fc7, proposal_deltas = obj_fc(pool(boxes), train), None
        obj = mask(obj_fc7, box_mask)
        obj_deltas = deltas(obj)
        upooled = pool(union_boxes(boxes, pairs))
        upooled = jnp.concatenate(
            [upooled, pair_masks(boxes, pairs, self.roi_size).astype(upooled.dtype)], axis=-1)
        phrase = mask(head("union_fc")(upooled, train), pair_mask)
        region = mask(head("region_fc")(pool(region_boxes), train), region_mask)
        return obj, phrase, region, obj_deltas, proposal_deltas


class MSDNRefinement(nn.Module):
    """Projects the three branches to `hidden_dim` and runs `num_iterations` rounds of MSDN's
    message passing; returns refined (objects, phrases, regions) and what is read from them:
    predicate logits, region objectness logits and region box deltas (`BOX_WEIGHTS`)."""

    num_predicates: int
    hidden_dim: int = 512
    num_iterations: int = 2
    gate_width: int = 128
    link_threshold: float = PHRASE_REGION_OVERLAP
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obj_feats, phrase_feats, region_feats, boxes, box_mask, pairs, pair_mask,
                 region_boxes, region_mask):
        h = self.hidden_dim
        dt = self.dtype
        fmask = lambda m: m[..., None].astype(dt)
        obj = nn.relu(nn.Dense(h, dtype=dt, name="obj_proj")(obj_feats)) * fmask(box_mask)
        phr = nn.relu(nn.Dense(h, dtype=dt, name="phrase_proj")(phrase_feats)) * fmask(pair_mask)
        reg = nn.relu(nn.Dense(h, dtype=dt, name="region_proj")(region_feats)) * fmask(region_mask)

        o = obj.shape[1]
        subj, objx = pairs[..., 0], pairs[..., 1]
        pw = pair_mask.astype(dt)
        links = phrase_region_links(union_boxes(boxes, pairs), pair_mask, region_boxes,
                                    region_mask, self.link_threshold).astype(dt)  # [B, M, Q]
        gate = lambda name: MessageGate(self.gate_width, dt, name=name)
        g_pred2sub, g_pred2obj = gate("gate_pred2sub"), gate("gate_pred2obj")
        g_sub2pred, g_obj2pred = gate("gate_sub2pred"), gate("gate_obj2pred")
        g_reg2pred, g_pred2reg = gate("gate_reg2pred"), gate("gate_pred2reg")
        up_obj = UpdateUnit(h, dt, name="update_object")
        up_phr = UpdateUnit(h, dt, name="update_phrase")
        up_reg = UpdateUnit(h, dt, name="update_region")

        def mean_links(gates, link, source):
            """Mean over the linked sources of gate * source: gates, link [B, T, S]."""
            total = jnp.einsum("bts,bsh->bth", gates * link, source)
            return total / jnp.maximum(jnp.sum(link, axis=-1, keepdims=True), 1.0)

        for _ in range(self.num_iterations):
            sub_states, obj_states = _gather(obj, subj), _gather(obj, objx)
            # objects <- phrases (as subject, as object)
            as_sub = g_pred2sub(sub_states, phr)[..., None] * phr
            as_obj = g_pred2obj(obj_states, phr)[..., None] * phr
            obj_msg = 0.5 * (_segment_mean(as_sub, subj, pw, o) + _segment_mean(as_obj, objx, pw, o))
            # phrases <- subject, object, covering regions
            from_sub = g_sub2pred(phr, sub_states)[..., None] * sub_states
            from_obj = g_obj2pred(phr, obj_states)[..., None] * obj_states
            from_reg = mean_links(g_reg2pred.pairwise(phr, reg), links, reg)
            phr_msg = (from_sub + from_obj + from_reg) / 3.0
            # regions <- linked phrases
            reg_msg = mean_links(g_pred2reg.pairwise(reg, phr), jnp.swapaxes(links, 1, 2), phr)

            obj, phr, reg = (up_obj(obj_msg, obj) * fmask(box_mask),
                             up_phr(phr_msg, phr) * fmask(pair_mask),
                             up_reg(reg_msg, reg) * fmask(region_mask))
        rel_logits = nn.Dense(self.num_predicates + 1, dtype=dt, name="rel_classifier")(phr)
        region_scores = nn.Dense(1, dtype=dt, name="region_objectness")(reg)[..., 0]
        region_deltas = nn.Dense(4, dtype=dt, name="region_box")(reg)
        return obj, phr, reg, rel_logits, region_scores, region_deltas


class MSDNModel(RelationTrunk):
    """MSDN with given object boxes (PredCls / SGCls) and given caption-region boxes.

    Attributes:
      num_classes, num_predicates: C and P. vocab_size: V, caption words incl. the specials
        (0 <pad>, 1 <start>, 2 <end>, 3 <unk>).
      num_iterations: message-passing rounds. gate_width: width of the gates' hidden layer.
      max_caption_len: decoding length when `inputs.region_tokens` is absent (else their
        length L).
      caption_beam_size: test-time caption decoding: 1 greedy, k > 1 beam search of width k.
    Regions come from `inputs.region_boxes/region_mask` (the ground-truth caption regions; the
    model is agnostic to where they come from, so region proposals plug in for SGDet).
    """

    num_classes: int
    num_predicates: int
    vocab_size: int
    hidden_dim: int = 512
    num_iterations: int = 2
    gate_width: int = 128
    max_caption_len: int = 12
    caption_beam_size: int = 1
    link_threshold: float = PHRASE_REGION_OVERLAP

    @nn.compact
    def __call__(self, inputs: ModelInputs, train: bool = False) -> ModelOutputs:
        if inputs.region_boxes is None or inputs.region_mask is None:
            raise ValueError("MSDNModel: ModelInputs.region_boxes [B, Q, 4] and region_mask "
                             "[B, Q] are required (the caption regions)")
        features, stride = build_backbone(self.backbone_name, self.dtype, name="backbone")(
            inputs.images, train)
        obj_f, phr_f, reg_f, obj_deltas, proposal_deltas = MSDNRoIFeatures(
            self.num_classes, self.fc_dim, self.roi_size, self.sampling_ratio, self.dropout,
            self.dtype, name="roi_features")(
            features, stride, inputs.boxes, inputs.box_mask, inputs.pairs, inputs.pair_mask,
            inputs.region_boxes, inputs.region_mask, inputs.proposal_boxes, train=train)
        obj, _, reg, rel_logits, region_scores, region_deltas = MSDNRefinement(
            self.num_predicates, self.hidden_dim, self.num_iterations, self.gate_width,
            self.link_threshold, self.dtype, name="relation_head")(
            obj_f, phr_f, reg_f, inputs.boxes, inputs.box_mask, inputs.pairs, inputs.pair_mask,
            inputs.region_boxes, inputs.region_mask)
        obj_logits = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="obj_classifier")(obj)
        captioner = RegionCaptioner(self.vocab_size, self.hidden_dim, self.dtype,
                                    name="captioner")
        f32 = lambda x: x.astype(jnp.float32)
        aux = {"region_scores": f32(region_scores), "region_deltas": f32(region_deltas),
               "obj_box_deltas": f32(obj_deltas)}
        if proposal_deltas is not None:
            aux["proposal_box_deltas"] = f32(proposal_deltas)
        tokens = inputs.region_tokens
        if tokens is not None:
            # Tokens may cover only the first Qc <= Q regions (training on sampled RoIs: the
            # fg ones come first and only they have captions), so bg regions cost no LSTM.
            aux["caption_logits"] = captioner.teacher_logits(
                reg[:, :tokens.shape[1]], tokens).astype(jnp.float32)
        if not train:
            length = tokens.shape[-1] if tokens is not None else self.max_caption_len
            captions = captioner.decode(reg, length, self.caption_beam_size)
            aux["captions"] = jnp.where(inputs.region_mask[..., None], captions, PAD)
        elif tokens is None:
            captioner.greedy(reg, 2)  # creates the captioner's parameters in any case
        return ModelOutputs(obj_logits=obj_logits.astype(jnp.float32),
                            rel_logits=rel_logits.astype(jnp.float32), aux=aux)


# ----------------------------------------------------------------------------------------------
# Registration: building, loss terms, the region RPN, training RoIs and the SGDet hooks


def build(model_config: Any, ctx: registry.BuildContext) -> MSDNModel:
    opt = lambda key: registry.option(model_config, key, SPEC)
    return MSDNModel(num_classes=ctx.num_classes, num_predicates=ctx.num_predicates,
                     vocab_size=ctx.facts.num_words, hidden_dim=int(opt("hidden_dim")),
                     num_iterations=int(opt("num_iterations")),
                     gate_width=int(opt("gate_width")),
                     caption_beam_size=int(opt("caption_beam_size")),
                     **registry.trunk_kwargs(model_config, ctx.mode))


def caption_term(outputs: ModelOutputs, targets: losses_lib.LossTargets, config: Any) -> dict:
    """Caption cross-entropy (teacher forcing) on the ground-truth caption regions, or on the
    sampled fg region RoIs when the step has MSDN's training RoIs."""
    if targets.extras is None:
        tokens, regions = targets.batch.region_tokens, targets.batch.region_mask
    else:
        tokens = targets.inputs.region_tokens
        regions = targets.extras.region_fg[:, :tokens.shape[1]]
    return {"caption_loss": losses_lib.caption_loss(outputs.aux["caption_logits"], tokens,
                                                    regions)}


def region_term(outputs: ModelOutputs, targets: losses_lib.LossTargets, config: Any) -> dict:
    """Region objectness BCE + box smooth-L1 on the sampled region RoIs (fg: IoU >= 0.5 with
    a caption region), each averaged over the sampled RoIs, the box term over fg ones."""
    rois, valid = targets.extras, targets.inputs.region_mask
    objectness, box = rpn_losses(outputs.aux["region_scores"], outputs.aux["region_deltas"],
                                 rois.region_fg & valid, valid & ~rois.region_fg,
                                 rois.region_deltas, 1.0 / 9.0)
    return {"region_objectness_loss": objectness, "region_box_loss": box}


def box_refinement_loss(box_deltas: jnp.ndarray, labels: jnp.ndarray,
                        target_deltas: jnp.ndarray, beta: float = 1.0 / 9.0) -> jnp.ndarray:
    """Class-specific box regression (Fast R-CNN): smooth-L1 between the deltas of each RoI's
    class and its targets, summed over the 4 coordinates and averaged over the RoIs with a
    class (labels > 0); 0 when there are none.

    box_deltas [B, R, C+1, 4]; labels [B, R] (0 = no target); target_deltas [B, R, 4].
    """
    picked = jnp.take_along_axis(box_deltas, labels[..., None, None].astype(jnp.int32),
                                 axis=-2)[..., 0, :]
    fg = labels > 0
    per_roi = smooth_l1(picked.astype(jnp.float32) - target_deltas, beta).sum(-1)
    return jnp.where(fg, per_roi, 0.0).sum() / jnp.maximum(fg.sum(), 1)


def object_box_term(outputs: ModelOutputs, targets: losses_lib.LossTargets,
                    config: Any) -> dict:
    """The object box head on the detector's RPN proposals matched to ground truth."""
    rois = targets.extras
    return {"object_box_loss": box_refinement_loss(
        outputs.aux["proposal_box_deltas"], rois.proposal_labels, rois.proposal_deltas)}


ROI_LOSSES = ("region", "object_box")  # need the training RoIs of `train_extras`


def _rpn_config(config: Any) -> region_proposals.RegionRPNConfig:
    """The region RPN's settings of a run. Its anchor sizes are given in the model's canvas
    pixels; the RPN runs on the detector's canvas, so they are scaled to it when the detector
    reads its own size (`input.detector_image_size`)."""
    rpn = registry.option(config.model, "region_rpn", SPEC)
    if rpn is None:
        raise ValueError("MSDN's region RPN needs config.model.region_rpn (configs/msdn.py "
                         "sets it)")
    cfg = region_proposals.region_rpn_config(rpn)
    size = int(config.input.image_size)
    det_size = int(config.input.get("detector_image_size", 0) or 0) or size
    if det_size != size:
        cfg = dataclasses.replace(cfg, anchor_sizes=tuple(
            a * det_size / size for a in cfg.anchor_sizes))
    return cfg


def train_extras(exp: Any, stage_name: str, loss_names: tuple[str, ...]):
    """MSDN's training RoIs (sampled region-RPN and detector proposals) for the `region` and
    `object_box` losses. A run without the region RPN (no SGDet) drops those two losses: the
    box heads matter only for SGDet."""
    wanted = [n for n in loss_names if n in ROI_LOSSES]
    if not wanted:
        return None, loss_names
    if REGION_RPN_GROUP not in exp.groups:
        log.warning("stage '%s': losses %s skipped: they train MSDN's box heads on the "
                    "detector's and the region RPN's proposals, which only SGDet runs train",
                    stage_name, wanted)
        return None, tuple(n for n in loss_names if n not in ROI_LOSSES)
    sampler = region_proposals.make_msdn_roi_sampler(
        exp.detector(), _rpn_config(exp.config),
        object_rois=int(registry.option(exp.config.model, "box_refinement_rois", SPEC)),
        detector_state=exp.detector_state)
    return sampler, loss_names


def _init_region_rpn(exp: Any, rng: jax.Array, detector_params: Any, images: jax.Array,
                     image_sizes: jax.Array) -> Any:
    return region_proposals.init_region_rpn(
        exp.detector(), _rpn_config(exp.config), detector_params, images, image_sizes,
        rng, detector_state=exp.detector_state)


def _region_rpn_loss(exp: Any):
    """The `regions` stage: the region RPN on the frozen detector trunk's features, trained on
    the caption-region boxes with RPN objectness + box losses."""
    detector = exp.detector()
    trunk = region_proposals.DetectorTrunk(detector.config, detector.dtype)
    rpn = region_proposals.RegionRPN(_rpn_config(exp.config), detector.dtype)
    state = dict(exp.detector_state)

    def loss(params: Any, batch: Any, rng: jax.Array):
        images, sizes, scale = batch.detector_view()  # the detector's canvas
        feats = trunk.apply({"params": jax.lax.stop_gradient(params[registry.DETECTOR_GROUP]),
                             **state}, images)
        out = rpn.apply({"params": params[REGION_RPN_GROUP]}, feats, sizes,
                        rescale(batch.region_boxes, 1.0 / scale), batch.region_mask, train=True,
                        rngs={"sampling": rng})
        return out.total, dict(region_objectness=out.objectness, region_box=out.box)

    return loss


def sgdet_hooks(exp: Any) -> registry.SGDetHooks:
    """SGDet: the region RPN's proposals are MSDN's caption regions; with
    `config.eval.sgdet_refine_boxes` the box heads move the object boxes and the regions and
    the region scores become MSDN's objectness; region captions are returned."""
    if REGION_RPN_GROUP not in exp.groups:
        raise ValueError("MSDN SGDet needs region proposals: add the 'regions' stage to "
                         "config.train.stage_order (configs/msdn.py does)")
    propose = region_proposals.make_region_proposal_fn(
        exp.detector(), _rpn_config(exp.config), detector_state=exp.detector_state)
    refine = bool(exp.config.eval.get("sgdet_refine_boxes", False))

    def extra_inputs(params, images, image_sizes, scale):
        boxes, scores, mask = propose(params, images, image_sizes)
        boxes = rescale(boxes, scale)  # from the detector's canvas to the model's
        return (dict(region_boxes=boxes, region_mask=mask),
                dict(region_boxes=boxes, region_mask=mask, region_scores=scores))

    def finish(out, outputs, image_sizes):
        out = dict(out)
        if refine:
            valid, mask = out["box_mask"], out["region_mask"]
            out["boxes"] = jnp.where(valid[..., None], refine_boxes(
                out["boxes"], outputs.aux["obj_box_deltas"], image_sizes, out["labels"]), 0.0)
            out["region_boxes"] = jnp.where(mask[..., None], refine_boxes(
                out["region_boxes"], outputs.aux["region_deltas"], image_sizes), 0.0)
            out["region_scores"] = jnp.where(mask, jax.nn.sigmoid(outputs.aux["region_scores"]),
                                             0.0)
        if "captions" in outputs.aux:
            out["captions"] = outputs.aux["captions"]
        return out

    return registry.SGDetHooks(extra_inputs=extra_inputs, finish=finish)


SPEC = registry.register(registry.ModelSpec(
    name="msdn", build=build,
    param_groups=("backbone", "roi_features", "obj_classifier", "relation_head", "captioner"),
    description="MSDN (Li et al. 2017): objects, phrases and caption regions refined by gated "
                "message passing; region captions",
    requires=("vocabulary",),
    losses={"caption": caption_term, "region": region_term, "object_box": object_box_term},
    config=dict(hidden_dim=512, num_iterations=2, gate_width=128, caption_beam_size=1,
                box_refinement_rois=16, region_rpn=None),
    train_extras=train_extras,
    auxiliary=(registry.AuxiliaryNetwork(
        group=REGION_RPN_GROUP, kind="regions", losses=("region_proposal",),
        init=_init_region_rpn, make_loss=_region_rpn_loss),),
    sgdet=sgdet_hooks, sgdet_refines_boxes=True, evaluations=("captions",)))
