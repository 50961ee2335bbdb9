"""Running exported models: inference backends (``stpm_edge.runtime.backends``).

Backends are imported lazily by name so that importing this package needs neither
onnxruntime nor TensorRT.
"""
from __future__ import annotations

from stpm_edge.runtime.backends import Backend, InputSpec

__all__ = ["Backend", "InputSpec"]
