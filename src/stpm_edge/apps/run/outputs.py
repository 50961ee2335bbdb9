"""Where rendered frames and NG events go: a window, a video file or image folder, saved
anomalies and a JSON-lines event log. Each is a :class:`Sink` the pipeline writes to from its
output stage; ``close(ok)`` finalises (the video is renamed into place only then).
"""
from __future__ import annotations

import abc
import datetime as dt
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from stpm_edge.data.io import write_image
from stpm_edge.errors import StpmError
from stpm_edge.runtime.detector import Result

logger = logging.getLogger(__name__)

VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


@dataclass
class Rendered:
    """One processed frame as the sinks see it."""

    index: int  # frame number in the source
    wall_time: float  # time.time() when the frame was captured
    frame: np.ndarray  # the camera frame (BGR)
    result: Result
    overlay: np.ndarray | None  # heatmap + HUD (None when no sink asked for it)
    stream: str = ""  # multi-stream stpm-run: the stream's name (events and saved files are tagged with it)
    source: str = ""  # and its URI


class Sink(abc.ABC):
    wants_overlay: bool = False
    stop_requested: bool = False  # a sink may ask the pipeline to stop (the window's q / Esc)

    @abc.abstractmethod
    def write(self, item: Rendered) -> None: ...

    def close(self, ok: bool = True) -> None:
        """Finish; ``ok=False`` after an error (partial outputs may be discarded)."""

    def describe(self) -> str:
        return type(self).__name__


# ------------------------------------------------------------------------- decisions (pure)
def output_kind(path: Path) -> str:
    """``video`` for a known video suffix, ``images`` for a folder (anything else is refused)."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_FOURCC:
        return "video"
    if suffix == "" or str(path).endswith(("/", os.sep)):
        return "images"
    raise StpmError(f"--output {path}: use a video file ({', '.join(VIDEO_FOURCC)}) or a folder for images")


def gui_available(build_info: str) -> bool:
    """Whether OpenCV has a GUI backend (``GUI: NONE`` in opencv-python-headless), from its build info."""
    for line in build_info.splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() not in ("NONE", "NO", "")
    return False


def display_available(env: Mapping[str, str], platform: str, gui: bool) -> bool:
    """A window can be shown: OpenCV has a GUI and, on Linux/BSD, an X11 or Wayland display is set."""
    if not gui:
        return False
    if platform.startswith(("linux", "freebsd")):
        return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    return True


def can_show_window() -> bool:
    return display_available(os.environ, sys.platform, gui_available(cv2.getBuildInformation()))


# ---------------------------------------------------------------------------------- sinks
class VideoSink(Sink):
    """Overlay frames into a video file, written under a hidden temporary name beside ``path``
    and renamed onto it by ``close(ok=True)``; a crash or an error leaves no half file."""

    wants_overlay = True

    def __init__(self, path: Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.fourcc = VIDEO_FOURCC[self.path.suffix.lower()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(self.path.parent, os.W_OK):
            raise StpmError(f"--output {self.path}: folder is not writable")
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.partial{self.path.suffix}")
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, item: Rendered) -> None:
        img = item.overlay if item.overlay is not None else item.frame
        h, w = img.shape[:2]
        if self._writer is None:
            self._size = (w, h)
            self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self._size)
            if not self._writer.isOpened():
                self._writer = None
                self.tmp.unlink(missing_ok=True)
                raise StpmError(f"--output {self.path}: OpenCV cannot write {self.fourcc} video here")
        if (w, h) != self._size:  # frames of another size (image folders): fit them to the first
            img = cv2.resize(img, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(img)
        self.frames += 1

    def close(self, ok: bool = True) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if ok and self.frames:
            decoded = _count_frames(self.tmp)
            if decoded < self.frames:  # OpenCV's writer reports no write errors (a full disk, a lost mount)
                self.tmp.unlink(missing_ok=True)
                raise StpmError(f"--output {self.path}: the video could not be written completely ({decoded} of "
                                f"{self.frames} frames readable back; disk full?); nothing was left behind")
            os.replace(self.tmp, self.path)
            logger.info("wrote %s (%d frames)", self.path, self.frames)
        else:
            self.tmp.unlink(missing_ok=True)

    def describe(self) -> str:
        return str(self.path)


def _count_frames(path: Path) -> int:
    """How many frames of a written video decode again (0 for a missing or broken file)."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    cap = cv2.VideoCapture(str(path))
    try:
        n = 0
        while cap.isOpened() and cap.grab():
            n += 1
        return n
    finally:
        cap.release()


class ImageFolderSink(Sink):
    """Overlay frames as ``frame_<index>.jpg`` in a folder."""

    wants_overlay = True

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.frames = 0

    def write(self, item: Rendered) -> None:
        write_image(self.folder / f"frame_{item.index:06d}.jpg", item.overlay if item.overlay is not None else item.frame)
        self.frames += 1

    def describe(self) -> str:
        return str(self.folder)


class AnomalySink(Sink):
    """For each NG frame: ``<index>_frame.png``, ``<index>_overlay.jpg`` and ``<index>_mask.png``."""

    wants_overlay = True

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.saved = 0

    def write(self, item: Rendered) -> None:
        if not item.result.is_anomalous:
            return
        stem = self.folder / f"{item.stream + '_' if item.stream else ''}frame_{item.index:06d}"
        write_image(stem.with_name(stem.name + "_frame.png"), item.frame)
        if item.overlay is not None:
            write_image(stem.with_name(stem.name + "_overlay.jpg"), item.overlay)
        write_image(stem.with_name(stem.name + "_mask.png"), item.result.mask.astype(np.uint8) * 255)
        self.saved += 1

    def describe(self) -> str:
        return str(self.folder)


