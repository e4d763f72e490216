"""TLS material: `splitinfer certs` writes a CA and certificates a real TLS server and client
accept, and every wrong file (missing, the wrong kind, encrypted, a key of another certificate) is
refused before serving, naming the file."""

from __future__ import annotations

import dataclasses
import ipaddress
import stat
from pathlib import Path

import numpy as np
import pytest
from bundles import reference_output, tiny_input
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from cloud_runtime.certs import FILES, DevCerts
from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from protos.tls import TLSConfigError, TLSFiles
from splitinfer.app import app

runner = CliRunner()


def test_certs_command_writes_a_ca_server_and_client_certificate(tmp_path: Path, tiny_bundle: Path) -> None:
    out = tmp_path / "certs"
    result = runner.invoke(
        app, ["certs", str(out), "--hosts", "localhost,127.0.0.1,splitinfer.example", "--client-id", "phone-7"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for key in ("ca.key", "server.key", "client.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600, key

    ca, server, client = (
        x509.load_pem_x509_certificate((out / f"{n}.pem").read_bytes()) for n in ("ca", "server", "client")
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "splitinfer.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "phone-7"
    for cert in (server, client):
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)

    # What it wrote works: mutual TLS end to end.
    paths = DevCerts(*(out / name for name in FILES))
    with serve(ServerConfig([tiny_bundle], tls=TLSFiles(paths.server_cert, paths.server_key, paths.ca))) as running:
        edge_config = EdgeConfig(tls_ca=paths.ca, tls_cert=paths.client_cert, tls_key=paths.client_key)
        with EdgeClient(tiny_bundle, running.address, edge_config) as edge:
            logits = edge.infer(tiny_input()).outputs["logits"]
    np.testing.assert_allclose(logits, reference_output(tiny_input()), atol=1e-5, rtol=0)

    again = runner.invoke(app, ["certs", str(out)])
    assert again.exit_code == 2 and "already exist" in again.stderr and "--force" in again.stderr
    assert runner.invoke(app, ["certs", str(out), "--force"]).exit_code == 0


def test_certs_command_needs_a_host(tmp_path: Path) -> None:
    result = runner.invoke(app, ["certs", str(tmp_path / "c"), "--hosts", " , "])
    assert result.exit_code == 2 and "at least one DNS name or IP address" in result.stderr


def _wrong_files(certs: DevCerts, tmp_path: Path) -> dict[str, tuple[TLSFiles, str, str]]:
    """name → (files for a server, the file the error must name, what it must say)."""
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    text = tmp_path / "notes.txt"
    text.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    good = TLSFiles(certs.server_cert, certs.server_key, certs.ca)
    return {
        "missing-cert": (dataclasses.replace(good, cert=missing), str(missing), "cannot read it"),
        "missing-ca": (dataclasses.replace(good, ca=missing), str(missing), "cannot read it"),
        "not-pem": (dataclasses.replace(good, cert=text), str(text), "is not a PEM file"),
        "key-as-cert": (
            dataclasses.replace(good, cert=certs.server_key),
            str(certs.server_key),
            "holds PRIVATE KEY, expected CERTIFICATE",
        ),
        "cert-as-key": (dataclasses.replace(good, key=certs.ca), str(certs.ca), "holds CERTIFICATE, expected"),
        "encrypted-key": (dataclasses.replace(good, key=encrypted), str(encrypted), "is encrypted"),
        "another-certs-key": (
            dataclasses.replace(good, key=certs.client_key),
            str(certs.client_key),
            "is the key the certificate's?",
        ),
        "no-key": (dataclasses.replace(good, key=None), "", "certificate is given without its key"),
        "ca-only": (TLSFiles(ca=certs.ca), "", "needs a certificate and its key"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing-cert",
        "missing-ca",
        "not-pem",
        "key-as-cert",
        "cert-as-key",
        "encrypted-key",
        "another-certs-key",
        "no-key",
        "ca-only",
    ],
)
def test_a_wrong_tls_file_is_refused_before_serving(
    case: str, dev_certs: DevCerts, tmp_path: Path, tiny_bundle: Path
) -> None:
    files, named, message = _wrong_files(dev_certs, tmp_path)[case]
    with pytest.raises(TLSConfigError, match=message.replace("?", r"\?")) as caught:
        serve(ServerConfig([tiny_bundle], tls=files))
    assert named in str(caught.value)


@pytest.mark.usefixtures("restore_logging")
def test_the_cli_answers_a_wrong_tls_file_with_exit_2(dev_certs: DevCerts, tmp_path: Path, tiny_bundle: Path) -> None:
    missing = tmp_path / "server.pem"
    args = [
        "serve",
        str(tiny_bundle),
        "--port",
        "0",
        "--tls-cert",
        str(missing),
        "--tls-key",
        str(dev_certs.server_key),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: server TLS certificate") and str(missing) in result.stderr
