"""The STPM anomaly-map math (the method's head) — the single definition used by the loss, training,
evaluation and the ONNX exporter (which traces :class:`AnomalyMapHead` unchanged).

Per level ``l`` (Wang et al., "Student-Teacher Feature Pyramid Matching for Anomaly
Detection", BMVC 2021):

    t̂ = t / max(‖t‖₂, eps),  ŝ = s / max(‖s‖₂, eps)        (along channels)
    d_l = 0.5 · ‖t̂ − ŝ‖²                                      (N, 1, h_l, w_l)
    map = ∏_l upsample_bilinear(d_l, output size)
    score = max(map)                                          (after the optional blur)

Two resolutions of the same math (``STPMConfig.head``):

* ``model`` (the original): every level upsampled to the model input size, product, blur σ
  (input pixels), max — all at e.g. 256×256.
* ``feature`` (as the official STPM code): every level upsampled once to the finest
  level's grid (e.g. 64×64 at stride 4; the finest level itself is not resampled), product
  there, blur with σ / stride (the same Gaussian in input pixels: a σ-pixel blur is σ/s grid
  cells, and the bilinear upsampling to the input size that follows is the one the
  ``model`` head already applies to the finest level), score = max of that low-resolution
  map. The map leaves the head at the grid; export/runtime resize it to the model or frame
  size. 16× fewer pixels for every operation after the distances.

Everything is written with basic ops (ReduceSum of squares, Sqrt, Max with eps, Div,
Resize, Mul, Conv, ReduceMax) so it exports to an ONNX graph that TensorRT 8.5+ parses;
no LpNormalization.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-12


def l2_normalize(features: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Divide by the channel-wise L2 norm, clamped below at ``eps``."""
    norm = torch.sqrt(torch.sum(features * features, dim=1, keepdim=True))
    return features / torch.clamp(norm, min=eps)


