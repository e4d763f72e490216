"""EdgeClient against real TLS, mutual-TLS and token-guarded servers on loopback: what works, and
that each way of getting it wrong ends in a clear error rather than a hang or a vague one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundles import reference_output, tiny_input
from typer.testing import CliRunner

from cloud_runtime.certs import DevCerts
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import RunningServer, serve
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.transport import Transport
from protos.errors import ServerUnavailableError, SplitInferError
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.tls import TLSConfigError, TLSFiles
from splitinfer.app import app

TOKEN = "edge-token-4f2a9c"


def assert_serves(client: EdgeClient) -> None:
    """One unary call and one stream of two, each matching the unsplit model."""
    inputs = [tiny_input(i) for i in range(3)]
    results = [client.infer(inputs[0]), *client.infer_stream(inputs[1:])]
    for x, result in zip(inputs, results):
        np.testing.assert_allclose(result.outputs["logits"], reference_output(x), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tls_server(tiny_bundle: Path, dev_certs: DevCerts) -> Iterator[RunningServer]:
    with serve(ServerConfig([tiny_bundle], tls=TLSFiles(dev_certs.server_cert, dev_certs.server_key))) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_server(
    tiny_bundle: Path, dev_certs: DevCerts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """Mutual TLS and tokens together."""
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"phone-1 {TOKEN}\n")
    tls = TLSFiles(dev_certs.server_cert, dev_certs.server_key, dev_certs.ca)
    with serve(ServerConfig([tiny_bundle], tls=tls, tokens=tokens)) as running:
        yield running


def test_tls_serves_unary_and_stream_calls(tiny_bundle: Path, tls_server: RunningServer, dev_certs: DevCerts) -> None:
    with EdgeClient(tiny_bundle, tls_server.address, EdgeConfig(tls_ca=dev_certs.ca)) as client:
        assert client.tls == "tls"
        assert_serves(client)


def test_a_plaintext_client_of_a_tls_server_is_told_to_use_tls(tiny_bundle: Path, tls_server: RunningServer) -> None:
    plaintext = EdgeClient(tiny_bundle, tls_server.address, EdgeConfig(timeout_s=5))
    with plaintext as client, pytest.raises(ServerUnavailableError) as caught:
        client.infer(tiny_input())
    assert caught.value.status_code == grpc.StatusCode.UNAVAILABLE
    assert "UNAVAILABLE" in str(caught.value) and "does it need TLS? then pass tls_ca (--tls-ca)" in str(caught.value)


def test_a_client_that_does_not_trust_the_servers_ca_is_refused(
    tiny_bundle: Path, tls_server: RunningServer, other_certs: DevCerts
) -> None:
    with EdgeClient(tiny_bundle, tls_server.address, EdgeConfig(tls_ca=other_certs.ca, timeout_s=5)) as client:
        with pytest.raises(ServerUnavailableError, match="UNAVAILABLE") as caught:
            client.infer(tiny_input())
    # No retry mends a certificate this client refuses; the error says which one to check.
    assert "attempts" not in str(caught.value)
    assert f"not signed by the CA {str(other_certs.ca)!r} (tls_ca)" in str(caught.value)


def test_a_tls_client_of_a_plaintext_server_fails_the_handshake(
    tiny_bundle: Path, tiny_server: str, dev_certs: DevCerts
) -> None:
    with EdgeClient(tiny_bundle, tiny_server, EdgeConfig(tls_ca=dev_certs.ca, timeout_s=5)) as client:
        with pytest.raises(ServerUnavailableError, match="(?i)handshake") as caught:
            client.infer(tiny_input())
    # Not retried, and said for what it is (not "does it require client certificates?").
    assert "attempts" not in str(caught.value)
    assert "the server speaks plaintext, not TLS: connect without tls_ca" in str(caught.value)


def test_mutual_tls_with_a_token_serves_a_client_that_has_both(
    tiny_bundle: Path, mtls_server: RunningServer, dev_certs: DevCerts
) -> None:
    edge_config = EdgeConfig(
        token=TOKEN, tls_ca=dev_certs.ca, tls_cert=dev_certs.client_cert, tls_key=dev_certs.client_key
    )
    with EdgeClient(tiny_bundle, mtls_server.address, edge_config) as client:
        assert client.tls == "mutual"
        assert_serves(client)


def test_mutual_tls_refuses_a_client_without_a_certificate(
    tiny_bundle: Path, mtls_server: RunningServer, dev_certs: DevCerts
) -> None:
    edge_config = EdgeConfig(token=TOKEN, tls_ca=dev_certs.ca, timeout_s=5)
    with EdgeClient(tiny_bundle, mtls_server.address, edge_config) as client:
        with pytest.raises(ServerUnavailableError) as caught:
            client.infer(tiny_input())
    assert "does it require client certificates? then pass tls_cert and tls_key" in str(caught.value)


def test_mutual_tls_refuses_a_certificate_of_another_ca(
    tiny_bundle: Path, mtls_server: RunningServer, dev_certs: DevCerts, other_certs: DevCerts
) -> None:
    edge_config = EdgeConfig(
        token=TOKEN, tls_ca=dev_certs.ca, tls_cert=other_certs.client_cert, tls_key=other_certs.client_key, timeout_s=5
    )
    with EdgeClient(tiny_bundle, mtls_server.address, edge_config) as client:
        with pytest.raises(ServerUnavailableError, match="UNAVAILABLE") as caught:
            client.infer(tiny_input())
    assert f"does it trust the CA that signed this client's certificate {str(other_certs.client_cert)!r}" in str(
        caught.value
    )


@pytest.mark.parametrize(("token", "hint"), [(None, True), ("wrong-token", False)], ids=["no-token", "wrong-token"])
def test_a_good_certificate_without_a_good_token_is_unauthenticated(
    tiny_bundle: Path, mtls_server: RunningServer, dev_certs: DevCerts, token: str | None, hint: bool
) -> None:
    edge_config = EdgeConfig(
        token=token, tls_ca=dev_certs.ca, tls_cert=dev_certs.client_cert, tls_key=dev_certs.client_key
    )
    with EdgeClient(tiny_bundle, mtls_server.address, edge_config) as client:
        for call in (lambda: client.infer(tiny_input()), lambda: list(client.infer_stream([tiny_input()]))):
            with pytest.raises(SplitInferError) as caught:
                call()
            assert caught.value.status_code == grpc.StatusCode.UNAUTHENTICATED
            assert ("pass token (--token)" in str(caught.value)) == hint


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"token": "two words"}, SplitInferError, "token: must be non-empty printable ASCII without spaces"),
        ({"token": ""}, SplitInferError, "token: must be non-empty"),
        ({"tls_ca": "/nonexistent/ca.pem"}, TLSConfigError, "TLS CA certificate '/nonexistent/ca.pem': cannot read it"),
        ({"tls_cert": "CERT"}, TLSConfigError, "the client's TLS certificate is given without its key"),
    ],
    ids=["token-with-space", "empty-token", "missing-ca", "cert-without-key"],
)
def test_bad_security_options_are_refused_when_the_client_is_made(
    tiny_bundle: Path, dev_certs: DevCerts, options: dict, error: type, message: str
) -> None:
    options = {k: dev_certs.client_cert if v == "CERT" else v for k, v in options.items()}
    with pytest.raises(error, match=message):
        EdgeClient(tiny_bundle, "127.0.0.1:1", EdgeConfig(**options))


def test_run_command_speaks_mutual_tls_with_a_token(
    tiny_bundle: Path, mtls_server: RunningServer, dev_certs: DevCerts, tmp_path: Path
) -> None:
    x_path = tmp_path / "x.npy"
    np.save(x_path, tiny_input())
    args = [
        "run", str(tiny_bundle), "--server", mtls_server.address, "--input", str(x_path),
        "--tls-ca", str(dev_certs.ca), "--tls-cert", str(dev_certs.client_cert), "--tls-key", str(dev_certs.client_key),
    ]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(app, args, env={"SPLITINFER_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    best = int(np.argmax(reference_output(tiny_input())))
    assert f"top classes: {best} (" in result.stdout

    refused = runner.invoke(app, [*args, "--token", "not-the-token"], env={"SPLITINFER_TOKEN": TOKEN})
    assert refused.exit_code == 2
    assert refused.stderr.startswith("error: ") and "UNAUTHENTICATED: invalid token" in refused.stderr


EDGE_ONLY = r"""
import importlib.abc, sys
import numpy as np

