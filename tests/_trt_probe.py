"""Run in a fresh interpreter by ``_trt_wheels.run_probe`` (the real module must be imported in a
process of its own: its native libraries are stand-ins, and TensorRT's global state must not leak
into the test process). Prints one JSON line; the tests assert on it.

    python tests/_trt_probe.py snapshot RELEASE        member lists of the real tensorrt module
    python tests/_trt_probe.py trt RELEASE WORKDIR     the checks (a)-(e) of issue 19
    python tests/_trt_probe.py cuda RELEASE            the cuda-python checks

Nothing here fakes a TensorRT result: the module is TensorRT's, the calls into its native
library fail, and what is recorded is what our code does with that.
"""
from __future__ import annotations

import inspect
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

CLASSES = ("Builder", "IBuilderConfig", "INetworkDefinition", "ILayer", "ITensor", "OnnxParser",
           "IOptimizationProfile", "ITimingCache", "IHostMemory", "Runtime", "ICudaEngine", "IExecutionContext",
           "ILogger", "IInt8Calibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "IParserError")
ENUMS = ("NetworkDefinitionCreationFlag", "BuilderFlag", "MemoryPoolType", "DeviceType", "DataType", "LayerType",
         "TensorIOMode", "CalibrationAlgoType")


def import_real_tensorrt() -> Any:
    """The wheel's ``tensorrt_bindings``, importable as ``tensorrt`` (what the ``tensorrt`` package re-exports)."""
    import tensorrt_bindings  # noqa: PLC0415

    sys.modules["tensorrt"] = tensorrt_bindings
    return tensorrt_bindings


def _kind(attr: Any) -> str:
    if isinstance(attr, property):
        return "property"
    if isinstance(attr, type):
        return "class"
    if callable(attr) or isinstance(attr, (staticmethod, classmethod)):
        return "method"
    return "value"


def snapshot(trt: Any) -> dict:
    """Public module names, members (with their kind) of the classes we touch, enum members and values."""
    snap: dict[str, Any] = {"version": str(trt.__version__),
                            "module": sorted(n for n in dir(trt) if not n.startswith("_")), "classes": {}, "enums": {}}
    for name in CLASSES:
        cls = getattr(trt, name, None)
        if cls is not None:
            snap["classes"][name] = {n: _kind(inspect.getattr_static(cls, n)) for n in dir(cls)
                                     if not n.startswith("__")}
    for name in ENUMS:
        enum = getattr(trt, name, None)
        if enum is not None:
            snap["enums"][name] = {k: int(v) for k, v in enum.__members__.items()}
    snap["enums"]["ILogger.Severity"] = {k: int(v) for k, v in trt.ILogger.Severity.__members__.items()}
    return snap


def outcome(fn: Callable[[], Any]) -> dict:
    """What calling ``fn`` did: returned, or raised which exception with which message."""
    try:
        value = fn()
    except BaseException as e:  # noqa: BLE001 - recorded for the test to judge
        msg = str(e)
        return {"raised": type(e).__name__, "message": msg, "one_line": "\n" not in msg.strip(),
                "traceback": traceback.format_exc()[-1500:]}
    return {"raised": None, "value": value}


def _plan_summary(fn: Callable[[], Any]) -> dict:
    from stpm_edge.errors import StpmError  # noqa: PLC0415

    try:
        plan = fn()
    except StpmError as e:
        return {"error": str(e)}
    return {"source": plan.onnx_path.name, "network_flags": list(plan.network_flags),
            "builder_flags": list(plan.builder_flags), "clear_flags": list(plan.clear_flags),
            "strongly_typed": plan.strongly_typed, "pin_head_fp32": plan.pin_head_fp32,
            "int8_method": plan.int8_method, "calibrator": plan.calibrator_class}


def plans(caps: Any, work: Path) -> dict:
    from stpm_edge.runtime.backends.base import InputSpec  # noqa: PLC0415
    from stpm_edge.tensorrt.plan import BuildOptions, plan_build  # noqa: PLC0415

    files = {}
    for p, name in (("fp32", "model.onnx"), ("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx")):
        files[p] = work / "plans" / name
        files[p].parent.mkdir(parents=True, exist_ok=True)
        files[p].write_bytes(b"onnx")
    dyn = InputSpec("frames", "uint8", "NHWC", "BGR", None, 480, 640)
    fixed = InputSpec("frames", "uint8", "NHWC", "BGR", 1, 480, 640)
    images = work / "plans"
    cases = {
        "fp32": ("fp32", BuildOptions(), dyn),
        "fp16": ("fp16", BuildOptions(), dyn),
        "fp16-flags": ("fp16", BuildOptions(fp16_mode="flags"), dyn),
        "int8": ("int8", BuildOptions(), dyn),
        "int8-calibrator": ("int8", BuildOptions(int8_mode="calibrator", calib_dir=images), dyn),
        "dla-fp16": ("fp16", BuildOptions(dla_core=0), fixed),
        "dla-calibrator-minmax": ("int8", BuildOptions(int8_mode="calibrator", calib_dir=images, dla_core=0), fixed),
        "dla-calibrator-entropy": ("int8", BuildOptions(int8_mode="calibrator", calib_dir=images, dla_core=0,
                                                        calib_method="entropy"), fixed),
    }
    return {k: _plan_summary(lambda p=p, o=o, s=s: plan_build(caps, p, o, s, files)) for k, (p, o, s) in cases.items()}


class _NoGpuCuda:
    """Just enough of the CUDA adapter for TensorRTBackend to reach ``trt.Runtime`` (no GPU here)."""

    name = "probe"
    supports_graphs = False

    def device_info(self, index: int = 0) -> Any:
        from stpm_edge.tensorrt.engine_meta import GpuInfo  # noqa: PLC0415

        return GpuInfo("Probe GPU", "8.7", index)

    def activate(self) -> Any:
        import contextlib  # noqa: PLC0415

        return contextlib.nullcontext()


def trt_checks(release: str, work: Path) -> dict:
    trt = import_real_tensorrt()
    from _trt_models import write_engine, write_onnx  # noqa: PLC0415

    import stpm_edge.tensorrt.cuda as cuda_mod  # noqa: PLC0415
    from stpm_edge.tensorrt import api  # noqa: PLC0415
    from stpm_edge.tensorrt.builder import build_engine  # noqa: PLC0415
    from stpm_edge.tensorrt.calibrator import make_calibrator  # noqa: PLC0415
    from stpm_edge.tensorrt.engine_meta import GpuInfo  # noqa: PLC0415
    from stpm_edge.tensorrt.plan import CALIBRATOR_CLASSES, BuildOptions  # noqa: PLC0415
    from stpm_edge.tensorrt.runner import TensorRTBackend  # noqa: PLC0415

    res: dict[str, Any] = {"release": release, "version": str(trt.__version__), "snapshot": snapshot(trt)}
    caps = api.caps_from_module(trt)
    res["caps"] = {k: (sorted(v) if isinstance(v, frozenset) else str(v) if k == "version" else v)
                   for k, v in caps.__dict__.items()}
    res["import_tensorrt"] = outcome(lambda: str(api.import_tensorrt().__version__))

    # (c) our subclasses on the real base classes
    log = api.make_logger(trt)
    log.log(trt.ILogger.Severity.ERROR, "probe: an error\n  on two lines")
    res["logger"] = {"is_ilogger": isinstance(log, trt.ILogger), "same_object": api.make_logger(trt) is log,
                     "last_error": log.last_error()}
    calibrators = {}
    for cls in CALIBRATOR_CLASSES.values():
        if hasattr(trt, cls):
            calib = make_calibrator(trt, cls, None, None, None)
            alg = calib.get_algorithm()
            calibrators[cls] = {"isinstance": isinstance(calib, getattr(trt, cls)), "algorithm": api.enum_name(alg),
                                "algorithm_is_real_enum": type(alg) is trt.CalibrationAlgoType,
                                "batch_size": calib.get_batch_size(), "batch": calib.get_batch(["frames"]),
                                "cache": calib.read_calibration_cache()}
    res["calibrators"] = calibrators

    # (d) the plan on the real capabilities
    res["plans"] = plans(caps, work)

    # (e) a build and an engine load up to trt.Builder / trt.Runtime (which fail: no CUDA here)
    onnx_path = write_onnx(work / "model" / "model.onnx", batch=1)
    res["build"] = outcome(lambda: build_engine(onnx_path, "fp32", BuildOptions(timing_cache=False), trt=trt,
                                                gpu=GpuInfo("Probe GPU", "8.7", 0)))
    engine = write_engine(work / "model" / "model.fp32.engine", trt=str(trt.__version__), precision="fp32")
    cuda_mod.load_cuda = lambda device=0: _NoGpuCuda()
    res["load"] = outcome(lambda: TensorRTBackend(engine))
    return res


def cuda_checks(release: str) -> dict:
    import importlib  # noqa: PLC0415

    from stpm_edge.tensorrt import cuda as cuda_mod  # noqa: PLC0415

    res: dict[str, Any] = {"release": release}
    try:
        rt = importlib.import_module("cuda.bindings.runtime")
        res["module"] = "cuda.bindings.runtime"
    except ImportError:
        rt = importlib.import_module("cuda.cudart")
        res["module"] = "cuda.cudart"
    res["file"] = str(getattr(rt, "__file__", ""))
    res["missing"] = [n for n in cuda_mod.RUNTIME_CALLS if not callable(getattr(rt, n, None))]
    res["enums"] = {"cudaStreamNonBlocking": int(getattr(rt, "cudaStreamNonBlocking", -1)),
                    "capture_thread_local": hasattr(getattr(rt, "cudaStreamCaptureMode", None),
                                                    "cudaStreamCaptureModeThreadLocal"),
                    "memcpy_kinds": all(hasattr(getattr(rt, "cudaMemcpyKind", None), k)
                                        for k in ("cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"))}
    res["load_cuda"] = outcome(lambda: cuda_mod.load_cuda(0).name)

    def probe() -> dict:
        gpu, why = cuda_mod.probe_gpu(0)
        return {"gpu": gpu.to_dict() if gpu is not None else None, "why": why}

    res["probe_gpu"] = outcome(probe)
    res["native_handle_getter"] = cuda_mod._native_handle_getter() is not None
    return res


def main(argv: list[str]) -> int:
    mode, release = argv[0], argv[1]
    if mode == "snapshot":
        out = {"snapshot": snapshot(import_real_tensorrt())}
    elif mode == "trt":
        out = trt_checks(release, Path(argv[2]))
    elif mode == "cuda":
        out = cuda_checks(release)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(out, default=repr))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
