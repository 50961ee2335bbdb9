"""The DMDD model: a frozen pretrained teacher, the decouple student and the segmentation
network. Pure ``nn.Module``; the training objective is in :mod:`.loss`, the map in :mod:`.head`.

The *decouple student* is a same-architecture trunk (random init, as STPM's student) whose
tapped early features go, per level, through a small 1×1 expansion (C → 2C → 2C channels)
that is split into a *normality* part and an *abnormality* part of C channels each, both
compared with the teacher's C channels. Without the abnormality branch (ablation) the
expansion gives the normality part only.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from stpm_edge.models.backbones import FeatureExtractor, create_backbone
from stpm_edge.models.dmdd.config import NO_SEG_FUSES, DMDDConfig
from stpm_edge.models.dmdd.head import DMDDHead
from stpm_edge.models.dmdd.segnet import MultiPerceptionSegNet


class DecoupleHead(nn.Module):
    """One level's student feature (N, C, h, w) → normality (and abnormality) features (N, C, h, w)."""

    def __init__(self, channels: int, abnormality: bool) -> None:
        super().__init__()
        self.channels = int(channels)
        self.abnormality = bool(abnormality)
        self.expand = nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False), nn.BatchNorm2d(2 * channels),
                                    nn.ReLU(inplace=True))
        self.split = nn.Conv2d(2 * channels, (2 if abnormality else 1) * channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        y = self.split(self.expand(x))
        if not self.abnormality:
            return y, None
        return y[:, :self.channels], y[:, self.channels:]


class DecoupleStudent(nn.Module):
    """Trunk + per-level decouple heads: x → (normality features, abnormality features or None)."""

    def __init__(self, trunk: FeatureExtractor, abnormality: bool) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(DecoupleHead(c, abnormality) for c in trunk.channels)
        self.abnormality = bool(abnormality)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        pairs = [h(f) for h, f in zip(self.heads, self.trunk(x))]
        normal = [p[0] for p in pairs]
        return normal, ([p[1] for p in pairs] if self.abnormality else None)


class DMDD(nn.Module):
    """``forward(x)`` → (teacher, normality, abnormality-or-None) features; ``predict(x)`` → (map, score)."""

    def __init__(self, config: DMDDConfig, image_size: tuple[int, int], teacher: FeatureExtractor,
                 student: DecoupleStudent, seg: MultiPerceptionSegNet | None) -> None:
        super().__init__()
        self.config = config
        self.image_size = (int(image_size[0]), int(image_size[1]))
        stride = teacher.strides[0]
        self.grid = (math.ceil(self.image_size[0] / stride), math.ceil(self.image_size[1] / stride))
        self.teacher = teacher
        self.student = student
        self.seg = seg
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    @classmethod
    def build(cls, config: DMDDConfig, image_size: tuple[int, int], *, pretrained: bool = True,
              teacher_weights: Path | None = None, seed: int | None = None) -> "DMDD":
        config = config.resolved()
        teacher = create_backbone(config.backbone, config.layers, pretrained=pretrained, weights_file=teacher_weights)
        if seed is not None:
            torch.manual_seed(seed)
        trunk = create_backbone(config.backbone, config.layers, pretrained=False)
        student = DecoupleStudent(trunk, config.abnormality)
        n_maps = len(config.layers) * (2 if config.abnormality else 1)
        seg = MultiPerceptionSegNet(n_maps) if config.seg else None
        return cls(config, image_size, teacher, student, seg)

    def train(self, mode: bool = True) -> "DMDD":
        super().train(mode)
        self.teacher.eval()
        return self

    def make_head(self, blur_sigma: float | None = None) -> DMDDHead:
        c = self.config
        sigma = c.blur_sigma if blur_sigma is None else blur_sigma
        seg = None if c.fuse in NO_SEG_FUSES else self.seg  # fuse=product/normality: the trained net is unused
        return DMDDHead(self.image_size, self.grid, seg, sigma, c.score, c.topk, c.fuse)

    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.teacher(x)

    def forward(self, x: torch.Tensor):
        return (self.teacher_features(x), *self.student(x))

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.make_head()(*self.forward(x))
