"""``stpm-bench MODEL``: speed of every backend × precision × batch of one model, side by side with
the PyTorch eager reference of the same checkpoint, in one run (see :mod:`stpm_edge.bench`)."""
from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stpm_edge.bench.plan import BACKENDS, DEVICES, PRECISIONS
from stpm_edge.cli.common import console, print_json, setup_logging, user_errors
from stpm_edge.errors import StpmError


def parse_choices(text: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    """'a,b' → ('a', 'b'), each checked against ``allowed`` (order kept, duplicates dropped)."""
    items = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise StpmError(f"{option} {text!r}: expected a comma-separated list of {', '.join(allowed)}")
    return items


def parse_batches(text: str, option: str = "--batch") -> tuple[int, ...]:
    try:
        items = tuple(dict.fromkeys(int(t) for t in text.split(",") if t.strip()))
    except ValueError:
        items = ()
    if not items or any(b < 1 for b in items):
        raise StpmError(f"{option} {text!r}: expected comma-separated positive integers, e.g. 1,4")
    return items


@user_errors("stpm-bench")
def bench_cmd(
    models: List[str] = typer.Argument(..., metavar="MODEL...", help="An exported model.onnx (its variants and "
                                       "engines are found beside it by name), a model.pt checkpoint (exported into a "
                                       "temporary folder first), or a triton://HOST:PORT/NAME model on a Triton "
                                       "server. Several: each is benchmarked with the same settings in this run, "
                                       "then one table sets their rows side by side."),
    backends: str = typer.Option(",".join(BACKENDS), help="Comma-separated: torch (the PyTorch eager reference), "
                                 "onnxruntime, tensorrt."),
    precisions: str = typer.Option(",".join(PRECISIONS), help="Comma-separated: fp32, fp16, int8 (INT8: both ONNX "
                                   "forms, model.int8.onnx for TensorRT and model.int8.cpu.onnx for ORT x86)."),
    batch: str = typer.Option("1", "--batch", help="Comma-separated batch sizes, e.g. 1,4."),
    streams: str = typer.Option("1", "--streams", help="Comma-separated client counts, e.g. 1,4: each row also with N "
                                "threads calling the one loaded model at once (N cameras; per-call latency as each "
                                "client sees it, throughput of all)."),
    device: str = typer.Option("auto", help="auto (cuda when PyTorch sees a GPU, else cpu), cpu, cuda or cpu,cuda."),
    warmup: int = typer.Option(10, help="Untimed calls before each row."),
    iters: int = typer.Option(50, help="Timed calls per row."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for PyTorch, ONNX Runtime and the peak "
                                          "measurement (default: all usable CPUs)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint of the PyTorch reference (default: the file "
                                              "named in the model's metadata, beside it)."),
    calib: Optional[Path] = typer.Option(None, help="MODEL.pt only: calibration images to make the INT8 variants."),
    calib_count: Optional[int] = typer.Option(None, help="MODEL.pt only: number of calibration images."),
    work_dir: Optional[Path] = typer.Option(None, help="MODEL.pt only: keep the exported files here."),
    cuda_graphs: bool = typer.Option(True, "--cuda-graphs/--no-cuda-graphs", help="On CUDA, also time PyTorch and "
                                     "TensorRT replayed from CUDA graphs."),
    isolate: bool = typer.Option(False, "--isolate", help="Run each backend in a fresh process: its peak RSS is "
                                 "then its own, untouched by earlier rows (about 3 s more per backend)."),
    peak: bool = typer.Option(True, "--peak/--no-peak", help="Measure the matrix-multiply peak (a few seconds)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the report as markdown on stdout."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Benchmark MODEL: latency p50/p90/p99, frames/s, peak RSS, speed against PyTorch eager, GFLOP/s against
    the machine's measured matmul peak — for every backend × precision × batch available; the others are listed
    with the reason. Several models: the same for each, then their rows side by side. Progress goes to stderr;
    the table (or --json / --markdown) to stdout."""
    setup_logging(verbose)
    if not verbose:  # one INFO line per opened backend is noise here; the table says what ran
        logging.getLogger("stpm_edge.runtime").setLevel(logging.WARNING)
    from stpm_edge.bench import report as fmt  # noqa: PLC0415
    from stpm_edge.bench.runner import BenchConfig  # noqa: PLC0415

    if json_out and markdown:
        raise StpmError("--json and --markdown: choose one")
    from stpm_edge.runtime.backends.triton import is_triton_uri  # noqa: PLC0415

    targets: list[Path | str] = [m if is_triton_uri(m) else Path(m) for m in models]
    if any((isinstance(t, str) or t.suffix.lower() == ".onnx") for t in targets) and (
            calib is not None or work_dir is not None or calib_count is not None):
        raise StpmError("--calib, --calib-count and --work-dir apply when MODEL is a checkpoint (.pt)")
    if len(targets) > 1 and checkpoint is not None:
        raise StpmError("--checkpoint names the reference of one MODEL; with several, each finds its own")
    if len(set(map(str, targets))) != len(targets):
        raise StpmError("the same MODEL is named twice")
    devices = tuple(d for d in parse_choices(device, ("auto", *DEVICES), "--device"))
    chosen = (parse_choices(backends, BACKENDS, "--backends"), parse_choices(precisions, PRECISIONS, "--precisions"),
              parse_batches(batch), devices)
    configs = []
    for k, target in enumerate(targets):
        folder = work_dir if work_dir is None or len(targets) == 1 else work_dir / f"{k + 1}-{Path(str(target)).stem}"
        configs.append(BenchConfig(
            target, checkpoint, *chosen, warmup, iters, threads, cuda_graphs, calib, calib_count, measure_peak=peak,
            isolate=isolate, work_dir=folder, streams=parse_batches(streams, "--streams")).validated())
    results = []
    for k, cfg in enumerate(configs):
        prefix = f"[model {k + 1}/{len(configs)}: {cfg.model}] " if len(configs) > 1 else ""
        results.append(_run_one(cfg, prefix))
    command = "stpm-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for result in results:
        result["command"] = command
        for w in result["warnings"]:
            console.print(f"warning: {w}", style="yellow", highlight=False)
    if len(results) > 1:
        from stpm_edge import __version__  # noqa: PLC0415
        from stpm_edge.bench import compare  # noqa: PLC0415

        both = compare.bench_set(results, __version__, command)
        if json_out:
            print_json(both)
            return
        if markdown:
            sys.stdout.write("\n".join(fmt.markdown(r, heading=f"### {r['model']['path']}") for r in results))
            sys.stdout.write("\n### Side by side\n\n" + compare.comparison_markdown(both["comparison"]))
            return
        out = Console() if sys.stdout.isatty() else Console(width=200)
        for r in results:
            _print_report(out, r, fmt)
        out.print(compare.comparison_table(both["comparison"]))
        return
    result = results[0]
    if json_out:
        print_json(result)
        return
    if markdown:
        sys.stdout.write(fmt.markdown(result))
        return
    out = Console() if sys.stdout.isatty() else Console(width=200)  # no wrapping when redirected to a file
    _print_report(out, result, fmt)


def _run_one(cfg, prefix: str):
    """One model's benchmark, with a progress bar on a terminal and plain lines otherwise."""
    from stpm_edge.bench.runner import run_bench  # noqa: PLC0415

    if console.is_terminal:
        with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task(prefix + "starting", total=None)

            def status(text: str, done: int, total: int) -> None:
                progress.update(task, description=prefix + text, completed=done, total=total or None)

            return run_bench(cfg, status)

    def plain(text: str, done: int, total: int) -> None:
        print(f"stpm-bench: {prefix}[{done}/{total}] {text}" if total else f"stpm-bench: {prefix}{text}",
              file=sys.stderr, flush=True)

    return run_bench(cfg, plain)


def _print_report(out: Console, result, fmt) -> None:
    for part in fmt.rich_tables(result):
        out.print(part)
    out.print(f"model: {fmt.model_line(result)}", highlight=False)
    out.print(fmt.peaks_line(result), highlight=False)
    out.print(f"machine: {fmt.machine_line(result)}", highlight=False)
