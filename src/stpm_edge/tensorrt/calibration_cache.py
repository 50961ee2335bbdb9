"""TensorRT's calibration cache (``calib.cache``), in the text format its calibrators write.

The classic calibrators (``IInt8EntropyCalibrator2``, ``IInt8MinMaxCalibrator``, TensorRT
8.5–10) hand ``write_calibration_cache`` a buffer and read it back through
``read_calibration_cache``. The format::

    TRT-8601-EntropyCalibration2
    frames: 3c010a14
    /trunks/stem/conv/Conv_output_0: 3d8e9b2c
    ...

The header is ``TRT-<NV_TENSORRT_VERSION>-<algorithm>``. ``NV_TENSORRT_VERSION`` is
``major*1000 + minor*100 + patch`` up to TensorRT 9 (8.6.1 → ``8601``) and
``major*10000 + minor*100 + patch`` from TensorRT 10 (10.3.0 → ``100300``), as the
``NvInferVersion.h`` of each release defines it. Each following line is
``<tensor name>: <scale>`` with the scale written as the hex digits of its IEEE-754 float32
bit pattern (the big-endian bytes of the float): ``3c010a14`` is 0.0078759. TensorRT reuses
a cache only when the header's version and algorithm match the build; otherwise it
calibrates again.

Parsing and writing are plain Python (tested without TensorRT).
"""
from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from stpm_edge.data.io import atomic_path
from stpm_edge.errors import StpmError

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
_HEADER = re.compile(r"^TRT-(\d+)-(" + "|".join(ALGORITHMS) + r")$")
_HEX = re.compile(r"^[0-9a-fA-F]{1,8}$")


@dataclass
class CalibrationCache:
    """A parsed cache: its header line and one scale per tensor name (insertion order kept)."""

    header: str
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def version(self) -> int:
        """The header's ``NV_TENSORRT_VERSION`` number (e.g. 8601)."""
        return int(_HEADER.match(self.header).group(1))  # type: ignore[union-attr]

    @property
    def algorithm(self) -> str:
        return _HEADER.match(self.header).group(2)  # type: ignore[union-attr]


def trt_version_number(version: str) -> int:
    """``NV_TENSORRT_VERSION`` for a version string: ``"8.6.1.6"`` → 8601, ``"10.3.0"`` → 100300."""
    parts = re.findall(r"\d+", str(version))
    if len(parts) < 2:
        raise StpmError(f"TensorRT version {version!r}: expected major.minor[.patch]")
    major, minor = int(parts[0]), int(parts[1])
    patch = int(parts[2]) if len(parts) > 2 else 0
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def cache_header(trt_version: str, algorithm: str = "EntropyCalibration2") -> str:
    """The header line TensorRT ``trt_version`` writes for ``algorithm``."""
    if algorithm not in ALGORITHMS:
        raise StpmError(f"calibration algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
    return f"TRT-{trt_version_number(trt_version)}-{algorithm}"


def scale_to_hex(scale: float) -> str:
    """The cache's spelling of a float32 scale: hex of its big-endian IEEE-754 bytes."""
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", int(text, 16).to_bytes(4, "big"))[0]


def parse_cache(data: bytes | str, source: str = "calibration cache") -> CalibrationCache:
    """Parse TensorRT's text cache; one-line StpmError naming the bad line otherwise."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise StpmError(f"{source}: not a TensorRT calibration cache (not text)") from None
    else:
        text = data
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise StpmError(f"{source}: empty calibration cache")
    if not _HEADER.match(lines[0]):
        raise StpmError(f"{source}: not a TensorRT calibration cache "
                        f"(first line {lines[0][:60]!r}, expected TRT-<version>-<algorithm>)")
    cache = CalibrationCache(lines[0])
    for i, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        value = value.strip()
        if not sep or not name.strip() or not _HEX.match(value):
            raise StpmError(f"{source}: line {i}: expected '<tensor>: <hex scale>', got {line[:80]!r}")
        scale = hex_to_scale(value)
        if not math.isfinite(scale) or scale < 0:
            raise StpmError(f"{source}: line {i}: scale of {name.strip()!r} is {scale}, expected a finite value >= 0")
        cache.scales[name.strip()] = scale
    return cache


def format_cache(cache: CalibrationCache) -> bytes:
    """The cache as TensorRT writes it (header, then ``name: hex`` lines)."""
    if not _HEADER.match(cache.header):
        raise StpmError(f"calibration cache header {cache.header!r}: expected TRT-<version>-<algorithm>")
    out = [cache.header]
    for name, scale in cache.scales.items():
        if not math.isfinite(scale) or scale < 0:
            raise StpmError(f"calibration cache: scale of {name!r} is {scale}, expected a finite value >= 0")
        out.append(f"{name}: {scale_to_hex(scale)}")
    return ("\n".join(out) + "\n").encode("utf-8")


def read_cache_bytes(path: Path) -> bytes | None:
    """The cache file's bytes for a TensorRT calibrator; None when there is no file.

    A file that exists but is not a valid cache is a one-line StpmError (TensorRT would
    otherwise fail later with a less helpful message).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StpmError(f"{path}: cannot read calibration cache ({e.strerror})") from None
    parse_cache(data, str(path))
    return data


def write_cache_bytes(path: Path, data: bytes) -> None:
    """Validate and atomically write the bytes a TensorRT calibrator hands over."""
    data = bytes(data)
    parse_cache(data, str(path))
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def read_cache(path: Path) -> CalibrationCache:
    data = read_cache_bytes(path)
    if data is None:
        raise StpmError(f"{path}: no such calibration cache")
    return parse_cache(data, str(path))


def write_cache(path: Path, cache: CalibrationCache) -> None:
    write_cache_bytes(path, format_cache(cache))
