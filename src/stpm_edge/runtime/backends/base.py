"""What every inference backend (ONNX Runtime, TensorRT, PyTorch, Triton) looks like to the
runtime: :class:`~stpm_edge.artifact.backend.Backend`, defined with the contract it checks
(:mod:`stpm_edge.artifact`) so that every backend package can depend downward on it."""
from __future__ import annotations

from stpm_edge.artifact import ANOMALY_MAP, INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, SCORE, InputSpec, ModelMetadata
from stpm_edge.artifact import parse_metadata
from stpm_edge.artifact.backend import Backend

__all__ = ["ANOMALY_MAP", "INPUT_NAME", "METADATA_KEY", "OUTPUT_NAMES", "SCORE", "Backend", "InputSpec",
           "ModelMetadata", "parse_metadata"]
