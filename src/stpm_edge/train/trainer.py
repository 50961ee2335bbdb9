"""The shared training loop: every method trains through it, supplying only its step.

- The training images are split (deterministically, by ``seed``) into a fit set and a
  held-out set of good images; the held-out loss selects the best epoch and drives early
  stopping, and the held-out score distribution gives the thresholds stored in the
  checkpoint (by the method's normalisation rule). The test split (when there is one) is
  only *reported* each ``val_every`` epochs, never used to select, so the final evaluation
  is not optimistic.
- Training stops by rule: ``epochs``, or ``patience`` epochs without held-out improvement.
  A wall-time budget (``time_budget_min``) is opt-in only, because a budget gives a
  different model on a busy machine; when it ends training while the held-out loss is still
  improving, a warning says so and the result records it (``budget_cut``).
- Every improvement is saved atomically; Ctrl-C stops training, then the best model is
  finalised (thresholds measured) and saved, and :class:`TrainInterrupted` is raised so the
  command exits 130. A second Ctrl-C leaves the last good file.
"""
from __future__ import annotations

import copy
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from stpm_edge import __version__
from stpm_edge.data.io import check_writable, read_image_bgr
from stpm_edge.data.mvtec import load_dataset
from stpm_edge.data.preprocess import PreprocessSpec, preprocess_images
from stpm_edge.errors import StpmError
from stpm_edge.eval.evaluate import load_test, predict, score_test
from stpm_edge.models.checkpoint import ModelMeta, save_checkpoint
from stpm_edge.models.method import MethodOptions, StepContext
from stpm_edge.models.registry import DEFAULT_METHOD, get_method

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    method: str = DEFAULT_METHOD
    backbone: str | None = None  # None: the method's default
    layers: tuple[str, ...] = ()
    image_size: int = 256
    epochs: int | None = None  # None: the method's default (Method.default_epochs: 100; CFA 12, RSTPM 80)
    batch_size: int = 8
    lr: float | None = None  # None: the method's recipe
    device: str = "auto"
    seed: int = 0
    holdout: float = 0.2
    patience: int = 10
    time_budget_min: float | None = None  # None or 0: no wall-time budget (stop by epochs/patience)
    val_every: int = 1
    blur_sigma: float | None = None  # None: the method's default
    teacher_weights: Path | None = None
    method_options: dict = field(default_factory=dict)

    def max_epochs(self) -> int:
        """``epochs``, or the method's own default when it is None."""
        return self.epochs if self.epochs is not None else get_method(self.method).default_epochs

    def options(self) -> MethodOptions:
        return MethodOptions(self.backbone, tuple(self.layers), self.blur_sigma, self.lr, self.teacher_weights,
                             dict(self.method_options))


@dataclass
class EpochLog:
    epoch: int
    loss: float
    holdout_loss: float
    seconds: float
    image_auroc: float | None = None
    pixel_auroc: float | None = None


