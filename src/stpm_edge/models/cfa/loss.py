"""CFA's training objective and its memory-bank initialisation (pure functions).

Coupled-hypersphere loss (soft boundary), per patch with ascending squared distances
d²_1 ≤ … ≤ d²_{K+J} to the memory bank and radius r:

    L_att = (1/ν) · mean_{k ≤ K}   max(0, d²_k − r²)            (the K nearest pulled inside r)
    L_rep = (1/ν) · mean_{K < j ≤ K+J} max(0, r² − d²_j − α)    (the next J pushed out by margin α)

averaged over the patches (per image: over that image's patches).
"""
from __future__ import annotations

import torch

from stpm_edge.models.cfa.head import nearest_squared, patches


def hypersphere_loss_per_image(nearest_sq: torch.Tensor, radius: torch.Tensor, k: int, j: int, nu: float,
                               alpha: float) -> torch.Tensor:
    """(N, P, K+J) ascending squared distances → (N,) loss of each image."""
    r2 = radius.reshape(()) ** 2
    att = torch.clamp(nearest_sq[..., :k] - r2, min=0.0).mean(dim=(1, 2))
    loss = att
    if j > 0:
        rep = torch.clamp(r2 - nearest_sq[..., k:k + j] - alpha, min=0.0).mean(dim=(1, 2))
        loss = loss + rep
    return loss / nu


def cfa_loss_per_image(model, x: torch.Tensor) -> torch.Tensor:
    """(N,) coupled-hypersphere loss of a normalised batch through ``model`` (a :class:`~.model.CFA`)."""
    cfg = model.config
    bank = model.memory_bank
    n_near = min(cfg.k + cfg.j, bank.shape[0])
    nearest = nearest_squared(patches(model(x)), bank.t(), torch.sum(bank * bank, dim=1), n_near)
    return hypersphere_loss_per_image(nearest, model.radius, cfg.k, cfg.j, cfg.nu, cfg.alpha)


@torch.no_grad()
def mean_embedding(model, x_fit: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """(h·w, D): the mean patch embedding of each position over the fit images (running mean
    over batches, so memory does not grow with the number of images)."""
    total, count = None, 0
    for i in range(0, len(x_fit), batch_size):
        xb = x_fit[i:i + batch_size].to(device)
        emb = model(xb).double().sum(dim=0)
        total = emb if total is None else total + emb
        count += len(xb)
    mean = (total / count).float()
    return mean.reshape(mean.shape[0], -1).t().contiguous()


@torch.no_grad()
def kmeans(points: torch.Tensor, n_clusters: int, generator: torch.Generator, iterations: int = 50) -> torch.Tensor:
    """(n_clusters, D) Lloyd's k-means centres of (P, D) points, initialised by k-means++
    seeding drawn from ``generator`` (deterministic for a seeded generator)."""
    p = points.double().cpu()
    n = p.shape[0]
    n_clusters = max(1, min(int(n_clusters), n))
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [p[first]]
    d2 = ((p - p[first]) ** 2).sum(dim=1)
    for _ in range(1, n_clusters):
        total = float(d2.sum())
        idx = int(torch.multinomial(d2 / total, 1, generator=generator)) if total > 0 else \
            int(torch.randint(n, (1,), generator=generator))
        centres.append(p[idx])
        d2 = torch.minimum(d2, ((p - p[idx]) ** 2).sum(dim=1))
    c = torch.stack(centres)
    for _ in range(iterations):
        assign = torch.cdist(p, c).argmin(dim=1)
        new = torch.zeros_like(c).index_add_(0, assign, p)
        counts = torch.bincount(assign, minlength=n_clusters).to(p.dtype)
        keep = counts > 0
        new[keep] /= counts[keep, None]
        new[~keep] = c[~keep]
        if torch.allclose(new, c):
            break
        c = new
    return c.float()


@torch.no_grad()
def init_memory_bank(model, x_fit: torch.Tensor, batch_size: int, device: torch.device,
                     generator: torch.Generator) -> torch.Tensor:
    """Set ``model.memory_bank`` from the fit images (per-position mean, then k-means to
    h·w / gamma_c items when gamma_c > 1) and return it. Its size depends only on the grid."""
    was_training = model.training
    model.eval()
    bank = mean_embedding(model, x_fit, batch_size, device)
    if model.config.gamma_c > 1:
        bank = kmeans(bank, model.memory_bank.shape[0], generator)
    model.memory_bank.copy_(bank.to(model.memory_bank.device))
    model.train(was_training)
    return model.memory_bank
