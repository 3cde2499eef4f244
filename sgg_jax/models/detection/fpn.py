"""ResNet-50 body with C2..C5 outputs and a feature pyramid (P2..P6), torchvision-style.

The body is the shared backbone's stem and layers (`resnet_stem`, `resnet_layer`, with
`RESNET50_LAYERS`) and parameter names (conv1, bn1, layer{L}_{b}), adding layer4, so the same
torchvision weight mapping applies. The pyramid: 1x1 lateral convs (`fpn_inner{i}`), nearest
top-down upsampling, 3x3 output convs (`fpn_layer{i}`), and P6 = P5 subsampled by 2
(torchvision's LastLevelMaxPool, k=1 s=2). Every convolution is `sgg_jax.ops.conv.Conv` (same
results as `nn.Conv`; on the CPU its gradients are matrix products, several times faster than
XLA's conv gradients), and the stem's max pool `sgg_jax.ops.pool.max_pool`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sgg_jax.models.backbone import RESNET50_LAYERS, normalize_images, resnet_layer, resnet_stem
from sgg_jax.ops.conv import Conv

FPN_STRIDES = (4, 8, 16, 32, 64)


class ResNet50Body(nn.Module):
    """ResNet-50 returning [C2, C3, C4, C5] (strides 4, 8, 16, 32)."""

    norm: str = "frozen_bn"
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray) -> list[jnp.ndarray]:
        if self.norm not in ("frozen_bn", "group"):
            raise ValueError(f"ResNet50Body.norm: expected 'frozen_bn' or 'group', got {self.norm!r}")
        w = lambda c: max(1, int(round(c * self.width_multiplier)))
        x = resnet_stem(normalize_images(images, self.dtype), w(64), self.norm, self.dtype)
        outs = []
        for layer, (width, blocks, stride) in enumerate(RESNET50_LAYERS):
            x = resnet_layer(x, layer, w(width), blocks, stride, self.norm, self.dtype)
            outs.append(x)
        return outs


def upsample_nearest(x: jnp.ndarray, hw: tuple[int, int]) -> jnp.ndarray:
    """Nearest-neighbour resize of NHWC `x` to `hw` (PyTorch `interpolate(mode='nearest')`)."""
    h, w = x.shape[1:3]
    if (hw[0], hw[1]) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    ys = (jnp.arange(hw[0]) * h // hw[0])
    xs = (jnp.arange(hw[1]) * w // hw[1])
    return x[:, ys][:, :, xs]


class FPN(nn.Module):
    """Feature pyramid over [C2..C5]: returns [P2, P3, P4, P5, P6] with `channels` each."""

    channels: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: list[jnp.ndarray]) -> list[jnp.ndarray]:
        inner = [Conv(self.channels, (1, 1), dtype=self.dtype, name=f"fpn_inner{i}")(f)
                 for i, f in enumerate(feats)]
        top = inner[-1]
        outs = [None] * len(feats)
        outs[-1] = Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                        name=f"fpn_layer{len(feats) - 1}")(top)
        for i in range(len(feats) - 2, -1, -1):
            top = inner[i] + upsample_nearest(top, inner[i].shape[1:3])
            outs[i] = Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                           name=f"fpn_layer{i}")(top)
        outs.append(outs[-1][:, ::2, ::2])
        return outs


class ResNet50FPN(nn.Module):
    """ResNet-50 + FPN: ([P2..P6], strides (4, 8, 16, 32, 64))."""

    norm: str = "frozen_bn"
    width_multiplier: float = 1.0
    channels: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = False):
        del train
        c = ResNet50Body(self.norm, self.width_multiplier, self.dtype, name="body")(images)
        return FPN(self.channels, self.dtype, name="fpn")(c), FPN_STRIDES
