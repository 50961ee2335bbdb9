# The Python code libstpm_edge runs when its embedded interpreter starts (cffi's
# embedding_init_code). It is not a module of the package: stpm_edge.capi.build prepends
# ``_STPM_CONFIG = {...}`` (the build environment's paths) and compiles the text into the
# library.
#
# Order matters: the extern "Python" entry points are attached before anything that can fail,
# so a missing package becomes an STPM_ERROR_RUNTIME status with a message, never a silent 0.
import os
import site
import sys

from _stpm_edge_capi import ffi, lib  # noqa: E402  (the module cffi builds into the library)

_RUNTIME, _INTERNAL = 5, 6  # stpm_status
_state = {"bridge": None}

def _set_error(message):
    try:
        lib.stpm__set_error(" ".join(str(message).split()).encode("utf-8", "replace")[:1000])
    except Exception:  # noqa: BLE001 - nothing may cross into C
        pass


def _onerror(exc_type, exc, tb):
    _set_error(f"internal error in the stpm-edge runtime: {exc_type.__name__}: {exc}")


def _bridge(where):
    """The Bridge, imported on first use (None, with the message set, when it cannot be)."""
    if _state["bridge"] is None:
        try:
            from stpm_edge.capi.bridge import Bridge  # noqa: PLC0415

            _state["bridge"] = Bridge(ffi, _set_error)
        except BaseException as exc:  # noqa: BLE001
            _set_error(f"{where}: cannot import stpm_edge in the embedded Python {sys.version.split()[0]} "
                       f"({type(exc).__name__}: {exc}); the library was built from {_STPM_CONFIG['python']}: "  # noqa: F821
                       "rebuild it with `stpm capi build` from the environment that has stpm-edge")
            return None
    return _state["bridge"]


@ffi.def_extern(error=_INTERNAL, onerror=_onerror)
def stpm__py_create(path, backend, threshold, threads, out_id):
    b = _bridge("stpm_detector_create")
    return _RUNTIME if b is None else b.create(path, backend, threshold, threads, out_id)


@ffi.def_extern(error=_INTERNAL, onerror=_onerror)
def stpm__py_infer(handle, pixels, width, height, stride, fmt, result, map_out):
    b = _bridge("stpm_detector_infer")
    return _RUNTIME if b is None else b.infer(handle, pixels, width, height, stride, fmt, result, map_out)


@ffi.def_extern(error=_INTERNAL, onerror=_onerror)
def stpm__py_info(handle, info):
    b = _bridge("stpm_detector_get_info")
    return _RUNTIME if b is None else b.info(handle, info)


@ffi.def_extern(error=_INTERNAL, onerror=_onerror)
def stpm__py_destroy(handle):
    b = _bridge("stpm_detector_destroy")
    return _RUNTIME if b is None else b.destroy(handle)


# A C host has no argv; some libraries read sys.argv[0].
if not getattr(sys, "argv", None):
    sys.argv = ["libstpm_edge"]

# The interpreter in this process is the build interpreter's base installation: put the
# build environment (a virtualenv, user site, an editable checkout) on its path.
for _d in _STPM_CONFIG["site_dirs"]:  # noqa: F821 - prepended by the build
    if os.path.isdir(_d) and _d not in sys.path:
        site.addsitedir(_d)  # also runs the .pth files (editable installs)
for _d in _STPM_CONFIG["extra_paths"]:  # noqa: F821
    if os.path.isdir(_d) and _d not in sys.path:
        sys.path.append(_d)
