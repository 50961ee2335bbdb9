"""Sources that deliver every frame: video files and image folders/globs (``loop`` restarts them)."""
from __future__ import annotations

import glob
import logging
from pathlib import Path

import cv2

from stpm_edge.data.io import IMAGE_SUFFIXES, list_images, read_image_bgr
from stpm_edge.errors import StpmError, first_line
from stpm_edge.runtime.bgr import to_bgr
from stpm_edge.apps.run.sources.base import Capture, Status, VideoSource
from stpm_edge.apps.run.sources.opencv import quiet_opencv
from stpm_edge.apps.run.sources.uri import SourceSpec

logger = logging.getLogger(__name__)

MAX_BAD_RUN = 30  # consecutive unreadable frames/images before a file counts as finished


class VideoFileSource(VideoSource):
    """A video file read with OpenCV (FFMPEG), every frame in order."""

    def __init__(self, spec: SourceSpec, loop: bool = False) -> None:
        super().__init__(spec)
        self.path = Path(spec.location)
        self.loop = loop
        self._cap: cv2.VideoCapture | None = None
        self._count = 0
        self._fps: float | None = None
        self._pass_frames = 0

    def _open_cap(self) -> cv2.VideoCapture:
        with quiet_opencv():
            cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise StpmError(f"{self.path}: not a readable video file (OpenCV/FFMPEG could not open it)")
        return cap

    def open(self) -> None:
        if not self.path.is_file():
            raise StpmError(f"{self.path}: no such video file")
        self._cap = self._open_cap()
        self._count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = fps if 0.0 < fps < 1000.0 else None
        self._pass_frames = 0

    @property
    def fps(self) -> float | None:
        return self._fps

    def capture(self, timeout: float = 1.0) -> Capture:
        if self._cap is None:
            return Capture(Status.ERROR, message=f"{self.path}: not open")
        tentative = 0  # failed reads before the end: corrupt only if a good frame follows
        while True:
            ok, frame = self._cap.read()
            if ok:
                self.stats.corrupt += tentative
                try:
                    frame = to_bgr(frame)
                except StpmError:
                    self.stats.corrupt += 1
                    continue
                self._pass_frames += 1
                return self._ok(frame)
            pos = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES) or 0)
            if self._count and pos + 1 < self._count and tentative < MAX_BAD_RUN:
                tentative += 1
                continue
            if self.loop and self._pass_frames > 0:
                self._cap.release()
                self._cap = self._open_cap()
                self.stats.loops += 1
                self._pass_frames = 0
                tentative = 0
                continue
            return Capture(Status.EOS, message=f"{self.path}: end of file")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def describe(self) -> str:
        return f"video file {self.path}"


def resolve_images(location: str) -> list[Path]:
    """The image files a folder, glob or single image names (sorted; one-line StpmError if none)."""
    p = Path(location)
    if p.is_dir():
        paths = list_images(p)
    elif p.is_file():
        paths = [p]
    else:
        paths = sorted(Path(m) for m in glob.glob(location)
                       if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES)
        if not paths and not any(c in location for c in "*?["):
            raise StpmError(f"{location}: no such file or folder")
    if not paths:
        raise StpmError(f"{location}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    return paths


class ImageFolderSource(VideoSource):
    """Images from a folder, a glob or one file, in name order; unreadable ones are skipped and counted."""

    def __init__(self, spec: SourceSpec, loop: bool = False) -> None:
        super().__init__(spec)
        self.loop = loop
        self.paths: list[Path] = []
        self._i = 0
        self._pass_frames = 0

    def open(self) -> None:
        self.paths = resolve_images(self.spec.location)
        self._i = 0

    def capture(self, timeout: float = 1.0) -> Capture:
        while True:
            if self._i >= len(self.paths):
                if not (self.loop and self._pass_frames > 0):
                    return Capture(Status.EOS, message=f"{self.spec.location}: no more images")
                self._i, self._pass_frames = 0, 0
                self.stats.loops += 1
            path = self.paths[self._i]
            self._i += 1
            try:
                frame = read_image_bgr(path)
            except StpmError as e:
                self.stats.corrupt += 1
                logger.warning("skipping %s", first_line(e))
                continue
            self._pass_frames += 1
            return self._ok(frame)

    def describe(self) -> str:
        return f"images {self.spec.location} ({len(self.paths)})"

