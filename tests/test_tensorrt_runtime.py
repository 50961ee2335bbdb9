"""TensorRT runtime side without a GPU: engine names, sidecars, the version/GPU compatibility
rule, engine I/O checks, backend selection, ``stpm info`` on engines, and the one-line
messages on a machine without TensorRT."""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from _trt_models import reference, write_engine, write_onnx

from stpm_edge.errors import StpmError
from stpm_edge.runtime.backends.base import InputSpec
from stpm_edge.tensorrt.engine_meta import (GpuInfo, check_compat, engine_path_for, onnx_path_for,
                                            read_sidecar, rebuild_hint, sidecar_path, split_model_name)
from stpm_edge.runtime.backends.select import (BackendChoice, EngineCandidate, TrtEnv, choose_backend, find_engine,
                                               open_backend)
from stpm_edge.tensorrt.runner import NP_DTYPES, TensorInfo, check_engine_io, max_batch

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
ORIN = GpuInfo("Orin", "8.7")
SPEC = InputSpec("frames", "uint8", "NHWC", "BGR", 1, 8, 8)
DYN = InputSpec("frames", "uint8", "NHWC", "BGR", None, 8, 8)


# -- names ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, base, precision, engine", [
    ("model.onnx", "model", "fp32", "model.fp32.engine"),
    ("model.fp16.onnx", "model", "fp16", "model.fp16.engine"),
    ("model.int8.onnx", "model", "int8", "model.int8.engine"),
    ("model.int8.engine", "model", "int8", "model.int8.engine"),
    ("cam.v2.onnx", "cam.v2", "fp32", "cam.v2.fp32.engine"),
])
def test_model_names(name, base, precision, engine):
    b, p = split_model_name(Path("d") / name)
    assert (b, p) == (Path("d") / base, precision)
    assert engine_path_for(Path("d") / name) == Path("d") / engine


def test_the_cpu_int8_form_is_never_an_engine_source(tmp_path):
    """Issue 19: model.int8.cpu.onnx (stpm-calibrate --int8-forms cpu) mapped to the engine name
    model.int8.cpu.fp32.engine and built as FP32; it is refused, and auto runs it on ONNX Runtime."""
    from stpm_edge.tensorrt.builder import build_engine

    cpu = write_onnx(tmp_path / "model.int8.cpu.onnx", precision="int8")
    with pytest.raises(StpmError, match=r"^model.int8.cpu.onnx is ONNX Runtime's CPU form of the INT8 model .*"
                                        r"TensorRT's INT8 source is model.int8.onnx$"):
        engine_path_for(Path("model.int8.cpu.onnx"))
    with pytest.raises(StpmError, match="CPU form of the INT8 model"):
        build_engine(cpu, "fp32", trt=object(), gpu=ORIN)  # refused before TensorRT is touched
    with pytest.raises(StpmError, match="cannot run on TensorRT: model.int8.cpu.onnx is ONNX Runtime's CPU form"):
        open_backend(cpu, "tensorrt")
    with open_backend(cpu, "auto") as backend:
        assert backend.name == "onnxruntime"


def test_variant_and_sidecar_names():
    assert onnx_path_for(Path("d/model"), "fp32") == Path("d/model.onnx")
    assert onnx_path_for(Path("d/model"), "int8") == Path("d/model.int8.onnx")
    assert engine_path_for(Path("d/model.onnx"), "fp16") == Path("d/model.fp16.engine")
    assert sidecar_path(Path("d/model.fp16.engine")) == Path("d/model.fp16.engine.json")  # never model.fp16.json
    with pytest.raises(StpmError, match="precision"):
        engine_path_for(Path("d/model.onnx"), "fp64")


# -- sidecar ---------------------------------------------------------------------------------------

