"""The model metadata and the ``model.pt`` checkpoint format — the single definition read by
train, eval, export and runtime.

A checkpoint is a plain dict of tensors, strings, numbers and lists, so it loads with
``torch.load(..., weights_only=True)``; files that need full unpickling are refused unless
the caller opts in (``allow_pickle=True``, the CLI's ``--trust-checkpoint``)::

    format: "stpm-edge/checkpoint"   format_version: 1     arch: "stpm"
    backbone: str   layers: [str]   image_size: [h, w]   mean: [3 floats]   std: [3 floats]
    blur_sigma: float
    teacher: state dict   student: state dict
    normalization: {image_threshold, pixel_threshold, min_value} | None
    provenance: {...}   (epochs, data summary, package versions, ...)
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stpm_edge.data.io import atomic_path
from stpm_edge.data.preprocess import PreprocessSpec
from stpm_edge.errors import StpmError, first_line
from stpm_edge.models.backbones import get_spec, resolve_layers
from stpm_edge.models.stpm.model import STPM, STPMConfig

FORMAT_NAME = "stpm-edge/checkpoint"
FORMAT_VERSION = 1
ARCHITECTURES = ("stpm",)


@dataclass(frozen=True)
class Normalization:
    """Raw-score statistics measured on held-out good images, and the default thresholds.

    Normalised units map ``min_value`` → 0 and the threshold → 0.5, linearly and without
    clipping (so rankings and AUROC are unchanged):
    ``normalized = 0.5 · (raw − min_value) / (threshold − min_value)``.
    """

    image_threshold: float
    pixel_threshold: float
    min_value: float

    def __post_init__(self) -> None:
        for name in ("image_threshold", "pixel_threshold", "min_value"):
            if not math.isfinite(getattr(self, name)):
                raise StpmError(f"normalization.{name} is not a finite number")
        if not (self.image_threshold > self.min_value and self.pixel_threshold > self.min_value):
            raise StpmError("normalization thresholds must be above normalization.min_value")

    @staticmethod
    def _scale(raw: Any, threshold: float, min_value: float) -> Any:
        return 0.5 * (raw - min_value) / (threshold - min_value)

    def normalize_image(self, score: Any) -> Any:
        return self._scale(score, self.image_threshold, self.min_value)

    def normalize_pixel(self, amap: Any) -> Any:
        return self._scale(amap, self.pixel_threshold, self.min_value)


@dataclass
class ModelMeta:
    """Everything about a model except its weights."""

    config: STPMConfig
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    arch: str = "stpm"
    normalization: Normalization | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec(self.config.image_size, self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "arch": self.arch,
            "backbone": self.config.backbone, "layers": list(self.config.layers),
            "image_size": list(self.config.image_size), "mean": list(self.mean), "std": list(self.std),
            "blur_sigma": float(self.config.blur_sigma),
            "normalization": asdict(self.normalization) if self.normalization else None,
            "provenance": self.provenance,
        }


def _field(ckpt: dict, key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in ckpt:
        raise StpmError(f"{where}: not an stpm-edge checkpoint (missing key {key!r})")
    value = ckpt[key]
    if not isinstance(value, types):
        raise StpmError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def _floats(value: Any, n: int, key: str, where: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(isinstance(v, (int, float)) for v in value):
        raise StpmError(f"{where}: field {key!r} must be a list of {n} numbers")
    return tuple(float(v) for v in value)


def meta_from_dict(ckpt: dict, where: str) -> ModelMeta:
    """Validate the metadata fields of a checkpoint dict (one-line StpmError on any problem)."""
    if ckpt.get("format") != FORMAT_NAME:
        raise StpmError(f"{where}: not an stpm-edge checkpoint (format is {ckpt.get('format')!r}, expected {FORMAT_NAME!r})")
    version = _field(ckpt, "format_version", int, where)
    if version > FORMAT_VERSION:
        raise StpmError(f"{where}: checkpoint format version {version} is newer than this stpm-edge supports "
                        f"({FORMAT_VERSION}); upgrade stpm-edge")
    arch = _field(ckpt, "arch", str, where)
    if arch not in ARCHITECTURES:
        raise StpmError(f"{where}: unsupported architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})")
    backbone = _field(ckpt, "backbone", str, where)
    try:
        spec = get_spec(backbone)
        layers = resolve_layers(spec, list(_field(ckpt, "layers", (list, tuple), where)))
    except StpmError as exc:
        raise StpmError(f"{where}: {exc}") from None
    h, w = (int(v) for v in _floats(_field(ckpt, "image_size", (list, tuple), where), 2, "image_size", where))
    if not (32 <= h <= 4096 and 32 <= w <= 4096):
        raise StpmError(f"{where}: image_size {h}x{w} out of range 32..4096")
    mean = _floats(_field(ckpt, "mean", (list, tuple), where), 3, "mean", where)
    std = _floats(_field(ckpt, "std", (list, tuple), where), 3, "std", where)
    if min(std) <= 0:
        raise StpmError(f"{where}: field 'std' must be positive")
    blur = float(_field(ckpt, "blur_sigma", (int, float), where))
    if not (0.0 <= blur <= 64.0):
        raise StpmError(f"{where}: blur_sigma {blur} out of range 0..64")
    norm_raw = ckpt.get("normalization")
    normalization = None
    if norm_raw is not None:
        if not isinstance(norm_raw, dict):
            raise StpmError(f"{where}: field 'normalization' must be a dict")
        try:
            normalization = Normalization(**{k: float(norm_raw[k]) for k in ("image_threshold", "pixel_threshold", "min_value")})
        except KeyError as exc:
            raise StpmError(f"{where}: normalization is missing {exc.args[0]!r}") from None
        except (TypeError, ValueError):
            raise StpmError(f"{where}: normalization values must be numbers") from None
        except StpmError as exc:
            raise StpmError(f"{where}: {exc}") from None
    provenance = ckpt.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise StpmError(f"{where}: field 'provenance' must be a dict")
    config = STPMConfig(backbone, layers, (h, w), blur)
    return ModelMeta(config, mean, std, arch, normalization, provenance)


def save_checkpoint(path: Path, model: STPM, meta: ModelMeta) -> None:
    """Write ``model.pt`` atomically (a crash or Ctrl-C never leaves a partial file)."""
    # Metadata is coerced to plain JSON types so that weights_only loading always accepts it.
    ckpt = json.loads(json.dumps(meta.to_dict(), default=str))
    ckpt["teacher"] = {k: v.detach().cpu().clone() for k, v in model.teacher.state_dict().items()}
    ckpt["student"] = {k: v.detach().cpu().clone() for k, v in model.student.state_dict().items()}
    with atomic_path(Path(path)) as tmp:
        torch.save(ckpt, tmp)


def read_checkpoint_dict(path: Path, *, allow_pickle: bool = False) -> dict:
    """``torch.load`` with ``weights_only=True`` unless the caller explicitly trusts the file."""
    path = Path(path)
    if not path.is_file():
        raise StpmError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        first = first_line(exc, 160)
        if "weights only" in first.lower() or "weights_only" in first.lower():
            raise StpmError(f"{path}: refused: the file contains Python objects that a safe load does not allow "
                            f"(weights_only); only if you trust its origin, pass --trust-checkpoint") from None
        raise StpmError(f"{path}: corrupt checkpoint ({first})") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise StpmError(f"{path}: not a readable checkpoint ({first_line(exc, 160)})") from None
    if not isinstance(obj, dict):
        raise StpmError(f"{path}: not an stpm-edge checkpoint (top level is {type(obj).__name__}, expected dict)")
    return obj


def load_checkpoint(path: Path, *, allow_pickle: bool = False) -> tuple[STPM, ModelMeta]:
    """Load and validate ``model.pt``; returns the model in eval mode on CPU and its metadata."""
    where = str(path)
    ckpt = read_checkpoint_dict(Path(path), allow_pickle=allow_pickle)
    meta = meta_from_dict(ckpt, where)
    model = STPM.build(meta.config, pretrained=False)
    for part in ("teacher", "student"):
        state = _field(ckpt, part, dict, where)
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise StpmError(f"{where}: {part} state dict holds non-tensor values")
        try:
            getattr(model, part).load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:200]
            raise StpmError(f"{where}: {part} weights do not fit {meta.config.backbone} "
                            f"{','.join(meta.config.layers)} ({detail})") from None
        for key, value in state.items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise StpmError(f"{where}: {part} weight {key} contains NaN or Inf")
    return model.eval(), meta


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def compute_normalization(good_scores: np.ndarray, good_maps: np.ndarray, k_sigma: float = 3.0) -> Normalization:
    """Default thresholds from raw scores/maps of held-out *good* images.

    In log space (the map is a product of distances, so it is heavy-tailed):
    image threshold = max(exp(μ + kσ) of the image scores, the largest good score),
    so no held-out good image is rejected; pixel threshold = exp(μ + kσ) of all good
    pixels (segmentation masks; a frame is only NG by its image score);
    min_value = the smallest good pixel value.
    """
    scores = np.asarray(good_scores, dtype=np.float64).ravel()
    pixels = np.asarray(good_maps, dtype=np.float64).ravel()
    if scores.size == 0 or pixels.size == 0:
        raise StpmError("need at least one held-out good image to compute thresholds")
    tiny = 1e-30
    log_s = np.log(np.maximum(scores, tiny))
    image_thr = float(max(np.exp(log_s.mean() + k_sigma * log_s.std()), scores.max()))
    log_p = np.log(np.maximum(pixels, tiny))
    pixel_thr = float(np.exp(log_p.mean() + k_sigma * log_p.std()))
    min_value = float(pixels.min())
    pixel_thr = max(pixel_thr, min_value * (1 + 1e-6) + tiny)
    image_thr = max(image_thr, min_value * (1 + 1e-6) + tiny)
    return Normalization(image_thr, pixel_thr, min_value)