def level_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """0.5·‖norm(t) − norm(s)‖² along channels: (N, C, h, w) pair → (N, 1, h, w)."""
    diff = l2_normalize(teacher) - l2_normalize(student)
    return 0.5 * torch.sum(diff * diff, dim=1, keepdim=True)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ceil(4σ) (kernel size 2·radius+1)."""
    radius = max(1, math.ceil(4.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


class GaussianBlur(nn.Module):
    """Separable Gaussian blur with zero padding, renormalised at the borders
    (``blur(x) / blur(1)``), so a constant map stays constant everywhere.

    ``size`` (h, w) fixes the map size, so the border renormalisation is a constant
    (no shape arithmetic in an exported graph).

    Each 1-D pass runs as a *depthwise* convolution with the map's rows as channels (the
    vertical pass on the transposed map): the same arithmetic as a 1-channel convolution,
    term for term, but backends vectorise depthwise kernels across channels and run
    1-channel ones nearly scalar (ONNX Runtime CPU, machine B of BENCHMARKS.md: 0.44 against
    2.12 ms for a 256×256 map, 5.3 against 37.1 ms at 1920×1080; benchmarks/bench_blur.py).

    ``border="reflect"`` pads by mirroring instead (without repeating the edge pixel, as
    ``F.pad(mode="reflect")``, anomalib's ``GaussianBlur2d``): a constant-index Gather per
    pass (plain ops, whatever Pad modes a parser supports), then the same convolutions unpadded."""

    BORDERS = ("renorm", "reflect")

    def __init__(self, sigma: float, size: tuple[int, int], border: str = "renorm") -> None:
        super().__init__()
        k = gaussian_kernel1d(sigma)
        self.sigma = float(sigma)
        self.size = (int(size[0]), int(size[1]))
        self.pad = (k.numel() - 1) // 2
        if border not in self.BORDERS:
            raise ValueError(f"GaussianBlur: border {border!r}, expected one of {self.BORDERS}")
        self.border = border
        h, w = self.size
        self.register_buffer("k_rows", k.view(1, 1, 1, -1).repeat(h, 1, 1, 1), persistent=False)
        self.register_buffer("k_cols", k.view(1, 1, 1, -1).repeat(w, 1, 1, 1), persistent=False)
        if border == "reflect":
            if self.pad >= min(h, w):
                raise ValueError(f"GaussianBlur: a reflected border of {self.pad} needs maps larger than {h}x{w}")
            self.register_buffer("idx_rows", _reflect_index(w, self.pad), persistent=False)
            self.register_buffer("idx_cols", _reflect_index(h, self.pad), persistent=False)
            self.inv_norm = None
        else:
            self.register_buffer("inv_norm", 1.0 / self._conv(torch.ones(1, 1, h, w)), persistent=False)

    def _pass(self, x: torch.Tensor, kernel: torch.Tensor, channels: int, index: str) -> torch.Tensor:
        if self.border == "reflect":
            return F.conv2d(torch.index_select(x, 3, getattr(self, index)), kernel, groups=channels)
        return F.conv2d(x, kernel, padding=(0, self.pad), groups=channels)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        x = self._pass(x.reshape(-1, h, 1, w), self.k_rows, h, "idx_rows")  # along each row
        x = x.reshape(-1, 1, h, w).transpose(2, 3).reshape(-1, w, 1, h)
        x = self._pass(x, self.k_cols, w, "idx_cols")  # along each column
        return x.reshape(-1, 1, w, h).transpose(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (tuple(x.shape[-2:]) != self.size or x.shape[1] != 1):
            raise ValueError(f"GaussianBlur: expected (N, 1, {self.size[0]}, {self.size[1]}) maps, got {tuple(x.shape)}")
        out = self._conv(x)
        return out if self.inv_norm is None else out * self.inv_norm


def _reflect_index(n: int, pad: int) -> torch.Tensor:
    """Indices of a length-``n`` axis padded by ``pad`` mirrored samples each side (edge not repeated)."""
    i = torch.arange(-pad, n + pad).abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def feature_grid(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The grid of a level of ``stride`` on an input of ``image_size`` (h, w): ⌈size / stride⌉
    (what a "same"-padded strided trunk produces; a level of another size is resampled onto it)."""
    return (-(-int(image_size[0]) // stride), -(-int(image_size[1]) // stride))


class AnomalyMapHead(nn.Module):
    """Teacher and student pyramids → (anomaly map (N,1,H,W), image score (N,)) at ``output_size``.

    The ``model`` head is ``AnomalyMapHead(image_size, σ)``; the ``feature`` head is
    :meth:`at_features` — the same module on the finest level's grid with σ scaled to it."""

    def __init__(self, output_size: tuple[int, int], blur_sigma: float = 0.0) -> None:
        super().__init__()
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.blur = GaussianBlur(blur_sigma, self.output_size) if blur_sigma and blur_sigma > 0 else None

    @classmethod
    def at_features(cls, image_size: tuple[int, int], finest_stride: int, blur_sigma: float = 0.0) -> "AnomalyMapHead":
        """The head at feature resolution: the finest level's grid, σ (input pixels) / stride."""
        return cls(feature_grid(image_size, finest_stride), blur_sigma / finest_stride if blur_sigma else 0.0)

    def forward(self, teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        amap = None
        for t, s in zip(teacher, student):
            d = level_distance(t, s)
            if tuple(d.shape[-2:]) != self.output_size:  # the feature head's finest level is already there
                d = F.interpolate(d, size=self.output_size, mode="bilinear", align_corners=False)
            amap = d if amap is None else amap * d
        if self.blur is not None:
            amap = self.blur(amap)
        score = torch.amax(amap, dim=(1, 2, 3))
        return amap, score


def make_head(resolution: str, image_size: tuple[int, int], blur_sigma: float, finest_stride: int) -> AnomalyMapHead:
    """The head at ``resolution`` (``model`` or ``feature``, config.HEADS); σ in input pixels for both."""
    if resolution == "feature":
        return AnomalyMapHead.at_features(image_size, finest_stride, blur_sigma)
    return AnomalyMapHead(image_size, blur_sigma)
