"""DMDD's options: teacher backbone and levels, the decouple heads, the two distillation
losses, the segmentation network, the score, and the training recipe.

Method options (``stpm-train --method dmdd --opt KEY=VALUE``):

``abnormality`` (true)  train the abnormality branch (push-away inside the synthetic masks);
                        false is the ablation "without the abnormality loss" (the branch is
                        then left out of the model).
``seg`` (true)          the multi-perception segmentation network gives the map; false is the
                        ablation "without the segmentation net" (map = product over levels of
                        the mean of the normality and abnormality discrepancies, as STPM).
``fuse`` (seg_normality) the map: ``seg`` the segmentation network's probability; ``product`` the
                        product over levels of the mean of the two branches' discrepancies (as
                        without the net, on the same trained model); ``normality`` that product
                        of the normality branch's alone; ``seg_product``, ``seg_normality``: the
                        segmentation probability times one of them.
``margin`` (1.0)        the abnormality hinge: inside the mask, relu(margin - d) with
                        d = 1 - cos(teacher, abnormality feature) in [0, 2].
``w_abn`` (1.0), ``w_seg`` (1.0)   loss weights.
``score`` (max)         max | topk: the image score from the (blurred) map.
``topk`` (100)          pixels averaged by ``score=topk``.
``seg_lr`` (0.1)        the segmentation network's SGD learning rate (the student: ``--lr``, 0.4).
``p_anomaly`` (0.5)     share of training images given a synthetic anomaly.
``stop_on`` (all)       the held-out loss early stopping follows: ``all`` the sum of the terms;
                        ``normality`` the normality term alone (the student's distillation).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from stpm_edge.errors import StpmError
from stpm_edge.models.backbones import get_spec, resolve_layers

MAX_BLUR = 64.0
SCORES = ("max", "topk")
FUSES = ("seg", "product", "seg_product", "normality", "seg_normality")
NO_SEG_FUSES = ("product", "normality")  # the maps that need no segmentation network
STOP_ON = ("all", "normality")


@dataclass(frozen=True)
class DMDDConfig:
    backbone: str = "efficientnet_lite0"
    layers: tuple[str, ...] = ()
    blur_sigma: float = 4.0
    abnormality: bool = True
    seg: bool = True
    fuse: str | None = None  # None: "seg_normality" with the segmentation network, else "product"
    margin: float = 1.0
    w_abn: float = 1.0
    w_seg: float = 1.0
    score: str = "max"
    topk: int = 100
    seg_lr: float = 0.1
    p_anomaly: float = 0.5
    stop_on: str = "all"

    def resolved(self) -> "DMDDConfig":
        """Validated, levels resolved (one-line StpmError)."""
        spec = get_spec(self.backbone)
        layers = resolve_layers(spec, self.layers or None)
        for name in ("abnormality", "seg"):
            if not isinstance(getattr(self, name), bool):
                raise StpmError(f"dmdd option {name}: expected true or false, got {getattr(self, name)!r}")
        _num("blur", self.blur_sigma, 0.0, MAX_BLUR)
        _num("margin", self.margin, 0.0, 2.0, open_low=True)
        _num("w_abn", self.w_abn, 0.0, 100.0)
        _num("w_seg", self.w_seg, 0.0, 100.0)
        _num("seg_lr", self.seg_lr, 0.0, 10.0, open_low=True)
        _num("p_anomaly", self.p_anomaly, 0.0, 1.0, open_low=True)
        fuse = self.fuse if self.fuse is not None else ("seg_normality" if self.seg else "product")
        if fuse not in FUSES:
            raise StpmError(f"dmdd option fuse={fuse}: choose from {', '.join(FUSES)}")
        if fuse not in NO_SEG_FUSES and not self.seg:
            raise StpmError(f"dmdd option fuse={fuse} needs the segmentation network (seg=false: fuse=product "
                            "or normality)")
        if self.stop_on not in STOP_ON:
            raise StpmError(f"dmdd option stop_on={self.stop_on}: choose from {', '.join(STOP_ON)}")
        if self.score not in SCORES:
            raise StpmError(f"dmdd option score={self.score}: choose from {', '.join(SCORES)}")
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or not 1 <= self.topk <= 3840:
            raise StpmError(f"dmdd option topk={self.topk}: expected an integer in 1..3840 (TensorRT's TopK limit)")
        return DMDDConfig(**{**asdict(self), "layers": layers, "fuse": fuse, "blur_sigma": float(self.blur_sigma),
                             "margin": float(self.margin), "w_abn": float(self.w_abn), "w_seg": float(self.w_seg),
                             "seg_lr": float(self.seg_lr), "p_anomaly": float(self.p_anomaly)})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "DMDDConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise StpmError(f"{where}: unknown dmdd config key {sorted(unknown)[0]!r}")
        if not isinstance(d.get("backbone"), str):
            raise StpmError(f"{where}: config 'backbone' must be a string")
        layers = d.get("layers", [])
        if not isinstance(layers, (list, tuple)) or not all(isinstance(v, str) for v in layers):
            raise StpmError(f"{where}: config 'layers' must be a list of level names")
        if "fuse" not in d:  # a checkpoint from before the option: its map was the network's alone
            d = {**d, "fuse": "seg" if d.get("seg", True) else "product"}
        try:
            return cls(**{**d, "layers": tuple(layers)}).resolved()
        except (StpmError, TypeError) as e:
            raise StpmError(f"{where}: {e}") from None

    @classmethod
    def from_options(cls, backbone: str | None, layers: tuple[str, ...], blur: float | None,
                     extra: dict[str, Any]) -> "DMDDConfig":
        allowed = {f.name for f in fields(cls)} - {"backbone", "layers", "blur_sigma"}
        unknown = set(extra) - allowed
        if unknown:
            raise StpmError(f"method dmdd has no option {sorted(unknown)[0]!r} (it has: {', '.join(sorted(allowed))})")
        kw: dict[str, Any] = dict(extra)
        for key in ("score", "fuse", "stop_on"):
            if key in kw:
                kw[key] = str(kw[key])
        return cls(backbone or "efficientnet_lite0", tuple(layers), 4.0 if blur is None else blur, **kw).resolved()


def _num(name: str, v: Any, lo: float, hi: float, open_low: bool = False) -> None:
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi
    if not ok or (open_low and v <= lo):
        raise StpmError(f"dmdd option {name}={v!r}: expected a number in {'(' if open_low else '['}{lo:g}, {hi:g}]")


@dataclass(frozen=True)
class DMDDRecipe:
    """The student as STPM's recipe (SGD 0.4, momentum 0.9, weight decay 1e-4); the
    segmentation network in its own parameter group at ``seg_lr``."""

    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 1e-4
