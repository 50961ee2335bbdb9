"""The TensorRT engine builder: ``model.onnx`` (+ ``model.fp16.onnx`` / ``model.int8.onnx``) →
``model.<precision>.engine`` + ``model.<precision>.engine.json`` (see
:mod:`stpm_edge.tensorrt.engine_meta` for the sidecar).

This is the only module that builds with ``tensorrt``. Every choice is made up front by
:func:`stpm_edge.tensorrt.plan.plan_build` from :func:`caps_from_module` (feature checks on
the imported module); this module carries the plan out in the documented order:

``Builder(logger)`` → ``create_network(flags)`` (flag bits computed from the enum members the
plan names) → ``OnnxParser(network, logger).parse_from_file`` → ``create_builder_config`` →
``set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)`` → ``set_flag`` / ``clear_flag`` →
``builder_optimization_level`` (8.6+) → FP32 pinning of non-trunk layers (``layer.precision``,
``set_output_type``) → ``create_optimization_profile`` / ``set_shape`` /
``add_optimization_profile`` → ``default_device_type = DeviceType.DLA`` / ``DLA_core`` →
``int8_calibrator`` + ``set_calibration_profile`` → ``create_timing_cache`` /
``set_timing_cache(cache, ignore_mismatch=False)`` → ``build_serialized_network`` →
``get_timing_cache().serialize()``.

Sources (API per release): TensorRT Python API reference, ``infer/Core/Builder.html``,
``BuilderConfig.html``, ``TimingCache.html``, ``Int8/pyInt8.html`` (8.2.5/8.4.3/8.6.1 archives,
10.x, 11.0.0); "Removed Python APIs and Replacements" (10.x → 11.x migration guide); the
calibrator protocol (``get_batch_size``/``get_batch(names)`` returning device pointers or None,
``read_calibration_cache``/``write_calibration_cache``, explicit ``Base.__init__(self)`` in the
trampoline subclass) as NVIDIA's ``samples/python/efficientnet/build_engine.py`` and Polygraphy's
``backend/trt/calibrator.py`` use it; ``ILogger`` subclassing as in Polygraphy's
``backend/trt/util.py``; calibration with dynamic shapes uses a separate calibration profile
whose opt shape is the calibration batch (TensorRT developer guide, "INT8 Calibration with
Dynamic Shapes"; NVIDIA/TensorRT issues #1116, #2561).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from stpm_edge.data.io import atomic_path
from stpm_edge.errors import StpmError, first_line
from stpm_edge.tensorrt.plan import (CALIBRATOR_CLASSES, BuildOptions, BuildPlan, ProfileShapes, TrtCaps,
                                     default_timing_cache, is_trunk_layer, keep_fp32, plan_build)
from stpm_edge.runtime.backends.base import ANOMALY_MAP, SCORE, InputSpec, parse_metadata
from stpm_edge.tensorrt.engine_meta import (ENGINE_FORMAT, ENGINE_FORMAT_VERSION, PRECISIONS, GpuInfo,
                                            engine_path_for, onnx_path_for, parse_trt_version,
                                            sidecar_path, split_model_name)
from stpm_edge.tensorrt.runner import enum_name, import_tensorrt, make_logger

logger = logging.getLogger(__name__)

CALIB_ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}

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


def _members(enum: Any) -> frozenset[str]:
    members = getattr(enum, "__members__", None)
    return frozenset(members) if members else frozenset()


def caps_from_module(trt: Any) -> TrtCaps:
    """What the imported TensorRT offers, by feature checks (names, never flag values)."""
    config_cls = getattr(trt, "IBuilderConfig", None)
    pool = getattr(trt, "MemoryPoolType", None)
    return TrtCaps(
        version=parse_trt_version(trt.__version__),
        network_flags=_members(getattr(trt, "NetworkDefinitionCreationFlag", None)),
        builder_flags=_members(getattr(trt, "BuilderFlag", None)),
        calibrators=frozenset(n for n in CALIBRATOR_CLASSES.values() if hasattr(trt, n)),
        memory_pool=pool is not None and hasattr(pool, "WORKSPACE") and hasattr(config_cls, "set_memory_pool_limit"),
        optimization_level=hasattr(config_cls, "builder_optimization_level"),
        timing_cache=hasattr(config_cls, "create_timing_cache") and hasattr(config_cls, "set_timing_cache"),
        calibration_profile=hasattr(config_cls, "set_calibration_profile"),
    )


def read_onnx_stpm_metadata(path: Path) -> dict:
    """The ``stpm_edge`` metadata of an exported ONNX file (``onnx`` only: no torch on the build machine)."""
    import onnx  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise StpmError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors of many kinds
        raise StpmError(f"{path}: not a readable ONNX file ({first_line(e)})") from None
    return parse_metadata({p.key: p.value for p in model.metadata_props}, path)


def onnx_files_beside(model_path: Path) -> dict[str, Path]:
    """precision → the existing ``model.onnx`` / ``model.fp16.onnx`` / ``model.int8.onnx`` beside ``model_path``."""
    base, _ = split_model_name(Path(model_path))
    found = {}
    for p in PRECISIONS:
        f = onnx_path_for(base, p)
        if f.is_file():
            found[p] = f
    return found


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_calibrator(trt: Any, class_name: str, batches: Any, cache_path: Path | None, cuda: Any, *,
                    read_cache: bool = True) -> Any:
    """A ``trt.<class_name>`` (IInt8EntropyCalibrator2 / IInt8MinMaxCalibrator) fed by ``batches``.

    ``batches``: a :class:`stpm_edge.calibration.reader.CalibrationFrames` (or None to use the
    cache only). Each batch is copied into one device buffer whose pointer ``get_batch``
    returns. The cache goes through :mod:`stpm_edge.tensorrt.calibration_cache` (validated, atomic).
    Errors inside callbacks (which TensorRT calls from C++) are kept in ``.error`` and
    re-raised by the builder after ``build_serialized_network`` returns.
    """
    from stpm_edge.tensorrt.calibration_cache import read_cache_bytes, write_cache_bytes  # noqa: PLC0415

    base = getattr(trt, class_name)

    class StpmCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # required for pybind trampolines
            self.error: BaseException | None = None
            self.batches_used = 0
            self.batch_size = int(getattr(batches, "batch_size", 1) or 1)
            self._it = iter(batches) if batches is not None else iter(())
            self._host: np.ndarray | None = None
            self._dev: int | None = None
            self._stream: Any = None

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names: Any) -> Any:
            try:
                batch = next(self._it, None)
                if batch is None:
                    return None
                with cuda.activate():
                    if self._dev is None:
                        self._host = cuda.pinned_empty(tuple(batch.shape), batch.dtype)
                        self._dev = cuda.malloc(self._host.nbytes)
                        self._stream = cuda.stream_create()
                    np.copyto(self._host, batch)
                    cuda.htod_async(self._dev, self._host, self._stream)
                    cuda.synchronize(self._stream)
                self.batches_used += 1
                return [int(self._dev)]
            except BaseException as e:  # noqa: BLE001 - reported after the build
                self.error = e
                return None

        def read_calibration_cache(self) -> Any:
            try:
                return read_cache_bytes(cache_path) if cache_path is not None and read_cache else None
            except BaseException as e:  # noqa: BLE001
                self.error = e
                return None

        def write_calibration_cache(self, cache: Any) -> None:
            try:
                if cache_path is not None:
                    write_cache_bytes(cache_path, bytes(cache))
            except BaseException as e:  # noqa: BLE001
                self.error = e

        def release(self) -> None:
            with cuda.activate():
                if self._dev is not None:
                    cuda.free(self._dev)
                if self._host is not None:
                    cuda.pinned_free(self._host)
                if self._stream is not None:
                    cuda.stream_destroy(self._stream)
            self._dev = self._host = self._stream = None

    return StpmCalibrator()


def _check_cache(cache_path: Path, trt_version: str, method: str, have_images: bool) -> bool:
    """Validate an existing calibration cache before the build; True when TensorRT should read it.

    TensorRT ignores a cache written by another release or calibrator and calibrates again,
    which needs images: without ``--calib-dir`` that is a clear error here instead.
    """
    from stpm_edge.tensorrt.calibration_cache import cache_header, read_cache  # noqa: PLC0415

    if not Path(cache_path).is_file():
        if not have_images:
            raise StpmError(f"{cache_path}: no calibration cache; pass --calib-dir with good images")
        return False
    header = read_cache(cache_path).header  # one-line StpmError when malformed
    want = cache_header(trt_version, CALIB_ALGORITHMS[method])
    if header == want:
        logger.info("%s: using the calibration cache (%s)", cache_path, header)
        return True
    if have_images:
        logger.info("%s: cache header %s is not %s; calibrating again", cache_path, header, want)
        return False
    raise StpmError(f"{cache_path}: calibration cache header {header!r} is not {want!r} (another TensorRT "
                   f"release or calibrator); pass --calib-dir with good images to calibrate again")


def _flag_bits(enum: Any, names: tuple[str, ...]) -> int:
    """``1 << int(member)`` per name: values differ between releases (STRONGLY_TYPED is 1 in 10, 0 in 11)."""
    bits = 0
    for n in names:
        bits |= 1 << int(getattr(enum, n))
    return bits


def _parse(trt: Any, network: Any, path: Path, log: Any, version: str) -> Any:
    parser = trt.OnnxParser(network, log)
    if hasattr(parser, "parse_from_file"):
        ok = parser.parse_from_file(str(path))
    else:
        ok = parser.parse(path.read_bytes())
    if not ok:
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        detail = " ".join(errs[0].split()) if errs else log.last_error()
        raise StpmError(f"{path}: TensorRT {version} could not parse the graph ({detail[:300]})")
    return parser


def _check_network_io(network: Any, spec: InputSpec, path: Path) -> None:
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    outputs = sorted(network.get_output(i).name for i in range(network.num_outputs))
    if inputs != [spec.name] or outputs != sorted([ANOMALY_MAP, SCORE]):
        raise StpmError(f"{path}: not an stpm-edge graph (inputs {inputs}, outputs {outputs}; expected "
                        f"[{spec.name!r}] and [{ANOMALY_MAP!r}, {SCORE!r}])")


def pin_head_fp32(trt: Any, network: Any) -> tuple[int, int]:
    """Pin every non-trunk float layer to FP32 (see :func:`keep_fp32`); returns (pinned, trunk layers)."""
    pinned = trunk = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        in_types = [enum_name(t.dtype) for t in ins if t is not None]
        out_types = [enum_name(t.dtype) for t in outs if t is not None]
        if keep_fp32(layer.name, enum_name(layer.type), in_types, out_types):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
        elif is_trunk_layer(layer.name):
            trunk += 1
    return pinned, trunk


def _profile(builder: Any, name: str, shapes: ProfileShapes) -> Any:
    profile = builder.create_optimization_profile()
    profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
    return profile


def _timing_cache(config: Any, path: Path | None) -> Any:
    """Load ``path`` into the config (a fresh cache when missing or from another TensorRT/GPU)."""
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = None
    try:
        cache = config.create_timing_cache(data)
        ok = cache is not None and config.set_timing_cache(cache, False)
    except Exception as e:  # noqa: BLE001 - a corrupt cache must not stop the build
        logger.warning("%s: timing cache not usable (%s); starting a new one", path, first_line(e))
        ok = False
    if not ok:
        if data:
            logger.warning("%s: timing cache from another TensorRT build or GPU; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


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

    log = make_logger(trt, options.verbose)
    builder = trt.Builder(log)
    network = builder.create_network(_flag_bits(getattr(trt, "NetworkDefinitionCreationFlag", None),
                                                plan.network_flags))
    parser = _parse(trt, network, plan.onnx_path, log, version)  # owns the weights until the build is done
    _check_network_io(network, spec, plan.onnx_path)

    config = builder.create_builder_config()
    if plan.workspace_bytes is not None:
        if caps.memory_pool:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
        elif hasattr(config, "max_workspace_size"):
            config.max_workspace_size = plan.workspace_bytes
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    if plan.optimization_level is not None:
        config.builder_optimization_level = plan.optimization_level
    pinned = trunk = 0
    if plan.pin_head_fp32:
        pinned, trunk = pin_head_fp32(trt, network)
        if trunk == 0:
            logger.warning("no trunk layers found by name (%s...): the %s build runs every layer in FP32",
                           "/trunks/", precision)
    if plan.profile is not None and config.add_optimization_profile(_profile(builder, spec.name, plan.profile)) < 0:
        raise StpmError(f"TensorRT rejected the batch profile {plan.profile.to_dict()} ({log.last_error()})")
    if plan.dla_core is not None:
        cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
        if plan.dla_core >= cores:
            raise StpmError(f"--dla-core {plan.dla_core}: this device has {cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core

    calibrator = cuda = None
    calib_cache = None
    if plan.int8_method == "calibrator":
        from stpm_edge.calibration.reader import CalibrationFrames  # noqa: PLC0415
        from stpm_edge.tensorrt.cuda import load_cuda  # noqa: PLC0415

        calib_cache = plan.calib_cache
        reuse = _check_cache(calib_cache, version, options.calib_method, options.calib_dir is not None)
        batch = spec.batch or options.calib_batch
        frames = (CalibrationFrames(Path(options.calib_dir), spec, metadata, count=options.calib_count,
                                    seed=options.calib_seed, batch_size=batch)
                  if options.calib_dir is not None else None)
        cuda = load_cuda(gpu.index)
        calibrator = make_calibrator(trt, plan.calibrator_class, frames, calib_cache, cuda, read_cache=reuse)
        config.int8_calibrator = calibrator
        if plan.calib_profile is not None:
            config.set_calibration_profile(_profile(builder, spec.name, plan.calib_profile))

    cache_path: Path | None = None
    if caps.timing_cache and options.timing_cache is not False:
        cache_path = (Path(options.timing_cache) if not isinstance(options.timing_cache, bool)
                      else default_timing_cache(engine_path.parent, version, gpu.compute_capability))
        _timing_cache(config, cache_path)

    try:
        serialized = builder.build_serialized_network(network, config)
    except Exception as e:  # noqa: BLE001 - some releases raise instead of returning None
        raise StpmError(f"TensorRT {version} could not build {engine_path.name} ({first_line(e)})") from None
    finally:
        del parser
        if calibrator is not None:
            calibrator.release()
    if calibrator is not None and calibrator.error is not None:
        err = calibrator.error
        raise StpmError(f"INT8 calibration failed: {err}") if not isinstance(err, StpmError) else err
    if serialized is None:
        raise StpmError(f"TensorRT {version} could not build {engine_path.name} ({log.last_error()})")
    data = bytes(serialized)

    if cache_path is not None:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))

    source_bytes = plan.onnx_path.read_bytes()
    sidecar = dict(metadata)
    sidecar["precision"] = precision
    sidecar["engine"] = {
        "format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION,
        "file": engine_path.name, "sha256": _sha256(data), "bytes": len(data),
        "tensorrt": version, "gpu": gpu.to_dict(),
        "source": {"file": plan.onnx_path.name, "sha256": _sha256(source_bytes)},
        "strongly_typed": plan.strongly_typed, "network_flags": list(plan.network_flags),
        "builder_flags": list(plan.builder_flags), "pinned_fp32_layers": pinned, "trunk_layers": trunk,
        "int8_method": plan.int8_method, "calibrator": plan.calibrator_class,
        "calibration_batches": getattr(calibrator, "batches_used", None),
        "calibration_cache": str(calib_cache) if calib_cache else None,
        "dla_core": plan.dla_core, "optimization_level": plan.optimization_level,
        "workspace_bytes": plan.workspace_bytes,
        "profile": plan.profile.to_dict() if plan.profile else None,
        "timing_cache": str(cache_path) if cache_path else None,
        "options": options.to_dict(), "notes": list(plan.notes),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    side = sidecar_path(engine_path)
    with atomic_path(engine_path) as tmp_engine, atomic_path(side) as tmp_side:
        tmp_engine.write_bytes(data)
        tmp_side.write_text(json.dumps(sidecar, indent=2) + "\n")
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
