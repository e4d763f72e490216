"""`splitinfer experiment CONFIG.toml` runs a grid of models × policies × codecs × network conditions
with the real client, server and emulated link, then writes the summary and the figures;
`splitinfer experiment-plot RESULTS_DIR` writes them again from the results alone. The work is in
the experiment package; this module parses and prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from splitinfer.console import console, user_errors
from splitinfer.options import output_dir

commands = typer.Typer()


def _print_report(results_dir: Path) -> None:
    from experiment.report import report
    from experiment.summary import adaptive_table, summary_table
    from splitinfer.tables import ADAPTIVE_DROP_ORDER, SUMMARY_DROP_ORDER, Fitted

    done = report(results_dir)
    console.print(Fitted(summary_table(done.summary), SUMMARY_DROP_ORDER))
    for label, model in json.loads((results_dir / "meta.json").read_text(encoding="utf-8")).get("models", {}).items():
        if "samples" in model:
            console.print(
                f"{label}: requests cycle over {model['samples']}; top-1 = the share of requests whose class is the unsplit model's",
                highlight=False,
            )
    if done.adaptive:
        console.print(Fitted(adaptive_table(done.adaptive), ADAPTIVE_DROP_ORDER))
    console.print(
        f"summary → {done.summary_csv}; {len(done.figures)} figures → {results_dir / 'figures'}", highlight=False
    )


@commands.command()
def experiment(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="an experiment config (see experiment/examples/)"),
    out: Path | None = typer.Option(None, help="results directory (default: the config's `out`)"),
) -> None:
    """Run every cell of an experiment for real and record every request; then summarise and plot."""
    with user_errors():
        from experiment.config import load_config
        from experiment.runner import run_experiment

        if out is not None:
            output_dir(out)
        config = load_config(config_path)
        results_dir = run_experiment(config, out=out, console=console)
        console.print(f"results → {results_dir}", highlight=False)
        _print_report(results_dir)


@commands.command("experiment-plot")
def experiment_plot(
    results_dir: Path = typer.Argument(
        ..., metavar="RESULTS_DIR", help="a directory written by `splitinfer experiment`"
    ),
) -> None:
    """Rewrite the summary and the figures of an experiment from its results.csv and meta.json."""
    with user_errors():
        _print_report(results_dir)
