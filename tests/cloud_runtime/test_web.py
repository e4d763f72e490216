"""The web port (cloud_runtime/web.py) from Python: Connect's unary protocol is a plain HTTP POST
of the serialised message, so urllib speaks it without any framing of ours. The same answers,
refusals, tokens and TLS as the native port; CORS for pages elsewhere; the bundles' files."""

from __future__ import annotations

import dataclasses
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bundles import reference_output, request_for, tiny_input
from multicut import build_multi_cut
from ports import free_port

from cloud_runtime.certs import DevCerts
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import RunningServer, serve
from protos.bundle import load_bundle, load_multi_cut_bundle
from protos.codec import decode
from protos.errors import ServerUnavailableError, SplitInferError
from protos.signing import load_signing_key, sign_bundle, write_key_pair
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.tls import TLSFiles

INFER = "/splitinfer.v1.SplitInference/Infer"
PAGE = "https://app.example"


@pytest.fixture(scope="module")
def web_server(tiny_bundle: Path) -> Iterator[RunningServer]:
    with serve(ServerConfig([tiny_bundle], threads=1, max_workers=4, web_port=0, cors_origins=(PAGE,))) as running:
        yield running


def post(url: str, body: bytes, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None):
    """(HTTP status, JSON error or the reply's bytes, headers) of one Connect unary call."""
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/proto", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:
            return reply.status, reply.read(), reply.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def test_infer_over_connect_answers_as_the_native_port(web_server: RunningServer, tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    x = tiny_input()
    status, body, _ = post(f"http://127.0.0.1:{web_server.web_port}{INFER}", request_for(bundle, x).SerializeToString())
    assert status == 200
    reply = pb.InferResponse.FromString(body)
    np.testing.assert_allclose(decode(reply.outputs[0]), reference_output(x), atol=1e-5)
    assert reply.request_id == "r" and reply.timing.tail_ms > 0


def test_a_refusal_keeps_the_servers_code_and_message(web_server: RunningServer, tiny_bundle: Path) -> None:
    request = request_for(load_bundle(tiny_bundle), tiny_input())
    request.bundle_hash = "f" * 64
    status, error, _ = post(f"http://127.0.0.1:{web_server.web_port}{INFER}", request.SerializeToString())
    assert status == 400 and error["code"] == "failed_precondition" and "bundle_hash" in error["message"]
    status, error, _ = post(f"http://127.0.0.1:{web_server.web_port}{INFER}", b"\xff\xffnot a message")
    assert status == 400 and error["code"] == "invalid_argument"
    assert "15 bytes that are not a valid splitinfer.v1.InferRequest" in error["message"]


def test_pages_of_a_listed_origin_may_call_it_and_others_not(web_server: RunningServer) -> None:
    def preflight(origin: str):
        request = urllib.request.Request(
            f"http://127.0.0.1:{web_server.web_port}{INFER}",
            method="OPTIONS",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-grpc-web,authorization",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, reply.headers
        except urllib.error.HTTPError as err:
            return err.code, err.headers

    status, headers = preflight(PAGE)
    assert status == 200 and headers["access-control-allow-origin"] == PAGE
    assert "authorization" in headers["access-control-allow-headers"].lower()
    status, headers = preflight("https://elsewhere.example")
    assert status == 400 and "access-control-allow-origin" not in headers


def test_the_bundles_manifest_and_head_are_served_and_nothing_else(
    web_server: RunningServer, tiny_bundle: Path
) -> None:
    bundle = load_bundle(tiny_bundle)
    base = f"http://127.0.0.1:{web_server.web_port}/bundles/{bundle.manifest.bundle_hash}"
    with urllib.request.urlopen(f"{base}/head.onnx", timeout=10) as reply:
        assert reply.read() == bundle.head_path.read_bytes()
    # No page is served here, so nothing needs the tail: the server's half stays its own.
    for missing in (
        f"{base}/tail.onnx",
        f"{base}/full.onnx",
        f"{base}/..%2Fmanifest.json",
        f"{base[:-4]}0000/manifest.json",
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(missing, timeout=10)
        assert refused.value.code == 404


def test_a_signed_multi_cut_bundle_serves_its_signature_and_head_segments(tmp_path: Path) -> None:
    path = build_multi_cut(tmp_path / "multi").path
    signature = sign_bundle(path, load_signing_key(write_key_pair(tmp_path / "keys")[0]))
    bundle = load_multi_cut_bundle(path)
    with serve(ServerConfig([path], threads=1, max_workers=4, web_port=0)) as server:
        for variant in (v for v in bundle.variants if v.manifest.has_tail):
            base = f"http://127.0.0.1:{server.web_port}/bundles/{variant.manifest.bundle_hash}"
            for name in ("manifest.json", signature.name, *(s.file for s in bundle.manifest.segments)):
                with urllib.request.urlopen(f"{base}/{name}", timeout=10) as reply:
                    assert reply.read() == (path / name).read_bytes(), name


def test_tokens_and_mutual_tls_guard_the_web_port_as_the_native_one(
    tiny_bundle: Path, dev_certs: DevCerts, tokens_file: Path, tokens: dict[str, str]
) -> None:
    tls = TLSFiles(dev_certs.server_cert, dev_certs.server_key, dev_certs.ca)
    config = ServerConfig([tiny_bundle], threads=1, max_workers=4, web_port=0, tls=tls, tokens=tokens_file)
    body = request_for(load_bundle(tiny_bundle), tiny_input()).SerializeToString()
    with serve(config) as running:
        url = f"https://127.0.0.1:{running.web_port}{INFER}"
        client = ssl.create_default_context(cafile=str(dev_certs.ca))
        client.load_cert_chain(str(dev_certs.client_cert), str(dev_certs.client_key))
        status, error, _ = post(url, body, context=client)
        assert status == 401 and error["code"] == "unauthenticated" and "missing credentials" in error["message"]
        status, error, _ = post(url, body, {"authorization": "Bearer wrong"}, context=client)
        assert status == 401 and "invalid token" in error["message"]
        status, _, _ = post(url, body, {"authorization": f"Bearer {tokens['alice']}"}, context=client)
        assert status == 200
        # Without a client certificate the handshake itself is refused.
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            post(
                url,
                body,
                {"authorization": f"Bearer {tokens['alice']}"},
                context=ssl.create_default_context(cafile=str(dev_certs.ca)),
            )


def test_web_options_are_checked_before_anything_starts(tiny_bundle: Path) -> None:
    with pytest.raises(SplitInferError, match="web_port 70000 is not a port"):
        ServerConfig([tiny_bundle], web_port=70000)
    with pytest.raises(SplitInferError, match="need a web_port"):
        ServerConfig([tiny_bundle], cors_origins=(PAGE,))
    with pytest.raises(SplitInferError, match="cors origin 'app.example'"):
        ServerConfig([tiny_bundle], web_port=0, cors_origins=("app.example",))
    with pytest.raises(SplitInferError, match="is not a directory"):
        ServerConfig([tiny_bundle], web_port=0, web_root=tiny_bundle / "nowhere")


def test_a_busy_web_port_fails_to_start_naming_it_and_frees_what_it_started(
    web_server: RunningServer, tiny_bundle: Path
) -> None:
    config = ServerConfig([tiny_bundle], threads=1, web_port=web_server.web_port, metrics_port=free_port())
    with pytest.raises(ServerUnavailableError, match=rf"cannot listen on 127.0.0.1:{web_server.web_port} \(web port\)"):
        serve(config)
    # The metrics port it had opened is closed again: a second try may take it.
    serve(dataclasses.replace(config, web_port=None)).stop(0)
