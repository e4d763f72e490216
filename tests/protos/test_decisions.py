"""The decision table's one schema and latency formula (protos.decisions), as both sides use them."""

from __future__ import annotations

import pytest

from protos.decisions import Choice, DecisionTable, latency_ms, transfer_ms
from protos.errors import BundleError

SPLIT = Choice("a", "int8+zstd", head_ms=2.0, encode_ms=0.5, nbytes=10_000, decode_ms=0.25, tail_ms=3.0, head_size=4)
EDGE = Choice("output", "-", 9.0, 0.0, 0, 0.0, 0.0, edge_only=True)


def test_a_split_costs_device_transfer_round_trip_and_server() -> None:
    assert transfer_ms(10_000, 8e6) == pytest.approx(10.0)
    assert SPLIT.predicted_ms(8e6, 40.0) == pytest.approx(2.5 + 10.0 + 40.0 + 3.25)
    assert latency_ms(device_ms=1, transfer_ms=2, rtt_ms=3, server_ms=4) == 10
    assert EDGE.predicted_ms(1.0, 1e6) == 9.0


def test_the_table_survives_its_file_form() -> None:
    table = DecisionTable((SPLIT, EDGE), 40.0, "m", 30.0, "x86_64", {"int8+zstd": [(5e4, 1e6, "output")]})
    again = DecisionTable.from_dict(table.to_dict(), cuts=["a", "output"])
    assert (again.choices, again.model_id, again.edge_slowdown) == (table.choices, "m", 30.0)
    assert again.choices[0].head_size == 4 and again.switching_points == {"int8+zstd": [[5e4, 1e6, "output"]]}
    assert again.best(8e6, 40.0) == EDGE and again.best(8e6, 40.0, offloading=True) == SPLIT


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version 2 is not supported"),
        ({"entries": []}, "no entries"),
        ({"entries": [{"cut": "a"}]}, "malformed decision table: KeyError"),
    ],
)
def test_a_bad_table_is_refused_naming_the_problem(change: dict, message: str) -> None:
    data = {**DecisionTable((SPLIT,), 40.0).to_dict(), **change}
    with pytest.raises(BundleError, match=message):
        DecisionTable.from_dict(data, cuts=["a"])


def test_a_table_naming_a_cut_the_bundle_lacks_is_refused() -> None:
    with pytest.raises(BundleError, match=r"names cuts \['a'\] the bundle does not carry"):
        DecisionTable.from_dict(DecisionTable((SPLIT,), 40.0).to_dict(), cuts=["b"])
