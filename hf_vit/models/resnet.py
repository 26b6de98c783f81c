"""The BiT ResNet that feeds the hybrid: weight-standardised convolutions, GroupNorm and TF "SAME" padding.

It follows the official `models_resnet.py` (not the pre-activation BiT): conv → norm → ReLU, bottleneck units with a
projection shortcut where the shape changes. This file travels to the Hub with saved weights (relative imports only).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration import HybridVisionTransformerConfig


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad as TensorFlow's "SAME": the output has ceil(size / stride) pixels, extra padding goes after."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        # (ceil(size / stride) - 1) * stride + kernel - size, written with `%` so that a symbolic size that is a
        # multiple of the stride (torch.export with dynamic height and width) folds to a constant.
        total = max(-size % stride + kernel - stride, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class StdConv2d(nn.Conv2d):
    """Convolution with weight standardisation: each filter is centred and divided by (its std + eps)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, eps: float = 1e-5):
        # Stride 1 with an odd kernel is symmetric, so the convolution pads itself; strided ones pad in `forward`.
        padding = kernel_size // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        mean = weight.mean(dim=(1, 2, 3), keepdim=True)
        std = weight.std(dim=(1, 2, 3), unbiased=False, keepdim=True)
        weight = (weight - mean) / (std + self.eps)
        if self.stride[0] > 1:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, weight, None, self.stride, self.padding)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResNetStem(nn.Module):
    """7×7 stride-2 convolution, GroupNorm, ReLU and a 3×3 stride-2 max-pool: stride 4 in all."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv = StdConv2d(in_channels, width, kernel_size=7, stride=2)
        self.norm = group_norm(width)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(pixel_values)))
        return F.max_pool2d(pad_same(x, 3, 2, value=-math.inf), kernel_size=3, stride=2)


class Downsample(nn.Module):
    """The projection shortcut of a unit whose input and output shapes differ."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv = StdConv2d(in_channels, out_channels, kernel_size=1, stride=stride)
        self.norm = group_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class BottleneckUnit(GradientCheckpointingLayer):
    """1×1 → 3×3 (strided) → 1×1 with 4× channels, each followed by GroupNorm; ReLU after adding the shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        mid_channels = out_channels // 4
        self.conv1 = StdConv2d(in_channels, mid_channels, kernel_size=1)
        self.norm1 = group_norm(mid_channels)
        self.conv2 = StdConv2d(mid_channels, mid_channels, kernel_size=3, stride=stride)
        self.norm2 = group_norm(mid_channels)
        self.conv3 = StdConv2d(mid_channels, out_channels, kernel_size=1)
        self.norm3 = group_norm(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = Downsample(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu(shortcut + self.norm3(self.conv3(y)))


class ResNetStage(nn.Sequential):
    """Units at one resolution; the first one changes the width and, after the first stage, halves the size."""


class ResNetBackbone(nn.Module):
    """Stem and stages of the hybrid's ResNet; returns the last feature map (batch, channels, height, width)."""

    def __init__(self, config: HybridVisionTransformerConfig):
        super().__init__()
        width = 64 * config.resnet_width_factor
        self.stem = ResNetStem(config.num_channels, width)
        stages, in_channels = [], width
        for index, units in enumerate(config.resnet_layers):
            out_channels = 4 * width * 2**index
            stride = 1 if index == 0 else 2
            stage = [BottleneckUnit(in_channels, out_channels, stride)]
            stage += [BottleneckUnit(out_channels, out_channels, 1) for _ in range(units - 1)]
            stages.append(ResNetStage(*stage))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixel_values)
        for stage in self.stages:
            x = stage(x)
        return x
