"""Reproduce the stpm-bench section of BENCHMARKS.md from nothing: sample data → short training →
export of every variant → ``stpm-bench`` → ``stpm-eval --variants`` → markdown tables with the
machine description, written to ``OUT/BENCHMARKS-stpm-bench.md`` (to paste into BENCHMARKS.md).

    pip install -e '.[dev]'                     # once, on a fresh machine (offline after that)
    python benchmarks/reproduce.py               # full run, ~9 min on a 2-core CPU (4 of them training)
    python benchmarks/reproduce.py --quick       # smoke run of the whole chain, ~1.5 min; not for BENCHMARKS.md
    python benchmarks/reproduce.py --device cpu,cuda   # on a GPU machine: CPU rows and CUDA rows

Models, both at 256×256, exported with a dynamic batch (so ``--batch 1,4`` runs each batch in
one call), FP32 + FP16 + INT8 in both forms (``model.int8.onnx`` for TensorRT,
``model.int8.cpu.onnx`` for ONNX Runtime x86), calibrated on the sample data's good images:

* ``efficientnet_lite0``: trained by ``stpm-train`` with its defaults and a 4-minute time
  budget (ImageNet teacher, offline). Speed and accuracy.
* ``resnet18``: random-init teacher and student (ImageNet ResNet weights need internet),
  made by ``benchmarks/bench_export.py``'s ``make_checkpoint``. **Timing only**: its
  accuracy is meaningless and is not reported.

Every step is the real CLI in a subprocess (what a user types), printed as it runs and
recorded in the markdown with its wall time. Where TensorRT and a GPU are present, engines
are built beside the ONNX files (``stpm_edge.tensorrt.builder.maybe_build_engine``) so that
``stpm-bench`` times them; elsewhere the table lists TensorRT as not run, with the reason.
Run it on a quiet machine: ``stpm-bench`` records the load average before and after and
warns when the machine was busy.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stpm_edge.bench.report import machine_line, markdown  # noqa: E402

MODELS = ("efficientnet_lite0", "resnet18")
SIZE = 256


def exe(name: str) -> str:
    """The console script ``name`` of this Python's environment (else the one on PATH)."""
    here = Path(sys.executable).with_name(name)
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"reproduce.py: {name} not found; install the package first: pip install -e '.[dev]'")
    return found


