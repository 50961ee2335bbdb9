"""How anomalib 2.x stores a model's parts, read as plain data: timm ``features_only`` trunks
(mapped onto our ``FeatureExtractor`` keys), the pre-processor's transform spec (input size and
normalisation) and the post-processor's thresholds (carried over so that decisions agree).
Pure functions of the checkpoint dict; every problem is a one-line :class:`StpmError`."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from stpm_edge.errors import StpmError
from stpm_edge.models.backbones import create_backbone, get_spec, resolve_layers


@dataclass(frozen=True)
class Thresholds:
    """Raw-score thresholds in our convention: normalised = 0.5·(raw − min_value)/(threshold − min_value)."""

    image_threshold: float
    pixel_threshold: float
    min_value: float


@dataclass
class Imported:
    """What a mapper extracts: architecture, input, weights in our key space, thresholds."""

    method: str
    config: dict[str, Any]  # the method's config as a checkpoint stores it (backbone, layers, ...)
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    state: dict[str, dict[str, torch.Tensor]]  # the method's named parts, as ``Method.load_state`` takes them
    thresholds: Thresholds | None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone(self) -> str:
        return str(self.config["backbone"])

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.config["layers"])


def provenance(obj: dict, model: str, backbone: str, resize: dict, details: dict) -> dict[str, Any]:
    """Where an imported model came from (stored in the checkpoint's provenance)."""
    return {"anomalib_model": model, "anomalib_backbone": backbone, "anomalib_resize": resize,
            "anomalib_post_processor": details,
            "lightning": {k: obj.get(k) for k in ("pytorch-lightning_version", "epoch", "global_step")
                          if isinstance(obj.get(k), (str, int))}}


# ---------------------------------------------------------------------------------------- backbones

@dataclass(frozen=True)
class BackboneMap:
    """A timm backbone as anomalib builds it (``features_only``) and our equivalent."""

    ours: str
    stem: tuple[tuple[str, str], ...]  # (timm prefix, our prefix); stages map level name → stages.<i>


_EFFNET_STEM = (("conv_stem.", "stem.0."), ("bn1.", "stem.1."))
_RESNET_STEM = (("conv1.", "stem.0."), ("bn1.", "stem.1."))
# Only architectures identical in weights *and* arithmetic: timm's ``efficientnet_lite0`` (symmetric
# padding) is not our ``tf_efficientnet_lite0`` ("same" padding), so it is not listed.
BACKBONE_MAPS = {"tf_efficientnet_lite0": BackboneMap("efficientnet_lite0", _EFFNET_STEM),
                 "resnet18": BackboneMap("resnet18", _RESNET_STEM),
                 "wide_resnet50_2": BackboneMap("wide_resnet50_2", _RESNET_STEM)}


def parse_backbone(hp: Any, where: str) -> tuple[str, BackboneMap, tuple[str, ...]]:
    if not isinstance(hp, Mapping) or not isinstance(hp.get("backbone"), str):
        raise StpmError(f"{where}: hyper_parameters has no backbone name")
    name = hp["backbone"]
    if name not in BACKBONE_MAPS:
        raise StpmError(f"{where}: unsupported backbone {name!r} (supported: {', '.join(BACKBONE_MAPS)})")
    bmap = BACKBONE_MAPS[name]
    layers = hp.get("layers")
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(v, str) for v in layers):
        raise StpmError(f"{where}: hyper_parameters.layers must be a list of layer names, got {layers!r}")
    try:
        return name, bmap, resolve_layers(get_spec(bmap.ours), list(layers))
    except StpmError as exc:
        raise StpmError(f"{where}: {exc}") from None


