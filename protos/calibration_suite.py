"""The calibration suite's manifest: the micro-benchmarks splitter.profile.predict.suite generates
and edge_runtime.calibration times on the device, one schema for both sides:

    {"format_version": 1, "suite": name, "features": FEATURES,
     "benchmarks": [{"name", "file", "inputs": {input: shape}, "output_bytes",
                     "features": {NCHWc block: {kernel kind: summed features}}}]}

The suite's name carries a digest of its files, so a DeviceProfile says which suite it was fitted on.
"""

from __future__ import annotations

import json
from pathlib import Path

from protos.device_profile import FEATURES
from protos.errors import SplitInferError

SUITE_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
_ENTRY_KEYS = ("name", "file", "inputs", "output_bytes", "features")


def suite_manifest(suite: str, benchmarks: list[dict]) -> dict:
    """The manifest of the benchmarks (each with _ENTRY_KEYS) of suite `suite`."""
    manifest = {
        "format_version": SUITE_FORMAT_VERSION,
        "suite": suite,
        "features": list(FEATURES),
        "benchmarks": benchmarks,
    }
    return check_suite_manifest(manifest, "the generated suite")


def check_suite_manifest(manifest: dict, where: str) -> dict:
    """`manifest` if it is one of this format; SplitInferError naming `where` and the fault."""
    if not isinstance(manifest, dict) or manifest.get("format_version") != SUITE_FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise SplitInferError(f"calibration suite manifest format {version!r} is not {SUITE_FORMAT_VERSION}")
    if manifest.get("features") != list(FEATURES):
        raise SplitInferError(
            f"calibration suite features {manifest.get('features')} are not {list(FEATURES)} ({where}: reinstall splitinfer)"
        )
    for entry in manifest.get("benchmarks", ()):
        missing = [key for key in _ENTRY_KEYS if key not in entry]
        if missing:
            raise SplitInferError(f"calibration suite {where}: benchmark {entry.get('name')!r} lacks {missing}")
    return manifest


def load_suite_manifest(directory: Path) -> dict:
    """The manifest of the suite in `directory`."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise SplitInferError(
            f"calibration suite {str(directory)!r} has no {MANIFEST_FILE} (reinstall splitinfer)"
        ) from None
    return check_suite_manifest(manifest, str(directory))
