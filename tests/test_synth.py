"""Tests for the anomaly synthesiser (stpm_edge.data.synth, stpm_edge.data.perlin).

Real computations on sample-data images (preprocessed as the model sees them) and on
scikit-image photographs; small images keep the file fast on 2 cores.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import pytest
import torch

from stpm_edge.data.perlin import perlin_noise, rotate, threshold_masks
from stpm_edge.data.preprocess import PreprocessSpec, preprocess_images
from stpm_edge.data.synth import KINDS, PHOTOS, SynthBatch, SynthConfig, synthesize
from stpm_edge.errors import StpmError

IMAGENET = PreprocessSpec((96, 96), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
ALWAYS = {kind: SynthConfig(p_anomaly=1.0, kinds={kind: 1.0}) for kind in KINDS}
ALWAYS["photo"] = SynthConfig(p_anomaly=1.0, kinds={"perlin": 1.0}, photo_prob=1.0)
ALWAYS["batch_texture"] = SynthConfig(p_anomaly=1.0, kinds={"perlin": 1.0}, photo_prob=0.0)


@pytest.fixture(scope="module")
def batch(brick_data: Path) -> torch.Tensor:
    """8 brick training crops, normalised with ImageNet statistics (values well outside 0..1)."""
    files = sorted((brick_data / "train" / "good").glob("*.png"))[:8]
    return preprocess_images([cv2.imread(str(f)) for f in files], IMAGENET)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns, so that comparisons are bit-for-bit (-0.0 != 0.0)."""
    return t.contiguous().view({torch.float32: torch.int32, torch.float64: torch.int64,
                                torch.float16: torch.int16}[t.dtype])


def area_needed(cfg: SynthConfig, h: int, w: int) -> int:
    return max(1, math.ceil(cfg.min_area * h * w))


# ----------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", sorted(ALWAYS))
def test_contract_per_kind(batch: torch.Tensor, name: str) -> None:
    cfg = ALWAYS[name]
    before = batch.clone()
    out = synthesize(batch, gen(0), cfg)
    assert isinstance(out, SynthBatch)
    images, masks, altered = out  # unpacks as a plain triple
    n, _, h, w = batch.shape
    assert torch.equal(bits(batch), bits(before)), "the input must not be modified"
    assert images.shape == batch.shape and images.dtype == batch.dtype
    assert masks.shape == (n, 1, h, w) and masks.dtype == torch.float32
    assert altered.shape == (n,) and altered.dtype == torch.bool and bool(altered.all())
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    inside = masks.expand_as(images).bool()
    assert torch.equal(bits(images)[~inside], bits(batch)[~inside]), "outside the mask: bit-for-bit"
    area = masks.flatten(1).sum(1)
    assert bool((area >= area_needed(cfg, h, w)).all())
    # inside the mask the image really changed (not just relabelled)
    changed = (images != batch).any(1, keepdim=True) & masks.bool()
    assert changed.sum() >= 0.9 * masks.sum()
    assert bool(torch.isfinite(images).all())


def test_rate_and_untouched_images() -> None:
    cfg = SynthConfig(p_anomaly=0.3)
    x = torch.randn(200, 3, 32, 32, generator=gen(7))
    images, masks, altered = synthesize(x, gen(1), cfg)
    area = masks.flatten(1).sum(1)
    assert torch.equal(altered, area > 0)
    assert 30 <= int(altered.sum()) <= 90  # Binomial(200, 0.3): mean 60, sd 6.5
    assert bool((area[altered] >= area_needed(cfg, 32, 32)).all())
    assert torch.equal(bits(images[~altered]), bits(x[~altered]))


def test_probability_zero_and_one() -> None:
    x = torch.randn(16, 3, 32, 32, generator=gen(2))
    none = synthesize(x, gen(0), SynthConfig(p_anomaly=0.0))
    assert torch.equal(bits(none.images), bits(x)) and not bool(none.altered.any()) and none.masks.sum() == 0
    assert bool(synthesize(x, gen(0), SynthConfig(p_anomaly=1.0)).altered.all())


