"""The Python side of ``libstpm_edge``: C calls → :class:`~stpm_edge.runtime.Detector`.

``shim.c`` has already checked every argument that C can check (NULL pointers, sizes,
stride, pixel format) before a call arrives here; this module owns the handle table, turns
the caller's pixel buffer into a frame without copying it, runs the detector and fills the
caller's structs. Every method returns an ``stpm_status`` and never raises: a failure sets
the thread-local message through the ``set_error`` the embedded init code hands in.

Handles are numbers from a counter that never repeats, looked up in a dict, so a destroyed
or made-up handle is an error, never a dangling pointer.
"""
from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from stpm_edge.errors import StpmError, first_line
from stpm_edge.runtime.backends.select import BACKENDS
from stpm_edge.runtime.detector import Detector

# stpm_status (stpm_edge.h)
OK, INVALID_ARGUMENT, INVALID_HANDLE, MODEL, INFERENCE, RUNTIME, INTERNAL = range(7)

# stpm_pixel_format → (channels, OpenCV conversion to BGR or None)
PIXEL_FORMATS: dict[int, tuple[int, int | None]] = {
    0: (3, None),                  # BGR8
    1: (3, cv2.COLOR_RGB2BGR),     # RGB8
    2: (1, None),                  # GRAY8 (the detector converts grey)
    3: (4, None),                  # BGRA8 (the detector converts BGRA)
    4: (4, cv2.COLOR_RGBA2BGR),    # RGBA8
}
INFO_STRING = 128  # STPM_INFO_STRING
FIRST_HANDLE = 0x5354_0001  # any non-zero start; handles only ever count up
C_BACKENDS = BACKENDS  # stpm_options.backend: the one backend registry (open_backend's names)


@dataclass
class _Handle:
    detector: Detector
    lock: threading.Lock = field(default_factory=threading.Lock)


def frame_bytes(width: int, height: int, stride: int, fmt: int) -> int:
    """Bytes the frame spans: ``height - 1`` full rows, then the last row's pixels (no padding after it)."""
    return stride * (height - 1) + width * PIXEL_FORMATS[fmt][0]


def frame_view(buffer: Any, width: int, height: int, stride: int, fmt: int) -> np.ndarray:
    """The caller's pixels (a buffer of :func:`frame_bytes`) as an ``HxWxC`` uint8 BGR array
    (a view for BGR8/GRAY8/BGRA8)."""
    channels, conversion = PIXEL_FORMATS[fmt]
    flat = np.frombuffer(buffer, dtype=np.uint8, count=frame_bytes(width, height, stride, fmt))
    view = np.lib.stride_tricks.as_strided(flat, (height, width, channels), (stride, channels, 1),
                                           writeable=False)
    if channels == 1:
        return view[:, :, 0]
    if conversion is not None:
        return cv2.cvtColor(np.ascontiguousarray(view), conversion)
    return view


class Bridge:
    """One per process (the embedded module holds it); methods are the C entry points."""

    def __init__(self, ffi: Any, set_error: Callable[[str], None]) -> None:
        self.ffi = ffi
        self._set_error = set_error  # the embedded init code's: one-line, UTF-8, bounded
        self._handles: dict[int, _Handle] = {}
        self._table_lock = threading.Lock()
        self._ids = itertools.count(FIRST_HANDLE)

    # -- helpers --------------------------------------------------------------------------
    def fail(self, status: int, message: str) -> int:
        self._set_error(message)
        return status

    def _lookup(self, handle_id: int) -> _Handle | None:
        with self._table_lock:
            return self._handles.get(int(handle_id))

    # -- entry points ---------------------------------------------------------------------
    def create(self, path_c: Any, backend_c: Any, threshold: float, threads: int, out_id: Any) -> int:
        where = "stpm_detector_create"
        path = os.fsdecode(self.ffi.string(path_c))
        backend = self.ffi.string(backend_c).decode("utf-8", "replace").strip().lower()
        if backend not in C_BACKENDS:
            return self.fail(INVALID_ARGUMENT, f"{where}: unknown backend {backend!r} "
                             f"(choose one of {', '.join(C_BACKENDS)})")
        try:
            detector = Detector(path, backend=backend, threshold=None if math.isnan(threshold) else threshold,
                                threads=int(threads) or None)
        except StpmError as exc:
            return self.fail(MODEL, f"{where}: {exc}")
        except ImportError as exc:
            return self.fail(RUNTIME, f"{where}: {path}: a runtime library is missing: {first_line(exc)}")
        except Exception as exc:  # noqa: BLE001 - a backend's own exception types
            return self.fail(MODEL, f"{where}: {path}: {first_line(exc)}")
        with self._table_lock:
            handle_id = next(self._ids)
            self._handles[handle_id] = _Handle(detector)
        out_id[0] = handle_id
        return OK

    def infer(self, handle_id: int, pixels: Any, width: int, height: int, stride: int, fmt: int,
              result: Any, map_out: Any) -> int:
        where = "stpm_detector_infer"
        handle = self._lookup(handle_id)
        if handle is None:
            return self.fail(INVALID_HANDLE, f"{where}: unknown or destroyed detector handle")
        buffer = self.ffi.buffer(pixels, frame_bytes(width, height, stride, fmt))
        with handle.lock:
            try:
                start = time.perf_counter()
                res = handle.detector(frame_view(buffer, width, height, stride, fmt))
                boxes = res.boxes
                elapsed_ms = (time.perf_counter() - start) * 1e3
            except StpmError as exc:
                return self.fail(INFERENCE, f"{where}: {exc}")
            except Exception as exc:  # noqa: BLE001 - a backend's own exception types
                return self.fail(INFERENCE, f"{where}: {first_line(exc)}")
        if map_out != self.ffi.NULL:
            dst = np.frombuffer(self.ffi.buffer(map_out, width * height * 4), dtype=np.float32)
            np.copyto(dst.reshape(height, width), res.anomaly_map)
        result.score = res.score
        result.threshold = res.threshold
        result.is_anomalous = int(res.is_anomalous)
        result.num_boxes = n = min(len(boxes), len(result.boxes))
        result.latency_ms = elapsed_ms
        for i in range(n):
            b, dst_box = boxes[i], result.boxes[i]
            dst_box.x, dst_box.y, dst_box.w, dst_box.h, dst_box.area, dst_box.score = b.x, b.y, b.w, b.h, b.area, b.score
        return OK

    def info(self, handle_id: int, info: Any) -> int:
        handle = self._lookup(handle_id)
        if handle is None:
            return self.fail(INVALID_HANDLE, "stpm_detector_get_info: unknown or destroyed detector handle")
        det = handle.detector
        info.input_width = det.input_spec.width
        info.input_height = det.input_spec.height
        info.threshold = det.threshold
        info.backend = det.backend.describe().encode("utf-8", "replace")[:INFO_STRING - 1]
        info.precision = det.precision.encode("utf-8", "replace")[:INFO_STRING - 1]
        return OK

    def destroy(self, handle_id: int) -> int:
        with self._table_lock:
            handle = self._handles.pop(int(handle_id), None)
        if handle is None:
            return self.fail(INVALID_HANDLE, "stpm_detector_destroy: unknown or already destroyed detector handle")
        with handle.lock:  # waits for a call in flight on another thread
            try:
                handle.detector.close()
            except Exception as exc:  # noqa: BLE001
                return self.fail(INTERNAL, f"stpm_detector_destroy: closing the model failed: {first_line(exc)}")
        return OK
