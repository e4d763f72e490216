"""A bundle's head encrypted at rest: AES-256-GCM, decrypted into memory on the device.

`splitinfer export --encrypt-head KEYFILE` replaces the bundle's head.onnx (or head.ort) by
head.onnx.enc: MAGIC, a random 96-bit nonce, then the ciphertext and its 16-byte tag, with MAGIC
as associated data. The manifest names the encrypted file and its sha256, so a bundle still
verifies (and is signed, and served: the server never reads the head) without the key. The device
decrypts the file into memory and onnxruntime loads the model from those bytes; the plaintext
never touches its storage. A key is 32 random bytes, written as 64 hex digits: in a file
(`head_key` / `--head-key`) or in the environment variable SPLITINFER_HEAD_KEY.

What it protects: the head's weights in a bundle copied off a device, out of a backup or an app
package, or intercepted while being distributed, as long as the key is not stored beside it.
What it does not: anyone holding the key; anyone who can read the running process's memory (root
on the device, a debugger), where the decrypted model lives while the client runs; the rest of the
bundle (the manifest's tensor names, shapes and class names, and tail.onnx, in clear: the server
runs it, and a device falls back on it); and the model's behaviour, which its answers reveal to
whoever can query it.
GCM's tag makes a changed file, or a wrong key, fail to decrypt rather than load something else.

Needs the `cryptography` package (`pip install 'splitinfer[tls]'`), imported only when a head is
encrypted or decrypted.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from protos.bundle import ENCRYPTED_SUFFIX, Bundle, is_multi_cut, load_bundle, sha256_file, write_manifest
from protos.errors import BundleError, SplitInferError

KEY_ENV = "SPLITINFER_HEAD_KEY"
KEY_BYTES = 32
MAGIC = b"splitinfer-head-aes256gcm-1\n"
_NONCE_BYTES = 12


class HeadKeyError(SplitInferError):
    """A head key that cannot be read, is not 64 hex digits, or is missing for an encrypted head."""


def _aesgcm() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as err:
        raise SplitInferError("encrypted heads need the cryptography package: pip install 'splitinfer[tls]'") from err
    return AESGCM


def parse_key(text: str, where: str) -> bytes:
    """The key written as 64 hex digits in `text` (surrounding whitespace allowed); `where` names it."""
    digits = text.strip()
    try:
        key = bytes.fromhex(digits)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise HeadKeyError(f"{where}: not an AES-256 key (64 hex digits, as `splitinfer export --encrypt-head` writes)")
    return key


def read_key(path: str | Path) -> bytes:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise HeadKeyError(f"head key {str(path)!r}: cannot read it: {getattr(err, 'strerror', None) or err}") from err
    return parse_key(text, f"head key {str(path)!r}")


def write_key(path: str | Path) -> bytes:
    """A new random key, written to `path` (mode 0600, never over an existing file)."""
    path = Path(path)
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise HeadKeyError(f"head key {str(path)!r}: cannot create it: {err.strerror or err}") from err
    with os.fdopen(fd, "w") as out:
        out.write(key.hex() + "\n")
    return key


def export_key(path: str | Path) -> tuple[bytes, bool]:
    """The key an export encrypts with: the one in `path`, or a new one written there; and
    whether it is new."""
    return (read_key(path), False) if Path(path).exists() else (write_key(path), True)


def device_key(path: str | Path | None) -> bytes:
    """The key a device decrypts with: the file `path`, else the environment's SPLITINFER_HEAD_KEY."""
    if path is not None:
        return read_key(path)
    text = os.environ.get(KEY_ENV)
    if text is None:
        raise HeadKeyError(
            f"the bundle's head is encrypted: give its key as a file (head_key, --head-key FILE) or in {KEY_ENV}"
        )
    return parse_key(text, KEY_ENV)


def encrypt(data: bytes, key: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return MAGIC + nonce + _aesgcm()(key).encrypt(nonce, data, MAGIC)


def decrypt(data: bytes, key: bytes, where: str) -> bytes:
    """The plaintext of an encrypted head read from `where`; BundleError when it is not one, was
    changed, or `key` is not the key it was encrypted with."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _NONCE_BYTES + 16:
        raise BundleError(f"{where}: not an encrypted head (splitinfer export --encrypt-head)")
    aesgcm = _aesgcm()  # first: says what to install when cryptography is missing
    from cryptography.exceptions import InvalidTag

    nonce = data[len(MAGIC) : len(MAGIC) + _NONCE_BYTES]
    try:
        return aesgcm(key).decrypt(nonce, data[len(MAGIC) + _NONCE_BYTES :], MAGIC)
    except InvalidTag:
        raise BundleError(
            f"{where}: cannot decrypt the head: the key is not the one it was encrypted with, or the file was changed"
        ) from None


def encrypt_bundle_head(path: str | Path, key: bytes) -> Bundle:
    """Replaces the head of the bundle at `path` by its encryption under `key` and rewrites the
    manifest to name it (a new bundle_hash: sign after this); the bundle as it is now."""
    if is_multi_cut(path):
        raise SplitInferError(f"bundle {str(path)!r}: the head of a multi-cut bundle cannot be encrypted yet")
    bundle = load_bundle(path)
    manifest = bundle.manifest
    if bundle.head_path is None:
        raise SplitInferError(f"bundle {str(path)!r} has no head to encrypt (its cut sends the raw input)")
    if manifest.head_file.endswith(ENCRYPTED_SUFFIX):
        raise SplitInferError(f"bundle {str(path)!r}: its head is encrypted already")
    plain = bundle.head_path
    sealed = plain.with_name(plain.name + ENCRYPTED_SUFFIX)
    sealed.write_bytes(encrypt(plain.read_bytes(), key))
    write_manifest(path, dataclasses.replace(manifest, head_file=sealed.name, head_sha256=sha256_file(sealed)))
    plain.unlink()
    return load_bundle(path)
