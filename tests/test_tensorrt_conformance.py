"""API conformance with the REAL TensorRT Python modules, on a machine without a GPU (issue 19).

For each of 8.6.1, 10.3.0, 10.13.3.9 and 11.4.0.106 the bindings wheel is installed from PyPI
into ``~/.cache/stpm-edge/wheels`` (once), stand-ins for libnvinfer & co. are compiled with ``cc``
and the real module is imported in a fresh interpreter (``_trt_wheels``, ``_trt_probe``). Every
class, enum value and property-vs-method kind is then TensorRT's own; only calls into the native
library fail, as they do where CUDA cannot start. Checked:

(a) every TensorRT name the project uses exists, with its kind, on the releases where it is used
    (and what the plan relies on being removed is gone); the member lists the fakes are held to
    (``tests/data/tensorrt_api.json``) equal the real ones;
(b) ``caps_from_module(real)`` is what the plan tests assume (``test_tensorrt_plan.CAPS``);
(c) our logger and calibrator subclasses instantiate on the real base classes, and the
    calibrators report the real ``CalibrationAlgoType``;
(d) ``plan_build`` on the real capabilities gives the expected plan for FP32/FP16/INT8 (+ DLA);
(e) a build up to ``trt.Builder(...)`` and an engine load up to ``trt.Runtime(...)`` fail with
    the project's one-line error, not a traceback.

The same for cuda-python 12.6.2.post1 (raises without a driver), 12.9 and 13.x: the runtime calls
the adapter uses exist and ``probe_gpu`` answers in one line. Skipped, with the reason, where a
real TensorRT imports (the GPU tests cover it) or a wheel cannot be fetched. Not checked here:
anything TensorRT computes (build, run, accuracy) — that needs a GPU (``test_tensorrt_gpu.py``,
``scripts/trt_check.py``).
"""
from __future__ import annotations

import importlib.util
import json

import pytest
from _trt_api import REMOVED, USED, applies, lookup, recorded
from _trt_wheels import CUDA_RELEASES, TRT_RELEASES, Unavailable, cuda_environment, run_probe, trt_environment
from test_tensorrt_plan import CAPS, CAPS_OF_RELEASE


def _real_tensorrt_here() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt  # noqa: PLC0415
    except Exception:  # noqa: BLE001 - not a usable TensorRT: conformance still runs against the wheels
        return None
    version = getattr(tensorrt, "__version__", None)
    return f"a real TensorRT {version} imports here (test_tensorrt_gpu.py checks it)" if version else None


@pytest.fixture(scope="module", params=list(TRT_RELEASES))
def real(request, tmp_path_factory):
    """What the probe found with the real module of one release."""
    release = request.param
    reason = _real_tensorrt_here()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp(f"trt-{release}")
    try:
        env = trt_environment(release, work)
    except Unavailable as e:
        pytest.skip(f"TensorRT {release} bindings not available: {e}")
    return run_probe(env, "trt", release, str(work))


def _family(release: str) -> str:
    return release.split(".")[0]


# -- (a) names ----------------------------------------------------------------------------------

def test_the_recorded_member_lists_are_the_real_ones(real):
    """The fakes are held to tests/data/tensorrt_api.json: it must equal the real module."""
    want = recorded()[real["release"]]
    got = real["snapshot"]
    assert got["version"] == real["release"]
    for section in ("classes", "enums"):
        for name in sorted(set(want[section]) | set(got[section])):
            assert got[section].get(name) == want[section].get(name), (
                f"{section} {name} differs from the real TensorRT {real['release']}; "
                f"regenerate with: python tests/_trt_wheels.py --write-api")
    assert got["module"] == want["module"]


