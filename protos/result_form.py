"""The form of a reply's outputs: their codec and, for classifiers, server-side top-k.

A result crosses the downlink, which on a cellular link is as slow as the uplink: 1000 fp32 logits
are 4 KB, 246 ms down a 0.13 Mbit/s link, where the top 5 (values and indices) are 60 bytes. The
edge asks for a form in each request (`ResultSpec`); a bundle can name a default (manifest
"result"), which the server applies to a request that asks for none. Both sides shape outputs with
`select`, so a result has the same names and shapes whether the server or the device's own tail
answered it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from protos.codec import Codec, compression_name, encode, encoding_name
from protos.errors import CodecError
from protos.splitinfer.v1 import inference_pb2 as pb

TOP_K_VALUES = ":topk_values"
TOP_K_INDICES = ":topk_indices"
_TEXT = re.compile(r"(?:top(?P<k>\d+))?(?::?(?P<codec>[a-z0-9]+(?:\+[a-z0-9]+)?))?")


@dataclass(frozen=True)
class ResultForm:
    """`codec` for the returned values; `top_k` > 0: only each output's k largest scores."""

    codec: Codec = Codec("fp32", "none")
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise CodecError(f"top_k must be 0 (every score) or positive, got {self.top_k}")

    @classmethod
    def parse(cls, text: str) -> ResultForm:
        """`fp32`, `fp16+zstd`, `top5`, `top5:fp16`: a codec, a top-k, or both."""
        match = _TEXT.fullmatch(text.strip().lower())
        if match is None or not (match["k"] or match["codec"]):
            raise CodecError(f"result form {text!r} is not CODEC, topK or topK:CODEC (e.g. fp16+zstd, top5)")
        try:
            codec = Codec.parse(match["codec"]) if match["codec"] else Codec()
        except CodecError as err:
            raise CodecError(f"result form {text!r}: {err}") from None
        return cls(codec, int(match["k"] or 0))

    @property
    def name(self) -> str:
        if not self.top_k:
            return self.codec.name
        return f"top{self.top_k}" if self.codec == Codec() else f"top{self.top_k}:{self.codec.name}"

    def __str__(self) -> str:
        return self.name

    def to_wire(self) -> pb.ResultSpec:
        return pb.ResultSpec(
            encoding=self.codec.encoding_wire,
            compression=self.codec.compression_wire,
            top_k=self.top_k,
        )

    @classmethod
    def from_wire(cls, spec: pb.ResultSpec) -> ResultForm:
        """The form a request asks for; CodecError naming the value it cannot honour."""
        unset_encoding, unset_compression = spec.encoding == pb.ENCODING_UNSPECIFIED, spec.compression == 0
        encoding = "fp32" if unset_encoding else encoding_name(spec.encoding)
        compression = "none" if unset_compression else compression_name(spec.compression)
        if encoding is None:
            raise CodecError(f"result encoding: unknown enum value {spec.encoding}")
        if compression is None:
            raise CodecError(f"result compression: unknown enum value {spec.compression}")
        return cls(Codec(encoding, compression), spec.top_k)

    def output_names(self, outputs: Sequence[str]) -> list[str]:
        """The names a result in this form carries, for a model with `outputs`."""
        if not self.top_k:
            return list(outputs)
        return [f"{name}{suffix}" for name in outputs for suffix in (TOP_K_VALUES, TOP_K_INDICES)]

    def check(self, name: str, shape: Sequence[int]) -> None:
        """Refuses a top-k that output `name` of `shape` cannot give (k beyond its last axis)."""
        if self.top_k and (not shape or 0 <= shape[-1] < self.top_k):
            classes = shape[-1] if shape else "no"
            raise CodecError(f"result top_k {self.top_k} exceeds the {classes} scores of output {name!r}")

    def check_outputs(self, outputs: Iterable) -> None:
        """`check` for each of a model's outputs (anything with a `name` and a `shape`: TensorSpec)."""
        for spec in outputs:
            self.check(spec.name, spec.shape)

    def select(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs in this form (before the codec): as they are, or each one's top k
        along its last axis, largest first (ties to the lower index)."""
        if not self.top_k:
            return dict(outputs)
        selected: dict[str, np.ndarray] = {}
        for name, scores in outputs.items():
            scores = np.asarray(scores)
            self.check(name, scores.shape)
            # A stable sort of the negated scores puts equal scores in index order.
            order = np.argsort(-scores, axis=-1, kind="stable")[..., : self.top_k]
            selected[name + TOP_K_VALUES] = np.take_along_axis(scores, order, axis=-1)
            selected[name + TOP_K_INDICES] = order.astype(np.int64)
        return selected

    def encode(self, outputs: Mapping[str, np.ndarray]) -> list[pb.Tensor]:
        """The wire tensors of `outputs` in this form (indices travel raw: they are int64)."""
        return [encode(name, value, self.codec) for name, value in self.select(outputs).items()]
