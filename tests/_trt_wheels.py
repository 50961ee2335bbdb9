"""The real TensorRT and cuda-python binding modules on a machine without a GPU (issue 19).

TensorRT: the PyPI wheels ``tensorrt-bindings==8.6.1`` and ``tensorrt-cu12-bindings`` (10.3.0,
10.13.3.9, 11.4.0.106) hold only the Python module ``tensorrt_bindings/tensorrt.so`` (about
1 MB each). It links ``libnvinfer.so.N``, ``libnvonnxparser.so.N``, ``libnvinfer_plugin.so.N``
(and ``libnvparsers.so.8`` on 8.6), which come with the multi-GB ``tensorrt-cu12-libs``. The
module imports from those libraries only a dozen unversioned entry points
(``createInferBuilder_INTERNAL``, ``createInferRuntime_INTERNAL``, ``getPluginRegistry``, ...,
four UFF/Caffe functions on 8.6): :func:`standin_libs` reads them from the module
(``readelf -d`` / ``nm -D``) and compiles, with ``cc``, libraries of those names whose
functions return NULL. The real module then imports: every class, enum value, property and
docstring is TensorRT's own; only calls into the native library fail (``Builder(...)`` and
``Runtime(...)`` raise ``TypeError: ... factory function returned nullptr``, as they do where
CUDA cannot start).

cuda-python: the ``cuda-python`` / ``cuda-bindings`` wheels import without a driver as they are.

Wheels are installed with pip into ``~/.cache/stpm-edge/wheels/`` (``STPM_EDGE_CACHE`` moves
it) once and reused; the stand-in libraries are compiled into the test's temporary folder.
Anything missing (no network, no ``cc``) raises :class:`Unavailable` with the reason, which the
tests print as their skip reason. ``python tests/_trt_wheels.py --write-api`` rewrites
``tests/data/tensorrt_api.json`` (the member lists the fakes are built from) from the modules.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBE = HERE / "_trt_probe.py"
API_DATA = HERE / "data" / "tensorrt_api.json"

# release -> pip requirement of its bindings-only wheel
TRT_RELEASES = {
    "8.6.1": "tensorrt-bindings==8.6.1",
    "10.3.0": "tensorrt-cu12-bindings==10.3.0",
    "10.13.3.9": "tensorrt-cu12-bindings==10.13.3.9",
    "11.4.0.106": "tensorrt-cu12-bindings==11.4.0.106",
}
# cuda-python releases: 12.6.2.post1 raises without a driver (<= 12.8), 12.9 and 13 return an error.
CUDA_RELEASES = {
    "12.6.2.post1": ("cuda-python==12.6.2.post1",),
    "12.9.10": ("cuda-bindings==12.9.10", "cuda-pathfinder"),
    "13.4.4": ("cuda-bindings==13.4.4", "cuda-pathfinder"),
}
PIP_TIMEOUT_S = 300


class Unavailable(Exception):
    """The real module cannot be had here; ``str()`` says why (the skip reason)."""


def cache_root() -> Path:
    return Path(os.environ.get("STPM_EDGE_CACHE") or Path.home() / ".cache" / "stpm-edge")


def installed(name: str, requirements: tuple[str, ...]) -> Path:
    """A folder holding ``requirements`` (pip --target, no dependencies), installed once per Python."""
    root = cache_root() / "wheels" / f"cp{sys.version_info[0]}{sys.version_info[1]}" / name
    if (root / ".complete").is_file():
        return root
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-warn-script-location", "--target", str(tmp), *requirements]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"pip could not fetch {' '.join(requirements)} ({e})") from None
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip() and "Location" not in ln]
        raise Unavailable(f"pip could not fetch {' '.join(requirements)} ({lines[-1] if lines else res.returncode})")
    (tmp / ".complete").write_text(" ".join(requirements) + "\n")
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Unavailable(f"no {name} on PATH (the stand-in libraries need cc, readelf and nm)")
    return path


def native_needs(module_so: Path) -> tuple[list[str], list[str]]:
    """(the libnv* libraries ``module_so`` links, the symbols it takes from them)."""
    dyn = subprocess.run([_tool("readelf"), "-d", str(module_so)], capture_output=True, text=True, check=True).stdout
    libs = [m for m in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn) if m.startswith("libnv")]
    out = subprocess.run([_tool("nm"), "-D", "--undefined-only", str(module_so)], capture_output=True, text=True,
                         check=True).stdout
    here = ctypes.CDLL(None)  # libc, libm, libdl and the interpreter: what the process already provides
    symbols = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] != "U" or "@" in parts[1]:
            continue  # weak references and versioned (glibc, libstdc++, libgcc) symbols
        sym = parts[1]
        if sym.startswith(("Py", "_Py")):
            continue
        if sym.startswith("_Z"):
            if re.match(r"_ZN\d+nv", sym):  # nvuffparser::, nvcaffeparser1:: (8.6)
                symbols.append(sym)
            continue
        if not hasattr(here, sym):
            symbols.append(sym)
    return libs, sorted(symbols)


def standin_libs(module_so: Path, out_dir: Path) -> Path:
    """Compile the libraries ``module_so`` links, exporting the symbols it needs, each returning NULL."""
    libs, symbols = native_needs(module_so)
    if not libs or "createInferBuilder_INTERNAL" not in symbols:
        raise Unavailable(f"{module_so}: unexpected native dependencies {libs} / {symbols[:5]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / "standin.c"
    src.write_text("/* Stand-ins for TensorRT's libraries: every entry point fails (returns NULL). */\n"
                   + "".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
    cc = _tool("cc")
    for lib in libs:
        res = subprocess.run([cc, "-shared", "-fPIC", "-o", str(out_dir / lib), f"-Wl,-soname,{lib}", str(src)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise Unavailable(f"cc could not build the stand-in {lib}: {res.stderr.strip()[:200]}")
    return out_dir


def trt_environment(release: str, tmp: Path) -> dict[str, str]:
    """The environment in which ``import tensorrt_bindings`` gives the real ``release`` module."""
    folder = installed(f"tensorrt-{release}", (TRT_RELEASES[release],))
    libs = standin_libs(folder / "tensorrt_bindings" / "tensorrt.so", tmp / f"standin-{release}")
    return _env(folder, libs)


def cuda_environment(release: str) -> dict[str, str]:
    return _env(installed(f"cuda-python-{release}", CUDA_RELEASES[release]), None)


def _env(folder: Path, libs: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    # The scratch folder first, then this interpreter's own path (so stpm_edge is the one under test).
    env["PYTHONPATH"] = os.pathsep.join([str(folder), *[p for p in sys.path if p]])
    if libs is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p)
    env.pop("PYTHONSTARTUP", None)
    return env


def run_probe(env: dict[str, str], *args: str, timeout: float = 120) -> dict:
    """Run ``_trt_probe.py args`` in a fresh interpreter; its JSON result (AssertionError with the log otherwise)."""
    res = subprocess.run([sys.executable, str(PROBE), *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        raise AssertionError(f"probe {' '.join(args)} failed (exit {res.returncode}):\n{res.stdout[-2000:]}\n"
                             f"{res.stderr[-4000:]}")
    return json.loads(lines[-1])


def write_api_data(tmp: Path) -> None:
    """Rewrite tests/data/tensorrt_api.json from the real modules (one line per class or enum)."""
    data = {}
    for release in TRT_RELEASES:
        data[release] = run_probe(trt_environment(release, tmp), "snapshot", release)["snapshot"]
    lines = ["{"]
    for i, (release, snap) in enumerate(data.items()):
        lines.append(f' "{release}": {{')
        lines.append(f'  "version": {json.dumps(snap["version"])},')
        lines.append(f'  "module": {json.dumps(snap["module"])},')
        for key in ("classes", "enums"):
            lines.append(f'  "{key}": {{')
            items = list(snap[key].items())
            for j, (name, members) in enumerate(items):
                comma = "," if j < len(items) - 1 else ""
                lines.append(f"   {json.dumps(name)}: {json.dumps(members, sort_keys=True)}{comma}")
            lines.append("  }," if key == "classes" else "  }")
        lines.append(" }," if i < len(data) - 1 else " }")
    lines.append("}")
    API_DATA.parent.mkdir(parents=True, exist_ok=True)
    API_DATA.write_text("\n".join(lines) + "\n")
    json.loads(API_DATA.read_text())


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write-api"]:
        sys.exit("usage: python tests/_trt_wheels.py --write-api")
    with tempfile.TemporaryDirectory() as d:
        write_api_data(Path(d))
    print(f"wrote {API_DATA}")