class Steps:
    """Runs commands, echoing them to stderr, and records (command, seconds) for the report."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.log: list[tuple[str, float]] = []

    def show(self, args: list[str]) -> str:
        text = " ".join(shlex.quote(str(a)) for a in args)
        return text.replace(str(self.out.resolve()) + "/", "").replace(str(self.out) + "/", "")

    def run(self, args: list[str], stdout: Path | None = None) -> None:
        text = self.show([Path(args[0]).name, *args[1:]])
        print(f"\n$ {text}" + (f" > {stdout.name}" if stdout else ""), file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if stdout is None:
            subprocess.run(args, check=True)
        else:
            with open(stdout, "w") as f:
                subprocess.run(args, check=True, stdout=f)
        self.log.append((text + (f" > {stdout.name}" if stdout else ""), time.perf_counter() - t0))

    def note(self, text: str, seconds: float) -> None:
        print(f"\n# {text}", file=sys.stderr, flush=True)
        self.log.append((f"# {text}", seconds))


def make_data(steps: Steps, data: Path, category: str, quick: bool) -> None:
    if data.is_dir() and any(data.iterdir()):
        print(f"# reusing {data}", file=sys.stderr)
        return
    size = ["--n-train", "24", "--n-test-good", "6", "--n-defect-per-kind", "2"] if quick else []
    steps.run([exe("stpm"), "data", "sample", str(data), "--category", category, "--seed", "0", *size])


def make_checkpoints(steps: Steps, out: Path, data: Path, quick: bool) -> dict[str, Path]:
    ckpts = {}
    lite = out / "efficientnet_lite0" / "model.pt"
    lite.parent.mkdir(parents=True, exist_ok=True)
    if not lite.is_file():
        budget = ["--epochs", "1"] if quick else ["--time-budget", "4"]
        steps.run([exe("stpm-train"), str(data), "-o", str(lite), "--backbone", "efficientnet_lite0",
                   "--image-size", str(SIZE), *budget])
    ckpts["efficientnet_lite0"] = lite
    r18 = out / "resnet18" / "model.pt"
    r18.parent.mkdir(parents=True, exist_ok=True)
    if not r18.is_file():
        from bench_export import make_checkpoint  # noqa: PLC0415

        t0 = time.perf_counter()
        make_checkpoint("resnet18", SIZE, r18)
        steps.note(f"resnet18/model.pt: random-init teacher and student at {SIZE}×{SIZE} "
                   f"(benchmarks/bench_export.py make_checkpoint; timing only)", time.perf_counter() - t0)
    ckpts["resnet18"] = r18
    return ckpts


def export(steps: Steps, ckpt: Path, data: Path, quick: bool) -> Path:
    onnx = ckpt.with_name("model.onnx")
    count = ["--calib-count", "16"] if quick else []
    steps.run([exe("stpm-export"), str(ckpt), "-o", str(ckpt.parent), "--dynamic-batch", "--fp16", "--int8",
               "--calib", str(data), *count])
    return onnx


def build_engines(steps: Steps, onnx: Path, max_batch: int) -> None:
    """TensorRT engines beside ``onnx`` where TensorRT and a GPU exist (else nothing: the bench says why)."""
    try:
        from stpm_edge.tensorrt.builder import BuildOptions, maybe_build_engine  # noqa: PLC0415
    except Exception as e:  # noqa: BLE001
        print(f"# TensorRT engines not built: {e}", file=sys.stderr)
        return
    for precision in ("fp32", "fp16", "int8"):
        t0 = time.perf_counter()
        try:
            res = maybe_build_engine(onnx, precision, BuildOptions(max_batch=max_batch))
        except Exception as e:  # noqa: BLE001 - the bench lists the missing engine with the reason
            steps.note(f"{onnx.parent.name}: TensorRT {precision} engine build failed: {e}", time.perf_counter() - t0)
            continue
        if not getattr(res, "built", False):
            print(f"# TensorRT engines not built: {res}", file=sys.stderr)
            return
        steps.note(f"{onnx.parent.name}: built {Path(res.engine_path).name} with TensorRT", time.perf_counter() - t0)


def eval_table(ev: dict[str, Any]) -> str:
    lines = ["| file | precision | image AUROC | pixel AUROC | PRO | max abs Δ map | max abs Δ score |",
             "|---|---|---|---|---|---|---|"]
    f = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    for m in ev["models"]:
        name = Path(m["model"]).name
        prec = m["precision"] + (" (TensorRT Q/DQ form)" if name.endswith(".int8.onnx") else
                                 " (CPU form)" if name.endswith(".int8.cpu.onnx") else "")
        lines.append(f"| {name} | {prec} | {f(m['image_auroc'])} | {f(m['pixel_auroc'])} | {f(m['pro'])} | "
                     f"{m['max_abs_map_diff']:.4f} | {m['max_abs_score_diff']:.4f} |")
    return "\n".join(lines) + "\n"


def write_report(path: Path, out: Path, reports: dict[str, dict], ev: dict | None, steps: Steps, quick: bool,
                 category: str) -> None:
    first = next(iter(reports.values()))
    s = first["settings"]
    lines = ["## Backends × precisions side by side: stpm-bench (issue 8)", ""]
    if quick:
        lines += ["> **Quick smoke run (`--quick`): one training epoch, few iterations. Not for BENCHMARKS.md.**", ""]
    lines += [f"Command: `python benchmarks/reproduce.py{' --quick' if quick else ''}` "
              f"(sample data `{category}` → training → export of every variant → stpm-bench → stpm-eval). "
              f"Total {sum(t for _, t in steps.log) / 60:.1f} min.", "",
              f"Machine: {machine_line(first)}.", "",
              f"Each row: {s['warmup']} warm-up calls, then {s['iters']} timed calls of random uint8 frames at "
              f"256×256 (batch {', '.join(map(str, s['batches']))}; dynamic-batch exports run each batch in one call), "
              f"each backend in a fresh process (`--isolate`), {s['threads']} CPU threads for PyTorch and ONNX "
              f"Runtime alike. p50/p90/p99 are per call "
              f"(ms for the whole batch); frames/s is over the timed loop. GFLOP/frame counts Conv/MatMul/Gemm "
              f"in model.onnx (2 FLOP per multiply-add; element-wise ops, pooling, Resize, reductions not "
              f"counted).", ""]
    for name, rep in reports.items():
        title = f"### {name} at 256×256" + (" (random-init weights: timing only)" if name == "resnet18" else
                                             " (trained on the sample data)")
        lines += [markdown(rep, heading=title), f"Command: `{rep['command']}`", ""]
    if ev is not None:
        lines += ["### Accuracy of the variants: efficientnet_lite0 on the sample data's test split", "",
                  eval_table(ev), f"Command: `stpm-eval efficientnet_lite0/model.onnx data/{category} --variants "
                  f"--json`. Δ: largest absolute deviation from model.onnx (FP32) in normalised units "
                  f"(0.5 = threshold). resnet18 has random weights: its accuracy is not measured.", ""]
    lines += ["<details><summary>Every step and its wall time</summary>", "", "```"]
    lines += [f"{cmd}    # {t:.1f} s" for cmd, t in steps.log]
    lines += ["```", "", "</details>", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out"), help="work folder (reused: existing data and "
                    "checkpoints are kept, so a re-run only re-exports and re-benchmarks)")
    ap.add_argument("--quick", action="store_true", help="smoke run: small data, one epoch, few iterations")
    ap.add_argument("--category", default="brick", help="sample photograph (stpm data sample --category)")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--iters", type=int)
    ap.add_argument("--threads", type=int, help="CPU threads (default: all usable CPUs)")
    ap.add_argument("--device", default="auto", help="stpm-bench --device: auto (cuda when PyTorch sees a GPU, else "
                    "cpu), cpu, cuda or cpu,cuda")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 10)
    iters = args.iters if args.iters is not None else (5 if args.quick else 100)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(out)
    data = out / "data" / args.category
    make_data(steps, data, args.category, args.quick)
    ckpts = make_checkpoints(steps, out, data, args.quick)
    reports: dict[str, dict] = {}
    max_batch = max(int(b) for b in args.batch.split(","))
    for name in args.models:
        onnx = export(steps, ckpts[name], data, args.quick)
        build_engines(steps, onnx, max_batch)
        bench_json = out / f"bench-{name}.json"
        cmd = [exe("stpm-bench"), str(onnx), "--batch", args.batch, "--device", args.device, "--warmup", str(warmup),
               "--iters", str(iters), "--isolate", "--json"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        steps.run(cmd, stdout=bench_json)
        reports[name] = json.loads(bench_json.read_text())
        reports[name]["command"] = steps.show(["stpm-bench", *cmd[1:]])
    ev = None
    if "efficientnet_lite0" in args.models:
        eval_json = out / "eval-efficientnet_lite0.json"
        steps.run([exe("stpm-eval"), str(ckpts["efficientnet_lite0"].with_name("model.onnx")), str(data),
                   "--variants", "--device", "cpu", "--json"], stdout=eval_json)
        ev = json.loads(eval_json.read_text())
    report = out / "BENCHMARKS-stpm-bench.md"
    write_report(report, out, reports, ev, steps, args.quick, args.category)
    print(f"\nwrote {report} (paste into BENCHMARKS.md) and the JSON files beside it", file=sys.stderr)


if __name__ == "__main__":
    main()
