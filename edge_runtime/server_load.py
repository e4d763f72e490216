"""The device's view of the server's load, from the replies it gets (Neurosurgeon's server-load
factor, in the device's own terms).

Each reply says how long the request waited in the server's queue (`ServerTiming.queue_ms`), how
long its batch's tail ran (`tail_ms`) and how long a request arriving now is expected to wait
(`expected_wait_ms`). Against the decision table's profile times they give the two ways load
shows: tails that run `tail_factor` × longer (a loaded server runs big batches) and a wait before
the tail starts. Both are running means (weight `weight` for the newest reply), so one slow batch
does not send the device home, and sustained overload does within a few replies. The adaptive
controller prices every split choice with them: a loaded server makes deep cuts (small tails)
cheaper relative to shallow ones, and running everything on the device cheaper than any.

While the device runs everything itself no reply comes; the exploration request the controller
sends every few seconds is the measurement that brings it back when the load drops.

A reply with a negative or non-finite time is ignored (a server bug or a hostile one must not
steer the device), and logged once.
"""

from __future__ import annotations

import logging
import math
import threading

from protos.decisions import IDLE_SERVER, Choice, ServerLoad
from protos.splitinfer.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_WEIGHT = 0.3


class ServerLoadEstimator:
    """Thread-safe running means of the tail factor and the queue wait."""

    def __init__(self, weight: float = DEFAULT_WEIGHT) -> None:
        self._weight = weight
        self._lock = threading.Lock()
        self._load = IDLE_SERVER
        self._warned = False

    @property
    def load(self) -> ServerLoad:
        return self._load

    def observe(self, timing: pb.ServerTiming, choice: Choice) -> None:
        """One reply to a request sent at `choice`."""
        values = (timing.queue_ms, timing.tail_ms, timing.expected_wait_ms)
        if not all(math.isfinite(v) and v >= 0 for v in values):
            if not self._warned:
                self._warned = True
                log.warning("ignoring a server timing that is negative or not finite: %s", timing)
            return
        queue_ms, tail_ms, expected_ms = values
        # What this request waited and what the next one is told to expect: the larger, since
        # a queue that is filling shows in the expectation before any reply has waited it out.
        wait_ms = max(queue_ms, expected_ms)
        factor = tail_ms / choice.tail_ms if choice.tail_ms > 0 else 1.0
        with self._lock:
            w = self._weight
            old = self._load
            self._load = ServerLoad(
                tail_factor=old.tail_factor + w * (factor - old.tail_factor),
                wait_ms=old.wait_ms + w * (wait_ms - old.wait_ms),
            )
