"""The RSTPM model: pair A is an :class:`~stpm_edge.models.stpm.model.STPM` (teacher A frozen,
student A of the same architecture); pair B is a different frozen pretrained teacher and an
:class:`~.attention.AttentionStudent`. Pure ``nn.Module``, no training code."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stpm_edge.models.backbones import create_backbone
from stpm_edge.models.rstpm.attention import AttentionStudent
from stpm_edge.models.rstpm.config import RSTPMConfig
from stpm_edge.models.rstpm.head import RSTPMHead
from stpm_edge.models.stpm.config import STPMConfig
from stpm_edge.models.stpm.model import STPM

Features = list[torch.Tensor]


class RSTPM(nn.Module):
    """``forward(x, x_b=None)`` → (t_a, s_a, t_b, s_b): teachers and student A on ``x``, student B
    on ``x_b`` (the image with a synthetic anomaly at train time; ``x`` itself at inference)."""

    def __init__(self, config: RSTPMConfig, image_size: tuple[int, int], pair_a: STPM, teacher_b: nn.Module,
                 student_b: AttentionStudent) -> None:
        super().__init__()
        self.config = config
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.pair_a = pair_a
        self.teacher_b = teacher_b
        self.student_b = student_b
        self.head = RSTPMHead(self.image_size, config.blur_sigma, config.combine, config.exponent_b)
        for p in self.teacher_b.parameters():
            p.requires_grad_(False)
        self.teacher_b.eval()

    @classmethod
    def build(cls, config: RSTPMConfig, image_size: tuple[int, int], *, pretrained: bool = True,
              teacher_weights: Path | None = None, seed: int | None = None) -> "RSTPM":
        """Teachers with ImageNet weights (``pretrained``; ``teacher_weights`` is pair A's), students random."""
        config = config.resolved()
        pair_a = STPM.build(STPMConfig(config.backbone, config.layers, 0.0), image_size, pretrained=pretrained,
                            teacher_weights=teacher_weights, seed=seed)
        teacher_b = create_backbone(config.teacher_b, config.layers_b, pretrained=pretrained)
        if seed is not None:
            torch.manual_seed(seed + 1)
        student_b = AttentionStudent(create_backbone(config.student_b, config.layers_b, pretrained=False))
        return cls(config, image_size, pair_a, teacher_b, student_b)

    @property
    def teacher_a(self) -> nn.Module:
        return self.pair_a.teacher

    @property
    def student_a(self) -> nn.Module:
        return self.pair_a.student

    def train(self, mode: bool = True) -> "RSTPM":
        super().train(mode)
        self.pair_a.teacher.eval()
        self.teacher_b.eval()
        return self

    def forward(self, x: torch.Tensor, x_b: torch.Tensor | None = None
                ) -> tuple[Features, Features, Features, Features]:
        t_a, s_a = self.pair_a(x)
        with torch.no_grad():
            t_b = self.teacher_b(x)
        return t_a, s_a, t_b, self.student_b(x if x_b is None else x_b)

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw anomaly map (N, 1, h, w) at the model input size and image score (N,)."""
        return self.head(*self.forward(x))
