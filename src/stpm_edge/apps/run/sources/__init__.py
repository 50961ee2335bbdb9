"""Video sources behind one URI (see :mod:`.uri`): cameras, CSI, RTSP, GStreamer, files, folders.

    with open_source("csi://0", loop=False) as src:
        while (cap := src.capture(timeout=1.0)).status is not Status.EOS:
            if cap.ok:
                use(cap.frame)
"""
from __future__ import annotations

from stpm_edge.apps.run.sources.base import Capture, SourceStats, Status, VideoSource
from stpm_edge.apps.run.sources.files import ImageFolderSource, VideoFileSource
from stpm_edge.apps.run.sources.live import LiveSource, ReconnectPolicy
from stpm_edge.apps.run.sources.opencv import capture_plan, is_jetson, open_capture, opencv_has_gstreamer
from stpm_edge.apps.run.sources.uri import SourceOptions, SourceSpec, check_options, parse_uri

__all__ = ["Capture", "ImageFolderSource", "LiveSource", "ReconnectPolicy", "SourceOptions", "SourceSpec",
           "SourceStats", "Status", "VideoFileSource", "VideoSource", "make_source", "open_source", "parse_uri"]


def make_source(uri: str | int | SourceSpec, *, loop: bool = False, reconnect: ReconnectPolicy = ReconnectPolicy(),
                **options: object) -> VideoSource:
    """The (unopened) source for ``uri``; ``options`` (width, height, fps, flip, latency, codec,
    transport, decoder) override the URI's query options when not ``None``."""
    spec = uri if isinstance(uri, SourceSpec) else parse_uri(uri)
    if options:
        spec = SourceSpec(spec.uri, spec.kind, spec.location, check_options(spec.options.merged(**options), spec.uri))
    if spec.kind == "file":
        return VideoFileSource(spec, loop=loop)
    if spec.kind == "images":
        return ImageFolderSource(spec, loop=loop)
    plan = capture_plan(spec, opencv_has_gstreamer(), is_jetson())
    return LiveSource(spec, lambda: open_capture(spec, plan), reconnect, fps=spec.options.fps)


def open_source(uri: str | int | SourceSpec, *, loop: bool = False, reconnect: ReconnectPolicy = ReconnectPolicy(),
                **options: object) -> VideoSource:
    """:func:`make_source`, opened (one-line StpmError if it cannot be)."""
    src = make_source(uri, loop=loop, reconnect=reconnect, **options)
    src.open()
    return src
