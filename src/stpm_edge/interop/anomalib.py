"""``stpm import anomalib``: an anomalib 2.x model → an stpm-edge checkpoint, without anomalib.

What an anomalib 2.7 Lightning checkpoint (``.ckpt`` from ``Engine.fit``) holds, read with
``torch.load(weights_only=True)`` (its pickle references only ``OrderedDict`` and tensor storages):

- ``hyper_parameters``: the model's constructor arguments, e.g. STFPM's ``backbone`` (a timm
  name) and ``layers``;
- ``anomalib_pre_processor_config``: the torchvision v2 transform as plain data
  (``Compose[Resize(size, interpolation, antialias), Normalize(mean, std)]``);
- ``anomalib_post_processor_config``: ``enable_normalization``, ``enable_thresholding``,
  ``enable_threshold_matching``, ``image_sensitivity``, ``pixel_sensitivity``;
- ``state_dict``: ``model.<part>.*`` (STFPM: ``model.teacher_model.feature_extractor.*`` and
  ``model.student_model.feature_extractor.*``, the whole timm ``features_only`` trunk) and
  ``post_processor._image_threshold``, ``_pixel_threshold``, ``image_min/max``, ``pixel_min/max``.

Each anomalib model that stpm-edge can run is one :class:`Mapper` in :data:`MAPPERS` (STFPM →
``stpm``, CFA → ``cfa``). A mapper turns the checkpoint into an :class:`Imported` (the method's
config as plain data, its named parts as tensors); :func:`_write_checkpoint` builds and saves
it through the method seam, the only code that knows the stpm-edge checkpoint format.

Image-level decisions are carried over exactly: anomalib flags an image when
``(raw − threshold) / (max − min) + 0.5 > 1 − sensitivity``, i.e. when
``raw > threshold + (0.5 − sensitivity)·(max − min)``; that raw value becomes our threshold
(normalised 0.5). Our normalised scale (``min_value`` → 0, linear, unclipped) differs from
anomalib's clipped one, so normalised values differ while decisions agree.
"""
from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stpm_edge import __version__
from stpm_edge.artifact import file_sha256
from stpm_edge.errors import StpmError, first_line
from stpm_edge.interop.anomalib_cfa import convert_cfa, is_cfa
from stpm_edge.interop.anomalib_parts import (Imported, Thresholds, carry_thresholds, map_trunk, parse_backbone,
                                              parse_pre_processor, provenance)

logger = logging.getLogger(__name__)

ANOMALIB_KEYS = ("anomalib_pre_processor_config", "anomalib_post_processor_config", "anomalib_components_enabled")
TRUST_HINT = "only if you trust its origin, pass --trust-checkpoint (needs anomalib installed)"


@dataclass
class ImportResult:
    output: Path
    method: str
    anomalib_model: str
    backbone: str
    layers: tuple[str, ...]
    image_size: tuple[int, int]
    thresholds: Thresholds
    normalization_source: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "method": self.method, "anomalib_model": self.anomalib_model,
                "backbone": self.backbone, "layers": list(self.layers), "image_size": list(self.image_size),
                "normalization": vars(self.thresholds), "normalization_source": self.normalization_source,
                "seconds": round(self.seconds, 2)}


# ---------------------------------------------------------------------------------------- reading

def read_anomalib_file(path: Path, *, trust: bool = False) -> dict:
    """The checkpoint as a dict in Lightning-``.ckpt`` layout; ``weights_only`` unless ``trust``."""
    path = Path(path)
    if not path.is_file():
        raise StpmError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        text = first_line(exc, 160)
        if not trust and "weights" in text.lower():
            raise StpmError(f"{path}: refused: it holds Python objects that a safe load (weights_only) does not allow, "
                            f"such as anomalib's exported Torch model.pt; import the Lightning .ckpt instead, or, "
                            f"{TRUST_HINT}") from None
        raise StpmError(f"{path}: corrupt checkpoint ({text})") from None
    except ModuleNotFoundError as exc:  # trust: the pickle names classes of a package that is not installed
        raise StpmError(f"{path}: unpickling needs the package {exc.name!r}, which is not installed "
                        f"(anomalib's model.pt needs anomalib: pip install 'stpm-edge[anomalib]')") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise StpmError(f"{path}: not a readable checkpoint, truncated or corrupt ({first_line(exc, 160)})") from None
    if trust and isinstance(obj, dict) and isinstance(obj.get("model"), torch.nn.Module):
        return _from_exported_module(obj["model"], path)
    if not isinstance(obj, dict):
        raise StpmError(f"{path}: not an anomalib checkpoint (top level is {type(obj).__name__}, expected dict)")
    return obj


