"""The interface every emulator backend offers, and `open_link`, which picks one by name.

"user" is the asyncio relay (netemu/backends/user.py): no privileges, any machine. "kernel" shapes
the rate with htb between two network namespaces (netemu/backends/kernel.py): root only. "tun"
forwards the packets between two namespaces in user space (netemu/backends/tun.py): root only, the
one backend whose endpoints' TCP sees the emulated RTT, and the one that emulates loss. "auto"
takes the kernel when it can run here and the user backend otherwise, or the tun backend when a
shape asks for loss and it can run here; `Link.backend` says which.
"""

from __future__ import annotations

from typing import Protocol

from netemu.shape import Shape
from protos.errors import SplitInferError

BACKENDS = ("user", "kernel", "tun", "auto")


class Link(Protocol):
    """A running emulated link between clients (who connect to `address`) and a target."""

    backend: str
    address: str
    target: str

    @property
    def uplink(self) -> Shape: ...

    @property
    def downlink(self) -> Shape: ...

    def set_uplink(self, **changes: object) -> Shape: ...

    def set_downlink(self, **changes: object) -> Shape: ...

    def rate_bps_now(self, direction: str = "up", window_s: float = 1.0) -> float | None: ...

    def trace_origin_s(self, direction: str = "up") -> float | None: ...

    def serialization_ms(self, payload_bytes: int, direction: str = "up") -> float: ...

    def wait_idle(self, timeout_s: float = 10.0) -> bool: ...

    def close(self) -> None: ...

    def __enter__(self) -> Link: ...

    def __exit__(self, *exc: object) -> None: ...


def open_link(
    backend: str,
    target: str,
    uplink: Shape | None = None,
    downlink: Shape | None = None,
    *,
    listen: str = "127.0.0.1:0",
    seed: int = 0,
) -> Link:
    """Starts an emulated link to `target` ("host:port") with the named backend; clients connect to
    its `address` (`listen`; port 0 picks a free one)."""
    if backend not in BACKENDS:
        raise SplitInferError(f"backend {backend!r} is not one of {BACKENDS}")
    from netemu.backends.kernel import KernelLink, kernel_unavailable_reason
    from netemu.backends.tun import TunLink, tun_unavailable_reason

    lossy = any(shape is not None and shape.loss for shape in (uplink, downlink))
    if backend == "tun" or (backend == "auto" and lossy and tun_unavailable_reason() is None):
        return TunLink(target, uplink, downlink, listen=listen, seed=seed)
    if backend == "kernel" or (backend == "auto" and kernel_unavailable_reason() is None):
        return KernelLink(target, uplink, downlink, listen=listen, seed=seed)
    from netemu.backends.user import LinkEmulator

    return LinkEmulator(target, uplink, downlink, listen=listen, seed=seed)
