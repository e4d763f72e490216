"""How much of a CPU this thread may use: the CPU quota of its cgroup, where one is set.

A throttled device (a container's CPU limit, a phone's thermal governor emulated with a cgroup
quota) runs a one-thread model at the quota's share of a CPU under sustained load, yet the thread's
CPU clock, which profiling and calibration time one-thread runs by, reads the same as unthrottled:
the clock stops while the thread waits for its quota to refill. Both sides of the project read the
quota here (the splitter's profile and the device's calibration), and divide CPU-clock times by
the share, so that a device limited to 10 % of a core is priced 10× slower, as it runs.

The share is the least over the thread's cgroup and its ancestors (a quota applies to everything
under it): cgroup v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us` (−1: none), cgroup v2's
`cpu.max` ("max PERIOD": none). Read with the standard library only: no dependency exists for it.
"""

from __future__ import annotations

import math
from pathlib import Path

# Where the kernel lists the thread's cgroups (one line per hierarchy: "id:controllers:path"),
# and where the hierarchies are mounted.
_THREAD_CGROUP = Path("/proc/thread-self/cgroup")
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_share(cgroup_file: Path = _THREAD_CGROUP, root: Path = _CGROUP_ROOT) -> float:
    """CPUs this thread may use by its cgroups' quotas (1.0 = one whole CPU; inf: no quota)."""
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        return math.inf
    share = math.inf
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if "cpu" in controllers.split(","):
            share = min(share, _v1_share(root / "cpu", path))
        elif controllers == "":
            share = min(share, _v2_share(root, path), _v2_share(root / "unified", path))
    return share


def _ancestors(mount: Path, path: str) -> list[Path]:
    parts = [p for p in path.strip("/").split("/") if p]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _v1_share(mount: Path, path: str) -> float:
    share = math.inf
    for group in _ancestors(mount, path):
        quota, period = _read_int(group / "cpu.cfs_quota_us"), _read_int(group / "cpu.cfs_period_us")
        if quota is not None and period and quota > 0:
            share = min(share, quota / period)
    return share


def _v2_share(mount: Path, path: str) -> float:
    share = math.inf
    for group in _ancestors(mount, path):
        try:
            quota, period = (group / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
            share = min(share, int(quota) / int(period))
    return share


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
