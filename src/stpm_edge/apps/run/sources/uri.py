"""Source URIs → :class:`SourceSpec` (pure: no device or file is opened here).

One URI names every kind of source, as jetson-utils' ``videoSource`` does::

    0, "0", /dev/video0, v4l2:///dev/video0, v4l2://0   V4L2 / USB camera (live)
    csi://0                                               Jetson CSI camera via nvarguscamerasrc (live)
    rtsp://host/stream, rtsps://...                       RTSP stream (live, low latency)
    http://host/stream.mjpg                               network stream through FFMPEG (live)
    gst:videotestsrc ! videoconvert ! appsink              raw GStreamer pipeline (live)
    file:///data/line.mp4, line.mp4                       video file (every frame)
    images/, images/*.png, part.png                       image folder, glob or single image

Options may follow as a query string, e.g. ``csi://0?width=1280&height=720&fps=30&flip=2``
or ``rtsp://cam/stream?latency=100&codec=h265``; CLI flags fill the same fields.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, unquote

from stpm_edge.data.io import IMAGE_SUFFIXES
from stpm_edge.errors import StpmError

KINDS = ("v4l2", "csi", "rtsp", "stream", "gst", "file", "images")
LIVE_KINDS = ("v4l2", "csi", "rtsp", "stream", "gst")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".h264",
                  ".h265", ".mjpeg", ".mjpg")
_GLOB = re.compile(r"[*?\[]")
_INT_OPTIONS = ("width", "height", "fps", "flip", "latency")
_STR_OPTIONS = ("codec", "transport", "decoder")


@dataclass(frozen=True)
class SourceOptions:
    """Capture options shared by all kinds (``None``: the device's or the pipeline's default)."""

    width: int | None = None
    height: int | None = None
    fps: int | None = None
    flip: int = 0  # nvvidconv flip-method for csi:// (0..7)
    latency: int = 0  # rtsp jitter buffer in ms (0: lowest lag)
    codec: str = "h264"  # rtsp payload for the GStreamer pipeline: h264 | h265 | auto
    transport: str = "tcp"  # rtsp transport for FFMPEG: tcp | udp
    decoder: str = "auto"  # GStreamer decoder: auto (decodebin) | jetson (nvv4l2decoder) | software

    def merged(self, **overrides: object) -> SourceOptions:
        """A copy with the non-``None`` ``overrides`` applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class SourceSpec:
    """What a URI names: ``kind`` (one of :data:`KINDS`), ``location`` and its options.

    ``location``: the device index (``"0"``) or path for v4l2, the sensor id for csi, the URL
    for rtsp/stream, the pipeline for gst, the file path for file, the folder/glob/file for images.
    """

    uri: str
    kind: str
    location: str
    options: SourceOptions = field(default_factory=SourceOptions)

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS

    @property
    def device_index(self) -> int | None:
        """The camera index for ``v4l2`` sources named by number (``0``, ``/dev/video0``)."""
        if self.kind != "v4l2":
            return None
        m = re.fullmatch(r"(?:/dev/video)?(\d+)", self.location)
        return int(m.group(1)) if m else None


def _parse_options(query: str, uri: str) -> SourceOptions:
    values: dict[str, object] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        key = key.lower()
        if key in _INT_OPTIONS:
            try:
                values[key] = int(value)
            except ValueError:
                raise StpmError(f"{uri}: option {key}={value!r} is not an integer") from None
        elif key in _STR_OPTIONS:
            values[key] = value.lower()
        else:
            raise StpmError(f"{uri}: unknown option {key!r} (known: {', '.join(_INT_OPTIONS + _STR_OPTIONS)})")
    return check_options(SourceOptions(**values), uri)  # type: ignore[arg-type]


