"""Per-verb console scripts (``stpm-run``, ``stpm-train``, ...), each importing only its own verb.

``stpm-run`` on a Jetson should not pay for PyTorch (training, export) at start-up; the
umbrella ``stpm`` command (:mod:`stpm_edge.cli.app`) imports every verb.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Iterator

CONTEXT = {"help_option_names": ["-h", "--help"]}
EXIT_INTERRUPTED = 130

# Native libraries' own stderr chatter (FFmpeg inside OpenCV: "moov atom not found",
# "[tcp @ ...] Connection refused", ...): our one-line errors say what went wrong. Set before
# OpenCV is imported; a user's own setting wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
# OpenMP threads (PyTorch's libgomp) that wait for work spin ~300k iterations by default; when
# other processes share the cores, the spinning threads take the CPU from the one doing the
# work. Measured (BENCHMARKS.md, "Training on a busy machine"): 4 epochs took 25–136 s instead
# of 5–6 s with two other CPU-bound processes on 2 cores; with a short spin, 6–12 s, at no
# measurable cost on a quiet machine. Set before PyTorch is imported; a user's setting wins.
os.environ.setdefault("GOMP_SPINCOUNT", "3000")
os.environ.setdefault("KMP_BLOCKTIME", "1")  # the same for Intel OpenMP builds (ms before sleeping)


def guarded(prog: str, start) -> None:
    """Run ``start()`` so that Ctrl-C at any time, even while the command's imports run, ends
    with ``prog: interrupted`` and exit code 130 instead of a traceback."""
    try:
        start()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C while the command's libraries load, and act on it right after.

    A KeyboardInterrupt raised in the middle of a C extension's initialisation (PyTorch, NumPy,
    ONNX Runtime) can crash the process (seen: SIGSEGV, SIGABRT with a traceback from enum.py)
    instead of reaching :func:`guarded`. Here SIGINT only sets a flag until the imports are
    done; then it is raised as a KeyboardInterrupt, which :func:`guarded` turns into
    ``prog: interrupted`` and exit code 130."""
    pending: list[int] = []
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started ignoring Ctrl-C (nohup, `cmd &`): keep it so
        yield
        return
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except ValueError:  # not the main thread (embedded use): nothing to defer
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def single(module: str, command: str, prog: str) -> None:
    """Run ``stpm_edge.cli.<module>.<command>`` as a one-command Typer app named ``prog``."""
    def start() -> None:
        with deferred_interrupt():
            import typer  # noqa: PLC0415

            fn = getattr(importlib.import_module(f"stpm_edge.cli.{module}"), command)
        app = typer.Typer(name=prog, context_settings=CONTEXT, add_completion=False)
        app.command()(fn)
        app(prog_name=prog)

    guarded(prog, start)


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


def stpm_main() -> None:
    """The umbrella ``stpm`` command; its imports run under the Ctrl-C guard."""
    def start() -> None:
        with deferred_interrupt():
            app = importlib.import_module("stpm_edge.cli.app")
        app.main()

    guarded("stpm", start)
