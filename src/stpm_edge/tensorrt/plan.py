"""Every decision of a TensorRT build as a pure function of what the installed TensorRT has.

:class:`TrtCaps` says what a ``tensorrt`` module offers, found by feature checks (names of
enum members and class attributes, never numeric flag bits, whose values changed between
releases): :func:`stpm_edge.tensorrt.api.caps_from_module` builds it from the imported
module, tests build it by hand for 8.5, 8.6, 10.3, 10.x and 11. :func:`plan_build` turns
caps + precision + options + the ONNX files that exist into a :class:`BuildPlan`; the builder
only carries the plan out.

The paths per TensorRT release (and the documentation each follows):

* **8.5 / 8.6** (JetPack 5.1 / 6.0): ``EXPLICIT_BATCH`` network (required before 10: the
  8.x ``NetworkDefinitionCreationFlag`` docs). FP16: ``BuilderFlag.FP16`` on ``model.onnx``
  with ``OBEY_PRECISION_CONSTRAINTS`` and every layer outside the trunks (preprocessing,
  STPM head, normalisation) pinned to FP32 (``ILayer.precision`` / ``set_output_type``).
  INT8: the Q/DQ graph ``model.int8.onnx`` with ``BuilderFlag.INT8`` (explicit quantization),
  or the classic calibrator (``IInt8EntropyCalibrator2`` / ``IInt8MinMaxCalibrator``) on
  ``model.onnx`` with the same FP32 pinning of the head.
* **10.x** (JetPack 6.1/6.2 ship 10.3): ``EXPLICIT_BATCH`` is "[DEPRECATED] Ignored because
  networks are always explicit batch in TensorRT 10.0", so it is not set.
  ``STRONGLY_TYPED`` exists: FP16 is a strongly typed build of ``model.fp16.onnx`` (casts in
  the graph decide the types; "Setting layer precision and layer output types is not
  allowed") when that file exists, else the 8.x flag path; INT8 Q/DQ is a strongly typed
  build of ``model.int8.onnx``; the classic calibrator still works but is deprecated since
  10.1 ("IInt8Calibrator ... Deprecated in TensorRT 10.1. Superseded by explicit
  quantization"); from 10.12 the weak-typing APIs as a whole are deprecated (10.12.0 release
  notes), which the plan notes whenever it sets FP16/INT8 flags.
* **11.x**: the migration guide "Removed Python APIs and Replacements" removes
  ``BuilderFlag.FP16/INT8/OBEY_PRECISION_CONSTRAINTS/PREFER_PRECISION_CONSTRAINTS``,
  ``IBuilderConfig.int8_calibrator`` and ``set_calibration_profile``; ``EXPLICIT_BATCH`` is
  gone and ``STRONGLY_TYPED`` is "[DEPRECATED] ... Strongly typed mode is always enabled ...
  ignored" (11.0 Python API, Builder page). So no network flags, no precision flags:
  ``model.fp16.onnx`` / ``model.int8.onnx`` are required, the calibrator is a clear error.
* **DLA** (any release): FP16/INT8 only, GPU fallback on by default, a fixed batch only
  ("DLA does not support dynamic dimensions", DLA Supported Layers and Restrictions), and the
  classic calibrator only as ``IInt8EntropyCalibrator2`` ("the required calibrator for DLA").

Sources: docs.nvidia.com/deeplearning/tensorrt ``api/python_api/infer/Core/Builder.html``
(8.2.5, 8.4.3, 10.x, 11.0.0 archives), ``.../Core/BuilderConfig.html``, ``api/migration/
tensorrt-10x-to-11x-python-api-reference.html`` (11.4); Polygraphy ``backend/trt/config.py``
(TensorRT OSS) for the precision-constraint and calibration-profile usage.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stpm_edge.errors import StpmError
from stpm_edge.artifact import InputSpec
from stpm_edge.tensorrt.engine_meta import PRECISIONS, TrtVersion

FP16_MODES = ("auto", "typed", "flags")
INT8_MODES = ("auto", "qdq", "calibrator")
CALIB_METHODS = ("minmax", "entropy")
CALIBRATOR_CLASSES = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}
FLOAT_TYPES = ("FLOAT", "HALF", "BF16")
INDEX_TYPES = ("INT32", "INT64")
SKIP_LAYER_TYPES = ("CONSTANT", "SHAPE", "ASSERTION")
MiB = 1 << 20


@dataclass(frozen=True)
class TrtCaps:
    """What a TensorRT module offers (feature checks, see the module docstring)."""

    version: TrtVersion
    network_flags: frozenset[str] = frozenset()  # NetworkDefinitionCreationFlag members
    builder_flags: frozenset[str] = frozenset()  # BuilderFlag members
    calibrators: frozenset[str] = frozenset()  # IInt8*Calibrator classes present
    memory_pool: bool = True  # IBuilderConfig.set_memory_pool_limit + MemoryPoolType.WORKSPACE
    optimization_level: bool = False  # IBuilderConfig.builder_optimization_level (8.6+)
    timing_cache: bool = True  # IBuilderConfig.create_timing_cache / set_timing_cache
    calibration_profile: bool = False  # IBuilderConfig.set_calibration_profile

    @property
    def weak_typing(self) -> bool:
        """Precision builder flags exist (8.x-10.x); without them every network is strongly typed (11)."""
        return "FP16" in self.builder_flags and "INT8" in self.builder_flags

    @property
    def strongly_typed(self) -> bool:
        """A strongly typed build is possible (flag present, or always on)."""
        return "STRONGLY_TYPED" in self.network_flags or not self.weak_typing


@dataclass(frozen=True)
class BuildOptions:
    """Builder options (the ``stpm-export`` flags map onto these one to one).

    ``timing_cache``: ``True`` = the default file beside the engine, ``False`` = none, or a path.
    ``min/opt/max_batch`` apply to dynamic-batch models only. ``calib_*`` feed the classic
    INT8 calibrator (8.5-10): a folder of good images and/or a cache file.
    """

    workspace_mib: int | None = 1024
    timing_cache: bool | Path = True
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    optimization_level: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    tf32: bool = False
    fp16_mode: str = "auto"
    int8_mode: str = "auto"
    calib_dir: Path | None = None
    calib_count: int = 128
    calib_batch: int = 8
    calib_method: str = "minmax"  # IInt8MinMaxCalibrator; the Q/DQ path's default too (see calibration.quantize)
    calib_cache: Path | None = None
    calib_seed: int = 0
    out_path: Path | None = None
    verbose: bool = False

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ProfileShapes:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class BuildPlan:
    """What the builder does, decided up front."""

    precision: str
    onnx_path: Path
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    clear_flags: tuple[str, ...]
    strongly_typed: bool
    pin_head_fp32: bool
    int8_method: str | None  # "qdq" | "calibrator" | None
    calibrator_class: str | None
    profile: ProfileShapes | None
    calib_profile: ProfileShapes | None
    workspace_bytes: int | None
    optimization_level: int | None
    dla_core: int | None
    calib_cache: Path | None = None
    notes: tuple[str, ...] = field(default=())


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise StpmError(f"{name}: expected a positive integer, got {value!r}")


def profile_shapes(spec: InputSpec, min_batch: int | None = None, opt_batch: int | None = None,
                   max_batch: int | None = None) -> ProfileShapes | None:
    """The optimization profile for a dynamic-batch input (None for a fixed batch).

    Defaults: min 1, max 8, opt = max (the batch the tactics are timed for). A fixed-batch
    model refuses batch options that disagree with its batch.
    """
    for name, v in (("--min-batch", min_batch), ("--opt-batch", opt_batch), ("--max-batch", max_batch)):
        _positive(name, v)
    if spec.batch is not None:
        given = {v for v in (min_batch, opt_batch, max_batch) if v is not None}
        if given - {spec.batch}:
            raise StpmError(f"--min-batch/--opt-batch/--max-batch apply to dynamic-batch models; this model has a fixed batch "
                            f"of {spec.batch} (export with --dynamic-batch for a batch range)")
        return None
    lo = min_batch or 1
    hi = max_batch or max(8, lo)
    opt = opt_batch or hi
    if not lo <= opt <= hi:
        raise StpmError(f"batch profile: expected min <= opt <= max, got {lo} / {opt} / {hi}")
    shape = spec.shape  # (batch) -> full input shape
    return ProfileShapes(tuple(shape(lo)), tuple(shape(opt)), tuple(shape(hi)))  # type: ignore[arg-type]


def calibration_profile(spec: InputSpec, batch: int) -> ProfileShapes:
    """Calibration runs at the profile's opt shape, so min = opt = max = the calibration batch."""
    shape = tuple(spec.shape(batch))
    return ProfileShapes(shape, shape, shape)  # type: ignore[arg-type]


