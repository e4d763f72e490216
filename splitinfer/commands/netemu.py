"""`splitinfer netemu ...`: the network emulator from the command line.

`selftest` measures what an emulated link delivers against what it was asked for; `link` runs an
emulated link in front of a server until interrupted (for a server and a device started by hand);
`trace` describes a trace file. The work is in the netemu package; this module parses and prints.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from protos.errors import SplitInferError
from splitinfer.console import console, err_console, user_errors
from splitinfer.options import at_least, output_file, positive

if TYPE_CHECKING:
    from netemu.selftest import Measurement
    from netemu.shape import Shape

commands = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Network emulation: emulated links, their self-test, traces."
)

BACKEND_HELP = (
    "user (asyncio proxy, no privileges), kernel (htb in network namespaces, root), "
    "tun (packets forwarded between network namespaces, with loss; root) or auto"
)
LOSS_HELP = "packet loss per direction, e.g. 1% or 0.01 (tun backend)"


def _rates_bps(text: str) -> list[float]:
    """`1,5.85,18.88` (Mbit/s) or items with units (`300kbit,2mbit`) → bit/s."""
    from protos.units import parse_rate_bps

    rates = []
    for item in text.split(","):
        item = item.strip()
        try:
            rate = float(item) * 1e6
        except ValueError:
            try:
                rate = parse_rate_bps(item)
            except SplitInferError as err:
                raise SplitInferError(f"--rates: {err}") from None
        if not rate > 0:
            raise SplitInferError(f"--rates: {item!r} must be a positive rate (Mbit/s, or with a unit like 300kbit)")
        rates.append(rate)
    return rates


def _duration_ms(option: str, text: str) -> float:
    from protos.units import parse_duration_ms

    try:
        return parse_duration_ms(text)
    except SplitInferError as err:
        raise SplitInferError(f"{option}: {err}") from None


def _loss(text: str) -> float:
    from protos.units import parse_share

    return parse_share(text, "--loss")


def _directions(text: str) -> tuple[str, ...]:
    choices = {"up": ("up",), "down": ("down",), "both": ("up", "down")}
    if text not in choices:
        raise SplitInferError(f"--direction {text!r} is not one of up, down, both")
    return choices[text]


def _backend(text: str) -> str:
    from netemu.link import BACKENDS

    if text not in BACKENDS:
        raise SplitInferError(f"--backend {text!r} is not one of {', '.join(BACKENDS)}")
    return text


@commands.command()
def selftest(
    backend: str = typer.Option("user", help=BACKEND_HELP),
    rates: str = typer.Option("1,5.85,18.88", help="payload rates to test, Mbit/s (or with units: 300kbit)"),
    rtt: str = typer.Option("40ms", help="round-trip time to emulate (half of it each way)"),
    seconds: float = typer.Option(3.0, callback=at_least(0.5), help="length of each bulk transfer"),
    direction: str = typer.Option("both", help="directions whose throughput to measure: up, down, both"),
    pings: int = typer.Option(20, callback=at_least(1), help="round trips timed per rate"),
    loss: str = typer.Option("0", help=LOSS_HELP + "; the rate then has no target, its goodput is shown"),
) -> None:
    """Measure delivered throughput and RTT through an emulated link against the targets
    (±5% throughput, ±3 ms RTT on an idle machine). Exit code 1 when a rate misses them."""
    with user_errors():
        from netemu.selftest import RTT_TOLERANCE_MS, THROUGHPUT_TOLERANCE, run_selftest

        rates_bps = _rates_bps(rates)
        rtt_ms = _duration_ms("--rtt", rtt)
        directions = _directions(direction)
        loss_share = _loss(loss)
        _backend(backend)

        def progress(m: Measurement) -> None:
            err_console.print(f"[dim]measured {m.rate_bps / 1e6:g} Mbit/s ({m.backend})[/dim]", highlight=False)

        results = run_selftest(
            backend,
            rates_bps,
            rtt_ms,
            seconds=seconds,
            directions=directions,
            pings=pings,
            loss=loss_share,
            on_result=progress,
        )
    from splitinfer.tables import SELFTEST_DROP_ORDER, Fitted

    console.print(Fitted(_selftest_table(results, THROUGHPUT_TOLERANCE, RTT_TOLERANCE_MS), SELFTEST_DROP_ORDER))
    misses = [m for m in results if not m.ok]
    if misses:
        console.print(
            f"{len(misses)} of {len(results)} rates outside the target "
            f"(±{THROUGHPUT_TOLERANCE:.0%} throughput, ±{RTT_TOLERANCE_MS:g} ms RTT); on a busy machine, re-run",
            highlight=False,
        )
        raise typer.Exit(1)
    console.print(
        f"all {len(results)} rates within ±{THROUGHPUT_TOLERANCE:.0%} throughput and ±{RTT_TOLERANCE_MS:g} ms RTT"
    )


def _selftest_table(results: list[Measurement], rate_tolerance: float, rtt_tolerance_ms: float) -> Table:
    backend = results[0].backend if results else "?"
    loss = f", loss {results[0].loss:.3g} each way (goodput, no rate target)" if results and results[0].loss else ""
    table = Table(
        title=f"netemu self-test, {backend} backend{loss}: payload rate and RTT delivered vs asked",
        title_justify="left",
    )
    for header in (
        "rate Mbit/s",
        "up Mbit/s",
        "up Δ",
        "down Mbit/s",
        "down Δ",
        "RTT asked",
        "expected",
        "median",
        "p90",
        "Δ ms",
        "",
    ):
        table.add_column(header, justify="right")

    def rate_cells(delivered: float | None, error: float | None, lossy: bool) -> tuple[str, str]:
        if delivered is None or error is None:
            return "-", "-"
        colour = "dim" if lossy else "green" if abs(error) <= rate_tolerance else "red"
        return f"{delivered / 1e6:.3f}", f"[{colour}]{error:+.2%}[/{colour}]"

    for m in results:
        up = rate_cells(m.uplink_bps, m.throughput_error("up"), m.loss > 0)
        down = rate_cells(m.downlink_bps, m.throughput_error("down"), m.loss > 0)
        colour = "green" if abs(m.rtt_error_ms) <= rtt_tolerance_ms else "red"
        table.add_row(
            f"{m.rate_bps / 1e6:g}",
            *up,
            *down,
            f"{m.rtt_ms:g}",
            f"{m.expected_rtt_ms:.2f}",
            f"{m.rtt_median_ms:.2f}",
            f"{m.rtt_p90_ms:.2f}",
            f"[{colour}]{m.rtt_error_ms:+.2f}[/{colour}]",
            "✓" if m.ok else "[red]✗[/red]",
        )
    return table


@commands.command()
def link(
    target: str = typer.Argument(..., metavar="HOST:PORT", help="HOST:PORT of the server behind the link"),
    listen: str = typer.Option("127.0.0.1:0", help="where clients connect (port 0: any free port)"),
    backend: str = typer.Option("user", help=BACKEND_HELP),
    up: str | None = typer.Option(None, help="uplink payload rate, e.g. 5.85mbit (default: unlimited)"),
    down: str | None = typer.Option(None, help="downlink payload rate (default: unlimited)"),
    up_trace: Path | None = typer.Option(
        None, help="replay this trace on the uplink (mahimahi or seconds,Mbit/s .csv)"
    ),
    down_trace: Path | None = typer.Option(None, help="replay this trace on the downlink"),
    rtt: str = typer.Option("0ms", help="round-trip time: half of it is each direction's delay"),
    jitter: str = typer.Option("0ms", help="each direction's delay varies uniformly by ± this"),
    loss: str = typer.Option("0", help=LOSS_HELP),
    queue_kb: float | None = typer.Option(None, callback=positive, help="each direction's queue, KB (default 64 KiB)"),
    seconds: float | None = typer.Option(
        None, callback=positive, help="stop after this long (default: until Ctrl-C / SIGTERM)"
    ),
    seed: int = typer.Option(0, callback=at_least(0), help="seed of the jitter"),
) -> None:
    """Run an emulated link in front of TARGET until interrupted."""
    with user_errors():
        from netemu.link import open_link
        from netemu.shape import DEFAULT_QUEUE_BYTES, Shape
        from netemu.traces import load_trace
        from protos.units import parse_rate_bps

        _backend(backend)
        rtt_ms = _duration_ms("--rtt", rtt)
        jitter_ms = _duration_ms("--jitter", jitter)
        loss_share = _loss(loss)
        queue = int(queue_kb * 1000) if queue_kb is not None else DEFAULT_QUEUE_BYTES

        def shape(rate: str | None, trace: Path | None, option: str) -> Shape:
            if rate is not None and trace is not None:
                raise SplitInferError(f"--{option} and --{option}-trace both given; choose one")
            return Shape(
                rate_bps=parse_rate_bps(rate) if rate is not None else None,
                trace=load_trace(trace) if trace is not None else None,
                delay_ms=rtt_ms / 2,
                jitter_ms=jitter_ms,
                queue_bytes=queue,
                loss=loss_share,
            )

        uplink, downlink = shape(up, up_trace, "up"), shape(down, down_trace, "down")
        running = open_link(backend, target, uplink, downlink, listen=listen, seed=seed)
        stop = threading.Event()
        # SIGTERM ends the link as Ctrl-C does (signal handlers can only be set from the main thread).
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if in_main else None
        with running:
            console.print(f"{running.backend} link {running.address} → {target}", highlight=False)
            console.print(f"  up:   {uplink.label}\n  down: {downlink.label}", highlight=False)
            try:
                stop.wait(seconds)
            except KeyboardInterrupt:
                pass
            finally:
                if in_main:
                    signal.signal(signal.SIGTERM, previous)


@commands.command()
def trace(
    path: Path = typer.Argument(..., metavar="TRACE", help="a mahimahi trace or a seconds,Mbit/s .csv"),
    window: float = typer.Option(1.0, callback=positive, help="seconds per rate sample for min/percentiles/max"),
) -> None:
    """Describe a trace: duration, mean rate and the spread of its rate over windows."""
    with user_errors():
        import numpy as np

        from netemu.traces import load_trace

        loaded = load_trace(path)
        steps = max(1, int(loaded.duration_s // window))
        rates = np.array([loaded.rate_bps_at(i * window, window) for i in range(steps)]) / 1e6
        console.print(
            f"{path}: {loaded.duration_s:.1f} s, {len(loaded.opportunities_ms)} delivery opportunities, "
            f"mean {loaded.mean_rate_bps / 1e6:.3f} Mbit/s; per {window:g} s: min {rates.min():.3f}, "
            f"p10 {np.percentile(rates, 10):.3f}, median {np.median(rates):.3f}, p90 {np.percentile(rates, 90):.3f}, "
            f"max {rates.max():.3f} Mbit/s",
            highlight=False,
        )


def _splice_part(text: str):
    from netemu.traces import load_trace

    path, _, span = text.rpartition("@")
    try:
        start, length = (float(v) for v in span.split("+"))
    except ValueError:
        raise SplitInferError(f"splice part {text!r} is not TRACE@START+LENGTH (seconds), e.g. LTE.up@60+30") from None
    return load_trace(path), start, length


@commands.command()
def splice(
    parts: list[str] = typer.Argument(..., metavar="TRACE@START+LENGTH", help="pieces of traces in order, seconds"),
    out: Path = typer.Option(..., help="mahimahi file to write"),
    scale: float = typer.Option(1.0, help="multiply the joined trace's rate by this (its shape kept)"),
) -> None:
    """Join pieces of traces end to end into one mahimahi trace (a device moving between networks)."""
    with user_errors():
        from netemu.traces import save_mahimahi, scaled
        from netemu.traces import splice as join

        if not (math.isfinite(scale) and scale > 0):
            raise SplitInferError(f"--scale {scale:g} must be a positive number")
        output_file(out)
        trace = join([_splice_part(p) for p in parts], source=str(out))
        if scale != 1.0:
            trace = scaled(trace, scale, source=str(out))
        save_mahimahi(trace, out)
        console.print(f"{out}: {trace.duration_s:g} s, mean {trace.mean_rate_bps / 1e6:.3g} Mbit/s", highlight=False)
