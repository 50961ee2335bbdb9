"""The Python API every consumer goes through: ``Detector(model)(frame) -> Result``.

    with Detector("model.onnx") as det:
        result = det(frame_bgr)                   # any frame size; grey and BGRA are converted
        if result.is_anomalous:
            print(result.score, result.boxes)
        cv2.imwrite("overlay.jpg", result.overlay(frame_bgr))

Scores and maps are in the model's normalised units: ``threshold`` (default: the model's,
0.5) separates good from defective. The anomaly map is resized (bilinear) to the frame; the
mask is ``anomaly_map >= threshold``; boxes are its connected components.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np

from stpm_edge.errors import StpmError
from stpm_edge.artifact import InputSpec, ModelMetadata
from stpm_edge.runtime.backends.base import Backend
from stpm_edge.runtime.bgr import to_bgr
from stpm_edge.data.frames import to_model_input
from stpm_edge.runtime.overlay import OverlayStyle, render

MAX_BOXES = 64  # the largest regions first; a noisy map must not produce thousands of boxes


@dataclass(frozen=True)
class Box:
    """One connected region of the mask: ``x, y, w, h`` in frame pixels, its peak ``score``, ``area`` in pixels."""

    x: int
    y: int
    w: int
    h: int
    score: float
    area: int

    @property
    def xywh(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.w, self.h

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "score": round(self.score, 4), "area": self.area}


class Result:
    """What the detector says about one frame.

    ``score`` and ``anomaly_map`` (float32 HxW, frame-sized) are in normalised units;
    ``mask`` is ``anomaly_map >= threshold``; ``boxes`` (its connected components, computed
    on first access) are what an NG event reports.
    """

    __slots__ = ("score", "is_anomalous", "anomaly_map", "mask", "threshold", "_boxes")

    def __init__(self, score: float, is_anomalous: bool, anomaly_map: np.ndarray, mask: np.ndarray,
                 boxes: list[Box] | None = None, threshold: float = 0.5) -> None:
        self.score = score
        self.is_anomalous = is_anomalous
        self.anomaly_map = anomaly_map
        self.mask = mask
        self.threshold = threshold
        self._boxes = boxes

    @property
    def boxes(self) -> list[Box]:
        if self._boxes is None:
            self._boxes = boxes_from_mask(self.mask, self.anomaly_map) if self.mask.any() else []
        return self._boxes

    def __repr__(self) -> str:
        return (f"Result(score={self.score:.4f}, is_anomalous={self.is_anomalous}, threshold={self.threshold}, "
                f"map={self.anomaly_map.shape}, regions={len(self.boxes)})")

    def overlay(self, frame: np.ndarray, colormap: str = "turbo", alpha: float = 0.5, contours: bool = True,
                side_by_side: bool = False, boxes: bool = False) -> np.ndarray:
        """``frame`` with the heatmap blended in (and ``frame | overlay`` with ``side_by_side``).

        Contours (and ``boxes``) outline the mask of an NG frame; an OK frame shows the heatmap only.
        """
        style = OverlayStyle(colormap, alpha, contours, boxes, side_by_side).validated()
        ng = self.is_anomalous
        return render(to_bgr(frame), self.anomaly_map, self.mask if ng else None, style, self.boxes if ng else None)

    def to_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 4), "is_anomalous": self.is_anomalous, "threshold": self.threshold,
                "boxes": [b.to_dict() for b in self.boxes]}


def boxes_from_mask(mask: np.ndarray, anomaly_map: np.ndarray, limit: int = MAX_BOXES) -> list[Box]:
    """Connected components (8-connected) of ``mask`` as boxes, highest peak score first."""
    m = mask.view(np.uint8) if mask.dtype == np.bool_ else (mask > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    order = sorted(range(1, n), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))[:limit]
    boxes = []
    for i in order:
        x, y, w, h, area = (int(v) for v in stats[i, :5])
        region = labels[y:y + h, x:x + w] == i
        boxes.append(Box(x, y, w, h, float(anomaly_map[y:y + h, x:x + w][region].max()), area))
    boxes.sort(key=lambda b: -b.score)
    return boxes


def make_result(frame_shape: tuple[int, ...], anomaly_map: np.ndarray, score: float, threshold: float) -> Result:
    """A model's map (``h x w``) and score for a frame of ``frame_shape`` → a :class:`Result`."""
    h, w = int(frame_shape[0]), int(frame_shape[1])
    amap = np.asarray(anomaly_map, dtype=np.float32).reshape(anomaly_map.shape[-2:])
    if amap.shape != (h, w):
        amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    score = float(score)
    return Result(score, score >= threshold, amap, amap >= threshold, None, threshold)