def test_every_tensorrt_name_the_project_uses_exists(real):
    release, snap = real["release"], real["snapshot"]
    wrong = [f"{owner}.{member}: expected {kind}, found {lookup(snap, owner, member)}"
             for owner, member, kind, span in USED
             if applies(release, span) and lookup(snap, owner, member) != kind]
    assert not wrong, f"TensorRT {release}: " + "; ".join(wrong)
    still_there = [f"{owner}.{member}" for owner, member, span in REMOVED
                   if applies(release, span) and lookup(snap, owner, member) is not None]
    assert not still_there, f"TensorRT {release} still has what the plan takes as removed: {still_there}"


def test_import_tensorrt_takes_the_real_module(real):
    assert real["import_tensorrt"] == {"raised": None, "value": real["version"]}


# -- (b) capabilities -----------------------------------------------------------------------------

def test_caps_from_the_real_module_are_what_the_plan_tests_assume(real):
    assumed = CAPS[CAPS_OF_RELEASE[real["release"]]]
    got = dict(real["caps"])
    assert got.pop("version") == real["release"]
    want = {k: (sorted(v) if isinstance(v, frozenset) else v) for k, v in assumed.__dict__.items() if k != "version"}
    assert got == want


# -- (c) our subclasses of the real base classes ------------------------------------------------

def test_logger_and_calibrators_on_the_real_base_classes(real):
    log = real["logger"]
    assert log == {"is_ilogger": True, "same_object": True, "last_error": "probe: an error on two lines"}
    calibrators = real["calibrators"]
    if _family(real["release"]) == "11":
        assert calibrators == {}  # removed in 11: the plan refuses the calibrator path
        return
    common = {"isinstance": True, "algorithm_is_real_enum": True, "batch_size": 1, "batch": None, "cache": None}
    assert calibrators == {"IInt8EntropyCalibrator2": {**common, "algorithm": "ENTROPY_CALIBRATION_2"},
                           "IInt8MinMaxCalibrator": {**common, "algorithm": "MINMAX_CALIBRATION"}}


# -- (d) plans ------------------------------------------------------------------------------------

def _plan(source, net=(), flags=(), typed=False, pin=False, int8=None, calibrator=None):
    return {"source": source, "network_flags": list(net), "builder_flags": list(flags), "clear_flags": ["TF32"],
            "strongly_typed": typed, "pin_head_fp32": pin, "int8_method": int8, "calibrator": calibrator}


FP16_FLAGS = ("FP16", "OBEY_PRECISION_CONSTRAINTS")
INT8_FLAGS = ("INT8", "OBEY_PRECISION_CONSTRAINTS")
EB, ST = ("EXPLICIT_BATCH",), ("STRONGLY_TYPED",)
MINMAX, ENTROPY = "IInt8MinMaxCalibrator", "IInt8EntropyCalibrator2"
NO_CALIBRATION = {"error": "no implicit INT8 calibration"}
EXPECTED_PLANS = {
    "8": {
        "fp32": _plan("model.onnx", EB),
        "fp16": _plan("model.onnx", EB, FP16_FLAGS, pin=True),
        "fp16-flags": _plan("model.onnx", EB, FP16_FLAGS, pin=True),
        "int8": _plan("model.int8.onnx", EB, ("INT8",), int8="qdq"),
        "int8-calibrator": _plan("model.onnx", EB, INT8_FLAGS, pin=True, int8="calibrator", calibrator=MINMAX),
        "dla-fp16": _plan("model.onnx", EB, (*FP16_FLAGS, "GPU_FALLBACK"), pin=True),
        "dla-calibrator-minmax": {"error": "DLA requires TensorRT's entropy calibrator"},
        "dla-calibrator-entropy": _plan("model.onnx", EB, (*INT8_FLAGS, "GPU_FALLBACK"), pin=True, int8="calibrator",
                                        calibrator=ENTROPY),
    },
    "10": {
        "fp32": _plan("model.onnx"),
        "fp16": _plan("model.fp16.onnx", ST, typed=True),
        "fp16-flags": _plan("model.onnx", (), FP16_FLAGS, pin=True),
        "int8": _plan("model.int8.onnx", ST, typed=True, int8="qdq"),
        "int8-calibrator": _plan("model.onnx", (), INT8_FLAGS, pin=True, int8="calibrator", calibrator=MINMAX),
        "dla-fp16": _plan("model.fp16.onnx", ST, ("GPU_FALLBACK",), typed=True),
        "dla-calibrator-minmax": {"error": "DLA requires TensorRT's entropy calibrator"},
        "dla-calibrator-entropy": _plan("model.onnx", (), (*INT8_FLAGS, "GPU_FALLBACK"), pin=True, int8="calibrator",
                                        calibrator=ENTROPY),
    },
    "11": {
        "fp32": _plan("model.onnx", typed=True),
        "fp16": _plan("model.fp16.onnx", typed=True),
        "fp16-flags": {"error": "has no FP16 builder flag"},
        "int8": _plan("model.int8.onnx", typed=True, int8="qdq"),
        "int8-calibrator": NO_CALIBRATION,
        "dla-fp16": _plan("model.fp16.onnx", (), ("GPU_FALLBACK",), typed=True),
        "dla-calibrator-minmax": NO_CALIBRATION,
        "dla-calibrator-entropy": NO_CALIBRATION,
    },
}


