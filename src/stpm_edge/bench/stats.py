"""Latency statistics of one timed loop (pure functions)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks.

    The same definition as ``numpy.percentile(values, q)`` (its default "linear" method):
    rank ``r = q/100 * (n-1)``, value ``v[floor(r)] + (r - floor(r)) * (v[ceil(r)] - v[floor(r)])``.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q}: expected 0..100")
    v = sorted(float(x) for x in values)
    r = q / 100.0 * (len(v) - 1)
    lo, hi = math.floor(r), math.ceil(r)
    return v[lo] + (r - lo) * (v[hi] - v[lo])


@dataclass(frozen=True)
class LatencySummary:
    """Per-call latency of ``iters`` calls of ``batch`` frames each, in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float
    iters: int
    batch: int
    wall_s: float  # the whole timed loop
    cpu_s: float  # process CPU time over the timed loop (all threads)

    @property
    def throughput_fps(self) -> float:
        """Frames per second over the whole timed loop (``iters * batch / wall``)."""
        return self.iters * self.batch / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def ms_per_frame(self) -> float:
        return self.p50 / self.batch

    @property
    def cpu_ms_per_frame(self) -> float:
        """Process CPU time per frame: less sensitive to other load than wall-clock rates."""
        return 1000.0 * self.cpu_s / (self.iters * self.batch) if self.iters else float("nan")

    def to_dict(self) -> dict:
        d = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        d["throughput_fps"] = round(self.throughput_fps, 3)
        d["ms_per_frame"] = round(self.ms_per_frame, 4)
        d["cpu_ms_per_frame"] = round(self.cpu_ms_per_frame, 4)
        return d


def summarize(latencies_s: Sequence[float], batch: int, wall_s: float, cpu_s: float = float("nan")) -> LatencySummary:
    """Summarise per-call latencies given in **seconds** (reported in ms)."""
    if not latencies_s:
        raise ValueError("no latencies to summarise")
    ms = [1000.0 * t for t in latencies_s]
    return LatencySummary(p50=percentile(ms, 50), p90=percentile(ms, 90), p99=percentile(ms, 99),
                          mean=sum(ms) / len(ms), min=min(ms), max=max(ms), iters=len(ms), batch=int(batch),
                          wall_s=float(wall_s), cpu_s=float(cpu_s))
