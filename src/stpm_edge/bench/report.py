"""A benchmark report (the dict :func:`stpm_edge.bench.runner.run_bench` returns) as a rich table
for people and as markdown for BENCHMARKS.md. Pure formatting: no measuring here."""
from __future__ import annotations

from typing import Any

from rich.table import Table

COLUMNS = ("row", "dev", "batch", "p50 ms", "p90 ms", "p99 ms", "frames/s", "× torch", "GFLOP/s", "% peak",
           "outside trunks", "trunk GFLOP/s", "trunk % peak", "RSS MiB", "+MiB")


def _f(v: Any, fmt: str = ".1f", none: str = "–") -> str:
    return none if v is None else format(v, fmt)


def _ratio(v: Any) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _share(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def row_cells(r: dict[str, Any], note_mark: str = "") -> list[str]:
    lat = r["latency_ms"]
    return [r["label"] + note_mark, r["device"], str(r["batch"]), _f(lat["p50"]), _f(lat["p90"]), _f(lat["p99"]),
            _f(r["throughput_fps"]), _ratio(r["speedup_vs_torch"]), _f(r["achieved_gflops"], ".0f"),
            _share(r["peak_share"]), _share(r.get("outside_share")), _f(r.get("trunk_gflops"), ".0f"),
            _share(r.get("trunk_peak_share")), _f(r["peak_rss_mib"], ".0f"), _f(r["added_rss_mib"], "+.0f")]


def _notes(report: dict[str, Any]) -> tuple[dict[int, str], list[str]]:
    """Footnote marks per result index and the footnote lines (one per distinct note)."""
    marks: dict[int, str] = {}
    lines: list[str] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(report["results"]):
        extra = [r["note"]] if r.get("note") else []
        if r["backend"] == "torch" and r.get("memory_format"):
            extra.append(r["memory_format"])
        text = "; ".join(extra)
        if not text:
            continue
        if text not in seen:
            seen[text] = len(seen) + 1
            lines.append(f"[{seen[text]}] {text}")
        marks[i] = f" [{seen[text]}]"
    return marks, lines


def model_line(report: dict[str, Any]) -> str:
    m = report["model"]
    inp = m.get("input") or {}
    shape = f"{inp.get('dtype')} {inp.get('layout')} {inp.get('height')}×{inp.get('width')}" if inp else "?"
    flops = m.get("flops") or {}
    g = flops.get("gflop_per_frame")
    batch = "dynamic batch" if m.get("model_batch") is None else f"fixed batch {m['model_batch']}"
    return (f"{m.get('backbone') or m.get('arch')} ({m.get('fusion')} fusion), input {shape}, {batch}; "
            f"{_f(g, '.3f')} GFLOP/frame (Conv/MatMul/Gemm counted in model.onnx)")


def peaks_line(report: dict[str, Any]) -> str:
    parts = [f"{p['device']} {p['precision']} {p['gflops']:.0f} G{'OP' if p['precision'] == 'int8' else 'FLOP'}/s "
             f"({p['method']})" for p in report["peaks"]]
    return "matrix-multiply peak, measured in this run: " + ("; ".join(parts) if parts else "not measured")


def machine_line(report: dict[str, Any]) -> str:
    m = report["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items())
    gpus = "; ".join(f"{g['name']} (cc {g['compute_capability']}, CUDA {g['cuda']})" for g in m.get("gpus", [])) \
        or "no GPU"
    feats = ", ".join(m.get("cpu_features") or []) or "?"
    return (f"{m.get('cpu')} ({feats}), {m.get('usable_cpus')} usable of {m.get('logical_cpus')} logical CPUs, "
            f"{report['settings']['threads']} threads, {m.get('memory_gib')} GiB RAM, {gpus}; {m.get('os')}; "
            f"Python {m.get('python')}; {libs}; {m.get('date')}; load average before/after "
            f"{m.get('load_average')} / {m.get('load_average_end')}")


def rss_note(report: dict[str, Any]) -> str:
    if report["settings"].get("isolate"):
        return ("RSS: peak resident memory of a fresh process running only that backend (Python and the libraries "
                "it imports included: PyTorch for the torch rows, not for the others); +MiB: over its RSS before "
                "the backend was opened")
    return ("RSS: process peak during the row, all rows in one process (Python, PyTorch and ONNX Runtime "
            "included); +MiB: over the RSS before the row's backend was opened (understated when memory freed by "
            "earlier rows is reused; use --isolate for per-backend figures)")


def rich_tables(report: dict[str, Any]) -> list[Any]:
    """Renderables: the results table, then the rows that were not run (if any)."""
    s = report["settings"]
    table = Table(title=f"stpm-bench {report['model']['path']}", title_justify="left",
                  caption=f"{s['iters']} timed calls after {s['warmup']} warm-up per row; × torch: PyTorch eager FP32 "
                          f"p50 / row p50 (same device and batch); % peak: GFLOP/s over the measured matmul peak; "
                          f"{rss_note(report)}",
                  caption_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("row", "dev") else "right", no_wrap=col == "row")
    marks, notes = _notes(report)
    for i, r in enumerate(report["results"]):
        table.add_row(*row_cells(r, marks.get(i, "")))
    out: list[Any] = [table]
    if notes:
        out.append("\n".join(notes))
    if report["skipped"]:
        skipped = Table(title="not run", title_justify="left")
        for col in ("backend", "precision", "device", "reason"):
            skipped.add_column(col, overflow="fold")
        for k in report["skipped"]:
            prec = (k["precision"] or "all") + (f" ({k['form']} form)" if k.get("form") else "")
            skipped.add_row(k["backend"], prec, k["device"] or "", k["reason"])
        out.append(skipped)
    return out


def markdown(report: dict[str, Any], *, heading: str | None = None) -> str:
    """The results as a markdown section: model line, table, notes, rows not run."""
    lines = []
    if heading:
        lines += [heading, ""]
    lines += [f"Model: {model_line(report)}.", "",
              "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    marks, notes = _notes(report)
    for i, r in enumerate(report["results"]):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row_cells(r, marks.get(i, ""))) + " |")
    lines.append("")
    lines += [f"- {n}" for n in notes]
    if report["skipped"]:
        lines.append("- Not run:")
        for k in report["skipped"]:
            what = " ".join(x for x in (k["backend"], k["precision"] or "", f"({k['form']} form)" if k.get("form")
                                        else "", k["device"] or "") if x)
            lines.append(f"  - {what}: {k['reason']}")
    lines.append("- × torch: PyTorch eager FP32 p50 / row p50 (same device and batch). GFLOP/s: GFLOP/frame × "
                 "frames/s; % peak: of the matrix-multiply peak of the row's device and precision (INT8: GOP/s). "
                 "outside trunks: share of the ONNX Runtime-profiled frame outside the low-precision regions "
                 "(preprocessing, head, normalisation, gaps); trunk GFLOP/s: the regions' FLOP over their "
                 "kernel time, and its share of the same peak (ONNX Runtime CPU rows only). "
                 f"{rss_note(report)}.")
    lines.append(f"- {peaks_line(report)}.")
    for w in report.get("warnings", []):
        lines.append(f"- **Warning:** {w}.")
    return "\n".join(lines) + "\n"
