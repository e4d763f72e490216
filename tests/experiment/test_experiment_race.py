"""Racing policies in a real experiment: a paced device 300× slower than this machine (so that
splitting pays for the small model), a server process behind a trace link,
the client racing each request with the rest of the model on the device."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from experiment.config import load_config
from experiment.results import read_results
from experiment.runner import run_experiment
from experiment.summary import adaptive_rows, summarize

pytestmark = pytest.mark.slow

STEP = Path(__file__).resolve().parents[2] / "experiment" / "examples" / "traces" / "step.csv"

CONFIG = f"""
seed = 0
requests = 6
warmup_requests = 1
models = [{{ name = "mobilenet_v2_035", input_shape = [1, 3, 96, 96] }}]
policies = ["adaptive+race", "best-static", "best-static+race"]
codecs = ["int8+zstd"]

[profile]
repeats = 1

[device]
slowdown = 300
pace = true

[[conditions]]
name = "step"
trace = "{STEP}"
rtt = "20ms"
"""


def test_racing_policies_record_who_answered_and_compare_in_the_adaptive_table(tmp_path: Path) -> None:
    (tmp_path / "race.toml").write_text(CONFIG)
    config = load_config(tmp_path / "race.toml")
    out = run_experiment(config, out=tmp_path / "out", console=Console(quiet=True))
    records = read_results(out / "results.csv")
    meta = json.loads((out / "meta.json").read_text())
    assert len(records) == 3 * config.requests and not [r.error for r in records if r.error]
    for record in records:
        # A request races when its policy does and its cell has a server to race: the adaptive
        # bundle may carry only the all-on-device cut when a one-repeat profile makes splitting
        # look hopeless; then nothing is sent. best-static+race always sends.
        sends = record.wire_codec != "-"
        raced = record.policy.endswith("+race") and sends
        assert record.winner in (("server", "device") if raced else ("",)), record
        assert sends or record.policy == "adaptive+race" or record.policy == "best-static", record
        if raced:
            assert record.bytes_sent > 0
        if record.winner == "device":
            assert record.network_ms == 0 and record.response_bytes == 0
    assert [c["race"] for c in meta["cells"]] == [True, False, True]
    rows = summarize(records, meta)
    (row,) = adaptive_rows(rows)
    assert row.policy == "adaptive+race" and row.best_static_policy == "best-static"
    assert not math.isnan(row.raced_static_ms)
    # The oracle ranges over the adaptive bundle's choices, the bound over every cut: never above it.
    carried = {choice.split(" ")[0] for choice in meta["cells"][0]["oracle_choices"]}
    for record in records:
        assert record.bound_ms <= record.oracle_ms + 1e-9, record
        assert record.oracle_cut in carried, record
    assert row.requests == config.requests and 0.0 <= row.agreement <= 1.0
    assert row.bound_ms <= row.oracle_ms
    adaptive_raced = any(r.winner for r in records if r.policy == "adaptive+race")
    assert (0.0 <= row.device_wins <= 1.0) if adaptive_raced else math.isnan(row.device_wins)
