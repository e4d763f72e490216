"""The adaptive runtime's link estimate against the rate a real trace offered (issue 18 item 1).

Each uplink trace is replayed through netemu's user-space link on loopback (the trace's
opportunities, RTT split evenly between the two directions, the downlink unshaped), in front of
a gRPC sink that answers each request after `--server-ms` with the time it spent. The device
side is the runtime's own: an AdaptiveController (edge_runtime.adaptive) whose LinkEstimator sees
every request as EdgeClient shows it one (payload bytes, RPC wall time, the server's time) and
whose RttProbe (edge_runtime.probe) probes the RTT with a tiny call as the client's does. Only
the requests are synthetic, shaped like the adaptive runtime's: activations of 3-100 KB, in
phases of one size (one cut) lasting 2-6 s, each request after a head of 20-150 ms (smaller
activations come from deeper cuts, whose heads take longer), closed loop, with idle gaps of
0.5-3 s after one request in ten (the device running everything itself, or nothing to do).

Before each request the bench reads the estimate the controller would decide with and compares
it with the rate the trace offered over the second before (`--window`, the same window the
estimate's samples were taken in): the absolute error relative to that rate. It also prints the
error against the second after (what the request is about to meet), which no estimator of the
past can fully know: the spread a decision has to plan for (edge_runtime.adaptive). Target: the
median absolute error ≤ 20 % on every shared trace.

    .venv/bin/python bench/estimator.py [--seconds 30] [--traces A.up,B.up] [--rtt 40ms]

Run against another tree's estimator (the one before issue 18, say) by putting that tree first:

    PYTHONPATH=OTHER_TREE .venv/bin/python bench/estimator.py

By default the traces are the repository's (experiment/examples/traces: the AT&T LTE drive and
excerpts of the T-Mobile LTE, T-Mobile UMTS and Verizon EVDO drives from their start, which is
what a 30 s run reads, and the rest); give the workspace's whole mahimahi files with --traces.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import struct
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos.units import parse_duration_ms

EXAMPLE_TRACES = Path(__file__).resolve().parents[1] / "experiment" / "examples" / "traces"
SINK = "bench.Sink"
TARGET_ERROR = 0.20
# Activation sizes of the phases (bytes) and the head time before each (ms): a deeper cut sends
# less after a longer head.
PHASES = ((3_000, 150.0), (12_000, 90.0), (32_000, 60.0), (58_000, 40.0), (100_000, 20.0))


def start_sink(server_ms: float) -> tuple[grpc.Server, str]:
    """A gRPC server whose Send answers after `server_ms` with the seconds it took (a double)."""

    def send(request: bytes, context) -> bytes:
        started = time.perf_counter()
        time.sleep(server_ms / 1e3)
        return struct.pack("<d", time.perf_counter() - started)

    handlers = {
        "Send": grpc.unary_unary_rpc_method_handler(send),
        "Ping": grpc.unary_unary_rpc_method_handler(lambda request, context: b""),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SINK, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


class SinkTransport:
    """What RttProbe needs of a Transport, over the sink: a tiny call and a connect."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._ping = channel.unary_unary(f"/{SINK}/Ping")

    def list_models(self) -> None:
        self._ping(b"", timeout=30)

    def wait_ready(self, timeout_s: float) -> None:
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            pass


@dataclass(frozen=True)
class Reading:
    t_s: float  # since the trace started
    estimate_bps: float | None
    rtt_ms: float | None
    past_bps: float  # what the trace offered over the window before
    next_bps: float  # ... and over the window after


def relative_error(estimate: float | None, truth: float) -> float:
    if estimate is None:
        return math.nan
    return abs(estimate - truth) / truth if truth > 0 else math.inf


