"""The emulated device: this machine's CPU made `slowdown` times slower for the head, with its own
onnxruntime thread count, on a CPU the server does not use.

On one machine the device and the server compute equally fast and offloading never pays (see
DESIGN.md), so the head must really take longer, in real time, for the request to meet the link
later, as it would on a phone. Two ways, recorded in meta.json:
- **stretch** (default, any machine): after the head runs, the calling thread sleeps
  (slowdown − 1) × the head's own time, so the head takes slowdown × as long. Exact and quiet, but
  only the head is stretched: the client's encoding runs at this machine's speed (the planner
  scales encode_ms by the slowdown too, so the prediction counts more device time than the run).
- **paced** (`[device] pace = true`): each head run takes exactly its cut's profiled time ×
  slowdown (the thread sleeps what the real run left of it), and so does the encoding of its
  tensors (the profile's encode time with its in-request overhead, × slowdown). A stretch multiplies whatever slowed
  this machine's run (other processes on a shared machine) by the slowdown; pacing makes the device
  as steady as a real one, so that a comparison between policies measures the policies. A run that
  overruns its pace is not cut short: its head_ms shows it.
- **cgroup** (`[device] cgroup = true`, root, cgroup v1 cpu controller): the thread that runs the
  head and encodes is moved into a cpu cgroup whose quota is 1/slowdown of one CPU. Head and
  encode are both slowed, but in bursts (1 ms of CPU per slowdown × 1 ms period: the kernel's
  finest grain, so work under ~1 ms is not slowed at all), and the time also includes what Python
  does on that thread. Where it cannot run, the reason is recorded and
  the stretch is used instead.

A raced request (policy "…+race") also runs the rest of the model on the device, on another
thread: paced, it takes the profile's all-on-device time minus the head's, × slowdown; stretched,
slowdown × its own time. Either way its idle part ends at once when the server's answer cancels
it. The cgroup method slows one thread only, so it cannot emulate a race.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_runtime.local_tail import Cancel, Cancelled
from edge_runtime.parts import Encoder, Head, Tail
from protos.codec import Codec
from protos.errors import SplitInferError

if TYPE_CHECKING:
    from experiment.config import DeviceConfig

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
_MIN_QUOTA_US = 1_000
_MAX_PERIOD_US = 1_000_000


class StretchedHead:
    """Wraps a head so that each run takes `factor` × its own time (sleeping the difference)."""

    def __init__(self, head: Head, factor: float) -> None:
        self._head = head
        self._extra = factor - 1.0

    def run(self, inputs: Mapping[str, np.ndarray], *cut: str) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self._head.run(inputs, *cut)
        time.sleep(max(0.0, (time.perf_counter() - start) * self._extra))
        return outputs


class PacedHead:
    """Wraps a head so that each run takes `targets_ms[cut]` (sleeping what the run left of it);
    `cut` is the one a single-cut head runs, a multi-cut head is told per run."""

    def __init__(self, head: Head, targets_ms: dict[str, float], cut: str | None = None) -> None:
        self._head = head
        self._targets_ms = targets_ms
        self._cut = cut

    def run(self, inputs: Mapping[str, np.ndarray], *cut: str) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self._head.run(inputs, *cut)
        name = cut[0] if cut else self._cut
        _idle_until(start + self._targets_ms[name] / 1e3, None, name)
        return outputs


class PacedEncoder:
    """Wraps the client's encoder so that encoding `cut`'s tensors with a codec takes
    `targets_ms[(cut, codec name)]`."""

    def __init__(self, encoder: Encoder, targets_ms: dict[tuple[str, str], float]) -> None:
        self._encoder = encoder
        self._targets_ms = targets_ms

    def encode(self, tensors: Mapping[str, np.ndarray], codec: Codec, cut: str, clamps: Mapping) -> list:
        start = time.perf_counter()
        encoded = self._encoder.encode(tensors, codec, cut, clamps)
        _idle_until(start + self._targets_ms[(cut, codec.name)] / 1e3, None, cut)
        return encoded


def _idle_until(deadline: float, cancel: Cancel | None, cut: str) -> None:
    """Sleeps until `deadline` (perf_counter); a cancel ends the sleep and the (local) run."""
    remaining = deadline - time.perf_counter()
    if cancel is None:
        time.sleep(max(0.0, remaining))
    elif cancel.wait(remaining):
        raise Cancelled(f"the local run of cut {cut!r} was stopped")


class PacedLocalTail:
    """Wraps the client's local tail so that the rest of the model from `cut` takes `targets_ms[cut]`."""

    def __init__(self, tail: Tail, targets_ms: dict[str, float]) -> None:
        self._tail = tail
        self._targets_ms = targets_ms

    def run(self, tensors: Mapping[str, np.ndarray], cut: str, cancel: Cancel | None = None) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self._tail.run(tensors, cut, cancel)
        _idle_until(start + self._targets_ms[cut] / 1e3, cancel, cut)
        return outputs


