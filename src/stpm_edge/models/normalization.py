"""Normalised units and the rules that measure them on held-out good images.

Normalised units map ``min_value`` → 0 and the threshold → 0.5, linearly and without
clipping (so rankings and AUROC are unchanged):
``normalized = 0.5 · (raw − min_value) / (threshold − min_value)``. The mapping is generic;
*where* the threshold sits is each method's rule (its score distribution), chosen by the
method through :meth:`~stpm_edge.models.method.Method.normalization`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from stpm_edge.errors import StpmError


@dataclass(frozen=True)
class Normalization:
    """Raw-score statistics measured on held-out good images, and the default thresholds."""

    image_threshold: float
    pixel_threshold: float
    min_value: float

    def __post_init__(self) -> None:
        for name in ("image_threshold", "pixel_threshold", "min_value"):
            if not math.isfinite(getattr(self, name)):
                raise StpmError(f"normalization.{name} is not a finite number")
        if not (self.image_threshold > self.min_value and self.pixel_threshold > self.min_value):
            raise StpmError("normalization thresholds must be above normalization.min_value")

    @staticmethod
    def _scale(raw: Any, threshold: float, min_value: float) -> Any:
        return 0.5 * (raw - min_value) / (threshold - min_value)

    def normalize_image(self, score: Any) -> Any:
        return self._scale(score, self.image_threshold, self.min_value)

    def normalize_pixel(self, amap: Any) -> Any:
        return self._scale(amap, self.pixel_threshold, self.min_value)


def _inputs(good_scores: np.ndarray, good_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(good_scores, dtype=np.float64).ravel()
    pixels = np.asarray(good_maps, dtype=np.float64).ravel()
    if scores.size == 0 or pixels.size == 0:
        raise StpmError("need at least one held-out good image to compute thresholds")
    if not (np.isfinite(scores).all() and np.isfinite(pixels).all()):
        raise StpmError("the model gives NaN or Inf on held-out good images; training diverged (try a lower --lr)")
    return scores, pixels


def _finish(image_thr: float, pixel_thr: float, min_value: float) -> Normalization:
    tiny = 1e-30
    span = max(abs(min_value) * 1e-6, tiny)
    return Normalization(max(image_thr, min_value + span), max(pixel_thr, min_value + span), min_value)


def log_space_rule(good_scores: np.ndarray, good_maps: np.ndarray, k_sigma: float = 3.0) -> Normalization:
    """For positive, heavy-tailed scores (a product of distances): in log space,
    image threshold = max(exp(μ + kσ) of the image scores, the largest good score), so no
    held-out good image is rejected; pixel threshold = exp(μ + kσ) of all good pixels;
    min_value = the smallest good pixel value."""
    scores, pixels = _inputs(good_scores, good_maps)
    tiny = 1e-30
    log_s = np.log(np.maximum(scores, tiny))
    image_thr = float(max(np.exp(log_s.mean() + k_sigma * log_s.std()), scores.max()))
    log_p = np.log(np.maximum(pixels, tiny))
    pixel_thr = float(np.exp(log_p.mean() + k_sigma * log_p.std()))
    min_value = float(pixels.min())
    pixel_thr = max(pixel_thr, min_value * (1 + 1e-6) + tiny)
    image_thr = max(image_thr, min_value * (1 + 1e-6) + tiny)
    return Normalization(image_thr, pixel_thr, min_value)


def linear_rule(good_scores: np.ndarray, good_maps: np.ndarray, k_sigma: float = 3.0) -> Normalization:
    """For scores that are roughly Gaussian on good images (distances, probabilities): the same
    rule in linear space: image threshold = max(μ + kσ, the largest good score), pixel
    threshold = μ + kσ of good pixels, min_value = the smallest good pixel value."""
    scores, pixels = _inputs(good_scores, good_maps)
    image_thr = float(max(scores.mean() + k_sigma * scores.std(), scores.max()))
    pixel_thr = float(pixels.mean() + k_sigma * pixels.std())
    return _finish(image_thr, pixel_thr, float(min(pixels.min(), scores.min())))
