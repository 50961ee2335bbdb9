"""``stpm import anomalib`` for anomalib's CFA: exact mapping onto our ``cfa`` method, refusals,
and (where anomalib is installed) parity with anomalib's own CFA inference and our ONNX export.

The always-run tests build checkpoints in anomalib 2.7's CFA layout (observed on a real
``Engine.fit`` checkpoint) from a torchvision trunk cut as anomalib cuts it; anomalib itself is
not needed for them."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from test_anomalib_import import SIZE, _test_images, anomalib_ckpt, assert_onnx_agrees, assert_refused, fit_and_import, save
from stpm_edge.interop.anomalib import import_anomalib
from stpm_edge.models.checkpoint import load_checkpoint

LEVELS = ["layer1", "layer2", "layer3"]
C_IN = 64 + 128 + 256  # resnet18 layer1..3


def torchvision_trunk(name: str = "resnet18", seed: int = 0) -> torch.nn.Module:
    """The trunk as anomalib's CFA builds it (torchvision, cut after layer3), random weights."""
    torch.manual_seed(seed)
    return create_feature_extractor(getattr(torchvision.models, name)(weights=None), return_nodes=LEVELS).eval()


def cfa_ckpt(*, gamma_d: int = 1, gamma_c: int = 1, seed: int = 0) -> dict:
    """A dict in the layout of an anomalib 2.7 CFA ``.ckpt`` (64 px: a 16×16 patch grid)."""
    ckpt = anomalib_ckpt("resnet18")
    g = torch.Generator().manual_seed(seed)
    d = C_IN // gamma_d
    state = OrderedDict((k, v) for k, v in ckpt["state_dict"].items() if k.startswith("post_processor."))
    for k, v in torchvision_trunk(seed=seed).state_dict().items():
        state[f"model.feature_extractor.{k}"] = v
    state["model.memory_bank"] = torch.randn(d, 16 * 16 // gamma_c, generator=g)
    state["model.descriptor.layer.weight"] = torch.randn(d, C_IN, 1, 1, generator=g)  # anomalib's unused outer conv
    state["model.descriptor.layer.bias"] = torch.zeros(d)
    state["model.descriptor.layer.conv2d.weight"] = 0.05 * torch.randn(d, C_IN + 2, 1, 1, generator=g)
    state["model.descriptor.layer.conv2d.bias"] = 0.01 * torch.randn(d, generator=g)
    ckpt.update(state_dict=state, hyper_parameters={"backbone": "resnet18", "gamma_c": gamma_c, "gamma_d": gamma_d,
                                                    "num_nearest_neighbors": 3, "num_hard_negative_features": 3,
                                                    "radius": 1e-5})
    return ckpt


def test_cfa_layout_maps_exactly(tmp_path: Path):
    ckpt = cfa_ckpt(gamma_d=2)
    res = import_anomalib(save(ckpt, tmp_path / "a.ckpt"), tmp_path / "model.pt")
    assert (res.method, res.anomalib_model) == ("cfa", "Cfa")
    model, meta = load_checkpoint(tmp_path / "model.pt")
    cfg = meta.config
    assert (cfg.backbone, cfg.layers, cfg.gamma_d, cfg.k, cfg.j) == ("resnet18", tuple(LEVELS), 2, 3, 3)
    assert (cfg.blur_sigma, cfg.blur_border, cfg.learn_radius) == (4.0, "reflect", False)
    state = ckpt["state_dict"]
    assert torch.equal(model.memory_bank, state["model.memory_bank"].t())
    assert torch.equal(model.descriptor.layer.conv.weight, state["model.descriptor.layer.conv2d.weight"])
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for ours, theirs in zip(model.backbone(x), torchvision_trunk()(x).values()):
            assert ours.shape == theirs.shape and float((ours - theirs).abs().max()) <= 1e-5
    assert meta.normalization.image_threshold == pytest.approx(1.4)


def _set(key: str, value):
    return lambda c: c["state_dict"].__setitem__(key, value)


CASES = {
    "vgg backbone": (lambda c: c["hyper_parameters"].update(backbone="vgg19_bn"), "unsupported CFA backbone 'vgg19_bn'"),
    "no gamma_c": (lambda c: c["hyper_parameters"].pop("gamma_c"), "hyper_parameters has no gamma_c"),
    "bad k": (lambda c: c["hyper_parameters"].update(num_nearest_neighbors=0), "k=0"),
    "never trained": (_set("model.memory_bank", torch.tensor(0.0)), "memory bank was never initialised"),
    "bank shape": (_set("model.memory_bank", torch.zeros(C_IN, 100)), r"model.memory_bank has shape \(448, 100\)"),
    "descriptor shape": (_set("model.descriptor.layer.conv2d.weight", torch.zeros(448, 448, 1, 1)),
                         r"conv2d.weight has shape \(448, 448, 1, 1\), expected \(448, 450, 1, 1\)"),
    "missing bias": (lambda c: c["state_dict"].pop("model.descriptor.layer.conv2d.bias"),
                     "missing weight model.descriptor.layer.conv2d.bias"),
    "stray descriptor key": (_set("model.descriptor.layer.extra", torch.zeros(1)),
                             "unexpected weight model.descriptor.layer.extra"),
    "stray model key": (_set("model.anomaly_map_generator.x", torch.zeros(1)), "unexpected weight model.anomaly_map"),
    "nan bank": (lambda c: c["state_dict"]["model.memory_bank"].fill_(float("nan")), "NaN or Inf"),
    "trunk shape": (_set("model.feature_extractor.layer2.0.conv1.weight", torch.zeros(3, 3, 1, 1)),
                    r"layer2.0.conv1.weight has shape \(3, 3, 1, 1\)"),
    "non-square": (lambda c: c["anomalib_pre_processor_config"]["transform"]["init_args"]["transforms"][0]
                   ["init_args"].update(size=[64, 96]), "square inputs only"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_cfa_checkpoints_are_one_line_errors_and_write_nothing(tmp_path: Path, case: str):
    mutate, match = CASES[case]
    ckpt = cfa_ckpt()
    mutate(ckpt)
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(save(ckpt, tmp_path / "bad.ckpt"), out / "model.pt", match)


# ------------------------------------------------------------------------------- against anomalib itself

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """anomalib 2.7's CFA (resnet18, random teacher: parity only) trained for one epoch on the
    sample data (64 px, 8 good images); torchvision's download of the teacher is replaced by
    an empty trunk."""
    pytest.importorskip("anomalib", reason="anomalib is not installed (pip install 'stpm-edge[anomalib]')")
    import anomalib.models.image.cfa.torch_model as cfa_torch
    from anomalib.models import Cfa

    from stpm_edge.data.sample import make_sample_dataset

    root = tmp_path_factory.mktemp("anomalib-cfa")
    data = root / "brick"
    make_sample_dataset(data, "brick", 0, image_size=SIZE, n_train=8, n_test_good=4, n_defect_per_kind=1)
    original = cfa_torch.get_feature_extractor
    try:
        cfa_torch.get_feature_extractor = lambda name, nodes: torchvision_trunk(name)
        model = Cfa(backbone="resnet18", visualizer=False,
                    pre_processor=Cfa.configure_pre_processor(image_size=(SIZE, SIZE)))
    finally:
        cfa_torch.get_feature_extractor = original
    return fit_and_import("cfa", model, data, root)


@torch.no_grad()
def _anomalib_outputs(trained: dict):
    model = trained["model"]
    _, x01 = _test_images(trained["data"])
    x = model.pre_processor(x01)
    raw = model.model.eval()(x)
    full = model(x01)
    return x, raw.anomaly_map.reshape(len(x), 1, SIZE, SIZE), raw.pred_score.reshape(-1), full.pred_label.reshape(-1)


@torch.no_grad()
def test_cfa_pytorch_map_equals_anomalib_torch_model(trained: dict):
    from stpm_edge.data.preprocess import preprocess_images

    x_anomalib, amap, score, _ = _anomalib_outputs(trained)
    model, meta = load_checkpoint(trained["imported"])
    images, _ = _test_images(trained["data"])
    x = preprocess_images(images, meta.preprocess)
    assert float((x - x_anomalib).abs().max()) <= 1e-5
    ours_map, ours_score = meta.method.inference_module(model.eval())(x)
    d_map, d_score = float((ours_map - amap).abs().max()), float((ours_score - score).abs().max())
    print(f"cfa: torch max |Δmap| {d_map:.2e}, |Δscore| {d_score:.2e} (map max {float(amap.max()):.3f})")
    assert d_map <= 1e-5 and d_score <= 1e-5


@pytest.mark.parametrize("input_mode", ["uint8-bgr", "float-rgb"])
def test_cfa_onnx_export_agrees_with_anomalib(trained: dict, input_mode: str, tmp_path: Path):
    assert_onnx_agrees(trained, _anomalib_outputs(trained), input_mode, tmp_path)
