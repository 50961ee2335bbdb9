"""ONNX Runtime backend: tiny contract-following models built here with onnx.helper.

The test model computes, per frame, the channel mean of the input, 2x2 average pooling and
a /255 (uint8) scale as ``anomaly_map`` and its maximum as ``score`` — easy to reproduce in
numpy and dependent on each frame alone, so batching, chunking and ordering are checkable.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from stpm_edge.errors import StpmError
from stpm_edge.runtime.backends import Backend, InputSpec
from stpm_edge.runtime.backends.onnxruntime import (
    CPU,
    CUDA,
    TENSORRT,
    OnnxRuntimeBackend,
    available_providers,
    choose_providers,
)

H, W = 8, 12


def _meta(model_dtype: str, batch: int | None, /, **overrides: Any) -> dict[str, Any]:
    nhwc = model_dtype == "uint8"
    inp = {
        "name": "frames", "dtype": model_dtype, "layout": "NHWC" if nhwc else "NCHW",
        "color": "BGR" if nhwc else "RGB", "batch": batch, "height": H, "width": W,
    }
    inp.update(overrides)
    return {
        "format": "stpm-edge/onnx", "input": inp, "threshold": 0.5,
        "outputs": {"anomaly_map": {"shape": ["N", 1, H // 2, W // 2]}, "score": {"shape": ["N"]}},
    }


def build_model(
    path: Path, dtype: str = "uint8", batch: int | None = None, meta: dict[str, Any] | None = None,
    with_meta: bool = True,
) -> Path:
    n: int | str = batch if batch is not None else "batch"
    nodes = []
    if dtype == "uint8":
        x = helper.make_tensor_value_info("frames", TensorProto.UINT8, [n, H, W, 3])
        nodes += [
            helper.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        ]
        src, scale = "nchw", 1.0 / 255.0
    else:
        x = helper.make_tensor_value_info("frames", TensorProto.FLOAT, [n, 3, H, W])
        src, scale = "frames", 1.0
    nodes += [
        helper.make_node("ReduceMean", [src], ["gray"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Mul", ["pooled", "scale"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0),
    ]
    init = [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])]
    # Outputs deliberately listed score-first: the backend must pick outputs by name.
    outs = [
        helper.make_tensor_value_info("score", TensorProto.FLOAT, [n]),
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [n, 1, H // 2, W // 2]),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], outs, initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if with_meta:
        helper.set_model_props(model, {"stpm_edge": json.dumps(meta or _meta(dtype, batch))})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = frames.astype(np.float64)
    if frames.dtype == np.uint8:
        x = x.transpose(0, 3, 1, 2) / 255.0
    g = x.mean(axis=1, keepdims=True)
    n = len(frames)
    amap = g.reshape(n, 1, H // 2, 2, W // 2, 2).mean(axis=(3, 5))
    return amap.astype(np.float32), amap.max(axis=(1, 2, 3)).astype(np.float32)


def uint8_frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def open_cpu(path: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(path, providers="cpu", threads=1)


def assert_matches(backend: Backend, frames: np.ndarray) -> None:
    amap, score = backend.infer(frames)
    ref_map, ref_score = reference(frames)
    assert amap.dtype == np.float32 and score.dtype == np.float32
    assert amap.shape == ref_map.shape and score.shape == (len(frames),)
    np.testing.assert_allclose(amap, ref_map, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(score, ref_score, rtol=1e-5, atol=1e-5)


def one_line_error(excinfo: pytest.ExceptionInfo[StpmError]) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


# -- inference ------------------------------------------------------------------------------


def test_uint8_nhwc_dynamic_batch(tmp_path: Path) -> None:
    with open_cpu(build_model(tmp_path / "m.onnx")) as b:
        assert b.input_spec == InputSpec("frames", "uint8", "NHWC", "BGR", None, H, W)
        assert b.metadata.threshold == 0.5 and b.metadata.format == "stpm-edge/onnx"
        assert_matches(b, uint8_frames(3))
        assert_matches(b, uint8_frames(1, seed=1))


def test_float_nchw_input(tmp_path: Path) -> None:
    with open_cpu(build_model(tmp_path / "m.onnx", dtype="float32")) as b:
        assert (b.input_spec.layout, b.input_spec.color) == ("NCHW", "RGB")
        frames = np.random.default_rng(2).standard_normal((3, 3, H, W)).astype(np.float32)
        assert_matches(b, frames)


class _RecordingSession:
    """Wraps an ORT session, recording every batch fed to it."""

    def __init__(self, session: Any) -> None:
        self.session, self.fed = session, []

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> Any:
        self.fed.append(feed["frames"].copy())
        return self.session.run(names, feed)

    def get_providers(self) -> list[str]:
        return self.session.get_providers()


@pytest.mark.parametrize("batch, chunks", [(1, 3), (2, 2)])
def test_fixed_batch_chunks_and_pads(tmp_path: Path, batch: int, chunks: int) -> None:
    frames = uint8_frames(3, seed=3)
    with open_cpu(build_model(tmp_path / "m.onnx", batch=batch)) as b:
        assert b.input_spec.batch == batch
        rec = _RecordingSession(b._session)
        b._session = rec
        assert_matches(b, frames)
        assert len(rec.fed) == chunks and all(len(c) == batch for c in rec.fed)
        fed = np.concatenate(rec.fed)
        np.testing.assert_array_equal(fed[:3], frames)
        # Padding repeats the last frame.
        for extra in fed[3:]:
            np.testing.assert_array_equal(extra, frames[-1])
        rec.fed.clear()
        assert_matches(b, frames[:batch])  # an exact batch: one run, no padding
        assert len(rec.fed) == 1


# -- input checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames, got",
    [
        (np.zeros((2, 3, H, W), np.float32), f"got float32 (2, 3, {H}, {W})"),
        (np.zeros((2, H + 2, W, 3), np.uint8), f"got uint8 (2, {H + 2}, {W}, 3)"),
        (np.zeros((2, H, W, 4), np.uint8), f"got uint8 (2, {H}, {W}, 4)"),
        (np.zeros((H, W, 3), np.uint8), f"got uint8 ({H}, {W}, 3)"),
        (np.zeros((0, H, W, 3), np.uint8), f"got uint8 (0, {H}, {W}, 3)"),
        ([[1, 2]], "got list"),
    ],
)
def test_bad_frames_one_line_error(tmp_path: Path, frames: Any, got: str) -> None:
    with open_cpu(build_model(tmp_path / "m.onnx")) as b:
        with pytest.raises(StpmError) as ei:
            b.infer(frames)
    assert one_line_error(ei) == f"frames: expected uint8 (N, {H}, {W}, 3) NHWC BGR, {got}"


def test_input_spec_check_fixed_batch() -> None:
    spec = InputSpec.from_dict(_meta("uint8", 2)["input"])
    spec.check(uint8_frames(2))
    with pytest.raises(StpmError, match=r"expected uint8 \(2, 8, 12, 3\) NHWC BGR, got uint8 \(3, 8, 12, 3\)"):
        spec.check(uint8_frames(3))
    spec.check(uint8_frames(3), any_batch=True)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"dtype": "float16"}, "input.dtype"),
        ({"layout": "HWC"}, "input.layout"),
        ({"color": "GRAY"}, "input.color"),
        ({"batch": 0}, "input.batch"),
        ({"batch": True}, "input.batch"),
        ({"height": 8.0}, "input.height"),
        ({"name": ""}, "input.name"),
    ],
)
def test_input_spec_from_dict_rejects(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(StpmError, match=needle):
        InputSpec.from_dict({**_meta("uint8", None)["input"], **change})
    d = _meta("uint8", None)["input"]
    del d["width"]
    with pytest.raises(StpmError, match="missing 'width'"):
        InputSpec.from_dict(d)


# -- loading errors -------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StpmError) as ei:
        open_cpu(tmp_path / "nope.onnx")
    assert one_line_error(ei) == f"{tmp_path / 'nope.onnx'}: no such model file"


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00\xffthis is not a protobuf\n\x13" * 10)
    with pytest.raises(StpmError) as ei:
        open_cpu(path)
    assert one_line_error(ei).startswith(f"{path}: not a loadable ONNX model (")


def test_onnx_without_metadata(tmp_path: Path) -> None:
    path = build_model(tmp_path / "m.onnx", with_meta=False)
    with pytest.raises(StpmError) as ei:
        open_cpu(path)
    assert one_line_error(ei) == f"{path}: not an stpm-edge model (no 'stpm_edge' metadata)"


@pytest.mark.parametrize(
    "meta, needle",
    [
        (_meta("uint8", None, height=H * 2), f"height is {H}, the metadata says {H * 2}"),
        (_meta("uint8", 2), "batch is dynamic, the metadata says 2"),
        (_meta("uint8", None, name="images"), "graph input is 'frames' but the metadata says 'images'"),
        (_meta("float32", None, layout="NHWC", color="BGR"), "is tensor(uint8), the metadata says float32"),
        (_meta("uint8", None, layout="NCHW"), "channels is"),
        (_meta("uint8", None, dtype="int8"), "bad 'stpm_edge' metadata: input.dtype"),
        ({"threshold": 0.5}, "metadata has no 'input'"),
    ],
)
def test_metadata_graph_mismatch(tmp_path: Path, meta: dict[str, Any], needle: str) -> None:
    path = build_model(tmp_path / "m.onnx", meta=meta)
    with pytest.raises(StpmError) as ei:
        open_cpu(path)
    msg = one_line_error(ei)
    assert msg.startswith(f"{path}: ") and needle in msg


def test_metadata_not_json(tmp_path: Path) -> None:
    path = build_model(tmp_path / "m.onnx", with_meta=False)
    model = onnx.load(str(path))
    helper.set_model_props(model, {"stpm_edge": "{not json"})
    onnx.save(model, str(path))
    with pytest.raises(StpmError, match="metadata is not JSON"):
        open_cpu(path)


# -- providers, describe, lifecycle ---------------------------------------------------------


def test_choose_providers() -> None:
    cpu_only = ["AzureExecutionProvider", CPU]
    gpu = [TENSORRT, CUDA, CPU]
    assert choose_providers(cpu_only) == [CPU]
    assert choose_providers(cpu_only, "auto") == [CPU]
    assert choose_providers(gpu, "auto") == [CUDA, CPU]  # never TensorRT unless asked
    assert choose_providers(gpu, "cpu") == [CPU]
    assert choose_providers(gpu, "cuda") == [CUDA, CPU]
    assert choose_providers(gpu, "ort-tensorrt") == [TENSORRT, CUDA, CPU]
    assert choose_providers(gpu, "ORT-TensorRT") == [TENSORRT, CUDA, CPU]
    with pytest.raises(StpmError, match="CUDAExecutionProvider is not available"):
        choose_providers(cpu_only, "cuda")
    with pytest.raises(StpmError, match="TensorrtExecutionProvider is not available"):
        choose_providers([CUDA, CPU], "ort-tensorrt")
    with pytest.raises(StpmError, match="unknown 'vulkan'"):
        choose_providers(gpu, "vulkan")
    assert CPU in available_providers()


def test_describe_threads_and_context_manager(tmp_path: Path) -> None:
    path = build_model(tmp_path / "m.onnx")
    with OnnxRuntimeBackend(path, providers="auto", threads=1) as b:
        assert b.name == "onnxruntime"
        assert "CPUExecutionProvider" in b.describe() and b.describe().startswith("onnxruntime (")
    assert b.describe() == "onnxruntime (closed)"
    with pytest.raises(StpmError, match="backend is closed"):
        b.infer(uint8_frames(1))
    b.close()  # idempotent
    with pytest.raises(StpmError, match="threads"):
        OnnxRuntimeBackend(path, threads=0)
