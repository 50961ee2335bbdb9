"""``stpm-bench``: speed of every backend × precision × batch of one model, side by side with the
PyTorch eager reference of the same checkpoint, in one run.

Modules (each small, decisions kept pure so they are tested without the hardware):

* :mod:`.stats`   — percentiles and the latency summary of one timed loop;
* :mod:`.flops`   — GFLOP per frame counted from the ONNX graph (Conv, MatMul, Gemm, ...);
* :mod:`.peak`    — the machine's matrix-multiply peak, measured in the same run;
* :mod:`.machine` — CPU model, cores, GPU, library versions, load, date;
* :mod:`.memory`  — resident memory and its high-water mark from ``/proc`` (reset per row);
* :mod:`.plan`    — which combinations run and why the others cannot (pure);
* :mod:`.torch_ref` — the PyTorch eager reference (CPU FP32, CUDA FP32 / FP16 autocast / CUDA graphs);
* :mod:`.runner`  — opens each combination once, warms up, times, and assembles the report;
* :mod:`.report`  — the rich table and the markdown tables of a report.
"""
from __future__ import annotations

SCHEMA = "stpm-edge/bench"
SCHEMA_VERSION = 2  # 2: rows and settings have ``streams``; backend ``triton``