def decision_table(rtt_ms: float):
    """A two-entry table (all on the device, one split) for the controller to decide with: the
    bench sends its own sizes, the decisions only mark the device busy as a client's do."""
    from protos.decisions import Choice, DecisionTable

    return DecisionTable(
        (
            Choice("all", "-", head_ms=100.0, encode_ms=0.0, nbytes=0, decode_ms=0.0, tail_ms=0.0, edge_only=True),
            Choice("split", "int8", head_ms=40.0, encode_ms=1.0, nbytes=58_000, decode_ms=1.0, tail_ms=5.0),
        ),
        planning_rtt_ms=rtt_ms,
    )


def replay(trace, sink: str, *, seconds: float, rtt_ms: float, window_s: float, seed: int) -> list[Reading]:
    from edge_runtime.adaptive import AdaptiveController, AdaptiveSettings
    from edge_runtime.probe import RttProbe
    from netemu import LinkEmulator, Shape

    rng = random.Random(seed)
    readings: list[Reading] = []
    uplink = Shape(trace=trace, delay_ms=rtt_ms / 2)
    with LinkEmulator(sink, uplink, Shape(delay_ms=rtt_ms / 2)) as link:
        channel = grpc.insecure_channel(link.address)
        send = channel.unary_unary(f"/{SINK}/Send")
        controller = AdaptiveController(
            decision_table(rtt_ms),
            AdaptiveSettings(explore_s=0),
            initial_bandwidth_bps=trace.mean_rate_bps,
            initial_rtt_ms=rtt_ms,
        )
        probe = RttProbe(SinkTransport(channel), controller)
        try:
            probe.wait_first()
            origin = link.trace_origin_s("up")
            assert origin is not None
            phase_end = 0.0
            while (now := time.monotonic()) - origin < seconds:
                if now >= phase_end:
                    nbytes, head_ms = PHASES[rng.randrange(len(PHASES))]
                    phase_end = now + rng.uniform(2.0, 6.0)
                controller.decide()
                estimate = controller.estimator.estimate()
                t_s = time.monotonic() - origin
                past = trace.bytes_between(t_s - window_s, t_s) * 8 / window_s
                readings.append(
                    Reading(t_s, estimate.bandwidth_bps, estimate.rtt_ms, past, trace.rate_bps_at(t_s, window_s))
                )
                time.sleep(head_ms * rng.uniform(0.8, 1.2) / 1e3)
                payload = rng.randbytes(nbytes)
                sent = time.perf_counter()
                reply = send(payload, timeout=60)
                rpc_s = time.perf_counter() - sent
                controller.observe(len(payload), rpc_s, struct.unpack("<d", reply)[0])
                if rng.random() < 0.1:
                    time.sleep(rng.uniform(0.5, 3.0))
        finally:
            probe.close()
            channel.close()
    return readings


def summary(readings: list[Reading]) -> tuple[float, float, int]:
    """Median error against the window before and the window after, and readings without estimate."""
    measured = [r for r in readings if r.estimate_bps is not None]
    past = [relative_error(r.estimate_bps, r.past_bps) for r in measured]
    ahead = [relative_error(r.estimate_bps, r.next_bps) for r in measured]
    missing = len(readings) - len(measured)
    return (statistics.median(past) if past else math.nan, statistics.median(ahead) if ahead else math.nan, missing)