def map_trunk(state: Mapping[str, Any], prefix: str, bmap: BackboneMap, layers: tuple[str, ...],
              where: str) -> dict[str, torch.Tensor]:
    """timm ``features_only`` weights under ``prefix`` → our ``FeatureExtractor`` keys, all checked.

    Stages deeper than the deepest chosen layer are dropped; anything else that does not map,
    is missing, or has another shape or dtype is an error naming the first such key."""
    spec = get_spec(bmap.ours)
    depth = max(spec.levels.index(name) for name in layers)
    rules = list(bmap.stem) + [(f"{lvl}.", f"stages.{i}.") for i, lvl in enumerate(spec.levels)]
    reference = create_backbone(bmap.ours, layers, pretrained=False).state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not str(key).startswith(prefix):
            continue
        rest = key[len(prefix):]
        rule = next(((theirs, ours) for theirs, ours in rules if rest.startswith(theirs)), None)
        if rule is None:
            raise StpmError(f"{where}: unexpected weight {key} for {bmap.ours}")
        ours = rule[1] + rest[len(rule[0]):]
        if ours.startswith("stages.") and int(ours.split(".")[1]) > depth:
            continue  # a stage below the deepest chosen layer: not needed
        if ours not in reference:
            raise StpmError(f"{where}: unexpected weight {key} for {bmap.ours}")
        ref = reference[ours]
        if not isinstance(value, torch.Tensor):
            raise StpmError(f"{where}: {key} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(ref.shape) or value.dtype != ref.dtype:
            raise StpmError(f"{where}: {key} has shape {tuple(value.shape)} {value.dtype}, expected "
                            f"{tuple(ref.shape)} {ref.dtype} for {bmap.ours} {','.join(layers)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise StpmError(f"{where}: {key} contains NaN or Inf")
        mapped[ours] = value.detach().clone().contiguous()
    missing = [k for k in reference if k not in mapped]
    if missing:
        theirs = next((t + missing[0][len(o):] for t, o in rules if missing[0].startswith(o)), missing[0])
        raise StpmError(f"{where}: missing weight {prefix}{theirs} for {bmap.ours} {','.join(layers)}")
    return mapped


# ---------------------------------------------------------------------------------------- pre/post

def _transforms(spec: Any, where: str) -> list[tuple[str, dict]]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("class_path"), str):
        raise StpmError(f"{where}: the anomalib pre-processor has no transform (need Resize and Normalize)")
    name, args = spec["class_path"].rsplit(".", 1)[-1], spec.get("init_args") or {}
    if name == "Compose":
        return [t for sub in args.get("transforms") or [] for t in _transforms(sub, where)]
    return [(name, dict(args))]


def parse_pre_processor(obj: dict, where: str) -> tuple[tuple[int, int], tuple[float, ...], tuple[float, ...], dict]:
    """(image size (h, w), mean, std, resize details) from ``anomalib_pre_processor_config``."""
    if (obj.get("anomalib_components_enabled") or {}).get("pre_processor") is False:
        raise StpmError(f"{where}: the anomalib model was trained without a pre-processor; stpm-edge needs its "
                        f"Resize and Normalize to know the input")
    config = obj.get("anomalib_pre_processor_config")
    transforms = _transforms(config.get("transform") if isinstance(config, Mapping) else None, where)
    size, mean, std, resize = None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), {}
    for name, args in transforms:
        if name == "Resize":
            value = args.get("size")
            if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)):
                raise StpmError(f"{where}: pre-processor Resize size {value!r}: stpm-edge needs [height, width]")
            if str(args.get("interpolation", "bilinear")).lower().rsplit(".", 1)[-1] != "bilinear":
                raise StpmError(f"{where}: pre-processor Resize interpolation {args.get('interpolation')!r}: "
                                f"stpm-edge resizes bilinearly")
            if args.get("max_size") is not None:
                raise StpmError(f"{where}: pre-processor Resize max_size is not supported")
            size, resize = (int(value[0]), int(value[1])), {"antialias": bool(args.get("antialias", True))}
        elif name == "Normalize":
            mean, std = (tuple(float(v) for v in args.get(k) or ()) for k in ("mean", "std"))
            if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
                raise StpmError(f"{where}: pre-processor Normalize needs 3 means and 3 positive stds")
        else:
            raise StpmError(f"{where}: unsupported pre-processor transform {name} (stpm-edge takes Resize, Normalize)")
    if size is None:
        raise StpmError(f"{where}: the anomalib pre-processor has no Resize, so the model input size is unknown")
    if not all(32 <= v <= 4096 for v in size):
        raise StpmError(f"{where}: image size {size[1]}x{size[0]} out of range 32..4096")
    return size, mean, std, resize


def _num(state: Mapping[str, Any], key: str) -> float:
    value = state.get(key)
    return float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else math.nan


def carry_thresholds(obj: dict, where: str) -> tuple[Thresholds | None, dict]:
    """anomalib's post-processor state → (our thresholds giving the same decisions, raw details).

    ``None`` (with the reason in the details) when the checkpoint has no usable statistics."""
    state, config = obj["state_dict"], obj.get("anomalib_post_processor_config") or {}
    raw = {k: _num(state, f"post_processor.{k}") for k in
           ("_image_threshold", "_pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max")}
    details: dict[str, Any] = {"anomalib": {k.lstrip("_"): v for k, v in raw.items()},
                               "config": {k: v for k, v in config.items() if isinstance(v, (bool, int, float))}}
    if (obj.get("anomalib_components_enabled") or {}).get("post_processor") is False \
            or config.get("enable_thresholding") is False:
        details["reason"] = "the anomalib model has no post-processor thresholds"
        return None, details
    match = config.get("enable_threshold_matching", True)
    effective = []
    for level, other in (("image", "pixel"), ("pixel", "image")):
        thr = raw[f"_{level}_threshold"]
        thr = raw[f"_{other}_threshold"] if math.isnan(thr) and match else thr
        lo, hi = raw[f"{level}_min"], raw[f"{level}_max"]
        sens = float(config.get(f"{level}_sensitivity", 0.5))
        if not 0.0 < sens < 1.0:
            raise StpmError(f"{where}: anomalib {level}_sensitivity {sens} flags all or no images; "
                            f"stpm-edge needs it strictly between 0 and 1")
        if config.get("enable_normalization", True) is False:
            effective.append(1.0 - sens)  # anomalib compares raw values with 1 − sensitivity
            continue
        if math.isnan(lo) or math.isnan(hi):
            details["reason"] = "anomalib never validated the model (no min/max statistics)"
            return None, details
        thr = (hi + lo) / 2 if math.isnan(thr) else thr
        effective.append(thr + (0.5 - sens) * (hi - lo))
    image_thr, pixel_thr = effective
    finite = [v for v in (raw["pixel_min"], raw["image_min"]) if math.isfinite(v)]
    min_value = min(finite) if finite else 0.0
    if not min_value < min(image_thr, pixel_thr):
        min_value = min(0.0, min(image_thr, pixel_thr) - 1.0)  # maps are ≥ 0; any value below both thresholds works
    return Thresholds(image_thr, pixel_thr, min_value), details
