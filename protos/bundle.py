"""A Bundle: what one deployment of a split model needs, as a directory.

    BUNDLE/manifest.json   model id, cut, tensor specs, codec, content hashes, export check
    BUNDLE/head.onnx       runs on the device (absent when the cut sends the raw input); head.ort
                           instead when exported in ONNX Runtime's mobile format
    BUNDLE/tail.onnx       runs on the server (absent when the whole model runs on the device)

`bundle_hash` hashes both files and every manifest field that changes an answer; a request
carries it so that the server refuses a tensor produced by a head that is not the one its tail was
cut against, or a device whose manifest was edited (its preprocessing, its labels, ...).

A multi-cut bundle carries several cuts of one model, so that the device can move the cut as the
network changes without a new deployment:

    BUNDLE/manifest.json   kind "multi-cut": the head segments, one Manifest per cut, the decisions
    BUNDLE/head-NN.onnx    the head in segments: segment k computes the tensors of the k-th cut
                           from those of the cut before it, so the device stores each weight once
    BUNDLE/tail-NN.onnx    the tail of each cut, for the server

Each cut's Manifest is an ordinary one (its own bundle_hash, which a request names, so a switch of
cut costs no extra round trip); its head_sha256 hashes the segments it runs. `decisions` is the
edge's cost table for choosing a cut (edge_runtime.adaptive reads it), covered by the bundle hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from protos.codec import Clamp
from protos.decisions import DecisionTable
from protos.errors import BundleError, CodecError
from protos.preprocess import ImagePreprocess
from protos.result_form import ResultForm

MANIFEST = "manifest.json"
HEAD_FILE = "head.onnx"
HEAD_FILES = (HEAD_FILE, "head.ort")
# A head encrypted at rest (protos.head_encryption) is its file name with this suffix.
ENCRYPTED_SUFFIX = ".enc"
ENCRYPTED_HEAD_FILES = tuple(name + ENCRYPTED_SUFFIX for name in HEAD_FILES)
TAIL_FILE = "tail.onnx"
# A cut of a multi-cut bundle: its head is the bundle's segments, not a file of its own.
SEGMENTED_HEAD = "segments"
# Tails and head segments are plain file names inside the bundle directory, never paths.
_TAIL_FILE = re.compile(r"tail(-[0-9]+)?\.onnx")
_SEGMENT_FILE = re.compile(r"head-[0-9]+\.onnx")
MULTI_CUT = "multi-cut"
# A single cut's manifest: format 2's bundle_hash covers every field that changes an answer;
# format 1's (read, never written) covered the model, the files, the cut and the labels.
FORMAT_VERSION = 2
READ_FORMAT_VERSIONS = (1, 2)
MULTI_CUT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one tensor; a dimension of -1 accepts any size. `clamp`: the range
    every reader of a cut tensor in the tail clamps it to, which a sender may clamp it to before
    encoding (protos.codec); None: none known."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    clamp: Clamp | None = None

    def __post_init__(self) -> None:
        if self.clamp is None:
            return
        low, high = self.clamp
        finite = all(b is None or (isinstance(b, (int, float)) and math.isfinite(b)) for b in (low, high))
        if not finite or (low is None and high is None) or (low is not None and high is not None and low > high):
            raise BundleError(
                f"tensor {self.name!r}: clamp {list(self.clamp)} is not [low, high] with finite bounds "
                "(null for none on one side), low <= high"
            )

    @property
    def nbytes(self) -> int:
        return int(np.prod([max(d, 1) for d in self.shape])) * np.dtype(self.dtype).itemsize

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(e in (-1, g) for e, g in zip(self.shape, shape))

    def to_dict(self) -> dict:
        data = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.clamp is not None:
            # Written only when known, so manifests without one read as before.
            data["clamp"] = list(self.clamp)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TensorSpec:
        clamp = data.get("clamp")
        if clamp is not None:
            low, high = clamp
            clamp = (None if low is None else float(low), None if high is None else float(high))
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]), clamp)


def checked_result_form(result: str, outputs: Sequence[TensorSpec]) -> ResultForm:
    """The form a manifest's `result` names ("": raw fp32), checked against its `outputs`."""
    try:
        form = ResultForm.parse(result) if result else ResultForm()
        form.check_outputs(outputs)
    except CodecError as err:
        raise BundleError(f"manifest result {result!r}: {err}") from None
    return form


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
    tail_file: str = TAIL_FILE
    # A classifier's class names, one per score of its (single) output, in index order; its
    # scores are logits (protos.classes.top_classes turns them into probabilities).
    labels: tuple[str, ...] | None = None
    # The form of the outputs a server returns to a request that asks for none (protos.result_form:
    # "top5", "fp16+zstd", ...); "" is raw fp32.
    result: str = ""
    # Which release of the model's bundle this is (0: unversioned): a server advertises the highest
    # it serves and a device updates to it over the air only when it is higher than its own, so an
    # older bundle, signed or not, is never installed as an update.
    version: int = 0

    def __post_init__(self) -> None:
        self.result_form  # noqa: B018 (checked where the manifest is made, not at first use)
        if self.labels is not None and len(self.outputs) == 1 and len(self.labels) != _scores(self.outputs[0]):
            raise BundleError(
                f"manifest names {len(self.labels)} labels for output {self.outputs[0].name!r} of "
                f"{_scores(self.outputs[0])} scores"
            )
        if self.head_file not in (*HEAD_FILES, *ENCRYPTED_HEAD_FILES, SEGMENTED_HEAD):
            raise BundleError(
                f"head_file {self.head_file!r} is not one of {(*HEAD_FILES, *ENCRYPTED_HEAD_FILES, SEGMENTED_HEAD)}"
            )
        if not _TAIL_FILE.fullmatch(self.tail_file):
            raise BundleError(f"tail_file {self.tail_file!r} is not tail.onnx or tail-N.onnx")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise BundleError(f"manifest version {self.version!r} is not an integer ≥ 0")

    @functools.cached_property
    def result_form(self) -> ResultForm:
        return checked_result_form(self.result, self.outputs)

    @property
    def has_head(self) -> bool:
        return bool(self.head_sha256)

    @property
    def has_tail(self) -> bool:
        return bool(self.tail_sha256)

    @property
    def head_encrypted(self) -> bool:
        """The head file is encrypted (protos.head_encryption): the device needs its key."""
        return self.head_file in ENCRYPTED_HEAD_FILES

    @functools.cached_property
    def bundle_hash(self) -> str:
        """What a request names its head by, and what ties a manifest to its files: a digest of
        every field that changes an answer (the model, the cut and every tensor's name, dtype and
        shape, both files and their names, the preprocessing, batchability, the labels, the
        version). Not the
        codec (the device's choice: each request says how its tensors are encoded) nor
        `verification` (the record of the export's checks)."""
        if self.format_version == 1:
            return _format_1_hash(self)
        return hashlib.sha256(self.bundle_hash_text.encode()).hexdigest()

    @property
    def bundle_hash_text(self) -> str:
        """The JSON text whose SHA-256 is a format-2 bundle_hash (what a client in another language
        reproduces to verify a manifest: docs/contract.md)."""
        covered = {
            "format_version": self.format_version,
            "model_id": self.model_id,
            "cut_name": self.cut_name,
            "head_file": self.head_file,
            "head_sha256": self.head_sha256,
            "tail_file": self.tail_file,
            "tail_sha256": self.tail_sha256,
            "inputs": _specs(self.inputs),
            "cut": _specs(self.cut),
            "outputs": _specs(self.outputs),
            "preprocess": self.preprocess.to_dict() if self.preprocess else None,
            "batchable": self.batchable,
            "labels": list(self.labels) if self.labels is not None else None,
        }
        if self.result:
            # Only when set, so the hashes of bundles from before it existed do not move.
            covered["result"] = self.result
        if self.version:
            covered["version"] = self.version
        return json.dumps(covered, sort_keys=True)

    @functools.cached_property
    def cut_clamps(self) -> dict[str, Clamp]:
        """Cut tensor name → the range it may be clamped to before encoding, where one is known."""
        return {spec.name: spec.clamp for spec in self.cut if spec.clamp is not None}

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("inputs", "cut", "outputs"):
            data[key] = [spec.to_dict() for spec in getattr(self, key)]
        data["preprocess"] = self.preprocess.to_dict() if self.preprocess else None
        data["bundle_hash"] = self.bundle_hash
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        try:
            version = int(data.get("format_version", 0))
            if version not in READ_FORMAT_VERSIONS:
                raise BundleError(
                    f"manifest format_version {version} is not supported (expected one of {READ_FORMAT_VERSIONS})"
                )
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
                tail_file=str(data.get("tail_file", TAIL_FILE)),
                labels=tuple(map(str, data["labels"])) if data.get("labels") is not None else None,
                result=str(data.get("result", "")),
                version=_version(data.get("version", 0)),
                format_version=version,
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


