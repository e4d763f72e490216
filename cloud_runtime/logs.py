"""The server's log lines: human text, or one JSON object per line for a log pipeline.

A JSON line has time (UTC, ISO 8601 with milliseconds), level, logger and message, then whatever
the call attached with `extra=` (the access log attaches request_id, model_id, client, code and
ms), then the traceback, if any, under "exc". The message is the same text the text format prints,
so the start-up line still contains "listening on HOST:PORT" for the tools that wait for it.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from protos.errors import SplitInferError

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # A leading underscore marks a library's own bookkeeping (Ray stamps every record with
        # `_ray_timestamp_ns` once imported), not an extra of the call.
        line.update(
            (key, value) for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")
        )
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # default=str: an extra that JSON cannot hold (a Path, an enum) is written as its text
        # rather than losing the whole line.
        return json.dumps(line, default=str)


def configure_logging(log_format: str = "text", *, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Sends the root logger's records to `stream` (stderr) in `log_format`; replaces its handlers."""
    if log_format not in LOG_FORMATS:
        raise SplitInferError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
