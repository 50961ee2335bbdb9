"""The streaming engine behind ``stpm-run``: one or several sources through one model.

``stpm-run MODEL -s cam0 -s cam1 ...`` runs it with one :class:`Stream` per source; the
single-source ``stpm-run MODEL -s cam0`` is the same engine with one stream
(:class:`stpm_edge.apps.run.pipeline.Pipeline` wraps it and keeps its summary shape).

* one **capture** thread per stream (``source.capture()`` + the model input); a live stream keeps
  only its latest frame (the older one is dropped: lag never builds), a file or folder blocks
  (every frame is processed);
* one **batching** thread gathers frames of all streams round-robin into one batch of up to
  ``batch`` frames (the model's batch), waiting at most ``batch_wait`` seconds after the first
  frame for more (a stalled or vanished stream never holds the others back), and assembles
  the next batch while the current one runs;
* one **inference** thread does nothing but run the ready batches, so the accelerator waits
  for no Python work between batches (measured: the gap between batches fell from ~3 ms, 11 %
  of a 25 ms batch, when one thread both gathered and ran them);
* **render/output** on the calling thread (the GUI needs the main thread): frame-sized map,
  mask and boxes, heatmap overlay and HUD, then the stream's sinks and the shared ones (the
  tiled window, the event log, saved anomalies), tagged with the stream's name.

All stages are joined by bounded queues (no frame piles up anywhere). A stream that ends (EOS)
or is lost for good (after its reconnects) leaves the run; the others go on. :meth:`stop` (the
CLI's SIGINT/SIGTERM handler) ends capture; frames already queued are finished and the sinks
finalised. The summary has one entry per stream and the totals, with the batch sizes seen.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from stpm_edge.apps.run.outputs import Rendered, Sink
from stpm_edge.apps.run.sources import Status
from stpm_edge.apps.run.stats import LatencyStats, is_rss_mark, rss_mb
from stpm_edge.apps.run.stream import RAW_KEEP, STAGES, Item, PipelineConfig, Stream, hand_over
from stpm_edge.errors import StpmError, first_line
from stpm_edge.runtime.overlay import HudInfo, draw_hud, render, short_label

__all__ = ["RAW_KEEP", "STAGES", "MultiPipeline", "PipelineConfig", "Stream", "hand_over"]
logger = logging.getLogger(__name__)
_END = object()

class MultiPipeline:
    """``streams`` through ``detector`` (see the module docstring). ``config.max_frames`` is per
    stream; ``on_frame`` sees every rendered frame after the sinks."""

    def __init__(self, detector: Any, streams: list[Stream], shared_sinks: list[Sink] | None = None,
                 config: PipelineConfig = PipelineConfig(), batch_wait: float = 0.005,
                 on_frame: Callable[[Rendered], None] | None = None) -> None:
        if not streams:
            raise StpmError("no sources")
        names = [s.name for s in streams]
        if len(set(names)) != len(names):
            raise StpmError(f"stream names must differ: {', '.join(names)}")
        if batch_wait < 0:
            raise StpmError("batch wait must be >= 0")
        self.detector, self.streams, self.shared = detector, streams, list(shared_sinks or [])
        self.config, self.batch_wait, self.on_frame = config.validated(), batch_wait, on_frame
        self.raw_inputs: list[np.ndarray] = []  # --compare-raw: model inputs for the bare backend afterwards
        self.rss_marks: dict[str, float] = {}
        self._frames = 0
        self._q_batches: queue.Queue = queue.Queue(maxsize=1)  # (items, model input), assembled ahead
        self._q_out: queue.Queue = queue.Queue(maxsize=2)  # lists of inferred items, one per batch
        self._ready = threading.Event()
        self._stop, self._abort = threading.Event(), threading.Event()
        self._stop_reason = ""
        self._errors: list[BaseException] = []
        self.batches: dict[int, int] = {}
        self.stats = {s: LatencyStats() for s in STAGES}
        self._label = short_label(detector.describe())
        self.summary: dict[str, Any] | None = None

    @property
    def stop_reason(self) -> str:
        """Why the whole run was stopped ('' while it runs or when every stream ended by itself)."""
        return self._stop_reason

    def stop(self, reason: str = "stopped") -> None:
        """Stop capturing (thread- and signal-safe); queued frames are still finished."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    # -- capture, one thread per stream -------------------------------------------------------
    def _put(self, st: Stream, item: object) -> None:
        if st.source.live and item is not _END:
            while True:
                try:
                    st.q.put_nowait(item)
                    break
                except queue.Full:
                    try:
                        st.q.get_nowait()
                        st.queue_drops += 1
                    except queue.Empty:
                        pass
        else:
            hand_over(st.q, item, self._abort)
        self._ready.set()

    def _tag(self, st: Stream) -> str:
        return f"stream {st.name}: " if st.name else ""

    def _capture_loop(self, st: Stream) -> None:
        captured, limit = 0, self.config.max_frames
        try:
            while not self._stop.is_set() and not self._abort.is_set():
                if limit is not None and (captured >= limit if not st.source.live else st.frames >= limit):
                    st.stop_reason = f"--max-frames {limit}"
                    break
                t0 = time.perf_counter()
                cap = st.source.capture(self.config.capture_timeout)
                t1 = time.perf_counter()
                if cap.status is Status.TIMEOUT:
                    continue
                if cap.status is Status.EOS:
                    st.stop_reason = "end of stream"
                    break
                if cap.status is Status.ERROR:
                    st.exception = StpmError(cap.message or f"{st.source.spec.uri}: source error")
                    st.stop_reason = "source error"
                    if len(self.streams) > 1:  # a single source's error is raised by the caller
                        logger.error("%s%s (the other streams go on)", self._tag(st), st.error)
                    break
                try:
                    _, x = self.detector.prepare([cap.frame])
                except StpmError as e:
                    st.corrupt += 1
                    logger.warning("%sframe %d skipped: %s", self._tag(st), cap.index, e)
                    continue
                times = {"capture": t1 - t0, "preprocess": time.perf_counter() - t1}
                if self.config.compare_raw and len(self.raw_inputs) < RAW_KEEP:
                    self.raw_inputs.append(x)
                captured += 1
                self._put(st, Item(st, cap.index, cap.frame, cap.timestamp, x, times))
        except BaseException as e:  # noqa: BLE001 - this stream fails; the others go on
            st.exception, st.stop_reason = e, "error"
            if len(self.streams) > 1:
                logger.error("%sfailed: %s", self._tag(st), st.error)
        finally:
            st.stop_reason = st.stop_reason or self._stop_reason or "stopped"
            self._put(st, _END)

    # -- inference: one batch from all streams --------------------------------------------
    def _gather(self, rr: int) -> tuple[list[Item], bool]:
        """Up to ``batch`` frames, round-robin from ``rr``; (frames, every stream ended)."""
        batch: list[Item] = []
        deadline = None
        n = len(self.streams)
        while not self._abort.is_set():
            self._ready.clear()
            took = False  # one frame per stream per pass; passes repeat while any stream had one
            for k in range(n):
                st = self.streams[(rr + k) % n]
                if len(batch) >= self.config.batch or st.ended:
                    continue
                try:
                    item = st.q.get_nowait()
                except queue.Empty:
                    continue
                took = True
                if item is _END:
                    st.ended = True
                else:
                    batch.append(item)
            if all(st.ended for st in self.streams):
                return batch, True
            now = time.perf_counter()
            if batch and deadline is None:
                deadline = now + self.batch_wait
            if len(batch) >= self.config.batch or (deadline is not None and now >= deadline):
                return batch, False
            if not took:
                self._ready.wait(0.05 if deadline is None else max(0.0, deadline - now))
        return batch, True

    def _batch_loop(self) -> None:
        try:
            rr, done = 0, False
            while not done and not self._abort.is_set():
                batch, done = self._gather(rr)
                rr += 1
                if batch:
                    x = batch[0].x if len(batch) == 1 else np.concatenate([b.x for b in batch])
                    if not hand_over(self._q_batches, (batch, x), self._abort):
                        break
        except BaseException as e:  # noqa: BLE001 - batching failed: every stream stops
            self._errors.append(e)
            self._abort.set()
        finally:
            hand_over(self._q_batches, _END, self._abort)

    def _infer_loop(self) -> None:
        try:
            while not self._abort.is_set():
                try:
                    job = self._q_batches.get(timeout=0.1)
                except queue.Empty:
                    continue
                if job is _END:
                    break
                batch, x = job
                t0 = time.perf_counter()
                amaps, scores = self.detector.infer(x)
                dt = time.perf_counter() - t0
                self.batches[len(batch)] = self.batches.get(len(batch), 0) + 1
                for i, item in enumerate(batch):
                    item.amap, item.score, item.x = amaps[i, 0], float(scores[i]), None
                    item.times["infer"] = dt
                if not hand_over(self._q_out, batch, self._abort):
                    break
        except BaseException as e:  # noqa: BLE001 - the model failed: every stream stops
            self._errors.append(e)
            self._abort.set()
        finally:
            hand_over(self._q_out, _END, self._abort)

    # -- render and output (calling thread) ------------------------------------------------
    def _render(self, item: Item, result: Any) -> np.ndarray:
        style, st = self.config.style, item.stream
        ng = result.is_anomalous  # regions are outlined on NG frames only; OK frames show the heatmap
        out = render(item.frame, result.anomaly_map, result.mask if ng else None, replace(style, side_by_side=False),
                     result.boxes if ng else None)
        if self.config.hud:
            latency = st.latency_ema.value
            draw_hud(out, HudInfo(result.score, ng, result.threshold, st.fps_ema.value,
                                  None if latency is None else 1000 * latency,
                                  f"{st.name} {self._label}" if st.name else self._label, item.index))
        return np.hstack([item.frame, out]) if style.side_by_side else out

    def _output_loop(self) -> None:
        wall_offset = time.time() - time.perf_counter()
        while True:
            if any(s.stop_requested for s in self.shared + [s for st in self.streams for s in st.sinks]):
                self.stop("window closed")
            try:
                batch = self._q_out.get(timeout=0.1)
            except queue.Empty:
                if self._abort.is_set():
                    break
                continue
            if batch is _END:
                break
            for item in batch:
                self._output(item, wall_offset)

    def _output(self, item: Item, wall_offset: float) -> None:
        st: Stream = item.stream
        limit = self.config.max_frames
        if limit is not None and st.frames >= limit:
            return  # a live stream's frames captured in flight after its limit: the count is of frames shown
        t0 = time.perf_counter()
        result = self.detector.result(item.frame.shape, item.amap, item.score)
        t1 = time.perf_counter()
        sinks = st.sinks + self.shared
        overlay = self._render(item, result) if any(s.wants_overlay for s in sinks) else None
        t2 = time.perf_counter()
        rendered = Rendered(item.index, wall_offset + item.t_capture, item.frame, result, overlay, st.name,
                            st.source.spec.uri)
        for sink in sinks:
            sink.write(rendered)
        if self.on_frame is not None:
            self.on_frame(rendered)
        t3 = time.perf_counter()
        item.times.update(postprocess=t1 - t0, render=t2 - t1, output=t3 - t2, end_to_end=t3 - item.t_capture)
        for stage, seconds in item.times.items():
            st.stats[stage].add(seconds)
            self.stats[stage].add(seconds)
        if st.last_out is not None and t3 > st.last_out:
            st.fps_ema.add(1.0 / (t3 - st.last_out))
        st.latency_ema.add(t3 - item.t_capture)
        st.first_out = t3 if st.first_out is None else st.first_out
        st.last_out = t3
        st.frames += 1
        st.ng_frames += int(result.is_anomalous)
        self._frames += 1
        if is_rss_mark(self._frames):
            self.rss_marks[str(self._frames)] = round(rss_mb(), 1)

    # -- run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Stream until every stream ends, :meth:`stop` or a model error; returns the summary.

        A lost stream is reported in its entry (and the run goes on); a failed inference raises
        after the sinks are closed (the summary so far is kept in :attr:`summary`). A stream that
        failed on an unexpected error has its outputs discarded (``close(ok=False)``)."""
        spec = self.detector.input_spec
        self.detector.infer(np.zeros(spec.shape(1), dtype=np.dtype(spec.dtype)))  # warm up
        threads = [threading.Thread(target=self._capture_loop, args=(st,), name=f"capture-{st.name or 0}", daemon=True)
                   for st in self.streams]
        threads.append(threading.Thread(target=self._batch_loop, name="batching", daemon=True))
        threads.append(threading.Thread(target=self._infer_loop, name="inference", daemon=True))
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        ok = False
        try:
            self._output_loop()
            ok = not self._errors
        finally:
            self._stop.set()
            self._abort.set()
            for t in threads:
                t.join(timeout=10.0)
            seconds = time.perf_counter() - t_start
            failed = None
            closing = [(s, ok and not _crashed(st)) for st in self.streams for s in st.sinks] + \
                      [(s, ok) for s in self.shared]
            for sink, sink_ok in closing:
                try:
                    sink.close(sink_ok)
                except Exception as e:  # noqa: BLE001 - close the others, raise the first
                    logger.debug("closing %s failed: %s", sink.describe(), first_line(e))
                    failed = failed or e
            self.summary = self._summary(seconds)
        if failed is not None:
            raise failed
        if self._errors:
            self.summary["error"] = first_line(self._errors[0])
            raise self._errors[0]
        return self.summary

    def _summary(self, seconds: float) -> dict[str, Any]:
        streams = {st.name: st.summary() for st in self.streams}
        frames = sum(s["frames"] for s in streams.values())
        d = self.detector
        return {"streams": streams, "source": [st.source.spec.uri for st in self.streams], "model": str(d.path),
                "backend": d.describe(), "threshold": d.threshold, "frames": frames,
                "ng_frames": sum(s["ng_frames"] for s in streams.values()),
                "dropped": sum(s["dropped"] for s in streams.values()),
                "corrupt": sum(s["corrupt"] for s in streams.values()),
                "reconnects": sum(s["reconnects"] for s in streams.values()), "seconds": round(seconds, 3),
                "fps": round(frames / seconds, 2) if seconds > 0 else 0.0,
                "stop_reason": self._stop_reason or "every stream ended",
                "errors": {n: s["error"] for n, s in streams.items() if s["error"]},
                "batches": dict(sorted(self.batches.items())),
                "latency_ms": {s: self.stats[s].summary() for s in STAGES},
                "rss_mb": {**self.rss_marks, "end": round(rss_mb(), 1)},
                "outputs": {type(s).__name__: s.describe() for s in self.shared}}


def _crashed(st: Stream) -> bool:
    """The stream ended on an unexpected error (not a lost source): its partial outputs are dropped."""
    return st.exception is not None and not isinstance(st.exception, StpmError)
