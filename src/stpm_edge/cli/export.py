"""``stpm-export MODEL``: one fused ONNX graph from frames to anomaly map and score."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

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
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling (trusted files only)."),
    json_out: bool = typer.Option(False, "--json", help="Print the export summary as JSON."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Export a checkpoint to one ONNX graph: frames in; normalised anomaly_map and score out (threshold 0.5)."""
    setup_logging(verbose)
    from stpm_edge.export.onnx_export import export_onnx

    cfg = ExportConfig(input_mode, parse_size(frame_size), map_size, batch, dynamic_batch, opset, blur, fusion)
    res = export_onnx(model, out_dir, cfg, name=name, allow_pickle=trust_checkpoint)
    summary = {"onnx": str(res.onnx_path), "sidecar": str(res.json_path), "seconds": round(res.seconds, 2),
               "ops": res.op_types, "input": res.metadata["input"], "fusion": res.metadata["fusion"]}
    if json_out:
        print_json(summary)
        return
    spec = res.metadata["input"]
    console.print(f"wrote {res.onnx_path} and {res.json_path.name}: input {spec['name']} {spec['dtype']} "
                  f"{spec['shape']} {spec['layout']} {spec['color']}, {res.metadata['fusion']} fusion, "
                  f"{len(res.op_types)} op types ({res.seconds:.1f} s)", highlight=False)
    console.print("TensorRT engine: not built (the TensorRT builder is not part of this release)", highlight=False)
