"""The STPM model: a frozen pretrained teacher and a same-architecture student (random
init) sharing one input, plus the anomaly-map head. Pure ``nn.Module``, no training code."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stpm_edge.models.backbones import FeatureExtractor, create_backbone
from stpm_edge.models.stpm.config import STPMConfig
from stpm_edge.models.stpm.head import make_head


class STPM(nn.Module):
    """``forward(x)`` → (teacher features, student features); ``predict(x)`` → (map, score).

    ``x`` is the normalised float NCHW batch produced by :class:`stpm_edge.data.preprocess.Preprocess`.
    The teacher is frozen and stays in eval mode even when the module is put in training mode.
    """

    def __init__(self, config: STPMConfig, image_size: tuple[int, int], teacher: FeatureExtractor,
                 student: FeatureExtractor) -> None:
        super().__init__()
        self.config = config
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.teacher = teacher
        self.student = student
        self.head = make_head(config.head, self.image_size, config.blur_sigma, config.finest_stride())
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    @classmethod
    def build(cls, config: STPMConfig, image_size: tuple[int, int], *, pretrained: bool = True,
              teacher_weights: Path | None = None, seed: int | None = None) -> "STPM":
        """Teacher with ImageNet weights (``pretrained``), student randomly initialised."""
        config = config.resolved()
        teacher = create_backbone(config.backbone, config.layers, pretrained=pretrained, weights_file=teacher_weights)
        if seed is not None:
            torch.manual_seed(seed)
        student = create_backbone(config.backbone, config.layers, pretrained=False)
        return cls(config, image_size, teacher, student)

    def train(self, mode: bool = True) -> "STPM":
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            t = self.teacher(x)
        return t, self.student(x)

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw anomaly map (N, 1, h, w) at the head's resolution (``config.head``) and image score (N,)."""
        t, s = self.forward(x)
        return self.head(t, s)
