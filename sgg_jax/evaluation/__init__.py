"""Scene graph evaluation reproducing neural-motifs / Scene-Graph-Benchmark and MSDN / F-Net.

Public API:
  SGGEvaluator(mode, num_predicates, ks=(20, 50, 100), zero_shot_triplets=None,
               iou_threshold=0.5, *, iou_convention="plus_one", protocol="motifs",
               triplet_counts=None, ...)      .add(groundtruth, prediction) / .compute()
  DetectionEvaluator(num_classes)             .add(groundtruth, prediction) / .compute()
  load_vg150_zero_shot_triplets()             the SGB zero-shot list, int [5971, 3] (s, p, o)
  write_predictions(...), read_predictions(path)   the HDF5 prediction file format
See docs/evaluation.md.
"""
from sgg_jax.ops.np_boxes import box_iou
from sgg_jax.evaluation.detection import DetectionEvaluator
from sgg_jax.evaluation.sgg import EVAL_MODES, FEW_SHOT_BUCKETS, PROTOCOLS, SGGEvaluator
from sgg_jax.evaluation.zero_shot import load_vg150_zero_shot_triplets, load_zero_shot_triplets

__all__ = [
    "SGGEvaluator", "DetectionEvaluator", "load_vg150_zero_shot_triplets",
    "load_zero_shot_triplets", "box_iou", "EVAL_MODES", "PROTOCOLS", "FEW_SHOT_BUCKETS",
]
