"""STPM training loss: Σ over levels of the per-pixel mean of 0.5‖norm t − norm s‖²."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from stpm_edge.models.stpm.head import level_distance


def stpm_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    """Scalar loss averaged over the batch (per-image values: :func:`stpm_loss_per_image`)."""
    return stpm_loss_per_image(teacher, student).mean()


def stpm_loss_per_image(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N,) loss of each image: Σ_l mean over the level's pixels of the level distance."""
    return sum(level_distance(t, s).mean(dim=(1, 2, 3)) for t, s in zip(teacher, student))
