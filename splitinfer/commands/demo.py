"""`splitinfer demo`: the main job end to end on the embedded default model (splitinfer.demo)."""

from __future__ import annotations

from pathlib import Path

import typer

from splitinfer.console import console, user_errors
from splitinfer.options import (
    NETWORK_HELP,
    SAMPLES_HELP,
    at_least,
    checked_samples_path,
    output_dir,
    positive,
)

commands = typer.Typer()


@commands.command()
def demo(
    model: str = typer.Option("efficientnet_lite0", help="registered model to demonstrate"),
    network: str = typer.Option("4g", help=NETWORK_HELP),
    edge_slowdown: float = typer.Option(
        30.0, callback=positive, help="how many times slower the device is than this machine"
    ),
    codec: str = typer.Option("int8+zstd", help="activation codec"),
    out: Path = typer.Option(Path("out/demo"), help="where the profile and the bundle go"),
    repeats: int = typer.Option(5, callback=at_least(1), help="timed runs per profile measurement"),
    samples: Path | None = typer.Option(None, help=SAMPLES_HELP),
) -> None:
    """Profile, plan, export, serve on loopback and run real photos end to end."""
    with user_errors():
        from protos.codec import Codec
        from splitinfer.demo import run_demo
        from splitter.cost.network import resolve_network

        output_dir(out)
        if codec != "auto":  # checked here: the demo profiles for a minute before it encodes
            Codec.parse(codec)

        run_demo(
            model,
            resolve_network(network, None, None),
            edge_slowdown=edge_slowdown,
            codec=codec,
            out=out,
            repeats=repeats,
            console=console,
            samples=checked_samples_path(samples),
        )