def print_over_time(readings: list[Reading], bin_s: float) -> None:
    print(f"  {'t (s)':>9} {'offered':>8} {'estimate':>8} {'error':>6} {'RTT est':>8}  (Mbit/s, medians per bin)")
    bins: dict[int, list[Reading]] = {}
    for r in readings:
        bins.setdefault(int(r.t_s // bin_s), []).append(r)
    for index in sorted(bins):
        group = [r for r in bins[index] if r.estimate_bps is not None]
        if not group:
            continue
        offered = statistics.median(r.past_bps for r in group) / 1e6
        estimate = statistics.median(r.estimate_bps for r in group) / 1e6
        error = statistics.median(relative_error(r.estimate_bps, r.past_bps) for r in group)
        rtts = [r.rtt_ms for r in group if r.rtt_ms is not None]
        rtt = f"{statistics.median(rtts):8.1f}" if rtts else f"{'-':>8}"
        span = f"{index * bin_s:g}-{(index + 1) * bin_s:g}"
        print(f"  {span:>9} {offered:8.2f} {estimate:8.2f} {error * 100:5.0f}% {rtt}")


def default_traces() -> list[Path]:
    """Every uplink trace (mahimahi's `.up`) of the repository's examples, each content once."""
    paths, seen = [], set()
    for path in sorted(EXAMPLE_TRACES.glob("*.up")):
        content = path.read_bytes()
        if content not in seen:
            seen.add(content)
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--traces", help="comma-separated trace files (default: every uplink trace of experiment/examples/traces)"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="replayed per trace")
    parser.add_argument("--start", type=float, default=0.0, help="where in each trace the replay starts (s)")
    parser.add_argument("--rtt", default="40ms")
    parser.add_argument("--window", type=float, default=1.0, help="seconds of trace the estimate is compared with")
    parser.add_argument("--server-ms", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--over-time", type=float, default=0.0, help="also print medians per bin of this many s")
    args = parser.parse_args()
    if not (args.seconds > 0 and args.window > 0 and args.start >= 0):
        parser.error(f"--seconds {args.seconds} and --window {args.window} must be > 0, --start {args.start} ≥ 0")

    import edge_runtime.estimator
    from netemu.traces import load_trace, splice

    rtt_ms = parse_duration_ms(args.rtt)
    paths = [Path(p) for p in args.traces.split(",")] if args.traces else default_traces()
    print(f"estimator: {edge_runtime.estimator.__file__}")
    print(
        f"link: netemu user backend on loopback, RTT {rtt_ms:g} ms, downlink unshaped; sink server "
        f"{args.server_ms:g} ms; {args.seconds:g} s per trace from {args.start:g} s; window {args.window:g} s; "
        f"seed {args.seed}"
    )
    print(f"requests: phases of {[n for n, _ in PHASES]} B after heads of {[h for _, h in PHASES]} ms, idle gaps")
    sink_server, sink = start_sink(args.server_ms)
    rows = []
    try:
        for path in paths:
            whole = load_trace(path)
            trace = splice([(whole, args.start, args.seconds + 5.0)], source=str(path))
            offered = trace.bytes_between(0.0, args.seconds) * 8 / args.seconds
            mean = whole.mean_rate_bps / 1e6
            print(f"\n{path}: offers {offered / 1e6:.2f} Mbit/s over the replay (file mean {mean:.2f})", flush=True)
            readings = replay(trace, sink, seconds=args.seconds, rtt_ms=rtt_ms, window_s=args.window, seed=args.seed)
            if args.over_time > 0:
                print_over_time(readings, args.over_time)
            past, ahead, missing = summary(readings)
            rtts = [r.rtt_ms for r in readings if r.rtt_ms is not None]
            rtt = statistics.median(rtts) if rtts else math.nan
            rows.append((path.name, offered, len(readings), missing, past, ahead, rtt))
            print(
                f"  median |error| {past * 100:.0f} % (vs the second after: {ahead * 100:.0f} %), "
                f"median RTT estimate {rtt:.1f} ms, {len(readings)} requests",
                flush=True,
            )
    finally:
        sink_server.stop(0)
    print(f"\n{'trace':<28} {'Mbit/s':>7} {'N':>4} {'no est':>6} {'|err| past':>10} {'|err| next':>10} {'RTT ms':>7}")
    for name, offered, n, missing, past, ahead, rtt in rows:
        print(f"{name:<28} {offered / 1e6:7.2f} {n:4d} {missing:6d} {past * 100:9.0f}% {ahead * 100:9.0f}% {rtt:7.1f}")
    worst = max((r[4] for r in rows), default=math.nan)
    verdict = "met" if worst <= TARGET_ERROR else "NOT met"
    print(f"target: median |error| ≤ {TARGET_ERROR * 100:.0f} % on every trace: {verdict} (worst {worst * 100:.0f} %)")


if __name__ == "__main__":
    main()
