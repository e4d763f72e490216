"""Structured logs: `splitinfer serve --log-format json` writes one JSON object per line, an access
line per request with its fields, and a start-up line that still says where it listens."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from bundles import tiny_input

from cloud_runtime.config import ServerConfig
from cloud_runtime.logs import JsonFormatter, configure_logging
from cloud_runtime.process import start_server_process
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from protos.errors import SplitInferError


def test_a_json_line_has_the_standard_fields_the_extras_and_the_traceback() -> None:
    logger = logging.getLogger("test.json")
    record = logger.makeRecord(
        "test.json",
        logging.INFO,
        __file__,
        1,
        "served %s in %.1f ms",
        ("r1", 2.0),
        None,
        extra={"code": "OK", "path": Path("/x")},
    )
    line = json.loads(JsonFormatter().format(record))
    assert line.pop("time").endswith("+00:00")
    assert line == {
        "level": "INFO",
        "logger": "test.json",
        "message": "served r1 in 2.0 ms",
        "code": "OK",
        "path": "/x",
    }
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logger.makeRecord("test.json", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info())
    assert "ValueError: boom" in json.loads(JsonFormatter().format(failed))["exc"]


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(SplitInferError, match="log format 'xml' is not one of text, json"):
        configure_logging("xml", stream=io.StringIO())


@pytest.mark.timeout(60)
def test_serve_writes_json_lines_with_an_access_line_per_request(tiny_bundle: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("phone-1 t0ken-phone-1\n")
    config = ServerConfig([tiny_bundle], threads=1, tokens=tokens, metrics_port=0, health_port=0)
    with start_server_process(config, extra_args=["--log-format", "json"]) as server:
        with EdgeClient(tiny_bundle, server.address, EdgeConfig(token="t0ken-phone-1")) as client:
            result = client.infer(tiny_input())
        access = _wait_for(server.log_tail, lambda line: line.get("request_id") == result.request_id)
        lines = [json.loads(text) for text in list(server.log_tail)]
        server.stop()
        assert server.process.returncode == 0

    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    listening = next(line for line in lines if "listening on" in line["message"])
    assert re.search(
        rf"listening on {re.escape(server.address)} \(tls: off, auth: tokens of 1 client\(s\)\)", listening["message"]
    )
    assert access["logger"] == "cloud_runtime.access" and access["level"] == "INFO"
    assert access["model_id"] == "tiny" and access["client"] == "phone-1" and access["code"] == "OK"
    assert 0 < access["ms"] < 10_000

    # The metrics line says where to scrape, and the request is there.
    metrics_url = re.search(
        r"metrics on (http://\S+)", next(line["message"] for line in lines if "metrics on" in line["message"])
    )
    assert metrics_url, lines
    assert any("health checks (plaintext) on 127.0.0.1:" in line["message"] for line in lines)


def test_the_metrics_endpoint_of_a_server_process_scrapes(tiny_bundle: Path) -> None:
    with start_server_process(ServerConfig([tiny_bundle], threads=1, metrics_port=0)) as server:
        line = _wait_for_text(server.log_tail, "metrics on ")
        url = re.search(r"metrics on (http://\S+)", line).group(1)  # type: ignore[union-attr]
        with EdgeClient(tiny_bundle, server.address) as client:
            client.infer(tiny_input())
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
    assert 'splitinfer_requests_total{client="anonymous",code="OK",model="tiny"} 1.0' in text


def _wait_for(log_tail, match, timeout_s: float = 10.0) -> dict:
    """The first JSON line of the server's log that `match`es; the log is read by another thread."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for text in list(log_tail):
            line = json.loads(text)
            if match(line):
                return line
        time.sleep(0.02)
    raise AssertionError(f"no such line in {list(log_tail)}")


def _wait_for_text(log_tail, fragment: str, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(log_tail):
            if fragment in line:
                return line
        time.sleep(0.02)
    raise AssertionError(f"{fragment!r} not in {list(log_tail)}")
