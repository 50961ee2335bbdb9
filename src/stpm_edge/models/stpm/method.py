"""STPM as a method: the registry entry that the shared trainer, export and precision call."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stpm_edge.errors import StpmError
from stpm_edge.models.backbones import get_spec
from stpm_edge.models.method import Method, MethodOptions, StepContext, load_parts, parts_state
from stpm_edge.models.normalization import Normalization, log_space_rule
from stpm_edge.models.stpm.config import HEADS, STPMConfig, STPMRecipe, check_head
from stpm_edge.models.stpm.fusion import FUSIONS, build_trunks
from stpm_edge.models.stpm.head import feature_grid, make_head
from stpm_edge.models.stpm.loss import stpm_loss, stpm_loss_per_image
from stpm_edge.models.stpm.model import STPM
from stpm_edge.models.stpm.unstack import NotStacked, unstack

PARTS = ("teacher", "student")


class STPMInference(nn.Module):
    """Normalised batch → fused trunks → STPM head → (raw map, raw score). ``trunks`` is the
    low-precision region; the head (norms, distances, product, blur, max) stays FP32."""

    def __init__(self, model: STPM, blur_sigma: float, fusion: str, head: str = "model") -> None:
        super().__init__()
        self.trunks = build_trunks(model.teacher, model.student, fusion)
        self.head = make_head(check_head(head), model.image_size, blur_sigma, model.config.finest_stride())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        teacher, student = self.trunks(x)
        return self.head(teacher, student)


class STPMMethod(Method):
    name = "stpm"
    summary = "Student-Teacher Feature Pyramid Matching (Wang et al., BMVC 2021)"

    def make_config(self, options: MethodOptions, image_size: tuple[int, int]) -> STPMConfig:
        extra = dict(options.extra)
        head = extra.pop("head", STPMConfig.head)
        if extra:
            raise StpmError(f"method stpm has no option {sorted(extra)[0]!r} (it has: head)")
        blur = 4.0 if options.blur_sigma is None else options.blur_sigma
        return STPMConfig(options.backbone or "efficientnet_lite0", tuple(options.layers), blur, head).resolved()

    def config_to_dict(self, config: STPMConfig) -> dict[str, Any]:
        return config.to_dict()

    def config_from_dict(self, d: dict[str, Any], where: str) -> STPMConfig:
        return STPMConfig.from_dict(d, where)

    def preprocessing(self, config: STPMConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
        spec = get_spec(config.backbone)
        return spec.mean, spec.std

    def build(self, config: STPMConfig, image_size: tuple[int, int], *, pretrained: bool = True,
              weights_file: Path | None = None, seed: int | None = None) -> STPM:
        return STPM.build(config, image_size, pretrained=pretrained, teacher_weights=weights_file, seed=seed)

    def state(self, model: STPM) -> dict[str, dict[str, torch.Tensor]]:
        return parts_state(model, PARTS)

    def load_state(self, model: STPM, state: dict[str, Any], where: str) -> None:
        load_parts(model, state, PARTS, where, f"{model.config.backbone} {','.join(model.config.layers)}")

    def optimizer(self, model: STPM, options: MethodOptions) -> torch.optim.Optimizer:
        r = STPMRecipe()
        lr = r.lr if options.lr is None else options.lr
        return torch.optim.SGD(model.student.parameters(), lr=lr, momentum=r.momentum, weight_decay=r.weight_decay)

    def train_step(self, model: STPM, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return stpm_loss(*model(x))

    def holdout_loss(self, model: STPM, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return stpm_loss_per_image(*model(x))

    def export_options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = set(options) - {"fusion", "head"}
        if unknown:
            raise StpmError(f"method stpm has no export option {sorted(unknown)[0]!r} (it has: fusion, head)")
        fusion = options.get("fusion") or "stacked"
        if fusion not in FUSIONS:
            raise StpmError(f"--fusion {fusion}: choose from {', '.join(FUSIONS)}")
        out = {"fusion": fusion}
        if options.get("head") is not None:  # default: the head the model was trained with
            if options["head"] not in HEADS:
                raise StpmError(f"--opt head={options['head']}: choose from {', '.join(HEADS)}")
            out["head"] = options["head"]
        return out

    def inference_module(self, model: STPM, *, blur_sigma: float | None = None,
                         options: dict[str, Any] | None = None) -> nn.Module:
        opts = self.export_options(dict(options or {"fusion": "parallel"}))
        sigma = model.config.blur_sigma if blur_sigma is None else blur_sigma
        return STPMInference(model, sigma, opts["fusion"], opts.get("head", model.config.head))

    def map_grid(self, config: STPMConfig, image_size: tuple[int, int],
                 options: dict[str, Any] | None = None) -> tuple[int, int]:
        head = (options or {}).get("head") or config.head
        return feature_grid(image_size, config.finest_stride()) if head == "feature" else tuple(image_size)

    def normalization(self, scores: np.ndarray, maps: np.ndarray) -> Normalization:
        # The map is a product of per-level distances: positive and heavy-tailed.
        return log_space_rule(scores, maps)

    def low_precision(self, options: dict[str, Any]) -> tuple[str, ...]:
        fusion = self.export_options(dict(options))["fusion"]
        return ("trunks/trunk",) if fusion == "stacked" else ("trunks/teacher", "trunks/student")

    def onnx_rewrites(self) -> dict[str, Callable[[Any, tuple[str, ...]], Any]]:
        return {"int8.cpu": _unstack_for_cpu}


def _unstack_for_cpu(model: Any, scopes: tuple[str, ...]) -> Any:
    """ONNX Runtime's quantized grouped 1×1 convolutions are slow: the CPU INT8 form is
    quantized from teacher and student as two trunks (:mod:`.unstack`)."""
    if len(scopes) != 1:
        raise NotStacked("not a stacked export (parallel trunks)")
    return unstack(model, scopes[0])