class StretchedLocalTail:
    """Wraps the client's local tail so that each run takes `factor` × its own time."""

    def __init__(self, tail: Tail, factor: float) -> None:
        self._tail = tail
        self._factor = factor

    def run(self, tensors: Mapping[str, np.ndarray], cut: str, cancel: Cancel | None = None) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self._tail.run(tensors, cut, cancel)
        _idle_until(start + (time.perf_counter() - start) * self._factor, cancel, cut)
        return outputs


@dataclass(frozen=True)
class DeviceSetup:
    """How the device was emulated in a run, as meta.json records it."""

    method: str  # "stretch", "cgroup" or "paced"
    slowdown: float
    threads: int
    edge_cpus: tuple[int, ...]
    server_cpus: tuple[int, ...]
    note: str = ""

    @property
    def stretch_factor(self) -> float:
        return self.slowdown if self.method == "stretch" else 1.0


def cgroup_unavailable_reason() -> str | None:
    """None when a cgroup v1 cpu quota can be set here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if not (CGROUP_CPU / "cpu.cfs_quota_us").is_file():
        return f"no cgroup v1 cpu controller at {CGROUP_CPU}"
    return None


@contextlib.contextmanager
def cgroup_quota(slowdown: float) -> Iterator[None]:
    """Moves the calling thread into a new cpu cgroup limited to 1/slowdown of one CPU; back to
    its previous group afterwards, and the group is removed."""
    reason = cgroup_unavailable_reason()
    if reason is not None:
        raise SplitInferError(f"cgroup CPU quota unavailable: {reason}")
    group = CGROUP_CPU / f"splitinfer-experiment-{os.getpid()}"
    tid = threading.get_native_id()
    group.mkdir(exist_ok=True)
    try:
        # The finest grain the kernel allows: its smallest quota (1 ms) per slowdown × 1 ms period.
        # Work shorter than 1 ms still runs unthrottled in one burst.
        (group / "cpu.cfs_period_us").write_text(
            str(min(_MAX_PERIOD_US, max(_MIN_QUOTA_US, round(_MIN_QUOTA_US * slowdown))))
        )
        (group / "cpu.cfs_quota_us").write_text(str(_MIN_QUOTA_US))
        # cgroup v1 moves a single thread through `tasks` (cgroup.procs would move the whole
        # process, the link emulator's thread included).
        (group / "tasks").write_text(str(tid))
        try:
            yield
        finally:
            # Threads started inside (a library's pool, gRPC's own) inherit the group: all of
            # them go back with this one, or the group could not be removed.
            for task in [tid, *map(int, (group / "tasks").read_text().split())]:
                with contextlib.suppress(OSError):  # a thread that has ended meanwhile
                    (CGROUP_CPU / "tasks").write_text(str(task))
    finally:
        group.rmdir()


def device_setup(device: DeviceConfig, cpus: tuple[set[int], set[int]]) -> DeviceSetup:
    """How the configured device is emulated here on the (device, server) CPUs: the method that
    can run (a cgroup quota falls back to the stretch, saying why) and whether it is pinned."""
    edge, server = (tuple(sorted(c)) for c in cpus)
    method, note = "stretch", ""
    if device.pace:
        method = "paced"
    elif device.cgroup:
        reason = cgroup_unavailable_reason()
        if reason is None:
            method = "cgroup"
        else:
            note = f"cgroup quota asked for but not used ({reason}): the head is stretched instead"
    if not device.pin:
        note = (note + "; " if note else "") + "not pinned: device and server share every CPU"
    return DeviceSetup(method, device.slowdown, device.threads, edge, server, note)
