"""The one place that imports ``tensorrt``: the import itself, what the imported module offers
(:func:`caps_from_module`, feature checks by name), enum names and the logger.

Everything else in :mod:`stpm_edge.tensorrt` receives the module as an argument (``trt``), so
the decisions run against hand-made fakes in the tests and against the real binding modules in
the conformance test (``tests/test_tensorrt_conformance.py``).

``ILogger`` subclassing follows Polygraphy's ``backend/trt/util.py`` (the pybind trampoline
needs an explicit ``trt.ILogger.__init__(self)``).
"""
from __future__ import annotations

import collections
import logging
import threading
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


# TensorRT keeps one global logger pointer: a Builder/Runtime created with another logger while
# one exists logs into the first ("TensorRT maintains only a single logger pointer at any given
# time", NVIDIA/TensorRT#1475). So there is one logger per process (per tensorrt module object),
# and each operation reads the errors logged since its own mark().
_LOGGERS: dict[int, tuple[Any, Any]] = {}
_LOCK = threading.Lock()
MAX_KEPT_ERRORS = 200
CUDA_HINT = ("check that the NVIDIA driver supports this TensorRT's CUDA (pip install tensorrt now gives "
             "TensorRT for CUDA 13; with a CUDA 12 driver install tensorrt-cu12)")


def make_logger(trt: Any, verbose: bool = False) -> Any:
    """The process-wide ``trt.ILogger`` (one per ``tensorrt`` module), forwarding to :mod:`logging`.

    It keeps the last errors so that failures read as one line: take ``mark = log.mark()``
    before an operation and report ``log.last_error(mark)``. ``verbose`` only ever turns
    TensorRT's INFO/VERBOSE messages on.
    """
    with _LOCK:
        entry = _LOGGERS.get(id(trt))
        if entry is None or entry[0] is not trt:
            entry = (trt, _new_logger(trt))
            _LOGGERS[id(trt)] = entry
    log = entry[1]
    log.verbose = log.verbose or bool(verbose)
    return log


def _new_logger(trt: Any) -> Any:
    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind trampoline: the base must be initialised explicitly
            self.verbose = False
            self.count = 0  # errors logged so far (the kept ones are the last MAX_KEPT_ERRORS)
            self.errors: collections.deque[str] = collections.deque(maxlen=MAX_KEPT_ERRORS)

        def log(self, severity: Any, msg: str) -> None:  # called from C++: must not raise
            sev = enum_name(severity)
            if sev in ("INTERNAL_ERROR", "ERROR"):
                self.errors.append(" ".join(str(msg).split()))
                self.count += 1
                logger.error("TensorRT: %s", msg)
            elif sev == "WARNING":
                logger.warning("TensorRT: %s", msg)
            elif self.verbose:
                logger.debug("TensorRT: %s", msg)

        def mark(self) -> int:
            return self.count

        def errors_since(self, mark: int) -> list[str]:
            n = min(self.count - mark, len(self.errors))
            return list(self.errors)[-n:] if n > 0 else []

        def last_error(self, since: int | None = None) -> str:
            errs = list(self.errors) if since is None else self.errors_since(since)
            return errs[-1][:300] if errs else "see the TensorRT log"

    return _Logger()


def start(trt: Any, factory: str, log: Any) -> Any:
    """``trt.Builder(log)`` / ``trt.Runtime(log)``, or a one-line StpmError when TensorRT cannot start.

    Where CUDA cannot start (no driver, or a driver too old for this TensorRT's CUDA) the
    factory logs errors and then raises ``TypeError: ... factory function returned nullptr``,
    or (the lean runtime) returns an object that crashes on its next call: both end here, with
    TensorRT's first error as the reason.
    """
    mark = log.mark()
    try:
        obj = getattr(trt, factory)(log)
    except Exception as e:  # noqa: BLE001 - pybind's TypeError, or whatever the factory raises
        obj, failure = None, first_line(e)
    else:
        failure = "" if obj is not None else "it returned None"
    errors = log.errors_since(mark)
    if obj is None or errors:
        detail = errors[0][:300] if errors else failure
        raise StpmError(f"TensorRT {getattr(trt, '__version__', '?')} could not start (trt.{factory}: {detail}); "
                        f"{CUDA_HINT}")
    return obj


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
