from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stpm_edge.models.stpm.head import AnomalyMapHead, GaussianBlur, l2_normalize, level_distance
from stpm_edge.models.stpm.loss import stpm_loss, stpm_loss_per_image


def test_level_distance_matches_the_paper_formula():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    tn = t.numpy() / np.linalg.norm(t.numpy(), axis=1, keepdims=True)
    sn = s.numpy() / np.linalg.norm(s.numpy(), axis=1, keepdims=True)
    expected = 0.5 * ((tn - sn) ** 2).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(level_distance(t, s).numpy(), expected, rtol=1e-5, atol=1e-7)
    # on unit vectors 0.5‖a−b‖² = 1 − cos(a, b), bounded in [0, 2]
    np.testing.assert_allclose(level_distance(t, s).numpy()[:, 0], 1 - F.cosine_similarity(t, s, dim=1).numpy(), atol=1e-6)


def test_l2_normalize_is_safe_on_zero_features():
    out = l2_normalize(torch.zeros(1, 3, 2, 2))
    assert torch.isfinite(out).all() and (out == 0).all()


def test_map_is_the_product_of_upsampled_level_distances():
    g = torch.Generator().manual_seed(1)
    t = [torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 6, 4, 4, generator=g)]
    s = [torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 6, 4, 4, generator=g)]
    amap, score = AnomalyMapHead((32, 32))(t, s)
    up = [F.interpolate(level_distance(a, b), size=(32, 32), mode="bilinear", align_corners=False) for a, b in zip(t, s)]
    torch.testing.assert_close(amap, up[0] * up[1])
    torch.testing.assert_close(score, amap.amax(dim=(1, 2, 3)))
    assert amap.shape == (1, 1, 32, 32)


def test_identical_teacher_and_student_give_a_zero_map():
    t = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    amap, score = AnomalyMapHead((16, 16))(t, [x.clone() for x in t])
    assert float(amap.abs().max()) < 1e-10 and score.shape == (2,)


def test_blur_keeps_constants_and_mass_and_smooths_a_peak():
    blur = GaussianBlur(4.0, (40, 50))
    const = torch.full((1, 1, 40, 50), 3.0)
    torch.testing.assert_close(blur(const), const)
    peak = torch.zeros(1, 1, 64, 64)
    peak[0, 0, 32, 32] = 1.0
    out = GaussianBlur(4.0, (64, 64))(peak)
    assert abs(float(out.sum()) - 1.0) < 1e-4  # an interior peak keeps its mass
    assert float(out.max()) < 0.02 and int(out.argmax()) == 32 * 64 + 32
    amap, score = AnomalyMapHead((64, 64), blur_sigma=4.0)([torch.randn(1, 3, 8, 8)], [torch.randn(1, 3, 8, 8)])
    torch.testing.assert_close(score, amap.amax(dim=(1, 2, 3)))


def test_loss_is_the_sum_over_levels_of_mean_distances():
    t = [torch.randn(3, 4, 8, 8), torch.randn(3, 6, 4, 4)]
    s = [torch.randn(3, 4, 8, 8), torch.randn(3, 6, 4, 4)]
    per = stpm_loss_per_image(t, s)
    expected = level_distance(t[0], s[0]).mean(dim=(1, 2, 3)) + level_distance(t[1], s[1]).mean(dim=(1, 2, 3))
    torch.testing.assert_close(per, expected)
    torch.testing.assert_close(stpm_loss(t, s), expected.mean())


def test_blur_equals_the_one_channel_separable_convolution():
    """The depthwise form is the textbook separable blur (zero padding, border-renormalised)."""
    from stpm_edge.models.stpm.head import gaussian_kernel1d

    torch.manual_seed(0)
    x = torch.rand(3, 1, 37, 53)
    blur = GaussianBlur(2.5, (37, 53))
    k = gaussian_kernel1d(2.5)
    pad = (k.numel() - 1) // 2

    def reference(m):
        return F.conv2d(F.conv2d(m, k.view(1, 1, 1, -1), padding=(0, pad)), k.view(1, 1, -1, 1), padding=(pad, 0))

    torch.testing.assert_close(blur(x), reference(x) / reference(torch.ones(1, 1, 37, 53)), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="expected"):
        blur(torch.rand(1, 1, 53, 37))


def test_reflect_border_blur_equals_a_reflect_padded_convolution():
    """``border="reflect"`` (anomalib's GaussianBlur2d, for imported models): mirror padding
    without repeating the edge, then the plain 2-D Gaussian — term for term a padded conv."""
    import torch.nn.functional as F

    from stpm_edge.models.stpm.head import GaussianBlur, gaussian_kernel1d

    x = torch.rand(2, 1, 40, 56, generator=torch.Generator().manual_seed(0))
    k = gaussian_kernel1d(3.0)
    pad = (k.numel() - 1) // 2
    ref = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), (k[:, None] * k[None, :])[None, None])
    out = GaussianBlur(3.0, (40, 56), "reflect")(x)
    assert out.shape == x.shape and float((out - ref).abs().max()) < 1e-5  # summation order only
    const = torch.full((1, 1, 40, 56), 0.7)
    assert float((GaussianBlur(3.0, (40, 56), "reflect")(const) - 0.7).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="needs maps larger"):
        GaussianBlur(4.0, (12, 56), "reflect")
    with pytest.raises(ValueError, match="border"):
        GaussianBlur(4.0, (40, 56), "zeros")
