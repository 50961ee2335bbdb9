"""ONNX Runtime backend: runs an exported stpm-edge ``.onnx`` model on CPU, CUDA or TensorRT.

Provider choice (:func:`choose_providers`) is a pure function so it is testable without a
GPU: ``auto`` prefers CUDA then CPU; the TensorRT execution provider is used only when asked
for (``tensorrt``) because it builds engines on the first run, which takes minutes.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from stpm_edge.errors import StpmError, first_line
from stpm_edge.artifact import ANOMALY_MAP, OUTPUT_NAMES, InputSpec, ModelMetadata, parse_metadata
from stpm_edge.runtime.backends.base import Backend

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
ORT_TENSORRT = "ort-tensorrt"  # ONNX Runtime's TensorRT execution provider ("tensorrt" is our own backend)
REQUESTS = ("auto", "cpu", "cuda", ORT_TENSORRT)

# ORT's type strings for the element types of the contract.
_ORT_TYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    return list(ort.get_available_providers())


def choose_providers(available: Sequence[str], requested: str = "auto") -> list[str]:
    """The ordered provider list for ``requested`` given the ``available`` ones.

    ``auto`` → CUDA (if available) then CPU; ``cpu`` → CPU; ``cuda`` → CUDA, CPU;
    ``ort-tensorrt`` → ONNX Runtime's TensorRT provider, CUDA (if available), CPU (the
    ``tensorrt`` backend is stpm-edge's own engine runner, not this). The list always ends with CPU.
    StpmError if an explicitly requested provider is not available or the request is unknown.
    """
    req = str(requested).strip().lower()
    if req not in REQUESTS:
        raise StpmError(f"providers: unknown {requested!r} (choose one of {', '.join(REQUESTS)})")
    avail = set(available)
    have = ", ".join(available) or "none"
    if req == "cpu":
        return [CPU]
    if req == "auto":
        return [CUDA, CPU] if CUDA in avail else [CPU]
    if req == "cuda":
        if CUDA not in avail:
            raise StpmError(f"providers: {CUDA} is not available in this onnxruntime build (available: {have})")
        return [CUDA, CPU]
    if TENSORRT not in avail:
        raise StpmError(f"providers: {TENSORRT} is not available in this onnxruntime build (available: {have})")
    return [TENSORRT, CUDA, CPU] if CUDA in avail else [TENSORRT, CPU]


def _why(requested: str, chosen: Sequence[str]) -> str:
    req = str(requested).strip().lower()
    if req == "auto" and CUDA not in chosen:
        return f"auto: {CUDA} not available"
    if req == "auto":
        return f"auto: {CUDA} available ({TENSORRT} only when requested)"
    return f"{req} requested"


def _read_metadata(path: Path, session: ort.InferenceSession) -> ModelMetadata:
    return parse_metadata(session.get_modelmeta().custom_metadata_map, path)


def _check_graph(path: Path, session: ort.InferenceSession, spec: InputSpec) -> None:
    """StpmError unless the graph's inputs/outputs are what the metadata promises."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 2:
        raise StpmError(
            f"{path}: not an stpm-edge model (expected 1 input and 2 outputs, "
            f"graph has {len(inputs)} inputs and {len(outputs)} outputs)"
        )
    (inp,) = inputs
    if inp.name != spec.name:
        raise StpmError(f"{path}: graph input is {inp.name!r} but the metadata says {spec.name!r}")
    if inp.type != _ORT_TYPES[spec.dtype]:
        raise StpmError(f"{path}: graph input {inp.name!r} is {inp.type}, the metadata says {spec.dtype}")
    dims = list(inp.shape)
    want = list(spec.shape())
    if len(dims) != 4:
        raise StpmError(f"{path}: graph input {inp.name!r} has rank {len(dims)}, expected 4 ({spec.layout})")
    graph_batch = dims[0] if isinstance(dims[0], int) else None
    if graph_batch != spec.batch:
        raise StpmError(
            f"{path}: graph input {inp.name!r} batch is {graph_batch or 'dynamic'}, "
            f"the metadata says {spec.batch or 'dynamic'}"
        )
    labels = ("height", "width", "channels") if spec.layout == "NHWC" else ("channels", "height", "width")
    for label, got, exp in zip(labels, dims[1:], want[1:]):
        if got != exp:
            raise StpmError(f"{path}: graph input {inp.name!r} {label} is {got}, the metadata says {exp}")
    by_name = {o.name: o for o in outputs}
    for name in OUTPUT_NAMES:
        out = by_name.get(name)
        if out is None:
            raise StpmError(
                f"{path}: not an stpm-edge model (no output {name!r}; outputs: {', '.join(by_name)})"
            )
        if out.type != "tensor(float)":
            raise StpmError(f"{path}: output {name!r} is {out.type}, expected float32")
        rank = 4 if name == ANOMALY_MAP else 1
        if out.shape is not None and len(out.shape) not in (0, rank):
            raise StpmError(f"{path}: output {name!r} has rank {len(out.shape)}, expected {rank}")


class OnnxRuntimeBackend(Backend):
    """An exported model in an ONNX Runtime session.

    ``providers``: ``auto`` | ``cpu`` | ``cuda`` | ``ort-tensorrt`` (see :func:`choose_providers`).
    ``threads``: intra-op thread count (default: ORT's choice). ``infer`` accepts any number
    of frames; fixed-batch models run in padded chunks (see ``runtime.backends.base``).
    """

    name = "onnxruntime"

    def __init__(self, path: Path, providers: str = "auto", threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StpmError(f"{self.path}: no such model file")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise StpmError(f"threads: expected a positive integer, got {threads!r}")
        available = available_providers()
        chosen = choose_providers(available, providers)

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; what matters is logged below
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(self.path), sess_options=options, providers=chosen)
        except Exception as e:  # ORT raises several pybind exception types
            raise StpmError(f"{self.path}: not a loadable ONNX model ({first_line(e)})") from e

        self.metadata = _read_metadata(self.path, session)
        self.input_spec = self.metadata.input
        _check_graph(self.path, session, self.input_spec)
        self._session: ort.InferenceSession | None = session

        used = session.get_providers()
        logger.info(
            "%s: onnxruntime providers %s (%s; available: %s)",
            self.path, ", ".join(chosen), _why(providers, chosen), ", ".join(available),
        )
        if used[:1] != chosen[:1]:
            logger.warning("%s: %s could not be used; running on %s", self.path, chosen[0], ", ".join(used))

    def _run(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self._session is not None
        try:
            amap, score = self._session.run(list(OUTPUT_NAMES), {self.input_spec.name: frames})
        except Exception as e:
            raise StpmError(f"{self.path}: inference failed ({first_line(e)})") from e
        return amap, score

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``frames`` as described by :attr:`input_spec` (any batch size) → (anomaly_map, score)."""
        if self._session is None:
            raise StpmError(f"{self.path}: backend is closed")
        self.input_spec.check(frames, any_batch=True)
        return self._infer_chunked(frames, self._run)

    def close(self) -> None:
        """Drop the session (idempotent)."""
        self._session = None

    def describe(self) -> str:
        if self._session is None:
            return f"{self.name} (closed)"
        return f"{self.name} ({', '.join(self._session.get_providers())})"
