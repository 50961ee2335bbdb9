"""The STPM training loop (Wang et al. 2021 recipe): SGD lr 0.4, momentum 0.9, weight decay
1e-4, loss = Σ_levels mean 0.5‖norm t − norm s‖².

- The training images are split (deterministically, by ``seed``) into a fit set and a
  held-out set of good images; the held-out loss selects the best epoch and drives early
  stopping, and the held-out score distribution gives the thresholds stored in the
  checkpoint. The test split (when there is one) is only *reported* each ``val_every``
  epochs, never used to select, so the final evaluation is not optimistic.
- Every improvement is saved atomically; Ctrl-C stops training, then the best model is
  finalised (thresholds measured) and saved. A second Ctrl-C leaves the last good file.
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
from stpm_edge.data.io import read_image_bgr
from stpm_edge.data.mvtec import load_dataset
from stpm_edge.data.preprocess import preprocess_images
from stpm_edge.errors import StpmError
from stpm_edge.eval.evaluate import load_test, predict, score_test
from stpm_edge.models.backbones import get_spec
from stpm_edge.models.checkpoint import ModelMeta, compute_normalization, save_checkpoint
from stpm_edge.models.stpm.loss import stpm_loss, stpm_loss_per_image
from stpm_edge.models.stpm.model import STPM, STPMConfig

logger = logging.getLogger(__name__)

CPU_TIME_BUDGET_MIN = 4.0


@dataclass
class TrainConfig:
    backbone: str = "efficientnet_lite0"
    layers: tuple[str, ...] = ()
    image_size: int = 256
    epochs: int = 100
    batch_size: int = 8
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    device: str = "auto"
    seed: int = 0
    holdout: float = 0.2
    patience: int = 10
    time_budget_min: float | None = None  # None: CPU_TIME_BUDGET_MIN on CPU, unlimited on CUDA; 0: unlimited
    val_every: int = 1
    blur_sigma: float = 4.0
    teacher_weights: Path | None = None


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


def _validate(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise StpmError("--epochs must be at least 1")
    if cfg.batch_size < 1:
        raise StpmError("--batch-size must be at least 1")
    if not 32 <= cfg.image_size <= 4096:
        raise StpmError("--image-size must be between 32 and 4096")
    if cfg.lr <= 0:
        raise StpmError("--lr must be positive")


def _check_finite(loss: float, epoch: int) -> None:
    if not math.isfinite(loss):
        raise StpmError(f"training diverged at epoch {epoch} (loss {loss}); try a lower --lr")


@torch.no_grad()
def _holdout_loss(model: STPM, x: torch.Tensor, device: torch.device, batch_size: int) -> float:
    model.eval()
    losses = [stpm_loss_per_image(*model(x[i:i + batch_size].to(device, memory_format=torch.channels_last)))
              for i in range(0, len(x), batch_size)]
    return float(torch.cat(losses).mean())


def train(data: Path, output: Path, cfg: TrainConfig, *,
          on_epoch: Callable[[EpochLog, int], None] | None = None,
          on_step: Callable[[float], None] | None = None) -> TrainResult:
    """Train an STPM model on ``data`` (MVTec category or image folder) and save ``output``."""
    _validate(cfg)
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    budget = cfg.time_budget_min
    if budget is None:
        budget = CPU_TIME_BUDGET_MIN if device.type == "cpu" else 0.0
    budget_s = budget * 60.0 if budget and budget > 0 else math.inf

    dataset = load_dataset(data)
    fit_idx, hold_idx = split_holdout(len(dataset.train), cfg.holdout, cfg.seed)
    spec = get_spec(cfg.backbone)
    config = STPMConfig(cfg.backbone, tuple(cfg.layers), (cfg.image_size, cfg.image_size), cfg.blur_sigma).resolved()
    model = STPM.build(config, pretrained=True, teacher_weights=cfg.teacher_weights, seed=cfg.seed)
    model = model.to(device, memory_format=torch.channels_last)  # ~1.5x faster depthwise convs on CPU
    meta = ModelMeta(config, spec.mean, spec.std)

    images = [read_image_bgr(p) for p in dataset.train]
    x_all = preprocess_images(images, meta.preprocess)
    x_fit, x_hold = x_all[torch.from_numpy(fit_idx)], x_all[torch.from_numpy(hold_idx)]
    test = load_test(dataset.test) if dataset.has_test else None
    x_test = preprocess_images(test.images, meta.preprocess) if test else None

    optimizer = torch.optim.SGD(model.student.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    meta.provenance = {
        "stpm_edge": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
        "data": {**dataset.summary(), "fit": int(len(fit_idx)), "holdout": int(len(hold_idx))},
        "train_config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "device": str(device), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    history: list[EpochLog] = []
    best_loss, best_epoch, best_state = math.inf, 0, None
    stop_reason = "epochs"
    epoch = 0
    try:
        for epoch in range(1, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            model.train()
            perm = torch.randperm(len(x_fit), generator=generator)
            total, count = 0.0, 0
            for i in range(0, len(perm), cfg.batch_size):
                xb = x_fit[perm[i:i + cfg.batch_size]].to(device, memory_format=torch.channels_last)
                loss = stpm_loss(*model(xb))
                _check_finite(float(loss.detach()), epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(xb)
                count += len(xb)
                if on_step:
                    on_step(float(loss.detach()))
            log = EpochLog(epoch, total / count, _holdout_loss(model, x_hold, device, cfg.batch_size), 0.0)
            _check_finite(log.holdout_loss, epoch)
            if test is not None and cfg.val_every > 0 and epoch % cfg.val_every == 0:
                maps, scores, _ = predict(model, x_test, device, cfg.batch_size)
                res = score_test(test, maps, scores)
                log.image_auroc, log.pixel_auroc = res.image_auroc, res.pixel_auroc
            log.seconds = time.perf_counter() - t_epoch
            history.append(log)
            if log.holdout_loss < best_loss * (1 - 1e-4):
                best_loss, best_epoch = log.holdout_loss, epoch
                best_state = copy.deepcopy(model.student.state_dict())
                save_checkpoint(output, model, meta)
            if on_epoch:
                on_epoch(log, best_epoch)
            if epoch - best_epoch >= cfg.patience:
                stop_reason = f"early stop (no held-out improvement for {cfg.patience} epochs)"
                break
            elapsed = time.perf_counter() - t_start
            if elapsed + log.seconds > budget_s:
                stop_reason = f"time budget ({budget:g} min)"
                break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        logger.warning("interrupted at epoch %d; finalising the best model (epoch %d)", epoch, best_epoch)
        if best_state is None:
            raise StpmError("interrupted before the first epoch finished; nothing was saved") from None

    model.student.load_state_dict(best_state)
    maps, scores, _ = predict(model, x_hold, device, cfg.batch_size)
    meta.normalization = compute_normalization(scores, maps)
    meta.provenance.update({"epochs_run": epoch if stop_reason != "interrupted" else len(history),
                            "best_epoch": best_epoch, "best_holdout_loss": best_loss, "stop_reason": stop_reason,
                            "train_seconds": round(time.perf_counter() - t_start, 1)})
    save_checkpoint(output, model, meta)
    return TrainResult(Path(output), best_epoch, len(history), stop_reason, time.perf_counter() - t_start,
                       str(device), history, meta)
