"""Write what a build produced: the engine, its sidecar (:mod:`stpm_edge.tensorrt.engine_meta`)
and the timing cache — the last of the builder's three steps, every file through the atomic
helper."""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from stpm_edge.data.io import atomic_path
from stpm_edge.tensorrt.config import Configured
from stpm_edge.tensorrt.engine_meta import ENGINE_FORMAT, ENGINE_FORMAT_VERSION, GpuInfo, sidecar_path
from stpm_edge.tensorrt.plan import BuildOptions, BuildPlan

logger = logging.getLogger(__name__)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_timing_cache(built: Configured) -> None:
    """``get_timing_cache().serialize()`` into the configured file (no-op without one)."""
    if built.timing_cache_path is not None:
        with atomic_path(built.timing_cache_path) as tmp:
            tmp.write_bytes(bytes(built.config.get_timing_cache().serialize()))


def engine_sidecar(metadata: dict, plan: BuildPlan, options: BuildOptions, built: Configured, *, data: bytes,
                   engine_path: Path, version: str, gpu: GpuInfo, calibrator: Any, started: float) -> dict:
    """The model's metadata with ``precision`` set and the ``engine`` block (see engine_meta's docstring)."""
    sidecar = dict(metadata)
    sidecar["precision"] = plan.precision
    sidecar["engine"] = {
        "format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION,
        "file": engine_path.name, "sha256": sha256(data), "bytes": len(data),
        "tensorrt": version, "gpu": gpu.to_dict(),
        "source": {"file": plan.onnx_path.name, "sha256": sha256(plan.onnx_path.read_bytes())},
        "strongly_typed": plan.strongly_typed, "network_flags": list(plan.network_flags),
        "builder_flags": list(plan.builder_flags), "pinned_fp32_layers": built.pinned_fp32_layers,
        "trunk_layers": built.trunk_layers,
        "int8_method": plan.int8_method, "calibrator": plan.calibrator_class,
        "calibration_batches": getattr(calibrator, "batches_used", None),
        "calibration_cache": str(plan.calib_cache) if plan.calib_cache else None,
        "dla_core": plan.dla_core, "optimization_level": plan.optimization_level,
        "workspace_bytes": plan.workspace_bytes,
        "profile": plan.profile.to_dict() if plan.profile else None,
        "timing_cache": str(built.timing_cache_path) if built.timing_cache_path else None,
        "options": options.to_dict(), "notes": list(plan.notes),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return sidecar


def write_engine(engine_path: Path, data: bytes, sidecar: dict) -> Path:
    """The engine and its sidecar, both or neither (atomic); returns the sidecar's path."""
    side = sidecar_path(engine_path)
    with atomic_path(engine_path) as tmp_engine, atomic_path(side) as tmp_side:
        tmp_engine.write_bytes(data)
        tmp_side.write_text(json.dumps(sidecar, indent=2) + "\n")
    return side
