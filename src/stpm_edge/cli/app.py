"""The ``stpm`` umbrella command and the per-verb console scripts (``stpm-train``, ``stpm-eval``, ``stpm-export``)."""
from __future__ import annotations

import typer

from stpm_edge import __version__
from stpm_edge.cli.data import data_app
from stpm_edge.cli.eval import eval_cmd
from stpm_edge.cli.export import export_cmd
from stpm_edge.cli.info import info_cmd
from stpm_edge.cli.train import train_cmd

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(name="stpm", no_args_is_help=True, context_settings=CONTEXT, add_completion=False,
                  help="stpm-edge: train, evaluate and deploy student-teacher (STPM) anomaly detectors.")
app.command("train")(train_cmd)
app.command("eval")(eval_cmd)
app.command("export")(export_cmd)
app.command("info")(info_cmd)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stpm-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """stpm-edge command line."""


def _single(fn, name: str) -> typer.Typer:
    single = typer.Typer(name=name, context_settings=CONTEXT, add_completion=False)
    single.command()(fn)
    return single


def main() -> None:
    app()


def train_main() -> None:
    _single(train_cmd, "stpm-train")(prog_name="stpm-train")


def eval_main() -> None:
    _single(eval_cmd, "stpm-eval")(prog_name="stpm-eval")


def export_main() -> None:
    _single(export_cmd, "stpm-export")(prog_name="stpm-export")
