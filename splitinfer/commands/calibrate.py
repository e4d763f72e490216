"""`splitinfer calibrate`: fit this device's DeviceProfile by timing the fixed micro-benchmark suite
(edge_runtime.calibration). Runs on the device with the edge install alone: no torch, no onnx."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from splitinfer.console import console, user_errors
from splitinfer.options import at_least, output_file

commands = typer.Typer()


@commands.command()
def calibrate(
    threads: int = typer.Option(
        1, callback=at_least(1), help="onnxruntime intra-op threads the device will run heads with"
    ),
    out: Path = typer.Option(Path("device.json"), help="where to write the DeviceProfile"),
    name: str = typer.Option("", help="the device's name in plans (default: the host name)"),
    rounds: int = typer.Option(
        2, callback=at_least(1), help="times the whole suite is run (each benchmark keeps its fastest)"
    ),
    repeats: int = typer.Option(
        10, callback=at_least(1), help="timed runs per benchmark and round (the median is kept)"
    ),
    idle_gap_ms: float = typer.Option(
        2.0, callback=at_least(0), help="idle time before each timed run, as before a request"
    ),
    clock: str = typer.Option("wall", help="wall (elapsed), or cpu (the thread's CPU time; --threads 1 only)"),
    compute_w: float | None = typer.Option(
        None, callback=at_least(0), help="device power while computing, W (from a power meter)"
    ),
    radio_uj_per_byte: float | None = typer.Option(None, callback=at_least(0), help="radio energy per byte sent, µJ"),
    idle_w: float | None = typer.Option(
        None, callback=at_least(0), help="device power while waiting for the server, W"
    ),
    power_source: str = typer.Option("given to splitinfer calibrate", help="where the power figures come from"),
    only: str | None = typer.Option(None, help="comma-separated benchmark names: a quick, partial profile"),
) -> None:
    """Time the calibration suite here and write this device's DeviceProfile (for `profile --edge-device`)."""
    with user_errors():
        output_file(out)
        from rich.progress import track

        from edge_runtime.calibration import Timing, power_document, write_profile
        from edge_runtime.calibration import calibrate as run_calibration

        timing = Timing(repeats=repeats, rounds=rounds, idle_gap_ms=idle_gap_ms, clock=clock)
        power = None
        if compute_w is not None or radio_uj_per_byte is not None or idle_w is not None:
            power = power_document(
                compute_w, None if radio_uj_per_byte is None else radio_uj_per_byte * 1e-6, idle_w, power_source
            )
        names = [n.strip() for n in only.split(",") if n.strip()] if only is not None else None
        document = run_calibration(
            threads,
            timing,
            name=name,
            power=power,
            only=names,
            progress=lambda items: track(
                items, description=f"calibrating ({threads} thread{'s' if threads > 1 else ''})", console=console
            ),
        )
        write_profile(document, out)
        table = Table(title="fit per kind of kernel (on the suite)", title_justify="left")
        for header in ("kernel kind", "benchmarks", "median |error|"):
            table.add_column(header, justify="left" if header == "kernel kind" else "right")
        for kind, report in sorted(document["fit"].items()):
            table.add_row(kind, str(report["benchmarks"]), f"{report['median_rel_error']:.1%}")
        console.print(table)
        block = document["nchwc_block"]
        console.print(
            f"{document['name']!r}: {threads} thread(s), NCHWc block {block or 'none'}, fixed cost per run "
            f"{document['overhead_ms'] * 1e3:.0f} µs, {len(document['coefficients'])} kernel kinds fitted on "
            f"{len(set(document['measurements']) - {'overhead'})} benchmarks → {out}",
            highlight=False,
        )
