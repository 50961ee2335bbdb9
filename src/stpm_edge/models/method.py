"""The method seam: what a method (STPM, CFA, RSTPM, DMDD, ...) provides, and nothing more.

A method is one folder ``models/<name>/`` whose ``method.py`` defines a :class:`Method`
subclass and one line in :mod:`stpm_edge.models.registry`. The shared trainer, export,
calibration, TensorRT and the runtime call only what is declared here; they never name a
method's parts. ``docs/adding-a-method.md`` walks through an example.

The contract, in the order the pipeline uses it:

* **config**: ``make_config(options, image_size)`` turns the shared training options
  (:class:`MethodOptions`) into the method's validated config dataclass;
  ``config_to_dict``/``config_from_dict`` store it in the checkpoint header.
* **build**: ``build(config, image_size, pretrained=..., weights_file=..., seed=...)`` → the
  method's ``nn.Module`` (pretrained parts frozen, trainable parts initialised).
* **state**: ``state(model)`` → named state dicts of tensors for the checkpoint;
  ``load_state(model, state, where)`` validates and loads them (one-line StpmError).
* **training**: ``prepare(model, x_fit, ctx)`` runs once before the first epoch (e.g. a
  memory-bank initialisation); ``optimizer(model, options)``; ``train_step(model, x, ctx)``
  → scalar loss; ``holdout_loss(model, x, ctx)`` → per-image losses (N,) that select the
  best epoch and drive early stopping (deterministic: same model, same value).
* **inference**: ``inference_module(model, blur_sigma=None, options={})`` → a pure
  ``nn.Module`` from the normalised NCHW batch to (raw map (N,1,h,w), raw score (N,)), the
  one definition training, evaluation and export share; ``export_options`` validates the
  method's own export options (e.g. STPM's ``fusion``); ``map_grid(config, image_size,
  options)`` → the (h, w) of that raw map (default: the input size; STPM's feature head: the
  finest level's grid), which export keeps with ``--map-size feature``.
* **normalisation**: ``normalization(scores, maps)`` → :class:`~stpm_edge.models.checkpoint.Normalization`
  from held-out good images (each method's score distribution has its own rule).
* **low precision**: ``low_precision(options)`` → the submodule paths (``a/b``) of the inference
  module that FP16/INT8 may lower (everything else stays FP32); ``onnx_rewrites()`` →
  optional graph rewrites per precision form (e.g. STPM's unstacking for the CPU INT8 form).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class MethodOptions:
    """The training options every method understands (``None``: the method's default)."""

    backbone: str | None = None
    layers: tuple[str, ...] = ()
    blur_sigma: float | None = None
    lr: float | None = None
    teacher_weights: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific options (``--opt key=value``)


@dataclass
class StepContext:
    """What the trainer hands a method's step: the epoch, a seeded generator (the only source
    of randomness a step may use, so training is reproducible), the device and the batch size."""

    epoch: int
    generator: torch.Generator
    device: torch.device
    batch_size: int


class Method:
    """Base class of a method: defaults for the optional parts, the contract above for the rest."""

    name: str = ""
    summary: str = ""
    default_epochs: int = 100  # stpm-train's --epochs when not given (patience may stop it earlier)

    # -- config ---------------------------------------------------------------------------
    def make_config(self, options: MethodOptions, image_size: tuple[int, int]) -> Any:
        raise NotImplementedError

    def config_to_dict(self, config: Any) -> dict[str, Any]:
        raise NotImplementedError

    def config_from_dict(self, d: dict[str, Any], where: str) -> Any:
        raise NotImplementedError

    def describe(self, config: Any) -> dict[str, Any]:
        """What ``stpm info`` and the exported metadata's ``method`` block show."""
        return {"name": self.name, **self.config_to_dict(config)}

    def preprocessing(self, config: Any) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std) the method's input expects (its pretrained backbone's)."""
        raise NotImplementedError

    # -- build and state ------------------------------------------------------------------
    def build(self, config: Any, image_size: tuple[int, int], *, pretrained: bool = True,
              weights_file: Path | None = None, seed: int | None = None) -> nn.Module:
        raise NotImplementedError

    def state(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def load_state(self, model: nn.Module, state: dict[str, Any], where: str) -> None:
        raise NotImplementedError

    # -- training -------------------------------------------------------------------------
    def prepare(self, model: nn.Module, x_fit: torch.Tensor, ctx: StepContext) -> None:
        """Run once before the first epoch (default: nothing)."""

    def optimizer(self, model: nn.Module, options: MethodOptions) -> torch.optim.Optimizer:
        raise NotImplementedError

    def train_step(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def holdout_loss(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    # -- inference ------------------------------------------------------------------------
    def export_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Validate the method's own export options (default: none allowed)."""
        if options:
            from stpm_edge.errors import StpmError  # noqa: PLC0415

            raise StpmError(f"method {self.name} has no export option {sorted(options)[0]!r}")
        return {}

    def inference_module(self, model: nn.Module, *, blur_sigma: float | None = None,
                         options: dict[str, Any] | None = None) -> nn.Module:
        raise NotImplementedError

    def map_grid(self, config: Any, image_size: tuple[int, int],
                 options: dict[str, Any] | None = None) -> tuple[int, int]:
        """(h, w) of the raw map :meth:`inference_module` returns (``--map-size feature``);
        default: the model input size."""
        return (int(image_size[0]), int(image_size[1]))

    def blur_sigma(self, config: Any) -> float:
        return float(getattr(config, "blur_sigma", 0.0))

    # -- normalisation and precision ------------------------------------------------------
    def normalization(self, scores: np.ndarray, maps: np.ndarray) -> Any:
        raise NotImplementedError

    def low_precision(self, options: dict[str, Any]) -> tuple[str, ...]:
        """Submodule paths of :meth:`inference_module` that FP16/INT8 may lower."""
        raise NotImplementedError

    def onnx_rewrites(self) -> dict[str, Callable[[Any], Any]]:
        """Graph rewrites by precision form (``"int8.cpu"``): ONNX model → ONNX model, or raise
        ``ValueError`` when the graph is not one the rewrite understands (then it is skipped)."""
        return {}


def parts_state(model: nn.Module, parts: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """The state dicts of ``model``'s submodules ``parts``, detached CPU copies (for ``Method.state``)."""
    return {part: {k: v.detach().cpu().clone() for k, v in getattr(model, part).state_dict().items()}
            for part in parts}


def load_parts(model: nn.Module, state: dict[str, Any], parts: tuple[str, ...], where: str, fits: str) -> None:
    """Load :func:`parts_state`'s output back, validated (for ``Method.load_state``): every part
    present and made of tensors, a strict fit (``fits`` names what the weights must fit), no NaN/Inf."""
    from stpm_edge.errors import StpmError  # noqa: PLC0415

    for part in parts:
        sd = state.get(part)
        if not isinstance(sd, dict):
            raise StpmError(f"{where}: not an stpm-edge checkpoint (missing the {part} weights)")
        if not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise StpmError(f"{where}: {part} state dict holds non-tensor values")
        try:
            getattr(model, part).load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:200]
            raise StpmError(f"{where}: {part} weights do not fit {fits} ({detail})") from None
        for key, value in sd.items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise StpmError(f"{where}: {part} weight {key} contains NaN or Inf")
