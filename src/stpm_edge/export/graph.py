"""The exported network: frames → preprocessing → fused teacher+student trunks → STPM head →
normalised (anomaly_map, score). Built from the same modules that train and eval use
(:class:`Preprocess`, the trunks, :class:`AnomalyMapHead`), so the math is not re-derived."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stpm_edge.data.preprocess import Preprocess
from stpm_edge.errors import StpmError
from stpm_edge.export.fusion import FUSIONS, build_trunks
from stpm_edge.export.static import make_static
from stpm_edge.models.checkpoint import ModelMeta
from stpm_edge.models.stpm.anomaly_map import AnomalyMapHead
from stpm_edge.models.stpm.model import STPM

INPUT_MODES = ("uint8-bgr", "float-rgb")
MAP_SIZES = ("model", "frame")


@dataclass(frozen=True)
class ExportConfig:
    input: str = "uint8-bgr"
    frame_size: tuple[int, int] | None = None  # (height, width); None = the model size
    map_size: str = "model"
    batch: int = 1
    dynamic_batch: bool = False
    opset: int = 17
    blur: bool | None = None  # None: as trained
    fusion: str = "stacked"

    def validated(self, meta: ModelMeta) -> "ExportConfig":
        if self.input not in INPUT_MODES:
            raise StpmError(f"--input {self.input}: choose from {', '.join(INPUT_MODES)}")
        if self.map_size not in MAP_SIZES:
            raise StpmError(f"--map-size {self.map_size}: choose from {', '.join(MAP_SIZES)}")
        if self.fusion not in FUSIONS:
            raise StpmError(f"--fusion {self.fusion}: choose from {', '.join(FUSIONS)}")
        if self.batch < 1:
            raise StpmError("--batch must be at least 1")
        if not 13 <= self.opset <= 21:
            raise StpmError(f"--opset {self.opset}: supported 13..21 (TensorRT 8.5 parses up to 17)")
        frame = self.frame_size or meta.config.image_size
        if self.input == "float-rgb" and tuple(frame) != tuple(meta.config.image_size):
            raise StpmError("--frame-size applies to --input uint8-bgr only (float-rgb input is at the model size)")
        if not all(8 <= v <= 8192 for v in frame):
            raise StpmError(f"--frame-size {frame[1]}x{frame[0]} out of range 8..8192")
        return ExportConfig(self.input, (int(frame[0]), int(frame[1])), self.map_size, self.batch,
                            self.dynamic_batch, self.opset, self.blur, self.fusion)

    def blur_sigma(self, meta: ModelMeta) -> float:
        if self.blur is None:
            return meta.config.blur_sigma
        return (meta.config.blur_sigma or 4.0) if self.blur else 0.0

    def output_size(self, meta: ModelMeta) -> tuple[int, int]:
        return tuple(self.frame_size) if self.map_size == "frame" else tuple(meta.config.image_size)


# ONNX node names carry the module path; every node of the fused trunks starts with this
# (the attribute name ``trunks`` below). Precision passes (FP16, INT8) select the trunks by it.
TRUNK_SCOPE = "/trunks/"


class ExportGraph(nn.Module):
    """``frames`` → (``anomaly_map`` (N,1,h,w), ``score`` (N,)) in normalised units (threshold 0.5)."""

    def __init__(self, model: STPM, meta: ModelMeta, cfg: ExportConfig) -> None:
        super().__init__()
        if meta.normalization is None:
            raise StpmError("the checkpoint has no normalisation statistics (training did not finish); "
                            "finish training with stpm-train first")
        self.pre = Preprocess(meta.preprocess) if cfg.input == "uint8-bgr" else None
        x0 = torch.zeros(1, 3, *meta.config.image_size)
        for trunk in (model.teacher, model.student):
            make_static(trunk, x0)  # constant "same" padding for the fixed model size
        self.trunks = build_trunks(model.teacher, model.student, cfg.fusion)  # named to match TRUNK_SCOPE
        self.head = AnomalyMapHead(meta.config.image_size, cfg.blur_sigma(meta))
        self.output_size = cfg.output_size(meta)
        self.normalization = meta.normalization
        self.eval()

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pre(frames) if self.pre is not None else frames
        teacher, student = self.trunks(x)
        amap, score = self.head(teacher, student)
        if tuple(amap.shape[-2:]) != self.output_size:
            amap = F.interpolate(amap, size=self.output_size, mode="bilinear", align_corners=False)
        return self.normalization.normalize_pixel(amap), self.normalization.normalize_image(score)


def example_input(meta: ModelMeta, cfg: ExportConfig) -> torch.Tensor:
    n = cfg.batch
    if cfg.input == "uint8-bgr":
        h, w = cfg.frame_size
        return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    h, w = meta.config.image_size
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(0))
