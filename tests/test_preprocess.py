from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stpm_edge.data.preprocess import Preprocess, PreprocessSpec, preprocess_images

SPEC = PreprocessSpec((48, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_preprocess_matches_the_documented_pipeline():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, size=(2, 30, 40, 3), dtype=np.uint8)
    out = Preprocess(SPEC)(torch.from_numpy(bgr))
    rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255.0
    rgb = F.interpolate(rgb, size=(48, 64), mode="bilinear", align_corners=False)
    ref = (rgb - torch.tensor(SPEC.mean).view(1, 3, 1, 1)) / torch.tensor(SPEC.std).view(1, 3, 1, 1)
    assert out.shape == (2, 3, 48, 64) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_channel_order_is_bgr_in_rgb_out():
    blue = np.zeros((1, 48, 64, 3), dtype=np.uint8)
    blue[..., 0] = 255  # pure blue in BGR
    out = Preprocess(SPEC)(torch.from_numpy(blue))
    # channel 2 (B in RGB order) is at its maximum, R and G at their minimum
    assert torch.allclose(out[0, 2], torch.tensor((1 - SPEC.mean[2]) / SPEC.std[2]))
    assert torch.allclose(out[0, 0], torch.tensor(-SPEC.mean[0] / SPEC.std[0]))


def test_images_of_different_sizes_batch_together():
    a = np.zeros((20, 30, 3), dtype=np.uint8)
    b = np.full((100, 50, 3), 255, dtype=np.uint8)
    x = preprocess_images([a, b], SPEC)
    assert x.shape == (2, 3, 48, 64)
