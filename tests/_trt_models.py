"""Tiny stand-in models for the TensorRT tests that need no GPU: a real ONNX graph with the
exported-model contract (uint8 NHWC frames in, anomaly_map + score out, stpm_edge metadata)
and node names in the exporter's scopes (/pre/, /trunks/, /head/), plus engine sidecars."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from stpm_edge.tensorrt.engine_meta import ENGINE_FORMAT, ENGINE_FORMAT_VERSION, sidecar_path


def metadata(batch: int | None = 1, h: int = 8, w: int = 8, precision: str | None = None) -> dict:
    n = "N" if batch is None else batch
    meta = {
        "format": "stpm-edge/onnx", "format_version": 1, "arch": "stpm",
        "input": {"name": "frames", "dtype": "uint8", "layout": "NHWC", "color": "BGR", "batch": batch,
                  "height": h, "width": w, "shape": [n, h, w, 3]},
        "outputs": {"anomaly_map": {"dtype": "float32", "shape": [n, 1, h, w]},
                    "score": {"dtype": "float32", "shape": [n]}},
        "threshold": 0.5,
        "checkpoint": {"file": "model.pt", "sha256": "0" * 64},
    }
    if precision:
        meta["precision"] = precision
    return meta


def write_onnx(path: Path, batch: int | None = 1, h: int = 8, w: int = 8, precision: str | None = None) -> Path:
    """A valid ONNX graph: map = mean over channels / 255, score = max of the map."""
    n = "N" if batch is None else batch
    nodes = [
        helper.make_node("Cast", ["frames"], ["x"], name="/pre/Cast", to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], name="/trunks/trunk/ReduceMean", axes=[3], keepdims=1),
        helper.make_node("Transpose", ["m"], ["t"], name="/head/Transpose", perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["t", "k"], ["anomaly_map"], name="/Mul"),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], name="/head/ReduceMax", axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("frames", TensorProto.UINT8, [n, h, w, 3])],
        [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [n, 1, h, w]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, [n])],
        [helper.make_tensor("k", TensorProto.FLOAT, [], [1.0 / 255.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"stpm_edge": json.dumps(metadata(batch, h, w, precision))})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def reference(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    amap = (frames.astype(np.float32).mean(axis=3, keepdims=True) / 255.0).transpose(0, 3, 1, 2)
    return amap, amap.max(axis=(1, 2, 3))


def write_engine(path: Path, *, trt: str = "10.3.0", gpu: str = "Orin", cc: str = "8.7", precision: str = "fp16",
                 batch: int | None = 1, data: bytes = b"not really an engine", source: Path | None = None,
                 source_sha: str | None = None) -> Path:
    """An engine file and its sidecar as the builder writes them (the engine bytes are a placeholder)."""
    import hashlib

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    side = metadata(batch, precision=precision)
    side["engine"] = {"format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION, "file": path.name,
                      "sha256": hashlib.sha256(data).hexdigest(), "tensorrt": trt,
                      "gpu": {"name": gpu, "compute_capability": cc, "index": 0},
                      "source": {"file": source.name if source else "model.onnx",
                                 "sha256": source_sha or (hashlib.sha256(source.read_bytes()).hexdigest()
                                                          if source else "0" * 64)}}
    sidecar_path(path).write_text(json.dumps(side))
    return path
