"""The command line's consoles, and the one way a user's mistake ends a command: one line naming the
bad value on stderr and exit code 2, never a traceback. A SplitInferError raised by the work ends
so (`user_errors`), and so does a value click refuses while parsing (`OneLineErrors`)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from protos.errors import SplitInferError

console = Console()
err_console = Console(stderr=True)


def size_consoles() -> None:
    """Each run's width: COLUMNS when set, else the terminal's; piped into a file or a CI log, 150
    (cost tables are wide, and would otherwise wrap at 80 columns). Set per run, not at import:
    in-process runs (tests) share the consoles."""
    columns = os.environ.get("COLUMNS", "")
    for each in (console, err_console):
        each.width = int(columns) if columns.isdigit() else (None if each.is_terminal else 150)


def print_error(message: str) -> None:
    """`message` (markup escaped) as the one line of a refusal."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except SplitInferError as err:
        print_error(escape(str(err)))
        raise typer.Exit(2) from None


class OneLineErrors(TyperGroup):
    """The root command group. Typer draws a usage error (a bad integer, a value out of its range,
    a missing argument, an unknown option) as a usage line and a boxed panel; here it ends as the
    project's own errors do, so a script or a user reads one line whichever layer refused."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, **extra: Any) -> Any:
        if extra.pop("standalone_mode", True) is False:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as err:  # click's exceptions, vendored by typer
            # Typer has printed the help of a bare group already (as its own handler knows it).
            if type(err).__name__ != "NoArgsIsHelpError":
                message = " ".join(err.format_message().split())
                ctx = getattr(err, "ctx", None)
                print_error(escape(message + (f" (see {ctx.command_path} --help)" if ctx is not None else "")))
            sys.exit(getattr(err, "exit_code", 2))
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)