def _from_exported_module(module: torch.nn.Module, where: Path) -> dict:
    """anomalib's ``model.pt`` (``{"model": AnomalibModule}``) → the ``.ckpt`` layout."""
    pre, post = getattr(module, "pre_processor", None), getattr(module, "post_processor", None)
    if not type(module).__module__.startswith("anomalib.") or not hasattr(module, "hparams"):
        raise StpmError(f"{where}: not an anomalib model ({type(module).__module__}.{type(module).__name__})")
    out = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
           "anomalib_components_enabled": {"pre_processor": pre is not None, "post_processor": post is not None},
           "anomalib_model_class": type(module).__name__}
    for key, comp in (("anomalib_pre_processor_config", pre), ("anomalib_post_processor_config", post)):
        if comp is not None and hasattr(comp, "checkpoint_config"):
            out[key] = comp.checkpoint_config()
    return out


# ---------------------------------------------------------------------------------------- identify

@dataclass(frozen=True)
class Mapper:
    """One anomalib model that maps onto an stpm-edge method."""

    anomalib_name: str
    method: str
    detect: Callable[[Mapping[str, Any]], bool]
    convert: Callable[[dict, str], Imported]


# Signatures of anomalib models stpm-edge cannot run, to name them in the error.
_UNSUPPORTED_SIGNS = (("model.memory_bank", "Patchcore"), ("model.gaussian.", "Padim"),
                      ("model.bottleneck.", "ReverseDistillation"), ("model.ae.", "EfficientAd"),
                      ("model.fast_flow_blocks.", "Fastflow"), ("model.reconstructive_subnetwork.", "Draem"))


def _is_anomalib(obj: Mapping[str, Any]) -> bool:
    state = obj.get("state_dict")
    return isinstance(state, Mapping) and (any(k in obj for k in ANOMALIB_KEYS)
                                           or any(str(k).startswith("post_processor.") for k in state))


def identify(obj: dict, where: str) -> Mapper:
    """The mapper for this checkpoint, or a one-line error saying what it is instead."""
    if obj.get("format") == "stpm-edge/checkpoint":
        raise StpmError(f"{where}: already an stpm-edge checkpoint (use it directly)")
    if not _is_anomalib(obj):
        kind = "a PyTorch Lightning checkpoint, but " if "pytorch-lightning_version" in obj else ""
        raise StpmError(f"{where}: {kind}not an anomalib 2.x checkpoint (no anomalib pre/post-processor in it)")
    state = obj["state_dict"]
    for mapper in MAPPERS:
        if mapper.detect(state):
            return mapper
    keys = [str(k) for k in state if str(k).startswith("model.")]
    hp = obj.get("hyper_parameters") or {}
    guess = obj.get("anomalib_model_class") or next(
        (name for sign, name in _UNSUPPORTED_SIGNS if any(k.startswith(sign) for k in keys)), None)
    if guess is None and isinstance(hp, Mapping) and "coreset_sampling_ratio" in hp:
        guess = "Patchcore"
    what = guess or (f"unknown (first weight {keys[0]})" if keys else "unknown (no model weights)")
    raise StpmError(f"{where}: unsupported anomalib model: {what}; supported: "
                    f"{', '.join(m.anomalib_name for m in MAPPERS)}")


# ---------------------------------------------------------------------------------------- STFPM

_STFPM_T, _STFPM_S = "model.teacher_model.feature_extractor.", "model.student_model.feature_extractor."


def _is_stfpm(state: Mapping[str, Any]) -> bool:
    keys = [str(k) for k in state]
    return any(k.startswith(_STFPM_T) for k in keys) and any(k.startswith(_STFPM_S) for k in keys)


def _convert_stfpm(obj: dict, where: str) -> Imported:
    """STFPM: teacher and student timm trunks → our STPM (anomalib's map has no blur: σ = 0)."""
    state = obj["state_dict"]
    stray = next((str(k) for k in state if str(k).startswith("model.")
                  and not str(k).startswith((_STFPM_T, _STFPM_S))), None)
    if stray is not None:
        raise StpmError(f"{where}: unexpected weight {stray} in an STFPM checkpoint")
    timm_name, bmap, layers = parse_backbone(obj.get("hyper_parameters"), where)
    size, mean, std, resize = parse_pre_processor(obj, where)
    teacher = map_trunk(state, _STFPM_T, bmap, layers, where)
    student = map_trunk(state, _STFPM_S, bmap, layers, where)
    thresholds, details = carry_thresholds(obj, where)
    config = {"backbone": bmap.ours, "layers": list(layers), "blur_sigma": 0.0}
    return Imported("stpm", config, size, mean, std, {"teacher": teacher, "student": student}, thresholds,
                    provenance(obj, "Stfpm", timm_name, resize, details))


