"""Network emulation for experiments on one machine: real bytes in real time through an emulated
link between the device and the server, with a rate (fixed or replayed from a trace), a one-way
delay with jitter, a queue and (tun backend) packet loss per direction.

Not needed on the device or the server: experiments and tests put a link between the two.
- `netemu.traces`: mahimahi and `seconds,Mbit/s` traces as `RateTrace`.
- `netemu.shape`: `Shape`, the setting of one direction (rates are payload rates).
- `netemu.capacity`: rate models, the bottleneck's accounting and the delay line, shared by the
  backends that shape in user space; `netemu.streams` drives them with byte streams,
  `netemu.relay` is the TCP relay every backend puts in front of its link.
- `netemu.backends.user`: `LinkEmulator`, the user-space link (an asyncio TCP relay), no privileges.
- `netemu.backends.kernel`: `KernelLink`, htb between two network namespaces, root only.
- `netemu.backends.tun`: `TunLink`, packets forwarded between two namespaces through TUN devices
  (`netemu.backends.forwarder`), with loss; the endpoints' TCP sees the emulated link. Root only.
- `netemu.link`: `open_link(backend, ...)` picks one; `netemu.selftest` measures any.

    from netemu import LinkEmulator, Shape
    with LinkEmulator("127.0.0.1:50051", uplink=Shape(rate_bps=5.85e6, delay_ms=20)) as link:
        EdgeClient(bundle, link.address) ...
"""

from __future__ import annotations

from netemu.backends.user import LinkEmulator
from netemu.link import BACKENDS, Link, open_link
from netemu.shape import Shape
from netemu.traces import RateTrace, load_trace

__all__ = ["BACKENDS", "Link", "LinkEmulator", "RateTrace", "Shape", "load_trace", "open_link"]
