"""The frames that calibrate an INT8 model: a deterministic subset of good images, fed as
the exported graph's own input (raw uint8 BGR frames, or the normalised tensor for a
float-input graph), in fixed-size batches.

One reader feeds both calibrators: ONNX Runtime's static quantization
(:class:`OrtReader`) and TensorRT's classic calibrators (in :mod:`stpm_edge.tensorrt.calibrator`).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.data.io import list_images, read_image_bgr
from stpm_edge.errors import StpmError
from stpm_edge.artifact import InputSpec, ModelMetadata, read_onnx_metadata
from stpm_edge.data.frames import to_model_input

logger = logging.getLogger(__name__)

MIN_IMAGES = 8  # fewer than this cannot estimate activation ranges (TensorRT suggests ~500)
DEFAULT_COUNT = 128
ASPECT_TOLERANCE = 0.02


def calibration_folder(folder: Path) -> Path:
    """``folder`` itself, or ``folder/train/good`` when given an MVTec category root."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StpmError(f"{folder}: no such calibration folder")
    if not list_images(folder) and (folder / "train" / "good").is_dir():
        return folder / "train" / "good"
    return folder


def choose_images(paths: list[Path], count: int, seed: int) -> list[Path]:
    """A deterministic subset of ``count`` paths (all of them, sorted, if there are fewer)."""
    paths = sorted(paths)
    if len(paths) <= count:
        return paths
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(paths), size=count, replace=False)
    return [paths[i] for i in sorted(picked)]


def _check_size(path: Path, shape: tuple[int, ...], spec: InputSpec) -> None:
    h, w = shape[:2]
    if (h, w) == (spec.height, spec.width):
        return
    if abs(w / h - spec.width / spec.height) > ASPECT_TOLERANCE * spec.width / spec.height:
        raise StpmError(
            f"{path}: calibration image is {w}x{h} but the model takes {spec.width}x{spec.height} frames "
            f"(another aspect ratio); calibrate with frames from the camera the model will see, "
            f"or export with --frame-size {w}x{h}"
        )


class CalibrationFrames:
    """Batches of model input made from a folder of good images.

    ``count`` images are picked deterministically (``seed``) and read once, up front, so a
    bad file fails before any work starts. Every batch has exactly ``batch_size`` frames
    (the last one padded by repeating frames), shaped ``spec.shape(batch_size)``.
    """

    def __init__(self, folder: Path, spec: InputSpec, metadata: ModelMetadata, *, count: int = DEFAULT_COUNT,
                 seed: int = 0, batch_size: int = 1, min_images: int = MIN_IMAGES) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise StpmError(f"calibration count: expected a positive integer, got {count!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise StpmError(f"calibration batch size: expected a positive integer, got {batch_size!r}")
        if spec.batch is not None and batch_size != spec.batch:
            raise StpmError(f"calibration batch size {batch_size} differs from the model's fixed batch {spec.batch}")
        folder = calibration_folder(folder)
        available = list_images(folder)
        need = max(min_images, 1)
        if len(available) < need:
            raise StpmError(f"{folder}: {len(available)} image(s); INT8 calibration needs at least {need} "
                            f"good images (a few hundred is better)")
        self.folder = folder
        self.spec = spec
        self.metadata = metadata
        self.batch_size = batch_size
        self.seed = seed
        self.paths = choose_images(available, count, seed)
        if len(self.paths) < count:
            logger.warning("%s: only %d images for --calib-count %d; using all of them",
                           folder, len(self.paths), count)
        frames = []
        for path in self.paths:
            img = read_image_bgr(path)
            _check_size(path, img.shape, spec)
            frames.append(to_model_input([img], spec, metadata)[0])
        self._frames = np.stack(frames)

    @classmethod
    def for_model(cls, onnx_path: Path, folder: Path, **kwargs: Any) -> CalibrationFrames:
        """A reader for the exported model at ``onnx_path`` (its metadata gives the input)."""
        metadata = read_onnx_metadata(Path(onnx_path))
        spec = metadata.input
        kwargs.setdefault("batch_size", spec.batch or 1)
        return cls(folder, spec, metadata, **kwargs)

    @property
    def frames(self) -> np.ndarray:
        """All calibration frames, ``(count, ...)`` as the model takes them."""
        return self._frames

    def __len__(self) -> int:
        return -(-len(self._frames) // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        n, b = len(self._frames), self.batch_size
        for start in range(0, n, b):
            batch = self._frames[start:start + b]
            if len(batch) < b:
                idx = np.arange(b - len(batch)) % n
                batch = np.concatenate([batch, self._frames[idx]], axis=0)
            yield np.ascontiguousarray(batch)


class OrtReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over :class:`CalibrationFrames`."""

    def __init__(self, frames: CalibrationFrames, on_batch: Any = None) -> None:
        self._frames = frames
        self._it: Iterator[np.ndarray] | None = None
        self._on_batch = on_batch

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = iter(self._frames)
        batch = next(self._it, None)
        if batch is None:
            return None
        if self._on_batch is not None:
            self._on_batch()
        return {self._frames.spec.name: batch}

    def rewind(self) -> None:
        self._it = None

    def __len__(self) -> int:
        return len(self._frames)
