"""The kernel backend: htb between two network namespaces this test creates and removes. Skipped,
with the reason, where it cannot run (not root, no iproute2, namespaces refused)."""

from __future__ import annotations

import subprocess
import threading
import time

import numpy as np
import pytest
from netns import namespaces

from netemu.backends.kernel import (
    KernelLink,
    KernelUnavailableError,
    kernel_unavailable_reason,
)
from netemu.link import open_link
from netemu.selftest import Endpoint, download_rate_bps, flood, ping, upload_rate_bps
from netemu.shape import Shape
from netemu.traces import RateTrace

REASON = kernel_unavailable_reason()
needs_kernel = pytest.mark.skipif(REASON is not None, reason=f"kernel backend unavailable: {REASON}")


@needs_kernel
def test_rate_and_delay_through_the_kernel(endpoint: Endpoint) -> None:
    shape = Shape(rate_bps=5e6, delay_ms=10)
    with KernelLink(endpoint.address, uplink=shape, downlink=Shape(rate_bps=2e6, delay_ms=10)) as link:
        assert link.backend == "kernel"
        assert set(link.namespaces.values()) <= namespaces()
        rtts = ping(link.address, 10)
        expected = 20 + link.serialization_ms(1, "up") + link.serialization_ms(1, "down")
        assert expected - 0.5 <= float(np.median(rtts)) <= expected + 12, rtts
        # The rate is the payload rate: htb runs faster by the header share so goodput matches.
        assert upload_rate_bps(link.address, endpoint, 1.5) == pytest.approx(5e6, rel=0.05)
        assert link.wait_idle(10)
        assert download_rate_bps(link.address, 1.5) == pytest.approx(2e6, rel=0.05)
        created = set(link.namespaces.values())
    assert not created & namespaces(), "the namespaces outlived the link"


@needs_kernel
def test_tc_steps_the_rate_live(endpoint: Endpoint) -> None:
    with KernelLink(endpoint.address, uplink=Shape(rate_bps=1e6, queue_bytes=16 * 1024)) as link:
        sender = threading.Thread(target=flood, args=(link.address, 1.8), daemon=True)
        sender.start()
        time.sleep(0.8)
        changed = time.perf_counter()
        link.set_uplink(rate_bps=8e6)
        arrivals = endpoint.arrivals(timeout_s=30)
        sender.join(10)
    faster = sum(n for t, n in arrivals if changed + 0.15 <= t < changed + 0.75) * 8 / 0.6
    assert faster == pytest.approx(8e6, rel=0.1)


@needs_kernel
def test_trace_replay_steps_htb(endpoint: Endpoint) -> None:
    trace = RateTrace.from_rates([(0.0, 2e6), (0.5, 6e6)], period_s=1.0, source="steps")
    with KernelLink(endpoint.address, uplink=Shape(trace=trace)) as link:
        assert upload_rate_bps(link.address, endpoint, 2.0) == pytest.approx(4e6, rel=0.08)
        assert link.rate_bps_now("up") == pytest.approx(4e6, rel=0.01)


@needs_kernel
def test_stale_namespaces_of_dead_processes_are_removed(endpoint: Endpoint) -> None:
    # No process has this id (pids stop at 2**22): a netemu run that was killed left it.
    stale = "netemu-99999999-0-edge"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with open_link("kernel", endpoint.address) as link:
            assert link.backend == "kernel"
            assert stale not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def test_unavailable_kernel_backend_is_a_clear_error(endpoint: Endpoint) -> None:
    if REASON is None:
        pytest.skip("the kernel backend works here")
    with pytest.raises(KernelUnavailableError, match="kernel backend"):
        KernelLink(endpoint.address)
    # auto falls back to the user-space proxy.
    with open_link("auto", endpoint.address) as link:
        assert link.backend == "user"
