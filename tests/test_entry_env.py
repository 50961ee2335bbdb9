"""The console scripts' environment defaults: set before native libraries load, a user's own wins."""
from __future__ import annotations

import os
import subprocess
import sys

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
