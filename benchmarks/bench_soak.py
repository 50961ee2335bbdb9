"""stpm-run soak: 100k frames from a looping video file, memory and file descriptors kept flat.

    python benchmarks/bench_soak.py                          # 100000 frames, a tiny 64 px model built here
    python benchmarks/bench_soak.py --frames 20000 --every 2000
    python benchmarks/bench_soak.py --model model.onnx --video line.mp4 --json-out soak.json

Runs the pipeline stpm-run runs (the same source, Detector, Pipeline and sinks, in this process):
``stpm-run MODEL -s VIDEO --loop --max-frames N --headless -o out.mp4 --events ev.jsonl``. Every
``--every`` frames it records the resident memory (``VmRSS`` of /proc/self/status), the open file
descriptors (/proc/self/fd) and the threads (/proc/self/task). It prints a table and a JSON
summary: RSS at 10k frames and at the end, the drift (end vs 10k, in %), fd and thread counts,
fps. A leak shows as RSS or fds climbing row after row; a flat run has drift within a few %.

Without ``--model``, a child process builds a tiny model (sample data, 64 px, one epoch) and the
video, so PyTorch never enters this process (stpm-run with an .onnx model does not load it either).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIDEO_FRAMES = 50
FPS = 25


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def prepare(root: Path, image_size: int) -> None:
    """A tiny model and a looping inspection video (good frames and a few defect frames)."""
    import cv2  # noqa: PLC0415

    from stpm_edge.data.io import list_images, read_image_bgr  # noqa: PLC0415
    from stpm_edge.data.sample import make_sample_dataset  # noqa: PLC0415
    from stpm_edge.export.onnx_export import export_onnx  # noqa: PLC0415
    from stpm_edge.models.deploy import ExportConfig  # noqa: PLC0415
    from stpm_edge.train.trainer import TrainConfig, train  # noqa: PLC0415

    data = root / "brick"
    make_sample_dataset(data, "brick", seed=0, image_size=128, n_train=16, n_test_good=6, n_defect_per_kind=2)
    pt = root / "model.pt"
    train(data, pt, TrainConfig(image_size=image_size, epochs=1, batch_size=8, time_budget_min=0, patience=10, seed=0))
    onnx = export_onnx(pt, root / "export", ExportConfig()).onnx_path
    os.replace(onnx, root / "model.onnx")
    images = [read_image_bgr(p) for kind in sorted((data / "test").iterdir()) for p in list_images(kind)]
    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(root / "line.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (w, h))
    for i in range(VIDEO_FRAMES):
        writer.write(images[i % len(images)])
    writer.release()
    from stpm_edge.runtime.detector import Detector  # noqa: PLC0415

    cap = cv2.VideoCapture(str(root / "line.mp4"))
    with Detector(root / "model.onnx") as det:
        scores = sorted(det(cap.read()[1]).score for _ in range(VIDEO_FRAMES))
    cap.release()
    # about a fifth of the frames NG: the event log, contours and boxes are exercised too
    (root / "threshold.txt").write_text(f"{(scores[-VIDEO_FRAMES // 5 - 1] + scores[-VIDEO_FRAMES // 5]) / 2:.6f}\n")


def machine() -> dict:
    from stpm_edge.bench.machine import library_versions, load_average, parse_cpuinfo  # noqa: PLC0415

    try:
        cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = {"model": platform.processor(), "features": []}
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu["model"], "features": cpu["features"],
            "cpus": os.cpu_count(), "load_avg": load_average(), "python": platform.python_version(),
            "libraries": library_versions()}


def soak(model: Path, video: Path, frames: int, every: int, out_dir: Path, threads_n: int | None,
         video_out: bool, threshold: float | None, container: str = ".mp4") -> dict:
    import cv2  # noqa: PLC0415

    from stpm_edge.apps.run.outputs import EventSink, VideoSink  # noqa: PLC0415
    from stpm_edge.apps.run.pipeline import Pipeline, PipelineConfig  # noqa: PLC0415
    from stpm_edge.apps.run.sources import make_source  # noqa: PLC0415
    from stpm_edge.runtime.detector import Detector  # noqa: PLC0415

    samples: list[dict] = []
    t0 = time.perf_counter()
    count = 0

    def sample(n: int) -> None:
        now = time.perf_counter()
        prev = samples[-1] if samples else {"frames": 0, "s": 0.0}
        dt = (now - t0) - prev["s"]
        samples.append({"frames": n, "s": round(now - t0, 2), "fps": round((n - prev["frames"]) / dt, 1) if dt > 0 else 0.0,
                        "rss_mib": round(rss_mib(), 1), "fds": open_fds(), "threads": threads()})
        row = samples[-1]
        print(f"{row['frames']:>9} {row['s']:>9.1f} {row['fps']:>8.1f} {row['rss_mib']:>9.1f} {row['fds']:>5} "
              f"{row['threads']:>7}", flush=True)

    def on_frame(_r: object) -> None:
        nonlocal count
        count += 1
        if count % every == 0:
            sample(count)

    before = {"rss_mib": round(rss_mib(), 1), "fds": open_fds(), "threads": threads()}
    detector = Detector(model, threads=threads_n, threshold=threshold)
    src = make_source(str(video), loop=True)
    sinks: list = []
    try:
        src.open()
        if video_out:
            sinks.append(VideoSink(out_dir / f"soak{container}", src.fps or FPS))
        sinks.append(EventSink(out_dir / "events.jsonl", str(video)))
        print(f"{'frames':>9} {'seconds':>9} {'fps':>8} {'RSS MiB':>9} {'fds':>5} {'threads':>7}")
        t0 = time.perf_counter()
        summary = Pipeline(detector, src, sinks, PipelineConfig(max_frames=frames, hud=True),
                           on_frame=on_frame).run()
    finally:
        src.close()
        detector.close()
    after = {"rss_mib": round(rss_mib(), 1), "fds": open_fds(), "threads": threads()}
    by_frames = {s["frames"]: s for s in samples}
    ref = by_frames.get(10_000) or (samples[min(1, len(samples) - 1)] if samples else None)
    last = samples[-1] if samples else None
    out_frames = 0
    if video_out and (out_dir / f"soak{container}").is_file():
        cap = cv2.VideoCapture(str(out_dir / f"soak{container}"))
        out_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
    drift = round(100.0 * (last["rss_mib"] - ref["rss_mib"]) / ref["rss_mib"], 2) if ref and last else None
    fds_run = [s["fds"] for s in samples]
    return {"frames": summary.frames, "seconds": summary.seconds, "fps": summary.fps, "loops": summary.loops,
            "ng_frames": summary.ng_frames, "backend": summary.backend, "every": every,
            "rss_ref_frames": ref["frames"] if ref else None, "rss_mib_ref": ref["rss_mib"] if ref else None,
            "rss_mib_end": last["rss_mib"] if last else None, "rss_drift_pct": drift,
            "rss_mib_max": max(s["rss_mib"] for s in samples) if samples else None,
            "fds_ref": ref["fds"] if ref else None, "fds_end": last["fds"] if last else None,
            "fds_min": min(fds_run, default=None), "fds_max": max(fds_run, default=None),
            "threads_end": last["threads"] if last else None, "before": before, "after_close": after,
            "pipeline_rss_mb": summary.rss_mb, "latency_ms_end_to_end": summary.latency_ms["end_to_end"],
            "video_frames_written": out_frames, "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="An exported .onnx model (default: a tiny 64 px one built here).")
    ap.add_argument("--video", type=Path, help="The video to loop (default: 50 sample frames, 128x128).")
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=5_000, help="Sample RSS/fds every this many frames.")
    ap.add_argument("--image-size", type=int, default=64, help="Size of the model built without --model.")
    ap.add_argument("--threads", type=int, default=1, help="Backend CPU threads (0: the backend's choice).")
    ap.add_argument("--threshold", type=float, help="NG threshold (default: the model's; for the model built "
                    "here, one that makes about a fifth of the frames NG).")
    ap.add_argument("--no-video", action="store_true", help="No video output (events only).")
    ap.add_argument("--container", default=".mp4", choices=[".mp4", ".mkv", ".avi"],
                    help="Video container of the output: MP4 keeps a per-frame index in memory until the file is "
                         "closed (~70 B/frame), Matroska one entry per cluster.")
    ap.add_argument("--keep", type=Path, help="Keep the outputs (and the built model) in this folder.")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.prepare is not None:
        prepare(a.prepare, a.image_size)
        return
    with tempfile.TemporaryDirectory(prefix="stpm-soak-") as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, video = a.model, a.video
        if model is None or video is None:
            t = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--prepare", str(work), "--image-size", str(a.image_size)],
                           check=True)
            print(f"built a {a.image_size} px model and a {VIDEO_FRAMES}-frame video in {time.perf_counter() - t:.0f} s",
                  flush=True)
            if a.model is None and a.threshold is None:
                a.threshold = float((work / "threshold.txt").read_text())
            model, video = model or work / "model.onnx", video or work / "line.mp4"
        result = {"machine": machine(), "model": str(model), "video": str(video),
                  "threshold": a.threshold,
                  **soak(model, video, a.frames, a.every, work, a.threads or None, not a.no_video, a.threshold,
                         a.container), "container": None if a.no_video else a.container}
    print(f"\n{result['frames']} frames in {result['seconds']:.0f} s ({result['fps']:.1f} fps, {result['loops']} loops, "
          f"{result['backend']}); RSS {result['rss_mib_ref']} MiB at {result['rss_ref_frames']} frames -> "
          f"{result['rss_mib_end']} MiB at the end ({result['rss_drift_pct']:+.2f} %); fds {result['fds_ref']} -> "
          f"{result['fds_end']} (min {result['fds_min']}, max {result['fds_max']}); threads {result['threads_end']}; "
          f"video {result['video_frames_written']} frames; {result['machine']['cpu']}, {result['machine']['date']}")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if a.json_out is not None:
        a.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
