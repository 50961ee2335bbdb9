"""``stpm-export``: a checkpoint → one ONNX graph (frames in → anomaly map and score out)
plus a sidecar JSON, both written atomically.

Graph hygiene: batch norms folded into convolutions and constants folded by the exporter
(eval mode, ``do_constant_folding``), then an ONNX Runtime *basic*-level pass (standard ONNX
ops only: constant folding and redundant-node elimination) removes the shape arithmetic
that tracing leaves, then strict shape inference and ``onnx.checker`` with ``full_check``.
The graph's operators must all be parseable by TensorRT 8.5 (:mod:`stpm_edge.tensorrt.onnx_ops`).
"""
from __future__ import annotations

import io
import json
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from stpm_edge import __version__
from stpm_edge.data.io import atomic_path
from stpm_edge.errors import StpmError, first_line
from stpm_edge.export.graph import ExportConfig, ExportGraph, example_input
from stpm_edge.tensorrt.onnx_ops import TRT85_MAX_OPSET, unsupported_ops
from stpm_edge.models.checkpoint import ModelMeta, file_sha256, load_checkpoint
from stpm_edge.runtime.backends.base import INPUT_NAME, METADATA_KEY, parse_metadata
from stpm_edge.runtime.backends.base import ANOMALY_MAP as MAP_NAME
from stpm_edge.runtime.backends.base import SCORE as SCORE_NAME

logger = logging.getLogger(__name__)

ONNX_FORMAT = "stpm-edge/onnx"


@dataclass
class ExportResult:
    onnx_path: Path
    json_path: Path
    metadata: dict
    op_types: list[str]
    seconds: float


def build_metadata(meta: ModelMeta, cfg: ExportConfig, checkpoint: Path, sha256: str) -> dict:
    """The one description of an exported model (sidecar JSON and ONNX metadata_props)."""
    h_map, w_map = cfg.output_size(meta)
    batch = None if cfg.dynamic_batch else cfg.batch
    n = "N" if batch is None else batch
    if cfg.input == "uint8-bgr":
        fh, fw = cfg.frame_size
        spec = {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "color": "BGR", "batch": batch,
                "height": fh, "width": fw, "shape": [n, fh, fw, 3]}
    else:
        mh, mw = meta.config.image_size
        spec = {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "color": "RGB", "batch": batch,
                "height": mh, "width": mw, "shape": [n, 3, mh, mw],
                "normalization": {"mean": list(meta.mean), "std": list(meta.std), "scale": "0..1"}}
    norm = meta.normalization
    return {
        "format": ONNX_FORMAT, "format_version": 1, "arch": meta.arch, "precision": "fp32",
        "input": spec,
        "model_size": list(meta.config.image_size),
        "preprocess": {"resize": "bilinear, align_corners=False, no antialias", "mean": list(meta.mean),
                       "std": list(meta.std), "color": "RGB"},
        "outputs": {
            MAP_NAME: {"dtype": "float32", "shape": [n, 1, h_map, w_map],
                       "meaning": "per-pixel anomaly, normalised: 0.5 = pixel threshold"},
            SCORE_NAME: {"dtype": "float32", "shape": [n], "meaning": "image anomaly score, normalised: 0.5 = image threshold"},
        },
        "threshold": 0.5,
        "normalization": {"min_value": norm.min_value, "image_threshold": norm.image_threshold,
                          "pixel_threshold": norm.pixel_threshold,
                          "formula": "normalised = 0.5 * (raw - min_value) / (threshold - min_value)"},
        "backbone": meta.config.backbone, "layers": list(meta.config.layers),
        "blur_sigma": cfg.blur_sigma(meta), "fusion": cfg.fusion, "opset": cfg.opset,
        "checkpoint": {"file": Path(checkpoint).name, "sha256": sha256},
        "versions": {"stpm_edge": __version__, "torch": str(torch.__version__), "onnx": onnx.__version__},
    }


def _trace(graph: ExportGraph, example: torch.Tensor, cfg: ExportConfig) -> onnx.ModelProto:
    dynamic = {INPUT_NAME: {0: "batch"}, MAP_NAME: {0: "batch"}, SCORE_NAME: {0: "batch"}} if cfg.dynamic_batch else None
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(graph, (example,), buf, dynamo=False, opset_version=cfg.opset, do_constant_folding=True,
                          input_names=[INPUT_NAME], output_names=[MAP_NAME, SCORE_NAME], dynamic_axes=dynamic)
    return onnx.load_from_string(buf.getvalue())


def _basic_optimize(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's basic level: constant folding/redundancy elimination, standard ops only."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, src)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(dst)
        opts.log_severity_level = 3
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        return onnx.load(dst)


def _hygiene(model: onnx.ModelProto, cfg: ExportConfig) -> onnx.ModelProto:
    model = _basic_optimize(model)
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", cfg.opset))
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    if "BatchNormalization" in ops:
        raise StpmError("internal: batch norm was not folded into the convolutions")
    bad = unsupported_ops(ops) if cfg.opset <= TRT85_MAX_OPSET else set()
    if bad:
        raise StpmError(f"internal: the graph uses operators TensorRT 8.5 cannot parse: {', '.join(sorted(bad))}")
    return model


def export_onnx(checkpoint: Path, out_dir: Path, cfg: ExportConfig = ExportConfig(), *, name: str = "model",
                allow_pickle: bool = False) -> ExportResult:
    """Export ``checkpoint`` to ``out_dir/<name>.onnx`` and ``out_dir/<name>.json`` (atomically)."""
    t0 = time.perf_counter()
    model, meta = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    cfg = cfg.validated(meta)
    graph = ExportGraph(model, meta, cfg)
    onnx_model = _hygiene(_trace(graph, example_input(meta, cfg), cfg), cfg)
    metadata = build_metadata(meta, cfg, checkpoint, file_sha256(checkpoint))
    onnx_model.producer_name, onnx_model.producer_version = "stpm-edge", __version__
    onnx.helper.set_model_props(onnx_model, {METADATA_KEY: json.dumps(metadata)})
    out_dir = Path(out_dir)
    onnx_path, json_path = out_dir / f"{name}.onnx", out_dir / f"{name}.json"
    with atomic_path(onnx_path) as tmp_onnx, atomic_path(json_path) as tmp_json:
        onnx.save(onnx_model, tmp_onnx)
        tmp_json.write_text(json.dumps(metadata, indent=2) + "\n")
    ops = sorted({n.op_type for n in onnx_model.graph.node})
    logger.debug("exported %s (%s fusion, ops: %s)", onnx_path, cfg.fusion, ", ".join(ops))
    return ExportResult(onnx_path, json_path, metadata, ops, time.perf_counter() - t0)


def read_onnx_metadata(path: Path) -> dict:
    """The stpm-edge metadata of an exported ONNX file (one-line StpmError if absent)."""
    path = Path(path)
    if not path.is_file():
        raise StpmError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors of many kinds
        raise StpmError(f"{path}: not a readable ONNX file ({first_line(exc)})") from None
    return parse_metadata({p.key: p.value for p in model.metadata_props}, path)
