"""The ``model.pt`` checkpoint: a method-independent header plus the method's state — the
single definition read by train, eval, export and runtime.

A checkpoint is a plain dict of tensors, strings, numbers and lists, so it loads with
``torch.load(..., weights_only=True)``; files that need full unpickling are refused unless
the caller opts in (``allow_pickle=True``, the CLI's ``--trust-checkpoint``). Format 2::

    format: "stpm-edge/checkpoint"   format_version: 2   arch: "<method>"
    preprocess: {image_size: [h, w], mean: [3 floats], std: [3 floats]}
    config: {...}              the method's config (its config_to_dict)
    normalization: {image_threshold, pixel_threshold, min_value} | None
    provenance: {...}          (epochs, data summary, package versions, ...)
    state: {part: state dict}  the method's tensors (its state())

Format 1 (stpm-edge ≤ 0.1, STPM only: ``backbone``, ``layers``, ``image_size``, ``mean``,
``std``, ``blur_sigma``, ``teacher``, ``student`` at the top level) is migrated on load by
:func:`migrate_v1`.
"""
from __future__ import annotations

import json
import math
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from stpm_edge.artifact.contract import file_sha256  # noqa: F401 - re-exported for callers of this module
from stpm_edge.data.io import atomic_path
from stpm_edge.data.preprocess import PreprocessSpec
from stpm_edge.errors import StpmError, first_line
from stpm_edge.models.normalization import Normalization
from stpm_edge.models.registry import get_method, method_names

FORMAT_NAME = "stpm-edge/checkpoint"
FORMAT_VERSION = 2


