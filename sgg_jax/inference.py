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
"""
from __future__ import annotations
