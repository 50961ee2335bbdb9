"""Evaluation metrics of the MVTec AD protocol, in plain numpy (+ ``scipy.ndimage``).

Definitions
-----------
* **ROC AUC** (``roc_auc``, ``image_auroc``, ``pixel_auroc``): area under the ROC
  curve, computed exactly: one sort, one point per *distinct* score, trapezoid
  rule. Tied scores therefore give a diagonal segment (half credit), which is the
  same as ``sklearn.metrics.roc_auc_score`` / the Mann-Whitney U statistic.
  Image level: one score per image; pixel level: every pixel of every test image.
* **PRO** (Per-Region Overlap; Bergmann et al., "The MVTec Anomaly Detection
  Dataset", IJCV 2021). For a threshold ``t``:
  ``PRO(t)`` = mean, over all connected components ``C`` of the ground-truth masks
  (all images), of ``|{p in C : map[p] >= t}| / |C|``;
  ``FPR(t)`` = fraction of normal pixels (``mask == False``, over *all* images,
  defect-free ones included) with ``map >= t``.
  The (FPR, PRO) curve is started at (0, 0), integrated with the trapezoid rule
  from FPR 0 up to ``fpr_limit`` (default 0.3; the PRO value at exactly
  ``fpr_limit`` is linearly interpolated) and divided by ``fpr_limit``, so a
  perfect map scores 1.0 and a constant map scores ``fpr_limit / 2``.
  This follows the official MVTec AD evaluation script (``pro_curve_util.py``).
* **Connectivity**: components are labelled *per image* with
  ``scipy.ndimage.label`` and, by default, the structuring element of the
  official script, ``np.ones((3, 3))`` = **8-connectivity** (diagonal neighbours
  join). ``connectivity=4`` is available for implementations that use
  ``scipy.ndimage.label``'s default structure instead.
* **F1**: a sample is predicted positive iff ``score >= threshold``; precision,
  recall and F1 that would divide by zero are reported as 0.0.

Inputs are array-like; labels/masks must be boolean or 0/1. Invalid input raises
``ValueError`` with a one-line message.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "Metrics", "best_f1", "compute_metrics", "f1_at_threshold", "image_auroc",
    "pixel_auroc", "pro_auc", "roc_auc", "roc_curve",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers
def _as_binary(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be boolean or contain only 0/1 values")
    return arr.astype(bool)


def _as_scores(values: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric ({exc})") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _labels_scores(labels: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    y = _as_binary(labels, "labels")
    s = _as_scores(scores, "scores")
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.size != s.size:
        raise ValueError(f"labels and scores differ in length: {y.size} != {s.size}")
    if y.size == 0:
        raise ValueError("labels and scores are empty")
    return y, s


def _masks_maps(masks: object, maps: object, ndim: int | None) -> tuple[np.ndarray, np.ndarray]:
    m = _as_binary(masks, "masks")
    a = _as_scores(maps, "maps")
    if m.shape != a.shape:
        raise ValueError(f"masks and maps differ in shape: {m.shape} != {a.shape}")
    if ndim is not None and m.ndim != ndim:
        raise ValueError(f"masks and maps must have shape (N, H, W), got {m.shape}")
    if m.size == 0:
        raise ValueError("masks and maps are empty")
    return m, a


def _sorted_cumsums(scores: np.ndarray, *weights: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sort ``scores`` descending (once) and return them with, for each weight array,
    ``c`` of length ``n + 1`` where ``c[k]`` = total weight of the ``k`` highest scores."""
    order = np.argsort(scores)[::-1]
    sums = []
    for w in weights:
        c = np.empty(scores.size + 1, dtype=np.float64)
        c[0] = 0.0
        np.cumsum(w[order], out=c[1:])
        sums.append(c)
    return scores[order], sums


def _distinct_counts(sorted_desc: np.ndarray) -> np.ndarray:
    """``k`` such that the top-``k`` scores are exactly those ``>= t``, for each distinct ``t``."""
    return np.append(np.flatnonzero(np.diff(sorted_desc)) + 1, sorted_desc.size)


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


