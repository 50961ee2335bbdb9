"""GStreamer pipeline strings and FFMPEG capture options for live sources (pure functions).

Every pipeline ends in ``appsink drop=true max-buffers=1 sync=false``: the sink keeps only
the newest decoded frame, so a slow consumer never builds up lag. Pipelines are opened with
``cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)``.
"""
from __future__ import annotations

from stpm_edge.apps.run.sources.uri import SourceOptions

APPSINK = "appsink drop=true max-buffers=1 sync=false"
TO_BGR = "videoconvert ! video/x-raw,format=BGR"

# RTSP defaults used when the caller gives no size/rate (the camera's own caps are kept).
CSI_DEFAULT = (1280, 720, 30)


def _caps(media: str, width: int | None, height: int | None, fps: int | None) -> str:
    parts = [media]
    if width:
        parts.append(f"width={width}")
    if height:
        parts.append(f"height={height}")
    if fps:
        parts.append(f"framerate={fps}/1")
    return ",".join(parts)


def csi_pipeline(sensor_id: int, opts: SourceOptions = SourceOptions()) -> str:
    """Jetson CSI camera: ``nvarguscamerasrc`` → NVMM → ``nvvidconv`` (flip) → BGR appsink."""
    w = opts.width or CSI_DEFAULT[0]
    h = opts.height or CSI_DEFAULT[1]
    fps = opts.fps or CSI_DEFAULT[2]
    return (f"nvarguscamerasrc sensor-id={int(sensor_id)} ! "
            f"{_caps('video/x-raw(memory:NVMM)', w, h, fps)} ! "
            f"nvvidconv flip-method={opts.flip} ! video/x-raw,format=BGRx ! {TO_BGR} ! {APPSINK}")


def _rtsp_decode(opts: SourceOptions) -> str:
    """Depayload and decode to system memory. ``decoder=jetson`` uses the hardware decoder and
    ``nvvidconv`` to leave NVMM memory (``decodebin`` alone may pick nvv4l2decoder on a Jetson
    and hand NVMM buffers to ``videoconvert``, which cannot read them)."""
    if opts.codec == "auto":
        return "decodebin ! nvvidconv ! video/x-raw,format=BGRx" if opts.decoder == "jetson" else "decodebin"
    depay = f"rtp{opts.codec}depay ! {opts.codec}parse"
    if opts.decoder == "jetson":
        return f"{depay} ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx"
    if opts.decoder == "software":
        return f"{depay} ! avdec_{opts.codec}"
    return f"{depay} ! decodebin"


def rtsp_pipeline(url: str, opts: SourceOptions = SourceOptions()) -> str:
    """RTSP with the lag kept at zero: ``latency`` ms jitter buffer, late packets dropped."""
    src = f"rtspsrc location={url} latency={opts.latency} drop-on-latency=true"
    if opts.transport == "tcp":
        src += " protocols=tcp"
    scale = ""
    if opts.width or opts.height:
        scale = f" ! videoscale ! {_caps('video/x-raw', opts.width, opts.height, None)}"
    return f"{src} ! {_rtsp_decode(opts)} ! {TO_BGR}{scale} ! {APPSINK}"


def v4l2_pipeline(device: str, opts: SourceOptions = SourceOptions()) -> str:
    """A V4L2 camera through GStreamer (used only when asked for: OpenCV's V4L2 backend is the default)."""
    return f"v4l2src device={device} ! {_caps('video/x-raw', opts.width, opts.height, opts.fps)} ! {TO_BGR} ! {APPSINK}"


def complete_pipeline(pipeline: str) -> str:
    """A user's ``gst:`` pipeline, given an appsink (``... ! videoconvert ! BGR ! appsink``) when it has none."""
    p = pipeline.strip().rstrip("!").strip()
    if "appsink" in p:
        return p
    return f"{p} ! {TO_BGR} ! {APPSINK}"


def ffmpeg_capture_options(opts: SourceOptions = SourceOptions(), rtsp: bool = True) -> str:
    """The ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` value for a low-latency network stream.

    No input buffering, low-delay decoding and (for RTSP) the chosen transport; OpenCV reads
    this environment variable when a capture is opened.
    """
    items = ["fflags;nobuffer", "flags;low_delay", "max_delay;0"]
    if rtsp:
        items.insert(0, f"rtsp_transport;{opts.transport}")
    return "|".join(items)


def gstreamer_available(build_info: str) -> bool:
    """Whether OpenCV was built with GStreamer, from ``cv2.getBuildInformation()``."""
    for line in build_info.splitlines():
        if line.strip().startswith("GStreamer:"):
            return line.split(":", 1)[1].strip().upper().startswith("YES")
    return False
