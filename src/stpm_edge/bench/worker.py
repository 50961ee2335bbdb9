"""``python -m stpm_edge.bench.worker``: time one group of rows in a fresh process (``stpm-bench
--isolate``), so that its peak RSS holds only this backend (plus the interpreter and the libraries
it imports) and nothing left behind by earlier rows. Reads the rows and settings as JSON on stdin,
writes the measured rows as JSON on stdout; progress and logs go to stderr."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stpm_edge.bench.plan import Combo, Skip
from stpm_edge.bench.stats import LatencySummary


def combo_to_dict(c: Combo) -> dict[str, Any]:
    return {**asdict(c), "path": str(c.path)}


def combo_from_dict(d: dict[str, Any]) -> Combo:
    path = d["path"] if d.get("backend") == "triton" else Path(d["path"])  # a triton:// URI stays text
    return Combo(**{**d, "path": path})


def row_to_dict(row: Any) -> dict[str, Any]:
    return {"combo": combo_to_dict(row.combo), "summary": asdict(row.summary), "warmup": row.warmup,
            "describe": row.describe, "load_s": row.load_s, "peak_rss_mib": row.peak_rss_mib,
            "added_rss_mib": row.added_rss_mib, "memory_format": row.memory_format,
            "load_peak_rss_mib": row.load_peak_rss_mib}


def row_from_dict(d: dict[str, Any]) -> Any:
    from stpm_edge.bench.runner import Row  # noqa: PLC0415

    return Row(combo_from_dict(d["combo"]), LatencySummary(**d["summary"]), d["warmup"], d["describe"], d["load_s"],
               d["peak_rss_mib"], d["added_rss_mib"], d["memory_format"], d["load_peak_rss_mib"])


def run_isolated(combos: list[Combo], warmup: int, iters: int, threads: int) -> tuple[list[Any], list[Skip]]:
    """Run :func:`stpm_edge.bench.runner.run_group` for ``combos`` in a child process."""
    payload = json.dumps({"combos": [combo_to_dict(c) for c in combos], "warmup": warmup, "iters": iters,
                          "threads": threads})
    proc = subprocess.run([sys.executable, "-m", "stpm_edge.bench.worker"], input=payload, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        c = combos[0]
        return [], [Skip(c.backend, f"isolated worker failed: {why}", c.precision, c.device, c.form)]
    out = json.loads(proc.stdout)
    return [row_from_dict(r) for r in out["rows"]], [Skip(**s) for s in out["skips"]]


def main() -> None:
    from stpm_edge.bench.runner import BenchConfig, run_group  # noqa: PLC0415

    req = json.loads(sys.stdin.read())
    combos = [combo_from_dict(d) for d in req["combos"]]
    cfg = BenchConfig(model=combos[0].path, warmup=req["warmup"], iters=req["iters"], threads=req["threads"])
    rows, skips = run_group(combos, cfg, req["threads"], lambda text, done, total: None, 0, len(combos))
    json.dump({"rows": [row_to_dict(r) for r in rows],
               "skips": [{"backend": s.backend, "reason": s.reason, "precision": s.precision, "device": s.device,
                          "form": s.form} for s in skips]}, sys.stdout)


if __name__ == "__main__":
    main()
