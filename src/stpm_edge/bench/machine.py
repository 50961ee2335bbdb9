"""What machine a benchmark ran on: CPU model and features, cores, memory, GPU, library versions,
load and date. Reading only; nothing here changes the machine."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

LIBRARIES = ("stpm-edge", "torch", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "timm", "tensorrt",
             "cuda-python", "pycuda")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
             "amx_bf16", "avx_vnni", "asimd", "asimddp", "sve")


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """CPU model name and the SIMD features of interest from ``/proc/cpuinfo`` text (pure)."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return {"model": model, "features": [f for f in CPU_FLAGS if f in flags]}


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that matter (absent ones left out); no imports."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def gpu_info() -> list[dict[str, Any]]:
    """CUDA devices visible to PyTorch (empty without one)."""
    try:
        import torch  # noqa: PLC0415

        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append({"index": i, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                        "memory_gib": round(p.total_memory / 2**30, 1), "cuda": torch.version.cuda})
        return out
    except Exception:  # noqa: BLE001 - a broken driver must not stop a CPU benchmark
        return []


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def describe_machine(threads: int | None = None) -> dict[str, Any]:
    """The machine description every benchmark report carries."""
    try:
        cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = {"model": platform.processor(), "features": []}
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu["model"] or platform.processor() or platform.machine(),
        "cpu_features": cpu["features"],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "threads": threads,
        "memory_gib": _meminfo_gib(),
        "gpus": gpu_info(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "load_average": load_average(),
    }


def busy_warning(load: list[float] | None, usable_cpus: int | None) -> str:
    """A warning when the 1-minute load average says others are using the CPUs ('' otherwise)."""
    if not load or not usable_cpus:
        return ""
    if load[0] >= 0.5 * usable_cpus:
        return (f"the machine was busy before the benchmark started (1-min load average {load[0]:.2f} on "
                f"{usable_cpus} CPUs): timings are indicative only")
    return ""
