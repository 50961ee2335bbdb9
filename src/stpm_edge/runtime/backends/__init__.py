"""Inference backends behind one interface (:class:`Backend`).

* ``stpm_edge.runtime.backends.onnxruntime.OnnxRuntimeBackend`` — ONNX Runtime (CPU/CUDA/TensorRT EPs).

Concrete backends live in their own modules and are not imported here, so that a missing
optional dependency (onnxruntime, tensorrt) only matters when that backend is used.
"""
from __future__ import annotations

from stpm_edge.runtime.backends.base import ANOMALY_MAP, OUTPUT_NAMES, SCORE, Backend, InputSpec

__all__ = ["ANOMALY_MAP", "OUTPUT_NAMES", "SCORE", "Backend", "InputSpec"]
