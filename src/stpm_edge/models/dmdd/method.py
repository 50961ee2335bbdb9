"""DMDD as a method: the registry entry the shared trainer, export and precision call.

Training is one stage, every step: synthesise anomalies on the batch (``data.synth``, drawn
from the step's generator), one teacher pass over the clean images and the altered ones, one
student pass over the (partly) anomalous batch, the distillation losses, and the segmentation
loss on the *detached* discrepancy maps (the segmentation network learns on the current
student and never bends it, as a second stage with the student frozen would, without a
schedule that the shared early stopping cannot see). One SGD optimiser, two parameter groups.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stpm_edge.data.synth import SynthConfig, synthesize
from stpm_edge.errors import StpmError
from stpm_edge.models.backbones import get_spec
from stpm_edge.models.dmdd.config import DMDDConfig, DMDDRecipe
from stpm_edge.models.dmdd.head import DMDDHead, discrepancy_stack
from stpm_edge.models.dmdd.loss import (abnormal_fit_loss, abnormality_loss, cell_weights, normality_loss,
                                        seg_loss)
from stpm_edge.models.dmdd.model import DMDD
from stpm_edge.models.method import Method, MethodOptions, StepContext, load_parts, parts_state
from stpm_edge.models.normalization import Normalization, linear_rule


class DMDDInference(nn.Module):
    """Normalised batch → teacher, decouple student → DMDD head → (raw map, raw score).
    ``teacher`` and ``student`` are the low-precision regions; the head (norms, distances,
    segmentation network, blur, score) stays FP32."""

    def __init__(self, model: DMDD, head: DMDDHead) -> None:
        super().__init__()
        self.teacher = model.teacher
        self.student = model.student
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normal, abnormal = self.student(x)
        return self.head(self.teacher(x), normal, abnormal)


def dmdd_losses(model: DMDD, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The per-image loss terms (N,) of one batch of good images."""
    cfg = model.config
    syn = synthesize(x, generator, SynthConfig(p_anomaly=cfg.p_anomaly))
    n = len(x)
    idx = torch.nonzero(syn.altered).flatten()
    t_all = model.teacher_features(torch.cat([x, syn.images[idx]]) if idx.numel() else x)
    t_clean = [t[:n] for t in t_all]
    t_anom = [t[:n].index_copy(0, idx.to(t.device), t[n:]) if idx.numel() else t[:n] for t in t_all]
    normal, abnormal = model.student(syn.images)
    terms = {"normality": normality_loss(t_clean, normal)}
    if abnormal is not None:
        terms["abnormality"] = cfg.w_abn * abnormality_loss(t_anom, abnormal, syn.masks, cfg.margin)
        terms["fit"] = abnormal_fit_loss(t_anom, abnormal, syn.masks)
    if model.seg is not None:
        stack = discrepancy_stack(t_anom, [s.detach() for s in normal],
                                  None if abnormal is None else [s.detach() for s in abnormal], model.grid)
        terms["seg"] = cfg.w_seg * seg_loss(model.seg(stack), cell_weights(syn.masks, model.grid))
    return terms


class DMDDMethod(Method):
    name = "dmdd"
    summary = "Dual-Modeling Decouple Distillation (Liu, Wang, Leng and Zhang, ACM MM 2024)"

    def make_config(self, options: MethodOptions, image_size: tuple[int, int]) -> DMDDConfig:
        return DMDDConfig.from_options(options.backbone, tuple(options.layers), options.blur_sigma, options.extra)

    def config_to_dict(self, config: DMDDConfig) -> dict[str, Any]:
        return config.to_dict()

    def config_from_dict(self, d: dict[str, Any], where: str) -> DMDDConfig:
        return DMDDConfig.from_dict(d, where)

    def preprocessing(self, config: DMDDConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
        spec = get_spec(config.backbone)
        return spec.mean, spec.std

    def build(self, config: DMDDConfig, image_size: tuple[int, int], *, pretrained: bool = True,
              weights_file: Path | None = None, seed: int | None = None) -> DMDD:
        return DMDD.build(config, image_size, pretrained=pretrained, teacher_weights=weights_file, seed=seed)

    @staticmethod
    def _parts(model: DMDD) -> tuple[str, ...]:
        return ("teacher", "student") + (("seg",) if model.seg is not None else ())

    def state(self, model: DMDD) -> dict[str, dict[str, torch.Tensor]]:
        return parts_state(model, self._parts(model))

    def load_state(self, model: DMDD, state: dict[str, Any], where: str) -> None:
        load_parts(model, state, self._parts(model), where, "this dmdd config")
        extra = set(state) - set(self._parts(model))
        if extra:
            raise StpmError(f"{where}: dmdd state has parts {sorted(extra)} this config does not use")

    def optimizer(self, model: DMDD, options: MethodOptions) -> torch.optim.Optimizer:
        r = DMDDRecipe()
        groups = [{"params": list(model.student.parameters()), "lr": r.lr if options.lr is None else options.lr}]
        if model.seg is not None:
            groups.append({"params": list(model.seg.parameters()), "lr": model.config.seg_lr})
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=r.momentum, weight_decay=r.weight_decay)

    def train_step(self, model: DMDD, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return sum(dmdd_losses(model, x, ctx.generator).values()).mean()

    def holdout_loss(self, model: DMDD, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        # ctx.generator is re-seeded by the trainer for every held-out pass: the same anomalies each epoch
        terms = dmdd_losses(model, x, ctx.generator)
        return terms["normality"] if model.config.stop_on == "normality" else sum(terms.values())

    def inference_module(self, model: DMDD, *, blur_sigma: float | None = None,
                         options: dict[str, Any] | None = None) -> nn.Module:
        self.export_options(dict(options or {}))
        return DMDDInference(model, model.make_head(blur_sigma))

    def normalization(self, scores: np.ndarray, maps: np.ndarray) -> Normalization:
        # The map is a probability from the segmentation network, not a product of distances:
        # the linear rule (the seam passes no config; the no-segmentation ablation uses it too,
        # which moves only its thresholds, not its AUROC or PRO).
        return linear_rule(scores, maps)

    def low_precision(self, options: dict[str, Any]) -> tuple[str, ...]:
        self.export_options(dict(options))
        return ("teacher", "student")
