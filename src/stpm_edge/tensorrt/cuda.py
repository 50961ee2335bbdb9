"""The few CUDA runtime calls the TensorRT backend needs, through cuda-python or PyCUDA.

Desktops install cuda-python (``pip install 'stpm-edge[tensorrt]'``); JetPack images often
ship PyCUDA instead, so :func:`load_cuda` takes whichever imports, in this order:

1. ``cuda.bindings.runtime`` — cuda-python 12.6+ and 13 (13 removed ``from cuda import cudart``);
2. ``cuda.cudart`` — older cuda-python (11.x on JetPack 5, early 12.x);
3. ``pycuda.driver`` — PyCUDA (driver API; uses the device's primary context, which is the
   context the CUDA runtime and therefore TensorRT use).

Calls used, checked against the cuda-python runtime bindings (``cuda.bindings.runtime``
docstrings of 13.x: every call returns ``(cudaError_t, *results)``) and NVIDIA's TensorRT
sample ``samples/python/common_runtime.py`` (cudaMallocHost/cudaMalloc/cudaMemcpyAsync/
cudaStreamCreate/cudaStreamSynchronize). Stream handles for ``execute_async_v3`` come from
``cuda.bindings.utils.get_cuda_native_handle`` where it exists (cuda-bindings 13.0 release notes:
"Using ``int(cuda_obj)`` to retrieve the underlying address of a CUDA object is deprecated"),
else ``int()``. PyCUDA per its ``doc/source/driver.rst``
(``Device.retain_primary_context`` since 2020.1, ``pagelocked_empty``, ``memcpy_htod_async``
sizes the copy from the host buffer, so partial copies pass a view). CUDA graphs
(``cudaStreamBeginCapture`` / ``cudaStreamEndCapture`` / ``cudaGraphInstantiateWithFlags`` /
``cudaGraphLaunch``) are offered through cuda-python only; capture needs a non-default
stream, hence ``cudaStreamNonBlocking``.

Without an NVIDIA driver, cuda-bindings 12.9+ return an error (``cudaErrorInsufficientDriver``)
while cuda-python 11.8.7-12.8 raise ``RuntimeError: Failed to dlopen libcuda.so.1``: every call
goes through :meth:`_CudaPython._call`, which makes both a one-line :class:`CudaError`, so
:func:`probe_gpu` answers "no CUDA GPU (...)" instead of a traceback.
"""
from __future__ import annotations

import abc
import contextlib
import ctypes
import importlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from stpm_edge.errors import StpmError, first_line
from stpm_edge.tensorrt.engine_meta import GpuInfo

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install cuda-python (or use the PyCUDA that comes with JetPack)"
# The cuda-python runtime functions the adapter calls (the conformance test checks them on 12.x and 13.x).
RUNTIME_CALLS = ("cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaSetDevice", "cudaMalloc", "cudaFree",
                 "cudaMallocHost", "cudaFreeHost", "cudaStreamCreateWithFlags", "cudaStreamDestroy",
                 "cudaMemcpyAsync", "cudaStreamSynchronize", "cudaStreamBeginCapture", "cudaStreamEndCapture",
                 "cudaGraphInstantiateWithFlags", "cudaGraphLaunch", "cudaGraphExecDestroy", "cudaGraphDestroy",
                 "cudaGetErrorString")


class CudaError(StpmError):
    """A failed CUDA call (one line: the call and CUDA's error string)."""