def check_threshold(threshold: Any) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise StpmError(f"threshold: expected a number, got {threshold!r}") from None
    if not math.isfinite(value):
        raise StpmError(f"threshold: expected a finite number, got {threshold!r}")
    return value


def open_model(path: str | Path, backend: str = "auto", threads: int | None = None) -> Backend:
    """``.pt`` checkpoints run through PyTorch, exported files on ONNX Runtime or TensorRT, ``triton://``
    URIs on a Triton server: :func:`open_backend`."""
    from stpm_edge.runtime.backends.select import open_backend  # noqa: PLC0415

    return open_backend(path, backend, threads)


def model_precision(metadata: ModelMetadata, path: Path) -> str:
    """fp32 / fp16 / int8, as the model's metadata says."""
    return metadata.precision


class Detector:
    """A model file opened for inference (``.onnx``, ``.engine`` or a ``.pt`` checkpoint), or a model
    on a Triton server (``triton://HOST:PORT/NAME``).

    ``backend``: ``auto`` (default) or any name of :data:`~stpm_edge.runtime.backends.select.BACKENDS`;
    ``threshold``: override the model's (normalised units); ``threads``: CPU inference threads.
    Not thread-safe: use one Detector per thread.
    """

    def __init__(self, model_path: str | Path, backend: str = "auto", threshold: float | None = None,
                 threads: int | None = None) -> None:
        from stpm_edge.runtime.backends.triton import is_triton_uri  # noqa: PLC0415

        # a file, or a triton://HOST:PORT/NAME URI (kept as text: Path would fold its '//')
        self.path: Path | str = model_path if is_triton_uri(model_path) else Path(model_path)
        self.backend = open_model(self.path, backend, threads)
        self.metadata: ModelMetadata = self.backend.metadata
        self.input_spec: InputSpec = self.backend.input_spec
        default = self.metadata.threshold
        self.threshold = check_threshold(default if threshold is None else threshold)
        self.precision = model_precision(self.metadata, self.path)

    def describe(self) -> str:
        """E.g. ``onnxruntime (CPUExecutionProvider) fp32``."""
        return f"{self.backend.describe()} {self.precision}"

    # -- the three steps, public so that a pipeline can run them on different threads ------
    def prepare(self, frames: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """Frames → (checked BGR frames, the model's input batch)."""
        bgr = [to_bgr(f) for f in frames]
        if not bgr:
            raise StpmError("batch: no frames given")
        return bgr, to_model_input(bgr, self.input_spec, self.metadata)

    def infer(self, model_input: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The backend call: ``(anomaly_map (N,1,h,w), score (N,))``."""
        return self.backend.infer(model_input)

    def result(self, frame_shape: tuple[int, ...], anomaly_map: np.ndarray, score: float) -> Result:
        return make_result(frame_shape, anomaly_map, score, self.threshold)

    # -- the one-call API --------------------------------------------------------------------
    def __call__(self, frame: np.ndarray) -> Result:
        return self.batch([frame])[0]

    def batch(self, frames: Sequence[np.ndarray]) -> list[Result]:
        """One result per frame (frames may differ in size)."""
        bgr, x = self.prepare(frames)
        amaps, scores = self.infer(x)
        return [self.result(f.shape, amaps[i, 0], scores[i]) for i, f in enumerate(bgr)]

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
