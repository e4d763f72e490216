"""Signed bundles, with real Ed25519 keys: a bundle signed by a trusted key is served and answers;
a tampered head, tail, manifest or signature, a key that is not trusted, or a missing signature is
refused by name when trust keys are set; an unsigned bundle serves as before when none are."""

from __future__ import annotations

import base64
import dataclasses
import json
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from bundles import build_bundle, reference_output, tiny_input
from onnx import numpy_helper
from typer.testing import CliRunner

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from protos.bundle import Bundle, load_bundle, sha256_file, write_manifest
from protos.errors import BundleError, SplitInferError
from protos.signing import (
    SIGNATURE_FILE,
    BundleSignatureError,
    load_signing_key,
    load_trusted_keys,
    sign_bundle,
    verify_bundle_signature,
    write_key_pair,
)
from splitinfer.app import app

runner = CliRunner()


@dataclasses.dataclass(frozen=True)
class KeyPair:
    key: Path
    pub: Path


@pytest.fixture(scope="module")
def alice(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return KeyPair(*write_key_pair(tmp_path_factory.mktemp("keys"), "alice"))


@pytest.fixture(scope="module")
def mallory(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return KeyPair(*write_key_pair(tmp_path_factory.mktemp("keys"), "mallory"))


def signed_bundle(directory: Path, keys: KeyPair) -> Bundle:
    bundle = build_bundle(directory)
    sign_bundle(bundle.path, load_signing_key(keys.key))
    return bundle


def test_a_key_pair_is_written_private_and_names_itself(alice: KeyPair) -> None:
    assert stat.S_IMODE(alice.key.stat().st_mode) == 0o600
    assert alice.key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    signer, (trusted,) = load_signing_key(alice.key), load_trusted_keys([alice.pub])
    assert signer.key_id == trusted.key_id and len(signer.key_id) == 16
    with pytest.raises(SplitInferError, match="alice.key.*already exist"):
        write_key_pair(alice.key.parent, "alice")


def test_a_signed_bundle_is_served_and_answers_the_edge(tmp_path: Path, alice: KeyPair) -> None:
    bundle = signed_bundle(tmp_path / "b", alice)
    assert verify_bundle_signature(bundle.path, load_trusted_keys([alice.pub])).path == alice.pub
    config = ServerConfig([bundle.path], trust_keys=[alice.pub])
    with serve(config) as running, EdgeClient(bundle.path, running.address) as client:
        result = client.infer(tiny_input())
    np.testing.assert_allclose(result.outputs["logits"], reference_output(tiny_input()), atol=1e-5, rtol=0)


def _retrain(bundle: Bundle, part: str) -> None:
    """Changes a weight of head.onnx or tail.onnx and records the new file's hash in the manifest,
    as an attacker who can write the bundle would: every hash then agrees, only the signature not."""
    path = bundle.head_path if part == "head" else bundle.tail_path
    assert path is not None
    model = onnx.load(path)
    weight = model.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) + 1, weight.name))
    onnx.save(model, path)
    write_manifest(bundle.path, dataclasses.replace(bundle.manifest, **{f"{part}_sha256": sha256_file(path)}))


def _change_codec(bundle: Bundle) -> None:
    # The codec is not part of bundle_hash: the hash alone would not notice this edit.
    changed = dataclasses.replace(bundle.manifest, codec="int8+zstd")
    assert changed.bundle_hash == bundle.manifest.bundle_hash
    write_manifest(bundle.path, changed)


def _forge_signature(bundle: Bundle) -> None:
    sig = bundle.path / SIGNATURE_FILE
    record = json.loads(sig.read_text())
    forged = bytearray(base64.b64decode(record["signature"]))
    forged[0] ^= 1
    record["signature"] = base64.b64encode(bytes(forged)).decode()
    sig.write_text(json.dumps(record))


def _swap_tail_only(bundle: Bundle) -> None:
    assert bundle.tail_path is not None
    bundle.tail_path.write_bytes(bundle.tail_path.read_bytes() + b"\0")


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda b: _retrain(b, "head"), "manifest.json changed after it was signed"),
        (lambda b: _retrain(b, "tail"), "manifest.json changed after it was signed"),
        (_change_codec, "manifest.json changed after it was signed"),
        (_forge_signature, "the signature in manifest.sig does not verify with key"),
        (_swap_tail_only, "tail.onnx does not match the sha256 in manifest.json"),
    ],
    ids=["head", "tail", "manifest", "signature", "tail-file-only"],
)
def test_a_tampered_signed_bundle_is_refused_by_name(
    tmp_path: Path, alice: KeyPair, tamper: Callable[[Bundle], None], message: str
) -> None:
    bundle = signed_bundle(tmp_path / "b", alice)
    tamper(bundle)
    with pytest.raises(BundleError, match=message) as refused:
        serve(ServerConfig([bundle.path], trust_keys=[alice.pub]))
    assert str(bundle.path) in str(refused.value)


def test_a_bundle_signed_by_a_key_not_trusted_is_refused(tmp_path: Path, alice: KeyPair, mallory: KeyPair) -> None:
    bundle = signed_bundle(tmp_path / "b", mallory)
    mallory_id = load_signing_key(mallory.key).key_id
    with pytest.raises(
        BundleSignatureError,
        match=f"bundle '{bundle.path}' is signed by key '{mallory_id}', which is not a trusted key",
    ):
        serve(ServerConfig([bundle.path], trust_keys=[alice.pub]))
    # Trusting either of two keys: the one that signed it is among them.
    with serve(ServerConfig([bundle.path], trust_keys=[alice.pub, mallory.pub])) as running:
        assert running.tails.served == {"tiny": [bundle.manifest.bundle_hash]}


