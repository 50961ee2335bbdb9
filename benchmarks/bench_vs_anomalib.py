"""The same anomalib model exported by anomalib (``to_onnx``, and ``to_openvino`` where openvino
is installed) and by stpm-edge (fused FP32, FP16 and the INT8 CPU form; for STFPM also with STPM's feature-resolution head,
FP32 and INT8 CPU form, its map left at the feature grid), timed side by side on
ONNX Runtime CPU (OpenVINO's CPU plugin for its export), interleaved in one process, at batch 1
and 4 (issues 17 and 20), with the accuracy of each on the sample data.

    pip install 'stpm-edge[anomalib]' onnxscript openvino   # to_onnx needs onnxscript; the OpenVINO row openvino
    python benchmarks/bench_vs_anomalib.py            # STFPM resnet18 + tf_efficientnet_lite0, CFA resnet18, 256²

For each model: anomalib trains it for ``--epochs`` on the sample data (brick) (STFPM lite0 with
the offline ImageNet teacher; resnet18 — STFPM and CFA, anomalib's CFA has no EfficientNet-Lite —
with a random one: timing only, nothing is downloaded), exports it (float RGB 0..1 NCHW in,
opset as anomalib chooses); ``stpm import anomalib`` imports the same checkpoint and stpm-edge
exports it (uint8 BGR frames in, preprocessing in the graph, opset 17) and calibrates its INT8
CPU form (MinMax, on the training images). Each graph is fed its native input. Rounds
alternate between the graphs (median of the per-round medians). Image and pixel AUROC of each
on the sample test split are reported beside the timings.
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

from stpm_edge.data.sample import make_sample_dataset
from stpm_edge.eval.metrics import image_auroc
from stpm_edge.models.deploy import ExportConfig
from stpm_edge.export.onnx_export import export_onnx
from stpm_edge.interop.anomalib import import_anomalib

LAYERS = {"tf_efficientnet_lite0": ["blocks.1", "blocks.2", "blocks.4"], "resnet18": ["layer1", "layer2", "layer3"]}


def _build(kind: str, name: str, size: int):
    import anomalib.models.components.feature_extractors.timm as anomalib_timm
    import anomalib.models.image.cfa.torch_model as cfa_torch
    import torchvision
    from anomalib.models import Cfa, Stfpm
    from torchvision.models.feature_extraction import create_feature_extractor

    from stpm_edge.models.backbones import create_classifier

    torch.manual_seed(0)
    if kind == "cfa":  # torchvision's download of the teacher replaced by an empty trunk
        original = cfa_torch.get_feature_extractor
        try:
            cfa_torch.get_feature_extractor = lambda n, nodes: create_feature_extractor(
                getattr(torchvision.models, n)(weights=None), return_nodes=nodes).eval()
            return Cfa(backbone=name, visualizer=False, pre_processor=Cfa.configure_pre_processor(image_size=(size, size)))
        finally:
            cfa_torch.get_feature_extractor = original
    create = anomalib_timm.timm.create_model
    try:  # no download: trunks built empty, the lite0 teacher gets our offline weights
        anomalib_timm.timm.create_model = lambda *a, **k: create(*a, **{**k, "pretrained": False})
        model = Stfpm(backbone=name, layers=LAYERS[name], visualizer=False,
                      pre_processor=Stfpm.configure_pre_processor(image_size=(size, size)))
    finally:
        anomalib_timm.timm.create_model = create
    if name == "tf_efficientnet_lite0":
        full = create_classifier("efficientnet_lite0").state_dict()
        trunk = model.model.teacher_model.feature_extractor
        trunk.load_state_dict({k: full[k] for k in trunk.state_dict()}, strict=True)
    return model


def train_anomalib(kind: str, name: str, data: Path, size: int, epochs: int, root: Path):
    from anomalib.data import Folder
    from anomalib.engine import Engine

    model = _build(kind, name, size)
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


class _OpenVINO:
    """anomalib's OpenVINO export on the OpenVINO CPU plugin, behind ORT's ``run``/``get_inputs`` calls."""

    def __init__(self, xml: Path, threads: int) -> None:
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        self.model = ov.Core().compile_model(str(xml), "CPU", config)
        self._inputs = [type("I", (), {"name": self.model.inputs[0].any_name})()]
        self._outputs = [type("O", (), {"name": o.any_name})() for o in self.model.outputs]
        self.request = self.model.create_infer_request()
        self.batch = None

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, names, feed):
        x = next(iter(feed.values()))
        result = self.request.infer({0: x})
        return [result[o] for o in self.model.outputs]


def openvino_model(model, root: Path, args: argparse.Namespace):
    """anomalib's ``to_openvino`` export, where ``openvino`` is installed (else None: the row is left out)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        print("openvino is not installed: no anomalib OpenVINO row (pip install openvino)", flush=True)
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xml = model.to_openvino(root, input_size=(args.size, args.size))
    return _OpenVINO(Path(xml), args.threads)


