"""Acceptance benchmark of the foundation: sample data → `stpm-train` (defaults) → `stpm-eval`.

For each category it runs the real CLI commands in subprocesses, times training end to end,
and measures batch-1 inference latency of the trained model in PyTorch eager.

    python benchmarks/bench_train.py --categories brick grass gravel --out bench-out
prints a Markdown table (for BENCHMARKS.md) and writes bench-out/results.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def _exe(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _latency_ms(model_path: Path, runs: int = 30) -> tuple[float, float]:
    from stpm_edge.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(model_path)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, *meta.config.image_size).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.no_grad():
        for i in range(runs + 5):
            t0 = time.perf_counter()
            model.predict(x)
            if i >= 5:
                times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return times[len(times) // 2], times[int(0.9 * (len(times) - 1))]


def run(category: str, out: Path, seed: int, extra: list[str]) -> dict:
    data = out / category
    if not data.exists():
        subprocess.run([_exe("stpm"), "data", "sample", str(data), "--category", category, "--seed", str(seed)],
                       check=True)
    model = out / f"{category}.pt"
    t0 = time.perf_counter()
    train = subprocess.run([_exe("stpm-train"), str(data), "-o", str(model), "--json", *extra],
                           check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    summary = json.loads(train.stdout)
    ev = subprocess.run([_exe("stpm-eval"), str(model), str(data), "--json"], check=True, capture_output=True, text=True)
    report = json.loads(ev.stdout)
    p50, p90 = _latency_ms(model)
    return {"category": category, "train_wall_s": round(wall, 1), "epochs": summary["epochs_run"],
            "best_epoch": summary["best_epoch"], "stop": summary["stop_reason"],
            "image_auroc": report["image_auroc"], "pixel_auroc": report["pixel_auroc"], "pro": report["pro"],
            "f1": report["f1"]["f1"] if report["f1"] else None, "eval_ms_per_image_b16": report["ms_per_image"],
            "latency_b1_p50_ms": p50, "latency_b1_p90_ms": p90, "per_type": report["per_type"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--categories", nargs="+", default=["brick", "grass", "gravel"])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="extra stpm-train options after --")
    args = ap.parse_args()
    extra = [a for a in args.train_args if a != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    env = {"python": platform.python_version(), "torch": str(torch.__version__), "cpu_threads": torch.get_num_threads(),
           "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
           "date": time.strftime("%Y-%m-%d"), "train_args": extra}
    rows = []
    for c in args.categories:
        rows.append(run(c, args.out, args.seed, extra))
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps({"env": env, "results": rows}, indent=2))
    print(f"\n{env}\n")
    print("| category | train wall (s) | epochs (best) | image AUROC | pixel AUROC | PRO | F1@thr | ms/img b1 p50 (p90) | ms/img b16 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['category']} | {r['train_wall_s']} | {r['epochs']} ({r['best_epoch']}) | {r['image_auroc']:.3f} | "
              f"{r['pixel_auroc']:.3f} | {r['pro']:.3f} | {r['f1']:.3f} | {r['latency_b1_p50_ms']:.1f} "
              f"({r['latency_b1_p90_ms']:.1f}) | {r['eval_ms_per_image_b16']:.1f} |")


if __name__ == "__main__":
    main()
