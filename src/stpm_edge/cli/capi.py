"""``stpm capi build --out DIR``: the C library, its header and pkg-config file."""
from __future__ import annotations

from pathlib import Path

import typer

from stpm_edge.cli.common import console, print_json, setup_logging, user_errors

capi_app = typer.Typer(help="The C ABI: build libstpm_edge.so for C/C++ programs.", no_args_is_help=True)


@capi_app.command("build")
@user_errors("stpm capi build")
def build_cmd(
    out: Path = typer.Option(Path("build/capi"), "--out", "-o", help="Install prefix: writes include/stpm_edge.h, "
                             "lib/libstpm_edge.so and lib/pkgconfig/stpm_edge.pc."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the compiler's output."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Compile libstpm_edge.so around this environment's stpm-edge runtime (cffi embedding; needs a C compiler
    and this Python's headers and shared libpython).

    The library embeds the Python it was built with and finds this environment's packages by itself: a C
    program links it with `pkg-config --cflags --libs stpm_edge` and needs no environment variables.
    Rebuild after recreating or moving the environment.
    """
    setup_logging(verbose)
    from stpm_edge.capi.build import build_library  # noqa: PLC0415

    with console.status("compiling libstpm_edge.so ..."):
        files = build_library(out, verbose=verbose)
    if json_out:
        print_json({kind: str(path) for kind, path in files.items()})
        return
    prefix = out.resolve()
    console.print(f"wrote {files['library']}\n      {files['header']}\n      {files['pkgconfig']}")
    console.print(f"compile C programs with: PKG_CONFIG_PATH={prefix}/lib/pkgconfig "
                  "cc app.c $(pkg-config --cflags --libs stpm_edge)", soft_wrap=True)
