"""The ``stpm`` umbrella command and the per-verb console scripts (``stpm-train``, ``stpm-run``, ...)."""
from __future__ import annotations

import typer

from stpm_edge import __version__
from stpm_edge.cli.bench import bench_cmd
from stpm_edge.cli.calibrate import calibrate_cmd
from stpm_edge.cli.capi import capi_app
from stpm_edge.cli.data import data_app
from stpm_edge.cli.eval import eval_cmd
from stpm_edge.cli.export import export_cmd
from stpm_edge.cli.import_ import import_app
from stpm_edge.cli.info import info_cmd
from stpm_edge.cli.run import run_cmd
from stpm_edge.cli.train import train_cmd

# The per-verb console scripts live in cli/entry.py (lazy imports); re-exported here.
from stpm_edge.cli.entry import (CONTEXT, bench_main, calibrate_main, eval_main, export_main, run_main,
                                 train_main)

__all__ = ["app", "main", "train_main", "eval_main", "export_main", "calibrate_main", "run_main",
           "bench_main"]

app = typer.Typer(name="stpm", no_args_is_help=True, context_settings=CONTEXT, add_completion=False,
                  help="stpm-edge: train, evaluate and deploy student-teacher (STPM) anomaly detectors.")
app.command("train")(train_cmd)
app.command("eval")(eval_cmd)
app.command("export")(export_cmd)
app.command("calibrate")(calibrate_cmd)
app.command("run")(run_cmd)
app.command("bench")(bench_cmd)
app.command("info")(info_cmd)
app.add_typer(data_app, name="data")
app.add_typer(capi_app, name="capi")
app.add_typer(import_app, name="import")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stpm-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """stpm-edge command line."""


def main() -> None:
    app()

