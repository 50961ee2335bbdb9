"""The CFA anomaly-map math (the method's head), the one definition training, evaluation and
the ONNX exporter share.

For each patch embedding φ (D,) and memory items c_m (M, D):

    d²_m = ‖φ‖² − 2 φ·c_m + ‖c_m‖²       (one MatMul: the squared-distance expansion)
    d_1 ≤ … ≤ d_K = sqrt of the K smallest d²_m   (TopK, k = K, smallest)
    s = softmin(d_1..d_K)_1 · d_1                (the nearest distance, softmin-weighted)

then the patch map s (N, 1, h, w) is upsampled (bilinear) to the model input, optionally
Gaussian-blurred (σ = 4), and the image score is its maximum. Exported as Transpose,
MatMul, ReduceSum, Add/Sub/Mul, Clip, TopK, Sqrt, Softmax, Resize, Conv, ReduceMax — all
TensorRT-8.5 parseable; the memory bank is a constant initializer. All of it stays FP32
(large dot products whose difference is small).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stpm_edge.models.stpm.head import GaussianBlur


def patches(embeddings: torch.Tensor) -> torch.Tensor:
    """(N, D, h, w) → (N, h·w, D)."""
    n, d = embeddings.shape[:2]
    return embeddings.reshape(n, d, -1).transpose(1, 2)


def squared_distances(phi: torch.Tensor, bank_t: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """(N, P, D) patch embeddings, the bank transposed (D, M) and its squared norms (M,) →
    (N, P, M) squared distances, clamped at 0 (the expansion can round below it)."""
    phi_sq = torch.sum(phi * phi, dim=2, keepdim=True)
    return torch.clamp(phi_sq - 2.0 * torch.matmul(phi, bank_t) + bank_sq, min=0.0)


def nearest_squared(phi: torch.Tensor, bank_t: torch.Tensor, bank_sq: torch.Tensor, k: int) -> torch.Tensor:
    """(N, P, k): the k smallest squared distances of each patch to the bank, ascending."""
    return torch.topk(squared_distances(phi, bank_t, bank_sq), k, dim=2, largest=False, sorted=True).values


def patch_score(nearest_sq: torch.Tensor) -> torch.Tensor:
    """(N, P, K) ascending squared distances → (N, P): softmin over the K distances, the
    nearest one's weight times the nearest distance."""
    dist = torch.sqrt(nearest_sq)
    weight = torch.softmax(-dist, dim=2)
    return weight[..., 0] * dist[..., 0]


class MemorySearch(nn.Module):
    """Patch embeddings (N, D, h, w) → patch scores (N, 1, h, w) against a fixed memory bank."""

    def __init__(self, memory_bank: torch.Tensor, k: int) -> None:
        super().__init__()
        bank = memory_bank.detach().float()
        self.k = min(int(k), bank.shape[0])
        self.register_buffer("bank_t", bank.t().contiguous(), persistent=False)
        self.register_buffer("bank_sq", torch.sum(bank * bank, dim=1), persistent=False)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        n, _, h, w = embeddings.shape
        nearest = nearest_squared(patches(embeddings.float()), self.bank_t, self.bank_sq, self.k)
        return patch_score(nearest).reshape(n, 1, h, w)


class CFAMapHead(nn.Module):
    """Patch scores (N, 1, h, w) → (anomaly map (N, 1, H, W), image score (N,))."""

    def __init__(self, output_size: tuple[int, int], blur_sigma: float = 0.0, border: str = "renorm") -> None:
        super().__init__()
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.blur = GaussianBlur(blur_sigma, self.output_size, border) if blur_sigma and blur_sigma > 0 else None

    def forward(self, patch_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = F.interpolate(patch_map, size=self.output_size, mode="bilinear", align_corners=False)
        if self.blur is not None:
            amap = self.blur(amap)
        return amap, torch.amax(amap, dim=(1, 2, 3))
