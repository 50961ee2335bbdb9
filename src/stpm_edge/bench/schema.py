"""The JSON report of ``stpm-bench --json`` (``schema`` ``stpm-edge/bench``, ``schema_version`` 2).

Top level::

    schema, schema_version, stpm_edge      "stpm-edge/bench", 2, package version
    command                                 the stpm-bench command line
    model      path, checkpoint (the PyTorch reference, or null), arch, backbone, input (the model's
               input description), fusion, model_batch (null = dynamic), files (variant key → path:
               fp32, fp16, int8 = TensorRT Q/DQ form, int8.cpu = ORT x86 form, engine.<precision>),
               flops (gflop_per_frame, by_op, counted_nodes, unknown_nodes, uncounted_ops,
               other_melem_per_frame, graph_batch, note)
    settings   backends, precisions, batches, streams, devices, warmup, iters, threads, cuda_graphs, isolate,
               rss, speedup
    machine    date, cpu, cpu_features, logical_cpus, usable_cpus, threads, memory_gib, gpus[], os,
               python, libraries{name: version}, load_average (before), load_average_end
    warnings   [text]  (e.g. the machine was busy)
    peaks      [{device, precision, gflops, method, by_size{n: gflops}, threads}]
    results    [row]   one per timed combination (below)
    skipped    [{backend, precision, form, device, reason}]  unavailable or failed combinations
    seconds    wall time of the whole run

A row::

    label, backend (torch|onnxruntime|tensorrt|triton), precision (fp32|fp16|int8|served),
    form (tensorrt|cpu|null), device (cpu|cuda|remote), batch, streams (client threads calling at once),
    cuda_graph, file (a path, or the triton:// URI), describe, memory_format (torch), note,
    warmup, iters (all clients' calls), latency_ms{p50,p90,p99,mean,min,max} (per call of `batch` frames),
    ms_per_frame (p50 / batch), throughput_fps, cpu_ms_per_frame, peak_rss_mib (process peak during the
    row's warm-up and timed calls), added_rss_mib (that peak minus the RSS before the backend was
    opened), load_s, load_peak_rss_mib (process peak while opening the backend),
    gflop_per_frame, achieved_gflops, peak ("cpu-fp32", ...), peak_share (0..1+),
    speedup_vs_torch (PyTorch eager FP32 p50 / row p50, same device and batch), reference
"""
from __future__ import annotations

from typing import Any

from stpm_edge.bench import SCHEMA, SCHEMA_VERSION

TOP = {"schema": str, "schema_version": int, "stpm_edge": str, "command": (str, type(None)), "model": dict,
       "settings": dict, "machine": dict, "warnings": list, "peaks": list, "results": list, "skipped": list,
       "seconds": (int, float)}
MODEL = ("path", "checkpoint", "arch", "backbone", "input", "fusion", "model_batch", "files", "flops")
SETTINGS = ("backends", "precisions", "batches", "streams", "devices", "warmup", "iters", "threads", "cuda_graphs",
            "isolate", "rss", "speedup")
MACHINE = ("date", "cpu", "cpu_features", "logical_cpus", "usable_cpus", "threads", "memory_gib", "gpus", "os",
           "python", "libraries", "load_average", "load_average_end")
PEAK = ("device", "precision", "gflops", "method", "by_size", "threads")
ROW = ("label", "backend", "precision", "form", "device", "batch", "streams", "cuda_graph", "file", "describe",
       "memory_format", "note", "warmup", "iters", "latency_ms", "ms_per_frame", "throughput_fps",
       "cpu_ms_per_frame", "peak_rss_mib", "added_rss_mib", "load_s", "load_peak_rss_mib", "gflop_per_frame",
       "achieved_gflops", "peak", "peak_share", "speedup_vs_torch", "reference")
LATENCY = ("p50", "p90", "p99", "mean", "min", "max")
SKIP = ("backend", "precision", "form", "device", "reason")


def check_report(report: Any) -> list[str]:
    """Problems with a report's structure ([] when it follows the schema above)."""
    problems: list[str] = []
    if not isinstance(report, dict):
        return ["report: not a JSON object"]
    for key, typ in TOP.items():
        if key not in report:
            problems.append(f"missing {key!r}")
        elif not isinstance(report[key], typ):
            problems.append(f"{key!r}: wrong type {type(report[key]).__name__}")
    if problems:
        return problems
    if report["schema"] != SCHEMA or report["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema {report['schema']!r} v{report['schema_version']}: "
                        f"expected {SCHEMA!r} v{SCHEMA_VERSION}")
    for where, keys, obj in (("model", MODEL, report["model"]), ("settings", SETTINGS, report["settings"]),
                             ("machine", MACHINE, report["machine"])):
        problems += [f"{where}: missing {k!r}" for k in keys if k not in obj]
    for i, p in enumerate(report["peaks"]):
        problems += [f"peaks[{i}]: missing {k!r}" for k in PEAK if k not in p]
    for i, r in enumerate(report["results"]):
        problems += [f"results[{i}]: missing {k!r}" for k in ROW if k not in r]
        lat = r.get("latency_ms", {})
        problems += [f"results[{i}].latency_ms: missing {k!r}" for k in LATENCY if k not in lat]
        if all(k in lat for k in ("p50", "p90", "p99")) and not lat["p50"] <= lat["p90"] <= lat["p99"]:
            problems.append(f"results[{i}]: percentiles out of order")
    for i, s in enumerate(report["skipped"]):
        problems += [f"skipped[{i}]: missing {k!r}" for k in SKIP if k not in s]
        if not s.get("reason"):
            problems.append(f"skipped[{i}]: no reason")
    return problems
