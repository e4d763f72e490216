"""A Bundle: what one deployment of a split model needs, as a directory.

    BUNDLE/manifest.json   model id, cut, tensor specs, codec, content hashes, export check
    BUNDLE/head.onnx       runs on the device (absent when the cut sends the raw input); head.ort
                           instead when exported in ONNX Runtime's mobile format
    BUNDLE/tail.onnx       runs on the server (absent when the whole model runs on the device)

`bundle_hash` hashes both files and the cut; a request carries it so that the server refuses a
tensor produced by a head that is not the one its tail was cut against.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from protos.errors import BundleError
from protos.preprocess import ImagePreprocess

MANIFEST = "manifest.json"
HEAD_FILE = "head.onnx"
HEAD_FILES = (HEAD_FILE, "head.ort")
TAIL_FILE = "tail.onnx"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one tensor; a dimension of -1 accepts any size."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod([max(d, 1) for d in self.shape])) * np.dtype(self.dtype).itemsize

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(e in (-1, g) for e, g in zip(self.shape, shape))

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True)
class Manifest:
    model_id: str
    cut_name: str
    inputs: tuple[TensorSpec, ...]
    cut: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    codec: str
    head_sha256: str
    tail_sha256: str
    preprocess: ImagePreprocess | None = None
    # What the export measured when it checked head∘tail against the unsplit model.
    verification: dict = field(default_factory=dict, hash=False)
    head_file: str = HEAD_FILE
    format_version: int = FORMAT_VERSION
    # The tail takes a batch along axis 0 (checked at export), so a server may run several
    # requests as one call. Manifests written before it was recorded load as not batchable.
    batchable: bool = False

    def __post_init__(self) -> None:
        if self.head_file not in HEAD_FILES:
            raise BundleError(f"head_file {self.head_file!r} is not one of {HEAD_FILES}")

    @property
    def has_head(self) -> bool:
        return bool(self.head_sha256)

    @property
    def has_tail(self) -> bool:
        return bool(self.tail_sha256)

    @functools.cached_property
    def bundle_hash(self) -> str:
        cut = [[s.name, s.dtype, list(s.shape)] for s in self.cut]
        text = json.dumps([self.model_id, self.head_sha256, self.tail_sha256, cut], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict() if self.preprocess else None
        data["bundle_hash"] = self.bundle_hash
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        try:
            version = int(data.get("format_version", 0))
            if version != FORMAT_VERSION:
                raise BundleError(f"manifest format_version {version} is not supported (expected {FORMAT_VERSION})")
            specs = {k: tuple(TensorSpec.from_dict(t) for t in data[k]) for k in ("inputs", "cut", "outputs")}
            pre = data.get("preprocess")
            manifest = cls(
                model_id=str(data["model_id"]),
                cut_name=str(data["cut_name"]),
                codec=str(data["codec"]),
                head_sha256=str(data["head_sha256"]),
                tail_sha256=str(data["tail_sha256"]),
                preprocess=ImagePreprocess.from_dict(pre) if pre else None,
                verification=dict(data.get("verification") or {}),
                head_file=str(data.get("head_file", HEAD_FILE)),
                batchable=bool(data.get("batchable", False)),
                **specs,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"malformed manifest: {type(err).__name__}: {err}") from err
        if data.get("bundle_hash") != manifest.bundle_hash:
            raise BundleError(
                f"manifest bundle_hash {data.get('bundle_hash')!r} does not match its contents "
                f"({manifest.bundle_hash}): the manifest was edited after export"
            )
        return manifest


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def head_path(self) -> Path | None:
        return self.path / self.manifest.head_file if self.manifest.has_head else None

    @property
    def tail_path(self) -> Path | None:
        return self.path / TAIL_FILE if self.manifest.has_tail else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Reads BUNDLE/manifest.json and checks each model file against its recorded hash."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{str(path)!r} is not a bundle: no {MANIFEST}")
    try:
        data = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{manifest_path}: not valid JSON: {err}") from err
    bundle = Bundle(path, Manifest.from_dict(data))
    if verify:
        for file_path, expected in ((bundle.head_path, bundle.manifest.head_sha256), (bundle.tail_path, bundle.manifest.tail_sha256)):
            if file_path is None:
                continue
            if not file_path.is_file():
                raise BundleError(f"bundle {str(path)!r} lacks {file_path.name}")
            if sha256_file(file_path) != expected:
                raise BundleError(f"{file_path} does not match the sha256 in {MANIFEST}: the file was changed after export")
    return bundle


def write_manifest(path: str | Path, manifest: Manifest) -> Path:
    out = Path(path) / MANIFEST
    out.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return out
