"""``stpm import anomalib MODEL -o model.pt``: deploy a model trained with anomalib."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stpm_edge.cli.common import console, print_json, setup_logging, user_errors

import_app = typer.Typer(help="Import models trained with other tools.", no_args_is_help=True)


@import_app.command("anomalib")
@user_errors("stpm import anomalib")
def anomalib_cmd(
    model: Path = typer.Argument(..., help="anomalib 2.x Lightning checkpoint (.ckpt from Engine.fit) of an STFPM "
                                           "or CFA model; its exported Torch model.pt only with --trust-checkpoint."),
    output: Path = typer.Option(Path("model.pt"), "-o", "--output", help="stpm-edge checkpoint to write (atomically)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Good images (folder or MVTec category): measure "
                                        "stpm-edge's own thresholds on them instead of carrying anomalib's over."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling (needed for "
                                          "anomalib's model.pt, with anomalib installed; trusted files only)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Map an anomalib STFPM (teacher and student) or CFA (trunk, descriptor, memory bank) model's
    weights, input size, normalisation and thresholds onto an stpm-edge checkpoint; anomalib itself
    is not needed (loads with weights_only)."""
    setup_logging(verbose)
    from stpm_edge.interop.anomalib import import_anomalib

    res = import_anomalib(model, output, data=data, trust=trust_checkpoint)
    if json_out:
        print_json(res.to_dict())
        return
    t = res.thresholds
    console.print(f"wrote {res.output}: anomalib {res.anomalib_model} → {res.method} {res.backbone} "
                  f"{','.join(res.layers)} at {res.image_size[1]}x{res.image_size[0]}; thresholds "
                  f"({res.normalization_source}): image {t.image_threshold:.4g}, pixel {t.pixel_threshold:.4g}",
                  highlight=False)
