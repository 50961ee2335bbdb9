"""Bounded run statistics: latency percentiles from a fixed-size reservoir, process memory.

Nothing here grows with the number of frames: a :class:`LatencyStats` keeps ``capacity``
samples (uniform reservoir sampling, Vitter's algorithm R, seeded), plus exact count, mean
and max, so a week-long run costs the same memory as a minute.
"""
from __future__ import annotations

import os
import random
import sys

import numpy as np

RESERVOIR = 4096


class LatencyStats:
    """Seconds in, milliseconds out: ``p50``, ``p99``, ``mean``, ``max`` over every sample added."""

    def __init__(self, capacity: int = RESERVOIR, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._samples = np.empty(capacity, dtype=np.float64)
        self._rng = random.Random(seed)
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)
        if self.count <= self.capacity:
            self._samples[self.count - 1] = seconds
        else:
            j = self._rng.randrange(self.count)
            if j < self.capacity:
                self._samples[j] = seconds

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile in seconds (``None`` before the first sample)."""
        n = min(self.count, self.capacity)
        if n == 0:
            return None
        return float(np.percentile(self._samples[:n], q))

    def summary(self) -> dict[str, float | int | None]:
        """``{"p50", "p99", "mean", "max"}`` in ms (rounded to µs) and ``count``."""
        def ms(v: float | None) -> float | None:
            return None if v is None else round(1000.0 * v, 3)

        return {"p50": ms(self.percentile(50)), "p99": ms(self.percentile(99)),
                "mean": ms(self.total / self.count if self.count else None), "max": ms(self.max if self.count else None),
                "count": self.count}


class Ema:
    """Exponential moving average (for the HUD's FPS and latency)."""

    def __init__(self, weight: float = 0.1) -> None:
        self.weight = weight
        self.value: float | None = None

    def add(self, x: float) -> float:
        self.value = x if self.value is None else self.value + self.weight * (x - self.value)
        return self.value


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        import resource  # noqa: PLC0415 - POSIX only

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def is_rss_mark(n: int) -> bool:
    """Frame counts at which memory is recorded: 100, 1000, 10000, ... (powers of ten from 100)."""
    if n < 100:
        return False
    while n % 10 == 0:
        n //= 10
    return n == 1