def network_flags(caps: TrtCaps, strongly_typed: bool) -> tuple[str, ...]:
    """EXPLICIT_BATCH before TensorRT 10 only; STRONGLY_TYPED when asked for and not implied (11)."""
    flags = []
    if "EXPLICIT_BATCH" in caps.network_flags and caps.version.major < 10:
        flags.append("EXPLICIT_BATCH")
    if strongly_typed and caps.weak_typing:
        if "STRONGLY_TYPED" not in caps.network_flags:
            raise StpmError(f"TensorRT {caps.version} has no strongly typed networks (TensorRT 10+)")
        flags.append("STRONGLY_TYPED")
    return tuple(flags)


def keep_fp32(layer_name: str, layer_type: str, input_types: list[str], output_types: list[str],
              regions: tuple[str, ...]) -> bool:
    """Whether the flag-based FP16/INT8 builds pin this layer to FP32.

    Every floating-point layer outside the method's low-precision regions (``regions``: the
    node-name scopes of the model's metadata, ``lowp.fp16``) is pinned: heads square, sum and
    divide feature vectors (L2 normalisation overflows FP16) and multiply small distances
    (underflow); preprocessing and normalisation are cheap.
    Left alone: constants and shape layers, layers with a non-float output (shape arithmetic,
    bools) and layers reading 8-bit or bool tensors (the uint8 frame cast) -- their precision
    is not a floating-point choice. Int32/int64 inputs (indices, Resize sizes) are allowed.
    """
    if layer_type in SKIP_LAYER_TYPES:
        return False
    if not output_types or any(t not in FLOAT_TYPES for t in output_types):
        return False
    if any(t not in FLOAT_TYPES + INDEX_TYPES for t in input_types):
        return False
    return not in_region(layer_name, regions)