def test_reproducible_and_seed_dependent(batch: torch.Tensor) -> None:
    cfg = SynthConfig(p_anomaly=1.0)
    a, b = synthesize(batch, gen(5), cfg), synthesize(batch, gen(5), cfg)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    c = synthesize(batch, gen(6), cfg)
    assert not torch.equal(a.masks, c.masks) and not torch.equal(a.images, c.images)
    # a generator carries on: the next batch gets new anomalies
    g = gen(5)
    first, second = synthesize(batch, g, cfg), synthesize(batch, g, cfg)
    assert not torch.equal(first.masks, second.masks)


@pytest.mark.parametrize("name", ["batch_texture", "photo", "scar"])
def test_works_in_any_value_space(batch: torch.Tensor, name: str) -> None:
    """The result follows an affine change of the input's value space (a * x + b)."""
    cfg = ALWAYS[name]
    plain = synthesize(batch, gen(3), cfg)
    moved = synthesize(batch * 40.0 + 100.0, gen(3), cfg)
    assert torch.equal(plain.masks, moved.masks)
    torch.testing.assert_close(moved.images, plain.images * 40.0 + 100.0, rtol=1e-4, atol=2e-3)


def test_single_image_channels_and_dtypes() -> None:
    x = torch.randn(1, 3, 40, 56, generator=gen(4))  # non-square, a batch of one
    for kind in KINDS:
        one = synthesize(x, gen(0), ALWAYS[kind])
        assert bool(one.altered.all()) and one.masks.sum() >= area_needed(ALWAYS[kind], 40, 56)
    grey = torch.randn(3, 1, 48, 48, generator=gen(4))
    out = synthesize(grey, gen(0), ALWAYS["photo"])
    assert out.images.shape == grey.shape and bool(out.altered.all())
    x64 = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=gen(4))
    out64 = synthesize(x64, gen(0), SynthConfig(p_anomaly=1.0))
    assert out64.images.dtype == torch.float64 and out64.masks.dtype == torch.float32
    inside = out64.masks.expand_as(x64).bool()
    assert torch.equal(bits(out64.images)[~inside], bits(x64)[~inside])


def test_scars_are_thin_and_small() -> None:
    cfg = SynthConfig(p_anomaly=1.0, kinds={"scar": 1.0}, scar_count=(1, 1))
    x = torch.randn(32, 3, 64, 64, generator=gen(8))
    masks = synthesize(x, gen(0), cfg).masks[:, 0]
    area = masks.flatten(1).sum(1)
    side = 64
    # one strip: at most (widest x longest) plus its rasterisation margin, and thinner than long
    assert bool((area <= (cfg.scar_width[1] * side + 1.5) * (cfg.scar_length[1] * side + 1.5)).all())
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    for m in masks:
        pts = torch.stack([ys[m.bool()], xs[m.bool()]], 1).double()
        if len(pts) < 8:
            continue
        ev = torch.linalg.eigvalsh(torch.cov(pts.T))  # principal axes of the strip
        assert ev[1] >= 2.0 * ev[0]


def test_photographs_are_not_sample_sources() -> None:
    from stpm_edge.data.sample import CATEGORIES

    assert not set(PHOTOS) & set(CATEGORIES)


# ----------------------------------------------------------------------------- perlin
def test_perlin_noise_range_smoothness_and_resolution() -> None:
    res_y = torch.tensor([1, 4, 32])
    res_x = torch.tensor([2, 4, 8])
    noise = perlin_noise(res_y, res_x, 64, 64, gen(0))
    assert noise.shape == (3, 64, 64) and noise.dtype == torch.float32
    assert float(noise.abs().max()) <= 1.0 + 1e-5 and float(noise.std()) > 0.1
    step = (noise[:, 1:, :] - noise[:, :-1, :]).abs().mean((1, 2))
    assert step[0] < step[1] < step[2]  # finer lattice, faster variation
    assert torch.equal(noise, perlin_noise(res_y, res_x, 64, 64, gen(0)))


