"""What every CLI verb shares: one-line errors with meaningful exit codes, logging, JSON."""
from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

from stpm_edge.errors import StpmError

EXIT_ERROR = 1  # bad input or a failed operation (one-line message on stderr)
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound="Callable[..., Any]")  # a string: collections.abc.Callable[...] needs Python 3.9
console = Console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", force=True,
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])


def user_errors(prog: str) -> Callable[[F], F]:
    """Turn :class:`StpmError` into ``prog: message`` on stderr and exit 1; Ctrl-C into exit 130."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except StpmError as exc:
                print(f"{prog}: {exc}", file=sys.stderr, flush=True)
                raise typer.Exit(EXIT_ERROR) from None
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr, flush=True)
                raise typer.Exit(EXIT_INTERRUPTED) from None

        return wrapper  # type: ignore[return-value]

    return deco


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def parse_options(items: list[str]) -> dict:
    """``--opt key=value`` (repeatable) → {key: value}; numbers and true/false are converted."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StpmError(f"--opt {item!r}: expected KEY=VALUE")
        v: object = value.strip()
        low = str(v).lower()
        if low in ("true", "false"):
            v = low == "true"
        else:
            for cast in (int, float):
                try:
                    v = cast(value)
                    break
                except ValueError:
                    pass
        out[key.strip()] = v
    return out
