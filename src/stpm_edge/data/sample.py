"""A small MVTec-AD-style dataset built offline from texture photographs bundled with
scikit-image, with synthetic but realistic defects and exact ground-truth masks.

Train crops come from the left part of the photograph, test crops from the right part
(a column split: brick's perspective changes brick size with the row, so every row is
seen by both splits). Everything is deterministic for a given seed.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np

from stpm_edge.data.io import check_writable, atomic_dir, write_image
from stpm_edge.errors import StpmError

logger = logging.getLogger(__name__)

CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel", "hubble_deep_field")
DEFECT_KINDS: tuple[str, ...] = ("scratch", "spot", "crack", "patch")

MIN_IMAGE_SIZE = 64
DEFAULT_IMAGE_SIZE = 256  # = the default model input, so defects are painted at the scale the model sees
TEST_FRACTION = 0.4  # share of the source columns reserved for test crops (at least one crop wide)
CHANGE_TOL = 8  # grey levels: a painted pixel belongs to the mask iff it changed by at least this
MIN_AREA, MAX_AREA = 0.003, 0.06  # defect area as a fraction of the image

# Crop augmentations per category: brick keeps its (vertical) brick orientation, so only
# mirror it left-right; the isotropic textures use all 8 flips/90-degree rotations.
_DIHEDRAL_ALL = tuple(range(8))
_AUGMENT = {"brick": (0, 4), "grass": _DIHEDRAL_ALL, "gravel": _DIHEDRAL_ALL,
            "hubble_deep_field": _DIHEDRAL_ALL}


@dataclass(frozen=True)
class SampleSummary:
    root: Path
    category: str
    image_size: int
    n_train: int
    n_test_good: int
    n_test_defect: dict[str, int]


@functools.lru_cache(maxsize=None)
def _load_source(category: str) -> np.ndarray:
    from skimage import data as skdata

    img = np.asarray(getattr(skdata, category)())
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    img = np.ascontiguousarray(img, dtype=np.uint8)
    img.setflags(write=False)
    return img


def load_source(category: str) -> np.ndarray:
    """The source photograph of ``category`` as read-only uint8 HxWx3 BGR."""
    if category not in CATEGORIES:
        raise StpmError(f"unknown sample category {category!r}; valid: {', '.join(CATEGORIES)}")
    return _load_source(category)


def max_image_size(category: str) -> int:
    """Largest ``image_size`` for ``category``: both column regions must hold one crop."""
    h, w = load_source(category).shape[:2]
    return min(h, w // 2)


def split_column(width: int, image_size: int) -> int:
    """Column boundary b: train crops lie in columns [0, b), test crops in [b, width)."""
    test_w = max(int(round(TEST_FRACTION * width)), image_size)
    return width - test_w


def _dihedral(img: np.ndarray, op: int) -> np.ndarray:
    out = np.rot90(img, op % 4)
    return np.ascontiguousarray(out[:, ::-1] if op >= 4 else out)


def _crops(region: np.ndarray, n: int, size: int, ops: tuple[int, ...], rng: np.random.Generator) -> list[np.ndarray]:
    h, w = region.shape[:2]
    out = []
    for _ in range(n):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        out.append(_dihedral(region[y:y + size, x:x + size], int(rng.choice(ops))))
    return out


# ----------------------------------------------------------------------------- defects
Paint = Tuple[np.ndarray, float, float, float]  # alpha in [0, 1], target level, strength, smoothing sigma


def _level(image: np.ndarray, center: tuple[float, float], radius: float, rng: np.random.Generator,
           prefer_dark: bool) -> float:
    """Target grey level of a painted defect: dark or bright, whichever shows on the local background."""
    x, y = int(center[0]), int(center[1])
    r = max(int(radius), 4)
    local = float(image[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].mean())
    bright = local < 80 or (local <= 175 and not prefer_dark and rng.random() < 0.5)
    return rng.uniform(215, 245) if bright else rng.uniform(10, 40)


def _stroke(shape: tuple[int, ...], pts: np.ndarray, thickness: int, taper: bool) -> np.ndarray:
    """Anti-aliased polyline as alpha in [0, 1]; with ``taper`` it fades towards both ends."""
    canvas = np.zeros(shape[:2], np.uint8)
    q = np.round(pts * 4).astype(np.int32)
    for i in range(len(q) - 1):
        t = (i + 0.5) / (len(q) - 1)
        value = int(round(255 * min(1.0, 3.0 * min(t, 1 - t) + 0.5))) if taper else 255
        cv2.line(canvas, tuple(int(v) for v in q[i]), tuple(int(v) for v in q[i + 1]), value, thickness, cv2.LINE_AA, 2)
    return canvas.astype(np.float32) / 255


def _scratch(image: np.ndarray, rng: np.random.Generator, s: float) -> Paint:
    size = image.shape[0]
    length = rng.uniform(35, 80) * s
    theta = rng.uniform(0, np.pi)
    c = rng.uniform(0.25, 0.75, 2) * size
    d = np.array([np.cos(theta), np.sin(theta)]) * length / 2
    bend = np.array([-d[1], d[0]]) * rng.uniform(-0.35, 0.35)  # control-point offset: curvature
    t = np.linspace(0, 1, 24)[:, None]
    pts = (1 - t) ** 2 * (c - d) + 2 * (1 - t) * t * (c + bend) + t ** 2 * (c + d)
    alpha = _stroke(image.shape, pts, int(rng.integers(2, 5)), taper=True)
    return alpha, _level(image, tuple(c), length / 2, rng, False), rng.uniform(0.65, 0.9), 0.0


def _spot(image: np.ndarray, rng: np.random.Generator, s: float) -> Paint:
    size = image.shape[0]
    rx, ry = rng.uniform(5, 15, 2) * s
    c = rng.uniform(0.25, 0.75, 2) * size
    ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    r = np.ones_like(ang)
    for k in (2, 3, 4):  # low-frequency wobble makes an irregular blob
        r += rng.uniform(0, 0.12) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    rot = rng.uniform(0, np.pi)
    ex, ey = rx * r * np.cos(ang), ry * r * np.sin(ang)
    pts = np.stack([c[0] + ex * np.cos(rot) - ey * np.sin(rot), c[1] + ex * np.sin(rot) + ey * np.cos(rot)], 1)
    canvas = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * 4).astype(np.int32)], 255, cv2.LINE_AA, 2)
    alpha = cv2.GaussianBlur(canvas.astype(np.float32) / 255, (0, 0), 0.25 * min(rx, ry) + 0.5)
    # a stain also flattens the texture under it
    return alpha, _level(image, tuple(c), max(rx, ry), rng, False), rng.uniform(0.45, 0.7), 1.5 * max(s, 0.5)


def _walk(start: np.ndarray, heading: float, length: float, step: float, rng: np.random.Generator) -> np.ndarray:
    """Jagged path: a slowly drifting heading plus independent per-step jitter."""
    pts, p = [start], start
    for _ in range(max(int(length / step), 2)):
        heading += rng.normal(0, 0.15)
        a = heading + rng.normal(0, 0.45)
        p = p + step * np.array([np.cos(a), np.sin(a)])
        pts.append(p)
    return np.array(pts)


def _crack(image: np.ndarray, rng: np.random.Generator, s: float) -> Paint:
    size = image.shape[0]
    total, step = rng.uniform(40, 90) * s, 4.0 * max(s, 0.5)
    theta = rng.uniform(0, 2 * np.pi)
    main = _walk(rng.uniform(0.3, 0.7, 2) * size, theta, total, step, rng)
    alpha = _stroke(image.shape, main, int(rng.integers(1, 3)), taper=False)
    for _ in range(int(rng.integers(1, 3))):  # branches leave the main path at an angle
        i = int(rng.integers(len(main) // 4, 3 * len(main) // 4 + 1))
        heading = theta + rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 1.2)
        branch = _walk(main[i], heading, rng.uniform(0.25, 0.5) * total, step, rng)
        alpha = np.maximum(alpha, _stroke(image.shape, branch, 1, taper=False))
    return alpha, _level(image, tuple(main[0]), total / 2, rng, True), rng.uniform(0.6, 0.85), 0.0


def _paint(image: np.ndarray, alpha: np.ndarray, level: float, strength: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Blend the (optionally smoothed) image towards ``level`` with weight ``alpha * strength``.

    The mask is every pixel that changed by >= CHANGE_TOL grey levels; pixels that would change
    by less are left byte-identical, so the mask is exact.
    """
    f = image.astype(np.float32)
    base = cv2.GaussianBlur(f, (0, 0), sigma) if sigma > 0 else f
    target = base + strength * (level - base)
    new = np.clip(np.rint(f + alpha[..., None] * (target - f)), 0, 255).astype(np.uint8)
    change = np.abs(new.astype(np.int16) - image.astype(np.int16)).max(axis=2)
    mask = change >= CHANGE_TOL
    return np.where(mask[..., None], new, image), mask


