"""RSTPM's anomaly map: STPM's per-pair head (product over each pair's three level distances,
:class:`~stpm_edge.models.stpm.head.AnomalyMapHead`, unblurred) for pair A and pair B, fused by
product, ``map_A · map_B^exponent_b`` (1: the product of all six level maps; scale-free
either way, so the pairs need no calibration against each other), then STPM's Gaussian blur and the max as the image score. ``a`` / ``b``
keep one pair's map (the ablation). All FP32."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stpm_edge.models.stpm.head import AnomalyMapHead, GaussianBlur


class RSTPMHead(nn.Module):
    def __init__(self, output_size: tuple[int, int], blur_sigma: float = 0.0, combine: str = "product",
                 exponent_b: float = 1.0) -> None:
        super().__init__()
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.pair = AnomalyMapHead(self.output_size, 0.0)  # no parameters: shared by both pairs
        self.blur = GaussianBlur(blur_sigma, self.output_size) if blur_sigma and blur_sigma > 0 else None
        self.combine = combine
        self.exponent_b = float(exponent_b)

    def pair_maps(self, ta: Sequence[torch.Tensor], sa: Sequence[torch.Tensor], tb: Sequence[torch.Tensor],
                  sb: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pair(ta, sa)[0], self.pair(tb, sb)[0]

    def forward(self, ta: Sequence[torch.Tensor], sa: Sequence[torch.Tensor], tb: Sequence[torch.Tensor],
                sb: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.combine == "a":
            amap = self.pair(ta, sa)[0]
        elif self.combine == "b":
            amap = self.pair(tb, sb)[0]
        else:
            map_a, map_b = self.pair_maps(ta, sa, tb, sb)
            if self.exponent_b == 0.5:
                map_b = torch.sqrt(map_b)
            elif self.exponent_b != 1.0:
                map_b = torch.pow(map_b, self.exponent_b)
            amap = map_a * map_b
        if self.blur is not None:
            amap = self.blur(amap)
        return amap, torch.amax(amap, dim=(1, 2, 3))
