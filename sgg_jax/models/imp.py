"""IMP: iterative message passing (Xu et al., CVPR 2017), as re-implemented in neural-motifs/SGB.

Node states start from the object RoI features, edge states from the union-box features (each
through a linear "unary" map and one GRU step from a zero state). Then `num_iterations` rounds:

- edge update: message = g_s * h_subject + g_o * h_object, with scalar gates
  g_s = sigmoid(w_s . [h_subject, h_edge]), g_o = sigmoid(w_o . [h_object, h_edge]);
  h_edge <- GRU_edge(message, h_edge).
- node update (from the edge states of the same round's start): each node sums
  sigmoid(w_out . [h_node, h_edge]) * h_edge over its outgoing edges (as subject) and
  sigmoid(w_in . [h_node, h_edge]) * h_edge over its incoming edges (as object);
  h_node <- GRU_node(sum, h_node).

Sums over edges use `jax.ops.segment_sum` per image under vmap (fixed shapes, no Python loops over
boxes); padded pairs send no messages, padded boxes have zero input features and are never the
end of a real pair. Object logits come from the final node states (`obj_classifier`), predicate
logits from the final edge states (inside `relation_head`).

With `obj_roi_residual` (not in Xu et al.), the object logits are a linear classifier on the
object RoI features (`obj_classifier`, what the `objects` stage trains with the backbone, as a
detector's box classifier is pre-trained in neural-motifs / Scene-Graph-Benchmark) plus a
zero-initialised linear classifier on the final node states (`relation_head/obj_classifier`,
trained with the message passing in the `relations` stage): the node states learn a context
correction to the unary prediction instead of replacing it.
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


def _gather_nodes(nodes: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """nodes [B, O, H], index [B, M] -> [B, M, H]."""
    return jnp.take_along_axis(nodes, index[..., None], axis=1)


def _scatter_edges(values: jnp.ndarray, index: jnp.ndarray, num_nodes: int) -> jnp.ndarray:
    """Sum edge values [B, M, H] into their nodes index [B, M] -> [B, O, H]."""
    return jax.vmap(lambda v, i: jax.ops.segment_sum(v, i, num_segments=num_nodes))(values, index)


class Gate(nn.Module):
    """Scalar gate sigmoid(w . [a, b] + c) per row."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
        return nn.sigmoid(nn.Dense(1, dtype=self.dtype)(jnp.concatenate([a, b], axis=-1)))


class IMPRelationHead(nn.Module):
    """Message passing between node and edge GRU states.

    Returns (node states [B, O, H], rel logits [B, M, P+1], node object logits [B, O, C+1] or
    None). The node object logits exist when `num_obj_classes` > 0 (C, for `obj_roi_residual`):
    a linear map of the final node states initialised to zero, so it adds nothing until the
    relation stage trains it.
    """

    num_predicates: int
    hidden_dim: int = 512
    num_iterations: int = 3
    dtype: Any = jnp.float32
    num_obj_classes: int = 0

    @nn.compact
    def __call__(self, obj_feats: jnp.ndarray, union_feats: jnp.ndarray, pairs: jnp.ndarray,
                 pair_mask: jnp.ndarray, box_mask: jnp.ndarray
                 ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray | None]:
        b, o = obj_feats.shape[:2]
        h = self.hidden_dim
        pmask = pair_mask[..., None].astype(self.dtype)
        bmask = box_mask[..., None].astype(self.dtype)
        node_in = nn.Dense(h, dtype=self.dtype, name="obj_unary")(obj_feats) * bmask
        edge_in = nn.relu(nn.Dense(h, dtype=self.dtype, name="edge_unary")(union_feats)) * pmask

        node_gru = nn.GRUCell(h, dtype=self.dtype, name="node_gru")
        edge_gru = nn.GRUCell(h, dtype=self.dtype, name="edge_gru")
        nodes, _ = node_gru(jnp.zeros(node_in.shape, self.dtype), node_in)
        edges, _ = edge_gru(jnp.zeros(edge_in.shape, self.dtype), edge_in)

        sub_gate = Gate(self.dtype, name="sub_vert_gate")
        obj_gate = Gate(self.dtype, name="obj_vert_gate")
        out_gate = Gate(self.dtype, name="out_edge_gate")
        in_gate = Gate(self.dtype, name="in_edge_gate")
        subj_idx, obj_idx = pairs[..., 0], pairs[..., 1]
        for _ in range(self.num_iterations):
            sub_vert = _gather_nodes(nodes, subj_idx)
            obj_vert = _gather_nodes(nodes, obj_idx)
            edge_msg = sub_gate(sub_vert, edges) * sub_vert + obj_gate(obj_vert, edges) * obj_vert
            new_edges, _ = edge_gru(edges, edge_msg)

            out_msg = out_gate(sub_vert, edges) * edges * pmask
            in_msg = in_gate(obj_vert, edges) * edges * pmask
            node_msg = (_scatter_edges(out_msg, subj_idx, o) + _scatter_edges(in_msg, obj_idx, o))
            nodes, _ = node_gru(nodes, node_msg)
            edges = new_edges
        rel_logits = nn.Dense(self.num_predicates + 1, dtype=self.dtype, name="rel_classifier")(
            edges)
        node_obj_logits = None
        if self.num_obj_classes:
            node_obj_logits = nn.Dense(self.num_obj_classes + 1, dtype=self.dtype,
                                       kernel_init=nn.initializers.zeros,
                                       name="obj_classifier")(nodes)
        return nodes, rel_logits, node_obj_logits


