"""The methods stpm-edge knows: ``arch`` name → the module that defines it (imported on use)."""
from __future__ import annotations

import importlib

from stpm_edge.errors import StpmError

# One line per method: name → "module:Class".
METHODS: dict[str, str] = {
    "stpm": "stpm_edge.models.stpm.method:STPMMethod",
    "cfa": "stpm_edge.models.cfa.method:CFAMethod",
    "rstpm": "stpm_edge.models.rstpm.method:RSTPMMethod",
    "dmdd": "stpm_edge.models.dmdd.method:DMDDMethod",
}
DEFAULT_METHOD = "stpm"

_cache: dict = {}


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def get_method(name: str):
    """The :class:`~stpm_edge.models.method.Method` registered as ``name`` (one-line StpmError)."""
    key = str(name).strip().lower()
    if key not in METHODS:
        raise StpmError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    if key not in _cache:
        module, _, cls = METHODS[key].partition(":")
        _cache[key] = getattr(importlib.import_module(module), cls)()
    return _cache[key]
