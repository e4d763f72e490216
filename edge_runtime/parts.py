"""The parts of the device an EdgeClient runs, each a seam: the head, the tensor encoder and the tail.

`Head`, `Encoder` and `Tail` are what the client needs of each; `load_head` and `TensorEncoder`
are the parts it makes when none is given, and edge_runtime.local_tail's `LocalTail` is the tail.
An emulated device (experiment.device) wraps these defaults to pace or stretch them and hands the
wrapped parts to the client's constructor.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_runtime.head import HeadRunner, SegmentedHead
from edge_runtime.local_tail import Cancel
from protos.bundle import Bundle, MultiCutBundle
from protos.codec import Clamp, Codec, encode
from protos.head_encryption import read_key
from protos.splitinfer.v1 import inference_pb2 as pb


class Head(Protocol):
    """`run(inputs) -> cut tensors` (a multi-cut bundle's head also takes the cut: `run(inputs, cut)`)."""

    def run(self, inputs: Mapping[str, np.ndarray], *cut: str) -> dict[str, np.ndarray]: ...


class Encoder(Protocol):
    """The wire tensors of the tensors `cut` sends, in `codec`."""

    def encode(
        self, tensors: Mapping[str, np.ndarray], codec: Codec, cut: str, clamps: Mapping[str, Clamp]
    ) -> list[pb.Tensor]: ...


class Tail(Protocol):
    """The model's outputs computed here from the tensors `cut` sends; `cancel` stops the run."""

    def run(
        self, tensors: Mapping[str, np.ndarray], cut: str, cancel: Cancel | None = None
    ) -> dict[str, np.ndarray]: ...


def load_head(
    bundle: Bundle | MultiCutBundle, threads: int = 1, head_key: str | Path | None = None
) -> HeadRunner | SegmentedHead:
    """The head a bundle runs here: its head.onnx (decrypted with `head_key` when encrypted), or
    a multi-cut bundle's segments."""
    if isinstance(bundle, MultiCutBundle):
        if head_key is not None:
            read_key(head_key)  # no segment is encrypted, but a wrong path is reported, not skipped
        return SegmentedHead(bundle, threads=threads)
    return HeadRunner(bundle, threads=threads, head_key=head_key)


class TensorEncoder:
    """Encodes the tensors a cut sends with the codec (protos.codec), each clamped first to the
    range its manifest spec gives (`clamps`: what the tail clamps it to anyway)."""

    def encode(
        self, tensors: Mapping[str, np.ndarray], codec: Codec, cut: str, clamps: Mapping[str, Clamp]
    ) -> list[pb.Tensor]:
        return [encode(name, array, codec, clamps.get(name)) for name, array in tensors.items()]
