"""The same STFPM model exported by anomalib (``to_onnx``) and by stpm-edge (fused FP32), timed
side by side on ONNX Runtime CPU, interleaved in one process, at batch 1 and 4 (issue 20 item 3).

    pip install 'stpm-edge[anomalib]' onnxscript      # anomalib 2.7's to_onnx needs onnxscript
    python benchmarks/bench_vs_anomalib.py            # resnet18 and tf_efficientnet_lite0, 256²

For each backbone: anomalib's STFPM is trained for ``--epochs`` on the sample data (brick)
(lite0 with the offline ImageNet teacher, resnet18 with a random one: timing only), exported by
anomalib (float RGB 0..1 NCHW in, opset as anomalib chooses) and imported with ``stpm import
anomalib`` and exported by stpm-edge (uint8 BGR frames in, preprocessing in the graph, opset 17).
Each is fed its native input. Rounds alternate between the graphs (median of the per-round
medians). Image AUROC of both on the sample test split is reported beside the timings.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from stpm_edge.data.io import read_image_bgr
from stpm_edge.data.sample import make_sample_dataset
from stpm_edge.eval.metrics import image_auroc
from stpm_edge.models.deploy import ExportConfig
from stpm_edge.export.onnx_export import export_onnx
from stpm_edge.interop.anomalib import import_anomalib

LAYERS = {"tf_efficientnet_lite0": ["blocks.1", "blocks.2", "blocks.4"], "resnet18": ["layer1", "layer2", "layer3"]}


def train_anomalib(name: str, data: Path, size: int, epochs: int, root: Path):
    import anomalib.models.components.feature_extractors.timm as anomalib_timm
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Stfpm

    from stpm_edge.models.backbones import create_classifier

    create = anomalib_timm.timm.create_model
    try:  # no download: trunks built empty, the lite0 teacher gets our offline weights
        anomalib_timm.timm.create_model = lambda *a, **k: create(*a, **{**k, "pretrained": False})
        torch.manual_seed(0)
        model = Stfpm(backbone=name, layers=LAYERS[name], visualizer=False,
                      pre_processor=Stfpm.configure_pre_processor(image_size=(size, size)))
    finally:
        anomalib_timm.timm.create_model = create
    if name == "tf_efficientnet_lite0":
        full = create_classifier("efficientnet_lite0").state_dict()
        trunk = model.model.teacher_model.feature_extractor
        trunk.load_state_dict({k: full[k] for k in trunk.state_dict()}, strict=True)
    defects = sorted(p.name for p in (data / "test").iterdir() if p.name != "good")
    dm = Folder(name="brick", root=data, normal_dir="train/good", normal_test_dir="test/good",
                abnormal_dir=[f"test/{d}" for d in defects], mask_dir=[f"ground_truth/{d}" for d in defects],
                train_batch_size=8, eval_batch_size=8, num_workers=0, seed=0)
    engine = Engine(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=str(root),
                    enable_progress_bar=False)
    engine.fit(model=model, datamodule=dm)
    return model.eval(), Path(engine.trainer.checkpoint_callback.best_model_path)


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def opset(path: Path) -> int:
    import onnx

    return max(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))


def bench(name: str, args: argparse.Namespace, tmp: Path) -> dict:
    data = tmp / "brick"
    if not data.exists():
        make_sample_dataset(data, "brick", 0, image_size=args.size, n_train=16, n_test_good=8, n_defect_per_kind=2)
    t0 = time.perf_counter()
    model, ckpt = train_anomalib(name, data, args.size, args.epochs, tmp / f"results-{name}")
    train_s = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = model.to_onnx(tmp / f"anomalib-{name}", input_size=(args.size, args.size))
    ours_pt = tmp / f"{name}.pt"
    import_anomalib(ckpt, ours_pt)
    ours = export_onnx(ours_pt, tmp / f"ours-{name}", ExportConfig(dynamic_batch=True)).onnx_path
    s_theirs, s_ours = session(theirs, args.threads), session(ours, args.threads)
    in_theirs, in_ours = s_theirs.get_inputs()[0].name, s_ours.get_inputs()[0].name
    out_names = [o.name for o in s_theirs.get_outputs()]

    paths = sorted((data / "test").glob("*/*.png"))
    labels = np.array([0 if p.parent.name == "good" else 1 for p in paths])
    bgr = np.stack([read_image_bgr(p) for p in paths])
    rgb01 = (bgr[..., ::-1].transpose(0, 3, 1, 2) / 255.0).astype(np.float32)
    score_theirs = np.concatenate([s_theirs.run(["pred_score"], {in_theirs: rgb01[i:i + 1]})[0].reshape(-1)
                                   for i in range(len(paths))])
    score_ours = np.concatenate([s_ours.run(["score"], {in_ours: bgr[i:i + 1]})[0] for i in range(len(paths))])
    row = {"backbone": name, "train_s": round(train_s, 1), "anomalib_onnx_opset": opset(theirs),
           "anomalib_outputs": out_names, "ours_opset": opset(ours),
           "image_auroc": {"anomalib_onnx": image_auroc(labels, score_theirs), "ours_fp32": image_auroc(labels, score_ours)},
           # anomalib's exported scores are normalised and clipped to 0..1: clipped scores tie, which moves AUROC
           "anomalib_scores_clipped": int(((score_theirs <= 0) | (score_theirs >= 1)).sum()), "test_images": len(paths),
           "ms": {}}
    for batch in args.batches:
        feeds = {"anomalib": (s_theirs, {in_theirs: np.repeat(rgb01[:1], batch, 0)}),
                 "ours_fp32": (s_ours, {in_ours: np.repeat(bgr[:1], batch, 0)})}
        for s, feed in feeds.values():  # warm up
            for _ in range(3):
                s.run(None, feed)
        per_round: dict[str, list[float]] = {k: [] for k in feeds}
        for _ in range(args.rounds):
            for key, (s, feed) in feeds.items():
                times = []
                for _ in range(args.per_round):
                    t = time.perf_counter()
                    s.run(None, feed)
                    times.append(1000 * (time.perf_counter() - t))
                per_round[key].append(statistics.median(times))
        ms = {k: statistics.median(v) for k, v in per_round.items()}
        row["ms"][f"batch{batch}"] = {**{k: round(v, 2) for k, v in ms.items()},
                                      "anomalib_over_ours": round(ms["anomalib"] / ms["ours_fp32"], 3)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", default="resnet18,tf_efficientnet_lite0")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    import anomalib

    flags = sorted(set(re.findall(r"\b(avx512_vnni|avx512f|avx2)\b", Path("/proc/cpuinfo").read_text())))
    result = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpu_flags": flags, "cores": __import__("os").cpu_count(),
              "versions": {"anomalib": anomalib.__version__, "onnxruntime": ort.__version__, "torch": torch.__version__},
              "size": args.size, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backbones.split(","):
            row = bench(name, args, Path(tmp))
            result["rows"].append(row)
            for b, ms in row["ms"].items():
                print(f"{name:22s} {b}: anomalib {ms['anomalib']:7.2f} ms  ours FP32 {ms['ours_fp32']:7.2f} ms  "
                      f"anomalib/ours {ms['anomalib_over_ours']:.2f}x", flush=True)
            print(f"{name:22s} image AUROC: anomalib {row['image_auroc']['anomalib_onnx']:.3f}, "
                  f"ours {row['image_auroc']['ours_fp32']:.3f}; opsets {row['anomalib_onnx_opset']} vs {row['ours_opset']}",
                  flush=True)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
