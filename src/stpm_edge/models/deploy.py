"""The deployable network: frames → preprocessing → the method's inference module → normalised
(anomaly_map, score), and the typed metadata that describes it. Built from the same modules
that train and eval use (:class:`Preprocess`, the method's ``inference_module``), so the math
is not re-derived; the ONNX exporter traces it and the PyTorch backend runs it. Nothing here
knows which method it runs."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stpm_edge import __version__
from stpm_edge.artifact import ANOMALY_MAP, INPUT_NAME, SCORE, InputSpec, LowPrecision, ModelMetadata
from stpm_edge.data.preprocess import Preprocess
from stpm_edge.errors import StpmError
from stpm_edge.models.static import make_static
from stpm_edge.models.checkpoint import ModelMeta

INPUT_MODES = ("uint8-bgr", "float-rgb")
MAP_SIZES = ("model", "frame", "feature")  # feature: the method's raw map, unresized (map_grid)
NET = "net"  # ExportGraph's attribute holding the method's module: ONNX node names start with /net/


@dataclass(frozen=True)
class ExportConfig:
    input: str = "uint8-bgr"
    frame_size: tuple[int, int] | None = None  # (height, width); None = the model size
    map_size: str = "model"
    batch: int = 1
    dynamic_batch: bool = False
    opset: int = 17
    blur: bool | None = None  # None: as trained
    method_options: dict[str, Any] = field(default_factory=dict)  # validated by the method (e.g. STPM's fusion)

    def validated(self, meta: ModelMeta) -> "ExportConfig":
        if self.input not in INPUT_MODES:
            raise StpmError(f"--input {self.input}: choose from {', '.join(INPUT_MODES)}")
        if self.map_size not in MAP_SIZES:
            raise StpmError(f"--map-size {self.map_size}: choose from {', '.join(MAP_SIZES)}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or not 1 <= self.batch <= 1024:
            raise StpmError(f"--batch {self.batch}: must be an integer in 1..1024")
        if not 13 <= self.opset <= 21:
            raise StpmError(f"--opset {self.opset}: supported 13..21 (TensorRT 8.5 parses up to 17)")
        frame = self.frame_size or meta.image_size
        if self.input == "float-rgb" and tuple(frame) != tuple(meta.image_size):
            raise StpmError("--frame-size applies to --input uint8-bgr only (float-rgb input is at the model size)")
        if not all(8 <= v <= 8192 for v in frame):
            raise StpmError(f"--frame-size {frame[1]}x{frame[0]} out of range 8..8192")
        options = meta.method.export_options(dict(self.method_options))
        return replace(self, frame_size=(int(frame[0]), int(frame[1])), method_options=options)

    def blur_sigma(self, meta: ModelMeta) -> float:
        trained = meta.method.blur_sigma(meta.config)
        if self.blur is None:
            return trained
        return (trained or 4.0) if self.blur else 0.0

    def output_size(self, meta: ModelMeta) -> tuple[int, int]:
        if self.map_size == "feature":
            return tuple(meta.method.map_grid(meta.config, meta.image_size, self.method_options))
        return tuple(self.frame_size) if self.map_size == "frame" else tuple(meta.image_size)


def region_scopes(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Submodule paths of the method's inference module (``trunks/trunk``) → ONNX node-name scopes."""
    return tuple(f"/{NET}/{p.strip('/')}/" for p in paths)


class ExportGraph(nn.Module):
    """``frames`` → (``anomaly_map`` (N,1,h,w), ``score`` (N,)) in normalised units (threshold 0.5)."""

    def __init__(self, model: nn.Module, meta: ModelMeta, cfg: ExportConfig) -> None:
        super().__init__()
        if meta.normalization is None:
            raise StpmError("the checkpoint has no normalisation statistics (training did not finish); "
                            "finish training with stpm-train first")
        method = meta.method
        self.pre = Preprocess(meta.preprocess) if cfg.input == "uint8-bgr" else None
        x0 = torch.zeros(1, 3, *meta.image_size)
        make_static(model, lambda: method.inference_module(model)(x0))  # constant "same" padding for the model size
        setattr(self, NET, method.inference_module(model, blur_sigma=cfg.blur_sigma(meta), options=cfg.method_options))
        self.output_size = cfg.output_size(meta)
        self.normalization = meta.normalization
        self.eval()

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pre(frames) if self.pre is not None else frames
        amap, score = getattr(self, NET)(x)
        if tuple(amap.shape[-2:]) != self.output_size:
            amap = F.interpolate(amap, size=self.output_size, mode="bilinear", align_corners=False)
        return self.normalization.normalize_pixel(amap), self.normalization.normalize_image(score)


def example_input(meta: ModelMeta, cfg: ExportConfig) -> torch.Tensor:
    n = cfg.batch
    if cfg.input == "uint8-bgr":
        h, w = cfg.frame_size
        return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    h, w = meta.image_size
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(0))


def build_metadata(meta: ModelMeta, cfg: ExportConfig, checkpoint: Path, sha256: str) -> ModelMetadata:
    """The one description of an exported model (sidecar JSON and ONNX metadata_props)."""
    import onnx  # noqa: PLC0415

    h_map, w_map = cfg.output_size(meta)
    batch = None if cfg.dynamic_batch else cfg.batch
    n = "N" if batch is None else batch
    if cfg.input == "uint8-bgr":
        fh, fw = cfg.frame_size
        spec = InputSpec(INPUT_NAME, "uint8", "NHWC", "BGR", batch, fh, fw)
    else:
        mh, mw = meta.image_size
        spec = InputSpec(INPUT_NAME, "float32", "NCHW", "RGB", batch, mh, mw)
    norm = meta.normalization
    method = meta.method
    regions = region_scopes(method.low_precision(cfg.method_options))
    described = {**method.describe(meta.config), "blur_sigma": cfg.blur_sigma(meta), **cfg.method_options}
    return ModelMetadata(
        arch=meta.arch, input=spec, model_size=tuple(meta.image_size),
        preprocess={"resize": "bilinear, align_corners=False, no antialias", "mean": list(meta.mean),
                    "std": list(meta.std), "color": "RGB"},
        outputs={ANOMALY_MAP: {"dtype": "float32", "shape": [n, 1, h_map, w_map],
                               "meaning": "per-pixel anomaly, normalised: 0.5 = pixel threshold"},
                 SCORE: {"dtype": "float32", "shape": [n],
                         "meaning": "image anomaly score, normalised: 0.5 = image threshold"}},
        normalization={"min_value": norm.min_value, "image_threshold": norm.image_threshold,
                       "pixel_threshold": norm.pixel_threshold,
                       "formula": "normalised = 0.5 * (raw - min_value) / (threshold - min_value)"},
        lowp=LowPrecision(regions, regions), method=described, precision="fp32", threshold=0.5, opset=cfg.opset,
        checkpoint={"file": Path(checkpoint).name, "sha256": sha256},
        versions={"stpm_edge": __version__, "torch": str(torch.__version__), "onnx": onnx.__version__},
    )
