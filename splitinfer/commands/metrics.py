"""`splitinfer metrics`: the task metrics `profile --metric` and `export --metric` accept, built-ins
and installed plug-ins."""

from __future__ import annotations

import typer

from splitinfer.console import console, user_errors

commands = typer.Typer()


@commands.command()
def metrics() -> None:
    """List the registered task metrics, plug-ins (entry-point group splitinfer.metrics) included."""
    with user_errors():
        from splitter.metrics import list_metrics

        for name in list_metrics():
            console.print(name, highlight=False)