def test_read_sidecar_and_errors(tmp_path):
    eng = write_engine(tmp_path / "model.fp16.engine")
    meta = read_sidecar(eng)
    assert meta["precision"] == "fp16" and meta["engine"]["tensorrt"] == "10.3.0"
    assert InputSpec.from_dict(meta["input"]) == SPEC

    lonely = tmp_path / "lonely.fp16.engine"
    lonely.write_bytes(b"x")
    with pytest.raises(StpmError, match="no sidecar lonely.fp16.engine.json"):
        read_sidecar(lonely)
    sidecar_path(lonely).write_text("{not json")
    with pytest.raises(StpmError, match="not a readable engine sidecar"):
        read_sidecar(lonely)
    sidecar_path(lonely).write_text(json.dumps({"input": {}}))
    with pytest.raises(StpmError, match="no 'engine' block"):
        read_sidecar(lonely)
    side = json.loads(sidecar_path(eng).read_text())
    side["engine"]["format_version"] = 99
    sidecar_path(lonely).write_text(json.dumps(side))
    with pytest.raises(StpmError, match="format_version 99.*stpm-export model.pt --fp16"):
        read_sidecar(lonely)
    del side["engine"]["gpu"]
    side["engine"]["format_version"] = 1
    sidecar_path(lonely).write_text(json.dumps(side))
    with pytest.raises(StpmError, match="engine.gpu"):
        read_sidecar(lonely)


def test_rebuild_hint_names_checkpoint_and_precision():
    assert rebuild_hint({"checkpoint": {"file": "brick.pt"}, "precision": "int8"}) == \
        "rebuild it on this machine: stpm-export brick.pt --int8"
    assert rebuild_hint(None) == "rebuild it on this machine: stpm-export MODEL.pt"


# -- compatibility: another TensorRT release or another GPU is refused ------------------------------

def _side(trt="10.3.0", gpu="Orin", cc="8.7", precision="fp16"):
    return {"precision": precision, "checkpoint": {"file": "model.pt"},
            "engine": {"tensorrt": trt, "gpu": {"name": gpu, "compute_capability": cc}}}


def test_compatible_engine_has_no_warnings():
    assert check_compat(_side(), trt_version="10.3.0", gpu=ORIN, engine_path="m.engine") == []
    assert check_compat(_side(trt="10.3.0"), trt_version="10.3.0.26", gpu=ORIN, engine_path="m.engine") == []


@pytest.mark.parametrize("built, here", [("8.5.2.2", "8.6.2.3"), ("10.3.0", "10.7.0"), ("11.0.0.dev", "11.0.0"),
                                         ("8.6.2.3", "10.3.0")])
def test_other_tensorrt_release_is_refused_with_a_rebuild_line(built, here):
    with pytest.raises(StpmError) as e:
        check_compat(_side(trt=built), trt_version=here, gpu=ORIN, engine_path="m.fp16.engine")
    msg = str(e.value)
    assert "\n" not in msg and f"built with TensorRT {built}" in msg and f"has TensorRT {here}" in msg
    assert msg.endswith("rebuild it on this machine: stpm-export model.pt --fp16")


def test_other_gpu_architecture_is_refused():
    with pytest.raises(StpmError, match=r"built for NVIDIA A100 \(compute capability 8.0\) but this GPU is Orin "
                                        r"\(compute capability 8.7\).*stpm-export model.pt --fp16"):
        check_compat(_side(gpu="NVIDIA A100", cc="8.0"), trt_version="10.3.0", gpu=ORIN, engine_path="m")


def test_same_architecture_other_model_warns():
    warnings = check_compat(_side(gpu="NVIDIA GeForce RTX 3080"), trt_version="10.3.0",
                            gpu=GpuInfo("NVIDIA GeForce RTX 3090", "8.7"), engine_path="m")
    assert len(warnings) == 1 and "RTX 3080" in warnings[0] and "RTX 3090" in warnings[0]


# -- engine I/O ------------------------------------------------------------------------------------

