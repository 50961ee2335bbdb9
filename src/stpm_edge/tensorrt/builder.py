"""The TensorRT engine builder: ``model.onnx`` (+ ``model.fp16.onnx`` / ``model.int8.onnx``) →
``model.<precision>.engine`` + ``model.<precision>.engine.json`` (see
:mod:`stpm_edge.tensorrt.engine_meta` for the sidecar).

Every choice is made up front by :func:`stpm_edge.tensorrt.plan.plan_build` from
:func:`~stpm_edge.tensorrt.api.caps_from_module` (feature checks on the imported module);
:func:`build_engine` then carries the plan out in three steps, as Polygraphy splits its
loader, config and calibrator:

1. configure (:func:`stpm_edge.tensorrt.config.configure`): ``Builder(logger)``, network,
   parser, builder config, profiles, DLA, timing cache;
2. attach the calibrator (:func:`stpm_edge.tensorrt.calibrator.attach_calibrator`) when the
   plan calibrates (8.5-10);
3. ``build_serialized_network``, then write the artifacts (:mod:`stpm_edge.tensorrt.artifacts`):
   timing cache, engine and sidecar.

Sources: TensorRT Python API reference, ``infer/Core/Builder.html`` (8.2.5/8.4.3/8.6.1
archives, 10.x, 11.0.0); "Removed Python APIs and Replacements" (10.x → 11.x migration guide).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from stpm_edge.errors import StpmError, first_line
from stpm_edge.artifact import InputSpec, read_onnx_metadata
from stpm_edge.tensorrt.api import caps_from_module, import_tensorrt, make_logger, start
from stpm_edge.tensorrt.artifacts import engine_sidecar, save_timing_cache, write_engine
from stpm_edge.tensorrt.calibrator import attach_calibrator
from stpm_edge.tensorrt.config import configure
from stpm_edge.tensorrt.engine_meta import (PRECISIONS, GpuInfo, engine_path_for, is_cpu_form, no_engine_reason,
                                            onnx_path_for, split_model_name)
from stpm_edge.tensorrt.plan import BuildOptions, BuildPlan, plan_build

logger = logging.getLogger(__name__)

__all__ = ["BuildOptions", "EngineResult", "SkipReason", "build_engine", "caps_from_module", "import_tensorrt",
           "maybe_build_engine"]


@dataclass
class EngineResult:
    """A built engine: its file, sidecar (the dict written), the plan that made it."""

    engine_path: Path
    sidecar_path: Path
    sidecar: dict
    plan: BuildPlan
    seconds: float
    built: bool = True


@dataclass
class SkipReason:
    """Why no engine was built (TensorRT or a GPU is missing); ``str()`` is the reason."""

    reason: str
    built: bool = False

    def __str__(self) -> str:
        return self.reason


def read_onnx_stpm_metadata(path: Path) -> dict:
    """The ``stpm_edge`` metadata of an exported ONNX file as the engine sidecar's dict (the one
    reader, :func:`stpm_edge.artifact.read_onnx_metadata`: validated, ``lowp`` filled in for v1)."""
    return read_onnx_metadata(Path(path)).to_dict()


def onnx_files_beside(model_path: Path) -> dict[str, Path]:
    """precision → the existing ``model.onnx`` / ``model.fp16.onnx`` / ``model.int8.onnx`` beside ``model_path``."""
    base, _ = split_model_name(Path(model_path))
    found = {}
    for p in PRECISIONS:
        f = onnx_path_for(base, p)
        if f.is_file():
            found[p] = f
    return found


def _gpu(cuda_device: int = 0) -> GpuInfo:
    from stpm_edge.tensorrt.cuda import probe_gpu  # noqa: PLC0415

    gpu, why = probe_gpu(cuda_device)
    if gpu is None:
        raise StpmError(f"cannot build a TensorRT engine: {why}")
    return gpu


def build_engine(onnx_path: Path, precision: str = "fp32", options: BuildOptions = BuildOptions(), *,
                 trt: Any = None, gpu: GpuInfo | None = None) -> EngineResult:
    """Build ``model.<precision>.engine`` beside ``onnx_path`` (any of model[.fp16|.int8].onnx).

    ``trt``/``gpu`` default to the imported module and CUDA device 0. One-line StpmError on failure.
    """
    t0 = time.perf_counter()
    if is_cpu_form(Path(onnx_path)):
        raise StpmError(no_engine_reason(Path(onnx_path)))
    trt = trt if trt is not None else import_tensorrt()
    gpu = gpu if gpu is not None else _gpu(0)
    onnx_path = Path(onnx_path)
    files: Mapping[str, Path] = onnx_files_beside(onnx_path)
    if not files:
        raise StpmError(f"{onnx_path}: no such model file")
    given_meta = read_onnx_stpm_metadata(onnx_path if onnx_path.is_file() else next(iter(files.values())))
    spec = InputSpec.from_dict(given_meta["input"])
    caps = caps_from_module(trt)
    plan = plan_build(caps, precision, options, spec, files)
    metadata = given_meta if plan.onnx_path == onnx_path else read_onnx_stpm_metadata(plan.onnx_path)
    engine_path = Path(options.out_path) if options.out_path else engine_path_for(onnx_path, precision)
    version = str(caps.version)
    for note in plan.notes:
        logger.info("TensorRT %s: %s", version, note)
    logger.info("TensorRT %s on %s: building %s from %s (%s%s)", version, gpu.name, engine_path.name,
                plan.onnx_path.name, "strongly typed" if plan.strongly_typed else "weakly typed",
                ", flags " + "+".join(plan.builder_flags) if plan.builder_flags else "")

    log = make_logger(trt, options.verbose)  # the process-wide logger (TensorRT keeps only one)
    mark = log.mark()
    builder = start(trt, "Builder", log)
    regions = tuple(given_meta.get("lowp", {}).get("fp16", ()))  # the method's low-precision regions
    built = configure(trt, builder, log, caps, plan, options, spec, engine_path, gpu, regions)
    calibrator = attach_calibrator(trt, built, log, plan, options, spec, metadata, gpu, version)
    try:
        serialized = builder.build_serialized_network(built.network, built.config)
    except Exception as e:  # noqa: BLE001 - some releases raise instead of returning None
        raise StpmError(f"TensorRT {version} could not build {engine_path.name} ({first_line(e)})") from None
    finally:
        built.parser = None  # the parser owns the weights until the build is done
        if calibrator is not None:
            calibrator.release()
    if calibrator is not None and calibrator.error is not None:
        err = calibrator.error
        raise StpmError(f"INT8 calibration failed: {err}") if not isinstance(err, StpmError) else err
    if serialized is None:
        raise StpmError(f"TensorRT {version} could not build {engine_path.name} ({log.last_error(mark)})")
    data = bytes(serialized)

    save_timing_cache(built)
    sidecar = engine_sidecar(metadata, plan, options, built, data=data, engine_path=engine_path, version=version,
                             gpu=gpu, calibrator=calibrator, started=t0)
    side = write_engine(engine_path, data, sidecar)
    seconds = time.perf_counter() - t0
    logger.info("wrote %s (%.1f MiB) and %s in %.1f s", engine_path, len(data) / 2**20, side.name, seconds)
    return EngineResult(engine_path, side, sidecar, plan, seconds)


BuildOutcome = Union[EngineResult, SkipReason]


def maybe_build_engine(onnx_path: Path, precision: str = "fp32", options: BuildOptions = BuildOptions()) -> BuildOutcome:
    """What ``stpm-export`` calls: an :class:`EngineResult`, or a :class:`SkipReason` when this
    machine has no TensorRT or no CUDA GPU. A failing build (TensorRT and GPU present) raises."""
    try:
        trt = import_tensorrt()
    except StpmError as e:
        return SkipReason(str(e))
    from stpm_edge.tensorrt.cuda import probe_gpu  # noqa: PLC0415

    gpu, why = probe_gpu(0)
    if gpu is None:
        return SkipReason(why)
    return build_engine(onnx_path, precision, options, trt=trt, gpu=gpu)
