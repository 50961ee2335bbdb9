"""Which INT8 options keep accuracy: one exported model, several calibrations, one table.

    python benchmarks/bench_int8_options.py EXPORT_DIR DATA minmax: percentile: minmax:first,last
    python benchmarks/bench_int8_options.py EXPORT_DIR DATA minmax: --forms tensorrt,cpu

``EXPORT_DIR`` holds ``model.onnx`` + ``model.json`` (``stpm-export``); ``DATA`` is an MVTec
category (``train/good`` calibrates, the test split evaluates). Each argument is
``METHOD:KEEP_FLOAT`` (``minmax``, ``entropy``, ``percentile``; keep-float ``first``, ``last``,
``first,last`` or empty). Every configuration is written to a scratch copy of the model
(``EXPORT_DIR`` is not touched) and evaluated against FP32 with ``compare_models``.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from stpm_edge.calibration.quantize import QuantizeOptions
from stpm_edge.calibration.reader import CalibrationFrames
from stpm_edge.data.mvtec import load_dataset
from stpm_edge.eval.compare import compare_models
from stpm_edge.export.variants import write_int8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("configs", nargs="+", help="METHOD:KEEP_FLOAT, e.g. minmax: or percentile:first,last")
    ap.add_argument("--forms", default="tensorrt", help="INT8 forms: tensorrt and/or cpu")
    ap.add_argument("--count", type=int, default=128)
    args = ap.parse_args()
    dataset = load_dataset(args.data)
    forms = tuple(f for f in args.forms.split(",") if f)
    print("| calibration | keep-float | form | s | image AUROC | pixel AUROC | PRO | max abs Δ map |")
    print("|---|---|---|---|---|---|---|---|")
    for config in args.configs:
        method, _, keep = config.partition(":")
        with tempfile.TemporaryDirectory(prefix="int8-options-") as tmp:
            work = Path(tmp)
            for name in ("model.onnx", "model.json"):
                shutil.copy(args.export_dir / name, work / name)
            frames = CalibrationFrames.for_model(work / "model.onnx", args.data, count=args.count, seed=0)
            t0 = time.perf_counter()
            res = write_int8(work / "model.onnx", frames, QuantizeOptions(method, tuple(k for k in keep.split(",") if k)),
                             forms=forms)
            seconds = time.perf_counter() - t0
            rows = compare_models([work / "model.onnx"] + [f.onnx_path for f in res.files.values()], dataset)
            if config == args.configs[0]:
                r = rows[0]
                print(f"| FP32 | – | – | – | {r.image_auroc:.4f} | {r.pixel_auroc:.4f} | {r.pro:.4f} | – |")
            for form, r in zip(res.files, rows[1:]):
                print(f"| {method} | {keep or '–'} | {form} | {seconds:.1f} | {r.image_auroc:.4f} | {r.pixel_auroc:.4f} "
                      f"| {r.pro:.4f} | {r.max_abs_map_diff:.2f} |", flush=True)


if __name__ == "__main__":
    main()