def _version(value: object) -> int:
    """A manifest's `version`: a JSON integer (a float or a string is refused, not rounded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"manifest version {value!r} is not an integer ≥ 0")
    return value


def _specs(specs: tuple[TensorSpec, ...]) -> list:
    # A clamp is covered when there is one (an edited range would change what the device sends);
    # specs without one hash as they did before clamps existed.
    return [[s.name, s.dtype, list(s.shape), *([list(s.clamp)] if s.clamp is not None else [])] for s in specs]


def _format_1_hash(manifest: Manifest) -> str:
    """A format-1 manifest's hash, so that bundles exported then still load and match their server."""
    covered = [manifest.model_id, manifest.head_sha256, manifest.tail_sha256, _specs(manifest.cut)]
    if manifest.labels is not None:
        covered.append(list(manifest.labels))
    return hashlib.sha256(json.dumps(covered, sort_keys=True).encode()).hexdigest()


def _scores(spec: TensorSpec) -> int:
    """How many class scores one sample of `spec` holds (every dimension after the batch)."""
    return int(np.prod(spec.shape[1:])) if len(spec.shape) > 1 else int(np.prod(spec.shape))


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def head_path(self) -> Path | None:
        if self.manifest.head_file == SEGMENTED_HEAD:
            raise BundleError(
                f"cut {self.manifest.cut_name!r} of multi-cut bundle {str(self.path)!r} has no head file of its own: "
                "its head is the bundle's segments (edge_runtime.head.SegmentedHead runs them)"
            )
        return self.path / self.manifest.head_file if self.manifest.has_head else None

    @property
    def tail_path(self) -> Path | None:
        return self.path / self.manifest.tail_file if self.manifest.has_tail else None


