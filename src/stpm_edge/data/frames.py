"""Fit camera frames / images to an exported model's input (the runtime side of preprocessing).

A uint8-BGR model does its preprocessing in-graph from its frame size; images of another
size are first resized to the frame size (bilinear, like the in-graph resize). A float-RGB
model takes the normalised tensor that :class:`stpm_edge.data.preprocess.Preprocess` makes.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from stpm_edge.artifact import InputSpec, ModelMetadata


def to_model_input(images: Sequence[np.ndarray], spec: InputSpec, metadata: ModelMetadata) -> np.ndarray:
    """uint8 HxWx3 BGR images → the batch ``spec`` describes."""
    if spec.dtype == "uint8":
        size = (spec.width, spec.height)
        return np.stack([img if img.shape[1::-1] == size else cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
                         for img in images])
    from stpm_edge.data.preprocess import PreprocessSpec, preprocess_images

    pre = metadata.preprocess
    pspec = PreprocessSpec((spec.height, spec.width), tuple(pre["mean"]), tuple(pre["std"]))
    return preprocess_images(images, pspec).numpy()
