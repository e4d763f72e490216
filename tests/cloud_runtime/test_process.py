"""A server process started by cloud_runtime.process: pinned to the CPUs asked for, every thread."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from bundles import reference_output, tiny_input

from cloud_runtime.process import start_server_process
from edge_runtime.client import EdgeClient


def test_every_thread_of_a_pinned_server_process_runs_on_its_cpus(tiny_bundle: Path) -> None:
    cpus = {min(os.sched_getaffinity(0))}
    with start_server_process([tiny_bundle], threads=1, cpus=cpus) as server:
        with EdgeClient(tiny_bundle, server.address) as client:
            # Served: the tail's session and gRPC's threads exist by now.
            np.testing.assert_allclose(client.infer(tiny_input(0)).outputs["logits"], reference_output(tiny_input(0)), atol=1e-5)
        threads = [int(tid) for tid in os.listdir(f"/proc/{server.process.pid}/task")]
        assert len(threads) > 1
        assert all(os.sched_getaffinity(tid) == cpus for tid in threads)
