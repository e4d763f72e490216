"""The NetworkModel: rates and durations in the units people write, presets, and command-line
overrides of a preset."""

from __future__ import annotations

import pytest

from protos.errors import SplitInferError
from protos.units import parse_duration_ms, parse_rate_bps
from splitter.cost.network import PRESETS, NetworkModel, resolve_network


@pytest.mark.parametrize(
    ("text", "bps"),
    [
        ("5.85mbit", 5.85e6),
        ("5.85Mbit", 5.85e6),
        ("300kbit", 300e3),
        ("18.88Mbps", 18.88e6),
        ("1MB/s", 8e6),  # upper-case B: bytes
        ("1Mb/s", 1e6),  # lower-case b: bits
        ("2.5kB/s", 20e3),
        ("1GB/s", 8e9),
        ("1gbit", 1e9),
        ("100bps", 100.0),
        ("1mibit", 1024.0**2),
        (".5mbit", 0.5e6),
        ("1e3kbit", 1e6),
        (" 40 mbit ", 40e6),
    ],
)
def test_parse_rate(text: str, bps: float) -> None:
    assert parse_rate_bps(text) == pytest.approx(bps, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("5.85", "has no unit; write e.g. 5.85mbit"),
        ("fast", "is not a number with a unit"),
        ("", "is not a number with a unit"),
        ("mbit", "is not a number with a unit"),
        ("-1mbit", "is not a number with a unit"),
        ("0mbit", "must be positive"),
        ("5 furlongs", "unknown unit 'furlongs'"),
        ("5MiB/s", "unknown unit 'MiB/s'"),
        ("5.85mbit/s/s", "unknown unit"),
        ("1e400mbit", "is not a finite rate"),
    ],
)
def test_bad_rates_are_refused_by_name(text: str, fragment: str) -> None:
    with pytest.raises(SplitInferError) as info:
        parse_rate_bps(text)
    assert f"bandwidth {text!r}" in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("40ms", 40.0),
        ("0.1s", 100.0),
        ("500us", 0.5),
        ("2s", 2000.0),
        ("0ms", 0.0),
        (" 12.5 MS ", 12.5),
        ("1e2ms", 100.0),
    ],
)
def test_parse_duration(text: str, ms: float) -> None:
    assert parse_duration_ms(text) == pytest.approx(ms, rel=1e-12)


@pytest.mark.parametrize("text", ["fast", "40", "", "ms", "-5ms", "40 minutes", "40msec", "4h"])
def test_bad_durations_are_refused_by_name(text: str) -> None:
    with pytest.raises(SplitInferError) as info:
        parse_duration_ms(text)
    assert f"duration {text!r} is not a number with a unit like 40ms" in str(info.value)


def test_network_model_checks_its_values_and_costs_bytes() -> None:
    net = NetworkModel.parse("8mbit", "40ms")
    assert (net.bandwidth_bps, net.rtt_ms, net.name) == (8e6, 40.0, "")
    assert net.transfer_ms(1_000_000) == pytest.approx(1000.0)  # 8 Mbit over 8 Mbit/s
    assert net.transfer_ms(0) == 0.0
    assert net.label == "8 Mbit/s, RTT 40 ms"
    assert NetworkModel(5.85e6, 40.0, "4G").label == "4G (5.85 Mbit/s, RTT 40 ms)"
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(SplitInferError, match="bandwidth_bps must be positive"):
            NetworkModel(bad, 10.0)
    with pytest.raises(SplitInferError, match="rtt_ms must be non-negative"):
        NetworkModel(1e6, -1.0)


def test_presets_are_the_literatures_conditions() -> None:
    assert {name: (n.bandwidth_bps, n.rtt_ms) for name, n in PRESETS.items()} == {
        "cat1": (0.13e6, 100.0),
        "3g": (1.1e6, 80.0),
        "4g": (5.85e6, 40.0),
        "wifi": (18.88e6, 10.0),
    }
    rates = [n.bandwidth_bps for n in PRESETS.values()]
    assert rates == sorted(rates)


def test_resolve_network_overrides_a_preset() -> None:
    assert resolve_network("4g", None, None) == PRESETS["4g"]
    assert resolve_network("WiFi", None, None) == PRESETS["wifi"]
    # An override replaces one value and drops the preset's name (it is no longer that network).
    assert resolve_network("4g", "1mbit", None) == NetworkModel(1e6, 40.0, "")
    # An RTT leaves the preset's downlink; a new uplink rate makes the link symmetric unless a
    # downlink is given too.
    assert resolve_network("4g", None, "5ms") == NetworkModel(5.85e6, 5.0, "", downlink_bps=13e6)
    assert resolve_network("4g", None, None, "2mbit") == NetworkModel(5.85e6, 40.0, "", downlink_bps=2e6)
    assert resolve_network(None, "1mbit", "10ms", "8mbit").label == "1 Mbit/s up, 8 down, RTT 10 ms"
    assert resolve_network("3g", "5.85mbit", "40ms") == NetworkModel(5.85e6, 40.0, "")
    assert resolve_network(None, "300kbit", "0.1s") == NetworkModel(300e3, 100.0, "")


def test_the_reply_crosses_the_downlink() -> None:
    link = NetworkModel(1e6, 10.0, downlink_bps=4e6)
    assert link.transfer_ms(1000) == pytest.approx(8.0) and link.result_ms(1000) == pytest.approx(2.0)
    assert NetworkModel(1e6, 10.0).result_ms(1000) == pytest.approx(8.0)  # symmetric by default
    with pytest.raises(SplitInferError, match="downlink_bps must be positive"):
        NetworkModel(1e6, 10.0, downlink_bps=-1)


def test_resolve_network_errors() -> None:
    with pytest.raises(SplitInferError, match="unknown network '5g'; presets: cat1, 3g, 4g, wifi"):
        resolve_network("5g", None, None)
    with pytest.raises(SplitInferError, match="both --bandwidth and --rtt"):
        resolve_network(None, "1mbit", None)
    with pytest.raises(SplitInferError, match="both --bandwidth and --rtt"):
        resolve_network(None, None, None)
    with pytest.raises(SplitInferError, match="bandwidth '5.85' has no unit"):
        resolve_network("4g", "5.85", None)
    with pytest.raises(SplitInferError, match="duration 'fast'"):
        resolve_network("4g", None, "fast")
