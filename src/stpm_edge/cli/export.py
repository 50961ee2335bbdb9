"""``stpm-export MODEL``: one fused ONNX graph from frames to anomaly map and score."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stpm_edge.cli.calibrate import (CALIB_COUNT, CALIB_METHOD, INT8_FORMS, KEEP_FLOAT_OPT, MAX_AUROC_DROP, SEED,
                                     VAL, int8_step)
from stpm_edge.cli.common import console, print_json, setup_logging, user_errors
from stpm_edge.errors import StpmError
from stpm_edge.export.graph import ExportConfig


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
    map_size: str = typer.Option("model", help="anomaly_map size: model (the model input size) or frame."),
    batch: int = typer.Option(1, help="Fixed batch size."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Symbolic batch dimension instead of --batch."),
    opset: int = typer.Option(17, help="ONNX opset (TensorRT 8.5 on JetPack 5 parses up to 17)."),
    blur: Optional[bool] = typer.Option(None, "--blur/--no-blur", help="Override the checkpoint's anomaly-map blur."),
    fusion: str = typer.Option("stacked", help="Teacher+student form: stacked (one trunk, grouped convolutions) or parallel."),
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
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling (trusted files only)."),
    json_out: bool = typer.Option(False, "--json", help="Print the export summary as JSON."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Export a checkpoint to one ONNX graph: frames in; normalised anomaly_map and score out (threshold 0.5)."""
    setup_logging(verbose)
    from stpm_edge.export.onnx_export import export_onnx

    if int8 and calib is None:  # checked before any work so a missing option costs nothing
        raise StpmError("--int8 needs --calib DIR (a folder of good images, or an MVTec category folder)")
    if not int8 and (calib is not None or val is not None or max_auroc_drop is not None):
        raise StpmError("--calib, --val and --max-auroc-drop apply to INT8: add --int8")
    cfg = ExportConfig(input_mode, parse_size(frame_size), map_size, batch, dynamic_batch, opset, blur, fusion)
    res = export_onnx(model, out_dir, cfg, name=name, allow_pickle=trust_checkpoint)
    summary = {"onnx": str(res.onnx_path), "sidecar": str(res.json_path), "seconds": round(res.seconds, 2),
               "ops": res.op_types, "input": res.metadata["input"], "fusion": res.metadata["fusion"]}
    spec = res.metadata["input"]
    if not json_out:
        console.print(f"wrote {res.onnx_path} and {res.json_path.name}: input {spec['name']} {spec['dtype']} "
                      f"{spec['shape']} {spec['layout']} {spec['color']}, {res.metadata['fusion']} fusion, "
                      f"{len(res.op_types)} op types ({res.seconds:.1f} s)", highlight=False)
    if fp16:
        from stpm_edge.export.variants import write_fp16

        half = write_fp16(res.onnx_path)
        summary["fp16"] = str(half.onnx_path)
        if not json_out:
            console.print(f"wrote {half.onnx_path} and {half.json_path.name}: trunks FP16, head FP32", highlight=False)
    if int8:
        summary["int8"] = int8_step(res.onnx_path, calib, count=calib_count, seed=seed, method=calib_method,
                                    keep_float=keep_float, forms=int8_forms, val=val, max_drop=max_auroc_drop,
                                    device="cpu", quiet=json_out)
    if engine:
        from stpm_edge.tensorrt.builder import BuildOptions, maybe_build_engine

        precision = "int8" if int8 else "fp16" if fp16 else "fp32"
        options = BuildOptions(workspace_mib=workspace, timing_cache=timing_cache or True, min_batch=min_batch,
                               opt_batch=opt_batch, max_batch=max_batch, optimization_level=opt_level,
                               dla_core=dla_core, int8_mode=trt_int8, calib_dir=calib, calib_count=calib_count,
                               calib_seed=seed, calib_method=calib_method if calib_method != "percentile" else "entropy",
                               verbose=verbose)
        built = maybe_build_engine(res.onnx_path, precision, options)
        if built.built:
            summary["engine"] = {"path": str(built.engine_path), "sidecar": str(built.sidecar_path),
                                 "precision": precision, "seconds": round(built.seconds, 1)}
            line = f"TensorRT engine: wrote {built.engine_path} ({precision}, {built.seconds:.0f} s)"
        else:
            summary["engine"] = {"skipped": str(built)}
            line = f"TensorRT engine: skipped ({built})"
    else:
        summary["engine"] = {"skipped": "--no-engine"}
        line = "TensorRT engine: not requested (--no-engine)"
    if json_out:
        print_json(summary)
        return
    console.print(line, highlight=False, markup=False)
