"""Run a model (PyTorch checkpoint, or an exported model through a runtime backend) over a
dataset's test split and compute the MVTec AD metrics.

Maps are compared with the ground truth at the maps' own size (the model input size — a
method's smaller map, e.g. at feature resolution, is first resized to it bilinearly, as export
does by default — or the frame size for an export with ``--map-size frame``); masks are resized with
nearest-neighbour, as anomalib does. Image scores are the model's image scores.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from stpm_edge.data.mvtec import Dataset, TestSample, load_test_sample
from stpm_edge.data.preprocess import preprocess_images
from stpm_edge.errors import StpmError
from stpm_edge.eval import metrics
from stpm_edge.models.checkpoint import ModelMeta


@dataclass
class EvalSet:
    """A test split read once: BGR images, labels, full-resolution masks (or None), defect types."""

    images: list[np.ndarray]
    labels: np.ndarray
    masks: list[np.ndarray] | None
    types: list[str]

    def masks_at(self, size: tuple[int, int]) -> np.ndarray | None:
        """Masks resized (nearest) to ``size`` (h, w), stacked; None without ground truth."""
        if self.masks is None:
            return None
        h, w = size
        return np.stack([cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
                         for m in self.masks])


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


def load_test(samples: Sequence[TestSample], progress: Callable[[int], None] | None = None) -> EvalSet:
    if not samples:
        raise StpmError("the dataset has no test images")
    images, masks, have_masks = [], [], any(s.mask is not None for s in samples)
    for s in samples:
        img, mask = load_test_sample(s)
        images.append(img)
        if have_masks:
            masks.append(mask if mask is not None else np.zeros(img.shape[:2], dtype=bool))
        if progress:
            progress(1)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    return EvalSet(images, labels, masks if have_masks else None, [s.defect_type for s in samples])


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, device: torch.device | str = "cpu", batch_size: int = 16,
            progress: Callable[[int], None] | None = None, *, method) -> tuple[np.ndarray, np.ndarray, float]:
    """Raw maps (N,h,w) at the input size, raw scores (N,) and the mean milliseconds per image,
    through the method's inference module (the same one export traces; a smaller map is
    resized bilinearly, as the export does with ``--map-size model``)."""
    model.eval().to(device, memory_format=torch.channels_last)
    net = method.inference_module(model).eval()
    maps, scores = [], []
    t0 = time.perf_counter()
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        amap, score = net(xb.to(device, memory_format=torch.channels_last))
        if tuple(amap.shape[-2:]) != tuple(xb.shape[-2:]):
            amap = F.interpolate(amap, size=tuple(xb.shape[-2:]), mode="bilinear", align_corners=False)
        maps.append(amap[:, 0].float().cpu().numpy())
        scores.append(score.float().cpu().numpy())
        if progress:
            progress(min(batch_size, len(x) - i))
    elapsed = time.perf_counter() - t0
    return np.concatenate(maps), np.concatenate(scores), 1000.0 * elapsed / max(1, len(x))


def score_test(test: EvalSet, maps: np.ndarray, scores: np.ndarray,
               image_threshold: float | None = None) -> EvalResult:
    """Metrics of (N, h, w) maps and (N,) scores; masks are compared at the maps' size."""
    labels = test.labels
    if labels.min() == labels.max():
        raise StpmError("the test split needs both good and defective images to compute AUROC")
    masks = test.masks_at(maps.shape[-2:])
    m = metrics.compute_metrics(labels, scores, masks, maps if masks is not None else None, threshold=image_threshold)
    per_type = {}
    good = labels == 0
    for t in sorted(set(test.types) - {"good"}):
        sel = good | np.array([ty == t for ty in test.types])
        per_type[t] = metrics.image_auroc(labels[sel], scores[sel])
    return EvalResult(m.image_auroc, m.pixel_auroc, m.pro, m.f1, int(len(labels)), int(labels.sum()),
                      float("nan"), per_type)


def evaluate(model: torch.nn.Module, meta: ModelMeta, dataset: Dataset, device: torch.device | str = "cpu",
             batch_size: int = 16, progress: Callable[[int], None] | None = None) -> EvalResult:
    """PyTorch model: image AUROC, pixel AUROC, PRO, F1 at the stored image threshold, ms per image."""
    test = load_test(dataset.test, progress)
    x = preprocess_images(test.images, meta.preprocess)
    maps, scores, ms = predict(model, x, device, batch_size, progress, method=meta.method)
    result = score_test(test, maps, scores, meta.normalization.image_threshold if meta.normalization else None)
    result.ms_per_image = ms
    return result
