"""``stpm-calibrate MODEL --calib DIR``: INT8 variants of an exported model, with an accuracy gate.

Also the INT8 step of ``stpm-export --int8`` (:func:`int8_step`), so both verbs behave alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stpm_edge.calibration.quantize import FORMS, METHODS
from stpm_edge.calibration.reader import DEFAULT_COUNT
from stpm_edge.cli.common import console, print_json, setup_logging, user_errors
from stpm_edge.errors import StpmError


# The INT8 options, shared by stpm-calibrate and stpm-export --int8.
CALIB_METHOD = typer.Option("minmax", help=f"INT8 range estimation: {' | '.join(METHODS)}. minmax keeps the "
                            "feature tails where anomalies show; entropy (TensorRT's KL method, slow) and percentile "
                            "clip them to ranges fitted on good images.")
CALIB_COUNT = typer.Option(DEFAULT_COUNT, help="INT8: calibration images (a deterministic subset when there are more).")
SEED = typer.Option(0, help="INT8: seed of the calibration subset.")
KEEP_FLOAT_OPT = typer.Option(None, "--keep-float", help="INT8: leave parts of the trunks float, comma-separated: "
                              "first, last (the edge convolutions) or trunk modules by name (stem, stages.0, stages.1, ...; "
                              "e.g. stem,stages.0), or auto (with --val and "
                              "--max-auroc-drop): none, then the first two, then three modules, the first that passes.")
INT8_FORMS = typer.Option("tensorrt,cpu", help="INT8 files: tensorrt (<name>.int8.onnx, symmetric, for TensorRT) "
                          "and/or cpu (<name>.int8.cpu.onnx, fast on ONNX Runtime x86, not for TensorRT).")
VAL = typer.Option(None, help="INT8: MVTec category with a test split; compare INT8 with FP32 on it.")
MAX_AUROC_DROP = typer.Option(None, help="INT8: refuse to write it if image or pixel AUROC drops by more than this "
                              "many points on --val (e.g. 0.5).")


def parse_list(text: str | None, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    """'a,b' → ('a', 'b'), every item checked against ``allowed``."""
    if not text:
        return ()
    items = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    bad = [t for t in items if t not in allowed]
    if bad:
        raise StpmError(f"{option} {','.join(bad)}: expected any of {', '.join(allowed)}")
    return items


def model_labels(paths: list[Path]) -> list[str]:
    """File names, with as many parent folders as it takes to tell equal names apart."""
    depth = 1
    while depth < max((len(p.parts) for p in paths), default=1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(set(paths)):
            return labels
        depth += 1
    return [str(p) for p in paths]


def comparison_table(rows: list, title: str) -> Table:
    table = Table(title=title, caption="image/pixel: AUROC; Δ: max abs deviation from the first row "
                  "(normalised units, 0.5 = threshold); ms per image")
    table.add_column("model", no_wrap=True)
    for col in ("prec", "image", "pixel", "PRO", "Δmap", "Δscore", "ms"):
        table.add_column(col, justify="left" if col == "prec" else "right", no_wrap=True)
    f = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    for r, label in zip(rows, model_labels([Path(r.model) for r in rows])):
        table.add_row(label, r.precision, f(r.image_auroc), f(r.pixel_auroc), f(r.pro),
                      f"{r.max_abs_map_diff:.3f}", f"{r.max_abs_score_diff:.3f}", f"{r.ms_per_image:.0f}")
    return table


def rich_stages(progress: Progress):
    """A :data:`stpm_edge.export.pipeline.Stage` sink drawing each stage as a rich progress bar.
    The display starts with the first stage, so an error before any work prints only its line."""
    def stage(description: str, total: int | None):
        if not progress.live.is_started and not progress.disable:
            progress.start()
        task = progress.add_task(description, total=total)
        return lambda n=1: progress.advance(task, n)
    return stage


def stage_progress(quiet: bool) -> Progress:
    """The progress display of a multi-stage command (not started until a stage begins)."""
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=quiet)


def int8_plan(calib: Optional[Path], *, count: int, seed: int, method: str, keep_float: str | None, forms: str,
              val: Optional[Path], max_drop: Optional[float], device: str):
    """The INT8 options of stpm-calibrate / stpm-export --int8 as an :class:`Int8Plan` (validated)."""
    from stpm_edge.export.pipeline import Int8Plan  # noqa: PLC0415

    if calib is None:
        raise StpmError("INT8 needs calibration images: pass --calib DIR (a folder of good images, "
                        "or an MVTec category folder whose train/good is used)")
    keep = tuple(t.strip() for t in (keep_float or "").split(",") if t.strip())
    form_list = parse_list(forms, FORMS, "--int8-forms") or FORMS
    return Int8Plan(calib, count, seed, method, keep, form_list, val, max_drop, device).validated()


def print_int8(summary_result, plan, fp32_path: Path) -> None:
    """What stpm-calibrate and stpm-export --int8 print about the INT8 files."""
    result = summary_result
    for form, f in result.files.items():
        console.print(f"wrote {f.onnx_path} ({form} form) and {f.json_path.name}", highlight=False, markup=False)
    console.print(f"calibrated {result.quantized_nodes} nodes on {result.calib_images} images "
                  f"({plan.method}) in {result.seconds:.1f} s", highlight=False)
    if result.comparison:
        console.print(comparison_table(result.comparison, f"INT8 vs FP32 on {plan.val}"))
        if plan.max_drop is not None:
            console.print(result.verdict.message, highlight=False, markup=False)
    else:
        console.print(unchecked_note(fp32_path, plan.calib), style="yellow", highlight=False, markup=False)


def int8_step(fp32_path: Path, plan, *, quiet: bool) -> dict:
    """Calibrate, gate and write the INT8 files of an exported model; returns a JSON-able summary."""
    from stpm_edge.artifact import read_onnx_metadata  # noqa: PLC0415
    from stpm_edge.export.pipeline import int8_summary, prepare_int8, run_int8  # noqa: PLC0415

    metadata = read_onnx_metadata(fp32_path)
    progress = stage_progress(quiet)
    try:
        stage = rich_stages(progress)
        result = run_int8(fp32_path, prepare_int8(plan, metadata, stage), stage)
    finally:
        if progress.live.is_started:
            progress.stop()
    if not quiet:
        print_int8(result, plan, fp32_path)
    return int8_summary(result, plan)


def unchecked_note(fp32_path: Path, calib: Path) -> str:
    """What to say when INT8 was written without an accuracy check."""
    data = str(calib) if (calib / "test").is_dir() else "DATA"
    return (f"accuracy not checked: INT8 can lose accuracy without any error (on one sample model the TensorRT "
            f"form lost 18 pt image AUROC). Compare it with FP32: stpm-eval {fp32_path} {data} --variants, or "
            f"gate it: --val {data} --max-auroc-drop 0.5")


@user_errors("stpm-calibrate")
def calibrate_cmd(
    model: Path = typer.Argument(..., help="The exported FP32 model.onnx (from stpm-export)."),
    calib: Path = typer.Option(..., "--calib", help="Folder of good images (or an MVTec category: its train/good)."),
    calib_method: str = CALIB_METHOD,
    calib_count: int = CALIB_COUNT,
    seed: int = SEED,
    keep_float: Optional[str] = KEEP_FLOAT_OPT,
    int8_forms: str = INT8_FORMS,
    val: Optional[Path] = VAL,
    max_auroc_drop: Optional[float] = MAX_AUROC_DROP,
    device: str = typer.Option("cpu", help="Backend for --val: cpu | cuda | auto."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Calibrate INT8: model.int8.onnx (TensorRT Q/DQ form) and model.int8.cpu.onnx beside MODEL."""
    setup_logging(verbose)
    if model.suffix.lower() != ".onnx":
        raise StpmError(f"{model}: expected the exported model.onnx (run stpm-export first, or use stpm-export --int8)")
    plan = int8_plan(calib, count=calib_count, seed=seed, method=calib_method, keep_float=keep_float,
                     forms=int8_forms, val=val, max_drop=max_auroc_drop, device=device)
    summary = int8_step(model, plan, quiet=json_out)
    if json_out:
        print_json(summary)
