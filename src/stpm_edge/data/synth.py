"""The anomaly synthesiser: synthetic defects with exact masks on a training batch, on the fly.

One definition for every method that trains on (normal, anomalous) image pairs (RSTPM,
DMDD). :func:`synthesize` takes a batch exactly as the model sees it (float (N, C, H, W),
already normalised: it assumes no value range) and a ``torch.Generator``, and returns the
altered batch, float32 0/1 masks (N, 1, H, W) and a bool flag per image. Each image is
altered with probability ``p_anomaly`` by one of two kinds, chosen by weight:

``perlin`` -- after DRAEM (Zavrtanik, Kristan and Skocaj, "DRAEM - A discriminatively
    trained reconstruction embedding for surface anomaly detection", ICCV 2021): 2-D Perlin
    noise at a random power-of-two lattice per axis, rotated by up to 90 degrees, thresholded
    into blob-shaped masks; inside the mask the image is blended with a texture, opacity
    ``beta`` drawn from ``opacity``. The texture is ANOTHER image of the batch, moved by an
    exact dihedral transform (rotations by 90 degrees where square, flips) and a circular roll
    of a quarter to three quarters of the image, and colour-jittered; with ``photo_prob`` a
    rotated, scaled crop of a scikit-image photograph (none of the sample-data sources)
    mapped into the batch's per-channel value range. A batch of one uses itself, rolled.
``scar`` -- after CutPaste-scar (Li, Sohn, Yoon and Pfister, "CutPaste: Self-supervised
    learning for anomaly detection and localization", CVPR 2021): one to a few thin strips
    (length >= 2 x width) at any angle; each is filled with the texture of a strip elsewhere
    (at least a quarter of the image away on both axes, on the same or another image of the
    batch), turned by up to ``scar_rotation`` degrees and colour-jittered, pasted opaquely.

Why these and not the sample-data defect painter (:mod:`stpm_edge.data.sample`): its
scratch, spot and crack paint a uniform dark or bright level along strokes and ellipses,
and its patch pastes an axis-aligned rectangle of the training region turned by 90 degrees
and shifted by 20-40 grey levels. Nothing here paints a level, no mask is a stroke, an
ellipse or an axis-aligned rectangle, and the jitter is relative and mild, so a model
trained on these is not tuned to the test defects.

Guarantees: outside the mask every value is bit-for-bit the input (``torch.where``); images
not altered are returned unchanged with an empty mask; every altered image's mask covers at
least ``min_area`` of it (perlin: by moving the threshold; scar: by redrawing, then one
largest strip) and perlin masks at most about ``max_area``; the same input, config and
generator state give the same output. All random draws come from the generator given (on its
device); the work is batched over images (no per-pixel Python), in float32, and the result
has the input's dtype and device. Colour jitter is affine in the image's own per-channel
statistics, so it behaves the same in any normalisation.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Tuple, Union

import torch
import torch.nn.functional as F

from stpm_edge.data.perlin import integers, perlin_noise, rotate, threshold_masks, uniform
from stpm_edge.errors import StpmError

KINDS: tuple[str, ...] = ("perlin", "scar")
# scikit-image photographs usable as perlin textures; the sample-data sources (brick, grass,
# gravel, hubble_deep_field) are left out on purpose.
PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "coins",
                           "camera", "moon")
_REDRAWS = 8  # scar rounds before the fallback strip


@dataclass(frozen=True)
class SynthConfig:
    """Options of :func:`synthesize`; validated on construction (``StpmError``).

    Sizes and areas are fractions: scar widths/lengths of the image's shorter side, areas of
    the image. ``kinds`` may be given as a mapping ``{"perlin": 0.7, "scar": 0.3}``.
    """

    p_anomaly: float = 0.5  # probability that an image is altered
    kinds: Union[Mapping, Tuple[Tuple[str, float], ...]] = (("perlin", 0.7), ("scar", 0.3))
    opacity: tuple[float, float] = (0.2, 1.0)  # perlin: texture weight beta, drawn per image
    perlin_scales: tuple[int, int] = (0, 5)  # lattice cells per axis are 2**k, k in this range
    perlin_threshold: float = 0.5
    perlin_anisotropy: int = 2  # at most this many powers of two between the two axes' scales
    perlin_rotate: bool = True
    min_area: float = 0.002
    max_area: float = 0.5  # perlin only; scars are small by construction
    scar_width: tuple[float, float] = (0.01, 0.05)
    scar_length: tuple[float, float] = (0.1, 0.3)
    scar_count: tuple[int, int] = (1, 3)
    scar_rotation: float = 45.0  # degrees the pasted texture is turned by, at most
    jitter: float = 0.3  # colour jitter: contrast x[1-j, 1+j], per-channel shift +-j std
    photo_prob: float = 0.5  # perlin: share of textures taken from scikit-image photographs

    def __post_init__(self) -> None:
        kinds = self.kinds.items() if isinstance(self.kinds, Mapping) else self.kinds
        try:
            pairs = tuple((k, w) for k, w in kinds)
        except (TypeError, ValueError):
            raise StpmError(f"synth kinds must map kind names to weights, got {self.kinds!r}") from None
        for name, weight in pairs:
            if name not in KINDS:
                raise StpmError(f"unknown synth kind {name!r}; valid: {', '.join(KINDS)}")
            _number(f"synth weight of {name!r}", weight, 0.0, math.inf)
        if len({k for k, _ in pairs}) != len(pairs) or sum(float(w) for _, w in pairs) <= 0:
            raise StpmError(f"synth kinds need distinct names and a positive total weight, got {self.kinds!r}")
        object.__setattr__(self, "kinds", tuple((k, float(w)) for k, w in pairs))
        _number("synth p_anomaly", self.p_anomaly, 0.0, 1.0)
        _pair("synth opacity", self.opacity, 0.0, 1.0, low_open=True)
        _pair("synth perlin_scales", self.perlin_scales, 0, 10, ints=True)
        _pair("synth scar_width", self.scar_width, 0.0, 0.5, low_open=True)
        _pair("synth scar_length", self.scar_length, 0.0, 1.0, low_open=True)
        _pair("synth scar_count", self.scar_count, 1, 16, ints=True)
        for name in ("opacity", "perlin_scales", "scar_width", "scar_length", "scar_count"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # lists are accepted too
        _number("synth perlin_threshold", self.perlin_threshold, 0.0, 0.95)
        if not isinstance(self.perlin_anisotropy, int) or isinstance(self.perlin_anisotropy, bool) \
                or not 0 <= self.perlin_anisotropy <= 10:
            raise StpmError(f"synth perlin_anisotropy must be an integer in [0, 10], got {self.perlin_anisotropy!r}")
        if not isinstance(self.perlin_rotate, bool):
            raise StpmError(f"synth perlin_rotate must be true or false, got {self.perlin_rotate!r}")
        _number("synth min_area", self.min_area, 0.0, 0.5, low_open=True)
        _number("synth max_area", self.max_area, self.min_area, 1.0)
        _number("synth scar_rotation", self.scar_rotation, 0.0, 180.0)
        _number("synth jitter", self.jitter, 0.0, 1.0)
        _number("synth photo_prob", self.photo_prob, 0.0, 1.0)
        if self.scar_length[0] < 2 * self.scar_width[1]:
            raise StpmError(f"synth scars must be thin: scar_length {self.scar_length} must start at "
                            f">= 2 x the widest scar_width ({self.scar_width[1]})")
        if self.weight("scar") > 0 and self.scar_width[1] * self.scar_length[1] < 2 * self.min_area:
            raise StpmError(f"synth min_area {self.min_area} is too large for the largest scar "
                            f"({self.scar_width[1]} x {self.scar_length[1]}); lower it or enlarge the scars")

    def weight(self, kind: str) -> float:
        return dict(self.kinds).get(kind, 0.0)


class SynthBatch(NamedTuple):
    images: torch.Tensor  # (N, C, H, W), the input's dtype and device
    masks: torch.Tensor  # (N, 1, H, W) float32, exactly 0 or 1
    altered: torch.Tensor  # (N,) bool: the image has a synthetic anomaly (its mask is non-empty)


def _number(name: str, value: object, lo: float, hi: float, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > lo if low_open else value >= lo) and value <= hi
    if not ok:
        raise StpmError(f"{name} must be a number in {'(' if low_open else '['}{lo:g}, {hi:g}], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _pair(name: str, value: object, lo: float, hi: float, ints: bool = False, low_open: bool = False) -> None:
    kind = int if ints else (int, float)
    ok = isinstance(value, (tuple, list)) and len(value) == 2 \
        and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    if ok:
        a, b = value  # type: ignore[misc]
        ok = math.isfinite(a) and math.isfinite(b) and (a > lo if low_open else a >= lo) and a <= b <= hi
    if not ok:
        what = "integers" if ints else "numbers"
        bounds = f"{'(' if low_open else '['}{lo:g}, {hi:g}]"
        raise StpmError(f"{name} must be two {what} lo <= hi in {bounds}, got {value!r}")


def _check_inputs(images: object, generator: object, cfg: SynthConfig) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise StpmError(f"synthesize needs a float (N, C, H, W) image batch, got {got}")
    if not isinstance(generator, torch.Generator):
        raise StpmError(f"synthesize needs a torch.Generator, got {type(generator).__name__}")
    h, w = images.shape[-2:]
    if min(h, w) < 8 or images.shape[1] < 1:
        raise StpmError(f"synthesize needs images of at least 8x8 pixels with a channel, got {tuple(images.shape)}")
    if cfg.weight("perlin") > 0 and 2 ** cfg.perlin_scales[1] > min(h, w):
        raise StpmError(f"synth perlin_scales {cfg.perlin_scales}: 2**{cfg.perlin_scales[1]} cells exceed the "
                        f"{h}x{w} image; lower the largest scale")


def synthesize(images: torch.Tensor, generator: torch.Generator, config: SynthConfig | None = None) -> SynthBatch:
    """Synthetic anomalies on a batch: ``(images, masks, altered)``; see the module docstring."""
    cfg = SynthConfig() if config is None else config
    if not isinstance(cfg, SynthConfig):
        raise StpmError(f"synthesize needs a SynthConfig, got {type(cfg).__name__}")
    _check_inputs(images, generator, cfg)
    with torch.no_grad():
        x = images.detach()
        n, _, h, w = x.shape
        dev = x.device
        out, masks = x.clone(), torch.zeros(n, h, w, dtype=torch.bool, device=dev)
        altered = uniform(generator, (n,), 0.0, 1.0, dev) < cfg.p_anomaly
        weights = torch.tensor([wt for _, wt in cfg.kinds], dtype=torch.float64)
        edges = (weights.cumsum(0) / weights.sum()).to(torch.float32).to(dev)
        pick = torch.searchsorted(edges, uniform(generator, (n,), 0.0, 1.0, dev), right=True)
        pick = pick.clamp(max=len(cfg.kinds) - 1)
        for k, (name, weight) in enumerate(cfg.kinds):
            idx = torch.nonzero(altered & (pick == k)).flatten()
            if weight <= 0 or idx.numel() == 0:
                continue
            new, m = (_perlin if name == "perlin" else _scar)(x, idx, generator, cfg)
            out[idx] = torch.where(m[:, None], new.to(x.dtype), x[idx])
            masks[idx] = m
        return SynthBatch(out, masks[:, None].to(torch.float32), masks.flatten(1).any(1))


# ----------------------------------------------------------------------------- textures
def _others(n_batch: int, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each index, a different image of the batch (the same one if the batch has one image)."""
    if n_batch == 1:
        return idx.clone()
    return (idx + integers(gen, tuple(idx.shape), 1, n_batch - 1, idx.device)) % n_batch