def check_options(opts: SourceOptions, uri: str) -> SourceOptions:
    """One-line StpmError unless the option values are usable."""
    for key in ("width", "height", "fps"):
        v = getattr(opts, key)
        if v is not None and not 1 <= v <= 100_000:
            raise StpmError(f"{uri}: {key} must be a positive integer, got {v}")
    if not 0 <= opts.flip <= 7:
        raise StpmError(f"{uri}: flip must be 0..7 (nvvidconv flip-method), got {opts.flip}")
    if opts.latency < 0:
        raise StpmError(f"{uri}: latency must be >= 0 ms, got {opts.latency}")
    if opts.codec not in ("h264", "h265", "auto"):
        raise StpmError(f"{uri}: codec must be h264, h265 or auto, got {opts.codec!r}")
    if opts.transport not in ("tcp", "udp"):
        raise StpmError(f"{uri}: transport must be tcp or udp, got {opts.transport!r}")
    if opts.decoder not in ("auto", "jetson", "software"):
        raise StpmError(f"{uri}: decoder must be auto, jetson or software, got {opts.decoder!r}")
    return opts


def _split_query(rest: str) -> tuple[str, str]:
    """``path?key=value`` → (path, query); a ``?`` not followed by ``key=`` is a glob character."""
    head, sep, query = rest.rpartition("?")
    return (head, query) if sep and "=" in query else (rest, "")


def _path_kind(path: str, is_dir: Callable[[str], bool]) -> str:
    if is_dir(path):
        return "images"
    if _GLOB.search(os.path.basename(path)) or _GLOB.search(os.path.dirname(path)):
        return "images"
    if os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES:
        return "images"
    return "file"


def parse_uri(uri: str | int, is_dir: Callable[[str], bool] = os.path.isdir) -> SourceSpec:
    """Classify ``uri`` (see the module docstring); ``is_dir`` is the only filesystem look-up."""
    if isinstance(uri, bool):
        raise StpmError(f"source: expected a URI or a camera index, got {uri!r}")
    if isinstance(uri, int):
        if uri < 0:
            raise StpmError(f"camera index must be >= 0, got {uri}")
        return SourceSpec(str(uri), "v4l2", str(uri))
    text = str(uri).strip()
    if not text:
        raise StpmError("source: empty URI (give a camera index, a file, a folder or a URL)")
    if text.isdigit():
        return SourceSpec(text, "v4l2", str(int(text)))
    lower = text.lower()
    if lower.startswith(("gst:", "gstreamer:")):
        pipeline = text.split(":", 1)[1]
        pipeline = pipeline[2:] if pipeline.startswith("//") else pipeline
        if not pipeline.strip():
            raise StpmError(f"{text}: empty GStreamer pipeline")
        return SourceSpec(text, "gst", pipeline.strip())
    scheme, sep, rest = text.partition("://")
    if not sep:
        if re.fullmatch(r"/dev/video\d+", text) or text.startswith("/dev/"):
            return SourceSpec(text, "v4l2", text)
        return SourceSpec(text, _path_kind(text, is_dir), text)
    scheme = scheme.lower()
    if scheme in ("rtsp", "rtsps", "rtspt"):
        url, query = _split_query(text)
        return SourceSpec(text, "rtsp", url, _parse_options(query, text))
    if scheme in ("http", "https", "rtmp", "udp", "tcp", "srt"):
        return SourceSpec(text, "stream", text)
    rest, query = _split_query(rest)
    opts = _parse_options(query, text)
    if scheme == "csi":
        if not rest.isdigit():
            raise StpmError(f"{text}: expected csi://N with N the sensor id, e.g. csi://0")
        return SourceSpec(text, "csi", str(int(rest)), opts)
    if scheme == "v4l2":
        if not rest:
            raise StpmError(f"{text}: expected v4l2:///dev/videoN or v4l2://N")
        return SourceSpec(text, "v4l2", str(int(rest)) if rest.isdigit() else rest, opts)
    if scheme == "file":
        path = unquote(rest)
        if not path:
            raise StpmError(f"{text}: expected file:///path/to/video.mp4 or file://relative/path")
        return SourceSpec(text, _path_kind(path, is_dir), path, opts)
    raise StpmError(f"{text}: unknown source scheme {scheme!r} (use a camera index, /dev/videoN, csi://N, rtsp://, "
                    "file://, a path, a folder, a glob or gst:PIPELINE)")
