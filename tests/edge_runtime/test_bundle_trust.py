"""The edge verifies what it runs. Every manifest field that changes an answer is covered by the
bundle hash: an edit that keeps the old hash is refused when the bundle loads (on the device and
on the server), and an edit re-hashed to pass that check is refused by a server holding the
original. With trust keys the device refuses, before any head runs (fallback included), a bundle
that is unsigned, signed by another key, or edited after signing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from bundles import PREPROCESS, build_bundle, tiny_input

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from protos.bundle import MANIFEST, load_bundle, write_manifest
from protos.errors import BundleError, BundleMismatchError
from protos.signing import BundleSignatureError, load_signing_key, sign_bundle, write_key_pair


def _edit(data: dict, field: str) -> None:
    """An edit of `field` a tamperer might make, each one a different answer."""
    if field == "preprocess":
        data["preprocess"]["mean"] = [0.0, 0.0, 0.0]
    elif field in ("inputs", "outputs", "cut"):
        data[field][0]["name"] = data[field][0]["name"] + "x"
    elif field == "batchable":
        data["batchable"] = not data["batchable"]
    elif field == "labels":
        data["labels"] = [f"class {i}" for i in range(len(data["labels"]))]
    elif field in ("head_sha256", "tail_sha256"):
        data[field] = "0" * 64
    else:
        data[field] = data[field] + "-edited"


LABELS = ("a", "b", "c", "d")
FIELDS = [
    "model_id",
    "cut_name",
    "inputs",
    "cut",
    "outputs",
    "preprocess",
    "batchable",
    "labels",
    "head_sha256",
    "tail_sha256",
]


@pytest.fixture
def bundle(tmp_path: Path):
    built = build_bundle(tmp_path / "b", labels=LABELS)
    assert built.manifest.preprocess is not None and built.manifest.labels is not None
    return built


@pytest.mark.parametrize("field", FIELDS)
def test_an_edited_manifest_is_refused_where_it_loads(field: str, bundle) -> None:
    data = json.loads((bundle.path / MANIFEST).read_text())
    _edit(data, field)
    (bundle.path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError):
        load_bundle(bundle.path)


REHASHED = {
    "preprocess": {"preprocess": dataclasses.replace(PREPROCESS, mean=(0.0, 0.0, 0.0))},
    "labels": {"labels": ("w", "x", "y", "z")},
    "batchable": {"batchable": True},
    "cut_name": {"cut_name": "elsewhere"},
}


@pytest.mark.parametrize("field", sorted(REHASHED))
def test_an_edit_rehashed_to_load_is_refused_by_the_server(field: str, bundle, tmp_path: Path) -> None:
    original = build_bundle(tmp_path / "served", labels=LABELS)
    # The tamperer rewrites the manifest whole, with a hash that matches the edit.
    write_manifest(bundle.path, dataclasses.replace(bundle.manifest, **REHASHED[field]))
    edited = load_bundle(bundle.path)
    assert edited.manifest.bundle_hash != original.manifest.bundle_hash
    with serve(ServerConfig([original.path])) as running, EdgeClient(edited, running.address) as client:
        with pytest.raises(BundleMismatchError, match="bundle_hash"):
            client.infer(tiny_input())


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("keys")
    return {name: write_key_pair(root, name) for name in ("alice", "mallory")}


def test_with_trust_keys_only_a_bundle_signed_by_one_runs(bundle, keys, tmp_path: Path) -> None:
    alice_key, alice_pub = keys["alice"]
    mallory_key, _ = keys["mallory"]
    trusting = EdgeConfig(trust_keys=(alice_pub,), fallback=True)
    with pytest.raises(BundleSignatureError, match="is not signed"):
        EdgeClient(bundle.path, "127.0.0.1:1", trusting)
    sign_bundle(bundle.path, load_signing_key(mallory_key))
    with pytest.raises(BundleSignatureError, match="which is not a trusted key"):
        EdgeClient(bundle.path, "127.0.0.1:1", trusting)
    sign_bundle(bundle.path, load_signing_key(alice_key))
    # Signed by a trusted key: it runs, here on the device (fallback: nothing listens on port 1).
    with EdgeClient(bundle.path, "127.0.0.1:1", trusting) as client:
        assert client.infer(tiny_input()).fallback
    data = json.loads((bundle.path / MANIFEST).read_text())
    data["labels"] = ["w", "x", "y", "z"]
    (bundle.path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleSignatureError, match="changed after it was signed"):
        EdgeClient(bundle.path, "127.0.0.1:1", trusting)


def test_trust_keys_must_be_paths() -> None:
    with pytest.raises(Exception, match="trust_keys"):
        EdgeConfig(trust_keys="alice.pub")  # type: ignore[arg-type]


def test_run_refuses_an_unsigned_bundle_before_any_work(bundle, keys, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from splitinfer.app import app

    x = tmp_path / "x.npy"
    np.save(x, tiny_input())
    args = ["run", str(bundle.path), "--server", "127.0.0.1:1", "--input", str(x), "--fallback"]
    result = CliRunner().invoke(app, [*args, "--trust-key", str(keys["alice"][1])])
    assert result.exit_code == 2 and "is not signed" in result.output, result.output
    sign_bundle(bundle.path, load_signing_key(keys["alice"][0]))
    result = CliRunner().invoke(app, [*args, "--trust-key", str(keys["alice"][1])])
    assert result.exit_code == 0 and "tail ran here" in result.output, result.output
