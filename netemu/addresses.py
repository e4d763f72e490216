"""Addresses as the emulator's users write them ("host:port", "[v6]:port") and the listening
sockets made from them: parsed once where a link is opened, with an error that names the address
and the rule, and formatted back the same way for `Link.address`.
"""

from __future__ import annotations

import socket

from protos.errors import SplitInferError


def parse_address(address: str, *, any_port: bool = False) -> tuple[str, int]:
    """ "host:port" or "[v6]:port" → (host, port); port 0 (any free port) only when `any_port`."""
    host, sep, port = str(address).rpartition(":")
    host = host.strip("[]")
    lowest = 0 if any_port else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise SplitInferError(f"address {address!r} is not HOST:PORT")
    return host, int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_socket(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as err:
        raise SplitInferError(f"cannot listen on {format_address(host, port)}: {err.strerror}") from err
