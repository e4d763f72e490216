"""`splitinfer`: the command line. Each command parses its arguments, imports its package lazily
(so the device commands `run` and `calibrate` work where torch is not installed) and calls one
function; a SplitInferError becomes exit code 2 and one line naming the bad value
(splitinfer.console). The commands live in splitinfer/commands/, one module per group; this
module puts them together, in the panels and order `splitinfer --help` lists them.
"""

from __future__ import annotations

import typer

from splitinfer.commands import (
    adaptive,
    calibrate,
    certs,
    demo,
    experiment,
    metrics,
    models,
    netemu,
    pipeline,
    policies,
    serving,
)
from splitinfer.console import OneLineErrors, console, size_consoles
from splitinfer.native_logs import set_onnxruntime_severity

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"splitinfer {version('splitinfer')}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="print the log lines of onnxruntime and gRPC (quiet by default)"
    ),
) -> None:
    """Edge-cloud split inference: profile a model, pick the cut, export head and tail, serve and run them over gRPC."""
    set_onnxruntime_severity(verbose)
    size_consoles()


# `splitinfer --help` groups the commands by what a user is doing, in this order.
PANELS = {
    "Pipeline": ("demo", "profile", "plan", "export", "export-adaptive", "calibrate"),
    "Serving": ("serve", "run"),
    "Security": ("certs", "signing-key", "sign"),
    "Experiments": ("experiment", "experiment-plot", "netemu"),
    "Information": ("models", "policies", "metrics"),
}
_PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}

for group in (demo, pipeline, adaptive, calibrate, serving, certs, experiment, models, policies, metrics):
    for command in group.commands.registered_commands:
        command.rich_help_panel = _PANEL_OF[command.name or command.callback.__name__.replace("_", "-")]
    app.add_typer(group.commands)
app.add_typer(netemu.commands, name="netemu", rich_help_panel=_PANEL_OF["netemu"])
