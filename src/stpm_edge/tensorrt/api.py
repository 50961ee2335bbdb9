"""The one place that imports ``tensorrt``: the import itself, what the imported module offers
(:func:`caps_from_module`, feature checks by name), enum names and the logger.

Everything else in :mod:`stpm_edge.tensorrt` receives the module as an argument (``trt``), so
the decisions run against hand-made fakes in the tests and against the real binding modules in
the conformance test (``tests/test_tensorrt_conformance.py``).

``ILogger`` subclassing follows Polygraphy's ``backend/trt/util.py`` (the pybind trampoline
needs an explicit ``trt.ILogger.__init__(self)``).
"""
from __future__ import annotations

import logging
from typing import Any

from stpm_edge.errors import StpmError, first_line
from stpm_edge.tensorrt.engine_meta import parse_trt_version
from stpm_edge.tensorrt.plan import CALIBRATOR_CLASSES, TrtCaps

# TensorRT's own messages keep the logger name they had in runtime/backends/tensorrt.py: stpm-run,
# stpm-eval --compare and stpm-bench quiet "stpm_edge.runtime.backends" by that name.
logger = logging.getLogger("stpm_edge.runtime.backends.tensorrt")

INSTALL_HINT = "pip install 'stpm-edge[tensorrt]' on a desktop; on Jetson it comes with JetPack"


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a one-line StpmError saying how to install it.

    A ``tensorrt`` without ``__version__`` is refused too: an empty namespace package
    (``tensorrt-stubs`` installed alone, or any folder named ``tensorrt`` on the path) imports
    fine and would fail later with ``AttributeError: module 'tensorrt' has no attribute ...``.
    """
    try:
        import tensorrt  # noqa: PLC0415
    except Exception as e:  # noqa: BLE001 - ImportError, or OSError from a missing libnvinfer
        raise StpmError(f"tensorrt is not installed ({first_line(e)}); {INSTALL_HINT}") from None
    if getattr(tensorrt, "__version__", None) is None:
        where = getattr(tensorrt, "__file__", None) or ", ".join(getattr(tensorrt, "__path__", None) or []) or "?"
        raise StpmError(f"tensorrt is not installed (the 'tensorrt' found at {where} is not TensorRT: it has no "
                        f"__version__, e.g. tensorrt-stubs alone or a folder named tensorrt); {INSTALL_HINT}")
    return tensorrt


def enum_name(value: Any) -> str:
    """An enum value's member name (``DataType.FLOAT`` → ``FLOAT``)."""
    return str(getattr(value, "name", None) or str(value).rsplit(".", 1)[-1])


def make_logger(trt: Any, verbose: bool = False) -> Any:
    """A ``trt.ILogger`` forwarding to :mod:`logging` that keeps the errors for one-line messages."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind trampoline: the base must be initialised explicitly
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:  # called from C++: must not raise
            sev = enum_name(severity)
            if sev in ("INTERNAL_ERROR", "ERROR"):
                self.errors.append(" ".join(str(msg).split()))
                logger.error("TensorRT: %s", msg)
            elif sev == "WARNING":
                logger.warning("TensorRT: %s", msg)
            elif verbose:
                logger.debug("TensorRT: %s", msg)

        def last_error(self) -> str:
            return self.errors[-1][:300] if self.errors else "see the TensorRT log"

    return _Logger()


def _members(enum: Any) -> frozenset[str]:
    members = getattr(enum, "__members__", None)
    return frozenset(members) if members else frozenset()


def caps_from_module(trt: Any) -> TrtCaps:
    """What the imported TensorRT offers, by feature checks (names, never flag values)."""
    config_cls = getattr(trt, "IBuilderConfig", None)
    pool = getattr(trt, "MemoryPoolType", None)
    return TrtCaps(
        version=parse_trt_version(trt.__version__),
        network_flags=_members(getattr(trt, "NetworkDefinitionCreationFlag", None)),
        builder_flags=_members(getattr(trt, "BuilderFlag", None)),
        calibrators=frozenset(n for n in CALIBRATOR_CLASSES.values() if hasattr(trt, n)),
        memory_pool=pool is not None and hasattr(pool, "WORKSPACE") and hasattr(config_cls, "set_memory_pool_limit"),
        optimization_level=hasattr(config_cls, "builder_optimization_level"),
        timing_cache=hasattr(config_cls, "create_timing_cache") and hasattr(config_cls, "set_timing_cache"),
        calibration_profile=hasattr(config_cls, "set_calibration_profile"),
    )
