"""Oracle check: each policy's chosen cut, measured end to end, against the best measured cut.

For each model, every candidate cut runs for real: the profile is measured (per cut and per op),
every prefix cut and every cut the min-cut partitioner builds at some condition (parallel branches
cut at different depths, several tensors crossing) is exported and verified, all the tails are
served from one `splitinfer serve` process, and requests from the real EdgeClient are timed end
to end. Two measurements, both printed:

1. **Loopback + analytic link**, every cut: a request's measured time on loopback (head, encode,
   gRPC, decode, tail, output decode) plus the request message's bytes / uplink rate plus the RTT.
2. **Emulated link**, the finalists: per scenario the `--link-cuts` best cuts by (1) within
   `--margin` of the best, every policy's chosen cut, and edge-only, measured again through
   netemu's user-space link (real bytes at the condition's payload rate, one-way delay RTT/2 each
   way; HTTP/2 framing, flow control and the reply included), interleaved round by round so the
   shared machine's load falls on all of them alike. A cut whose estimate (1) exceeds `--link-max-ms` is not sent through the
   link (the raw input at CAT1 takes seconds a request); its row says "analytic". The ratio is
   computed on (2): cuts left out of it were slower than the best by more than the margin by (1),
   and the output reports how far (1) and (2) differ where both were measured.

The device is this machine made `--slowdowns` times slower (30: a phone-class core, the demo's
scenario; 5: a fast phone), as the planner's profile then assumes: each request's device work (the
head and the encoding, timed by the CPU clock of the thread that runs them, as the profile times them) is
multiplied by the slowdown, the rest of the request counted as measured. For requests one at a
time that is the same as sleeping the difference, and one run of requests serves every slowdown. Without it device and
server compute equally fast and offloading never pays (DESIGN.md). Device and server are pinned to
different CPUs. The IQR column is the spread of the chosen cut's requests (interquartile range /
median): on this shared 2-core machine other processes' load reaches the device's time, times the
slowdown.

Conditions: uplink rates of the split-computing literature (OpenSignal 2017, as Neurosurgeon and
DADS use them); RTTs those of splitter.cost.network's presets, typical of each access technology:
- CAT1 0.13 Mbit/s, RTT 100 ms: LTE category 1 uses LTE's radio and core, so its round trip is
  LTE's at the slow end (IoT-grade modules, cell-edge coverage): field reports give 50–100+ ms.
- 3G 1.1 Mbit/s, RTT 80 ms: HSPA round trips measure 60–120 ms (OpenSignal's 3G latencies of
  2016–2017: ~70–110 ms in most countries).
- 4G 5.85 Mbit/s, RTT 40 ms: OpenSignal's LTE latencies of 2017: 35–60 ms in most countries.
- Wi-Fi 18.88 Mbit/s, RTT 10 ms: a WLAN to a server at the network's edge, 5–20 ms.

Policies: `neurosurgeon` and `mincut` are held to the target (chosen / best ≤ 1.05); `throughput`
and `energy` optimise something else, and `edge-only` and `cloud-only` are the baselines: their
rows are for reference. The best is over the cuts the default constraints allow (no raw input
leaves the device); cloud-only, which sends it, is compared against the same best.

    .venv/bin/python bench/oracle.py [--models efficientnet_lite0,resnet18] [--conditions cat1,3g,4g,wifi]
        [--slowdowns 30,5] [--requests 6] [--link-requests 20] [--margin 0.3] [--link-cuts 4]
        [--link-max-ms 2000] [--no-link]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cloud_runtime.config import ServerConfig
from cloud_runtime.process import split_cpus, start_server_process
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.results import EdgeResult
from netemu import LinkEmulator, Shape
from protos.bundle import Bundle
from splitter.cost.cut_cost import CutCost, cut_cost, profile_power
from splitter.cost.network import PRESETS, NetworkModel
from splitter.cost.op_cost import device_set_cost, op_costs
from splitter.cost.plan import DEFAULT_CODEC, plan
from splitter.export.bundle import export_bundle
from splitter.graph.cuts import OUTPUT_CUT, Cut, cut_from_device_ops
from splitter.graph.graph import graph_from_onnx
from splitter.pipeline import model_cuts, profile_source
from splitter.policies import Constraints
from splitter.profile.schema import Profile
from splitter.profile.timing import ProfileSettings
from splitter.sources import ModelSource, load_source

POLICIES = ("neurosurgeon", "mincut", "throughput", "energy", "edge-only", "cloud-only")
LATENCY_POLICIES = ("neurosurgeon", "mincut")
TARGET = 1.05
# What the best is chosen under, and every policy's constraints but cloud-only's.
DEFAULT_CONSTRAINTS = Constraints()
# A request through the link may take this long (the raw input at CAT1 takes seconds).
REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Scenario:
    """A device (how many times slower than this machine) on a network condition."""

    slowdown: float
    network: NetworkModel

    @property
    def label(self) -> str:
        return f"×{self.slowdown:g} {self.network.name}"


@dataclass
class Candidate:
    cut: Cut
    bundle: Bundle
    # Per scenario: the planner's cost of this cut.
    predicted: dict[Scenario, CutCost]
    # (ms besides the device's work, device ms: head + encode) of each request on loopback, and the
    # request's bytes.
    loopback: list[tuple[float, float]] = field(default_factory=list)
    request_bytes: int = 0
    # Per condition name: the same through the emulated link.
    link: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def analytic_ms(self, scenario: Scenario) -> float:
        """The loopback measurement with the condition's transfer and round trip added."""
        loopback = scaled_ms(self.loopback, scenario.slowdown)
        if self.cut.is_edge_only:
            return loopback
        return loopback + scenario.network.transfer_ms(self.request_bytes) + scenario.network.rtt_ms

    def measured_ms(self, scenario: Scenario) -> tuple[float, bool]:
        """(latency, whether it was measured through the emulated link)."""
        if scenario.network.name in self.link:
            return scaled_ms(self.link[scenario.network.name], scenario.slowdown), True
        return self.analytic_ms(scenario), False


