"""One benchmark run: every planned combination opened once, warmed up, timed, measured.

Rows run one after another with one backend loaded at a time, in this process (the peak RSS
is reset per row, see :mod:`.memory`) or, with ``isolate``, each backend in a fresh process
(:mod:`.worker`); rows that differ only in batch share the loaded backend. Rows are not
interleaved: on a busy machine, load that comes and goes moves rows differently, so the report
records the load average before and after and warns when the machine was busy. Per row: ``warmup`` untimed calls, then ``iters`` timed calls of ``batch`` random
frames of the model's input (content does not change the speed of a dense network).

* latency: per call, p50/p90/p99/mean/min/max in ms (with ``streams`` > 1: every client's calls);
* throughput: ``iters·batch / wall time of the timed loop`` (frames/s; all clients together);
* speed ratio: the PyTorch eager FP32 row of the same device and batch, p50 over p50
  (>1 = faster than the reference);
* GFLOP/s: GFLOP per frame (counted on ``model.onnx``, the same network in every precision)
  × throughput; its share of the peak of the row's device and precision (:mod:`.peak`).
"""
from __future__ import annotations

import gc
import logging
import tempfile
import threading
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge import __version__
from stpm_edge.bench import SCHEMA, SCHEMA_VERSION, memory
from stpm_edge.bench.flops import count_flops
from stpm_edge.bench.machine import busy_warning, describe_machine, load_average
from stpm_edge.bench.models import discover, export_checkpoint
from stpm_edge.bench.peak import Peak, measure_peaks, peak_for
from stpm_edge.bench.plan import (BACKENDS, PRECISIONS, BenchFiles, Combo, Env, Request, Skip, is_reference, plan,
                                  reference_key)
from stpm_edge.bench.stats import LatencySummary, summarize
from stpm_edge.errors import StpmError, first_line
from stpm_edge.runtime.backends.base import Backend, InputSpec
from stpm_edge.runtime.backends.triton import is_triton_uri, parse_triton_uri

logger = logging.getLogger(__name__)

# (text, rows done, rows total); typing's Callable: collections.abc's is subscriptable only from Python 3.9
Status = typing.Callable[[str, int, int], None]


@dataclass
class BenchConfig:
    model: Path | str  # str: a triton:// URI
    checkpoint: Path | None = None
    backends: tuple[str, ...] = BACKENDS
    precisions: tuple[str, ...] = PRECISIONS
    batches: tuple[int, ...] = (1,)
    devices: tuple[str, ...] = ("auto",)
    warmup: int = 10
    iters: int = 50
    threads: int | None = None
    cuda_graphs: bool = True
    calib: Path | None = None
    calib_count: int | None = None
    measure_peak: bool = True
    profile: bool = True  # ORT CPU rows: profile once more for the time outside the trunks (bench/profile.py)
    isolate: bool = False  # each loaded backend in a fresh process (clean peak RSS; ~3 s more per backend)
    work_dir: Path | None = None  # where a .pt is exported (default: a temporary folder)
    streams: tuple[int, ...] = (1,)  # client threads calling one loaded backend at once

    def validated(self) -> BenchConfig:
        if self.warmup < 0 or self.iters < 1:
            raise StpmError(f"--warmup {self.warmup} / --iters {self.iters}: expected warmup >= 0 and iters >= 1")
        if not self.batches or any(b < 1 for b in self.batches):
            raise StpmError(f"--batch {','.join(map(str, self.batches))}: expected positive integers")
        if not self.streams or any(n < 1 for n in self.streams):
            raise StpmError(f"--streams {','.join(map(str, self.streams))}: expected positive integers")
        if self.threads is not None and self.threads < 1:
            raise StpmError(f"--threads {self.threads}: expected a positive integer")
        if is_triton_uri(self.model):
            parse_triton_uri(str(self.model))  # a malformed URI: one-line error now
            if self.checkpoint is not None or self.calib is not None or self.work_dir is not None:
                raise StpmError("--checkpoint, --calib and --work-dir do not apply to a triton:// model")
            return self
        suffix = Path(self.model).suffix.lower()
        if suffix not in (".onnx", ".pt", ".pth"):
            raise StpmError(f"{self.model}: expected a checkpoint (.pt) or an exported model (.onnx)")
        if not Path(self.model).is_file():
            raise StpmError(f"{self.model}: no such model file")
        return self


