"""FP32 vs FP16 vs INT8 on ONNX Runtime CPU: batch-1 latency and accuracy, one run side by side.

    python benchmarks/bench_precision.py --checkpoint brick.pt --data data/brick --out bench_precision.json
    python benchmarks/bench_precision.py --timing-only resnet18 --data data/brick   # random-init ResNet18

With ``--checkpoint`` the model is a trained one and accuracy (image/pixel AUROC, PRO on the
data's test split) is reported next to latency. ``--timing-only BACKBONE`` builds a
random-init checkpoint (ResNet teachers need internet for ImageNet weights): latency only,
calibrated on the same images. Latencies are medians over interleaved rounds so that drift
on a shared machine hits every variant alike.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from bench_export import _median_ms, make_checkpoint  # noqa: E402

from stpm_edge.calibration.quantize import QuantizeOptions  # noqa: E402
from stpm_edge.calibration.reader import CalibrationFrames  # noqa: E402
from stpm_edge.data.mvtec import load_dataset  # noqa: E402
from stpm_edge.eval.compare import compare_models  # noqa: E402
from stpm_edge.models.deploy import ExportConfig  # noqa: E402
from stpm_edge.export.onnx_export import export_onnx  # noqa: E402
from stpm_edge.export.variants import write_fp16, write_int8  # noqa: E402


def variants(checkpoint: Path, data: Path, out: Path, method: str, count: int) -> tuple[dict[str, Path], int]:
    fp32 = export_onnx(checkpoint, out, ExportConfig()).onnx_path
    files = {"fp32": fp32, "fp16": write_fp16(fp32).onnx_path}
    frames = CalibrationFrames.for_model(fp32, data, count=count, seed=0)
    res = write_int8(fp32, frames, QuantizeOptions(method))
    files["int8 (tensorrt form)"] = res.files["tensorrt"].onnx_path
    files["int8 (cpu form)"] = res.files["cpu"].onnx_path
    return files, res.calib_images


def latencies(files: dict[str, Path], rounds: int, per_round: int) -> dict[str, float]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    x = np.random.default_rng(0).integers(0, 256, tuple(sessions["fp32"].get_inputs()[0].shape), dtype=np.uint8)
    for s in sessions.values():  # warm-up
        for _ in range(5):
            s.run(None, {"frames": x})
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            samples[k].append(_median_ms(lambda: s.run(None, {"frames": x}), per_round))
    return {k: float(np.median(v)) for k, v in samples.items()}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--timing-only", metavar="BACKBONE")
    ap.add_argument("--data", type=Path, required=True, help="MVTec category: train/good calibrates, test/ evaluates")
    ap.add_argument("--method", default="minmax")
    ap.add_argument("--count", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if bool(args.checkpoint) == bool(args.timing_only):
        ap.error("give exactly one of --checkpoint or --timing-only")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or make_checkpoint(args.timing_only, 256, Path(tmp) / "m.pt")
        files, calib_images = variants(ckpt, args.data, Path(tmp) / "export", args.method, args.count)
        lat = latencies(files, args.rounds, args.per_round)
        rows = {k: {"ms_b1": round(v, 2), "speedup_vs_fp32": round(lat["fp32"] / v, 2)} for k, v in lat.items()}
        if args.checkpoint:
            for k, r in zip(files, compare_models(list(files.values()), load_dataset(args.data))):
                rows[k].update({"image_auroc": round(r.image_auroc, 4), "pixel_auroc": round(r.pixel_auroc, 4),
                            "pro": round(r.pro, 4), "max_abs_map_diff": round(r.max_abs_map_diff, 4)})
    result = {"model": str(args.checkpoint or f"{args.timing_only} (random init, timing only)"),
              "data": str(args.data), "method": args.method, "calib_images": calib_images,
              "machine": _cpu(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "onnxruntime": ort.__version__, "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
