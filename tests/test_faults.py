"""Fault injection with real processes: every request an edge client issues ends with exactly one
result or a clear error, whatever happens to the server or the link.

- The server is killed (SIGKILL) mid-run and restarted on the same port.
- A proxy between client and server drops every connection now and then.
- The server stalls (SIGSTOP) longer than the client's deadline, then resumes.

Each test counts: requests issued, results (split / on the device), errors, lost (no outcome),
duplicated (two outcomes, or a request_id answered twice), wrong (an output that is not its own
input's). The counts are printed (`pytest -s`) and asserted: 0 lost, 0 duplicated, 0 wrong.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import pytest
from batched_bundles import batchable_bundle
from bundles import INPUT, OUTPUT, tiny_input, tiny_model
from ports import free_port

from cloud_runtime.config import ServerConfig
from cloud_runtime.process import ServerProcess, start_server_process
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.results import EdgeResult
from edge_runtime.retry import RetryPolicy
from protos.bundle import Bundle
from protos.errors import ServerUnavailableError, SplitInferError

THREADS = 4
RETRY = RetryPolicy(attempts=6, initial_backoff_s=0.05, max_backoff_s=0.4, max_elapsed_s=3.0)


@dataclass
class Tally:
    """Outcomes by request index; filled by the client threads."""

    issued: int = 0
    outcomes: dict[int, list[EdgeResult | Exception]] = field(default_factory=lambda: collections.defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, index: int, outcome: EdgeResult | Exception) -> None:
        with self.lock:
            self.outcomes[index].append(outcome)

    def summary(self, expected: Callable[[int], np.ndarray]) -> dict[str, int]:
        results = [o for outs in self.outcomes.values() for o in outs if isinstance(o, EdgeResult)]
        errors = [o for outs in self.outcomes.values() for o in outs if not isinstance(o, EdgeResult)]
        ids = collections.Counter(r.request_id for r in results)
        wrong = sum(
            1
            for index, outs in self.outcomes.items()
            for o in outs
            if isinstance(o, EdgeResult) and not np.allclose(o.outputs[OUTPUT.name], expected(index), atol=1e-4)
        )
        return {
            "issued": self.issued,
            "split": sum(not r.fallback for r in results),
            "on_device": sum(r.fallback for r in results),
            "errors": len(errors),
            "lost": sum(1 for i in range(self.issued) if not self.outcomes.get(i)),
            "duplicated": sum(len(outs) - 1 for outs in self.outcomes.values() if len(outs) > 1)
            + sum(n - 1 for n in ids.values() if n > 1),
            "wrong": wrong,
            "retried": sum(1 for r in results if r.attempts > 1),
        }


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return batchable_bundle(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def expected() -> Callable[[int], np.ndarray]:
    """The unsplit model's output for request i (input tiny_input(i))."""
    session = ort.InferenceSession(tiny_model().SerializeToString(), providers=["CPUExecutionProvider"])
    cache: dict[int, np.ndarray] = {}

    def output(index: int) -> np.ndarray:
        if index not in cache:
            cache[index] = session.run([OUTPUT.name], {INPUT.name: tiny_input(index)})[0]
        return cache[index]

    return output


def drive(client: EdgeClient, tally: Tally, during: Callable[[], None], max_requests: int = 5000) -> None:
    """Requests from THREADS threads (request i has input tiny_input(i)) until `during`, which
    injects the fault, returns."""
    stop = threading.Event()
    indices = iter(range(max_requests))
    index_lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            with index_lock:
                index = next(indices, None)
                if index is None:
                    return
                tally.issued = index + 1
            try:
                tally.add(index, client.infer(tiny_input(index)))
            except SplitInferError as err:
                tally.add(index, err)
            time.sleep(0.005)  # a device's pace, not a flood

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        during()
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a client thread hangs"


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition(), "timed out"


