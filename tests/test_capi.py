"""The C ABI end to end: build libstpm_edge.so, compile C programs against it with gcc, and
compare what C gets with what the Python API gives for the same frames."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import cv2
import numpy as np
import pytest

from stpm_edge.capi import HEADER_PATH, bridge
from stpm_edge.capi import build as capi_build
from stpm_edge.errors import StpmError
from stpm_edge.models.deploy import ExportConfig
from stpm_edge.export.onnx_export import export_onnx
from stpm_edge.runtime import Detector
from stpm_edge.runtime.detector import MAX_BOXES

ROOT = Path(__file__).resolve().parents[1]
CC = shutil.which("cc") or shutil.which("gcc")
PUBLIC = {"stpm_version", "stpm_abi_version", "stpm_status_string", "stpm_last_error", "stpm_options_init",
          "stpm_detector_create", "stpm_detector_infer", "stpm_detector_get_info", "stpm_detector_destroy"}

TOOLCHAIN = CC is not None and all(shutil.which(t) for t in ("make", "pkg-config", "nm"))
TOOLCHAIN_REASON = "the C ABI tests need cc, make, pkg-config, nm and a Python with a shared libpython"
needs_toolchain = pytest.mark.skipif(not TOOLCHAIN or not sysconfig.get_config_var("Py_ENABLE_SHARED"),
                                     reason=TOOLCHAIN_REASON)


def clean_env() -> dict[str, str]:
    """What a C program on a factory PC has: no virtualenv, no PYTHONPATH, a plain PATH."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def run(args: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kw)


