"""The codec as part of the plan: `codec="auto"` chooses among (cut, codec) pairs within an error
budget, so a slow uplink gets the codec that sends fewest bytes and a fast one skips the encode
time that no longer pays."""

from __future__ import annotations

import dataclasses

import pytest
from handmade import cut, profile

from protos.errors import SplitInferError
from splitter.cost.network import NetworkModel
from splitter.cost.plan import parse_error_budget, plan
from splitter.profile.schema import CodecCost


def _with_int4(c):
    """Adds a 4-bit codec: a quarter of int8's bytes, more encode time, 5% error."""
    if c.name == "output":
        return c
    int8 = c.codecs["int8+zstd"]
    codecs = {**c.codecs, "int4ch+zstd": CodecCost(int8.nbytes // 4, int8.encode_ms * 2, int8.decode_ms, 0.05)}
    return dataclasses.replace(c, codecs=codecs)


@pytest.fixture
def chain():
    cuts = [
        cut("a", 1, 1.0, 4.0, 100_000, encode_ms=3.0),
        cut("b", 2, 3.0, 3.0, 30_000, encode_ms=1.0),
        cut("output", 3, 600.0, 0.0, 0),
    ]
    return profile([_with_int4(c) for c in cuts])


def test_the_codec_follows_the_bandwidth(chain) -> None:
    slow, fast = NetworkModel(1e6, 20.0), NetworkModel(1e9, 1.0)
    assert plan(chain, slow, codec="auto", max_error=0.01).chosen.codec == "int8+zstd"
    assert (
        plan(chain, fast, codec="auto", max_error=0.01).chosen.codec == "fp32"
    )  # encoding would cost more than it saves


def test_the_error_budget_admits_lossier_codecs(chain) -> None:
    slow = NetworkModel(1e6, 20.0)
    assert plan(chain, slow, codec="auto", max_error=0.01).chosen.codec == "int8+zstd"
    assert plan(chain, slow, codec="auto", max_error=0.10).chosen.codec == "int4ch+zstd"
    # Only lossless codecs: 120 KB at 1 Mbit/s loses to the device alone.
    assert plan(chain, slow, codec="auto", max_error=0.0).chosen.is_edge_only


def test_an_auto_plan_is_the_best_of_the_fixed_codec_plans(chain) -> None:
    for bps in (1e5, 1e6, 1e7, 1e8, 1e9):
        net = NetworkModel(bps, 10.0)
        auto = plan(chain, net, codec="auto", max_error=0.01).chosen
        fixed = min((plan(chain, net, codec=c).chosen for c in ("fp32", "int8+zstd")), key=lambda c: c.total_ms)
        assert auto.total_ms == pytest.approx(fixed.total_ms)


def test_best_per_cut_and_baselines(chain) -> None:
    result = plan(chain, NetworkModel(1e6, 20.0), codec="auto", max_error=0.1)
    assert [c.name for c in result.best_per_cut()] == ["a", "b", "output"]
    assert result.baseline("output").is_edge_only
    assert sum(c.name == "output" for c in result.costs) == 1  # the all-on-device cut has no codec


@pytest.mark.parametrize(("text", "value"), [("1%", 0.01), ("0.5%", 0.005), ("0.02", 0.02), ("0", 0.0)])
def test_error_budgets_parse(text: str, value: float) -> None:
    assert parse_error_budget(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "one", "120%", "-1%", "1"])
def test_bad_error_budgets_are_named(text: str) -> None:
    with pytest.raises(SplitInferError, match="error budget"):
        parse_error_budget(text)
