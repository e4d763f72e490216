"""Which server a client dials: one address, or several replicas its requests are balanced over.

`server` is one "host:port"; or several replicas: a comma-separated list of IP addresses with
ports ("10.0.0.5:50051,10.0.0.6:50051", IPv6 as "[fd00::5]:50051,..."), or a gRPC target URI,
"dns:///NAME:PORT" (every address NAME resolves to: a Kubernetes headless Service) or
"ipv4:..."/"ipv6:...". Replicas are balanced by gRPC itself, through the channel's service config:
its round_robin policy sends each call to the next replica whose connection is ready and whose
grpc.health.v1 status for splitinfer.v1.SplitInference is SERVING (gRPC's client-side health
checking), so a replica that is down, still loading its tails, draining after SIGTERM or saturated
(its queue full, cloud_runtime.saturation) gets no new calls, and one that comes back gets its
share again once gRPC has redialled it (transport.CHANNEL_OPTIONS: within 2 s).

A lone "host:port" stays a single connection, gRPC's default: there a saturated server answers
RESOURCE_EXHAUSTED with its retry-after hint, which the client waits out, where health checking
would take the only server out of the picture and fail calls at once. A hostname resolving to
several addresses is balanced when written as "dns:///host:port". A list takes IP addresses only:
gRPC resolves a target's name, not a list's, and an `ipv4:`/`ipv6:` target is one family; give
names as one DNS name that resolves to every replica. With TLS, replicas share one identity, as
behind a name: every certificate must name the name dialled, for a list its first address.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from protos.errors import SplitInferError
from protos.splitinfer.v1 import inference_pb2 as pb

# The service whose health decides whether a replica gets calls: what readiness asks too
# (deploy/k8s/deployment.yaml), NOT_SERVING while loading, draining or saturated.
HEALTH_SERVICE = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name
# gRPC's resolvers of lists of addresses, one family each.
_IP_SCHEMES = ("ipv4:", "ipv6:")
_BALANCED = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": HEALTH_SERVICE}}
)


@dataclass(frozen=True)
class ServerTarget:
    """What the channel dials (`target`, a gRPC target string) and the channel options it needs.
    `authority`: the name a list's replicas answer to (below), None for a name gRPC derives."""

    target: str
    replicas: bool
    authority: str | None = None

    @property
    def options(self) -> list[tuple[str, str]]:
        options = [("grpc.service_config", _BALANCED)] if self.replicas else []
        if self.authority is not None:
            options.append(("grpc.default_authority", self.authority))
        return options


def server_target(server: str) -> ServerTarget:
    """The gRPC target of `server` (see the module's doc); SplitInferError naming it when it is
    not one, before any connection is made."""
    if not isinstance(server, str) or not server.strip():
        raise SplitInferError(f"server {server!r} is not an address: write host:port, e.g. localhost:50051")
    server = server.strip()
    if server.startswith("dns:"):
        if not _has_port(server.removeprefix("dns:").lstrip("/").split("/")[-1]):
            # gRPC's DNS resolver would dial port 443 without saying so.
            raise SplitInferError(f"server {server!r} has no port; write dns:///NAME:PORT")
        return ServerTarget(server, replicas=True)
    scheme, _, listed = server.partition(":") if server.startswith(_IP_SCHEMES) else ("", "", server)
    if "," not in listed and not scheme:
        if not _has_port(server):
            raise SplitInferError(f"server {server!r} has no port; write host:port, e.g. {server}:50051")
        return ServerTarget(server, replicas=False)
    addresses = [part.strip() for part in listed.split(",")]
    families = {_ip_family(server, address) for address in addresses} | ({scheme} if scheme else set())
    if len(families) > 1:
        raise SplitInferError(f"server {server!r} mixes IPv4 and IPv6 addresses; gRPC balances one family per channel")
    # Replicas are one service with one identity: gRPC would check each one's TLS certificate
    # against the whole list, which no certificate names, so the first address stands for them.
    return ServerTarget(f"{families.pop()}:{','.join(addresses)}", replicas=True, authority=addresses[0])


def _has_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and (":" not in host or host.endswith("]")))


def _ip_family(server: str, address: str) -> str:
    """ "ipv4" or "ipv6", the family of one list item "IP:PORT" ("[IP]:PORT" for IPv6)."""
    host, _, port = address.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        raise SplitInferError(
            f"server {server!r}: {address!r} is not IP:PORT; a list of replicas takes IP addresses "
            "(for names, give one DNS name that resolves to every replica: dns:///NAME:PORT)"
        ) from None
    if not (port.isdigit() and 0 < int(port) < 65536) or (ip.version == 6 and bare == host):
        raise SplitInferError(
            f"server {server!r}: {address!r} is not IP:PORT (IPv6 as [IP]:PORT, a port from 1 to 65535)"
        )
    return f"ipv{ip.version}"
