"""Signed bundles: an Ed25519 signature, detached in BUNDLE/manifest.sig, over the bundle's manifest.

What is signed is the SHA-256 of manifest.json in canonical form (keys sorted, no whitespace), not
the bundle_hash alone: bundle_hash covers the model files and the cut, but not the codec, the
preprocessing, the outputs or the batchable flag, which change what a served bundle does just as
much. The manifest holds the SHA-256 of every model file and loading checks the files against it,
so a signature that verifies vouches for the head, the tail and the manifest together.

    BUNDLE/manifest.sig   JSON: algorithm, key_id (names the public key), manifest_sha256, signature

Keys are PEM files: the private key PKCS#8 (readable by its owner only), the public key
SubjectPublicKeyInfo. A key's id is the first 16 hex digits of the SHA-256 of its 32 raw bytes.
Needs the `cryptography` package (`pip install 'splitinfer[tls]'`), imported only when a key is
made, read or used: a device that does not verify signatures does not need it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protos.bundle import MANIFEST, load_bundles
from protos.errors import BundleError, SplitInferError

SIGNATURE_FILE = "manifest.sig"
ALGORITHM = "ed25519"
# Prefixed to the digest before signing: a bundle signature can never be replayed as, or mistaken
# for, a signature the same key made for anything else.
_CONTEXT = b"splitinfer bundle manifest v1\0"


class BundleSignatureError(BundleError):
    """A bundle's signature is missing, malformed, by an untrusted key, or does not verify."""


@dataclass(frozen=True)
class SigningKey:
    path: Path
    key_id: str
    key: Any  # cryptography's Ed25519PrivateKey


@dataclass(frozen=True)
class TrustedKey:
    path: Path
    key_id: str
    key: Any  # cryptography's Ed25519PublicKey


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as err:
        raise SplitInferError("signed bundles need the cryptography package: pip install 'splitinfer[tls]'") from err
    return ed25519


def _key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def write_key_pair(out_dir: str | Path, name: str = "bundle-signing", *, overwrite: bool = False) -> tuple[Path, Path]:
    """Writes OUT_DIR/NAME.key (private, mode 0600) and OUT_DIR/NAME.pub; returns both paths."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    if not name or "/" in name or name.startswith("."):
        raise SplitInferError(f"key name {name!r} must be a plain file name")
    out = Path(out_dir)
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    existing = [str(p) for p in (key_path, pub_path) if p.exists()]
    if existing and not overwrite:
        raise SplitInferError(f"{', '.join(existing)} already exist(s); pass overwrite (--force) to replace")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SplitInferError(f"cannot create {str(out)!r}: {err.strerror or err}") from err
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created with owner-only permissions, never world-readable for a moment.
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key_path, pub_path


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise SplitInferError(f"{what} {str(path)!r}: {err.strerror or err}") from err


def load_signing_key(path: str | Path) -> SigningKey:
    """An Ed25519 private key from a PEM file (as write_key_pair writes)."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    try:
        key = serialization.load_pem_private_key(_read_pem(path, "signing key"), password=None)
    except (ValueError, TypeError) as err:
        raise SplitInferError(f"signing key {str(path)!r} is not an unencrypted private key in PEM: {err}") from err
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SplitInferError(f"signing key {str(path)!r} is a {type(key).__name__}, not an Ed25519 key")
    return SigningKey(path, _key_id(key.public_key()), key)


def load_trusted_keys(paths: Iterable[str | Path]) -> tuple[TrustedKey, ...]:
    """Ed25519 public keys from PEM files (as write_key_pair writes)."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    keys = []
    for path in map(Path, paths):
        try:
            key = serialization.load_pem_public_key(_read_pem(path, "trusted key"))
        except (ValueError, TypeError) as err:
            raise SplitInferError(f"trusted key {str(path)!r} is not a public key in PEM: {err}") from err
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise SplitInferError(f"trusted key {str(path)!r} is a {type(key).__name__}, not an Ed25519 key")
        keys.append(TrustedKey(path, _key_id(key), key))
    return tuple(keys)


def manifest_sha256(bundle_path: str | Path) -> str:
    """SHA-256 of BUNDLE/manifest.json in canonical form: what a signature covers."""
    manifest = Path(bundle_path) / MANIFEST
    try:
        data = json.loads(manifest.read_text())
    except OSError as err:
        raise BundleError(
            f"{str(bundle_path)!r} is not a bundle: cannot read {MANIFEST}: {err.strerror or err}"
        ) from err
    except json.JSONDecodeError as err:
        raise BundleError(f"{manifest}: not valid JSON: {err}") from err
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def sign_bundle(bundle_path: str | Path, key: SigningKey) -> Path:
    """Writes BUNDLE/manifest.sig for the bundle as it is now; refuses a bundle that does not load
    (a file not matching its manifest), so a signature never vouches for a broken bundle."""
    path = Path(bundle_path)
    load_bundles(path)
    digest = manifest_sha256(path)
    signature = key.key.sign(_CONTEXT + bytes.fromhex(digest))
    record = {
        "algorithm": ALGORITHM,
        "key_id": key.key_id,
        "manifest_sha256": digest,
        "signature": base64.b64encode(signature).decode(),
    }
    out = path / SIGNATURE_FILE
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out


def verify_bundle_signature(bundle_path: str | Path, trusted: Iterable[TrustedKey]) -> TrustedKey:
    """Checks BUNDLE/manifest.sig against the `trusted` keys; returns the key that signed it.
    Raises BundleSignatureError naming the bundle otherwise. The model files are checked against
    the manifest by load_bundle(s), which a caller runs as well."""
    path = Path(bundle_path)
    trusted = tuple(trusted)
    digest = manifest_sha256(path)
    where = f"bundle {str(path)!r}"
    sig_path = path / SIGNATURE_FILE
    if not sig_path.is_file():
        raise BundleSignatureError(
            f"{where} is not signed (no {SIGNATURE_FILE}) and only bundles signed by a trusted key are accepted: "
            f"sign it with `splitinfer sign {path} --key KEY.key`"
        )
    try:
        record = json.loads(sig_path.read_text())
        algorithm, key_id, signed_digest = record["algorithm"], record["key_id"], record["manifest_sha256"]
        signature = base64.b64decode(record["signature"], validate=True)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, binascii.Error) as err:
        raise BundleSignatureError(f"{where}: {SIGNATURE_FILE} is malformed: {type(err).__name__}: {err}") from err
    if algorithm != ALGORITHM:
        raise BundleSignatureError(f"{where}: {SIGNATURE_FILE} uses algorithm {algorithm!r}, not {ALGORITHM!r}")
    if signed_digest != digest:
        raise BundleSignatureError(
            f"{where}: {MANIFEST} changed after it was signed (signed manifest sha256 {str(signed_digest)[:16]}…, "
            f"now {digest[:16]}…)"
        )
    signer = next((key for key in trusted if key.key_id == key_id), None)
    if signer is None:
        known = ", ".join(f"{key.key_id} ({key.path})" for key in trusted) or "none"
        raise BundleSignatureError(
            f"{where} is signed by key {key_id!r}, which is not a trusted key (trusted: {known})"
        )
    from cryptography.exceptions import InvalidSignature

    try:
        signer.key.verify(signature, _CONTEXT + bytes.fromhex(digest))
    except InvalidSignature:
        raise BundleSignatureError(
            f"{where}: the signature in {SIGNATURE_FILE} does not verify with key {key_id} ({signer.path})"
        ) from None
    return signer
