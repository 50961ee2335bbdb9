"""Build ``libstpm_edge.so`` (cffi embedding mode), its header and a pkg-config file.

    PREFIX/include/stpm_edge.h
    PREFIX/lib/libstpm_edge.so          links libpythonX.Y by rpath; embeds the build environment
    PREFIX/lib/pkgconfig/stpm_edge.pc   PKG_CONFIG_PATH=PREFIX/lib/pkgconfig

The library is tied to the Python environment it was built from (a virtualenv, conda, the
system): its interpreter's shared libpython is found through an rpath, and the environment's
site-packages are put on ``sys.path`` by the embedded init code, so a C program needs no
environment variables. Rebuild after moving or recreating that environment.

Decisions (what to link, what to compile, the pkg-config text) are pure functions; only
:func:`build_library` compiles and writes, into a temporary folder first, so a failed build
leaves nothing in ``PREFIX``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import site
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stpm_edge import __version__
from stpm_edge.errors import StpmError, first_line

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
HEADER = HERE / "stpm_edge.h"
SHIM = HERE / "shim.c"
INIT_CODE = HERE / "_embedded_init.py"
MODULE = "_stpm_edge_capi"
LIBRARY = "libstpm_edge.so"

# The Python side of the shim (shim.c forward-declares the same signatures).
EXTERN_DECLS = """
extern "Python" int stpm__py_create(const char *path, const char *backend, double threshold, int32_t threads,
                                    uint64_t *out_id);
extern "Python" int stpm__py_infer(uint64_t id, const uint8_t *pixels, int32_t width, int32_t height,
                                   int32_t stride, int32_t fmt, stpm_result *result, float *map_out);
extern "Python" int stpm__py_info(uint64_t id, stpm_detector_info *info);
extern "Python" int stpm__py_destroy(uint64_t id);
void stpm__set_error(const char *message);
"""


@dataclass(frozen=True)
class PythonLink:
    """How to link the running interpreter's shared libpython."""

    include_dir: str
    lib_dir: str
    lib_name: str  # e.g. python3.11 (for -lpython3.11)
    version: str


def header_types(header_text: str) -> str:
    """The plain-C declarations between ``/* cffi:begin`` and ``/* cffi:end */`` of the header."""
    try:
        body = header_text.split("/* cffi:begin", 1)[1].split("/* cffi:end */", 1)[0]
    except IndexError:
        raise StpmError(f"{HEADER}: no cffi:begin/cffi:end section (a damaged installation?)") from None
    return body.split("*/", 1)[1]  # drop the rest of the begin comment


def python_link(config: dict[str, object] | None = None, exists=os.path.exists) -> PythonLink:
    """Where this interpreter's headers and shared library are, or a one-line error saying what is missing."""
    cfg = dict(sysconfig.get_config_vars()) if config is None else config
    version = str(cfg.get("py_version_short") or f"{sys.version_info[0]}.{sys.version_info[1]}")
    include_dir = str(cfg.get("INCLUDEPY") or sysconfig.get_paths()["include"])
    if not exists(os.path.join(include_dir, "Python.h")):
        raise StpmError(f"Python {version} development headers are missing (no Python.h in {include_dir}); "
                        f"on Debian/Ubuntu: apt install python{version}-dev")
    if not cfg.get("Py_ENABLE_SHARED"):
        raise StpmError(f"this Python {version} has no shared libpython (built without --enable-shared), which the "
                        "C library must link; use a Python that has one (Debian/Ubuntu python3, conda, pyenv with "
                        "PYTHON_CONFIGURE_OPTS=--enable-shared)")
    ldlibrary = str(cfg.get("LDLIBRARY") or f"libpython{version}.so")
    candidates = [str(d) for d in (cfg.get("LIBDIR"), cfg.get("LIBPL")) if d]
    multiarch = cfg.get("MULTIARCH")
    if cfg.get("LIBDIR") and multiarch:
        candidates.append(os.path.join(str(cfg["LIBDIR"]), str(multiarch)))
    for d in candidates:
        if exists(os.path.join(d, ldlibrary)):
            name = ldlibrary[3:].split(".so")[0]  # libpython3.11.so -> python3.11
            return PythonLink(include_dir, d, name, version)
    raise StpmError(f"{ldlibrary} not found in {', '.join(candidates) or 'LIBDIR'}; on Debian/Ubuntu: "
                    f"apt install libpython{version}-dev")


def embedded_config() -> dict[str, object]:
    """What the library's init code needs to find this environment's packages."""
    site_dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        site_dirs.append(site.getusersitepackages())
    import stpm_edge  # noqa: PLC0415

    package_root = str(Path(stpm_edge.__file__).resolve().parent.parent)
    return {"site_dirs": site_dirs, "extra_paths": [package_root], "python": sys.executable,
            "version": __version__}


