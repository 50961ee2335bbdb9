"""TensorRT backend: runs ``model.<precision>.engine`` behind the same :class:`Backend` interface
as ONNX Runtime.

Only the name-based I/O API is used, which exists unchanged from TensorRT 8.5 to 11
(the binding-index API and ``execute_async_v2`` are gone in 10):
``ICudaEngine.num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode`` /
``get_tensor_dtype`` / ``get_tensor_shape`` / ``get_tensor_profile_shape``,
``IExecutionContext.set_input_shape`` / ``get_tensor_shape`` / ``set_tensor_address`` /
``execute_async_v3(stream_handle)``. Sources: TensorRT Python API reference
``infer/Core/ICudaEngine.html`` and ``ExecutionContext.html`` (8.5.x, 8.6.1, 10.x, 11.x);
NVIDIA's ``samples/python/common_runtime.py`` (10.x) for the same sequence; Polygraphy
``backend/trt/util.py`` (uses the V3 API from 8.5 GA on).

Per call: the frames are copied into a pinned host buffer, then on one CUDA stream: upload
(uint8 frames stay uint8: 4x fewer bytes than float) → ``execute_async_v3`` → download of
both outputs → one synchronize. Buffers are allocated once for the largest batch (the
fixed batch, or the profile's max); larger inputs run in chunks. ``cuda_graph=True``
captures ``execute_async_v3`` once per batch size into a CUDA graph (after one ordinary
run, as TensorRT requires before capture) and replays it (cuda-python only).

Loading checks the sidecar first (:func:`engine_meta.check_compat`): an engine from
another TensorRT release or another GPU architecture is refused with one line saying how
to rebuild it. Not thread-safe: one backend per thread (as the Detector documents).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import StpmError
from stpm_edge.artifact import ANOMALY_MAP, OUTPUT_NAMES, InputSpec, ModelMetadata
from stpm_edge.artifact.backend import Backend
from stpm_edge.tensorrt.api import enum_name, import_tensorrt, make_logger, start
from stpm_edge.tensorrt.engine_meta import (ENGINE_SUFFIX, check_compat, read_sidecar, rebuild_hint)

logger = logging.getLogger("stpm_edge.runtime.backends.tensorrt")  # the name the apps quiet

# TensorRT DataType member → numpy dtype name.
NP_DTYPES = {"FLOAT": "float32", "HALF": "float16", "UINT8": "uint8", "INT8": "int8", "INT32": "int32",
             "INT64": "int64", "BOOL": "bool"}
SPEC_DTYPES = {"uint8": "UINT8", "float32": "FLOAT"}


@dataclass(frozen=True)
class TensorInfo:
    """One engine I/O tensor: ``dtype`` is the TensorRT member name, ``shape`` has -1 for dynamic dims."""

    name: str
    is_input: bool
    dtype: str
    shape: tuple[int, ...]


def check_engine_io(tensors: list[TensorInfo], spec: InputSpec, path: Any) -> None:
    """One-line StpmError unless the engine's I/O is what the sidecar promises (pure)."""
    inputs = [t for t in tensors if t.is_input]
    outputs = {t.name: t for t in tensors if not t.is_input}
    if len(inputs) != 1 or len(outputs) != 2:
        raise StpmError(f"{path}: not an stpm-edge engine (expected 1 input and 2 outputs, it has "
                        f"{len(inputs)} and {len(outputs)}); {rebuild_hint(None)}")
    (inp,) = inputs
    if inp.name != spec.name:
        raise StpmError(f"{path}: engine input is {inp.name!r} but the sidecar says {spec.name!r}")
    if inp.dtype != SPEC_DTYPES[spec.dtype]:
        raise StpmError(f"{path}: engine input {inp.name!r} is {inp.dtype}, the sidecar says {spec.dtype}")
    want = spec.shape(-1 if spec.batch is None else spec.batch)
    if tuple(inp.shape) != tuple(want):
        raise StpmError(f"{path}: engine input {inp.name!r} has shape {list(inp.shape)}, the sidecar says "
                        f"{list(want)} ({spec.layout}, batch {spec.batch or 'dynamic'})")
    for name in OUTPUT_NAMES:
        out = outputs.get(name)
        if out is None:
            raise StpmError(f"{path}: engine has no output {name!r} (outputs: {', '.join(outputs)})")
        if out.dtype not in ("FLOAT", "HALF"):
            raise StpmError(f"{path}: engine output {name!r} is {out.dtype}, expected FLOAT")
        rank = 4 if name == ANOMALY_MAP else 1
        if len(out.shape) != rank:
            raise StpmError(f"{path}: engine output {name!r} has rank {len(out.shape)}, expected {rank}")


def max_batch(spec: InputSpec, profile_max: tuple[int, ...] | None) -> int:
    """Frames per run: the fixed batch, else the batch of the profile's max shape (pure)."""
    if spec.batch is not None:
        return spec.batch
    if not profile_max or int(profile_max[0]) < 1:
        raise StpmError("dynamic-batch engine without an optimization profile; rebuild it with stpm-export")
    return int(profile_max[0])


