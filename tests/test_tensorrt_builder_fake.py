"""The builder calls the TensorRT API in the documented order, per release — checked against a
FAKE ``tensorrt`` module that only records calls.

Nothing here is a TensorRT result: the fake builds no engine (it returns placeholder bytes)
and knows nothing about kernels or precision. It checks which network flags, builder flags,
layer pins, profiles, calibrator callbacks and cache writes ``build_engine`` asks for on
8.5-, 8.6-, 10.3- and 11-shaped APIs, and how failures are reported. The fake is held to the
real modules (``_trt_api``): its classes have only members the real classes have, its enums
are the real ones (names and values), so a misspelt or removed TensorRT name fails here too.
Real engines are built and compared with ONNX Runtime in ``test_tensorrt_gpu.py``.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from _trt_api import fake_enum, fake_module, has, restrict
from _trt_models import write_onnx

from stpm_edge.errors import StpmError
from stpm_edge.tensorrt.builder import build_engine, caps_from_module
from stpm_edge.tensorrt.plan import BuildOptions
from stpm_edge.tensorrt.engine_meta import GpuInfo, read_sidecar

GPU = GpuInfo("Fake GPU", "8.7", 0, 8192)
LAYER_TYPES = {"Cast": "CAST", "ReduceMean": "REDUCE", "Transpose": "SHUFFLE", "Mul": "ELEMENTWISE",
               "ReduceMax": "REDUCE"}


def fake_trt(version: str, fail_parse: bool = False, fail_build: bool = False,
             set_profile_ok: bool = True, no_cuda: str | None = None) -> types.ModuleType:
    """A module shaped like ``tensorrt`` ``version`` (8.x, 10.x or 11.x), recording calls in ``.calls``.

    Like TensorRT, it keeps one global logger: the first one a Builder got receives every later
    message (NVIDIA/TensorRT#1475). ``no_cuda``: "raise" — Builder() logs CUDA's failure and raises
    pybind's TypeError; "errors" — it logs the failure and returns an object anyway.
    ``trt._fail["build"]`` can be switched between builds.
    """
    calls: list[tuple] = []
    trt = fake_module(version)
    trt.calls = calls
    trt._fail = {"build": fail_build}
    global_logger: list = []
    # Flag values differ between releases (STRONGLY_TYPED is 1 in 10 and 0 in 11, where EXPLICIT_BATCH
    # is gone); the builder must use the names. The enums are the real ones.
    for enum in ("NetworkDefinitionCreationFlag", "BuilderFlag", "MemoryPoolType", "DeviceType", "DataType",
                 "LayerType"):
        setattr(trt, enum, fake_enum(version, enum))
    trt.float32 = trt.DataType.FLOAT
    severity = fake_enum(version, "ILogger.Severity")

    class ILogger:
        Severity = severity

        def __init__(self) -> None:
            self._initialised = True

    trt.ILogger = restrict(ILogger, version, "ILogger")
    for cls in ("IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator"):
        if has(version, cls):
            setattr(trt, cls, restrict(type(cls, (), {"__init__": lambda self: None}), version, cls))

    class ITensor:
        def __init__(self, name: str, dtype: str) -> None:
            self.name, self.dtype = name, getattr(trt.DataType, dtype)

    class ILayer:
        def __init__(self, name: str, ltype: str, ins: list, outs: list) -> None:
            self.name, self.type = name, getattr(trt.LayerType, ltype)
            self._ins, self._outs = ins, outs
            self.num_inputs, self.num_outputs = len(ins), len(outs)

        def get_input(self, i):
            return self._ins[i]

        def get_output(self, i):
            return self._outs[i]

        def __setattr__(self, key, value):
            if key == "precision":
                calls.append(("precision", self.name, value.name))
            object.__setattr__(self, key, value)

        def set_output_type(self, i, dtype):
            calls.append(("set_output_type", self.name, i, dtype.name))

    for cls in (ITensor, ILayer):
        restrict(cls, version, cls.__name__)

    class INetworkDefinition:
        def __init__(self) -> None:
            self._layers, self._inputs, self._outputs = [], [], []

        num_layers = property(lambda self: len(self._layers))
        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))

        def get_layer(self, i):
            return self._layers[i]

        def get_input(self, i):
            return self._inputs[i]

        def get_output(self, i):
            return self._outputs[i]

    restrict(INetworkDefinition, version, "INetworkDefinition")

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self._network, self.num_errors = network, 0

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", Path(path).name))
            if fail_parse:
                self.num_errors = 1
                return False
            model = onnx.load(path)
            net = self._network
            net._inputs = [ITensor(i.name, "UINT8") for i in model.graph.input]
            net._outputs = [ITensor(o.name, "FLOAT") for o in model.graph.output]
            net._layers.append(ILayer("k", "CONSTANT", [], [ITensor("k", "FLOAT")]))
            for node in model.graph.node:
                ins = [ITensor(n, "UINT8" if n == "frames" else "FLOAT") for n in node.input]
                net._layers.append(ILayer(node.name, LAYER_TYPES[node.op_type], ins,
                                          [ITensor(n, "FLOAT") for n in node.output]))
            return True

        def get_error(self, i):
            return "In node 3 (importResize): UNSUPPORTED_NODE: Assertion failed:\n  mode == linear"

    trt.OnnxParser = restrict(OnnxParser, version, "OnnxParser")

    class IOptimizationProfile:
        def set_shape(self, name, mn, opt, mx):
            self._shapes = (name, tuple(mn), tuple(opt), tuple(mx))

    restrict(IOptimizationProfile, version, "IOptimizationProfile")

    class ITimingCache:
        def __init__(self, data: bytes) -> None:
            self._data = data

        def serialize(self):
            calls.append(("serialize_timing_cache",))
            return memoryview(b"timing-cache:" + version.encode())

    restrict(ITimingCache, version, "ITimingCache")

    class IBuilderConfig:
        # Members some releases lack are defined here for all; restrict() removes them where the
        # real class has none (int8_calibrator and set_calibration_profile in 11, the level in 8.5).
        int8_calibrator = None
        builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag.name))

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag.name))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile", profile._shapes))
            return 0

        def set_calibration_profile(self, profile):
            calls.append(("set_calibration_profile", profile._shapes))
            return set_profile_ok

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return ITimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            object.__setattr__(self, "_cache", cache)
            return True

        def get_timing_cache(self):
            return self._cache

        def __setattr__(self, key, value):
            calls.append((key, value if not hasattr(value, "get_batch") else "calibrator"))
            object.__setattr__(self, key, value)

    trt.IBuilderConfig = restrict(IBuilderConfig, version, "IBuilderConfig")

    class Builder:
        num_DLA_cores = 0

        def __init__(self, logger) -> None:
            assert logger._initialised, "ILogger.__init__ must be called by the subclass"
            if not global_logger:
                global_logger.append(logger)
            self._logger = global_logger[0]  # TensorRT logs into the first logger it was given
            if no_cuda:
                self._logger.log(severity.ERROR, "createInferBuilder: Error Code 6: API Usage Error (CUDA "
                                                 "initialization failure with error: 35.\n Please check your CUDA "
                                                 "installation)")
                if no_cuda == "raise":
                    raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return INetworkDefinition()

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            calib = getattr(config, "int8_calibrator", None)
            if calib is not None:  # the calibrator protocol as TensorRT drives it
                if calib.read_calibration_cache() is None:
                    calls.append(("batch_size", calib.get_batch_size()))
                    while calib.get_batch(["frames"]) is not None:
                        calls.append(("get_batch",))
                    calib.write_calibration_cache(memoryview(b"TRT-8601-EntropyCalibration2\nframes: 3c010a14\n"))
            if trt._fail.get("silent"):
                return None
            if trt._fail["build"]:
                self._logger.log(severity.ERROR, "Error Code 4: Internal Error (no implementation obeys "
                                                 "reformatting-free rules)")
                return None
            return memoryview(b"serialized engine " + version.encode())

    trt.Builder = restrict(Builder, version, "Builder")
    return trt


def names(calls, kind):
    return [c[1] for c in calls if c[0] == kind]


@pytest.fixture
def model_dir(tmp_path):
    write_onnx(tmp_path / "model.onnx", batch=None)
    write_onnx(tmp_path / "model.fp16.onnx", batch=None, precision="fp16")
    write_onnx(tmp_path / "model.int8.onnx", batch=None, precision="int8")
    return tmp_path


def test_caps_from_the_fake_modules():
    caps = caps_from_module(fake_trt("8.6.1.6"))
    assert caps.weak_typing and not caps.strongly_typed and caps.optimization_level and caps.calibration_profile
    assert caps_from_module(fake_trt("8.5.2.2")).optimization_level is False
    caps = caps_from_module(fake_trt("11.0.0"))
    assert caps.strongly_typed and not caps.weak_typing and not caps.calibrators and not caps.calibration_profile


def test_fp16_on_86_pins_the_head_and_writes_engine_sidecar_and_timing_cache(model_dir):
    trt = fake_trt("8.6.1.6")
    res = build_engine(model_dir / "model.onnx", "fp16", BuildOptions(max_batch=4), trt=trt, gpu=GPU)
    calls = trt.calls
    order = [c[0] for c in calls if c[0] not in ("precision", "set_output_type")]
    assert order == ["create_network", "parse_from_file", "set_memory_pool_limit", "set_flag", "set_flag",
                     "clear_flag", "add_optimization_profile", "create_timing_cache", "set_timing_cache",
                     "build_serialized_network", "serialize_timing_cache"]
    assert calls[0] == ("create_network", 1 << 0)  # EXPLICIT_BATCH, by name
    assert names(calls, "parse_from_file") == ["model.onnx"]
    assert ("set_memory_pool_limit", "WORKSPACE", 1 << 30) in calls
    assert names(calls, "set_flag") == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and names(calls, "clear_flag") == ["TF32"]
    assert names(calls, "precision") == ["/head/Transpose", "/Mul", "/head/ReduceMax"]  # not /pre/Cast, trunks, k
    assert ("add_optimization_profile", ("frames", (1, 8, 8, 3), (4, 8, 8, 3), (4, 8, 8, 3))) in calls

    assert res.engine_path == model_dir / "model.fp16.engine"
    assert res.engine_path.read_bytes() == b"serialized engine 8.6.1.6"
    side = read_sidecar(res.engine_path)
    eng = side["engine"]
    assert side["precision"] == "fp16" and side["input"]["name"] == "frames"
    assert eng["tensorrt"] == "8.6.1.6" and eng["gpu"]["compute_capability"] == "8.7"
    assert eng["source"]["file"] == "model.onnx" and not eng["strongly_typed"]
    assert eng["pinned_fp32_layers"] == 3 and eng["trunk_layers"] == 1
    assert eng["profile"]["max"] == [4, 8, 8, 3]
    cache = model_dir / "timing-trt8.6.1.6-sm87.cache"
    assert cache.read_bytes() == b"timing-cache:8.6.1.6" and eng["timing_cache"] == str(cache)

    trt2 = fake_trt("8.6.1.6")  # the next build reuses the timing cache file
    build_engine(model_dir / "model.onnx", "fp32", BuildOptions(), trt=trt2, gpu=GPU)
    assert ("create_timing_cache", b"timing-cache:8.6.1.6") in trt2.calls
    assert names(trt2.calls, "set_flag") == [] and names(trt2.calls, "precision") == []
    assert (model_dir / "model.fp32.engine").is_file()


def test_fp16_on_103_is_a_strongly_typed_build_of_the_fp16_graph(model_dir):
    trt = fake_trt("10.3.0")
    res = build_engine(model_dir / "model.onnx", "fp16", BuildOptions(optimization_level=4, timing_cache=False),
                       trt=trt, gpu=GPU)
    calls = trt.calls
    assert calls[0] == ("create_network", 1 << 1)  # STRONGLY_TYPED only; EXPLICIT_BATCH is ignored in 10
    assert names(calls, "parse_from_file") == ["model.fp16.onnx"]
    assert names(calls, "set_flag") == [] and names(calls, "precision") == []
    assert ("builder_optimization_level", 4) in calls
    assert not any(c[0] == "create_timing_cache" for c in calls)
    assert res.sidecar["engine"]["strongly_typed"] and res.sidecar["precision"] == "fp16"
    assert res.engine_path.name == "model.fp16.engine"


def test_int8_on_11_builds_the_qdq_graph_without_flags(model_dir):
    trt = fake_trt("11.0.0")
    res = build_engine(model_dir / "model.onnx", "int8", BuildOptions(), trt=trt, gpu=GPU)
    assert trt.calls[0] == ("create_network", 0)
    assert names(trt.calls, "parse_from_file") == ["model.int8.onnx"]
    assert names(trt.calls, "set_flag") == [] and not any(c[0] == "int8_calibrator" for c in trt.calls)
    assert res.sidecar["engine"]["int8_method"] == "qdq"


def test_int8_calibrator_on_11_fails_before_any_build(model_dir):
    trt = fake_trt("11.0.0")
    with pytest.raises(StpmError, match="no implicit INT8 calibration"):
        build_engine(model_dir / "model.onnx", "int8", BuildOptions(int8_mode="calibrator", calib_dir=model_dir),
                     trt=trt, gpu=GPU)
    assert trt.calls == []


class FakeCuda:
    """Stands in for cuda-python: pinned arrays are plain numpy, copies are recorded."""

    name = "fake-cuda"

    def __init__(self) -> None:
        self.copies, self.freed = 0, []

    def activate(self):
        import contextlib

        return contextlib.nullcontext()

    def pinned_empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def malloc(self, nbytes):
        return 0xDEAD0000

    def stream_create(self):
        return "stream"

    def htod_async(self, dst, src, stream):
        self.copies += 1

    def synchronize(self, stream):
        pass

    def free(self, ptr):
        self.freed.append(ptr)

    def pinned_free(self, arr):
        self.freed.append("host")

    def stream_destroy(self, s):
        self.freed.append(s)


def test_classic_calibrator_on_86(model_dir, tmp_path, monkeypatch):
    images = tmp_path / "good"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        cv2.imwrite(str(images / f"{i:03d}.png"), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    cuda = FakeCuda()
    monkeypatch.setattr("stpm_edge.tensorrt.cuda.load_cuda", lambda device=0: cuda)
    (model_dir / "model.int8.onnx").unlink()  # no Q/DQ graph: auto falls back to the calibrator
    trt = fake_trt("8.6.1.6")
    opts = BuildOptions(calib_dir=images, calib_count=10, calib_batch=4, calib_method="entropy")
    res = build_engine(model_dir / "model.onnx", "int8", opts, trt=trt, gpu=GPU)
    calls = trt.calls
    assert names(calls, "set_flag") == ["INT8", "OBEY_PRECISION_CONSTRAINTS"]
    assert ("int8_calibrator", "calibrator") in calls
    assert ("set_calibration_profile", ("frames", (4, 8, 8, 3), (4, 8, 8, 3), (4, 8, 8, 3))) in calls
    assert ("batch_size", 4) in calls and calls.count(("get_batch",)) == 3 and cuda.copies == 3
    assert sorted(map(str, cuda.freed)) == sorted(["3735879680", "host", "stream"])
    assert (model_dir / "calib.cache").read_text().startswith("TRT-8601-EntropyCalibration2")
    assert res.sidecar["engine"]["int8_method"] == "calibrator" and res.sidecar["engine"]["calibration_batches"] == 3
    assert names(calls, "precision") == ["/head/Transpose", "/Mul", "/head/ReduceMax"]

    trt2 = fake_trt("8.6.1.6")  # cache present, no images: TensorRT reads the cache, no batches
    build_engine(model_dir / "model.onnx", "int8", BuildOptions(int8_mode="calibrator", calib_method="entropy"), trt=trt2, gpu=GPU)
    assert not any(c[0] in ("get_batch", "batch_size") for c in trt2.calls)

    with pytest.raises(StpmError, match="calibration cache header 'TRT-8601-EntropyCalibration2' is not "
                                        "'TRT-100300-EntropyCalibration2'.*--calib DIR"):
        build_engine(model_dir / "model.onnx", "int8", BuildOptions(int8_mode="calibrator", calib_method="entropy"),
                     trt=fake_trt("10.3.0"), gpu=GPU)


def test_parse_and_build_failures_are_one_line(model_dir):
    with pytest.raises(StpmError) as e:
        build_engine(model_dir / "model.onnx", "fp32", BuildOptions(), trt=fake_trt("8.5.2.2", fail_parse=True),
                     gpu=GPU)
    assert "\n" not in str(e.value) and "could not parse the graph (In node 3 (importResize)" in str(e.value)
    with pytest.raises(StpmError, match=r"could not build model.fp32.engine \(Error Code 4"):
        build_engine(model_dir / "model.onnx", "fp32", BuildOptions(), trt=fake_trt("10.3.0", fail_build=True),
                     gpu=GPU)
    assert not (model_dir / "model.fp32.engine").exists()


def test_out_path_and_sidecar_json_roundtrip(model_dir):
    out = model_dir / "deploy" / "cam1.fp16.engine"
    res = build_engine(model_dir / "model.fp16.onnx", "fp16", BuildOptions(out_path=out), trt=fake_trt("10.3.0"), gpu=GPU)
    assert res.engine_path == out and json.loads(res.sidecar_path.read_text())["engine"]["file"] == "cam1.fp16.engine"


# -- the fake is held to the real modules --------------------------------------------------------

@pytest.mark.parametrize("version", ["8.5.2.2", "8.6.1.6", "10.3.0", "10.13.3.9", "11.4.0.106"])
def test_the_fake_refuses_what_real_tensorrt_lacks(version):
    trt = fake_trt(version)
    config = trt.IBuilderConfig()
    with pytest.raises(AttributeError, match="builder_optimisation_level"):
        config.builder_optimisation_level = 3  # misspelt: no such member in any release
    with pytest.raises(AttributeError):
        config.max_workspace_sizee  # noqa: B018 - a read is refused too
    major_minor = tuple(int(x) for x in version.split(".")[:2])
    assert hasattr(config, "int8_calibrator") is (major_minor < (11, 0))  # removed in 11
    assert hasattr(trt.IBuilderConfig, "set_calibration_profile") is (major_minor < (11, 0))
    assert hasattr(config, "builder_optimization_level") is (major_minor >= (8, 6))
    assert hasattr(trt.DataType, "INT64") is (major_minor >= (10, 0))  # 8.6 has no INT64
    assert hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") is (major_minor < (11, 0))
    with pytest.raises(AttributeError, match="has no 'IInt8Calibrator3'"):
        trt.IInt8Calibrator3 = object


def test_a_misspelt_builder_config_attribute_fails_the_fake_build(model_dir, monkeypatch):
    """The acceptance check of issue 19, kept: misspell one IBuilderConfig attribute in the
    configure step and the fake-based build fails (a permissive fake would accept it)."""
    import inspect
    import sys

    from stpm_edge.tensorrt import builder, config

    source = inspect.getsource(config)
    misspelt = source.replace("config.builder_optimization_level = ", "config.builder_optimisation_level = ")
    assert misspelt != source
    module = types.ModuleType("stpm_edge.tensorrt._config_misspelt")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(misspelt, "config_misspelt.py", "exec"), module.__dict__)  # noqa: S102 - our own source
    monkeypatch.setattr(builder, "configure", module.configure)
    with pytest.raises(AttributeError, match="'IBuilderConfig of TensorRT 10.3.0' has no attribute "
                                             "'builder_optimisation_level'"):
        build_engine(model_dir / "model.onnx", "fp32", BuildOptions(optimization_level=4, timing_cache=False),
                     trt=fake_trt("10.3.0"), gpu=GPU)


# -- TensorRT's environment: CUDA that cannot start, one logger per process ------------------------

@pytest.mark.parametrize("how", ["raise", "errors"])
def test_tensorrt_that_cannot_start_cuda_is_one_line(model_dir, how):
    """Issue 19: Builder() fails (pybind TypeError) or, like the lean runtime, returns an object after
    logging errors; either is the project's one-line error with TensorRT's reason, before any work."""
    trt = fake_trt("11.4.0.106", no_cuda=how)
    with pytest.raises(StpmError) as e:
        build_engine(model_dir / "model.onnx", "fp32", BuildOptions(), trt=trt, gpu=GPU)
    msg = str(e.value)
    assert msg.startswith("TensorRT 11.4.0.106 could not start (trt.Builder: createInferBuilder: Error Code 6: "
                          "API Usage Error (CUDA initialization failure with error: 35. Please check")
    assert "tensorrt-cu12" in msg and "\n" not in msg
    assert not any(c[0] == "create_network" for c in trt.calls)


def test_one_logger_per_process(model_dir):
    """Issue 19: TensorRT keeps one global logger pointer, so a second build's errors land in the
    first build's logger; with one process-wide logger the second build still reports its own error."""
    from stpm_edge.tensorrt.api import make_logger

    trt = fake_trt("10.3.0")
    assert make_logger(trt) is make_logger(trt) and make_logger(trt) is not make_logger(fake_trt("10.3.0"))
    build_engine(model_dir / "model.onnx", "fp32", BuildOptions(), trt=trt, gpu=GPU)
    trt._fail["build"] = True
    with pytest.raises(StpmError, match=r"could not build model.fp32.engine \(Error Code 4: Internal Error"):
        build_engine(model_dir / "model.onnx", "fp32", BuildOptions(), trt=trt, gpu=GPU)
    trt._fail.update(build=False, silent=True)  # a later failure does not report the earlier error
    with pytest.raises(StpmError, match=r"could not build model.fp32.engine \(see the TensorRT log\)"):
        build_engine(model_dir / "model.onnx", "fp32", BuildOptions(), trt=trt, gpu=GPU)


def test_a_rejected_calibration_profile_is_an_error(model_dir, monkeypatch):
    """Issue 19: set_calibration_profile returns False when TensorRT rejects the profile; checked."""
    from stpm_edge.tensorrt.calibration_cache import CalibrationCache, write_cache

    write_cache(model_dir / "calib.cache", CalibrationCache("TRT-8601-MinMaxCalibration", {"frames": 0.0078}))
    monkeypatch.setattr("stpm_edge.tensorrt.cuda.load_cuda", lambda device=0: FakeCuda())
    trt = fake_trt("8.6.1.6", set_profile_ok=False)
    with pytest.raises(StpmError, match=r"TensorRT 8.6.1.6 rejected the calibration profile \{'min': \[8, 8, 8, 3\]"):
        build_engine(model_dir / "model.onnx", "int8", BuildOptions(int8_mode="calibrator"), trt=trt, gpu=GPU)
    assert ("set_calibration_profile", ("frames", (8, 8, 8, 3), (8, 8, 8, 3), (8, 8, 8, 3))) in trt.calls
    assert not any(c[0] == "build_serialized_network" for c in trt.calls)
