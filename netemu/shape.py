"""What one direction of an emulated link does to the bytes that cross it.

A link has two directions, "up" (device to server) and "down". A `Shape` is the setting of one: a
rate (fixed, or replayed from a `RateTrace`), a one-way delay with jitter, a packet loss rate and
the size of the bottleneck's queue. Every backend reads the same Shape. The rate is always the
**payload** rate, the TCP payload bytes an application sees per second: the user backend shapes
payload directly; the kernel and tun backends raise their rate by the header bytes of full-size
packets so that they deliver the same payload rate (see netemu/backends/kernel.py,
netemu/backends/tun.py). Loss needs packets, so only the tun backend emulates it; the others refuse
a Shape with loss rather than ignore it. `shape_with` is how every backend changes a running link's
Shape.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from netemu.traces import RateTrace
from protos.errors import SplitInferError

DIRECTIONS = ("up", "down")
# Big enough to keep a link busy while its reader refills it (5 ms at 100 Mbit/s), small enough not
# to hide seconds of queueing at cellular rates (0.5 s at 1 Mbit/s). Size it per experiment.
DEFAULT_QUEUE_BYTES = 64 * 1024
# No one-way delay longer than this is meant seriously; a typo like 40000 would stall every test.
MAX_DELAY_MS = 60_000.0


@dataclass(frozen=True)
class Shape:
    """One direction of a link.

    rate_bps: payload bit/s; None is unlimited. trace: replay this trace's delivery opportunities
    instead of a fixed rate (from the moment the shape is applied; it repeats). delay_ms: one-way
    delay added after a byte has crossed the bottleneck. jitter_ms: each chunk's delay is drawn
    uniformly from delay_ms ± jitter_ms (never below 0), then raised if needed so that no chunk
    overtakes an earlier one: a TCP stream is never reordered, and the mean delay grows when chunks
    follow each other closer than the jitter. queue_bytes: the bottleneck's buffer (see
    netemu/streams.py and netemu/backends/tun.py for what happens when it is full). loss: the
    probability that a packet is dropped on its way in, each packet drawn independently (tun
    backend only).
    """

    rate_bps: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    trace: RateTrace | None = None
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.rate_bps is not None and not (math.isfinite(self.rate_bps) and self.rate_bps > 0):
            raise SplitInferError(f"rate_bps must be a positive number or None (unlimited), got {self.rate_bps!r}")
        if self.rate_bps is not None and self.trace is not None:
            raise SplitInferError(
                f"give a rate or a trace, not both: rate_bps={self.rate_bps!r}, trace={self.trace.source!r}"
            )
        if self.trace is not None and not isinstance(self.trace, RateTrace):
            raise SplitInferError(f"trace must be a RateTrace (netemu.traces.load_trace), got {self.trace!r}")
        if not (math.isfinite(self.delay_ms) and 0 <= self.delay_ms <= MAX_DELAY_MS):
            raise SplitInferError(f"delay_ms must be within [0, {MAX_DELAY_MS:g}], got {self.delay_ms!r}")
        if not (math.isfinite(self.jitter_ms) and 0 <= self.jitter_ms <= MAX_DELAY_MS):
            raise SplitInferError(f"jitter_ms must be within [0, {MAX_DELAY_MS:g}], got {self.jitter_ms!r}")
        if not isinstance(self.queue_bytes, int) or self.queue_bytes < 1:
            raise SplitInferError(f"queue_bytes must be a positive integer, got {self.queue_bytes!r}")
        if isinstance(self.loss, bool) or not isinstance(self.loss, (int, float)) or not 0 <= self.loss < 1:
            raise SplitInferError(f"loss must be a probability in [0, 1), got {self.loss!r}")

    @property
    def shaped(self) -> bool:
        """Whether the rate is limited (by a fixed rate or a trace)."""
        return self.rate_bps is not None or self.trace is not None

    @property
    def label(self) -> str:
        if self.trace is not None:
            rate = f"trace {self.trace.source or '?'} (mean {self.trace.mean_rate_bps / 1e6:.3g} Mbit/s)"
        elif self.rate_bps is not None:
            rate = f"{self.rate_bps / 1e6:g} Mbit/s"
        else:
            rate = "unlimited"
        delay = f", delay {self.delay_ms:g} ms" + (f" ± {self.jitter_ms:g}" if self.jitter_ms else "")
        loss = f", loss {self.loss * 100:.3g}%" if self.loss else ""
        return rate + delay + loss + f", queue {self.queue_bytes} B"


def refuse_loss(shape: Shape, backend: str) -> Shape:
    """`shape`, or an error when it asks `backend` (one that cannot drop packets) for loss."""
    if shape.loss:
        raise SplitInferError(
            f"the {backend} backend cannot emulate loss (got loss={shape.loss!r}); loss needs the tun backend"
        )
    return shape


def shape_with(shape: Shape, changes: dict[str, object]) -> Shape:
    """`shape` with some fields changed; a rate replaces a trace and a trace a rate."""
    known = [f.name for f in dataclasses.fields(Shape)]
    unknown = sorted(set(changes) - set(known))
    if unknown:
        raise SplitInferError(f"unknown link settings {unknown}; known: {known}")
    if changes.get("rate_bps") is not None and "trace" not in changes:
        changes = {**changes, "trace": None}
    if changes.get("trace") is not None and "rate_bps" not in changes:
        changes = {**changes, "rate_bps": None}
    return dataclasses.replace(shape, **changes)


def check_direction(direction: str) -> str:
    """`direction`, or an error when it is not one of `DIRECTIONS`."""
    if direction not in DIRECTIONS:
        raise SplitInferError(f"direction {direction!r} is not one of {DIRECTIONS}")
    return direction
