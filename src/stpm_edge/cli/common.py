"""What every CLI verb shares: one place that turns every exception into a one-line error with
a meaningful exit code, logging that stays quiet on failure, JSON output.

Exit codes: 0 ok, 1 error (one line on stderr), 2 usage (Click), 130 Ctrl-C.

Log lines (INFO/WARNING) are held back until the command has started its real work
(:func:`work_started`) or has succeeded, so that a command failing on bad input prints
exactly one line; ``-v`` shows everything at once, with the traceback of an unexpected error.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click
import typer
from rich.console import Console
from rich.logging import RichHandler

from stpm_edge.errors import StpmError

EXIT_ERROR = 1  # bad input or a failed operation (one-line message on stderr)
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound="Callable[..., Any]")  # a string: collections.abc.Callable[...] needs Python 3.9
console = Console(stderr=True, markup=False)  # text from files and users is data, never markup


class _HeldHandler(logging.Handler):
    """Holds records until released (then passes them, and every later one, to ``target``)."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__(logging.DEBUG)
        self.target = target
        self.held: list[logging.LogRecord] | None = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is None:
            self.target.handle(record)
        else:
            self.held.append(record)

    def flush_held(self) -> None:  # (not ``release``: that is logging.Handler's lock method)
        held, self.held = self.held, None
        for record in held or ():
            self.target.handle(record)

    def drop(self) -> None:
        self.held = []


_held: _HeldHandler | None = None


def quiet_native_libraries() -> None:
    """OpenCV's and FFmpeg's own stderr lines: our one-line errors say what went wrong."""
    try:
        import cv2  # noqa: PLC0415

        cv2.setLogLevel(0)  # silent
    except Exception:  # noqa: BLE001 - optional
        pass


def setup_logging(verbose: bool = False) -> None:
    global _held
    target = RichHandler(console=console, show_path=False, show_time=False, markup=False)
    handler: logging.Handler = target
    _held = None
    if not verbose:
        _held = handler = _HeldHandler(target)
        quiet_native_libraries()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", force=True,
                        handlers=[handler])


def work_started() -> None:
    """The command passed its checks and does its real work: show held and later log lines live."""
    if _held is not None:
        _held.flush_held()


def one_line(exc: BaseException) -> str:
    """An unexpected exception as one line a user can act on."""
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        if exc.errno == errno.ENOSPC:
            return f"{where}no space left on the device; nothing half-written was left behind"
        return f"{where}{exc.strerror or type(exc).__name__}"
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, RecursionError):
        return "input nested too deeply"
    text = " ".join(str(exc).split())[:300]
    return f"internal error: {type(exc).__name__}: {text} (run with -v for the traceback)"


def user_errors(prog: str) -> Callable[[F], F]:
    """Every exception leaving a command → ``prog: message`` on stderr and exit 1; Ctrl-C → 130."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            verbose = bool(kwargs.get("verbose"))
            try:
                out = fn(*args, **kwargs)
            except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, typer.Exit,
                    typer.Abort, SystemExit):
                raise  # usage errors (exit 2) and explicit exits are Click's
            except StpmError as exc:
                _fail()
                print(f"{prog}: {exc}", file=sys.stderr, flush=True)
                raise typer.Exit(EXIT_ERROR) from None
            except KeyboardInterrupt as exc:
                _fail()
                said = " ".join(str(exc).split()) if isinstance(exc.args[:1], tuple) and exc.args else ""
                print(f"{prog}: {said or 'interrupted'}", file=sys.stderr, flush=True)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except Exception as exc:  # noqa: BLE001 - the one place that turns anything into one line
                _fail()
                if verbose:
                    traceback.print_exc(file=sys.stderr)
                print(f"{prog}: {one_line(exc)}", file=sys.stderr, flush=True)
                raise typer.Exit(EXIT_ERROR) from None
            work_started()
            return out

        return wrapper  # type: ignore[return-value]

    return deco


def _fail() -> None:
    if _held is not None:
        _held.drop()


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
