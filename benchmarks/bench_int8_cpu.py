"""Which options make the INT8 cpu form fast on ONNX Runtime x86: one FP32 export, several cpu
forms (QDQ/QOperator, per-channel/per-tensor, int32 biases, reduce_range), timed interleaved
against FP32 in one process at batch 1, with what stays float in ONNX Runtime's optimised graph
and (with a trained checkpoint) the accuracy of each.

    python benchmarks/bench_int8_cpu.py --checkpoint brick.pt --data data/brick --out int8-cpu
    python benchmarks/bench_int8_cpu.py --timing-only resnet18 --data data/brick --out int8-cpu-r18

``--variants`` picks from VARIANTS (default: all). ``--head`` exports with STPM's head option.
The optimised graphs (``SessionOptions.optimized_model_filepath``) are written to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from bench_export import _median_ms, make_checkpoint  # noqa: E402

from stpm_edge.artifact.metadata import in_scopes  # noqa: E402
from stpm_edge.calibration.quantize import QuantizeOptions, metadata_of  # noqa: E402
from stpm_edge.calibration.reader import CalibrationFrames  # noqa: E402
from stpm_edge.data.mvtec import load_dataset  # noqa: E402
from stpm_edge.eval.compare import compare_models  # noqa: E402
from stpm_edge.export.onnx_export import export_onnx  # noqa: E402
from stpm_edge.export.variants import write_int8  # noqa: E402
from stpm_edge.models.deploy import ExportConfig  # noqa: E402

BASE = QuantizeOptions()
VARIANTS = {
    "qdq per-channel (today)": BASE,
    "qdq per-channel int32 bias": replace(BASE, cpu_quantize_bias=True),
    "qdq per-tensor int32 bias": replace(BASE, cpu_quantize_bias=True, cpu_per_channel=False),
    "qoperator per-channel int32 bias": replace(BASE, cpu_format="qoperator", cpu_quantize_bias=True),
    "qoperator per-tensor int32 bias": replace(BASE, cpu_format="qoperator", cpu_quantize_bias=True,
                                               cpu_per_channel=False),
    "qdq per-channel int32 bias reduce_range": replace(BASE, cpu_quantize_bias=True, cpu_reduce_range=True),
}
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearAdd", "QLinearMul", "QLinearConcat",
             "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "ConvInteger", "MatMulInteger",
             "DynamicQuantizeLinear", "QLinearAveragePool"}


def optimised(path: Path, out: Path, threads: int) -> tuple[ort.InferenceSession, dict[str, int]]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(out)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    g = onnx.load(str(out), load_external_data=False)
    scopes = metadata_of(onnx.load(str(path), load_external_data=False)).lowp.int8
    trunk = Counter(n.op_type for n in g.graph.node if in_scopes(n.name, scopes) or n.name.startswith("/net/trunks"))
    return sess, dict(sorted(trunk.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--timing-only", metavar="BACKBONE")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--head", default="feature")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--count", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = args.checkpoint or make_checkpoint(args.timing_only, 256, tmp / "m.pt")
        fp32 = export_onnx(ckpt, tmp / "fp32", ExportConfig(method_options={"head": args.head})).onnx_path
        files = {"fp32": fp32}
        for k, name in enumerate(args.variants):
            d = tmp / f"v{k}"
            d.mkdir()
            for f in ("model.onnx", "model.json"):
                shutil.copy(fp32.parent / f, d / f)
            frames = CalibrationFrames.for_model(d / "model.onnx", args.data, count=args.count, seed=0)
            files[name] = write_int8(d / "model.onnx", frames, VARIANTS[name], forms=("cpu",)).files["cpu"].onnx_path
            print(f"written {name}", file=sys.stderr, flush=True)
        sessions, graphs = {}, {}
        for k, (name, p) in enumerate(files.items()):
            sessions[name], graphs[name] = optimised(p, args.out / f"opt{k}.onnx", args.threads)
        x = np.random.default_rng(0).integers(0, 256, tuple(sessions["fp32"].get_inputs()[0].shape), dtype=np.uint8)
        for s in sessions.values():
            for _ in range(5):
                s.run(None, {"frames": x})
        samples: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for k, s in sessions.items():
                samples[k].append(_median_ms(lambda: s.run(None, {"frames": x}), args.per_round))
        ratio = {k: [f / v for f, v in zip(samples["fp32"], samples[k])] for k in samples}
        rows = {k: {"ms_b1": round(float(np.median(v)), 3), "vs_fp32": round(float(np.median(ratio[k])), 3),
                    "vs_fp32_range": [round(min(ratio[k]), 2), round(max(ratio[k]), 2)],
                    "trunk_ops_optimised": graphs[k]} for k, v in samples.items()}
        del sessions
        if args.checkpoint:
            for k, r in zip(files, compare_models(list(files.values()), load_dataset(args.data))):
                rows[k].update({"image_auroc": round(r.image_auroc, 4), "pixel_auroc": round(r.pixel_auroc, 4),
                                "pro": round(r.pro, 4), "max_abs_map_diff": round(r.max_abs_map_diff, 3)})
    result = {"model": str(args.checkpoint or f"{args.timing_only} (random init, timing only)"), "head": args.head,
              "onnxruntime": ort.__version__, "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    (args.out / "result.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