@dataclass(frozen=True)
class HeadSegment:
    """One piece of a multi-cut bundle's head: computes `outputs` from `inputs` (model inputs or
    tensors of earlier segments)."""

    file: str
    sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _SEGMENT_FILE.fullmatch(self.file):
            raise BundleError(f"head segment file {self.file!r} is not head-N.onnx")

    @classmethod
    def from_dict(cls, data: dict) -> HeadSegment:
        return cls(
            str(data["file"]), str(data["sha256"]), tuple(map(str, data["inputs"])), tuple(map(str, data["outputs"]))
        )


def segments_sha256(segments: tuple[HeadSegment, ...]) -> str:
    """The head_sha256 of a cut whose head is `segments` run in order ("" for none: no head)."""
    if not segments:
        return ""
    return hashlib.sha256(json.dumps([s.sha256 for s in segments]).encode()).hexdigest()


@dataclass(frozen=True)
class MultiCutManifest:
    """Several cuts of one model: `segments` in order, and per cut its Manifest and how many of
    the segments its head runs (`segment_counts`, parallel to `cuts`)."""

    model_id: str
    segments: tuple[HeadSegment, ...]
    cuts: tuple[Manifest, ...]
    segment_counts: tuple[int, ...]
    decisions: dict = field(default_factory=dict, hash=False)
    kind: str = MULTI_CUT
    format_version: int = MULTI_CUT_FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.cuts or len(self.cuts) != len(self.segment_counts):
            raise BundleError(
                f"multi-cut manifest: {len(self.cuts)} cuts but {len(self.segment_counts)} segment counts"
            )
        names = [c.cut_name for c in self.cuts]
        if len(set(names)) != len(names):
            raise BundleError(f"multi-cut manifest: a cut is listed twice in {names}")
        for cut, count in zip(self.cuts, self.segment_counts):
            if cut.model_id != self.model_id:
                raise BundleError(
                    f"multi-cut manifest of {self.model_id!r}: cut {cut.cut_name!r} is of model {cut.model_id!r}"
                )
            if not 0 <= count <= len(self.segments):
                raise BundleError(
                    f"multi-cut manifest: cut {cut.cut_name!r} runs {count} of {len(self.segments)} head segments"
                )
            if cut.head_sha256 != segments_sha256(self.segments[:count]):
                raise BundleError(
                    f"multi-cut manifest: cut {cut.cut_name!r} names a head that is not its {count} segments"
                )

    @property
    def labels(self) -> tuple[str, ...] | None:
        """The class names of the model's output (every cut's manifest carries the same)."""
        return self.cuts[0].labels

    @functools.cached_property
    def bundle_hash(self) -> str:
        text = json.dumps(
            [self.model_id, [asdict(s) for s in self.segments], [c.bundle_hash for c in self.cuts], self.decisions],
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "format_version": self.format_version,
            "model_id": self.model_id,
            "segments": [asdict(s) for s in self.segments],
            "cuts": [{"segments": n, "manifest": c.to_dict()} for c, n in zip(self.cuts, self.segment_counts)],
            "decisions": self.decisions,
            "bundle_hash": self.bundle_hash,
        }

    @classmethod
    def from_dict(cls, data: dict) -> MultiCutManifest:
        try:
            version = int(data.get("format_version", 0))
            if version != MULTI_CUT_FORMAT_VERSION:
                raise BundleError(
                    f"manifest format_version {version} is not supported (expected {MULTI_CUT_FORMAT_VERSION})"
                )
            manifest = cls(
                model_id=str(data["model_id"]),
                segments=tuple(HeadSegment.from_dict(s) for s in data["segments"]),
                cuts=tuple(Manifest.from_dict(c["manifest"]) for c in data["cuts"]),
                segment_counts=tuple(int(c["segments"]) for c in data["cuts"]),
                decisions=dict(data.get("decisions") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"malformed multi-cut manifest: {type(err).__name__}: {err}") from err
        if data.get("bundle_hash") != manifest.bundle_hash:
            raise BundleError(
                f"multi-cut manifest bundle_hash {data.get('bundle_hash')!r} does not match its contents "
                f"({manifest.bundle_hash}): the manifest was edited after export"
            )
        return manifest


@dataclass(frozen=True)
class MultiCutBundle:
    path: Path
    manifest: MultiCutManifest

    @property
    def variants(self) -> tuple[Bundle, ...]:
        """One Bundle per cut (what a server serves: each tail under its own bundle_hash)."""
        return tuple(Bundle(self.path, cut) for cut in self.manifest.cuts)

    def decision_table(self) -> DecisionTable:
        """The table the device chooses its cut and codec from, checked against the cuts carried."""
        return DecisionTable.from_dict(self.manifest.decisions, cuts=[cut.cut_name for cut in self.manifest.cuts])

    def variant(self, cut_name: str) -> Bundle:
        for bundle in self.variants:
            if bundle.manifest.cut_name == cut_name:
                return bundle
        raise BundleError(
            f"multi-cut bundle {str(self.path)!r} has no cut {cut_name!r}; it has {[c.cut_name for c in self.manifest.cuts]}"
        )

    def segment_path(self, segment: HeadSegment) -> Path:
        return self.path / segment.file


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{str(path)!r} is not a bundle: no {MANIFEST}")
    try:
        return json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{manifest_path}: not valid JSON: {err}") from err


def _verify_file(bundle_path: Path, file_path: Path, expected: str) -> None:
    if not file_path.is_file():
        raise BundleError(f"bundle {str(bundle_path)!r} lacks {file_path.name}")
    if sha256_file(file_path) != expected:
        raise BundleError(f"{file_path} does not match the sha256 in {MANIFEST}: the file was changed after export")


def load_bundle(path: str | Path, *, verify: bool = True, need_tail: bool = True) -> Bundle:
    """Reads BUNDLE/manifest.json and checks each model file against its recorded hash.
    `need_tail=False`: a tail file that is absent is allowed (a device's copy of a bundle need not
    carry the server's half); one that is there is checked all the same."""
    path = Path(path)
    data = _read_manifest(path)
    if data.get("kind") == MULTI_CUT:
        raise BundleError(
            f"{str(path)!r} is a multi-cut bundle ({len(data.get('cuts') or ())} cuts): "
            "load it with load_multi_cut_bundle (a device) or load_bundles (a server)"
        )
    bundle = Bundle(path, Manifest.from_dict(data))
    if verify:
        for file_path, expected in (
            (bundle.head_path, bundle.manifest.head_sha256),
            (bundle.tail_path, bundle.manifest.tail_sha256),
        ):
            if file_path is None or (not need_tail and file_path == bundle.tail_path and not file_path.exists()):
                continue
            _verify_file(path, file_path, expected)
    return bundle


def is_multi_cut(path: str | Path) -> bool:
    return _read_manifest(Path(path)).get("kind") == MULTI_CUT


def load_multi_cut_bundle(path: str | Path, *, verify: bool = True) -> MultiCutBundle:
    """Reads a multi-cut BUNDLE/manifest.json and checks every segment and tail against its hash."""
    path = Path(path)
    data = _read_manifest(path)
    if data.get("kind") != MULTI_CUT:
        raise BundleError(f"{str(path)!r} is a single-cut bundle, not a multi-cut one: load it with load_bundle")
    bundle = MultiCutBundle(path, MultiCutManifest.from_dict(data))
    if verify:
        for segment in bundle.manifest.segments:
            _verify_file(path, bundle.segment_path(segment), segment.sha256)
        for variant in bundle.variants:
            if variant.tail_path is not None:
                _verify_file(path, variant.tail_path, variant.manifest.tail_sha256)
    return bundle


def load_bundles(path: str | Path, *, verify: bool = True) -> tuple[Bundle, ...]:
    """What a server serves from a bundle directory: its one cut, or every cut of a multi-cut bundle
    that has a tail (an all-on-device cut has nothing to serve)."""
    if is_multi_cut(path):
        return tuple(v for v in load_multi_cut_bundle(path, verify=verify).variants if v.manifest.has_tail)
    return (load_bundle(path, verify=verify),)


def write_manifest(path: str | Path, manifest: Manifest | MultiCutManifest) -> Path:
    out = Path(path) / MANIFEST
    out.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return out
