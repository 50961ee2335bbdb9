"""Where an ONNX Runtime frame's time goes: inside the low-precision regions (the trunks, from
the model's metadata) or outside them (preprocessing, the head, normalisation, and the gaps
between nodes), from ONNX Runtime's own profiler (``SessionOptions.enable_profiling``).

A node belongs to a region when its name starts with one of the region scopes
(``/net/<path>/``), which survive ONNX Runtime's fusions and the quantizer's renaming (a fused
or quantized node keeps the name of the node it replaced, plus a suffix). Q/DQ nodes that the
quantizer adds at a region's edge carry the name of the tensor they quantize and count as
inside when that tensor is. The frame time is the profiler's ``model_run`` span; everything in
it that is not a region node (including scheduling gaps) counts as outside.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from stpm_edge.bench.flops import _known, _shape_map, COUNTED, fix_batch, node_flops


@dataclass
class RegionProfile:
    frame_ms: float  # median model_run span per call (the whole batch)
    region_ms: float  # median per call of the region nodes' kernel time
    runs: int
    by_op_outside_ms: dict[str, float] = field(default_factory=dict)  # op type → ms per call, outside

    @property
    def outside_share(self) -> float:
        return max(0.0, 1.0 - self.region_ms / self.frame_ms) if self.frame_ms > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"frame_ms": round(self.frame_ms, 4), "region_ms": round(self.region_ms, 4),
                "outside_share": round(self.outside_share, 4), "runs": self.runs,
                "by_op_outside_ms": {k: round(v, 4) for k, v in self.by_op_outside_ms.items()}}


def in_regions(name: str, scopes: Sequence[str]) -> bool:
    return any(name.startswith(s) or name.startswith(s.lstrip("/")) for s in scopes)


def region_gflop(model: onnx.ModelProto, scopes: Sequence[str]) -> float:
    """GFLOP per frame of the counted ops (flops.COUNTED) inside ``scopes``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    batch = fix_batch(m)
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    shapes = _shape_map(m)
    total = 0.0
    for node in m.graph.node:
        if node.op_type in COUNTED and in_regions(node.name, scopes):
            f = node_flops(node, shapes)
            total += f or 0.0
    return total / batch / 1e9


def parse_profile(events: list[dict[str, Any]], scopes: Sequence[str]) -> RegionProfile:
    """Median per-call frame and region times from ONNX Runtime profiler events (µs)."""
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    frame, region = [], []
    outside: dict[str, list[float]] = {}
    for r in runs:
        t0, t1 = r["ts"], r["ts"] + r["dur"]
        inside = [n for n in nodes if t0 <= n["ts"] <= t1]
        frame.append(r["dur"] / 1000.0)
        region.append(sum(n["dur"] for n in inside if in_regions(n["name"][:-len("_kernel_time")], scopes)) / 1000.0)
        per_op: dict[str, float] = {}
        for n in inside:
            if not in_regions(n["name"][:-len("_kernel_time")], scopes):
                op = n.get("args", {}).get("op_name", "?")
                per_op[op] = per_op.get(op, 0.0) + n["dur"] / 1000.0
        for op, v in per_op.items():
            outside.setdefault(op, []).append(v)
    if not runs:
        return RegionProfile(math.nan, math.nan, 0)
    by_op = {op: float(np.median(v + [0.0] * (len(runs) - len(v)))) for op, v in outside.items()}
    return RegionProfile(float(np.median(frame)), float(np.median(region)), len(runs),
                         dict(sorted(by_op.items(), key=lambda kv: -kv[1])))


def profile_ort(path: Path, feed: dict[str, np.ndarray], scopes: Sequence[str], *, threads: int,
                warmup: int = 5, runs: int = 30) -> RegionProfile:
    """Run ``path`` on ONNX Runtime CPU with its profiler on; split each call's time by region."""
    import onnxruntime as ort  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="stpm-profile-") as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            sess.run(None, feed)
        prof = sess.end_profiling()
        events = json.loads(Path(prof).read_text())
    # the warm-up calls are in the file too: keep the last ``runs`` model_run spans
    spans = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    cut = spans[-runs]["ts"] if len(spans) >= runs else 0
    return parse_profile([e for e in events if e.get("ts", 0) >= cut], scopes)


def add_region_columns(results: list[dict[str, Any]], fp32_onnx: Path | None, scopes: Sequence[str],
                       peaks: Sequence[Any], threads: int, runs: int = 30) -> None:
    """Per ONNX Runtime CPU row (in place): ``outside_share`` (fraction of the profiled frame
    outside the regions), ``trunk_gflops`` (the regions' FLOP per frame over their kernel time)
    and ``trunk_peak_share`` (of the row's precision's measured matmul peak). Other rows: None."""
    from stpm_edge.bench.peak import peak_for  # noqa: PLC0415

    gflop = None
    if fp32_onnx is not None and scopes:
        try:
            gflop = region_gflop(onnx.load(str(fp32_onnx)), scopes)
        except Exception:  # noqa: BLE001 - shape inference failures: leave the column empty
            gflop = None
    for r in results:
        r.update({"outside_share": None, "trunk_gflops": None, "trunk_peak_share": None, "profile": None})
        if r["backend"] != "onnxruntime" or r["device"] != "cpu" or not scopes:
            continue
        sess_input = onnx.load(r["file"], load_external_data=False).graph.input[0]
        dims = [d.dim_value or r["batch"] for d in sess_input.type.tensor_type.shape.dim]
        dtype = np.uint8 if sess_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8 else np.float32
        x = (np.random.default_rng(0).integers(0, 256, dims) if dtype == np.uint8
             else np.random.default_rng(0).standard_normal(dims)).astype(dtype)
        try:
            prof = profile_ort(Path(r["file"]), {sess_input.name: x}, scopes, threads=threads, runs=runs)
        except Exception:  # noqa: BLE001 - a profile is extra information; never end the run
            continue
        r["profile"] = prof.to_dict()
        r["outside_share"] = round(prof.outside_share, 4)
        if gflop and prof.region_ms > 0:
            rate = gflop * dims[0] / (prof.region_ms / 1000.0)
            peak = peak_for(peaks, r["device"], r["precision"])
            r["trunk_gflops"] = round(rate, 1)
            r["trunk_peak_share"] = None if peak is None else round(rate / peak.gflops, 4)
