"""The committed stubs are what protoc makes of the committed .proto (fails when they are stale)."""

from __future__ import annotations

from pathlib import Path

from protos.generate import PROTO_ROOT, generate


def test_committed_stubs_are_up_to_date(tmp_path: Path) -> None:
    generated = generate(tmp_path)
    assert [p.name for p in generated] == ["inference_pb2.py", "inference_pb2_grpc.py"]
    for path in generated:
        committed = PROTO_ROOT / path.relative_to(tmp_path)
        assert path.read_bytes() == committed.read_bytes(), f"{committed} is stale: run `make protos`"
