"""Network emulation for experiments on one machine: real bytes in real time through an emulated
link between the device and the server, with a rate (fixed or replayed from a trace), a one-way
delay with jitter and a queue per direction.

Not needed on the device or the server: experiments and tests put a link between the two.
`netemu.traces` reads mahimahi and `seconds,Mbit/s` traces.
"""

from __future__ import annotations

from netemu.traces import RateTrace, load_trace

__all__ = ["RateTrace", "load_trace"]
