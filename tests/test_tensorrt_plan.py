"""TensorRT build decisions per release, as pure functions (no TensorRT needed).

The capabilities below are what the plan tests assume of each release (see the sources in
``stpm_edge.tensorrt.plan``): 8.5/8.6 have EXPLICIT_BATCH and the precision flags; 10.x adds
STRONGLY_TYPED and keeps EXPLICIT_BATCH only as an ignored deprecated member; 11 has neither
EXPLICIT_BATCH nor precision flags nor calibrators. The builder-flag sets are the real ones,
recorded from the binding modules (``_trt_api``); ``test_tensorrt_conformance.py`` checks that
``caps_from_module`` of the real 8.6.1, 10.3, 10.13 and 11.4 modules gives exactly these.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from _trt_api import api_for

from stpm_edge.errors import StpmError
from stpm_edge.tensorrt.plan import (BuildOptions, TrtCaps, calibration_profile,
                                     default_calib_cache, default_timing_cache, keep_fp32, network_flags,
                                     plan_build, profile_shapes)
from stpm_edge.runtime.backends.base import InputSpec
from stpm_edge.tensorrt.engine_meta import parse_trt_version, same_trt_release


def builder_flags(release: str) -> frozenset[str]:
    return frozenset(api_for(release)["enums"]["BuilderFlag"])


CALIBRATORS = frozenset({"IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator"})
PLUGIN_FLAGS = {"PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"}  # 10.x later releases and 11

CAPS = {
    "8.5": TrtCaps(parse_trt_version("8.5.2.2"), frozenset({"EXPLICIT_BATCH", "EXPLICIT_PRECISION"}),
                   builder_flags("8.5.2.2"), CALIBRATORS, memory_pool=True, optimization_level=False,
                   calibration_profile=True),
    "8.6": TrtCaps(parse_trt_version("8.6.2.3"), frozenset({"EXPLICIT_BATCH", "EXPLICIT_PRECISION"}),
                   builder_flags("8.6.1"), CALIBRATORS, memory_pool=True, optimization_level=True,
                   calibration_profile=True),
    "10.3": TrtCaps(parse_trt_version("10.3.0"), frozenset({"EXPLICIT_BATCH", "STRONGLY_TYPED"}),
                    builder_flags("10.3.0"), CALIBRATORS, memory_pool=True, optimization_level=True,
                    calibration_profile=True),
    "10.13": TrtCaps(parse_trt_version("10.13.3.9"), frozenset({"EXPLICIT_BATCH", "STRONGLY_TYPED", *PLUGIN_FLAGS}),
                     builder_flags("10.13.3.9"), CALIBRATORS, memory_pool=True, optimization_level=True,
                     calibration_profile=True),
    "11": TrtCaps(parse_trt_version("11.0.0.dev"), frozenset({"STRONGLY_TYPED", *PLUGIN_FLAGS}),
                  builder_flags("11.4.0.106"), frozenset(), memory_pool=True, optimization_level=True,
                  calibration_profile=False),
}
# The recorded releases and the CAPS entry each stands for (the conformance test compares them).
CAPS_OF_RELEASE = {"8.6.1": "8.6", "10.3.0": "10.3", "10.13.3.9": "10.13", "11.4.0.106": "11"}

FIXED = InputSpec("frames", "uint8", "NHWC", "BGR", 1, 480, 640)
DYNAMIC = InputSpec("frames", "uint8", "NHWC", "BGR", None, 480, 640)
FLOAT_NCHW = InputSpec("frames", "float32", "NCHW", "RGB", None, 256, 256)


def files(tmp: Path, *precisions: str) -> dict[str, Path]:
    names = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    out = {}
    for p in precisions:
        f = tmp / names[p]
        f.write_bytes(b"onnx")
        out[p] = f
    return out


# -- versions -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, release, build, suffix", [
    ("8.5.2.2", (8, 5, 2), 2, ""),
    ("8.6.2.3", (8, 6, 2), 3, ""),
    ("10.3.0", (10, 3, 0), None, ""),
    ("10.3.0.26", (10, 3, 0), 26, ""),
    ("11.0.0.dev", (11, 0, 0), None, "dev"),
    ("10.0.0b6", (10, 0, 0), None, "b6"),
    ("8.6", (8, 6, 0), None, ""),
])
def test_parse_trt_version(text, release, build, suffix):
    v = parse_trt_version(text)
    assert v.release == release and v.build == build and v.suffix == suffix and str(v) == text


@pytest.mark.parametrize("bad", ["", "ten", "10", "x.1.2", None])
def test_parse_trt_version_rejects_junk(bad):
    with pytest.raises(StpmError, match="TensorRT version"):
        parse_trt_version(bad)


@pytest.mark.parametrize("built, running, ok", [
    ("8.5.2.2", "8.5.2.2", True),
    ("10.3.0", "10.3.0.26", True),  # pip prints three components of the same build
    ("10.3.0.26", "10.3.0.30", False),
    ("8.6.1.6", "8.6.2.3", False),
    ("10.3.0", "10.4.0", False),
    ("11.0.0.dev", "11.0.0", False),
])
def test_same_trt_release(built, running, ok):
    assert same_trt_release(parse_trt_version(built), parse_trt_version(running)) is ok


# -- capabilities and network flags ---------------------------------------------------------

def test_typing_capabilities_per_release():
    assert [CAPS[k].weak_typing for k in CAPS] == [True, True, True, True, False]
    assert [CAPS[k].strongly_typed for k in CAPS] == [False, False, True, True, True]


@pytest.mark.parametrize("release, typed, expected", [
    ("8.5", False, ("EXPLICIT_BATCH",)),
    ("8.6", False, ("EXPLICIT_BATCH",)),
    ("10.3", False, ()),  # EXPLICIT_BATCH exists but is ignored and deprecated in 10
    ("10.3", True, ("STRONGLY_TYPED",)),
    ("11", False, ()),
    ("11", True, ()),  # always strongly typed; the flag is deprecated and ignored
])
def test_network_flags(release, typed, expected):
    assert network_flags(CAPS[release], typed) == expected


def test_strongly_typed_unavailable_on_8x():
    with pytest.raises(StpmError, match="strongly typed"):
        network_flags(CAPS["8.6"], True)


# -- per-version plans ------------------------------------------------------------------------

def test_fp32_plan_clears_tf32_everywhere_it_exists(tmp_path):
    for release in CAPS:
        plan = plan_build(CAPS[release], "fp32", BuildOptions(), FIXED, files(tmp_path, "fp32"))
        assert plan.onnx_path.name == "model.onnx"
        assert plan.builder_flags == () and plan.clear_flags == ("TF32",)
        assert not plan.pin_head_fp32 and plan.int8_method is None
    assert plan_build(CAPS["8.5"], "fp32", BuildOptions(), FIXED, files(tmp_path, "fp32")).network_flags == ("EXPLICIT_BATCH",)
    assert plan_build(CAPS["11"], "fp32", BuildOptions(), FIXED, files(tmp_path, "fp32")).strongly_typed


@pytest.mark.parametrize("release", ["8.5", "8.6"])
def test_fp16_on_8x_uses_flags_and_pins_the_head(tmp_path, release):
    plan = plan_build(CAPS[release], "fp16", BuildOptions(), FIXED, files(tmp_path, "fp32", "fp16"))
    assert plan.onnx_path.name == "model.onnx"  # the FP16 graph is for strongly typed builds
    assert plan.network_flags == ("EXPLICIT_BATCH",)
    assert plan.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert plan.pin_head_fp32 and not plan.strongly_typed


@pytest.mark.parametrize("release", ["10.3", "10.13"])
def test_fp16_on_10_prefers_the_strongly_typed_fp16_graph(tmp_path, release):
    plan = plan_build(CAPS[release], "fp16", BuildOptions(), FIXED, files(tmp_path, "fp32", "fp16"))
    assert plan.onnx_path.name == "model.fp16.onnx"
    assert plan.network_flags == ("STRONGLY_TYPED",) and plan.builder_flags == ()
    assert plan.strongly_typed and not plan.pin_head_fp32


def test_fp16_on_10_without_fp16_graph_falls_back_to_flags(tmp_path):
    plan = plan_build(CAPS["10.3"], "fp16", BuildOptions(), FIXED, files(tmp_path, "fp32"))
    assert plan.onnx_path.name == "model.onnx" and plan.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert plan.network_flags == () and any("model.fp16.onnx" in n for n in plan.notes)


def test_fp16_on_10_flags_mode_forced(tmp_path):
    plan = plan_build(CAPS["10.3"], "fp16", BuildOptions(fp16_mode="flags"), FIXED, files(tmp_path, "fp32", "fp16"))
    assert plan.onnx_path.name == "model.onnx" and plan.pin_head_fp32
    assert not any("10.12" in n for n in plan.notes)
    plan = plan_build(CAPS["10.13"], "fp16", BuildOptions(fp16_mode="flags"), FIXED, files(tmp_path, "fp32", "fp16"))
    assert any("deprecated since TensorRT 10.12" in n for n in plan.notes)  # weak typing (10.12.0 release notes)
    plan = plan_build(CAPS["10.13"], "fp16", BuildOptions(), FIXED, files(tmp_path, "fp32", "fp16"))
    assert plan.strongly_typed and not any("10.12" in n for n in plan.notes)


def test_fp16_on_11_needs_the_fp16_graph(tmp_path):
    plan = plan_build(CAPS["11"], "fp16", BuildOptions(), FIXED, files(tmp_path, "fp32", "fp16"))
    assert plan.onnx_path.name == "model.fp16.onnx" and plan.network_flags == () and plan.builder_flags == ()
    only_fp32 = tmp_path / "only_fp32"
    only_fp32.mkdir()
    with pytest.raises(StpmError, match="model.fp16.onnx"):
        plan_build(CAPS["11"], "fp16", BuildOptions(), FIXED, files(only_fp32, "fp32"))
    with pytest.raises(StpmError, match="removed in 11"):
        plan_build(CAPS["11"], "fp16", BuildOptions(fp16_mode="flags"), FIXED, files(tmp_path, "fp32", "fp16"))


def test_fp16_typed_mode_refused_on_8x(tmp_path):
    with pytest.raises(StpmError, match="strongly typed"):
        plan_build(CAPS["8.6"], "fp16", BuildOptions(fp16_mode="typed"), FIXED, files(tmp_path, "fp32", "fp16"))


@pytest.mark.parametrize("release, net, builder", [
    ("8.5", ("EXPLICIT_BATCH",), ("INT8",)),
    ("8.6", ("EXPLICIT_BATCH",), ("INT8",)),
    ("10.3", ("STRONGLY_TYPED",), ()),
    ("10.13", ("STRONGLY_TYPED",), ()),
    ("11", (), ()),
])
def test_int8_qdq_graph_on_every_release(tmp_path, release, net, builder):
    plan = plan_build(CAPS[release], "int8", BuildOptions(), FIXED, files(tmp_path, "fp32", "int8"))
    assert plan.onnx_path.name == "model.int8.onnx" and plan.int8_method == "qdq"
    assert plan.network_flags == net and plan.builder_flags == builder and not plan.pin_head_fp32


@pytest.mark.parametrize("release", ["8.5", "8.6", "10.3"])
def test_int8_classic_calibrator_on_8_to_10(tmp_path, release):
    opts = BuildOptions(int8_mode="calibrator", calib_dir=tmp_path, calib_batch=4, calib_method="minmax")
    plan = plan_build(CAPS[release], "int8", opts, DYNAMIC, files(tmp_path, "fp32", "int8"))
    assert plan.onnx_path.name == "model.onnx" and plan.int8_method == "calibrator"
    assert plan.calibrator_class == "IInt8MinMaxCalibrator"
    assert plan.builder_flags == ("INT8", "OBEY_PRECISION_CONSTRAINTS") and plan.pin_head_fp32
    assert plan.calib_profile.min == plan.calib_profile.opt == plan.calib_profile.max == (4, 480, 640, 3)
    assert plan.calib_cache == tmp_path / "calib.cache"
    assert any("deprecated" in n for n in plan.notes) == (release == "10.3")


def test_int8_calibrator_fixed_batch_uses_the_model_batch(tmp_path):
    opts = BuildOptions(int8_mode="calibrator", calib_dir=tmp_path, calib_batch=8)
    plan = plan_build(CAPS["8.5"], "int8", opts, FIXED, files(tmp_path, "fp32"))
    assert plan.calib_profile is None and any("fixed batch" in n for n in plan.notes)


def test_int8_auto_uses_calibrator_when_only_images_are_given(tmp_path):
    plan = plan_build(CAPS["8.6"], "int8", BuildOptions(calib_dir=tmp_path), FIXED, files(tmp_path, "fp32"))
    assert plan.int8_method == "calibrator" and plan.calibrator_class == "IInt8MinMaxCalibrator"  # the default


def test_int8_auto_uses_an_existing_cache(tmp_path):
    (tmp_path / "calib.cache").write_text("TRT-8602-EntropyCalibration2\n")
    plan = plan_build(CAPS["8.6"], "int8", BuildOptions(), FIXED, files(tmp_path, "fp32"))
    assert plan.int8_method == "calibrator"


def test_int8_calibrator_is_a_clear_error_on_11(tmp_path):
    opts = BuildOptions(int8_mode="calibrator", calib_dir=tmp_path)
    with pytest.raises(StpmError, match=r"removed in 11.*stpm-export MODEL.pt --int8"):
        plan_build(CAPS["11"], "int8", opts, FIXED, files(tmp_path, "fp32"))


def test_int8_without_graph_or_images(tmp_path):
    with pytest.raises(StpmError, match="no model.int8.onnx"):
        plan_build(CAPS["10.3"], "int8", BuildOptions(), FIXED, files(tmp_path, "fp32"))
    with pytest.raises(StpmError, match="--calib DIR"):
        plan_build(CAPS["10.3"], "int8", BuildOptions(int8_mode="calibrator"), FIXED, files(tmp_path, "fp32"))


def test_missing_fp32_model_is_needed_only_by_paths_reading_it(tmp_path):
    plan = plan_build(CAPS["10.3"], "fp16", BuildOptions(), FIXED, files(tmp_path, "fp16"))
    assert plan.onnx_path.name == "model.fp16.onnx"
    with pytest.raises(StpmError, match="model.onnx, which is missing"):
        plan_build(CAPS["8.6"], "fp16", BuildOptions(), FIXED, files(tmp_path, "fp16"))


def test_dla_core(tmp_path):
    plan = plan_build(CAPS["8.5"], "fp16", BuildOptions(dla_core=1), FIXED, files(tmp_path, "fp32"))
    assert plan.dla_core == 1 and plan.builder_flags[-1] == "GPU_FALLBACK"
    plan = plan_build(CAPS["8.5"], "fp16", BuildOptions(dla_core=0, gpu_fallback=False), FIXED, files(tmp_path, "fp32"))
    assert "GPU_FALLBACK" not in plan.builder_flags
    with pytest.raises(StpmError, match="DLA runs FP16 and INT8 only"):
        plan_build(CAPS["8.5"], "fp32", BuildOptions(dla_core=0), FIXED, files(tmp_path, "fp32"))
    with pytest.raises(StpmError, match="--dla-core"):
        plan_build(CAPS["8.5"], "fp16", BuildOptions(dla_core=-1), FIXED, files(tmp_path, "fp32"))


@pytest.mark.parametrize("release", ["8.5", "10.3", "11"])
def test_dla_refuses_dynamic_batch(tmp_path, release):
    # DLA supports no dynamic dimensions (profile min = opt = max, runtime shape = build shape)
    f = files(tmp_path, "fp32", "fp16", "int8")
    for precision in ("fp16", "int8"):
        with pytest.raises(StpmError, match="DLA needs a fixed batch"):
            plan_build(CAPS[release], precision, BuildOptions(dla_core=0), DYNAMIC, f)
    plan = plan_build(CAPS[release], "int8", BuildOptions(dla_core=0), FIXED, f)
    assert plan.dla_core == 0 and plan.profile is None and plan.builder_flags[-1] == "GPU_FALLBACK"


@pytest.mark.parametrize("release", ["8.5", "8.6", "10.3"])
def test_dla_with_the_classic_calibrator_needs_the_entropy_calibrator(tmp_path, release):
    """Issue 19: IInt8EntropyCalibrator2 is "the required calibrator for DLA"; the default is MinMax."""
    f = files(tmp_path, "fp32")
    with pytest.raises(StpmError, match=r"DLA requires TensorRT's entropy calibrator \(IInt8EntropyCalibrator2\), "
                                        r"not IInt8MinMaxCalibrator: pass --calib-method entropy"):
        plan_build(CAPS[release], "int8", BuildOptions(dla_core=0, int8_mode="calibrator", calib_dir=tmp_path),
                   FIXED, f)
    plan = plan_build(CAPS[release], "int8", BuildOptions(dla_core=0, int8_mode="calibrator", calib_dir=tmp_path,
                                                          calib_method="entropy"), FIXED, f)
    assert plan.calibrator_class == "IInt8EntropyCalibrator2" and plan.dla_core == 0
    plan = plan_build(CAPS[release], "int8", BuildOptions(int8_mode="calibrator", calib_dir=tmp_path), FIXED, f)
    assert plan.calibrator_class == "IInt8MinMaxCalibrator"  # the GPU takes either


def test_optimization_level_and_workspace(tmp_path):
    plan = plan_build(CAPS["8.6"], "fp32", BuildOptions(optimization_level=5, workspace_mib=256), FIXED,
                      files(tmp_path, "fp32"))
    assert plan.optimization_level == 5 and plan.workspace_bytes == 256 << 20
    plan = plan_build(CAPS["8.5"], "fp32", BuildOptions(optimization_level=5), FIXED, files(tmp_path, "fp32"))
    assert plan.optimization_level is None and any("optimization level ignored" in n for n in plan.notes)
    with pytest.raises(StpmError, match="--opt-level"):
        plan_build(CAPS["10.3"], "fp32", BuildOptions(optimization_level=7), FIXED, files(tmp_path, "fp32"))
    assert plan_build(CAPS["10.3"], "fp32", BuildOptions(workspace_mib=None), FIXED,
                      files(tmp_path, "fp32")).workspace_bytes is None


def test_bad_option_values(tmp_path):
    f = files(tmp_path, "fp32")
    for opts, match in ((BuildOptions(fp16_mode="x"), "fp16_mode"), (BuildOptions(int8_mode="x"), "--trt-int8"),
                        (BuildOptions(workspace_mib=0), "--workspace")):
        with pytest.raises(StpmError, match=match):
            plan_build(CAPS["10.3"], "fp32", opts, FIXED, f)
    with pytest.raises(StpmError, match="precision"):
        plan_build(CAPS["10.3"], "bf16", BuildOptions(), FIXED, f)
    # ONNX Runtime's percentile method is fine for the Q/DQ graph, not for TensorRT's calibrators
    assert plan_build(CAPS["10.3"], "fp16", BuildOptions(calib_method="percentile"), FIXED, f).precision == "fp16"
    with pytest.raises(StpmError, match="--calib-method 'percentile'"):
        plan_build(CAPS["10.3"], "int8", BuildOptions(calib_method="percentile", calib_dir=tmp_path), FIXED, f)


# -- optimization profiles ----------------------------------------------------------------------

def test_profile_shapes():
    assert profile_shapes(FIXED) is None
    assert profile_shapes(FIXED, 1, 1, 1) is None
    with pytest.raises(StpmError, match="fixed batch of 1"):
        profile_shapes(FIXED, max_batch=8)
    p = profile_shapes(DYNAMIC)
    assert (p.min, p.opt, p.max) == ((1, 480, 640, 3), (8, 480, 640, 3), (8, 480, 640, 3))
    p = profile_shapes(DYNAMIC, 2, 4, 16)
    assert (p.min[0], p.opt[0], p.max[0]) == (2, 4, 16)
    p = profile_shapes(FLOAT_NCHW, max_batch=4)
    assert p.max == (4, 3, 256, 256) and p.min == (1, 3, 256, 256)
    assert profile_shapes(DYNAMIC, min_batch=12).max == (12, 480, 640, 3)
    with pytest.raises(StpmError, match="min <= opt <= max"):
        profile_shapes(DYNAMIC, 4, 2, 8)
    with pytest.raises(StpmError, match="--max-batch"):
        profile_shapes(DYNAMIC, max_batch=0)
    assert calibration_profile(FLOAT_NCHW, 8).opt == (8, 3, 256, 256)
    assert profile_shapes(DYNAMIC, 1, 2, 4).to_dict() == {"min": [1, 480, 640, 3], "opt": [2, 480, 640, 3],
                                                          "max": [4, 480, 640, 3]}


# -- which layers stay FP32 ---------------------------------------------------------------------

@pytest.mark.parametrize("name, ltype, ins, outs, keep", [
    ("/head/Mul_10", "ELEMENTWISE", ["FLOAT", "FLOAT"], ["FLOAT"], True),
    ("/head/ReduceSum_7", "REDUCE", ["FLOAT"], ["FLOAT"], True),
    ("/head/Resize", "RESIZE", ["FLOAT", "INT32"], ["FLOAT"], True),
    ("/Div", "ELEMENTWISE", ["FLOAT", "FLOAT"], ["FLOAT"], True),  # normalisation
    ("/pre/Gather", "GATHER", ["FLOAT", "INT32"], ["FLOAT"], True),
    ("/pre/Cast", "CAST", ["UINT8"], ["FLOAT"], False),  # the uint8 frame cast
    ("/pre/Cast", "IDENTITY", ["UINT8"], ["FLOAT"], False),  # 8.5 imports Cast as an identity
    ("/head/Shape", "SHAPE", ["FLOAT"], ["INT64"], False),
    ("/head/Concat", "CONCATENATION", ["INT64", "INT64"], ["INT64"], False),
    ("/head/Constant_14_output_0", "CONSTANT", [], ["FLOAT"], False),
    ("/net/trunks/trunk/stem/stem.0/stem.0.1/Conv", "CONVOLUTION", ["FLOAT"], ["FLOAT"], False),
    ("/net/trunks/teacher/stages.4/Add", "ELEMENTWISE", ["FLOAT", "FLOAT"], ["FLOAT"], False),
    ("/net/trunks/Slice_5", "SLICE", ["FLOAT"], ["FLOAT"], True),  # outside the regions: FP32
    ("(Unnamed Layer* 12) [Shuffle]", "SHUFFLE", ["FLOAT"], ["FLOAT"], True),  # unknown helpers: safe side
])
def test_keep_fp32(name, ltype, ins, outs, keep):
    assert keep_fp32(name, ltype, ins, outs, ("/net/trunks/trunk/", "/net/trunks/teacher/")) is keep


def test_regions_are_the_exporters_scopes(small_model, tmp_path):
    """The plan pins by the regions the export wrote into the metadata (the method's low_precision)."""
    from stpm_edge.artifact import read_onnx_metadata
    from stpm_edge.export.onnx_export import export_onnx

    meta = read_onnx_metadata(export_onnx(small_model, tmp_path).onnx_path)
    assert meta.lowp.fp16 == ("/net/trunks/trunk/",)
    assert not keep_fp32("/net/trunks/trunk/stem/Conv", "CONVOLUTION", ["FLOAT"], ["FLOAT"], meta.lowp.fp16)


def test_cache_paths(tmp_path):
    assert default_timing_cache(tmp_path, "10.3.0", "8.7") == tmp_path / "timing-trt10.3.0-sm87.cache"
    f = files(tmp_path, "fp32")
    assert default_calib_cache(f, BuildOptions()) == tmp_path / "calib.cache"
    assert default_calib_cache(f, BuildOptions(calib_cache=Path("/x/c.cache"))) == Path("/x/c.cache")
