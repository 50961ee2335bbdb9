"""The CFA model: a frozen pretrained backbone, the learnable patch descriptor (3×3 average
pooling of each level, bilinear resize to the first level, concatenation, a 1×1 CoordConv)
and the memory bank of normal patch embeddings. Pure ``nn.Module``, no training code."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stpm_edge.models.backbones import FeatureExtractor, create_backbone
from stpm_edge.models.cfa.config import CFAConfig


def coordinates(h: int, w: int) -> torch.Tensor:
    """(1, 2, h, w): the row and column coordinate channels of CoordConv, in [-1, 1]."""
    rows = torch.linspace(-1.0, 1.0, h) if h > 1 else torch.zeros(1)
    cols = torch.linspace(-1.0, 1.0, w) if w > 1 else torch.zeros(1)
    return torch.stack([rows.view(h, 1).expand(h, w), cols.view(1, w).expand(h, w)]).unsqueeze(0)


class CoordConv1x1(nn.Module):
    """A 1×1 convolution over (features ‖ coordinates) (Liu et al. 2018, CoordConv).

    The weight is stored as one (out, in + 2, 1, 1) convolution; the forward splits it so the
    coordinate part is a constant-input convolution added by broadcasting (the same sum, term
    for term, without an Expand of the coordinates to the batch in an exported graph)."""

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size=1)
        self.register_buffer("coords", coordinates(*size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        c = self.in_channels
        return F.conv2d(x, w[:, :c]) + F.conv2d(self.coords, w[:, c:], self.conv.bias)


class Descriptor(nn.Module):
    """Backbone levels → patch embeddings (N, D, h, w) at the first level's resolution."""

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.layer = CoordConv1x1(in_channels, out_channels, self.size)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        pooled = []
        for f in features:
            f = F.avg_pool2d(f, 3, stride=1, padding=1)
            if tuple(f.shape[-2:]) != self.size:
                f = F.interpolate(f, size=self.size, mode="bilinear", align_corners=False)
            pooled.append(f)
        return self.layer(torch.cat(pooled, dim=1))


class CFA(nn.Module):
    """``forward(x)`` → patch embeddings (N, D, h, w) (the backbone frozen and in eval mode).

    ``memory_bank`` (M, D): the normal patch embeddings, set once by
    :func:`stpm_edge.models.cfa.loss.init_memory_bank` before training and then fixed;
    ``radius``: the hypersphere radius r (a parameter when learnt, a buffer otherwise)."""

    def __init__(self, config: CFAConfig, image_size: tuple[int, int], backbone: FeatureExtractor) -> None:
        super().__init__()
        self.config = config
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.feature_size = config.feature_size(self.image_size)
        self.backbone = backbone
        c_in, c_out = config.embed_channels()
        self.descriptor = Descriptor(c_in, c_out, self.feature_size)
        h, w = self.feature_size
        self.register_buffer("memory_bank", torch.zeros(max(1, h * w // config.gamma_c), c_out))
        r = torch.tensor([config.radius], dtype=torch.float32)
        if config.learn_radius:
            self.radius = nn.Parameter(r)
        else:
            self.register_buffer("radius", r)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    @classmethod
    def build(cls, config: CFAConfig, image_size: tuple[int, int], *, pretrained: bool = True,
              weights_file: Path | None = None, seed: int | None = None) -> "CFA":
        config = config.resolved()
        backbone = create_backbone(config.backbone, config.layers, pretrained=pretrained, weights_file=weights_file)
        if seed is not None:
            torch.manual_seed(seed)
        return cls(config, image_size, backbone)

    def train(self, mode: bool = True) -> "CFA":
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in (*self.descriptor.parameters(), self.radius) if p.requires_grad]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.backbone(x)
        return self.descriptor(features)
