"""From `ModelOutputs` to the evaluator's per-image prediction dicts.

`predict_scores` runs on device (inside or after the jitted step) and reduces the logits to what
the evaluator needs: object labels and scores, and predicate softmax scores. `to_predictions`
then splits the batch on the host into one dict per image, keeping only real boxes and pairs.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax.models.interface import ModelInputs, ModelOutputs

MODES = ("predcls", "sgcls", "sgdet")


def predict_scores(outputs: ModelOutputs, mode: str, labels: jnp.ndarray | None = None
                   ) -> dict[str, jnp.ndarray]:
    """Jittable: obj_labels [B,O] int32, obj_scores [B,O], rel_scores [B,M,P+1] (softmax).

    PredCls: labels are the given ground truth (`labels`, required) with score 1.
    SGCls / SGDet: the argmax over classes 1..C of the object softmax and its probability.
    """
    if mode not in MODES:
        raise ValueError(f"predict_scores: mode must be one of {MODES}, got {mode!r}")
    rel_scores = jax.nn.softmax(outputs.rel_logits.astype(jnp.float32), axis=-1)
    if mode == "predcls":
        if labels is None:
            raise ValueError("predict_scores: PredCls needs the ground-truth labels [B, O]")
        obj_labels = labels.astype(jnp.int32)
        obj_scores = jnp.ones(labels.shape, jnp.float32)
    else:
        probs = jax.nn.softmax(outputs.obj_logits.astype(jnp.float32), axis=-1)
        obj_labels = jnp.argmax(probs[..., 1:], axis=-1).astype(jnp.int32) + 1
        obj_scores = jnp.take_along_axis(probs, obj_labels[..., None], axis=-1)[..., 0]
    return {"obj_labels": obj_labels, "obj_scores": obj_scores, "rel_scores": rel_scores}


def to_predictions(outputs: ModelOutputs | dict[str, Any], inputs: ModelInputs, mode: str
                   ) -> list[dict[str, np.ndarray]]:
    """Per-image prediction dicts (host-side NumPy) for the evaluator.

    Args:
      outputs: `ModelOutputs`, or the dict from `predict_scores` (cheaper to transfer).
      inputs: the `ModelInputs` of the batch (boxes, masks, pairs, labels).
      mode: "predcls" | "sgcls" | "sgdet".

    Returns one dict per image with boxes [N,4] (canvas pixels; divide by the batch's scale for
    original pixels), labels [N], scores [N], rel_pairs [K,2] (indices into those N boxes),
    rel_scores [K,P+1]. Real boxes are assumed to come first in each image (the batch layout);
    real pairs are kept in their order.
    """
    if isinstance(outputs, ModelOutputs):
        outputs = predict_scores(outputs, mode, inputs.labels)
    scores = {k: np.asarray(v) for k, v in outputs.items()}
    boxes = np.asarray(inputs.boxes)
    box_mask = np.asarray(inputs.box_mask).astype(bool)
    pairs = np.asarray(inputs.pairs)
    pair_mask = np.asarray(inputs.pair_mask).astype(bool)
    preds = []
    for b in range(boxes.shape[0]):
        n = int(box_mask[b].sum())
        if not box_mask[b, :n].all():
            raise ValueError("to_predictions: inputs.box_mask must mark the real boxes first "
                             f"(image {b} has padding before a real box)")
        keep = pair_mask[b]
        rel_pairs = pairs[b][keep].astype(np.int64)
        if rel_pairs.size and rel_pairs.max() >= n:
            raise ValueError(f"to_predictions: image {b} has a real pair pointing at a padded box")
        preds.append({
            "boxes": boxes[b, :n].astype(np.float32),
            "labels": scores["obj_labels"][b, :n].astype(np.int64),
            "scores": scores["obj_scores"][b, :n].astype(np.float32),
            "rel_pairs": rel_pairs,
            "rel_scores": scores["rel_scores"][b][keep].astype(np.float32),
        })
    return preds