def _jitter(t: torch.Tensor, gen: torch.Generator, strength: float) -> torch.Tensor:
    """Contrast and per-channel shift relative to each image's own statistics (any value space)."""
    if strength == 0:
        return t
    n, c = t.shape[:2]
    mean = t.mean((2, 3), keepdim=True)
    spread = t.std((2, 3)).mean(1).view(n, 1, 1, 1)
    gain = uniform(gen, (n, 1, 1, 1), 1 - strength, 1 + strength, t.device)
    shift = uniform(gen, (n, c, 1, 1), -strength, strength, t.device) * spread
    return mean + gain * (t - mean) + shift


def _batch_textures(x: torch.Tensor, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Another image of the batch for each index, flipped/turned exactly and rolled circularly."""
    n_batch, c, h, w = x.shape
    n, dev = idx.numel(), x.device
    src = _others(n_batch, idx, gen)
    dy = integers(gen, (n, 1, 1), h // 4, h - h // 4, dev)
    dx = integers(gen, (n, 1, 1), w // 4, w - w // 4, dev)
    flips = integers(gen, (3, n, 1, 1), 0, 1, dev).bool()
    ys = (torch.arange(h, device=dev).view(1, h, 1) - dy) % h
    xs = (torch.arange(w, device=dev).view(1, 1, w) - dx) % w
    ys, xs = torch.broadcast_tensors(ys, xs)
    if h == w:  # a transpose, with the flips, gives all 8 rotations/reflections
        ys, xs = torch.where(flips[0], xs, ys), torch.where(flips[0], ys, xs)
    ys = torch.where(flips[1], h - 1 - ys, ys)
    xs = torch.where(flips[2], w - 1 - xs, xs)
    flat = (ys * w + xs).reshape(n, 1, h * w).expand(n, c, h * w)
    return x[src].reshape(n, c, h * w).to(torch.float32).gather(2, flat).reshape(n, c, h, w)


@functools.lru_cache(maxsize=1)
def _photo_bank() -> tuple[torch.Tensor, ...]:
    from skimage import data as skdata

    bank = []
    for name in PHOTOS:
        img = torch.from_numpy(getattr(skdata, name)().copy()).to(torch.float32) / 255.0
        img = img[..., :3].permute(2, 0, 1) if img.ndim == 3 else img[None].expand(3, -1, -1)
        bank.append(img.contiguous())
    return tuple(bank)


def _photo_textures(x: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
    """``m`` rotated, scaled crops of the photographs, mapped into x's per-channel value range."""
    _, c, h, w = x.shape
    dev, bank = x.device, _photo_bank()
    which = integers(gen, (m,), 0, len(bank) - 1, torch.device("cpu")).tolist()
    angle = uniform(gen, (m,), -math.pi, math.pi, dev)
    scale = uniform(gen, (m,), 0.25, 1.0, dev)
    centre = uniform(gen, (m, 2), -1.0, 1.0, dev)
    lo = x.amin((0, 2, 3)).to(torch.float32).view(1, c, 1, 1)
    hi = x.amax((0, 2, 3)).to(torch.float32).view(1, c, 1, 1)
    out = []
    for i, b in enumerate(which):
        photo = bank[b].to(dev)
        ph, pw = photo.shape[1:]
        side = scale[i] * min(ph, pw) / max(h, w)  # photo pixels per output pixel
        ax, ay = side * w / pw, side * h / ph  # crop half-extents, normalised
        cos, sin = torch.cos(angle[i]), torch.sin(angle[i])
        theta = torch.stack([torch.stack([cos * ax, -sin * ay * ph / pw, centre[i, 0] * (1 - ax).clamp(min=0)]),
                             torch.stack([sin * ax * pw / ph, cos * ay, centre[i, 1] * (1 - ay).clamp(min=0)])])
        grid = F.affine_grid(theta[None], [1, 3, h, w], align_corners=False)
        t = F.grid_sample(photo[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        out.append(t if c == 3 else t.mean(1, keepdim=True).expand(1, c, h, w))
    return lo + torch.cat(out) * (hi - lo)


# ----------------------------------------------------------------------------- the two kinds
Altered = Tuple[torch.Tensor, torch.Tensor]  # (float32 images, bool masks (n, H, W)) for the rows idx


def _perlin(x: torch.Tensor, idx: torch.Tensor, gen: torch.Generator, cfg: SynthConfig) -> Altered:
    _, _, h, w = x.shape
    n, dev = idx.numel(), x.device
    k_lo, k_hi = cfg.perlin_scales
    ky = integers(gen, (n,), k_lo, k_hi, dev)
    a = cfg.perlin_anisotropy
    kx = (ky + integers(gen, (n,), -a, a, dev)).clamp(k_lo, k_hi)
    noise = perlin_noise(2 ** ky, 2 ** kx, h, w, gen)
    if cfg.perlin_rotate:
        noise = rotate(noise[:, None], uniform(gen, (n,), -math.pi / 2, math.pi / 2, dev))[:, 0]
    mask = threshold_masks(noise, cfg.perlin_threshold, cfg.min_area, cfg.max_area)
    texture = _batch_textures(x, idx, gen)
    if cfg.photo_prob > 0:
        rows = torch.nonzero(uniform(gen, (n,), 0.0, 1.0, dev) < cfg.photo_prob).flatten()
        if rows.numel():
            texture[rows] = _photo_textures(x, rows.numel(), gen)
    texture = _jitter(texture, gen, cfg.jitter)
    beta = uniform(gen, (n, 1, 1, 1), cfg.opacity[0], cfg.opacity[1], dev)
    base = x[idx].to(torch.float32)
    return base + beta * (texture - base), mask


def _strips(x: torch.Tensor, idx: torch.Tensor, gen: torch.Generator, cfg: SynthConfig,
            fallback: bool = False) -> Altered:
    """Scar strips on the images ``idx``: (altered float32 images, bool masks (n, H, W)).

    Only a window around each strip is computed, and its texture is sampled (bilinear, with
    wrap-around) at the strip's pixels only.
    """
    n_batch, c, h, w = x.shape
    n, dev, side = idx.numel(), x.device, min(h, w)
    if fallback:  # one largest strip through the centre, along the longer axis
        k = 1
        count = torch.ones(n, dtype=torch.long, device=dev)
        width = torch.full((n, k), cfg.scar_width[1] * side, device=dev)
        length = torch.full((n, k), cfg.scar_length[1] * side, device=dev)
        angle = torch.full((n, k), 0.0 if w >= h else math.pi / 2, device=dev)
        cx, cy = torch.full((n, k), float(w // 2), device=dev), torch.full((n, k), float(h // 2), device=dev)
    else:
        k = cfg.scar_count[1]
        count = integers(gen, (n,), cfg.scar_count[0], k, dev)
        width = uniform(gen, (n, k), *cfg.scar_width, dev) * side
        length = uniform(gen, (n, k), *cfg.scar_length, dev) * side
        angle = uniform(gen, (n, k), 0.0, math.pi, dev)
        cx = (uniform(gen, (n, k), 0.05, 0.95, dev) * w).floor()  # on a pixel: never empty
        cy = (uniform(gen, (n, k), 0.05, 0.95, dev) * h).floor()
    turn = uniform(gen, (n, k), -1.0, 1.0, dev) * math.radians(cfg.scar_rotation)
    sx = cx + uniform(gen, (n, k), 0.25, 0.75, dev) * w  # the source strip's centre (wraps around)
    sy = cy + uniform(gen, (n, k), 0.25, 0.75, dev) * h
    own = idx[:, None].expand(n, k)
    other = uniform(gen, (n, k), 0.0, 1.0, dev) < 0.5
    src = torch.where(other, _others(n_batch, own, gen), own) if n_batch > 1 else own
    gain = uniform(gen, (n, k, 1), 1 - cfg.jitter, 1 + cfg.jitter, dev)
    shift = uniform(gen, (n, k, c), -cfg.jitter, cfg.jitter, dev)

    # the strips' pixels: a window of offsets around each centre, (n, k, S, S)
    half = int(math.ceil(0.5 * math.hypot(cfg.scar_length[1] * side, cfg.scar_width[1] * side))) + 1
    off = torch.arange(-half, half + 1, device=dev, dtype=torch.float32)
    e = (Ellipsis, None, None)
    dx, dy = off.view(1, 1, 1, -1), off.view(1, 1, -1, 1)
    cos, sin = torch.cos(angle)[e], torch.sin(angle)[e]
    inside = ((dx * cos + dy * sin).abs() <= length[e] / 2) & ((dy * cos - dx * sin).abs() <= width[e] / 2)
    inside &= (torch.arange(k, device=dev)[None] < count[:, None])[e]
    px, py = cx[e] + dx, cy[e] + dy
    inside &= (px >= 0) & (px < w) & (py >= 0) & (py < h)
    i, j, a, b = torch.nonzero(inside, as_tuple=True)
    ox, oy = off[b], off[a]
    key = i * (h * w) + (py[i, j, a, 0] * w + px[i, j, 0, b]).long()
    top = torch.full((n * h * w,), -1, dtype=torch.long, device=dev).scatter_reduce(0, key, j, "amax")
    keep = top[key] == j  # where strips cross, the later one lies on top
    i, j, ox, oy, key = i[keep], j[keep], ox[keep], oy[keep], key[keep]

    # texture: the source point turned by `turn` about the source centre, bilinear with wrap-around
    tc, ts = torch.cos(turn[i, j]), torch.sin(turn[i, j])
    qx, qy = sx[i, j] + tc * ox - ts * oy, sy[i, j] + ts * ox + tc * oy
    x0, y0 = qx.floor(), qy.floor()
    fx, fy = (qx - x0)[:, None], (qy - y0)[:, None]
    x0, y0 = x0.long() % w, y0.long() % h
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    s = src[i, j]
    pixels = x.permute(0, 2, 3, 1).reshape(n_batch * h * w, c)
    base = s * (h * w)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return pixels[base + yy * w + xx].to(torch.float32)

    val = torch.lerp(torch.lerp(at(y0, x0), at(y0, x1), fx), torch.lerp(at(y1, x0), at(y1, x1), fx), fy)
    if cfg.jitter > 0:  # the same jitter as _jitter, with the source image's statistics
        xf = x.to(torch.float32)
        mean, spread = xf.mean((2, 3)), xf.std((2, 3)).mean(1, keepdim=True)
        val = mean[s] + gain[i, j] * (val - mean[s]) + shift[i, j] * spread[s]

    out = x[idx].to(torch.float32)
    out.view(n, c, h * w)[i, :, key - i * (h * w)] = val
    mask = torch.zeros(n * h * w, dtype=torch.bool, device=dev)
    mask[key] = True
    return out, mask.view(n, h, w)


def _scar(x: torch.Tensor, idx: torch.Tensor, gen: torch.Generator, cfg: SynthConfig) -> Altered:
    need = max(1, math.ceil(cfg.min_area * x.shape[-2] * x.shape[-1]))
    out, mask = _strips(x, idx, gen, cfg)
    for attempt in range(_REDRAWS + 1):
        small = torch.nonzero(mask.flatten(1).sum(1) < need).flatten()
        if small.numel() == 0:
            break
        out[small], mask[small] = _strips(x, idx[small], gen, cfg, fallback=attempt == _REDRAWS)
    return out, mask