@dataclass
class Row:
    combo: Combo
    summary: LatencySummary
    warmup: int
    describe: str
    load_s: float
    peak_rss_mib: float
    added_rss_mib: float | None
    memory_format: str | None = None
    load_peak_rss_mib: float | None = None


def probe_env() -> Env:
    """What this machine offers: a CUDA GPU for PyTorch, ORT's providers, TensorRT (or why not)."""
    import onnxruntime as ort  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from stpm_edge.runtime.backends.select import probe_tensorrt  # noqa: PLC0415

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        trt = probe_tensorrt()
        problem = "" if trt.usable else (trt.reason or "TensorRT or a CUDA GPU is missing")
    except Exception as e:  # noqa: BLE001 - a broken install is a reason, not a crash
        problem = f"tensorrt cannot be used ({first_line(e)})"
    return Env(gpu, tuple(ort.get_available_providers()), problem)


def default_threads() -> int:
    import os  # noqa: PLC0415

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def open_combo(c: Combo, threads: int) -> Backend:
    if c.backend == "torch":
        from stpm_edge.bench.torch_ref import TorchEager  # noqa: PLC0415

        return TorchEager(c.path, c.device, c.precision, cuda_graph=c.cuda_graph, threads=threads)
    if c.backend == "onnxruntime":
        from stpm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend  # noqa: PLC0415

        return OnnxRuntimeBackend(c.path, providers=c.device, threads=threads)
    if c.backend == "tensorrt":
        from stpm_edge.tensorrt.runner import TensorRTBackend  # noqa: PLC0415

        return TensorRTBackend(c.path, cuda_graph=c.cuda_graph)
    if c.backend == "triton":
        from stpm_edge.runtime.backends.triton import TritonBackend  # noqa: PLC0415

        return TritonBackend(str(c.path))
    raise StpmError(f"unknown backend {c.backend!r}")


def make_frames(spec: InputSpec, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in spec.shape(batch))
    if spec.dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape, dtype=np.float32)


def time_calls(fn: Callable[[], Any], warmup: int, iters: int, batch: int, streams: int = 1) -> LatencySummary:
    """``warmup`` untimed calls, then ``iters`` timed ones (perf_counter per call); with ``streams``
    > 1, that many threads do so at once (each its warmup, then all start timing together), and
    the summary holds every thread's calls over the wall time of the slowest."""
    lats: list[list[float]] = [[] for _ in range(streams)]
    errors: list[BaseException] = []

    def timed(k: int) -> None:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            lats[k].append(time.perf_counter() - t0)

    if streams == 1:
        for _ in range(warmup):
            fn()
        c0, t_start = time.process_time(), time.perf_counter()
        timed(0)
    else:
        start = threading.Barrier(streams + 1)

        def client(k: int) -> None:
            try:
                for _ in range(warmup):
                    fn()
            except BaseException as e:  # noqa: BLE001 - reported after the others finished
                errors.append(e)
            start.wait()
            try:
                if not errors:
                    timed(k)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=client, args=(k,), name=f"bench-client-{k}", daemon=True)
                   for k in range(streams)]
        for t in threads:
            t.start()
        start.wait()
        c0, t_start = time.process_time(), time.perf_counter()
        for t in threads:
            t.join()
    wall, cpu = time.perf_counter() - t_start, time.process_time() - c0
    if errors:
        raise errors[0]
    return summarize([x for lat in lats for x in lat], batch, wall, cpu)


