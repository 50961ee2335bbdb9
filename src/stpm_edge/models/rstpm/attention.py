"""Pair B's student: a randomly initialised trunk with an attention module after each tapped
level (the attended features are both the level's output and the next stage's input).

The attention is CBAM-style (Woo et al., ECCV 2018): a channel gate from the global average
(two 1x1 convolutions, ReLU, sigmoid), then a spatial gate from the channel mean and max
(one 7x7 convolution, sigmoid). Trained to turn an image with a synthetic anomaly into the
teacher's features of the clean image, the spatial gate learns where the input can be
passed through (normal regions) and where it must be re-synthesised. Every op (GlobalAveragePool,
Conv, Relu, Sigmoid, ReduceMean, ReduceMax, Concat, Mul) is TensorRT-8.5-parseable.
"""
from __future__ import annotations

import torch
from torch import nn

from stpm_edge.models.backbones import FeatureExtractor


class Attention(nn.Module):
    """x (N, C, h, w) → x · channel gate · spatial gate, same shape."""

    def __init__(self, channels: int, reduction: int = 4, kernel: int = 7) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.channel = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, channels, 1), nn.Sigmoid())
        self.spatial = nn.Sequential(nn.Conv2d(2, 1, kernel, padding=kernel // 2), nn.Sigmoid())

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([torch.mean(x, dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)], dim=1)
        return self.spatial(stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial_gate(x)


class AttentionStudent(nn.Module):
    """``trunk`` (a :class:`FeatureExtractor`) with ``attention[k]`` after its k-th tapped level."""

    def __init__(self, trunk: FeatureExtractor) -> None:
        super().__init__()
        self.trunk = trunk
        self.attention = nn.ModuleList(Attention(c) for c in trunk.channels)
        self._taps = [trunk.spec.levels.index(name) for name in trunk.layers]

    @property
    def channels(self) -> list[int]:
        return self.trunk.channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.trunk.stem(x)
        out = []
        for i, stage in enumerate(self.trunk.stages):
            x = stage(x)
            if i in self._taps:
                x = self.attention[self._taps.index(i)](x)
                out.append(x)
        return out
