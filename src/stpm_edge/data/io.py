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
# The largest image decoded (width x height), checked from the file's header before decoding, so
# a hostile header (a 50000x50000 PNG of a few bytes) cannot exhaust memory. 8192x8192 = 64 MP.
MAX_IMAGE_PIXELS = 8192 * 8192


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_bytes(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise StpmError(f"{path}: no such {what} file")
    try:
        return np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise StpmError(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") from None


def header_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from an image file's header without decoding it (None: format unknown to PIL)."""
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:  # reads the header only
            return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError:
        return (1 << 30, 1)
    except Exception:  # noqa: BLE001 - not an image PIL knows: the decoder below decides
        return None


def decode_image(data: np.ndarray, where: object, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray | None:
    """The one image decoder: bounded size (:data:`MAX_IMAGE_PIXELS`), None when undecodable."""
    if not data.size:
        return None
    size = header_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise StpmError(f"{where}: image of {size[0]}x{size[1]} pixels is larger than the limit "
                        f"({MAX_IMAGE_PIXELS // 1_000_000} MP)")
    return cv2.imdecode(data, flags)


def read_image_bgr(path: Path) -> np.ndarray:
    """Read an image as uint8 HxWx3 BGR (grey images are replicated, alpha dropped)."""
    path = Path(path)
    img = decode_image(_read_bytes(path, "image"), path)
    if img is None:
        raise StpmError(f"{path}: not a readable image (empty, truncated or not an image)")
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
    m = decode_image(_read_bytes(path, "mask"), path, cv2.IMREAD_GRAYSCALE)
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
    check_writable(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{dest.suffix}", dir=dest.parent)
    except OSError as e:
        raise StpmError(f"{dest}: cannot write there ({e.strerror or type(e).__name__})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, StpmError):
            raise StpmError(f"{dest}: could not be written ({e.strerror or type(e).__name__}); "
                            f"nothing was left behind") from None
        raise


def check_writable(dest: Path, *, folder: bool = False) -> None:
    """StpmError unless ``dest`` can be written as a file (or a folder): checked before any work.

    Refuses a file path that is an existing folder, a path below an existing file, and a
    folder path that is an existing file."""
    dest = Path(dest)
    if dest.exists():
        if folder and not dest.is_dir():
            raise StpmError(f"{dest}: is a file, not a folder")
        if not folder and dest.is_dir():
            raise StpmError(f"{dest}: is a folder (give a file name)")
    for parent in dest.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StpmError(f"{dest}: cannot write there ({parent} is a file, not a folder)")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise StpmError(f"{dest}: cannot write there (no permission in {parent})")
            break


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
