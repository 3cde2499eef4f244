"""The fixed cases of the stored torchvision reference (tests/data/torch_reference.npz).

NumPy only: the same inputs and weights are generated here, from seeded `np.random.default_rng`
streams, by `tests/data/make_torch_reference.py` (where torch and torchvision are installed; it
runs torchvision on them and stores the outputs) and by `tests/test_torch_reference.py` (in CI,
without torch; it runs our code on them and compares with the stored outputs). Only the outputs
and the small inputs are stored; the weights are regenerated.

The networks mirror tests/test_weights.py's torch test at reduced width: VGG16's `features` at
1/16 width (torchvision's `vgg.make_layers` with this `VGG_CFG`) and ResNet-50 up to layer3 at
1/16 width (torchvision's `ResNet._make_layer` with base width `RESNET_BASE`), batch norm with
random statistics, eval mode. The state dicts carry torchvision's exact names and shapes (the
script loads them with `load_state_dict(strict=True)`, which checks that).
"""
from __future__ import annotations

import os

import numpy as np

REFERENCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                              "torch_reference.npz")

# ImageNet normalisation (torchvision's transforms.Normalize constants), applied by the script to
# the uint8 images before the torch networks, and by our backbones inside `apply`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# RoI-align / RoI-pool: output size, spatial scale, sampling ratio (torchvision's argument order).
ROI_OUTPUT = (3, 2)
ROI_SCALE = 0.5
ROI_SAMPLING = 2

VGG_CFG = [4, 4, "M", 8, 8, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M"]
VGG_WIDTH = 1 / 16    # our VGG16's width_multiplier for VGG_CFG (64 * 1/16 = 4, ...)
VGG_TRUNK = 30        # features[:30]: conv1_1 .. conv5_3 + ReLU, no pool5 (our VGG16's output)
RESNET_BASE = 4       # stem width; layer k (1..3) has bottleneck width 4 * 2^(k-1)
RESNET_WIDTH = RESNET_BASE / 64
RESNET_BLOCKS = (3, 4, 6)
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def roi_inputs(seed: int = 13):
    """features [2, 7, 9, 3] (NHWC), 24 boxes (partly / wholly outside the map, zero-size and
    inverted ones), their image indices: the case of tests/test_roi_align.py's torch test."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
    xy = rng.uniform(-8.0, 22.0, (24, 2))
    wh = rng.uniform(-1.0, 14.0, (24, 2))
    wh[:3] = 0.0                   # zero-size boxes
    xy[3] = (60.0, 60.0)           # wholly outside (bottom right)
    xy[4] = (-30.0, -30.0)         # wholly outside (top left)
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    idx = rng.integers(0, 2, 24).astype(np.int32)
    return feats, boxes, idx


def roi_inputs_inside(seed: int = 14):
    """features [2, 7, 9, 3], 16 boxes mostly inside the map at ROI_SCALE (most bins sample
    real values), with sub-pixel sizes and corners: the dense counterpart of `roi_inputs`."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
    xy = rng.uniform(-2.0, 12.0, (16, 2))
    wh = rng.uniform(0.5, 8.0, (16, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    idx = rng.integers(0, 2, 16).astype(np.int32)
    return feats, boxes, idx


def images(seed: int = 21) -> np.ndarray:
    """[2, 64, 64, 3] uint8 RGB images (NHWC)."""
    return np.random.default_rng(seed).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)


def _conv(rng, out_c, in_c, k, gain=2.0):
    std = np.sqrt(gain / (in_c * k * k))  # He (gain 2) / LeCun (gain 1) scale: O(1) activations
    return rng.normal(0.0, std, (out_c, in_c, k, k)).astype(np.float32)


def vgg_state_dict(seed: int = 22) -> dict[str, np.ndarray]:
    """torchvision `features.N.weight/bias` (OIHW) of `make_layers(VGG_CFG)`: a conv at N is
    followed by its ReLU at N + 1, a max pool takes one index."""
    rng = np.random.default_rng(seed)
    sd, index, cin = {}, 0, 3
    for v in VGG_CFG:
        if v == "M":
            index += 1
            continue
        sd[f"features.{index}.weight"] = _conv(rng, v, cin, 3)
        sd[f"features.{index}.bias"] = rng.normal(0.0, 0.1, (v,)).astype(np.float32)
        index, cin = index + 2, v
    return sd


def _bn(rng, sd, prefix, c):
    sd[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{prefix}.bias"] = rng.uniform(-0.2, 0.2, c).astype(np.float32)
    sd[f"{prefix}.running_mean"] = rng.uniform(-0.2, 0.2, c).astype(np.float32)
    sd[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    sd[f"{prefix}.num_batches_tracked"] = np.array(0, np.int64)


def resnet_state_dict(seed: int = 23) -> dict[str, np.ndarray]:
    """torchvision ResNet-50 names up to layer3 at base width RESNET_BASE: conv1 / bn1, then
    layer{k}.{b}.conv1..3 / bn1..3 (bottleneck width w, output 4w) and downsample.0 / .1 in
    block 0 (v1.5: the stride on conv2)."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    conv = lambda o, i, k: _conv(rng, o, i, k, gain=1.0)  # residual sums grow
    sd["conv1.weight"] = conv(RESNET_BASE, 3, 7)
    _bn(rng, sd, "bn1", RESNET_BASE)
    cin = RESNET_BASE
    for k, blocks in enumerate(RESNET_BLOCKS, start=1):
        w = RESNET_BASE * 2 ** (k - 1)
        for b in range(blocks):
            p = f"layer{k}.{b}"
            sd[f"{p}.conv1.weight"] = conv(w, cin, 1)
            _bn(rng, sd, f"{p}.bn1", w)
            sd[f"{p}.conv2.weight"] = conv(w, w, 3)
            _bn(rng, sd, f"{p}.bn2", w)
            sd[f"{p}.conv3.weight"] = conv(4 * w, w, 1)
            _bn(rng, sd, f"{p}.bn3", 4 * w)
            if b == 0:
                sd[f"{p}.downsample.0.weight"] = conv(4 * w, cin, 1)
                _bn(rng, sd, f"{p}.downsample.1", 4 * w)
            cin = 4 * w
    return sd


ROI_CASES = {"roi": roi_inputs, "roi_inside": roi_inputs_inside}