def test_a_signature_copied_from_another_bundle_is_refused(tmp_path: Path, alice: KeyPair) -> None:
    signed = signed_bundle(tmp_path / "signed", alice)
    other = build_bundle(tmp_path / "other", seed=1)
    (other.path / SIGNATURE_FILE).write_bytes((signed.path / SIGNATURE_FILE).read_bytes())
    with pytest.raises(BundleSignatureError, match="manifest.json changed after it was signed"):
        verify_bundle_signature(other.path, load_trusted_keys([alice.pub]))


def test_an_unsigned_bundle_is_refused_only_when_keys_are_trusted(tmp_path: Path, alice: KeyPair) -> None:
    bundle = build_bundle(tmp_path / "b")
    with serve(ServerConfig([bundle.path])) as running:
        assert running.tails.served == {"tiny": [bundle.manifest.bundle_hash]}
    with pytest.raises(BundleSignatureError, match=f"bundle '{bundle.path}' is not signed \\(no manifest.sig\\)"):
        serve(ServerConfig([bundle.path], trust_keys=[alice.pub]))


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "manifest.sig is malformed: JSONDecodeError"),
        ('{"algorithm": "ed25519"}', "manifest.sig is malformed: KeyError"),
        (
            '{"algorithm": "ed25519", "key_id": "k", "manifest_sha256": "x", "signature": "@@"}',
            "manifest.sig is malformed: Error",
        ),
        (
            '{"algorithm": "rsa", "key_id": "k", "manifest_sha256": "x", "signature": ""}',
            "uses algorithm 'rsa', not 'ed25519'",
        ),
    ],
)
def test_a_malformed_signature_file_is_refused_by_name(
    tmp_path: Path, alice: KeyPair, content: str, message: str
) -> None:
    bundle = build_bundle(tmp_path / "b")
    (bundle.path / SIGNATURE_FILE).write_text(content)
    with pytest.raises(BundleSignatureError, match=message):
        verify_bundle_signature(bundle.path, load_trusted_keys([alice.pub]))


def test_bad_key_files_are_refused_by_name(tmp_path: Path, alice: KeyPair) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SplitInferError, match=f"trusted key '{garbage}' is not a public key in PEM"):
        load_trusted_keys([garbage])
    with pytest.raises(SplitInferError, match=f"trusted key '{tmp_path / 'missing.pub'}': No such file"):
        load_trusted_keys([tmp_path / "missing.pub"])
    # The halves swapped: a public key where the private one belongs.
    with pytest.raises(SplitInferError, match=f"signing key '{alice.pub}' is not an unencrypted private key in PEM"):
        load_signing_key(alice.pub)
    bundle = build_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="is not a bundle"):
        sign_bundle(tmp_path / "nowhere", load_signing_key(alice.key))
    _swap_tail_only(bundle)
    with pytest.raises(BundleError, match="tail.onnx does not match"):
        sign_bundle(bundle.path, load_signing_key(alice.key))
    assert not (bundle.path / SIGNATURE_FILE).exists()


def _assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in line, line


def test_the_commands_make_keys_sign_and_serve_signed_bundles_only(tmp_path: Path) -> None:
    made = runner.invoke(app, ["signing-key", str(tmp_path / "keys")])
    assert made.exit_code == 0, made.output
    key, pub = tmp_path / "keys" / "bundle-signing.key", tmp_path / "keys" / "bundle-signing.pub"
    assert f"key id {load_signing_key(key).key_id}" in made.stdout
    _assert_user_error(
        runner.invoke(app, ["signing-key", str(tmp_path / "keys")]), "bundle-signing.key", "already exist"
    )

    unsigned = build_bundle(tmp_path / "unsigned")
    _assert_user_error(
        runner.invoke(app, ["serve", str(unsigned.path), "--port", "0", "--trust-key", str(pub)]),
        f"bundle '{unsigned.path}' is not signed",
    )
    _assert_user_error(runner.invoke(app, ["sign", str(unsigned.path), "--key", str(pub)]), f"signing key '{pub}'")
    signed = runner.invoke(app, ["sign", str(unsigned.path), "--key", str(key)])
    assert signed.exit_code == 0, signed.output
    assert verify_bundle_signature(unsigned.path, load_trusted_keys([pub])).key_id == load_signing_key(key).key_id


def test_export_signs_the_bundle_it_writes(tmp_path: Path, alice: KeyPair) -> None:
    out = tmp_path / "bundle"
    args = ["export", "mobilenet_v2_035", "--input-shape", "1,3,96,96", "--cut", "features.6", "--out", str(out)]
    _assert_user_error(runner.invoke(app, [*args, "--sign-key", str(tmp_path / "missing.key")]), "missing.key")
    assert not out.exists()  # refused before the export ran
    exported = runner.invoke(app, [*args, "--sign-key", str(alice.key)])
    assert exported.exit_code == 0, exported.output
    assert f"signed with key {load_signing_key(alice.key).key_id}" in exported.stdout
    assert verify_bundle_signature(out, load_trusted_keys([alice.pub])).path == alice.pub
    load_bundle(out)
