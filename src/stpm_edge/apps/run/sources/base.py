"""The source interface: ``capture(timeout)`` returns a status and a frame, never raises.

Modelled on jetson-utils' ``videoSource::Capture``: ``OK`` with a frame, ``TIMEOUT`` when no
new frame arrived in time (live sources), ``EOS`` at the end of a file or folder (not with
``loop``), ``ERROR`` when a live source is lost for good (message in :attr:`Capture.message`).
"""
from __future__ import annotations

import abc
import enum
import time
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from stpm_edge.apps.run.sources.uri import SourceSpec


class Status(enum.Enum):
    OK = "ok"
    TIMEOUT = "timeout"
    EOS = "eos"
    ERROR = "error"


@dataclass
class Capture:
    """One ``capture()`` outcome: with ``status`` OK, a uint8 HxWx3 BGR ``frame``."""

    status: Status
    frame: np.ndarray | None = None
    index: int = -1  # frame number within the source (0-based, across loops and reconnects)
    timestamp: float = 0.0  # time.perf_counter() when the frame was read
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass
class SourceStats:
    """Counters a source keeps (read them at any time; each is written by one thread)."""

    frames: int = 0  # delivered by capture()
    dropped: int = 0  # live: overwritten before anyone captured them
    corrupt: int = 0  # unreadable or malformed frames/images, skipped
    reconnects: int = 0  # successful re-opens after a live source dropped
    reconnect_failures: int = 0  # re-open attempts that failed (each followed by a longer backoff)
    outage_s: float = 0.0  # live: seconds from each drop to its successful re-open, summed
    max_outage_s: float = 0.0  # live: the longest of them
    loops: int = 0  # times a file or folder was restarted (--loop)


class VideoSource(abc.ABC):
    """A camera, stream, video file or image folder. Use as a context manager."""

    spec: SourceSpec
    live: bool = False

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.stats = SourceStats()
        self._next_index = 0

    @abc.abstractmethod
    def open(self) -> None:
        """Open the device/file (one-line StpmError when it cannot be opened)."""

    @abc.abstractmethod
    def capture(self, timeout: float = 1.0) -> Capture:
        """The next frame (files) or the newest one (live); see the module docstring."""

    def close(self) -> None:
        """Release the device/file (idempotent)."""

    @property
    def fps(self) -> float | None:
        """The nominal frame rate, when the source knows it."""
        return None

    def describe(self) -> str:
        return f"{self.spec.kind} {self.spec.location}"

    def _ok(self, frame: np.ndarray, timestamp: float | None = None) -> Capture:
        index = self._next_index
        self._next_index += 1
        self.stats.frames += 1
        return Capture(Status.OK, frame, index, time.perf_counter() if timestamp is None else timestamp)

    def __enter__(self) -> VideoSource:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
