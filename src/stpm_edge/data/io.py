"""Image and file I/O shared by every tool: reading user files with one-line errors,
writing outputs atomically (temp file, then rename) so no half-written file is left."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from stpm_edge.errors import StpmError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image_bgr(path: Path) -> np.ndarray:
    """Read an image as uint8 HxWx3 BGR (grey images are replicated, alpha dropped)."""
    path = Path(path)
    if not path.is_file():
        raise StpmError(f"{path}: no such image file")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise StpmError(f"{path}: not a readable image")
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        else:
            raise StpmError(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.shape[2] != 3:
        raise StpmError(f"{path}: unsupported channel count {img.shape[2]}")
    return np.ascontiguousarray(img)


def read_mask(path: Path) -> np.ndarray:
    """Read a ground-truth mask as bool HxW (any non-zero pixel is defective)."""
    path = Path(path)
    if not path.is_file():
        raise StpmError(f"{path}: no such mask file")
    data = np.fromfile(str(path), dtype=np.uint8)
    m = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if m is None:
        raise StpmError(f"{path}: not a readable mask image")
    return m > 0


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``.

    The temporary name is hidden and keeps ``dest``'s suffix (``.model.onnx.x1y2.tmp.onnx``)
    so tools that look at suffixes can open it before it is moved into place.

    On any exception (including KeyboardInterrupt) the temporary file is removed and
    ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{dest.suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``dest``; on success move it to ``dest``.

    ``dest`` must not exist or be empty. On failure the temporary directory is removed.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StpmError(f"{dest}: already exists and is not empty")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_image(path: Path, image: np.ndarray) -> None:
    """Write an image (format from the suffix); raises StpmError on failure."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise StpmError(f"{path}: could not encode image")
    buf.tofile(str(path))
