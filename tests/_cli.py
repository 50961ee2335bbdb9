"""typer's CliRunner with stdout and stderr kept apart on every Click: Click 8.2+ always keeps them
apart, Click 8.1 (the last for Python 3.8 and 3.9) only with ``mix_stderr=False``."""
from __future__ import annotations

import inspect
from typing import Any

import click.testing
import typer.testing


class CliRunner(typer.testing.CliRunner):
    def __init__(self, **kwargs: Any) -> None:
        if "mix_stderr" in inspect.signature(click.testing.CliRunner.__init__).parameters:
            kwargs.setdefault("mix_stderr", False)
        super().__init__(**kwargs)