def test_plans_on_the_real_capabilities(real):
    expected = EXPECTED_PLANS[_family(real["release"])]
    got = real["plans"]
    assert set(got) == set(expected)
    for case, want in expected.items():
        if "error" in want:
            assert want["error"] in got[case].get("error", ""), (case, got[case])
        else:
            assert got[case] == want, case


# -- (e) one-line errors where CUDA cannot start --------------------------------------------------

@pytest.mark.parametrize("step, factory", [("build", "Builder"), ("load", "Runtime")])
def test_stopping_at_cuda_is_one_line(real, step, factory):
    out = real[step]
    assert out["raised"] == "StpmError", out.get("traceback")
    assert out["one_line"]
    assert out["message"].startswith(f"TensorRT {real['version']} could not start (trt.{factory}: "
                                     f"pybind11::init(): factory function returned nullptr); check that the NVIDIA "
                                     f"driver supports this TensorRT's CUDA")


# -- cuda-python ----------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=list(CUDA_RELEASES))
def cuda_python(request):
    release = request.param
    try:
        env = cuda_environment(release)
    except Unavailable as e:
        pytest.skip(f"cuda-python {release} not available: {e}")
    return run_probe(env, "cuda", release)


def test_cuda_python_has_the_calls_the_adapter_uses(cuda_python):
    release = cuda_python["release"]
    assert f"cuda-python-{release}" in cuda_python["file"], cuda_python["file"]  # the scratch copy, not another
    assert cuda_python["module"] == "cuda.bindings.runtime"
    assert cuda_python["missing"] == []
    assert cuda_python["enums"] == {"cudaStreamNonBlocking": 1, "capture_thread_local": True, "memcpy_kinds": True}
    assert cuda_python["load_cuda"] == {"raised": None, "value": "cuda-python (cuda.bindings.runtime)"}
    if release.startswith("13."):
        assert cuda_python["native_handle_getter"]  # int(handle) is deprecated in 13


def test_probe_gpu_is_a_gpu_or_one_line(cuda_python):
    """cuda-python <= 12.8 raise RuntimeError without a driver; probe_gpu must answer either way."""
    out = cuda_python["probe_gpu"]
    assert out["raised"] is None, out.get("traceback")
    value = out["value"]
    if value["gpu"] is None:
        assert value["why"].startswith("no CUDA GPU (") and "\n" not in value["why"], value
    else:
        assert value["why"] == "" and value["gpu"]["compute_capability"]


def test_the_data_file_is_compact_json():
    """tests/data/tensorrt_api.json parses and covers the four releases (the fakes need it offline)."""
    data = recorded()
    assert list(data) == list(TRT_RELEASES)
    assert all(set(v) == {"version", "module", "classes", "enums"} for v in data.values())
    json.dumps(data)
