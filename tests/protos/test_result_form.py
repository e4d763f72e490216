"""The form of a reply's outputs (protos.result_form): parsing, the wire spec, top-k selection."""

from __future__ import annotations

import numpy as np
import pytest

from protos.codec import Codec, decode
from protos.errors import CodecError
from protos.result_form import ResultForm
from protos.splitinfer.v1 import inference_pb2 as pb


@pytest.mark.parametrize(
    "text, codec, top_k",
    [("fp32", "fp32", 0), ("fp16+zstd", "fp16+zstd", 0), ("top5", "fp32", 5), ("TOP3:int8+zstd", "int8+zstd", 3)],
)
def test_forms_parse_and_survive_the_wire(text: str, codec: str, top_k: int) -> None:
    form = ResultForm.parse(text)
    assert (form.codec, form.top_k) == (Codec.parse(codec), top_k)
    assert ResultForm.from_wire(pb.ResultSpec.FromString(form.to_wire().SerializeToString())) == form
    assert ResultForm.parse(form.name) == form


@pytest.mark.parametrize("text", ["", "top", "top5:", "top5:gzip", "bogus", "top-1"])
def test_a_malformed_form_is_refused_naming_it(text: str) -> None:
    with pytest.raises(CodecError, match="result form|unknown"):
        ResultForm.parse(text)


def test_an_unset_spec_is_raw_and_an_unknown_enum_is_named() -> None:
    assert ResultForm.from_wire(pb.ResultSpec()) == ResultForm()
    with pytest.raises(CodecError, match="result encoding: unknown enum value 77"):
        ResultForm.from_wire(pb.ResultSpec(encoding=77))
    with pytest.raises(CodecError, match="result compression: unknown enum value 9"):
        ResultForm.from_wire(pb.ResultSpec(compression=9))
    with pytest.raises(CodecError, match="top_k must be"):
        ResultForm.from_wire(pb.ResultSpec(top_k=-2))


def test_top_k_is_the_largest_scores_largest_first_ties_by_index() -> None:
    scores = np.array([[0.5, 3.0, -1.0, 3.0, 2.0], [9.0, 8.0, 7.0, 6.0, 5.0]], np.float32)
    selected = ResultForm(top_k=3).select({"logits": scores})
    assert list(selected) == ["logits:topk_values", "logits:topk_indices"]
    np.testing.assert_array_equal(selected["logits:topk_indices"], [[1, 3, 4], [0, 1, 2]])
    np.testing.assert_array_equal(selected["logits:topk_values"], [[3.0, 3.0, 2.0], [9.0, 8.0, 7.0]])
    assert selected["logits:topk_indices"].dtype == np.int64


def test_a_top_k_beyond_the_scores_is_refused() -> None:
    with pytest.raises(CodecError, match="top_k 6 exceeds the 5 scores of output 'logits'"):
        ResultForm(top_k=6).select({"logits": np.zeros((1, 5), np.float32)})
    ResultForm(top_k=6).check("logits", (1, -1))  # a dynamic last axis is checked at run time


def test_encoded_top_k_decodes_to_the_selection_and_indices_stay_exact() -> None:
    scores = np.random.default_rng(0).standard_normal((1, 1000)).astype(np.float32)
    form = ResultForm.parse("top5:fp16+zstd")
    tensors = {t.name: t for t in form.encode({"logits": scores})}
    assert tensors["logits:topk_indices"].encoding == pb.ENCODING_RAW
    assert tensors["logits:topk_values"].encoding == pb.ENCODING_FP16
    expected = ResultForm(top_k=5).select({"logits": scores})
    np.testing.assert_array_equal(decode(tensors["logits:topk_indices"]), expected["logits:topk_indices"])
    np.testing.assert_allclose(decode(tensors["logits:topk_values"]), expected["logits:topk_values"], rtol=1e-3)
    assert sum(t.ByteSize() for t in tensors.values()) < 200  # where the raw logits are 4000 bytes