def _report(name: str, counts: dict[str, int]) -> None:
    print(f"\n{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@pytest.mark.timeout(120)
def test_a_server_killed_and_restarted_mid_run_loses_nothing(bundle: Bundle, expected: Callable) -> None:
    port = free_port()
    servers: list[ServerProcess] = [start_server_process(ServerConfig([bundle.path], threads=1, port=port))]
    address = servers[0].address
    with_fallback, without = Tally(), Tally()
    finished = threading.Event()
    try:
        edge_config = EdgeConfig(retry=RETRY, fallback=True, probe_interval_s=0.3, timeout_s=5)
        with (
            EdgeClient(bundle, address, edge_config) as fallback_client,
            EdgeClient(bundle, address, EdgeConfig(retry=RETRY, timeout_s=5)) as plain_client,
        ):

            def kill_and_restart() -> None:
                _wait_for(lambda: len(with_fallback.outcomes) >= 50)
                servers[0].process.send_signal(signal.SIGKILL)
                servers[0].process.wait(10)
                # Down until a request has spent its retries and the client runs tails itself;
                # only then is "back in split mode" below a return, not a fallback yet to come.
                _wait_for(lambda: fallback_client.in_fallback, 20)
                servers.append(start_server_process(ServerConfig([bundle.path], threads=1, port=port)))
                # Back in split mode, and then some more requests.
                _wait_for(lambda: not fallback_client.in_fallback, 20)
                settled = len(with_fallback.outcomes)
                _wait_for(lambda: len(with_fallback.outcomes) >= settled + 50)
                finished.set()

            plain = threading.Thread(target=drive, args=(plain_client, without, lambda: finished.wait(90)))
            plain.start()
            drive(fallback_client, with_fallback, kill_and_restart)
            plain.join(90)
    finally:
        finished.set()
        for server in servers:
            server.stop()
    counts = with_fallback.summary(expected)
    _report("kill -9 and restart, client with fallback", counts)
    assert counts["lost"] == counts["duplicated"] == counts["wrong"] == counts["errors"] == 0
    assert counts["split"] + counts["on_device"] == counts["issued"]
    assert counts["on_device"] > 0  # the server was gone longer than the retries last
    last = max(with_fallback.outcomes)
    assert not with_fallback.outcomes[last][0].fallback  # type: ignore[union-attr]
    plain_counts = without.summary(expected)
    _report("kill -9 and restart, client without fallback", plain_counts)
    assert plain_counts["lost"] == plain_counts["duplicated"] == plain_counts["wrong"] == plain_counts["on_device"] == 0
    assert plain_counts["split"] + plain_counts["errors"] == plain_counts["issued"]
    for outs in without.outcomes.values():
        for outcome in outs:
            if isinstance(outcome, Exception):
                assert isinstance(outcome, ServerUnavailableError) and "UNAVAILABLE" in str(outcome), outcome


class DroppingProxy:
    """A TCP proxy on a loopback port that relays to `target` and, on `drop()`, resets every
    connection it carries (as a NAT or a flaky radio link would)."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.loop = asyncio.new_event_loop()
        self.writers: set[asyncio.StreamWriter] = set()
        self.drops = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        ready.set()
        self.loop.run_forever()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    def drop(self) -> None:
        def reset_all() -> None:
            for writer in list(self.writers):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # Linger 0: the close sends RST, as a connection lost in the middle of the network.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                writer.transport.abort()
            self.writers.clear()
            self.drops += 1

        self.loop.call_soon_threadsafe(reset_all)

    def close(self) -> None:
        async def shut() -> None:
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server(bundle: Bundle) -> Iterator[ServerProcess]:
    with start_server_process(ServerConfig([bundle.path], threads=1)) as running:
        yield running


@pytest.mark.timeout(120)
def test_a_link_that_drops_connections_loses_nothing(bundle: Bundle, server: ServerProcess, expected: Callable) -> None:
    proxy = DroppingProxy(server.address)
    tally = Tally()
    try:
        edge_config = EdgeConfig(retry=RETRY, fallback=True, probe_interval_s=0.2, timeout_s=5)
        with EdgeClient(bundle, proxy.address, edge_config) as client:

            def keep_dropping() -> None:
                while len(tally.outcomes) < 200:
                    time.sleep(0.1)
                    proxy.drop()

            drive(client, tally, keep_dropping)
    finally:
        proxy.close()
    counts = tally.summary(expected)
    _report(f"connections reset {proxy.drops} times", counts)
    assert counts["lost"] == counts["duplicated"] == counts["wrong"] == counts["errors"] == 0
    assert counts["split"] + counts["on_device"] == counts["issued"]
    assert proxy.drops >= 3


@pytest.mark.timeout(120)
def test_a_stalled_server_sends_requests_to_the_device_until_it_resumes(
    bundle: Bundle, server: ServerProcess, expected: Callable
) -> None:
    tally, plain_tally = Tally(), Tally()
    finished = threading.Event()
    edge_config = EdgeConfig(retry=RETRY, fallback=True, probe_interval_s=0.2, timeout_s=0.5)
    with (
        EdgeClient(bundle, server.address, edge_config) as client,
        EdgeClient(bundle, server.address, EdgeConfig(retry=RETRY, timeout_s=0.5)) as plain,
    ):

        def stall() -> None:
            _wait_for(lambda: len(tally.outcomes) >= 40)
            server.process.send_signal(signal.SIGSTOP)
            try:
                time.sleep(1.5)  # three deadlines long
            finally:
                server.process.send_signal(signal.SIGCONT)
            _wait_for(lambda: not client.in_fallback, 20)
            settled = len(tally.outcomes)
            _wait_for(lambda: len(tally.outcomes) >= settled + 40)
            finished.set()

        plain_thread = threading.Thread(target=drive, args=(plain, plain_tally, lambda: finished.wait(90)))
        plain_thread.start()
        try:
            drive(client, tally, stall)
        finally:
            finished.set()
            plain_thread.join(90)
    counts = tally.summary(expected)
    _report("server stopped 1.5 s, client with fallback", counts)
    assert counts["lost"] == counts["duplicated"] == counts["wrong"] == counts["errors"] == 0
    assert counts["on_device"] > 0
    assert not tally.outcomes[max(tally.outcomes)][0].fallback  # type: ignore[union-attr]
    reasons = {o.fallback_reason.split(": ")[1] for outs in tally.outcomes.values() for o in outs if o.fallback}  # type: ignore[union-attr]
    assert reasons <= {"DEADLINE_EXCEEDED", "UNAVAILABLE"}, reasons
    plain_counts = plain_tally.summary(expected)
    _report("server stopped 1.5 s, client without fallback", plain_counts)
    assert plain_counts["lost"] == plain_counts["duplicated"] == plain_counts["wrong"] == 0
    assert plain_counts["split"] + plain_counts["errors"] == plain_counts["issued"]
