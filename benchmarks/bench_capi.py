"""The C ABI's cost: per-call overhead of ``stpm_detector_infer`` over the Python API, and C-side
vs Python-side throughput, in one run.

    python benchmarks/bench_capi.py                      # efficientnet_lite0 at 256x256, 5 rounds
    python benchmarks/bench_capi.py --backbone resnet18 --rounds 3 --iters 100

1. Builds ``libstpm_edge.so`` (``stpm capi build``) and compiles ``benchmarks/c/bench_capi.c``.
2. Exports a 256x256 model (random student; the ImageNet teacher for efficientnet_lite0; timing
   only) and writes one 256x256 BGR frame cut from a real photograph (scikit-image brick).
3. ``--rounds`` interleaved rounds of (a) the C program: ``--iters`` calls of
   ``stpm_detector_infer`` (BGR8, map copied out) after ``--warmup``, timing each call and
   reading the runtime's own time for it (``stpm_result.latency_ms``); (b) the Python API:
   ``Detector(model)(frame)`` the same number of times after the same warm-up. Each side is a
   fresh process (neither carries the other's imports), with the same ORT thread count.
4. Reports, as medians over all timed calls: C call wall time, the runtime's time inside it, the
   boundary overhead (wall minus runtime, per call; goal <= 0.3 ms), the Python API's call time,
   and frames/s of both sides with their ratio (also as the median of per-round ratios).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_export import make_checkpoint  # noqa: E402

from stpm_edge import __version__  # noqa: E402
from stpm_edge.capi.build import build_library  # noqa: E402
from stpm_edge.models.deploy import ExportConfig  # noqa: E402
from stpm_edge.export.onnx_export import export_onnx  # noqa: E402


def brick_frame(size: int) -> np.ndarray:
    from skimage import data  # noqa: PLC0415

    grey = data.brick()[:size, :size]
    return cv2.cvtColor(np.ascontiguousarray(grey), cv2.COLOR_GRAY2BGR)


PYTHON_SIDE = """
import sys, time, cv2
from stpm_edge.runtime import Detector
model, frame_path, warmup, iters, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
frame = cv2.imread(frame_path)
with Detector(model, threads=threads) as det:
    for _ in range(warmup):
        det(frame)
    for _ in range(iters):
        s = time.perf_counter()
        det(frame)
        print(f"{1e3 * (time.perf_counter() - s):.4f}")
"""


def compile_bench(prefix: Path, out: Path) -> Path:
    pc = subprocess.run(["pkg-config", "--cflags", "--libs", "stpm_edge"], capture_output=True, text=True, check=True,
                        env={**os.environ, "PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig")}).stdout.split()
    subprocess.run(["cc", "-std=c99", "-D_POSIX_C_SOURCE=200809L", "-O2", "-o", str(out), str(HERE / "c" / "bench_capi.c"),
                    *pc], check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-capi-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        build_library(tmp / "capi")
        exe = compile_bench(tmp / "capi", tmp / "bench_capi")
        build_s = time.perf_counter() - t0
        ckpt = make_checkpoint(args.backbone, args.size, tmp / "m.pt")
        model = export_onnx(ckpt, tmp / "export", ExportConfig()).onnx_path
        frame = brick_frame(args.size)
        cv2.imwrite(str(tmp / "frame.ppm"), frame)

        c_wall, c_runtime, py_wall = [], [], []
        c_fps, py_fps = [], []
        common = [str(model), str(tmp / "frame.ppm"), str(args.warmup), str(args.iters), str(args.threads)]
        for r in range(args.rounds):
            out = subprocess.run([str(exe), *common], capture_output=True, text=True, check=True,
                                 env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}).stdout  # a line PC's C program
            pairs = [tuple(map(float, ln.split())) for ln in out.splitlines()]
            c_wall += [w for w, _ in pairs]
            c_runtime += [rt for _, rt in pairs]
            c_fps.append(1e3 * len(pairs) / sum(w for w, _ in pairs))
            out = subprocess.run([sys.executable, "-c", PYTHON_SIDE, *common], capture_output=True, text=True,
                                 check=True).stdout
            times = [float(v) for v in out.split()]
            py_wall += times
            py_fps.append(1e3 * len(times) / sum(times))
            print(f"round {r + 1}/{args.rounds}: C {statistics.median(c_wall[-len(pairs):]):.2f} ms, "
                  f"Python {statistics.median(times):.2f} ms", file=sys.stderr)
        overhead = [w - rt for w, rt in zip(c_wall, c_runtime)]
        res = {
            "backbone": args.backbone, "size": args.size, "rounds": args.rounds, "iters": args.iters,
            "threads": args.threads, "build_and_compile_s": round(build_s, 1),
            "c_call_p50_ms": statistics.median(c_wall), "c_runtime_p50_ms": statistics.median(c_runtime),
            "boundary_overhead_p50_ms": statistics.median(overhead),
            "boundary_overhead_p90_ms": float(np.percentile(overhead, 90)),
            "python_call_p50_ms": statistics.median(py_wall),
            "c_fps": statistics.median(c_fps), "python_fps": statistics.median(py_fps),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "versions": f"stpm-edge {__version__}, Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        res["c_vs_python_throughput"] = res["c_fps"] / res["python_fps"]
        # Rounds are interleaved: the per-round ratio cancels slow drifts in machine load.
        res["c_vs_python_throughput_per_round_median"] = statistics.median(c / p for c, p in zip(c_fps, py_fps))
    print(json.dumps(res, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
