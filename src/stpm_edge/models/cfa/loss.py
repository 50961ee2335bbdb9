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
def coreset(points: torch.Tensor, n_items: int, generator: torch.Generator) -> torch.Tensor:
    """(n_items, D) rows of (P, D) ``points`` chosen by greedy farthest-point selection (each
    next item the point farthest from those chosen), starting from a point drawn from
    ``generator``: the chosen set covers every region of the points, rare ones included."""
    p = points.float()
    n = p.shape[0]
    n_items = max(1, min(int(n_items), n))
    chosen = torch.empty(n_items, dtype=torch.long)
    chosen[0] = int(torch.randint(n, (1,), generator=generator))
    sq = (p * p).sum(dim=1)
    d2 = torch.full((n,), float("inf"))
    for i in range(1, n_items + 1):
        c = p[chosen[i - 1]]
        d2 = torch.minimum(d2, (sq - 2.0 * (p @ c) + sq[chosen[i - 1]]).clamp_(min=0.0))
        if i < n_items:
            chosen[i] = int(torch.argmax(d2))
    return p[chosen].clone()


@torch.no_grad()
def patch_sample(model, x_fit: torch.Tensor, batch_size: int, device: torch.device, generator: torch.Generator,
                 limit: int) -> torch.Tensor:
    """(≤ limit, D) patch embeddings of the fit images: every patch, or an even random share
    of each image's patches (seeded) when there are more than ``limit`` in all."""
    per_image = None
    out = []
    for i in range(0, len(x_fit), batch_size):
        emb = model(x_fit[i:i + batch_size].to(device)).float().cpu()  # (n, D, h, w)
        pts = emb.flatten(2).transpose(1, 2)  # (n, h·w, D)
        if per_image is None:
            per_image = max(1, min(pts.shape[1], limit // max(1, len(x_fit))))
        for img in pts:
            if per_image < img.shape[0]:
                img = img[torch.randperm(img.shape[0], generator=generator)[:per_image]]
            out.append(img)
    return torch.cat(out)


CORESET_POINTS = 100_000  # patch embeddings the coreset is chosen from (~70 MB at D = 176)


@torch.no_grad()
def init_memory_bank(model, x_fit: torch.Tensor, batch_size: int, device: torch.device,
                     generator: torch.Generator) -> torch.Tensor:
    """Set ``model.memory_bank`` from the fit images and return it: ``bank=mean``, the
    per-position mean, then k-means to h·w / gamma_c items when gamma_c > 1; ``bank=coreset``,
    h·w / gamma_c of their patch embeddings by farthest-point selection. Its size depends only
    on the grid."""
    was_training = model.training
    model.eval()
    n_items = model.memory_bank.shape[0]
    if model.config.bank == "coreset":
        bank = coreset(patch_sample(model, x_fit, batch_size, device, generator, CORESET_POINTS), n_items, generator)
    else:
        bank = mean_embedding(model, x_fit, batch_size, device)
        if model.config.gamma_c > 1:
            bank = kmeans(bank, n_items, generator)
    model.memory_bank.copy_(bank.to(model.memory_bank.device))
    model.train(was_training)
    return model.memory_bank
