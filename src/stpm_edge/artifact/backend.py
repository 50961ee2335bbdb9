"""The backend interface: a loaded model that turns frames into ``(anomaly_map, score)``, checked
against the contract (:mod:`stpm_edge.artifact`). Defined here, below every backend (ONNX Runtime
and PyTorch in :mod:`stpm_edge.runtime.backends`, TensorRT in :mod:`stpm_edge.tensorrt`, Triton).

Batching: a backend accepts any number of frames ``M >= 1``. A dynamic-batch model runs all
``M`` at once. A fixed-batch model (batch ``B``) runs in chunks of ``B`` frames; the last
chunk is padded to ``B`` by repeating its last frame and the padded outputs are dropped, so
a batch-1 model runs frame by frame. (:meth:`Backend._infer_chunked` does this for every
backend.)
"""
from __future__ import annotations

import abc
from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np

from stpm_edge.artifact.contract import ANOMALY_MAP, SCORE, InputSpec
from stpm_edge.artifact.metadata import ModelMetadata
from stpm_edge.errors import StpmError


class Backend(abc.ABC):

    """A loaded model that turns frames into ``(anomaly_map, score)``.

    Use as a context manager (or call :meth:`close`) to release its resources.
    """

    name: str = "backend"
    input_spec: InputSpec
    metadata: ModelMetadata

    @abc.abstractmethod
    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run on ``frames`` (any batch size >= 1, checked against :attr:`input_spec`).

        Returns ``anomaly_map`` float32 ``(N, 1, h, w)`` and ``score`` float32 ``(N,)``.
        """

    def close(self) -> None:
        """Release resources; the default does nothing."""

    def describe(self) -> str:
        """One line naming the backend and its device, e.g. ``onnxruntime (CPUExecutionProvider)``."""
        return self.name

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers for subclasses ------------------------------------------------------------

    def _check_outputs(self, amap: Any, score: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Validate one run's outputs for ``n`` frames and return them as float32 arrays."""
        amap = np.asarray(amap, dtype=np.float32)
        score = np.asarray(score, dtype=np.float32)
        if amap.ndim != 4 or amap.shape[0] != n or amap.shape[1] != 1:
            raise StpmError(
                f"{self.name}: model returned {ANOMALY_MAP} of shape {tuple(amap.shape)}, "
                f"expected ({n}, 1, h, w)"
            )
        if score.size != n:
            raise StpmError(
                f"{self.name}: model returned {SCORE} of shape {tuple(score.shape)}, expected ({n},)"
            )
        if amap.size == 0:
            raise StpmError(f"{self.name}: model returned an empty {ANOMALY_MAP} {tuple(amap.shape)}")
        if not (np.isfinite(score).all() and np.isfinite(amap).all()):
            raise StpmError(f"{self.name}: model returned NaN or Inf in its outputs (a broken or hostile model)")
        return amap, score.reshape(n)

    def _infer_chunked(
        self, frames: np.ndarray, run: Callable[[np.ndarray], tuple[Any, Any]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run ``run`` on ``frames`` honouring the model's batch size.

        ``frames`` must already be checked. Dynamic batch: one call. Fixed batch ``B``:
        chunks of ``B``, the last padded by repeating its last frame; padded outputs dropped.
        """
        n = int(frames.shape[0])
        batch = self.input_spec.batch
        if batch is None or n == batch:
            return self._check_outputs(*run(np.ascontiguousarray(frames)), n)
        maps: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for start in range(0, n, batch):
            chunk = frames[start : start + batch]
            k = int(chunk.shape[0])
            if k < batch:
                pad = np.repeat(chunk[-1:], batch - k, axis=0)
                chunk = np.concatenate([chunk, pad], axis=0)
            amap, score = self._check_outputs(*run(np.ascontiguousarray(chunk)), batch)
            maps.append(amap[:k])
            scores.append(score[:k])
        return np.concatenate(maps, axis=0), np.concatenate(scores, axis=0)
