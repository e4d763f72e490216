"""Export of the small MobileNetV2 (96x96) at a chain cut, a residual (two-tensor) cut, all on the
device and all on the server: the files, the manifest, the verification, and what a failed export
leaves behind (nothing)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from protos.bundle import HEAD_FILE, MANIFEST, TAIL_FILE, Bundle, TensorSpec, load_bundle
from protos.codec import Codec
from protos.errors import BundleError, CodecError, SplitInferError
from splitter.export.bundle import export_bundle, split_model
from splitter.export.verify import ExportError, verify_split
from splitter.graph.cuts import Cut, find_cut
from splitter.graph.graph import graph_from_onnx
from splitter.sources import ModelSource

Samples = list[tuple[str, dict[str, np.ndarray]]]

CHAIN_CUT = "features.6"  # the block's last op, its Add: one tensor crosses
RESIDUAL_CUT = "features.9.conv.1.2/Clip"  # inside a residual block: the skip and the branch cross
INPUT_SPEC = TensorSpec("input", "float32", (1, 3, 96, 96))
OUTPUT_SPEC = TensorSpec("output", "float32", (1, 1000))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.fixture(scope="module")
def all_cuts(mobilenet_source: ModelSource) -> list[Cut]:
    from splitter.pipeline import model_cuts

    return model_cuts(mobilenet_source, include_input=True)


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory,
    mobilenet_source: ModelSource,
    all_cuts: list[Cut],
    mobilenet_samples: Samples,
) -> dict[str, tuple[Bundle, object]]:
    """One bundle per kind of cut, keyed by kind."""
    root = tmp_path_factory.mktemp("exports")
    plans = {
        "chain": (CHAIN_CUT, "int8+zstd"),
        "residual": (RESIDUAL_CUT, "int8+zstd"),
        "edge": ("output", "int8+zstd"),
        "cloud": ("input", "fp16+zstd"),
    }
    return {
        kind: export_bundle(mobilenet_source, find_cut(all_cuts, cut), root / kind, mobilenet_samples, codec=codec)
        for kind, (cut, codec) in plans.items()
    }


@pytest.mark.parametrize(
    ("kind", "cut_name", "n_tensors"), [("chain", "features.6/Add", 1), ("residual", RESIDUAL_CUT, 2)]
)
def test_a_split_bundle(
    exported, kind: str, cut_name: str, n_tensors: int, mobilenet_source: ModelSource, all_cuts: list[Cut]
) -> None:
    bundle, check = exported[kind]
    cut = find_cut(all_cuts, cut_name)
    graph = graph_from_onnx(mobilenet_source.model)
    m = bundle.manifest
    assert sorted(p.name for p in bundle.path.iterdir()) == [HEAD_FILE, MANIFEST, TAIL_FILE]
    assert (m.model_id, m.cut_name, m.codec) == ("mobilenet_v2_035", cut_name, "int8+zstd")
    assert m.inputs == (INPUT_SPEC,) and m.outputs == (OUTPUT_SPEC,)
    assert len(m.cut) == n_tensors == len(cut.tensors)
    assert m.cut == tuple(TensorSpec(t, "float32", graph.tensors[t].shape) for t in cut.tensors)
    assert m.head_sha256 == _sha256(bundle.path / HEAD_FILE) and m.tail_sha256 == _sha256(bundle.path / TAIL_FILE)
    assert m.preprocess == mobilenet_source.preprocess and m.preprocess.size == 96
    # The manifest on disk is what load_bundle reads back, hash included.
    on_disk = json.loads((bundle.path / MANIFEST).read_text())
    assert on_disk["bundle_hash"] == m.bundle_hash == load_bundle(bundle.path).manifest.bundle_hash
    # Verification: exact with raw fp32, top-1 kept with the codec, recorded in the manifest.
    assert check.samples == ("astronaut", "chelsea", "coffee", "rocket")
    assert check.max_abs_diff_fp32 <= 1e-4 and check.top1_agreement_codec == 1.0
    assert 0 < check.max_abs_diff_codec < 0.1
    assert m.verification == {
        "samples": list(check.samples),
        "max_abs_diff_fp32": check.max_abs_diff_fp32,
        "codec": "int8+zstd",
        "max_abs_diff_codec": check.max_abs_diff_codec,
        "top1_agreement_codec": check.top1_agreement_codec,
        # Exported without a task metric: no agreement measured.
        "metric": "",
        "agreement": None,
    }


@pytest.mark.parametrize("kind", ["chain", "residual"])
def test_the_halves_run_and_compose_to_the_model(
    exported, kind: str, mobilenet_source: ModelSource, mobilenet_samples: Samples
) -> None:
    bundle, _ = exported[kind]
    head = onnx.load(str(bundle.path / HEAD_FILE))
    tail = onnx.load(str(bundle.path / TAIL_FILE))
    cut_names = [s.name for s in bundle.manifest.cut]
    assert [i.name for i in head.graph.input] == ["input"] and [o.name for o in head.graph.output] == cut_names
    assert sorted(i.name for i in tail.graph.input) == sorted(cut_names) and [o.name for o in tail.graph.output] == [
        "output"
    ]
    # Neither half repeats the other's work: together they hold each of the model's nodes once.
    assert len(head.graph.node) + len(tail.graph.node) == len(mobilenet_source.model.graph.node)
    full = ort.InferenceSession(mobilenet_source.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for _, feed in mobilenet_samples[:2]:
        activations = _run(bundle.path / HEAD_FILE, feed)
        assert [a.shape for a in activations] == [s.shape for s in bundle.manifest.cut]
        out = _run(bundle.path / TAIL_FILE, dict(zip(cut_names, activations)))[0]
        np.testing.assert_allclose(out, full.run(None, feed)[0], rtol=0, atol=1e-4)


def test_an_all_on_device_bundle_has_no_tail(
    exported, mobilenet_source: ModelSource, mobilenet_samples: Samples
) -> None:
    bundle, check = exported["edge"]
    m = bundle.manifest
    assert sorted(p.name for p in bundle.path.iterdir()) == [HEAD_FILE, MANIFEST]
    assert m.cut_name == "output" and m.has_head and not m.has_tail and m.tail_sha256 == ""
    assert bundle.tail_path is None and m.cut == (OUTPUT_SPEC,)
    assert check.max_abs_diff_fp32 == 0.0 and check.max_abs_diff_codec == 0.0 and check.top1_agreement_codec == 1.0
    full = ort.InferenceSession(mobilenet_source.model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = mobilenet_samples[0][1]
    np.testing.assert_array_equal(_run(bundle.path / HEAD_FILE, feed)[0], full.run(None, feed)[0])


def test_an_all_on_server_bundle_has_no_head(exported) -> None:
    bundle, check = exported["cloud"]
    m = bundle.manifest
    assert sorted(p.name for p in bundle.path.iterdir()) == [MANIFEST, TAIL_FILE]
    assert m.cut_name == "input" and not m.has_head and m.has_tail and m.head_sha256 == ""
    assert bundle.head_path is None and m.cut == (INPUT_SPEC,) and m.codec == "fp16+zstd"
    assert check.max_abs_diff_fp32 <= 1e-4 and check.top1_agreement_codec == 1.0
    assert m.tail_sha256 == _sha256(bundle.path / TAIL_FILE)


def test_bundle_hashes_are_stable_and_tell_bundles_apart(
    exported, tmp_path: Path, mobilenet_source: ModelSource, all_cuts: list[Cut], mobilenet_samples: Samples
) -> None:
    first, _ = exported["chain"]
    again, _ = export_bundle(mobilenet_source, find_cut(all_cuts, CHAIN_CUT), tmp_path / "again", mobilenet_samples[:1])
    assert again.manifest.bundle_hash == first.manifest.bundle_hash
    assert (again.manifest.head_sha256, again.manifest.tail_sha256) == (
        first.manifest.head_sha256,
        first.manifest.tail_sha256,
    )
    # The codec is the device's choice, not part of what ties a head to its tail.
    fp32, _ = export_bundle(
        mobilenet_source, find_cut(all_cuts, CHAIN_CUT), tmp_path / "fp32", mobilenet_samples[:1], codec="fp32"
    )
    assert fp32.manifest.codec == "fp32" and fp32.manifest.bundle_hash == first.manifest.bundle_hash
    # The outputs' default form is: a server answers a request that names none in it.
    top5, _ = export_bundle(
        mobilenet_source, find_cut(all_cuts, CHAIN_CUT), tmp_path / "top5", mobilenet_samples[:1], result="top5"
    )
    assert top5.manifest.result == "top5" and top5.manifest.bundle_hash != first.manifest.bundle_hash
    hashes = {bundle.manifest.bundle_hash for bundle, _ in exported.values()}
    assert len(hashes) == len(exported)


def test_a_failed_verification_writes_nothing(
    tmp_path: Path, mobilenet_source: ModelSource, all_cuts: list[Cut], mobilenet_samples: Samples
) -> None:
    cut = find_cut(all_cuts, CHAIN_CUT)
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match=r"cut 'features.6/Add': head∘tail differs .* \(tolerance -1\)"):
        export_bundle(mobilenet_source, cut, out, mobilenet_samples[:1], fp32_tolerance=-1.0)
    with pytest.raises(
        ExportError, match="top-1 class agrees .* on 100% of 1 samples \\(required 101%\\); choose a less lossy codec"
    ):
        export_bundle(mobilenet_source, cut, out, mobilenet_samples[:1], min_agreement=1.01)
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging directory


def test_a_failed_export_keeps_the_bundle_already_there(
    tmp_path: Path, mobilenet_source: ModelSource, all_cuts: list[Cut], mobilenet_samples: Samples
) -> None:
    out = tmp_path / "bundle"
    good, _ = export_bundle(mobilenet_source, find_cut(all_cuts, CHAIN_CUT), out, mobilenet_samples[:1])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ExportError):
        export_bundle(
            mobilenet_source, find_cut(all_cuts, RESIDUAL_CUT), out, mobilenet_samples[:1], fp32_tolerance=-1.0
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_bundle(out).manifest == good.manifest
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    # A successful export replaces it whole: the old cut's files do not linger.
    edge, _ = export_bundle(mobilenet_source, find_cut(all_cuts, "output"), out, mobilenet_samples[:1])
    assert sorted(p.name for p in out.iterdir()) == [HEAD_FILE, MANIFEST]
    assert load_bundle(out).manifest == edge.manifest and edge.manifest.cut_name == "output"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_export_refuses_bad_requests(
    tmp_path: Path, mobilenet_source: ModelSource, all_cuts: list[Cut], mobilenet_samples: Samples
) -> None:
    cut = find_cut(all_cuts, CHAIN_CUT)
    with pytest.raises(SplitInferError, match="at least one sample"):
        export_bundle(mobilenet_source, cut, tmp_path / "a", [])
    with pytest.raises(CodecError, match="unknown encoding 'int3'"):
        export_bundle(mobilenet_source, cut, tmp_path / "b", mobilenet_samples[:1], codec="int3+zstd")
    with pytest.raises(BundleError, match="manifest result 'top2000': result top_k 2000 exceeds the 1000 scores"):
        export_bundle(mobilenet_source, cut, tmp_path / "c", mobilenet_samples[:1], result="top2000")
    assert list(tmp_path.iterdir()) == []


def test_split_model_and_verify_split(
    mobilenet_source: ModelSource, all_cuts: list[Cut], mobilenet_samples: Samples
) -> None:
    model = mobilenet_source.model
    head, tail = split_model(model, find_cut(all_cuts, "input"))
    assert head is None and [i.name for i in tail.graph.input] == ["input"]
    head, tail = split_model(model, find_cut(all_cuts, "output"))
    assert tail is None and [o.name for o in head.graph.output] == ["output"]
    head, tail = split_model(model, find_cut(all_cuts, RESIDUAL_CUT))
    check = verify_split(model, head, tail, mobilenet_samples[:2], Codec.parse("fp16"))
    assert check.codec == "fp16" and check.samples == ("astronaut", "chelsea")
    assert check.max_abs_diff_fp32 <= 1e-4 and 0 < check.max_abs_diff_codec < 1e-2 and check.top1_agreement_codec == 1.0
