"""The console scripts' environment defaults: set before native libraries load, a user's own wins."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import os, stpm_edge.cli.entry; print(os.environ['GOMP_SPINCOUNT'], os.environ['KMP_BLOCKTIME'], " \
        "os.environ['OPENCV_FFMPEG_LOGLEVEL'])"


def _probe(**env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_short_openmp_spin_by_default_and_the_users_setting_wins():
    assert _probe()[:2] == ["3000", "1"]  # idle OpenMP threads stop spinning soon (busy machines, BENCHMARKS.md)
    assert _probe(GOMP_SPINCOUNT="INFINITY", KMP_BLOCKTIME="200")[:2] == ["INFINITY", "200"]


def test_entry_imports_no_torch():
    code = "import sys, stpm_edge.cli.entry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # so the OpenMP settings above are in place before PyTorch loads


def test_ctrl_c_while_libraries_load_is_held_until_they_are_loaded():
    import signal
    import time

    from stpm_edge.cli.entry import deferred_interrupt

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own (a test run under nohup has none)
    try:
        reached_end = False
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupt():
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the imports
                time.sleep(0.05)
                reached_end = True  # the imports were not cut off half-way
        assert reached_end and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with deferred_interrupt():  # no Ctrl-C: nothing raised
            pass
    finally:
        signal.signal(signal.SIGINT, outer)


def test_an_ignored_ctrl_c_stays_ignored():
    import signal

    from stpm_edge.cli.entry import deferred_interrupt

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup
    try:
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
