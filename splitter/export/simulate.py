"""A split model run in one process: head → codec → tail with onnxruntime and the real codec, no
server. What the wire does to the answer, measured fast enough to sweep every cut and codec over
many inputs (the benchmarks' task accuracy); latency is measured with the real client and server.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from protos import codec as wire_codec
from protos.bundle import Bundle
from splitter.profile.timing import session


class InProcessSplit:
    def __init__(self, head: onnx.ModelProto | bytes | None, tail: onnx.ModelProto | bytes | None) -> None:
        self.head = session(head, threads=1) if head is not None else None
        self.tail = session(tail, threads=1) if tail is not None else None

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> InProcessSplit:
        read = lambda path: path.read_bytes() if path is not None else None  # noqa: E731
        return cls(read(bundle.head_path), read(bundle.tail_path))

    def run(self, feed: Mapping[str, np.ndarray], codec: wire_codec.Codec) -> tuple[list[np.ndarray], int]:
        """The model outputs and the bytes the cut tensors took on the wire."""
        if self.head is not None:
            names = [o.name for o in self.head.get_outputs()]
            feed = dict(zip(names, self.head.run(None, dict(feed))))
        if self.tail is None:
            return list(feed.values()), 0
        wire = {name: wire_codec.encode(name, array, codec) for name, array in feed.items()}
        decoded = {name: wire_codec.decode(tensor) for name, tensor in wire.items()}
        return self.tail.run(None, decoded), sum(t.ByteSize() for t in wire.values())
