"""Evaluation of a relation model over a split: jitted scoring on device, ranking and matching on
host with `sgg_jax.evaluation.SGGEvaluator`.

Only small arrays leave the device: per image the object labels and scores and the softmaxed
predicate scores of every ordered pair. Ground truth is taken from the batch (original pixels =
canvas pixels / scale); objects beyond `input.max_objects` were dropped by the pipeline and are
counted in its statistics.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from data_pipelines.batch import Batch
from sgg_jax import relation_sampling
from sgg_jax.models import postprocess
from sgg_jax.training.steps import model_inputs


def make_score_step(model: nn.Module, mode: str, model_state: dict | None = None) -> Callable:
    """params, batch -> per-image labels, scores and predicate probabilities of all pairs.

    `model_state`: the model's non-trainable collections (e.g. frozen batch-norm statistics)."""
    model_state = dict(model_state or {})

    def score(params: Any, batch: Batch) -> dict[str, jax.Array]:
        num_obj = batch.boxes.shape[1]
        pairs, pair_mask = relation_sampling.all_pairs(batch.box_mask, num_obj * (num_obj - 1))
        outputs = model.apply({"params": params, **model_state}, model_inputs(batch, pairs, pair_mask),
                              train=False)
        scored = postprocess.predict_scores(outputs, mode, labels=batch.labels)
        return dict(labels=scored["obj_labels"], scores=scored["obj_scores"], pairs=pairs,
                    pair_mask=pair_mask, rel_scores=scored["rel_scores"])

    return score


def batch_to_examples(batch: Batch, scored: dict[str, np.ndarray]) -> Iterable[tuple[dict, dict]]:
    """Yields (groundtruth, prediction) dicts for the real images of a host-side batch."""
    for b in range(batch.images.shape[0]):
        if batch.image_ids[b] < 0:
            continue
        scale = float(batch.scales[b])
        obj = np.asarray(batch.box_mask[b], bool)
        boxes = np.asarray(batch.boxes[b][obj], np.float64) / scale
        rel = np.asarray(batch.relations[b][np.asarray(batch.rel_mask[b], bool)], np.int64)
        gt = dict(boxes=boxes, labels=np.asarray(batch.labels[b][obj], np.int64), relations=rel)
        pm = np.asarray(scored["pair_mask"][b], bool)
        pred = dict(boxes=boxes, labels=np.asarray(scored["labels"][b][obj], np.int64),
                    scores=np.asarray(scored["scores"][b][obj], np.float64),
                    rel_pairs=np.asarray(scored["pairs"][b][pm], np.int64),
                    rel_scores=np.asarray(scored["rel_scores"][b][pm], np.float64))
        yield gt, pred


def gather_to_host(tree: Any) -> Any:
    """Global (possibly multi-process) arrays -> full numpy arrays on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