def in_region(layer_name: str, regions: tuple[str, ...]) -> bool:
    """Whether a TensorRT layer (named after its ONNX node) lies in a low-precision region."""
    return any(layer_name.startswith(p) for p in regions)


def _workspace(options: BuildOptions) -> int | None:
    _positive("--workspace", options.workspace_mib)
    return None if options.workspace_mib is None else int(options.workspace_mib) * MiB


def plan_build(caps: TrtCaps, precision: str, options: BuildOptions, spec: InputSpec,
               onnx_files: Mapping[str, Path]) -> BuildPlan:
    """Decide the whole build. ``onnx_files``: precision → existing file (``fp32`` is required).

    One-line StpmError for a combination this TensorRT cannot build.
    """
    if precision not in PRECISIONS:
        raise StpmError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if options.fp16_mode not in FP16_MODES:
        raise StpmError(f"BuildOptions.fp16_mode {options.fp16_mode!r}: expected one of {', '.join(FP16_MODES)}")
    if options.int8_mode not in INT8_MODES:
        raise StpmError(f"--trt-int8 {options.int8_mode!r}: expected one of {', '.join(INT8_MODES)}")
    v = caps.version
    notes: list[str] = []
    builder_flags: list[str] = []
    clear: list[str] = []
    typed = False
    pin = False
    int8_method = None
    calibrator = None
    calib_profile = None
    calib_cache_path = None
    source = onnx_files.get("fp32")

    if precision == "fp16":
        have_typed_file = "fp16" in onnx_files
        mode = options.fp16_mode
        if mode == "auto":
            if caps.strongly_typed and v.major >= 10 and have_typed_file:
                mode = "typed"
            elif caps.weak_typing:
                mode = "flags"
                if v.major >= 10:
                    notes.append("no model.fp16.onnx: FP16 through builder flags with the head pinned to FP32")
            else:
                raise StpmError(f"TensorRT {v} builds FP16 only from the mixed-precision graph model.fp16.onnx "
                                f"(strongly typed; no FP16 builder flag); export it with stpm-export MODEL.pt --fp16")
        if mode == "typed":
            if not caps.strongly_typed:
                raise StpmError(f"TensorRT {v} has no strongly typed networks (10+); use fp16_mode=\"flags\" (the FP16 builder flag)")
            if not have_typed_file:
                raise StpmError("no model.fp16.onnx next to model.onnx; export it with stpm-export MODEL.pt --fp16")
            typed, source = True, onnx_files["fp16"]
        else:  # flags
            if not caps.weak_typing or "OBEY_PRECISION_CONSTRAINTS" not in caps.builder_flags:
                raise StpmError(f"TensorRT {v} has no FP16 builder flag or precision constraints "
                                f"(removed in 11); use model.fp16.onnx (a strongly typed build, fp16_mode=\"typed\")")
            builder_flags += ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
            pin = True
    elif precision == "int8":
        mode = options.int8_mode
        cache = default_calib_cache(onnx_files, options)
        if mode == "auto":
            if "int8" in onnx_files:
                mode = "qdq"
            elif options.calib_dir is not None or (cache is not None and cache.is_file()):
                mode = "calibrator"
            else:
                raise StpmError("no model.int8.onnx next to model.onnx and no calibration images: export the Q/DQ "
                                "model with stpm-export MODEL.pt --int8 --calib GOOD_IMAGES")
        if mode == "qdq":
            if "int8" not in onnx_files:
                raise StpmError("no model.int8.onnx next to model.onnx; export it with stpm-export MODEL.pt --int8")
            source, int8_method = onnx_files["int8"], "qdq"
            if caps.strongly_typed and (v.major >= 10 or not caps.weak_typing):
                typed = True  # Q/DQ decide INT8, the graph's types decide the rest
            else:
                builder_flags.append("INT8")  # 8.x: explicit quantization in a weakly typed network
        else:  # calibrator
            if options.calib_method not in CALIB_METHODS:
                raise StpmError(f"--calib-method {options.calib_method!r}: TensorRT's calibrators are "
                                f"{' and '.join(CALIB_METHODS)}")
            cls = CALIBRATOR_CLASSES[options.calib_method]
            if not caps.weak_typing or cls not in caps.calibrators:
                raise StpmError(f"TensorRT {v} has no implicit INT8 calibration ({cls} was removed in 11); "
                                f"use the Q/DQ model: stpm-export MODEL.pt --int8 writes model.int8.onnx")
            if options.calib_dir is None and (cache is None or not cache.is_file()):
                raise StpmError("INT8 calibration needs --calib DIR (good images) or an existing calib.cache beside the model")
            _positive("--calib-count", options.calib_count)
            _positive("BuildOptions.calib_batch", options.calib_batch)
            int8_method, calibrator, calib_cache_path = "calibrator", cls, cache
            builder_flags += ["INT8", "OBEY_PRECISION_CONSTRAINTS"]
            pin = True
            if spec.batch is not None and options.calib_batch != spec.batch:
                notes.append(f"calibration batch {spec.batch} (the model's fixed batch)")
            calib_batch = spec.batch or options.calib_batch
            if spec.batch is None:
                if not caps.calibration_profile:
                    raise StpmError(f"TensorRT {v} cannot calibrate a dynamic-batch network (no calibration profile)")
                calib_profile = calibration_profile(spec, calib_batch)
            if v.major >= 10:
                notes.append("implicit INT8 calibration is deprecated since TensorRT 10.1 (removed in 11)")

    if v.major == 10 and v.minor >= 12 and {"FP16", "INT8"} & set(builder_flags):
        notes.append("weak typing (FP16/INT8 builder flags) is deprecated since TensorRT 10.12 and removed in 11; "
                     "prefer model.fp16.onnx / model.int8.onnx")

    if not options.tf32 and "TF32" in caps.builder_flags:
        clear.append("TF32")  # on by default; FP32 results must match ONNX Runtime within 1e-3

    if options.dla_core is not None:
        if isinstance(options.dla_core, bool) or not isinstance(options.dla_core, int) or options.dla_core < 0:
            raise StpmError(f"--dla-core: expected a core number >= 0, got {options.dla_core!r}")
        if precision == "fp32":
            raise StpmError("DLA runs FP16 and INT8 only; use --dla-core with --fp16 or --int8")
        if spec.batch is None:
            # "DLA does not support dynamic dimensions ... The runtime dimensions must be the same
            # as the dimensions used for building" (DLA Supported Layers and Restrictions).
            raise StpmError("DLA needs a fixed batch (it supports no dynamic dimensions); export the model "
                            "without --dynamic-batch to use --dla-core")
        if int8_method == "calibrator" and calibrator != CALIBRATOR_CLASSES["entropy"]:
            # "IInt8EntropyCalibrator2 ... This is the required calibrator for DLA, as it supports
            # per activation tensor scaling" (NvInfer.h, 8.4-10.x C++ API reference).
            raise StpmError(f"DLA requires TensorRT's entropy calibrator (IInt8EntropyCalibrator2), not {calibrator}: "
                            f"pass --calib-method entropy, or build from the Q/DQ model.int8.onnx")
        if options.gpu_fallback:
            if "GPU_FALLBACK" not in caps.builder_flags:
                raise StpmError(f"TensorRT {v} has no GPU fallback for DLA")
            builder_flags.append("GPU_FALLBACK")

    level = options.optimization_level
    if level is not None:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 5:
            raise StpmError(f"--opt-level: expected 0..5, got {level!r}")
        if not caps.optimization_level:
            notes.append(f"builder optimization level ignored: TensorRT {v} has none (8.6+)")
            level = None

    if source is None:
        raise StpmError(f"the {precision.upper()} build reads the FP32 model.onnx, which is missing; "
                        f"export it with stpm-export MODEL.pt")
    return BuildPlan(
        precision=precision, onnx_path=Path(source), network_flags=network_flags(caps, typed),
        builder_flags=tuple(builder_flags), clear_flags=tuple(clear), strongly_typed=typed or not caps.weak_typing,
        pin_head_fp32=pin, int8_method=int8_method, calibrator_class=calibrator,
        profile=profile_shapes(spec, options.min_batch, options.opt_batch, options.max_batch),
        calib_profile=calib_profile, workspace_bytes=_workspace(options), optimization_level=level,
        dla_core=options.dla_core, calib_cache=calib_cache_path, notes=tuple(notes),
    )


def default_calib_cache(onnx_files: Mapping[str, Path], options: BuildOptions) -> Path | None:
    """``BuildOptions.calib_cache``, else ``calib.cache`` beside model.onnx (where ``stpm-export --int8`` keeps it)."""
    if options.calib_cache is not None:
        return Path(options.calib_cache)
    base = onnx_files.get("fp32") or next(iter(onnx_files.values()), None)
    return None if base is None else Path(base).parent / "calib.cache"


def default_timing_cache(engine_dir: Path, trt_version: str, compute_capability: str) -> Path:
    """One timing cache per TensorRT release and GPU architecture, shared by every build in a folder.

    (A timing cache is only valid for the TensorRT build and device that wrote it.)
    """
    cc = str(compute_capability).replace(".", "")
    return Path(engine_dir) / f"timing-trt{trt_version}-sm{cc}.cache"
