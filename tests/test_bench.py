"""stpm-bench: statistics, FLOP counting, the plan of combinations, the report schema, and a
short end-to-end run on a tiny random-init model (speed itself is never asserted)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from _cli import CliRunner

from stpm_edge.bench import memory
from stpm_edge.bench.flops import count_model
from stpm_edge.bench.machine import busy_warning, parse_cpuinfo
from stpm_edge.bench.peak import Peak, peak_for
from stpm_edge.bench.plan import Env, BenchFiles, Request, batch_note, plan
from stpm_edge.bench.report import markdown, rich_tables
from stpm_edge.bench.runner import time_calls
from stpm_edge.bench.schema import check_report
from stpm_edge.bench.stats import percentile, summarize
from stpm_edge.cli.app import app

# -- statistics ---------------------------------------------------------------------------


def test_percentile_known_values():
    v = list(range(1, 101))  # 1..100
    assert percentile(v, 50) == pytest.approx(50.5)
    assert percentile(v, 90) == pytest.approx(90.1)
    assert percentile(v, 99) == pytest.approx(99.01)
    assert percentile(v, 0) == 1 and percentile(v, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([3, 1, 2], 50) == 2  # order does not matter


def test_percentile_matches_numpy():
    x = np.random.default_rng(0).exponential(10.0, 37)
    for q in (50, 90, 99, 12.5):
        assert percentile(list(x), q) == pytest.approx(float(np.percentile(x, q)))


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_ms_and_throughput():
    s = summarize([0.010, 0.020, 0.030, 0.040], batch=4, wall_s=0.1, cpu_s=0.2)
    assert (s.p50, s.min, s.max, s.mean) == pytest.approx((25.0, 10.0, 40.0, 25.0))
    assert s.throughput_fps == pytest.approx(4 * 4 / 0.1)
    assert s.ms_per_frame == pytest.approx(25.0 / 4)
    assert s.cpu_ms_per_frame == pytest.approx(1000 * 0.2 / 16)
    d = s.to_dict()
    assert d["iters"] == 4 and d["throughput_fps"] == pytest.approx(160.0)


# -- FLOP counting ------------------------------------------------------------------------

def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def tiny_graph(batch: int | str = "N") -> onnx.ModelProto:
    """x (B,3,16,16) → Conv 3→8 k3 p1 → Relu → grouped Conv 8→8 g4 k3 p1 → depthwise Conv 8 g8 k3 s2 p1
    → Reshape (B,8,64) → MatMul (64×10) → Flatten → Gemm (80→5, transB)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4),
        helper.make_node("Conv", ["c2", "w3"], ["c3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2],
                         group=8),
        helper.make_node("Reshape", ["c3", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "m"], ["mm"]),
        helper.make_node("Flatten", ["mm"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
    ]
    inits = [_w("w1", 8, 3, 3, 3), _w("b1", 8), _w("w2", 8, 2, 3, 3), _w("w3", 8, 1, 3, 3), _w("m", 64, 10),
             _w("g", 5, 80), numpy_helper.from_array(np.array([0, 8, 64], np.int64), "shape")]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# Hand-computed FLOP per frame (2 per multiply-add):
CONV1 = 2 * (8 * 16 * 16) * (3 * 3 * 3)  # |Y| = 8·16·16, C_in/group · k·k = 3·9
CONV2 = 2 * (8 * 16 * 16) * (2 * 3 * 3)  # grouped: C_in/group = 8/4 = 2
CONV3 = 2 * (8 * 8 * 8) * (1 * 3 * 3)  # depthwise, stride 2: 8×8 output, C_in/group = 1
MATMUL = 2 * (8 * 10) * 64  # (8,64)·(64,10)
GEMM = 2 * 5 * 80  # (1,80)·(80,5)


def test_flops_hand_computed_tiny_graph():
    fc = count_model(tiny_graph("N"))
    assert fc.by_op["Conv"] * 1e9 == pytest.approx(CONV1 + CONV2 + CONV3)
    assert fc.by_op["MatMul"] * 1e9 == pytest.approx(MATMUL)
    assert fc.by_op["Gemm"] * 1e9 == pytest.approx(GEMM)
    assert fc.gflop_per_frame * 1e9 == pytest.approx(CONV1 + CONV2 + CONV3 + MATMUL + GEMM)
    assert fc.counted_nodes == 5 and fc.unknown == []
    assert fc.uncounted == {"Flatten": 1, "Relu": 1, "Reshape": 1}
    assert fc.other_melem * 1e6 == pytest.approx(8 * 16 * 16 + 8 * 64 + 80)  # Relu + Reshape + Flatten outputs
    assert "not counted" in fc.to_dict()["note"]


def test_flops_fixed_batch_is_per_frame():
    fc = count_model(tiny_graph(4))
    assert fc.batch == 4
    assert fc.gflop_per_frame * 1e9 == pytest.approx(CONV1 + CONV2 + CONV3 + MATMUL + GEMM)


# -- the plan -----------------------------------------------------------------------------

ALL = {"fp32": Path("m/model.onnx"), "fp16": Path("m/model.fp16.onnx"), "int8": Path("m/model.int8.onnx"),
       "int8.cpu": Path("m/model.int8.cpu.onnx")}
CPU_ENV = Env(cuda_gpu=None, ort_providers=("CPUExecutionProvider",), trt_problem="tensorrt is not installed")
GPU_ENV = Env(cuda_gpu="NVIDIA H100", ort_providers=("CPUExecutionProvider",), trt_problem="")


def _files(**kw) -> BenchFiles:
    d = dict(onnx=dict(ALL), engines={}, checkpoint=Path("m/model.pt"), model_batch=None)
    d.update(kw)
    return BenchFiles(**d)


def test_plan_cpu_lists_unavailable_with_reasons():
    combos, skips = plan(_files(), CPU_ENV, Request(batches=(1,)))
    labels = [c.label for c in combos]
    assert labels == ["torch fp32 eager", "onnxruntime fp32", "onnxruntime fp16",
                      "onnxruntime int8 (TensorRT Q/DQ form)", "onnxruntime int8 (CPU form)"]
    assert all(c.device == "cpu" for c in combos)
    reasons = {(s.backend, s.precision): s.reason for s in skips}
    assert reasons[("tensorrt", "")] == "tensorrt is not installed"
    assert "FP16" in reasons[("torch", "fp16")] and "CPU" in reasons[("torch", "fp16")]
    assert "INT8" in reasons[("torch", "int8")]
    forms = {c.form for c in combos if c.precision == "int8"}
    assert forms == {"tensorrt", "cpu"}
    assert "slow on ONNX Runtime x86" in next(c.note for c in combos if c.form == "tensorrt")


def test_plan_missing_variants_and_checkpoint():
    files = _files(onnx={"fp32": ALL["fp32"]}, checkpoint=None, checkpoint_problem="no model.pt beside it",
                   missing_hint={"int8": "pass --calib DIR"})
    combos, skips = plan(files, CPU_ENV, Request(backends=("torch", "onnxruntime"), batches=(1,)))
    assert [c.label for c in combos] == ["onnxruntime fp32"]
    text = [f"{s.backend} {s.precision} {s.form}: {s.reason}" for s in skips]
    assert "torch  : no model.pt beside it" in text
    assert any("no model.fp16.onnx" in t for t in text)
    assert any(t.startswith("onnxruntime int8 tensorrt: no model.int8.onnx") and "pass --calib DIR" in t for t in text)
    assert any(t.startswith("onnxruntime int8 cpu: no model.int8.cpu.onnx") for t in text)


def test_plan_fixed_batch_export_runs_larger_batches_in_chunks():
    combos, _ = plan(_files(model_batch=1), CPU_ENV, Request(backends=("torch", "onnxruntime"),
                                                             precisions=("fp32",), batches=(1, 4)))
    by = {(c.backend, c.batch): c.note for c in combos}
    assert by[("onnxruntime", 1)] == ""
    assert "runs as 4×1 chunks" in by[("onnxruntime", 4)]
    assert by[("torch", 4)] == ""  # the torch reference always runs the batch in one call


def test_batch_note():
    assert batch_note(None, 4) == ""
    assert batch_note(4, 4) == ""
    assert "3×4 chunks" in batch_note(4, 10) and "padded by 2" in batch_note(4, 10)
    assert "padded to the export's fixed batch 4" in batch_note(4, 1)


def test_plan_cuda_rows_graphs_and_tensorrt():
    files = _files(engines={"fp16": Path("m/model.fp16.engine")})
    combos, skips = plan(files, GPU_ENV, Request(batches=(1,)))
    labels = [c.label for c in combos]
    assert labels[:4] == ["torch fp32 eager", "torch fp32 eager + CUDA graph", "torch fp16 autocast",
                          "torch fp16 autocast + CUDA graph"]
    assert "tensorrt fp16" in labels and "tensorrt fp16 + CUDA graph" in labels
    assert all(c.device == "cuda" for c in combos)
    reasons = [f"{s.backend} {s.precision}: {s.reason}" for s in skips]
    assert any(r.startswith("onnxruntime : CUDAExecutionProvider is not in this onnxruntime build") for r in reasons)
    assert any(r.startswith("tensorrt fp32: no model.fp32.engine") for r in reasons)
    combos, _ = plan(files, GPU_ENV, Request(batches=(1,), cuda_graphs=False))
    assert not any(c.cuda_graph for c in combos)


def test_plan_cuda_requested_without_gpu():
    combos, skips = plan(_files(), CPU_ENV, Request(devices=("cuda",)))
    assert combos == []
    assert any(s.device == "cuda" and "no CUDA GPU" in s.reason for s in skips)


def test_plan_streams_and_a_triton_model():
    combos, _ = plan(_files(), CPU_ENV, Request(backends=("onnxruntime",), precisions=("fp32",), batches=(1, 4),
                                                streams=(1, 4)))
    assert [(c.label, c.batch, c.streams) for c in combos] == [
        ("onnxruntime fp32", 1, 1), ("onnxruntime fp32", 4, 1), ("onnxruntime fp32 × 4 streams", 1, 4),
        ("onnxruntime fp32 × 4 streams", 4, 4)]
    assert len({c.group for c in combos}) == 1  # one loaded backend serves every row
    served = BenchFiles(triton="triton://gpu:8000/stpm")
    combos, skips = plan(served, GPU_ENV, Request(batches=(1, 8), streams=(2,)))
    assert skips == [] and [(c.backend, c.precision, c.device, c.batch, c.streams, c.path) for c in combos] == [
        ("triton", "served", "remote", 1, 2, "triton://gpu:8000/stpm"),
        ("triton", "served", "remote", 8, 2, "triton://gpu:8000/stpm")]


def test_concurrent_clients_are_timed_together():
    import time as _time

    s = time_calls(lambda: _time.sleep(0.02), warmup=1, iters=5, batch=2, streams=4)
    assert s.iters == 20 and s.batch == 2 and 18 <= s.p50 <= 60
    frames = 4 * 5 * 2
    assert frames / (5 * 0.02) >= s.throughput_fps > 1.5 * frames / (20 * 0.02)  # the 4 clients overlapped
    with pytest.raises(ZeroDivisionError):
        time_calls(lambda: 1 / 0, warmup=0, iters=2, batch=1, streams=3)


def test_peak_for_falls_back_to_fp32():
    peaks = [Peak("cpu", "fp32", 100.0, "x"), Peak("cpu", "int8", 400.0, "y"), Peak("cuda", "fp16", 900.0, "z")]
    assert peak_for(peaks, "cpu", "int8").gflops == 400.0
    assert peak_for(peaks, "cpu", "fp16").gflops == 100.0
    assert peak_for(peaks, "cuda", "int8").gflops == 900.0
    assert peak_for(peaks, "cuda", "fp32") is None


# -- machine and memory -------------------------------------------------------------------

def test_parse_cpuinfo_and_busy_warning():
    text = "processor\t: 0\nmodel name\t: AMD EPYC 9654\nflags\t\t: fpu avx2 fma avx512f avx512_vnni\n\n" \
           "processor\t: 1\nmodel name\t: AMD EPYC 9654\nflags\t\t: fpu avx2\n"
    info = parse_cpuinfo(text)
    assert info == {"model": "AMD EPYC 9654", "features": ["avx2", "fma", "avx512f", "avx512_vnni"]}
    assert busy_warning([0.1, 0.1, 0.1], 2) == ""
    assert "busy" in busy_warning([1.5, 1.0, 1.0], 2)
    assert busy_warning(None, 2) == ""


def test_memory_peak_follows_an_allocation():
    if memory.rss_mib() is None:
        pytest.skip("no /proc/self/status on this platform")
    reset = memory.reset_peak()
    rss_before, peak_before = memory.rss_mib(), memory.peak_mib()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    # The peak never trails the resident size, whatever the kernel allows.
    assert memory.rss_mib() >= rss_before + 50
    assert memory.peak_mib() >= memory.rss_mib() - 1
    if reset:  # a reset peak starts at the current RSS, so it must rise with the block
        assert memory.peak_mib() >= peak_before + 50
    del block
    if memory.reset_peak():
        assert memory.peak_mib() < peak_before + 50
    else:  # a process peak since start (ru_maxrss) cannot be lowered: the method says so
        assert "not reset" in memory.peak_method()
    assert memory.peak_method()


# -- end to end ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, brick_data) -> Path:
    """A random-init efficientnet_lite0 STPM at 64 px, exported with a fixed batch of 1, + FP16 + both INT8 forms."""
    from stpm_edge.calibration.quantize import QuantizeOptions
    from stpm_edge.calibration.reader import CalibrationFrames
    from stpm_edge.models.deploy import ExportConfig
    from stpm_edge.export.onnx_export import export_onnx
    from stpm_edge.export.variants import write_fp16, write_int8
    from stpm_edge.models.backbones import get_spec
    from stpm_edge.data.preprocess import PreprocessSpec
    from stpm_edge.models.checkpoint import ModelMeta, Normalization, save_checkpoint
    from stpm_edge.models.stpm.model import STPM, STPMConfig

    d = tmp_path_factory.mktemp("bench")
    config = STPMConfig("efficientnet_lite0", (), 4.0).resolved()
    image_size = (64, 64)
    spec = get_spec("efficientnet_lite0")
    ckpt = d / "model.pt"
    save_checkpoint(ckpt, STPM.build(config, image_size, pretrained=False, seed=0),
                    ModelMeta("stpm", config, PreprocessSpec(image_size, spec.mean, spec.std), normalization=Normalization(0.5, 0.2, 0.0)))
    onnx_path = export_onnx(ckpt, d, ExportConfig()).onnx_path
    write_fp16(onnx_path)
    write_int8(onnx_path, CalibrationFrames.for_model(onnx_path, brick_data, count=8), QuantizeOptions("minmax"))
    return onnx_path


def _bench(args: list[str]) -> tuple[dict, str]:
    res = CliRunner().invoke(app, ["bench", *args])
    assert res.exit_code == 0, res.stderr + res.stdout
    return json.loads(res.stdout), res.stderr


def test_bench_onnx_with_variants_json(tiny_export):
    rep, err = _bench([str(tiny_export), "--batch", "1,2", "--warmup", "1", "--iters", "3", "--json"])
    assert check_report(rep) == []
    assert rep["command"].startswith("stpm-bench ")
    assert "[10/10] done" in err  # progress on stderr
    labels = {(r["label"], r["batch"]) for r in rep["results"]}
    for label in ("torch fp32 eager", "onnxruntime fp32", "onnxruntime fp16", "onnxruntime int8 (TensorRT Q/DQ form)",
                  "onnxruntime int8 (CPU form)"):
        assert (label, 1) in labels and (label, 2) in labels
    rows = {(r["label"], r["batch"]): r for r in rep["results"]}
    ref = rows[("torch fp32 eager", 2)]
    assert ref["speedup_vs_torch"] == 1.0 and ref["memory_format"] in ("contiguous", "channels_last")
    assert ref["note"] is None  # the reference runs the batch in one call
    ort2 = rows[("onnxruntime fp32", 2)]
    assert "runs as 2×1 chunks" in ort2["note"]  # fixed-batch export
    assert ort2["reference"].startswith("torch fp32 eager (cpu, batch 2)")
    assert ort2["speedup_vs_torch"] > 0 and ort2["throughput_fps"] > 0
    assert ort2["latency_ms"]["p50"] <= ort2["latency_ms"]["p99"]
    assert ort2["peak_rss_mib"] > 0
    gflop = rep["model"]["flops"]["gflop_per_frame"]
    assert 0 < gflop < 1
    assert ort2["achieved_gflops"] == pytest.approx(gflop * ort2["throughput_fps"], rel=1e-2)
    int8 = rows[("onnxruntime int8 (CPU form)", 1)]
    assert int8["peak"] == "cpu-int8" and int8["peak_share"] > 0
    assert {p["precision"] for p in rep["peaks"]} == {"fp32", "int8"}
    skipped = {(s["backend"], s["precision"]): s["reason"] for s in rep["skipped"]}
    assert "tensorrt" in skipped[("tensorrt", None)]
    assert ("torch", "fp16") in skipped and ("torch", "int8") in skipped
    assert rep["model"]["checkpoint"].endswith("model.pt")
    md = markdown(rep, heading="### tiny")
    assert "| onnxruntime int8 (CPU form) | cpu | 1 |" in md and "Not run" in md
    assert len(rich_tables(rep)) == 3  # results, notes, not run


def test_bench_checkpoint_is_exported_first(tiny_export):
    rep, _ = _bench([str(tiny_export.with_name("model.pt")), "--backends", "torch,onnxruntime", "--precisions",
                     "fp32,int8", "--batch", "2", "--warmup", "0", "--iters", "2", "--no-peak", "--json"])
    assert check_report(rep) == []
    assert [r["label"] for r in rep["results"]] == ["torch fp32 eager", "onnxruntime fp32"]
    assert rep["results"][1]["note"] is None  # the temporary export has a dynamic batch
    assert rep["model"]["model_batch"] is None and rep["peaks"] == []
    reasons = [s["reason"] for s in rep["skipped"] if s["backend"] == "onnxruntime"]
    assert any("--calib" in r for r in reasons)


def test_bench_concurrent_streams_rows(tiny_export):
    rep, _ = _bench([str(tiny_export), "--backends", "onnxruntime", "--precisions", "fp32", "--streams", "1,3",
                     "--warmup", "1", "--iters", "4", "--no-peak", "--json"])
    assert check_report(rep) == [] and rep["settings"]["streams"] == [1, 3]
    rows = {r["streams"]: r for r in rep["results"]}
    assert rows[1]["label"] == "onnxruntime fp32" and rows[3]["label"] == "onnxruntime fp32 × 3 streams"
    assert rows[1]["iters"] == 4 and rows[3]["iters"] == 12 and rows[3]["throughput_fps"] > 0


def test_bench_several_models_side_by_side(tiny_export):
    """Two models in one run: a full report each, and the comparison of their common rows with the
    ratio to the first model's (its own rows 1.0)."""
    second = tiny_export.with_name("model.pt")  # the same network, exported again by stpm-bench
    args = [str(tiny_export), str(second), "--backends", "onnxruntime", "--precisions", "fp32", "--batch", "1,2",
            "--warmup", "1", "--iters", "3", "--no-peak"]
    both, err = _bench([*args, "--json"])
    assert both["schema"] == "stpm-edge/bench-set" and both["command"].startswith("stpm-bench ")
    assert [check_report(r) for r in both["reports"]] == [[], []]
    assert [r["model"]["path"] for r in both["reports"]] == [str(tiny_export), str(second)]
    assert "[model 2/2: " in err
    cmp = both["comparison"]
    assert [(c["model"], c["key"]["batch"]) for c in cmp] == [(str(tiny_export), 1), (str(tiny_export), 2),
                                                              (str(second), 1), (str(second), 2)]
    assert [c["vs_first"] for c in cmp[:2]] == [1.0, 1.0] and all(c["vs_first"] > 0 for c in cmp[2:])
    p50 = {(c["model"], c["key"]["batch"]): c["p50_ms"] for c in cmp}
    assert cmp[3]["vs_first"] == pytest.approx(p50[(str(second), 2)] / p50[(str(tiny_export), 2)], rel=1e-2)
    res = CliRunner().invoke(app, ["bench", *args, "--markdown"])
    assert res.exit_code == 0 and "### Side by side" in res.stdout and res.stdout.count("### ") == 3
    res = CliRunner().invoke(app, ["bench", *args])
    assert res.exit_code == 0 and "the models side by side" in res.stdout


def test_bench_table_output(tiny_export):
    res = CliRunner().invoke(app, ["bench", str(tiny_export), "--backends", "onnxruntime", "--precisions", "fp32",
                                   "--warmup", "0", "--iters", "2", "--no-peak"])
    assert res.exit_code == 0, res.stderr
    assert "onnxruntime fp32" in res.stdout and "machine:" in res.stdout


def test_bench_isolated_rows_run_in_a_fresh_process(tiny_export):
    rep, err = _bench([str(tiny_export), "--backends", "onnxruntime", "--precisions", "fp32,int8", "--warmup", "0",
                       "--iters", "2", "--no-peak", "--isolate", "--json"])
    assert check_report(rep) == []
    assert rep["settings"]["isolate"] is True and "fresh process" in err
    assert [r["label"] for r in rep["results"]] == ["onnxruntime fp32", "onnxruntime int8 (TensorRT Q/DQ form)",
                                                   "onnxruntime int8 (CPU form)"]
    assert all(r["peak_rss_mib"] > 0 and r["added_rss_mib"] is not None for r in rep["results"])


def test_bench_user_errors(tiny_export, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["bench", str(tiny_export), "--backends", "openvino"])
    assert res.exit_code == 1 and "stpm-bench: --backends" in res.stderr
    res = runner.invoke(app, ["bench", str(tmp_path / "nope.onnx")])
    assert res.exit_code == 1 and "no such model file" in res.stderr
    res = runner.invoke(app, ["bench", str(tiny_export), "--batch", "0"])
    assert res.exit_code == 1 and "--batch" in res.stderr
    res = runner.invoke(app, ["bench", str(tiny_export), "--streams", "x"])
    assert res.exit_code == 1 and "stpm-bench: --streams 'x'" in res.stderr
    res = runner.invoke(app, ["bench", "triton://host:8000/a/b"])
    assert res.exit_code == 1 and "triton://host:8000/a/b" in res.stderr and "\n" not in res.stderr.strip()
    res = runner.invoke(app, ["bench", str(tiny_export), str(tiny_export)])
    assert res.exit_code == 1 and "named twice" in res.stderr
    res = runner.invoke(app, ["bench", str(tiny_export), str(tiny_export.with_name("model.pt")), "--checkpoint",
                              str(tiny_export.with_name("model.pt"))])
    assert res.exit_code == 1 and "--checkpoint names the reference of one MODEL" in res.stderr
    res = runner.invoke(app, ["bench", "triton://host:8000/m", "--calib", str(tmp_path)])
    assert res.exit_code == 1 and "apply when MODEL is a checkpoint" in res.stderr


def test_check_report_finds_problems():
    assert check_report([]) == ["report: not a JSON object"]
    assert "missing 'results'" in check_report({"schema": "stpm-edge/bench"})


def test_torch_reference_matches_onnxruntime(tiny_export):
    """The PyTorch eager reference runs the same model as the exported graph."""
    from stpm_edge.bench.runner import make_frames
    from stpm_edge.bench.torch_ref import TorchEager
    from stpm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend

    ref = TorchEager(tiny_export.with_name("model.pt"), "cpu", memory_format="channels_last")
    ort_b = OnnxRuntimeBackend(tiny_export, providers="cpu")
    frames = make_frames(ref.input_spec, 2)
    (m1, s1), (m2, s2) = ref.infer(frames), ort_b.infer(frames)
    assert np.abs(m1 - m2).max() < 1e-3 and np.abs(s1 - s2).max() < 1e-3
    assert "channels_last" in ref.describe()


@pytest.mark.gpu
def test_torch_reference_cuda_paths(tiny_export):
    """FP32, FP16 autocast and CUDA-graph replays on CUDA agree with the CPU reference."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU visible to PyTorch")
    from stpm_edge.bench.runner import make_frames
    from stpm_edge.bench.torch_ref import TorchEager

    ckpt = tiny_export.with_name("model.pt")
    cpu = TorchEager(ckpt, "cpu")
    frames = make_frames(cpu.input_spec, 3)
    m_ref, s_ref = cpu.infer(frames)
    for precision, graph, tol in (("fp32", False, 1e-2), ("fp32", True, 1e-2), ("fp16", False, 5e-2),
                                  ("fp16", True, 5e-2)):
        b = TorchEager(ckpt, "cuda", precision, cuda_graph=graph)
        b.choose_memory_format(frames)
        for _ in range(2):  # the second call replays the captured graph
            m, s = b.infer(frames)
            assert np.abs(m - m_ref).max() < tol and np.abs(s - s_ref).max() < tol, (precision, graph)
        b.close()
