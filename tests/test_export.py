"""Exporter: ONNX Runtime matches PyTorch; the graph is TensorRT-8.5-parseable; metadata; CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from stpm_edge.data.io import list_images, read_image_bgr
from stpm_edge.data.preprocess import Preprocess
from stpm_edge.errors import StpmError
from stpm_edge.models.stpm.fusion import ParallelTrunks, StackedTrunks
from stpm_edge.models.deploy import ExportConfig
from stpm_edge.artifact import read_onnx_metadata
from stpm_edge.export.onnx_export import export_onnx
from stpm_edge.tensorrt.onnx_ops import TRT85_SUPPORTED_OPS
from stpm_edge.models.backbones import create_backbone
from stpm_edge.models.checkpoint import file_sha256, load_checkpoint
from stpm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend

TOL = 1e-4


def _frames(data: Path, n: int, size: tuple[int, int] | None = None) -> np.ndarray:
    import cv2

    paths = (list_images(data / "test" / "crack") + list_images(data / "test" / "good"))[:n]
    imgs = [read_image_bgr(p) for p in paths]
    if size:
        imgs = [cv2.resize(i, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for i in imgs]
    return np.stack(imgs)


def _reference(model_path: Path, frames: np.ndarray, out_size: tuple[int, int] | None = None):
    """PyTorch: the same preprocessing module, model and normalisation, outside any graph."""
    model, meta = load_checkpoint(model_path)
    with torch.no_grad():
        amap, score = model.predict(Preprocess(meta.preprocess)(torch.from_numpy(frames)))
        if out_size:
            amap = F.interpolate(amap, size=out_size, mode="bilinear", align_corners=False)
    norm = meta.normalization
    return norm.normalize_pixel(amap.numpy()), norm.normalize_image(score.numpy())


@pytest.mark.parametrize("fusion", ["stacked", "parallel"])
@pytest.mark.parametrize("input_mode", ["uint8-bgr", "float-rgb"])
def test_onnxruntime_matches_pytorch(small_model, brick_data, tmp_path, fusion, input_mode):
    res = export_onnx(small_model, tmp_path / "dyn", ExportConfig(input=input_mode, method_options={"fusion": fusion}, dynamic_batch=True))
    fixed = export_onnx(small_model, tmp_path / "b1", ExportConfig(input=input_mode, method_options={"fusion": fusion}))
    frames = _frames(brick_data, 3, (96, 96))
    ref_map, ref_score = _reference(small_model, frames)
    _, meta = load_checkpoint(small_model)
    if input_mode == "float-rgb":
        with torch.no_grad():
            feed = Preprocess(meta.preprocess)(torch.from_numpy(frames)).numpy()
    else:
        feed = frames
    for path, batches in ((res.onnx_path, (feed[:1], feed)), (fixed.onnx_path, (feed[:1],))):
        with OnnxRuntimeBackend(path, providers="cpu") as backend:
            for x in batches:
                amap, score = backend.infer(x)
                n = len(x)
                assert amap.shape == (n, 1, 96, 96) and score.shape == (n,)
                assert np.abs(amap - ref_map[:n]).max() <= TOL
                assert np.abs(score - ref_score[:n]).max() <= TOL


def test_non_square_frames_are_resized_in_graph(small_model, brick_data, tmp_path):
    frames = _frames(brick_data, 2, (72, 120))  # H=72, W=120
    res = export_onnx(small_model, tmp_path, ExportConfig(frame_size=(72, 120), map_size="frame", dynamic_batch=True))
    assert res.metadata.input.to_dict()["shape"] == ["N", 72, 120, 3]
    ref_map, ref_score = _reference(small_model, frames, out_size=(72, 120))
    with OnnxRuntimeBackend(res.onnx_path, providers="cpu") as backend:
        amap, score = backend.infer(frames)
    assert amap.shape == (2, 1, 72, 120)
    assert np.abs(amap - ref_map).max() <= TOL and np.abs(score - ref_score).max() <= TOL


def test_stacked_trunk_computes_the_same_features_as_two_branches():
    teacher = create_backbone("resnet18", "layer1,layer2").eval()
    student = create_backbone("resnet18", "layer1,layer2").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        t1, s1 = ParallelTrunks(teacher, student)(x)
        t2, s2 = StackedTrunks(teacher, student)(x)
    for a, b in zip(t1 + s1, t2 + s2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_graph_is_clean_and_tensorrt_85_parseable(small_model, tmp_path):
    for cfg in (ExportConfig(), ExportConfig(method_options={"fusion": "parallel"}, dynamic_batch=True, frame_size=(120, 160))):
        res = export_onnx(small_model, tmp_path / cfg.method_options.get("fusion", "stacked"), cfg)
        model = onnx.load(res.onnx_path)
        onnx.checker.check_model(model, full_check=True)
        ops = {n.op_type for n in model.graph.node}
        assert ops <= TRT85_SUPPORTED_OPS, ops - TRT85_SUPPORTED_OPS
        assert "BatchNormalization" not in ops and "LpNormalization" not in ops
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
        assert [i.name for i in model.graph.input] == ["frames"]
        assert [o.name for o in model.graph.output] == ["anomaly_map", "score"]


def test_metadata_in_sidecar_and_graph(small_model, tmp_path):
    res = export_onnx(small_model, tmp_path, ExportConfig(blur=False))
    sidecar = json.loads(res.json_path.read_text())
    assert sidecar == read_onnx_metadata(res.onnx_path).to_dict() == res.metadata.to_dict()
    assert sidecar["lowp"] == {"fp16": ["/net/trunks/trunk/"], "int8": ["/net/trunks/trunk/"]} and sidecar["format_version"] == 2
    assert sidecar["input"] == {"name": "frames", "dtype": "uint8", "layout": "NHWC", "color": "BGR", "batch": 1,
                                "height": 96, "width": 96, "shape": [1, 96, 96, 3]}
    assert sidecar["threshold"] == 0.5 and sidecar["method"]["blur_sigma"] == 0.0
    assert sidecar["checkpoint"]["sha256"] == file_sha256(small_model)
    _, meta = load_checkpoint(small_model)
    assert sidecar["normalization"]["image_threshold"] == meta.normalization.image_threshold
    assert sidecar["method"]["layers"] == list(meta.config.layers) and sidecar["versions"]["onnx"] == onnx.__version__


def test_bad_options_and_inputs(small_model, tmp_path):
    with pytest.raises(StpmError, match="--input"):
        export_onnx(small_model, tmp_path, ExportConfig(input="yuv"))
    with pytest.raises(StpmError, match="float-rgb"):
        export_onnx(small_model, tmp_path, ExportConfig(input="float-rgb", frame_size=(100, 100)))
    with pytest.raises(StpmError, match="no such checkpoint"):
        export_onnx(tmp_path / "missing.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name(args[0])
    return subprocess.run([str(exe), *args[1:]], capture_output=True, text=True, timeout=600)


def test_cli_export_info_and_eval_parity(small_model, brick_data, tmp_path):
    out = tmp_path / "exp"
    # frames at the data's size (128 px): the in-graph resize to the 96 px model is then the same
    # code PyTorch evaluation runs (a host-side uint8 resize would round before the graph)
    res = _cli("stpm-export", str(small_model), "-o", str(out), "--dynamic-batch", "--frame-size", "128x128", "--json")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    info = json.loads(_cli("stpm", "info", str(out / "model.onnx"), "--json").stdout)
    assert info["format"] == "stpm-edge/onnx" and info["input"]["batch"] is None
    onnx_eval = json.loads(_cli("stpm-eval", str(out / "model.onnx"), str(brick_data), "--json").stdout)
    torch_eval = json.loads(_cli("stpm-eval", str(small_model), str(brick_data), "--json").stdout)
    for key in ("image_auroc", "pixel_auroc", "pro"):
        assert round(onnx_eval[key], 3) == round(torch_eval[key], 3), key
    assert onnx_eval["f1"] == torch_eval["f1"]  # threshold 0.5 in normalised units = the raw threshold


def test_cli_export_refuses_bad_checkpoints_and_writes_nothing(small_model, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(small_model.read_bytes()[:4096])
    out = tmp_path / "out"
    res = _cli("stpm-export", str(corrupt), "-o", str(out))
    assert res.returncode == 1 and res.stderr.startswith("stpm-export: ") and res.stderr.strip().count("\n") == 0
    assert not out.exists()
    res = _cli("stpm-export", str(small_model), "-o", str(out), "--frame-size", "big")
    assert res.returncode == 1 and "WIDTHxHEIGHT" in res.stderr and not out.exists()
