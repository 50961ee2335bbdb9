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
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from stpm_edge import __version__
from stpm_edge.artifact import ANOMALY_MAP as MAP_NAME
from stpm_edge.artifact import INPUT_NAME, METADATA_KEY, ModelFiles, ModelMetadata, file_sha256
from stpm_edge.artifact import SCORE as SCORE_NAME
from stpm_edge.data.io import atomic_path
from stpm_edge.errors import StpmError
from stpm_edge.models.deploy import ExportConfig, ExportGraph, build_metadata, example_input
from stpm_edge.tensorrt.onnx_ops import TRT85_MAX_OPSET, unsupported_ops
from stpm_edge.models.checkpoint import ModelMeta, load_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    onnx_path: Path
    json_path: Path
    metadata: ModelMetadata
    op_types: list[str]
    seconds: float


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


def export_model(model: torch.nn.Module, meta: ModelMeta, checkpoint: Path, out_dir: Path,
                 cfg: ExportConfig = ExportConfig(), *, name: str = "model") -> ExportResult:
    """Export an in-memory ``model`` (loaded from ``checkpoint``) to ``out_dir/<name>.onnx`` and
    ``out_dir/<name>.json`` (atomically). ``model`` is modified (static padding) and not reusable."""
    t0 = time.perf_counter()
    files = ModelFiles(Path(out_dir), name)
    cfg = cfg.validated(meta)
    graph = ExportGraph(model, meta, cfg)
    onnx_model = _hygiene(_trace(graph, example_input(meta, cfg), cfg), cfg)
    metadata = build_metadata(meta, cfg, checkpoint, file_sha256(checkpoint))
    onnx_model.producer_name, onnx_model.producer_version = "stpm-edge", __version__
    onnx.helper.set_model_props(onnx_model, {METADATA_KEY: metadata.to_json()})
    onnx_path, json_path = files.onnx(), files.sidecar()
    with atomic_path(onnx_path) as tmp_onnx, atomic_path(json_path) as tmp_json:
        onnx.save(onnx_model, tmp_onnx)
        tmp_json.write_text(metadata.to_json(indent=2) + "\n")
    ops = sorted({n.op_type for n in onnx_model.graph.node})
    logger.debug("exported %s (ops: %s)", onnx_path, ", ".join(ops))
    return ExportResult(onnx_path, json_path, metadata, ops, time.perf_counter() - t0)


def export_onnx(checkpoint: Path, out_dir: Path, cfg: ExportConfig = ExportConfig(), *, name: str = "model",
                allow_pickle: bool = False) -> ExportResult:
    """Export ``checkpoint`` to ``out_dir/<name>.onnx`` and ``out_dir/<name>.json`` (atomically)."""
    model, meta = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    return export_model(model, meta, checkpoint, out_dir, cfg, name=name)
