"""The health a server reports follows what it can take: NOT_SERVING while a model's queue is full
(its requests are being refused RESOURCE_EXHAUSTED) or while open calls hold all its workers but one
(cloud_runtime.call_limits; new calls would be refused), SERVING again once there is room, on the main
port and the health port alike (they share one health servicer). A load balancer or Kubernetes'
readiness probe then sends new work elsewhere while this replica is saturated, instead of seeing
SERVING until clients time out.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

from cloud_runtime.batch_queue import BatchObserver

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Saturation:
    """A BatchObserver that passes every event on to `inner` (the metrics) and sets `services`
    of `servicer` by whether any model's queue holds `max_queue` requests, or the calls are
    saturated (`calls_saturated`)."""

    def __init__(
        self, servicer: health.HealthServicer, services: Sequence[str], max_queue: int, inner: BatchObserver | None
    ) -> None:
        self._servicer = servicer
        self._services = tuple(services)
        self._max_queue = max_queue
        self._inner = inner
        self._lock = threading.Lock()
        self._full: set[str] = set()
        self._calls_saturated = False
        self._started = False
        self._reported: bool | None = None

    @property
    def saturated(self) -> bool:
        return bool(self._full) or self._calls_saturated

    def start(self) -> None:
        """The server is listening with every model loaded: report what it can take from now on."""
        with self._lock:
            self._started = True
            self._report()

    def batch_ran(self, model_id: str, size: int) -> None:
        if self._inner is not None:
            self._inner.batch_ran(model_id, size)

    def queue_depth(self, model_id: str, depth: int) -> None:
        if self._inner is not None:
            self._inner.queue_depth(model_id, depth)
        with self._lock:
            if depth >= self._max_queue:
                self._full.add(model_id)
            else:
                self._full.discard(model_id)
            if self._started:
                self._report()

    def calls_saturated(self, saturated: bool) -> None:
        with self._lock:
            self._calls_saturated = saturated
            if self._started:
                self._report()

    def _report(self) -> None:
        serving = not self._full and not self._calls_saturated
        if serving == self._reported:
            return
        self._reported = serving
        # After enter_graceful_shutdown the servicer keeps NOT_SERVING whatever is set here.
        for service in self._services:
            self._servicer.set(service, _SERVING if serving else _NOT_SERVING)
