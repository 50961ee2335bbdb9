"""PyTorch backend: runs a ``model.pt`` checkpoint through the very module the exporter traces
(:class:`stpm_edge.models.deploy.ExportGraph`), so a checkpoint answers exactly like its ONNX
export (uint8 BGR frames at the model size in, normalised map and score out, any batch).

Handy for trying a freshly trained model without exporting it; for deployment use the ONNX
or TensorRT file (faster, and no PyTorch needed on the device).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from stpm_edge.errors import StpmError, first_line
from stpm_edge.runtime.backends.base import Backend

logger = logging.getLogger(__name__)


class TorchBackend(Backend):
    """A checkpoint on CPU (or CUDA when ``device`` says so) behind the :class:`Backend` interface."""

    name = "torch"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None) -> None:
        from stpm_edge.artifact import file_sha256  # noqa: PLC0415
        from stpm_edge.models.deploy import ExportConfig, ExportGraph, build_metadata  # noqa: PLC0415
        from stpm_edge.models.checkpoint import load_checkpoint  # noqa: PLC0415

        self.path = Path(path)
        if not self.path.is_file():
            raise StpmError(f"{self.path}: no such model file")
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise StpmError(f"threads: expected a positive integer, got {threads!r}")
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if device == "cuda" else "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise StpmError("backend cuda: no CUDA GPU is available to PyTorch")
        model, meta = load_checkpoint(self.path)
        cfg = ExportConfig(dynamic_batch=True).validated(meta)
        self._graph: torch.nn.Module | None = ExportGraph(model, meta, cfg).to(self.device).eval()
        self.metadata = build_metadata(meta, cfg, self.path, file_sha256(self.path))
        self.input_spec = self.metadata.input
        logger.info("%s: PyTorch %s on %s", self.path, torch.__version__, self.device)

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._graph is None:
            raise StpmError(f"{self.path}: backend is closed")
        self.input_spec.check(frames, any_batch=True)
        try:
            with torch.inference_mode():
                amap, score = self._graph(torch.from_numpy(np.ascontiguousarray(frames)).to(self.device))
        except RuntimeError as e:
            raise StpmError(f"{self.path}: inference failed ({first_line(e)})") from e
        return self._check_outputs(amap.cpu().numpy(), score.cpu().numpy(), int(frames.shape[0]))

    def close(self) -> None:
        self._graph = None

    def describe(self) -> str:
        return f"{self.name} ({self.device})"