@dataclass
class TrainResult:
    output: Path
    best_epoch: int
    epochs_run: int
    stop_reason: str
    seconds: float
    device: str
    history: list[EpochLog] = field(default_factory=list)
    meta: ModelMeta | None = None
    budget_cut: bool = False


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the best epoch was finalised and saved."""

    def __init__(self, result: TrainResult) -> None:
        super().__init__("interrupted")
        self.result = result


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StpmError("--device cuda: no CUDA GPU is available to PyTorch (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise StpmError(f"--device {name}: choose auto, cpu or cuda")
    return torch.device(name)


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (fit indices, held-out indices); at least 2 fit and 1 held-out image."""
    if n < 3:
        raise StpmError(f"need at least 3 good training images, found {n}")
    if not 0.0 < fraction < 1.0:
        raise StpmError(f"--holdout {fraction}: must be between 0 and 1")
    n_hold = min(n - 2, max(1, int(round(fraction * n))))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def validate_config(cfg: TrainConfig) -> None:
    """Every option checked before anything is read or written (one-line StpmError)."""
    def finite(v: float | None) -> bool:
        return v is None or (isinstance(v, (int, float)) and math.isfinite(v))

    if cfg.epochs is not None and cfg.epochs < 1:
        raise StpmError("--epochs must be at least 1")
    if cfg.batch_size < 1:
        raise StpmError("--batch-size must be at least 1")
    if not 32 <= cfg.image_size <= 4096:
        raise StpmError("--image-size must be between 32 and 4096")
    if cfg.lr is not None and (not finite(cfg.lr) or cfg.lr <= 0):
        raise StpmError(f"--lr {cfg.lr}: must be a positive finite number")
    if not 0 <= cfg.seed < 2 ** 32:
        raise StpmError(f"--seed {cfg.seed}: must be in 0..{2 ** 32 - 1}")
    if not 0.0 < cfg.holdout < 1.0:
        raise StpmError(f"--holdout {cfg.holdout}: must be between 0 and 1")
    if cfg.patience < 1:
        raise StpmError(f"--patience {cfg.patience}: must be at least 1")
    if cfg.time_budget_min is not None and (not finite(cfg.time_budget_min) or cfg.time_budget_min < 0):
        raise StpmError(f"--time-budget {cfg.time_budget_min}: must be >= 0 minutes (0 = none)")
    if cfg.val_every < 0:
        raise StpmError(f"--val-every {cfg.val_every}: must be >= 0 (0 = never)")
    if not finite(cfg.blur_sigma):
        raise StpmError(f"--blur {cfg.blur_sigma}: must be a finite number")


def _check_finite(loss: float, epoch: int) -> None:
    if not math.isfinite(loss):
        raise StpmError(f"training diverged at epoch {epoch} (loss {loss}); try a lower --lr")


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, memory_format=torch.channels_last)  # ~1.5x faster depthwise convs on CPU


@torch.no_grad()
def _holdout_loss(method, model, x: torch.Tensor, device: torch.device, batch_size: int, seed: int) -> float:
    model.eval()
    ctx = StepContext(0, torch.Generator().manual_seed(seed + 1), device, batch_size)  # same draws every epoch
    losses = [method.holdout_loss(model, _to(x[i:i + batch_size], device), ctx) for i in range(0, len(x), batch_size)]
    return float(torch.cat(losses).mean())


