"""A short run of bench/fuzz.py in CI: malformed, mutated and hostile messages against a real
server process, each answered with a proper status, the server up and bounded throughout, and a
good request answered afterwards. Also the two defences the fuzzer called for, checked directly:
bytes that are no message are INVALID_ARGUMENT, and a status message quoting a huge value stays
within what a client accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from cloud_runtime.servicer import MAX_STATUS_BYTES
from protos.splitinfer.v1 import inference_pb2 as pb

FUZZ = Path(__file__).resolve().parents[2] / "bench" / "fuzz.py"


@pytest.mark.timeout(120)
def test_the_fuzzer_finds_nothing_in_2000_inputs(tiny_bundle: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(FUZZ), "--count", "2000", "--bundle", str(tiny_bundle), "--workers", "4", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result: PASS" in result.stdout
    assert "inputs 2000 " in result.stdout


def test_bytes_that_are_no_request_are_invalid_argument(tiny_server: str) -> None:
    with grpc.insecure_channel(tiny_server) as channel:
        for method in ("Infer", "ListModels"):
            call = channel.unary_unary(f"/splitinfer.v1.SplitInference/{method}")
            with pytest.raises(grpc.RpcError) as caught:
                call(b"\xff\xff\xff", timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "3 bytes that are not a valid splitinfer.v1." in caught.value.details()
        stream = channel.stream_stream("/splitinfer.v1.SplitInference/InferStream")
        replies = [pb.InferResponse.FromString(r) for r in stream(iter([b"\xff", b""]), timeout=10)]
        assert replies[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert replies[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]  # an empty request: no model ""


def test_a_status_quoting_a_huge_value_stays_within_a_clients_limits(tiny_bundle: Path) -> None:
    with serve(ServerConfig([tiny_bundle])) as running, grpc.insecure_channel(running.address) as channel:
        call = channel.unary_unary("/splitinfer.v1.SplitInference/Infer")
        for model_id in ("m" * 100_000, "\u00e9" * 50_000):
            with pytest.raises(grpc.RpcError) as caught:
                call(pb.InferRequest(model_id=model_id).SerializeToString(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            details = caught.value.details()
            assert details.startswith("unknown model '") and "characters in all)" in details
            assert len(details.encode()) <= MAX_STATUS_BYTES
