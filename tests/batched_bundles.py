"""Batchable test bundles: a tiny bundle (tests/bundles.py) whose tail is given a batch axis by
splitter.export.batch_axis, as export does for every tail that passes the check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
from bundles import build_bundle

from protos.bundle import Bundle, load_bundle, sha256_file, write_manifest
from splitter.export.batch_axis import batchable_tail


def batchable_bundle(directory: str | Path, **options: object) -> Bundle:
    """`build_bundle(directory, **options)` with a batchable tail, recorded in its manifest."""
    bundle = build_bundle(directory, **options)  # type: ignore[arg-type]
    assert bundle.tail_path is not None
    tail, batchable = batchable_tail(onnx.load(bundle.tail_path))
    assert batchable and tail is not None
    onnx.save(tail, bundle.tail_path)
    manifest = dataclasses.replace(bundle.manifest, tail_sha256=sha256_file(bundle.tail_path), batchable=True)
    write_manifest(bundle.path, manifest)
    return load_bundle(bundle.path)