def test_rotate_keeps_a_constant_and_turns_a_ramp() -> None:
    const = torch.full((1, 1, 16, 16), 3.0)
    torch.testing.assert_close(rotate(const, torch.tensor([0.7])), const)
    ramp = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 1, 16, 16).contiguous()
    turned = rotate(ramp, torch.tensor([math.pi / 2]))
    assert (turned[0, 0, :, 8].diff().abs() > 0.5).all()  # now varies along the rows
    assert float(turned[0, 0, 8, :].diff().abs().max()) < 1e-3


def test_threshold_masks_area_limits() -> None:
    noise = perlin_noise(torch.tensor([2, 2]), torch.tensor([2, 2]), 50, 50, gen(1))
    tiny = threshold_masks(noise, 0.95, min_area=0.01, max_area=1.0)
    assert bool((tiny.flatten(1).sum(1) >= 25).all())
    huge = threshold_masks(noise, -0.95, min_area=0.01, max_area=0.2)
    assert bool((huge.flatten(1).sum(1) <= 500).all())
    plain = threshold_masks(noise, 0.3, min_area=1e-6, max_area=1.0)
    assert torch.equal(plain, noise >= 0.3)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs", [
    dict(p_anomaly=1.5), dict(p_anomaly="0.5"), dict(kinds={"stain": 1.0}), dict(kinds={}),
    dict(kinds={"perlin": -1.0}), dict(kinds={"perlin": 0.0}), dict(kinds="perlin"),
    dict(opacity=(0.0, 1.0)), dict(opacity=(0.8, 0.2)), dict(perlin_scales=(0.5, 2)),
    dict(perlin_scales=(3, 1)), dict(perlin_threshold=1.0), dict(perlin_anisotropy=-1),
    dict(perlin_rotate=1), dict(min_area=0.0), dict(max_area=0.001), dict(scar_width=(0.02,)),
    dict(scar_length=(0.05, 0.3)), dict(scar_count=(0, 2)), dict(jitter=float("nan")),
    dict(photo_prob=2), dict(scar_rotation=-1), dict(min_area=0.2),
])
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(StpmError) as err:
        SynthConfig(**kwargs)
    assert "\n" not in str(err.value) and str(err.value).startswith(("synth", "unknown synth"))


def test_config_accepts_mappings_and_lists() -> None:
    cfg = SynthConfig(kinds={"scar": 2, "perlin": 1}, opacity=[0.5, 0.9])
    assert cfg.kinds == (("scar", 2.0), ("perlin", 1.0)) and cfg.opacity == (0.5, 0.9)
    assert hash(cfg) == hash(SynthConfig(kinds=(("scar", 2.0), ("perlin", 1.0)), opacity=(0.5, 0.9)))
    assert cfg.weight("perlin") == 1.0 and SynthConfig(kinds={"scar": 1}).weight("perlin") == 0.0


@pytest.mark.parametrize("images, generator, config", [
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.Generator(), None),
    (torch.zeros(3, 32, 32), torch.Generator(), None),
    (torch.zeros(2, 3, 32, 32), 0, None),
    (torch.zeros(2, 3, 4, 32), torch.Generator(), None),
    (torch.zeros(2, 3, 16, 16), torch.Generator(), SynthConfig(perlin_scales=(0, 5))),
    (torch.zeros(2, 3, 32, 32), torch.Generator(), {"p_anomaly": 1.0}),
])
def test_input_validation(images: object, generator: object, config: object) -> None:
    with pytest.raises(StpmError) as err:
        synthesize(images, generator, config)  # type: ignore[arg-type]
    assert "\n" not in str(err.value) and str(err.value).startswith("synth")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_images_with_cpu_or_cuda_generator() -> None:
    x = torch.randn(8, 3, 64, 64, generator=gen(0)).cuda()
    for g in (gen(1), torch.Generator(device="cuda").manual_seed(1)):
        images, masks, altered = synthesize(x, g, SynthConfig(p_anomaly=1.0, photo_prob=0.5))
        assert images.device == x.device and masks.device == x.device and bool(altered.all())
        inside = masks.expand_as(x).bool()
        assert torch.equal(bits(images)[~inside], bits(x)[~inside])
