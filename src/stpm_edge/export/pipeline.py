"""The one export pipeline: checkpoint → FP32 ONNX → FP16 → INT8 (+ accuracy gate) → TensorRT
engine, driven by an :class:`ExportPlan`. ``stpm-export``, ``stpm-calibrate``, ``stpm-bench``,
the demo and ``scripts/trt_check.py`` all call it, so they behave alike.

All-or-nothing at the front: every input the plan needs (the checkpoint, the export options,
the output folder, the calibration images, the validation set) is checked *before* the
first file is written, so a bad calibration folder costs nothing and leaves nothing.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stpm_edge.artifact import ModelFiles
from stpm_edge.calibration.quantize import FORMS, QuantizeOptions
from stpm_edge.calibration.reader import DEFAULT_COUNT, CalibrationFrames, calibration_folder
from stpm_edge.errors import StpmError
from stpm_edge.export.onnx_export import ExportResult, export_model
from stpm_edge.export.variants import Int8Result, VariantFiles, validator, write_fp16, write_int8, write_int8_auto
from stpm_edge.models.checkpoint import load_checkpoint
from stpm_edge.models.deploy import ExportConfig, build_metadata

logger = logging.getLogger(__name__)

# A progress sink: stage(description, total or None) → a function advancing it by n.
Stage = Callable[[str, "int | None"], Callable[[int], None]]


def _no_stage(description: str, total: int | None) -> Callable[[int], None]:
    return lambda n=1: None


@dataclass(frozen=True)
class Int8Plan:
    """INT8 calibration (and, with ``val`` and ``max_drop``, the accuracy gate)."""

    calib: Path
    count: int = DEFAULT_COUNT
    seed: int = 0
    method: str = "minmax"
    keep_float: tuple[str, ...] = ()  # ("auto",): the first setting that passes the gate
    forms: tuple[str, ...] = FORMS
    val: Path | None = None
    max_drop: float | None = None
    device: str = "cpu"

    @property
    def auto(self) -> bool:
        return "auto" in self.keep_float

    def validated(self) -> "Int8Plan":
        if self.max_drop is not None and self.val is None:
            raise StpmError("--max-auroc-drop needs --val DIR (an MVTec category folder with a test split)")
        if self.max_drop is not None and not (self.max_drop >= 0):
            raise StpmError(f"--max-auroc-drop {self.max_drop}: expected >= 0 (AUROC points)")
        if self.auto and (len(self.keep_float) > 1 or self.max_drop is None):
            raise StpmError("--keep-float auto stands alone and needs --val DIR --max-auroc-drop PT (it keeps the "
                            "first setting that passes the accuracy gate)")
        bad = set(self.forms) - set(FORMS)
        if bad or not self.forms:
            raise StpmError(f"--int8-forms {','.join(sorted(bad)) or '(none)'}: expected any of {', '.join(FORMS)}")
        self.options()
        calibration_folder(Path(self.calib))
        return self

    def options(self) -> QuantizeOptions:
        return QuantizeOptions(self.method, () if self.auto else tuple(self.keep_float)).validated()


@dataclass(frozen=True)
class ExportPlan:
    export: ExportConfig = field(default_factory=ExportConfig)
    name: str = "model"
    fp16: bool = False
    int8: Int8Plan | None = None
    engine: dict[str, Any] | None = None  # TensorRT builder options (None: no engine)
    triton: Any = None  # a stpm_edge.triton.repo.TritonOptions: write a Triton model repository
    triton_repo: Path | None = None


@dataclass
class Manifest:
    """What one run wrote, and its JSON summary."""

    files: ModelFiles
    onnx: ExportResult
    fp16: VariantFiles | None = None
    int8: Int8Result | None = None
    engine: Any = None  # the builder's result or its skip reason
    summary: dict[str, Any] = field(default_factory=dict)


def check_output_folder(folder: Path) -> None:
    """The output folder must be a folder (or creatable): checked before any work."""
    folder = Path(folder)
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                raise StpmError(f"{folder}: cannot write there ({p} is a file, not a folder)")
            break


@dataclass
class _Int8Inputs:
    plan: Int8Plan
    frames: CalibrationFrames
    check: Callable | None


def prepare_int8(plan: Int8Plan, metadata, stage: Stage = _no_stage) -> _Int8Inputs:
    """Calibration frames and the gate's validator, read before anything is written."""
    from stpm_edge.data.mvtec import load_dataset  # noqa: PLC0415

    plan = plan.validated()
    dataset = load_dataset(plan.val) if plan.val is not None else None
    frames = CalibrationFrames(calibration_folder(Path(plan.calib)), metadata.input, metadata, count=plan.count,
                               seed=plan.seed, batch_size=metadata.input.batch or 1)
    check = None
    if dataset is not None:
        advance = stage("validating INT8", None)
        check = validator(dataset, plan.max_drop if plan.max_drop is not None else float("inf"), plan.device,
                          progress=advance)
    return _Int8Inputs(plan, frames, check)