def _tensors(trt: Any, engine: Any) -> list[TensorInfo]:
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        out.append(TensorInfo(name, is_input, enum_name(engine.get_tensor_dtype(name)),
                              tuple(int(d) for d in engine.get_tensor_shape(name))))
    return out


class TensorRTBackend(Backend):
    """A serialized TensorRT engine on one CUDA device (see the module docstring)."""

    name = "tensorrt"

    def __init__(self, path: Path, *, device: int = 0, cuda_graph: bool = False, verbose: bool = False) -> None:
        self.path = Path(path)
        if self.path.suffix != ENGINE_SUFFIX:
            raise StpmError(f"{self.path}: the TensorRT backend runs {ENGINE_SUFFIX} files")
        if not self.path.is_file():
            raise StpmError(f"{self.path}: no such engine file")
        self.sidecar: dict[str, Any] = read_sidecar(self.path)
        self.metadata = ModelMetadata.from_dict(self.sidecar, self.path)
        try:
            self.input_spec = self.metadata.input
        except StpmError as e:
            raise StpmError(f"{self.path}: bad engine sidecar: {e}") from e
        self._closed = True
        trt = import_tensorrt()
        from stpm_edge.tensorrt.cuda import load_cuda  # noqa: PLC0415

        self._cuda = load_cuda(device)
        self.gpu = self._cuda.device_info(device)
        self.trt_version = str(trt.__version__)
        for warning in check_compat(self.sidecar, trt_version=self.trt_version, gpu=self.gpu, engine_path=self.path):
            logger.warning("%s", warning)
        data = self.path.read_bytes()
        want_sha = self.sidecar["engine"].get("sha256")
        if want_sha and hashlib.sha256(data).hexdigest() != want_sha:
            raise StpmError(f"{self.path}: the engine does not match its sidecar (sha256 differs); "
                            f"{rebuild_hint(self.sidecar)}")
        self._log = make_logger(trt, verbose)  # the process-wide logger (TensorRT keeps only one)
        self._mark = self._log.mark()  # errors after this belong to the current operation
        self._graphs: dict[int, Any] = {}
        self._buffers: list[tuple[str, Any]] = []
        self._stream: Any = None
        self._runtime = self._engine = self._context = None
        try:
            with self._cuda.activate():
                self._load(trt, data)
        except BaseException:
            self._closed = False
            self.close()  # free whatever was allocated before the failure
            raise
        self._closed = False
        self.cuda_graph = bool(cuda_graph and self._cuda.supports_graphs)
        if cuda_graph and not self.cuda_graph:
            logger.warning("%s: CUDA graphs need cuda-python (have %s); running without", self.path, self._cuda.name)
        logger.info("%s: TensorRT %s on %s (%s), batch up to %d, %s", self.path, self.trt_version, self.gpu.name,
                    self.metadata.precision, self._max_batch, self._cuda.name)

    def _load(self, trt: Any, data: bytes) -> None:
        self._runtime = start(trt, "Runtime", self._log)
        dla = self.sidecar["engine"].get("dla_core")
        if dla is not None:
            self._runtime.DLA_core = int(dla)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise StpmError(f"{self.path}: TensorRT {self.trt_version} could not load the engine "
                            f"({self._last_error()}); {rebuild_hint(self.sidecar)}")
        tensors = _tensors(trt, self._engine)
        check_engine_io(tensors, self.input_spec, self.path)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise StpmError(f"{self.path}: could not create an execution context ({self._last_error()})")
        self._setup(trt, tensors)

    def _last_error(self) -> str:
        """TensorRT's last error since the current operation began (the logger is shared)."""
        return self._log.last_error(self._mark)

    def _profile_max(self, trt: Any) -> tuple[int, ...] | None:
        name = self.input_spec.name
        if hasattr(self._engine, "get_tensor_profile_shape"):
            shapes = self._engine.get_tensor_profile_shape(name, 0)
            return tuple(int(d) for d in shapes[-1])
        prof = self.sidecar["engine"].get("profile") or {}
        return tuple(prof["max"]) if prof.get("max") else None

    def _setup(self, trt: Any, tensors: list[TensorInfo]) -> None:
        spec = self.input_spec
        dynamic = spec.batch is None
        self._max_batch = max_batch(spec, self._profile_max(trt) if dynamic else None)
        if dynamic:
            self._context.set_input_shape(spec.name, tuple(spec.shape(self._max_batch)))
        self._stream = self._cuda.stream_create()
        self._host: dict[str, np.ndarray] = {}
        self._dev: dict[str, int] = {}
        for t in tensors:
            shape = tuple(int(d) for d in (self._context.get_tensor_shape(t.name) if not t.is_input
                                           else spec.shape(self._max_batch)))
            dtype = np.dtype(NP_DTYPES[t.dtype])
            self._host[t.name] = self._cuda.pinned_empty(shape, dtype)
            self._buffers.append(("host", self._host[t.name]))
            self._dev[t.name] = self._cuda.malloc(self._host[t.name].nbytes)
            self._buffers.append(("dev", self._dev[t.name]))
            if not self._context.set_tensor_address(t.name, self._dev[t.name]):  # returns bool (8.5-11)
                raise StpmError(f"{self.path}: TensorRT refused the device buffer of {t.name!r} "
                                f"({self._last_error()})")
        self._shape_n = self._max_batch if dynamic else spec.batch

    # -- one run ---------------------------------------------------------------------------

    def _set_batch(self, n: int) -> None:
        if self.input_spec.batch is None and n != self._shape_n:
            if not self._context.set_input_shape(self.input_spec.name, tuple(self.input_spec.shape(n))):
                raise StpmError(f"{self.path}: batch {n} is outside the engine's profile ({self._last_error()})")
            self._shape_n = n

    def _enqueue(self, n: int) -> None:
        handle = self._cuda.stream_handle(self._stream)
        if self.cuda_graph:
            graph = self._graphs.get(n)
            if graph is None:
                graph = self._capture(handle)
                if graph is not None:
                    self._graphs[n] = graph
            if graph is not None:
                self._cuda.graph_launch(graph, self._stream)
                return
        if not self._context.execute_async_v3(handle):
            raise StpmError(f"{self.path}: TensorRT inference failed ({self._last_error()})")

    def _capture(self, handle: int) -> Any:
        """Run once (TensorRT finishes deferred work), then capture one enqueue; None on failure."""
        try:
            if not self._context.execute_async_v3(handle):
                raise StpmError(self._last_error())
            self._cuda.synchronize(self._stream)
            self._cuda.capture_begin(self._stream)
            try:
                ok = self._context.execute_async_v3(handle)
            finally:
                graph = self._cuda.capture_end(self._stream)
            if not ok:
                self._cuda.graph_destroy(graph)
                raise StpmError(self._last_error())
            return graph
        except StpmError as e:
            logger.warning("%s: CUDA graph capture failed (%s); running without graphs", self.path, e)
            self.cuda_graph = False
            return None

    def _run(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = int(frames.shape[0])
        name = self.input_spec.name
        cuda, stream = self._cuda, self._stream
        self._mark = self._log.mark()
        with cuda.activate():
            self._set_batch(n)
            host_in = self._host[name][:n]
            np.copyto(host_in, frames)
            cuda.htod_async(self._dev[name], host_in, stream)
            self._enqueue(n)
            outs = []
            for out_name in OUTPUT_NAMES:
                shape = tuple(int(d) for d in self._context.get_tensor_shape(out_name))
                host_out = self._host[out_name].reshape(-1)[: int(np.prod(shape))]
                cuda.dtoh_async(host_out, self._dev[out_name], stream)
                outs.append((host_out, shape))
            cuda.synchronize(stream)
        return tuple(np.array(h.reshape(s), dtype=np.float32) for h, s in outs)  # type: ignore[return-value]

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``frames`` as described by :attr:`input_spec` (any batch size) → (anomaly_map, score)."""
        if self._closed:
            raise StpmError(f"{self.path}: backend is closed")
        self.input_spec.check(frames, any_batch=True)
        if self.input_spec.batch is not None:
            return self._infer_chunked(frames, self._run)
        maps, scores = [], []
        for start in range(0, int(frames.shape[0]), self._max_batch):
            chunk = np.ascontiguousarray(frames[start:start + self._max_batch])
            amap, score = self._check_outputs(*self._run(chunk), int(chunk.shape[0]))
            maps.append(amap)
            scores.append(score)
        return np.concatenate(maps, axis=0), np.concatenate(scores, axis=0)

    def close(self) -> None:
        """Free device/pinned memory, graphs and the stream; drop the engine (idempotent)."""
        if self._closed:
            return
        self._closed = True
        cuda = self._cuda
        with cuda.activate():
            for graph in self._graphs.values():
                cuda.graph_destroy(graph)
            self._graphs.clear()
            if self._stream is not None:
                cuda.synchronize(self._stream)
            self._context = None
            self._engine = None
            self._runtime = None
            for kind, buf in self._buffers:
                if kind == "dev":
                    cuda.free(buf)
                else:
                    cuda.pinned_free(buf)
            self._buffers.clear()
            self._host, self._dev = {}, {}
            if self._stream is not None:
                cuda.stream_destroy(self._stream)
                self._stream = None

    def __del__(self) -> None:  # best effort; explicit close() is the contract
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def describe(self) -> str:
        if self._closed:
            return f"{self.name} (closed)"
        graph = ", CUDA graph" if self.cuda_graph else ""
        return f"{self.name} {self.trt_version} ({self.gpu.name}{graph})"
