"""Checking caller frames: anything that is not uint8 BGR becomes BGR or a one-line error."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from stpm_edge.errors import StpmError


def describe(frame: Any) -> str:
    if isinstance(frame, np.ndarray):
        return f"{frame.dtype} array of shape {tuple(frame.shape)}"
    return "None" if frame is None else type(frame).__name__


def to_bgr(frame: Any) -> np.ndarray:
    """uint8 ``HxWx3`` BGR as is; ``HxW`` / ``HxWx1`` grey and ``HxWx4`` BGRA converted.

    Anything else (``None``, another dtype, an empty or oddly shaped array) → StpmError.
    """
    if not isinstance(frame, np.ndarray):
        raise StpmError(f"frame: expected a uint8 HxWx3 BGR numpy array, got {describe(frame)}")
    if frame.dtype != np.uint8:
        raise StpmError(f"frame: expected uint8 pixels, got {describe(frame)} (convert with frame.astype(np.uint8) "
                        "after scaling to 0..255)")
    if frame.ndim not in (2, 3) or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise StpmError(f"frame: expected an HxWx3 BGR image, got {describe(frame)}")
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(np.ascontiguousarray(frame.reshape(frame.shape[:2])), cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGRA2BGR)
    if frame.shape[2] != 3:
        raise StpmError(f"frame: expected 1, 3 or 4 channels, got {describe(frame)}")
    return frame if frame.flags.c_contiguous else np.ascontiguousarray(frame)
