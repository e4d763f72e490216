"""The CPU quota of a thread's cgroups (protos.cpu_quota), read from cgroup trees written in a
temporary directory as the kernel lays them out (v1 and v2), and from this machine's own."""

from __future__ import annotations

import math
from pathlib import Path

from protos.cpu_quota import cpu_share


def _v1_tree(root: Path, quotas: dict[str, tuple[int, int]]) -> None:
    for path, (quota, period) in quotas.items():
        group = root / "cpu" / path
        group.mkdir(parents=True, exist_ok=True)
        (group / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (group / "cpu.cfs_period_us").write_text(f"{period}\n")


def test_a_v1_quota_is_the_least_over_the_group_and_its_ancestors(tmp_path: Path) -> None:
    _v1_tree(tmp_path, {"": (-1, 100_000), "outer": (50_000, 100_000), "outer/inner": (-1, 100_000)})
    listing = tmp_path / "cgroup"
    listing.write_text("4:memory:/x\n3:cpu,cpuacct:/outer/inner\n0::/\n")
    assert cpu_share(listing, tmp_path) == 0.5
    _v1_tree(tmp_path, {"outer/inner": (10_000, 100_000)})
    assert cpu_share(listing, tmp_path) == 0.1


def test_a_v2_cpu_max_and_no_quota_at_all(tmp_path: Path) -> None:
    group = tmp_path / "app" / "edge"
    group.mkdir(parents=True)
    (tmp_path / "app" / "cpu.max").write_text("max 100000\n")
    (group / "cpu.max").write_text("25000 100000\n")
    listing = tmp_path / "cgroup"
    listing.write_text("0::/app/edge\n")
    assert cpu_share(listing, tmp_path) == 0.25
    (group / "cpu.max").write_text("max 100000\n")
    assert cpu_share(listing, tmp_path) == math.inf
    assert cpu_share(tmp_path / "no-such-file", tmp_path) == math.inf


def test_this_threads_share_is_a_number() -> None:
    share = cpu_share()
    assert share > 0
