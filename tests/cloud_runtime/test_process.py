"""A server process started by cloud_runtime.process: pinned to the CPUs asked for, every thread;
the `splitinfer serve` arguments it passes ask for exactly the ServerConfig it was given."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from bundles import reference_output, tiny_input
from typer.testing import CliRunner

from cloud_runtime.batch_queue import BatchingConfig
from cloud_runtime.config import ServerConfig
from cloud_runtime.process import serve_args, start_server_process
from edge_runtime.client import EdgeClient
from protos.errors import SplitInferError
from protos.tls import TLSFiles


def test_every_thread_of_a_pinned_server_process_runs_on_its_cpus(tiny_bundle: Path) -> None:
    cpus = {min(os.sched_getaffinity(0))}
    with start_server_process(ServerConfig([tiny_bundle], threads=1), cpus=cpus) as server:
        with EdgeClient(tiny_bundle, server.address) as client:
            # Served: the tail's session and gRPC's threads exist by now.
            np.testing.assert_allclose(
                client.infer(tiny_input(0)).outputs["logits"], reference_output(tiny_input(0)), atol=1e-5
            )
        threads = [int(tid) for tid in os.listdir(f"/proc/{server.process.pid}/task")]
        assert len(threads) > 1
        assert all(os.sched_getaffinity(tid) == cpus for tid in threads)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"host": "0.0.0.0", "port": 7000, "threads": 2, "max_message_bytes": 8 << 20, "grace_s": 1.5},
        {"batching": BatchingConfig(window_ms=0.5, max_batch=4, max_queue=9), "metrics_port": 0, "health_port": 0},
        {"batching": BatchingConfig(window_ms=3, fixed_window=True), "reject_non_finite": True},
        {"tls": TLSFiles(Path("s.pem"), Path("s.key"), Path("ca.pem")), "tokens": Path("tokens")},
        {"metrics_port": 9100, "metrics_host": "::1", "trust_keys": (Path("a.pub"), Path("b.pub"))},
        {
            "metrics_port": 0,
            "metrics_tls": TLSFiles(Path("m.pem"), Path("m.key"), Path("mca.pem")),
            "metrics_basic_auth": Path("scrapers"),
            "metrics_client_label": False,
        },
        {"tokens": Path("tokens"), "max_calls_per_client": 3, "idle_timeout_s": 2.5},
    ],
)
def test_serve_args_ask_the_cli_for_the_same_config(options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from splitinfer.app import app

    config = ServerConfig([Path("one"), Path("two")], **options)
    given: list[ServerConfig] = []
    monkeypatch.setattr("cloud_runtime.server.serve_forever", given.append)
    monkeypatch.setattr("cloud_runtime.logs.configure_logging", lambda log_format: None)
    result = CliRunner().invoke(app, ["serve", *serve_args(config)])
    assert result.exit_code == 0, result.output
    assert given == [config]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_workers": 4}, "max_workers 4: `splitinfer serve` has no flag for it"),
        ({"tokens": {"t-1": "a"}}, "tokens: a server process reads its tokens from a file"),
        ({"max_message_bytes": 1000}, "max_message_bytes 1000: `splitinfer serve` takes whole MiB"),
    ],
)
def test_what_a_server_process_cannot_be_asked_for_is_refused_by_name(options: dict, message: str) -> None:
    with pytest.raises(SplitInferError, match=message):
        serve_args(ServerConfig(["bundle"], **options))
