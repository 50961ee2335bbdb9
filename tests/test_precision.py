"""FP16 and INT8 graphs: structure, accuracy against FP32 on sample data, the accuracy gate,
the calibration reader and TensorRT's calibration-cache format."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from stpm_edge.tensorrt.calibration_cache import (CalibrationCache, cache_header, format_cache, hex_to_scale,
                                                  parse_cache, read_cache_bytes, scale_to_hex, trt_version_number,
                                                  write_cache_bytes)
from stpm_edge.calibration.quantize import QuantizeOptions, check_tensorrt_form, edge_convs
from stpm_edge.calibration.reader import CalibrationFrames, choose_images
from stpm_edge.data.io import read_image_bgr, write_image
from stpm_edge.data.mvtec import load_dataset
from stpm_edge.errors import StpmError
from stpm_edge.eval.compare import GateVerdict, VariantResult, compare_models, gate
from stpm_edge.models.deploy import ExportConfig

TRUNK_SCOPE = "/net/trunks/"  # where STPM's low-precision regions live (models/stpm/method.py low_precision)
STACKED = TRUNK_SCOPE + "trunk/"  # the region of a stacked export
from stpm_edge.export.onnx_export import export_onnx
from stpm_edge.export.precision import precision_of, to_fp16
from stpm_edge.tensorrt.onnx_ops import unsupported_ops
from stpm_edge.export.variants import write_fp16, write_int8
from stpm_edge.runtime.backends.base import InputSpec


@pytest.fixture(scope="module")
def exported(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prec")
    return export_onnx(small_model, out, ExportConfig(frame_size=(128, 128))).onnx_path


@pytest.fixture(scope="module")
def int8_files(exported: Path, brick_data: Path) -> dict:
    frames = CalibrationFrames.for_model(exported, brick_data, count=16, seed=0)
    # Percentile, not minmax: on this tiny, barely trained model minmax ranges are set by a few
    # outliers, which costs the symmetric TensorRT form 8 pt of pixel AUROC (measured); the
    # percentile clip is the usual remedy and what the bound below is about.
    res = write_int8(exported, frames, QuantizeOptions("percentile"))
    return {form: f.onnx_path for form, f in res.files.items()}


def _init_types(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: t.data_type for t in model.graph.initializer}


def test_fp16_trunks_half_head_float_io_unchanged(exported: Path) -> None:
    files = write_fp16(exported)
    fp32, half = onnx.load(str(exported)), onnx.load(str(files.onnx_path))
    assert precision_of(fp32) == "fp32" and precision_of(half) == "fp16"
    assert files.metadata.precision == "fp16"
    # I/O types are those of the FP32 graph.
    sig = lambda m: [(v.name, v.type.tensor_type.elem_type) for v in [*m.graph.input, *m.graph.output]]  # noqa: E731
    assert sig(half) == sig(fp32)
    types = _init_types(half)
    for n in half.graph.node:
        weights = [types[i] for i in n.input[1:2] if i in types] if n.op_type == "Conv" else []
        if n.name.startswith(TRUNK_SCOPE) and weights:
            assert weights == [TensorProto.FLOAT16], n.name
        elif n.op_type == "Conv":  # the blur convolutions of the head stay FP32
            assert weights == [TensorProto.FLOAT], n.name
    assert not unsupported_ops({n.op_type for n in half.graph.node})


def test_fp16_matches_fp32_accuracy(exported: Path, brick_data: Path) -> None:
    fp16 = write_fp16(exported).onnx_path
    ref, half = compare_models([exported, fp16], load_dataset(brick_data))
    assert abs(half.image_auroc - ref.image_auroc) <= 0.002
    assert abs(half.pixel_auroc - ref.pixel_auroc) <= 0.002
    assert half.max_abs_score_diff < 0.05 * max(1.0, ref.image_auroc)
    # ONNX Runtime rounds every intermediate tensor to FP16: a few 1e-2, scaled (|Δ| / max(1, |ref|))
    assert half.max_scaled_map_diff <= 0.05, half


def test_fp16_head_underflow_in_numbers(exported: Path, brick_data: Path) -> None:
    """Why the head stays FP32, in numbers.

    The map is the product of three per-level squared distances. At the ~1e-3 per-level
    distances of a converged STPM the product (~1e-9) is below FP16's smallest subnormal and
    flushes to zero; FP32 keeps it. Our sample-trained models have larger distances (their
    raw minimum is recorded in the checkpoint statistics), so we also measure the all-FP16
    graph end to end: it runs, but only the mixed graph is guaranteed not to flush.
    """
    d = np.full(16, 1e-3, dtype=np.float32)
    prod32 = d * d * d
    prod16 = d.astype(np.float16) * d.astype(np.float16) * d.astype(np.float16)
    assert np.all(prod32 > 0) and np.all(prod16 == 0)
    # End to end: the all-FP16 graph (head included) vs the mixed one.
    import onnxruntime as ort

    all16 = to_fp16(onnx.load(str(exported)), None)
    frames = np.stack([read_image_bgr(p) for p in sorted((brick_data / "test" / "good").glob("*.png"))[:2]])
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"frames": frames[:1]})[0]
    ref, mixed, full = run(onnx.load(str(exported))), run(to_fp16(onnx.load(str(exported)), (TRUNK_SCOPE,))), run(all16)
    assert np.isfinite(full).all()
    assert np.abs(mixed - ref).max() <= np.abs(full - ref).max() + 0.05 * np.abs(ref).max()


def test_int8_tensorrt_form_and_cpu_form(int8_files: dict, exported: Path) -> None:
    trt, cpu = onnx.load(str(int8_files["tensorrt"])), onnx.load(str(int8_files["cpu"]))
    assert check_tensorrt_form(trt) == []
    assert check_tensorrt_form(cpu)  # uint8 with zero-points: refused for TensorRT, and we say why
    ops = {n.op_type for n in trt.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and not unsupported_ops(ops)
    assert [o.version for o in trt.opset_import if o.domain in ("", "ai.onnx")] == [17]
    # Only trunk tensors (and the preprocessed image entering them) are quantized: the head stays float.
    fp32_nodes = {n.name: n for n in onnx.load(str(exported)).graph.node}
    producer = {o: n.name for n in fp32_nodes.values() for o in n.output}
    for n in trt.graph.node:
        if n.op_type == "QuantizeLinear":
            src = producer.get(n.input[0], "")
            assert src.startswith(TRUNK_SCOPE) or src.startswith("/pre/"), (n.name, src)
    # No int32 bias Q/DQ; weights per channel.
    inits = {t.name: t for t in trt.graph.initializer}
    assert all(t.data_type != TensorProto.INT32 for t in inits.values())
    meta = json.loads({p.key: p.value for p in trt.metadata_props}["stpm_edge"])
    assert meta["precision"] == "int8" and meta["int8"]["form"] == "tensorrt" and meta["int8"]["images"] == 16


def test_int8_accuracy_on_sample_data(int8_files: dict, exported: Path, brick_data: Path) -> None:
    """A loose bound: the test model is tiny (3 epochs at 96 px, 14 test images, percentile on 16
    images). The 0.5 pt acceptance is measured on the default model (BENCHMARKS.md)."""
    rows = compare_models([exported, int8_files["tensorrt"], int8_files["cpu"]], load_dataset(brick_data))
    ref = rows[0]
    for r in rows[1:]:
        assert ref.image_auroc - r.image_auroc <= 0.07, r
        assert ref.pixel_auroc - r.pixel_auroc <= 0.05, r
        assert r.max_abs_map_diff < 0.5, r


def test_keep_float_edges(exported: Path) -> None:
    model = onnx.load(str(exported))
    first, last = edge_convs(model, "first", (STACKED,)), edge_convs(model, "last", (STACKED,))
    assert len(first) == 1 and first[0].startswith(TRUNK_SCOPE) and last and not set(first) & set(last)


def test_keep_float_a_trunk_module(exported: Path, brick_data: Path, tmp_path: Path) -> None:
    from stpm_edge.calibration.quantize import module_nodes, nodes_to_quantize, region_modules

    model = onnx.load(str(exported))
    assert region_modules(model, (STACKED,))[:2] == ["stem", "stages.0"]
    stage0 = module_nodes(model, "stages.0", (STACKED,))
    names, keep = nodes_to_quantize(model, (STACKED,), ("stages.0",))
    assert stage0 and keep == stage0 and not set(names) & set(stage0)
    assert module_nodes(model, "stages.0.0/conv_pw", (STACKED,)) == [n for n in stage0 if "/conv_pw/" in n]
    with pytest.raises(StpmError, match=r"--keep-float stages\.9: no such part.*stem, stages\.0"):
        nodes_to_quantize(model, (STACKED,), ("stages.9",))
    # written: the stage's convolutions keep float weights, the others are fed by DequantizeLinear
    work = tmp_path / "m"
    work.mkdir()
    shutil.copy(exported, work / "model.onnx")
    shutil.copy(exported.with_suffix(".json"), work / "model.json")
    frames = CalibrationFrames.for_model(work / "model.onnx", brick_data, count=8, seed=0)
    res = write_int8(work / "model.onnx", frames, QuantizeOptions("minmax", ("stages.0",)), forms=("tensorrt",))
    q = onnx.load(str(res.files["tensorrt"].onnx_path))
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    convs = {n.name: producers.get(n.input[1], "initializer") for n in q.graph.node if n.op_type == "Conv"
             and n.name.startswith(TRUNK_SCOPE)}
    assert all(src != "DequantizeLinear" for name, src in convs.items() if name in stage0)
    assert any(src == "DequantizeLinear" for name, src in convs.items() if name not in stage0)


def test_gate_verdicts() -> None:
    ref = VariantResult("fp32", "fp32", 0.95, 0.98, 0.9, 0.0, 0.0, 1.0)
    ok = gate(ref, VariantResult("int8", "int8", 0.948, 0.979, 0.9, 0.2, 0.1, 1.0), 0.5)
    assert ok.passed and "within" in ok.message
    bad = gate(ref, VariantResult("int8", "int8", 0.93, 0.979, 0.9, 0.2, 0.1, 1.0), 0.5)
    assert not bad.passed and abs(bad.image_drop_pt - 2.0) < 1e-9
    for remedy in ("--calib-count", "--calib-method", "--keep-float", "--fp16"):
        assert remedy in bad.message
    assert "\n" not in bad.message


def test_failed_gate_writes_nothing(exported: Path, brick_data: Path) -> None:
    frames = CalibrationFrames.for_model(exported, brick_data, count=8, seed=1)
    before = set(exported.parent.iterdir())
    fail = lambda paths: ([], GateVerdict(False, 3.0, 1.0, "INT8 loses more than the budget"))  # noqa: E731
    with pytest.raises(StpmError, match="loses more"):
        write_int8(exported, frames, QuantizeOptions("minmax"),
                   ("tensorrt",), validate=fail)
    assert set(exported.parent.iterdir()) == before


def test_calibration_reader(exported: Path, brick_data: Path, tmp_path: Path) -> None:
    one = CalibrationFrames.for_model(exported, brick_data, count=5, seed=3)
    assert one.batch_size == 1 and len(one) == 5
    with pytest.raises(StpmError, match="fixed batch 1"):
        CalibrationFrames.for_model(exported, brick_data, count=5, batch_size=2)
    dynamic = dataclasses.replace(one.spec, batch=None)  # a --dynamic-batch export
    frames = CalibrationFrames(brick_data, dynamic, one.metadata, count=5, seed=3, batch_size=2)
    assert frames.folder == brick_data / "train" / "good" and len(frames.paths) == 5 and len(frames) == 3
    batches = list(frames)
    spec: InputSpec = frames.spec
    assert all(b.shape == spec.shape(2) and b.dtype == np.uint8 and b.flags.c_contiguous for b in batches)
    assert np.array_equal(batches[-1][1], batches[0][0])  # the last batch is padded by repetition
    assert one.paths == frames.paths  # deterministic
    assert choose_images([Path("b"), Path("a")], 5, 0) == [Path("a"), Path("b")]
    # Bad input: one-line errors.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StpmError, match="0 image"):
        CalibrationFrames.for_model(exported, empty, count=8)
    with pytest.raises(StpmError, match="no such calibration folder"):
        CalibrationFrames.for_model(exported, tmp_path / "missing", count=8)
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((brick_data / "train" / "good").glob("*.png"))[:3]:
        shutil.copy(p, few / p.name)
    with pytest.raises(StpmError, match="at least 8"):
        CalibrationFrames.for_model(exported, few, count=8)
    wide = tmp_path / "wide"
    wide.mkdir()
    img = read_image_bgr(next((brick_data / "train" / "good").glob("*.png")))
    for i in range(8):
        write_image(wide / f"{i}.png", np.concatenate([img, img], axis=1))
    with pytest.raises(StpmError, match="aspect ratio"):
        CalibrationFrames.for_model(exported, wide, count=8)
    (few / "broken.png").write_bytes(b"not a png")
    for p in sorted((brick_data / "train" / "good").glob("*.png"))[3:8]:
        shutil.copy(p, few / p.name)
    with pytest.raises(StpmError, match="broken.png: not a readable image"):
        CalibrationFrames.for_model(exported, few, count=16)


def test_tensorrt_cache_format(tmp_path: Path) -> None:
    assert trt_version_number("8.5.2.2") == 8502 and trt_version_number("8.6.1") == 8601
    assert trt_version_number("10.3.0") == 100300 and trt_version_number("11.0.0.dev") == 110000
    assert cache_header("8.6.1.6") == "TRT-8601-EntropyCalibration2"
    assert cache_header("10.3.0", "MinMaxCalibration") == "TRT-100300-MinMaxCalibration"
    assert abs(hex_to_scale("3c010a14") - 0.0078759) < 1e-7 and scale_to_hex(1.0) == "3f800000"
    text = b"TRT-8502-EntropyCalibration2\nframes: 3c010a14\n(Unnamed Layer* 3) [Convolution]_output: 3d8e9b2c\n"
    cache = parse_cache(text)
    assert cache.version == 8502 and cache.algorithm == "EntropyCalibration2"
    assert list(cache.scales) == ["frames", "(Unnamed Layer* 3) [Convolution]_output"]
    assert format_cache(cache) == text
    assert format_cache(CalibrationCache("TRT-8601-MinMaxCalibration", {"x": 0.5})) == \
        b"TRT-8601-MinMaxCalibration\nx: 3f000000\n"
    for bad, msg in [(b"", "empty"), (b"hello\n", "not a TensorRT calibration cache"),
                     (b"TRT-8601-EntropyCalibration2\nframes 3c010a14\n", "line 2"),
                     (b"TRT-8601-EntropyCalibration2\nframes: xyz\n", "line 2"),
                     (b"TRT-8601-EntropyCalibration2\nframes: 7fc00000\n", "finite"),
                     (b"\xff\xfe", "not text")]:
        with pytest.raises(StpmError, match=msg):
            parse_cache(bad)
    path = tmp_path / "calib.cache"
    assert read_cache_bytes(path) is None
    write_cache_bytes(path, text)
    assert read_cache_bytes(path) == text
    with pytest.raises(StpmError):
        write_cache_bytes(path, b"garbage")
    assert read_cache_bytes(path) == text and [p.name for p in tmp_path.iterdir()] == ["calib.cache"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("stpm")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600)


def test_cli_export_fp16_int8_with_gate(small_model: Path, brick_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _cli("export", str(small_model), "-o", str(out), "--frame-size", "128x128", "--fp16", "--int8",
             "--calib", str(brick_data), "--calib-method", "minmax", "--calib-count", "16", "--int8-forms", "tensorrt",
             "--val", str(brick_data), "--max-auroc-drop", "50", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["int8"]["gate"]["passed"] and len(summary["int8"]["comparison"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["model.fp16.json", "model.fp16.onnx", "model.int8.json",
                                                     "model.int8.onnx", "model.json", "model.onnx"]
    r = _cli("eval", str(out / "model.onnx"), str(brick_data), "--variants", "--json")
    assert r.returncode == 0, r.stderr
    assert [m["precision"] for m in json.loads(r.stdout)["models"]] == ["fp32", "fp16", "int8"]


def test_cli_int8_bad_input(exported: Path, brick_data: Path, tmp_path: Path) -> None:
    r = _cli("export", "missing.pt", "--int8")
    assert r.returncode == 1 and "--int8 needs --calib" in r.stderr
    r = _cli("calibrate", str(exported), "--calib", str(tmp_path))
    assert r.returncode == 1 and "image(s)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("calibrate", str(exported), "--calib", str(brick_data), "--max-auroc-drop", "0.5")
    assert r.returncode == 1 and "--val" in r.stderr
    r = _cli("calibrate", str(exported), "--calib", str(brick_data), "--keep-float", "auto")
    assert r.returncode == 1 and "--max-auroc-drop" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("calibrate", str(exported), "--calib", str(brick_data), "--calib-method", "magic")
    assert r.returncode == 1 and "entropy" in r.stderr
    assert not list(exported.parent.glob(".*tmp*"))


def test_entropy_ranges_are_real_kl_thresholds_clipped_to_what_was_seen(tmp_path: Path) -> None:
    """quantize_static's own entropy (128 bins, 128 quantized bins) is minmax; ours searches 2048 bins."""
    from onnx import helper

    from stpm_edge.calibration.quantize import entropy_ranges

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 4, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    batches = [rng.standard_t(2, size=(1, 4, 16, 16)).astype(np.float32) for _ in range(8)]  # heavy tails

    class Reader:
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            return next(({"x": b} for b in self.it), None)

    ranges = entropy_ranges(path, Reader(), tmp_path)
    x = np.concatenate(batches)
    low, high = (float(v) for v in ranges["x"].range_value)
    assert x.min() <= low < 0 < high < x.max()  # clipped inside the observed range (minmax would be the range)
    assert high < 0.5 * np.abs(x).max()  # heavy tails: KL cuts far inside
    y_low, y_high = (float(v) for v in ranges["y"].range_value)
    assert y_low == 0.0 and y_high > 0  # after the ReLU nothing is negative: no levels wasted below 0


