"""STPM's two heads on the SAME trained model: accuracy (PyTorch, test split) and ONNX Runtime CPU
latency of the whole exported FP32 graph, with the share of the frame outside the trunks.

    python benchmarks/bench_head.py brick=brick.pt:data/brick grass=grass.pt:data/grass ...
    python benchmarks/bench_head.py --timing-only resnet18

The head has no weights, so one checkpoint serves both: ``model`` (every level upsampled to the
input size, product, blur σ, max at 256²) and ``feature`` (levels on the finest level's grid,
blur σ/stride, max there; the map is resized to the input size for pixel AUROC, as the export
does by default). Latencies: interleaved rounds in one process, median of per-round medians.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_export import _median_ms, make_checkpoint  # noqa: E402

from stpm_edge.bench.profile import profile_ort  # noqa: E402
from stpm_edge.data.mvtec import load_dataset  # noqa: E402
from stpm_edge.data.preprocess import preprocess_images  # noqa: E402
from stpm_edge.eval.evaluate import load_test, score_test  # noqa: E402
from stpm_edge.export.onnx_export import export_onnx  # noqa: E402
from stpm_edge.models.checkpoint import load_checkpoint  # noqa: E402
from stpm_edge.models.deploy import ExportConfig, region_scopes  # noqa: E402

HEADS = ("model", "feature")


@torch.no_grad()
def accuracy(ckpt: Path, data: Path) -> dict[str, dict[str, float]]:
    model, meta = load_checkpoint(ckpt)
    model.eval()
    test = load_test(load_dataset(data).test)
    x = preprocess_images(test.images, meta.preprocess)
    out = {}
    for head in HEADS:
        net = meta.method.inference_module(model, options={"fusion": "parallel", "head": head}).eval()
        maps, scores = [], []
        for i in range(0, len(x), 16):
            amap, score = net(x[i:i + 16])
            if amap.shape[-2:] != x.shape[-2:]:
                amap = torch.nn.functional.interpolate(amap, size=x.shape[-2:], mode="bilinear", align_corners=False)
            maps.append(amap[:, 0].numpy())
            scores.append(score.numpy())
        r = score_test(test, np.concatenate(maps), np.concatenate(scores))
        out[head] = {"image_auroc": round(r.image_auroc, 4), "pixel_auroc": round(r.pixel_auroc, 4),
                     "pro": round(r.pro, 4)}
    return out


def timing(ckpt: Path, out: Path, rounds: int, per_round: int, threads: int) -> dict[str, dict[str, float]]:
    _, meta = load_checkpoint(ckpt)
    scopes = region_scopes(meta.method.low_precision({"fusion": "stacked"}))
    files = {}
    for head in HEADS:
        for map_size in ("model", "feature"):
            if head == "model" and map_size == "feature":
                continue
            key = f"{head} head, map {map_size}"
            files[key] = export_onnx(ckpt, out / f"{head}-{map_size}",
                                     ExportConfig(map_size=map_size, method_options={"head": head})).onnx_path
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    x = np.random.default_rng(0).integers(0, 256, (1, *meta.image_size, 3), dtype=np.uint8)
    for s in sessions.values():
        for _ in range(5):
            s.run(None, {"frames": x})
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            samples[k].append(_median_ms(lambda: s.run(None, {"frames": x}), per_round))
    rows = {}
    for k, p in files.items():
        prof = profile_ort(p, {"frames": x}, scopes, threads=threads)
        rows[k] = {"ms_b1": round(float(np.median(samples[k])), 3), "profiled_frame_ms": round(prof.frame_ms, 3),
                   "outside_trunks_ms": round(prof.frame_ms - prof.region_ms, 3),
                   "outside_share": round(prof.outside_share, 4),
                   "outside_top": {op: round(v, 3) for op, v in list(prof.by_op_outside_ms.items())[:6]}}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help="NAME=CHECKPOINT:DATA")
    ap.add_argument("--timing-only", metavar="BACKBONE")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.timing_only:
            ckpt = make_checkpoint(args.timing_only, 256, Path(tmp) / "m.pt")
            result[args.timing_only] = {"timing": timing(ckpt, Path(tmp), args.rounds, args.per_round, args.threads)}
        for spec in args.runs:
            name, _, rest = spec.partition("=")
            ckpt, _, data = rest.partition(":")
            row = {"accuracy": accuracy(Path(ckpt), Path(data))}
            if not args.no_timing:
                row["timing"] = timing(Path(ckpt), Path(tmp) / name, args.rounds, args.per_round, args.threads)
            result[name] = row
            print(json.dumps({name: row}), flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
