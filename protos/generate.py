"""Regenerates the committed Python stubs from the .proto files.

Stubs are generated with package-relative import paths (`-I` at the repository root), so
`inference_pb2_grpc` imports `protos.splitinfer.v1.inference_pb2` and works from an installed
package. `tests/protos/test_stubs.py` fails when the committed stubs are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = ("protos/splitinfer/v1/inference.proto",)


def generate(out_dir: Path = PROTO_ROOT) -> list[Path]:
    """Runs protoc on every proto file into out_dir; returns the paths written."""
    from grpc_tools import protoc  # dev-only dependency

    for proto in PROTO_FILES:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_ROOT / proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
    return sorted(out_dir.glob("protos/splitinfer/v1/*_pb2*.py"))


if __name__ == "__main__":
    for path in generate():
        print(path)
    sys.exit(0)
