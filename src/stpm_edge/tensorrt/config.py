"""Configure a build: network, parser, builder config, profiles, DLA and the timing cache.

The first of the builder's three steps (configure → attach calibrator → write artifacts; the
split Polygraphy makes between ``backend/trt/loader.py`` and ``config.py``). Carries a
:class:`~stpm_edge.tensorrt.plan.BuildPlan` out in the documented order:

``create_network(flags)`` (flag bits computed from the enum members the plan names) →
``OnnxParser(network, logger).parse_from_file`` → ``create_builder_config`` →
``set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)`` → ``set_flag`` / ``clear_flag`` →
``builder_optimization_level`` (8.6+) → FP32 pinning of non-trunk layers (``layer.precision``,
``set_output_type``) → ``create_optimization_profile`` / ``set_shape`` /
``add_optimization_profile`` → ``default_device_type = DeviceType.DLA`` / ``DLA_core`` →
``create_timing_cache`` / ``set_timing_cache(cache, ignore_mismatch=False)``.

Sources: TensorRT Python API reference, ``infer/Core/Builder.html``, ``BuilderConfig.html``,
``TimingCache.html`` (8.2.5/8.4.3/8.6.1 archives, 10.x, 11.0.0).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stpm_edge.errors import StpmError, first_line
from stpm_edge.artifact import ANOMALY_MAP, SCORE, InputSpec
from stpm_edge.tensorrt.api import enum_name
from stpm_edge.tensorrt.engine_meta import GpuInfo
from stpm_edge.tensorrt.plan import (BuildOptions, BuildPlan, ProfileShapes, TrtCaps, default_timing_cache,
                                     in_region, keep_fp32)

logger = logging.getLogger(__name__)


@dataclass
class Configured:
    """A builder with its network, parser (owns the weights until the build is done) and config."""

    builder: Any
    network: Any
    parser: Any
    config: Any
    pinned_fp32_layers: int = 0
    trunk_layers: int = 0
    timing_cache_path: Path | None = None


def flag_bits(enum: Any, names: tuple[str, ...]) -> int:
    """``1 << int(member)`` per name: values differ between releases (STRONGLY_TYPED is 1 in 10, 0 in 11)."""
    bits = 0
    for n in names:
        bits |= 1 << int(getattr(enum, n))
    return bits


def parse_onnx(trt: Any, network: Any, path: Path, log: Any, version: str) -> Any:
    mark = log.mark()
    parser = trt.OnnxParser(network, log)
    if hasattr(parser, "parse_from_file"):
        ok = parser.parse_from_file(str(path))
    else:
        ok = parser.parse(path.read_bytes())
    if not ok:
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        detail = " ".join(errs[0].split()) if errs else log.last_error(mark)
        raise StpmError(f"{path}: TensorRT {version} could not parse the graph ({detail[:300]})")
    return parser


def check_network_io(network: Any, spec: InputSpec, path: Path) -> None:
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    outputs = sorted(network.get_output(i).name for i in range(network.num_outputs))
    if inputs != [spec.name] or outputs != sorted([ANOMALY_MAP, SCORE]):
        raise StpmError(f"{path}: not an stpm-edge graph (inputs {inputs}, outputs {outputs}; expected "
                        f"[{spec.name!r}] and [{ANOMALY_MAP!r}, {SCORE!r}])")


def pin_head_fp32(trt: Any, network: Any, regions: tuple[str, ...]) -> tuple[int, int]:
    """Pin every float layer outside the low-precision ``regions`` to FP32 (see :func:`keep_fp32`);
    returns (pinned, layers in the regions)."""
    pinned = trunk = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        ins = [layer.get_input(j) for j in range(layer.num_inputs)]
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        in_types = [enum_name(t.dtype) for t in ins if t is not None]
        out_types = [enum_name(t.dtype) for t in outs if t is not None]
        if keep_fp32(layer.name, enum_name(layer.type), in_types, out_types, regions):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
        elif in_region(layer.name, regions):
            trunk += 1
    return pinned, trunk


def make_profile(builder: Any, name: str, shapes: ProfileShapes) -> Any:
    profile = builder.create_optimization_profile()
    profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
    return profile


def load_timing_cache(config: Any, path: Path | None) -> Any:
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


def configure(trt: Any, builder: Any, log: Any, caps: TrtCaps, plan: BuildPlan, options: BuildOptions,
              spec: InputSpec, engine_path: Path, gpu: GpuInfo, regions: tuple[str, ...] = ()) -> Configured:
    """Network + parsed graph + builder config for ``plan`` (one-line StpmError on failure)."""
    version = str(caps.version)
    mark = log.mark()
    network = builder.create_network(flag_bits(getattr(trt, "NetworkDefinitionCreationFlag", None),
                                               plan.network_flags))
    parser = parse_onnx(trt, network, plan.onnx_path, log, version)
    check_network_io(network, spec, plan.onnx_path)

    config = builder.create_builder_config()
    out = Configured(builder, network, parser, config)
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
    if plan.pin_head_fp32:
        out.pinned_fp32_layers, out.trunk_layers = pin_head_fp32(trt, network, regions)
        if out.trunk_layers == 0:
            logger.warning("no layers of the low-precision regions found by name (%s): the %s build runs every "
                           "layer in FP32", ", ".join(regions) or "none declared", plan.precision)
    if plan.profile is not None and config.add_optimization_profile(make_profile(builder, spec.name, plan.profile)) < 0:
        raise StpmError(f"TensorRT rejected the batch profile {plan.profile.to_dict()} ({log.last_error(mark)})")
    if plan.dla_core is not None:
        cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
        if plan.dla_core >= cores:
            raise StpmError(f"--dla-core {plan.dla_core}: this device has {cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core

    if caps.timing_cache and options.timing_cache is not False:
        out.timing_cache_path = (Path(options.timing_cache) if not isinstance(options.timing_cache, bool)
                                 else default_timing_cache(engine_path.parent, version, gpu.compute_capability))
        load_timing_cache(config, out.timing_cache_path)
    return out
