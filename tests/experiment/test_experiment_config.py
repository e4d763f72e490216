"""The experiment config: the shipped examples parse, and every bad key or value is an error that
names it (and is exit code 2 from the command line)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from experiment.config import load_config, parse_config
from protos.errors import SplitInferError
from splitinfer.app import app

EXAMPLES = Path(__file__).resolve().parents[2] / "experiment" / "examples"
BASE = {"models": ["mobilenet_v2_035"], "conditions": [{"preset": "4g"}]}


def parse(extra: dict | None = None, **changes: object):
    data = {**BASE, **(extra or {}), **changes}
    return parse_config(data, EXAMPLES / "test.toml")


def test_classic_is_the_literature_grid() -> None:
    config = load_config(EXAMPLES / "classic.toml")
    assert [m.name for m in config.models] == ["efficientnet_lite0"]
    assert config.policies == ("neurosurgeon", "edge-only", "cloud-only")
    assert [(c.name, c.rate_bps) for c in config.conditions] == [
        ("CAT1", 0.13e6),
        ("3G", 1.1e6),
        ("4G", 5.85e6),
        ("Wi-Fi", 18.88e6),
    ]
    assert config.device.slowdown == 30 and config.device.threads == 1 and config.device.pin


def test_smoke_has_a_fixed_and_a_trace_condition() -> None:
    config = load_config(EXAMPLES / "smoke.toml")
    assert config.models[0].input_shape == (1, 3, 96, 96) and config.requests == 5
    fixed, trace = config.conditions
    assert fixed.rate_bps == 5.85e6 and fixed.rtt_ms == 20 and not fixed.is_trace
    assert trace.is_trace and trace.trace == EXAMPLES / "traces" / "step.csv"


def test_defaults_and_overrides() -> None:
    config = parse(
        conditions=[{"preset": "3g", "rtt": "50ms", "down": "20mbit"}, {"rate": "2mbit", "rtt": "30ms"}], seconds=5
    )
    assert config.requests is None and config.seconds == 5
    assert config.policies == ("neurosurgeon",) and config.codecs == ("int8+zstd",)
    assert (config.conditions[0].rtt_ms, config.conditions[0].down_bps) == (50.0, 20e6)
    assert config.conditions[1].name == "2mbit" and config.conditions[1].rate_bps == 2e6
    assert config.out == Path("out/experiments/test")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"request": 5}, "unknown key request"),
        ({"device": {"slowdwn": 2}}, "unknown key device.slowdwn"),
        ({"device": {"slowdown": 0}}, "device.slowdown must be a positive number, got 0"),
        ({"device": {"threads": 1.5}}, "device.threads must be an integer ≥ 1, got 1.5"),
        ({"device": {"pin": "yes"}}, "device.pin must be true or false, got 'yes'"),
        ({"requests": 5, "seconds": 3}, "not both"),
        ({"requests": 0}, "requests must be an integer ≥ 1, got 0"),
        ({"policies": ["neurosurgeon", "fastest"]}, "unknown policy 'fastest'"),
        ({"codecs": ["int7"]}, "codecs:"),
        ({"models": []}, "`models` must be a non-empty list"),
        ({"models": [{"name": "x", "input_shape": [1, 3, -96]}]}, "input_shape [1, 3, -96]"),
        ({"conditions": []}, "`conditions` must list"),
        ({"conditions": [{"preset": "5g"}]}, "conditions[0].preset '5g' is not one of cat1, 3g, 4g, wifi"),
        ({"conditions": [{"rate": "2mbit"}]}, "conditions[0] needs `rtt`"),
        ({"conditions": [{"rate": "2", "rtt": "5ms"}]}, "conditions[0].rate: bandwidth '2' has no unit"),
        ({"conditions": [{"preset": "4g", "rate": "2mbit"}]}, "exactly one of preset, rate, trace"),
        ({"conditions": [{"trace": "missing.up", "rtt": "40ms"}]}, "conditions[0].trace 'missing.up' does not exist"),
        ({"conditions": [{"preset": "4g"}, {"preset": "4g"}]}, "condition names ['4G'] repeat"),
        ({"conditions": [{"preset": "4g", "jitter": "2ms"}]}, "unknown key conditions[0].jitter"),
        ({"adaptive": {"margin": -0.1}}, "adaptive.margin must be a number ≥ 0, got -0.1"),
        ({"adaptive": {"confirm": 0}}, "adaptive.confirm must be an integer ≥ 1, got 0"),
        ({"adaptive": {"explore": "soon"}}, "adaptive.explore:"),
        ({"adaptive": {"hysteresis": 1}}, "unknown key adaptive.hysteresis"),
        ({"adaptive": {"min_rate": "fast"}}, "adaptive.min_rate: bandwidth 'fast'"),
        ({"adaptive": {"min_rate": "20mbit", "max_rate": "10mbit"}}, "adaptive.min_rate (20 Mbit/s) must be below"),
        ({"device": {"pace": True, "cgroup": True}}, "device.pace and device.cgroup both"),
        ({"policies": ["edge-only+race"]}, "'edge-only+race': edge-only sends nothing, so there is nothing to race"),
        ({"policies": ["fastest+race"]}, "unknown policy 'fastest'"),
    ],
)
def test_errors_name_the_bad_key_and_value(extra: dict, fragment: str) -> None:
    with pytest.raises(SplitInferError) as raised:
        parse(extra)
    assert fragment in str(raised.value) and "test.toml" in str(raised.value)


def test_bad_config_is_exit_code_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('models = ["mobilenet_v2_035"]\n[[conditions]]\npreset = "6g"\n')
    for args in (
        ["experiment", str(bad)],
        ["experiment", str(tmp_path / "none.toml")],
        ["experiment-plot", str(tmp_path)],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_the_adaptive_example_runs_the_runtime_policies_on_shipped_traces() -> None:
    config = load_config(EXAMPLES / "adaptive.toml")
    assert config.policies == ("adaptive", "adaptive+race", "best-static", "best-static+race")
    assert config.device.pace and config.seconds is not None
    assert (config.adaptive.margin, config.adaptive.confirm, config.adaptive.explore_s) == (0.2, 3, 3.0)
    for condition in config.conditions:
        assert condition.trace is not None and condition.trace.is_relative_to(EXAMPLES / "traces")


def test_parquet_is_refused_at_load_when_pyarrow_is_missing() -> None:
    from experiment.results import parquet_unavailable_reason

    reason = parquet_unavailable_reason()
    if reason is None:
        assert parse({"parquet": True}).parquet
    else:
        with pytest.raises(SplitInferError, match="parquet = true, but pyarrow is not installed"):
            parse({"parquet": True})


def test_parquet_has_a_typed_column_per_field(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    import math

    import pyarrow.parquet as pq

    from experiment.results import FIELDS, RequestRecord, write_parquet

    record = RequestRecord(
        t_s=1.5, unix_time=0.0, model="m", policy="adaptive", codec="int8+zstd", condition="c", cut="x", head_size=3,
        request=0, sample="s", bytes_sent=10, request_bytes=20, response_bytes=30, head_ms=1.0, encode_ms=0.1,
        network_ms=5.0, decode_ms=0.1, tail_ms=2.0, total_ms=9.0, agree=True, rate_mbps=1.0, predicted_ms=8.0,
    )  # fmt: skip
    table = pq.read_table(write_parquet([record], tmp_path / "r.parquet"))
    assert tuple(table.column_names) == FIELDS
    row = table.to_pylist()[0]
    assert row["head_size"] == 3 and row["agree"] is True and math.isnan(row["oracle_ms"])


def test_a_policy_that_sends_may_race() -> None:
    from experiment.config import split_race

    policies = ("adaptive+race", "best-static+race", "neurosurgeon+race", "cloud-only+race")
    assert parse({"policies": list(policies)}).policies == policies
    assert [split_race(p) for p in ("adaptive+race", "adaptive")] == [("adaptive", True), ("adaptive", False)]


def test_a_model_may_name_its_samples_and_metric(tmp_path: Path) -> None:
    folder = EXAMPLES / "traces"  # any folder: its images are what counts
    with pytest.raises(SplitInferError, match=r"models: 'mobilenet_v2_035': --samples .* holds no images"):
        parse(models=[{"name": "mobilenet_v2_035", "samples": str(folder)}])
    with pytest.raises(SplitInferError, match=r"models: 'mobilenet_v2_035': --samples '.*missing' does not exist"):
        parse(models=[{"name": "mobilenet_v2_035", "samples": "missing"}])
    with pytest.raises(SplitInferError, match="unknown metric 'iou'"):
        parse(models=[{"name": "mobilenet_v2_035", "metric": "iou"}])
    npy = tmp_path / "x.npy"
    npy.write_bytes(b"")
    model = parse(models=[{"name": "mobilenet_v2_035", "samples": str(npy), "metric": "top5"}]).models[0]
    assert (model.samples, model.metric) == (npy, "top5")


def test_the_held_back_conditions_differ_from_the_tune_set_and_nothing_else_does() -> None:
    import dataclasses

    from netemu.traces import load_trace

    tune, held = load_config(EXAMPLES / "adaptive.toml"), load_config(EXAMPLES / "adaptive_heldout.toml")
    assert {c.name for c in tune.conditions}.isdisjoint(c.name for c in held.conditions)
    assert {c.trace for c in tune.conditions}.isdisjoint(c.trace for c in held.conditions)
    same = ("source", "out", "conditions")
    assert dataclasses.replace(tune, **{k: getattr(held, k) for k in same}) == held
    for condition in held.conditions:
        assert condition.trace.parent == EXAMPLES / "traces" and condition.rtt_ms == 40.0
        assert load_trace(condition.trace).duration_s == pytest.approx(120.0, abs=1.0)


def test_the_adaptive_bundle_is_planned_for_the_configured_rates() -> None:
    from splitter.export.adaptive import DEFAULT_HI_BPS, DEFAULT_LO_BPS

    default = parse().adaptive
    # Unless told otherwise, what export-adaptive plans for.
    assert (default.min_rate_bps, default.max_rate_bps) == (DEFAULT_LO_BPS, DEFAULT_HI_BPS)
    narrow = parse({"adaptive": {"min_rate": "0.5mbit", "max_rate": "15mbit"}}).adaptive
    assert (narrow.min_rate_bps, narrow.max_rate_bps) == (0.5e6, 15e6)
