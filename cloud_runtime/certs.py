"""A development certificate authority and the certificates it signs, for TLS and mutual TLS.

`write_dev_certs` writes a CA, a server certificate whose subject alternative names are the hosts
a client will dial (DNS names and IP addresses), and a client certificate for mutual TLS, each
with its key (ECDSA P-256; keys readable by their owner only). Development only: the CA key sits
beside the certificates, so anyone who can read the directory can mint certificates. Production
certificates come from the organisation's CA or cert-manager.

Needs the `cryptography` package (`pip install 'splitinfer[tls]'`), imported only when called.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protos.errors import SplitInferError

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")


@dataclass(frozen=True)
class DevCerts:
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class _Validity:
    not_before: datetime.datetime
    not_after: datetime.datetime


def write_dev_certs(
    out_dir: str | Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    client_id: str = "edge",
    days: int = 365,
    overwrite: bool = False,
) -> DevCerts:
    """Writes ca.pem/.key, server.pem/.key (SANs: `hosts`) and client.pem/.key (CN: client_id)."""
    _require_cryptography()
    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts:
        raise SplitInferError("hosts: give at least one DNS name or IP address for the server certificate")
    if days < 1:
        raise SplitInferError(f"days must be at least 1, got {days}")
    paths = _prepare_dir(Path(out_dir), overwrite)
    now = datetime.datetime.now(datetime.timezone.utc)
    # A little slack backwards, for a client whose clock runs behind.
    validity = _Validity(now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))
    keys, certs = _issue_all(hosts, client_id, validity)
    _write(paths, keys, certs)
    return paths


def _require_cryptography() -> None:
    try:
        from cryptography import x509  # noqa: F401
        from cryptography.hazmat.primitives import hashes, serialization  # noqa: F401
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: F401
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: F401
    except ImportError as err:
        raise SplitInferError(
            "making certificates needs the cryptography package: pip install 'splitinfer[tls]'"
        ) from err


def _prepare_dir(out: Path, overwrite: bool) -> DevCerts:
    """The six paths under `out`, refusing to replace existing files unless `overwrite`."""
    paths = DevCerts(*(out / name for name in FILES))
    existing = [str(p) for p in vars(paths).values() if p.exists()]
    if existing and not overwrite:
        raise SplitInferError(f"{', '.join(existing)} already exist(s); pass overwrite (--force) to replace")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SplitInferError(f"cannot create {str(out)!r}: {err.strerror or err}") from err
    return paths


def _issue_all(
    hosts: list[str], client_id: str, validity: _Validity
) -> tuple[tuple[Any, Any, Any], tuple[Any, Any, Any]]:
    """(CA, server, client keys), (their certificates): the CA self-signed, the leaves signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("splitinfer dev CA")
    ca = _issue(
        ca_name,
        ca_key,
        ca_name,
        ca_key,
        validity,
        [(x509.BasicConstraints(ca=True, path_length=0), True), (_usage(key_cert_sign=True, crl_sign=True), True)],
    )
    leaf = [(x509.BasicConstraints(ca=False, path_length=None), True), (_usage(digital_signature=True), True)]
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        _name(hosts[0]),
        server_key,
        ca_name,
        ca_key,
        validity,
        leaf
        + [
            (x509.SubjectAlternativeName([_san(x509, h) for h in hosts]), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(
        _name(client_id),
        client_key,
        ca_name,
        ca_key,
        validity,
        leaf + [(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
    )
    return (ca_key, server_key, client_key), (ca, server, client)


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "splitinfer dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _issue(
    subject: Any, key: Any, issuer: Any, issuer_key: Any, validity: _Validity, extensions: list[tuple[Any, bool]]
) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _usage(**flags: bool) -> Any:
    from cryptography import x509

    names = (
        "digital_signature content_commitment key_encipherment data_encipherment key_agreement "
        "key_cert_sign crl_sign encipher_only decipher_only"
    ).split()
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


def _write(paths: DevCerts, keys: tuple[Any, Any, Any], certs: tuple[Any, Any, Any]) -> None:
    """The certificates first, then the keys (each created 0600)."""
    from cryptography.hazmat.primitives import serialization

    for path, cert in zip((paths.ca, paths.server_cert, paths.client_cert), certs, strict=True):
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for path, key in zip((paths.ca_key, paths.server_key, paths.client_key), keys, strict=True):
        _write_key(path, key)


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created 0600, never briefly readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an overwritten file keeps its old mode otherwise
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _san(x509: Any, host: str) -> Any:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