def _io(in_shape=(1, 8, 8, 3), in_dtype="UINT8", name="frames", outs=None):
    outs = outs if outs is not None else [TensorInfo("anomaly_map", False, "FLOAT", (1, 1, 8, 8)),
                                          TensorInfo("score", False, "FLOAT", (1,))]
    return [TensorInfo(name, True, in_dtype, in_shape)] + outs


def test_check_engine_io_accepts_the_contract():
    check_engine_io(_io(), SPEC, "m")
    check_engine_io(_io(in_shape=(-1, 8, 8, 3), outs=[TensorInfo("score", False, "FLOAT", (-1,)),
                                                      TensorInfo("anomaly_map", False, "HALF", (-1, 1, 8, 8))]),
                    DYN, "m")


@pytest.mark.parametrize("tensors, match", [
    (_io(name="images"), "engine input is 'images'"),
    (_io(in_dtype="FLOAT"), "is FLOAT, the sidecar says uint8"),
    (_io(in_shape=(-1, 8, 8, 3)), r"shape \[-1, 8, 8, 3\], the sidecar says \[1, 8, 8, 3\]"),
    (_io(in_shape=(1, 3, 8, 8)), "NHWC"),
    (_io(outs=[TensorInfo("anomaly_map", False, "FLOAT", (1, 1, 8, 8)), TensorInfo("scores", False, "FLOAT", (1,))]),
     "no output 'score'"),
    (_io(outs=[TensorInfo("anomaly_map", False, "INT32", (1, 1, 8, 8)), TensorInfo("score", False, "FLOAT", (1,))]),
     "is INT32"),
    (_io(outs=[TensorInfo("anomaly_map", False, "FLOAT", (1, 8, 8)), TensorInfo("score", False, "FLOAT", (1,))]),
     "rank 3, expected 4"),
    (_io(outs=[TensorInfo("score", False, "FLOAT", (1,))]), "expected 1 input and 2 outputs"),
])
def test_check_engine_io_rejects(tensors, match):
    with pytest.raises(StpmError, match=match):
        check_engine_io(tensors, SPEC, "m")


def test_max_batch_and_dtypes():
    assert max_batch(SPEC, None) == 1
    assert max_batch(DYN, (16, 8, 8, 3)) == 16
    with pytest.raises(StpmError, match="without an optimization profile"):
        max_batch(DYN, None)
    assert NP_DTYPES["UINT8"] == "uint8" and NP_DTYPES["FLOAT"] == "float32"


# -- backend selection -----------------------------------------------------------------------------

def _cand(tmp_path, **kw) -> EngineCandidate:
    eng = write_engine(tmp_path / "model.fp32.engine", precision="fp32", **kw)
    return EngineCandidate(eng, read_sidecar(eng), "", True)


READY = TrtEnv("10.3.0", ORIN)


def test_choose_engine_file():
    c = choose_backend(Path("m.fp16.engine"))
    assert c == BackendChoice("tensorrt", Path("m.fp16.engine"), None, "auto: m.fp16.engine is a TensorRT engine")
    assert choose_backend(Path("m.fp16.engine"), "tensorrt").kind == "tensorrt"
    with pytest.raises(StpmError, match="runs on the tensorrt backend only"):
        choose_backend(Path("m.fp16.engine"), "cpu")


