"""stpm-edge: student-teacher anomaly detection from PyTorch to edge GPUs."""
from __future__ import annotations

__version__ = "0.1.0"

from stpm_edge.errors import StpmError

__all__ = ["StpmError", "__version__"]