@dataclass
class ModelMeta:
    """Everything about a model except its weights: which method, its config, the input
    preprocessing, the normalisation and where it came from."""

    arch: str
    config: Any
    preprocess: PreprocessSpec
    normalization: Normalization | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self):
        return get_method(self.arch)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.preprocess.image_size)

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(self.preprocess.mean)

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(self.preprocess.std)

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "arch": self.arch,
            "preprocess": {"image_size": list(self.image_size), "mean": list(self.mean), "std": list(self.std)},
            "config": self.method.config_to_dict(self.config),
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
    if (not isinstance(value, (list, tuple)) or len(value) != n
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise StpmError(f"{where}: field {key!r} must be a list of {n} finite numbers")
    return tuple(float(v) for v in value)


def migrate_v1(ckpt: dict) -> dict:
    """A format-1 (STPM-only) checkpoint dict in format 2's layout (the tensors are shared)."""
    out = {k: ckpt[k] for k in ("format", "arch", "normalization", "provenance") if k in ckpt}
    out["format_version"] = FORMAT_VERSION
    out["preprocess"] = {k: ckpt.get(k) for k in ("image_size", "mean", "std")}
    out["config"] = {k: ckpt.get(k) for k in ("backbone", "layers", "blur_sigma")}
    out["state"] = {k: ckpt[k] for k in ("teacher", "student") if k in ckpt}
    return out


def _normalization(raw: Any, where: str) -> Normalization | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise StpmError(f"{where}: field 'normalization' must be a dict")
    try:
        return Normalization(**{k: float(raw[k]) for k in ("image_threshold", "pixel_threshold", "min_value")})
    except KeyError as exc:
        raise StpmError(f"{where}: normalization is missing {exc.args[0]!r}") from None
    except (TypeError, ValueError):
        raise StpmError(f"{where}: normalization values must be numbers") from None
    except StpmError as exc:
        raise StpmError(f"{where}: {exc}") from None


def meta_from_dict(ckpt: dict, where: str) -> ModelMeta:
    """Validate a checkpoint dict's header (format 1 or 2; one-line StpmError on any problem)."""
    if ckpt.get("format") != FORMAT_NAME:
        raise StpmError(f"{where}: not an stpm-edge checkpoint (format is {ckpt.get('format')!r}, "
                        f"expected {FORMAT_NAME!r})")
    version = _field(ckpt, "format_version", int, where)
    if version > FORMAT_VERSION:
        raise StpmError(f"{where}: checkpoint format version {version} is newer than this stpm-edge supports "
                        f"({FORMAT_VERSION}); upgrade stpm-edge")
    if version < 2:
        ckpt = migrate_v1(ckpt)
    arch = _field(ckpt, "arch", str, where)
    if arch not in method_names():
        raise StpmError(f"{where}: unsupported method {arch!r} (known: {', '.join(method_names())})")
    method = get_method(arch)
    pre = _field(ckpt, "preprocess", dict, where)
    h, w = (int(v) for v in _floats(pre.get("image_size"), 2, "image_size", where))
    if not (32 <= h <= 4096 and 32 <= w <= 4096):
        raise StpmError(f"{where}: image_size {h}x{w} out of range 32..4096")
    mean = _floats(pre.get("mean"), 3, "mean", where)
    std = _floats(pre.get("std"), 3, "std", where)
    if min(std) <= 0:
        raise StpmError(f"{where}: field 'std' must be positive")
    config = method.config_from_dict(_field(ckpt, "config", dict, where), where)
    provenance = ckpt.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise StpmError(f"{where}: field 'provenance' must be a dict")
    return ModelMeta(arch, config, PreprocessSpec((h, w), mean, std), _normalization(ckpt.get("normalization"), where),
                     provenance)


def save_checkpoint(path: Path, model: torch.nn.Module, meta: ModelMeta) -> None:
    """Write ``model.pt`` atomically (a crash or Ctrl-C never leaves a partial file)."""
    # Metadata is coerced to plain JSON types so that weights_only loading always accepts it.
    ckpt = json.loads(json.dumps(meta.header(), default=str))
    ckpt["state"] = meta.method.state(model)
    with atomic_path(Path(path)) as tmp:
        torch.save(ckpt, tmp)


def _what_it_is(path: Path) -> str:
    """What a file that is not a loadable checkpoint is, in words (never a hint to unpickle it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        return f"not a readable checkpoint ({e.strerror or type(e).__name__})"
    if path.suffix.lower() in (".onnx", ".engine"):
        return f"not a checkpoint but an exported {path.suffix} model (pass it to stpm-eval/stpm-run as it is)"
    if head.startswith(b"PK"):
        return "not a readable checkpoint (a truncated or damaged file, or a zip archive of something else)"
    if head[:1] == b"\x80":
        return ("not a readable checkpoint (a raw pickle stream, not PyTorch's format; if it is a full-pickle "
                "checkpoint you trust, pass --trust-checkpoint)")
    return "not a readable checkpoint (not a PyTorch file)"


def read_checkpoint_dict(path: Path, *, allow_pickle: bool = False) -> dict:
    """``torch.load`` with ``weights_only=True`` unless the caller explicitly trusts the file."""
    path = Path(path)
    if not path.is_file():
        raise StpmError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path) and not allow_pickle:
        raise StpmError(f"{path}: {_what_it_is(path)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        first = first_line(exc, 160)
        if "weights only" in first.lower() or "weights_only" in first.lower():
            raise StpmError(f"{path}: refused: the checkpoint contains Python objects that a safe load does not "
                            f"allow (weights_only); only if you trust its origin, pass --trust-checkpoint") from None
        raise StpmError(f"{path}: corrupt checkpoint ({first})") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise StpmError(f"{path}: not a readable checkpoint ({first_line(exc, 160)})") from None
    if not isinstance(obj, dict):
        raise StpmError(f"{path}: not an stpm-edge checkpoint (top level is {type(obj).__name__}, expected dict)")
    return obj


def load_checkpoint(path: Path, *, allow_pickle: bool = False) -> tuple[torch.nn.Module, ModelMeta]:
    """Load and validate ``model.pt`` (format 1 or 2); returns the model in eval mode on CPU and its metadata."""
    where = str(path)
    ckpt = read_checkpoint_dict(Path(path), allow_pickle=allow_pickle)
    meta = meta_from_dict(ckpt, where)
    if ckpt.get("format_version") == 1:
        ckpt = migrate_v1(ckpt)
    method = meta.method
    model = method.build(meta.config, meta.image_size, pretrained=False)
    method.load_state(model, _field(ckpt, "state", dict, where), where)
    return model.eval(), meta
