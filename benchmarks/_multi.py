"""Multi-stream parts of benchmarks/bench_run.py: a simulated accelerator and the overhead report.

The simulated accelerator is a :class:`Backend` that sleeps a fixed ``latency`` per call (any
batch up to ``max_batch``) and uses no CPU, like a GPU engine seen from the host: its capacity
is ``max_batch / latency`` frames/s. The report runs 1/4/8 streams (video files, decoded as
stpm-run decodes them; batch = number of streams) with overlay, HUD and an mp4 per stream, and
gives per-stage wall ms per frame (capture = decode, preprocess, postprocess, render, encode =
the output stage), process CPU ms per frame, and the total fps as a share of the capacity.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from stpm_edge.apps.run.multi import MultiPipeline, Stream
from stpm_edge.apps.run.outputs import VideoSink
from stpm_edge.apps.run.pipeline import PipelineConfig
from stpm_edge.apps.run.sources import open_source
from stpm_edge.artifact import InputSpec, LowPrecision, ModelMetadata
from stpm_edge.runtime.backends.base import Backend
from stpm_edge.runtime.detector import Detector, check_threshold


class SimulatedAccelerator(Backend):
    name = "simulated"

    def __init__(self, latency_s: float, size: int = 256, max_batch: int = 8) -> None:
        self.latency, self.max_batch = latency_s, max_batch
        self.input_spec = InputSpec("frames", "uint8", "NHWC", "BGR", None, size, size)
        self.metadata = ModelMetadata("sim", self.input_spec, (size, size), {}, {"anomaly_map": {"shape": [
            "N", 1, size // 4, size // 4]}}, {}, LowPrecision((), ()))
        self._map = np.zeros((max_batch, 1, size // 4, size // 4), np.float32)

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = int(frames.shape[0])
        time.sleep(self.latency * -(-n // self.max_batch))  # no CPU: the host waits, as for a GPU
        return self._map[:n], np.zeros(n, np.float32)

    def describe(self) -> str:
        return f"simulated accelerator ({1000 * self.latency:g} ms per batch of <= {self.max_batch})"


def sim_detector(backend: Backend) -> Detector:
    det = Detector.__new__(Detector)
    det.path, det.backend, det.metadata, det.input_spec = "simulated", backend, backend.metadata, backend.input_spec
    det.threshold, det.precision = check_threshold(0.5), "fp32"
    return det


def make_video(path: Path, w: int, h: int, n: int) -> Path:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (w, h))
    for i in range(n):
        writer.write(np.roll(base, 3 * i, axis=1))
    writer.release()
    return path


def run_streams(det: Detector, video: Path, n_streams: int, batch: int, out_dir: Path | None) -> dict:
    streams = [Stream(f"s{i}", open_source(str(video))) for i in range(n_streams)]
    for st in streams:
        st.source.open()
        if out_dir is not None:
            st.sinks.append(VideoSink(out_dir / f"{st.name}.mp4", 30.0))
    c0 = time.process_time()
    s = MultiPipeline(det, streams, [], PipelineConfig(batch=batch)).run()
    s["cpu_ms_per_frame"] = round(1000 * (time.process_time() - c0) / max(1, s["frames"]), 2)
    for st in streams:
        st.source.close()
    return s


STAGE_COLS = ("capture", "preprocess", "infer", "postprocess", "render", "output")


def overhead_report(tmp: Path, latency_ms: float, frames: int, streams=(1, 4, 8),
                    sizes=((256, 256), (1280, 720))) -> list[dict]:
    rows = []
    for w, h in sizes:
        video = make_video(tmp / f"v{w}x{h}.avi", w, h, frames)
        for n in streams:
            backend = SimulatedAccelerator(latency_ms / 1000.0, 256, max_batch=n)
            s = run_streams(sim_detector(backend), video, n, n, tmp)
            capacity = n / backend.latency
            lat = s["latency_ms"]
            row = {"frame": f"{w}x{h}", "streams": n, "batch": n, "fps": s["fps"], "capacity_fps": round(capacity, 1),
                   "share": round(s["fps"] / capacity, 4), "cpu_ms_per_frame": s["cpu_ms_per_frame"],
                   "batches": s["batches"], **{f"{k}_ms": lat[k]["mean"] for k in STAGE_COLS}}
            rows.append(row)
            print(f"{w}x{h} {n} stream(s): {s['fps']:.1f} fps = {100 * row['share']:.1f}% of {capacity:.0f}; CPU "
                  f"{row['cpu_ms_per_frame']:.2f} ms/frame; " + " ".join(f"{k} {lat[k]['mean']:.2f}" for k in STAGE_COLS),
                  flush=True)
    return rows


def ort_streams(model: Path, tmp: Path, frames: int) -> list[dict]:
    """ONNX Runtime CPU, 1 vs 4 streams, batch 1 vs 4, headless without outputs."""
    det = Detector(model, backend="cpu")
    spec = det.input_spec
    video = make_video(tmp / "ort.avi", spec.width, spec.height, frames)
    rows = []
    for n, b in ((1, 1), (4, 1), (4, 4)):
        s = run_streams(det, video, n, b, None)
        rows.append({"streams": n, "batch": b, "fps": s["fps"], "cpu_ms_per_frame": s["cpu_ms_per_frame"],
                     "infer_ms": s["latency_ms"]["infer"]["mean"], "batches": s["batches"]})
        print(f"ORT CPU {n} stream(s), batch {b}: {s['fps']:.1f} fps total, batches {s['batches']}", flush=True)
    det.close()
    return rows
