"""Trace files: the shared cellular traces load with the mean rates their README states, the trace
repeats, CSV rates become delivery opportunities, and a bad file is refused naming file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from netemu.traces import RateTrace, load_trace, save_mahimahi, splice
from protos.errors import SplitInferError

SHIPPED_TRACES = Path(__file__).resolve().parents[2] / "experiment" / "examples" / "traces"

# Mean uplink rates (Mbit/s, to the digits given) and lengths from the traces' README.md.
README_MEANS = {
    "ATT-LTE-driving-2016.up": (1.91, 0.005, 120),
    "lte-3g-handover.up": (4.53, 0.005, 120),
    "tmobile-lte-120s.up": (11.2, 0.05, 120),
    "tmobile-umts-120s.up": (0.63, 0.005, 120),
    "verizon-evdo-120s.up": (0.88, 0.005, 120),
}


@pytest.mark.parametrize("name", sorted(README_MEANS))
def test_shipped_traces_have_the_readme_mean_rates(name: str) -> None:
    trace = load_trace(SHIPPED_TRACES / name)
    mean_mbit, digits, duration_s = README_MEANS[name]
    assert trace.mean_rate_bps / 1e6 == pytest.approx(mean_mbit, abs=digits)
    assert trace.duration_s == pytest.approx(duration_s, abs=1)
    # Over whole periods, what the trace carries is its mean rate.
    assert trace.bytes_between(0, 2 * trace.duration_s) * 8 / (2 * trace.duration_s) == pytest.approx(
        trace.mean_rate_bps
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_mahimahi_opportunities_repeat_with_the_last_timestamp_as_period(tmp_path: Path) -> None:
    # Two packets at 1 ms, one at 3 ms, one at 4 ms: 4 packets per 4 ms = 12 Mbit/s.
    trace = load_trace(write(tmp_path, "t.up", "1\n1\n3\n4\n"))
    assert trace.period_ms == 4.0
    assert trace.mean_rate_bps == pytest.approx(4 * 1500 * 8 / 0.004)
    assert list(trace.iter_opportunities_s(0, 0.0085)) == pytest.approx(
        [0.001, 0.001, 0.003, 0.004, 0.005, 0.005, 0.007, 0.008]
    )
    assert trace.next_opportunity_s(0.004) == pytest.approx(0.005)
    assert trace.next_opportunity_s(0.004, 3) == pytest.approx(0.007)
    assert trace.bytes_between(0.001, 0.005) == 4 * 1500  # (1 ms, 5 ms]: 3, 4, 5, 5
    assert trace.count_until(4.0) == 4000


def test_csv_rates_become_opportunities_at_the_integrated_rate(tmp_path: Path) -> None:
    text = "# uplink of a test\nseconds,mbit\n0,1.2\n1,3.6\n2,0\n3,2.4  # last row lasts as long as the gap before it\n"
    trace = load_trace(write(tmp_path, "t.csv", text))
    assert trace.duration_s == 4.0
    assert trace.mean_rate_bps == pytest.approx((1.2 + 3.6 + 0 + 2.4) / 4 * 1e6)
    for second, mbit in enumerate((1.2, 3.6, 0.0, 2.4)):
        assert trace.rate_bps_at(second + 0.001, 0.998) / 1e6 == pytest.approx(mbit, abs=0.02)
    # 1.2 Mbit/s is one 1500-byte packet every 10 ms.
    assert trace.next_opportunity_s(0.0) == pytest.approx(0.010)
    # The outage carries nothing; the next packet comes after it.
    assert trace.bytes_between(2.0, 3.0) == 0
    assert 3.0 < trace.next_opportunity_s(2.0) < 3.01


def test_trace_is_a_value() -> None:
    trace = RateTrace.from_rates([(0.0, 8e6)], period_s=1.0)
    with pytest.raises(ValueError):
        trace.opportunities_ms[0] = 5.0
    with pytest.raises(AttributeError):
        trace.period_ms = 3.0  # type: ignore[misc]
    assert np.all(np.diff(trace.opportunities_ms) > 0)


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        ("bad.up", "1\n2\nthree\n", ["bad.up", "line 3", "'three'"]),
        ("back.up", "5\n7\n6\n", ["back.up", "line 3", "6", "7"]),
        ("neg.up", "-1\n", ["line 1", "negative"]),
        ("empty.up", "\n", ["empty.up", "empty"]),
        ("zero.up", "0\n0\n", ["lasts 0 ms"]),
        ("cols.csv", "0,1\n1,2,3\n", ["cols.csv", "line 2", "seconds,Mbit/s"]),
        ("rate.csv", "0,1\n1,-2\n", ["line 2", "'-2'"]),
        ("time.csv", "0,1\n2,1\n1,1\n", ["line 3", "'1' s", "2"]),
        ("none.csv", "seconds,mbit\n", ["none.csv", "no `seconds,Mbit/s` rows"]),
        ("outage.csv", "0,0\n1,0\n", ["outage.csv", "carries nothing"]),
    ],
)
def test_bad_traces_are_refused_naming_file_and_line(
    tmp_path: Path, name: str, text: str, fragments: list[str]
) -> None:
    with pytest.raises(SplitInferError) as caught:
        load_trace(write(tmp_path, name, text))
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_missing_and_binary_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SplitInferError, match="does not exist"):
        load_trace(tmp_path / "nope.up")
    binary = tmp_path / "blob.up"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(SplitInferError, match="not a text file"):
        load_trace(binary)


def test_a_splice_joins_pieces_of_traces_and_round_trips_through_mahimahi(tmp_path: Path) -> None:
    fast = RateTrace.from_rates([(0.0, 12e6)], period_s=10.0, source="fast")
    slow = RateTrace.from_rates([(0.0, 0.6e6)], period_s=10.0, source="slow")
    fast = load_trace(save_mahimahi(fast, tmp_path / "fast.up"))
    slow = load_trace(save_mahimahi(slow, tmp_path / "slow.up"))
    # 3 s of the fast one from 8 s (it repeats past its 10 s), then 2 s of the slow one.
    spliced = splice([(fast, 8.0, 3.0), (slow, 0.0, 2.0)])
    assert spliced.duration_s == pytest.approx(5.0)
    assert spliced.rate_bps_at(1.0) == pytest.approx(12e6, rel=0.02)
    assert spliced.rate_bps_at(3.5) == pytest.approx(0.6e6, rel=0.05)
    again = load_trace(save_mahimahi(spliced, tmp_path / "spliced.up"))
    assert again.duration_s == pytest.approx(5.0)
    assert again.mean_rate_bps == pytest.approx(spliced.mean_rate_bps, rel=0.01)
    with pytest.raises(SplitInferError, match="length 0"):
        splice([(fast, 0.0, 0.0)])


def test_a_scaled_trace_keeps_its_shape_at_a_multiple_of_its_rate(tmp_path: Path) -> None:
    from netemu.traces import scaled

    # 6 Mbit/s for 2 s, a 1 s stall, 1.2 Mbit/s for 2 s (whole 1500-byte packets, as mahimahi's).
    trace = RateTrace.from_rates([(0.0, 6e6), (2.0, 0.0), (3.0, 1.2e6)], period_s=5.0, source="steps")
    trace = load_trace(save_mahimahi(trace, tmp_path / "steps.up"))
    for factor in (0.5, 0.3, 2.0, 2.5):
        faster = scaled(trace, factor)
        assert faster.duration_s == trace.duration_s
        assert faster.mean_rate_bps == pytest.approx(factor * trace.mean_rate_bps, rel=0.01)
        for t, rate in ((1.0, 6e6), (3.5, 1.2e6)):
            assert faster.rate_bps_at(t) == pytest.approx(factor * rate, rel=0.03), (factor, t)
        # The stall stays a stall.
        assert faster.bytes_between(2.05, 2.95) == 0
    with pytest.raises(SplitInferError, match="positive"):
        scaled(trace, 0.0)


def test_splice_scales_on_the_command_line(tmp_path: Path) -> None:
    from cli_runs import assert_ok, cli

    source = save_mahimahi(RateTrace.from_rates([(0.0, 3e6)], period_s=4.0), tmp_path / "three.up")
    out = tmp_path / "half.up"
    stdout = assert_ok(cli("netemu", "splice", f"{source}@0+4", "--scale", "0.5", "--out", out))
    assert "mean 1.5 Mbit/s" in stdout
    assert load_trace(out).mean_rate_bps == pytest.approx(1.5e6, rel=0.01)