def tinted(bgr: np.ndarray) -> np.ndarray:
    """A colour frame from a grey photograph, so that channel order matters."""
    out = bgr.astype(np.float32) * np.array([0.55, 0.9, 1.0], np.float32) + np.array([30, 0, 10], np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TOOLCHAIN or not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        pytest.skip(TOOLCHAIN_REASON)
    out = tmp_path_factory.mktemp("capi") / "prefix"
    stpm = Path(sys.executable).with_name("stpm")
    res = run([stpm, "capi", "build", "--out", out, "--json"])
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def model(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(small_model, tmp_path_factory.mktemp("capi-model"), ExportConfig(frame_size=(128, 128))).onnx_path


@pytest.fixture(scope="module")
def frames_dir(brick_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good and defective test images as colour PPMs (one of another size than the model's frames)."""
    out = tmp_path_factory.mktemp("ppm")
    files = sorted((brick_data / "test").glob("*/*.png"))
    picks = files[:3] + files[-3:]
    for i, f in enumerate(picks):
        img = tinted(cv2.imread(str(f)))
        if i == 1:
            img = cv2.resize(img, (150, 110))
        cv2.imwrite(str(out / f"{i:02d}_{f.parent.name}.ppm"), img)
    return out


def compile_c(source: Path, prefix: Path, out: Path) -> Path:
    pc = run(["pkg-config", "--cflags", "--libs", "stpm_edge"],
             env={**clean_env(), "PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig")})
    assert pc.returncode == 0, pc.stderr
    res = run([CC, "-std=c99", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror", "-O2", "-pthread",
               "-o", out, source, *pc.stdout.split(), "-lm"])
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def capi_check(prefix: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(ROOT / "tests" / "c" / "capi_check.c", prefix, tmp_path_factory.mktemp("bin") / "capi_check")


# -- the build --------------------------------------------------------------------------------
@needs_toolchain
def test_build_installs_library_header_and_pkgconfig(prefix: Path) -> None:
    lib = prefix / "lib" / "libstpm_edge.so"
    assert (prefix / "include" / "stpm_edge.h").read_text() == HEADER_PATH.read_text()
    pc = (prefix / "lib" / "pkgconfig" / "stpm_edge.pc").read_text()
    assert f"prefix={prefix.resolve()}" in pc and "-lstpm_edge" in pc
    symbols = run(["nm", "-D", "--defined-only", lib]).stdout.split()
    exported = {s for s in symbols if s.startswith("stpm")}
    assert exported == PUBLIC  # nothing internal leaks (the shim's helpers and cffi's are hidden)
    assert not list(prefix.parent.glob(".stpm-capi-*"))  # the staging folder is gone


@needs_toolchain
def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise StpmError("compiling libstpm_edge.so failed: error: boom")

    monkeypatch.setattr(capi_build, "_compile", broken)
    with pytest.raises(StpmError, match="boom"):
        capi_build.build_library(tmp_path / "prefix")
    assert list(tmp_path.iterdir()) == []


def test_python_link_says_what_is_missing() -> None:
    base = {"py_version_short": "3.11", "INCLUDEPY": "/inc", "Py_ENABLE_SHARED": 1, "LDLIBRARY": "libpython3.11.so",
            "LIBDIR": "/lib", "MULTIARCH": "x86_64-linux-gnu"}
    everything = {"/inc/Python.h", "/lib/x86_64-linux-gnu/libpython3.11.so"}
    link = capi_build.python_link(base, exists=everything.__contains__)
    assert (link.lib_dir, link.lib_name) == ("/lib/x86_64-linux-gnu", "python3.11")
    with pytest.raises(StpmError, match="python3.11-dev"):
        capi_build.python_link(base, exists=lambda p: False)
    with pytest.raises(StpmError, match="enable-shared"):
        capi_build.python_link({**base, "Py_ENABLE_SHARED": 0}, exists=everything.__contains__)
    with pytest.raises(StpmError, match="libpython3.11.so not found"):
        capi_build.python_link(base, exists={"/inc/Python.h"}.__contains__)


def test_header_is_the_one_definition() -> None:
    """The constants the Python side relies on are the header's (which the build also parses)."""
    text = HEADER_PATH.read_text()
    types = capi_build.header_types(text)
    assert "typedef struct stpm_result" in types and "STPM_API" not in types and "#" not in types
    statuses = dict(re.findall(r"(STPM_(?:OK|ERROR_\w+)) = (\d+)", text))
    assert [int(statuses[k]) for k in ("STPM_OK", "STPM_ERROR_INVALID_ARGUMENT", "STPM_ERROR_INVALID_HANDLE",
                                       "STPM_ERROR_MODEL", "STPM_ERROR_INFERENCE", "STPM_ERROR_RUNTIME",
                                       "STPM_ERROR_INTERNAL")] == [bridge.OK, bridge.INVALID_ARGUMENT,
                                                                  bridge.INVALID_HANDLE, bridge.MODEL,
                                                                  bridge.INFERENCE, bridge.RUNTIME, bridge.INTERNAL]
    formats = {int(v) for v in re.findall(r"STPM_PIXEL_\w+ = (\d+)", text)}
    assert formats == set(bridge.PIXEL_FORMATS)
    assert f"#define STPM_MAX_BOXES {MAX_BOXES}" in text and f"boxes[{MAX_BOXES}]" in types
    assert f"#define STPM_INFO_STRING {bridge.INFO_STRING}" in text
    with pytest.raises(StpmError, match="cffi:begin"):
        capi_build.header_types("/* no markers */")


@needs_toolchain
def test_a_library_that_cannot_find_its_environment_says_so(model: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Built as if the environment had vanished: the call fails with STPM_ERROR_RUNTIME and a message."""
    base_python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    if run([base_python, "-c", "import stpm_edge"], env=clean_env()).returncode == 0:
        pytest.skip("stpm_edge is installed in the base interpreter too")
    real = capi_build.embedded_config
    monkeypatch.setattr(capi_build, "embedded_config", lambda: {**real(), "site_dirs": [], "extra_paths": []})
    monkeypatch.setattr(sys, "executable", str(base_python))  # not the virtualenv's python either
    prefix = tmp_path / "prefix"
    capi_build.build_library(prefix)
    exe = compile_c(ROOT / "tests" / "c" / "capi_check.c", prefix, tmp_path / "capi_check")
    res = run([exe, "create", model], env=clean_env())
    assert res.returncode == 0, res.stdout + res.stderr
    status, message = res.stdout.strip().split("\t")[1:]
    assert status == "5" and "stpm_detector_create" in message and "Python" in message, message


# -- C against Python ---------------------------------------------------------------------------
@needs_toolchain
def test_sample_program_matches_python_api(prefix: Path, model: Path, frames_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "c"
    shutil.copytree(ROOT / "samples" / "c", src, ignore=shutil.ignore_patterns("stpm_sample"))
    made = run(["make", "-C", src, f"STPM_EDGE_PREFIX={prefix}"], env=clean_env())
    assert made.returncode == 0, made.stdout + made.stderr
    pgm = tmp_path / "map.pgm"
    res = run([src / "stpm_sample", model, frames_dir, pgm], env=clean_env())
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln.split("\t") for ln in res.stdout.splitlines() if not ln.startswith("#")]
    images = sorted(frames_dir.glob("*.ppm"))
    assert [ln[0] for ln in lines] == [p.name for p in images]
    with Detector(model) as det:
        for (name, score, verdict, regions), path in zip(lines, images):
            want = det(cv2.imread(str(path)))
            assert abs(float(score) - want.score) <= 1e-5, name
            assert verdict == ("NG" if want.is_anomalous else "OK") and int(regions) == len(want.boxes)
        first = cv2.imread(str(images[0]))
        want_map = det(first).anomaly_map
    got = cv2.imread(str(pgm), cv2.IMREAD_UNCHANGED)
    expected = np.clip(np.floor(want_map / (2 * det.threshold) * 255 + 0.5), 0, 255)
    assert got.shape == first.shape[:2] and np.abs(got.astype(int) - expected).max() <= 1


@needs_toolchain
def test_every_pixel_format_and_a_padded_stride_match_python(capi_check: Path, model: Path, frames_dir: Path,
                                                             tmp_path: Path) -> None:
    image = sorted(frames_dir.glob("*.ppm"))[-1]
    res = run([capi_check, "formats", model, image, tmp_path / "out"], env=clean_env())
    assert res.returncode == 0, res.stdout + res.stderr
    scores = {ln.split("\t")[0]: float(ln.split("\t")[1]) for ln in res.stdout.splitlines()}
    bgr = cv2.imread(str(image))
    h, w = bgr.shape[:2]
    python_frames = {"bgr8": bgr, "rgb8": bgr, "bgr8_padded": bgr, "gray8": bgr[:, :, 1],
                     "bgra8": cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), "rgba8": bgr}
    with Detector(model) as det:
        for name, frame in python_frames.items():
            want = det(frame)
            got_map = np.fromfile(tmp_path / f"out.{name}.f32", dtype=np.float32).reshape(h, w)
            assert abs(scores[name] - want.score) <= 1e-5, name
            assert np.abs(got_map - want.anomaly_map).max() <= 1e-5, name
    assert scores["gray8"] != scores["bgr8"]  # the grey frame really is another input


@needs_toolchain
def test_error_paths_return_a_status_and_a_message(capi_check: Path, model: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a protobuf" * 10)
    res = run([capi_check, "errors", model, corrupt], env=clean_env())
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAIL" not in res.stdout and "Traceback" not in res.stderr
    rows = {ln.split("\t")[0]: ln.split("\t") for ln in res.stdout.splitlines() if "\t" in ln}
    assert rows["create_missing_file"][1:] == ["3", "stpm_detector_create: /nonexistent/model.onnx: no such model file"]
    assert rows["create_corrupt_onnx"][1] == "3" and str(corrupt) in rows["create_corrupt_onnx"][2]
    assert rows["infer_destroyed"][1] == "2" and rows["destroy_twice"][1] == "2"


@needs_toolchain
def test_two_threads_with_two_handles_match_one(capi_check: Path, model: Path, frames_dir: Path) -> None:
    res = run([capi_check, "threads", model, frames_dir, 3], env=clean_env())
    assert res.returncode == 0, res.stdout + res.stderr
    diffs = {ln.split("\t")[0]: [float(v) for v in ln.split("\t")[1:]] for ln in res.stdout.splitlines()
             if ln.endswith(tuple("0123456789")) and "_max_diff" in ln}
    assert max(diffs["two_handles_max_diff"]) <= 1e-5 and max(diffs["shared_handle_max_diff"]) <= 1e-5
