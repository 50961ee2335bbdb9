"""anomalib 2.x CFA → our ``cfa`` method, read as plain data (no anomalib needed).

What an anomalib 2.7 CFA Lightning checkpoint holds beyond the common pre/post-processor parts:

- ``hyper_parameters``: ``backbone`` (a torchvision name: ``resnet18``, ``wide_resnet50_2``,
  ``vgg19_bn``), ``gamma_c``, ``gamma_d``, ``num_nearest_neighbors``,
  ``num_hard_negative_features``, ``radius``; the levels are fixed by the backbone
  (``layer1..3`` for the ResNets);
- ``model.feature_extractor.*``: the torchvision trunk up to ``layer3`` (same names as timm's);
- ``model.descriptor.layer.conv2d.{weight,bias}``: the 1×1 CoordConv over (features ‖ row,
  column coordinates in [-1, 1]); ``model.descriptor.layer.{weight,bias}`` belong to the unused
  outer ``nn.Conv2d`` that anomalib's ``CoordConv2d`` subclasses, and are dropped;
- ``model.memory_bank``: (D, M), the transpose of ours.

anomalib's map is ours with two choices fixed: the radius is a constant (not learnt) and the
Gaussian blur (σ = 4) mirrors the border (``blur_border="reflect"``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from stpm_edge.errors import StpmError
from stpm_edge.interop.anomalib_parts import (Imported, carry_thresholds, map_trunk, parse_backbone,
                                              parse_pre_processor, provenance)

_TRUNK, _DESC, _BANK = "model.feature_extractor.", "model.descriptor.layer.", "model.memory_bank"
CFA_LEVELS = {"resnet18": ["layer1", "layer2", "layer3"], "wide_resnet50_2": ["layer1", "layer2", "layer3"]}
_HP = {"gamma_c": "gamma_c", "gamma_d": "gamma_d", "num_nearest_neighbors": "k",
       "num_hard_negative_features": "j", "radius": "radius"}


def is_cfa(state: Mapping[str, Any]) -> bool:
    return any(str(k).startswith(_DESC) for k in state)


def _tensor(state: Mapping[str, Any], key: str, shape: tuple[int, ...], where: str) -> torch.Tensor:
    value = state.get(key)
    if value is None:
        raise StpmError(f"{where}: missing weight {key}")
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise StpmError(f"{where}: {key} is not a floating-point tensor")
    if tuple(value.shape) != shape:
        raise StpmError(f"{where}: {key} has shape {tuple(value.shape)}, expected {shape}")
    if not torch.isfinite(value).all():
        raise StpmError(f"{where}: {key} contains NaN or Inf")
    return value.detach().float().clone().contiguous()


def _hyper_parameters(hp: Any, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(hp, Mapping) or not isinstance(hp.get("backbone"), str):
        raise StpmError(f"{where}: hyper_parameters has no backbone name")
    name = hp["backbone"]
    if name not in CFA_LEVELS:
        raise StpmError(f"{where}: unsupported CFA backbone {name!r} (supported: {', '.join(CFA_LEVELS)})")
    options: dict[str, Any] = {}
    for theirs, ours in _HP.items():
        if theirs not in hp:
            raise StpmError(f"{where}: hyper_parameters has no {theirs}")
        options[ours] = hp[theirs]
    return name, options


def convert_cfa(obj: dict, where: str) -> Imported:
    """CFA: trunk, descriptor and memory bank → our ``cfa`` parts, every name and shape checked."""
    from stpm_edge.models.cfa.config import CFAConfig

    state = obj["state_dict"]
    stray = next((str(k) for k in state if str(k).startswith("model.")
                  and not str(k).startswith((_TRUNK, _DESC)) and str(k) != _BANK), None)
    if stray is not None:
        raise StpmError(f"{where}: unexpected weight {stray} in a CFA checkpoint")
    name, options = _hyper_parameters(obj.get("hyper_parameters"), where)
    timm_name, bmap, layers = parse_backbone({"backbone": name, "layers": CFA_LEVELS[name]}, where)
    size, mean, std, resize = parse_pre_processor(obj, where)
    if size[0] != size[1]:  # anomalib resizes every level to a square grid (F.interpolate(x, int))
        raise StpmError(f"{where}: a CFA model for {size[1]}x{size[0]} input: anomalib's CFA runs on square "
                        f"inputs only")
    config = {"backbone": bmap.ours, "layers": list(layers), "blur_sigma": 4.0, "learn_radius": False,
              "blur_border": "reflect", **options}
    try:
        cfg = CFAConfig.from_dict(config, where)
    except StpmError as exc:
        raise StpmError(f"{exc} (from the anomalib hyper_parameters)") from None
    config["radius"] = cfg.radius
    c_in, c_out = cfg.embed_channels()
    h, w = cfg.feature_size(size)
    descriptor = {"layer.conv.weight": _tensor(state, f"{_DESC}conv2d.weight", (c_out, c_in + 2, 1, 1), where),
                  "layer.conv.bias": _tensor(state, f"{_DESC}conv2d.bias", (c_out,), where)}
    for key in state:
        rest = str(key)[len(_DESC):] if str(key).startswith(_DESC) else None
        if rest is not None and rest not in ("conv2d.weight", "conv2d.bias", "weight", "bias"):
            raise StpmError(f"{where}: unexpected weight {key} in a CFA checkpoint")
    bank = state.get(_BANK)
    if isinstance(bank, torch.Tensor) and bank.ndim == 0:
        raise StpmError(f"{where}: the CFA memory bank was never initialised (the model was not trained)")
    items = max(1, h * w // cfg.gamma_c)
    bank = _tensor(state, _BANK, (c_out, items), where).t().contiguous()
    parts = {"backbone": map_trunk(state, _TRUNK, bmap, layers, where), "descriptor": descriptor,
             "bank": {"memory_bank": bank, "radius": torch.tensor([cfg.radius], dtype=torch.float32)}}
    thresholds, details = carry_thresholds(obj, where)
    return Imported("cfa", config, size, mean, std, parts, thresholds,
                    provenance(obj, "Cfa", timm_name, resize, details))
