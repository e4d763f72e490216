"""The command line's consoles, and the one way a user's mistake ends a command: a SplitInferError
becomes one line naming the bad value on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer
from rich.console import Console

from protos.errors import SplitInferError

# Cost tables are wide; piped into a file or a CI log they would otherwise wrap at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 150)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except SplitInferError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
