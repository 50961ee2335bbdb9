"""Per-verb console scripts (``stpm-run``, ``stpm-train``, ...), each importing only its own verb.

``stpm-run`` on a Jetson should not pay for PyTorch (training, export) at start-up; the
umbrella ``stpm`` command (:mod:`stpm_edge.cli.app`) imports every verb.
"""
from __future__ import annotations

import importlib

import typer

CONTEXT = {"help_option_names": ["-h", "--help"]}


def single(module: str, command: str, prog: str) -> None:
    """Run ``stpm_edge.cli.<module>.<command>`` as a one-command Typer app named ``prog``."""
    fn = getattr(importlib.import_module(f"stpm_edge.cli.{module}"), command)
    app = typer.Typer(name=prog, context_settings=CONTEXT, add_completion=False)
    app.command()(fn)
    app(prog_name=prog)


def train_main() -> None:
    single("train", "train_cmd", "stpm-train")


def eval_main() -> None:
    single("eval", "eval_cmd", "stpm-eval")


def export_main() -> None:
    single("export", "export_cmd", "stpm-export")


def calibrate_main() -> None:
    single("calibrate", "calibrate_cmd", "stpm-calibrate")


def run_main() -> None:
    single("run", "run_cmd", "stpm-run")


def bench_main() -> None:
    single("bench", "bench_cmd", "stpm-bench")
