"""ResNet-50 body with C2..C5 outputs and a feature pyramid (P2..P6), torchvision-style.

The body reuses the shared backbone's blocks (`Bottleneck`, `FrozenBatchNorm`) and parameter
names (conv1, bn1, layer{L}_{b}), adding layer4, so the same torchvision weight mapping applies.
The pyramid: 1x1 lateral convs (`fpn_inner{i}`), nearest top-down upsampling, 3x3 output
convs (`fpn_layer{i}`), and P6 = P5 subsampled by 2 (torchvision's LastLevelMaxPool, k=1 s=2).
Every convolution uses `sgg_jax.ops.conv.conv_general_dilated` (same results; its gradients are
matrix products, which makes training several times faster on CPU than XLA's conv gradients),
and the stem's max pool `sgg_jax.ops.pool.max_pool` (same results; elementwise gradient).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sgg_jax.models.backbone import Bottleneck, FrozenBatchNorm, _group_norm, normalize_images
from sgg_jax.ops.conv import conv_general_dilated as fast_conv
from sgg_jax.ops.pool import max_pool

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
        x = normalize_images(images, self.dtype)
        x = nn.Conv(w(64), (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                    dtype=self.dtype, name="conv1", conv_general_dilated=fast_conv)(x)
        x = (FrozenBatchNorm(dtype=self.dtype, name="bn1") if self.norm == "frozen_bn"
             else _group_norm(w(64), self.dtype, "bn1"))(x)
        x = max_pool(nn.relu(x), (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        outs = []
        for layer, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2),
                                                        (512, 3, 2))):
            for b in range(blocks):
                x = Bottleneck(w(width), stride=stride if b == 0 else 1, norm=self.norm,
                               dtype=self.dtype, conv_general_dilated=fast_conv,
                               name=f"layer{layer + 1}_{b}")(x)
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
        inner = [nn.Conv(self.channels, (1, 1), dtype=self.dtype, name=f"fpn_inner{i}",
                         conv_general_dilated=fast_conv)(f)
                 for i, f in enumerate(feats)]
        top = inner[-1]
        outs = [None] * len(feats)
        outs[-1] = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                           name=f"fpn_layer{len(feats) - 1}", conv_general_dilated=fast_conv)(top)
        for i in range(len(feats) - 2, -1, -1):
            top = inner[i] + upsample_nearest(top, inner[i].shape[1:3])
            outs[i] = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                              name=f"fpn_layer{i}", conv_general_dilated=fast_conv)(top)
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
