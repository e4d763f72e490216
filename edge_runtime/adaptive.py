"""Choosing the cut and codec before each request, from the device's own estimate of its link.

A multi-cut bundle (protos.bundle) carries a decision table made offline from the profile
(protos.decisions): per (cut, codec) the device's head and encode times, the bytes sent, the
server's decode and tail times. Before each request `CutChooser` prices every entry by the
formula the splitter's CostModel uses (protos.decisions.latency_ms), over the rates the request
may meet (LinkEstimate.near_future_bps, edge_runtime.estimator): by default its expected latency
over them, or (`quantile`) its latency at one quantile of them. It keeps the current entry unless
another is faster by more than `margin` (relative) on `confirm` consecutive decisions: a bandwidth
wandering around a switching point does not make the device flap between two cuts that cost
nearly the same there. A request names its cut's bundle_hash, so a switch costs no extra round
trip.

The server's load is priced too: each reply's queue wait and tail time (edge_runtime.server_load)
replace the profile's tail time, so an overloaded server sends work to deeper cuts or home to the
device, and the exploration requests bring it back when the load drops.

Until the link has been measured the chooser plans for `initial` (a NetworkModel-like guess the
bundle was planned for). While the device runs everything itself nothing measures the link, so
one request in `explore_s` at most is sent split at the best offloading entry, when what it may
reveal is worth its expected cost (edge_runtime.exploration): its transfer is the measurement
that lets the device come back to offloading when the network does. EdgeClient abandons it for
the device's own run once it has taken `abandon_factor` × its prediction.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.estimator import LinkEstimate, LinkEstimator
from edge_runtime.exploration import expected_ms, exploration_worth
from edge_runtime.server_load import ServerLoadEstimator
from protos.decisions import IDLE_SERVER, Choice, DecisionTable, ServerLoad
from protos.errors import SplitInferError
from protos.splitinfer.v1 import inference_pb2 as pb


@dataclass(frozen=True)
class Decision:
    choice: Choice
    estimate: LinkEstimate
    predicted_ms: float
    switched: bool  # this request runs another (cut, codec) than the one before
    exploring: bool = False  # sent split to measure the link while the device runs everything
    # The latency at the median of the rates `predicted_ms` is the mean over (for an exploration,
    # of the rates the link has shown lately): what an exploration is abandoned against.
    typical_ms: float = math.nan


class CutChooser:
    """The hysteresis: stay with the current choice unless another is faster by more than
    `margin` × its predicted latency on `confirm` consecutive decisions."""

    def __init__(self, table: DecisionTable, *, margin: float = 0.2, confirm: int = 3) -> None:
        if not (math.isfinite(margin) and margin >= 0):
            raise SplitInferError(f"hysteresis margin {margin!r} is not a finite number ≥ 0")
        if not (isinstance(confirm, int) and confirm >= 1):
            raise SplitInferError(f"hysteresis confirm {confirm!r} is not an integer ≥ 1")
        self.table = table
        self.margin = margin
        self.confirm = confirm
        self.current: Choice | None = None
        self._pending: Choice | None = None
        self._streak = 0
        self.switches = 0

    def choose(
        self, rates_bps: float | Sequence[float], rtt_ms: float, load: ServerLoad = IDLE_SERVER
    ) -> tuple[Choice, bool]:
        """The choice for the next request and whether it differs from the previous one, by
        expected latency over `rates_bps` (equally likely; one rate: the latency at it)."""
        rates = (float(rates_bps),) if isinstance(rates_bps, (int, float)) else tuple(rates_bps)
        best = min(self.table.choices, key=lambda c: expected_ms(c, rates, rtt_ms, load))
        if self.current is None:
            self.current = best
            return best, False
        if best == self.current:
            self._pending, self._streak = None, 0
            return self.current, False
        current_ms = expected_ms(self.current, rates, rtt_ms, load)
        if current_ms <= (1 + self.margin) * expected_ms(best, rates, rtt_ms, load):
            self._pending, self._streak = None, 0
            return self.current, False
        # The challenger may change between decisions; what must persist is that the current
        # choice is clearly beaten.
        self._streak = self._streak + 1 if self._pending is not None else 1
        self._pending = best
        if self._streak < self.confirm:
            return self.current, False
        self.current, self._pending, self._streak = best, None, 0
        self.switches += 1
        return best, True


@dataclass(frozen=True)
class AdaptiveSettings:
    # Chosen on the shared cellular traces: a link that swings within a second is not chased
    # (AT&T LTE: 2 switches in 120 s), a change of network is followed within ~1 s.
    margin: float = 0.2
    confirm: int = 3
    # Idle this long, the device probes the RTT with a tiny call (0: never).
    idle_probe_s: float = 2.0
    # While everything runs on the device, one request in this many seconds at most is sent
    # split, when what it may reveal is worth its cost (edge_runtime.exploration); 0: never.
    explore_s: float = 5.0
    # An exploration with no reply after this many times its typical latency (Decision.typical_ms)
    # is abandoned for the device's own run, where the bundle can run the rest of the model here
    # (0: never).
    abandon_factor: float = 3.0
    # None: choose by the expected latency over the near future's rates; a number in (0, 1):
    # by the latency at that quantile of them (0.1: plan for a link slower than 9 times in 10).
    quantile: float | None = None
    # While requests keep the device busy, the RTT is probed this often all the same, right after
    # a reply (the uplink is quiet while the next head runs): a closed loop is never idle.
    probe_s: float = 2.0
    # The estimator's (edge_runtime.estimator): the bandwidth is the rate over this much of the
    # newest delivery time; samples older than max_age_s are forgotten.
    horizon_s: float = 1.0
    max_age_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("idle_probe_s", "explore_s", "probe_s", "abandon_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SplitInferError(f"adaptive {name} {value!r} is not a finite number ≥ 0")
        if self.abandon_factor and self.abandon_factor < 1:
            raise SplitInferError(f"adaptive abandon_factor {self.abandon_factor!r} is not 0 (never) or ≥ 1")
        if self.quantile is not None and not (0 < self.quantile < 1):
            raise SplitInferError(f"adaptive quantile {self.quantile!r} is not None or a number in (0, 1)")


class AdaptiveController:
    """Estimator + chooser + the exploration rule, shared by the threads that call the client."""

    def __init__(
        self,
        table: DecisionTable,
        settings: AdaptiveSettings,
        *,
        initial_bandwidth_bps: float,
        initial_rtt_ms: float,
        clock=time.monotonic,
    ) -> None:
        if not (math.isfinite(initial_bandwidth_bps) and initial_bandwidth_bps > 0):
            raise SplitInferError(f"initial bandwidth {initial_bandwidth_bps!r} bit/s is not a finite number > 0")
        self.table = table
        self.settings = settings
        self.estimator = LinkEstimator(horizon_s=settings.horizon_s, max_age_s=settings.max_age_s, clock=clock)
        self.chooser = CutChooser(table, margin=settings.margin, confirm=settings.confirm)
        self.server_load = ServerLoadEstimator()
        self.initial_bandwidth_bps = initial_bandwidth_bps
        self.initial_rtt_ms = initial_rtt_ms
        self._clock = clock
        self._lock = threading.Lock()
        self._last_split = clock()
        self.last_activity = clock()
        # Set by every reply that measured the link: the probe's cue that the uplink is quiet.
        self.replied = threading.Event()
        self._pinned: Choice | None = None

    def pin(self, cut: str | None, codec: str | None = None) -> None:
        """Run every request at `cut` (with `codec`, or the table's first for it) instead of
        choosing, e.g. to measure one cut; None chooses again. The link is still measured."""
        with self._lock:
            if cut is None:
                self._pinned = None
                return
            matches = [c for c in self.table.choices if c.cut == cut and codec in (None, c.codec)]
            if not matches:
                have = sorted({c.key for c in self.table.choices})
                raise SplitInferError(f"no (cut, codec) {(cut, codec)!r} in the decision table; it has {have}")
            self._pinned = matches[0]

    def decide(self, *, offloading: bool = False, racing: bool = False) -> Decision:
        """The choice for the next request; `offloading`: one that sends (a stream's); `racing`:
        the device will run the rest of the model too, so where the table would run everything
        here the request is sent at the best offloading entry all the same (the device's run
        answers when the link is as slow as the table thinks)."""
        with self._lock:
            estimate = self.estimator.estimate()
            rtt = estimate.rtt_ms if estimate.rtt_ms is not None else self.initial_rtt_ms
            load = self.server_load.load
            rates = self._planning_rates(estimate)
            if self._pinned is not None:
                if offloading and self._pinned.edge_only:
                    raise SplitInferError(
                        f"pinned to {self._pinned.cut!r}, all on the device: a stream needs a cut that sends"
                    )
                return Decision(self._pinned, estimate, expected_ms(self._pinned, rates, rtt, load), False)
            choice, switched = self.chooser.choose(rates, rtt, load)
            now = self._clock()
            self.last_activity = now
            exploring = False
            if choice.edge_only and (
                offloading or racing or self._explore_now(now, estimate, choice, rates, rtt, load)
            ):
                choice = self._best_split(rates, rtt, load)
                exploring = not (offloading or racing)
            if not choice.edge_only:
                self._last_split = now
            typical_ms = choice.predicted_ms(self._typical_bps(rates, estimate, exploring), rtt, load=load)
            return Decision(choice, estimate, expected_ms(choice, rates, rtt, load), switched, exploring, typical_ms)

    def _planning_rates(self, estimate: LinkEstimate) -> tuple[float, ...]:
        """The rates a decision is priced over: the near future's, or its chosen quantile."""
        if estimate.bandwidth_bps is None:
            return (self.initial_bandwidth_bps,)
        rates = estimate.near_future_bps or (estimate.bandwidth_bps,)
        if self.settings.quantile is None:
            return rates
        return (float(np.quantile(rates, self.settings.quantile)),)

    @staticmethod
    def _typical_bps(rates: tuple[float, ...], estimate: LinkEstimate, exploring: bool) -> float:
        """The rate a request typically meets: the near future's median; for an exploration, the
        median of where the link has been (it asks whether the link is back there: no reply in a
        few times what that rate would take says no, and it is abandoned)."""
        if exploring and estimate.history_bps:
            return float(np.median(estimate.history_bps))
        return float(np.median(rates))

    def _best_split(self, rates: tuple[float, ...], rtt: float, load: ServerLoad) -> Choice:
        splits = [c for c in self.table.choices if not c.edge_only] or list(self.table.choices)
        return min(splits, key=lambda c: expected_ms(c, rates, rtt, load))

    def _explore_now(
        self, now: float, estimate: LinkEstimate, local: Choice, rates: tuple[float, ...], rtt: float, load: ServerLoad
    ) -> bool:
        """Whether this request, which the device would run alone, goes out split to measure."""
        explore_s = self.settings.explore_s
        if explore_s <= 0 or now - self._last_split < explore_s:
            return False
        if not estimate.history_bps:
            return True  # never measured: only a request can tell
        probe = self._best_split(rates, rtt, load)
        factor = self.settings.abandon_factor
        typical_bps = self._typical_bps(rates, estimate, exploring=True)
        abandon_ms = factor * probe.predicted_ms(typical_bps, rtt, load=load) if factor else None
        cost_ms, value_ms = exploration_worth(
            self.table.choices,
            local,
            probe,
            rates,
            estimate.history_bps,
            rtt,
            explore_s=explore_s,
            abandon_ms=abandon_ms,
            load=load,
        )
        return value_ms >= cost_ms

    def observe(self, payload_bytes: int, rpc_s: float, server_s: float) -> None:
        self.estimator.observe_transfer(payload_bytes, rpc_s, server_s)
        self.last_activity = self._clock()
        self.replied.set()

    def observe_server(self, timing: pb.ServerTiming, choice: Choice) -> None:
        """A reply's account of the server's time, for a request sent at `choice`."""
        self.server_load.observe(timing, choice)

    def observe_unfinished(self, payload_bytes: int, elapsed_s: float, server_s: float) -> None:
        self.estimator.observe_unfinished(payload_bytes, elapsed_s, server_s)
        self.last_activity = self._clock()
