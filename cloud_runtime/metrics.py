"""Prometheus metrics of one server: what it served, how long each stage took, what it refused.

Every `ServerMetrics` has its own `CollectorRegistry`, not prometheus-client's global one, so
several servers in one process (tests, a benchmark) count separately and can each be scraped.
Labels are bounded by the server's configuration,
never by what a client sends: a model id that is not served is counted as "unknown" (a client
sending random ids must not grow the registry without end), and the client label is an id from
the tokens file ("anonymous" without auth).

Metrics (seconds and bytes, as Prometheus names them):
- splitinfer_requests_total{model, code, client}: each request (a stream counts each message) by
  gRPC status code; DEADLINE_EXCEEDED is work dropped because its deadline had passed.
- splitinfer_stage_seconds{model, stage}: histograms of decode, queue, tail, encode and total (the
  server's own account, as in ServerTiming) of each request answered OK.
- splitinfer_request_bytes_total / splitinfer_response_bytes_total{model}: serialised messages.
- splitinfer_in_flight_requests: requests being worked on now.
- splitinfer_batch_size{model}: histogram of the requests in each batch a tail ran.
- splitinfer_queue_depth{model}: requests waiting for their batch now.
- splitinfer_auth_failures_total{reason}: calls refused UNAUTHENTICATED (missing, malformed, invalid).
- splitinfer_bundle_info{model, bundle_hash}: 1 for each served bundle.

The labels are a choice: `model` and `code` are needed to tell a failing model from a healthy one;
`client` names who called, which an operator may not want in a monitoring system. With
`client_label=False` every request is counted under client "all". The registry is served over
HTTP by cloud_runtime.metrics_endpoint.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cloud_runtime.periodic import Periodic
from protos.splitinfer.v1 import inference_pb2 as pb

UNKNOWN_MODEL = "unknown"
# The client label of every request when clients are not to be named.
ALL_CLIENTS = "all"
STAGES = ("decode", "queue", "tail", "encode", "total")
# From a tenth of a millisecond (a decode of a small cut) to ten seconds (a large tail on a slow host).
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# How often queued observations are folded into the metrics (a scrape folds them at once).
FOLD_INTERVAL_S = 0.05
# Every size up to 8 (where most batches of a lightly loaded server fall), then powers of two.
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _Fold:
    """A collector that yields nothing: collecting it folds the requests not yet counted into the
    metrics, so every scrape is exact. Registered first, so it runs before the metrics are read."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self):
        self._metrics.fold()
        return iter(())


class ServerMetrics:
    """The metrics of a server serving `models` (model ids to bundle hashes).

    A finished request is counted off its own path: `observe` only queues it, and a timer thread
    (every FOLD_INTERVAL_S) or a scrape folds the queue into the metrics. Counting it in place
    (nine label lookups, six histogram observations, their locks) cost ~0.05 ms of a request on a
    one-core server (bench/overhead.py), a tenth of what the serving stack adds to gRPC's own."""

    def __init__(self, models: dict[str, Iterable[str]], *, client_label: bool = True) -> None:
        self.registry = CollectorRegistry()
        self._client_label = client_label
        self._pending: collections.deque = collections.deque()
        self._fold_lock = threading.Lock()
        self.registry.register(_Fold(self))
        self._folder = Periodic(self.fold, FOLD_INTERVAL_S, "metrics-fold")
        self._models = frozenset(models)
        self._children: dict[tuple, object] = {}
        r = self.registry
        self.requests = Counter(
            "splitinfer_requests",
            "Requests by model, gRPC status code and client",
            ["model", "code", "client"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "splitinfer_stage_seconds",
            "Server time per stage of requests answered OK",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.request_bytes = Counter("splitinfer_request_bytes", "Serialised request bytes", ["model"], registry=r)
        self.response_bytes = Counter("splitinfer_response_bytes", "Serialised response bytes", ["model"], registry=r)
        self.in_flight = Gauge("splitinfer_in_flight_requests", "Requests being worked on", registry=r)
        self.batch_size = Histogram(
            "splitinfer_batch_size", "Requests per batch a tail ran", ["model"], buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.queue = Gauge("splitinfer_queue_depth", "Requests waiting for their batch", ["model"], registry=r)
        self.auth_failures = Counter(
            "splitinfer_auth_failures", "Calls refused UNAUTHENTICATED, by reason", ["reason"], registry=r
        )
        info = Gauge("splitinfer_bundle_info", "1 for each served bundle", ["model", "bundle_hash"], registry=r)
        for model_id in models:
            # Every served model's series exist from the start (an empty queue is 0, not "no data"):
            # a lone request at an idle tail never passes through the queue.
            self._child(self.queue, model_id).set(0)
            self._child(self.batch_size, model_id)
        for model_id, hashes in models.items():
            for bundle_hash in hashes:
                info.labels(model_id, bundle_hash).set(1)

    def model_label(self, model_id: str) -> str:
        return model_id if model_id in self._models else UNKNOWN_MODEL

    def _child(self, metric, *labels: str):
        """`metric.labels(*labels)`, looked up once: prometheus-client validates and locks on every
        labels() call, ~6 µs, and a request touched nine (bench/overhead.py). Label values are
        bounded (served models, status codes, the client pool), so the cache is too."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(*labels))
        return child

    def observe(self, request: pb.InferRequest, response: pb.InferResponse | None, code_name: str, client: str) -> None:
        """One finished request: its code, bytes, and (when answered OK) its stage times, counted
        within FOLD_INTERVAL_S or at the next scrape."""
        self._pending.append((request, response, code_name, client))

    def fold(self) -> None:
        """Counts every request observed so far."""
        with self._fold_lock:
            while self._pending:
                self._count(*self._pending.popleft())

    def close(self) -> None:
        """Stops the timer thread, counting what it had not."""
        self._folder.stop()

    def _count(self, request: pb.InferRequest, response: pb.InferResponse | None, code_name: str, client: str) -> None:
        model = self.model_label(request.model_id)
        self._child(self.requests, model, code_name, client if self._client_label else ALL_CLIENTS).inc()
        self._child(self.request_bytes, model).inc(request.ByteSize())
        if response is None:
            return
        self._child(self.response_bytes, model).inc(response.ByteSize())
        if code_name == "OK":
            timing = response.timing
            stages = (timing.decode_ms, timing.queue_ms, timing.tail_ms, timing.encode_ms, timing.total_ms)
            for stage, ms in zip(STAGES, stages):
                self._child(self.stage_seconds, model, stage).observe(ms / 1e3)

    def batch_ran(self, model_id: str, size: int) -> None:
        self._child(self.batch_size, self.model_label(model_id)).observe(size)

    def queue_depth(self, model_id: str, depth: int) -> None:
        self._child(self.queue, self.model_label(model_id)).set(depth)
