"""`splitinfer models`: the models usable by name (splitter.catalogue)."""

from __future__ import annotations

import typer
from rich.table import Table

from splitinfer.console import console

commands = typer.Typer()


@commands.command()
def models() -> None:
    """List the models usable by name: those defined here and those shipped in installed packages."""
    from splitter.catalogue import model_catalogue

    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("model", no_wrap=True)
    table.add_column("description", overflow="fold")
    table.add_column("from", no_wrap=True)
    for entry in model_catalogue():
        table.add_row(entry.name, entry.description, entry.origin)
    console.print(table)
