"""``stpm-eval MODEL DATA``: image AUROC, pixel AUROC, PRO and F1 on a test split."""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from stpm_edge.cli.common import console, print_json, setup_logging, user_errors
from stpm_edge.data.mvtec import load_dataset
from stpm_edge.errors import StpmError
from stpm_edge.artifact import ModelFiles
from stpm_edge.eval.compare import evaluate_backend
from stpm_edge.eval.evaluate import evaluate
from stpm_edge.models.checkpoint import load_checkpoint
from stpm_edge.train.trainer import resolve_device


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


@user_errors("stpm-eval")
def eval_cmd(
    model: str = typer.Argument(..., help="Checkpoint (model.pt), an exported model.onnx (run through ONNX Runtime), "
                                "or a model on a Triton server (triton://HOST:PORT/NAME)."),
    data: Path = typer.Argument(..., help="MVTec AD category folder with a test/ split (ground_truth/ for pixel metrics)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda; for exported files also tensorrt (a TensorRT engine) "
                               "and ort-tensorrt (ONNX Runtime's TensorRT provider)."),
    batch_size: int = typer.Option(16, help="Images per forward pass."),
    compare: List[Path] = typer.Option([], "--compare", help="Exported variants to evaluate side by side with MODEL "
                                       "(an .onnx); deviations are against MODEL. Repeatable."),
    variants: bool = typer.Option(False, "--variants", help="Compare MODEL (.onnx) with the precision variants beside "
                                  "it (<name>.fp16.onnx, <name>.int8.onnx, <name>.int8.cpu.onnx)."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint",
                                          help="Allow full unpickling of the checkpoint (only for files you trust)."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Evaluate a checkpoint: image AUROC, pixel AUROC, PRO (AUPRO to FPR 0.3) and F1 at the stored threshold."""
    setup_logging(verbose)
    if batch_size < 1:
        raise StpmError(f"--batch-size {batch_size}: must be at least 1")
    from stpm_edge.runtime.backends.triton import is_triton_uri

    remote = is_triton_uri(model)
    if compare or variants:
        if remote:
            raise StpmError("--compare/--variants take model files, not a triton:// URI")
        _compare(Path(model), data, compare, variants, device, batch_size, json_out)
        return
    model_path = model if remote else Path(model)
    checkpoint = not remote and model_path.suffix.lower() == ".pt"
    if not checkpoint:  # exported files open the one way every command opens them
        from stpm_edge.runtime.detector import open_model

        backend = open_model(model_path, "auto" if remote else device)
    else:
        net, meta = load_checkpoint(model_path, allow_pickle=trust_checkpoint)
    dataset = load_dataset(data)
    if not dataset.has_test:
        raise StpmError(f"{data}: no test split with both good and defective images (expected test/good and test/<type>)")
    n = len(dataset.test)
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True, disable=json_out) as progress:
        task = progress.add_task("evaluating", total=2 * n)
        step = lambda k: progress.advance(task, k)  # noqa: E731
        if not checkpoint:
            result = evaluate_backend(backend, dataset, batch_size, progress=step)
        else:
            result = evaluate(net, meta, dataset, resolve_device(device), batch_size, progress=step)
    out = {"model": str(model), "data": str(data), **result.to_dict()}
    if json_out:
        print_json(out)
        return
    table = Table(title=f"{model if remote else model_path.name} on {data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("image AUROC", _fmt(result.image_auroc))
    table.add_row("pixel AUROC", _fmt(result.pixel_auroc))
    table.add_row("PRO (FPR≤0.3)", _fmt(result.pro))
    if result.f1:
        table.add_row("F1 @ stored threshold", f"{result.f1['f1']:.4f} (P {result.f1['precision']:.3f} R {result.f1['recall']:.3f})")
    for t, v in result.per_type.items():
        table.add_row(f"  image AUROC [{t}]", _fmt(v))
    table.add_row("images (defective)", f"{result.n_images} ({result.n_defective})")
    table.add_row("ms / image", f"{result.ms_per_image:.1f}")
    console.print(table)


def _compare(model: Path, data: Path, compare: list[Path], variants: bool, device: str, batch_size: int,
             json_out: bool) -> None:
    from stpm_edge.cli.calibrate import comparison_table
    from stpm_edge.eval.compare import compare_models

    if model.suffix.lower() != ".onnx":
        raise StpmError(f"{model}: --compare/--variants take an exported .onnx model as the reference")
    paths = [model, *compare]
    if variants:
        files, _ = ModelFiles.of(model)
        found = [files.onnx(tag) for tag in ("fp16", "int8", "int8.cpu")]
        found = [p for p in found if p.is_file() and p not in paths]
        if not found and not compare:
            raise StpmError(f"{model}: no precision variants beside it (export with --fp16 / --int8)")
        paths += found
    dataset = load_dataset(data)
    n = len(dataset.test)
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True, disable=json_out) as progress:
        task = progress.add_task("evaluating", total=n * (1 + len(paths)))
        rows = compare_models(paths, dataset, device, batch_size, progress=lambda k: progress.advance(task, k))
    if json_out:
        print_json({"data": str(data), "reference": str(model), "models": [r.to_dict() for r in rows]})
        return
    console.print(comparison_table(rows, f"side by side on {data} (deviations vs {model.name})"))