def _frame_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One image's map at the mask's size (a feature-grid map resized bilinearly, as the runtime does)."""
    import cv2

    m = np.asarray(amap, np.float32).reshape(amap.shape[-2:])
    if m.shape != tuple(size):
        m = cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return m[None]


def opset(path: Path) -> int:
    import onnx

    return max(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))


def bench(spec: str, args: argparse.Namespace, tmp: Path) -> dict:
    from stpm_edge.calibration.quantize import QuantizeOptions
    from stpm_edge.calibration.reader import CalibrationFrames
    from stpm_edge.data.mvtec import load_dataset, load_test_sample
    from stpm_edge.eval.metrics import pixel_auroc
    from stpm_edge.export.variants import write_fp16, write_int8

    kind, name = spec.split(":")
    data = tmp / "brick"
    if not data.exists():
        make_sample_dataset(data, "brick", 0, image_size=args.size, n_train=16, n_test_good=8, n_defect_per_kind=2)
    t0 = time.perf_counter()
    model, ckpt = train_anomalib(kind, name, data, args.size, args.epochs, tmp / f"results-{kind}-{name}")
    train_s = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = model.to_onnx(tmp / f"anomalib-{kind}-{name}", input_size=(args.size, args.size))
    ours_pt = tmp / f"{kind}-{name}.pt"
    import_anomalib(ckpt, ours_pt)
    ours = export_onnx(ours_pt, tmp / f"ours-{kind}-{name}", ExportConfig(dynamic_batch=True)).onnx_path
    int8 = write_int8(ours, CalibrationFrames.for_model(ours, data / "train" / "good", count=16),
                      QuantizeOptions("minmax"), forms=("cpu",)).files["cpu"].onnx_path
    fp16 = write_fp16(ours).onnx_path
    sessions = {"anomalib": session(theirs, args.threads), "ours_fp32": session(ours, args.threads),
                "ours_fp16": session(fp16, args.threads), "ours_int8_cpu": session(int8, args.threads)}
    if kind == "stfpm":  # STPM's feature-resolution head, the map left at the feature grid (the runtime resizes it)
        feat = export_onnx(ours_pt, tmp / f"ours-feature-{kind}-{name}", ExportConfig(
            dynamic_batch=True, map_size="feature", method_options={"head": "feature"})).onnx_path
        feat8 = write_int8(feat, CalibrationFrames.for_model(feat, data / "train" / "good", count=16),
                           QuantizeOptions("minmax"), forms=("cpu",)).files["cpu"].onnx_path
        sessions.update(ours_fp32_feature=session(feat, args.threads), ours_int8_cpu_feature=session(feat8, args.threads))
    ov_model = openvino_model(model, tmp / f"anomalib-ov-{kind}-{name}", args)
    if ov_model is not None:
        sessions["anomalib_openvino"] = ov_model
    inputs = {k: s.get_inputs()[0].name for k, s in sessions.items()}

    samples = load_dataset(data).test
    labels = np.array([s.label for s in samples])
    loaded = [load_test_sample(s) for s in samples]
    bgr = np.stack([im for im, _ in loaded])
    masks = np.stack([(m if m is not None else np.zeros(im.shape[:2], np.uint8)) > 0 for im, m in loaded])
    rgb01 = (bgr[..., ::-1].transpose(0, 3, 1, 2) / 255.0).astype(np.float32)
    feeds_of = {k: (rgb01 if k.startswith("anomalib") else bgr) for k in sessions}
    accuracy = {}
    for key, s in sessions.items():
        outs = [s.run(None, {inputs[key]: feeds_of[key][i:i + 1]}) for i in range(len(samples))]
        named = [dict(zip([o.name for o in s.get_outputs()], o)) for o in outs]
        score = np.concatenate([(n["pred_score"] if key.startswith("anomalib") else n["score"]).reshape(-1) for n in named])
        amap = np.concatenate([_frame_map(n["anomaly_map"], masks.shape[1:]) for n in named])
        accuracy[key] = {"image_auroc": round(image_auroc(labels, score), 4),
                         "pixel_auroc": round(pixel_auroc(masks, amap), 4)}
        if key.startswith("anomalib"):  # anomalib's exported scores are normalised and clipped to 0..1: clipped scores tie
            accuracy[key]["scores_clipped"] = int(((score <= 0) | (score >= 1)).sum())
    row = {"model": kind, "backbone": name, "train_s": round(train_s, 1), "anomalib_onnx_opset": opset(theirs),
           "anomalib_outputs": [o.name for o in sessions["anomalib"].get_outputs()], "ours_opset": opset(ours),
           "accuracy": accuracy, "test_images": len(samples), "ms": {}}
    for batch in args.batches:
        feeds = {k: (s, {inputs[k]: np.repeat(feeds_of[k][:1], batch, 0)}) for k, s in sessions.items()}
        for key, (s, feed) in list(feeds.items()):  # warm up; a graph that cannot take this batch is left out
            try:
                for _ in range(3):
                    s.run(None, feed)
            except Exception as exc:  # noqa: BLE001
                print(f"{spec} batch {batch}: {key} failed ({str(exc).splitlines()[0][:120]}); row left out", flush=True)
                del feeds[key]
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
        ms.update({k: float("nan") for k in sessions if k not in ms})
        row["ms"][f"batch{batch}"] = {**{k: round(v, 2) for k, v in ms.items()},
                                      "anomalib_over_ours": round(ms["anomalib"] / ms["ours_fp32"], 3),
                                      "anomalib_over_ours_int8": round(ms["anomalib"] / ms["ours_int8_cpu"], 3),
                                      "ours_fp32_over_int8": round(ms["ours_fp32"] / ms["ours_int8_cpu"], 3)}
        ours_keys = [k for k in ms if k.startswith("ours") and np.isfinite(ms[k])]
        best = min(ours_keys, key=lambda k: ms[k])
        row["ms"][f"batch{batch}"].update(best=best, anomalib_over_best=round(ms["anomalib"] / ms[best], 3))
        if "ours_fp32_feature" in ms:
            row["ms"][f"batch{batch}"]["anomalib_over_ours_feature"] = round(ms["anomalib"] / ms["ours_fp32_feature"], 3)
        if "anomalib_openvino" in ms:
            row["ms"][f"batch{batch}"]["openvino_over_ours_int8"] = round(ms["anomalib_openvino"] / ms["ours_int8_cpu"], 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="stfpm:resnet18,stfpm:tf_efficientnet_lite0,cfa:resnet18",
                    help="anomalib model:backbone pairs (stfpm or cfa)")
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

    flags = sorted(set(re.findall(r"\b(avx2|avx512f|avx512_vnni|avx_vnni|avx512_bf16|amx_bf16|amx_int8)\b", Path("/proc/cpuinfo").read_text())))
    result = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpu_flags": flags, "cores": __import__("os").cpu_count(),
              "versions": {"anomalib": anomalib.__version__, "onnxruntime": ort.__version__, "torch": torch.__version__},
              "size": args.size, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            row = bench(spec, args, Path(tmp))
            result["rows"].append(row)
            for b, ms in row["ms"].items():
                print(f"{spec:28s} {b}: anomalib {ms['anomalib']:7.2f} ms  ours FP32 {ms['ours_fp32']:7.2f} ms  "
                      f"FP16 {ms['ours_fp16']:7.2f} ms  INT8 CPU {ms['ours_int8_cpu']:7.2f} ms  "
                      + (f"feature head FP32 {ms['ours_fp32_feature']:7.2f} ms INT8 {ms['ours_int8_cpu_feature']:7.2f} ms  "
                         if "ours_fp32_feature" in ms else "")
                      + (f"OpenVINO {ms['anomalib_openvino']:7.2f} ms  " if "anomalib_openvino" in ms else "")
                      + f"best {ms['best']} {ms['anomalib_over_best']:.2f}x  "
                      + f"anomalib/ours {ms['anomalib_over_ours']:.2f}x, "
                      f"/INT8 {ms['anomalib_over_ours_int8']:.2f}x", flush=True)
            acc = row["accuracy"]
            print(f"{spec:28s} image/pixel AUROC: " + ", ".join(
                f"{k} {v['image_auroc']:.3f}/{v['pixel_auroc']:.3f}" for k, v in acc.items())
                + f"; opsets {row['anomalib_onnx_opset']} vs {row['ours_opset']}", flush=True)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
