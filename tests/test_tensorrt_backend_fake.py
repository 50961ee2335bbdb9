"""TensorRTBackend's plumbing against a FAKE ``tensorrt`` runtime and a fake CUDA (host memory
standing in for device memory): the name-based I/O calls, buffer sizes, partial copies for
smaller batches, chunking above the profile's max batch, CUDA-graph capture/replay, the
sidecar checks that run before deserialization, and cleanup.

Not a TensorRT result: the fake "engine" computes the tiny stand-in model of ``_trt_models``
in numpy. Real engines are exercised by ``test_tensorrt_gpu.py`` (marked ``tensorrt``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import types

import numpy as np
import pytest
from _trt_api import fake_enum, fake_module, restrict
from _trt_models import reference, write_engine, write_onnx

from stpm_edge.errors import StpmError
from stpm_edge.tensorrt.engine_meta import GpuInfo, sidecar_path
from stpm_edge.tensorrt.runner import TensorRTBackend

ENGINE_BYTES = b"fake plan"


class FakeDevice:
    """cuda-python stand-in: 'device' memory is host bytearrays keyed by fake pointers."""

    name = "fake-cuda"
    supports_graphs = True

    def __init__(self) -> None:
        self.mem: dict[int, bytearray] = {}
        self.next_ptr = 0x1000
        self.pinned = 0
        self.capturing: list | None = None
        self.graph_launches = 0
        self.streams = 0

    def device_info(self, index=0):
        return GpuInfo("Orin", "8.7", index)

    def activate(self):
        return contextlib.nullcontext()

    def malloc(self, nbytes):
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + nbytes + 256
        self.mem[ptr] = bytearray(nbytes)
        return ptr

    def free(self, ptr):
        del self.mem[ptr]

    def pinned_empty(self, shape, dtype):
        self.pinned += 1
        return np.zeros(shape, dtype)

    def pinned_free(self, arr):
        self.pinned -= 1

    def stream_create(self):
        self.streams += 1
        return object()

    def stream_handle(self, stream):
        return 42

    def stream_destroy(self, stream):
        self.streams -= 1

    def htod_async(self, dst, src, stream):
        assert src.flags.c_contiguous
        self.mem[dst][: src.nbytes] = src.tobytes()

    def dtoh_async(self, dst, src, stream):
        dst.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(self.mem[src][: dst.nbytes]), np.uint8)

    def synchronize(self, stream):
        pass

    def capture_begin(self, stream):
        self.capturing = []

    def capture_end(self, stream):
        graph, self.capturing = self.capturing, None
        return graph

    def graph_launch(self, graph, stream):
        self.graph_launches += 1
        for fn in graph:
            fn()

    def graph_destroy(self, graph):
        pass


def fake_runtime(device: FakeDevice, version="10.3.0", batch=None, max_batch=4, in_dtype="UINT8",
                 address_ok=True, no_cuda=None):
    """A ``tensorrt``-shaped module whose engine runs the tiny model on the fake device memory.

    Held to the real module of ``version`` (``_trt_api``): only members the real classes have,
    the real enums. Like TensorRT it logs into the first logger it was given. ``no_cuda``:
    Runtime() logs CUDA's failure and raises ("raise") or returns anyway ("errors", as the lean
    runtime does); ``trt._fail["exec"]`` makes execute_async_v3 log an error and return False."""
    calls: list[tuple] = []
    trt = fake_module(version)
    trt.calls = calls
    trt._fail = {"exec": False}
    global_logger: list = []
    trt.TensorIOMode = fake_enum(version, "TensorIOMode")
    trt.DataType = fake_enum(version, "DataType")

    class ILogger:
        Severity = fake_enum(version, "ILogger.Severity")

        def __init__(self):
            pass

    trt.ILogger = restrict(ILogger, version, "ILogger")
    b = -1 if batch is None else batch
    shapes = {"frames": (b, 8, 8, 3), "anomaly_map": (b, 1, 8, 8), "score": (b,)}

    class IExecutionContext:
        def __init__(self):
            self._n = batch or 1
            self._addr = {}

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", tuple(shape)))
            if not 1 <= shape[0] <= max_batch:
                return False
            self._n = shape[0]
            return True

        def get_tensor_shape(self, name):
            return (self._n,) + tuple(shapes[name][1:])

        def set_tensor_address(self, name, ptr):
            calls.append(("set_tensor_address", name))
            self._addr[name] = ptr
            return address_ok

        def _compute(self):
            n = self._n
            raw = bytes(device.mem[self._addr["frames"]][: n * 8 * 8 * 3])
            frames = np.frombuffer(raw, np.uint8).reshape(n, 8, 8, 3)
            amap, score = reference(frames)
            device.mem[self._addr["anomaly_map"]][: amap.nbytes] = amap.astype(np.float32).tobytes()
            device.mem[self._addr["score"]][: score.nbytes] = score.astype(np.float32).tobytes()

        def execute_async_v3(self, stream_handle):
            calls.append(("execute_async_v3", stream_handle, device.capturing is not None))
            if trt._fail["exec"]:
                global_logger[0].log(ILogger.Severity.ERROR, "IExecutionContext::enqueueV3: Error Code 1: "
                                                             "Cuda Runtime (an illegal memory access)")
                return False
            if device.capturing is not None:
                device.capturing.append(self._compute)
            else:
                self._compute()
            return True

    restrict(IExecutionContext, version, "IExecutionContext")

    class ICudaEngine:
        num_io_tensors = 3
        _names = ("frames", "anomaly_map", "score")

        def get_tensor_name(self, i):
            return self._names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "frames" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return getattr(trt.DataType, in_dtype if name == "frames" else "FLOAT")

        def get_tensor_shape(self, name):
            return shapes[name]

        def get_tensor_profile_shape(self, name, profile):
            return [(1, 8, 8, 3), (max_batch, 8, 8, 3), (max_batch, 8, 8, 3)]

        def create_execution_context(self):
            calls.append(("create_execution_context",))
            return IExecutionContext()

    restrict(ICudaEngine, version, "ICudaEngine")

    class Runtime:
        def __init__(self, logger):
            calls.append(("Runtime",))
            if not global_logger:
                global_logger.append(logger)
            if no_cuda:
                global_logger[0].log(ILogger.Severity.ERROR, "createInferRuntime: Error Code 6: API Usage Error "
                                                             "(CUDA initialization failure with error: 35)")
                global_logger[0].log(ILogger.Severity.ERROR, "Runtime::Runtime: Error Code 1: Cuda Runtime")
                if no_cuda == "raise":
                    raise TypeError("pybind11::init(): factory function returned nullptr")

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize_cuda_engine", bytes(data)))
            return ICudaEngine() if bytes(data) == ENGINE_BYTES else None

    trt.Runtime = restrict(Runtime, version, "Runtime")
    return trt


@pytest.fixture
def setup(monkeypatch, tmp_path):
    device = FakeDevice()
    monkeypatch.setattr("stpm_edge.tensorrt.cuda.load_cuda", lambda device_index=0: device)

    def make(batch=None, version="10.3.0", built_with="10.3.0", **kw):
        trt = fake_runtime(device, version=version, batch=batch, **kw)
        monkeypatch.setattr("stpm_edge.tensorrt.runner.import_tensorrt", lambda: trt)
        eng = write_engine(tmp_path / "model.fp32.engine", trt=built_with, precision="fp32", batch=batch,
                           data=ENGINE_BYTES)
        return eng, trt

    return device, make


def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def test_dynamic_batch_partial_copies_and_chunks(setup):
    device, make = setup
    eng, trt = make(batch=None)
    with TensorRTBackend(eng) as backend:
        assert backend.describe() == "tensorrt 10.3.0 (Orin)"
        names = [c[1] for c in trt.calls if c[0] == "set_tensor_address"]
        assert names == ["frames", "anomaly_map", "score"]
        for n in (1, 3, 6):  # 6 > max batch 4: runs as 4 + 2
            frames = _frames(n, seed=n)
            amap, score = backend.infer(frames)
            ref_map, ref_score = reference(frames)
            assert amap.shape == (n, 1, 8, 8) and score.shape == (n,) and amap.dtype == np.float32
            assert np.abs(amap - ref_map).max() < 1e-6 and np.abs(score - ref_score).max() < 1e-6
        shapes = [c[1][0] for c in trt.calls if c[0] == "set_input_shape"]
        assert shapes == [4, 1, 3, 4, 2]  # allocation at the max, then only when the batch changes
    assert device.mem == {} and device.pinned == 0 and device.streams == 0


def test_fixed_batch_runs_frame_by_frame(setup):
    device, make = setup
    eng, trt = make(batch=1)
    with TensorRTBackend(eng) as backend:
        frames = _frames(3)
        amap, score = backend.infer(frames)
    assert np.abs(amap - reference(frames)[0]).max() < 1e-6
    assert not any(c[0] == "set_input_shape" for c in trt.calls)
    assert sum(c[0] == "execute_async_v3" for c in trt.calls) == 3


def test_cuda_graph_captures_once_per_batch_size(setup):
    device, make = setup
    eng, trt = make(batch=None)
    with TensorRTBackend(eng, cuda_graph=True) as backend:
        for n in (2, 2, 3, 2):
            frames = _frames(n, seed=n)
            amap, _ = backend.infer(frames)
            assert np.abs(amap - reference(frames)[0]).max() < 1e-6
        assert "CUDA graph" in backend.describe()
    runs = [c[2] for c in trt.calls if c[0] == "execute_async_v3"]
    assert runs == [False, True, False, True]  # per new batch size: one plain run, then the capture
    assert device.graph_launches == 4


def test_refusals_before_deserialization(setup, tmp_path):
    device, make = setup
    eng, trt = make(version="10.7.0", built_with="10.3.0")
    with pytest.raises(StpmError, match=r"built with TensorRT 10.3.0 but this machine has TensorRT 10.7.0; "
                                        r"rebuild it on this machine: stpm-export model.pt$"):
        TensorRTBackend(eng)
    assert not any(c[0] == "deserialize_cuda_engine" for c in trt.calls)
    eng, trt = make()
    eng.write_bytes(b"another plan")
    with pytest.raises(StpmError, match="does not match its sidecar"):
        TensorRTBackend(eng)
    side = json.loads(sidecar_path(eng).read_text())
    side["engine"]["sha256"] = hashlib.sha256(b"another plan").hexdigest()
    sidecar_path(eng).write_text(json.dumps(side))
    with pytest.raises(StpmError, match="could not load the engine.*stpm-export"):
        TensorRTBackend(eng)


def test_engine_io_must_match_the_sidecar(setup):
    device, make = setup
    eng, trt = make(batch=None, in_dtype="FLOAT")
    with pytest.raises(StpmError, match="engine input 'frames' is FLOAT, the sidecar says uint8"):
        TensorRTBackend(eng)


def test_infer_checks_frames_and_closed_state(setup):
    device, make = setup
    eng, trt = make(batch=None)
    backend = TensorRTBackend(eng)
    with pytest.raises(StpmError, match=r"frames: expected uint8 \(N, 8, 8, 3\)"):
        backend.infer(np.zeros((1, 8, 8, 3), np.float32))
    backend.close()
    backend.close()
    assert backend.describe() == "tensorrt (closed)"
    with pytest.raises(StpmError, match="closed"):
        backend.infer(_frames(1))


def test_auto_selection_opens_the_engine_when_tensorrt_fits(setup, monkeypatch, tmp_path):
    from stpm_edge.runtime.backends import select

    device, make = setup
    onnx_path = write_onnx(tmp_path / "model.onnx", batch=None)
    eng, trt = make(batch=None)
    side = json.loads(sidecar_path(eng).read_text())
    side["engine"]["source"] = {"file": "model.onnx", "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()}
    sidecar_path(eng).write_text(json.dumps(side))
    monkeypatch.setattr(select, "probe_tensorrt", lambda device=0: select.TrtEnv("10.3.0", GpuInfo("Orin", "8.7")))
    with select.open_backend(onnx_path, "auto") as backend:
        assert backend.name == "tensorrt"
        amap, _ = backend.infer(_frames(2))
    assert amap.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("how", ["raise", "errors"])
def test_runtime_that_cannot_start_cuda_is_one_line(setup, how):
    """Issue 19: trt.Runtime raises (nullptr) or, like the lean runtime, returns an object after two
    errors and would crash on the next call: refused in one line, before deserialization."""
    device, make = setup
    eng, trt = make(no_cuda=how)
    with pytest.raises(StpmError) as e:
        TensorRTBackend(eng)
    assert str(e.value).startswith("TensorRT 10.3.0 could not start (trt.Runtime: createInferRuntime: Error Code 6")
    assert not any(c[0] == "deserialize_cuda_engine" for c in trt.calls)
    assert device.mem == {} and device.streams == 0


def test_a_refused_tensor_address_is_an_error(setup):
    """Issue 19: set_tensor_address returns False (e.g. a misaligned buffer); checked, memory freed."""
    device, make = setup
    eng, trt = make(address_ok=False)
    with pytest.raises(StpmError, match=r"model.fp32.engine: TensorRT refused the device buffer of 'frames'"):
        TensorRTBackend(eng)
    assert device.mem == {} and device.pinned == 0 and device.streams == 0


def test_backends_share_one_logger_and_report_their_own_errors(setup):
    """Issue 19: several engines open (stpm-eval --compare): TensorRT logs into the first logger;
    with one process-wide logger the failing backend still reports its error."""
    device, make = setup
    eng, trt = make(batch=1)
    first, second = TensorRTBackend(eng), TensorRTBackend(eng)
    try:
        assert first._log is second._log
        trt._fail["exec"] = True
        with pytest.raises(StpmError, match=r"TensorRT inference failed \(IExecutionContext::enqueueV3: Error Code 1"):
            second.infer(_frames(1))
    finally:
        first.close()
        second.close()


# -- the cuda-python adapter (no GPU: a fake runtime module with cuda-python's conventions) ----------

class _Err(int):
    """cuda-python's cudaError_t: an int enum whose members have a ``name``."""

    def __new__(cls, value: int, name: str):
        self = int.__new__(cls, value)
        self.name = name
        return self


