"""Relation models and their registry.

`build_model(model_config, num_classes=..., num_predicates=..., statistics=..., mode=...)` returns
a Flax Linen module called as `model.apply(variables, inputs: ModelInputs, train, rngs=...)` that
returns `ModelOutputs`. Every model names its top-level submodules from `PARAM_GROUPS`, so the
trainer can freeze or restore them per stage (`param_group_labels`, `trainable_mask`).
See docs/models.md for the config fields.
"""
from __future__ import annotations

from typing import Any, Iterable

import jax
import jax.numpy as jnp
import flax.linen as nn

from sgg_jax.models.backbone import BACKBONES
from sgg_jax.models.interface import ModelInputs, ModelOutputs

MODEL_NAMES = ("freq", "imp", "msdn")
MODES = ("predcls", "sgcls", "sgdet")
# Top-level parameter groups shared by all models (not every model has every group).
PARAM_GROUPS = ("backbone", "roi_features", "obj_classifier", "relation_head")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_FIELDS = ("name", "backbone", "hidden_dim", "num_iterations", "roi_size", "sampling_ratio",
           "fc_dim", "dtype", "dropout", "freq_bias", "obj_roi_residual")


def _field(config: Any, key: str) -> Any:
    try:
        return config[key]
    except (KeyError, AttributeError, TypeError):
        raise ValueError(f"model config: missing field {key!r} (expected fields: {_FIELDS})") from None


