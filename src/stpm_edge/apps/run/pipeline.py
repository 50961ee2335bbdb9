"""``stpm-run`` with one source: the streaming engine (:mod:`.multi`) with one stream.

Capture → inference → render/output, as described in :mod:`.multi`; this wrapper keeps the
single-source contract: a :class:`RunSummary` (the stream's figures at top level), a lost or
failed source raised after the outputs are finalised, ``--compare-raw`` (the bare backend on the
same inputs afterwards), and batching that fills from a file (up to 50 ms for the next frame)
but takes only what is ready from a live source.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stpm_edge.apps.run.multi import MultiPipeline
from stpm_edge.apps.run.outputs import Rendered, Sink
from stpm_edge.apps.run.sources import VideoSource
from stpm_edge.apps.run.stream import RAW_KEEP, STAGES, PipelineConfig, Stream, hand_over
from stpm_edge.errors import first_line
from stpm_edge.runtime.detector import Detector

__all__ = ["STAGES", "Pipeline", "PipelineConfig", "RunSummary", "hand_over", "raw_backend_fps"]
FILE_BATCH_WAIT = 0.05  # seconds the batcher waits for a file's next frame to fill a batch


@dataclass
class RunSummary:
    source: str
    model: str
    backend: str
    threshold: float
    frames: int = 0
    ng_frames: int = 0
    dropped: int = 0
    corrupt: int = 0
    reconnects: int = 0
    reconnect_failures: int = 0
    outage_s: float = 0.0  # live: seconds without a source (drop to re-open), summed
    max_outage_s: float = 0.0
    loops: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    stop_reason: str = ""
    error: str | None = None
    latency_ms: dict[str, dict] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Pipeline:
    """Stream ``source`` through ``detector`` into ``sinks`` (see the module docstring)."""

    def __init__(self, detector: Detector, source: VideoSource, sinks: list[Sink],
                 config: PipelineConfig = PipelineConfig(),
                 on_frame: Callable[[Rendered], None] | None = None) -> None:
        self.detector, self.source, self.sinks = detector, source, sinks
        self.config = config.validated()
        size = self.config.queue_size or (1 if source.live else max(2, self.config.batch))
        self._stream = Stream("", source, list(sinks), queue_size=size)
        self._engine = MultiPipeline(detector, [self._stream], [], self.config,
                                     batch_wait=0.0 if source.live else FILE_BATCH_WAIT, on_frame=on_frame)
        self.summary: RunSummary | None = None

    def stop(self, reason: str = "stopped") -> None:
        """Stop capturing (thread- and signal-safe); queued frames are still finished."""
        self._engine.stop(reason)

    def run(self) -> RunSummary:
        """Stream until the source ends, ``max_frames``, :meth:`stop` or an error; finalise the sinks.

        Raises the first error (StpmError for a lost source or a failed inference) after the
        sinks are closed; the summary so far is kept in :attr:`summary`.
        """
        d = self.detector
        summary = RunSummary(self.source.spec.uri, str(d.path), d.describe(), d.threshold)
        self.summary = summary
        try:
            self._engine.run()
        except BaseException as e:
            summary.error = first_line(e)
            raise
        finally:
            self._fill(summary)
        if self._stream.exception is not None:
            summary.error = first_line(self._stream.exception)
            raise self._stream.exception
        return summary

    def _fill(self, summary: RunSummary) -> None:
        engine, st = self._engine, self._stream
        s = st.summary()
        for key in ("frames", "ng_frames", "dropped", "corrupt", "reconnects", "reconnect_failures", "outage_s",
                    "max_outage_s", "loops", "latency_ms", "outputs"):
            setattr(summary, key, s[key])
        total = engine.summary or {}
        summary.seconds = total.get("seconds", 0.0)
        summary.fps = round(summary.frames / summary.seconds, 2) if summary.seconds > 0 else 0.0
        summary.stop_reason = engine.stop_reason or st.stop_reason or "stopped"
        summary.rss_mb = dict(total.get("rss_mb", {}))
        if self.config.compare_raw and engine.raw_inputs and summary.frames:
            summary.raw = raw_backend_fps(self.detector, engine.raw_inputs, summary.frames, summary.fps,
                                          self.config.batch)


def raw_backend_fps(detector: Detector, inputs: list[np.ndarray], frames: int, pipeline_fps: float,
                    batch: int = 1) -> dict[str, Any]:
    """The bare backend on the same model inputs, ``frames`` frames (capped at 2000), same batch size."""
    n = max(1, min(frames, 2000))
    batches = [np.concatenate([inputs[(i + j) % len(inputs)] for j in range(batch)]) if batch > 1 else inputs[i % len(inputs)]
               for i in range(min(len(inputs), RAW_KEEP))]
    done, i = 0, 0
    t0 = time.perf_counter()
    while done < n:
        detector.infer(batches[i % len(batches)])
        done += batch
        i += 1
    fps = done / (time.perf_counter() - t0)
    return {"frames": done, "fps": round(fps, 2), "pipeline_fps": pipeline_fps,
            "ratio": round(pipeline_fps / fps, 4) if fps else None}