def split_timing(result: EdgeResult) -> tuple[float, float]:
    """(everything but the device's work, as measured; the device's work: the CPU time of its head
    and encoding, as the profile times a one-thread head and the encodings)."""
    timing = result.timing
    return timing.total_ms - timing.head_ms - timing.encode_ms, timing.device_cpu_ms


def scaled_ms(requests: list[tuple[float, float]], slowdown: float) -> float:
    """Median end-to-end time with the device's work taking `slowdown` × as long."""
    return statistics.median(rest + slowdown * device for rest, device in requests)


def constraints_for(policy: str) -> Constraints:
    return Constraints(allow_raw_input=True) if policy == "cloud-only" else DEFAULT_CONSTRAINTS


def plan_all(profile: Profile, scenarios: list[Scenario], codec: str) -> dict[tuple[Scenario, str], CutCost]:
    """(scenario, policy) → the chosen cut's predicted cost."""
    return {
        (scenario, policy): plan(
            replace(profile, edge_slowdown=scenario.slowdown),
            scenario.network,
            codec=codec,
            policy=policy,
            constraints=constraints_for(policy),
        ).chosen
        for scenario in scenarios
        for policy in POLICIES
    }


def candidate_cuts(source: ModelSource, chosen: Iterable[CutCost]) -> list[Cut]:
    """Every prefix cut (the input included), and the non-prefix cuts the min-cut chose."""
    cuts = model_cuts(source, include_input=True)
    graph = graph_from_onnx(source.model)
    for cost in chosen:
        if cost.head_ops and all(c.name != cost.name for c in cuts):
            cuts.append(cut_from_device_ops(graph, set(cost.head_ops)))
    return cuts


def predicted_cost(profile: Profile, cut: Cut, scenario: Scenario, codec: str) -> CutCost:
    """A profiled cut's cost as the planner sees it; a min-cut's from the per-op costs."""
    profile = replace(profile, edge_slowdown=scenario.slowdown)
    if cut.is_prefix:
        return cut_cost(profile, profile.cut(cut.name), scenario.network, codec)
    return device_set_cost(op_costs(profile, scenario.network, codec, profile_power(profile)), cut.head_ops)


