"""RSTPM's options: pair A (STPM: backbone, levels), pair B (a different pretrained teacher and
the attention student's trunk), the map blur, the pair-B loss weight and the synthesiser's rate."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from stpm_edge.errors import StpmError
from stpm_edge.models.backbones import get_spec, resolve_layers
from stpm_edge.models.stpm.config import MAX_BLUR

COMBINES = ("product", "a", "b")  # product of the six level maps; "a"/"b": one pair alone (ablation)


@dataclass(frozen=True)
class RSTPMConfig:
    backbone: str = "efficientnet_lite0"  # pair A: teacher and student (STPM)
    layers: tuple[str, ...] = ()
    teacher_b: str = "efficientnet_lite1"  # pair B's teacher: a different pretrained network
    student_b: str = "efficientnet_lite0"  # pair B's student trunk (random init) + attention
    layers_b: tuple[str, ...] = ()
    blur_sigma: float = 4.0
    weight_b: float = 1.0  # weight of the reconstruction loss
    p_anomaly: float = 0.5  # share of student B's training images given a synthetic anomaly
    combine: str = "product"
    exponent_b: float = 1.0  # fused map = map_A · map_B^exponent_b (1: the product of the six level maps)

    def resolved(self) -> "RSTPMConfig":
        """Validated, with the levels resolved (one-line StpmError)."""
        spec_a, spec_t, spec_s = get_spec(self.backbone), get_spec(self.teacher_b), get_spec(self.student_b)
        if self.teacher_b == self.backbone:
            raise StpmError(f"teacher_b {self.teacher_b}: pair B needs a different teacher than pair A")
        if (spec_a.mean, spec_a.std) != (spec_t.mean, spec_t.std) or (spec_s.mean, spec_s.std) != (spec_t.mean, spec_t.std):
            raise StpmError(f"{self.backbone}, {self.teacher_b} and {self.student_b} expect different input "
                            "normalisations; both pairs share one preprocessing (pick backbones of one family)")
        layers_b = resolve_layers(spec_t, self.layers_b or None)
        missing = [n for n in layers_b if n not in spec_s.levels]
        if missing:
            raise StpmError(f"student_b {self.student_b} has no level {missing[0]!r}")
        s_strides = [spec_s.stride(n) for n in layers_b]
        if s_strides != [spec_t.stride(n) for n in layers_b]:
            raise StpmError(f"student_b {self.student_b} and teacher_b {self.teacher_b} differ in level strides")
        if [spec_s.channel(n) for n in layers_b] != [spec_t.channel(n) for n in layers_b]:
            raise StpmError(f"student_b {self.student_b} and teacher_b {self.teacher_b} differ in level channels "
                            f"(use student_b={self.teacher_b})")
        blur = float(self.blur_sigma)
        if not (math.isfinite(blur) and 0.0 <= blur <= MAX_BLUR):
            raise StpmError(f"--blur {self.blur_sigma}: expected a number in 0..{MAX_BLUR:g} (0 = off)")
        if not (math.isfinite(float(self.weight_b)) and float(self.weight_b) > 0):
            raise StpmError(f"weight_b {self.weight_b}: must be a positive number")
        if not 0.0 <= float(self.p_anomaly) <= 1.0:
            raise StpmError(f"p_anomaly {self.p_anomaly}: must be in 0..1")
        if not (math.isfinite(float(self.exponent_b)) and 0.0 < float(self.exponent_b) <= 4.0):
            raise StpmError(f"exponent_b {self.exponent_b}: must be in (0, 4]")
        if self.combine not in COMBINES:
            raise StpmError(f"combine {self.combine}: choose from {', '.join(COMBINES)}")
        return RSTPMConfig(self.backbone, resolve_layers(spec_a, self.layers or None), self.teacher_b,
                           self.student_b, layers_b, blur, float(self.weight_b), float(self.p_anomaly), self.combine,
                           float(self.exponent_b))

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "layers": list(self.layers), "teacher_b": self.teacher_b,
                "student_b": self.student_b, "layers_b": list(self.layers_b), "blur_sigma": float(self.blur_sigma),
                "weight_b": float(self.weight_b), "p_anomaly": float(self.p_anomaly), "combine": self.combine,
                "exponent_b": float(self.exponent_b)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "RSTPMConfig":
        for key in ("backbone", "teacher_b", "student_b", "combine"):
            if not isinstance(d.get(key), str):
                raise StpmError(f"{where}: config {key!r} must be a string")
        for key in ("layers", "layers_b"):
            v = d.get(key)
            if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
                raise StpmError(f"{where}: config {key!r} must be a list of level names")
        d = {**d, "exponent_b": d.get("exponent_b", 1.0)}
        for key in ("blur_sigma", "weight_b", "p_anomaly", "exponent_b"):
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise StpmError(f"{where}: config {key!r} must be a number")
        try:
            return cls(d["backbone"], tuple(d["layers"]), d["teacher_b"], d["student_b"], tuple(d["layers_b"]),
                       float(d["blur_sigma"]), float(d["weight_b"]), float(d["p_anomaly"]), d["combine"],
                       float(d["exponent_b"])).resolved()
        except StpmError as e:
            raise StpmError(f"{where}: {e}") from None