def event_record(item: Rendered, source: str) -> dict:
    """One NG event as written to the JSON-lines log."""
    ts = dt.datetime.fromtimestamp(item.wall_time, tz=dt.timezone.utc)
    r = item.result
    return {"timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "frame": item.index,
            "score": round(r.score, 4), "threshold": r.threshold, "source": item.source or source,
            **({"stream": item.stream} if item.stream else {}), "boxes": [b.to_dict() for b in r.boxes]}


class EventSink(Sink):
    """NG events as JSON lines (one object per NG frame), appended and flushed line by line so
    a reader tailing the file sees each event at once, a crash loses nothing already written
    and a restarted run continues the same log."""

    def __init__(self, path: Path, source: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.source = source
        self._created = not self.path.exists()
        self._file: IO[str] | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.events = 0

    def write(self, item: Rendered) -> None:
        if not item.result.is_anomalous or self._file is None:
            return
        try:
            self._file.write(json.dumps(event_record(item, self.source)) + "\n")
            self._file.flush()
        except OSError as e:
            raise StpmError(f"--events {self.path}: cannot write the NG event of frame {item.index} "
                            f"({e.strerror or type(e).__name__})") from None
        self.events += 1

    def close(self, ok: bool = True) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
            if not ok and self._created and self.events == 0:
                self.path.unlink(missing_ok=True)  # a failed run leaves no empty log behind

    def describe(self) -> str:
        return str(self.path)


def tile_mosaic(tiles: Sequence[np.ndarray | None], labels: Sequence[str], max_width: int = 1920) -> np.ndarray:
    """The tiles (BGR, any sizes) on a grid of ceil(sqrt(n)) columns, each scaled into a cell of
    the first tile's aspect (``max_width`` wide in all); a missing tile is a black cell; each cell
    is labelled at its bottom left."""
    n = len(tiles)
    if n == 0 or len(labels) != n:
        raise ValueError("one label per tile, at least one tile")
    if n == 1 and tiles[0] is not None and not labels[0] and tiles[0].ndim == 3 and tiles[0].shape[1] <= max_width:
        return tiles[0]  # the single-source window: the frame as it is
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    first = next((t for t in tiles if t is not None), None)
    h0, w0 = first.shape[:2] if first is not None else (9, 16)
    cw = max(16, min(w0, max_width // cols))
    ch = max(9, round(cw * h0 / w0))
    out = np.zeros((rows * ch, cols * cw, 3), np.uint8)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        y, x = (i // cols) * ch, (i % cols) * cw
        if tile is not None:
            img = tile if tile.ndim == 3 else cv2.cvtColor(tile, cv2.COLOR_GRAY2BGR)
            if img.shape[:2] != (ch, cw):
                img = cv2.resize(img, (cw, ch), interpolation=cv2.INTER_AREA)
            out[y:y + ch, x:x + cw] = img
        if label:
            cv2.putText(out, label, (x + 6, y + ch - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, label, (x + 6, y + ch - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                        cv2.LINE_AA)
    return out


class TiledWindowSink(Sink):
    """One window for several streams: the latest overlay of each stream in a grid
    (:func:`tile_mosaic`), redrawn at most ``max_fps`` times a second (composing costs CPU that
    the streams need); ``q`` or Esc asks the pipeline to stop. ``show(title, image)`` and
    ``poll() -> key`` default to OpenCV's ``imshow``/``waitKey(1)``."""

    wants_overlay = True

    def __init__(self, names: Sequence[str], title: str = "stpm-run", max_width: int = 1920, max_fps: float = 30.0,
                 show: Callable[[str, np.ndarray], None] | None = None, poll: Callable[[], int] | None = None) -> None:
        if not names:
            raise StpmError("a tiled window needs at least one stream")
        self.names, self.title, self.max_width = list(names), title, max_width
        self.interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self._latest: dict[str, np.ndarray] = {}
        self._last_show = -math.inf
        if show is None:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        self._show = show or cv2.imshow
        self._poll = poll or (lambda: cv2.waitKey(1))

    def write(self, item: Rendered) -> None:
        self._latest[item.stream] = item.overlay if item.overlay is not None else item.frame
        now = time.perf_counter()
        if now - self._last_show < self.interval:
            return
        self._last_show = now
        self._show(self.title, tile_mosaic([self._latest.get(n) for n in self.names], self.names, self.max_width))
        if self._poll() & 0xFF in (27, ord("q")):
            self.stop_requested = True

    def close(self, ok: bool = True) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:  # already closed by the user, or never opened (injected show)
            pass

    def describe(self) -> str:
        return f"window {self.title!r} ({len(self.names)} streams tiled)"


class WindowSink(TiledWindowSink):
    """The single-source window: every frame shown as it is (one tile, no label)."""

    def __init__(self, title: str = "stpm-run", show: Callable[[str, np.ndarray], None] | None = None,
                 poll: Callable[[], int] | None = None) -> None:
        super().__init__([""], title, max_width=1 << 16, max_fps=0.0, show=show, poll=poll)

    def describe(self) -> str:
        return f"window {self.title!r}"