def build_model(model_config: Any, *, num_classes: int, num_predicates: int,
                statistics: Any = None, mode: str = "predcls",
                num_words: int | None = None) -> nn.Module:
    """Builds the relation model described by `model_config` (an ml_collections ConfigDict).

    Args:
      model_config: fields name ("freq" | "imp"), backbone ("small_resnet" | "vgg16" |
        "resnet50"), hidden_dim, num_iterations, roi_size, sampling_ratio, fc_dim,
        dtype ("float32" | "bfloat16"), dropout.
      num_classes: C object classes; num_predicates: P predicates.
      statistics: `data_pipelines.statistics.DatasetStatistics` (needs `fg_matrix` [C+1, C+1, P+1]
        and optionally `bg_matrix` [C+1, C+1]); required by "freq".
      mode: "predcls" | "sgcls" | "sgdet".
      num_words: caption vocabulary size V incl. the special tokens (`len(idx_to_word)`);
        required by "msdn" (its region captioner), ignored by the others.
    """
    name = _field(model_config, "name")
    if name not in MODEL_NAMES:
        raise ValueError(f"model.name: expected one of {MODEL_NAMES}, got {name!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    backbone = _field(model_config, "backbone")
    if backbone not in BACKBONES:
        raise ValueError(f"model.backbone: expected one of {BACKBONES}, got {backbone!r}")
    dtype_name = _field(model_config, "dtype")
    if dtype_name not in _DTYPES:
        raise ValueError(f"model.dtype: expected one of {tuple(_DTYPES)}, got {dtype_name!r}")
    common = dict(mode=mode, backbone_name=backbone, fc_dim=int(_field(model_config, "fc_dim")),
                  roi_size=int(_field(model_config, "roi_size")),
                  sampling_ratio=int(_field(model_config, "sampling_ratio")),
                  dropout=float(_field(model_config, "dropout")), dtype=_DTYPES[dtype_name])
    if name == "freq":
        from sgg_jax.models.freq import FreqModel

        return FreqModel(num_classes=num_classes,
                         table=_frequency_table(name, statistics, num_classes, num_predicates),
                         **common)
    if name == "msdn":
        from sgg_jax.models.msdn import MSDNModel

        if not num_words or int(num_words) < 4:
            raise ValueError("model 'msdn' needs num_words >= 4 (the caption vocabulary incl. "
                             f"<pad>, <start>, <end>, <unk>), got {num_words!r}")
        get = model_config.get if hasattr(model_config, "get") else (lambda k, d: d)
        return MSDNModel(num_classes=num_classes, num_predicates=num_predicates,
                         vocab_size=int(num_words),
                         hidden_dim=int(_field(model_config, "hidden_dim")),
                         num_iterations=int(_field(model_config, "num_iterations")),
                         gate_width=int(get("gate_width", 128)),
                         caption_beam_size=int(get("caption_beam_size", 1)), **common)
    from sgg_jax.models.imp import IMPModel

    get = model_config.get if hasattr(model_config, "get") else (lambda k, d: d)
    use_bias = bool(get("freq_bias", False))
    table = _frequency_table(name, statistics, num_classes, num_predicates) if use_bias else None
    return IMPModel(num_classes=num_classes, num_predicates=num_predicates,
                    hidden_dim=int(_field(model_config, "hidden_dim")),
                    num_iterations=int(_field(model_config, "num_iterations")),
                    freq_table=table, obj_roi_residual=bool(get("obj_roi_residual", False)),
                    **common)


def _frequency_table(name: str, statistics: Any, num_classes: int, num_predicates: int):
    """The dataset's log-frequency table [C+1, C+1, P+1] (Motifs' FrequencyBias) as a constant."""
    from sgg_jax.models.freq import ConstantTable, frequency_log_table

    fg = getattr(statistics, "fg_matrix", None)
    if fg is None:
        raise ValueError(f"model {name!r} with a frequency table needs statistics with a "
                         "fg_matrix [C+1, C+1, P+1]")
    table = frequency_log_table(fg, getattr(statistics, "bg_matrix", None))
    if table.shape != (num_classes + 1, num_classes + 1, num_predicates + 1):
        raise ValueError(f"statistics.fg_matrix: expected shape {(num_classes + 1,) * 2 + (num_predicates + 1,)}, "
                         f"got {table.shape}")
    return ConstantTable(table)


# The detector's parameters are this top-level group of a run's params (sgg_jax/training):
# the `detector` stage trains it, relation stages keep it frozen, SGDet runs it.
DETECTOR_GROUP = "detector"
_DETECTOR_FIELDS = {  # config.model.detector field -> DetectorConfig field
    "backbone": "backbone", "aspect_ratios": "aspect_ratios", "rpn_channels": "rpn_channels",
    "rpn_pre_nms_top_n_train": "rpn_pre_nms_top_n_train",
    "rpn_pre_nms_top_n_test": "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_train": "rpn_post_nms_top_n_train",
    "rpn_post_nms_top_n_test": "rpn_post_nms_top_n_test",
    "rpn_batch_size_per_image": "rpn_batch_size_per_image",
    "roi_batch_size_per_image": "roi_batch_size_per_image", "fc_dim": "fc_dim",
    "score_thresh": "score_thresh", "nms": "box_nms_thresh",
    "box_nms_candidates": "box_nms_candidates", "detections_per_image": "detections_per_image",
    "dropout": "dropout",
}


def detector_config(detector_cfg: Any, num_classes: int):
    """`config.model.detector` (a ConfigDict / mapping) -> `DetectorConfig` for C classes.

    `anchor_sizes` is one flat list: all sizes share the single stride-16 level of
    small_resnet / vgg16 / resnet50, and resnet50_fpn takes one size per level (5).
    `backbone_widths` (small_resnet only; empty = default) become `backbone_kwargs`.
    Unknown fields are an error naming them.
    """
    from sgg_jax.models.detection import DetectorConfig

    items = dict(detector_cfg.items()) if hasattr(detector_cfg, "items") else dict(detector_cfg)
    known = set(_DETECTOR_FIELDS) | {"anchor_sizes", "backbone_widths"}
    unknown = sorted(set(items) - known)
    if unknown:
        raise ValueError(f"config.model.detector: unknown fields {unknown}; expected some of "
                         f"{sorted(known)}")
    kwargs = {dst: items[src] for src, dst in _DETECTOR_FIELDS.items() if src in items}
    sizes = tuple(float(s) for s in items.get("anchor_sizes", (32.0, 64.0, 128.0, 256.0)))
    backbone = kwargs.get("backbone", "small_resnet")
    kwargs["anchor_sizes"] = tuple((s,) for s in sizes) if backbone == "resnet50_fpn" else (sizes,)
    widths = tuple(int(w) for w in items.get("backbone_widths", ()) or ())
    if widths:
        if backbone != "small_resnet":
            raise ValueError("config.model.detector.backbone_widths: only for backbone "
                             f"small_resnet, got backbone {backbone!r}")
        kwargs["backbone_kwargs"] = (("widths", widths),)
    kwargs["aspect_ratios"] = tuple(float(r) for r in kwargs.get("aspect_ratios", (0.5, 1.0, 2.0)))
    return DetectorConfig.from_mapping(dict(num_classes=int(num_classes), **kwargs))


def build_detector(model_config: Any, *, num_classes: int):
    """The FasterRCNN module of `model_config.detector` (compute dtype = `model_config.dtype`)."""
    from sgg_jax.models.detection import FasterRCNN

    dtype_name = _field(model_config, "dtype")
    if dtype_name not in _DTYPES:
        raise ValueError(f"model.dtype: expected one of {tuple(_DTYPES)}, got {dtype_name!r}")
    return FasterRCNN(detector_config(_field(model_config, "detector"), num_classes),
                      dtype=_DTYPES[dtype_name])


# MSDN's region RPN (sgg_jax/models/region_proposals.py): its own top-level group, trained by
# the `regions` stage on the frozen detector's features, run in SGDet for the caption regions.
REGION_RPN_GROUP = "region_rpn"


def relation_params(params: Any) -> Any:
    """The relation model's groups of a run's params (everything but the proposal networks:
    the detector and MSDN's region RPN)."""
    return {k: v for k, v in params.items() if k not in (DETECTOR_GROUP, REGION_RPN_GROUP)}


def param_group_labels(params: Any) -> Any:
    """A pytree like `params` whose leaves are their top-level group name (for optax.multi_transform)."""
    if not isinstance(params, dict) and not hasattr(params, "items"):
        raise ValueError("param_group_labels: expected the 'params' collection (a dict)")
    return {k: jax.tree_util.tree_map(lambda _, k=k: k, v) for k, v in params.items()}


def trainable_mask(params: Any, groups: Iterable[str]) -> Any:
    """A bool pytree like `params`: True for leaves in one of `groups` (e.g. for optax.masked)."""
    groups = set(groups)
    unknown = groups - set(PARAM_GROUPS)
    if unknown:
        raise ValueError(f"trainable groups: unknown {sorted(unknown)}, expected some of {PARAM_GROUPS}")
    return {k: jax.tree_util.tree_map(lambda _, k=k: k in groups, v) for k, v in params.items()}


__all__ = ["build_model", "build_detector", "detector_config", "relation_params",
           "DETECTOR_GROUP", "REGION_RPN_GROUP", "param_group_labels", "trainable_mask",
           "PARAM_GROUPS", "MODEL_NAMES",
           "ModelInputs", "ModelOutputs"]
