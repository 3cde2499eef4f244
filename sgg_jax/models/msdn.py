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

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgg_jax.models.backbone import build_backbone
from sgg_jax.models.interface import ModelInputs, ModelOutputs
from sgg_jax.models.roi_features import FCHead, pair_masks, pool_boxes, union_boxes

MODES = ("predcls", "sgcls", "sgdet")
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # box coder of the object and region box heads (Fast R-CNN's)
PHRASE_REGION_OVERLAP = 0.8  # MSDN cfg.PHRASE_REGION_OVERLAP_THRESH
PAD, START, END = 0, 1, 2  # token ids of the input pipeline (data_pipelines/tfds_sgg.py)


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
    """Applies box-head deltas (`BOX_WEIGHTS`) and clips to the image.

    boxes [B, N, 4]; deltas [B, N, 4] (class-agnostic) or [B, N, C+1, 4] with `labels` [B, N]
    picking each box's class; image_sizes [B, 2] (h, w) -> refined boxes [B, N, 4].
    """
    from sgg_jax.models.detection import _ops

    if deltas.ndim == 4:
        if labels is None:
            raise ValueError("refine_boxes: class-specific deltas [B, N, C+1, 4] need labels")
        deltas = jnp.take_along_axis(deltas, labels[..., None, None].astype(jnp.int32),
                                     axis=2)[..., 0, :]
    refined = _ops.decode(deltas.astype(jnp.float32), boxes.astype(jnp.float32), BOX_WEIGHTS)
    hw = jnp.asarray(image_sizes, jnp.float32)[:, None, :]
    return _ops.clip(refined, jnp.broadcast_to(hw, refined.shape[:-1] + (2,)))


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


class CaptionStep(nn.Module):
    """One time step of the 2-layer LSTM captioner (scanned over time by `RegionCaptioner`).

    carry = (lstm carries, previous prediction [N], done [N]); x = (image embedding used at this
    step? [], teacher token [N] or -1 = feed the previous prediction). Returns the logits and the
    greedy prediction (PAD after <end>; PAD and <start> are never predicted).
    """

    vocab_size: int
    hidden_dim: int
    num_layers: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, x):
        cells, prev, done, image = carry
        is_image, teacher = x
        tok = jnp.where(teacher >= 0, teacher, prev)
        emb = nn.Embed(self.vocab_size, self.hidden_dim, dtype=self.dtype, name="embed")(tok)
        inp = jnp.where(is_image, image, emb)
        new_cells = []
        for layer in range(self.num_layers):
            c, inp = nn.OptimizedLSTMCell(self.hidden_dim, dtype=self.dtype,
                                          name=f"lstm{layer}")(cells[layer], inp)
            new_cells.append(c)
        logits = nn.Dense(self.vocab_size, dtype=self.dtype, name="word_logits")(inp)
        banned = (jnp.arange(self.vocab_size) == PAD) | (jnp.arange(self.vocab_size) == START)
        pred = jnp.argmax(jnp.where(banned, -jnp.inf, logits.astype(jnp.float32)), axis=-1)
        pred = jnp.where(done, PAD, pred).astype(jnp.int32)
        done = done | ((pred == END) & ~is_image)
        return (tuple(new_cells), pred, done, image), (logits, pred)