def train(data: Path, output: Path, cfg: TrainConfig, *,
          on_epoch: Callable[[EpochLog, int], None] | None = None,
          on_step: Callable[[float], None] | None = None) -> TrainResult:
    """Train ``cfg.method`` on ``data`` (MVTec category or image folder) and save ``output``."""
    validate_config(cfg)
    check_writable(Path(output))  # before a single epoch is spent
    method = get_method(cfg.method)
    epochs = cfg.max_epochs()
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    budget = cfg.time_budget_min or 0.0
    budget_s = budget * 60.0 if budget > 0 else math.inf
    image_size = (cfg.image_size, cfg.image_size)
    config = method.make_config(cfg.options(), image_size)

    dataset = load_dataset(data)
    fit_idx, hold_idx = split_holdout(len(dataset.train), cfg.holdout, cfg.seed)
    model = method.build(config, image_size, pretrained=True, weights_file=cfg.teacher_weights, seed=cfg.seed)
    model = model.to(device, memory_format=torch.channels_last)
    mean, std = method.preprocessing(config)
    meta = ModelMeta(method.name, config, PreprocessSpec(image_size, mean, std))

    images = [read_image_bgr(p) for p in dataset.train]
    x_all = preprocess_images(images, meta.preprocess)
    x_fit, x_hold = x_all[torch.from_numpy(fit_idx)], x_all[torch.from_numpy(hold_idx)]
    test = load_test(dataset.test) if dataset.has_test else None
    x_test = preprocess_images(test.images, meta.preprocess) if test else None

    generator = torch.Generator().manual_seed(cfg.seed)
    method.prepare(model, x_fit, StepContext(0, generator, device, cfg.batch_size))
    optimizer = method.optimizer(model, cfg.options())
    meta.provenance = {
        "stpm_edge": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
        "data": {**dataset.summary(), "fit": int(len(fit_idx)), "holdout": int(len(hold_idx))},
        "train_config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                         "epochs": epochs},
        "device": str(device), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    history: list[EpochLog] = []
    best_loss, best_epoch, best_state = math.inf, 0, None
    stop_reason, budget_cut, interrupted = "epochs", False, False
    epoch = 0
    try:
        for epoch in range(1, epochs + 1):
            t_epoch = time.perf_counter()
            model.train()
            ctx = StepContext(epoch, generator, device, cfg.batch_size)
            perm = torch.randperm(len(x_fit), generator=generator)
            total, count = 0.0, 0
            for i in range(0, len(perm), cfg.batch_size):
                xb = _to(x_fit[perm[i:i + cfg.batch_size]], device)
                loss = method.train_step(model, xb, ctx)
                _check_finite(float(loss.detach()), epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(xb)
                count += len(xb)
                if on_step:
                    on_step(float(loss.detach()))
            log = EpochLog(epoch, total / count, _holdout_loss(method, model, x_hold, device, cfg.batch_size, cfg.seed),
                           0.0)
            _check_finite(log.holdout_loss, epoch)
            if test is not None and cfg.val_every > 0 and epoch % cfg.val_every == 0:
                maps, scores, _ = predict(model, x_test, device, cfg.batch_size, method=method)
                res = score_test(test, maps, scores)
                log.image_auroc, log.pixel_auroc = res.image_auroc, res.pixel_auroc
            log.seconds = time.perf_counter() - t_epoch
            history.append(log)
            if log.holdout_loss < best_loss * (1 - 1e-4):
                best_loss, best_epoch = log.holdout_loss, epoch
                best_state = copy.deepcopy(method.state(model))
                save_checkpoint(output, model, meta)
            if on_epoch:
                on_epoch(log, best_epoch)
            if epoch - best_epoch >= cfg.patience:
                stop_reason = f"early stop (no held-out improvement for {cfg.patience} epochs)"
                break
            elapsed = time.perf_counter() - t_start
            if epoch < epochs and elapsed + log.seconds > budget_s:
                stop_reason = f"time budget ({budget:g} min)"
                budget_cut = best_epoch == epoch  # still improving when the budget ended it
                break
    except KeyboardInterrupt:
        stop_reason, interrupted = "interrupted", True
        logger.warning("interrupted at epoch %d; finalising the best model (epoch %d)", epoch, best_epoch)
        if best_state is None:
            raise KeyboardInterrupt("interrupted before the first epoch finished; nothing was saved") from None

    if budget_cut:
        logger.warning("the --time-budget of %g min ended training at epoch %d while the held-out loss was still "
                       "improving: the model is under-trained and depends on how busy the machine was; drop "
                       "--time-budget to train to convergence (early stopping)", budget, epoch)
    method.load_state(model, best_state, "best epoch")
    maps, scores, _ = predict(model, x_hold, device, cfg.batch_size, method=method)
    meta.normalization = method.normalization(scores, maps)
    meta.provenance.update({"epochs_run": len(history), "best_epoch": best_epoch, "best_holdout_loss": best_loss,
                            "stop_reason": stop_reason, "budget_cut": budget_cut,
                            "train_seconds": round(time.perf_counter() - t_start, 1)})
    save_checkpoint(output, model, meta)
    result = TrainResult(Path(output), best_epoch, len(history), stop_reason, time.perf_counter() - t_start,
                         str(device), history, meta, budget_cut)
    if interrupted:
        raise TrainInterrupted(result)
    return result
