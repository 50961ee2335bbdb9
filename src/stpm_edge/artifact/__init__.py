"""The exported-artifact contract, defined once and free of torch: tensor names, the input
spec, the typed metadata every exported file carries, the file-naming rule of every variant,
engine and sidecar, and the file hash. Export, calibration, TensorRT, the runtime, bench and
the C ABI all depend downward on this package; it depends on nothing of stpm-edge but
:mod:`stpm_edge.errors`.
"""
from stpm_edge.artifact.contract import (ANOMALY_MAP, INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, SCORE, InputSpec,
                                         file_sha256)
from stpm_edge.artifact.files import ModelFiles
from stpm_edge.artifact.metadata import (ONNX_FORMAT, SCHEMA_VERSION, Int8Info, LowPrecision, ModelMetadata,
                                         parse_metadata, read_onnx_metadata)

__all__ = ["ANOMALY_MAP", "INPUT_NAME", "METADATA_KEY", "OUTPUT_NAMES", "SCORE", "InputSpec", "file_sha256",
           "ModelFiles", "ONNX_FORMAT", "SCHEMA_VERSION", "Int8Info", "LowPrecision", "ModelMetadata",
           "parse_metadata", "read_onnx_metadata"]
