"""Live sources (cameras, streams, pipelines): a reader thread keeps only the newest frame.

The reader thread reads as fast as the device delivers and overwrites a one-frame slot; a
frame nobody captured before the next one arrived is counted in ``stats.dropped``, so lag
never builds up however slow the consumer is. When a read fails (cable pulled, stream
ended, RTSP server restarted) the thread re-opens the source with exponential backoff
(:class:`ReconnectPolicy`); ``capture()`` meanwhile returns ``TIMEOUT`` and, once the
attempts are used up, ``ERROR``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from stpm_edge.errors import StpmError, first_line
from stpm_edge.runtime.bgr import to_bgr
from stpm_edge.apps.run.sources.base import Capture, Status, VideoSource
from stpm_edge.apps.run.sources.uri import SourceSpec

logger = logging.getLogger(__name__)

MAX_BAD_RUN = 100  # consecutive malformed frames that count as a failed stream


class FrameReader(Protocol):
    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class ReconnectPolicy:
    """``enabled``: re-open a dropped source; ``attempts`` per outage (0: forever); delays
    ``base_s * 2**attempt`` capped at ``cap_s``."""

    enabled: bool = True
    attempts: int = 10
    base_s: float = 0.5
    cap_s: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * (2.0 ** max(attempt, 0)))

    def allows(self, attempt: int) -> bool:
        return self.enabled and (self.attempts <= 0 or attempt < self.attempts)


class LiveSource(VideoSource):
    """A live source over any :class:`FrameReader` that ``opener`` returns (OpenCV or a fake)."""

    live = True

    def __init__(self, spec: SourceSpec, opener: Callable[[], FrameReader],
                 reconnect: ReconnectPolicy = ReconnectPolicy(), fps: float | None = None) -> None:
        super().__init__(spec)
        self._opener = opener
        self.reconnect = reconnect
        self._fps = fps
        self._cond = threading.Condition()
        self._slot: tuple[np.ndarray, int, float] | None = None
        self._failure: str | None = None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._read_count = 0

    @property
    def fps(self) -> float | None:
        return self._fps

    def open(self) -> None:
        reader = self._opener()
        fps = getattr(reader, "fps", None)
        if self._fps is None and callable(fps):
            self._fps = fps()
        self._thread = threading.Thread(target=self._run, args=(reader,), name=f"source:{self.spec.kind}", daemon=True)
        self._thread.start()

    # -- reader thread ---------------------------------------------------------------------
    def _run(self, reader: FrameReader | None) -> None:
        bad_run = 0
        while reader is not None and not self._closing.is_set():
            try:
                ok, frame = reader.read()
            except Exception as e:  # noqa: BLE001 - a reader failing in any way is a dropped source
                logger.debug("%s: read raised %s", self.spec.uri, first_line(e))
                ok, frame = False, None
            if ok:
                try:
                    frame = to_bgr(frame)
                except StpmError:
                    self.stats.corrupt += 1
                    bad_run += 1
                    if bad_run < MAX_BAD_RUN:
                        continue
                else:
                    bad_run = 0
                    self._publish(frame)
                    continue
            t_drop = time.perf_counter()
            reader.release()
            reader = None
            bad_run = 0
            if self._closing.is_set():
                break
            reader = self._reopen()
            if reader is not None:
                outage = time.perf_counter() - t_drop
                self.stats.outage_s += outage
                self.stats.max_outage_s = max(self.stats.max_outage_s, outage)
        if reader is not None:
            reader.release()

    def _publish(self, frame: np.ndarray) -> None:
        now = time.perf_counter()
        with self._cond:
            if self._slot is not None:
                self.stats.dropped += 1
            self._slot = (frame, self._read_count, now)
            self._read_count += 1
            self._cond.notify_all()

    def _fail(self, message: str) -> None:
        with self._cond:
            self._failure = message
            self._cond.notify_all()

    def _reopen(self) -> FrameReader | None:
        if not self.reconnect.enabled:
            self._fail(f"{self.spec.uri}: the stream ended (use --reconnect to re-open it)")
            return None
        logger.warning("%s: source dropped; reconnecting", self.spec.uri)
        attempt = 0
        last = ""
        while self.reconnect.allows(attempt):
            if self._closing.wait(self.reconnect.delay(attempt)):
                return None
            try:
                reader = self._opener()
            except StpmError as e:
                last = str(e)
                attempt += 1
                self.stats.reconnect_failures += 1
                logger.info("%s: reconnect attempt %d failed", self.spec.uri, attempt)
                continue
            self.stats.reconnects += 1
            logger.warning("%s: reconnected (attempt %d)", self.spec.uri, attempt + 1)
            return reader
        self._fail(f"{self.spec.uri}: lost; {attempt} reconnect attempts failed ({last})")
        return None

    # -- consumer side ---------------------------------------------------------------------
    def capture(self, timeout: float = 1.0) -> Capture:
        with self._cond:
            self._cond.wait_for(lambda: self._slot is not None or self._failure is not None, timeout)
            if self._slot is not None:
                frame, index, ts = self._slot
                self._slot = None
                self.stats.frames += 1
                return Capture(Status.OK, frame, index, ts)
            if self._failure is not None:
                return Capture(Status.ERROR, message=self._failure)
        return Capture(Status.TIMEOUT, message=f"{self.spec.uri}: no frame within {timeout:g} s")

    def close(self) -> None:
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():  # blocked in a device read; it releases the reader when that returns
                logger.debug("%s: reader thread still blocked in read()", self.spec.uri)
            self._thread = None

    def describe(self) -> str:
        return f"{self.spec.kind} {self.spec.location} (live)"
