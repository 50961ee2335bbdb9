"""Detector API: frame-sized results, threshold override, batches, bad frames, grey/BGRA input,
boxes from the mask, overlays; ``.pt`` checkpoints answer like their ONNX export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stpm_edge.data.io import list_images, read_image_bgr
from stpm_edge.errors import StpmError
from stpm_edge.models.deploy import ExportConfig
from stpm_edge.export.onnx_export import export_onnx
from stpm_edge.runtime import Detector
from stpm_edge.runtime.detector import boxes_from_mask, make_result, model_precision
from stpm_edge.runtime.overlay import OverlayStyle, colorize, render, short_label


@pytest.fixture(scope="module")
def onnx_model(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(small_model, tmp_path_factory.mktemp("det"), ExportConfig()).onnx_path


@pytest.fixture(scope="module")
def detector(onnx_model: Path):
    with Detector(onnx_model, backend="cpu") as det:
        yield det


@pytest.fixture(scope="module")
def frames(brick_data: Path) -> list[np.ndarray]:
    return [read_image_bgr(p) for p in list_images(brick_data / "test" / "good")[:2]
            + list_images(brick_data / "test" / "patch")[:1]]


def test_result_is_frame_sized(detector, frames):
    import cv2

    big = cv2.resize(frames[2], (200, 150))
    r = detector(big)
    assert r.anomaly_map.shape == (150, 200) and r.anomaly_map.dtype == np.float32
    assert r.mask.shape == (150, 200) and r.mask.dtype == np.bool_
    assert isinstance(r.score, float) and r.is_anomalous == (r.score >= 0.5) and r.threshold == 0.5
    assert np.array_equal(r.mask, r.anomaly_map >= 0.5)
    for b in r.boxes:
        assert 0 <= b.x < 200 and 0 <= b.y < 150 and b.score >= 0.5 and b.xywh == (b.x, b.y, b.w, b.h)


def test_batch_matches_single_calls(detector, frames):
    singles = [detector(f) for f in frames]
    batched = detector.batch(frames)
    assert [round(r.score, 5) for r in batched] == [round(r.score, 5) for r in singles]
    assert all(np.allclose(a.anomaly_map, b.anomaly_map, atol=1e-5) for a, b in zip(singles, batched))


def test_threshold_override(onnx_model, frames):
    with Detector(onnx_model, threshold=-100.0) as low, Detector(onnx_model, threshold=100.0) as high:
        assert low.threshold == -100.0
        r_low, r_high = low(frames[0]), high(frames[0])
    assert r_low.is_anomalous and r_low.mask.all() and len(r_low.boxes) == 1
    assert not r_high.is_anomalous and not r_high.mask.any() and r_high.boxes == []
    with pytest.raises(StpmError, match="threshold"):
        Detector(onnx_model, threshold=float("nan"))


def test_grey_and_bgra_frames_are_converted(detector, frames):
    import cv2

    grey = cv2.cvtColor(frames[0], cv2.COLOR_BGR2GRAY)
    as_bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    assert detector(grey).score == pytest.approx(detector(as_bgr).score, abs=1e-6)
    assert detector(grey[..., None]).score == pytest.approx(detector(as_bgr).score, abs=1e-6)
    bgra = cv2.cvtColor(frames[1], cv2.COLOR_BGR2BGRA)
    assert detector(bgra).score == pytest.approx(detector(frames[1]).score, abs=1e-6)


@pytest.mark.parametrize("bad, message", [
    (None, "got None"),
    ("frame.png", "got str"),
    (np.zeros((8, 8, 3), np.float32), "expected uint8"),
    (np.zeros((8, 8, 2), np.uint8), "1, 3 or 4 channels"),
    (np.zeros((0, 8, 3), np.uint8), "HxWx3"),
    (np.zeros((2, 8, 8, 3), np.uint8), "HxWx3"),
])
def test_bad_frames_are_one_line_errors(detector, bad, message):
    with pytest.raises(StpmError, match=message) as e:
        detector(bad)
    assert "\n" not in str(e.value)


def test_bad_model_paths(tmp_path):
    with pytest.raises(StpmError, match="no such model file"):
        Detector(tmp_path / "missing.onnx")
    with pytest.raises(StpmError, match="runs .pt checkpoints only"):
        Detector(tmp_path / "missing.onnx", backend="torch")


def test_checkpoint_runs_like_its_export(small_model, detector, frames):
    with Detector(small_model) as torch_det:
        assert torch_det.describe().startswith("torch (cpu)")
        for f in frames:
            a, b = torch_det(f), detector(f)
            assert a.score == pytest.approx(b.score, abs=1e-4)
            assert np.abs(a.anomaly_map - b.anomaly_map).max() < 1e-4


def test_boxes_from_mask_components_and_peaks():
    amap = np.zeros((20, 30), np.float32)
    amap[2:5, 3:9] = 0.7
    amap[3, 4] = 0.9
    amap[10:18, 20:22] = 0.6
    boxes = boxes_from_mask(amap >= 0.5, amap)
    assert [b.xywh for b in boxes] == [(3, 2, 6, 3), (20, 10, 2, 8)]
    assert boxes[0].score == pytest.approx(0.9) and boxes[0].area == 18 and boxes[1].area == 16
    assert boxes_from_mask(np.zeros((5, 5), bool), np.zeros((5, 5), np.float32)) == []


def test_make_result_resizes_the_map_bilinearly():
    small = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    r = make_result((4, 8, 3), small[None, None], 0.7, 0.5)
    assert r.anomaly_map.shape == (4, 8) and r.is_anomalous
    assert r.anomaly_map[:, 0].max() == 0.0 and r.anomaly_map[:, -1].min() == 1.0
    assert r.to_dict()["boxes"][0]["x"] == 4


def test_overlay_modes(detector, frames):
    r = detector(frames[2])
    f = frames[2]
    for cmap in ("turbo", "JET", "inferno"):
        assert r.overlay(f, colormap=cmap).shape == f.shape
    assert r.overlay(f, side_by_side=True).shape == (f.shape[0], 2 * f.shape[1], 3)
    assert np.array_equal(r.overlay(f, alpha=0.0, contours=False), f)
    with pytest.raises(StpmError, match="colormap"):
        r.overlay(f, colormap="rainbow")
    with pytest.raises(StpmError, match="alpha"):
        r.overlay(f, alpha=1.5)


def test_colour_scale_is_fixed():
    amap = np.array([[0.0, 0.5, 1.0, 3.0, -1.0]], np.float32)
    heat = colorize(amap, "jet")
    assert np.array_equal(heat[0, 2], heat[0, 3]) and np.array_equal(heat[0, 0], heat[0, 4])
    out = render(np.zeros((1, 5, 3), np.uint8), amap, amap >= 0.5, OverlayStyle("jet", alpha=1.0, contours=False))
    assert np.array_equal(out, heat)


def test_labels():
    assert short_label("onnxruntime (CUDAExecutionProvider, CPUExecutionProvider) fp16") == "onnxruntime CUDA fp16"
    assert short_label("tensorrt int8") == "tensorrt int8"
    from stpm_edge.artifact import ModelMetadata

    spec = {"name": "frames", "dtype": "uint8", "layout": "NHWC", "color": "BGR", "batch": 1, "height": 8, "width": 8}
    assert model_precision(ModelMetadata.from_dict({"input": spec, "precision": "int8"}), Path("m.onnx")) == "int8"
    assert model_precision(ModelMetadata.from_dict({"input": spec}), Path("model.onnx")) == "fp32"
