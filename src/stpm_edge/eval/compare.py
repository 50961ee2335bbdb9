"""Side-by-side accuracy of model variants (FP32 / FP16 / INT8 ...) on one test split, and
the INT8 accuracy gate.

Every variant runs on the same images; the first one is the reference for the map and score
deviations. Task metrics (image/pixel AUROC, PRO) are what users care about: a numeric
tolerance alone (what Polygraphy or trtexec check) says nothing about missed defects.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from stpm_edge.data.mvtec import Dataset
from stpm_edge.errors import StpmError
from stpm_edge.eval.evaluate import EvalResult, EvalSet, load_test, score_test
from stpm_edge.runtime.backends.base import Backend
from stpm_edge.data.frames import to_model_input

logger = logging.getLogger(__name__)


@dataclass
class VariantResult:
    model: str
    precision: str
    image_auroc: float
    pixel_auroc: float | None
    pro: float | None
    max_abs_map_diff: float  # vs the reference, normalised units (0.5 = threshold)
    max_abs_score_diff: float
    ms_per_image: float
    # max over pixels of |Δ| / max(1, |reference|): absolute up to the threshold scale,
    # relative on strong defects (maps reach 20+ there, where FP16 keeps ~3 significant digits)
    max_scaled_map_diff: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def run_backend(backend: Backend, test: EvalSet, batch_size: int = 16,
                progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(maps (N,h,w), scores (N,), ms per image) of ``backend`` on every test image."""
    maps, scores, elapsed = [], [], 0.0
    for i in range(0, len(test.images), batch_size):
        frames = to_model_input(test.images[i:i + batch_size], backend.input_spec, backend.metadata)
        t0 = time.perf_counter()
        amap, score = backend.infer(frames)
        elapsed += time.perf_counter() - t0
        maps.append(amap[:, 0])
        scores.append(score)
        if progress:
            progress(len(frames))
    return np.concatenate(maps), np.concatenate(scores), 1000.0 * elapsed / max(1, len(test.images))


def compare_backends(backends: Sequence[Backend], names: Sequence[str], test: EvalSet, batch_size: int = 16,
                     progress: Callable[[int], None] | None = None) -> list[VariantResult]:
    """Metrics of each backend on ``test``; deviations are against ``backends[0]``."""
    out: list[VariantResult] = []
    ref_maps = ref_scores = None
    for backend, name in zip(backends, names):
        maps, scores, ms = run_backend(backend, test, batch_size, progress)
        if ref_maps is None:
            ref_maps, ref_scores = maps, scores
        elif maps.shape != ref_maps.shape:
            raise StpmError(f"{name}: anomaly_map is {maps.shape[1:]} but the reference's is {ref_maps.shape[1:]}; "
                            f"compare variants exported with the same --map-size")
        r = score_test(test, maps, scores, backend.metadata.threshold)
        out.append(VariantResult(name, backend.metadata.precision, r.image_auroc, r.pixel_auroc,
                                 r.pro, float(np.abs(maps - ref_maps).max()),
                                 float(np.abs(scores - ref_scores).max()), ms,
                                 float((np.abs(maps - ref_maps) / np.maximum(1.0, np.abs(ref_maps))).max())))
    return out


def compare_models(paths: Sequence[Path], dataset: Dataset, device: str = "cpu", batch_size: int = 16,
                   progress: Callable[[int], None] | None = None) -> list[VariantResult]:
    """Open each exported model and compare them on the dataset's test split."""
    from stpm_edge.runtime.backends.select import open_backend  # noqa: PLC0415

    if not dataset.has_test:
        raise StpmError(f"{dataset.root}: no test split with good and defective images to compare on")
    test = load_test(dataset.test, progress)
    # One line for all of them, not one or two per (often temporary) file; -v shows each.
    backend_log = logging.getLogger("stpm_edge.runtime.backends")
    level = backend_log.level
    if not backend_log.isEnabledFor(logging.DEBUG):
        backend_log.setLevel(logging.WARNING)
    try:
        backends = []
        for p in paths:
            backends.append(open_backend(p, device))
    except BaseException:
        for b in backends:
            b.close()
        raise
    finally:
        backend_log.setLevel(level)
    logger.info("comparing %d models on %s (%s requested)", len(backends),
                "; ".join(dict.fromkeys(b.describe() for b in backends)), device)
    try:
        return compare_backends(backends, [str(p) for p in paths], test, batch_size, progress)
    finally:
        for b in backends:
            b.close()


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    image_drop_pt: float
    pixel_drop_pt: float | None
    message: str


def gate(reference: VariantResult, candidate: VariantResult, max_drop_pt: float) -> GateVerdict:
    """Does ``candidate`` lose at most ``max_drop_pt`` AUROC points (image and pixel) vs ``reference``?

    On failure ``message`` is one paragraph: what was lost, and what to try.
    """
    image_drop = 100.0 * (reference.image_auroc - candidate.image_auroc)
    pixel_drop = None
    if reference.pixel_auroc is not None and candidate.pixel_auroc is not None:
        pixel_drop = 100.0 * (reference.pixel_auroc - candidate.pixel_auroc)
    worst = max(image_drop, pixel_drop if pixel_drop is not None else -np.inf)
    passed = worst <= max_drop_pt
    pix = f", pixel AUROC {100 * reference.pixel_auroc:.2f} -> {100 * candidate.pixel_auroc:.2f} " \
          f"({-pixel_drop:+.2f} pt)" if pixel_drop is not None else ""
    summary = (f"image AUROC {100 * reference.image_auroc:.2f} -> {100 * candidate.image_auroc:.2f} "
               f"({-image_drop:+.2f} pt){pix}, max |map diff| {candidate.max_abs_map_diff:.3f}")
    if passed:
        return GateVerdict(True, image_drop, pixel_drop, f"INT8 within the {max_drop_pt:g} pt budget: {summary}")
    return GateVerdict(False, image_drop, pixel_drop, (
        f"INT8 loses more than the {max_drop_pt:g} pt AUROC budget ({summary}), so it was not written. "
        f"Try, in this order: more calibration images (--calib-count, a few hundred good images from the line); "
        f"another method (--calib-method entropy|percentile|minmax); keeping parts of the trunks in float "
        f"(--keep-float auto tries the early modules, where symmetric INT8 hurts most; or name them: "
        f"--keep-float stem,stages.0; or first,last); or deploy FP16 (--fp16), which keeps accuracy."))


def evaluate_backend(backend: Backend, dataset: Dataset, batch_size: int = 16,
                     progress: Callable[[int], None] | None = None) -> EvalResult:
    """An exported model through a runtime backend (normalised outputs: threshold 0.5)."""
    test = load_test(dataset.test, progress)
    maps, scores, ms = run_backend(backend, test, batch_size, progress)
    result = score_test(test, maps, scores, backend.metadata.threshold)
    result.ms_per_image = ms
    return result
