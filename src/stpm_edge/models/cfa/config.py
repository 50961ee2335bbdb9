"""CFA's options: the frozen backbone and its three levels, the descriptor and memory-bank
compression factors, the coupled-hypersphere loss constants, the map blur, and the paper's
optimiser settings (Lee, Lee, Song 2022, "CFA: Coupled-hypersphere-based Feature Adaptation
for Target-Oriented Anomaly Localization")."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from stpm_edge.errors import StpmError
from stpm_edge.models.backbones import get_spec, resolve_layers

MAX_BLUR = 64.0
MAX_NEIGHBOURS = 64  # K + J: a small TopK (TensorRT's TopK allows k <= 3840)
BLUR_BORDERS = ("renorm", "reflect")  # the map blur's border: ours, or anomalib's mirrored one


@dataclass(frozen=True)
class CFAConfig:
    """Architecture and loss of a CFA model.

    ``gamma_d``: descriptor output width = input width / gamma_d; ``gamma_c``: memory bank =
    (positions / gamma_c) k-means centres of the per-position means (1 = no compression);
    ``k``: nearest memory items attracted (and softmin-weighted in the score); ``j``: the next
    items repelled (hard negatives); ``nu``: soft-boundary weight (the loss is scaled by 1/ν);
    ``alpha``: repulsion margin; ``radius``: the hypersphere radius r (its initial value
    when ``learn_radius``); ``blur_border``: how the map blur treats the image border
    (``renorm``, ours; ``reflect``, anomalib's, for imported models)."""

    backbone: str = "efficientnet_lite0"
    layers: tuple[str, ...] = ()
    blur_sigma: float = 4.0
    gamma_d: int = 1
    gamma_c: int = 1
    k: int = 3
    j: int = 3
    nu: float = 1e-3
    alpha: float = 0.1
    radius: float = 1e-5
    learn_radius: bool = True
    blur_border: str = "renorm"

    def resolved(self) -> "CFAConfig":
        """Validated, with the levels resolved (one-line StpmError)."""
        spec = get_spec(self.backbone)
        blur = float(self.blur_sigma)
        if not (math.isfinite(blur) and 0.0 <= blur <= MAX_BLUR):
            raise StpmError(f"--blur {self.blur_sigma}: expected a number in 0..{MAX_BLUR:g} (0 = off)")
        layers = resolve_layers(spec, self.layers or None)
        channels = sum(spec.channel(name) for name in layers)
        for name in ("gamma_d", "gamma_c", "k", "j"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "j" else 1):
                raise StpmError(f"cfa option {name}={v}: expected an integer >= {0 if name == 'j' else 1}")
        if self.gamma_d > channels:
            raise StpmError(f"cfa option gamma_d={self.gamma_d}: at most the {channels} feature channels")
        if self.k + self.j > MAX_NEIGHBOURS:
            raise StpmError(f"cfa options k+j={self.k + self.j}: at most {MAX_NEIGHBOURS}")
        for name, lo in (("nu", 0.0), ("alpha", -math.inf), ("radius", -math.inf)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > lo \
                    or (name == "radius" and v < 0) or (name == "alpha" and v < 0):
                raise StpmError(f"cfa option {name}={v}: expected a finite number {'> 0' if name == 'nu' else '>= 0'}")
        if self.blur_border not in BLUR_BORDERS:
            raise StpmError(f"cfa option blur_border={self.blur_border}: expected one of {', '.join(BLUR_BORDERS)}")
        if not isinstance(self.learn_radius, bool):
            raise StpmError(f"cfa option learn_radius={self.learn_radius}: expected true or false")
        return replace(self, layers=layers, blur_sigma=blur, nu=float(self.nu), alpha=float(self.alpha),
                       radius=float(self.radius))

    def embed_channels(self) -> tuple[int, int]:
        """(descriptor input channels, descriptor output channels)."""
        spec = get_spec(self.backbone)
        c_in = sum(spec.channel(name) for name in self.layers)
        return c_in, c_in // self.gamma_d

    def feature_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the first level: the patch grid and the memory bank's positions."""
        s = get_spec(self.backbone).stride(self.layers[0])
        return math.ceil(image_size[0] / s), math.ceil(image_size[1] / s)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "CFAConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise StpmError(f"{where}: unknown cfa config key {sorted(unknown)[0]!r}")
        layers = d.get("layers", [])
        if not isinstance(layers, (list, tuple)) or not all(isinstance(v, str) for v in layers):
            raise StpmError(f"{where}: config 'layers' must be a list of level names")
        if not isinstance(d.get("backbone"), str):
            raise StpmError(f"{where}: config 'backbone' must be a string")
        try:
            return cls(**{**d, "layers": tuple(layers)}).resolved()
        except (StpmError, TypeError) as e:
            raise StpmError(f"{where}: {e}") from None


OPTION_TYPES: dict[str, type] = {"gamma_d": int, "gamma_c": int, "k": int, "j": int, "nu": float, "alpha": float,
                                 "radius": float, "learn_radius": bool, "blur_border": str}


def parse_option(key: str, value: Any) -> Any:
    """A ``--opt key=value`` string (or an already typed value) → the option's type."""
    kind = OPTION_TYPES.get(key)
    if kind is None:
        raise StpmError(f"method cfa has no option {key!r} (it has: {', '.join(OPTION_TYPES)})")
    if not isinstance(value, str):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if type(value) is not kind:
            raise StpmError(f"cfa option {key}={value}: expected {kind.__name__}")
        return value
    text = value.strip().lower()
    if kind is str:
        return text
    try:
        if kind is bool:
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return kind(text)
    except ValueError:
        raise StpmError(f"cfa option {key}={value}: expected {kind.__name__}") from None


@dataclass(frozen=True)
class CFARecipe:
    """The paper's optimiser (its code and anomalib): AdamW, lr 1e-3, weight decay 5e-4, AMSGrad."""

    lr: float = 1e-3
    weight_decay: float = 5e-4
    amsgrad: bool = True
