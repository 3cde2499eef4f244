"""Scene graphs for arbitrary images from a trained run (SGDet: detector + relation model).

Contract (stable; `--mode predict` and `sgg_jax.load(ckpt).predict(image)` build on it):

    exp, params = restore_for_inference("runs/imp")      # a training workdir (or a stage's
                                                         # checkpoint directory inside one)
    sgdet = make_sgdet_fn(exp, params)
    out = sgdet(images, image_sizes)

- `restore_for_inference(workdir_or_ckpt: str) -> tuple[Experiment, params]` reads the run's
  saved config (`<workdir>/config.json`, written at the start of training) and restores the
  parameters of the last finished stage (they include the trained detector under the top-level
  group "detector"). Raises FileNotFoundError when there is no config.json or no checkpoint.
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
  MSDN runs add their caption regions (the region RPN's proposals, Q =
  config.model.region_rpn.num_proposals) and the greedy caption of each; with
  config.eval.sgdet_refine_boxes (configs/msdn.py) the boxes (objects and regions) are moved by
  MSDN's box heads and the region scores are MSDN's region objectness:
    region_boxes  [B, Q, 4]  float32 canvas pixels;  region_mask [B, Q] bool (real first)
    region_scores [B, Q]     float32 objectness probabilities (region RPN's, or MSDN's)
    captions      [B, Q, L]  int32 token ids (<start>, words, <end>, 0 padding; words from the
                             run's caption vocabulary, `exp.data.idx_to_word`)
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

log = logging.getLogger("sgg_jax")

CONFIG_FILE = "config.json"


def _find_run(path: str) -> tuple[str, str]:
    """(workdir holding config.json, checkpoint argument for restore) for a workdir, its
    `checkpoints` directory or one stage's checkpoint directory."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"restore_for_inference: {path!r} does not exist (expected a "
                                "training workdir or <workdir>/checkpoints/<stage>)")
    for root, ckpt in ((path, ""), (os.path.dirname(path), ""),
                       (os.path.dirname(os.path.dirname(path)), path)):
        if os.path.isfile(os.path.join(root, CONFIG_FILE)):
            return root, ckpt
    raise FileNotFoundError(f"restore_for_inference: no {CONFIG_FILE} in {path!r} or its run "
                            "directory; runs trained by `python -m sgg_jax.main` write it at the "
                            "start of training")


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved in `<workdir>/config.json` (multi-host settings cleared)."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); expected the run's saved config") from e
    if not isinstance(raw, dict) or "model" not in raw or "train" not in raw:
        raise ValueError(f"{path}: expected a saved sgg_jax config (with 'model' and 'train')")
    config = ml_collections.ConfigDict(raw)
    config.distributed.initialize = False  # inference is one process
    config.distributed.coordinator_address = ""
    return config


def restore_for_inference(workdir_or_ckpt: str) -> tuple[Any, Any]:
    """(Experiment, params) of a trained run: its saved config and the parameters of the last
    finished stage. The dataset named by the config is opened (prepared if needed) for the
    class counts and, for FREQ, the frequency statistics."""
    from sgg_jax.training import trainer

    workdir, ckpt = _find_run(workdir_or_ckpt)
    config = load_run_config(workdir)
    exp = trainer.setup(config, workdir)
    params = trainer.restore_final_params(exp, jax.random.key(int(config.seed)), ckpt)
    if "detector" not in params:
        raise ValueError(f"{workdir}: this run has no detector (config.eval.modes={config.eval.modes!r} "
                         "lacks sgdet), so it cannot predict from images alone")
    return exp, params


# Optional outputs (MSDN's caption regions) and their dtypes.
_REGION_OUTPUTS = {"region_boxes": np.float32, "region_mask": bool, "region_scores": np.float32,
                   "captions": np.int32}


def make_sgdet_fn(exp: Any, params: Any) -> Callable[[np.ndarray, np.ndarray], dict]:
    """The jitted SGDet predictor of the module docstring: (images, image_sizes) -> arrays."""
    from sgg_jax.training import trainer

    size = int(exp.config.input.image_size)
    step = jax.jit(trainer.make_sgdet_step(exp))

    def predict(images: np.ndarray, image_sizes: np.ndarray) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        sizes = np.asarray(image_sizes)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"make_sgdet_fn: images must be uint8 [B, {size}, {size}, 3] "
                             f"(config.input.image_size={size}), got {images.dtype} {images.shape}")
        if sizes.shape != (images.shape[0], 2):
            raise ValueError(f"make_sgdet_fn: image_sizes must be [B, 2] (h, w) with B = "
                             f"{images.shape[0]}, got shape {sizes.shape}")
        if np.any(sizes < 1) or np.any(sizes > size):
            raise ValueError(f"make_sgdet_fn: image_sizes (h, w) must lie in [1, {size}], got "
                             f"{sizes.tolist()}")
        out = jax.device_get(step(params, jnp.asarray(images), jnp.asarray(sizes, jnp.int32)))
        regions = {k: np.asarray(out[k], dtype) for k, dtype in _REGION_OUTPUTS.items()
                   if k in out}
        return {**regions, "boxes": np.asarray(out["boxes"], np.float32),
                "box_mask": np.asarray(out["box_mask"], bool),
                "labels": np.asarray(out["labels"], np.int32),
                "scores": np.asarray(out["scores"], np.float32),
                "rel_pairs": np.asarray(out["pairs"], np.int32),
                "pair_mask": np.asarray(out["pair_mask"], bool),
                "rel_scores": np.asarray(out["rel_scores"], np.float32)}

    return predict


__all__ = ["make_sgdet_fn", "restore_for_inference", "load_run_config"]