def _patch(image: np.ndarray, donor: np.ndarray, rng: np.random.Generator, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut-paste: a transformed rectangle of ``donor`` replaces a rectangle of ``image``."""
    size = image.shape[0]
    h, w = (max(int(round(v)), 6) for v in rng.uniform(16, 36, 2) * s)
    op = int(rng.choice((1, 3, 5, 7)))  # turned by 90 degrees (maybe mirrored): the texture runs across
    ch, cw = (w, h) if op % 2 else (h, w)
    y = int(rng.integers(0, donor.shape[0] - ch + 1))
    x = int(rng.integers(0, donor.shape[1] - cw + 1))
    piece = _dihedral(donor[y:y + ch, x:x + cw], op).astype(np.float32)
    gain, bias = rng.uniform(0.85, 1.15), rng.choice((-1.0, 1.0)) * rng.uniform(20, 40)
    piece = np.clip(np.rint(piece * gain + bias), 0, 255).astype(np.uint8)
    ty, tx = (int(v) for v in rng.uniform(0.2, 0.8, 2) * size - np.array([h, w]) / 2)
    out = image.copy()
    out[ty:ty + h, tx:tx + w] = piece
    mask = np.zeros(image.shape[:2], bool)
    mask[ty:ty + h, tx:tx + w] = True
    return out, mask


def paint_defect(image: np.ndarray, kind: str, rng: np.random.Generator,
                 donor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of ``kind`` on a square uint8 BGR image; returns (image, bool mask).

    Outside the mask the result is byte-identical to ``image``. For ``scratch``, ``spot`` and
    ``crack`` the mask is exactly the pixels changed by >= CHANGE_TOL grey levels; for
    ``patch`` it is the pasted rectangle (texture cut from ``donor``, default ``image``).
    The mask is non-empty, covers 0.3%-6% of the image and keeps a margin from the border.
    """
    if kind not in DEFECT_KINDS:
        raise StpmError(f"unknown defect kind {kind!r}; valid: {', '.join(DEFECT_KINDS)}")
    size = image.shape[0]
    s, margin = size / 160.0, max(4, size // 16)
    for _ in range(200):
        if kind == "patch":
            out, mask = _patch(image, image if donor is None else donor, rng, s)
        else:
            out, mask = _paint(image, *{"scratch": _scratch, "spot": _spot, "crack": _crack}[kind](image, rng, s))
        ys, xs = np.nonzero(mask)
        if (MIN_AREA <= mask.mean() <= MAX_AREA and ys.min() >= margin and xs.min() >= margin
                and ys.max() < size - margin and xs.max() < size - margin):
            return out, mask
    raise StpmError(f"could not place a {kind} defect on a {size}x{size} image")  # pragma: no cover


# ----------------------------------------------------------------------------- dataset
def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (hi is not None and value > hi):
        rng_txt = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise StpmError(f"{name} must be an integer {rng_txt}, got {value!r}")
    return int(value)


def _write_dataset(root: Path, category: str, seed: int, size: int, counts: dict[str, int]) -> None:
    src = load_source(category)
    b = split_column(src.shape[1], size)
    train_region, test_region = src[:, :b], src[:, b:]
    ops = _AUGMENT[category]
    # Independent streams (the test set does not depend on n_train); the category is mixed in
    # so that categories do not share defect geometry.
    entropy = [seed, zlib.crc32(category.encode())]
    streams = [np.random.default_rng(ss) for ss in np.random.SeedSequence(entropy).spawn(2 + len(DEFECT_KINDS))]
    for split, region, n, rng in (("train", train_region, counts["train"], streams[0]),
                                  ("test", test_region, counts["test_good"], streams[1])):
        folder = root / split / "good"
        folder.mkdir(parents=True)
        for i, img in enumerate(_crops(region, n, size, ops, rng)):
            write_image(folder / f"{i:03d}.png", img)
    for kind, rng in zip(DEFECT_KINDS, streams[2:]):
        img_dir, gt_dir = root / "test" / kind, root / "ground_truth" / kind
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for i, clean in enumerate(_crops(test_region, counts["defect"], size, ops, rng)):
            bad, mask = paint_defect(clean, kind, rng, donor=train_region)
            write_image(img_dir / f"{i:03d}.png", bad)
            write_image(gt_dir / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)


def make_sample_dataset(out: Path, category: str = "brick", seed: int = 0, *, image_size: int = DEFAULT_IMAGE_SIZE,
                        n_train: int = 60, n_test_good: int = 20, n_defect_per_kind: int = 6,
                        overwrite: bool = False) -> SampleSummary:
    """Write a sample dataset in MVTec AD layout under ``out`` (atomically) and summarise it."""
    out = Path(out)
    if category not in CATEGORIES:
        raise StpmError(f"unknown sample category {category!r}; valid: {', '.join(CATEGORIES)}")
    seed = _check_int("seed", seed, 0)
    size = _check_int("image_size", image_size, MIN_IMAGE_SIZE, max_image_size(category))
    counts = {"train": _check_int("n_train", n_train, 1), "test_good": _check_int("n_test_good", n_test_good, 1),
              "defect": _check_int("n_defect_per_kind", n_defect_per_kind, 1)}
    check_writable(out, folder=True)  # a regular file is never replaced by a dataset folder
    occupied = out.exists() and any(out.iterdir())
    if occupied and not overwrite:
        raise StpmError(f"{out}: already exists and is not empty (use --overwrite)")
    if not occupied:
        with atomic_dir(out) as tmp:
            _write_dataset(tmp, category, seed, size, counts)
    else:  # build the new dataset completely first, then swap it in for the old one
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".new", dir=out.parent))
        try:
            with atomic_dir(staging / "dataset") as tmp:
                _write_dataset(tmp, category, seed, size, counts)
            os.replace(out, staging / "old")
            try:
                os.replace(staging / "dataset", out)
            except BaseException:
                os.replace(staging / "old", out)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    logger.debug("wrote %s sample dataset to %s (%d train, %d test good, %d per defect kind, %dpx)",
                category, out, counts["train"], counts["test_good"], counts["defect"], size)
    return SampleSummary(root=out, category=category, image_size=size, n_train=counts["train"],
                         n_test_good=counts["test_good"],
                         n_test_defect={k: counts["defect"] for k in DEFECT_KINDS})
