"""The adaptive edge runtime for real: a multi-cut bundle (tests/multicut.py) served by a real
server on loopback, the EdgeClient choosing its cut from its own link estimate, netemu's
user-space link in between where the link matters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from multicut import DECISIONS, SWITCH_BPS, multi_input, multi_reference

from edge_runtime.adaptive import AdaptiveSettings, CutChooser
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from netemu import LinkEmulator, Shape
from protos.bundle import load_bundle, load_bundles, load_multi_cut_bundle
from protos.decisions import DecisionTable
from protos.errors import BundleError, SplitInferError

CUTS = ["input", "a", "b", "c", "pooled", "output"]


def test_every_cut_is_served_and_equals_the_unsplit_model(multi_bundle: Path, multi_server: str) -> None:
    x = multi_input(3)
    expected = multi_reference(x)
    with EdgeClient(multi_bundle, multi_server, EdgeConfig(adaptive=AdaptiveSettings(idle_probe_s=0))) as client:
        for cut in CUTS:
            for codec in sorted({e["codec"] for e in DECISIONS["entries"] if e["cut"] == cut}):
                client.adaptive.pin(cut, codec)
                result = client.infer(x)
                assert (result.cut, result.codec) == (cut, codec)
                # fp32 on the wire: the unsplit model up to float rounding (kernels fuse differently); fp16 within its own.
                np.testing.assert_allclose(
                    result.outputs["logits"], expected, rtol=0, atol=1e-6 if codec == "fp32" else 2e-3
                )
                assert (result.bytes_sent > 0) == (cut != "output")


def test_the_head_is_stored_once(multi_bundle: Path) -> None:
    bundle = load_multi_cut_bundle(multi_bundle)
    # Every segment computes new tensors from the previous cut's: no op (and no weight) twice.
    outputs = [name for segment in bundle.manifest.segments for name in segment.outputs]
    assert outputs == ["a", "b", "c", "pooled", "logits"]
    assert len(list(multi_bundle.glob("head-*.onnx"))) == len(bundle.manifest.segments)


def test_the_server_holds_every_tail_under_its_own_hash(multi_bundle: Path) -> None:
    variants = load_bundles(multi_bundle)
    # All but the all-on-device cut, which has nothing to serve.
    assert [v.manifest.cut_name for v in variants] == CUTS[:-1]
    assert len({v.manifest.bundle_hash for v in variants}) == len(CUTS) - 1
    with pytest.raises(BundleError, match="multi-cut bundle"):
        load_bundle(multi_bundle)


def test_an_edited_decision_table_is_refused(tmp_path: Path, multi_bundle: Path) -> None:
    copy = tmp_path / "edited"
    copy.mkdir()
    for path in multi_bundle.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    data = json.loads((copy / "manifest.json").read_text())
    data["decisions"]["entries"][0]["head_ms"] = 0.5
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="edited after export"):
        load_multi_cut_bundle(copy)


def test_a_codec_cannot_override_the_table(multi_bundle: Path, multi_server: str) -> None:
    with pytest.raises(SplitInferError, match="decision table chooses the codec"):
        EdgeClient(multi_bundle, multi_server, EdgeConfig(codec="fp16"))


def test_the_estimator_converges_on_a_known_link(multi_bundle: Path, multi_server: str) -> None:
    # 32 KiB take 131 ms at 2 Mbit/s: well above the milliseconds a busy machine adds to a round trip.
    rate_bps, rtt_ms = 2e6, 20.0
    up = Shape(rate_bps=rate_bps, delay_ms=rtt_ms / 2)
    down = Shape(delay_ms=rtt_ms / 2)
    with LinkEmulator(multi_server, up, down) as link, EdgeClient(multi_bundle, link.address) as client:
        client.adaptive.pin("a", "fp32")
        for i in range(8):
            client.infer(multi_input(i))
        estimate = client.adaptive.estimator.estimate()
    assert estimate.bandwidth_bps == pytest.approx(rate_bps, rel=0.2)
    assert rtt_ms <= estimate.rtt_ms <= rtt_ms + 20


def test_a_bandwidth_change_mid_run_switches_the_cut_and_loses_no_request(
    multi_bundle: Path, multi_server: str
) -> None:
    up = Shape(rate_bps=40e6, delay_ms=2)
    with LinkEmulator(multi_server, up, Shape(delay_ms=2)) as link:
        settings = AdaptiveSettings(confirm=2, explore_s=0)
        edge_config = EdgeConfig(adaptive=settings, initial_bandwidth_bps=40e6, initial_rtt_ms=4)
        with EdgeClient(multi_bundle, link.address, edge_config) as client:
            results = []
            for i in range(6):
                results.append((i, client.infer(multi_input(i))))
            link.set_uplink(rate_bps=SWITCH_BPS / 8)
            for i in range(6, 16):
                results.append((i, client.infer(multi_input(i))))
    cuts = [r.cut for _, r in results]
    assert [r.codec for _, r in results[:6]] == ["fp16"] * 6
    assert cuts[:6] == ["a"] * 6, cuts
    assert cuts[-1] == "pooled", cuts
    # Two decisions must agree before a switch, and the slow link shows on the first request.
    assert cuts[6:].index("pooled") <= 4, cuts
    assert sum(1 for a, b in zip(cuts, cuts[1:]) if a != b) == 1, cuts
    assert len({r.request_id for _, r in results}) == 16
    for i, result in results:
        atol = 1e-6 if result.codec == "fp32" else 2e-3
        np.testing.assert_allclose(result.outputs["logits"], multi_reference(multi_input(i)), rtol=0, atol=atol)


def test_hysteresis_does_not_flap_around_a_switching_point() -> None:
    table = DecisionTable.from_dict(DECISIONS, cuts=CUTS)
    chooser = CutChooser(table, margin=0.1, confirm=2)
    rng = np.random.default_rng(0)
    # ±8% around the point where `a` and `pooled` cost the same, for 500 decisions.
    picks = [chooser.choose(SWITCH_BPS * (1 + rng.uniform(-0.08, 0.08)), 10.0)[0].cut for _ in range(500)]
    assert chooser.switches == 0 and len(set(picks)) == 1
    # A real change (the link 3× slower) is followed within `confirm` decisions.
    picks = [chooser.choose(SWITCH_BPS / 3, 10.0)[0].cut for _ in range(3)]
    assert picks[-1] == "pooled" and chooser.switches == 1


def test_without_hysteresis_the_same_link_flaps() -> None:
    """The control for the test above: the oscillation really crosses the switching point."""
    chooser = CutChooser(DecisionTable.from_dict(DECISIONS, cuts=CUTS), margin=0.0, confirm=1)
    rng = np.random.default_rng(0)
    for _ in range(500):
        chooser.choose(SWITCH_BPS * (1 + rng.uniform(-0.08, 0.08)), 10.0)
    assert chooser.switches > 50


def test_bad_settings_and_tables_are_named() -> None:
    with pytest.raises(SplitInferError, match="hysteresis margin -1"):
        CutChooser(DecisionTable.from_dict(DECISIONS, cuts=CUTS), margin=-1)
    with pytest.raises(BundleError, match=r"names cuts \['zz'\]"):
        DecisionTable.from_dict({**DECISIONS, "entries": [{**DECISIONS["entries"][0], "cut": "zz"}]}, cuts=CUTS)
    with pytest.raises(BundleError, match="version 9"):
        DecisionTable.from_dict({**DECISIONS, "version": 9}, cuts=CUTS)
    with pytest.raises(SplitInferError, match="adaptive quantile 1.5"):
        AdaptiveSettings(quantile=1.5)
    with pytest.raises(SplitInferError, match="abandon_factor 0.5"):
        AdaptiveSettings(abandon_factor=0.5)


ADAPTIVE_WITHOUT_TORCH = r"""
import importlib.abc, sys
import numpy as np

BLOCKED = {"torch", "torchvision", "splitter", "onnx"}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not part of the edge install")
sys.meta_path.insert(0, Blocker())

from edge_runtime.client import EdgeClient

server, bundle, x_path = sys.argv[1:]
with EdgeClient(bundle, server) as client:
    for cut in ("a", "pooled", "output"):
        client.adaptive.pin(cut)
        print(cut, client.infer(np.load(x_path)).cut)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
"""


def test_the_adaptive_client_runs_without_torch(tmp_path: Path, multi_bundle: Path, multi_server: str) -> None:
    np.save(tmp_path / "x.npy", multi_input(0))
    done = subprocess.run(
        [sys.executable, "-c", ADAPTIVE_WITHOUT_TORCH, multi_server, str(multi_bundle), str(tmp_path / "x.npy")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["a", "a", "pooled", "pooled", "output", "output"]
