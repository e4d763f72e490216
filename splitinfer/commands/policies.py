"""`splitinfer policies`: the policies `plan --policy` accepts, built-ins and installed plug-ins."""

from __future__ import annotations

import typer

from splitinfer.console import console, user_errors

commands = typer.Typer()


@commands.command()
def policies() -> None:
    """List the registered policies, plug-ins (entry-point group splitinfer.policies) included."""
    with user_errors():
        from splitter.policies import list_policies

        for name in list_policies():
            console.print(name, highlight=False)
