"""The machine's matrix-multiply peak, measured in the same run with the same thread count.

It is the yardstick for "achieved GFLOP/s as a share of peak": a convolution network cannot
beat a large square GEMM on the same cores, so the share says how much headroom is left.

* CPU FP32: the better of ``torch.mm`` (oneDNN/MKL sgemm) and ONNX Runtime ``MatMul`` (MLAS) on
  square float32 matrices, per size;
* CPU INT8: ONNX Runtime ``MatMulInteger`` (uint8 × int8 → int32, the MLAS kernels that ORT's
  quantized convolutions use; VNNI where the CPU has it), in GOP/s;
* CUDA FP32 and FP16: ``torch.mm`` on the GPU (FP32 with TF32 off, PyTorch's default for
  matmuls; cuDNN convolutions may still use TF32, so an FP32 GPU share above 100% is possible).

Each size is run repeatedly for about ``seconds`` and the best rate counts; the peak is the
best over the sizes. The measurement itself is a timing like any other: on a shared machine
it is low, and the shares come out high. A convolution can come out slightly above 100%: its
kernels are not the GEMM measured here, and the peak is measured, not the data-sheet number.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CPU_SIZES = (256, 512, 1024, 2048)
GPU_SIZES = (2048, 4096, 8192)


@dataclass
class Peak:
    device: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "fp16" | "int8"
    gflops: float  # best rate, GFLOP/s (GOP/s for int8)
    method: str
    by_size: dict[int, float] = field(default_factory=dict)
    threads: int | None = None

    @property
    def key(self) -> str:
        return f"{self.device}-{self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "precision": self.precision, "gflops": round(self.gflops, 1),
                "method": self.method, "by_size": {str(k): round(v, 1) for k, v in self.by_size.items()},
                "threads": self.threads}


def best_rate(run: Callable[[], Any], flop: float, seconds: float, sync: Callable[[], None] = lambda: None,
              min_reps: int = 3) -> float:
    """Best GFLOP/s of ``run`` over repeated calls for about ``seconds`` (after one warm-up call)."""
    run()
    sync()
    best = float("inf")
    t_end = time.perf_counter() + seconds
    reps = 0
    while reps < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return flop / best / 1e9


def _ort_matmul(n: int, threads: int, integer: bool) -> Any:
    """An ONNX Runtime session of one n×n MatMul (float32) or MatMulInteger (uint8 × int8)."""
    import onnxruntime as ort  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    rng = np.random.default_rng(0)
    if integer:
        b, op, a_type, y_type = rng.integers(-128, 128, (n, n), dtype=np.int8), "MatMulInteger", TensorProto.UINT8, \
            TensorProto.INT32
    else:
        b, op, a_type, y_type = rng.standard_normal((n, n), dtype=np.float32), "MatMul", TensorProto.FLOAT, \
            TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node(op, ["A", "B"], ["Y"])], "peak",
                              [helper.make_tensor_value_info("A", a_type, [n, n])],
                              [helper.make_tensor_value_info("Y", y_type, [n, n])],
                              [numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (n, n), dtype=np.uint8) if integer else rng.standard_normal((n, n), dtype=np.float32)
    return lambda: sess.run(None, {"A": a})


def cpu_fp32(threads: int, sizes: Sequence[int] = CPU_SIZES, seconds: float = 0.3) -> Peak:
    """Best of PyTorch ``torch.mm`` (oneDNN/MKL) and ONNX Runtime ``MatMul`` (MLAS) per size."""
    import onnxruntime as ort  # noqa: PLC0415
    import torch  # noqa: PLC0415

    torch.set_num_threads(threads)
    rates: dict[int, float] = {}
    winner: dict[int, str] = {}
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        out = torch.empty(n, n)
        by_lib = {"torch.mm": best_rate(lambda: torch.mm(a, b, out=out), 2.0 * n**3, seconds),
                  "onnxruntime MatMul": best_rate(_ort_matmul(n, threads, False), 2.0 * n**3, seconds)}
        winner[n] = max(by_lib, key=by_lib.get)  # type: ignore[arg-type]
        rates[n] = by_lib[winner[n]]
    best = max(rates, key=rates.get)  # type: ignore[arg-type]
    return Peak("cpu", "fp32", rates[best], f"float32, best of torch.mm {torch.__version__} and onnxruntime MatMul "
                f"{ort.__version__}: {winner[best]} at n={best}", rates, threads)


def cpu_int8(threads: int, sizes: Sequence[int] = CPU_SIZES[1:], seconds: float = 0.3) -> Peak:
    import onnxruntime as ort  # noqa: PLC0415

    rates = {n: best_rate(_ort_matmul(n, threads, True), 2.0 * n**3, seconds) for n in sizes}
    return Peak("cpu", "int8", max(rates.values()), f"onnxruntime MatMulInteger u8×s8 ({ort.__version__})", rates,
                threads)


def cuda_peak(precision: str, sizes: Sequence[int] = GPU_SIZES, seconds: float = 0.3) -> Peak:
    import torch  # noqa: PLC0415

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        rates[n] = best_rate(lambda: torch.mm(a, b), 2.0 * n**3, seconds, sync=torch.cuda.synchronize)
    name = torch.cuda.get_device_name(0)
    tf32 = "" if precision != "fp32" else f", TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}"
    return Peak("cuda", precision, max(rates.values()), f"torch.mm {precision} on {name}{tf32}", rates)


def measure_peaks(devices: Sequence[str], precisions: Sequence[str], threads: int) -> list[Peak]:
    """The peaks the rows need: per device, FP32 always, plus INT8 (CPU) / FP16 (CUDA) when asked for."""
    peaks: list[Peak] = []
    for device in devices:
        if device == "cpu":
            peaks.append(cpu_fp32(threads))
            if "int8" in precisions:
                try:
                    peaks.append(cpu_int8(threads))
                except Exception as e:  # noqa: BLE001 - the int8 peak is optional
                    logger.warning("INT8 peak not measured (%s)", e)
        elif device == "cuda":
            peaks.append(cuda_peak("fp32"))
            if "fp16" in precisions or "int8" in precisions:
                peaks.append(cuda_peak("fp16"))
    return peaks


def peak_for(peaks: Sequence[Peak], device: str, precision: str) -> Peak | None:
    """The yardstick of a row: the same device and precision, else that device's FP32 peak
    (CPU FP16; CUDA INT8 falls back to FP16)."""
    by_key = {p.key: p for p in peaks}
    order = [precision] + (["fp16"] if device == "cuda" and precision == "int8" else []) + ["fp32"]
    for prec in order:
        if f"{device}-{prec}" in by_key:
            return by_key[f"{device}-{prec}"]
    return None
