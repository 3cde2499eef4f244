"""From `ModelOutputs` to what the evaluator needs, on device.

`predict_scores` runs inside the jitted step and reduces the logits to object labels and
scores and predicate softmax scores (the evaluation loop then splits the batch per image on
the host: `sgg_jax.training.eval_loop`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sgg_jax.models.interface import ModelOutputs
from sgg_jax.models.registry import MODES


def predict_scores(outputs: ModelOutputs, mode: str, labels: jnp.ndarray | None = None
                   ) -> dict[str, jnp.ndarray]:
    """Jittable: obj_labels [B,O] int32, obj_scores [B,O], rel_scores [B,M,P+1] (softmax).

    PredCls: labels are the given ground truth (`labels`, required) with score 1.
    SGCls / SGDet: the model's own `obj_labels` / `obj_scores` when it sets them, else the
    argmax over classes 1..C of the object softmax and its probability.
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
        obj_labels = (jnp.argmax(probs[..., 1:], axis=-1).astype(jnp.int32) + 1
                      if outputs.obj_labels is None else outputs.obj_labels.astype(jnp.int32))
        obj_scores = (jnp.take_along_axis(probs, obj_labels[..., None], axis=-1)[..., 0]
                      if outputs.obj_scores is None else
                      outputs.obj_scores.astype(jnp.float32))
    return {"obj_labels": obj_labels, "obj_scores": obj_scores, "rel_scores": rel_scores}
