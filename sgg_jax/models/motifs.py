"""Neural Motifs / MotifNet (Zellers et al., CVPR 2018): contexts from LSTMs over the image's
objects in a fixed order, and the frequency bias.

1. Object context: each object's input is [RoI feature ; class embedding ; box position
   embedding]. The class embedding is the embedding of the ground-truth class in PredCls and the
   probability-weighted embedding otherwise (the detector's class distribution in SGDet when
   it gives one, else the unary classifier's softmax). The objects are sorted (`order`:
   `leftright` by box centre x, `confidence` by the top class probability, `size` by area, largest
   first, `random` by a hash of the box) and read by `obj_layers` bidirectional LSTMs.
2. Object decoder (SGCls / SGDet): an LSTM over the same order that reads the object context
   and the embedding of the previous object's label and predicts each label greedily, the
   previous prediction fed back (teacher-forced with the ground truth in training). Its logits
   are added to the unary classifier's, zero-initialised: the decoder learns a context
   correction to the RoI-feature classifier that the `objects` stage trains (as neural-motifs
   starts from its detector's classifier). PredCls keeps the ground-truth labels.
3. Edge context: `edge_layers` bidirectional LSTMs over [label embedding ; object context] in the
   same order.
4. Pair head: the edge context projected to a subject and an object representation; their
   product for each pair, times the pair's union-box feature, classified into P + 1 predicates,
   plus the frequency bias log p(predicate | subject class, object class) of the training
   statistics (`freq_bias`).

Padded objects are sorted last and the LSTMs run with each image's number of objects as the
sequence length (flax's `nn.RNN(seq_lengths=)`): the backward direction starts at the last real
object and no real output reads a padded slot; the decoder's state does not move on padded
steps. Everything is `lax.scan` (flax RNN / `nn.scan`), no Python loop over boxes.

Deviations from the reference (rowanz/neural-motifs): plain LSTMs instead of alternating highway
LSTMs, no recurrent dropout and no BatchNorm in the position embedding (padded slots would
enter its statistics); the frequency bias is the constant table (neural-motifs trains it from
that initialisation); sizes are configured (`configs/motifs.py`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgg_jax.models import registry
from sgg_jax.models.interface import ModelInputs, ModelOutputs
from sgg_jax.models.priors import ConstantTable, FrequencyBias, frequency_table, predicted_labels
from sgg_jax.models.roi_features import RelationTrunk, trunk_features

ORDERS = ("leftright", "confidence", "size", "random")


def sort_keys(boxes: jnp.ndarray, class_probs: jnp.ndarray, order: str) -> jnp.ndarray:
    """[B, O] keys, ascending = reading order, from each box alone (so the order does not depend
    on the objects' indices: permuting the objects permutes nothing else)."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    if order == "leftright":
        return (x1 + x2) / 2
    if order == "confidence":
        return -jnp.max(class_probs[..., 1:], axis=-1)
    if order == "size":
        return -(x2 - x1) * (y2 - y1)
    if order == "random":  # a fixed pseudo-random number per box
        return jnp.modf(jnp.abs(jnp.sin(x1 * 12.9898 + y1 * 78.233 + x2 * 37.719 + y2 * 4.581)
                                * 43758.5453))[0]
    raise ValueError(f"config.model.order: expected one of {ORDERS}, got {order!r}")


def reading_order(keys: jnp.ndarray, box_mask: jnp.ndarray) -> jnp.ndarray:
    """[B, O] permutation: real objects by ascending key, then the padding."""
    big = jnp.finfo(keys.dtype).max
    return jnp.argsort(jnp.where(box_mask, keys, big), axis=-1, stable=True)


def _take(x: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """x [B, O, ...] gathered along axis 1 by index [B, O]."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


class BiLSTMStack(nn.Module):
    """`num_layers` bidirectional LSTMs (outputs concatenated, 2 x hidden) over sequences of
    `lengths` real steps (padding after them)."""

    hidden: int
    num_layers: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, lengths: jnp.ndarray) -> jnp.ndarray:
        for i in range(self.num_layers):
            x = nn.Bidirectional(
                nn.RNN(nn.OptimizedLSTMCell(self.hidden, dtype=self.dtype), name=f"fwd_{i}"),
                nn.RNN(nn.OptimizedLSTMCell(self.hidden, dtype=self.dtype), name=f"bwd_{i}"),
                name=f"layer_{i}")(x, seq_lengths=lengths)
        return x


class DecoderStep(nn.Module):
    """One step of the object decoder: (LSTM state, previous label), (context, ground truth,
    real?) -> new carry, class logits (the correction to the unary classifier's)."""

    num_classes: int
    hidden: int
    embed_dim: int
    teacher_forcing: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, xs):
        state, prev = carry
        context, unary, gt, real = xs
        start = self.num_classes + 1  # the embedding row before the first object
        emb = nn.Embed(start + 1, self.embed_dim, name="label_embed")(prev)
        new_state, out = nn.OptimizedLSTMCell(self.hidden, dtype=self.dtype, name="cell")(
            state, jnp.concatenate([context, emb.astype(context.dtype)], axis=-1))
        logits = unary + nn.Dense(self.num_classes + 1, dtype=self.dtype,
                                  kernel_init=nn.initializers.zeros, name="classifier")(
            out).astype(jnp.float32)
        label = predicted_labels(logits)
        if self.teacher_forcing:
            label = jnp.where(gt > 0, gt, label)
        keep = real[:, None]
        state = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_state, state)
        return (state, jnp.where(real, label, prev)), (logits, label)


class MotifsModel(RelationTrunk):
    """Backbone -> RoI features -> object context -> decoder -> edge context -> pair head.

    Attributes (besides the trunk's, `registry.trunk_kwargs`): num_classes, num_predicates; order
    (`ORDERS`); hidden_dim (LSTM width), embed_dim (class embeddings), pos_dim (box position
    embedding); obj_layers, edge_layers (bidirectional LSTM layers); freq_table (the constant
    log-frequency table, None = no bias).
    """

    num_classes: int
    num_predicates: int
    order: str = "leftright"
    hidden_dim: int = 256
    embed_dim: int = 100
    pos_dim: int = 64
    obj_layers: int = 1
    edge_layers: int = 1
    freq_table: ConstantTable | None = None

    @nn.compact
    def __call__(self, inputs: ModelInputs, train: bool = False) -> ModelOutputs:
        c = self.num_classes
        obj_feats, union_feats = trunk_features(self, inputs, train)
        unary = nn.Dense(c + 1, dtype=self.dtype, name="obj_classifier")(obj_feats).astype(
            jnp.float32)
        logits, labels, rel_logits = MotifsRelationHead(
            c, self.num_predicates, self.mode, self.order, self.hidden_dim, self.embed_dim,
            self.pos_dim, self.obj_layers, self.edge_layers, self.dtype, name="relation_head")(
            obj_feats, unary, union_feats, inputs, train)
        if self.freq_table is not None:
            rel_logits = rel_logits + FrequencyBias(self.freq_table, name="freq_bias")(
                labels, inputs.pairs)
        decided = self.mode != "predcls"
        scores = jnp.take_along_axis(jax.nn.softmax(logits, -1), labels[..., None], -1)[..., 0]
        return ModelOutputs(obj_logits=logits, rel_logits=rel_logits,
                            obj_labels=labels if decided else None,
                            obj_scores=scores if decided else None)


class MotifsRelationHead(nn.Module):
    """Everything after the trunk except the unary classifier: (object logits, labels,
    predicate logits without the frequency bias)."""

    num_classes: int
    num_predicates: int
    mode: str
    order: str
    hidden_dim: int
    embed_dim: int
    pos_dim: int
    obj_layers: int
    edge_layers: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obj_feats, unary, union_feats, inputs: ModelInputs, train: bool):
        logits, labels, obj_ctx, order, inverse = MotifsContext(
            self.num_classes, self.mode, self.order, self.hidden_dim, self.embed_dim,
            self.pos_dim, self.obj_layers, self.dtype, name="objects")(
            obj_feats, unary, inputs, train)
        rel_logits = MotifsPairHead(
            self.num_classes, self.num_predicates, self.hidden_dim, self.embed_dim,
            self.edge_layers, self.dtype, name="edges")(obj_ctx, labels, order, inverse,
                                                        union_feats, inputs)
        return logits, labels, rel_logits


