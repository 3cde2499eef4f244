"""Import PyTorch checkpoints (torchvision VGG16 / ResNet-50 / Faster R-CNN, neural-motifs'
VGG detector) into our Flax parameter trees, reading files safely.

Files: `.npz` (NumPy, allow_pickle=False), `.safetensors` (needs the `safetensors` package),
`.pth` / `.pt` / `.bin` / `.tar` only through `torch.load(path, weights_only=True)` when torch is
installed. Nothing is ever unpickled otherwise.

A mapping is a list of `Rule(target, source, transform)`: `target` is a path into the variables
(collection first, e.g. ("params", "backbone", "conv1_1", "kernel")), `source` a state-dict name,
`transform` one of the layout conversions below:
  conv   OIHW -> HWIO                          (torch Conv2d -> flax Conv)
  dense  (out, in) -> (in, out)                (torch Linear -> flax Dense)
  fc_chw (out, C*H*W) -> (H*W*C, out)          (a Linear after flattening a CHW map, e.g. VGG's
                                                classifier.0 on 7x7x512, vs our HWC flatten)
  rpn2   2-class softmax objectness -> one sigmoid logit (w1 - w0), for neural-motifs' RPN
  id     unchanged (biases, norm parameters)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

StateDict = dict[str, np.ndarray]


class WeightImportError(ValueError):
    """A checkpoint that cannot be read or does not fit the target parameter tree."""


# ----------------------------------------------------------------------------------------------
# reading


def load_state_dict(path: str) -> StateDict:
    """Reads a checkpoint into {name: float32/int ndarray} without executing pickled code."""
    if not os.path.isfile(path):
        raise WeightImportError(f"{path}: no such checkpoint file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        except ValueError as e:
            raise WeightImportError(f"{path}: not a pickle-free .npz of arrays ({e})") from None
    if ext == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise WeightImportError(f"{path}: reading .safetensors needs the 'safetensors' package") from None
        return dict(load_file(path))
    if ext in (".pth", ".pt", ".bin", ".ckpt", ".tar"):  # .tar: neural-motifs' torch.save files
        try:
            import torch
        except ImportError:
            raise WeightImportError(f"{path}: reading {ext} needs torch (loaded with weights_only=True); "
                                    "or convert the file to .npz / .safetensors") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError and others for unsafe content
            raise WeightImportError(f"{path}: torch.load(weights_only=True) refused the file ({e})") from None
        return _flatten_torch(obj, path)
    raise WeightImportError(f"{path}: unknown checkpoint suffix {ext!r}; expected .npz, "
                            ".safetensors, .pth, .pt, .bin, .ckpt, .tar")


def _flatten_torch(obj: Any, path: str) -> StateDict:
    """A torch checkpoint object -> flat numpy state dict ('state_dict' / 'model' wrappers removed)."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise WeightImportError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            out[str(k)] = v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
    return out


def save_npz(state_dict: Mapping[str, np.ndarray], path: str) -> None:
    """Writes a state dict as .npz atomically (tmp file then os.replace)."""
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{k: np.asarray(v) for k, v in state_dict.items()})
    os.replace(tmp, path)


