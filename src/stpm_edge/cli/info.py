"""``stpm info MODEL``: print a model's metadata."""
from __future__ import annotations

from pathlib import Path

import typer

from stpm_edge.cli.common import console, print_json, user_errors
from stpm_edge.errors import StpmError
from stpm_edge.artifact import file_sha256, read_onnx_metadata
from stpm_edge.models.checkpoint import meta_from_dict, read_checkpoint_dict


@user_errors("stpm info")
def info_cmd(
    model: Path = typer.Argument(..., help="A checkpoint (model.pt), an exported model (model.onnx) or a "
                                 "TensorRT engine (model.fp16.engine, described by its .engine.json sidecar)."),
    json_out: bool = typer.Option(False, "--json"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling (trusted files only)."),
) -> None:
    """Show architecture, input, thresholds and provenance of a checkpoint (.pt), exported model (.onnx)
    or TensorRT engine (.engine: also the TensorRT version, GPU and build options it was made with)."""
    if model.suffix.lower() == ".engine":
        from stpm_edge.tensorrt.engine_meta import read_sidecar

        if not model.is_file():
            raise StpmError(f"{model}: no such engine file")
        info = read_sidecar(model)
    elif model.suffix.lower() == ".onnx":
        info = read_onnx_metadata(model).to_dict()
    else:
        meta = meta_from_dict(read_checkpoint_dict(model, allow_pickle=trust_checkpoint), str(model))
        info = {**meta.header(), "method": meta.method.describe(meta.config)}
    info.update({"file": str(model), "sha256": file_sha256(model)})
    if model.suffix.lower() == ".engine":
        info["matches_sidecar"] = info["sha256"] == info["engine"].get("sha256")
    if json_out:
        print_json(info)
        return
    from rich.text import Text  # noqa: PLC0415

    for key, value in info.items():  # values come from the file: printed literally, never as markup
        console.print(Text.assemble((str(key), "bold"), ": ", str(value)), highlight=False, soft_wrap=True)
