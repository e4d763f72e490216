"""`splitinfer policies`: the policies `plan --policy` accepts, built-ins and installed plug-ins."""

from __future__ import annotations

import typer
from rich.table import Table

from splitinfer.console import console, user_errors

commands = typer.Typer()


@commands.command()
def policies() -> None:
    """List the registered policies, plug-ins (entry-point group splitinfer.policies) included."""
    with user_errors():
        from splitter.policies import describe_policy, list_policies

        table = Table(box=None, pad_edge=False, show_edge=False)
        table.add_column("policy", no_wrap=True)
        table.add_column("chooses", overflow="fold")
        for name in list_policies():
            table.add_row(name, describe_policy(name))
        console.print(table)