def run_group(combos: Sequence[Combo], cfg: BenchConfig, threads: int, status: Status, done: int, total: int
              ) -> tuple[list[Row], list[Skip]]:
    """Open the backend of ``combos`` (same but for batch) once and time each batch."""
    first = combos[0]
    gc.collect()
    memory.reset_peak()
    rss0 = memory.rss_mib()
    status(f"{first.label} ({first.device}): loading", done, total)
    t0 = time.perf_counter()
    try:
        backend = open_combo(first, threads)
    except Exception as e:  # noqa: BLE001 - one failing backend must not end the run
        why = first_line(e)
        return [], [Skip(c.backend, f"failed to open: {why}", c.precision, c.device, c.form) for c in combos[:1]]
    load_s = time.perf_counter() - t0
    load_peak = memory.peak_mib()
    if first.cuda_graph and getattr(backend, "cuda_graph", True) is False:  # TensorRT without cuda-python
        backend.close()
        return [], [Skip(first.backend, "CUDA graphs need cuda-python (the TensorRT backend runs without them)",
                         first.precision, first.device, first.form)]
    rows: list[Row] = []
    skips: list[Skip] = []
    fmt = None
    try:
        for i, c in enumerate(combos):
            frames = make_frames(backend.input_spec, c.batch)
            memory.reset_peak()
            status(f"{c.label} ({c.device}) batch {c.batch}", done + i, total)
            try:
                if fmt is None and hasattr(backend, "choose_memory_format"):
                    fmt = backend.choose_memory_format(frames)
                summary = time_calls(lambda: backend.infer(frames), cfg.warmup, cfg.iters, c.batch, c.streams)
            except Exception as e:  # noqa: BLE001
                skips.append(Skip(c.backend, f"batch {c.batch} failed: {first_line(e)}", c.precision, c.device,
                                  c.form))
                continue
            peak = memory.peak_mib()
            rows.append(Row(c, summary, cfg.warmup, backend.describe(), load_s, peak,
                            None if rss0 is None else peak - rss0, fmt, load_peak))
    finally:
        backend.close()
        gc.collect()
    return rows, skips


def _peak_key(p: Peak | None) -> str | None:
    return None if p is None else p.key


def row_dict(r: Row, gflop: float | None, peaks: Sequence[Peak], ref: Row | None) -> dict[str, Any]:
    c, s = r.combo, r.summary
    peak = peak_for(peaks, c.device, c.precision)
    achieved = None if gflop is None else gflop * s.throughput_fps
    return {
        "label": c.label, "backend": c.backend, "precision": c.precision, "form": c.form or None,
        "device": c.device, "batch": c.batch, "streams": c.streams, "cuda_graph": c.cuda_graph, "file": str(c.path),
        "describe": r.describe, "memory_format": r.memory_format, "note": c.note or None,
        "warmup": r.warmup, "iters": s.iters,
        "latency_ms": {k: round(getattr(s, k), 3) for k in ("p50", "p90", "p99", "mean", "min", "max")},
        "ms_per_frame": round(s.ms_per_frame, 3), "throughput_fps": round(s.throughput_fps, 2),
        "cpu_ms_per_frame": round(s.cpu_ms_per_frame, 3),
        "peak_rss_mib": round(r.peak_rss_mib, 1),
        "added_rss_mib": None if r.added_rss_mib is None else round(r.added_rss_mib, 1),
        "load_s": round(r.load_s, 3),
        "load_peak_rss_mib": None if r.load_peak_rss_mib is None else round(r.load_peak_rss_mib, 1),
        "gflop_per_frame": None if gflop is None else round(gflop, 4),
        "achieved_gflops": None if achieved is None else round(achieved, 1),
        "peak": _peak_key(peak),
        "peak_share": None if achieved is None or peak is None else round(achieved / peak.gflops, 4),
        "speedup_vs_torch": None if ref is None else round(ref.summary.p50 / s.p50, 3),
        "reference": None if ref is None else f"{ref.combo.label} ({ref.combo.device}, batch {ref.combo.batch})",
    }