def test_choose_onnx_auto(tmp_path):
    onnx_path = tmp_path / "model.onnx"
    c = choose_backend(onnx_path)
    assert c.kind == "onnxruntime" and c.providers == "auto" and "no TensorRT engine model.fp32.engine" in c.reason
    cand = _cand(tmp_path)
    c = choose_backend(onnx_path, engine=cand, trt=READY)
    assert c.kind == "tensorrt" and c.path == cand.path and "fits TensorRT 10.3.0 on Orin" in c.reason
    c = choose_backend(onnx_path, engine=cand, trt=TrtEnv(reason="tensorrt is not installed"))
    assert c.kind == "onnxruntime" and "tensorrt is not installed" in c.reason
    c = choose_backend(onnx_path, engine=cand, trt=TrtEnv("10.3.0", None, "no CUDA GPU (driver)"))
    assert c.kind == "onnxruntime" and "no CUDA GPU" in c.reason
    c = choose_backend(onnx_path, engine=cand, trt=TrtEnv("10.7.0", ORIN))
    assert c.kind == "onnxruntime" and "built with TensorRT 10.3.0" in c.reason
    c = choose_backend(onnx_path, engine=_cand(tmp_path, cc="8.6"), trt=READY)
    assert c.kind == "onnxruntime" and "compute capability 8.6" in c.reason
    stale = EngineCandidate(cand.path, cand.sidecar, "", False)
    c = choose_backend(onnx_path, engine=stale, trt=READY)
    assert c.kind == "onnxruntime" and "stale" in c.reason
    broken = EngineCandidate(cand.path, None, "model.fp32.engine: bad sidecar")
    assert "bad sidecar" in choose_backend(onnx_path, engine=broken, trt=READY).reason


def test_choose_onnx_explicit(tmp_path):
    onnx_path = tmp_path / "model.onnx"
    assert choose_backend(onnx_path, "cpu").providers == "cpu"
    assert choose_backend(onnx_path, "cuda").providers == "cuda"
    assert choose_backend(onnx_path, "onnxruntime").providers == "auto"
    assert choose_backend(onnx_path, "tensorrt", engine=_cand(tmp_path), trt=READY).kind == "tensorrt"
    with pytest.raises(StpmError, match="cannot run on TensorRT: no TensorRT engine"):
        choose_backend(onnx_path, "tensorrt")
    with pytest.raises(StpmError, match="unknown 'gpu'"):
        choose_backend(onnx_path, "gpu")
    with pytest.raises(StpmError, match="unknown model type '.bin'"):
        choose_backend(Path("m.bin"))
    assert choose_backend(Path("m.pt")).kind == "torch"  # checkpoints open the same way
    with pytest.raises(StpmError, match="checkpoint runs with backend"):
        choose_backend(Path("m.pt"), "tensorrt")


def test_find_engine_checks_the_source_hash(tmp_path, caplog):
    onnx_path = write_onnx(tmp_path / "model.onnx")
    assert find_engine(onnx_path) is None
    write_engine(tmp_path / "model.fp16.engine", precision="fp16")
    with caplog.at_level(logging.INFO, logger="stpm_edge.runtime.backends.select"):
        assert find_engine(onnx_path) is None  # another precision is never picked silently
    assert "model.fp16.engine beside it are not FP32" in caplog.text
    write_engine(tmp_path / "model.fp32.engine", precision="fp32", source=onnx_path)
    cand = find_engine(onnx_path)
    assert cand.sidecar is not None and cand.source_matches is True
    write_onnx(onnx_path, h=16, w=16)  # re-exported: the engine is stale now
    assert find_engine(onnx_path).source_matches is False
    sidecar_path(cand.path).write_text("{}")
    assert find_engine(onnx_path).sidecar is None


def test_open_backend_falls_back_to_onnxruntime(tmp_path, caplog):
    onnx_path = write_onnx(tmp_path / "model.onnx", batch=None)
    write_engine(tmp_path / "model.fp32.engine", precision="fp32", source=onnx_path)
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    with caplog.at_level(logging.INFO, logger="stpm_edge.runtime.backends.select"):
        backend = open_backend(onnx_path, "auto")
    try:
        if not HAVE_TRT:
            assert backend.name == "onnxruntime" and "tensorrt is not installed" in caplog.text
        amap, score = backend.infer(frames)
    finally:
        backend.close()
    ref_map, ref_score = reference(frames)
    assert np.abs(amap - ref_map).max() < 1e-6 and np.abs(score - ref_score).max() < 1e-6


