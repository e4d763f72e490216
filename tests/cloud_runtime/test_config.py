"""ServerConfig: a bad option is refused where the config is built, before any tail loads, with a
message naming the parameter, the value and the rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cloud_runtime.batch_queue import BatchingConfig
from cloud_runtime.config import ServerConfig
from protos.errors import SplitInferError
from protos.tls import TLSConfigError, TLSFiles
from protos.transport import DEFAULT_MAX_MESSAGE_BYTES


@pytest.mark.parametrize(
    "options, message",
    [
        ({"host": ""}, "host '' must be a non-empty address to listen on"),
        ({"port": -1}, "port -1 is not a port: give 1 to 65535, or 0 for any free port"),
        ({"port": 65536}, "port 65536 is not a port"),
        ({"port": True}, "port True is not a port"),
        ({"metrics_port": 70000}, "metrics_port 70000 is not a port"),
        ({"health_port": -5}, "health_port -5 is not a port"),
        ({"threads": -1}, "threads -1 must be an integer of at least 0 (0 or None: onnxruntime's default)"),
        ({"threads": 1.5}, "threads 1.5 must be an integer"),
        ({"max_workers": 0}, "max_workers 0 must be at least 1"),
        ({"batching": {"max_batch": 4}}, "batching {'max_batch': 4} must be a BatchingConfig"),
        ({"max_message_bytes": 0}, "max_message_bytes 0 is not between 1 and 2147483647 (gRPC's limit)"),
        ({"max_message_bytes": 2**31}, "max_message_bytes 2147483648 is not between 1"),
        ({"grace_s": -1.0}, "grace_s -1.0 must be a finite number of seconds, at least 0"),
        ({"grace_s": float("nan")}, "grace_s nan must be a finite number"),
        ({"grace_s": float("inf")}, "grace_s inf must be a finite number"),
    ],
)
def test_bad_server_options_are_refused_by_name(options: dict, message: str) -> None:
    with pytest.raises(SplitInferError, match=re.escape(message)):
        ServerConfig(["bundle"], **options)


def test_one_bundle_not_in_a_list_is_refused() -> None:
    with pytest.raises(SplitInferError, match=re.escape("bundles 'bundle/' must be a list of bundle directories")):
        ServerConfig("bundle/")  # type: ignore[arg-type]


def test_tls_without_a_server_certificate_is_refused() -> None:
    message = "server TLS needs a certificate and its key (tls.cert is None)"
    with pytest.raises(TLSConfigError, match=re.escape(message)):
        ServerConfig(["bundle"], tls=TLSFiles(ca="ca.pem"))


def test_defaults_and_lists_are_kept_as_given(tmp_path: Path) -> None:
    config = ServerConfig([tmp_path], trust_keys=[tmp_path / "alice.pub"], port=0, metrics_port=0, health_port=65535)
    # Lists become tuples: the config is immutable and can be shared.
    assert config.bundles == (tmp_path,) and config.trust_keys == (tmp_path / "alice.pub",)
    assert config.host == "127.0.0.1" and config.batching == BatchingConfig()
    assert config.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES and config.grace_s == 5.0
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]
