"""The one preprocessing definition: uint8 BGR frames → normalised float RGB NCHW.

``Preprocess`` is an ``nn.Module`` so that training, evaluation, the ONNX exporter (which
puts it inside the graph) and the runtime all run *the same code*:

    uint8 NHWC BGR ─cast─▶ float NCHW ─bilinear resize (align_corners=False, no antialias)─▶
    model size ─BGR→RGB─▶ /255 ─(x-mean)/std─▶ float NCHW RGB

Bilinear without antialiasing is used because ONNX ``Resize`` only gained antialiasing in
opset 18 while TensorRT 8.5 (JetPack 5) parses up to opset 17.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PreprocessSpec:
    """Model input size (height, width) and the per-channel RGB mean/std on the 0..1 scale."""

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Preprocess(nn.Module):
    """uint8 (N, H, W, 3) BGR frames of any size → float32 (N, 3, h, w) normalised RGB."""

    def __init__(self, spec: PreprocessSpec) -> None:
        super().__init__()
        self.spec = spec
        self.size = (int(spec.image_size[0]), int(spec.image_size[1]))
        std = torch.tensor(spec.std, dtype=torch.float32)
        mean = torch.tensor(spec.mean, dtype=torch.float32)
        # (x / 255 - mean) / std == x * scale + shift, folded into one affine per channel.
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).to(torch.float32)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=False)
        x = x[:, [2, 1, 0]]  # BGR -> RGB (a Gather with constant indices in ONNX)
        return x * self.scale + self.shift


def preprocess_images(images: Sequence[np.ndarray], spec: PreprocessSpec) -> torch.Tensor:
    """Preprocess uint8 HxWx3 BGR images (sizes may differ) into one float NCHW batch."""
    pre = Preprocess(spec)
    with torch.no_grad():
        return torch.cat([pre(torch.from_numpy(np.ascontiguousarray(img))[None]) for img in images])
