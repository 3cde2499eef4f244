"""Pretrained weights for a run's backbones and detector, read from local files.

Config fields (sgg_jax/config.py; docs/models.md, "Presets: what each reproduces"):

  model.backbone_weights           torchvision ImageNet VGG16 / ResNet-50 state dict -> the
                                   relation model's `backbone` group (model.backbone vgg16 /
                                   resnet50). neural-motifs' VG detector checkpoint fits a vgg16
                                   backbone too (its `features.N` are torchvision's names).
  model.detector.backbone_weights  the same -> the detector's backbone (vgg16, resnet50,
                                   resnet50_fpn's body); a vgg16 detector with fc_dim 4096 also
                                   takes the file's classifier.0 / .3 as its fc6 / fc7.
  model.detector.weights           a whole detector from another codebase, chosen by the
                                   detector's backbone: vgg16 -> neural-motifs' VG Faster R-CNN
                                   checkpoint, resnet50_fpn -> torchvision's
                                   fasterrcnn_resnet50_fpn.
  model.require_pretrained         set by the `vg` preset: refuse to start unless every backbone
                                   the run trains has a file, or
  model.from_scratch               True acknowledges training them from random initialisation.

`check_pretrained(config)` runs first in `trainer.setup` (before any data is prepared or anything
compiles): the fields fit the architecture, the files exist, the preset's requirement is met.
`apply_pretrained(config, params, model_state, detector_state)` runs at the end of
`trainer.init_params`, i.e. for every run (training, resumed training, evaluation, prediction):
the frozen batch-norm statistics of ResNet-50 live in `model_state` / `detector_state`, which
the checkpoints do not hold, so they are read from the files each time (restored checkpoints
then replace the trainable parameters).

Class-specific layers (the detector's cls_score / bbox_pred) are imported only when the
checkpoint's classes are the run's: neural-motifs' checkpoint on VG150 data (data.name vg150),
never torchvision's COCO detector. Files are read through `sgg_jax.weights` (never unpickled).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax import weights as W
from sgg_jax.models import DETECTOR_GROUP
from sgg_jax.training import optim

log = logging.getLogger("sgg_jax")

RELATION_BACKBONES = ("vgg16", "resnet50")
DETECTOR_BACKBONES = ("vgg16", "resnet50", "resnet50_fpn")
# A whole detector's checkpoint format, by the detector's backbone.
WHOLE_DETECTORS = {"vgg16": "neural_motifs", "resnet50_fpn": "torchvision"}
# The data set a whole detector's classes come from (its class-specific layers import only there).
DETECTOR_CLASSES = {"neural_motifs": "vg150", "torchvision": "COCO"}

WHERE = {
    "vgg16": "torchvision's ImageNet VGG16, vgg16-397923af.pth "
             "(https://download.pytorch.org/models/vgg16-397923af.pth, "
             "torchvision.models.VGG16_Weights.IMAGENET1K_V1)",
    "resnet50": "torchvision's ImageNet ResNet-50, resnet50-0676ba61.pth "
                "(https://download.pytorch.org/models/resnet50-0676ba61.pth, "
                "torchvision.models.ResNet50_Weights.IMAGENET1K_V1)",
    "neural_motifs": "neural-motifs' VG detector checkpoint (github.com/rowanz/neural-motifs, "
                     "README setup step 3, 'pretrained detector checkpoint'; its scripts call it "
                     "checkpoints/vgdet/vg-24.tar)",
    "torchvision": "torchvision's COCO Faster R-CNN, fasterrcnn_resnet50_fpn_coco-258fb6c6.pth "
                   "(https://download.pytorch.org/models/"
                   "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth)",
}
WHERE["resnet50_fpn"] = WHERE["resnet50"]
FILES_NOTE = (
    "Files are read locally, never downloaded: .npz (read without pickle) or .safetensors; "
    ".pth / .pt / .tar only through torch.load(weights_only=True) when torch is installed (no "
    "code in the file runs). Without torch, convert the file once to .npz or .safetensors "
    "(docs/models.md, \"Pretrained weights\").")
_PREDICTOR = (("roi_head", "cls_score"), ("roi_head", "bbox_pred"))


class PretrainedWeightsError(ValueError):
    """A weight field that does not fit the run, a missing or unfitting file, or a preset that
    needs pretrained weights and has none."""


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """One configured weight file: its field, path, target group and format."""

    field: str  # e.g. "model.backbone_weights"
    path: str
    group: str  # "backbone" (the relation model's) or DETECTOR_GROUP
    kind: str  # "imagenet" (a backbone alone), "neural_motifs" or "torchvision" (whole detectors)
    network: str  # the backbone's name


# ----------------------------------------------------------------------------------------------
# config checks


def _get(node: Any, key: str, default: Any) -> Any:
    """`node[key]`, or `default` for configs saved before the field existed."""
    return node.get(key, default) if hasattr(node, "get") else default


def uses_detector(config: Any) -> bool:
    """A run has a detector iff it evaluates SGDet (as trainer.uses_detector)."""
    return "sgdet" in optim.split_list(config.eval.modes)


def _relation_source(model: Any) -> list[WeightSource]:
    """model.backbone_weights, checked against model.backbone."""
    path = str(_get(model, "backbone_weights", "") or "")
    if not path:
        return []
    if model.backbone not in RELATION_BACKBONES:
        raise PretrainedWeightsError(
            f"model.backbone_weights={path!r}: model.backbone={model.backbone!r} has no "
            f"pretrained weights here; expected model.backbone one of {RELATION_BACKBONES}")
    return [WeightSource("model.backbone_weights", path, "backbone", "imagenet", model.backbone)]


def _detector_sources(det: Any) -> list[WeightSource]:
    """model.detector.weights / .backbone_weights (at most one), checked against its backbone."""
    whole = str(_get(det, "weights", "") or "")
    trunk = str(_get(det, "backbone_weights", "") or "")
    if whole and trunk:
        raise PretrainedWeightsError(
            f"model.detector.weights={whole!r} and model.detector.backbone_weights={trunk!r}: "
            "set one (a whole detector already holds its backbone)")
    if trunk and det.backbone not in DETECTOR_BACKBONES:
        raise PretrainedWeightsError(
            f"model.detector.backbone_weights={trunk!r}: model.detector.backbone="
            f"{det.backbone!r} has no pretrained weights here; expected one of "
            f"{DETECTOR_BACKBONES}")
    if whole and det.backbone not in WHOLE_DETECTORS:
        raise PretrainedWeightsError(
            f"model.detector.weights={whole!r}: whole detectors import for "
            "model.detector.backbone vgg16 (neural-motifs' VG checkpoint) or resnet50_fpn "
            f"(torchvision's fasterrcnn_resnet50_fpn), got {det.backbone!r}")
    if trunk:
        return [WeightSource("model.detector.backbone_weights", trunk, DETECTOR_GROUP,
                             "imagenet", det.backbone)]
    if whole:
        return [WeightSource("model.detector.weights", whole, DETECTOR_GROUP,
                             WHOLE_DETECTORS[det.backbone], det.backbone)]
    return []


def weight_sources(config: Any) -> list[WeightSource]:
    """The weight files the config names, checked against the architectures (no file access)."""
    return _relation_source(config.model) + _detector_sources(config.model.detector)


def missing_pretrained(config: Any) -> list[str]:
    """One line per network the run trains without the pretrained weights its preset requires
    (empty when not required, or when model.from_scratch is True)."""
    model, det = config.model, config.model.detector
    if not _get(model, "require_pretrained", False) or _get(model, "from_scratch", False):
        return []
    lines = []
    if not _get(model, "backbone_weights", ""):
        lines.append(_relation_hint(model.backbone))
    has_detector_file = _get(det, "weights", "") or _get(det, "backbone_weights", "")
    if uses_detector(config) and not has_detector_file:
        lines.append(_detector_hint(det.backbone))
    return lines


def _relation_hint(backbone: str) -> str:
    if backbone not in RELATION_BACKBONES:
        return (f"the relation model's backbone ({backbone}): no pretrained weights exist for it "
                f"here; set model.backbone to one of {RELATION_BACKBONES} and "
                "model.backbone_weights")
    extra = (" (neural-motifs' VG detector checkpoint also fits: its features.N are "
             "torchvision's names)" if backbone == "vgg16" else "")
    return (f"the relation model's backbone ({backbone}): set model.backbone_weights to "
            f"{WHERE[backbone]}{extra}")


def _detector_hint(backbone: str) -> str:
    parts = []
    if backbone in WHOLE_DETECTORS:
        parts.append(f"model.detector.weights to {WHERE[WHOLE_DETECTORS[backbone]]}")
    if backbone in DETECTOR_BACKBONES:
        parts.append(f"model.detector.backbone_weights to {WHERE[backbone]}")
    if not parts:
        return (f"the detector ({backbone}): no pretrained weights exist for it here; set "
                f"model.detector.backbone to one of {DETECTOR_BACKBONES} and its weights")
    return f"the detector ({backbone}): set " + ", or ".join(parts)


def check_pretrained(config: Any) -> None:
    """Raises PretrainedWeightsError when a weight field does not fit the architecture, names a
    missing file, or the preset requires pretrained weights that are not given. Reads no file
    contents: it runs before any data is prepared or anything compiles."""
    sources = weight_sources(config)
    for s in sources:
        if not os.path.isfile(s.path):
            raise PretrainedWeightsError(f"{s.field}={s.path!r}: no such file")
    if not uses_detector(config) and any(s.group == DETECTOR_GROUP for s in sources):
        log.warning("model.detector weights are set but this run has no detector "
                    "(config.eval.modes=%r has no sgdet): they are ignored", config.eval.modes)
    missing = missing_pretrained(config)
    if missing:
        raise PretrainedWeightsError(
            "this config (model.require_pretrained=True, set by the `vg` preset) reproduces a "
            "published setup that starts from pretrained networks, and has none for:\n"
            + "".join(f"  - {line}\n" for line in missing) + FILES_NOTE + "\n"
            "Or pass --config.model.from_scratch=True to train them from random "
            "initialisation knowingly (the published numbers assume pretrained networks).")


# ----------------------------------------------------------------------------------------------
# rules


def backbone_rules(backbone: str, prefix: Sequence[str] = ("backbone",)) -> list[W.Rule]:
    """torchvision ImageNet names -> our backbone `backbone` at `prefix` in its variables."""
    if backbone == "vgg16":
        return W.vgg16_rules(tuple(prefix))
    if backbone == "resnet50":
        return W.resnet50_rules(tuple(prefix), "", num_layers=3)
    if backbone == "resnet50_fpn":
        return W.resnet50_rules((*prefix, "body"), "", num_layers=4)
    raise PretrainedWeightsError(f"backbone {backbone!r}: no torchvision weights map onto it "
                                 f"(expected one of {DETECTOR_BACKBONES})")


def without_predictor(rules: Sequence[W.Rule]) -> list[W.Rule]:
    """`rules` minus the class-specific box predictor (roi_head cls_score / bbox_pred)."""
    return [r for r in rules if tuple(r.target[1:3]) not in _PREDICTOR]


def upgrade_torchvision_names(state_dict: Mapping[str, np.ndarray]) -> W.StateDict:
    """torchvision's pre-0.13 detector names (as in its published COCO file) -> current ones:
    rpn.head.conv.* -> rpn.head.conv.0.0.*, backbone.fpn.{inner,layer}_blocks.i.* ->
    ....i.0.* (what torchvision's own _load_from_state_dict does)."""
    out = {}
    for k, v in state_dict.items():
        parts = k.split(".")
        if k.startswith("rpn.head.conv.") and len(parts) == 4:
            k = f"rpn.head.conv.0.0.{parts[-1]}"
        elif k.startswith(("backbone.fpn.inner_blocks.", "backbone.fpn.layer_blocks.")) \
                and len(parts) == 5:
            k = ".".join(parts[:4] + ["0", parts[-1]])
        out[k] = v
    return out


def _nm_prefix(state_dict: Mapping[str, np.ndarray]) -> str:
    """'detector.' for a neural-motifs relation model's checkpoint, '' for its detector's."""
    if "features.0.weight" not in state_dict and "detector.features.0.weight" in state_dict:
        return "detector."
    return ""


def _detector_trunk_rules(backbone: str, fc_dim: int, state_dict: Mapping[str, np.ndarray]
                          ) -> tuple[list[W.Rule], str]:
    """An ImageNet file into the detector: its trunk, and for VGG16 with a 4096-d head also
    classifier.0 / .3 as fc6 / fc7 (how Faster R-CNN VGG16 starts) when the file has them."""
    what = f"torchvision ImageNet {backbone} -> the detector's backbone"
    if backbone == "vgg16" and fc_dim == 4096 and "classifier.0.weight" in state_dict:
        return W.torchvision_vgg16_detector_rules(), what + " and fc6 / fc7 (classifier.0 / .3)"
    return backbone_rules(backbone), what


def source_rules(source: WeightSource, state_dict: Mapping[str, np.ndarray], config: Any
                 ) -> tuple[list[W.Rule], W.StateDict, str]:
    """(rules, state dict with names normalised, description) for one weight file."""
    sd = dict(state_dict)
    if source.group != DETECTOR_GROUP:
        return backbone_rules(source.network), sd, \
            f"torchvision ImageNet {source.network} -> the relation model's backbone"
    if source.kind == "imagenet":
        rules, what = _detector_trunk_rules(source.network, int(config.model.detector.fc_dim), sd)
        return rules, sd, what
    same_classes = str(config.data.name) == DETECTOR_CLASSES[source.kind]
    if source.kind == "neural_motifs":
        rules = W.neural_motifs_detector_rules(_nm_prefix(sd))
        what = "neural-motifs' VGG16 Faster R-CNN -> the detector"
    else:
        sd = upgrade_torchvision_names(sd)
        rules = W.torchvision_fasterrcnn_rules()
        what = "torchvision's fasterrcnn_resnet50_fpn -> the detector"
    if not same_classes:
        rules = without_predictor(rules)
        what += (f" (box predictor left at initialisation: the checkpoint's classes are "
                 f"{DETECTOR_CLASSES[source.kind]}'s, the run's data is {config.data.name})")
    return rules, sd, what


# ----------------------------------------------------------------------------------------------
# importing


def _leaf(tree: Mapping, path: Sequence[str]) -> Any:
    for k in path:
        if not hasattr(tree, "get") or k not in tree:
            return None
        tree = tree[k]
    return tree


def fit_problems(variables: Mapping, state_dict: Mapping[str, np.ndarray],
                 rules: Sequence[W.Rule]) -> list[str]:
    """Every rule whose source is missing, whose target does not exist or whose converted
    shape differs from the target's, as one readable line each (in rule order)."""
    problems = []
    for r in rules:
        target = "/".join(r.target[1:])
        if r.source not in state_dict:
            problems.append(f"{r.source} missing (for {target})")
            continue
        old = _leaf(variables, r.target)
        if old is None:
            problems.append(f"{r.source} maps to {target}, which the model does not have")
            continue
        value = state_dict[r.source]
        try:  # on a zero-strided stand-in: layout transforms only reshape and transpose
            shape = _shape(r.apply(np.broadcast_to(np.zeros((), np.asarray(value).dtype),
                                                   _shape(value))))
        except W.WeightImportError as e:
            problems.append(f"{r.source}: {e}")
            continue
        if shape != _shape(old):
            problems.append(f"{r.source} {_shape(state_dict[r.source])} does not fit "
                            f"{target} {_shape(old)}")
    return problems


def _shape(x: Any) -> tuple[int, ...]:
    """An array's (or a jax.ShapeDtypeStruct's) shape."""
    return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def import_source(variables: Mapping, state_dict: Mapping[str, np.ndarray],
                  rules: Sequence[W.Rule], source: WeightSource, what: str
                  ) -> tuple[dict, W.ImportReport]:
    """`import_weights` with errors that name the field, the file and the first unfitting
    tensors (all of them are checked before anything is assigned)."""
    problems = fit_problems(variables, state_dict, rules)
    if problems:
        names = ", ".join(list(state_dict)[:4])
        raise PretrainedWeightsError(
            f"{source.field}={source.path!r} does not fit ({what}): {len(problems)} of "
            f"{len(rules)} tensors do not fit, first: {'; '.join(problems[:5])}. The file's "
            f"entries begin {names or '(none)'}; expected {_expected(source)}")
    try:
        return W.import_weights(variables, state_dict, rules,
                                source=f"{source.field}={source.path!r}")
    except W.WeightImportError as e:
        raise PretrainedWeightsError(str(e)) from None


def _expected(source: WeightSource) -> str:
    return WHERE[source.network if source.kind == "imagenet" else source.kind]


def _place_like(new: Any, old: Any) -> Any:
    """`new` with each replaced leaf put where the leaf it replaces lived (same sharding)."""
    if isinstance(new, Mapping):
        return {k: _place_like(v, old[k]) for k, v in new.items()}
    if new is old:
        return old
    sharding = getattr(old, "sharding", None)
    if sharding is None:
        return jnp.asarray(new)
    value = np.asarray(new)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _left_at_init(report: W.ImportReport, within: tuple[str, ...]) -> list[str]:
    """Modules under `within` (a variables path) that the import did not touch."""
    mods = []
    for t in report.unassigned_targets:
        if t[:len(within)] == within:
            m = "/".join(t[1:-1])
            if m not in mods:
                mods.append(m)
    return mods


def load_source(source: WeightSource) -> W.StateDict:
    """The file's state dict; read errors name the field."""
    try:
        return W.load_state_dict(source.path)
    except W.WeightImportError as e:
        raise PretrainedWeightsError(f"{source.field}: {e}") from None


def _target_variables(source: WeightSource, params: Mapping, model_state: Mapping,
                      detector_state: Mapping) -> dict:
    """The variables an import of `source` reads and replaces: the detector's own (params
    group "detector" and its collections), or the relation model's `backbone` group with the
    model's collections (the frozen batch-norm statistics of a ResNet-50 backbone)."""
    if source.group == DETECTOR_GROUP:
        return {"params": params[DETECTOR_GROUP], **detector_state}
    if "backbone" not in params:
        raise PretrainedWeightsError(f"{source.field}={source.path!r}: the relation model has "
                                     "no `backbone` parameter group")
    return {"params": {"backbone": params["backbone"]}, **model_state}


def apply_pretrained(config: Any, params: Mapping, model_state: Mapping,
                     detector_state: Mapping) -> tuple[dict, dict, dict]:
    """(params, model_state, detector_state) with the configured weight files imported: the
    relation model's `backbone` group (+ its batch_stats) and the `detector` group (+ the
    detector's non-trainable collections). Other groups are returned as they were. Logs one
    line per file. A no-op without weight fields."""
    params, model_state, detector_state = dict(params), dict(model_state), dict(detector_state)
    for source in weight_sources(config):
        is_det = source.group == DETECTOR_GROUP
        if is_det and DETECTOR_GROUP not in params:
            continue  # no detector in this run (check_pretrained warned)
        rules, state_dict, what = source_rules(source, load_source(source), config)
        variables = _target_variables(source, params, model_state, detector_state)
        new, report = import_source(variables, state_dict, rules, source, what)
        new = _place_like(new, variables)
        rest = {k: v for k, v in new.items() if k != "params"}
        if is_det:
            params[DETECTOR_GROUP], detector_state = new["params"], rest
        else:
            params["backbone"], model_state = new["params"]["backbone"], rest
        left = _left_at_init(report, ("params",) if is_det else ("params", "backbone"))
        log.info("pretrained: %s=%s (%s): %d tensors imported, %d file entries unused%s",
                 source.field, source.path, what, len(report.assigned),
                 len(report.unused_sources),
                 f"; left at initialisation: {', '.join(left)}" if left else "")
    return params, model_state, detector_state


__all__ = ["PretrainedWeightsError", "WeightSource", "apply_pretrained", "backbone_rules",
           "check_pretrained", "fit_problems", "missing_pretrained", "source_rules",
           "upgrade_torchvision_names", "weight_sources", "without_predictor"]