@pytest.mark.skipif(HAVE_TRT, reason="checks the messages of a machine without TensorRT")
def test_without_tensorrt_the_messages_say_how_to_install(tmp_path):
    from stpm_edge.tensorrt.builder import maybe_build_engine
    from stpm_edge.runtime.backends.select import probe_tensorrt

    onnx_path = write_onnx(tmp_path / "model.onnx")
    skip = maybe_build_engine(onnx_path, "fp16")
    assert not skip.built and "tensorrt is not installed" in str(skip) and "stpm-edge[tensorrt]" in str(skip)
    assert probe_tensorrt().reason == "tensorrt is not installed"
    eng = write_engine(tmp_path / "model.fp16.engine")
    with pytest.raises(StpmError, match=r"tensorrt is not installed .*JetPack"):
        open_backend(eng)
    fp16 = write_onnx(tmp_path / "model.fp16.onnx", precision="fp16")
    with pytest.raises(StpmError, match="cannot run on TensorRT: tensorrt is not installed"):
        open_backend(fp16, "tensorrt")


@pytest.fixture
def no_tensorrt_module():
    """Forget any imported ``tensorrt`` before and after the test (the test imports a fake one)."""
    import sys

    saved = sys.modules.pop("tensorrt", None)
    yield
    sys.modules.pop("tensorrt", None)
    if saved is not None:
        sys.modules["tensorrt"] = saved


@pytest.mark.skipif(HAVE_TRT, reason="puts a fake tensorrt on the path of a machine without TensorRT")
@pytest.mark.parametrize("content", [None, "__init__.pyi"])
def test_an_empty_tensorrt_package_is_not_tensorrt(tmp_path, monkeypatch, no_tensorrt_module, content):
    """Issue 19: an empty namespace package (tensorrt-stubs alone, a stray tensorrt/ folder) imports;
    it must give the install line, not AttributeError: module 'tensorrt' has no attribute '__version__'."""
    from stpm_edge.runtime.backends.select import probe_tensorrt
    from stpm_edge.tensorrt.api import import_tensorrt
    from stpm_edge.tensorrt.builder import maybe_build_engine

    folder = tmp_path / "site" / "tensorrt"
    folder.mkdir(parents=True)
    if content:
        (folder / content).write_text("class Builder: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(StpmError, match=r"^tensorrt is not installed \(the 'tensorrt' found at .*site.tensorrt "
                                        r"is not TensorRT: it has no __version__.*\); pip install"):
        import_tensorrt()
    assert probe_tensorrt().reason.startswith("tensorrt is not installed (the 'tensorrt' found at")
    skip = maybe_build_engine(write_onnx(tmp_path / "model.onnx"), "fp32")
    assert not skip.built and "is not TensorRT" in str(skip)


def test_engine_backend_rejects_wrong_files(tmp_path):
    from stpm_edge.tensorrt.runner import TensorRTBackend

    with pytest.raises(StpmError, match="runs .engine files"):
        TensorRTBackend(tmp_path / "model.onnx")
    with pytest.raises(StpmError, match="no such engine file"):
        TensorRTBackend(tmp_path / "model.fp16.engine")


def test_stpm_info_on_an_engine(tmp_path):
    from _cli import CliRunner

    from stpm_edge.cli.app import app

    eng = write_engine(tmp_path / "model.fp16.engine", trt="8.6.2.3", gpu="Orin")
    res = CliRunner().invoke(app, ["info", str(eng), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["precision"] == "fp16" and info["engine"]["tensorrt"] == "8.6.2.3"
    assert info["engine"]["gpu"]["name"] == "Orin" and info["matches_sidecar"] is True
    assert info["input"]["shape"] == [1, 8, 8, 3]
    res = CliRunner().invoke(app, ["info", str(tmp_path / "missing.fp16.engine")])
    assert res.exit_code == 1
