"""The C ABI: ``libstpm_edge.so`` around :class:`stpm_edge.runtime.Detector` (``stpm capi build``).

``stpm_edge.h`` (shipped here) is the contract; ``shim.c`` is its C side, ``bridge.py`` its Python
side, ``_embedded_init.py`` the code the library runs when its interpreter starts, and
``build.py`` compiles them with cffi's embedding mode.
"""
from __future__ import annotations

from pathlib import Path

HEADER_PATH = Path(__file__).resolve().parent / "stpm_edge.h"

__all__ = ["HEADER_PATH"]
