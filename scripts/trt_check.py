#!/usr/bin/env python3
"""The whole TensorRT chain on this machine, with a verdict.

    python scripts/trt_check.py                     # sample data + a small model, trained here
    python scripts/trt_check.py --model model.pt --data path/to/mvtec/category
    python scripts/trt_check.py --json report.json  # also write the results as JSON

Steps: report the environment (TensorRT, CUDA binding, GPU, ONNX Runtime providers) →
export ``model.onnx`` (fixed batch 1 and dynamic batch) → ``model.fp16.onnx`` and the Q/DQ
``model.int8.onnx`` → build FP32, FP16 (every path this TensorRT has: builder flags with
the head pinned to FP32, strongly typed) and INT8 (Q/DQ; classic calibrator where it still
exists) engines → run each through the TensorRT backend (also with a CUDA graph) and
compare with ONNX Runtime FP32 on the test split.

Pass criteria (issue 5): FP32 map/score within 1e-3 of ONNX Runtime, FP16 within 1e-2
(|Δ| / max(1, |reference|))
(normalised units, 0.5 = threshold), INT8 loses at most 0.5 AUROC points.
Exit code: 0 all checks passed, 1 a check failed, 2 nothing to check (no TensorRT or GPU).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

FP32_TOL, FP16_TOL, INT8_MAX_DROP_PT = 1e-3, 1e-2, 0.5


@dataclass
class Check:
    name: str
    passed: bool | None  # None: skipped
    detail: str
    numbers: dict = field(default_factory=dict)


def environment() -> dict:
    from stpm_edge.tensorrt.cuda import load_cuda, probe_gpu
    from stpm_edge.tensorrt.api import import_tensorrt

    env = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        env["tensorrt"] = str(import_tensorrt().__version__)
    except Exception as e:  # noqa: BLE001
        env["tensorrt"] = None
        env["tensorrt_error"] = str(e)
    try:
        env["cuda_binding"] = load_cuda().name
    except Exception as e:  # noqa: BLE001
        env["cuda_binding"] = None
        env["cuda_error"] = str(e)
    gpu, why = probe_gpu(0)
    env["gpu"] = gpu.to_dict() if gpu else None
    if gpu is None:
        env["gpu_error"] = why
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["ort_providers"] = ort.get_available_providers()
    except Exception as e:  # noqa: BLE001
        env["onnxruntime"] = f"unavailable ({e})"
    return env


def prepare(args, work: Path) -> tuple[Path, Path]:
    """(checkpoint, dataset root): the user's, or sample data and a small model trained here."""
    if args.model and args.data:
        return Path(args.model), Path(args.data)
    from stpm_edge.data.sample import make_sample_dataset
    from stpm_edge.train.trainer import TrainConfig, train

    data = work / "brick"
    make_sample_dataset(data, "brick", seed=0, image_size=128, n_train=24, n_test_good=8, n_defect_per_kind=3)
    model = work / "model.pt"
    print(f"training a small model on sample data ({args.epochs} epochs) ...", flush=True)
    train(data, model, TrainConfig(image_size=args.image_size, epochs=args.epochs, batch_size=8,
                                   time_budget_min=0, patience=args.epochs, seed=0))
    return model, data


