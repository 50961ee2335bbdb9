"""Run a model over a dataset's test split and compute the MVTec AD metrics.

Maps are compared with the ground truth at the model's input size (masks are resized
with nearest-neighbour), as anomalib does; image scores are the model's image scores.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from stpm_edge.data.mvtec import Dataset, TestSample, load_test_sample
from stpm_edge.data.preprocess import PreprocessSpec, preprocess_images
from stpm_edge.errors import StpmError
from stpm_edge.eval import metrics
from stpm_edge.models.checkpoint import ModelMeta
from stpm_edge.models.stpm.model import STPM


@dataclass
class PreparedTest:
    """A test split preprocessed once: inputs, labels, masks at model size (or None)."""

    x: torch.Tensor
    labels: np.ndarray
    masks: np.ndarray | None
    types: list[str]


@dataclass
class EvalResult:
    image_auroc: float
    pixel_auroc: float | None
    pro: float | None
    f1: dict | None
    n_images: int
    n_defective: int
    ms_per_image: float
    per_type: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("image_auroc", "pixel_auroc", "pro", "f1", "n_images", "n_defective",
                                              "ms_per_image", "per_type")}


def prepare_test(samples: Sequence[TestSample], spec: PreprocessSpec,
                 progress: Callable[[int], None] | None = None) -> PreparedTest:
    if not samples:
        raise StpmError("the dataset has no test images")
    images, masks, have_masks = [], [], any(s.mask is not None for s in samples)
    h, w = spec.image_size
    for s in samples:
        img, mask = load_test_sample(s)
        images.append(img)
        if have_masks:
            if mask is None:
                mask = np.zeros(img.shape[:2], dtype=bool)
            masks.append(cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0)
        if progress:
            progress(1)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    return PreparedTest(preprocess_images(images, spec), labels, np.stack(masks) if have_masks else None,
                        [s.defect_type for s in samples])


@torch.no_grad()
def predict(model: STPM, x: torch.Tensor, device: torch.device | str = "cpu", batch_size: int = 16,
            progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Raw maps (N,h,w), raw scores (N,) and the mean milliseconds per image."""
    model.eval().to(device, memory_format=torch.channels_last)
    maps, scores = [], []
    t0 = time.perf_counter()
    for i in range(0, len(x), batch_size):
        amap, score = model.predict(x[i:i + batch_size].to(device, memory_format=torch.channels_last))
        maps.append(amap[:, 0].float().cpu().numpy())
        scores.append(score.float().cpu().numpy())
        if progress:
            progress(min(batch_size, len(x) - i))
    elapsed = time.perf_counter() - t0
    return np.concatenate(maps), np.concatenate(scores), 1000.0 * elapsed / max(1, len(x))


def score_test(prepared: PreparedTest, maps: np.ndarray, scores: np.ndarray,
               image_threshold: float | None = None) -> EvalResult:
    labels = prepared.labels
    if labels.min() == labels.max():
        raise StpmError("the test split needs both good and defective images to compute AUROC")
    pixel_auroc = pro = None
    if prepared.masks is not None and prepared.masks.any():
        pixel_auroc = metrics.pixel_auroc(prepared.masks, maps)
        pro = metrics.pro_auc(prepared.masks, maps)
    f1 = metrics.f1_at_threshold(labels, scores, image_threshold) if image_threshold is not None else None
    per_type = {}
    good = labels == 0
    for t in sorted(set(prepared.types) - {"good"}):
        sel = good | np.array([ty == t for ty in prepared.types])
        per_type[t] = metrics.image_auroc(labels[sel], scores[sel])
    return EvalResult(metrics.image_auroc(labels, scores), pixel_auroc, pro, f1, int(len(labels)),
                      int(labels.sum()), float("nan"), per_type)


def evaluate(model: STPM, meta: ModelMeta, dataset: Dataset, device: torch.device | str = "cpu",
             batch_size: int = 16, progress: Callable[[int], None] | None = None) -> EvalResult:
    """Image AUROC, pixel AUROC, PRO, F1 at the stored image threshold, ms per image."""
    prepared = prepare_test(dataset.test, meta.preprocess, progress)
    maps, scores, ms = predict(model, prepared.x, device, batch_size, progress)
    thr = meta.normalization.image_threshold if meta.normalization else None
    result = score_test(prepared, maps, scores, thr)
    result.ms_per_image = ms
    return result
