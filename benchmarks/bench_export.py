"""ONNX Runtime CPU latency of the exported graph (stacked and parallel fusion) vs PyTorch
eager of the same checkpoint, in one process, batch 1, uint8 frames at the model size.

PyTorch eager runs the very module that is exported (preprocessing → teacher and student →
head → normalisation), in its natural two-branch form, with PyTorch's default memory format
and again with channels_last. Interleaved rounds, median of per-round medians.

    python benchmarks/bench_export.py --backbones resnet18 efficientnet_lite0 --size 256
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from stpm_edge.models.deploy import ExportConfig, ExportGraph
from stpm_edge.export.onnx_export import export_onnx
from stpm_edge.models.backbones import get_spec
from stpm_edge.data.preprocess import PreprocessSpec
from stpm_edge.models.checkpoint import ModelMeta, Normalization, load_checkpoint, save_checkpoint
from stpm_edge.models.stpm.model import STPM, STPMConfig


def make_checkpoint(backbone: str, size: int, path: Path) -> Path:
    """Random student; ImageNet teacher for efficientnet_lite0 (offline), random for ResNets (timing only)."""
    config = STPMConfig(backbone, (), 4.0).resolved()
    image_size = (size, size)
    model = STPM.build(config, image_size, pretrained=backbone == "efficientnet_lite0", seed=0)
    spec = get_spec(backbone)
    save_checkpoint(path, model, ModelMeta("stpm", config, PreprocessSpec(image_size, spec.mean, spec.std), normalization=Normalization(0.5, 0.2, 0.0)))
    return path


def _median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def bench(backbone: str, size: int, rounds: int, per_round: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(backbone, size, Path(tmp) / "m.pt")
        sessions = {}
        for fusion in ("stacked", "parallel"):
            res = export_onnx(ckpt, Path(tmp) / fusion, ExportConfig(method_options={"fusion": fusion}))
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sessions[fusion] = ort.InferenceSession(str(res.onnx_path), opts, providers=["CPUExecutionProvider"])
        model, meta = load_checkpoint(ckpt)
        eager = ExportGraph(model, meta, ExportConfig(method_options={"fusion": "parallel"}).validated(meta)).eval()
        eager_cl = ExportGraph(*load_checkpoint(ckpt), ExportConfig(method_options={"fusion": "parallel"}).validated(meta)).eval()
        eager_cl = eager_cl.to(memory_format=torch.channels_last)
    frames = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    tf = torch.from_numpy(frames)
    runs = {
        "ort_stacked": lambda: sessions["stacked"].run(None, {"frames": frames}),
        "ort_parallel": lambda: sessions["parallel"].run(None, {"frames": frames}),
        "torch_eager": lambda: eager(tf),
        "torch_eager_channels_last": lambda: eager_cl(tf),
    }
    samples: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            for _ in range(3):
                fn()
        for _ in range(rounds):
            for k, fn in runs.items():
                samples[k].append(_median_ms(fn, per_round))
    ms = {k: statistics.median(v) for k, v in samples.items()}
    return {"backbone": backbone, "size": size, "ms": ms,
            "speedup_vs_eager": {k: ms["torch_eager"] / v for k, v in ms.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "efficientnet_lite0"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    env = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": str(torch.__version__),
           "onnxruntime": ort.__version__, "torch_threads": torch.get_num_threads(), "cpu": platform.processor()}
    rows = [bench(b, args.size, args.rounds, args.per_round) for b in args.backbones]
    print(json.dumps(env))
    print("| backbone | ORT stacked (ms) | ORT parallel (ms) | eager (ms) | eager channels_last (ms) | stacked vs eager | parallel vs eager |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m, s = r["ms"], r["speedup_vs_eager"]
        print(f"| {r['backbone']} | {m['ort_stacked']:.1f} | {m['ort_parallel']:.1f} | {m['torch_eager']:.1f} | "
              f"{m['torch_eager_channels_last']:.1f} | {s['ort_stacked']:.2f}x | {s['ort_parallel']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
