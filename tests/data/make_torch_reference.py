"""Writes tests/data/torch_reference.npz: torchvision's outputs on the fixed cases of
tests/torch_reference_spec.py, for tests/test_torch_reference.py (which needs no torch).

Run where torch and torchvision are installed (not needed anywhere else), from the repository
root, e.g. in a separate virtual environment:

    python -m venv --system-site-packages /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch torchvision
    /tmp/torchvenv/bin/python tests/data/make_torch_reference.py

Stored: the versions of torch / torchvision, the small inputs (RoI features and boxes, the
images) and the outputs. Weights are not stored: both sides regenerate them from the seeded
NumPy generators of the spec. This script imports nothing of sgg_jax.
"""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for torch_reference_spec

import torch_reference_spec as spec


def to_torch_state(sd):
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def normalized_nchw(images: np.ndarray):
    """uint8 NHWC -> float32 NCHW, ImageNet-normalised as torchvision's Normalize."""
    import torch

    x = images.astype(np.float32) / 255.0
    x = (x - np.array(spec.IMAGENET_MEAN, np.float32)) / np.array(spec.IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def reduced_resnet50():
    """torchvision's ResNet-50 with its stem and layer1..3 rebuilt at base width RESNET_BASE
    through torchvision's own `_make_layer` (the same blocks and names, narrower)."""
    from torch import nn
    from torchvision.models import resnet

    net = resnet.ResNet(resnet.Bottleneck, [3, 4, 6, 3])
    base = spec.RESNET_BASE
    net.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(base)
    net.inplanes = base
    net.layer1 = net._make_layer(resnet.Bottleneck, base, spec.RESNET_BLOCKS[0])
    net.layer2 = net._make_layer(resnet.Bottleneck, 2 * base, spec.RESNET_BLOCKS[1], stride=2)
    net.layer3 = net._make_layer(resnet.Bottleneck, 4 * base, spec.RESNET_BLOCKS[2], stride=2)
    del net.layer4, net.fc
    return net


def compute() -> dict[str, np.ndarray]:
    """The stored arrays: versions, small inputs and torchvision's outputs."""
    import torch
    import torchvision

    torch.use_deterministic_algorithms(True)
    out: dict[str, np.ndarray] = {"torch_version": np.array(torch.__version__),
                                  "torchvision_version": np.array(torchvision.__version__)}

    # RoI-align (aligned True / False) and RoI-pool, on both RoI cases.
    for case, make in spec.ROI_CASES.items():
        feats, boxes, idx = make()
        x = torch.from_numpy(np.ascontiguousarray(feats.transpose(0, 3, 1, 2)))
        rois = torch.from_numpy(np.concatenate([idx[:, None].astype(np.float32), boxes], 1))
        out.update({f"{case}/features": feats, f"{case}/boxes": boxes, f"{case}/indices": idx})
        for aligned in (True, False):
            r = torchvision.ops.roi_align(x, rois, spec.ROI_OUTPUT, spec.ROI_SCALE,
                                          spec.ROI_SAMPLING, aligned)
            out[f"{case}/roi_align_aligned_{aligned}"] = r.numpy().transpose(0, 2, 3, 1)
        r = torchvision.ops.roi_pool(x, rois, spec.ROI_OUTPUT, spec.ROI_SCALE)
        out[f"{case}/roi_pool"] = r.numpy().transpose(0, 2, 3, 1)

    images = spec.images()
    out["images"] = images
    x = normalized_nchw(images)

    # VGG16 `features` at reduced width, built with torchvision's layer factory.
    vgg = torchvision.models.vgg.make_layers(spec.VGG_CFG).eval()
    vgg.load_state_dict(to_torch_state({k.removeprefix("features."): v
                                        for k, v in spec.vgg_state_dict().items()}), strict=True)
    with torch.no_grad():
        out["vgg16"] = vgg[:spec.VGG_TRUNK](x).numpy().transpose(0, 2, 3, 1)

    # ResNet-50 up to layer3 at reduced width, eval mode (batch norm with the stored statistics).
    res = reduced_resnet50().eval()
    res.load_state_dict(to_torch_state(spec.resnet_state_dict()), strict=True)
    with torch.no_grad():
        t = res.maxpool(res.relu(res.bn1(res.conv1(x))))
        out["resnet50_c4"] = res.layer3(res.layer2(res.layer1(t))).numpy().transpose(0, 2, 3, 1)
    return out


def main() -> int:
    out = compute()
    np.savez_compressed(spec.REFERENCE_PATH, **out)
    size = os.path.getsize(spec.REFERENCE_PATH)
    print(f"wrote {spec.REFERENCE_PATH} ({size} bytes): " + ", ".join(
        f"{k} {v.shape}" for k, v in out.items() if v.ndim))
    return 0


if __name__ == "__main__":
    sys.exit(main())
