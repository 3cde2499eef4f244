"""Scene graphs for arbitrary images from a trained run (SGDet: detector + relation model).

Contract (stable; `--mode predict` and `sgg_jax.load(ckpt).predict(image)` build on it):

    exp, params = restore_for_inference("runs/imp")      # a training workdir (or a stage's
                                                         # checkpoint directory inside one)
    sgdet = make_sgdet_fn(exp, params)
    out = sgdet(images, image_sizes)

- `restore_for_inference(workdir_or_ckpt: str, overrides=None) -> tuple[Experiment, params]`
  rebuilds the run from its directory alone: the saved config (`<workdir>/config.json`) and
  dataset facts (`<workdir>/dataset/`: vocabularies, statistics), so no dataset is needed, and
  restores the parameters of the finished run (they include the trained detector under the
  top-level group "detector"). `overrides` (dotted keys -> values, or a ConfigDict) may change
  evaluation-only fields (predict.*, input.eval_batch_size, eval.*); a model or data field that
  differs from the run's is refused (`runs.RunConfigError`). An unfinished run is refused
  (`runs.UnfinishedRunError`) unless `allow_partial=True`. Raises FileNotFoundError when there
  is no config.json or no checkpoint.
- `make_sgdet_fn(exp, params)` returns a function
  `(images: np.ndarray uint8 [B, S, S, 3], image_sizes: np.ndarray [B, 2] (h, w) of the content
  inside the canvas) -> dict[str, np.ndarray]`, S = `exp.config.input.image_size`. The image is
  expected at the top-left of the S x S canvas, resized so that its long side is <= S (what the
  data pipeline does: `data_pipelines.pipeline`). The jitted computation is compiled once per
  batch size B. Output (all NumPy, D = config.model.detector.detections_per_image,
  M = D * (D - 1), every ordered pair of distinct detections):
    boxes      [B, D, 4]     float32 x1y1x2y2 in canvas pixels (divide by the resize scale for
                             original pixels)
    box_mask   [B, D]        bool, True for real detections (real ones first)
    labels     [B, D]        int32 object classes 1..C (0 in padding)
    scores     [B, D]        float32 object scores
    rel_pairs  [B, M, 2]     int32 (subject, object) indices into D
    pair_mask  [B, M]        bool, True for pairs of two real detections (real pairs first;
                             with config.eval.sgdet_must_overlap only overlapping pairs)
    rel_scores [B, M, P + 1] float32 softmax over predicates, column 0 = no relation
  The triplet score of (pair m, predicate p >= 1) is
  rel_scores[b, m, p] * scores[b, s] * scores[b, o] (the evaluator's ranking).
  Models that caption regions (their SGDet hooks add them, e.g. a region RPN's Q proposals,
  refined by the model's box heads with config.eval.sgdet_refine_boxes) add:
    region_boxes  [B, Q, 4]  float32 canvas pixels;  region_mask [B, Q] bool (real first)
    region_scores [B, Q]     float32 objectness probabilities (the proposals', or refined)
    captions      [B, Q, L]  int32 token ids (<start>, words, <end>, 0 padding; words from the
                             run's caption vocabulary, `exp.facts.idx_to_word`)
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines.facts import DatasetFacts
from sgg_jax.models.registry import DETECTOR_GROUP
from sgg_jax.training import eval_loop, experiment, runs

log = logging.getLogger("sgg_jax")


def run_config(workdir: str, overrides: Any = None, explicit: Any = None
               ) -> ml_collections.ConfigDict:
    """The config to use a run with: its saved config.json with `overrides` applied to
    evaluation-only fields (`runs.resolve_run_config`). `overrides`: a ConfigDict or a mapping
    of dotted keys; `explicit`: which of its keys were asked for (default: all of them)."""
    saved = runs.load_run_config(workdir)
    requested = overrides
    if isinstance(overrides, Mapping) and not isinstance(overrides, ml_collections.ConfigDict):
        requested = ml_collections.ConfigDict(saved.to_dict())
        for key, value in overrides.items():
            runs.set_field(requested, key, value)
    if explicit is None:
        explicit = runs.flatten(requested).keys() if isinstance(
            overrides, ml_collections.ConfigDict) else (overrides or {}).keys()
    config, ignored = runs.resolve_run_config(saved, requested, explicit, source=workdir)
    if ignored:
        log.info("using %s/%s; the given config's values of %d fields that differ from it are "
                 "not used (only command-line overrides are): %s", workdir, runs.CONFIG_FILE, len(ignored), ", ".join(ignored[:8])
                 + (" ..." if len(ignored) > 8 else ""))
    return config


def restore_for_inference(workdir_or_ckpt: str, overrides: Any = None, *,
                          explicit: Any = None, allow_partial: bool = False
                          ) -> tuple[Any, Any]:
    """(Experiment, params) of a trained run, from its directory alone (module docstring)."""
    workdir, ckpt = runs.find_run(workdir_or_ckpt)
    config = run_config(workdir, overrides, explicit)
    with config.unlocked():
        config.distributed.initialize = False  # inference is one process
        config.distributed.coordinator_address = ""
    try:
        facts = DatasetFacts.load(runs.facts_dir(workdir))
    except FileNotFoundError:
        log.warning("%s has no saved dataset facts (trained before runs kept them): opening "
                    "its dataset for the vocabularies", workdir)
        facts = None
    exp = experiment.setup(config, workdir, facts=facts, training=False)
    params, partial = experiment.restore_final_params(
        exp, jax.random.key(int(config.seed)), "" if ckpt == workdir else ckpt,
        bool(allow_partial or config.eval.get("allow_partial", False)))
    if partial:
        log.warning("%s: stage '%s' is unfinished (step %d of %d); predicting with it anyway",
                    workdir, partial["stage"], partial["step"], partial["num_steps"])
    return exp, params


# Optional outputs (caption regions) and their dtypes.
_REGION_OUTPUTS = {"region_boxes": np.float32, "region_mask": bool, "region_scores": np.float32,
                   "captions": np.int32}


def _canvas_inputs(exp: Any, who: str, images: Any, image_sizes: Any, detector_images: Any,
                   detector_image_sizes: Any) -> tuple[Any, Any, Any, Any]:
    """Checks a batch of canvases (and the detector's own, when the run has them) and returns
    them as device arrays; a wrong shape or size raises ValueError naming `who`."""
    size = int(exp.config.input.image_size)
    det_size = int(exp.config.input.get("detector_image_size", 0) or 0)
    images, sizes = np.asarray(images), np.asarray(image_sizes)
    if det_size and det_size != size:
        if detector_images is None or np.asarray(detector_images).shape[1:] != (
                det_size, det_size, 3):
            raise ValueError(f"{who}: this run's detector reads {det_size} px canvases "
                             "(config.input.detector_image_size): pass detector_images uint8 "
                             f"[B, {det_size}, {det_size}, 3] and detector_image_sizes")
        detector_images = jnp.asarray(detector_images)
        detector_image_sizes = jnp.asarray(detector_image_sizes, jnp.int32)
    else:
        detector_images = detector_image_sizes = None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"{who}: images must be uint8 [B, {size}, {size}, 3] "
                         f"(config.input.image_size={size}), got {images.dtype} {images.shape}")
    if sizes.shape != (images.shape[0], 2):
        raise ValueError(f"{who}: image_sizes must be [B, 2] (h, w) with B = "
                         f"{images.shape[0]}, got shape {sizes.shape}")
    if np.any(sizes < 1) or np.any(sizes > size):
        raise ValueError(f"{who}: image_sizes (h, w) must lie in [1, {size}], got "
                         f"{sizes.tolist()}")
    return (jnp.asarray(images), jnp.asarray(sizes, jnp.int32), detector_images,
            detector_image_sizes)


def _host_outputs(out: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The module docstring's output dict, as NumPy."""
    out = jax.device_get(out)
    regions = {k: np.asarray(out[k], dtype) for k, dtype in _REGION_OUTPUTS.items() if k in out}
    return {**regions, "boxes": np.asarray(out["boxes"], np.float32),
            "box_mask": np.asarray(out["box_mask"], bool),
            "labels": np.asarray(out["labels"], np.int32),
            "scores": np.asarray(out["scores"], np.float32),
            "rel_pairs": np.asarray(out["pairs"], np.int32),
            "pair_mask": np.asarray(out["pair_mask"], bool),
            "rel_scores": np.asarray(out["rel_scores"], np.float32)}


def make_sgdet_fn(exp: Any, params: Any) -> Callable[..., dict]:
    """The jitted SGDet predictor of the module docstring: (images, image_sizes) -> arrays; a
    run whose detector reads its own canvas (`config.input.detector_image_size`) also takes
    `detector_images` / `detector_image_sizes`, the same images letterboxed at that size."""
    if DETECTOR_GROUP not in params:
        raise ValueError(f"{exp.workdir}: this run has no detector (config.eval.modes="
                         f"{exp.config.eval.modes!r} lacks sgdet), so it cannot find objects "
                         "in images alone: give the boxes (predict with boxes=...)")
    step = jax.jit(eval_loop.make_sgdet_step(exp))

    def predict(images: np.ndarray, image_sizes: np.ndarray, detector_images=None,
                detector_image_sizes=None) -> dict[str, np.ndarray]:
        return _host_outputs(step(params, *_canvas_inputs(
            exp, "make_sgdet_fn", images, image_sizes, detector_images, detector_image_sizes)))

    return predict


def make_given_boxes_fn(exp: Any, params: Any) -> Callable[..., dict]:
    """The jitted predictor for boxes found elsewhere (a user's detector, a hand annotation):
    (images, image_sizes, boxes [B, G, 4] canvas pixels, box_mask [B, G], labels [B, G] int
    or None, detector_images=None, detector_image_sizes=None) -> the module docstring's
    arrays, with the given boxes in the given order (G = config.input.max_objects at most).
    With labels: PredCls (the labels are kept, scores 1); without: SGCls (the model
    classifies each box). Compiled once per mode and batch size."""
    steps: dict[str, Callable] = {}
    max_objects = int(exp.config.input.max_objects)

    def predict(images: np.ndarray, image_sizes: np.ndarray, boxes: np.ndarray,
                box_mask: np.ndarray, labels: np.ndarray | None = None, detector_images=None,
                detector_image_sizes=None) -> dict[str, np.ndarray]:
        mode = "predcls" if labels is not None else "sgcls"
        canvases = _canvas_inputs(exp, "make_given_boxes_fn", images, image_sizes,
                                  detector_images, detector_image_sizes)
        boxes, box_mask = np.asarray(boxes, np.float32), np.asarray(box_mask, bool)
        b = canvases[0].shape[0]
        if boxes.ndim != 3 or boxes.shape[0] != b or boxes.shape[2] != 4 or (
                boxes.shape[1] > max_objects) or box_mask.shape != boxes.shape[:2]:
            raise ValueError(f"make_given_boxes_fn: boxes must be [B={b}, G, 4] with G <= "
                             f"{max_objects} (config.input.max_objects) and box_mask [B, G], "
                             f"got {boxes.shape} and {box_mask.shape}")
        labels = np.zeros(box_mask.shape, np.int32) if labels is None else np.asarray(
            labels, np.int32)
        if mode not in steps:
            steps[mode] = jax.jit(eval_loop.make_given_boxes_step(exp, mode))
        images, sizes, det_images, det_sizes = canvases
        return _host_outputs(steps[mode](params, images, sizes, jnp.asarray(boxes),
                                         jnp.asarray(box_mask), jnp.asarray(labels),
                                         det_images, det_sizes))

    return predict


__all__ = ["make_given_boxes_fn", "make_sgdet_fn", "restore_for_inference", "run_config"]