class _Handle:
    def __init__(self, address: int) -> None:
        self.address = address

    def __int__(self) -> int:  # deprecated in cuda-bindings 13 for handles; the adapter prefers the getter
        raise AssertionError("int(handle) used although get_cuda_native_handle is available")


def fake_cudart():
    """A ``cuda.bindings.runtime``-shaped module: every call returns ``(cudaError_t, *results)``."""
    ok, invalid = _Err(0, "cudaSuccess"), _Err(1, "cudaErrorInvalidValue")
    calls: list[tuple] = []
    rt = types.SimpleNamespace(calls=calls, cudaStreamNonBlocking=1)
    rt.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0,
                                                     cudaStreamCaptureModeThreadLocal=1)
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    rt.cudaGetErrorString = lambda err: (ok, b"invalid argument")
    rt.cudaMalloc = lambda n: (invalid, None)
    rt.cudaStreamCreateWithFlags = lambda flags: (calls.append(("create", flags)), (ok, _Handle(0xABC)))[1]
    rt.cudaStreamBeginCapture = lambda s, mode: (calls.append(("begin", s.address, mode)), (ok,))[1]
    rt.cudaStreamEndCapture = lambda s: (calls.append(("end", s.address)), (ok, "graph"))[1]
    rt.cudaGraphInstantiateWithFlags = lambda g, flags: (calls.append(("instantiate", g, flags)), (ok, "exec"))[1]
    rt.cudaGraphDestroy = lambda g: (calls.append(("destroy", g)), (ok,))[1]
    rt.cudaGetDeviceCount = lambda: (ok, 2)
    return rt


