"""Finding (or making) the files one benchmark needs: the ONNX variants beside ``model.onnx``,
the TensorRT engines, and the checkpoint of the PyTorch reference.

* ``MODEL.onnx``: the variants are found by name beside it (``model.fp16.onnx``,
  ``model.int8.onnx`` = TensorRT Q/DQ form, ``model.int8.cpu.onnx`` = ORT x86 form,
  ``model.<precision>.engine``); the checkpoint is the file the model's metadata names
  (``checkpoint.file``) in the same folder, checked against its sha256, or ``--checkpoint``.
* ``MODEL.pt``: exported into a work folder with a dynamic batch (so every ``--batch`` runs in
  one call): FP32, FP16, INT8 (both forms) only with calibration images, and TensorRT engines
  where TensorRT and a GPU are present.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stpm_edge.bench.plan import ONNX_VARIANTS, ModelFiles
from stpm_edge.errors import StpmError, first_line

logger = logging.getLogger(__name__)

ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
_SUFFIXES = (".int8.cpu.onnx", ".int8.onnx", ".fp16.onnx", ".fp32.onnx", ".onnx")


def base_of(path: Path) -> Path:
    """``dir/model.int8.cpu.onnx`` → ``dir/model`` (any of the variant names)."""
    path = Path(path)
    for suffix in _SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path.with_suffix("")


def variant_path(base: Path, key: str) -> Path:
    return base.with_name(f"{base.name}.onnx" if key == "fp32" else f"{base.name}.{key}.onnx")


def engine_path(base: Path, precision: str) -> Path:
    return base.with_name(f"{base.name}.{precision}.engine")


def find_checkpoint(meta: dict[str, Any], folder: Path, override: Path | None) -> tuple[Path | None, str]:
    """The checkpoint of the PyTorch reference, or (None, why not)."""
    from stpm_edge.models.checkpoint import file_sha256  # noqa: PLC0415

    if override is not None:
        if not Path(override).is_file():
            raise StpmError(f"--checkpoint {override}: no such file")
        return Path(override), ""
    ck = meta.get("checkpoint") if isinstance(meta.get("checkpoint"), dict) else {}
    name = ck.get("file")
    if not name:
        return None, "the model's metadata names no checkpoint; pass --checkpoint model.pt"
    path = folder / str(name)
    if not path.is_file():
        return None, f"checkpoint {name} (named in the model's metadata) is not beside it; pass --checkpoint"
    if ck.get("sha256") and file_sha256(path) != ck["sha256"]:
        return None, (f"{name} beside the model is not the checkpoint it was exported from (sha256 differs); "
                      f"pass --checkpoint to use it anyway")
    return path, ""


def discover(model: Path, checkpoint: Path | None = None) -> tuple[ModelFiles, dict[str, Any]]:
    """The files beside an exported ``model.onnx`` and its ``stpm_edge`` metadata."""
    from stpm_edge.export.onnx_export import read_onnx_metadata  # noqa: PLC0415

    base = base_of(model)
    fp32 = variant_path(base, "fp32")
    meta = read_onnx_metadata(fp32 if fp32.is_file() else model)
    if not fp32.is_file():
        logger.warning("%s: no FP32 %s beside it", model, fp32.name)
    onnx = {k: variant_path(base, k) for k in ONNX_VARIANTS if variant_path(base, k).is_file()}
    engines = {p: engine_path(base, p) for p in ENGINE_PRECISIONS if engine_path(base, p).is_file()}
    ckpt, problem = find_checkpoint(meta, Path(model).parent, checkpoint)
    batch = meta.get("input", {}).get("batch")
    hints = {"fp16": "stpm-export MODEL.pt --fp16", "int8": "stpm-export MODEL.pt --int8 --calib DIR",
             "int8.cpu": "stpm-export MODEL.pt --int8 --calib DIR"}
    return ModelFiles(onnx, engines, ckpt, problem, batch if isinstance(batch, int) else None, hints), meta


def export_checkpoint(checkpoint: Path, out_dir: Path, precisions: Sequence[str], *, calib: Path | None,
                      calib_count: int | None, build_engines: bool, max_batch: int,
                      status: Callable[[str], None] = lambda s: None) -> tuple[ModelFiles, dict[str, Any]]:
    """Export ``checkpoint`` (dynamic batch) and the variants the precisions need into ``out_dir``."""
    from stpm_edge.export.graph import ExportConfig  # noqa: PLC0415
    from stpm_edge.export.onnx_export import export_onnx  # noqa: PLC0415
    from stpm_edge.export.variants import write_fp16, write_int8  # noqa: PLC0415

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    status("exporting FP32 ONNX")
    res = export_onnx(Path(checkpoint), out_dir, ExportConfig(dynamic_batch=True))
    if "fp16" in precisions:
        status("writing the FP16 variant")
        write_fp16(res.onnx_path)
    if "int8" in precisions and calib is not None:
        from stpm_edge.calibration.quantize import QuantizeOptions  # noqa: PLC0415
        from stpm_edge.calibration.reader import CalibrationFrames  # noqa: PLC0415

        status(f"calibrating INT8 on {calib}")
        kw = {} if calib_count is None else {"count": calib_count}
        write_int8(res.onnx_path, CalibrationFrames.for_model(res.onnx_path, calib, **kw), QuantizeOptions())
    engine_problems: dict[str, str] = {}
    if build_engines:
        engine_problems = _build_engines(res.onnx_path, precisions, max_batch, status)
    files, meta = discover(res.onnx_path, Path(checkpoint))
    hints = {"fp16": "not asked for", "int8": "pass --calib DIR to calibrate INT8 from a checkpoint",
             "int8.cpu": "pass --calib DIR to calibrate INT8 from a checkpoint"}
    hints.update({f"engine.{p}": why for p, why in engine_problems.items()})
    return ModelFiles(files.onnx, files.engines, files.checkpoint, files.checkpoint_problem, files.model_batch,
                      hints), meta


def _build_engines(onnx_path: Path, precisions: Sequence[str], max_batch: int,
                   status: Callable[[str], None]) -> dict[str, str]:
    """Build ``model.<precision>.engine`` for each precision (TensorRT present); precision → failure."""
    from stpm_edge.tensorrt.builder import BuildOptions, maybe_build_engine  # noqa: PLC0415

    problems = {}
    for p in precisions:
        if p == "int8" and not variant_path(base_of(onnx_path), "int8").is_file():
            problems[p] = "no model.int8.onnx to build from (pass --calib DIR)"
            continue
        status(f"building the TensorRT {p} engine")
        try:
            out = maybe_build_engine(onnx_path, p, BuildOptions(max_batch=max_batch))
        except Exception as e:  # noqa: BLE001 - a failed build is a row's reason, not the end of the run
            problems[p] = f"engine build failed: {first_line(e)}"
            continue
        if not getattr(out, "built", False):
            problems[p] = str(out)
    return problems
