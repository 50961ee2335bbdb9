"""Batched 2-D Perlin noise and the masks the anomaly synthesiser cuts from it.

Pure tensor functions (no state, every random draw from the ``torch.Generator`` passed in)
used by :mod:`stpm_edge.data.synth`. Gradient noise after Perlin (2002, "Improving
noise"): a lattice of random unit gradients, the dot product with the offset to each of
the four surrounding lattice points, blended with the quintic fade ``6t^5 - 15t^4 + 10t^3``.
Each image of the batch has its own lattice resolution and the whole batch is computed in
one pass (no Python loop over images). Scaled by sqrt(2), values lie in about [-1, 1], the
range that DRAEM's threshold of 0.5 refers to.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def uniform(generator: torch.Generator, shape: tuple[int, ...], lo: float, hi: float,
            device: torch.device) -> torch.Tensor:
    """Uniform float32 draws in [lo, hi), made on the generator's device, returned on ``device``."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return (lo + (hi - lo) * u).to(device)


def integers(generator: torch.Generator, shape: tuple[int, ...], lo: int, hi: int,
             device: torch.device) -> torch.Tensor:
    """Uniform int64 draws in [lo, hi] (both ends included), returned on ``device``."""
    return torch.randint(lo, hi + 1, shape, generator=generator, device=generator.device).to(device)


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(res_y: torch.Tensor, res_x: torch.Tensor, height: int, width: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Perlin noise (n, height, width) float32; image i has ``res_y[i] x res_x[i]`` lattice cells.

    ``res_y``/``res_x`` are int64 tensors (n,) of positive cell counts, any value (the cells
    need not divide the image); the result is on their device.
    """
    device, n = res_y.device, int(res_y.numel())
    ry_max, rx_max = int(res_y.max()), int(res_x.max())
    angles = uniform(generator, (n, ry_max + 1, rx_max + 1), 0.0, 2 * math.pi, device)
    gy, gx = torch.sin(angles), torch.cos(angles)

    def axis(size: int, res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # lattice coordinate of each pixel centre: cell index and offset within the cell
        t = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * res[:, None].float()
        cell = torch.minimum(t.floor().long(), res[:, None] - 1)
        return cell, t - cell.float()

    cy, fy = axis(height, res_y)  # (n, H)
    cx, fx = axis(width, res_x)  # (n, W)
    gy, gx = gy.reshape(n, -1), gx.reshape(n, -1)  # flat lattice tables: gather beats 3-D indexing
    fy3, fx3 = fy[:, :, None], fx[:, None, :]

    def corner(dy: int, dx: int) -> torch.Tensor:
        lin = ((cy + dy)[:, :, None] * (rx_max + 1) + (cx + dx)[:, None, :]).reshape(n, -1)
        return (gy.gather(1, lin).view(n, height, width) * (fy3 - dy)
                + gx.gather(1, lin).view(n, height, width) * (fx3 - dx))

    u, v = _fade(fx3), _fade(fy3)
    top = torch.lerp(corner(0, 0), corner(0, 1), u)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), u)
    return math.sqrt(2) * torch.lerp(top, bottom, v)


def rotate(maps: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate (n, C, H, W) maps about their centres by ``angles`` (radians, (n,)).

    Bilinear, with reflected borders; the aspect ratio is accounted for so that a
    rotation stays a rotation on non-square images.
    """
    _, _, h, w = maps.shape
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], -1),
                         torch.stack([sin * w / h, cos, zero], -1)], 1)
    grid = F.affine_grid(theta.to(maps.dtype), list(maps.shape), align_corners=False)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def threshold_masks(noise: torch.Tensor, threshold: float, min_area: float, max_area: float) -> torch.Tensor:
    """Boolean masks ``noise >= t`` per image (n, H, W), with t chosen per image near ``threshold``.

    t is ``threshold`` moved just as far as needed so that the mask covers at least
    ``min_area`` of the image (guaranteed: at least ``ceil(min_area * H * W)`` and at least one
    pixel) and at most about ``max_area`` (exact unless noise values tie). The largest
    values of smooth noise form blobs, so a moved threshold still gives blob-shaped masks.
    """
    n, h, w = noise.shape
    m = h * w
    flat = noise.reshape(n, m)
    k_min = min(m, max(1, math.ceil(min_area * m)))
    k_max = min(m, max(k_min, math.floor(max_area * m)))
    t = torch.full((n,), float(threshold), dtype=flat.dtype, device=flat.device)
    count = (flat >= threshold).sum(1)
    few, many = torch.nonzero(count < k_min).flatten(), torch.nonzero(count > k_max).flatten()
    if few.numel():  # lower it to the k_min-th largest value
        t[few] = torch.topk(flat[few], k_min, dim=1).values[:, -1]
    if many.numel():  # raise it to the k_max-th largest value
        t[many] = torch.kthvalue(flat[many], m - k_max + 1, dim=1).values
    return (flat >= t[:, None]).reshape(n, h, w)
