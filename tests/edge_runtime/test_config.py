"""EdgeConfig: every option of a client in one frozen object, checked once where it is made; a bad
value is a SplitInferError naming the parameter, the value and the rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_runtime.adaptive import AdaptiveSettings
from edge_runtime.config import EdgeConfig
from edge_runtime.retry import NO_RETRY, RetryPolicy
from protos.codec import Codec
from protos.errors import CodecError, SplitInferError
from protos.transport import DEFAULT_MAX_MESSAGE_BYTES


def test_the_defaults_are_the_clients() -> None:
    config = EdgeConfig()
    assert config.codec is None and config.threads == 1 and config.timeout_s == 30.0
    assert config.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert config.retry == RetryPolicy() and config.adaptive == AdaptiveSettings()
    assert not (config.fallback or config.race_local or config.tls) and config.probe_interval_s == 5.0
    assert config.initial_bandwidth_bps == 5.85e6 and config.initial_rtt_ms is None
    assert config.tls_mode == "off"


def test_a_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EdgeConfig().timeout_s = 1.0  # type: ignore[misc]


def test_a_codec_name_is_parsed_once() -> None:
    assert EdgeConfig(codec="int8+zstd").codec == Codec("int8", "zstd")
    assert EdgeConfig(codec=Codec("fp16")).codec == Codec("fp16")
    with pytest.raises(CodecError, match="unknown encoding 'int3'"):
        EdgeConfig(codec="int3")


@pytest.mark.parametrize(
    ("options", "mode"),
    [
        ({}, "off"),
        ({"tls": True}, "tls"),
        ({"tls_ca": "ca.pem"}, "tls"),
        ({"tls_ca": "ca.pem", "tls_cert": "c.pem", "tls_key": "k.pem"}, "mutual"),
    ],
)
def test_the_tls_mode_follows_the_files(options: dict, mode: str) -> None:
    assert EdgeConfig(**options).tls_mode == mode


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"codec": 8}, "codec 8 is not a codec name"),
        ({"threads": -1}, "threads -1 is not an integer ≥ 0"),
        ({"threads": 1.5}, "threads 1.5 is not an integer ≥ 0"),
        ({"timeout_s": 0}, "timeout_s 0 is not a finite number > 0"),
        ({"timeout_s": float("nan")}, "timeout_s nan is not a finite number > 0"),
        ({"max_message_bytes": 0}, "max_message_bytes 0 is not an integer ≥ 1"),
        ({"token": "two words"}, "token: must be non-empty printable ASCII without spaces"),
        ({"token": ""}, "token: must be non-empty"),
        ({"tls_ca": 3}, "tls_ca 3 is not a path"),
        ({"head_key": 3}, "head_key 3 is not a path"),
        ({"tls": "yes"}, "tls 'yes' is not True or False"),
        ({"fallback": 1}, "fallback 1 is not True or False"),
        ({"race_local": None}, "race_local None is not True or False"),
        ({"retry": 3}, "retry 3 is not a RetryPolicy"),
        ({"probe_interval_s": -1.0}, r"probe_interval_s -1.0 is not a finite number ≥ 0"),
        ({"adaptive": {}}, r"adaptive \{\} is not an AdaptiveSettings"),
        ({"initial_bandwidth_bps": 0.0}, "initial_bandwidth_bps 0.0 is not a finite number > 0"),
        ({"initial_rtt_ms": -5.0}, r"initial_rtt_ms -5.0 is not a finite number ≥ 0 or None"),
        ({"metadata": "application=x"}, r"metadata 'application=x' is not a mapping or a sequence"),
        ({"metadata": [("application",)]}, r"metadata \('application',\) is not a \(key, value\) pair"),
        ({"metadata": {"Application": "x"}}, r"metadata key 'Application' is not lowercase"),
        ({"metadata": {"grpc-timeout": "1S"}}, r"metadata key 'grpc-timeout' is not lowercase .* 'grpc-'"),
        ({"metadata": {"trace-bin": "x"}}, r"metadata key 'trace-bin' is not"),
        ({"metadata": {"authorization": "Bearer x"}}, r"metadata key 'authorization' is the token's"),
        ({"metadata": {"application": "caf\u00e9"}}, r"metadata 'application': value 'caf\u00e9' is not printable"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_bad_options_are_refused_by_name(options: dict, message: str) -> None:
    with pytest.raises(SplitInferError, match=message):
        EdgeConfig(**options)


def test_good_options_are_kept() -> None:
    config = EdgeConfig(
        threads=0,
        timeout_s=0.5,
        token="t0ken",
        tls_ca=Path("ca.pem"),
        retry=NO_RETRY,
        fallback=True,
        probe_interval_s=0,
        initial_rtt_ms=0,
        race_local=True,
    )
    assert (config.threads, config.timeout_s, config.token, config.retry) == (0, 0.5, "t0ken", NO_RETRY)
    assert config.fallback and config.race_local and config.tls_mode == "tls"


def test_metadata_is_kept_as_pairs_in_order() -> None:
    assert EdgeConfig().metadata == ()
    assert EdgeConfig(metadata={"application": "tails", "x-tenant": "a"}).metadata == (
        ("application", "tails"),
        ("x-tenant", "a"),
    )
    assert EdgeConfig(metadata=[["application", "tails"]]).metadata == (("application", "tails"),)


def test_a_token_is_never_in_the_message() -> None:
    with pytest.raises(SplitInferError) as caught:
        EdgeConfig(token="secret with space")
    assert "secret" not in str(caught.value)
