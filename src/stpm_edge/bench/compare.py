"""Several models in one ``stpm-bench`` run (``stpm-bench A.onnx B.onnx ...``): each model's own
report, and one comparison table of the rows they have in common. Pure: no measuring here.

The comparison keys a row by what was run (backend, precision, INT8 form, device, batch, client
streams, CUDA graph); a row of a later model is set beside the first model's row of the same key,
with the latency ratio ``p50 of this row / p50 of the first model's`` (> 1: slower).

The JSON of a set (``--json`` with two or more models)::

    schema "stpm-edge/bench-set", schema_version 1, stpm_edge, command
    reports     [report]   each one a full ``stpm-edge/bench`` report (see :mod:`stpm_edge.bench.schema`)
    comparison  [{model, arch, backbone, key{...}, label, p50_ms, ms_per_frame, throughput_fps,
                  gflop_per_frame, vs_first}]
"""
from __future__ import annotations

from typing import Any, Sequence

from rich.table import Table

from stpm_edge.bench.report import _f, _ratio

SET_SCHEMA = "stpm-edge/bench-set"
SET_SCHEMA_VERSION = 1
KEY = ("backend", "precision", "form", "device", "batch", "streams", "cuda_graph")
COLUMNS = ("model", "method", "row", "dev", "batch", "streams", "p50 ms", "ms/frame", "frames/s", "GFLOP/frame",
           "× first model's p50")


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in KEY)


def comparison(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per timed row of every report, in report order, each with its ratio to the first
    report's row of the same key (None when the first model has no such row)."""
    first = {row_key(r): r for r in reports[0]["results"]} if reports else {}
    out = []
    for rep in reports:
        m = rep["model"]
        for r in rep["results"]:
            ref = first.get(row_key(r))
            p50 = r["latency_ms"]["p50"]
            ref_p50 = None if ref is None else ref["latency_ms"]["p50"]
            out.append({"model": m["path"], "arch": m.get("arch"), "backbone": m.get("backbone"),
                        "key": dict(zip(KEY, row_key(r))), "label": r["label"], "p50_ms": p50,
                        "ms_per_frame": r["ms_per_frame"], "throughput_fps": r["throughput_fps"],
                        "gflop_per_frame": r.get("gflop_per_frame"),
                        "vs_first": None if not ref_p50 else round(p50 / ref_p50, 3)})
    return out


def bench_set(reports: Sequence[dict[str, Any]], version: str, command: str | None) -> dict[str, Any]:
    return {"schema": SET_SCHEMA, "schema_version": SET_SCHEMA_VERSION, "stpm_edge": version, "command": command,
            "reports": list(reports), "comparison": comparison(reports)}


def comparison_cells(c: dict[str, Any]) -> list[str]:
    k = c["key"]
    return [c["model"], c["arch"] or "?", c["label"], k["device"], str(k["batch"]), str(k["streams"]),
            _f(c["p50_ms"], ".1f"), _f(c["ms_per_frame"], ".2f"), _f(c["throughput_fps"], ".1f"),
            _f(c["gflop_per_frame"], ".2f"), _ratio(c["vs_first"])]


def comparison_markdown(entries: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(x.replace("|", "\\|") for x in comparison_cells(c)) + " |" for c in entries]
    lines.append("")
    lines.append("- × first model's p50: this row's p50 latency over the first model's row with the same backend, "
                 "precision, form, device, batch and streams, measured in the same run (> 1: slower).")
    return "\n".join(lines) + "\n"


def comparison_table(entries: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="stpm-bench: the models side by side", title_justify="left",
                  caption="× first model's p50: p50 over the first model's row of the same backend, precision, "
                          "form, device, batch and streams, in this run (> 1: slower)", caption_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("model", "method", "row", "dev") else "right")
    for c in entries:
        table.add_row(*comparison_cells(c))
    return table
