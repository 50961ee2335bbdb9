"""RSTPM as a method: the registry entry that the shared trainer, export and precision call.

Pair A is STPM (its trunks fused by :func:`~stpm_edge.models.stpm.fusion.build_trunks`,
stacked by default); pair B (a different teacher, the attention student) runs as two
parallel branches beside it in the same graph."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stpm_edge.data.synth import SynthConfig, synthesize
from stpm_edge.errors import StpmError
from stpm_edge.models.backbones import get_spec
from stpm_edge.models.method import Method, MethodOptions, StepContext, load_parts, parts_state
from stpm_edge.models.normalization import Normalization, log_space_rule
from stpm_edge.models.rstpm.config import RSTPMConfig
from stpm_edge.models.rstpm.head import RSTPMHead
from stpm_edge.models.rstpm.loss import rstpm_loss_per_image
from stpm_edge.models.rstpm.model import RSTPM
from stpm_edge.models.stpm.config import STPMRecipe
from stpm_edge.models.stpm.fusion import FUSIONS, ParallelTrunks, build_trunks

PARTS = ("teacher_a", "student_a", "teacher_b", "student_b")
OPTIONS = ("teacher_b", "student_b", "layers_b", "weight_b", "p_anomaly", "combine", "exponent_b")


class RSTPMInference(nn.Module):
    """Normalised batch → pair A's fused trunks and pair B's branches → RSTPM head. ``pair_a`` and
    ``pair_b`` are the low-precision regions; the head (norms, distances, products, blur) stays FP32."""

    def __init__(self, model: RSTPM, blur_sigma: float, fusion: str) -> None:
        super().__init__()
        self.combine = model.config.combine
        self.pair_a = build_trunks(model.teacher_a, model.student_a, fusion)
        self.pair_b = ParallelTrunks(model.teacher_b, model.student_b)  # different architectures: parallel
        self.head = RSTPMHead(model.image_size, blur_sigma, self.combine, model.config.exponent_b)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ta, sa = self.pair_a(x) if self.combine != "b" else ([], [])
        tb, sb = self.pair_b(x) if self.combine != "a" else ([], [])
        return self.head(ta, sa, tb, sb)


def _layers(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return tuple(s.strip() for s in str(value).replace("+", ",").split(",") if s.strip())


class RSTPMMethod(Method):
    name = "rstpm"
    summary = "Reconstruction Student with Attention for STPM (Yamada & Hotta, 2021)"
    # An RSTPM step runs two teachers and two students (~2.2-2.3x an STPM step on CPU): 80 epochs
    # keep the default training within 2x the STPM default's time (100 epochs).
    default_epochs = 80

    def make_config(self, options: MethodOptions, image_size: tuple[int, int]) -> RSTPMConfig:
        extra = dict(options.extra)
        unknown = set(extra) - set(OPTIONS)
        if unknown:
            raise StpmError(f"method rstpm has no option {sorted(unknown)[0]!r} (it has: {', '.join(OPTIONS)})")
        d = RSTPMConfig()
        cfg = RSTPMConfig(
            backbone=options.backbone or d.backbone, layers=tuple(options.layers),
            teacher_b=str(extra.get("teacher_b", d.teacher_b)), student_b=str(extra.get("student_b", d.student_b)),
            layers_b=_layers(extra.get("layers_b", ())),
            blur_sigma=d.blur_sigma if options.blur_sigma is None else options.blur_sigma,
            weight_b=_number("weight_b", extra.get("weight_b", d.weight_b)),
            p_anomaly=_number("p_anomaly", extra.get("p_anomaly", d.p_anomaly)),
            combine=str(extra.get("combine", d.combine)),
            exponent_b=_number("exponent_b", extra.get("exponent_b", d.exponent_b)))
        return cfg.resolved()

    def config_to_dict(self, config: RSTPMConfig) -> dict[str, Any]:
        return config.to_dict()

    def config_from_dict(self, d: dict[str, Any], where: str) -> RSTPMConfig:
        return RSTPMConfig.from_dict(d, where)

    def preprocessing(self, config: RSTPMConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
        spec = get_spec(config.backbone)  # pair B's networks share it (checked by the config)
        return spec.mean, spec.std

    def build(self, config: RSTPMConfig, image_size: tuple[int, int], *, pretrained: bool = True,
              weights_file: Path | None = None, seed: int | None = None) -> RSTPM:
        return RSTPM.build(config, image_size, pretrained=pretrained, teacher_weights=weights_file, seed=seed)

    def state(self, model: RSTPM) -> dict[str, dict[str, torch.Tensor]]:
        return parts_state(model, PARTS)

    def load_state(self, model: RSTPM, state: dict[str, Any], where: str) -> None:
        load_parts(model, state, PARTS, where, "the model's config")

    def optimizer(self, model: RSTPM, options: MethodOptions) -> torch.optim.Optimizer:
        r = STPMRecipe()  # pair A's recipe (Wang et al.), for both students
        lr = r.lr if options.lr is None else options.lr
        params = list(model.student_a.parameters()) + list(model.student_b.parameters())
        return torch.optim.SGD(params, lr=lr, momentum=r.momentum, weight_decay=r.weight_decay)

    def _losses(self, model: RSTPM, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        cfg = model.config
        altered = synthesize(x, ctx.generator, SynthConfig(p_anomaly=cfg.p_anomaly)).images
        return rstpm_loss_per_image(*model(x, altered), weight_b=cfg.weight_b)

    def train_step(self, model: RSTPM, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self._losses(model, x, ctx).mean()

    def holdout_loss(self, model: RSTPM, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self._losses(model, x, ctx)  # the trainer re-seeds ctx.generator: same anomalies every epoch

    def export_options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = set(options) - {"fusion"}
        if unknown:
            raise StpmError(f"method rstpm has no export option {sorted(unknown)[0]!r} (it has: fusion)")
        fusion = options.get("fusion") or "stacked"
        if fusion not in FUSIONS:
            raise StpmError(f"--fusion {fusion}: choose from {', '.join(FUSIONS)} (pair A's trunks)")
        return {"fusion": fusion}

    def inference_module(self, model: RSTPM, *, blur_sigma: float | None = None,
                         options: dict[str, Any] | None = None) -> nn.Module:
        opts = self.export_options(dict(options or {"fusion": "parallel"}))
        sigma = model.config.blur_sigma if blur_sigma is None else blur_sigma
        return RSTPMInference(model, sigma, opts["fusion"])

    def normalization(self, scores: np.ndarray, maps: np.ndarray) -> Normalization:
        # The fused map is a product of six level distances: positive and heavy-tailed, as STPM's.
        return log_space_rule(scores, maps)

    def low_precision(self, options: dict[str, Any]) -> tuple[str, ...]:
        fusion = self.export_options(dict(options))["fusion"]
        pair_a = ("pair_a/trunk",) if fusion == "stacked" else ("pair_a/teacher", "pair_a/student")
        return pair_a + ("pair_b/teacher", "pair_b/student")

    def onnx_rewrites(self) -> dict[str, Callable[[Any, tuple[str, ...]], Any]]:
        # None: STPM's unstacking needs pair A's trunk alone in its scope, but the exported graph
        # shares the input's same-padding Pad between pair A and pair B (ONNX Runtime's common-
        # subexpression pass), so it is not folded into pair A's first Conv and the rewrite would
        # refuse the graph. The cpu INT8 form is quantized from the graph as exported.
        return {}


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise StpmError(f"--opt {name}={value}: expected a number") from None