@contextlib.contextmanager
def pinned(cpus: Collection[int]) -> Iterator[None]:
    """This thread on the device's CPUs while it acts as the device."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def measure(
    candidates: list[Candidate],
    address: str,
    feed: Mapping[str, np.ndarray],
    requests: int,
    rounds: int,
    idle_gap_ms: float,
    edge_cpus: Collection[int],
) -> dict[str, list[tuple[float, float]]]:
    """split_timing of `requests` requests per cut, in `rounds` interleaved rounds (0: one request
    per cut per round, so that the machine's load, which this shared machine's other work changes
    from second to second, falls on every cut alike), after two
    warm-up requests each (the first opens the connection). Records each cut's request bytes."""
    timed: dict[str, list[tuple[float, float]]] = {c.cut.name: [] for c in candidates}
    by_name = {c.cut.name: c for c in candidates}
    rounds = requests if rounds <= 0 else max(1, min(rounds, requests))
    with contextlib.ExitStack() as stack:
        stack.enter_context(pinned(edge_cpus))
        clients = {
            c.cut.name: stack.enter_context(
                EdgeClient(c.bundle, None if c.cut.is_edge_only else address, EdgeConfig(timeout_s=REQUEST_TIMEOUT_S))
            )
            for c in candidates
        }
        for client in clients.values():
            for _ in range(2):
                client.infer(feed)
        for round_ in range(rounds):
            count = requests // rounds + (round_ < requests % rounds)
            for name, client in clients.items():
                for _ in range(count):
                    # As the profile's runs do, a request finds the device idle, not mid-burst.
                    time.sleep(idle_gap_ms / 1e3)
                    result = client.infer(feed)
                    timed[name].append(split_timing(result))
                    by_name[name].request_bytes = result.request_bytes
    return timed


def allowed(candidates: dict[str, Candidate], scenario: Scenario) -> list[Candidate]:
    return [c for c in candidates.values() if DEFAULT_CONSTRAINTS.allows(c.predicted[scenario])]


def finalists(
    candidates: dict[str, Candidate], scenario: Scenario, chosen: Iterable[str], args: argparse.Namespace
) -> list[str]:
    """The cuts measured through the link for this scenario."""
    ranked = sorted(allowed(candidates, scenario), key=lambda c: c.analytic_ms(scenario))
    best = ranked[0].analytic_ms(scenario)
    near = [c.cut.name for c in ranked[: args.link_cuts] if c.analytic_ms(scenario) <= best * (1 + args.margin)]
    return [
        n
        for n in dict.fromkeys([*near, *chosen, OUTPUT_CUT])
        if candidates[n].analytic_ms(scenario) <= args.link_max_ms
    ]


@dataclass(frozen=True)
class Outcome:
    model: str
    scenario: Scenario
    policy: str
    chosen: CutCost
    measured_ms: float
    through_link: bool
    # Spread of the chosen cut's requests: interquartile range / median.
    spread: float
    best: str
    best_ms: float

    @property
    def ratio(self) -> float:
        return self.measured_ms / self.best_ms


def spread(requests: list[tuple[float, float]], slowdown: float) -> float:
    times = [rest + slowdown * device for rest, device in requests]
    low, _, high = statistics.quantiles(times, n=4)
    return (high - low) / statistics.median(times)