class MotifsContext(nn.Module):
    """Object context and decoder. Returns (object logits [B, O, C+1], labels [B, O] (ground
    truth in PredCls, teacher-forced in training, decoded otherwise), object context
    [B, O, 2H] in the objects' own order, the reading order [B, O] and its inverse [B, O])."""

    num_classes: int
    mode: str
    order: str
    hidden_dim: int
    embed_dim: int
    pos_dim: int
    num_layers: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obj_feats, unary, inputs: ModelInputs, train: bool):
        c, mask = self.num_classes, inputs.box_mask
        given = self.mode == "predcls"
        probs = jax.nn.softmax(unary, axis=-1)
        if self.mode == "sgdet" and inputs.obj_dists is not None:
            probs = inputs.obj_dists.astype(jnp.float32)
        class_embed = nn.Embed(c + 1, self.embed_dim, name="class_embed")
        if given:
            emb = class_embed(inputs.labels)
        else:
            emb = probs @ class_embed.embedding
        size = jnp.asarray(inputs.images.shape[1], jnp.float32)
        b = inputs.boxes.astype(jnp.float32) / size
        geometry = jnp.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2,
                              b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], axis=-1)
        pos = nn.relu(nn.Dense(self.pos_dim, dtype=self.dtype, name="pos_embed")(geometry))
        x = jnp.concatenate([obj_feats, emb.astype(obj_feats.dtype), pos.astype(obj_feats.dtype)],
                            -1) * mask[..., None].astype(obj_feats.dtype)
        order = reading_order(sort_keys(inputs.boxes.astype(jnp.float32), probs, self.order),
                              mask)
        lengths = jnp.sum(mask, axis=-1).astype(jnp.int32)
        sorted_mask = _take(mask, order)
        ctx_sorted = BiLSTMStack(self.hidden_dim, self.num_layers, self.dtype, name="obj_ctx")(
            _take(x, order), lengths)

        decoder = nn.scan(DecoderStep, variable_broadcast="params", split_rngs={"params": False},
                          in_axes=1, out_axes=1)(
            c, self.hidden_dim, self.embed_dim, teacher_forcing=train or given,
            dtype=self.dtype, name="decoder")
        batch = x.shape[0]
        zeros = jnp.zeros((batch, self.hidden_dim), self.dtype)
        state = (zeros, zeros)  # the LSTM's (c, h)
        gt = jnp.where(mask, inputs.labels, 0) if (train or given) else jnp.zeros_like(
            inputs.labels)
        start = jnp.full((batch,), c + 1, jnp.int32)
        _, (logits_sorted, labels_sorted) = decoder(
            (state, start), (ctx_sorted, _take(unary, order), _take(gt, order), sorted_mask))
        inverse = jnp.argsort(order, axis=-1)
        logits = _take(logits_sorted, inverse)
        labels = jnp.where(mask, _take(labels_sorted, inverse), 0).astype(jnp.int32)
        if given:
            labels = jnp.where(mask, inputs.labels, 0).astype(jnp.int32)
        return logits, labels, _take(ctx_sorted, inverse), order, inverse


