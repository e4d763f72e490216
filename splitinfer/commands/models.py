"""`splitinfer models`: the models usable by name."""

from __future__ import annotations

import typer

from splitinfer.console import console

commands = typer.Typer()


@commands.command()
def models() -> None:
    """List the models usable by name: those defined here and those shipped in installed packages."""
    from splitter.models import list_models, model_info
    from splitter.packaged import PACKAGED_MODELS

    for name in list_models():
        console.print(f"{name:20s} {model_info(name).description}", highlight=False)
    for name, packaged in PACKAGED_MODELS.items():
        console.print(f"{name:20s} {packaged.description} (ONNX from the {packaged.package} package)", highlight=False)
