"""CFA (models/cfa): the loss on hand-computed cases, the memory-bank initialisation, the
search against brute force, checkpoint state, ONNX parity and TensorRT-8.5 ops, the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from stpm_edge.data.io import list_images, read_image_bgr
from stpm_edge.data.preprocess import Preprocess
from stpm_edge.errors import StpmError
from stpm_edge.export.onnx_export import export_onnx
from stpm_edge.tensorrt.onnx_ops import TRT85_SUPPORTED_OPS
from stpm_edge.models.cfa.config import CFAConfig
from stpm_edge.models.cfa.head import nearest_squared, patch_score, squared_distances
from stpm_edge.models.cfa.loss import hypersphere_loss_per_image, init_memory_bank, kmeans
from stpm_edge.models.checkpoint import load_checkpoint
from stpm_edge.models.deploy import ExportConfig
from stpm_edge.models.method import MethodOptions
from stpm_edge.models.registry import get_method
from stpm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from stpm_edge.train.trainer import TrainConfig, train

TOL = 1e-4
SMALL = dict(method="cfa", image_size=64, epochs=2, batch_size=8, patience=10, seed=0)


@pytest.fixture(scope="module")
def cfa_model(tmp_path_factory: pytest.TempPathFactory, brick_data: Path) -> Path:
    out = tmp_path_factory.mktemp("cfa") / "cfa.pt"
    train(brick_data, out, TrainConfig(**SMALL))
    return out


def _model(size: int = 64, **opts):
    method = get_method("cfa")
    cfg = method.make_config(MethodOptions(extra=opts), (size, size))
    return method, method.build(cfg, (size, size), pretrained=False, seed=0).eval()


# -- the loss and the score on hand-computed cases -------------------------------------------
def test_hypersphere_loss_hand_computed():
    # K = 2 attracted, J = 2 repelled, r = 2 (r² = 4), α = 0.1, ν = 0.1; ascending squared distances.
    d2 = torch.tensor([[[0.5, 2.0, 3.0, 5.0],     # inside r: no attraction; 4-3-0.1 = 0.9 repulsion, 5 beyond
                        [3.0, 4.5, 4.5, 6.0]],    # 4.5 outside r: 0.5 attraction; beyond r+margin: none
                       [[1.0, 1.0, 1.0, 1.0],     # both repelled items inside: 2.9 each
                        [8.0, 9.0, 10.0, 11.0]]])  # attraction 4 and 5
    r = torch.tensor([2.0], requires_grad=True)
    loss = hypersphere_loss_per_image(d2, r, k=2, j=2, nu=0.1, alpha=0.1)
    expected = torch.tensor([(0.5 / 4 + 0.9 / 4) / 0.1, ((4 + 5) / 4 + 5.8 / 4) / 0.1])
    torch.testing.assert_close(loss, expected)
    # d/dr: attraction −2r per active item, repulsion +2r per active item, each over the 4 items / ν
    loss.sum().backward()
    n_att, n_rep = 1 + 2, 1 + 2
    assert math.isclose(float(r.grad), (-2 * 2.0 * n_att + 2 * 2.0 * n_rep) / 4 / 0.1, rel_tol=1e-6)
    # J = 0: attraction only; the margin moves the repulsion boundary
    only_att = hypersphere_loss_per_image(d2, torch.tensor([2.0]), k=2, j=0, nu=0.1, alpha=0.1)
    torch.testing.assert_close(only_att, torch.tensor([0.5 / 4 / 0.1, 9 / 4 / 0.1]))
    no_margin = hypersphere_loss_per_image(d2[:1], torch.tensor([2.0]), k=2, j=2, nu=1.0, alpha=0.0)
    torch.testing.assert_close(no_margin, torch.tensor([0.5 / 4 + 1.0 / 4]))


def test_patch_score_is_softmin_weighted_nearest_distance():
    d2 = torch.tensor([[[1.0, 4.0, 9.0]]])  # distances 1, 2, 3
    w0 = math.exp(-1) / (math.exp(-1) + math.exp(-2) + math.exp(-3))
    assert math.isclose(float(patch_score(d2)), w0 * 1.0, rel_tol=1e-6)


def test_search_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    phi, bank = torch.randn(2, 50, 7, generator=g), torch.randn(30, 7, generator=g)
    d2 = squared_distances(phi, bank.t(), (bank * bank).sum(1))
    torch.testing.assert_close(d2, torch.cdist(phi, bank.expand(2, -1, -1)) ** 2, rtol=1e-4, atol=1e-4)
    near = nearest_squared(phi, bank.t(), (bank * bank).sum(1), 4)
    torch.testing.assert_close(near, torch.sort(d2, dim=2).values[..., :4])


# -- the memory bank ------------------------------------------------------------------------
def test_memory_bank_is_the_mean_per_position_and_independent_of_image_count():
    _, model = _model(64)
    g = torch.Generator().manual_seed(1)
    for n in (2, 5):
        x = torch.randn(n, 3, 64, 64, generator=g)
        bank = init_memory_bank(model, x, 3, torch.device("cpu"), torch.Generator().manual_seed(0)).clone()
        with torch.no_grad():
            emb = model(x)  # (n, D, 16, 16)
        assert bank.shape == (16 * 16, emb.shape[1])
        torch.testing.assert_close(bank, emb.mean(0).reshape(emb.shape[1], -1).t(), rtol=1e-5, atol=1e-5)


def test_memory_bank_compression_by_kmeans():
    _, model = _model(64, gamma_c=4)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    a = init_memory_bank(model, x, 8, torch.device("cpu"), torch.Generator().manual_seed(0)).clone()
    b = init_memory_bank(model, x, 8, torch.device("cpu"), torch.Generator().manual_seed(0)).clone()
    assert a.shape == (16 * 16 // 4, model.memory_bank.shape[1]) and torch.equal(a, b)
    # well-separated clusters are found exactly
    pts = torch.cat([torch.full((10, 2), 0.0), torch.full((10, 2), 5.0), torch.full((10, 2), -5.0)])
    pts = pts + 0.01 * torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    c = kmeans(pts, 3, torch.Generator().manual_seed(0))
    assert sorted(round(float(v)) for v in c[:, 0]) == [-5, 0, 5]


# -- config ---------------------------------------------------------------------------------
def test_config_options_and_errors():
    method = get_method("cfa")
    cfg = method.make_config(MethodOptions(extra={"gamma_c": 4, "radius": 0, "learn_radius": "false"}), (64, 64))
    assert cfg.gamma_c == 4 and cfg.radius == 0.0 and cfg.learn_radius is False
    assert method.config_from_dict(method.config_to_dict(cfg), "x") == cfg
    assert cfg.layers == ("blocks.1", "blocks.2", "blocks.4") and cfg.embed_channels() == (176, 176)
    for bad in ({"foo": 1}, {"k": 0}, {"nu": 0.0}, {"gamma_d": 1.5}, {"k": 40, "j": 40}):
        with pytest.raises(StpmError):
            method.make_config(MethodOptions(extra=bad), (64, 64))
    with pytest.raises(StpmError):
        CFAConfig.from_dict({"backbone": "efficientnet_lite0", "layers": [], "bogus": 1}, "x")


def test_feature_grid_matches_the_backbone():
    _, model = _model(72)
    with torch.no_grad():
        assert tuple(model(torch.zeros(1, 3, 72, 72)).shape[-2:]) == model.feature_size


# -- trained model: state, export, ops, CLI ------------------------------------------------
def test_checkpoint_round_trip_and_training_moves_the_descriptor(cfa_model):
    model, meta = load_checkpoint(cfa_model)
    assert meta.arch == "cfa" and meta.method.name == "cfa"
    assert model.memory_bank.shape == (16 * 16, 176) and model.memory_bank.abs().sum() > 0
    assert float(model.radius.detach()) > 1e-5  # r is learnt (initial 1e-5)
    assert meta.normalization.image_threshold > meta.normalization.min_value


def _frames(data: Path, n: int) -> np.ndarray:
    paths = (list_images(data / "test" / "crack") + list_images(data / "test" / "good"))[:n]
    return np.stack([read_image_bgr(p) for p in paths])


def _reference(model_path: Path, frames: np.ndarray):
    model, meta = load_checkpoint(model_path)
    net = meta.method.inference_module(model).eval()
    with torch.no_grad():
        amap, score = net(Preprocess(meta.preprocess)(torch.from_numpy(frames)))
    norm = meta.normalization
    return norm.normalize_pixel(amap.numpy()), norm.normalize_image(score.numpy())


def test_onnxruntime_matches_pytorch_and_graph_is_tensorrt_85_parseable(cfa_model, brick_data, tmp_path):
    frames = _frames(brick_data, 3)
    ref_map, ref_score = _reference(cfa_model, frames)
    dyn = export_onnx(cfa_model, tmp_path / "dyn", ExportConfig(dynamic_batch=True, frame_size=(128, 128)))
    fixed = export_onnx(cfa_model, tmp_path / "b1", ExportConfig(frame_size=(128, 128)))
    for path, batches in ((dyn.onnx_path, (frames[:1], frames)), (fixed.onnx_path, (frames[:1],))):
        with OnnxRuntimeBackend(path, providers="cpu") as backend:
            for x in batches:
                amap, score = backend.infer(x)
                assert amap.shape == (len(x), 1, 64, 64) and score.shape == (len(x),)
                assert np.abs(amap - ref_map[:len(x)]).max() <= TOL
                assert np.abs(score - ref_score[:len(x)]).max() <= TOL
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        ops = {n.op_type for n in model.graph.node}
        assert ops <= TRT85_SUPPORTED_OPS, ops - TRT85_SUPPORTED_OPS
        assert {"MatMul", "TopK"} <= ops
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
        # the search is outside the low-precision region; the memory bank is a constant
        search = [n for n in model.graph.node if n.op_type in ("MatMul", "TopK")]
        assert search and all(n.name.startswith("/net/search/") for n in search)
        assert any(n.name.startswith("/net/backbone/") for n in model.graph.node)
        assert any(n.name.startswith("/net/descriptor/") for n in model.graph.node)
        assert any(tuple(i.dims) == (176, 256) for i in model.graph.initializer)
    meta = json.loads(dyn.json_path.read_text())
    assert meta["arch"] == "cfa" and meta["method"]["name"] == "cfa"


def _cli(*args: str) -> subprocess.CompletedProcess:
    code = f"import sys; sys.argv[0] = {args[0]!r}; from stpm_edge.cli.entry import {args[0]}; {args[0]}()"
    return subprocess.run([sys.executable, "-c", code, *args[1:]], capture_output=True, text=True, timeout=600)


def test_cli_train_eval_info(brick_data, tmp_path):
    out = tmp_path / "m.pt"
    res = _cli("train_main", str(brick_data), "--method", "cfa", "-o", str(out), "--image-size", "64",
               "--epochs", "1", "--opt", "gamma_c=4", "--json")
    assert res.returncode == 0, res.stderr
    ev = json.loads(_cli("eval_main", str(out), str(brick_data), "--json").stdout)
    assert 0.0 <= ev["image_auroc"] <= 1.0 and 0.0 <= ev["pixel_auroc"] <= 1.0
    bad = _cli("train_main", str(brick_data), "--method", "cfa", "-o", str(tmp_path / "x.pt"), "--opt", "bogus=1")
    assert bad.returncode != 0 and "bogus" in bad.stderr and "Traceback" not in bad.stderr
    model, meta = load_checkpoint(out)
    assert meta.config.gamma_c == 4 and model.memory_bank.shape[0] == 16 * 16 // 4
