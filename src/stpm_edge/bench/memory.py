"""Resident memory of this process from ``/proc/self/status`` (Linux), with a resettable peak.

Every row of a benchmark runs in the same process, one backend loaded at a time. Before each
row the kernel's high-water mark is reset (``echo 5 > /proc/self/clear_refs``, Linux 4.0+), so
``VmHWM`` afterwards is the peak *during that row*. Where the reset is refused or ``/proc`` is
absent, the peak falls back to ``getrusage(RUSAGE_SELF).ru_maxrss``: the process peak since it
started, which only grows — :func:`peak_method` says which one was used.
"""
from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_reset_works: bool | None = None


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])  # "VmRSS:	  123456 kB"
    except (OSError, ValueError, IndexError):
        return None
    return None


def _maxrss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def rss_mib() -> float | None:
    """Current resident set size in MiB (None where /proc is absent)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def reset_peak() -> bool:
    """Reset the high-water mark to the current RSS; False when the kernel refuses."""
    global _reset_works
    if _reset_works is False:
        return False
    try:
        _CLEAR_REFS.write_text("5")
        _reset_works = True
    except OSError as e:
        logger.debug("cannot reset the RSS high-water mark (%s); peaks are process peaks", e)
        _reset_works = False
    return _reset_works


def peak_mib() -> float:
    """Peak resident set size in MiB since the last successful :func:`reset_peak` (else since start)."""
    kib = _status_kib("VmHWM")
    return kib / 1024 if kib is not None else _maxrss_mib()


def peak_method() -> str:
    if _reset_works:
        return "VmHWM, reset per row (/proc/self/clear_refs)"
    return "ru_maxrss (process peak since start; not reset per row)"
