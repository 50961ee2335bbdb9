"""One trained checkpoint, several head-only variants of its method's config: accuracy of each
on the test split (PyTorch), in one table. For ablations that need no retraining: which maps a
method fuses and how (RSTPM ``combine=a|b|product``, ``exponent_b``; DMDD ``fuse=seg|product|
seg_product``; STPM/DMDD ``score``), the blur.

    python benchmarks/bench_variants.py rstpm_brick.pt data/brick --set combine=a --set combine=b
    python benchmarks/bench_variants.py dmdd_grass.pt data/grass --set fuse=product --set fuse=seg_product

The first row is the checkpoint as trained. Each ``--set`` is one variant: comma-separated
``key=value`` pairs over the stored config (values parsed as JSON where they parse, else
strings), validated by the method's own config reader. Weights never change between rows.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from stpm_edge.data.mvtec import load_dataset
from stpm_edge.data.preprocess import preprocess_images
from stpm_edge.errors import StpmError
from stpm_edge.eval.evaluate import load_test, predict, score_test
from stpm_edge.models.checkpoint import load_checkpoint


def _parse(spec: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"--set {spec}: expected key=value[,key=value]")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


@torch.no_grad()
def run(ckpt: Path, data: Path, variants: list[str], batch: int = 16) -> list[dict[str, object]]:
    model, meta = load_checkpoint(ckpt)
    model.eval()
    method = meta.method
    base = model.config
    test = load_test(load_dataset(data).test)
    x = preprocess_images(test.images, meta.preprocess)
    rows = []
    for spec in ["", *variants]:
        changes = _parse(spec)
        cfg = method.config_from_dict({**method.config_to_dict(base), **changes}, f"--set {spec}")
        model.config = cfg
        maps, scores, _ = predict(model, x, batch_size=batch, method=method)
        r = score_test(test, maps, scores)
        rows.append({"variant": spec or "as trained", "image_auroc": round(r.image_auroc, 4),
                     "pixel_auroc": round(r.pixel_auroc, 4), "pro": round(r.pro, 4),
                     "per_type": {k: round(v, 3) for k, v in r.per_type.items()}})
        print(f"{rows[-1]['variant']:<28} image {r.image_auroc:.4f} pixel {r.pixel_auroc:.4f} pro {r.pro:.4f} "
              + " ".join(f"{k} {v:.3f}" for k, v in r.per_type.items()), file=sys.stderr, flush=True)
    model.config = base
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--set", dest="variants", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    a = ap.parse_args()
    try:
        rows = run(a.checkpoint, a.data, a.variants)
    except StpmError as e:
        raise SystemExit(f"bench_variants: {e}") from None
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    kinds = sorted({k for r in rows for k in r["per_type"]})
    print(f"| variant | image AUROC | pixel AUROC | PRO | {' / '.join(kinds)} |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['pro']:.4f} | "
              + " / ".join(f"{r['per_type'].get(k, float('nan')):.3f}" for k in kinds) + " |")


if __name__ == "__main__":
    main()
