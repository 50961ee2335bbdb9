"""RSTPM (models/rstpm): the attention student, the reconstruction target (teacher B on the
CLEAN image), the loss, determinism, the checkpoint, the export (ORT parity, op allow-list,
the INT8 CPU rewrite) and the CLI on tiny sample data. Small sizes, random-init networks
where weights do not matter."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from _cli import CliRunner
from stpm_edge.cli.app import app
from stpm_edge.data.io import list_images, read_image_bgr
from stpm_edge.data.preprocess import Preprocess
from stpm_edge.data.synth import SynthBatch
from stpm_edge.errors import StpmError
from stpm_edge.export.onnx_export import export_onnx
from stpm_edge.tensorrt.onnx_ops import TRT85_SUPPORTED_OPS
from stpm_edge.models.backbones import create_backbone
from stpm_edge.models.checkpoint import load_checkpoint
from stpm_edge.models.deploy import ExportConfig
from stpm_edge.models.method import MethodOptions, StepContext
from stpm_edge.models.registry import get_method
from stpm_edge.models.rstpm import method as rstpm_method
from stpm_edge.models.rstpm.attention import Attention, AttentionStudent
from stpm_edge.models.rstpm.config import RSTPMConfig
from stpm_edge.models.rstpm.loss import reconstruction_loss_per_image, rstpm_loss_per_image
from stpm_edge.models.stpm.loss import stpm_loss_per_image
from stpm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend

SIZE = (64, 64)
TOL = 1e-4


@pytest.fixture(scope="module")
def method():
    return get_method("rstpm")


@pytest.fixture(scope="module")
def tiny(method):
    torch.manual_seed(0)
    cfg = method.make_config(MethodOptions(), SIZE)
    return method.build(cfg, SIZE, pretrained=False, seed=0).eval()


def _ctx(seed: int = 1) -> StepContext:
    return StepContext(0, torch.Generator().manual_seed(seed), torch.device("cpu"), 2)


def test_attention_student_shapes_and_gradients():
    teacher_b = create_backbone("efficientnet_lite1").eval()
    student = AttentionStudent(create_backbone("efficientnet_lite0"))
    x = torch.randn(2, 3, 64, 64)
    feats = student(x)
    with torch.no_grad():
        target = teacher_b(x)
    assert [tuple(f.shape) for f in feats] == [tuple(t.shape) for t in target]
    assert [f.shape[1] for f in feats] == [24, 40, 112] and [64 // f.shape[-1] for f in feats] == [4, 8, 16]
    reconstruction_loss_per_image(target, feats).sum().backward()
    for name, p in student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(float(a.spatial[0].weight.grad.abs().sum()) > 0 for a in student.attention)
    assert float(student.trunk.stem[0].weight.grad.abs().sum()) > 0


def test_attention_gates_are_the_documented_products():
    att = Attention(8).eval()
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        att.spatial[0].weight.zero_()
        att.spatial[0].bias.zero_()  # spatial gate = sigmoid(0) = 0.5 everywhere
        expected = x * att.channel(x) * 0.5
        torch.testing.assert_close(att(x), expected)
        assert ((att.channel(x) > 0) & (att.channel(x) < 1)).all()


def test_loss_on_a_hand_computed_case():
    t = [torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)]
    s_same, s_orth = [torch.tensor([3.0, 0.0]).view(1, 2, 1, 1)], [torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)]
    assert float(reconstruction_loss_per_image(t, s_same)) == pytest.approx(0.0)
    assert float(reconstruction_loss_per_image(t, s_orth)) == pytest.approx(1.0)  # 0.5·|(1,0)−(0,1)|²
    assert float(rstpm_loss_per_image(t, s_orth, t, s_orth, weight_b=0.5)) == pytest.approx(1.5)


def test_reconstruction_target_is_teacher_b_on_the_clean_image(method, tiny, monkeypatch):
    """A known (clean, altered) pair: student B sees the altered image, teacher B the clean one,
    pair A the clean one."""
    g = torch.Generator().manual_seed(3)
    clean = torch.randn(2, 3, *SIZE, generator=g)
    altered = clean.clone()
    altered[:, :, 16:40, 16:40] = torch.randn(2, 3, 24, 24, generator=g)  # a synthetic square
    mask = torch.zeros(2, 1, *SIZE)
    mask[:, :, 16:40, 16:40] = 1
    monkeypatch.setattr(rstpm_method, "synthesize",
                        lambda x, gen, cfg: SynthBatch(altered, mask, torch.ones(2, dtype=torch.bool)))
    with torch.no_grad():
        loss = method.holdout_loss(tiny, clean, _ctx())
        ta, sa = tiny.teacher_a(clean), tiny.student_a(clean)
        tb_clean, tb_alt, sb_alt = tiny.teacher_b(clean), tiny.teacher_b(altered), tiny.student_b(altered)
        expected = stpm_loss_per_image(ta, sa) + reconstruction_loss_per_image(tb_clean, sb_alt)
        wrong = stpm_loss_per_image(ta, sa) + reconstruction_loss_per_image(tb_alt, sb_alt)
        t_a, s_a, t_b, s_b = tiny(clean, altered)
    torch.testing.assert_close(loss, expected)
    assert (loss - wrong).abs().min() > 1e-6
    for a, b in zip(t_b, tb_clean):
        torch.testing.assert_close(a, b)
    for a, b in zip(s_b, sb_alt):
        torch.testing.assert_close(a, b)
    assert not t_b[0].requires_grad


def test_holdout_loss_is_deterministic_and_train_step_trains_both_students(method):
    cfg = method.make_config(MethodOptions(), SIZE)
    model = method.build(cfg, SIZE, pretrained=False, seed=0)
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        assert torch.equal(method.holdout_loss(model, x, _ctx()), method.holdout_loss(model, x, _ctx()))
    model.train()
    assert not model.teacher_a.training and not model.teacher_b.training
    loss = method.train_step(model, x, _ctx())
    loss.backward()
    assert all(p.grad is None for p in model.teacher_a.parameters())
    assert all(p.grad is None for p in model.teacher_b.parameters())
    assert any(p.grad is not None for p in model.student_a.parameters())
    assert any(p.grad is not None for p in model.student_b.parameters())
    group = method.optimizer(model, MethodOptions()).param_groups[0]["params"]
    assert len(group) == len(list(model.student_a.parameters())) + len(list(model.student_b.parameters()))


def test_config_options_and_validation(method):
    cfg = method.make_config(MethodOptions(extra={"teacher_b": "efficientnet_lite2", "student_b": "efficientnet_lite2",
                                                  "weight_b": 2}), SIZE)
    assert cfg.teacher_b == "efficientnet_lite2" and cfg.weight_b == 2.0
    assert RSTPMConfig.from_dict(cfg.to_dict(), "x") == cfg
    with pytest.raises(StpmError, match="different teacher"):
        method.make_config(MethodOptions(extra={"teacher_b": "efficientnet_lite0"}), SIZE)
    with pytest.raises(StpmError, match="no option"):
        method.make_config(MethodOptions(extra={"bogus": 1}), SIZE)
    with pytest.raises(StpmError, match="normalisations"):
        method.make_config(MethodOptions(backbone="resnet18"), SIZE)
    with pytest.raises(StpmError, match="channels"):
        method.make_config(MethodOptions(extra={"teacher_b": "efficientnet_lite2"}), SIZE)
    assert method.make_config(MethodOptions(extra={"teacher_b": "efficientnet_lite2", "student_b": "efficientnet_lite2"}),
                              SIZE).student_b == "efficientnet_lite2"
    with pytest.raises(StpmError, match="combine"):
        RSTPMConfig(combine="sum").resolved()


def test_inference_combines_both_pairs_as_a_product(method, tiny):
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ta, sa, tb, sb = tiny(x)
        map_a, map_b = tiny.head.pair_maps(ta, sa, tb, sb)
        amap, score = method.inference_module(tiny, blur_sigma=0.0)(x)
        stacked, _ = method.inference_module(tiny, blur_sigma=0.0, options={"fusion": "stacked"})(x)
    torch.testing.assert_close(amap, map_a * map_b)
    torch.testing.assert_close(stacked, amap, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(score, amap.amax(dim=(1, 2, 3)))
    assert method.low_precision({"fusion": "stacked"}) == ("pair_a/trunk", "pair_b/teacher", "pair_b/student")


@pytest.fixture(scope="module")
def rstpm_model(tmp_path_factory, brick_data: Path) -> Path:
    out = tmp_path_factory.mktemp("rstpm") / "rstpm.pt"
    res = CliRunner().invoke(app, ["train", str(brick_data), "-o", str(out), "--method", "rstpm", "--image-size", "64",
                                   "--epochs", "2", "--batch-size", "8", "--val-every", "0", "--json"])
    assert res.exit_code == 0, res.output + str(res.exception)
    info = json.loads(res.stdout)
    assert info["epochs_run"] == 2
    return out


def test_cli_train_checkpoint_round_trip_and_eval(rstpm_model, brick_data):
    model, meta = load_checkpoint(rstpm_model)
    assert meta.arch == "rstpm" and meta.config.teacher_b == "efficientnet_lite1"
    assert meta.normalization is not None
    res = CliRunner().invoke(app, ["eval", str(rstpm_model), str(brick_data), "--json"])
    assert res.exit_code == 0, res.output
    assert 0.0 <= json.loads(res.stdout)["image_auroc"] <= 1.0


def _frames(data: Path, n: int) -> np.ndarray:
    import cv2

    paths = (list_images(data / "test" / "crack") + list_images(data / "test" / "good"))[:n]
    return np.stack([cv2.resize(read_image_bgr(p), (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR) for p in paths])


@pytest.mark.parametrize("fusion", ["stacked", "parallel"])
def test_export_matches_pytorch_and_is_tensorrt_85_parseable(rstpm_model, brick_data, tmp_path, fusion):
    res = export_onnx(rstpm_model, tmp_path, ExportConfig(method_options={"fusion": fusion}, dynamic_batch=True))
    model, meta = load_checkpoint(rstpm_model)
    frames = _frames(brick_data, 3)
    with torch.no_grad():
        amap, score = model.predict(Preprocess(meta.preprocess)(torch.from_numpy(frames)))
    norm = meta.normalization
    ref_map, ref_score = norm.normalize_pixel(amap.numpy()), norm.normalize_image(score.numpy())
    with OnnxRuntimeBackend(res.onnx_path, providers="cpu") as backend:
        got_map, got_score = backend.infer(frames)
    assert got_map.shape == (3, 1, *SIZE)
    assert np.abs(got_map - ref_map).max() <= TOL and np.abs(got_score - ref_score).max() <= TOL
    graph = onnx.load(res.onnx_path)
    onnx.checker.check_model(graph, full_check=True)
    ops = {n.op_type for n in graph.graph.node}
    assert ops <= TRT85_SUPPORTED_OPS, ops - TRT85_SUPPORTED_OPS
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [17]
    scopes = res.metadata.lowp.fp16
    assert all(any(n.name.startswith(s) for n in graph.graph.node) for s in scopes), scopes
    head = [n for n in graph.graph.node if not any(n.name.startswith(s) for s in scopes)]
    assert any(n.op_type == "Sqrt" for n in head)  # the norms stay outside the low-precision regions
    assert get_method("rstpm").onnx_rewrites() == {}  # see RSTPMMethod.onnx_rewrites
