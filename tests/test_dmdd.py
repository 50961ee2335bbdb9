"""DMDD (models/dmdd) on real computations: the losses, the decouple student, the checkpoint,
the export (ORT parity, TensorRT 8.5 op allow-list, FP16) and the CLI path on sample data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from stpm_edge.data.io import list_images, read_image_bgr
from stpm_edge.data.preprocess import Preprocess
from stpm_edge.errors import StpmError
from stpm_edge.export.pipeline import ExportPlan, export_all
from stpm_edge.tensorrt.onnx_ops import TRT85_SUPPORTED_OPS
from stpm_edge.models.checkpoint import load_checkpoint
from stpm_edge.models.dmdd.config import DMDDConfig
from stpm_edge.models.dmdd.head import discrepancy_stack, image_score
from stpm_edge.models.dmdd.loss import (abnormal_fit_loss, abnormality_loss, cell_weights, dice_loss, focal_loss,
                                        normality_loss)
from stpm_edge.models.dmdd.method import dmdd_losses
from stpm_edge.models.method import MethodOptions
from stpm_edge.models.registry import get_method
from stpm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from stpm_edge.train.trainer import TrainConfig, train

TOL = 1e-4
TINY = dict(image_size=64, epochs=2, batch_size=8, time_budget_min=0, patience=10, seed=0, val_every=0)


# ----------------------------------------------------------------------------- losses
def _pool_features(x: torch.Tensor) -> list[torch.Tensor]:
    """A deterministic stand-in teacher: two levels of pooled pixels (C = 3)."""
    return [F.avg_pool2d(x, 4), F.avg_pool2d(x, 8)]


def _stub(student, abnormality: bool = True):
    cfg = DMDDConfig(abnormality=abnormality, seg=False, p_anomaly=1.0).resolved()
    return SimpleNamespace(config=cfg, teacher_features=_pool_features, student=student, seg=None, grid=(16, 16))


def test_normality_loss_targets_the_clean_images_teacher_features():
    gen_seed, x = 3, torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    # a student that reproduces the teacher's features of the CLEAN image (it ignores its anomalous input)
    clean = _stub(lambda xa: (_pool_features(x), [f.clone() for f in _pool_features(xa)]))
    terms = dmdd_losses(clean, x, torch.Generator().manual_seed(gen_seed))
    assert terms["normality"].abs().max() < 1e-6
    # a student that reproduces the teacher's features of the image it sees (the anomalous one)
    mimic = _stub(lambda xa: (_pool_features(xa), _pool_features(xa)))
    terms = dmdd_losses(mimic, x, torch.Generator().manual_seed(gen_seed))
    assert (terms["normality"] > 1e-6).all()  # every image was altered (p_anomaly=1): the target differs
    assert terms["fit"].abs().max() < 1e-6  # the abnormality branch fits T(x̃) outside the mask...
    torch.testing.assert_close(terms["abnormality"], torch.full((4,), 2.0))  # ...and is pushed inside (2 levels × margin 1)


def test_loss_terms_on_hand_computed_cases():
    t = [torch.randn(2, 8, 4, 4)]
    assert normality_loss(t, t).abs().max() < 1e-6
    torch.testing.assert_close(normality_loss(t, [-t[0]]), torch.full((2,), 2.0))  # d = 1 - cos = 2
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, :8, :8] = 1
    # s = t inside the mask: d = 0 → relu(margin - 0) = margin; an empty mask gives 0
    torch.testing.assert_close(abnormality_loss(t, t, mask, margin=0.7), torch.tensor([0.7, 0.0]))
    assert abnormality_loss(t, [-t[0]], mask, margin=1.0).abs().max() < 1e-6  # already beyond the margin
    torch.testing.assert_close(abnormal_fit_loss(t, [-t[0]], mask), torch.tensor([2.0, 2.0]))
    logits, target = torch.full((1, 1, 4, 4), 20.0), torch.ones(1, 1, 4, 4)
    assert focal_loss(logits, target) < 1e-8 and dice_loss(logits, target) < 1e-6
    assert dice_loss(torch.full((1, 1, 4, 4), -20.0), torch.zeros(1, 1, 4, 4)) < 1e-6
    assert focal_loss(-logits, target) > 10 and dice_loss(-logits, target) > 0.9


def test_abnormality_loss_acts_only_inside_the_mask():
    t = [torch.randn(3, 16, 8, 8), torch.randn(3, 16, 4, 4)]
    s = [v.clone().requires_grad_(True) for v in t]  # d = 0: the hinge is active wherever it is weighted
    mask = torch.zeros(3, 1, 32, 32)
    mask[0, :, 4:12, 20:30] = 1
    mask[1, :, 0:3, 0:3] = 1  # image 2: no anomaly
    abnormality_loss(t, [v + 0.01 * torch.randn_like(v) for v in s], mask).sum().backward()
    for level, v in zip(t, s):
        w = cell_weights(mask, level.shape[-2:])
        g = v.grad.abs().sum(dim=1, keepdim=True)
        assert (g[w == 0] == 0).all()  # exactly zero outside
        assert (g[w > 0] > 0).all()  # and acting everywhere inside
    assert (s[0].grad[2] == 0).all()


def test_discrepancy_maps_and_score():
    t, n, a = [torch.randn(2, 8, 8, 8)], [torch.randn(2, 8, 8, 8)], [torch.randn(2, 8, 8, 8)]
    stack = discrepancy_stack(t, n, a, (8, 8))
    assert stack.shape == (2, 2, 8, 8) and stack.min() >= 0 and stack.max() <= 2 + 1e-6
    amap = torch.zeros(1, 1, 10, 10)
    amap[0, 0, 0, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert image_score(amap, "max", 1).item() == 4.0 and image_score(amap, "topk", 2).item() == 3.5


def test_config_validation_and_round_trip():
    m = get_method("dmdd")
    cfg = m.make_config(MethodOptions(extra={"seg": False, "margin": 0.5, "score": "topk"}), (64, 64))
    assert cfg.layers == ("blocks.1", "blocks.2", "blocks.4") and not cfg.seg
    assert m.config_from_dict(json.loads(json.dumps(m.config_to_dict(cfg))), "x") == cfg
    assert cfg.fuse == "product"  # without the segmentation network the map is the product
    new = m.make_config(MethodOptions(), (64, 64))
    assert new.fuse == "seg_normality"  # the default (BENCHMARKS.md: DMDD's map choice)
    for c, was in ((cfg, "product"), (new, "seg")):  # checkpoints from before the option keep their map
        old = {k: v for k, v in m.config_to_dict(c).items() if k != "fuse"}
        assert m.config_from_dict(old, "old.pt").fuse == was
    for bad in ({"nope": 1}, {"margin": -1}, {"score": "mean"}, {"seg": 3}, {"topk": 0}, {"fuse": "sum"},
                {"stop_on": "seg"},
                {"seg": False, "fuse": "seg_product"}):
        with pytest.raises(StpmError):
            m.make_config(MethodOptions(extra=bad), (64, 64))


def test_stop_on_normality_follows_the_normality_term_alone():
    m = get_method("dmdd")
    model = m.build(m.make_config(MethodOptions(), (64, 64)), (64, 64), pretrained=False, seed=0).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        terms = dmdd_losses(model, x, torch.Generator().manual_seed(1))
        total = m.holdout_loss(model, x, SimpleNamespace(generator=torch.Generator().manual_seed(1)))
        model.config = DMDDConfig(**{**model.config.__dict__, "stop_on": "normality"}).resolved()
        normal = m.holdout_loss(model, x, SimpleNamespace(generator=torch.Generator().manual_seed(1)))
    assert set(terms) == {"normality", "abnormality", "fit", "seg"}
    torch.testing.assert_close(total, sum(terms.values()))
    torch.testing.assert_close(normal, terms["normality"])


def test_fuse_variants_share_the_trained_model():
    """fuse=product is the segmentation-free map of the same student; seg_product multiplies the
    segmentation probability into it, pixel by pixel (before the blur)."""
    m = get_method("dmdd")
    model = m.build(m.make_config(MethodOptions(blur_sigma=0.0), (64, 64)), (64, 64), pretrained=False, seed=0).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = {}
    with torch.no_grad():
        for fuse in ("seg", "product", "seg_product", "normality", "seg_normality"):
            model.config = DMDDConfig(**{**model.config.__dict__, "fuse": fuse}).resolved()
            maps[fuse], score = m.inference_module(model)(x)
            assert torch.allclose(score, maps[fuse].amax(dim=(1, 2, 3)))
    assert torch.all((maps["seg"] > 0) & (maps["seg"] < 1))
    assert torch.allclose(maps["seg_product"], maps["seg"] * maps["product"], rtol=1e-5, atol=1e-7)
    assert torch.allclose(maps["seg_normality"], maps["seg"] * maps["normality"], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(maps["product"], maps["normality"])


def test_decouple_student_shapes_and_gradients():
    m = get_method("dmdd")
    for abn in (True, False):
        cfg = m.make_config(MethodOptions(extra={"abnormality": abn}), (64, 64))
        model = m.build(cfg, (64, 64), pretrained=False, seed=0)
        x = torch.randn(2, 3, 64, 64)
        t, normal, abnormal = model(x)
        assert [f.shape for f in normal] == [f.shape for f in t]
        assert (abnormal is not None) == abn and (abnormal is None or [f.shape for f in abnormal] == [f.shape for f in t])
        loss = m.train_step(model, x, SimpleNamespace(generator=torch.Generator().manual_seed(0)))
        loss.backward()
        assert all(p.grad is None for p in model.teacher.parameters())
        assert all(p.grad is not None for p in model.seg.parameters())
        amap, score = model.predict(x)
        assert amap.shape == (2, 1, 64, 64) and score.shape == (2,)


# ----------------------------------------------------------------------------- training and export
@pytest.fixture(scope="module")
def dmdd_model(tmp_path_factory: pytest.TempPathFactory, brick_data: Path) -> Path:
    out = tmp_path_factory.mktemp("dmdd") / "dmdd.pt"
    train(brick_data, out, TrainConfig(method="dmdd", **TINY))
    return out


def test_checkpoint_round_trip_and_deterministic_holdout(dmdd_model: Path, brick_data: Path):
    model, meta = load_checkpoint(dmdd_model)
    assert meta.arch == "dmdd" and meta.config.seg and meta.normalization is not None
    m = meta.method
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        a = m.holdout_loss(model, x, SimpleNamespace(generator=torch.Generator().manual_seed(1)))
        b = m.holdout_loss(model, x, SimpleNamespace(generator=torch.Generator().manual_seed(1)))
    assert torch.equal(a, b) and torch.isfinite(a).all()
    state = m.state(model)
    assert set(state) == {"teacher", "student", "seg"}
    with pytest.raises(StpmError):
        m.load_state(model, {"teacher": state["teacher"], "student": state["student"]}, "x.pt")


def test_export_matches_pytorch_and_is_tensorrt_85_parseable(dmdd_model: Path, brick_data: Path, tmp_path: Path):
    man = export_all(dmdd_model, tmp_path, ExportPlan(fp16=True))
    model_onnx = onnx.load(man.onnx.onnx_path)
    onnx.checker.check_model(model_onnx, full_check=True)
    ops = {n.op_type for n in model_onnx.graph.node}
    assert ops <= TRT85_SUPPORTED_OPS, ops - TRT85_SUPPORTED_OPS
    assert [o.version for o in model_onnx.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [i.name for i in model_onnx.graph.input] == ["frames"]
    assert [o.name for o in model_onnx.graph.output] == ["anomaly_map", "score"]
    assert man.onnx.metadata.lowp.fp16 == ("/net/teacher/", "/net/student/")
    paths = (list_images(brick_data / "test" / "crack") + list_images(brick_data / "test" / "good"))[:2]
    import cv2

    frames = np.stack([cv2.resize(read_image_bgr(p), (64, 64), interpolation=cv2.INTER_LINEAR) for p in paths])
    model, meta = load_checkpoint(dmdd_model)
    with torch.no_grad():
        amap, score = model.predict(Preprocess(meta.preprocess)(torch.from_numpy(frames)))
    ref_map, ref_score = meta.normalization.normalize_pixel(amap.numpy()), meta.normalization.normalize_image(score.numpy())
    with OnnxRuntimeBackend(man.onnx.onnx_path, providers="cpu") as backend:
        got_map, got_score = backend.infer(frames[:1])
    assert got_map.shape == (1, 1, 64, 64)
    assert np.abs(got_map - ref_map[:1]).max() <= TOL and np.abs(got_score - ref_score[:1]).max() <= TOL
    with OnnxRuntimeBackend(man.fp16.onnx_path, providers="cpu") as backend:
        h_map, _ = backend.infer(frames[:1])
    assert np.abs(h_map - ref_map[:1]).max() < 0.5  # FP16 trunks: close, not exact


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name(args[0])
    return subprocess.run([str(exe), *args[1:]], capture_output=True, text=True, timeout=600)


def test_cli_train_and_eval_dmdd(brick_data: Path, tmp_path: Path):
    out = tmp_path / "cli.pt"
    res = _cli("stpm-train", str(brick_data), "-o", str(out), "--method", "dmdd", "--image-size", "64",
               "--epochs", "1", "--opt", "score=topk", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["epochs_run"] == 1 and out.is_file()
    res = _cli("stpm-eval", str(out), str(brick_data), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert 0.0 <= report["pixel_auroc"] <= 1.0 and 0.0 <= report["pro"] <= 1.0
    res = _cli("stpm-train", str(brick_data), "-o", str(tmp_path / "x.pt"), "--method", "dmdd", "--opt", "margin=9")
    assert res.returncode == 1 and "margin" in res.stderr and not (tmp_path / "x.pt").exists()


def test_input_norm_is_batch_norm_in_eval():
    from stpm_edge.models.dmdd.segnet import InputNorm

    norm, ref = InputNorm(3), torch.nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    norm(x), ref(x)  # one training step updates the running statistics of both
    with torch.no_grad():
        norm.weight.uniform_(), norm.bias.uniform_()
        ref.load_state_dict(norm.state_dict())
    norm.eval(), ref.eval()
    torch.testing.assert_close(norm(x), ref(x))
