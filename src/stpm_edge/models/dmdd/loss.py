"""DMDD's training objective (pure functions; per-image values ``(N,)``).

With ``x`` a good image, ``x̃`` the same image with a synthetic anomaly (mask ``M``; ``x̃ = x``
and ``M = 0`` when the image was not altered), ``T`` the teacher, ``Sn``/``Sa`` the student's
normality/abnormality features and ``d = 1 − cos`` along channels (STPM's level distance):

* **normality guidance** (the student learns to erase anomalies): ``Σ_l mean d(T(x), Sn(x̃))``
  — the target is the teacher's features of the *clean* image;
* **abnormality inverse mimicking** (acts only inside the mask):
  ``Σ_l Σ_p w_p · relu(margin − d(T(x̃), Sa(x̃)))_p / Σ_p w_p``, ``w`` the mask's area share of
  each feature cell (zero outside, so no gradient there);
* **abnormality fit outside the mask** (the branch stays a distillation of the teacher on
  normal texture, so only anomalies raise its discrepancy): the same with ``1 − w`` and ``d``;
* **segmentation**: focal (γ = 2) + Dice of the segmentation logits against ``w`` on the grid.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from stpm_edge.models.stpm.head import level_distance

EPS = 1e-6


def cell_weights(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N,1,H,W) 0/1 mask → (N,1,h,w) share of each cell covered (area pooling), in [0, 1]."""
    return F.interpolate(mask.float(), size=tuple(size), mode="area")


def normality_loss(teacher_clean: Sequence[torch.Tensor], normal: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(level_distance(t, s).mean(dim=(1, 2, 3)) for t, s in zip(teacher_clean, normal))


def _weighted_mean(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (values * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp(min=EPS)


def abnormality_loss(teacher_anom: Sequence[torch.Tensor], abnormal: Sequence[torch.Tensor], mask: torch.Tensor,
                     margin: float = 1.0) -> torch.Tensor:
    """Push-away inside the mask; 0 for an image without anomaly."""
    total = 0.0
    for t, s in zip(teacher_anom, abnormal):
        w = cell_weights(mask, t.shape[-2:])
        total = total + _weighted_mean(F.relu(margin - level_distance(t, s)), w)
    return total


def abnormal_fit_loss(teacher_anom: Sequence[torch.Tensor], abnormal: Sequence[torch.Tensor],
                      mask: torch.Tensor) -> torch.Tensor:
    """Distillation of the abnormality branch outside the mask."""
    total = 0.0
    for t, s in zip(teacher_anom, abnormal):
        w = 1.0 - cell_weights(mask, t.shape[-2:])
        total = total + _weighted_mean(level_distance(t, s), w)
    return total


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss (soft targets allowed), mean over each image's pixels → (N,)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    return ((1 - p_t) ** gamma * bce).mean(dim=(1, 2, 3))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 − soft Dice per image → (N,); an empty target asks for an empty prediction."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    return 1 - (2 * inter + smooth) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + smooth)


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return focal_loss(logits, target) + dice_loss(logits, target)
