"""A head encrypted at rest (protos.head_encryption): the bundle holds only ciphertext, still
verifies and is served without the key, and the device runs it from memory with the key from a
file or the environment; a wrong key, a changed file or no key is a clear error, before any
request."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from bundles import build_bundle, reference_output, tiny_input, tiny_model
from typer.testing import CliRunner

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from edge_runtime.head import HeadRunner
from protos.bundle import load_bundle
from protos.errors import BundleError
from protos.head_encryption import (
    KEY_ENV,
    HeadKeyError,
    decrypt,
    encrypt_bundle_head,
    read_key,
    write_key,
)
from splitinfer.app import app


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "head.key"
    write_key(path)
    return path


@pytest.fixture
def sealed(tmp_path: Path, key_file: Path):
    bundle = build_bundle(tmp_path / "bundle")
    plain = bundle.head_path.read_bytes()  # type: ignore[union-attr]
    encrypted = encrypt_bundle_head(bundle.path, read_key(key_file))
    return plain, encrypted


def test_the_bundle_holds_the_head_encrypted_and_still_verifies(sealed, key_file: Path) -> None:
    plain, bundle = sealed
    assert not (bundle.path / "head.onnx").exists()
    assert bundle.manifest.head_file == "head.onnx.enc" and bundle.manifest.head_encrypted
    ciphertext = bundle.head_path.read_bytes()
    # No weight of the head is in the file: its initializers' bytes do not appear.
    weights = [init.raw_data for init in onnx.load_from_string(plain).graph.initializer if len(init.raw_data) >= 16]
    assert weights and not any(w in ciphertext for w in weights)
    assert load_bundle(bundle.path).manifest.bundle_hash == bundle.manifest.bundle_hash  # hashes checked
    assert decrypt(ciphertext, read_key(key_file), "head") == plain


def test_the_key_file_is_private_and_never_overwritten(key_file: Path) -> None:
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) == 64
    with pytest.raises(HeadKeyError, match="cannot create it"):
        write_key(key_file)


def test_a_device_runs_the_encrypted_head_with_its_key_from_a_file_or_the_environment(
    sealed, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, bundle = sealed
    x = tiny_input(3)
    # The server serves the bundle without the key: it never reads the head.
    with serve(ServerConfig([bundle.path], threads=1, max_workers=4)) as running:
        with EdgeClient(bundle.path, running.address, EdgeConfig(head_key=key_file)) as client:
            np.testing.assert_allclose(client.infer(x).outputs["logits"], reference_output(x), atol=1e-5)
        monkeypatch.setenv(KEY_ENV, key_file.read_text().strip())
        with EdgeClient(bundle.path, running.address) as client:
            np.testing.assert_allclose(client.infer(x).outputs["logits"], reference_output(x), atol=1e-5)


def test_a_wrong_or_missing_key_or_a_changed_file_is_a_clear_error(
    sealed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, bundle = sealed
    other = tmp_path / "other.key"
    write_key(other)
    with pytest.raises(BundleError, match="cannot decrypt the head: the key is not the one it was encrypted with"):
        HeadRunner(bundle, head_key=other)
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(HeadKeyError, match=f"the bundle's head is encrypted: give its key .* or in {KEY_ENV}"):
        EdgeClient(bundle.path, "127.0.0.1:1")
    monkeypatch.setenv(KEY_ENV, "not-hex")
    with pytest.raises(HeadKeyError, match=f"{KEY_ENV}: not an AES-256 key"):
        HeadRunner(bundle)
    (tmp_path / "short.key").write_text("ab" * 16)
    with pytest.raises(HeadKeyError, match="short.key'.*not an AES-256 key"):
        HeadRunner(bundle, head_key=tmp_path / "short.key")
    with pytest.raises(HeadKeyError, match="cannot read it"):
        HeadRunner(bundle, head_key=tmp_path / "missing.key")
    # A changed byte: the bundle's hash check refuses the file; GCM's tag refuses it too.
    ciphertext = bytearray(bundle.head_path.read_bytes())
    ciphertext[-20] ^= 1
    with pytest.raises(BundleError, match="cannot decrypt the head"):
        decrypt(bytes(ciphertext), read_key(tmp_path / "head.key"), "head")
    bundle.head_path.write_bytes(bytes(ciphertext))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle.path)
    with pytest.raises(BundleError, match="not an encrypted head"):
        decrypt(tiny_model().SerializeToString(), read_key(tmp_path / "head.key"), "head.onnx")


def test_export_encrypts_the_head_and_run_needs_the_key(tmp_path: Path) -> None:
    runner = CliRunner()
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), model)
    key, out = tmp_path / "keys" / "head.key", tmp_path / "bundle"
    key.parent.mkdir()
    args = ["export", str(model), "--cut", "Relu_1", "--codec", "fp32", "--allow-random-samples", "--out", str(out)]
    result = runner.invoke(app, [*args, "--encrypt-head", str(key)])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.stdout.split())  # unwrapped
    assert f"head encrypted with a new key, written to {key} → {out / 'head.onnx.enc'}" in printed
    bundle = load_bundle(out)
    assert bundle.manifest.head_encrypted and f"hash {bundle.manifest.bundle_hash[:12]}" in printed
    np.save(tmp_path / "x.npy", tiny_input())
    with serve(ServerConfig([out], threads=1, max_workers=4)) as running:
        run = ["run", str(out), "--server", running.address, "--input", str(tmp_path / "x.npy")]
        env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
        refused = runner.invoke(app, run, env=env)
        assert refused.exit_code == 2 and "the bundle's head is encrypted: give its key" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.output
        answered = runner.invoke(app, [*run, "--head-key", str(key)], env=env)
        assert answered.exit_code == 0, answered.output
    # A second export reuses the key.
    again = runner.invoke(app, [*args[:-1], str(tmp_path / "again"), "--encrypt-head", str(key)])
    assert again.exit_code == 0 and f"head encrypted with the key in {key}" in " ".join(again.stdout.split())