def run(args) -> tuple[dict, list[Check]]:
    from stpm_edge.calibration.reader import CalibrationFrames
    from stpm_edge.data.mvtec import load_dataset
    from stpm_edge.eval.compare import compare_backends, gate
    from stpm_edge.eval.evaluate import load_test
    from stpm_edge.models.deploy import ExportConfig
    from stpm_edge.export.onnx_export import export_onnx
    from stpm_edge.tensorrt.builder import BuildOptions, build_engine, caps_from_module
    from stpm_edge.export.variants import write_fp16, write_int8
    from stpm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from stpm_edge.tensorrt.api import import_tensorrt
    from stpm_edge.tensorrt.runner import TensorRTBackend

    env = environment()
    print(json.dumps(env, indent=2))
    checks: list[Check] = []
    if env["tensorrt"] is None or env["gpu"] is None or env["cuda_binding"] is None:
        why = env.get("tensorrt_error") or env.get("gpu_error") or env.get("cuda_error")
        checks.append(Check("environment", None, f"nothing to check: {why}"))
        return env, checks
    caps = caps_from_module(import_tensorrt())
    work = Path(args.out or tempfile.mkdtemp(prefix="trt_check_"))
    work.mkdir(parents=True, exist_ok=True)
    model, data = prepare(args, work)
    dataset = load_dataset(data)
    test = load_test(dataset.test)
    good = data / "train" / "good"

    onnx_paths = {}
    for tag, cfg in (("fixed", ExportConfig()), ("dynamic", ExportConfig(dynamic_batch=True))):
        res = export_onnx(model, work / tag, cfg)
        write_fp16(res.onnx_path)
        onnx_paths[tag] = res.onnx_path
    frames = CalibrationFrames.for_model(onnx_paths["fixed"], good, count=args.calib_count)
    write_int8(onnx_paths["fixed"], frames, forms=("tensorrt",))

    def compare(tag: str, engine: Path, **kw):
        with OnnxRuntimeBackend(onnx_paths[tag], providers="cpu") as ref, TensorRTBackend(engine, **kw) as trt:
            return compare_backends([ref, trt], ["onnxruntime", "tensorrt"], test, batch_size=args.batch)

    cases = [("fp32", "fixed", "fp32", {}, None), ("fp32 dynamic batch", "dynamic", "fp32", {"max_batch": 4}, None),
             ("fp32 CUDA graph", "fixed", "fp32", {}, {"cuda_graph": True})]
    if caps.weak_typing:
        cases.append(("fp16 builder flags, head pinned FP32", "fixed", "fp16", {"fp16_mode": "flags"}, None))
    if caps.strongly_typed:
        cases.append(("fp16 strongly typed model.fp16.onnx", "fixed", "fp16", {"fp16_mode": "typed"}, None))
    cases.append(("int8 Q/DQ model.int8.onnx", "fixed", "int8", {"int8_mode": "qdq"}, None))
    if "IInt8EntropyCalibrator2" in caps.calibrators:
        cases.append(("int8 classic calibrator", "fixed", "int8",
                      {"int8_mode": "calibrator", "calib_dir": good, "calib_count": args.calib_count,
                       "calib_cache": work / "calib.cache", "out_path": work / "fixed" / "model.int8calib.engine"}, None))
    else:
        checks.append(Check("int8 classic calibrator", None, f"TensorRT {caps.version} has no implicit calibration"))

    for name, tag, precision, opts, run_kw in cases:
        t0 = time.perf_counter()
        try:
            res = build_engine(onnx_paths[tag], precision, BuildOptions(**opts))
            ref, eng = compare(tag, res.engine_path, **(run_kw or {}))
        except Exception as e:  # noqa: BLE001 - a failed step is a failed check, with its reason
            checks.append(Check(name, False, f"{type(e).__name__}: {e}"))
            if args.verbose:
                traceback.print_exc()
            continue
        nums = {"build_s": round(res.seconds, 1), "check_s": round(time.perf_counter() - t0, 1),
                "max_abs_map_diff": eng.max_abs_map_diff, "max_abs_score_diff": eng.max_abs_score_diff,
                "image_auroc": eng.image_auroc, "ref_image_auroc": ref.image_auroc,
                "ms_per_image": round(eng.ms_per_image, 3), "ort_cpu_ms_per_image": round(ref.ms_per_image, 3),
                "source": res.plan.onnx_path.name, "flags": list(res.plan.builder_flags),
                "strongly_typed": res.plan.strongly_typed}
        if precision == "int8":
            verdict = gate(ref, eng, INT8_MAX_DROP_PT)
            checks.append(Check(name, verdict.passed, verdict.message, nums))
        else:
            tol = FP32_TOL if precision == "fp32" else FP16_TOL
            if precision == "fp32":
                ok = eng.max_abs_map_diff <= tol and eng.max_abs_score_diff <= tol
            else:  # absolute up to the threshold scale, relative on strong defects
                ok = eng.max_scaled_map_diff <= tol
            checks.append(Check(name, ok, f"max |map diff| {eng.max_abs_map_diff:.2e} (scaled "
                                          f"{eng.max_scaled_map_diff:.2e}), |score diff| "
                                          f"{eng.max_abs_score_diff:.2e} (tolerance {tol:g})", nums))
    return env, checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint (model.pt); default: train a small one on sample data")
    p.add_argument("--data", help="MVTec-layout category folder with a test split (with --model)")
    p.add_argument("--out", help="working folder (default: a temporary folder)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--calib-count", type=int, default=24)
    p.add_argument("--batch", type=int, default=5)
    p.add_argument("--json", help="write the environment and results to this JSON file")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    env, checks = run(args)
    print()
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "SKIP" if c.passed is None else ("PASS" if c.passed else "FAIL")
        extra = f"  [{c.numbers['ms_per_image']} ms/img TensorRT]" if "ms_per_image" in c.numbers else ""
        print(f"{mark}  {c.name:<{width}}  {c.detail}{extra}")
    ran = [c for c in checks if c.passed is not None]
    failed = [c for c in ran if not c.passed]
    if not ran:
        verdict, code = "NOTHING CHECKED (TensorRT, a CUDA binding or a GPU is missing)", 2
    elif failed:
        verdict, code = f"FAIL ({len(failed)} of {len(ran)} checks failed)", 1
    else:
        verdict, code = f"PASS ({len(ran)} checks, TensorRT {env['tensorrt']} on {env['gpu']['name']})", 0
    print(f"\nverdict: {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "verdict": verdict,
                                               "checks": [c.__dict__ for c in checks]}, indent=2, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
