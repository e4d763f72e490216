"""`python -m splitinfer ...` = `splitinfer ...`: both start here, where gRPC's log verbosity is
set before gRPC is imported (splitinfer.native_logs)."""

from __future__ import annotations

import sys

from splitinfer.native_logs import set_grpc_verbosity, verbose_requested


def main() -> None:
    set_grpc_verbosity(verbose_requested(sys.argv[1:]))
    from splitinfer.app import app

    app()


if __name__ == "__main__":
    main()