def strip_prefix(state_dict: Mapping[str, np.ndarray], prefix: str) -> StateDict:
    """Keys starting with `prefix`, without it (e.g. 'module.' from DataParallel, 'detector.')."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------------------------
# layout transforms


def _conv(w: np.ndarray) -> np.ndarray:
    if w.ndim != 4:
        raise WeightImportError(f"expected a 4-d OIHW conv weight, got shape {w.shape}")
    return np.transpose(w, (2, 3, 1, 0))


def _dense(w: np.ndarray) -> np.ndarray:
    if w.ndim != 2:
        raise WeightImportError(f"expected a 2-d (out, in) Linear weight, got shape {w.shape}")
    return np.transpose(w)


def fc_chw_to_hwc(w: np.ndarray, channels: int) -> np.ndarray:
    """(out, C*H*W) Linear weight over a CHW-flattened square map -> Dense kernel (H*W*C, out)."""
    out, n = w.shape
    hw = n // channels
    side = int(round(np.sqrt(hw)))
    if side * side * channels != n:
        raise WeightImportError(f"fc_chw: {n} inputs is not {channels} x s x s")
    return np.transpose(w.reshape(out, channels, side, side), (2, 3, 1, 0)).reshape(n, out)


def fc_hwc_to_chw(kernel: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of `fc_chw_to_hwc`: Dense kernel (H*W*C, out) -> (out, C*H*W) Linear weight."""
    n, out = kernel.shape
    side = int(round(np.sqrt(n // channels)))
    if side * side * channels != n:
        raise WeightImportError(f"fc_hwc: {n} inputs is not s x s x {channels}")
    return np.transpose(kernel.reshape(side, side, channels, out), (3, 2, 0, 1)).reshape(out, n)


def _rpn2_weight(w: np.ndarray) -> np.ndarray:
    """neural-motifs RPN 1x1 conv (6A, C, 1, 1) [per anchor: bg, fg, dx, dy, dw, dh] -> objectness."""
    a = w.shape[0] // 6
    w6 = w.reshape((a, 6) + w.shape[1:])
    return w6[:, 1] - w6[:, 0]


def _rpn2_deltas(w: np.ndarray) -> np.ndarray:
    a = w.shape[0] // 6
    w6 = w.reshape((a, 6) + w.shape[1:])
    return w6[:, 2:6].reshape((a * 4,) + w.shape[1:])


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "id": lambda w: w,
    "conv": _conv,
    "dense": _dense,
    "rpn2_cls_conv": lambda w: _conv(_rpn2_weight(w)),
    "rpn2_cls_bias": _rpn2_weight,
    "rpn2_box_conv": lambda w: _conv(_rpn2_deltas(w)),
    "rpn2_box_bias": _rpn2_deltas,
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """Copy state-dict entry `source` (after `transform`) to the variables leaf at `target`."""

    target: tuple[str, ...]
    source: str
    transform: str | Callable[[np.ndarray], np.ndarray] = "id"
    # for `export_state_dict` when `transform` is a function (named transforms have theirs there)
    inverse: Callable[[np.ndarray], np.ndarray] | None = None

    def apply(self, w: np.ndarray) -> np.ndarray:
        fn = TRANSFORMS[self.transform] if isinstance(self.transform, str) else self.transform
        return np.asarray(fn(np.asarray(w)))


# ----------------------------------------------------------------------------------------------
# mappings (flax prefix = where the module sits in the variables, torch prefix = its name there)


def conv_rules(flax: Sequence[str], torch: str, bias: bool = True) -> list[Rule]:
    rules = [Rule(("params", *flax, "kernel"), f"{torch}.weight", "conv")]
    if bias:
        rules.append(Rule(("params", *flax, "bias"), f"{torch}.bias"))
    return rules


def dense_rules(flax: Sequence[str], torch: str, transform: Any = "dense",
                inverse: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Rule]:
    return [Rule(("params", *flax, "kernel"), f"{torch}.weight", transform, inverse),
            Rule(("params", *flax, "bias"), f"{torch}.bias")]


def frozen_bn_rules(flax: Sequence[str], torch: str) -> list[Rule]:
    """torchvision BatchNorm2d / FrozenBatchNorm2d -> our FrozenBatchNorm (params + batch_stats)."""
    return [Rule(("params", *flax, "scale"), f"{torch}.weight"),
            Rule(("params", *flax, "bias"), f"{torch}.bias"),
            Rule(("batch_stats", *flax, "mean"), f"{torch}.running_mean"),
            Rule(("batch_stats", *flax, "var"), f"{torch}.running_var")]


VGG16_CONVS = (("conv1_1", 0), ("conv1_2", 2), ("conv2_1", 5), ("conv2_2", 7), ("conv3_1", 10),
               ("conv3_2", 12), ("conv3_3", 14), ("conv4_1", 17), ("conv4_2", 19),
               ("conv4_3", 21), ("conv5_1", 24), ("conv5_2", 26), ("conv5_3", 28))


def vgg16_rules(flax_prefix: Sequence[str] = ("backbone",), torch_prefix: str = "features",
                fc_prefix: Sequence[str] | None = None, fc_torch: str = "classifier",
                fc_channels: int = 512) -> list[Rule]:
    """torchvision `vgg16` features.N -> our VGG16 conv layers; optionally classifier.0 / .3 ->
    an fc6 / fc7 head at `fc_prefix` (fc6 gets the CHW -> HWC row permutation)."""
    rules = []
    for name, idx in VGG16_CONVS:
        rules += conv_rules((*flax_prefix, name), f"{torch_prefix}.{idx}")
    if fc_prefix is not None:
        rules += dense_rules((*fc_prefix, "fc6"), f"{fc_torch}.0",
                             lambda w: fc_chw_to_hwc(w, fc_channels),
                             lambda k: fc_hwc_to_chw(k, fc_channels))
        rules += dense_rules((*fc_prefix, "fc7"), f"{fc_torch}.3")
    return rules


RESNET50_BLOCKS = (3, 4, 6, 3)


def resnet50_rules(flax_prefix: Sequence[str] = ("backbone",), torch_prefix: str = "",
                   num_layers: int = 3) -> list[Rule]:
    """torchvision `resnet50` (conv1, bn1, layerL.B.convK / bnK / downsample.0/.1) -> our
    ResNet50 (C4, num_layers=3) or ResNet50Body (num_layers=4), frozen batch norm."""
    p = f"{torch_prefix}." if torch_prefix else ""
    rules = conv_rules((*flax_prefix, "conv1"), f"{p}conv1", bias=False)
    rules += frozen_bn_rules((*flax_prefix, "bn1"), f"{p}bn1")
    for layer in range(num_layers):
        for b in range(RESNET50_BLOCKS[layer]):
            f = (*flax_prefix, f"layer{layer + 1}_{b}")
            t = f"{p}layer{layer + 1}.{b}"
            for k in (1, 2, 3):
                rules += conv_rules((*f, f"conv{k}"), f"{t}.conv{k}", bias=False)
                rules += frozen_bn_rules((*f, f"bn{k}"), f"{t}.bn{k}")
            if b == 0:
                rules += conv_rules((*f, "downsample_conv"), f"{t}.downsample.0", bias=False)
                rules += frozen_bn_rules((*f, "downsample_bn"), f"{t}.downsample.1")
    return rules


def torchvision_fasterrcnn_rules(fpn_channels: int = 256) -> list[Rule]:
    """torchvision `fasterrcnn_resnet50_fpn` -> our FasterRCNN with backbone resnet50_fpn.

    Note torchvision resizes inputs (min_size 800) and normalises with ImageNet statistics; our
    model takes the canvas as given, so feed images at the scale the weights were trained on."""
    rules = resnet50_rules(("backbone", "body"), "backbone.body", num_layers=4)
    for i in range(4):
        rules += conv_rules(("backbone", "fpn", f"fpn_inner{i}"), f"backbone.fpn.inner_blocks.{i}.0")
        rules += conv_rules(("backbone", "fpn", f"fpn_layer{i}"), f"backbone.fpn.layer_blocks.{i}.0")
    rules += conv_rules(("rpn", "conv"), "rpn.head.conv.0.0")
    rules += conv_rules(("rpn", "cls_logits"), "rpn.head.cls_logits")
    rules += conv_rules(("rpn", "bbox_pred"), "rpn.head.bbox_pred")
    rules += dense_rules(("roi_head", "fc6"), "roi_heads.box_head.fc6",
                         lambda w: fc_chw_to_hwc(w, fpn_channels),
                         lambda k: fc_hwc_to_chw(k, fpn_channels))
    rules += dense_rules(("roi_head", "fc7"), "roi_heads.box_head.fc7")
    rules += dense_rules(("roi_head", "cls_score"), "roi_heads.box_predictor.cls_score")
    rules += dense_rules(("roi_head", "bbox_pred"), "roi_heads.box_predictor.bbox_pred")
    return rules


def neural_motifs_detector_rules(torch_prefix: str = "", fc_channels: int = 512) -> list[Rule]:
    """neural-motifs `ObjectDetector` (VGG): features.N, roi_fmap.0 / .3 (fc6 / fc7),
    score_fc, bbox_fc, rpn_head.conv.0 (3x3) and rpn_head.conv.2 (1x1, 6 channels per anchor:
    2-way softmax objectness then 4 deltas) -> our FasterRCNN with backbone vgg16, fc_dim 4096,
    rpn_channels 512. Pass torch_prefix "detector." for a relation model's checkpoint.

    The objectness softmax becomes one sigmoid logit (w_fg - w_bg), which is exact. The anchor
    set must be configured to match neural-motifs' (20 anchors per location, its ratios and
    scales); its anchor order and pixel conventions are not verified here.
    """
    p = torch_prefix
    rules = vgg16_rules(("backbone",), f"{p}features", ("roi_head",), f"{p}roi_fmap", fc_channels)
    rules += dense_rules(("roi_head", "cls_score"), f"{p}score_fc")
    rules += dense_rules(("roi_head", "bbox_pred"), f"{p}bbox_fc")
    rules += conv_rules(("rpn", "conv"), f"{p}rpn_head.conv.0")
    rules += [Rule(("params", "rpn", "cls_logits", "kernel"), f"{p}rpn_head.conv.2.weight", "rpn2_cls_conv"),
              Rule(("params", "rpn", "cls_logits", "bias"), f"{p}rpn_head.conv.2.bias", "rpn2_cls_bias"),
              Rule(("params", "rpn", "bbox_pred", "kernel"), f"{p}rpn_head.conv.2.weight", "rpn2_box_conv"),
              Rule(("params", "rpn", "bbox_pred", "bias"), f"{p}rpn_head.conv.2.bias", "rpn2_box_bias")]
    return rules


def torchvision_vgg16_detector_rules(fc_channels: int = 512) -> list[Rule]:
    """torchvision `vgg16` (ImageNet) -> our FasterRCNN(vgg16): trunk plus fc6 / fc7."""
    return vgg16_rules(("backbone",), "features", ("roi_head",), "classifier", fc_channels)


# ----------------------------------------------------------------------------------------------
# applying


@dataclasses.dataclass
class ImportReport:
    """What an import did: leaves assigned, state-dict entries not used, target leaves untouched."""

    assigned: list[tuple[str, ...]]
    unused_sources: list[str]
    unassigned_targets: list[tuple[str, ...]]


def _leaves(tree: Mapping, prefix: tuple = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    for k, v in tree.items():
        if hasattr(v, "items"):
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def import_weights(variables: Mapping, state_dict: Mapping[str, np.ndarray], rules: Sequence[Rule],
                   *, strict: bool = True, source: str = "state dict") -> tuple[dict, ImportReport]:
    """Returns a copy of `variables` with every rule's leaf replaced (dtype kept) and a report.

    Raises WeightImportError naming the entry when a source is missing, a target path does not
    exist, or shapes differ. With strict=True, leaves under the targeted modules that no rule
    assigned are an error too (so a partly-mapped layer cannot pass silently).
    """
    out = _to_dict(variables)
    assigned = []
    used = set()
    for r in rules:
        if r.source not in state_dict:
            raise WeightImportError(f"{source}: missing entry {r.source!r} (for {'/'.join(r.target)})")
        node = out
        for k in r.target[:-1]:
            if k not in node:
                raise WeightImportError(f"{source}: entry {r.source!r} maps to "
                                        f"{'/'.join(r.target)}, which the model does not have")
            node = node[k]
        leaf = r.target[-1]
        if leaf not in node:
            raise WeightImportError(f"{source}: entry {r.source!r} maps to {'/'.join(r.target)}, "
                                    "which the model does not have")
        try:
            value = r.apply(state_dict[r.source])
        except WeightImportError as e:
            raise WeightImportError(f"{source}: entry {r.source!r}: {e}") from None
        old = node[leaf]
        if tuple(value.shape) != tuple(old.shape):
            raise WeightImportError(f"{source}: entry {r.source!r} has shape "
                                    f"{tuple(state_dict[r.source].shape)} -> {tuple(value.shape)} after "
                                    f"layout conversion, but {'/'.join(r.target)} expects {tuple(old.shape)}")
        node[leaf] = np.asarray(value, dtype=getattr(old, "dtype", None) or np.asarray(old).dtype)
        assigned.append(r.target)
        used.add(r.source)
    assigned_set = set(assigned)
    modules = {t[:-1] for t in assigned}
    untouched = [p for p, _ in _leaves(out) if p[:-1] in modules and p not in assigned_set]
    if strict and untouched:
        raise WeightImportError(f"{source}: leaves of imported layers left unassigned: "
                                f"{['/'.join(p) for p in untouched[:5]]}")
    report = ImportReport(assigned=assigned,
                          unused_sources=sorted(k for k in state_dict if k not in used),
                          unassigned_targets=[p for p, _ in _leaves(out) if p not in assigned_set])
    return out, report


def _to_dict(tree: Mapping) -> dict:
    return {k: _to_dict(v) if hasattr(v, "items") else v for k, v in tree.items()}


def export_state_dict(variables: Mapping, rules: Sequence[Rule]) -> StateDict:
    """Inverse of `import_weights` for the invertible transforms: named ones, and functions
    whose rule gives its `inverse` (used by the round-trip test, and to load our weights into
    torchvision's detector in benchmarks/detector.py)."""
    inverse = {"id": lambda w: w, "conv": lambda w: np.transpose(w, (3, 2, 0, 1)),
               "dense": np.transpose}
    out = {}
    for r in rules:
        node = variables
        for k in r.target:
            node = node[k]
        w = np.asarray(node)
        if r.inverse is not None:
            out[r.source] = np.asarray(r.inverse(w))
            continue
        if not isinstance(r.transform, str) or r.transform not in inverse:
            raise WeightImportError(f"export_state_dict: transform of {r.source!r} is not invertible here")
        out[r.source] = inverse[r.transform](w)
    return out
