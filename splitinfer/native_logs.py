"""The native layers' own log lines on the command line: quiet unless `--verbose`.

onnxruntime and gRPC's C++ core write straight to the process's stderr (`[E:onnxruntime:...]`,
`E1204 ... add_port.cc:83] ...`), beside the one line a command prints about the same failure, and
on successful runs too (an export whose batch probe fails on purpose). What they say reaches the
user anyway, as the exceptions the commands turn into that line.

`--verbose` gives them back as the libraries' defaults have them. gRPC reads GRPC_VERBOSITY once, when it is first imported, and the command line imports it before
any option is parsed (protos.errors maps errors to its status codes); so the `splitinfer` script
(splitinfer.__main__.main) reads `--verbose` among the options before the command name and sets it
first. Processes a command starts (the demo's server) inherit it; a value the user exported is kept.
onnxruntime's default logger is set when the root command's options are parsed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

VERBOSE_FLAGS = ("--verbose", "-v")
# onnxruntime's logger severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
_ORT_QUIET, _ORT_VERBOSE = 4, 2


def verbose_requested(args: Sequence[str]) -> bool:
    """Whether `--verbose` is among the root command's options: those before the command's name."""
    for arg in args:
        if not arg.startswith("-"):
            return False
        if arg in VERBOSE_FLAGS:
            return True
    return False


def set_grpc_verbosity(verbose: bool) -> None:
    """Before grpc is imported: its native log as gRPC's default has it (errors), or off."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR" if verbose else "NONE")


def set_onnxruntime_severity(verbose: bool) -> None:
    """onnxruntime's default logger (sessions that do not set their own level): warnings, as its
    default has it, or fatal errors only."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(_ORT_VERBOSE if verbose else _ORT_QUIET)
