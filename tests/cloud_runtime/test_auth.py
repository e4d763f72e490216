"""Per-client bearer tokens: the tokens file, and a real server that refuses every call without a
good token UNAUTHENTICATED (saying what was wrong, never echoing the token) while health checks
stay open, and that attributes each accepted call to its client in metrics and logs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from bundles import request_for, tiny_input
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from typer.testing import CliRunner

from cloud_runtime.auth import TokensFileError, load_tokens
from cloud_runtime.certs import DevCerts
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import RunningServer, serve
from protos.bundle import load_bundle
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc
from protos.tls import TLSFiles
from splitinfer.app import app

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def test_a_tokens_file_maps_tokens_to_clients(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(
        "# rotation: alice holds two tokens for a while\n\nalice  old-token\nalice new-token  # since May\nbob b0b\n"
    )
    assert load_tokens(path) == {"old-token": "alice", "new-token": "alice", "b0b": "bob"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice s3cret\nbob\n", r"line 2: expected 'client-id token', found 1 field"),
        ("alice s3cret extra\n", r"line 1: expected 'client-id token', found 3 field"),
        ("alice s3cret\nbob s3cret\n", r"line 2: client 'bob' has the same token as 'alice'"),
        ("# nobody\n\n", r"has no tokens"),
    ],
    ids=["too-few", "too-many", "shared-token", "empty"],
)
def test_a_malformed_tokens_file_is_refused_naming_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(TokensFileError, match=message) as caught:
        load_tokens(path)
    assert str(path) in str(caught.value)
    assert "s3cret" not in str(caught.value)


@pytest.mark.usefixtures("restore_logging")
def test_a_missing_tokens_file_is_refused_by_the_cli_with_exit_2(tmp_path: Path, tiny_bundle: Path) -> None:
    missing = tmp_path / "nope.txt"
    result = CliRunner().invoke(app, ["serve", str(tiny_bundle), "--port", "0", "--tokens", str(missing)])
    assert result.exit_code == 2, result.output
    assert str(missing) in result.stderr and "cannot read it" in result.stderr


@pytest.fixture(scope="module")
def guarded(tiny_bundle: Path, tokens_file: Path) -> Iterator[RunningServer]:
    with serve(ServerConfig([tiny_bundle], tokens=tokens_file, metrics_port=0)) as running:
        yield running


@pytest.fixture(scope="module")
def good(tiny_bundle: Path) -> pb.InferRequest:
    return request_for(load_bundle(tiny_bundle), tiny_input())


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.parametrize(
    ("metadata", "reason", "message"),
    [
        ((), "missing", "missing credentials: send metadata 'authorization: Bearer <token>'"),
        ((("authorization", "Basic YWxpY2U6cHc="),), "malformed", "malformed credentials"),
        ((("authorization", "Bearer "),), "malformed", "malformed credentials"),
        (bearer("alice-token-0123456789") + bearer("bob-token-9876543210"), "malformed", "malformed credentials"),
        (bearer("not-a-token-we-know"), "invalid", "invalid token: not one this server accepts"),
    ],
    ids=["missing", "basic", "empty-bearer", "two-tokens", "unknown"],
)
def test_every_method_refuses_a_call_without_a_good_token(
    guarded: RunningServer, good: pb.InferRequest, scrape: Callable, metadata: tuple, reason: str, message: str
) -> None:
    before = scrape(guarded.metrics_port)("splitinfer_auth_failures_total", reason=reason)
    with grpc.insecure_channel(guarded.address) as channel:
        stub = pb_grpc.SplitInferenceStub(channel)
        calls = {
            "Infer": lambda: stub.Infer(good, timeout=5, metadata=metadata),
            "InferStream": lambda: list(stub.InferStream(iter([good]), timeout=5, metadata=metadata)),
            "ListModels": lambda: stub.ListModels(pb.ListModelsRequest(), timeout=5, metadata=metadata),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == UNAUTHENTICATED, name
            assert caught.value.details().startswith(message), name
            assert "not-a-token-we-know" not in caught.value.details()
    after = scrape(guarded.metrics_port)
    assert after("splitinfer_auth_failures_total", reason=reason) == before + len(calls)
    # Refused at the door: nothing reached the servicer.
    assert not any(key[0] == "splitinfer_requests_total" and ("client", "anonymous") in key[1] for key in after.samples)


def test_health_checks_stay_open_and_reflection_needs_a_token(guarded: RunningServer) -> None:
    with grpc.insecure_channel(guarded.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            ProtoReflectionDescriptorDatabase(channel).get_services()
        assert caught.value.code() == UNAUTHENTICATED


def test_an_accepted_call_is_served_and_attributed_to_its_client(
    guarded: RunningServer,
    good: pb.InferRequest,
    tokens: dict[str, str],
    scrape: Callable,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = scrape(guarded.metrics_port)
    with (
        grpc.insecure_channel(guarded.address) as channel,
        caplog.at_level(logging.INFO, logger="cloud_runtime.access"),
    ):
        stub = pb_grpc.SplitInferenceStub(channel)
        assert stub.Infer(good, timeout=5, metadata=bearer(tokens["alice"])).outputs
        # The scheme's case does not matter (RFC 7235).
        assert stub.ListModels(
            pb.ListModelsRequest(), timeout=5, metadata=(("authorization", f"bearer {tokens['bob']}"),)
        )
        replies = list(stub.InferStream(iter([good, good]), timeout=5, metadata=bearer(tokens["bob"])))
    assert [r.HasField("error") for r in replies] == [False, False]
    after = scrape(guarded.metrics_port)
    for client, n in (("alice", 1), ("bob", 2)):
        key = {"model": "tiny", "code": "OK", "client": client}
        assert after("splitinfer_requests_total", **key) - before("splitinfer_requests_total", **key) == n
    assert sorted(r.client for r in caplog.records if r.name == "cloud_runtime.access") == ["alice", "bob", "bob"]


def test_tokens_without_tls_are_served_with_a_warning(
    tiny_bundle: Path, dev_certs: DevCerts, caplog: pytest.LogCaptureFixture
) -> None:
    tls = TLSFiles(dev_certs.server_cert, dev_certs.server_key)
    for files, warned in ((None, True), (tls, False)):
        caplog.clear()
        config = ServerConfig([tiny_bundle], tokens={"t-1": "a"}, tls=files)
        with caplog.at_level(logging.WARNING, logger="cloud_runtime.server"), serve(config):
            pass
        assert any("tokens without TLS" in r.getMessage() for r in caplog.records) == warned