def test_keep_float_auto_takes_the_first_rung_that_passes(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stpm_edge.export import variants

    ladder = variants.auto_keep_float_ladder(onnx.load(str(exported)))
    assert ladder == [(), ("stem", "stages.0"), ("stem", "stages.0", "stages.1")]
    tried = []

    def fake_write(path, frames, options, forms, *, validate=None, progress=None):
        tried.append(options.keep_float)
        if len(options.keep_float) < 2:
            raise variants.GateFailed(GateVerdict(False, 18.1, 5.9, "INT8 loses more than the 0.5 pt AUROC budget"))
        return options.keep_float

    monkeypatch.setattr(variants, "write_int8", fake_write)
    assert variants.write_int8_auto(exported, None, QuantizeOptions(), ("tensorrt",), validate=lambda p: None) \
        == ("stem", "stages.0")
    assert tried == ladder[:2]
    monkeypatch.setattr(variants, "write_int8", lambda *a, **k: (_ for _ in ()).throw(
        variants.GateFailed(GateVerdict(False, 18.1, None, "lost"))))
    with pytest.raises(StpmError, match=r"every --keep-float auto setting \(nothing float: image -18\.10 pt; "
                                        r"stem,stages\.0 float: image -18\.10 pt.*written; deploy FP16"):
        variants.write_int8_auto(exported, None, QuantizeOptions(), ("tensorrt",), validate=lambda p: None)
    with pytest.raises(StpmError, match=r"the worse of the forms: calibrate each alone, e\.g\. --int8-forms tensorrt"):
        variants.write_int8_auto(exported, None, QuantizeOptions(), ("tensorrt", "cpu"), validate=lambda p: None)
    with pytest.raises(StpmError, match="needs --val"):
        variants.write_int8_auto(exported, None, QuantizeOptions(), ("tensorrt",), validate=None)


def test_cpu_form_is_quantized_from_the_unstacked_trunks(int8_files: dict, exported: Path, small_model: Path,
                                                         tmp_path: Path) -> None:
    """ONNX Runtime's quantized grouped 1×1 convolutions are slow, so the cpu form is built from
    teacher and student as separate trunks: the same numbers in FP32, no grouped pointwise
    convolutions and no teacher/student slices left."""
    import onnxruntime as ort

    from stpm_edge.models.stpm.unstack import NotStacked, unstack

    stacked = onnx.load(str(exported))
    un = unstack(stacked, STACKED)
    inp = stacked.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]  # (1, H, W, 3) uint8 frames
    frames = {inp.name: (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)}

    def run(m: onnx.ModelProto) -> list[np.ndarray]:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, frames)

    for a, b in zip(run(stacked), run(un.model)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert all(len(halves) == 2 for halves in un.nodes.values()) and un.nodes
    cpu = onnx.load(str(int8_files["cpu"]))
    inits = {t.name: t for t in cpu.graph.initializer}
    producer = {o: n for n in cpu.graph.node for o in n.output}

    def weight_shape(conv):
        w = conv.input[1]
        while w not in inits:  # the weight's DequantizeLinear
            w = producer[w].input[0]
        return tuple(inits[w].dims)

    trunk = [n for n in cpu.graph.node if n.name.startswith(TRUNK_SCOPE) and n.op_type in ("Conv", "Slice")]
    assert trunk and not [n for n in trunk if n.op_type == "Slice"]
    for conv in (n for n in trunk if n.op_type == "Conv"):
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        assert group == 1 or weight_shape(conv)[1] == 1, (conv.name, group)  # dense or depthwise
    assert {n.name.rsplit("/", 1)[-1] for n in trunk} == {"teacher", "student"}
    # What the rewrite does not understand is refused (and quantize keeps the graph as exported).
    odd = onnx.ModelProto()
    odd.CopyFrom(stacked)
    next(n for n in odd.graph.node if n.name.startswith(TRUNK_SCOPE) and n.op_type in ("Clip", "Relu")).op_type = "Softmax"
    with pytest.raises(NotStacked, match="Softmax is not a stacked-trunk op"):
        unstack(odd, STACKED)
    parallel = export_onnx(small_model, tmp_path, ExportConfig(frame_size=(128, 128), method_options={"fusion": "parallel"})).onnx_path
    with pytest.raises(NotStacked, match="parallel"):
        unstack(onnx.load(str(parallel)), STACKED)


def test_comparison_labels_tell_equal_file_names_apart() -> None:
    from stpm_edge.cli.calibrate import model_labels

    assert model_labels([Path("/r/a/model.onnx"), Path("/r/a/model.int8.cpu.onnx")]) == ["model.onnx", "model.int8.cpu.onnx"]
    assert model_labels([Path("/r/a/model.onnx"), Path("/r/b/model.int8.cpu.onnx"), Path("/r/a/model.int8.cpu.onnx")]) \
        == ["a/model.onnx", "b/model.int8.cpu.onnx", "a/model.int8.cpu.onnx"]


def test_activation_inputs_take_the_activations_quantization(int8_files: dict) -> None:
    """ONNX Runtime <= 1.19 (Python 3.8, JetPack 5) quantizes a convolution's output on its raw
    range when activations are symmetric, though TensorRT fuses it with the ReLU6 after it;
    ``align_activation_inputs`` gives it the activation's scale, as ONNX Runtime >= 1.20 does."""
    from stpm_edge.calibration.quantize import align_activation_inputs

    model = onnx.load(str(int8_files["tensorrt"]))
    assert align_activation_inputs(model) == 0  # this onnxruntime did it already
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    clips = [n for n in model.graph.node if n.op_type in ("Clip", "Relu")
             and getattr(producer.get(n.input[0]), "op_type", "") == "DequantizeLinear"]
    assert clips
    # what onnxruntime 1.19 writes: the input's scale from the raw convolution, 5x coarser
    scale_in = producer[producer[clips[0].input[0]].input[0]].input[1]
    good = numpy_helper.to_array(inits[scale_in]).copy()
    inits[scale_in].CopyFrom(numpy_helper.from_array(good * 5, scale_in))
    assert align_activation_inputs(model) == 1
    np.testing.assert_array_equal(numpy_helper.to_array({t.name: t for t in model.graph.initializer}[scale_in]), good)


def test_cpu_form_does_not_depend_on_which_forms_are_written(int8_files: dict, exported: Path, brick_data: Path,
                                                             tmp_path: Path) -> None:
    """The cpu form calibrates its unstacked graph itself: written alone it is the same file as
    written after the TensorRT form (whose calibration cache it must not pick up)."""
    work = tmp_path / "m"
    work.mkdir()
    shutil.copy(exported, work / "model.onnx")
    shutil.copy(exported.with_suffix(".json"), work / "model.json")
    frames = CalibrationFrames.for_model(work / "model.onnx", brick_data, count=16, seed=0)
    alone = write_int8(work / "model.onnx", frames, QuantizeOptions("percentile"), forms=("cpu",))
    scales = lambda p: {t.name: numpy_helper.to_array(t).tolist() for t in onnx.load(str(p)).graph.initializer  # noqa: E731
                        if t.name.endswith("_scale")}
    both, one = scales(int8_files["cpu"]), scales(alone.files["cpu"].onnx_path)
    assert both and both == one


def test_cli_int8_without_val_says_accuracy_was_not_checked(exported: Path, brick_data: Path, tmp_path: Path) -> None:
    shutil.copy(exported, tmp_path / "model.onnx")
    shutil.copy(exported.with_suffix(".json"), tmp_path / "model.json")
    r = _cli("calibrate", str(tmp_path / "model.onnx"), "--calib", str(brick_data), "--calib-count", "8",
             "--int8-forms", "cpu")
    assert r.returncode == 0, r.stderr
    note = " ".join(r.stderr.split())
    assert "accuracy not checked" in note and f"--val {brick_data} --max-auroc-drop 0.5" in note
    r = _cli("calibrate", str(tmp_path / "model.onnx"), "--calib", str(brick_data), "--calib-count", "8",
             "--int8-forms", "cpu", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["accuracy_checked"] is False


def test_unstack_refuses_a_graph_that_does_not_check(exported: Path) -> None:
    """A graph the rewrite cannot vouch for is NotStacked (quantize then keeps it as exported), never a traceback."""
    from stpm_edge.models.stpm.unstack import NotStacked, unstack

    broken = onnx.load(str(exported))
    conv = next(n for n in broken.graph.node if n.name.startswith(TRUNK_SCOPE) and n.op_type == "Conv")
    conv.attribute.append(onnx.helper.make_attribute("no_such_attribute", 1))
    with pytest.raises(NotStacked):
        unstack(broken, STACKED)
