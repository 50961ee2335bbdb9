"""STPM's head at feature resolution (``head=feature``): its definition, the old head untouched,
the config option, and the export with ``--map-size feature`` (ORT vs PyTorch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stpm_edge.data.preprocess import Preprocess, PreprocessSpec
from stpm_edge.errors import StpmError
from stpm_edge.export.onnx_export import export_onnx
from stpm_edge.models.backbones import get_spec
from stpm_edge.models.checkpoint import ModelMeta, Normalization, load_checkpoint, save_checkpoint
from stpm_edge.models.deploy import ExportConfig, ExportGraph
from stpm_edge.models.method import MethodOptions
from stpm_edge.models.stpm import STPM, STPMConfig
from stpm_edge.models.stpm.head import AnomalyMapHead, GaussianBlur, feature_grid, level_distance, make_head
from stpm_edge.models.stpm.method import STPMMethod
from stpm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend


def _pyramid(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 16, 16), (6, 8, 8), (8, 4, 4)]
    return ([torch.randn(n, *s, generator=g) for s in shapes], [torch.randn(n, *s, generator=g) for s in shapes])


def test_feature_head_is_the_product_on_the_finest_grid_blurred_with_scaled_sigma():
    t, s = _pyramid(2, 0)
    head = AnomalyMapHead.at_features((64, 64), 4, blur_sigma=4.0)
    assert head.output_size == (16, 16) and head.blur.sigma == 1.0
    amap, score = head(t, s)
    d = [level_distance(a, b) for a, b in zip(t, s)]
    up = [d[0]] + [F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False) for x in d[1:]]
    expected = GaussianBlur(1.0, (16, 16))(up[0] * up[1] * up[2])
    torch.testing.assert_close(amap, expected, rtol=1e-6, atol=1e-9)
    assert amap.shape == (2, 1, 16, 16) and score.shape == (2,)
    assert torch.equal(score, amap.amax(dim=(1, 2, 3)))  # score = max of the low-resolution map


def test_model_head_is_unchanged_by_the_option():
    t, s = _pyramid(2, 1)
    a, sa = make_head("model", (64, 64), 4.0, 4)(t, s)
    b, sb = AnomalyMapHead((64, 64), 4.0)(t, s)
    up = [F.interpolate(level_distance(x, y), size=(64, 64), mode="bilinear", align_corners=False) for x, y in zip(t, s)]
    assert torch.equal(a, b) and torch.equal(sa, sb) and a.shape == (2, 1, 64, 64)
    torch.testing.assert_close(a, GaussianBlur(4.0, (64, 64))(up[0] * up[1] * up[2]), rtol=0, atol=0)


def test_grid_is_ceil_of_size_over_stride_and_odd_sizes_resample():
    assert feature_grid((256, 256), 4) == (64, 64) and feature_grid((250, 97), 4) == (63, 25)
    t, s = _pyramid(1, 2)  # a 16×16 finest level onto a 15×15 grid: resampled, no error
    amap, _ = AnomalyMapHead((15, 15), 1.0)(t, s)
    assert amap.shape == (1, 1, 15, 15) and torch.isfinite(amap).all()


def test_head_option_in_config_and_checkpoint_dict():
    m = STPMMethod()
    cfg = m.make_config(MethodOptions(backbone="resnet18", extra={"head": "feature"}), (64, 64))
    assert cfg.head == "feature" and cfg.finest_stride() == 4 and m.map_grid(cfg, (64, 64)) == (16, 16)
    assert STPMConfig.from_dict(cfg.to_dict(), "x") == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k != "head"}
    assert STPMConfig.from_dict(old, "x").head == "model"  # checkpoints before the option
    with pytest.raises(StpmError, match="head"):
        m.make_config(MethodOptions(extra={"head": "tiny"}), (64, 64))
    with pytest.raises(StpmError, match="head"):
        m.export_options({"head": "tiny"})


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    config = STPMConfig("resnet18", (), 4.0).resolved()
    model = STPM.build(config, (64, 64), pretrained=False, seed=0)
    spec = get_spec("resnet18")
    path = tmp_path_factory.mktemp("fh") / "m.pt"
    save_checkpoint(path, model, ModelMeta("stpm", config, PreprocessSpec((64, 64), spec.mean, spec.std),
                                           normalization=Normalization(0.5, 0.2, 0.0)))
    return path


@pytest.mark.parametrize("map_size", ["feature", "model"])
def test_export_of_the_feature_head_matches_pytorch(tiny_checkpoint, tmp_path, map_size):
    cfg = ExportConfig(map_size=map_size, method_options={"head": "feature"})
    res = export_onnx(tiny_checkpoint, tmp_path, cfg)
    side = 16 if map_size == "feature" else 64
    assert res.metadata.outputs["anomaly_map"]["shape"] == [1, 1, side, side]
    frames = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    model, meta = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        net = meta.method.inference_module(model, options={"head": "feature"}).eval()
        raw_map, raw_score = net(Preprocess(meta.preprocess)(torch.from_numpy(frames)))
        if map_size == "model":
            raw_map = F.interpolate(raw_map, size=(64, 64), mode="bilinear", align_corners=False)
        graph = ExportGraph(model, meta, cfg.validated(meta))
        g_map, g_score = graph(torch.from_numpy(frames))
    norm = meta.normalization
    ref_map, ref_score = norm.normalize_pixel(raw_map.numpy()), norm.normalize_image(raw_score.numpy())
    np.testing.assert_allclose(g_map.numpy(), ref_map, atol=1e-5)
    with OnnxRuntimeBackend(res.onnx_path, providers="cpu") as backend:
        amap, score = backend.infer(frames)
    assert amap.shape == (1, 1, side, side)
    assert np.abs(amap - ref_map).max() <= 1e-4 and np.abs(score - ref_score).max() <= 1e-4


def test_map_size_feature_of_the_model_head_is_the_model_size(tiny_checkpoint, tmp_path):
    res = export_onnx(tiny_checkpoint, tmp_path, ExportConfig(map_size="feature"))
    assert res.metadata.outputs["anomaly_map"]["shape"] == [1, 1, 64, 64]
