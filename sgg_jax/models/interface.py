"""The contract between the trainer / evaluator and every relation model.

A relation model is a Flax Linen module called as
`model.apply(variables, inputs: ModelInputs, train: bool, rngs=...)` and returning `ModelOutputs`.
All shapes are fixed (padded with masks) so the step compiles once.
"""
from __future__ import annotations

import flax.struct
import jax


@flax.struct.dataclass
class ModelInputs:
    """What a relation model sees for a batch of B images.

    Attributes:
      images: [B, S, S, 3] uint8 (the model normalises), padded canvas from `Batch.images`.
      image_sizes: [B, 2] int32 (height, width) of the content inside the canvas.
      boxes: [B, O, 4] float32 x1y1x2y2 in canvas pixels (ground-truth boxes in PredCls/SGCls,
        detections in SGDet).
      box_mask: [B, O] bool.
      labels: [B, O] int32 object classes 1..C: the ground truth in training, PredCls and
        SGCls (targets for the loss; a model in SGCls must not read them for prediction), the
        detector's labels in SGDet.
      pairs: [B, M, 2] int32 (subject, object) indices into the O boxes.
      pair_mask: [B, M] bool.
      region_boxes: optional [B, Q, 4] float32 caption-region boxes in canvas pixels (MSDN; the
        ground-truth regions of `Batch.region_boxes`, or region proposals).
      region_tokens: optional [B, Qc, L] int32 caption tokens (0 pad, 1 <start>, 2 <end>) of the
        first Qc <= Q regions (Qc = Q for the ground-truth regions), the teacher-forcing targets
        of a captioner; never an input to its predictions.
      region_mask: optional [B, Q] bool.
      proposal_boxes: optional [B, R, 4] float32 extra object RoIs whose only use is training
        a box-refinement head (MSDN: the detector's RPN proposals matched to ground truth); they
        take no part in message passing or in the other outputs.
      obj_dists: optional [B, O, C + 1] float32 class probabilities of the boxes from the
        detector (SGDet only: the detector's softmax per detection; Motifs and KERN read them
        as their object context's class input). Never ground truth.
      Models that do not use regions, proposals or detector distributions ignore these fields
      (None by default).
    """

    images: jax.Array
    image_sizes: jax.Array
    boxes: jax.Array
    box_mask: jax.Array
    labels: jax.Array
    pairs: jax.Array
    pair_mask: jax.Array
    region_boxes: jax.Array | None = None
    region_tokens: jax.Array | None = None
    region_mask: jax.Array | None = None
    proposal_boxes: jax.Array | None = None
    obj_dists: jax.Array | None = None


@flax.struct.dataclass
class ModelOutputs:
    """Logits of a relation model.

    Attributes:
      obj_logits: [B, O, C + 1] object class logits (column 0 = background).
      rel_logits: [B, M, P + 1] predicate logits per pair (column 0 = no relation).
      aux: extra outputs a model wants to expose (e.g. region captions); may be empty.
      obj_labels: optional [B, O] int32 labels 1..C the model decided itself (e.g. Motifs'
        decoder in SGCls / SGDet); when set they replace the argmax of `obj_logits` in
        SGCls / SGDet predictions (PredCls always reports the given labels).
      obj_scores: optional [B, O] float32 scores of those labels (default: their softmax
        probability in `obj_logits`).
      losses: loss terms the model computes itself, {name: scalar} (e.g. a learnable-NMS or
        adversarial term); a stage trains on those it names in its `losses`, weighted by
        `config.loss.weights.<name>` (1 when absent). Declared in its ModelSpec.losses.
    """

    obj_logits: jax.Array
    rel_logits: jax.Array
    aux: dict = flax.struct.field(default_factory=dict)
    obj_labels: jax.Array | None = None
    obj_scores: jax.Array | None = None
    losses: dict = flax.struct.field(default_factory=dict)
