"""What every inference backend (ONNX Runtime, TensorRT, PyTorch) looks like to the runtime.

An exported model has exactly one input and two outputs (see ``stpm_edge.export``):

* input ``frames``: uint8 NHWC BGR ``(N, H, W, 3)`` (the default) or float32 NCHW
  normalised RGB ``(N, 3, H, W)``; ``N`` fixed or dynamic, ``H`` and ``W`` fixed;
* outputs ``anomaly_map`` float32 ``(N, 1, h, w)`` and ``score`` float32 ``(N,)``, in
  normalised units (0.5 is the default threshold).

:class:`InputSpec` is the ``"input"`` part of the model's ``stpm_edge`` metadata.

Batching: a backend accepts any number of frames ``M >= 1``. A dynamic-batch model runs all
``M`` at once. A fixed-batch model (batch ``B``) runs in chunks of ``B`` frames; the last
chunk is padded to ``B`` by repeating its last frame and the padded outputs are dropped, so
a batch-1 model runs frame by frame. (:meth:`Backend._infer_chunked` does this for every
backend.)
"""
from __future__ import annotations

import abc
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from stpm_edge.errors import StpmError

logger = logging.getLogger(__name__)

DTYPES = ("uint8", "float32")
LAYOUTS = ("NHWC", "NCHW")
COLORS = ("BGR", "RGB")

# The exported-model contract, defined once (the exporter imports these too).
METADATA_KEY = "stpm_edge"
INPUT_NAME = "frames"
ANOMALY_MAP = "anomaly_map"
SCORE = "score"
OUTPUT_NAMES = (ANOMALY_MAP, SCORE)

def _describe_array(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} {tuple(a.shape)}"
    return type(a).__name__


def _positive_int(d: dict[str, Any], key: str) -> int:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StpmError(f"input.{key}: expected a positive integer, got {value!r}")
    return value


def _choice(d: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = d[key]
    if value not in choices:
        raise StpmError(f"input.{key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def parse_metadata(props: dict[str, str], path: Any) -> dict[str, Any]:
    """The ``stpm_edge`` metadata dict from a model's string properties (one-line StpmError)."""
    if METADATA_KEY not in props:
        raise StpmError(f"{path}: not an stpm-edge model (no {METADATA_KEY!r} metadata)")
    try:
        meta = json.loads(props[METADATA_KEY])
    except ValueError as e:
        raise StpmError(f"{path}: not an stpm-edge model ({METADATA_KEY!r} metadata is not JSON: {e})") from e
    if not isinstance(meta, dict):
        raise StpmError(f"{path}: not an stpm-edge model ({METADATA_KEY!r} metadata is not a JSON object)")
    if "input" not in meta:
        raise StpmError(f"{path}: not an stpm-edge model ({METADATA_KEY!r} metadata has no 'input')")
    return meta


@dataclass(frozen=True)
class InputSpec:
    """The model input: name, element type, layout, colour order and shape.

    ``batch`` is ``None`` for a dynamic batch dimension.
    """

    name: str
    dtype: str
    layout: str
    color: str
    batch: int | None
    height: int
    width: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        """Build from the metadata's ``"input"`` dict; StpmError on a missing or bad value."""
        if not isinstance(d, dict):
            raise StpmError(f"input: expected a JSON object, got {type(d).__name__}")
        for key in ("name", "dtype", "layout", "color", "batch", "height", "width"):
            if key not in d:
                raise StpmError(f"input: missing {key!r}")
        name = d["name"]
        if not isinstance(name, str) or not name:
            raise StpmError(f"input.name: expected a non-empty string, got {name!r}")
        batch = None if d["batch"] is None else _positive_int(d, "batch")
        return cls(
            name=name,
            dtype=_choice(d, "dtype", DTYPES),
            layout=_choice(d, "layout", LAYOUTS),
            color=_choice(d, "color", COLORS),
            batch=batch,
            height=_positive_int(d, "height"),
            width=_positive_int(d, "width"),
        )

    def shape(self, batch: int | str | None = None) -> tuple[int | str, ...]:
        """The input shape for ``batch`` frames (default: the model's batch, or ``"N"``)."""
        n: int | str = batch if batch is not None else (self.batch if self.batch is not None else "N")
        if self.layout == "NHWC":
            return (n, self.height, self.width, 3)
        return (n, 3, self.height, self.width)

    def expected(self, any_batch: bool = False) -> str:
        """E.g. ``uint8 (N, 480, 640, 3) NHWC BGR``."""
        dims = self.shape("N" if any_batch else None)
        return f"{self.dtype} ({', '.join(str(x) for x in dims)}) {self.layout} {self.color}"

    def check(self, frames: np.ndarray, *, any_batch: bool = False) -> None:
        """Raise a one-line StpmError unless ``frames`` has this dtype and shape.

        With a fixed ``batch`` the leading dimension must equal it, unless ``any_batch``
        (backends pass it: they chunk and pad, see the module docstring). An empty batch
        is refused.
        """
        ok = (
            isinstance(frames, np.ndarray)
            and frames.dtype == np.dtype(self.dtype)
            and frames.ndim == 4
            and tuple(frames.shape[1:]) == self.shape(0)[1:]
            and frames.shape[0] >= 1
            and (any_batch or self.batch is None or frames.shape[0] == self.batch)
        )
        if not ok:
            raise StpmError(
                f"{self.name}: expected {self.expected(any_batch)}, got {_describe_array(frames)}"
            )


class Backend(abc.ABC):
    """A loaded model that turns frames into ``(anomaly_map, score)``.

    Use as a context manager (or call :meth:`close`) to release its resources.
    """

    name: str = "backend"
    input_spec: InputSpec
    metadata: dict[str, Any]

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
