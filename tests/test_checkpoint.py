from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from stpm_edge.errors import StpmError
from stpm_edge.data.io import read_image_bgr
from stpm_edge.data.mvtec import load_dataset
from stpm_edge.data.preprocess import preprocess_images
from stpm_edge.models.checkpoint import load_checkpoint, meta_from_dict, read_checkpoint_dict
from stpm_edge.models.normalization import Normalization, linear_rule, log_space_rule

V1_FILE = Path(__file__).parent / "data" / "v1_small.pt"  # written by stpm-edge 0.1 (format 1), see tests/data/README


def test_trained_checkpoint_is_plain_and_loads_with_weights_only(small_model: Path):
    ckpt = torch.load(small_model, map_location="cpu", weights_only=True)
    assert ckpt["format"] == "stpm-edge/checkpoint" and ckpt["format_version"] == 2
    assert ckpt["arch"] == "stpm" and ckpt["config"]["backbone"] == "efficientnet_lite0"
    assert ckpt["preprocess"]["image_size"] == [96, 96]
    assert set(ckpt["normalization"]) == {"image_threshold", "pixel_threshold", "min_value"}
    assert set(ckpt["state"]) == {"teacher", "student"}
    prov = ckpt["provenance"]
    assert prov["epochs_run"] >= 1 and prov["data"]["train"] == 16 and "torch" in prov
    model, meta = load_checkpoint(small_model)
    assert not model.training and meta.normalization.image_threshold > meta.normalization.min_value
    # teacher weights came from the checkpoint, not from the pretrained source
    assert torch.equal(model.teacher.stem[0].weight, ckpt["state"]["teacher"]["stem.0.weight"])


def test_format_1_checkpoint_migrates_and_predicts_as_it_did(brick_data: Path):
    """A v1 file written by stpm-edge 0.1 loads, and its maps/scores equal what 0.1 computed."""
    raw = torch.load(V1_FILE, weights_only=True)
    assert raw["format_version"] == 1 and "teacher" in raw and "config" not in raw
    model, meta = load_checkpoint(V1_FILE)
    assert meta.arch == "stpm" and meta.config.layers == ("blocks.0", "blocks.1") and meta.config.blur_sigma == 2.0
    assert meta.image_size == (64, 64) and meta.normalization is not None
    ds = load_dataset(brick_data)
    x = preprocess_images([read_image_bgr(s.image) for s in ds.test[:4]], meta.preprocess)
    with torch.no_grad():
        amap, score = meta.method.inference_module(model)(x)
    ref = np.load(V1_FILE.with_name("v1_small_expected.npz"))
    assert np.abs(amap.numpy() - ref["map"]).max() <= 1e-6 and np.abs(score.numpy() - ref["score"]).max() <= 1e-6


def test_unknown_method_lists_the_known_ones(small_model: Path, tmp_path: Path):
    ckpt = torch.load(small_model, weights_only=True)
    ckpt["arch"] = "patchcore"
    bad = tmp_path / "arch.pt"
    torch.save(ckpt, bad)
    with pytest.raises(StpmError, match=r"unsupported method 'patchcore' \(known: stpm"):
        load_checkpoint(bad)


class _Payload:
    """Unpickling this runs os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the raw pickle stream below
def test_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "stpm-edge/checkpoint", "student": _Payload(marker)}, evil)
    with pytest.raises(StpmError, match="refused.*--trust-checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()
    # the same with a raw pickle stream instead of a torch zip file
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(StpmError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_missing_field_is_named(small_model: Path, tmp_path: Path):
    ckpt = torch.load(small_model, weights_only=True)
    del ckpt["state"]["student"]
    bad = tmp_path / "nostudent.pt"
    torch.save(ckpt, bad)
    with pytest.raises(StpmError, match=r"not an stpm-edge checkpoint \(missing the student weights\)"):
        load_checkpoint(bad)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(format="something"), "not an stpm-edge checkpoint"),
    (lambda c: c.update(format_version=99), "newer than this stpm-edge"),
    (lambda c: c["config"].update(backbone="vgg16"), "unknown backbone"),
    (lambda c: c["config"].update(layers=["blocks.9"]), "no level"),
    (lambda c: c["config"].update(blur_sigma=float("nan")), "blur"),
    (lambda c: c["preprocess"].update(image_size=[96]), "image_size"),
    (lambda c: c["preprocess"].update(std=[0.5, 0.0, 0.5]), "std"),
    (lambda c: c.update(normalization={"image_threshold": 1.0}), "normalization is missing"),
    (lambda c: c.update(normalization={"image_threshold": 0.1, "pixel_threshold": 0.1, "min_value": 1.0}), "above"),
    (lambda c: c["state"]["student"].update({"stem.0.weight": torch.zeros(3)}), "student weights do not fit"),
    (lambda c: c["state"]["teacher"].update({"stem.0.weight": torch.full_like(c["state"]["teacher"]["stem.0.weight"],
                                                                               float("nan"))}), "NaN"),
])
def test_invalid_fields_give_one_line_errors(small_model: Path, tmp_path: Path, mutate, message):
    ckpt = torch.load(small_model, weights_only=True)
    mutate(ckpt)
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(StpmError, match=message) as err:
        load_checkpoint(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_missing_truncated_and_foreign_files(small_model: Path, tmp_path: Path):
    with pytest.raises(StpmError, match="no such checkpoint"):
        read_checkpoint_dict(tmp_path / "nope.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(small_model.read_bytes()[:5000])
    with pytest.raises(StpmError, match="not a readable checkpoint|corrupt"):
        load_checkpoint(truncated)
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(StpmError, match="top level is Tensor"):
        load_checkpoint(tensor_only)


def test_trust_flag_is_the_only_way_to_full_unpickling(small_model: Path, tmp_path: Path):
    ckpt = torch.load(small_model, weights_only=True)
    ckpt["provenance"]["odd"] = argparse.Namespace(a=1)  # a class instance: not allowed by weights_only
    path = tmp_path / "legacy.pt"
    torch.save(ckpt, path)
    with pytest.raises(StpmError, match="refused"):
        load_checkpoint(path)
    _, meta = load_checkpoint(path, allow_pickle=True)
    assert meta.provenance["odd"] == argparse.Namespace(a=1)


def test_normalization_maps_threshold_to_one_half():
    good_scores = np.exp(np.random.default_rng(0).normal(-3, 0.2, size=50))
    good_maps = np.exp(np.random.default_rng(1).normal(-6, 1.0, size=(50, 8, 8)))
    norm = log_space_rule(good_scores, good_maps)
    assert norm.image_threshold >= good_scores.max()  # no held-out good image is rejected
    assert norm.pixel_threshold < norm.image_threshold
    assert norm.normalize_image(norm.image_threshold) == pytest.approx(0.5)
    assert norm.normalize_pixel(norm.pixel_threshold) == pytest.approx(0.5)
    assert norm.normalize_pixel(norm.min_value) == pytest.approx(0.0)
    with pytest.raises(StpmError):
        Normalization(float("nan"), 1.0, 0.0)
    with pytest.raises(StpmError, match="where"):
        meta_from_dict({"format": "x"}, "where")
    lin = linear_rule(good_scores, good_maps)
    assert lin.image_threshold >= good_scores.max() and lin.normalize_pixel(lin.pixel_threshold) == pytest.approx(0.5)
