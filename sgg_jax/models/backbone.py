"""Convolutional backbones (Flax Linen) that turn a uint8 image canvas into a stride-16 feature map
(stride 8 for `small_resnet_s8`).

Every backbone is called as `features, stride = backbone(images, train)` with `images`
[B, S, S, 3] uint8 RGB; it normalises with the ImageNet mean/std itself (so checkpoints imported
from torchvision see the inputs they were trained on) and returns features [B, S/16, S/16, C]
in the compute dtype plus the integer stride, which the RoI-align needs as `1 / stride`.

- `SmallResNet`: a tiny residual net with GroupNorm, the CPU default (`small_resnet`; output
  stride 8 as `small_resnet_s8`).
- `VGG16`: conv1_1 .. conv5_3 without pool5 (the Faster R-CNN / Motifs / IMP trunk).
- `ResNet50`: stem + layer1..layer3 (C4), frozen batch norm (statistics in the non-trainable
  `batch_stats` collection) or GroupNorm.

Their convolutions and max pools are `sgg_jax.ops.conv` / `sgg_jax.ops.pool`: the same layers
and parameters as `nn.Conv` / `nn.max_pool`, with gradients that are matrix products and
elementwise work on the CPU (XLA:CPU's own conv gradients are slow), lax's ops elsewhere.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

# Every backbone conv is `ops.conv.Conv` (same parameters and results up to float rounding as
# `nn.Conv`; CPU gradients as matrix products, lax's own conv on GPU / TPU). Measured forward +
# backward on this 2-core CPU: small_resnet_s8 at batch 8, 128 px 1.68x faster, VGG16 at batch
# 2, 256 px 3.46x, ResNet-50 C4 1.02x.
from sgg_jax.ops.conv import Conv
from sgg_jax.ops.pool import max_pool

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images: jnp.ndarray, dtype: Any = jnp.float32) -> jnp.ndarray:
    """uint8 RGB [B, H, W, 3] -> (x / 255 - mean) / std in `dtype` (torchvision's convention)."""
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
    return x.astype(dtype)


def _group_norm(channels: int, dtype: Any, name: str | None = None) -> nn.GroupNorm:
    """GroupNorm with at most 32 groups that divide the channel count (per-image, batch-free)."""
    groups = min(32, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(num_groups=groups, dtype=dtype, name=name)


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics: y = (x - mean) / sqrt(var + eps) * scale + bias.

    `mean` and `var` live in the `batch_stats` collection (never updated, not optimised);
    `scale` and `bias` are parameters (freeze them with the backbone's parameter group), which is
    how detectron-style backbones import torchvision BN weights (weight, bias, running_mean,
    running_var).
    """

    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32)).value
        var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32)).value
        mul = scale * jnp.reciprocal(jnp.sqrt(var + self.eps))
        add = bias - mean * mul
        return (x * mul.astype(self.dtype) + add.astype(self.dtype)).astype(self.dtype)


# ----------------------------------------------------------------------------------------------
# SmallResNet


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and an identity (or 1x1 projection) shortcut."""

    channels: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = lambda c, k, s, name: Conv(c, (k, k), (s, s), padding="SAME", use_bias=False,
                                          dtype=self.dtype, name=name)
        y = conv(self.channels, 3, self.stride, "conv1")(x)
        y = nn.relu(_group_norm(self.channels, self.dtype, "norm1")(y))
        y = conv(self.channels, 3, 1, "conv2")(y)
        y = _group_norm(self.channels, self.dtype, "norm2")(y)
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = conv(self.channels, 1, self.stride, "proj")(x)
            x = _group_norm(self.channels, self.dtype, "proj_norm")(x)
        return nn.relu(x + y)


class SmallResNet(nn.Module):
    """A tiny ResNet for CPU runs: stem (stride 2) then 3 stages of basic blocks (stride 16).

    Attributes:
      widths: channels of the stem and the three stages; the output has widths[-1] channels.
      blocks_per_stage: basic blocks per stage.
    """

    widths: Sequence[int] = (32, 64, 128, 256)
    blocks_per_stage: int = 1
    dtype: Any = jnp.float32
    stride: int = 16

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, int]:
        del train  # GroupNorm behaves the same in training and evaluation.
        if len(self.widths) != 4:
            raise ValueError(f"SmallResNet.widths: expected 4 channel counts, got {self.widths}")
        if self.stride not in (8, 16):
            raise ValueError(f"SmallResNet.stride: expected 8 or 16, got {self.stride}")
        x = normalize_images(images, self.dtype)
        x = Conv(self.widths[0], (3, 3), (2, 2), padding="SAME", use_bias=False,
                 dtype=self.dtype, name="stem_conv")(x)
        x = nn.relu(_group_norm(self.widths[0], self.dtype, "stem_norm")(x))
        for s, width in enumerate(self.widths[1:]):
            for b in range(self.blocks_per_stage):
                # Output stride 8 keeps the last stage at the resolution of the one before.
                down = 2 if b == 0 and not (self.stride == 8 and s == 2) else 1
                x = BasicBlock(width, stride=down, dtype=self.dtype,
                               name=f"stage{s + 1}_block{b}")(x)
        return x, self.stride


# ----------------------------------------------------------------------------------------------
# VGG16

# (layer name, output channels); "pool" is a 2x2 max pool. torchvision `vgg16().features` indices
# of the convolutions are given for weight import: conv1_1=features.0, conv1_2=2, conv2_1=5,
# conv2_2=7, conv3_1=10, conv3_2=12, conv3_3=14, conv4_1=17, conv4_2=19, conv4_3=21,
# conv5_1=24, conv5_2=26, conv5_3=28 (features.30, pool5, is dropped: stride 16).
# torchvision kernels are OIHW; Flax kernels are HWIO (transpose (2, 3, 1, 0)).
_VGG16_LAYERS = (
    ("conv1_1", 64), ("conv1_2", 64), ("pool", 0),
    ("conv2_1", 128), ("conv2_2", 128), ("pool", 0),
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), ("pool", 0),
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), ("pool", 0),
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512),
)


