"""Running exported models: :class:`Detector` (the Python API), inference backends
(``stpm_edge.runtime.backends``), video sources (``stpm_edge.runtime.sources``) and the
streaming pipeline behind ``stpm-run`` (``stpm_edge.runtime.pipeline``).

Heavy pieces (onnxruntime, TensorRT, PyTorch) are imported lazily, when a model is opened.
"""
from __future__ import annotations

from stpm_edge.runtime.backends import Backend, InputSpec
from stpm_edge.runtime.detector import Box, Detector, Result

__all__ = ["Backend", "Box", "Detector", "InputSpec", "Result"]
