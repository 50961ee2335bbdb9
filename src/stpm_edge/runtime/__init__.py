"""The inference library: :class:`Detector` (the Python API every consumer goes through) and
the inference backends (``stpm_edge.runtime.backends``: ONNX Runtime, TensorRT, PyTorch),
opened the one way (:func:`stpm_edge.runtime.backends.select.open_backend`). The ``stpm-run``
application (sources, pipeline, outputs) and the demo are above it, in ``stpm_edge.apps``.

Heavy pieces (onnxruntime, TensorRT, PyTorch) are imported lazily, when a model is opened.
"""
from __future__ import annotations

from stpm_edge.artifact import InputSpec
from stpm_edge.runtime.backends import Backend
from stpm_edge.runtime.detector import Box, Detector, Result

__all__ = ["Backend", "Box", "Detector", "InputSpec", "Result"]