# --------------------------------------------------------------------------- ROC
def roc_curve(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, thresholds decreasing, starting at ``(0, 0, inf)``.

    One point per distinct score (like sklearn's ``roc_curve(drop_intermediate=False)``).
    """
    y, s = _labels_scores(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs both classes; labels contain only one")
    s_desc, (tps,) = _sorted_cumsums(s, y)
    counts = np.insert(_distinct_counts(s_desc), 0, 0)
    tp = tps[counts]
    fp = counts - tp
    thresholds = np.concatenate(([np.inf], s_desc[counts[1:] - 1]))
    return fp / n_neg, tp / n_pos, thresholds


def roc_auc(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray) -> float:
    """Exact area under the ROC curve (ties count half), as ``roc_auc_score``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return _trapezoid(fpr, tpr)


def image_auroc(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray) -> float:
    """Image-level AUROC: ``labels`` True = defective image, one score per image."""
    return roc_auc(labels, scores)


def pixel_auroc(masks: object, maps: object) -> float:
    """Pixel-level AUROC over all pixels of all images (masks and maps of equal shape)."""
    m, a = _masks_maps(masks, maps, ndim=None)
    return roc_auc(m.ravel(), a.ravel())


# --------------------------------------------------------------------------- PRO
def _label_components(masks: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Label connected components of each image separately, ids unique over the stack."""
    if connectivity == 8:
        plane = np.ones((3, 3), dtype=bool)
    elif connectivity == 4:
        plane = ndimage.generate_binary_structure(2, 1)
    else:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = plane  # no links along the image axis: labelling is per image
    labels, n = ndimage.label(masks, structure=structure)
    return labels, int(n)


def pro_auc(masks: object, maps: object, fpr_limit: float = 0.3,
            num_thresholds: int | None = None, *, connectivity: int = 8) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (see module docstring).

    ``num_thresholds=None``: exact, every distinct map value is a threshold.
    ``num_thresholds=K``: ``K`` thresholds evenly spaced from max to min of ``maps``.
    """
    m, a = _masks_maps(masks, maps, ndim=3)
    if not 0.0 < float(fpr_limit) <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if num_thresholds is not None and int(num_thresholds) < 2:
        raise ValueError(f"num_thresholds must be >= 2 or None, got {num_thresholds}")
    comp, n_regions = _label_components(m, connectivity)
    if n_regions == 0:
        raise ValueError("PRO needs defective pixels; all masks are empty")
    comp = comp.ravel()
    normal = comp == 0
    n_normal = int(normal.sum())
    if n_normal == 0:
        raise ValueError("PRO needs normal pixels; all mask pixels are defective")
    inv_size = np.zeros(n_regions + 1, dtype=np.float64)
    inv_size[1:] = 1.0 / np.bincount(comp, minlength=n_regions + 1)[1:]
    # A defect pixel adds 1/|C| to its component's overlap; a normal pixel adds 1 false positive.
    s_desc, (overlap, false_pos) = _sorted_cumsums(a.ravel(), inv_size[comp], normal)
    del comp, normal
    if num_thresholds is None:
        counts = _distinct_counts(s_desc)
    else:
        thr = np.linspace(s_desc[0], s_desc[-1], int(num_thresholds))
        counts = np.searchsorted(-s_desc, -thr, side="right")  # number of pixels >= thr
    counts = np.concatenate(([0], counts, [s_desc.size]))
    fpr = np.minimum(false_pos[counts] / n_normal, 1.0)
    pro = np.minimum(overlap[counts] / n_regions, 1.0)
    return _partial_area(fpr, pro, float(fpr_limit)) / float(fpr_limit)


def _partial_area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under nondecreasing-``x`` curve from ``x[0]`` to ``x_max``."""
    ins = int(np.searchsorted(x, x_max, side="right"))  # x[:ins] <= x_max
    area = _trapezoid(x[:ins], y[:ins])
    if x[ins - 1] < x_max and ins < x.size:
        x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (x_max - x0)
    return float(min(max(area, 0.0), x_max))


# --------------------------------------------------------------------------- F1
def _f1(tp: float, fp: float, fn: float) -> float:
    den = 2 * tp + fp + fn
    return float(2 * tp / den) if den > 0 else 0.0


def f1_at_threshold(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray,
                    threshold: float) -> dict:
    """Confusion counts, precision, recall and F1 with positive iff ``score >= threshold``."""
    y, s = _labels_scores(labels, scores)
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    pred = s >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(y.size - tp - fp - fn)
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": _f1(tp, fp, fn),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def best_f1(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray) -> tuple[float, float]:
    """``(best F1, threshold)`` over the distinct scores as thresholds (highest one on ties)."""
    y, s = _labels_scores(labels, scores)
    s_desc, (tps,) = _sorted_cumsums(s, y)
    counts = _distinct_counts(s_desc)
    tp = tps[counts]
    fp = counts - tp
    fn = tps[-1] - tp
    den = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(s_desc[counts[i] - 1])


# --------------------------------------------------------------------------- report
@dataclass
class Metrics:
    """Full evaluation report; pixel metrics are None without (defective) masks."""

    image_auroc: float
    pixel_auroc: float | None = None
    pro: float | None = None
    f1: dict | None = None


def compute_metrics(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray,
                    masks: object | None = None, maps: object | None = None,
                    fpr_limit: float = 0.3, threshold: float | None = None) -> Metrics:
    """Image AUROC, and pixel AUROC / PRO when ``masks`` and ``maps`` are given.

    ``f1`` is ``f1_at_threshold`` on the image scores when ``threshold`` is given.
    """
    result = Metrics(image_auroc=image_auroc(labels, scores))
    if (masks is None) != (maps is None):
        raise ValueError("masks and maps must be given together")
    if masks is not None:
        m, a = _masks_maps(masks, maps, ndim=3)
        if m.any():
            result.pixel_auroc = pixel_auroc(m, a)
            result.pro = pro_auc(m, a, fpr_limit=fpr_limit)
        else:
            log.warning("masks contain no defective pixel; pixel metrics skipped")
    if threshold is not None:
        result.f1 = f1_at_threshold(labels, scores, threshold)
    return result
