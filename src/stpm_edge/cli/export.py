"""``stpm-export MODEL``: one fused ONNX graph from frames to anomaly map and score."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from stpm_edge.cli.calibrate import (CALIB_COUNT, CALIB_METHOD, INT8_FORMS, KEEP_FLOAT_OPT, MAX_AUROC_DROP, SEED,
                                     VAL, int8_plan, print_int8, rich_stages, stage_progress)
from stpm_edge.cli.common import console, parse_options, print_json, setup_logging, user_errors
from stpm_edge.errors import StpmError
from stpm_edge.models.deploy import ExportConfig


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'WxH' → (height, width)."""
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise StpmError(f"--frame-size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    return h, w


@user_errors("stpm-export")
def export_cmd(
    model: Path = typer.Argument(..., help="Checkpoint (model.pt) written by stpm-train."),
    out_dir: Path = typer.Option(Path("."), "-o", "--output-dir", help="Folder for model.onnx and model.json."),
    input_mode: str = typer.Option("uint8-bgr", "--input", help="uint8-bgr: raw NHWC BGR camera frames, preprocessing "
                                   "in-graph; float-rgb: normalised NCHW RGB at the model size (as anomalib exports)."),
    frame_size: Optional[str] = typer.Option(None, help="Camera frame size WxH for uint8-bgr input (default: the model size)."),
    map_size: str = typer.Option("model", help="anomaly_map size: model (the model input size), frame, or feature "
                                 "(the method's own map, e.g. STPM's feature head grid; the runtime resizes it)."),
    batch: int = typer.Option(1, help="Fixed batch size."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Symbolic batch dimension instead of --batch."),
    opset: int = typer.Option(17, help="ONNX opset (TensorRT 8.5 on JetPack 5 parses up to 17)."),
    blur: Optional[bool] = typer.Option(None, "--blur/--no-blur", help="Override the checkpoint's anomaly-map blur."),
    fusion: Optional[str] = typer.Option(None, help="STPM: teacher+student form, stacked (one trunk, grouped "
                                         "convolutions; the default) or parallel."),
    opt: List[str] = typer.Option([], "--opt", help="Method export option KEY=VALUE (repeatable), e.g. STPM's "
                                  "head=feature|model (default: as trained)."),
    name: str = typer.Option("model", help="Base name of the output files."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write <name>.fp16.onnx: trunks in FP16, head FP32."),
    int8: bool = typer.Option(False, "--int8", help="Also write INT8 Q/DQ variants calibrated on --calib images."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="INT8: folder of good images (or an MVTec category)."),
    calib_method: str = CALIB_METHOD,
    calib_count: int = CALIB_COUNT,
    seed: int = SEED,
    keep_float: Optional[str] = KEEP_FLOAT_OPT,
    int8_forms: str = INT8_FORMS,
    val: Optional[Path] = VAL,
    max_auroc_drop: Optional[float] = MAX_AUROC_DROP,
    engine: bool = typer.Option(True, "--engine/--no-engine", help="Build a TensorRT engine (for the highest "
                                "precision asked: int8, else fp16, else fp32) when tensorrt and a CUDA GPU are present."),
    workspace: int = typer.Option(1024, help="TensorRT: builder workspace limit in MiB."),
    timing_cache: Optional[Path] = typer.Option(None, help="TensorRT: timing cache file (default: beside the engine, "
                                                "reused across builds)."),
    min_batch: Optional[int] = typer.Option(None, help="TensorRT, dynamic batch: profile minimum (default 1)."),
    opt_batch: Optional[int] = typer.Option(None, help="TensorRT, dynamic batch: profile optimum (default: max)."),
    max_batch: Optional[int] = typer.Option(None, help="TensorRT, dynamic batch: profile maximum (default 8)."),
    opt_level: Optional[int] = typer.Option(None, help="TensorRT: builder optimization level 0..5 (8.6+)."),
    dla_core: Optional[int] = typer.Option(None, help="TensorRT on Jetson: run on this DLA core (GPU fallback on)."),
    trt_int8: str = typer.Option("auto", help="TensorRT INT8: auto | qdq (model.int8.onnx) | calibrator "
                                 "(classic calibrator with calib.cache, TensorRT 8.5-10 only; uses --calib)."),
    triton: Optional[Path] = typer.Option(None, "--triton", help="Also write a Triton model repository here: "
                                          "REPO/NAME/config.pbtxt + 1/model.onnx (and NAME_trt/1/model.plan when an "
                                          "engine was built). Use with --dynamic-batch for Triton's batching."),
    triton_name: str = typer.Option("stpm", "--triton-name", help="Triton model name (a plain folder name)."),
    triton_instances: int = typer.Option(1, "--triton-instances", help="Triton: model instances (instance_group count)."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling (trusted files only)."),
    json_out: bool = typer.Option(False, "--json", help="Print the export summary as JSON."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Export a checkpoint to one ONNX graph: frames in; normalised anomaly_map and score out (threshold 0.5)."""
    setup_logging(verbose)
    from stpm_edge.export.pipeline import ExportPlan, export_all  # noqa: PLC0415

    if not int8 and (calib is not None or val is not None or max_auroc_drop is not None):
        raise StpmError("--calib, --val and --max-auroc-drop apply to INT8: add --int8")
    if int8 and calib is None:  # checked before any work so a missing option costs nothing
        raise StpmError("--int8 needs --calib DIR (a folder of good images, or an MVTec category folder)")
    plan_int8 = int8_plan(calib, count=calib_count, seed=seed, method=calib_method, keep_float=keep_float,
                          forms=int8_forms, val=val, max_drop=max_auroc_drop, device="cpu") if int8 else None
    engine_options = None
    if engine:
        engine_options = dict(workspace_mib=workspace, timing_cache=timing_cache or True, min_batch=min_batch,
                              opt_batch=opt_batch, max_batch=max_batch, optimization_level=opt_level,
                              dla_core=dla_core, int8_mode=trt_int8, calib_dir=calib, calib_count=calib_count,
                              calib_seed=seed, calib_method=calib_method if calib_method != "percentile" else "entropy",
                              verbose=verbose)
    method_options = parse_options(opt)
    if fusion:
        method_options["fusion"] = fusion
    cfg = ExportConfig(input_mode, parse_size(frame_size), map_size, batch, dynamic_batch, opset, blur, method_options)
    triton_options = None
    if triton is not None:
        from stpm_edge.triton.repo import TritonOptions  # noqa: PLC0415

        triton_options = TritonOptions(triton_name, max_batch, triton_instances).validated()
    plan = ExportPlan(cfg, name, fp16, plan_int8, engine_options, triton_options, triton)
    progress = stage_progress(json_out)
    try:
        manifest = export_all(model, out_dir, plan, allow_pickle=trust_checkpoint, stage=rich_stages(progress))
    finally:
        if progress.live.is_started:
            progress.stop()
    if json_out:
        print_json(manifest.summary)
        return
    res = manifest.onnx
    spec = res.metadata.input
    detail = ", ".join(f"{k} {v}" for k, v in res.metadata.method.items() if k in ("name", "fusion"))
    console.print(f"wrote {res.onnx_path} and {res.json_path.name}: input {spec.name} {spec.dtype} "
                  f"{list(spec.shape())} {spec.layout} {spec.color}, {detail}, {len(res.op_types)} op types "
                  f"({res.seconds:.1f} s)", highlight=False, markup=False)
    if manifest.fp16 is not None:
        console.print(f"wrote {manifest.fp16.onnx_path} and {manifest.fp16.json_path.name}: low-precision regions "
                      f"FP16, head FP32", highlight=False, markup=False)
    if manifest.int8 is not None:
        print_int8(manifest.int8, plan_int8, res.onnx_path)
    if not engine:
        line = "TensorRT engine: not requested (--no-engine)"
    elif getattr(manifest.engine, "built", False):
        e = manifest.engine
        line = f"TensorRT engine: wrote {e.engine_path} ({manifest.summary['engine']['precision']}, {e.seconds:.0f} s)"
    else:
        line = f"TensorRT engine: skipped ({manifest.engine})"
    console.print(line, highlight=False, markup=False)
    for entry in manifest.summary.get("triton", {}).get("models", []):
        console.print(f"Triton: wrote {entry['folder']} ({entry['kind']}, max_batch_size {entry['max_batch_size']})",
                      highlight=False, markup=False)