def test_cuda_python_adapter_conventions():
    from stpm_edge.tensorrt.cuda import CudaError, _CudaPython

    rt = fake_cudart()
    cuda = _CudaPython(rt, "cuda.bindings.runtime", 0, handle_of=lambda h: h.address)
    assert cuda.device_count() == 2  # (err, value) -> value
    stream = cuda.stream_create()
    assert rt.calls[0] == ("create", 1)  # non-blocking: capture needs a non-default stream
    assert cuda.stream_handle(stream) == 0xABC  # via get_cuda_native_handle, not int()
    with pytest.raises(CudaError, match=r"^CUDA cudaMalloc failed: invalid argument \(cudaErrorInvalidValue\)$"):
        cuda.malloc(16)
    cuda.capture_begin(stream)
    assert cuda.capture_end(stream) == "exec"
    assert rt.calls[1:] == [("begin", 0xABC, 1), ("end", 0xABC), ("instantiate", "graph", 0), ("destroy", "graph")]


def test_load_cuda_prefers_cuda_bindings_then_cudart_then_pycuda(monkeypatch):
    from stpm_edge.tensorrt import cuda as cuda_mod

    available: dict[str, object] = {}

    def fake_import(name):
        if name not in available:
            raise ImportError(f"No module named {name!r}")
        return available[name]

    monkeypatch.setattr(cuda_mod, "_import", fake_import)
    with pytest.raises(StpmError, match=r"no CUDA Python binding found \(cuda.bindings.runtime: .*cuda.cudart: .*"
                                        r"pycuda: .*\); pip install cuda-python"):
        cuda_mod.load_cuda()
    available["cuda.cudart"] = fake_cudart()  # cuda-python 11.x / early 12.x: int() handles
    api = cuda_mod.load_cuda()
    assert api.name == "cuda-python (cuda.cudart)" and api.stream_handle(7) == 7
    available["cuda.bindings.runtime"] = fake_cudart()
    available["cuda.bindings.utils"] = types.SimpleNamespace(get_cuda_native_handle=lambda h: h.address)
    api = cuda_mod.load_cuda()
    assert api.name == "cuda-python (cuda.bindings.runtime)" and api.stream_handle(_Handle(5)) == 5