class MotifsPairHead(nn.Module):
    """Edge context over [label embedding ; object context] and the predicate logits."""

    num_classes: int
    num_predicates: int
    hidden_dim: int
    embed_dim: int
    num_layers: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obj_ctx, labels, order, inverse, union_feats, inputs: ModelInputs):
        mask = inputs.box_mask
        emb = nn.Embed(self.num_classes + 1, self.embed_dim, name="label_embed")(labels)
        x = jnp.concatenate([emb.astype(obj_ctx.dtype), obj_ctx], -1) * mask[..., None].astype(
            obj_ctx.dtype)
        lengths = jnp.sum(mask, axis=-1).astype(jnp.int32)
        edge_sorted = BiLSTMStack(self.hidden_dim, self.num_layers, self.dtype, name="edge_ctx")(
            _take(x, order), lengths)
        edge = _take(edge_sorted, inverse)
        width = union_feats.shape[-1]
        both = nn.Dense(2 * width, dtype=self.dtype, name="post_lstm")(edge)
        subj, obj = both[..., :width], both[..., width:]
        s = jnp.take_along_axis(subj, inputs.pairs[..., 0:1], axis=1)
        o = jnp.take_along_axis(obj, inputs.pairs[..., 1:2], axis=1)
        prod = s * o * union_feats
        return nn.Dense(self.num_predicates + 1, dtype=self.dtype, name="rel_compress")(
            prod).astype(jnp.float32)


def build(model_config: Any, ctx: registry.BuildContext) -> MotifsModel:
    opt = lambda key: registry.option(model_config, key, SPEC)  # noqa: E731
    order = str(opt("order"))
    if order not in ORDERS:
        raise ValueError(f"config.model.order: expected one of {ORDERS}, got {order!r}")
    table = None
    if bool(opt("freq_bias")):
        table = frequency_table(ctx.facts.statistics, ctx.num_classes, ctx.num_predicates)
    return MotifsModel(num_classes=ctx.num_classes, num_predicates=ctx.num_predicates,
                       order=order, hidden_dim=int(opt("hidden_dim")),
                       embed_dim=int(opt("embed_dim")), pos_dim=int(opt("pos_dim")),
                       obj_layers=int(opt("obj_layers")), edge_layers=int(opt("edge_layers")),
                       freq_table=table, **registry.trunk_kwargs(model_config, ctx.mode))


SPEC = registry.register(registry.ModelSpec(
    name="motifs", build=build,
    param_groups=("backbone", "roi_features", "obj_classifier", "relation_head"),
    description="Neural Motifs (Zellers et al. 2018): BiLSTM object and edge contexts in a box "
                "order, an object decoder, and the frequency bias",
    requires=("fg_matrix",), choices=dict(order=ORDERS),
    config=dict(order="leftright", hidden_dim=256, embed_dim=100, pos_dim=64, obj_layers=1,
                edge_layers=1, freq_bias=True)))