class CudaApi(abc.ABC):
    """Device memory, pinned host memory, one stream and (optionally) CUDA graphs."""

    name: str = "cuda"
    supports_graphs: bool = False

    @abc.abstractmethod
    def device_count(self) -> int: ...

    @abc.abstractmethod
    def device_info(self, index: int = 0) -> GpuInfo: ...

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make the device current on the calling thread for the duration (runtime API: no-op)."""
        yield

    @abc.abstractmethod
    def malloc(self, nbytes: int) -> int: ...

    @abc.abstractmethod
    def free(self, ptr: int) -> None: ...

    @abc.abstractmethod
    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A page-locked host array (freed by :meth:`pinned_free`)."""

    @abc.abstractmethod
    def pinned_free(self, array: np.ndarray) -> None: ...

    @abc.abstractmethod
    def stream_create(self) -> Any: ...

    @abc.abstractmethod
    def stream_handle(self, stream: Any) -> int:
        """The ``cudaStream_t`` as an int (what ``execute_async_v3`` takes)."""

    @abc.abstractmethod
    def stream_destroy(self, stream: Any) -> None: ...

    @abc.abstractmethod
    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        """Copy all of ``src`` (pinned, contiguous) to device pointer ``dst``."""

    @abc.abstractmethod
    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        """Fill all of ``dst`` (pinned, contiguous) from device pointer ``src``."""

    @abc.abstractmethod
    def synchronize(self, stream: Any) -> None: ...

    def capture_begin(self, stream: Any) -> None:
        raise CudaError(f"CUDA graphs are not available through {self.name}")

    def capture_end(self, stream: Any) -> Any:
        raise CudaError(f"CUDA graphs are not available through {self.name}")

    def graph_launch(self, graph: Any, stream: Any) -> None:
        raise CudaError(f"CUDA graphs are not available through {self.name}")

    def graph_destroy(self, graph: Any) -> None:
        """Release an instantiated graph (idempotent for None)."""


class _CudaPython(CudaApi):
    """cuda-python's runtime bindings (``cuda.bindings.runtime`` or the older ``cuda.cudart``)."""

    supports_graphs = True

    def __init__(self, rt: Any, module_name: str, device: int = 0,
                 handle_of: Callable[[Any], int] | None = None) -> None:
        self.rt = rt
        self.name = f"cuda-python ({module_name})"
        self.device = device
        self._handle_of: Callable[[Any], int] = handle_of or int

    def _call(self, name: str, *args: Any) -> Any:
        """``rt.<name>(*args)`` → its value(s); CudaError when it returns an error or raises.

        cuda-python 11.8.7-12.8 raise ``RuntimeError: Failed to dlopen libcuda.so.1`` where no
        NVIDIA driver is installed instead of returning an error; that is a CudaError too.
        """
        try:
            result = getattr(self.rt, name)(*args)
        except Exception as e:  # noqa: BLE001 - RuntimeError (no driver) or any binding failure
            raise CudaError(f"CUDA {name} failed: {first_line(e)}") from None
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            try:
                msg = self.rt.cudaGetErrorString(err)[1]
                msg = msg.decode() if isinstance(msg, bytes) else str(msg)
            except Exception:  # noqa: BLE001 - best effort for the message only
                msg = str(err)
            raise CudaError(f"CUDA {name} failed: {msg} ({getattr(err, 'name', err)})")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def device_count(self) -> int:
        return int(self._call("cudaGetDeviceCount"))

    def device_info(self, index: int = 0) -> GpuInfo:
        props = self._call("cudaGetDeviceProperties", index)
        name = props.name
        name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)
        return GpuInfo(name.strip(), f"{props.major}.{props.minor}", index, int(props.totalGlobalMem) // 2**20)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        if self.device:  # the runtime API's current device is per host thread
            self._call("cudaSetDevice", self.device)
        yield

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", max(int(nbytes), 1)))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        ptr = int(self._call("cudaMallocHost", nbytes))
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
        arr = np.frombuffer(raw, dtype=np.uint8, count=int(np.prod(shape)) * dtype.itemsize)
        return arr.view(dtype).reshape(shape)

    def pinned_free(self, array: np.ndarray) -> None:
        self._call("cudaFreeHost", array.ctypes.data)

    def stream_create(self) -> Any:
        flags = getattr(self.rt, "cudaStreamNonBlocking", 1)
        return self._call("cudaStreamCreateWithFlags", flags)

    def stream_handle(self, stream: Any) -> int:
        return int(self._handle_of(stream))

    def stream_destroy(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", stream)

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst, src.ctypes.data, src.nbytes, kind, stream)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", dst.ctypes.data, src, dst.nbytes, kind, stream)

    def synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)

    def capture_begin(self, stream: Any) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", stream, mode)

    def capture_end(self, stream: Any) -> Any:
        graph = self._call("cudaStreamEndCapture", stream)
        try:
            return self._call("cudaGraphInstantiateWithFlags", graph, 0)
        finally:
            self._call("cudaGraphDestroy", graph)

    def graph_launch(self, graph: Any, stream: Any) -> None:
        self._call("cudaGraphLaunch", graph, stream)

    def graph_destroy(self, graph: Any) -> None:
        if graph is not None:
            self._call("cudaGraphExecDestroy", graph)


