"""``stpm data sample OUT``: a sample dataset cut from real photographs with painted defects."""
from __future__ import annotations

from pathlib import Path

import typer

from stpm_edge.cli.common import console, print_json, setup_logging, user_errors
from stpm_edge.data.sample import CATEGORIES, DEFAULT_IMAGE_SIZE, make_sample_dataset

data_app = typer.Typer(help="Datasets: make sample data.", no_args_is_help=True)


@data_app.command("sample")
@user_errors("stpm data sample")
def sample_cmd(
    out: Path = typer.Argument(..., help="Output folder (MVTec AD layout); must not exist or be empty."),
    category: str = typer.Option("brick", help=f"Source photograph: {', '.join(CATEGORIES)}."),
    seed: int = typer.Option(0, help="Seed for crops and defects."),
    image_size: int = typer.Option(DEFAULT_IMAGE_SIZE, help="Side of the square crops in pixels (at most half the photograph's width)."),
    n_train: int = typer.Option(60, help="Good training images."),
    n_test_good: int = typer.Option(20, help="Good test images."),
    n_defect_per_kind: int = typer.Option(6, help="Defective test images per defect kind."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing non-empty OUT."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Cut a scikit-image photograph into train/test crops and paint defects with exact masks."""
    setup_logging()
    s = make_sample_dataset(out, category, seed, image_size=image_size, n_train=n_train, n_test_good=n_test_good,
                            n_defect_per_kind=n_defect_per_kind, overwrite=overwrite)
    info = {"root": str(s.root), "category": s.category, "image_size": s.image_size, "train": s.n_train,
            "test_good": s.n_test_good, "test_defect": s.n_test_defect}
    if json_out:
        print_json(info)
    else:
        console.print(f"wrote {s.root}: {s.n_train} train, {s.n_test_good} good test, "
                      f"{sum(s.n_test_defect.values())} defective test ({', '.join(s.n_test_defect)})")
