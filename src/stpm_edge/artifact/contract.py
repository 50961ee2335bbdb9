"""Names and the input spec of an exported model.

An exported model has exactly one input and two outputs:

* input ``frames``: uint8 NHWC BGR ``(N, H, W, 3)`` (the default) or float32 NCHW
  normalised RGB ``(N, 3, H, W)``; ``N`` fixed or dynamic, ``H`` and ``W`` fixed;
* outputs ``anomaly_map`` float32 ``(N, 1, h, w)`` and ``score`` float32 ``(N,)``, in
  normalised units (0.5 is the default threshold).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import StpmError

METADATA_KEY = "stpm_edge"
INPUT_NAME = "frames"
ANOMALY_MAP = "anomaly_map"
SCORE = "score"
OUTPUT_NAMES = (ANOMALY_MAP, SCORE)

DTYPES = ("uint8", "float32")
LAYOUTS = ("NHWC", "NCHW")
COLORS = ("BGR", "RGB")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_array(a: Any) -> str:
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
        return cls(name=name, dtype=_choice(d, "dtype", DTYPES), layout=_choice(d, "layout", LAYOUTS),
                   color=_choice(d, "color", COLORS), batch=batch, height=_positive_int(d, "height"),
                   width=_positive_int(d, "width"))

    def to_dict(self) -> dict[str, Any]:
        n = "N" if self.batch is None else self.batch
        return {"name": self.name, "dtype": self.dtype, "layout": self.layout, "color": self.color,
                "batch": self.batch, "height": self.height, "width": self.width, "shape": list(self.shape(n))}

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
        (backends pass it: they chunk and pad). An empty batch is refused.
        """
        ok = (isinstance(frames, np.ndarray) and frames.dtype == np.dtype(self.dtype) and frames.ndim == 4
              and tuple(frames.shape[1:]) == self.shape(0)[1:] and frames.shape[0] >= 1
              and (any_batch or self.batch is None or frames.shape[0] == self.batch))
        if not ok:
            raise StpmError(f"{self.name}: expected {self.expected(any_batch)}, got {describe_array(frames)}")
