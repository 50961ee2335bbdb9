"""Run a console script as a user would, and check the contract every failure must keep:
a non-zero exit code, exactly one line on stderr, no traceback, nothing new left on disk."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run(prog: str, *args: str, cwd: Path | None = None, timeout: float = 240.0) -> Outcome:
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([str(BIN / prog), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return Outcome(p.returncode, p.stdout, p.stderr)


def snapshot(*folders: Path) -> dict[str, int]:
    """Every file below ``folders`` with its size (what a failed command must not change)."""
    out = {}
    for folder in folders:
        if Path(folder).exists():
            for p in sorted(Path(folder).rglob("*")):
                out[str(p)] = p.stat().st_size if p.is_file() else -1
    return out


def assert_one_line_failure(o: Outcome, prog: str, *, code: int = 1, match: str | None = None) -> None:
    lines = [ln for ln in o.stderr.splitlines() if ln.strip()]
    assert o.code == code, (o.code, o.stderr)
    assert "Traceback" not in o.stderr, o.stderr
    assert len(lines) == 1, f"stderr has {len(lines)} lines:\n{o.stderr}"
    assert lines[0].startswith(prog.split()[0]), lines[0]
    if match is not None:
        assert match in lines[0], lines[0]


def _has_loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text(errors="replace")
    except OSError:  # no /proc (or the process is gone): fall back to the delay alone
        return True


def interrupt_after(prog: str, args: list[str], seconds: float, cwd: Path | None = None,
                    once_loaded: str | None = None) -> Outcome:
    """Start the command, send SIGINT after ``seconds`` (Ctrl-C), collect what it said.

    ``once_loaded``: first wait (up to 120 s) until the process has mapped a shared library whose
    path contains this text (e.g. ``libtorch``), so that the signal lands in the command's own
    start-up, whatever the machine's load, and never in the Python interpreter's own start-up,
    before any code of ours runs (there Ctrl-C is the interpreter's, a KeyboardInterrupt)."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    # A test run started in the background (nohup, `cmd &` in a script) ignores SIGINT, and so would
    # the child, whose Python then never turns Ctrl-C into KeyboardInterrupt: give it the default.
    p = subprocess.Popen([str(BIN / prog), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if once_loaded is not None:
        deadline = time.monotonic() + 120
        while p.poll() is None and not _has_loaded(p.pid, once_loaded) and time.monotonic() < deadline:
            time.sleep(0.01)
    time.sleep(seconds)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=240)
    return Outcome(p.returncode, out, err)