class VGG16(nn.Module):
    """VGG16 convolutional trunk up to conv5_3 (stride 16, 512 channels), as in Faster R-CNN.

    Attributes:
      width_multiplier: scales every layer's channels (1.0 = the published network; smaller
        values give a cheap stand-in for tests).
    """

    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    stride: int = 16

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, int]:
        del train
        x = normalize_images(images, self.dtype)
        for name, channels in _VGG16_LAYERS:
            if name == "pool":
                x = max_pool(x, (2, 2), (2, 2))
            else:
                c = max(1, int(round(channels * self.width_multiplier)))
                x = nn.relu(Conv(c, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                                 name=name)(x))
        return x, self.stride


# ----------------------------------------------------------------------------------------------
# ResNet-50 (C4)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv, as torchvision).

    torchvision names: conv1/bn1 (1x1), conv2/bn2 (3x3), conv3/bn3 (1x1), downsample.0/.1.
    """

    channels: int  # bottleneck width; the output has 4 * channels
    stride: int = 1
    norm: str = "frozen_bn"
    dtype: Any = jnp.float32

    def _norm(self, c: int, name: str) -> nn.Module:
        if self.norm == "frozen_bn":
            return FrozenBatchNorm(dtype=self.dtype, name=name)
        return _group_norm(c, self.dtype, name)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        out_c = 4 * self.channels
        conv = lambda c, k, s, name: Conv(c, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2,
                                          use_bias=False, dtype=self.dtype, name=name)
        y = nn.relu(self._norm(self.channels, "bn1")(conv(self.channels, 1, 1, "conv1")(x)))
        y = nn.relu(self._norm(self.channels, "bn2")(conv(self.channels, 3, self.stride, "conv2")(y)))
        y = self._norm(out_c, "bn3")(conv(out_c, 1, 1, "conv3")(y))
        if self.stride != 1 or x.shape[-1] != out_c:
            x = self._norm(out_c, "downsample_bn")(conv(out_c, 1, self.stride, "downsample_conv")(x))
        return nn.relu(x + y)


# torchvision's layer1..layer4: (bottleneck width, blocks, stride of the first block).
RESNET50_LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


def resnet_stem(x: jnp.ndarray, channels: int, norm: str, dtype: Any) -> jnp.ndarray:
    """torchvision's stem (conv1 7x7/2, bn1, ReLU, 3x3/2 max pool), called inside a compact
    ResNet module so its layers are named conv1 / bn1 there (the weight-import names)."""
    x = Conv(channels, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False, dtype=dtype,
             name="conv1")(x)
    x = (FrozenBatchNorm(dtype=dtype, name="bn1") if norm == "frozen_bn"
         else _group_norm(channels, dtype, "bn1"))(x)
    return max_pool(nn.relu(x), (3, 3), (2, 2), padding=((1, 1), (1, 1)))


def resnet_layer(x: jnp.ndarray, layer: int, width: int, blocks: int, stride: int, norm: str,
                 dtype: Any) -> jnp.ndarray:
    """torchvision's layer{layer + 1}: `blocks` bottlenecks named layer{layer + 1}_{b}, the
    first with `stride` (called inside a compact ResNet module)."""
    for b in range(blocks):
        x = Bottleneck(width, stride=stride if b == 0 else 1, norm=norm, dtype=dtype,
                       name=f"layer{layer + 1}_{b}")(x)
    return x


class ResNet50(nn.Module):
    """ResNet-50 up to layer3 (C4: stride 16, 1024 channels), the Faster R-CNN C4 trunk.

    Attributes:
      norm: "frozen_bn" (affine with fixed statistics in `batch_stats`, for imported weights) or
        "group" (GroupNorm, for training from scratch).
      width_multiplier: scales the bottleneck widths (1.0 = published).
    """

    norm: str = "frozen_bn"
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    stride: int = 16

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, int]:
        del train
        if self.norm not in ("frozen_bn", "group"):
            raise ValueError(f"ResNet50.norm: expected 'frozen_bn' or 'group', got {self.norm!r}")
        w = lambda c: max(1, int(round(c * self.width_multiplier)))
        x = resnet_stem(normalize_images(images, self.dtype), w(64), self.norm, self.dtype)
        for layer, (width, blocks, stride) in enumerate(RESNET50_LAYERS[:3]):
            x = resnet_layer(x, layer, w(width), blocks, stride, self.norm, self.dtype)
        return x, self.stride


BACKBONES = ("small_resnet", "small_resnet_s8", "vgg16", "resnet50")


def build_backbone(name: str, dtype: Any = jnp.float32, /, **kwargs: Any) -> nn.Module:
    """The backbone called `name` (one of `BACKBONES`) with compute `dtype`.

    Extra keyword arguments go to the module (e.g. `widths` for small_resnet, `norm` for
    resnet50, `width_multiplier` for vgg16/resnet50).
    """
    classes = {"small_resnet": SmallResNet, "vgg16": VGG16, "resnet50": ResNet50,
               # Stride 8: twice the feature resolution for the small objects of low-resolution
               # canvases (the synthetic data's cups and bottles are ~5 px wide at 128 px).
               "small_resnet_s8": functools.partial(SmallResNet, stride=8)}
    if name not in classes:
        raise ValueError(f"model.backbone: expected one of {BACKBONES}, got {name!r}")
    return classes[name](dtype=dtype, **kwargs)
