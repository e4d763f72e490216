"""Requests balanced over replicas (edge_runtime.balancing), with real server processes on loopback.

Three replicas serve and a fourth is listed but down; 16 edge clients, each with its own channel,
send requests over all four addresses. Each replica's share is read from its own /metrics
(splitinfer_requests_total with code OK, the difference over the measured round), which counts
what the server answered, not what a client believes it sent:

- the three that serve answer within ±20 % of an even share, and the one that is down none;
- one is killed (SIGKILL) mid-run: every request is still answered, correctly, by the others (the
  client's retry sends a request that met the dead connection again, and round_robin sends it to
  a replica that is up), with 0 lost and 0 errors;
- the listed one is started: it answers requests within seconds (gRPC redials a listed address
  with a backoff of at most 2 s, then its health check must say SERVING).

The figures are printed (`pytest -s`).
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
import onnxruntime as ort
import pytest
from batched_bundles import batchable_bundle
from bundles import INPUT, OUTPUT, tiny_input, tiny_model
from ports import free_port
from prometheus_client.parser import text_string_to_metric_families

from cloud_runtime.config import ServerConfig
from cloud_runtime.process import ServerProcess, start_server_process
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.results import EdgeResult
from protos.bundle import Bundle

CLIENTS = 16
# Per client in the measured round: 16 × 45 = 720 requests, 240 a replica.
REQUESTS_PER_CLIENT = 45
SPREAD = 0.2
# A device's pace between requests, so that the run lasts long enough to kill a replica during it.
PACE_S = 0.005


class Replica:
    """A server process on fixed ports (listed in the clients' address before it starts)."""

    def __init__(self, bundle: Bundle) -> None:
        self.config = ServerConfig([bundle.path], threads=1, port=free_port(), metrics_port=free_port())
        self.address = f"127.0.0.1:{self.config.port}"
        self.process: ServerProcess | None = None

    def start(self) -> Replica:
        self.process = start_server_process(self.config)
        return self

    def answered(self) -> int:
        """Requests this replica answered OK, from its /metrics."""
        url = f"http://127.0.0.1:{self.config.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        return int(
            sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "splitinfer_requests_total" and sample.labels["code"] == "OK"
            )
        )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return batchable_bundle(tmp_path_factory.mktemp("replicas"))


@pytest.fixture(scope="module")
def expected() -> Callable[[int], np.ndarray]:
    """The unsplit model's output for input tiny_input(i)."""
    session = ort.InferenceSession(tiny_model().SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda index: session.run([OUTPUT.name], {INPUT.name: tiny_input(index)})[0]


@pytest.fixture
def replicas(bundle: Bundle) -> Iterator[list[Replica]]:
    """Four replicas, the first three started (in parallel: each takes seconds to import and load)."""
    replicas = [Replica(bundle) for _ in range(4)]
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(Replica.start, replicas[:3]))
        yield replicas
    finally:
        for replica in replicas:
            if replica.process is not None:
                replica.process.stop()


def _requests(clients: list[EdgeClient], count: int | None, stop: threading.Event | None = None) -> dict:
    """`count` requests from each client on its own thread (or until `stop`); the outcomes by
    (client, input seed): the result, or the error."""
    outcomes: dict[tuple[int, int], EdgeResult | Exception] = {}
    lock = threading.Lock()

    def run(number: int, client: EdgeClient) -> None:
        index = 0
        while (count is None or index < count) and not (stop is not None and stop.is_set()):
            seed = number * 100_000 + index
            try:
                outcome: EdgeResult | Exception = client.infer(tiny_input(seed))
            except Exception as err:  # any error is an outcome; uncaught, it would end the thread unseen
                outcome = err
            with lock:
                outcomes[(number, seed)] = outcome
            index += 1
            time.sleep(PACE_S)

    threads = [threading.Thread(target=run, args=item) for item in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a client hangs"
    return outcomes


def _wrong(outcomes: dict, expected: Callable[[int], np.ndarray]) -> list:
    return [
        key
        for key, out in outcomes.items()
        if not isinstance(out, EdgeResult) or not np.allclose(out.outputs[OUTPUT.name], expected(key[1]), atol=1e-4)
    ]


@pytest.mark.timeout(120)
def test_requests_spread_over_replicas_survive_a_kill_and_reach_a_late_one(
    bundle: Bundle, replicas: list[Replica], expected: Callable[[int], np.ndarray]
) -> None:
    first, second, third, late = replicas
    address = ",".join(replica.address for replica in replicas)
    with ExitStack() as stack:
        config = EdgeConfig(timeout_s=10)
        clients = [stack.enter_context(EdgeClient(bundle, address, config)) for _ in range(CLIENTS)]
        # Connected and health-checked everywhere before the round that is measured.
        warm = _requests(clients, 6)
        assert not _wrong(warm, expected)
        before = [replica.answered() for replica in replicas[:3]]

        outcomes = _requests(clients, REQUESTS_PER_CLIENT)
        answered = [replica.answered() - b for replica, b in zip(replicas[:3], before)]
        print(f"\n{CLIENTS} clients, {len(outcomes)} requests over 3 replicas: answered {answered}")
        assert not _wrong(outcomes, expected)
        assert sum(answered) == len(outcomes)
        even = len(outcomes) / 3
        assert all(abs(n - even) <= SPREAD * even for n in answered), answered

        # A replica killed mid-run.
        stop = threading.Event()
        killed: dict = {}

        def kill_mid_run() -> None:
            time.sleep(1.0)
            killed["before"] = [first.answered(), third.answered()]
            assert second.process is not None
            second.process.process.kill()
            second.process.process.wait(10)
            time.sleep(1.0)
            stop.set()

        killer = threading.Thread(target=kill_mid_run)
        killer.start()
        during_kill = _requests(clients, None, stop)
        killer.join()
        wrong = _wrong(during_kill, expected)
        errors = sum(isinstance(o, Exception) for o in during_kill.values())
        retried = sum(isinstance(o, EdgeResult) and o.attempts > 1 for o in during_kill.values())
        print(
            f"kill -9 of one replica mid-run: {len(during_kill)} requests, {errors} errors, {len(wrong)} wrong"
            f", {retried} answered after a retry"
        )
        assert not wrong, [during_kill[key] for key in wrong[:3]]
        # The survivors took over: they answered requests after the kill.
        assert first.answered() > killed["before"][0] and third.answered() > killed["before"][1]

        # The replica listed from the start but down until now.
        stop = threading.Event()
        waited: dict = {}

        def start_late() -> None:
            late.start()
            started = time.monotonic()
            while late.answered() == 0 and time.monotonic() - started < 15:
                time.sleep(0.05)
            waited["s"] = time.monotonic() - started
            time.sleep(0.5)
            stop.set()

        starter = threading.Thread(target=start_late)
        starter.start()
        after_start = _requests(clients, None, stop)
        starter.join()
        print(f"a replica started late answered its first request {waited['s']:.2f} s after it listened")
        assert not _wrong(after_start, expected)
        assert late.answered() > 0, "the late replica got no requests"
        assert waited["s"] < 10
