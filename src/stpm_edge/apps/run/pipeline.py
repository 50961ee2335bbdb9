"""The streaming pipeline behind ``stpm-run``: capture → inference → render/output.

Three stages joined by bounded queues (no frame piles up anywhere):

* **capture** thread: ``source.capture()``, then the model's input (resize / preprocess);
* **inference** thread: only the backend call (``--batch`` frames at a time when asked);
* **render/output** on the calling thread (the GUI needs the main thread): frame-sized map,
  mask and boxes, heatmap overlay and HUD, then every sink (window, video, anomalies, events).

Backpressure: a live source's queue drops its oldest frame when full (the newest frame is
always the one processed: lag never builds); a file's queue blocks (every frame is processed).
Per-stage latencies go into bounded reservoirs (:mod:`.stats`). :meth:`Pipeline.stop` (the
CLI's SIGINT/SIGTERM handler) ends capture; frames already queued are finished and the sinks
finalised.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from stpm_edge.errors import StpmError, first_line
from stpm_edge.runtime.detector import Detector, Result
from stpm_edge.apps.run.outputs import Rendered, Sink
from stpm_edge.runtime.overlay import HudInfo, OverlayStyle, draw_hud, render, short_label
from stpm_edge.apps.run.sources import Status, VideoSource
from stpm_edge.apps.run.stats import Ema, LatencyStats, is_rss_mark, rss_mb

logger = logging.getLogger(__name__)

STAGES = ("capture", "preprocess", "infer", "postprocess", "render", "output", "end_to_end")
RAW_KEEP = 16  # model inputs kept for the raw-backend comparison
_END = object()


@dataclass(frozen=True)
class PipelineConfig:
    max_frames: int | None = None  # stop after this many frames (None: until the source ends)
    batch: int = 1  # frames per backend call (files: fills from the queue; live: whatever is ready)
    queue_size: int | None = None  # per queue; default 1 for live sources, 2 for files
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
class _Item:
    index: int
    frame: np.ndarray
    t_capture: float  # perf_counter when the source read it
    x: np.ndarray | None  # model input (1 frame)
    times: dict[str, float] = field(default_factory=dict)
    amap: np.ndarray | None = None
    score: float = 0.0


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
        self.detector = detector
        self.source = source
        self.sinks = sinks
        self.config = config.validated()
        self.on_frame = on_frame
        size = self.config.queue_size or (1 if source.live else max(2, self.config.batch))
        self._q_in: queue.Queue = queue.Queue(maxsize=size)
        self._q_out: queue.Queue = queue.Queue(maxsize=max(size, self.config.batch))
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._stop_reason = ""
        self._errors: list[BaseException] = []
        self._queue_drops = 0
        self._prep_corrupt = 0
        self.stats = {s: LatencyStats() for s in STAGES}
        self._raw_inputs: list[np.ndarray] = []
        self._overlay = any(s.wants_overlay for s in sinks)
        self._backend_label = short_label(detector.describe())
        self.summary: RunSummary | None = None

    # -- control ---------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Stop capturing (thread- and signal-safe); queued frames are still finished."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def _put(self, q: queue.Queue, item: object) -> None:
        if self.source.live and item is not _END:  # drop the oldest: the newest frame wins
            while True:
                try:
                    q.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        q.get_nowait()
                        self._queue_drops += 1
                    except queue.Empty:
                        pass
        hand_over(q, item, self._abort)

    # -- stage 1: capture --------------------------------------------------------------------
    def _capture_loop(self) -> None:
        captured = 0
        try:
            while not self._stop.is_set() and not self._abort.is_set():
                if not self.source.live and self.config.max_frames is not None and captured >= self.config.max_frames:
                    self.stop(f"--max-frames {self.config.max_frames}")
                    break
                t0 = time.perf_counter()
                cap = self.source.capture(self.config.capture_timeout)
                t1 = time.perf_counter()
                if cap.status is Status.TIMEOUT:
                    continue
                if cap.status is Status.EOS:
                    self.stop("end of stream")
                    break
                if cap.status is Status.ERROR:
                    self._errors.append(StpmError(cap.message or f"{self.source.spec.uri}: source error"))
                    self.stop("source error")
                    break
                try:
                    _, x = self.detector.prepare([cap.frame])
                except StpmError as e:
                    self._prep_corrupt += 1
                    logger.warning("frame %d skipped: %s", cap.index, e)
                    continue
                t2 = time.perf_counter()
                item = _Item(cap.index, cap.frame, cap.timestamp, x, {"capture": t1 - t0, "preprocess": t2 - t1})
                if self.config.compare_raw and len(self._raw_inputs) < RAW_KEEP:
                    self._raw_inputs.append(x)
                captured += 1
                self._put(self._q_in, item)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self._errors.append(e)
            self._abort.set()
        finally:
            self._put(self._q_in, _END)

    # -- stage 2: inference ------------------------------------------------------------------
    def _infer_loop(self) -> None:
        try:
            done = False
            while not done and not self._abort.is_set():
                try:
                    first = self._q_in.get(timeout=0.1)
                except queue.Empty:
                    continue
                if first is _END:
                    break
                batch = [first]
                while len(batch) < self.config.batch:
                    try:
                        nxt = self._q_in.get_nowait() if self.source.live else self._q_in.get(timeout=0.05)
                    except queue.Empty:
                        break
                    if nxt is _END:
                        done = True
                        break
                    batch.append(nxt)
                x = batch[0].x if len(batch) == 1 else np.concatenate([b.x for b in batch])
                t0 = time.perf_counter()
                amaps, scores = self.detector.infer(x)
                dt = time.perf_counter() - t0
                for i, item in enumerate(batch):
                    item.amap, item.score, item.x = amaps[i, 0], float(scores[i]), None
                    item.times["infer"] = dt
                    self._put(self._q_out, item)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self._errors.append(e)
            self._abort.set()
        finally:
            self._put(self._q_out, _END)

    # -- stage 3: render and output (calling thread) ---------------------------------------
    def _render(self, item: _Item, result: Result, fps: float | None, latency: float | None) -> np.ndarray:
        style = self.config.style
        ng = result.is_anomalous  # regions are outlined on NG frames only; OK frames show the heatmap
        out = render(item.frame, result.anomaly_map, result.mask if ng else None, replace(style, side_by_side=False),
                     result.boxes if ng else None)
        if self.config.hud:
            draw_hud(out, HudInfo(result.score, result.is_anomalous, result.threshold, fps,
                                  None if latency is None else 1000 * latency, self._backend_label, item.index))
        return np.hstack([item.frame, out]) if style.side_by_side else out

    def _output_loop(self, summary: RunSummary) -> None:
        fps_ema, lat_ema = Ema(0.1), Ema(0.1)
        last_out: float | None = None
        wall_offset = time.time() - time.perf_counter()
        while True:
            if any(s.stop_requested for s in self.sinks):
                self.stop("window closed")
            try:
                item = self._q_out.get(timeout=0.1)
            except queue.Empty:
                if self._abort.is_set():
                    break
                continue
            if item is _END:
                break
            t0 = time.perf_counter()
            result = self.detector.result(item.frame.shape, item.amap, item.score)
            t1 = time.perf_counter()
            overlay = self._render(item, result, fps_ema.value, lat_ema.value) if self._overlay else None
            t2 = time.perf_counter()
            rendered = Rendered(item.index, wall_offset + item.t_capture, item.frame, result, overlay)
            for sink in self.sinks:
                sink.write(rendered)
            if self.on_frame is not None:
                self.on_frame(rendered)
            t3 = time.perf_counter()
            item.times.update(postprocess=t1 - t0, render=t2 - t1, output=t3 - t2, end_to_end=t3 - item.t_capture)
            for stage, seconds in item.times.items():
                self.stats[stage].add(seconds)
            if last_out is not None and t3 > last_out:
                fps_ema.add(1.0 / (t3 - last_out))
            last_out = t3
            lat_ema.add(t3 - item.t_capture)
            summary.frames += 1
            summary.ng_frames += int(result.is_anomalous)
            if is_rss_mark(summary.frames):
                summary.rss_mb[str(summary.frames)] = round(rss_mb(), 1)
            if self.config.max_frames is not None and summary.frames >= self.config.max_frames:
                self.stop(f"--max-frames {self.config.max_frames}")  # live: frames dropped in the queues
                break  # were captured but never shown; the count is of frames processed

    # -- run -----------------------------------------------------------------------------
    def _warm_up(self) -> None:
        spec = self.detector.input_spec
        x = np.zeros(spec.shape(1), dtype=np.dtype(spec.dtype))
        self.detector.infer(x)

    def run(self) -> RunSummary:
        """Stream until the source ends, ``max_frames``, :meth:`stop` or an error; finalise the sinks.

        Raises the first error (StpmError for a lost source or a failed inference) after the
        sinks are closed; the summary so far is kept in :attr:`summary`.
        """
        d = self.detector
        summary = RunSummary(self.source.spec.uri, str(d.path), d.describe(), d.threshold)
        self.summary = summary
        self._warm_up()
        threads = [threading.Thread(target=self._capture_loop, name="capture", daemon=True),
                   threading.Thread(target=self._infer_loop, name="inference", daemon=True)]
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        ok = False
        try:
            self._output_loop(summary)
            ok = not any(not isinstance(e, StpmError) for e in self._errors)
        except BaseException as e:
            self._errors.append(e)
            raise
        finally:
            self._stop.set()
            self._abort.set()
            for t in threads:
                t.join(timeout=10.0)
            summary.seconds = round(time.perf_counter() - t_start, 3)
            failed = self._close_sinks(ok)
            self._finish_summary(summary)
        if failed is not None:
            raise failed
        if self._errors:
            summary.error = first_line(self._errors[0])
            raise self._errors[0]
        return summary

    def _close_sinks(self, ok: bool) -> BaseException | None:
        failed = None
        for sink in self.sinks:
            try:
                sink.close(ok)
            except Exception as e:  # noqa: BLE001 - close the others, report the first
                logger.debug("closing %s failed: %s", sink.describe(), first_line(e))
                failed = failed or e
        return failed

    def _finish_summary(self, summary: RunSummary) -> None:
        st = self.source.stats
        summary.dropped = st.dropped + self._queue_drops
        summary.corrupt = st.corrupt + self._prep_corrupt
        summary.reconnects, summary.loops = st.reconnects, st.loops
        summary.reconnect_failures = st.reconnect_failures
        summary.outage_s, summary.max_outage_s = round(st.outage_s, 3), round(st.max_outage_s, 3)
        summary.fps = round(summary.frames / summary.seconds, 2) if summary.seconds > 0 else 0.0
        summary.stop_reason = self._stop_reason or "stopped"
        summary.latency_ms = {s: self.stats[s].summary() for s in STAGES}
        summary.rss_mb["end"] = round(rss_mb(), 1)
        summary.outputs = {type(s).__name__: s.describe() for s in self.sinks}
        if self.config.compare_raw and self._raw_inputs and summary.frames:
            summary.raw = raw_backend_fps(self.detector, self._raw_inputs, summary.frames, summary.fps,
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
