"""CFA as a method: the registry entry that the shared trainer, export and precision call."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stpm_edge.errors import StpmError
from stpm_edge.models.backbones import get_spec
from stpm_edge.models.cfa.config import CFAConfig, CFARecipe, parse_option
from stpm_edge.models.cfa.head import CFAMapHead, MemorySearch
from stpm_edge.models.cfa.loss import cfa_loss_per_image, init_memory_bank
from stpm_edge.models.cfa.model import CFA
from stpm_edge.models.method import Method, MethodOptions, StepContext, load_parts, parts_state
from stpm_edge.models.normalization import Normalization, linear_rule


class CFAInference(nn.Module):
    """Normalised batch → backbone → descriptor → memory search → map head → (raw map, raw
    score). ``backbone`` and ``descriptor`` are the low-precision region; the memory search
    (squared-distance expansion, TopK, softmin) and the map head stay FP32."""

    def __init__(self, model: CFA, blur_sigma: float) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.descriptor = model.descriptor
        self.search = MemorySearch(model.memory_bank, model.config.k)
        self.head = CFAMapHead(model.image_size, blur_sigma, model.config.blur_border)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.search(self.descriptor(self.backbone(x))))


class CFAMethod(Method):
    """Paper defaults (γ_d = γ_c = 1: a 4096-item bank at 256 px, ~3 GMAC of search per image,
    ~8x the efficientnet_lite0 trunk). On a CPU, ``--opt gamma_c=16`` (256 k-means items) cuts
    the search 16x (the trunk and descriptor are unchanged)."""

    name = "cfa"
    summary = "Coupled-hypersphere-based Feature Adaptation (Lee, Lee, Song 2022)"
    # An epoch costs ~6x STPM's at 256² (the 4096-item memory search, forward and backward); on
    # the sample data the test AUROC levels off by epoch 8-10 (BENCHMARKS.md, machine E), and 12
    # epochs stay within the STPM default's training time on a 2-core CPU.
    default_epochs = 12

    def make_config(self, options: MethodOptions, image_size: tuple[int, int]) -> CFAConfig:
        extra = {key: parse_option(key, value) for key, value in options.extra.items()}
        blur = 4.0 if options.blur_sigma is None else options.blur_sigma
        return CFAConfig(options.backbone or "efficientnet_lite0", tuple(options.layers), blur, **extra).resolved()

    def config_to_dict(self, config: CFAConfig) -> dict[str, Any]:
        return config.to_dict()

    def config_from_dict(self, d: dict[str, Any], where: str) -> CFAConfig:
        return CFAConfig.from_dict(d, where)

    def preprocessing(self, config: CFAConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
        spec = get_spec(config.backbone)
        return spec.mean, spec.std

    def build(self, config: CFAConfig, image_size: tuple[int, int], *, pretrained: bool = True,
              weights_file: Path | None = None, seed: int | None = None) -> CFA:
        return CFA.build(config, image_size, pretrained=pretrained, weights_file=weights_file, seed=seed)

    def state(self, model: CFA) -> dict[str, dict[str, torch.Tensor]]:
        return {**parts_state(model, ("backbone", "descriptor")),
                "bank": {"memory_bank": model.memory_bank.detach().cpu().clone(),
                         "radius": model.radius.detach().cpu().clone()}}

    def load_state(self, model: CFA, state: dict[str, Any], where: str) -> None:
        bank_state = state.get("bank")
        if not isinstance(bank_state, dict):
            raise StpmError(f"{where}: not a CFA checkpoint (missing the bank state)")
        load_parts(model, state, ("backbone", "descriptor"), where,
                   f"{model.config.backbone} {','.join(model.config.layers)}")
        bank, radius = bank_state.get("memory_bank"), bank_state.get("radius")
        if not isinstance(bank, torch.Tensor) or tuple(bank.shape) != tuple(model.memory_bank.shape):
            got = tuple(bank.shape) if isinstance(bank, torch.Tensor) else None
            raise StpmError(f"{where}: memory bank of shape {got}, the config needs {tuple(model.memory_bank.shape)}")
        if not isinstance(radius, torch.Tensor) or radius.numel() != 1:
            raise StpmError(f"{where}: the CFA radius must be one number")
        for key, value in (("memory_bank", bank), ("radius", radius)):
            if not value.is_floating_point() or not torch.isfinite(value).all():
                raise StpmError(f"{where}: bank tensor {key} is not finite floating point")
        with torch.no_grad():
            model.memory_bank.copy_(bank)
            model.radius.copy_(radius.reshape(1))

    def prepare(self, model: CFA, x_fit: torch.Tensor, ctx: StepContext) -> None:
        init_memory_bank(model, x_fit, ctx.batch_size, ctx.device, ctx.generator)

    def optimizer(self, model: CFA, options: MethodOptions) -> torch.optim.Optimizer:
        r = CFARecipe()
        lr = r.lr if options.lr is None else options.lr
        return torch.optim.AdamW(model.trainable(), lr=lr, weight_decay=r.weight_decay, amsgrad=r.amsgrad)

    def train_step(self, model: CFA, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return cfa_loss_per_image(model, x).mean()

    def holdout_loss(self, model: CFA, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return cfa_loss_per_image(model, x)

    def inference_module(self, model: CFA, *, blur_sigma: float | None = None,
                         options: dict[str, Any] | None = None) -> nn.Module:
        self.export_options(dict(options or {}))
        sigma = model.config.blur_sigma if blur_sigma is None else blur_sigma
        return CFAInference(model, sigma)

    def normalization(self, scores: np.ndarray, maps: np.ndarray) -> Normalization:
        # Softmin-weighted nearest distances (not a product): roughly Gaussian on good images.
        return linear_rule(scores, maps)

    def low_precision(self, options: dict[str, Any]) -> tuple[str, ...]:
        self.export_options(dict(options))
        return ("backbone", "descriptor")