class _PyCuda(CudaApi):
    """PyCUDA's driver API on the device's primary context (pushed around each use)."""

    name = "pycuda"

    def __init__(self, drv: Any, device: int = 0) -> None:
        self.drv = drv
        drv.init()
        self.device = device
        self._ctx: Any = None
        self._allocs: dict[int, Any] = {}

    def _context(self) -> Any:
        if self._ctx is None:
            dev = self.drv.Device(self.device)
            self._ctx = dev.retain_primary_context()
        return self._ctx

    def device_count(self) -> int:
        return int(self.drv.Device.count())

    def device_info(self, index: int = 0) -> GpuInfo:
        dev = self.drv.Device(index)
        major, minor = dev.compute_capability()
        return GpuInfo(str(dev.name()).strip(), f"{major}.{minor}", index, int(dev.total_memory()) // 2**20)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        ctx = self._context()
        ctx.push()
        try:
            yield
        finally:
            self.drv.Context.pop()

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(max(int(nbytes), 1))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._allocs.pop(int(ptr), None)
        if alloc is not None:
            alloc.free()

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, np.dtype(dtype))

    def pinned_free(self, array: np.ndarray) -> None:
        base = getattr(array, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()

    def stream_create(self) -> Any:
        return self.drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_destroy(self, stream: Any) -> None:
        """PyCUDA destroys the stream when the object is collected."""

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.drv.memcpy_htod_async(dst, src, stream)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.drv.memcpy_dtoh_async(dst, src, stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()


def _import(name: str) -> Any:
    return importlib.import_module(name)


def _native_handle_getter() -> Callable[[Any], int] | None:
    """``cuda.bindings.utils.get_cuda_native_handle`` (added in cuda-bindings 13.0), else None (``int()``)."""
    try:
        return getattr(_import("cuda.bindings.utils"), "get_cuda_native_handle", None)
    except ImportError:
        return None


def load_cuda(device: int = 0) -> CudaApi:
    """The first CUDA binding that imports (see the module docstring); one-line StpmError otherwise."""
    errors = []
    for module_name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            rt = _import(module_name)
        except Exception as e:  # noqa: BLE001 - ImportError, or a binding that fails while loading
            errors.append(f"{module_name}: {first_line(e)}")
            continue
        handle_of = _native_handle_getter() if module_name == "cuda.bindings.runtime" else None
        return _CudaPython(rt, module_name, device, handle_of)
    try:
        return _PyCuda(_import("pycuda.driver"), device)
    except ImportError as e:
        errors.append(f"pycuda: {first_line(e)}")
    except Exception as e:  # noqa: BLE001 - pycuda's init raises its own error types (no driver)
        raise StpmError(f"PyCUDA could not initialise CUDA ({first_line(e)})") from None
    raise StpmError(f"no CUDA Python binding found ({'; '.join(errors)}); {INSTALL_HINT}")


def probe_gpu(device: int = 0) -> tuple[GpuInfo | None, str]:
    """(GPU, "") when ``device`` is a usable CUDA GPU, else (None, the reason in a few words)."""
    try:
        cuda = load_cuda(device)
    except StpmError as e:
        return None, str(e)
    try:
        count = cuda.device_count()
    except Exception as e:  # noqa: BLE001 - CudaError, or PyCUDA's own error types
        return None, f"no CUDA GPU ({first_line(e)})"
    if count < 1:
        return None, "no CUDA GPU (the driver reports 0 devices)"
    if device >= count:
        return None, f"no CUDA GPU {device} (the driver reports {count})"
    try:
        return cuda.device_info(device), ""
    except Exception as e:  # noqa: BLE001
        return None, f"no CUDA GPU ({first_line(e)})"
