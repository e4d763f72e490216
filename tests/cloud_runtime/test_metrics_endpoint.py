"""/metrics served safely: on loopback unless told otherwise, over TLS (and mutual TLS) with the
standard library's ssl, behind HTTP basic auth, and without naming clients when asked not to.
Real servers, real scrapes over real sockets."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from bundles import tiny_input
from prometheus_client.parser import text_string_to_metric_families

from cloud_runtime.certs import DevCerts
from cloud_runtime.config import ServerConfig
from cloud_runtime.metrics_endpoint import BasicAuthFileError, load_basic_auth
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from protos.tls import TLSConfigError, TLSFiles


def _get(url: str, *, context: ssl.SSLContext | None = None, user: str | None = None, password: str = "") -> str:
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    with urllib.request.urlopen(request, timeout=10, context=context) as reply:
        return reply.read().decode()


def _requests_by_client(text: str) -> dict[str, float]:
    return {
        sample.labels["client"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "splitinfer_requests_total"
    }


def test_metrics_listen_on_loopback_unless_given_an_address(tiny_bundle: Path) -> None:
    with serve(ServerConfig([tiny_bundle], host="0.0.0.0", metrics_port=0)) as running:
        endpoint = running.metrics_endpoint
        assert endpoint is not None
        assert endpoint.httpd.server_address[0] == "127.0.0.1"
    with serve(ServerConfig([tiny_bundle], metrics_port=0, metrics_host="0.0.0.0")) as running:
        assert running.metrics_endpoint.httpd.server_address[0] == "0.0.0.0"


def test_metrics_over_tls_and_mutual_tls(tiny_bundle: Path, dev_certs: DevCerts, other_certs: DevCerts) -> None:
    tls = TLSFiles(dev_certs.server_cert, dev_certs.server_key)
    with serve(ServerConfig([tiny_bundle], metrics_port=0, metrics_tls=tls)) as running:
        url = f"https://localhost:{running.metrics_port}/metrics"
        trusting = ssl.create_default_context(cafile=str(dev_certs.ca))
        assert "splitinfer_in_flight_requests" in _get(url, context=trusting)
        # A scraper that trusts another CA refuses the server; plain HTTP gets no metrics.
        with pytest.raises(urllib.error.URLError):
            _get(url, context=ssl.create_default_context(cafile=str(other_certs.ca)))
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            _get(f"http://127.0.0.1:{running.metrics_port}/metrics")

    mutual = TLSFiles(dev_certs.server_cert, dev_certs.server_key, dev_certs.ca)
    with serve(ServerConfig([tiny_bundle], metrics_port=0, metrics_tls=mutual)) as running:
        url = f"https://localhost:{running.metrics_port}/metrics"
        with_cert = ssl.create_default_context(cafile=str(dev_certs.ca))
        with_cert.load_cert_chain(str(dev_certs.client_cert), str(dev_certs.client_key))
        assert "splitinfer_in_flight_requests" in _get(url, context=with_cert)
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            _get(url, context=ssl.create_default_context(cafile=str(dev_certs.ca)))


def test_a_silent_tls_client_does_not_stall_other_scrapes(tiny_bundle: Path, dev_certs: DevCerts) -> None:
    tls = TLSFiles(dev_certs.server_cert, dev_certs.server_key)
    with serve(ServerConfig([tiny_bundle], metrics_port=0, metrics_tls=tls)) as running:
        # Connections that never start their handshake sit on pool threads, not the accept loop.
        silent = [socket.create_connection(("127.0.0.1", running.metrics_port)) for _ in range(3)]
        try:
            context = ssl.create_default_context(cafile=str(dev_certs.ca))
            assert "splitinfer" in _get(f"https://localhost:{running.metrics_port}/metrics", context=context)
        finally:
            for sock in silent:
                sock.close()


def test_metrics_behind_basic_auth(tiny_bundle: Path, tmp_path: Path) -> None:
    users = tmp_path / "scrapers"
    users.write_text("# user password\nprometheus s3cret-pass\n")
    with serve(ServerConfig([tiny_bundle], metrics_port=0, metrics_basic_auth=users)) as running:
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        assert "splitinfer_in_flight_requests" in _get(url, user="prometheus", password="s3cret-pass")
        for user, password in [(None, ""), ("prometheus", "wrong"), ("nobody", "s3cret-pass")]:
            with pytest.raises(urllib.error.HTTPError) as refused:
                _get(url, user=user, password=password)
            assert refused.value.code == 401
            assert "Basic" in refused.value.headers["WWW-Authenticate"]


def test_bad_metrics_security_files_are_refused_by_name_before_serving(
    tiny_bundle: Path, tmp_path: Path, dev_certs: DevCerts
) -> None:
    (tmp_path / "bad").write_text("prometheus\n")
    (tmp_path / "empty").write_text("# nobody\n")
    for name, needle in [("bad", "line 1"), ("empty", "no users"), ("missing", "cannot read")]:
        with pytest.raises(BasicAuthFileError, match=needle):
            load_basic_auth(tmp_path / name)
    with pytest.raises(BasicAuthFileError, match="line 1"):
        serve(ServerConfig([tiny_bundle], metrics_port=0, metrics_basic_auth=tmp_path / "bad"))
    wrong_key = TLSFiles(dev_certs.server_cert, dev_certs.client_key)
    with pytest.raises(TLSConfigError, match="metrics TLS"):
        serve(ServerConfig([tiny_bundle], metrics_port=0, metrics_tls=wrong_key))
    with pytest.raises(Exception, match="metrics_port"):
        ServerConfig([tiny_bundle], metrics_tls=TLSFiles(dev_certs.server_cert, dev_certs.server_key))


def test_clients_are_not_named_when_the_client_label_is_off(tiny_bundle: Path, tokens_file: Path, tokens) -> None:
    for client_label, expected in [(True, {"alice"}), (False, {"all"})]:
        config = ServerConfig([tiny_bundle], tokens=tokens_file, metrics_port=0, metrics_client_label=client_label)
        with serve(config) as running:
            with EdgeClient(tiny_bundle, running.address, EdgeConfig(token=tokens["alice"])) as client:
                client.infer(tiny_input())
            by_client = _requests_by_client(_get(f"http://127.0.0.1:{running.metrics_port}/metrics"))
        assert set(by_client) == expected
        assert sum(by_client.values()) == 1
