"""How each live source kind is opened with OpenCV: a pure plan, then one function that opens it.

:func:`capture_plan` decides the capture target (index, device, URL or GStreamer pipeline), the
OpenCV backend, the FFMPEG options and the properties to set; it is unit-tested without a
camera. :func:`open_capture` carries the plan out and turns failure into a one-line error.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from stpm_edge.errors import StpmError
from stpm_edge.apps.run.sources.gstreamer import (complete_pipeline, csi_pipeline, ffmpeg_capture_options,
                                                 gstreamer_available, rtsp_pipeline)
from stpm_edge.apps.run.sources.uri import SourceSpec

logger = logging.getLogger(__name__)

NETWORK_TIMEOUT_MS = 5000  # FFMPEG open/read timeout: a stalled stream fails the read, then reconnects
_ENV_LOCK = threading.Lock()
_FFMPEG_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


@dataclass(frozen=True)
class CapturePlan:
    target: int | str
    api: str  # "ANY" | "V4L2" | "FFMPEG" | "GSTREAMER" (cv2.CAP_<api>)
    ffmpeg_options: str | None = None
    props: dict[str, float] = field(default_factory=dict)  # cv2.CAP_PROP_<name> → value, set after opening
    params: dict[str, int] = field(default_factory=dict)  # cv2.CAP_PROP_<name> → value, given when opening


@lru_cache(maxsize=1)
def opencv_has_gstreamer() -> bool:
    return gstreamer_available(cv2.getBuildInformation())


def is_jetson() -> bool:
    return Path("/etc/nv_tegra_release").exists()


def _size_props(spec: SourceSpec) -> dict[str, float]:
    o = spec.options
    props: dict[str, float] = {}
    if o.width:
        props["FRAME_WIDTH"] = o.width
    if o.height:
        props["FRAME_HEIGHT"] = o.height
    if o.fps:
        props["FPS"] = o.fps
    return props


def capture_plan(spec: SourceSpec, gstreamer: bool, jetson: bool = False, platform: str = sys.platform) -> CapturePlan:
    """How to open the live source ``spec`` (pure; StpmError if this OpenCV cannot)."""
    if spec.kind == "v4l2":
        index = spec.device_index
        target: int | str = index if index is not None else spec.location
        api = "V4L2" if platform.startswith("linux") else "ANY"
        # BUFFERSIZE=1: the driver queues one frame, so a read returns a fresh one.
        return CapturePlan(target, api, props={**_size_props(spec), "BUFFERSIZE": 1})
    if spec.kind in ("csi", "gst"):
        if not gstreamer:
            raise StpmError(f"{spec.uri}: needs OpenCV built with GStreamer (JetPack's OpenCV has it; "
                            "the pip opencv-python wheels do not)")
        pipeline = csi_pipeline(int(spec.location), spec.options) if spec.kind == "csi" else complete_pipeline(spec.location)
        return CapturePlan(pipeline, "GSTREAMER")
    if spec.kind == "rtsp" and gstreamer:
        opts = spec.options
        if opts.decoder == "auto" and jetson:
            opts = opts.merged(decoder="jetson")
        return CapturePlan(rtsp_pipeline(spec.location, opts), "GSTREAMER")
    if spec.kind in ("rtsp", "stream"):
        timeouts = {"OPEN_TIMEOUT_MSEC": NETWORK_TIMEOUT_MS, "READ_TIMEOUT_MSEC": NETWORK_TIMEOUT_MS}
        return CapturePlan(spec.location, "FFMPEG", ffmpeg_capture_options(spec.options, rtsp=spec.kind == "rtsp"),
                           props={"BUFFERSIZE": 1}, params=timeouts)
    raise StpmError(f"{spec.uri}: not a live source")


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own warnings (e.g. ``can't open camera by index``): we report one line."""
    try:
        from cv2.utils import logging as cvlog  # noqa: PLC0415
        old = cvlog.getLogLevel()
        cvlog.setLogLevel(cvlog.LOG_LEVEL_SILENT)
    except (ImportError, AttributeError):  # pragma: no cover - very old OpenCV
        yield
        return
    try:
        yield
    finally:
        cvlog.setLogLevel(old)


def _not_opened(spec: SourceSpec, plan: CapturePlan) -> StpmError:
    if spec.kind == "v4l2":
        index = spec.device_index
        name = f"camera {index} (/dev/video{index})" if index is not None else f"camera {spec.location}"
        return StpmError(f"{name}: not found or busy (list cameras with `v4l2-ctl --list-devices`; "
                         "close other programs using it)")
    if spec.kind == "csi":
        return StpmError(f"{spec.uri}: could not open CSI sensor {spec.location} (is nvargus-daemon running? "
                         "try `gst-launch-1.0 nvarguscamerasrc ! fakesink`)")
    if plan.api == "GSTREAMER":
        return StpmError(f"{spec.uri}: GStreamer could not start the pipeline: {plan.target}")
    return StpmError(f"{spec.uri}: could not connect (check the URL, the credentials and the network)")


class CvReader:
    """A :class:`cv2.VideoCapture` as the reader a live source polls."""

    def __init__(self, cap: cv2.VideoCapture) -> None:
        self._cap = cap

    def read(self) -> tuple[bool, np.ndarray | None]:
        return self._cap.read()

    def fps(self) -> float | None:
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        return fps if 0.0 < fps < 1000.0 else None

    def release(self) -> None:
        self._cap.release()


def open_capture(spec: SourceSpec, plan: CapturePlan) -> CvReader:
    """Carry out ``plan`` (one-line StpmError when the source cannot be opened)."""
    api = getattr(cv2, f"CAP_{plan.api}")
    params: list[int] = []
    for name, value in plan.params.items():
        prop = getattr(cv2, f"CAP_PROP_{name}", None)
        if prop is not None:
            params += [prop, int(value)]
    with _ENV_LOCK, quiet_opencv():
        old = os.environ.get(_FFMPEG_ENV)
        if plan.ffmpeg_options is not None:
            os.environ[_FFMPEG_ENV] = plan.ffmpeg_options
        try:
            cap = cv2.VideoCapture(plan.target, api, params) if params else cv2.VideoCapture(plan.target, api)
        finally:
            if plan.ffmpeg_options is not None:
                if old is None:
                    os.environ.pop(_FFMPEG_ENV, None)
                else:
                    os.environ[_FFMPEG_ENV] = old
    if not cap.isOpened():
        cap.release()
        raise _not_opened(spec, plan)
    for name, value in plan.props.items():
        prop = getattr(cv2, f"CAP_PROP_{name}", None)
        if prop is not None and not cap.set(prop, value):
            logger.debug("%s: the device ignored %s=%s", spec.uri, name, value)
    return CvReader(cap)
