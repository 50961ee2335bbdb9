"""RSTPM's training objective: pair A's STPM loss on the clean image plus, weighted, pair B's
reconstruction loss: the attention student sees the image with a synthetic anomaly and is
matched (the STPM level distance, normalised features) to teacher B's features of the CLEAN
image. Per image (N,); the scalar loss is the batch mean."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from stpm_edge.models.stpm.loss import stpm_loss_per_image


def reconstruction_loss_per_image(teacher_clean: Sequence[torch.Tensor], student_altered: Sequence[torch.Tensor]
                                  ) -> torch.Tensor:
    """(N,): Σ_l mean over pixels of 0.5‖norm t_l(clean) − norm s_l(altered)‖²."""
    return stpm_loss_per_image(teacher_clean, student_altered)


def rstpm_loss_per_image(teacher_a: Sequence[torch.Tensor], student_a: Sequence[torch.Tensor],
                         teacher_b_clean: Sequence[torch.Tensor], student_b_altered: Sequence[torch.Tensor],
                         weight_b: float = 1.0) -> torch.Tensor:
    return (stpm_loss_per_image(teacher_a, student_a)
            + weight_b * reconstruction_loss_per_image(teacher_b_clean, student_b_altered))