BLOCKED = {"torch", "splitter", "onnx", "cloud_runtime", "prometheus_client", "cryptography", "grpc_health", "grpc_reflection"}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not part of the edge install")
sys.meta_path.insert(0, Blocker())

from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig

server, bundle, ca, cert, key, token, x_path = sys.argv[1:]
with EdgeClient(bundle, server, EdgeConfig(token=token, tls_ca=ca, tls_cert=cert, tls_key=key)) as client:
    print(int(np.argmax(client.infer(np.load(x_path)).outputs["logits"])))
"""


def test_the_secure_client_needs_neither_server_nor_certificate_packages(
    tiny_bundle: Path, mtls_server: RunningServer, dev_certs: DevCerts, tmp_path: Path
) -> None:
    x_path = tmp_path / "x.npy"
    np.save(x_path, tiny_input())
    args = [mtls_server.address, tiny_bundle, dev_certs.ca, dev_certs.client_cert, dev_certs.client_key, TOKEN, x_path]
    done = subprocess.run(
        [sys.executable, "-c", EDGE_ONLY, *map(str, args)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == int(np.argmax(reference_output(tiny_input())))


class _Recorder(grpc.ServerInterceptor):
    """Keeps each call's method and metadata, and leaves the call unanswered (UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    def intercept_service(self, continuation, handler_call_details):
        self.calls.append((handler_call_details.method, dict(handler_call_details.invocation_metadata)))
        return None


def test_every_call_carries_the_token_and_the_configured_metadata() -> None:
    recorder = _Recorder()
    server = grpc.server(ThreadPoolExecutor(2), interceptors=[recorder])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    config = EdgeConfig(timeout_s=10, token=TOKEN, metadata={"application": "tails", "x-tenant": "a"})
    transport = Transport(f"127.0.0.1:{port}", config, None)
    calls = {
        "Infer": lambda: transport.infer(pb.InferRequest()),
        "InferFuture": lambda: transport.infer_future(pb.InferRequest()).result(),
        "InferStream": lambda: list(transport.infer_stream(iter([pb.InferRequest()]))),
        "ListModels": transport.list_models,
        "FetchBundleFile": lambda: list(transport.fetch_bundle_file(pb.FetchBundleFileRequest(), 10)),
    }
    try:
        for call in calls.values():
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        transport.close()
        server.stop(None)
    methods = [method.rsplit("/", 1)[1] for method, _ in recorder.calls]
    assert methods == ["Infer", "Infer", "InferStream", "ListModels", "FetchBundleFile"]
    for _, metadata in recorder.calls:
        assert metadata["authorization"] == f"Bearer {TOKEN}"
        assert (metadata["application"], metadata["x-tenant"]) == ("tails", "a")
