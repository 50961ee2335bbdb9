"""stpm-run: end-to-end throughput against the bare backend, latency, and memory over long runs.

    python benchmarks/bench_run.py                       # the demo model and video (built once, cached)
    python benchmarks/bench_run.py --model model.onnx --video line.mp4 --frames 600 --rounds 3
    python benchmarks/bench_run.py --skip-rss            # throughput and latency only (~1 min)

1. **Throughput** — one process, one Detector, ``--rounds`` interleaved rounds of
   (a) *raw*: ``detector.infer`` back to back on the model inputs of the video's frames (batch 1);
   (b) *stpm-run*: the pipeline on the video file (looped to ``--frames`` frames) with heatmap
   overlay, HUD and mp4 output. Interleaving cancels slow drifts in machine load; the ratio
   reported is the median of the per-round ratios b / a (goal >= 0.95). The process CPU time
   per frame of each is reported too: unlike wall-clock rates it is not skewed by other load.
2. **Live latency** — a paced fake camera (the video at ``--live-fps`` through the live-source
   reader thread, newest frame only): capture-to-output latency p50/p99 per stage.
3. **Memory** — ``stpm-run MODEL -s VIDEO --loop --max-frames N --headless -o out.mp4 --json`` in
   a subprocess; its summary records RSS at 1k and 10k frames (and at the end).

4. **Pipeline overhead, many streams** (``--overhead``, benchmarks/_multi.py) — a simulated
   accelerator (fixed latency, no CPU) behind multi-stream stpm-run, 1/4/8 streams at 256x256 and
   1280x720: per-stage ms per frame and fps as a share of the backend's capacity; and, with
   ``--model``, ONNX Runtime CPU with 1 vs 4 streams, batch 1 vs 4 (the model should be exported
   with ``--dynamic-batch``).

Prints a table and, with ``--json-out FILE``, writes every number with the machine description.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from stpm_edge import __version__
from stpm_edge.runtime import Detector
from stpm_edge.apps.run.outputs import VideoSink
from stpm_edge.apps.run.pipeline import Pipeline, PipelineConfig
from stpm_edge.apps.run.sources import LiveSource, ReconnectPolicy, open_source, parse_uri


def read_frames(video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    if not frames:
        raise SystemExit(f"{video}: no frames")
    return frames


def raw_fps(det: Detector, inputs: list[np.ndarray], n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        det.infer(inputs[i % len(inputs)])
    return n / (time.perf_counter() - t0)


def pipeline_run(det: Detector, video: Path, n: int, out: Path, fps: float) -> dict:
    with open_source(str(video), loop=True) as src:
        summary = Pipeline(det, src, [VideoSink(out, fps)], PipelineConfig(max_frames=n)).run()
    return summary.to_dict()


class PacedReader:
    """The video as a camera: one frame every 1/fps seconds, looping."""

    def __init__(self, frames: list[np.ndarray], fps: float) -> None:
        self.frames, self.period, self.i = frames, 1.0 / fps, 0
        self.next = time.perf_counter()

    def read(self):
        self.next += self.period
        delay = self.next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        self.i += 1
        return True, self.frames[self.i % len(self.frames)].copy()

    def release(self) -> None:
        pass


def live_run(det: Detector, frames: list[np.ndarray], fps: float, n: int, out: Path) -> dict:
    src = LiveSource(parse_uri("rtsp://bench/paced"), lambda: PacedReader(frames, fps), ReconnectPolicy(enabled=False))
    src.open()
    try:
        summary = Pipeline(det, src, [VideoSink(out, fps)], PipelineConfig(max_frames=n)).run()
    finally:
        src.close()
    return summary.to_dict()


def rss_run(model: Path, video: Path, n: int, out: Path, threads: int | None) -> dict:
    cmd = [sys.executable, "-c", "from stpm_edge.cli.app import run_main; run_main()", str(model), "-s", str(video),
           "--loop", "--max-frames", str(n), "--headless", "-o", str(out), "--json"]
    if threads:
        cmd += ["--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "stpm_edge": __version__,
            "onnxruntime": ort.__version__, "opencv": cv2.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_avg_1m": os.getloadavg()[0]}


def demo_assets() -> tuple[Path, Path]:
    from stpm_edge.apps.demo import DemoConfig, build_demo, demo_cache_dir

    assets = build_demo(demo_cache_dir(), DemoConfig())
    return assets.model, assets.video


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="Model file (default: the demo model, built once).")
    ap.add_argument("--video", type=Path, help="Video file (default: the demo inspection video).")
    ap.add_argument("--frames", type=int, default=600, help="Frames per throughput round.")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="Backend CPU threads (default: the backend's).")
    ap.add_argument("--live-fps", type=float, default=15.0)
    ap.add_argument("--live-frames", type=int, default=150)
    ap.add_argument("--rss-frames", type=int, default=10_000)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    model, video = args.model, args.video
    if model is None or video is None:
        demo_model, demo_video = demo_assets()
        model, video = model or demo_model, video or demo_video
    frames = read_frames(video)
    fps = cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FPS) or 30.0
    results: dict = {"machine": machine(), "model": str(model), "video": str(video), "frame_size": list(frames[0].shape),
                     "frames_per_round": args.frames, "rounds": []}
    with tempfile.TemporaryDirectory() as tmp, Detector(model, threads=args.threads) as det:
        results["backend"] = det.describe()
        inputs = [det.prepare([f])[1] for f in frames]
        raw_fps(det, inputs, 20)  # warm-up
        for r in range(args.rounds):
            c0 = time.process_time()
            raw = raw_fps(det, inputs, args.frames)
            c1 = time.process_time()
            run = pipeline_run(det, video, args.frames, Path(tmp) / "out.mp4", fps)
            c2 = time.process_time()
            cpu_raw, cpu_run = 1000 * (c1 - c0) / args.frames, 1000 * (c2 - c1) / args.frames
            results["rounds"].append({"raw_fps": round(raw, 2), "run_fps": run["fps"], "ratio": round(run["fps"] / raw, 4),
                                      "cpu_ms_per_frame_raw": round(cpu_raw, 2), "cpu_ms_per_frame_run": round(cpu_run, 2)})
            print(f"round {r + 1}: raw {raw:.1f} fps, stpm-run {run['fps']:.1f} fps ({100 * run['fps'] / raw:.1f}%); "
                  f"CPU per frame: raw {cpu_raw:.1f} ms, stpm-run {cpu_run:.1f} ms", flush=True)
        results["ratio_median"] = statistics.median(x["ratio"] for x in results["rounds"])
        results["file_latency_ms"] = run["latency_ms"]
        live = live_run(det, frames, args.live_fps, args.live_frames, Path(tmp) / "live.mp4")
        results["live"] = {"fps_in": args.live_fps, "frames": live["frames"], "dropped": live["dropped"],
                           "latency_ms": live["latency_ms"]}
        if not args.skip_rss:
            s = rss_run(model, video, args.rss_frames, Path(tmp) / "rss.mp4", args.threads)
            results["rss"] = {"frames": s["frames"], "fps": s["fps"], "rss_mb": s["rss_mb"]}

    print(f"\nmachine: {results['machine']['processor']}, {results['machine']['cpus']} CPUs, "
          f"load {results['machine']['load_avg_1m']:.2f}; backend {results['backend']}; frames {frames[0].shape[1]}x"
          f"{frames[0].shape[0]}")
    print(f"throughput: stpm-run / raw backend = {100 * results['ratio_median']:.1f}% (median of {args.rounds} rounds)")
    for name, lat in (("file", results["file_latency_ms"]), (f"live {args.live_fps:g} fps", results["live"]["latency_ms"])):
        stages = "  ".join(f"{k} {v['p50']:.1f}/{v['p99']:.1f}" for k, v in lat.items() if v["count"])
        print(f"latency p50/p99 ms ({name}): {stages}")
    if "rss" in results:
        print(f"RSS MiB by frame count: {results['rss']['rss_mb']} ({results['rss']['fps']:.1f} fps)")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")


def overhead_main(argv: list[str]) -> None:
    from _multi import ort_streams, overhead_report  # noqa: PLC0415

    ap = argparse.ArgumentParser(description="multi-stream pipeline overhead with a simulated accelerator")
    ap.add_argument("--overhead", action="store_true")
    ap.add_argument("--latency-ms", type=float, default=25.0)
    ap.add_argument("--frames", type=int, default=120, help="frames per stream")
    ap.add_argument("--model", type=Path, default=None, help="also: ORT CPU 1 vs 4 streams, batch 1 vs 4")
    ap.add_argument("--json-out", type=Path, default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = {"date": time.strftime("%Y-%m-%d"), "stpm_edge": __version__, "machine": platform.processor(),
               "cpus": os.cpu_count(), "latency_ms": a.latency_ms,
               "overhead": overhead_report(Path(tmp), a.latency_ms, a.frames)}
        if a.model is not None:
            out["ort"] = ort_streams(a.model, Path(tmp), a.frames)
    if a.json_out:
        a.json_out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    if "--overhead" in sys.argv[1:]:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        overhead_main(sys.argv[1:])
    else:
        main()
