"""TLS material from PEM files, for both runtimes: `TLSFiles` names a certificate, its key and a CA,
and `load()` reads them and checks each is the kind of PEM block it should be before gRPC sees it.

gRPC takes PEM bytes and reports a wrong file late and vaguely (a handshake that fails with no
word about which file); a missing file, a key given as the certificate, or an encrypted key (gRPC
cannot use one) is refused here instead, with the file's name. The server uses cert+key as its
identity and the CA to verify clients (mutual TLS); the client uses the CA to verify the server and
cert+key as its own identity. Torch-free and free of `cryptography`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from protos.errors import SplitInferError


class TLSConfigError(SplitInferError):
    """A TLS file is missing, unreadable, or not the PEM block it is given as."""


_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_CERTIFICATE = {"CERTIFICATE"}
# PKCS#8, and the traditional OpenSSL forms; "ENCRYPTED PRIVATE KEY" is refused with a reason.
_PRIVATE_KEY = {"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"}


@dataclass(frozen=True)
class TLSMaterial:
    """The PEM bytes gRPC's credential constructors take; None where no file was given."""

    cert: bytes | None
    key: bytes | None
    ca: bytes | None


@dataclass(frozen=True)
class TLSFiles:
    """cert and key: this side's identity (both or neither); ca: the authority that signs the peer."""

    cert: str | Path | None = None
    key: str | Path | None = None
    ca: str | Path | None = None

    def load(self, *, role: str) -> TLSMaterial:
        """Reads and checks the files; `role` ("server", "client") words the errors."""
        if (self.cert is None) != (self.key is None):
            given, missing = ("certificate", "key") if self.key is None else ("key", "certificate")
            raise TLSConfigError(f"the {role}'s TLS {given} is given without its {missing}: pass both or neither")
        return TLSMaterial(
            cert=None if self.cert is None else read_pem(self.cert, _CERTIFICATE, f"{role} TLS certificate"),
            key=None if self.key is None else read_pem(self.key, _PRIVATE_KEY, f"{role} TLS key"),
            ca=None if self.ca is None else read_pem(self.ca, _CERTIFICATE, "TLS CA certificate"),
        )


def read_pem(path: str | Path, labels: set[str], what: str) -> bytes:
    """The bytes of `path`, which must hold at least one PEM block, each with one of `labels`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TLSConfigError(f"{what} {str(path)!r}: cannot read it: {err.strerror or err}") from err
    found = [m.decode() for m in _BEGIN.findall(data)]
    if not found:
        raise TLSConfigError(f"{what} {str(path)!r} is not a PEM file (no '-----BEGIN ...-----' line)")
    if "ENCRYPTED PRIVATE KEY" in found:
        raise TLSConfigError(f"{what} {str(path)!r} is encrypted; gRPC needs an unencrypted key")
    wrong = sorted(set(found) - labels)
    if wrong:
        raise TLSConfigError(f"{what} {str(path)!r} holds {', '.join(wrong)}, expected {' or '.join(sorted(labels))}")
    return data