def bench_model(
    model: str, scenarios: list[Scenario], args: argparse.Namespace, console: Console
) -> tuple[list[Outcome], list[str]]:
    edge_cpus, server_cpus = split_cpus()
    started = time.monotonic()
    source = load_source(model)
    # Profiled as they will run: the device with one thread, the server with its CPUs.
    settings = ProfileSettings(
        edge_threads=1, server_threads=len(server_cpus), repeats=args.repeats, codecs=(args.codec,)
    )
    profile = profile_source(source, settings, progress=True)
    chosen = plan_all(profile, scenarios, args.codec)
    cuts = candidate_cuts(source, chosen.values())
    console.print(
        f"{model}: built and profiled ({len(profile.cuts)} cuts, {len(profile.ops.ops)} ops) in {time.monotonic() - started:.0f} s; {len(cuts)} candidate cuts"
    )
    samples = source.samples(1)
    feed = samples[0][1]
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        candidates: dict[str, Candidate] = {}
        for index, cut in enumerate(cuts):
            bundle, _ = export_bundle(
                source, cut, Path(tmp) / f"cut{index:04d}", samples, codec=args.codec, min_agreement=0.0
            )
            candidates[cut.name] = Candidate(
                cut, bundle, {sc: predicted_cost(profile, cut, sc, args.codec) for sc in scenarios}
            )
        split = [c.bundle.path for c in candidates.values() if not c.cut.is_edge_only]
        with start_server_process(ServerConfig(split, threads=len(server_cpus)), cpus=server_cpus) as server:
            started = time.monotonic()
            measured = measure(
                list(candidates.values()),
                server.address,
                feed,
                args.requests,
                args.rounds,
                settings.idle_gap_ms,
                edge_cpus,
            )
            for name, requests in measured.items():
                candidates[name].loopback = requests
            console.print(f"{model}: {len(candidates)} cuts measured on loopback in {time.monotonic() - started:.0f} s")
            networks = {sc.network.name: sc.network for sc in scenarios}
            for network in [] if args.no_link else networks.values():
                mine = [sc for sc in scenarios if sc.network is network]
                names = dict.fromkeys(
                    n for sc in mine for n in finalists(candidates, sc, [chosen[sc, p].name for p in POLICIES], args)
                )
                picked = [candidates[n] for n in names]
                started = time.monotonic()
                uplink = Shape(rate_bps=network.bandwidth_bps, delay_ms=network.rtt_ms / 2)
                downlink = Shape(delay_ms=network.rtt_ms / 2)
                # Started before the measuring thread pins itself: the link's thread keeps every CPU.
                with LinkEmulator(server.address, uplink, downlink) as link:
                    measured = measure(
                        picked, link.address, feed, args.link_requests, args.rounds, settings.idle_gap_ms, edge_cpus
                    )
                for name, requests in measured.items():
                    candidates[name].link[network.name] = requests
                deviations = [
                    c.measured_ms(sc)[0] / c.analytic_ms(sc) - 1
                    for c in picked
                    if not c.cut.is_edge_only
                    for sc in mine
                ]
                notes.append(
                    f"{model} {network.label}: {len(picked)} cuts through the link in {time.monotonic() - started:.0f} s; "
                    + (
                        f"link vs loopback + analytic: median {statistics.median(deviations):+.1%}, range {min(deviations):+.1%} … {max(deviations):+.1%}"
                        if deviations
                        else "edge-only only"
                    )
                )

    outcomes = []
    for scenario in scenarios:
        options = allowed(candidates, scenario)
        # The best among what was measured the better way: the link's cuts when there are any.
        pool = [c for c in options if scenario.network.name in c.link] or options
        best = min(pool, key=lambda c: c.measured_ms(scenario)[0])
        best_ms = best.measured_ms(scenario)[0]
        for policy in POLICIES:
            cost = chosen[scenario, policy]
            candidate = candidates[cost.name]
            ms, through_link = candidate.measured_ms(scenario)
            requests = candidate.link.get(scenario.network.name, candidate.loopback)
            outcomes.append(
                Outcome(
                    model,
                    scenario,
                    policy,
                    cost,
                    ms,
                    through_link,
                    spread(requests, scenario.slowdown),
                    best.cut.name,
                    best_ms,
                )
            )
    return outcomes, notes


