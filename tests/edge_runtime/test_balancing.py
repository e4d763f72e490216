"""What a client dials for each way of writing its server: one address, a list of replicas or a
gRPC target URI; a bad one is refused with its reason before any connection is made. With servers
in this process: a replica whose health is NOT_SERVING gets no calls, replicas behind TLS are
reached by a list, and a DNS name is balanced over its addresses. With server processes, killed and started: tests/test_replicas.py."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
from bundles import tiny_input
from grpc_health.v1 import health_pb2
from ports import free_port

from cloud_runtime.certs import write_dev_certs
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import RunningServer, serve
from edge_runtime.balancing import HEALTH_SERVICE, server_target
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from protos.errors import ServerUnavailableError, SplitInferError
from protos.tls import TLSFiles


@pytest.mark.parametrize(
    ("server", "target", "authority"),
    [
        ("10.0.0.5:50051,10.0.0.6:50051", "ipv4:10.0.0.5:50051,10.0.0.6:50051", "10.0.0.5:50051"),
        (" 127.0.0.1:1 , 127.0.0.1:2 ", "ipv4:127.0.0.1:1,127.0.0.1:2", "127.0.0.1:1"),
        ("[fd00::5]:50051,[::1]:50052", "ipv6:[fd00::5]:50051,[::1]:50052", "[fd00::5]:50051"),
        ("dns:///splitinfer-server-headless:50051", "dns:///splitinfer-server-headless:50051", None),
        ("ipv4:127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2", "127.0.0.1:1"),
        ("ipv6:[::1]:1", "ipv6:[::1]:1", "[::1]:1"),
    ],
)
def test_several_replicas_are_balanced_round_robin_over_healthy_ones(
    server: str, target: str, authority: str | None
) -> None:
    dialled = server_target(server)
    assert dialled.replicas and dialled.target == target and dialled.authority == authority
    options = dict(dialled.options)
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert (
        config["healthCheckConfig"]
        == {"serviceName": HEALTH_SERVICE}
        == {"serviceName": "splitinfer.v1.SplitInference"}
    )
    assert options.get("grpc.default_authority") == authority


@pytest.mark.parametrize("server", ["localhost:50051", "10.0.0.5:50051", "[::1]:50051"])
def test_one_address_stays_one_connection(server: str) -> None:
    dialled = server_target(server)
    assert dialled.target == server and not dialled.replicas and dialled.options == []


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("", "is not an address"),
        ("localhost", "'localhost' has no port; write host:port, e.g. localhost:50051"),
        ("dns:///splitinfer-server-headless", "has no port; write dns:///NAME:PORT"),
        ("a.example:50051,b.example:50051", "'a.example:50051' is not IP:PORT; a list of replicas takes IP addresses"),
        ("10.0.0.5:50051,10.0.0.6", "'10.0.0.6' is not IP:PORT"),
        ("10.0.0.5:50051,10.0.0.6:70000", "a port from 1 to 65535"),
        ("10.0.0.5:50051,,10.0.0.6:50051", "'' is not IP:PORT"),
        ("10.0.0.5:50051,[::1]:50051", "mixes IPv4 and IPv6"),
        ("::1:50051,::2:50051", "IPv6 as [IP]:PORT"),
        ("ipv4:[::1]:50051", "mixes IPv4 and IPv6"),
        ("ipv4:", "'' is not IP:PORT"),
    ],
)
def test_a_bad_address_is_refused_with_its_reason(server: str, message: str) -> None:
    with pytest.raises(SplitInferError, match=re.escape(message)):
        server_target(server)


def _answered(running: RunningServer) -> int:
    return int(
        sum(
            sample.value
            for metric in running.metrics.registry.collect()  # type: ignore[union-attr]  # as a scrape reads
            for sample in metric.samples
            if sample.name == "splitinfer_requests_total" and sample.labels["code"] == "OK"
        )
    )


def test_a_replica_not_serving_gets_no_calls_until_it_serves_again(tiny_bundle: Path) -> None:
    """What a draining or saturated replica reports (NOT_SERVING) takes it out of the rotation."""
    with ExitStack() as stack:
        servers = [stack.enter_context(serve(ServerConfig([tiny_bundle], threads=1, max_workers=4))) for _ in range(3)]
        client = stack.enter_context(EdgeClient(tiny_bundle, ",".join(s.address for s in servers)))
        # The first calls go out as soon as one replica is ready; once all are, each gets its turn.
        _until(lambda: min(_spread(client, servers, 3)) > 0)
        assert _spread(client, servers, 30) == [10, 10, 10]
        servers[1].health.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)  # type: ignore[union-attr]
        _until(lambda: _spread(client, servers, 6)[1] == 0)
        assert _spread(client, servers, 30) == [15, 0, 15]
        servers[1].health.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)  # type: ignore[union-attr]
        _until(lambda: _spread(client, servers, 6)[1] > 0)
        assert _spread(client, servers, 30) == [10, 10, 10]


def test_replicas_behind_tls_answer_to_the_first_address(tiny_bundle: Path, tmp_path: Path) -> None:
    certs = write_dev_certs(tmp_path / "certs")
    tls = TLSFiles(certs.server_cert, certs.server_key)
    with ExitStack() as stack:
        servers = [
            stack.enter_context(serve(ServerConfig([tiny_bundle], threads=1, max_workers=4, tls=tls))) for _ in range(2)
        ]
        client = stack.enter_context(
            EdgeClient(tiny_bundle, ",".join(s.address for s in servers), EdgeConfig(tls_ca=certs.ca, timeout_s=5))
        )
        _until(lambda: min(_spread(client, servers, 2)) > 0)
        assert _spread(client, servers, 8) == [4, 4]


def _spread(client: EdgeClient, servers: list[RunningServer], requests: int) -> list[int]:
    """How many of `requests` more each server answered."""
    before = [_answered(s) for s in servers]
    for seed in range(requests):
        client.infer(tiny_input(seed))
    return [_answered(s) - b for s, b in zip(servers, before)]


def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    # Health reaches the client on its health-check stream, a moment after it is set.
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_dns_name_is_balanced_over_every_address_it_resolves_to(tiny_bundle: Path) -> None:
    """dns:///localhost:PORT, with one server on 127.0.0.1:PORT and one on [::1]:PORT: gRPC's
    resolver (its own c-ares) answers both loopback addresses for localhost."""
    port = free_port()
    with ExitStack() as stack:
        try:
            servers = [
                stack.enter_context(serve(ServerConfig([tiny_bundle], host=host, port=port, threads=1, max_workers=4)))
                for host in ("127.0.0.1", "::1")
            ]
        except ServerUnavailableError as err:
            pytest.skip(f"no IPv6 loopback to serve on: {err}")
        client = stack.enter_context(EdgeClient(tiny_bundle, f"dns:///localhost:{port}"))
        _until(lambda: min(_spread(client, servers, 2)) > 0)
        assert _spread(client, servers, 20) == [10, 10]
