"""The pieces of a run that the stages share: the configuration, the stage names, one
source with its sinks and counters (:class:`Stream`), the frame handed between stages
(:class:`Item`) and the blocking hand-over between bounded queues."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from stpm_edge.apps.run.outputs import Sink
from stpm_edge.apps.run.sources import VideoSource
from stpm_edge.apps.run.stats import Ema, LatencyStats
from stpm_edge.errors import StpmError, first_line
from stpm_edge.runtime.overlay import OverlayStyle

STAGES = ("capture", "preprocess", "infer", "postprocess", "render", "output", "end_to_end")
RAW_KEEP = 16  # model inputs kept for the raw-backend comparison (--compare-raw)


@dataclass(frozen=True)
class PipelineConfig:
    max_frames: int | None = None  # per stream: stop after this many frames (None: until the source ends)
    batch: int = 1  # frames per backend call (files: fills from the queue; live: whatever is ready)
    queue_size: int | None = None  # per stream; default 1 for live sources, 2 for files
    capture_timeout: float = 1.0
    style: OverlayStyle = OverlayStyle()
    hud: bool = True
    compare_raw: bool = False  # afterwards, time the bare backend on the same frames

    def validated(self) -> PipelineConfig:
        if self.max_frames is not None and self.max_frames < 1:
            raise StpmError("--max-frames must be at least 1")
        if self.batch < 1:
            raise StpmError("--batch must be at least 1")
        if self.queue_size is not None and self.queue_size < 1:
            raise StpmError("queue size must be at least 1")
        return replace(self, style=self.style.validated())


def hand_over(q: queue.Queue, item: object, abort: threading.Event) -> bool:
    """Put ``item`` on ``q`` between pipeline stages, waiting while it is full; False when
    ``abort`` is set before it fits (the consumer then stops on the abort, not on the item)."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if abort.is_set():
                return False


@dataclass
class Stream:
    """One source of a run, with its own sinks and counters (``name`` tags its events and saved
    files; '' for a single-source run)."""

    name: str
    source: VideoSource
    sinks: list[Sink] = field(default_factory=list)
    queue_size: int | None = None  # frames waiting for the batcher (default 1 live, 2 for files)
    frames: int = 0
    ng_frames: int = 0
    queue_drops: int = 0
    corrupt: int = 0
    ended: bool = False
    exception: BaseException | None = None  # what ended the stream, when it failed
    stop_reason: str = ""
    first_out: float | None = None
    last_out: float | None = None

    def __post_init__(self) -> None:
        if self.queue_size is not None and self.queue_size < 1:
            raise StpmError("queue size must be at least 1")
        self.q: queue.Queue = queue.Queue(maxsize=self.queue_size or (1 if self.source.live else 2))
        self.stats = {s: LatencyStats() for s in STAGES}
        self.fps_ema, self.latency_ema = Ema(0.1), Ema(0.1)  # for the HUD

    @property
    def error(self) -> str | None:
        """Why the stream failed, in one line (None while it has not)."""
        return None if self.exception is None else first_line(self.exception)

    def summary(self) -> dict[str, Any]:
        st = self.source.stats
        span = (self.last_out - self.first_out) if self.first_out is not None and self.last_out is not None else 0.0
        return {"source": self.source.spec.uri, "frames": self.frames, "ng_frames": self.ng_frames,
                "dropped": st.dropped + self.queue_drops, "corrupt": st.corrupt + self.corrupt,
                "reconnects": st.reconnects, "reconnect_failures": st.reconnect_failures,
                "outage_s": round(st.outage_s, 3), "max_outage_s": round(st.max_outage_s, 3), "loops": st.loops,
                "fps": round((self.frames - 1) / span, 2) if self.frames > 1 and span > 0 else 0.0,
                "stop_reason": self.stop_reason, "error": self.error,
                "latency_ms": {s: self.stats[s].summary() for s in STAGES},
                "outputs": {type(s).__name__: s.describe() for s in self.sinks}}


@dataclass
class Item:
    stream: Stream
    index: int
    frame: np.ndarray
    t_capture: float
    x: np.ndarray | None
    times: dict[str, float]
    amap: np.ndarray | None = None
    score: float = 0.0
