"""A direction's settings: `Shape` checks each field once, where it is made, with an error that
names it; `shape_with` changes a Shape the way every backend's `set_uplink` does; a direction is
"up" or "down"."""

from __future__ import annotations

import pytest

from netemu.shape import Shape, check_direction, shape_with
from netemu.traces import RateTrace
from protos.errors import SplitInferError


def test_shape_checks_its_settings() -> None:
    with pytest.raises(SplitInferError, match="rate_bps"):
        Shape(rate_bps=-1)
    with pytest.raises(SplitInferError, match="not both"):
        Shape(rate_bps=1e6, trace=RateTrace.from_rates([(0.0, 1e6)], period_s=1.0))
    with pytest.raises(SplitInferError, match="queue_bytes"):
        Shape(queue_bytes=0)
    with pytest.raises(SplitInferError, match="delay_ms"):
        Shape(delay_ms=float("nan"))


@pytest.mark.parametrize("loss", [-0.1, 1.0, 1.5, float("nan"), "1%", True])
def test_shape_refuses_a_loss_outside_0_to_1(loss: object) -> None:
    with pytest.raises(SplitInferError, match=r"loss must be a probability in \[0, 1\), got"):
        Shape(loss=loss)  # type: ignore[arg-type]


def test_shape_label_shows_loss() -> None:
    assert "loss 1%" in Shape(rate_bps=1e6, loss=0.01).label
    assert "loss" not in Shape(rate_bps=1e6).label


def test_shape_with_replaces_a_rate_by_a_trace_and_back() -> None:
    trace = RateTrace.from_rates([(0.0, 1e6)], period_s=1.0)
    traced = shape_with(Shape(rate_bps=2e6, delay_ms=5), {"trace": trace})
    assert traced.rate_bps is None and traced.trace is trace and traced.delay_ms == 5
    assert shape_with(traced, {"rate_bps": 3e6}).trace is None
    with pytest.raises(SplitInferError, match=r"unknown link settings \['speed'\]; known: \['rate_bps'"):
        shape_with(Shape(), {"speed": 1})


def test_a_direction_is_up_or_down() -> None:
    assert check_direction("down") == "down"
    with pytest.raises(SplitInferError, match=r"direction 'sideways' is not one of \('up', 'down'\)"):
        check_direction("sideways")