def run_bench(cfg: BenchConfig, status: Status = lambda text, done, total: None) -> dict[str, Any]:
    """Run the whole benchmark and return the JSON-able report (schema: :mod:`stpm_edge.bench`)."""
    cfg = cfg.validated()
    t_start = time.perf_counter()
    threads = cfg.threads or default_threads()
    machine = describe_machine(threads)  # load average read before any work of ours
    env = probe_env()
    req = Request(cfg.backends, cfg.precisions, cfg.batches, cfg.devices, cfg.cuda_graphs, cfg.streams)
    tmp: tempfile.TemporaryDirectory | None = None
    triton = is_triton_uri(cfg.model)
    model: Path | str = str(cfg.model) if triton else Path(cfg.model)
    exported_to = None
    try:
        if triton:
            files, meta = served_model(str(model))
        elif model.suffix.lower() in (".pt", ".pth"):  # type: ignore[union-attr]
            if cfg.work_dir is None:
                tmp = tempfile.TemporaryDirectory(prefix="stpm-bench-")
            out = Path(cfg.work_dir or tmp.name)  # type: ignore[union-attr]
            exported_to = out
            files, meta = export_checkpoint(
                model, out, cfg.precisions, calib=cfg.calib, calib_count=cfg.calib_count,
                build_engines="tensorrt" in cfg.backends and not env.trt_problem, max_batch=max(cfg.batches),
                status=lambda s: status(s, 0, 0))
        else:
            files, meta = discover(model, cfg.checkpoint)
        combos, skips = plan(files, env, req)
        status("counting FLOP in the graph", 0, len(combos))
        flop = count_flops(files.onnx["fp32"]) if "fp32" in files.onnx else None
        gflop = None if flop is None else flop.gflop_per_frame
        devices = sorted({c.device for c in combos if c.device != "remote"})  # a Triton server's is not ours
        peaks: list[Peak] = []
        if cfg.measure_peak and devices:
            status(f"measuring the matrix-multiply peak ({', '.join(devices)})", 0, len(combos))
            peaks = measure_peaks(devices, cfg.precisions, threads)
        groups: dict[tuple, list[Combo]] = {}
        for c in combos:
            groups.setdefault(c.group, []).append(c)
        rows: list[Row] = []
        done = 0
        for group in groups.values():
            if cfg.isolate:
                from stpm_edge.bench.worker import run_isolated  # noqa: PLC0415

                status(f"{group[0].label} ({group[0].device}): batch {','.join(str(c.batch) for c in group)} "
                       f"in a fresh process", done, len(combos))
                r, s = run_isolated(group, cfg.warmup, cfg.iters, threads)
            else:
                r, s = run_group(group, cfg, threads, status, done, len(combos))
            rows += r
            skips += s
            done += len(group)
        status("done", len(combos), len(combos))
        refs = {reference_key(r.combo): r for r in rows if is_reference(r.combo)}
        results = [row_dict(r, gflop, peaks, refs.get(reference_key(r.combo))) for r in rows]
        if cfg.profile and results:  # while an exported work folder still exists
            from stpm_edge.bench.profile import add_region_columns  # noqa: PLC0415

            status("profiling the time outside the trunks (ONNX Runtime CPU rows)", len(combos), len(combos))
            add_region_columns(results, files.onnx.get("fp32"), tuple(meta.lowp.int8), peaks, threads)
    finally:
        if tmp is not None:
            tmp.cleanup()
    machine["load_average_end"] = load_average()
    warning = busy_warning(machine.get("load_average"), machine.get("usable_cpus"))
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "stpm_edge": __version__,
        "command": None,  # filled in by the CLI
        "model": {"path": str(model), "exported_to": None if exported_to is None or tmp is not None
                  else str(exported_to), "checkpoint": None if files.checkpoint is None else str(files.checkpoint),
                  "arch": meta.arch, "backbone": meta.method.get("backbone"), "input": meta.input.to_dict(),
                  "fusion": meta.method.get("fusion"), "model_batch": files.model_batch,
                  "files": {**{k: str(v) for k, v in files.onnx.items()},
                            **{f"engine.{k}": str(v) for k, v in files.engines.items()}},
                  "flops": None if flop is None else flop.to_dict()},
        "settings": {"backends": list(cfg.backends), "precisions": list(cfg.precisions),
                     "batches": list(cfg.batches), "streams": list(cfg.streams), "devices": list(cfg.devices),
                     "warmup": cfg.warmup,
                     "iters": cfg.iters, "threads": threads, "cuda_graphs": cfg.cuda_graphs,
                     "isolate": cfg.isolate,
                     "rss": memory.peak_method() + (", each backend in a fresh process" if cfg.isolate else
                                                    ", all rows in one process"),
                     "speedup": "p50 latency of the PyTorch eager FP32 row (same device and batch) / this row's"},
        "machine": machine,
        "warnings": [warning] if warning else [],
        "peaks": [p.to_dict() for p in peaks],
        "results": results,
        "skipped": [s.to_dict() for s in skips],
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def served_model(uri: str) -> tuple[BenchFiles, Any]:
    """A triton:// model: its metadata (from the server's model config) and no local files."""
    from stpm_edge.runtime.backends.triton import TritonBackend  # noqa: PLC0415

    backend = TritonBackend(uri)
    try:
        meta = backend.metadata
    finally:
        backend.close()
    return BenchFiles(triton=uri, model_batch=meta.input.batch), meta