class _NoDriverRuntime:
    """cuda-python 11.8.7-12.8 on a machine without an NVIDIA driver: every call raises."""

    def __getattr__(self, name):
        def call(*args):
            raise RuntimeError("Failed to dlopen libcuda.so.1")

        return call


def test_probe_gpu_without_a_driver_is_a_reason_not_a_traceback(monkeypatch):
    """Issue 19: cuda-python <= 12.8 raise RuntimeError where no driver is installed; stpm-export,
    backend selection and trt_check.py must say "no GPU" in one line instead of a traceback."""
    from stpm_edge.tensorrt import cuda as cuda_mod

    monkeypatch.setattr(cuda_mod, "_import", lambda name: _NoDriverRuntime() if name == "cuda.bindings.runtime"
                        else (_ for _ in ()).throw(ImportError(name)))
    gpu, why = cuda_mod.probe_gpu(0)
    assert gpu is None
    assert why == "no CUDA GPU (CUDA cudaGetDeviceCount failed: Failed to dlopen libcuda.so.1)"
    api = cuda_mod.load_cuda(0)
    with pytest.raises(cuda_mod.CudaError, match=r"^CUDA cudaMalloc failed: Failed to dlopen libcuda.so.1$"):
        api.malloc(16)


def test_load_cuda_reports_a_binding_that_fails_to_load(monkeypatch):
    from stpm_edge.tensorrt import cuda as cuda_mod

    def broken(name):
        raise (OSError("libcudart.so.12: cannot open shared object file") if name.startswith("cuda.")
               else ImportError(f"No module named {name!r}"))

    monkeypatch.setattr(cuda_mod, "_import", broken)
    gpu, why = cuda_mod.probe_gpu(0)
    assert gpu is None and why.startswith("no CUDA Python binding found (cuda.bindings.runtime: libcudart.so.12")