def print_table(outcomes: list[Outcome], args: argparse.Namespace, console: Console) -> None:
    title = f"{outcomes[0].model}, {args.codec}; medians of {args.link_requests} requests through the link, {args.requests} on loopback"
    table = Table(title=title, title_justify="left")
    headers = (
        "device",
        "condition",
        "policy",
        "chosen cut",
        "n",
        "KB",
        "pred ms",
        "meas ms",
        "IQR",
        "via",
        "best measured cut",
        "best ms",
        "ratio",
    )
    for header in headers:
        table.add_column(
            header,
            justify="left"
            if header in ("device", "condition", "policy", "chosen cut", "via", "best measured cut")
            else "right",
        )
    for o in outcomes:
        held = o.policy in LATENCY_POLICIES
        mark = ("[green]" if o.ratio <= TARGET else "[red]") if held else "[dim]"
        first = o.policy == POLICIES[0]
        table.add_row(
            f"×{o.scenario.slowdown:g}" if first else "",
            o.scenario.network.label if first else "",
            o.policy + ("" if held else " (ref)"),
            o.chosen.name,
            str(o.chosen.tensor_count),
            f"{o.chosen.nbytes / 1e3:.1f}",
            f"{o.chosen.total_ms:.1f}",
            f"{o.measured_ms:.1f}",
            f"{o.spread:.0%}",
            "link" if o.through_link else "analytic",
            o.best,
            f"{o.best_ms:.1f}",
            f"{mark}{o.ratio:.3f}",
            end_section=o.policy == POLICIES[-1],
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default="efficientnet_lite0,resnet18", help="comma-separated registered models or .onnx paths"
    )
    parser.add_argument(
        "--conditions", default="cat1,3g,4g,wifi", help=f"comma-separated presets of {', '.join(PRESETS)}"
    )
    parser.add_argument(
        "--slowdowns", default="30,5", help="comma-separated: how many times slower the device is than this machine"
    )
    parser.add_argument("--requests", type=int, default=6, help="timed requests per cut on loopback")
    parser.add_argument("--link-requests", type=int, default=20, help="timed requests per cut through the link")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="interleaved rounds the requests are spread over (0: one request per cut per round)",
    )
    parser.add_argument("--repeats", type=int, default=10, help="profile repeats")
    parser.add_argument("--codec", default=DEFAULT_CODEC)
    parser.add_argument(
        "--margin",
        type=float,
        default=0.3,
        help="cuts this close to the best (loopback + analytic) go through the link",
    )
    parser.add_argument("--link-cuts", type=int, default=4, help="at most this many of them per scenario")
    parser.add_argument(
        "--link-max-ms",
        type=float,
        default=2000.0,
        help="no cut slower than this (loopback + analytic) goes through the link",
    )
    parser.add_argument("--no-link", action="store_true", help="loopback + analytic transfer only")
    args = parser.parse_args()
    console = Console(width=210)
    networks = [PRESETS[name.strip().lower()] for name in args.conditions.split(",")]
    scenarios = [Scenario(float(s), n) for s in args.slowdowns.split(",") for n in networks]
    how = (
        "loopback + analytic transfer for every cut (--no-link)"
        if args.no_link
        else "every cut on loopback + analytic transfer; the finalists also end to end through netemu's user-space link (via = link), and the ratio on the link's figures"
    )
    console.print(
        f"oracle: {how}; device = CPU {sorted(split_cpus()[0])} of this machine, its head CPU time and encoding × the slowdown; server = the other CPUs"
    )
    started = time.monotonic()
    verdicts = []
    for model in args.models.split(","):
        outcomes, notes = bench_model(model.strip(), scenarios, args, console)
        print_table(outcomes, args, console)
        for note in notes:
            console.print(note)
        verdicts += [o for o in outcomes if o.policy in LATENCY_POLICIES]
    worst = max(verdicts, key=lambda o: o.ratio)
    misses = [o for o in verdicts if o.ratio > TARGET]
    console.print(
        f"verdict: {'PASS' if not misses else 'FAIL'}: {len(verdicts) - len(misses)}/{len(verdicts)} (model, device, condition, latency policy) "
        f"within chosen/best ≤ {TARGET}; worst {worst.ratio:.3f} ({worst.model}, {worst.scenario.label}, {worst.policy}: {worst.chosen.name} "
        f"vs {worst.best}); {time.monotonic() - started:.0f} s in all"
    )


if __name__ == "__main__":
    main()
