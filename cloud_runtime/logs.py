"""The server's log lines: human text, or one JSON object per line for a log pipeline.

A JSON line has time (UTC, ISO 8601 with milliseconds), level, logger and message, then whatever
the call attached with `extra=` (the access log attaches request_id, model_id, client, code and
ms), then the traceback, if any, under "exc". The message is the same text the text format prints,
so the start-up line still contains "listening on HOST:PORT" for the tools that wait for it.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from cloud_runtime.periodic import Periodic
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


class _UnformattedQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer as they are. The standard QueueHandler formats each one in the
    caller's thread (prepare), which is what moving the work off the request path is for."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _LogWriter:
    """Formats and writes the queued records every `interval_s` (cloud_runtime.periodic). Not the
    standard QueueListener: it wakes on every record, which on a one-core server competes with the
    request that logged it."""

    def __init__(self, handler: logging.Handler, interval_s: float = 0.05) -> None:
        self.records: queue.SimpleQueue = queue.SimpleQueue()
        self._handler = handler
        self._timer = Periodic(self._drain, interval_s, "log-writer")

    def _drain(self) -> None:
        while True:
            try:
                record = self.records.get_nowait()
            except queue.Empty:
                return
            self._handler.handle(record)

    def stop(self) -> None:
        """Writes what is queued and ends the thread."""
        self._timer.stop()


_writer: _LogWriter | None = None


def configure_logging(log_format: str = "text", *, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Sends the root logger's records to `stream` (stderr) in `log_format`; replaces its handlers.

    Records are formatted and written by a thread of their own (within 50 ms): an access line per
    request, formatted and written where it is logged, cost the request ~0.1 ms
    (bench/overhead.py). What is queued is written before the process exits (atexit)."""
    global _writer
    if log_format not in LOG_FORMATS:
        raise SplitInferError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    if _writer is not None:
        _writer.stop()
    _writer = _LogWriter(handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_UnformattedQueueHandler(_writer.records))
    root.setLevel(level)


@atexit.register
def _stop_writer() -> None:
    if _writer is not None:
        _writer.stop()
