"""What a client dials for each way of writing its server: one address, a list of replicas or a
gRPC target URI; a bad one is refused with its reason before any connection is made. That the
replicas share the requests is tests/test_replicas.py, with real servers."""

from __future__ import annotations

import json
import re

import pytest

from edge_runtime.balancing import HEALTH_SERVICE, server_target
from protos.errors import SplitInferError


@pytest.mark.parametrize(
    ("server", "target", "authority"),
    [
        ("10.0.0.5:50051,10.0.0.6:50051", "ipv4:10.0.0.5:50051,10.0.0.6:50051", "10.0.0.5:50051"),
        (" 127.0.0.1:1 , 127.0.0.1:2 ", "ipv4:127.0.0.1:1,127.0.0.1:2", "127.0.0.1:1"),
        ("[fd00::5]:50051,[::1]:50052", "ipv6:[fd00::5]:50051,[::1]:50052", "[fd00::5]:50051"),
        ("dns:///splitinfer-server-headless:50051", "dns:///splitinfer-server-headless:50051", None),
        ("ipv4:127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2", None),
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
    ],
)
def test_a_bad_address_is_refused_with_its_reason(server: str, message: str) -> None:
    with pytest.raises(SplitInferError, match=re.escape(message)):
        server_target(server)
