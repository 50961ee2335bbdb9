"""The multi-perception segmentation network: multi-level discrepancy maps → anomaly logits.

Input: the per-level discrepancy maps (normality and abnormality branch, ``1 - cos`` with the
teacher) resized to the finest level's grid, one channel each. The network (our reading of
the paper's "multi-perception segmentation head with multiple attention"):

    BN (of the inputs) → conv3×3 → [four parallel 3×3 convs, dilation 1, 2, 4, 8]  (multiple receptive fields)
       → channel attention (squeeze-excitation)                   (which level/branch to trust)
       → spatial attention (conv7×7 over channel mean and max)    (where to focus)
       → conv3×3 → conv1×1 → one logit per cell

Only Conv/BatchNorm/Relu/Sigmoid/GlobalAveragePool/ReduceMean/ReduceMax/Concat/Mul: ops that
TensorRT 8.5 parses. The maps it reads are FP32 distances; whether it may run in low precision
is the method's choice (``DMDDMethod.low_precision``).
"""
from __future__ import annotations

import torch
from torch import nn

DILATIONS = (1, 2, 4, 8)


def _cbr(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class InputNorm(nn.BatchNorm2d):
    """Batch norm of the input maps (no convolution before it to fold into): in eval mode the
    same affine map written as Mul + Add, so the exported graph holds no BatchNormalization."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.pool(x))


class SpatialAttention(nn.Module):
    def __init__(self, k: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(stats))


class MultiPerceptionSegNet(nn.Module):
    """(N, C_in, h, w) discrepancy maps → (N, 1, h, w) logits."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        branch = width // 2
        self.inorm = InputNorm(in_channels)
        self.stem = _cbr(in_channels, width)
        self.branches = nn.ModuleList(_cbr(width, branch, 3, d) for d in DILATIONS)
        fused = branch * len(DILATIONS)
        self.channel_att = ChannelAttention(fused)
        self.spatial_att = SpatialAttention()
        self.out = nn.Sequential(_cbr(fused, width), nn.Conv2d(width, 1, 1))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.inorm(maps))
        x = torch.cat([b(x) for b in self.branches], dim=1)
        x = self.spatial_att(self.channel_att(x))
        return self.out(x)