def run_int8(fp32_path: Path, inputs: _Int8Inputs, stage: Stage = _no_stage) -> Int8Result:
    """Calibrate, gate and write the INT8 forms beside ``fp32_path``."""
    plan = inputs.plan
    total = None if plan.auto else len(inputs.frames) * len(plan.forms)
    advance = stage(f"calibrating ({plan.method}, {len(inputs.frames.paths)} images)", total)
    write = write_int8_auto if plan.auto else write_int8
    return write(Path(fp32_path), inputs.frames, plan.options(), tuple(plan.forms), validate=inputs.check,
                 progress=lambda: advance(1))


def int8_summary(result: Int8Result, plan: Int8Plan) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "int8": {form: str(f.onnx_path) for form, f in result.files.items()},
        "method": plan.method, "calib_images": result.calib_images, "quantized_nodes": result.quantized_nodes,
        "keep_float": list(result.keep_float), "float_nodes": result.float_convs, "seconds": round(result.seconds, 1),
        "accuracy_checked": bool(result.comparison),
    }
    if result.comparison:
        summary["comparison"] = [r.to_dict() for r in result.comparison]
        summary["gate"] = {"passed": result.verdict.passed, "message": result.verdict.message,
                           "max_auroc_drop": plan.max_drop}
    return summary


def build_engine_step(onnx_path: Path, precision: str, options: dict[str, Any]) -> Any:
    """Build the TensorRT engine where TensorRT and a GPU are present (else its skip reason)."""
    from stpm_edge.tensorrt.builder import BuildOptions, maybe_build_engine  # noqa: PLC0415

    return maybe_build_engine(onnx_path, precision, BuildOptions(**options))


def export_all(checkpoint: Path, out_dir: Path, plan: ExportPlan = ExportPlan(), *, allow_pickle: bool = False,
               stage: Stage = _no_stage) -> Manifest:
    """Run ``plan`` on ``checkpoint`` into ``out_dir``; returns what was written."""
    files = ModelFiles(Path(out_dir), plan.name)
    check_output_folder(files.folder)
    model, meta = load_checkpoint(Path(checkpoint), allow_pickle=allow_pickle)
    cfg = plan.export.validated(meta)
    if plan.triton_repo is not None:  # names checked before the first write
        from stpm_edge.triton.repo import model_folder  # noqa: PLC0415

        model_folder(Path(plan.triton_repo), plan.triton.validated().name)
    int8_inputs = None
    if plan.int8 is not None:  # read and check every calibration/validation input before the first write
        int8_inputs = prepare_int8(plan.int8, build_metadata(meta, cfg, Path(checkpoint), ""), stage)
    res = export_model(model, meta, Path(checkpoint), files.folder, cfg, name=plan.name)
    manifest = Manifest(files, res)
    manifest.summary = {"onnx": str(res.onnx_path), "sidecar": str(res.json_path), "seconds": round(res.seconds, 2),
                        "ops": res.op_types, "input": res.metadata.input.to_dict(), "method": res.metadata.method}
    if plan.fp16:
        manifest.fp16 = write_fp16(res.onnx_path)
        manifest.summary["fp16"] = str(manifest.fp16.onnx_path)
    if int8_inputs is not None:
        manifest.int8 = run_int8(res.onnx_path, int8_inputs, stage)
        manifest.summary["int8"] = int8_summary(manifest.int8, int8_inputs.plan)
    if plan.engine is not None:
        precision = "int8" if plan.int8 else "fp16" if plan.fp16 else "fp32"
        manifest.engine = build_engine_step(res.onnx_path, precision, plan.engine)
        if getattr(manifest.engine, "built", False):
            e = manifest.engine
            manifest.summary["engine"] = {"path": str(e.engine_path), "sidecar": str(e.sidecar_path),
                                          "precision": precision, "seconds": round(e.seconds, 1)}
        else:
            manifest.summary["engine"] = {"skipped": str(manifest.engine)}
    else:
        manifest.summary["engine"] = {"skipped": "not requested"}
    if plan.triton_repo is not None:
        manifest.summary["triton"] = triton_step(plan, res, manifest.engine)
    return manifest


def triton_step(plan: ExportPlan, res: ExportResult, engine: Any) -> dict[str, Any]:
    """Write the Triton repository: model.onnx, and model.plan where an engine was built."""
    from dataclasses import replace  # noqa: PLC0415

    from stpm_edge.artifact import ModelMetadata  # noqa: PLC0415
    from stpm_edge.triton.repo import write_repository  # noqa: PLC0415

    options = plan.triton
    if options.max_batch is None and plan.engine and plan.engine.get("max_batch"):
        options = replace(options, max_batch=int(plan.engine["max_batch"]))
    engine_path = engine_meta = None
    if getattr(engine, "built", False):
        engine_path = engine.engine_path
        engine_meta = ModelMetadata.from_dict(engine.sidecar, engine.sidecar_path)
    if res.metadata.input.batch is not None:
        logger.warning("Triton: %s has a fixed batch of %d: written with max_batch_size 0 and no dynamic batching "
                       "(export with --dynamic-batch [--max-batch N] for Triton's batching)", res.onnx_path.name,
                       res.metadata.input.batch)
    entries = write_repository(Path(plan.triton_repo), res.onnx_path, res.metadata, options, engine_path, engine_meta)
    return {"repository": str(plan.triton_repo), "models": [e.to_dict() for e in entries]}


__all__ = ["ExportPlan", "Int8Plan", "Manifest", "export_all", "prepare_int8", "run_int8", "int8_summary",
           "check_output_folder"]