def c_string(text: str) -> str:
    """``text`` as a C string literal (UTF-8; anything but plain printable ASCII as octal escapes)."""
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        ch = chr(byte)
        out.append(ch if 32 <= byte < 127 and ch not in '"\\?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def python_home() -> str:
    """PYTHONHOME for the embedded interpreter: the build interpreter's base installation."""
    if sys.base_exec_prefix != sys.base_prefix:
        return f"{sys.base_prefix}{os.pathsep}{sys.base_exec_prefix}"
    return sys.base_prefix


def shim_source() -> str:
    defines = {"STPM_VERSION_STRING": __version__, "STPM_PYTHON_HOME": python_home(),
               "STPM_PYTHON_PROGRAM": sys.executable}
    return "".join(f"#define {k} {c_string(v)}\n" for k, v in defines.items()) + SHIM.read_text(encoding="utf-8")


def init_code(config: dict[str, object]) -> str:
    return f"_STPM_CONFIG = {json.dumps(config)}\n" + INIT_CODE.read_text(encoding="utf-8")


def pkgconfig_text(prefix: Path, link: PythonLink) -> str:
    return "\n".join([
        f"prefix={prefix}",
        "includedir=${prefix}/include",
        "libdir=${prefix}/lib",
        "",
        "Name: stpm_edge",
        f"Description: stpm-edge anomaly-detection runtime, C ABI (embeds Python {link.version})",
        f"Version: {__version__}",
        "Cflags: -I${includedir}",
        "Libs: -L${libdir} -Wl,-rpath,${libdir} -lstpm_edge",
        "",
    ])


def find_compiler() -> str:
    cc = (os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "cc")).split()[0]
    for candidate in (cc, "cc", "gcc", "clang"):
        path = shutil.which(candidate)
        if path:
            return path
    raise StpmError("no C compiler found (looked for $CC, cc, gcc, clang); on Debian/Ubuntu: apt install gcc")


def _compile(tmp: Path, link: PythonLink, verbose: bool) -> Path:
    try:
        import cffi  # noqa: PLC0415
    except ImportError:
        raise StpmError("cffi is not installed: pip install 'stpm-edge[capi]'") from None
    ffi = cffi.FFI()
    ffi.cdef(header_types(HEADER.read_text(encoding="utf-8")) + EXTERN_DECLS)
    ffi.embedding_init_code(init_code(embedded_config()))
    ffi.set_source(MODULE, shim_source(),
                   include_dirs=[str(HERE), link.include_dir], library_dirs=[link.lib_dir],
                   libraries=[link.lib_name], extra_compile_args=["-O2", "-fvisibility=hidden", "-pthread"],
                   extra_link_args=["-pthread", f"-Wl,-rpath,{link.lib_dir}", f"-Wl,-soname,{LIBRARY}"])
    build_dir = tmp / "build"
    build_dir.mkdir()
    try:
        out = ffi.compile(tmpdir=str(build_dir), target="libstpm_edge.*", verbose=verbose)
    except Exception as exc:  # noqa: BLE001 - distutils/setuptools compile errors
        raise StpmError(f"compiling {LIBRARY} failed: {first_line(exc)} (run with --verbose for the compiler output)") \
            from exc
    return Path(out)


def build_library(prefix: str | Path, verbose: bool = False) -> dict[str, Path]:
    """Compile and install into ``prefix``; returns the installed files by kind."""
    prefix = Path(prefix).resolve()
    link = python_link()
    os.environ.setdefault("CC", find_compiler())
    if prefix.exists() and not prefix.is_dir():
        raise StpmError(f"{prefix}: exists and is not a folder")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".stpm-capi-", dir=prefix.parent) as tmp_name:
        tmp = Path(tmp_name)
        built = _compile(tmp, link, verbose)
        staged = {"library": (built, Path("lib") / LIBRARY),
                  "header": (tmp / HEADER.name, Path("include") / HEADER.name),
                  "pkgconfig": (tmp / "stpm_edge.pc", Path("lib") / "pkgconfig" / "stpm_edge.pc")}
        shutil.copyfile(HEADER, staged["header"][0])
        staged["pkgconfig"][0].write_text(pkgconfig_text(prefix, link), encoding="utf-8")
        installed = {}
        for kind, (src, rel) in staged.items():
            dst = prefix / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp_dst = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp_dst)
            if kind == "library":
                tmp_dst.chmod(0o755)
            os.replace(tmp_dst, dst)  # atomic per file: a program never loads half a library
            installed[kind] = dst
    logger.debug("built %s against %s/lib%s.so", installed["library"], link.lib_dir, link.lib_name)
    return installed
