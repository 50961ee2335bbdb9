"""``stpm-train DATA -o model.pt [--method M]``: train an anomaly detector on good images."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stpm_edge.cli.common import console, parse_options, print_json, setup_logging, user_errors
from stpm_edge.errors import StpmError
from stpm_edge.models.backbones import BACKBONES
from stpm_edge.models.registry import DEFAULT_METHOD, method_names
from stpm_edge.train.trainer import EpochLog, TrainConfig, TrainInterrupted, train, validate_config


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


@user_errors("stpm-train")
def train_cmd(
    data: Path = typer.Argument(..., help="MVTec AD category folder (train/good, optional test/) or a folder of good images."),
    output: Path = typer.Option(Path("model.pt"), "-o", "--output", help="Checkpoint to write (atomically)."),
    method: str = typer.Option(DEFAULT_METHOD, help=f"Method: {', '.join(method_names())}."),
    backbone: Optional[str] = typer.Option(None, help=f"Backbone (the method's default: efficientnet_lite0, whose "
                                           f"ImageNet weights ship offline): {', '.join(BACKBONES)}."),
    layers: str = typer.Option("", help="Comma-separated pyramid levels (default: the backbone's three; "
                                        "resnet: layer1,layer2,layer3; efficientnet_lite0: blocks.1,blocks.2,blocks.4)."),
    image_size: int = typer.Option(256, help="Square model input size in pixels."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs (default: the method's: 100; cfa 12 and "
                                         "rstpm 80, whose epochs cost ~6x and ~2.3x STPM's)."),
    batch_size: int = typer.Option(8, help="Images per SGD step."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: the method's recipe; STPM: SGD 0.4, "
                                       "momentum 0.9, weight decay 1e-4)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    seed: int = typer.Option(0, help="Seed for the hold-out split, initialisation and shuffling."),
    holdout: float = typer.Option(0.2, help="Fraction of good images held out for early stopping and thresholds."),
    patience: int = typer.Option(10, help="Stop after this many epochs without held-out improvement."),
    time_budget: Optional[float] = typer.Option(None, help="Stop after this many minutes (default: none; training "
                                                "stops by --epochs and --patience, so the model does not depend on "
                                                "how busy the machine is)."),
    val_every: int = typer.Option(1, help="Report test-split AUROC every N epochs when a test split exists (0 = never)."),
    blur: Optional[float] = typer.Option(None, help="Gaussian blur sigma applied to the anomaly map before the max "
                                         "(0 = off; default: the method's, 4 for STPM)."),
    teacher_weights: Optional[Path] = typer.Option(None, help="Teacher ImageNet weights (state dict) instead of the default source."),
    opt: List[str] = typer.Option([], "--opt", help="Method-specific option KEY=VALUE (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Train a model on good images (STPM by default: a frozen pretrained teacher, a student learns to mimic it)."""
    setup_logging(verbose)
    cfg = TrainConfig(method=method, method_options=parse_options(opt), backbone=backbone, layers=tuple(s for s in layers.split(",") if s.strip()), image_size=image_size,
                      epochs=epochs, batch_size=batch_size, lr=lr, device=device, seed=seed, holdout=holdout,
                      patience=patience, time_budget_min=time_budget, val_every=val_every, blur_sigma=blur,
                      teacher_weights=teacher_weights)
    validate_config(cfg)
    epochs = cfg.max_epochs()
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}  held-out {task.fields[hold]}  "
                                   "val AUROC img {task.fields[img]} px {task.fields[px]}  best@{task.fields[best]}"),
                        TimeElapsedColumn(), console=console, disable=json_out or not console.is_terminal)
    plain = not json_out and not console.is_terminal  # a log file or a pipe: one line per epoch on stderr
    tasks: list = []  # the display starts on the first step, so input errors print only the error line

    def task() -> object:
        if not tasks:
            progress.start()
            tasks.append(progress.add_task("train", total=epochs, epoch=1, loss="-", hold="-", img="-", px="-",
                                           best="-"))
        return tasks[0]

    def on_step(loss: float) -> None:
        progress.update(task(), loss=f"{loss:.4f}")

    def on_epoch(log: EpochLog, best: int) -> None:
        progress.update(task(), completed=log.epoch, epoch=log.epoch, loss=f"{log.loss:.4f}",
                        hold=f"{log.holdout_loss:.4f}", img=_fmt(log.image_auroc), px=_fmt(log.pixel_auroc),
                        best=best)
        if plain:
            print(f"stpm-train: epoch {log.epoch}/{epochs} loss {log.loss:.4f} held-out {log.holdout_loss:.4f} "
                  f"val AUROC img {_fmt(log.image_auroc)} px {_fmt(log.pixel_auroc)} best@{best} "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)

    interrupted = None
    started = time.monotonic()
    try:
        result = train(data, output, cfg, on_epoch=on_epoch, on_step=on_step)
    except TrainInterrupted as e:  # the best epoch was finalised and saved: report it, then exit 130
        result, interrupted = e.result, e
    finally:
        if tasks:
            progress.stop()
    norm = result.meta.normalization
    summary = {
        "output": str(result.output), "device": result.device, "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch, "stop_reason": result.stop_reason, "seconds": round(result.seconds, 1),
        "image_threshold": norm.image_threshold, "pixel_threshold": norm.pixel_threshold,
        "last_val_image_auroc": next((h.image_auroc for h in reversed(result.history) if h.image_auroc is not None), None),
    }
    summary["method"] = result.meta.arch
    summary["budget_cut"] = result.budget_cut
    if json_out:
        print_json(summary)
    else:
        console.print(f"saved {result.output} ({result.meta.arch}, best epoch {result.best_epoch} of "
                      f"{result.epochs_run}, {result.stop_reason}, {result.seconds:.0f} s on {result.device}); "
                      f"thresholds: image {norm.image_threshold:.4g}, pixel {norm.pixel_threshold:.4g}",
                      highlight=False, markup=False, soft_wrap=True)  # one line, also in a log file
    if interrupted is not None:
        raise interrupted
