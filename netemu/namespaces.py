"""Network namespaces for the backends that run a link between two of them (kernel, tun).

One naming scheme, `netemu-<pid>-<n>-<role>`, with one counter per process, so that the links of
both backends in one process never collide and any later link can tell the namespaces of a process
that is gone (killed before it could clean up) and remove them. Work inside a namespace is done by
a short-lived thread that enters it: setns moves only the calling thread, and what that thread
creates (a socket, a TUN file descriptor) stays bound to the namespace after it has ended.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from netemu.addresses import format_address, listen_socket
from netemu.eventloop import LoopThread
from netemu.relay import ShapedRelay, tcp_connector
from netemu.shape import Shape
from protos.errors import SplitInferError

T = TypeVar("T")

_NAME = re.compile(r"^netemu-(\d+)-\S+")
_CLONE_NEWNET = 0x40000000
_counter = itertools.count()


def new_tag() -> str:
    """`netemu-<pid>-<n>`: the prefix of one link's namespaces, unique in this process."""
    return f"netemu-{os.getpid()}-{next(_counter)}"


def run(*command: str) -> str:
    """Runs a command (ip, tc); its stdout, or a SplitInferError with its stderr."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SplitInferError(f"`{' '.join(command)}` failed: {err}") from err
    if done.returncode != 0:
        raise SplitInferError(f"`{' '.join(command)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def in_namespace(namespace: str, create: Callable[[], T]) -> T:
    """`create()` called from a thread inside `namespace`; its result or its exception here."""
    result: dict[str, object] = {}

    def enter_and_create() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{namespace}", "rb") as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into {namespace}: {os.strerror(errno)}")
            result["value"] = create()
        except BaseException as err:  # handed to the caller's thread
            result["error"] = err

    thread = threading.Thread(target=enter_and_create, name=f"netemu-setns-{namespace}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


def socket_in_namespace(namespace: str) -> socket.socket:
    """A TCP socket that lives in `namespace`."""
    return in_namespace(namespace, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))


def remove_namespaces(names: Iterable[str]) -> None:
    """Removes namespaces (and the devices and qdiscs in them); best effort, for cleanup."""
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def remove_stale_namespaces() -> None:
    """Removes namespaces left by netemu processes that no longer exist (killed before cleanup)."""
    try:
        listing = run("ip", "netns", "list")
    except SplitInferError:
        return
    for line in listing.splitlines():
        match = _NAME.match(line.strip())
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            remove_namespaces([line.split()[0]])


def stop_relays(thread: LoopThread | None, relays: list[ShapedRelay]) -> None:
    """Closes `relays` on their loop thread, then stops the thread (None: nothing was started)."""
    if thread is None:
        return
    try:
        for relay in relays:
            thread.call(relay.close)
    finally:
        thread.stop()


def relay_across(
    thread: LoopThread,
    relays: list[ShapedRelay],
    listen: tuple[str, int],
    namespaces: Mapping[str, str],
    server_address: str,
    target: tuple[str, int],
    *,
    uplink: Shape = Shape(),
    downlink: Shape = Shape(),
    seed: int = 0,
) -> tuple[ShapedRelay, str]:
    """Carries clients' TCP connections across the link between the namespaces: a relay listening
    at `listen` in this namespace connects from inside namespaces["up"] to a listener at
    `server_address` inside namespaces["down"], whose relay connects to `target` here. The edge
    relay applies `uplink`/`downlink` (what the link itself does not), the far one nothing. Each
    relay is appended to `relays` once started, so the caller can close what did start when a
    later step fails. Returns the edge relay and the address clients connect to."""
    server_listener = socket_in_namespace(namespaces["down"])
    server_listener.bind((server_address, 0))
    server_listener.listen(128)
    server_port = server_listener.getsockname()[1]
    server_relay = ShapedRelay(server_listener, tcp_connector(*target), Shape(), Shape())
    relays.append(server_relay)
    thread.call(server_relay.start)

    edge_namespace = namespaces["up"]

    async def connect_across() -> socket.socket:
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(None, socket_in_namespace, edge_namespace)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (server_address, server_port))
        except BaseException:
            sock.close()
            raise
        return sock

    listener = listen_socket(*listen)
    edge_relay = ShapedRelay(listener, connect_across, uplink, downlink, seed=seed)
    relays.append(edge_relay)
    thread.call(edge_relay.start)
    return edge_relay, format_address(*listener.getsockname()[:2])