MAPPERS: tuple[Mapper, ...] = (Mapper("Stfpm", "stpm", _is_stfpm, _convert_stfpm),
                               Mapper("Cfa", "cfa", is_cfa, convert_cfa))


# ---------------------------------------------------------------------------------------- writing

def _measure_normalization(model: torch.nn.Module, meta: Any, data: Path) -> Thresholds:
    """Our own statistics on good images (the method's rule, as the trainer measures them)."""
    from stpm_edge.data.io import read_image_bgr
    from stpm_edge.data.mvtec import load_dataset
    from stpm_edge.data.preprocess import preprocess_images
    from stpm_edge.eval.evaluate import predict

    dataset = load_dataset(data)
    x = preprocess_images([read_image_bgr(p) for p in dataset.train], meta.preprocess)
    maps, scores, _ = predict(model, x, "cpu", method=meta.method)
    norm = meta.method.normalization(scores, maps)
    return Thresholds(norm.image_threshold, norm.pixel_threshold, norm.min_value)


def _write_checkpoint(path: Path, imported: Imported, *, measure_on: Path | None = None) -> Thresholds:
    """The only code that knows the stpm-edge checkpoint format: build the method's model, load
    its parts (strict: every name and shape), save atomically.

    ``measure_on`` (good images) replaces the carried thresholds by our own statistics. Returns
    the thresholds written."""
    from stpm_edge.data.preprocess import PreprocessSpec
    from stpm_edge.models.checkpoint import ModelMeta, save_checkpoint
    from stpm_edge.models.normalization import Normalization
    from stpm_edge.models.registry import get_method

    method = get_method(imported.method)
    config = method.config_from_dict(dict(imported.config), str(path))
    model = method.build(config, tuple(imported.image_size), pretrained=False)
    method.load_state(model, imported.state, str(path))
    meta = ModelMeta(imported.method, config, PreprocessSpec(tuple(imported.image_size), tuple(imported.mean),
                                                             tuple(imported.std)), None, imported.provenance)
    normalization = imported.thresholds
    if measure_on is not None:
        normalization = _measure_normalization(model.eval(), meta, measure_on)
    if normalization is None:
        raise StpmError("no normalisation statistics to write")
    meta.normalization = Normalization(normalization.image_threshold, normalization.pixel_threshold,
                                       normalization.min_value)
    save_checkpoint(Path(path), model, meta)
    return normalization


def import_anomalib(source: Path, output: Path, *, data: Path | None = None, trust: bool = False) -> ImportResult:
    """Read, validate and map ``source``; write ``output`` (nothing is written on any error)."""
    t0 = time.perf_counter()
    where = str(source)
    if data is not None and not Path(data).is_dir():
        raise StpmError(f"--data {data}: no such folder")
    obj = read_anomalib_file(Path(source), trust=trust)
    mapper = identify(obj, where)
    imported = mapper.convert(obj, where)
    if imported.thresholds is None and data is None:
        reason = imported.provenance["anomalib_post_processor"].get("reason", "no thresholds")
        raise StpmError(f"{where}: {reason}; pass --data DIR (good images) to measure stpm-edge's own")
    imported.provenance.update({
        "source": "anomalib", "anomalib_file": Path(source).name, "anomalib_sha256": file_sha256(Path(source)),
        "normalization_source": f"measured on {data}" if data else "anomalib post-processor",
        "stpm_edge": __version__, "torch": str(torch.__version__),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if imported.provenance["anomalib_resize"].get("antialias"):
        logger.info("anomalib resized frames with antialiasing, stpm-edge without (ONNX opset 17): identical for "
                    "frames at the model size %dx%d, slightly different for larger ones", *imported.image_size[::-1])
    written = _write_checkpoint(output, imported, measure_on=data)
    return ImportResult(Path(output), imported.method, mapper.anomalib_name, imported.backbone, imported.layers,
                        imported.image_size, written, imported.provenance["normalization_source"],
                        time.perf_counter() - t0)