def test_the_adapter_calls_only_the_listed_runtime_functions():
    """RUNTIME_CALLS is what the conformance test checks on real cuda-python: it must be complete."""
    from stpm_edge.tensorrt.cuda import RUNTIME_CALLS, _CudaPython

    used: set[str] = set()
    ok = _Err(0, "cudaSuccess")

    class Recording:
        cudaStreamNonBlocking = 1
        cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
        cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

        def __getattr__(self, name):
            used.add(name)
            props = types.SimpleNamespace(name=b"GPU", major=8, minor=7, totalGlobalMem=2**30)
            buf = np.zeros(64, np.uint8)
            value = {"cudaGetDeviceCount": 1, "cudaGetDeviceProperties": props,
                     "cudaMallocHost": buf.ctypes.data}.get(name, 7)
            return lambda *args: (ok, value)

    cuda = _CudaPython(Recording(), "cuda.bindings.runtime", device=1)
    cuda.device_count(), cuda.device_info(0)
    with cuda.activate():
        host = cuda.pinned_empty((4,), np.float32)
        stream = cuda.stream_create()
        ptr = cuda.malloc(16)
        cuda.htod_async(ptr, host, stream), cuda.dtoh_async(host, ptr, stream), cuda.synchronize(stream)
        cuda.capture_begin(stream)
        graph = cuda.capture_end(stream)
        cuda.graph_launch(graph, stream), cuda.graph_destroy(graph)
        cuda.free(ptr), cuda.pinned_free(host), cuda.stream_destroy(stream)
    assert used and used <= set(RUNTIME_CALLS), used - set(RUNTIME_CALLS)


def test_installed_cuda_bindings_have_the_calls_used():
    """Where cuda-bindings is installed (no GPU needed), the names and enum members the adapter uses
    exist, and asking for the GPU gives a device or a one-line reason, never an exception."""
    rt = pytest.importorskip("cuda.bindings.runtime")
    from stpm_edge.tensorrt.cuda import RUNTIME_CALLS, probe_gpu

    for name in RUNTIME_CALLS:
        assert callable(getattr(rt, name)), name
    assert int(rt.cudaStreamNonBlocking) == 1
    assert rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal is not None
    assert rt.cudaMemcpyKind.cudaMemcpyHostToDevice and rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    gpu, why = probe_gpu(0)
    assert (gpu is None) == bool(why) and "\n" not in why