class RegionCaptioner(nn.Module):
    """2-layer LSTM captioner: the region feature is the first input (MSDN's image step), then
    the words. `teacher_logits` scores `tokens` (teacher forcing); `greedy` decodes."""

    vocab_size: int
    hidden_dim: int = 512
    dtype: Any = jnp.float32

    def setup(self):
        self.image_proj = nn.Dense(self.hidden_dim, dtype=self.dtype)
        self.decoder = nn.scan(CaptionStep, variable_broadcast="params",
                               split_rngs={"params": False}, in_axes=0, out_axes=0)(
            self.vocab_size, self.hidden_dim, 2, self.dtype)

    def _run(self, feats: jnp.ndarray, teacher: jnp.ndarray):
        """feats [N, F], teacher [L, N] (token or -1) -> logits [L, N, V], preds [L, N]."""
        n = feats.shape[0]
        length = teacher.shape[0]
        image = nn.relu(self.image_proj(feats))
        zeros = jnp.zeros((n, self.hidden_dim), self.dtype)
        cells = tuple((zeros, zeros) for _ in range(2))
        carry = (cells, jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool), image)
        is_image = jnp.arange(length) == 0
        _, (logits, preds) = self.decoder(carry, (is_image, teacher))
        return logits, preds

    def teacher_logits(self, feats: jnp.ndarray, tokens: jnp.ndarray) -> jnp.ndarray:
        """feats [B, Q, F], tokens [B, Q, L] -> logits [B, Q, L, V]; position t predicts
        tokens[..., t] from the image and tokens[..., :t]."""
        b, q, length = tokens.shape
        flat = tokens.reshape(b * q, length)
        teacher = jnp.concatenate([jnp.zeros((1, b * q), jnp.int32),
                                   flat[:, :-1].T.astype(jnp.int32)], axis=0)
        logits, _ = self._run(feats.reshape(b * q, -1), teacher)
        return jnp.moveaxis(logits, 0, 1).reshape(b, q, length, -1)

    def greedy(self, feats: jnp.ndarray, length: int) -> jnp.ndarray:
        """feats [B, Q, F] -> token ids [B, Q, length]: <start>, greedy words up to <end>, PAD."""
        b, q = feats.shape[:2]
        teacher = jnp.full((length, b * q), -1, jnp.int32).at[:2].set(
            jnp.array([PAD, START], jnp.int32)[:, None])
        _, preds = self._run(feats.reshape(b * q, -1), teacher)
        preds = preds.T.at[:, 0].set(START)  # the image step's output stands for <start>
        return preds.reshape(b, q, length)

    def beam(self, feats: jnp.ndarray, length: int, beam_size: int) -> jnp.ndarray:
        """feats [B, Q, F] -> token ids [B, Q, length], as `greedy`, but the caption of highest
        total log-probability (over the words and <end>; PAD and <start> excluded, as greedy)
        among `beam_size` hypotheses kept per region; beam_size 1 is greedy. Finished
        hypotheses keep their score and extend only by PAD. The loop is over time steps
        (`length` - 1 one-step scans of the same decoder), fixed shapes throughout."""
        b, q = feats.shape[:2]
        n, k, v = b * q, beam_size, self.vocab_size
        step = lambda carry, is_image, tok: self.decoder(
            carry, (jnp.asarray([is_image]), tok[None].astype(jnp.int32)))
        zeros = jnp.zeros((n, self.hidden_dim), self.dtype)
        image = nn.relu(self.image_proj(feats.reshape(n, -1)))
        carry = (tuple((zeros, zeros) for _ in range(2)), jnp.zeros((n,), jnp.int32),
                 jnp.zeros((n,), bool), image)
        carry, _ = step(carry, True, jnp.full((n,), PAD))  # MSDN's image step
        # Every row's state to its k hypotheses: [n, ...] -> [n * k, ...].
        carry = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), carry)
        tokens = jnp.zeros((n, k, length), jnp.int32).at[:, :, 0].set(START)
        scores = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None].repeat(n, 0)  # one live
        done = jnp.zeros((n, k), bool)
        banned = jnp.isin(jnp.arange(v), jnp.array([PAD, START]))
        pad_only = jnp.where(jnp.arange(v) == PAD, 0.0, -jnp.inf)
        for t in range(1, length):
            carry, (logits, _) = step(carry, False, tokens[:, :, t - 1].reshape(n * k))
            logp = jax.nn.log_softmax(
                jnp.where(banned, -jnp.inf, logits[0].astype(jnp.float32)), axis=-1)
            logp = jnp.where(done[..., None], pad_only, logp.reshape(n, k, v))
            scores, flat = jax.lax.top_k((scores[..., None] + logp).reshape(n, k * v), k)
            parent, word = flat // v, (flat % v).astype(jnp.int32)
            pick = lambda x: jnp.take_along_axis(
                x.reshape((n, k) + x.shape[1:]),
                parent.reshape((n, k) + (1,) * (x.ndim - 1)), axis=1).reshape(x.shape)
            carry = jax.tree.map(pick, carry)
            tokens = jnp.take_along_axis(tokens, parent[..., None], axis=1).at[:, :, t].set(word)
            done = jnp.take_along_axis(done, parent, axis=1) | (word == END)
        best = jnp.argmax(scores, axis=1)
        out = jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0]
        return out.reshape(b, q, length)

    def decode(self, feats: jnp.ndarray, length: int, beam_size: int = 1) -> jnp.ndarray:
        """Greedy (beam_size 1) or beam-search captions [B, Q, length]."""
        if beam_size < 1:
            raise ValueError(f"caption beam_size: expected >= 1, got {beam_size}")
        return (self.greedy(feats, length) if beam_size == 1
                else self.beam(feats, length, beam_size))

    def __call__(self, feats, tokens):
        return self.teacher_logits(feats, tokens)


class MSDNModel(nn.Module):
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
    mode: str = "predcls"
    backbone_name: str = "small_resnet"
    hidden_dim: int = 512
    num_iterations: int = 2
    gate_width: int = 128
    fc_dim: int = 256
    roi_size: int = 7
    sampling_ratio: int = 2
    dropout: float = 0.0
    max_caption_len: int = 12
    caption_beam_size: int = 1
    link_threshold: float = PHRASE_REGION_OVERLAP
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: ModelInputs, train: bool = False) -> ModelOutputs:
        if self.mode not in MODES:
            raise ValueError(f"MSDNModel.mode: expected one of {MODES}, got {self.mode!r}")
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
