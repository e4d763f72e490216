from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from protos.bundle import MANIFEST, Manifest, load_bundle, write_manifest
from protos.errors import BundleError


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    return target


def test_a_bundle_loads_and_its_hash_ties_head_to_tail(tiny_bundle) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    stored = json.loads((tiny_bundle / MANIFEST).read_text())["bundle_hash"]
    assert manifest.bundle_hash == stored and len(stored) == 64


def test_a_changed_model_file_is_refused(tiny_bundle, tmp_path: Path) -> None:
    path = _copy(tiny_bundle, tmp_path)
    with open(path / "tail.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="tail.onnx does not match the sha256"):
        load_bundle(path)


def test_an_edited_manifest_is_refused(tiny_bundle, tmp_path: Path) -> None:
    path = _copy(tiny_bundle, tmp_path)
    data = json.loads((path / MANIFEST).read_text())
    data["cut"][0]["shape"][0] = 7
    (path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="bundle_hash .* does not match its contents"):
        load_bundle(path)


@pytest.mark.parametrize("content", ["", "{", '{"format_version": 1}', '{"format_version": 99}'])
def test_a_malformed_manifest_is_a_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(BundleError):
        load_bundle(tmp_path)


def test_a_directory_without_manifest_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path)


def test_a_manifest_written_before_multi_cut_bundles_still_loads(tiny_bundle, tmp_path: Path) -> None:
    path = _copy(tiny_bundle, tmp_path)
    data = json.loads((path / MANIFEST).read_text())
    # Manifests of earlier exports have no tail_file; their hash never covered file names.
    del data["tail_file"]
    (path / MANIFEST).write_text(json.dumps(data))
    bundle = load_bundle(path)
    assert bundle.tail_path == path / "tail.onnx"
    assert bundle.manifest.bundle_hash == load_bundle(tiny_bundle).manifest.bundle_hash


def test_a_tail_file_outside_the_bundle_is_refused(tiny_bundle, tmp_path: Path) -> None:
    path = _copy(tiny_bundle, tmp_path)
    data = json.loads((path / MANIFEST).read_text())
    data["tail_file"] = "../elsewhere/tail.onnx"
    (path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="tail_file '../elsewhere/tail.onnx' is not tail.onnx or tail-N.onnx"):
        load_bundle(path)


def _with_labels(tiny_bundle: Path, tmp_path: Path, labels) -> Path:
    path = _copy(tiny_bundle, tmp_path)
    manifest = load_bundle(path).manifest
    write_manifest(path, dataclasses.replace(manifest, labels=labels))
    return path


def test_labels_travel_in_the_manifest_and_are_covered_by_its_hash(tiny_bundle, tmp_path: Path) -> None:
    scores = load_bundle(tiny_bundle).manifest.outputs[0].shape[-1]
    labels = tuple(f"class {i}" for i in range(scores))
    path = _with_labels(tiny_bundle, tmp_path, labels)
    labelled = load_bundle(path).manifest
    assert labelled.labels == labels
    # A bundle without labels keeps the hash it had before labels existed.
    assert labelled.bundle_hash != load_bundle(tiny_bundle).manifest.bundle_hash
    data = json.loads((path / MANIFEST).read_text())
    data["labels"][0] = "something else"
    (path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="does not match its contents"):
        load_bundle(path)


def test_labels_must_name_every_score(tiny_bundle, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="names 2 labels for output .* scores"):
        _with_labels(tiny_bundle, tmp_path, ("a", "b"))


def test_a_cut_tensors_clamp_travels_in_the_manifest_and_is_covered_by_its_hash(tiny_bundle, tmp_path: Path) -> None:
    import dataclasses

    manifest = load_bundle(tiny_bundle).manifest
    clamped = dataclasses.replace(
        manifest, cut=tuple(dataclasses.replace(spec, clamp=(0.0, 6.0)) for spec in manifest.cut)
    )
    assert clamped.bundle_hash != manifest.bundle_hash
    data = clamped.to_dict()
    assert data["cut"][0]["clamp"] == [0.0, 6.0]
    assert "clamp" not in data["inputs"][0]
    read = Manifest.from_dict(json.loads(json.dumps(data)))
    assert read == clamped and read.cut_clamps == {manifest.cut[0].name: (0.0, 6.0)}
    data["cut"][0]["clamp"] = [0.0, 0.5]
    with pytest.raises(BundleError, match="does not match its contents"):
        Manifest.from_dict(data)
    for bad in ([6.0, 0.0], [None, None], [0.0, float("inf")]):
        data["cut"][0]["clamp"] = bad
        with pytest.raises(BundleError, match="clamp"):
            Manifest.from_dict(data)
