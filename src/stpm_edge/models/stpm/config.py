"""STPM's options: the backbone shared by teacher and student, the levels, the map blur,
and the paper's optimiser settings."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from stpm_edge.errors import StpmError
from stpm_edge.models.backbones import get_spec, resolve_layers

MAX_BLUR = 64.0
HEADS = ("model", "feature")  # the anomaly map's resolution inside the head (head.py)


@dataclass(frozen=True)
class STPMConfig:
    """Architecture of an STPM model: backbone, levels (empty = the backbone's default), blur σ
    (0 = off; input pixels), and the head's resolution (``model`` input size or ``feature`` grid)."""

    backbone: str = "efficientnet_lite0"
    layers: tuple[str, ...] = ()
    blur_sigma: float = 4.0
    head: str = "model"

    def resolved(self) -> "STPMConfig":
        """Validated, with the levels resolved (one-line StpmError)."""
        spec = get_spec(self.backbone)
        blur = float(self.blur_sigma)
        if not (math.isfinite(blur) and 0.0 <= blur <= MAX_BLUR):
            raise StpmError(f"--blur {self.blur_sigma}: expected a number in 0..{MAX_BLUR:g} (0 = off)")
        check_head(self.head)
        return STPMConfig(self.backbone, resolve_layers(spec, self.layers or None), blur, self.head)

    def finest_stride(self) -> int:
        spec = get_spec(self.backbone)
        return min(spec.stride(level) for level in (self.layers or resolve_layers(spec, None)))

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "layers": list(self.layers), "blur_sigma": float(self.blur_sigma),
                "head": self.head}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "STPMConfig":
        backbone, layers, blur = d.get("backbone"), d.get("layers"), d.get("blur_sigma", 0.0)
        head = d.get("head", "model")  # checkpoints before the feature head: the model-size head
        if not isinstance(backbone, str):
            raise StpmError(f"{where}: config 'backbone' must be a string")
        if not isinstance(layers, (list, tuple)) or not all(isinstance(v, str) for v in layers):
            raise StpmError(f"{where}: config 'layers' must be a list of level names")
        if isinstance(blur, bool) or not isinstance(blur, (int, float)):
            raise StpmError(f"{where}: config 'blur_sigma' must be a number")
        try:
            return cls(backbone, tuple(layers), float(blur), head).resolved()
        except StpmError as e:
            raise StpmError(f"{where}: {e}") from None


def check_head(head: Any) -> str:
    if head not in HEADS:
        raise StpmError(f"head {head!r}: choose from {', '.join(HEADS)} (--opt head=feature)")
    return head


@dataclass(frozen=True)
class STPMRecipe:
    """Wang et al. 2021: SGD, lr 0.4, momentum 0.9, weight decay 1e-4."""

    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 1e-4
