"""DMDD's anomaly-map math — the one definition the loss, training, evaluation and the ONNX
exporter share.

Per level ``l`` the discrepancy of a student branch with the teacher is STPM's level distance
(:func:`stpm_edge.models.stpm.head.level_distance`): ``d = 0.5‖t̂ − ŝ‖² = 1 − cos(t, s)``,
in FP32. The normality branch gives ``dn_l``, the abnormality branch ``da_l``.

* with the segmentation network (default): the maps ``[dn_1..dn_L, da_1..da_L]`` are resized
  to the finest level's grid and stacked as channels; the network's logits → sigmoid →
  bilinear resize to the output size → the map (a probability of "anomalous");
* without it (``fuse=product``; the ablation): ``map = ∏_l resize(½(dn_l + da_l))`` (``dn_l``
  alone without the abnormality branch), STPM's fusion;
* ``fuse=normality``: ``∏_l resize(dn_l)``, the normality branch alone (the student that
  learnt to erase anomalies);
* ``fuse=seg_product`` / ``seg_normality``: the segmentation probability times one of those
  products, so a pixel must look anomalous to both the network and the plain discrepancies.

Then the optional Gaussian blur (STPM's :class:`GaussianBlur`) and the image score: the
map's max, or the mean of its ``topk`` largest values.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stpm_edge.models.dmdd.config import NO_SEG_FUSES
from stpm_edge.models.stpm.head import GaussianBlur, level_distance


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def level_maps(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-level discrepancy ``1 - cos`` (N, 1, h_l, w_l), computed in FP32."""
    return [level_distance(t.float(), s.float()) for t, s in zip(teacher, student)]


def discrepancy_stack(teacher: Sequence[torch.Tensor], normal: Sequence[torch.Tensor],
                      abnormal: Sequence[torch.Tensor] | None, grid: tuple[int, int]) -> torch.Tensor:
    """The segmentation network's input: (N, L or 2L, *grid)."""
    maps = level_maps(teacher, normal) + (level_maps(teacher, abnormal) if abnormal is not None else [])
    return torch.cat([resize(m, grid) for m in maps], dim=1)


def product_map(teacher: Sequence[torch.Tensor], normal: Sequence[torch.Tensor],
                abnormal: Sequence[torch.Tensor] | None, size: tuple[int, int]) -> torch.Tensor:
    """The ablation's map without the segmentation network: ∏_l resize(½(dn_l + da_l))."""
    dn = level_maps(teacher, normal)
    da = level_maps(teacher, abnormal) if abnormal is not None else dn
    amap = None
    for a, b in zip(dn, da):
        d = resize(0.5 * (a + b) if abnormal is not None else a, size)
        amap = d if amap is None else amap * d
    return amap


class DMDDHead(nn.Module):
    """Teacher features and the two student branches → (anomaly map (N,1,H,W), score (N,))."""

    def __init__(self, output_size: tuple[int, int], grid: tuple[int, int], seg: nn.Module | None,
                 blur_sigma: float = 0.0, score: str = "max", topk: int = 100, fuse: str = "seg") -> None:
        super().__init__()
        if (seg is None) != (fuse in NO_SEG_FUSES):
            raise ValueError(f"fuse={fuse} with{'out' if seg is None else ''} a segmentation network")
        self.fuse = fuse
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.grid = (int(grid[0]), int(grid[1]))
        self.seg = seg
        self.blur = GaussianBlur(blur_sigma, self.output_size) if blur_sigma and blur_sigma > 0 else None
        self.score_kind = score
        self.topk = min(int(topk), self.output_size[0] * self.output_size[1])

    def raw_map(self, teacher: Sequence[torch.Tensor], normal: Sequence[torch.Tensor],
                abnormal: Sequence[torch.Tensor] | None) -> torch.Tensor:
        branches = None if self.fuse.endswith("normality") else abnormal
        if self.seg is None:
            return product_map(teacher, normal, branches, self.output_size)
        logits = self.seg(discrepancy_stack(teacher, normal, abnormal, self.grid))
        prob = resize(torch.sigmoid(logits), self.output_size)
        if self.fuse != "seg":
            return prob * product_map(teacher, normal, branches, self.output_size)
        return prob

    def forward(self, teacher: Sequence[torch.Tensor], normal: Sequence[torch.Tensor],
                abnormal: Sequence[torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.raw_map(teacher, normal, abnormal)
        if self.blur is not None:
            amap = self.blur(amap)
        return amap, image_score(amap, self.score_kind, self.topk)


def image_score(amap: torch.Tensor, kind: str, k: int) -> torch.Tensor:
    """max of the map, or the mean of its ``k`` largest values: (N,1,H,W) → (N,)."""
    if kind == "topk":
        return torch.topk(amap.flatten(1), k, dim=1).values.mean(dim=1)
    return torch.amax(amap, dim=(1, 2, 3))