class IMPModel(RelationTrunk):
    """IMP: backbone -> RoI features (objects, union boxes) -> message passing -> classifiers.

    Attributes:
      num_classes, num_predicates: C and P (logits have C + 1 and P + 1 columns).
      mode: "predcls" | "sgcls" | "sgdet". IMP never reads the labels as input; in PredCls the
        evaluator uses the ground-truth labels instead of `obj_logits`.
      freq_table: optional Motifs frequency table (`ConstantTable` [C+1, C+1, P+1]); when set,
        its log-frequencies for the pair's classes (ground truth in PredCls and in training,
        the argmax of `obj_logits` in SGCls / SGDet evaluation) are added to the predicate logits, as Scene-Graph-Benchmark's
        IMP predictor does with PREDICT_USE_BIAS. None = Xu et al.'s IMP (no bias).
      obj_roi_residual: object logits = `obj_classifier`(object RoI features) +
        `relation_head/obj_classifier`(final node states, zero-initialised) instead of Xu et
        al.'s `obj_classifier`(final node states). Same parameter groups, so the `objects` stage
        (relation head frozen) trains exactly a RoI-feature classifier with the backbone.
    """

    num_classes: int
    num_predicates: int
    hidden_dim: int = 512
    num_iterations: int = 3
    freq_table: ConstantTable | None = None
    obj_roi_residual: bool = False

    @nn.compact
    def __call__(self, inputs: ModelInputs, train: bool = False) -> ModelOutputs:
        obj_feats, union_feats = trunk_features(self, inputs, train)
        nodes, rel_logits, node_obj_logits = IMPRelationHead(
            self.num_predicates, self.hidden_dim, self.num_iterations, self.dtype,
            num_obj_classes=self.num_classes if self.obj_roi_residual else 0,
            name="relation_head")(
            obj_feats, union_feats, inputs.pairs, inputs.pair_mask, inputs.box_mask)
        obj_classifier = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="obj_classifier")
        if self.obj_roi_residual:
            obj_logits = obj_classifier(obj_feats) + node_obj_logits
        else:
            obj_logits = obj_classifier(nodes)
        obj_logits = obj_logits.astype(jnp.float32)
        rel_logits = rel_logits.astype(jnp.float32)
        if self.freq_table is not None:
            # Ground truth in PredCls and in training (teacher forcing, as neural-motifs does for
            # its bias), the model's own argmax in SGCls / SGDet evaluation.
            use_gt = self.mode == "predcls" or train
            labels = inputs.labels if use_gt else predicted_labels(obj_logits)
            rel_logits = rel_logits + FrequencyBias(self.freq_table, name="freq_bias")(
                labels, inputs.pairs)
        return ModelOutputs(obj_logits=obj_logits, rel_logits=rel_logits)


def build(model_config: Any, ctx: registry.BuildContext) -> IMPModel:
    opt = lambda key: registry.option(model_config, key, SPEC)
    table = None
    if bool(opt("freq_bias")):
        table = frequency_table(ctx.facts.statistics, ctx.num_classes, ctx.num_predicates)
    return IMPModel(num_classes=ctx.num_classes, num_predicates=ctx.num_predicates,
                    hidden_dim=int(opt("hidden_dim")), num_iterations=int(opt("num_iterations")),
                    freq_table=table, obj_roi_residual=bool(opt("obj_roi_residual")),
                    **registry.trunk_kwargs(model_config, ctx.mode))


SPEC = registry.register(registry.ModelSpec(
    name="imp", build=build,
    param_groups=("backbone", "roi_features", "obj_classifier", "relation_head"),
    description="IMP (Xu et al. 2017): iterative message passing between object and edge GRUs",
    config=dict(hidden_dim=512, num_iterations=3, freq_bias=False, obj_roi_residual=False)))
